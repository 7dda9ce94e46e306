//! Email out: renders a stored reply as multipart text + HTML (`channels/email.hbs` wraps the
//! text when the agent writes it; `channels/email.html.hbs` lays out the HTML), threads it to
//! the shopper's last email (In-Reply-To, References), carries the conversation token in the
//! Reply-To plus-address and the subject, and sends it over SMTP with lettre. The Message-ID is
//! random (≥ 128 bits, so a reply naming it proves its sender received this email) and fixed
//! per reply: it is stored on the message before the first attempt, so a retry after a crash
//! is recognizably the same message.
//!
//! Who receives it: the conversation's sender, unless the conversation is verified as a
//! customer who does not have that address on file — then the reply (which may carry account
//! data) goes to the customer's address on file instead, never to the address that merely
//! claimed to be them.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Email, Tokio1Executor};
use serde_json::{Value, json};

use super::thread;
use crate::channels::SendError;
use crate::state::AppState;
use crate::store::{Delivery, Direction};

/// Sends a delivery; returns the Message-ID used. A recipient or message the mail server
/// refuses for good (an SMTP 5xx) is a permanent failure; a missing setting, a 4xx or an
/// unreachable server a transient one.
pub async fn send(state: &AppState, delivery: &Delivery) -> Result<Option<String>, SendError> {
    let cfg = &state.config.email;
    let transient = |e: String| SendError::Transient(e);
    let smtp = cfg.smtp_url.as_ref().ok_or_else(|| {
        transient("[email] smtp_url is not set, so email replies cannot be sent".into())
    })?;
    let store = &state.store;
    let err = |e: crate::store::StoreError| SendError::from(e);
    let message = store
        .message_by_id(&delivery.message_id)
        .await
        .map_err(err)?
        .ok_or_else(|| SendError::Permanent("the reply to send no longer exists".into()))?;
    let view = store
        .conversation_view(&delivery.conversation_id)
        .await
        .map_err(err)?
        .ok_or_else(|| SendError::Permanent("the conversation no longer exists".into()))?;
    let conversation = &view.conversation;
    let sender = match &conversation.identity_id {
        Some(id) => store
            .get_identity(id)
            .await
            .map_err(err)?
            .and_then(|i| i.email),
        None => None,
    };
    let on_file = match &conversation.customer_id {
        Some(id) => Some(
            store
                .get_customer(id)
                .await
                .map_err(err)?
                .map(|c| c.emails)
                .unwrap_or_default(),
        ),
        None => None,
    };
    let recipient =
        recipient(sender.as_deref(), on_file.as_deref()).map_err(SendError::Permanent)?;
    store
        .record_email_recipient(&message.id, &recipient)
        .await
        .map_err(err)?;

    let from: Mailbox = cfg
        .from
        .parse()
        .map_err(|e| transient(format!("[email] from {:?} is not a mailbox: {e}", cfg.from)))?;
    let to: Mailbox = recipient.parse().map_err(|e| {
        SendError::Permanent(format!("recipient {recipient:?} is not a mailbox: {e}"))
    })?;
    let token = store.reply_token(&conversation.id).await.map_err(err)?;
    let support = from.email.to_string();
    let reply_to: Mailbox = thread::reply_to_address(&support, &token)
        .parse()
        .map_err(|e| transient(format!("reply-to address: {e}")))?;
    let domain = support
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("concierge.local");
    let message_id = match &message.external_id {
        Some(id) => id.clone(),
        None => {
            let fresh = format!("{}@{}", crate::store::random_base36(28), domain);
            store
                .set_message_external_id(&message.id, &fresh)
                .await
                .map_err(err)?;
            // A concurrent attempt may have stored its own first: use whichever is stored.
            store
                .message_by_id(&message.id)
                .await
                .map_err(err)?
                .and_then(|m| m.external_id)
                .unwrap_or(fresh)
        }
    };

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
        .map_err(|e| transient(e.to_string()))?;
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
        .map_err(|e| SendError::Permanent(format!("cannot build the email: {e}")))?;
    let _ = ContentType::TEXT_PLAIN;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp.expose())
        .map_err(|e| transient(format!("[email] smtp_url is not usable: {e}")))?
        .timeout(Some(Duration::from_secs(20)))
        .build();
    transport.send(email).await.map_err(|e| {
        let why = format!("SMTP delivery failed: {e}");
        if e.is_permanent() {
            SendError::Permanent(why)
        } else {
            SendError::Transient(why)
        }
    })?;
    Ok(Some(message_id))
}

/// The address a reply goes to: the sender's, unless the conversation belongs to a verified
/// customer (`on_file` is their addresses) who does not have it — then their first address on
/// file. Never an address that only claimed to be the customer.
fn recipient(sender: Option<&str>, on_file: Option<&[String]>) -> Result<String, String> {
    let sender = sender.map(|s| s.trim().to_lowercase());
    match on_file {
        None => sender.ok_or_else(|| "the conversation has no email address to reply to".into()),
        Some(emails) => {
            if let Some(s) = &sender
                && emails.iter().any(|e| e.trim().eq_ignore_ascii_case(s))
            {
                return Ok(s.clone());
            }
            emails
                .iter()
                .map(|e| e.trim().to_lowercase())
                .find(|e| !e.is_empty())
                .ok_or_else(|| {
                    "the conversation's customer has no email address on file to reply to".into()
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::recipient;

    #[test]
    fn account_replies_go_to_an_address_on_file() {
        let on_file = vec!["anya@example.com".to_string(), "a.g@work.example".into()];
        assert_eq!(
            recipient(Some("A.G@work.example"), Some(&on_file)).as_deref(),
            Ok("a.g@work.example")
        );
        assert_eq!(
            recipient(Some("eve@evil.example"), Some(&on_file)).as_deref(),
            Ok("anya@example.com")
        );
        assert_eq!(
            recipient(Some("eve@evil.example"), None).as_deref(),
            Ok("eve@evil.example")
        );
        assert!(recipient(Some("eve@evil.example"), Some(&[])).is_err());
        assert!(recipient(None, None).is_err());
    }
}
