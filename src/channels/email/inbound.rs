//! Email in: a raw RFC 822 message (from an inbound-mail webhook or a mail pipe) into the inbox.
//! The message is committed before the caller acknowledges it. Threading, in order: the same
//! Message-ID is a duplicate; In-Reply-To/References naming a stored message join its
//! conversation; a conversation token in a plus-address or the subject joins that one (so a
//! reply threads even when a client rewrites its headers); else a new conversation.
//! Auto-replies and bounces are recorded but never answered.
//!
//! Trust, decided here and stored with the message (`meta.trust`, read by its turn): the From address is proven only by a trusted relay's `Authentication-Results`
//! ([`super::auth`]); then the sender is verified, their identity may be linked to the customer
//! and a "yes" confirms a change. Without that proof the From address is only the shopper's
//! email claim, the identity is never linked, and a "yes" confirms a change only when the
//! message answers one of OUR outgoing emails of this conversation sent to the customer's
//! address on file — its In-Reply-To/References name a Message-ID we generated, or it carries
//! the conversation's reply token — which only that mailbox received. Threading to the
//! sender's own earlier mail confirms nothing.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::auth;
use super::parse::{self, MailKind, ParsedEmail};
use super::thread;
use crate::inbox::{Answer, InboxError, Intake, Trust};
use crate::store::{AuthorKind, Direction, InboundMessage, IngestOutcome, Store};

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

impl From<InboxError> for EmailInError {
    fn from(e: InboxError) -> EmailInError {
        match e {
            InboxError::Invalid { field, message } => {
                EmailInError::Invalid(format!("{field}: {message}"))
            }
            InboxError::Store(s) => EmailInError::Store(s),
        }
    }
}

/// An inbound email read, threaded and judged, ready for the inbox.
pub struct ReadEmail {
    pub intake: Intake,
    pub parsed: ParsedEmail,
    /// normal, auto_reply or bounce
    pub kind: &'static str,
    pub will_answer: bool,
}

impl ReadEmail {
    /// What the sender of the email is told once the inbox has it.
    pub fn receipt(&self, outcome: &IngestOutcome) -> EmailReceipt {
        EmailReceipt {
            conversation_id: outcome.conversation_id.clone(),
            message_id: outcome.message_id.clone(),
            duplicate: outcome.duplicate,
            kind: self.kind,
            will_answer: self.will_answer,
        }
    }
}

/// Stores an inbound email with its turn through the store alone (`concierge email ingest`: the
/// running server's worker answers it). A server receiving mail uses [`read`] and
/// [`crate::inbox::receive`], which also tells live subscribers.
pub async fn receive(
    store: &Store,
    data_dir: &Path,
    support_address: &str,
    trusted_authserv_ids: &[String],
    raw: &[u8],
) -> Result<(EmailReceipt, ParsedEmail), EmailInError> {
    let read = read(store, data_dir, support_address, trusted_authserv_ids, raw).await?;
    let outcome = crate::inbox::store_message(store, read.intake.clone()).await?;
    Ok((read.receipt(&outcome), read.parsed))
}

