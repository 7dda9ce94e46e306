//! Replies that are not a turn's answer — a staff member's, written in the inbox — leave the way
//! a turn's answer does: stored with their delivery in one transaction (when the conversation's
//! channel sends through the outbox), published to live subscribers (web chat delivers it over
//! its socket, the inbox shows it), and the worker woken to send it.

use crate::events::InboxEvent;
use crate::state::AppState;
use crate::store::{
    AuthorKind, Channel, Conversation, Direction, Message, NewDelivery, NewMessage, StoreError,
};

/// Sends `text` by staff member `staff_id` on the conversation's channel.
pub async fn send_staff_reply(
    state: &AppState,
    conversation: &Conversation,
    staff_id: &str,
    text: &str,
) -> Result<Message, StoreError> {
    let channel = Channel::parse(&conversation.channel).map_err(StoreError::Conflict)?;
    let delivery = channel.delivers().then(|| NewDelivery {
        channel: conversation.channel.clone(),
        max_attempts: state.retry_policy(&channel).max_attempts,
    });
    let message = state
        .store
        .append_outbound(
            &conversation.id,
            &NewMessage {
                direction: Direction::Outbound,
                author_kind: AuthorKind::Staff,
                author_id: Some(staff_id.to_string()),
                text: text.to_string(),
                html: None,
                meta: serde_json::json!({}),
            },
            None,
            delivery.as_ref(),
        )
        .await?;
    crate::telemetry::count_message(&conversation.channel, "out");
    state.hub.publish(InboxEvent::Message {
        conversation_id: conversation.id.clone(),
        message: Box::new(message.clone()),
    });
    if delivery.is_some() {
        state.wake_worker();
    }
    Ok(message)
}
