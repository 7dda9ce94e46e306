//! Live inbox events: a new message, a status change, someone typing. Published in-process
//! after the store has committed, so web chat sockets and the staff inbox update without a
//! reload. Events are hints to refresh; the store stays the truth (a subscriber that lags
//! re-reads what it missed). With several instances on PostgreSQL, [`crate::inbox::relay`] also
//! carries each event (its ids) to the other instances, whose hubs publish it as their own.

use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::store::Message;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboxEvent {
    Message {
        conversation_id: String,
        message: Box<Message>,
    },
    Status {
        conversation_id: String,
        status: String,
    },
    Typing {
        conversation_id: String,
        author: String,
    },
}

impl InboxEvent {
    pub fn conversation_id(&self) -> &str {
        match self {
            InboxEvent::Message {
                conversation_id, ..
            }
            | InboxEvent::Status {
                conversation_id, ..
            }
            | InboxEvent::Typing {
                conversation_id, ..
            } => conversation_id,
        }
    }
}

#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<InboxEvent>,
    /// Cancelled when the service shuts down: endless subscribers (the inbox's event streams)
    /// end so that in-flight requests can finish.
    closing: tokio_util::sync::CancellationToken,
    /// Where published events also go to reach other instances, once a relay is attached.
    relay: Arc<OnceLock<mpsc::Sender<InboxEvent>>>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub::new(4096)
    }
}

impl EventHub {
    pub fn new(capacity: usize) -> EventHub {
        let (tx, _) = broadcast::channel(capacity.max(16));
        EventHub {
            tx,
            closing: tokio_util::sync::CancellationToken::new(),
            relay: Arc::new(OnceLock::new()),
        }
    }

    /// Tells every subscriber, on this instance and (through the relay) the others; nobody
    /// listening is fine.
    pub fn publish(&self, event: InboxEvent) {
        if let Some(relay) = self.relay.get()
            && let Err(mpsc::error::TrySendError::Full(_)) = relay.try_send(event.clone())
        {
            tracing::warn!("the event relay is behind; other instances miss a live event");
        }
        let _ = self.tx.send(event);
    }

    /// Tells this instance's subscribers only (an event another instance published).
    pub(crate) fn publish_local(&self, event: InboxEvent) {
        let _ = self.tx.send(event);
    }

    /// Sends every event published from now on to `relay` too. False when a relay is
    /// attached already.
    pub(crate) fn attach_relay(&self, relay: mpsc::Sender<InboxEvent>) -> bool {
        self.relay.set(relay).is_ok()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<InboxEvent> {
        self.tx.subscribe()
    }

    /// Says the service is shutting down.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Completes once [`close`](Self::close) has been called.
    pub async fn closed(&self) {
        self.closing.cancelled().await
    }
}
