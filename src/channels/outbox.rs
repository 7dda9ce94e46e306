//! The outbox worker side: delivers a queued reply through its channel's sender, and runs the
//! brand agent for channels that acknowledge before answering. At-least-once with a stable
//! identity per delivery (an email keeps one Message-ID across retries), exponential backoff
//! with jitter between attempts (the job worker's), and dead letters kept with their last error
//! for staff, who can retry them.

use serde_json::Value;

use crate::agent::Inbound;
use crate::app::AppState;
use crate::store::{Direction, JOB_DELIVER};

/// Sends one delivery. `Err` is the attempt's error (recorded; the job is retried).
pub async fn deliver(state: &AppState, delivery_id: &str) -> Result<(), String> {
    let store = &state.store;
    let delivery = store
        .get_delivery(delivery_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no delivery {delivery_id}"))?;
    if delivery.status == "sent" {
        return Ok(());
    }
    let result = send_on_channel(state, &delivery).await;
    match result {
        Ok(external_id) => {
            store
                .mark_delivery_sent(&delivery.id, external_id.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            crate::telemetry::count_message(&delivery.channel, "delivered");
            Ok(())
        }
        Err(e) => {
            if let Err(se) = store.mark_delivery_failed(&delivery.id, &e, false).await {
                tracing::error!(error = %se, "could not record a failed delivery");
            }
            Err(e)
        }
    }
}

/// Hands a delivery to its channel's sender; `Ok` carries the channel's id for what was sent.
async fn send_on_channel(
    state: &AppState,
    delivery: &crate::store::Delivery,
) -> Result<Option<String>, String> {
    match delivery.channel.as_str() {
        "email" => crate::channels::email::send(state, delivery).await,
        "telegram" => crate::channels::telegram::send(state, delivery).await,
        c if c.starts_with("marketplace:") => {
            crate::channels::marketplace::send(state, delivery).await
        }
        other => Err(format!("channel {other:?} has no sender")),
    }
}

/// The reply a delivery carries, and its conversation (for the channel senders).
pub async fn reply_of(
    store: &crate::store::Store,
    delivery: &crate::store::Delivery,
) -> Result<(crate::store::Message, crate::store::Conversation), String> {
    let err = |e: crate::store::StoreError| e.to_string();
    let reply = store
        .message_by_id(&delivery.message_id)
        .await
        .map_err(err)?
        .ok_or("the reply to send no longer exists")?;
    let conversation = store
        .get_conversation(&delivery.conversation_id)
        .await
        .map_err(err)?
        .ok_or("the conversation no longer exists")?;
    Ok((reply, conversation))
}

/// Called when a job has used all its attempts.
pub async fn on_dead_job(
    state: &AppState,
    kind: &str,
    payload: &Value,
) -> crate::store::StoreResult<()> {
    if kind == JOB_DELIVER
        && let Some(id) = payload.get("delivery_id").and_then(Value::as_str)
    {
        tracing::error!(
            delivery = id,
            "delivery gave up; it is a dead letter until staff retry it"
        );
        state.store.mark_delivery_dead(id).await?;
    }
    Ok(())
}

/// Answers a stored inbound message (the `agent_reply` job).
pub async fn agent_reply(state: &AppState, payload: &Value) -> Result<(), String> {
    let message_id = payload
        .get("message_id")
        .and_then(Value::as_str)
        .ok_or("agent_reply job without message_id")?;
    let store = &state.store;
    // Answered already (a retry after a crash between reply and completion)?
    if store
        .reply_to(message_id)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let message = store
        .message_by_id(message_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no message {message_id}"))?;
    if message.direction != Direction::Inbound {
        return Ok(());
    }
    let identity = match &message.author_id {
        Some(id) => store.get_identity(id).await.map_err(|e| e.to_string())?,
        None => None,
    };
    if message.channel == crate::channels::telegram::CHANNEL
        && !crate::channels::telegram::inbound::is_private(&message.meta)
    {
        // A group chat: a short public answer and an invitation to a private chat; the brand
        // agent (verification, account data) never runs here.
        return crate::channels::telegram::group::answer(state, &message)
            .await
            .map_err(|e| format!("{e:#}"));
    }
    let email = identity.as_ref().and_then(|i| i.email.clone());
    let trust = Trust::of(&message);
    let inbound = Inbound {
        conversation_id: &message.conversation_id,
        message_id: &message.id,
        identity_id: message.author_id.as_deref(),
        channel: &message.channel,
        text: &message.text,
        sender_email: email.as_deref(),
        sender_verified: trust.sender_verified,
        sender_email_is_claim: message.channel == "email",
        confirms_writes: trust.confirms_writes,
        identity_linkable: trust.identity_linkable,
        requester: None,
        verify_from_claims: true,
        vouched_customer: None,
    };
    crate::channels::answer(state, &inbound)
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

/// How far the channel vouched for a stored inbound message's sender, as its adapter decided
/// at ingest (the message's `meta.trust`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trust {
    pub sender_verified: bool,
    pub identity_linkable: bool,
    pub confirms_writes: bool,
}

impl Trust {
    /// Reads `meta.trust`. Messages stored without it (before it existed): email proves
    /// nothing; a Telegram message is trusted in a private chat only; other channels keep
    /// what they had (linkable, confirming, not verified).
    pub fn of(message: &crate::store::Message) -> Trust {
        if let Some(t) = message.meta.get("trust").filter(|t| t.is_object()) {
            let flag = |k: &str| t.get(k).and_then(Value::as_bool).unwrap_or(false);
            return Trust {
                sender_verified: flag("sender_verified"),
                identity_linkable: flag("identity_linkable"),
                confirms_writes: flag("confirms_writes"),
            };
        }
        let open = match message.channel.as_str() {
            "email" => false,
            crate::channels::telegram::CHANNEL => {
                crate::channels::telegram::inbound::is_private(&message.meta)
            }
            _ => true,
        };
        Trust {
            sender_verified: false,
            identity_linkable: open,
            confirms_writes: open,
        }
    }
}
