//! Live inbox events across instances (PostgreSQL). Every event this instance's hub publishes is
//! also sent, as ids only, on the [`EVENTS_CHANNEL`] notification channel, tagged with this
//! instance's id; every instance reads the channel, skips its own, fetches the rows the ids
//! name (the message, the conversation's status) and publishes the event to its local
//! subscribers: inbox event streams, web chat sockets. So a staff reply sent through one
//! instance reaches a chat socket held by another at once. Message text never travels in a
//! notification.
//!
//! Notifications are fire-and-forget: when the listening connection was lost, this instance
//! re-reads the messages and status changes stored since (by time, with a margin for clocks)
//! and publishes them again; subscribers de-duplicate by message id. SQLite has one instance
//! and no relay.

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::{EventHub, InboxEvent};
use crate::store::Store;
use crate::store::cluster::{EVENTS_CHANNEL, Listener, MAX_PAYLOAD_BYTES, Notice};
use crate::util::{new_id, now_ms};

/// Events waiting to be sent before publishing starts dropping them for other instances.
const OUTGOING: usize = 4_096;
/// Events put in one notification at most.
const PER_NOTIFICATION: usize = 64;
/// After a lost connection, rows this much older than the loss are re-read too: instances'
/// clocks differ and rows are stamped by the writer's.
const CLOCK_MARGIN_MS: i64 = 10_000;
/// Rows re-read after a lost connection at most (of messages, and of conversations).
const CATCH_UP_ROWS: i64 = 1_000;

/// One notification: the sending instance and its events.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Batch {
    #[serde(rename = "i")]
    instance: String,
    #[serde(rename = "e")]
    events: Vec<EventRef>,
}

/// An event by reference: what a reader needs to fetch it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "t", rename_all = "snake_case")]
enum EventRef {
    Message {
        #[serde(rename = "c")]
        conversation: String,
        #[serde(rename = "m")]
        message: String,
    },
    Status {
        #[serde(rename = "c")]
        conversation: String,
    },
    Typing {
        #[serde(rename = "c")]
        conversation: String,
        #[serde(rename = "a")]
        author: String,
    },
}

impl EventRef {
    fn of(event: &InboxEvent) -> EventRef {
        match event {
            InboxEvent::Message {
                conversation_id,
                message,
            } => EventRef::Message {
                conversation: conversation_id.clone(),
                message: message.id.clone(),
            },
            InboxEvent::Status {
                conversation_id, ..
            } => EventRef::Status {
                conversation: conversation_id.clone(),
            },
            InboxEvent::Typing {
                conversation_id,
                author,
            } => EventRef::Typing {
                conversation: conversation_id.clone(),
                author: author.clone(),
            },
        }
    }
}

/// Attaches the relay to `hub` and starts it, when this instance listens for other instances
/// (PostgreSQL); None on SQLite. Ends on `stop`.
pub fn spawn(
    store: &Store,
    hub: &EventHub,
    listener: Option<&Listener>,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    let listener = listener?;
    let (tx, rx) = mpsc::channel(OUTGOING);
    if !hub.attach_relay(tx) {
        tracing::warn!("the event hub has a relay already");
        return None;
    }
    let relay = Relay {
        store: store.clone(),
        hub: hub.clone(),
        instance: new_id("ins"),
    };
    Some(tokio::spawn(relay.run(rx, listener.subscribe(), stop)))
}

struct Relay {
    store: Store,
    hub: EventHub,
    /// Tags this instance's notifications so it can skip them.
    instance: String,
}