/// Reads a raw email: threads it, decides how far its sender is trusted and whether it is
/// answered, saves its attachments. `trusted_authserv_ids` are the relays whose
/// `Authentication-Results` header is believed (`[email] trusted_authserv_ids`).
pub async fn read(
    store: &Store,
    data_dir: &Path,
    support_address: &str,
    trusted_authserv_ids: &[String],
    raw: &[u8],
) -> Result<ReadEmail, EmailInError> {
    let parsed = parse::parse(raw).map_err(|e| EmailInError::Unparseable(e.to_string()))?;
    let from = parsed.from.clone().ok_or(EmailInError::NoSender)?;
    // Without a Message-ID, a digest of the message stands in, so a redelivery still dedupes.
    let external_id = parsed
        .message_id
        .clone()
        .unwrap_or_else(|| format!("sha256:{}", crate::util::sha256_hex(raw)));

    let mut refs: Vec<String> = parsed.references.clone();
    refs.extend(parsed.in_reply_to.iter().cloned());
    let token = thread::find_token(&parsed, support_address);
    let token_conversation = match &token {
        Some(t) => store.conversation_by_reply_token(t).await?,
        None => None,
    };
    let (conversation, thread_key) =
        match store.conversation_by_external_ids("email", &refs).await? {
            Some((id, key)) => (Some(id), key),
            None => match &token_conversation {
                Some((id, key)) => (Some(id.clone()), key.clone()),
                None => (None, format!("email:{external_id}")),
            },
        };
    let answers_our_email = match &conversation {
        Some(id) => {
            let token_ok = token.as_deref().is_some_and(thread::strong_token)
                && token_conversation.as_ref().is_some_and(|(t, _)| t == id);
            answers_our_email(store, id, &refs, token_ok).await?
        }
        None => false,
    };
    let proof = auth::sender_proof(&parsed, trusted_authserv_ids);
    let proven = proof.is_ok();
    let sender_auth = match &proof {
        Ok(p) => json!({"proven": true, "method": p.method, "authserv_id": p.authserv_id}),
        Err(why) => json!({"proven": false, "reason": why.as_str()}),
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
        sender_verified: proven,
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
            "sender_auth": sender_auth,
            "answers_our_email": answers_our_email,
        }),
    };
    let will_answer = kind == "normal" && !is_no_reply(&from.email);
    let trust = Trust {
        sender_email: Some(from.email.clone()),
        sender_verified: proven,
        sender_email_is_claim: true,
        confirms_writes: proven || answers_our_email,
        identity_linkable: proven,
        verify_from_claims: true,
        vouched_customer: None,
        requester: None,
    };
    Ok(ReadEmail {
        intake: Intake {
            message: msg,
            trust,
            answer: if will_answer {
                Answer::Agent
            } else {
                Answer::Nothing
            },
        },
        parsed,
        kind,
        will_answer,
    })
}

/// Whether a message joining this conversation answers one of our own emails that went to an
/// address on file of the conversation's (verified) customer: its In-Reply-To/References name
/// the Message-ID of such an email, or it carries the conversation's reply token
/// (`token_ok`) and every email of the conversation went to such an address — a token that was
/// ever mailed elsewhere (the conversation began at another address) proves nothing. Message-IDs
/// minted before they were fully random (`dlv_…`) and emails without a recorded recipient do
/// not count.
async fn answers_our_email(
    store: &Store,
    conversation_id: &str,
    refs: &[String],
    token_ok: bool,
) -> Result<bool, EmailInError> {
    let Some(view) = store.conversation_view(conversation_id).await? else {
        return Ok(false);
    };
    let on_file: Vec<String> = match &view.conversation.customer_id {
        Some(id) => match store.get_customer(id).await? {
            Some(c) => c.emails.iter().map(|e| e.trim().to_lowercase()).collect(),
            None => return Ok(false),
        },
        None => return Ok(false),
    };
    let sent: Vec<(&str, Option<&str>)> = view
        .messages
        .iter()
        .filter(|m| m.direction == Direction::Outbound && m.channel == "email")
        .filter_map(|m| {
            let id = m.external_id.as_deref()?;
            Some((
                id,
                m.meta.get("sent_to").and_then(serde_json::Value::as_str),
            ))
        })
        .collect();
    let to_file =
        |to: Option<&str>| to.is_some_and(|a| on_file.iter().any(|e| e.eq_ignore_ascii_case(a)));
    let by_id = sent
        .iter()
        .any(|(id, to)| !id.starts_with("dlv_") && refs.iter().any(|r| r == id) && to_file(*to));
    let by_token = token_ok && !sent.is_empty() && sent.iter().all(|(_, to)| to_file(*to));
    Ok(by_id || by_token)
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
