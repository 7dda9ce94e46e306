//! Live updates for open inbox pages: `GET /inbox/events` is a server-sent event stream of the
//! event hub, reduced to what a page needs to refresh itself — which conversation changed, and
//! how. The page then fetches the new rows or messages as HTML (rendered and escaped by the same
//! templates), so the stream never carries message text.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::WebState;
use super::auth::StaffAuth;
use crate::events::{EventHub, InboxEvent};

pub async fn events(State(web): State<WebState>, _auth: StaffAuth) -> impl IntoResponse {
    let rx = web.app.hub.subscribe();
    Sse::new(stream(web.app.hub.clone(), rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(20)))
}

/// The hub's events until the service shuts down (then the stream ends, so the graceful
/// shutdown is not held up; the browser reconnects to the next instance by itself).
fn stream(
    hub: EventHub,
    rx: tokio::sync::broadcast::Receiver<InboxEvent>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold((hub, rx), |(hub, mut rx)| async move {
        loop {
            let next = tokio::select! {
                _ = hub.closed() => return None,
                next = rx.recv() => next,
            };
            match next {
                Ok(event) => {
                    if let Some(e) = to_event(&event) {
                        return Some((Ok(e), (hub, rx)));
                    }
                }
                // Missed events: tell the page to re-read what it shows.
                Err(RecvError::Lagged(_)) => {
                    return Some((Ok(Event::default().event("resync").data("{}")), (hub, rx)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

fn to_event(event: &InboxEvent) -> Option<Event> {
    match event {
        InboxEvent::Message {
            conversation_id,
            message,
        } => Some(
            Event::default().event("message").data(
                json!({
                    "conversation_id": conversation_id,
                    "seq": message.seq,
                    "author_kind": message.author_kind.as_str(),
                })
                .to_string(),
            ),
        ),
        InboxEvent::Status {
            conversation_id,
            status,
        } => Some(
            Event::default()
                .event("status")
                .data(json!({"conversation_id": conversation_id, "status": status}).to_string()),
        ),
        _ => None,
    }
}
