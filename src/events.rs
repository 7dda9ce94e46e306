//! Live inbox events: a new message, a status change, someone typing. Published in-process
//! after the store has committed, so web chat sockets and the staff inbox update without a
//! reload. Events are hints to refresh; the store stays the truth (a subscriber that lags
//! re-reads what it missed).

use serde::Serialize;
use tokio::sync::broadcast;

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
        }
    }

    /// Tells every subscriber; nobody listening is fine.
    pub fn publish(&self, event: InboxEvent) {
        let _ = self.tx.send(event);
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
