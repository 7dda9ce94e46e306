//! The outbox's sending side: the job worker's handler for [`JOB_DELIVER`] sends one queued
//! reply through [`super::send`] and records the outcome on the delivery row. At-least-once
//! with a stable identity per delivery (an email keeps one Message-ID across retries, a
//! marketplace gets the same `Idempotency-Key`). A transient failure is retried with the
//! channel's backoff (`[email]`/`[telegram]` `max_attempts`, `retry_base_ms`, `retry_max_ms`; a
//! marketplace file's `reply` settings); a permanent one — or the last attempt — leaves a dead
//! letter, kept with its last error for staff, who can retry it.

use serde_json::Value;

use super::{Channel, SendError};
use crate::state::AppState;
use crate::store::{Conversation, Delivery, JOB_DELIVER, Job, Message, Store};
use crate::worker::{JobError, JobFuture};

/// The worker's handler for [`JOB_DELIVER`] (payload `{"delivery_id"}`).
pub fn job<'a>(state: &'a AppState, job: &'a Job) -> JobFuture<'a> {
    Box::pin(deliver(state, job))
}

async fn deliver(state: &AppState, job: &Job) -> Result<(), JobError> {
    let store = &state.store;
    let id = job
        .payload
        .get("delivery_id")
        .and_then(Value::as_str)
        .ok_or_else(|| JobError::Dead(format!("{JOB_DELIVER} job without delivery_id")))?;
    let delivery = store
        .get_delivery(id)
        .await?
        .ok_or_else(|| JobError::Dead(format!("no delivery {id}")))?;
    if delivery.status == "sent" {
        return Ok(());
    }
    let channel = match Channel::parse(&delivery.channel) {
        Ok(c) => c,
        Err(e) => {
            store.mark_delivery_failed(&delivery.id, &e, true).await?;
            return Err(JobError::Dead(e));
        }
    };
    let policy = state.retry_policy(&channel);
    match super::send(state, &channel, &delivery).await {
        Ok(external_id) => {
            store
                .mark_delivery_sent(&delivery.id, external_id.as_deref())
                .await?;
            crate::telemetry::count_message(&delivery.channel, "delivered");
            Ok(())
        }
        Err(SendError::Permanent(e)) => {
            store.mark_delivery_failed(&delivery.id, &e, true).await?;
            tracing::error!(delivery = %delivery.id, channel = %channel, error = %e,
                "the channel refused a delivery for good; it is a dead letter until staff retry it");
            Err(JobError::Dead(e))
        }
        Err(SendError::Transient(e)) => {
            let last = job.attempts >= job.max_attempts;
            store.mark_delivery_failed(&delivery.id, &e, last).await?;
            if last {
                tracing::error!(delivery = %delivery.id, channel = %channel, error = %e,
                    "delivery gave up; it is a dead letter until staff retry it");
            }
            Err(JobError::Retry { error: e, policy })
        }
    }
}

/// The reply a delivery carries, and its conversation (for the channel senders).
pub async fn reply_of(
    store: &Store,
    delivery: &Delivery,
) -> Result<(Message, Conversation), SendError> {
    let reply = store
        .message_by_id(&delivery.message_id)
        .await?
        .ok_or_else(|| SendError::Permanent("the reply to send no longer exists".into()))?;
    let conversation = store
        .get_conversation(&delivery.conversation_id)
        .await?
        .ok_or_else(|| SendError::Permanent("the conversation no longer exists".into()))?;
    Ok((reply, conversation))
}
