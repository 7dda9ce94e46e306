//! Email in: a raw RFC 822 message (from an inbound-mail webhook or a mail pipe) into the inbox.
//! The message is committed before the caller acknowledges it. Threading, in order: the same
//! Message-ID is a duplicate; In-Reply-To/References naming a stored message join its
//! conversation; a conversation token in a plus-address or the subject joins that one (so a
//! reply threads even when a client rewrites its headers); else a new conversation.
//! Auto-replies and bounces are recorded but never answered.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::parse::{self, MailKind, ParsedEmail};
use super::thread;
use crate::store::{AuthorKind, InboundMessage, Store};
use crate::worker::JOB_AGENT_REPLY;

#[derive(Debug, Clone, Serialize)]
pub struct EmailReceipt {
    pub conversation_id: String,
    pub message_id: String,
    pub duplicate: bool,
    /// normal, auto_reply or bounce
    pub kind: &'static str,
    /// Whether the brand agent will answer it.
    pub will_answer: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EmailInError {
    #[error("not a usable email: {0}")]
    Unparseable(String),
    #[error("the email has no From address")]
    NoSender,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot store an attachment: {0}")]
    Attachment(std::io::Error),
}

/// Stores an inbound email and queues the agent's answer.
pub async fn receive(
    store: &Store,
    data_dir: &Path,
    support_address: &str,
    raw: &[u8],
) -> Result<(EmailReceipt, ParsedEmail), EmailInError> {
    let parsed = parse::parse(raw).map_err(|e| EmailInError::Unparseable(e.to_string()))?;
    let from = parsed.from.clone().ok_or(EmailInError::NoSender)?;
    // Without a Message-ID, a digest of the message stands in, so a redelivery still dedupes.
    let external_id = parsed
        .message_id
        .clone()
        .unwrap_or_else(|| format!("sha256:{}", crate::util::sha256_hex(raw)));

    let mut refs: Vec<String> = parsed.references.clone();
    refs.extend(parsed.in_reply_to.iter().cloned());
    let thread_key = match store.conversation_by_external_ids("email", &refs).await? {
        Some((_, key)) => key,
        None => match thread::find_token(&parsed, support_address) {
            Some(token) => match store.conversation_by_reply_token(&token).await? {
                Some((_, key)) => key,
                None => format!("email:{external_id}"),
            },
            None => format!("email:{external_id}"),
        },
    };

    let attachments = save_attachments(data_dir, &parsed)?;
    let kind = match parsed.kind {
        MailKind::Normal => "normal",
        MailKind::AutoReply => "auto_reply",
        MailKind::Bounce => "bounce",
    };
    let text = if parsed.text.trim().is_empty() {
        parsed.full_text.clone()
    } else {
        parsed.text.clone()
    };
    let text = if text.trim().is_empty() && !attachments.is_empty() {
        "(attachments only)".to_string()
    } else if text.trim().is_empty() {
        "(empty message)".to_string()
    } else {
        text
    };
    let msg = InboundMessage {
        channel: "email".into(),
        thread_key,
        external_id: Some(external_id),
        sender_id: from.email.clone(),
        sender_name: from.name.clone(),
        sender_email: Some(from.email.clone()),
        sender_verified: false,
        author_kind: AuthorKind::Customer,
        subject: Some(thread::normalize_subject(&parsed.subject)).filter(|s| !s.is_empty()),
        text: text.chars().take(crate::inbox::MAX_TEXT_CHARS).collect(),
        html: parsed.html.clone(),
        attachments: serde_json::Value::Array(attachments),
        meta: json!({
            "kind": kind,
            "subject": parsed.subject,
            "message_id": parsed.message_id,
            "in_reply_to": parsed.in_reply_to,
            "references": parsed.references,
            "to": parsed.to.iter().map(|m| m.email.clone()).collect::<Vec<_>>(),
            "date": parsed.date,
        }),
    };
    let outcome = crate::inbox::receive(store, &msg)
        .await
        .map_err(|e| match e {
            crate::inbox::InboxError::Invalid { field, message } => {
                EmailInError::Invalid(format!("{field}: {message}"))
            }
            crate::inbox::InboxError::Store(s) => EmailInError::Store(s),
        })?;
    let will_answer = kind == "normal" && !is_no_reply(&from.email);
    if !outcome.duplicate && will_answer {
        store
            .enqueue_job(
                JOB_AGENT_REPLY,
                &json!({"conversation_id": outcome.conversation_id, "message_id": outcome.message_id}),
                Some(&format!("agent_reply:{}", outcome.message_id)),
                5,
            )
            .await?;
    }
    Ok((
        EmailReceipt {
            conversation_id: outcome.conversation_id,
            message_id: outcome.message_id,
            duplicate: outcome.duplicate,
            kind,
            will_answer,
        },
        parsed,
    ))
}

/// Addresses that must never get an automatic answer.
fn is_no_reply(email: &str) -> bool {
    let local = email.split('@').next().unwrap_or_default().to_lowercase();
    [
        "mailer-daemon",
        "postmaster",
        "noreply",
        "no-reply",
        "donotreply",
        "do-not-reply",
    ]
    .iter()
    .any(|p| local == *p || local.starts_with(&format!("{p}+")))
}

/// Writes attachments to `<data dir>/attachments/<sha256>` (content-addressed, written once)
/// and returns their metadata for the message.
fn save_attachments(
    data_dir: &Path,
    parsed: &ParsedEmail,
) -> Result<Vec<serde_json::Value>, EmailInError> {
    if parsed.attachments.is_empty() {
        return Ok(Vec::new());
    }
    let dir = data_dir.join("attachments");
    std::fs::create_dir_all(&dir).map_err(EmailInError::Attachment)?;
    let mut out = Vec::new();
    for a in &parsed.attachments {
        let digest = crate::util::sha256_hex(&a.data);
        let path = dir.join(&digest);
        if !path.exists() {
            let tmp = dir.join(format!("{digest}.tmp"));
            std::fs::write(&tmp, &a.data).map_err(EmailInError::Attachment)?;
            std::fs::rename(&tmp, &path).map_err(EmailInError::Attachment)?;
        }
        out.push(json!({
            "filename": a.filename,
            "content_type": a.content_type,
            "size": a.size,
            "sha256": digest,
            "inline": a.inline,
            "content_id": a.content_id,
        }));
    }
    Ok(out)
}
