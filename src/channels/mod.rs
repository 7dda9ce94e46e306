//! Channels: one adapter per way shoppers reach the brand. Inbound, an adapter turns a
//! platform's payload into the shared [`InboundMessage`](crate::store::InboundMessage) with the
//! trust it places in the sender, and hands it to the inbox ([`crate::inbox::receive`]), which
//! stores it and schedules its turn. Outbound, a reply on a channel with an outbox (email,
//! Telegram, marketplaces) is a delivery that the job worker sends through [`send`] — the one
//! dispatch from a [`Channel`] to its sender ([`outbox`] runs the delivery job). Channel
//! settings live in `channels/*.toml`, outbound wording in `channels/*.hbs`.

pub mod email;
pub mod marketplace;
pub mod outbox;
pub mod shopify;
pub mod telegram;
pub mod webchat;

use crate::state::AppState;
use crate::store::Delivery;

pub use crate::store::Channel;

/// Why a send failed: worth another attempt, or never going to work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// May pass (a timeout, a 5xx, a rate limit, the channel not configured yet): retried with
    /// the channel's backoff until the delivery has used its attempts.
    #[error("{0}")]
    Transient(String),
    /// Refused for good (a chat that does not exist, a bot the user blocked, a recipient the
    /// mail server rejects, a 4xx from a marketplace): a dead letter at once.
    #[error("{0}")]
    Permanent(String),
}

impl From<crate::store::StoreError> for SendError {
    fn from(e: crate::store::StoreError) -> SendError {
        SendError::Transient(e.to_string())
    }
}

/// Sends one delivery on its channel; `Ok` carries the channel's id for what was sent.
pub async fn send(
    state: &AppState,
    channel: &Channel,
    delivery: &Delivery,
) -> Result<Option<String>, SendError> {
    match channel {
        Channel::Email => email::send(state, delivery).await,
        Channel::Telegram => telegram::send(state, delivery).await,
        Channel::Marketplace(name) => marketplace::send(state, name, delivery).await,
        Channel::Api | Channel::Webchat | Channel::A2a => Err(SendError::Permanent(format!(
            "{channel} answers in-band and has no outbox sender"
        ))),
    }
}
