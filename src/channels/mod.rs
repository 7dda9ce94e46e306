//! Channels: one adapter per way shoppers reach the brand. Inbound, an adapter turns a
//! platform's payload into the shared [`InboundMessage`](crate::store::InboundMessage) and
//! hands it to the inbox; outbound, the brand's replies leave through the persistent outbox
//! ([`crate::outbox`]) and the adapter's sender. Channel settings live in `channels/*.toml`,
//! outbound wording in `channels/*.hbs`.

pub mod email;
pub mod marketplace;
pub mod shopify;
pub mod telegram;
pub mod webchat;

use crate::agent::{AgentReply, Inbound};
use crate::app::AppState;
use crate::inbox::events::InboxEvent;

/// Channels whose replies leave through the outbox (the others answer in-band: the API in its
/// HTTP response, web chat over its socket).
pub fn uses_outbox(channel: &str) -> bool {
    matches!(channel, "email" | "telegram") || channel.starts_with("marketplace:")
}

/// Has the brand agent answer a stored inbound message, then tells live subscribers and puts
/// the reply in the outbox when its channel needs one.
pub async fn answer(state: &AppState, inbound: &Inbound<'_>) -> anyhow::Result<AgentReply> {
    state.hub.publish(InboxEvent::Typing {
        conversation_id: inbound.conversation_id.to_string(),
        author: "brand_agent".into(),
    });
    let reply = state.agent.reply(inbound).await?;
    state.hub.publish(InboxEvent::Message {
        conversation_id: inbound.conversation_id.to_string(),
        message: Box::new(reply.message.clone()),
    });
    if let Some(e) = &reply.escalation {
        state.hub.publish(InboxEvent::Status {
            conversation_id: e.conversation_id.clone(),
            status: "escalated".into(),
        });
    }
    if uses_outbox(inbound.channel) {
        state
            .store
            .enqueue_delivery(
                &reply.message.id,
                inbound.conversation_id,
                inbound.channel,
                state.config.email.max_attempts,
            )
            .await?;
    }
    Ok(reply)
}
