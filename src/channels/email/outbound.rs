//! Email out: renders a stored reply as multipart text + HTML (`channels/email.hbs` wraps the
//! text when the agent writes it; `channels/email.html.hbs` lays out the HTML), threads it to
//! the shopper's last email (In-Reply-To, References), carries the conversation token in the
//! Reply-To plus-address and the subject, and sends it over SMTP with lettre. The Message-ID is
//! fixed per delivery, so a retry after a crash is recognizably the same message.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Email, Tokio1Executor};
use serde_json::{Value, json};

use super::thread;
use crate::app::AppState;
use crate::store::{Delivery, Direction};

/// Sends a delivery; returns the Message-ID used.
pub async fn send(state: &AppState, delivery: &Delivery) -> Result<Option<String>, String> {
    let cfg = &state.config.email;
    let smtp = cfg
        .smtp_url
        .as_ref()
        .ok_or("[email] smtp_url is not set, so email replies cannot be sent")?;
    let store = &state.store;
    let err = |e: crate::store::StoreError| e.to_string();
    let message = store
        .message_by_id(&delivery.message_id)
        .await
        .map_err(err)?
        .ok_or("the reply to send no longer exists")?;
    let view = store
        .conversation_view(&delivery.conversation_id)
        .await
        .map_err(err)?
        .ok_or("the conversation no longer exists")?;
    let conversation = &view.conversation;
    let recipient = match &conversation.identity_id {
        Some(id) => store
            .get_identity(id)
            .await
            .map_err(err)?
            .and_then(|i| i.email),
        None => None,
    }
    .ok_or("the conversation has no email address to reply to")?;

    let from: Mailbox = cfg
        .from
        .parse()
        .map_err(|e| format!("[email] from {:?} is not a mailbox: {e}", cfg.from))?;
    let to: Mailbox = recipient
        .parse()
        .map_err(|e| format!("recipient {recipient:?} is not a mailbox: {e}"))?;
    let token = store.reply_token(&conversation.id).await.map_err(err)?;
    let support = from.email.to_string();
    let reply_to: Mailbox = thread::reply_to_address(&support, &token)
        .parse()
        .map_err(|e| format!("reply-to address: {e}"))?;
    let domain = support
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("concierge.local");
    let message_id = format!("{}@{}", delivery.id, domain);
    store
        .set_message_external_id(&message.id, &message_id)
        .await
        .map_err(err)?;

    // Thread to the shopper's last email.
    let last_in = view.messages.iter().rev().find(|m| {
        m.direction == Direction::Inbound && m.channel == "email" && m.external_id.is_some()
    });
    let mut references: Vec<String> = last_in
        .and_then(|m| m.meta.get("references"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let in_reply_to = last_in.and_then(|m| m.external_id.clone());
    if let Some(id) = &in_reply_to {
        references.push(id.clone());
    }
    let base = conversation
        .subject
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "Your message".into());
    let subject =
        thread::subject_with_token(&format!("Re: {}", thread::normalize_subject(&base)), &token);

    let html = state
        .agent
        .resolver()
        .templates
        .render_html(
            "channel/email",
            &json!({"body": message.text, "voice": &*state.agent.resolver().voice}),
        )
        .map_err(|e| e.to_string())?;
    let mut builder = Email::builder()
        .from(from)
        .to(to)
        .reply_to(reply_to)
        .subject(subject)
        .message_id(Some(format!("<{message_id}>")));
    if let Some(id) = &in_reply_to {
        builder = builder.in_reply_to(format!("<{id}>"));
    }
    if !references.is_empty() {
        builder = builder.references(
            references
                .iter()
                .map(|r| format!("<{r}>"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    let email = builder
        .multipart(MultiPart::alternative_plain_html(
            message.text.clone(),
            html,
        ))
        .map_err(|e| format!("cannot build the email: {e}"))?;
    let _ = ContentType::TEXT_PLAIN;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp.expose())
        .map_err(|e| format!("[email] smtp_url is not usable: {e}"))?
        .timeout(Some(Duration::from_secs(20)))
        .build();
    transport
        .send(email)
        .await
        .map_err(|e| format!("SMTP delivery failed: {e}"))?;
    Ok(Some(message_id))
}