impl Relay {
    async fn run(
        self,
        mut outgoing: mpsc::Receiver<InboxEvent>,
        mut notices: broadcast::Receiver<Notice>,
        stop: CancellationToken,
    ) {
        // The last moment notifications were known to arrive in full.
        let mut heard = now_ms();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = outgoing.recv() => {
                    let Some(event) = event else { return };
                    let mut events = vec![EventRef::of(&event)];
                    while events.len() < PER_NOTIFICATION {
                        match outgoing.try_recv() {
                            Ok(e) => events.push(EventRef::of(&e)),
                            Err(_) => break,
                        }
                    }
                    self.send(events).await;
                }
                notice = notices.recv() => match notice {
                    Ok(Notice::Notification { channel, payload }) if channel == EVENTS_CHANNEL => {
                        heard = now_ms();
                        self.receive(&payload).await;
                    }
                    Ok(Notice::Notification { .. }) => heard = now_ms(),
                    Ok(Notice::Resumed { lost_at }) => {
                        self.catch_up(lost_at).await;
                        heard = now_ms();
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.catch_up(heard).await;
                        heard = now_ms();
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    /// Notifies the other instances, splitting into payloads PostgreSQL accepts.
    async fn send(&self, events: Vec<EventRef>) {
        for payload in payloads(&self.instance, events) {
            if let Err(e) = self.store.notify(EVENTS_CHANNEL, &payload).await {
                tracing::warn!(error = %e, "cannot tell other instances about live events");
            }
        }
    }

    /// Publishes another instance's events here, with their rows read from the store.
    async fn receive(&self, payload: &str) {
        let batch: Batch = match serde_json::from_str(payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "ignored an unreadable live-event notification");
                return;
            }
        };
        if batch.instance == self.instance {
            return;
        }
        for event in batch.events {
            if let Err(e) = self.publish(event).await {
                tracing::warn!(error = %e, "cannot read a live event's rows");
            }
        }
    }

    async fn publish(&self, event: EventRef) -> crate::store::StoreResult<()> {
        match event {
            EventRef::Message {
                conversation,
                message,
            } => {
                if let Some(m) = self.store.message_by_id(&message).await? {
                    self.hub.publish_local(InboxEvent::Message {
                        conversation_id: conversation,
                        message: Box::new(m),
                    });
                }
            }
            EventRef::Status { conversation } => {
                if let Some(c) = self.store.get_conversation(&conversation).await? {
                    self.hub.publish_local(InboxEvent::Status {
                        conversation_id: conversation,
                        status: c.status.as_str().to_string(),
                    });
                }
            }
            EventRef::Typing {
                conversation,
                author,
            } => self.hub.publish_local(InboxEvent::Typing {
                conversation_id: conversation,
                author,
            }),
        }
        Ok(())
    }

    /// Publishes again what may have been missed since `lost_at`: messages stored and
    /// conversations changed since then (this instance's own included; subscribers
    /// de-duplicate by id).
    async fn catch_up(&self, lost_at: i64) {
        let since = lost_at - CLOCK_MARGIN_MS;
        let caught = async {
            let messages = self
                .store
                .messages_stored_since(since, CATCH_UP_ROWS)
                .await?;
            let conversations = self
                .store
                .conversations_changed_since(since, CATCH_UP_ROWS)
                .await?;
            for c in &conversations {
                self.hub.publish_local(InboxEvent::Status {
                    conversation_id: c.id.clone(),
                    status: c.status.as_str().to_string(),
                });
            }
            let n = messages.len();
            for m in messages {
                self.hub.publish_local(InboxEvent::Message {
                    conversation_id: m.conversation_id.clone(),
                    message: Box::new(m),
                });
            }
            Ok::<_, crate::store::StoreError>((n, conversations.len()))
        };
        match caught.await {
            Ok((messages, conversations)) => tracing::info!(
                messages,
                conversations,
                "re-published live events that other instances may have sent while this one was not listening"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot catch up on missed live events"),
        }
    }
}

/// The notifications carrying `events`: JSON batches under PostgreSQL's payload limit.
fn payloads(instance: &str, events: Vec<EventRef>) -> Vec<String> {
    let encode = |events: Vec<EventRef>| {
        serde_json::to_string(&Batch {
            instance: instance.to_string(),
            events,
        })
        .unwrap_or_default()
    };
    let mut out = Vec::new();
    let mut current: Vec<EventRef> = Vec::new();
    for event in events {
        current.push(event);
        if encode(current.clone()).len() > MAX_PAYLOAD_BYTES {
            let last = current.pop();
            if !current.is_empty() {
                out.push(encode(std::mem::take(&mut current)));
            }
            match last {
                // One event alone too large (an absurd typing name): it is not sent.
                Some(e) if encode(vec![e.clone()]).len() > MAX_PAYLOAD_BYTES => {
                    tracing::warn!("a live event is too large to send to other instances");
                }
                Some(e) => current.push(e),
                None => {}
            }
        }
    }
    if !current.is_empty() {
        out.push(encode(current));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> EventRef {
        EventRef::Message {
            conversation: format!("cnv_{n:032}"),
            message: format!("msg_{n:032}"),
        }
    }

    #[test]
    fn payloads_carry_ids_only_and_stay_under_the_limit() {
        let events: Vec<EventRef> = (0..200).map(message).collect();
        let out = payloads("ins_1", events.clone());
        assert!(out.len() > 1, "200 events need several notifications");
        let mut back = Vec::new();
        for p in &out {
            assert!(p.len() <= MAX_PAYLOAD_BYTES, "{}", p.len());
            let b: Batch = serde_json::from_str(p).unwrap();
            assert_eq!(b.instance, "ins_1");
            back.extend(b.events);
        }
        assert_eq!(back, events, "every event once, in order");
        assert_eq!(
            payloads("ins_1", vec![message(1)])[0],
            format!(
                r#"{{"i":"ins_1","e":[{{"t":"message","c":"cnv_{:032}","m":"msg_{:032}"}}]}}"#,
                1, 1
            )
        );
    }

    #[test]
    fn an_oversized_event_is_dropped_not_split() {
        let huge = EventRef::Typing {
            conversation: "cnv_1".into(),
            author: "x".repeat(MAX_PAYLOAD_BYTES),
        };
        let out = payloads("ins_1", vec![message(1), huge, message(2)]);
        let back: Vec<EventRef> = out
            .iter()
            .flat_map(|p| serde_json::from_str::<Batch>(p).unwrap().events)
            .collect();
        assert_eq!(back, vec![message(1), message(2)]);
    }
}
