//! The one inbox: every channel hands its messages here, normalized as
//! [`InboundMessage`](crate::store::InboundMessage). The inbox validates them, stores them
//! (idempotently, before the channel gets its acknowledgement) and counts them. It does not
//! parse channel payloads (that is each channel adapter's job) and does not decide replies
//! (that is the brand agent's).

pub mod events;
pub mod relay;

use crate::store::{InboundMessage, IngestOutcome, Store, StoreError};
use crate::telemetry;

/// Longest message text accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 20_000;
/// Longest thread key or channel message id accepted.
pub const MAX_KEY_CHARS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The message is unusable as given; the string names the field and the problem.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks and stores an inbound message.
pub async fn receive(store: &Store, msg: &InboundMessage) -> Result<IngestOutcome, InboxError> {
    validate(msg)?;
    let outcome = store.ingest(msg).await?;
    if !outcome.duplicate {
        telemetry::count_message(&msg.channel, "in");
    }
    Ok(outcome)
}

pub(crate) fn validate(msg: &InboundMessage) -> Result<(), InboxError> {
    let invalid = |field, message: &str| InboxError::Invalid {
        field,
        message: message.to_string(),
    };
    if msg.thread_key.trim().is_empty() {
        return Err(invalid("thread", "must not be empty"));
    }
    if msg.thread_key.chars().count() > MAX_KEY_CHARS {
        return Err(invalid("thread", "is longer than 256 characters"));
    }
    if let Some(id) = &msg.external_id
        && (id.trim().is_empty() || id.chars().count() > MAX_KEY_CHARS)
    {
        return Err(invalid("message_id", "must be 1 to 256 characters"));
    }
    if msg.text.trim().is_empty() && msg.attachments.as_array().is_none_or(Vec::is_empty) {
        return Err(invalid("text", "must not be empty"));
    }
    if msg.text.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid("text", "is longer than 20000 characters"));
    }
    Ok(())
}
