//! The conversation turn: the durable job ([`JOB_TURN`]) that answers one stored inbound
//! message. It runs on the job worker, or at once in the request that brought the message
//! ([`answer_now`]: the API and A2A wait for it; web chat runs it in a task of its own) — the
//! same job either way, claimed with a lease, so a process killed mid-turn leaves it to whichever
//! worker takes it over when the lease runs out.
//!
//! A turn: takes the conversation's lock ([`Store::lock_conversation`]); if the message has its
//! answer already (a re-run after a crash), only makes sure that answer's delivery is queued;
//! if a person has the conversation (escalated, or staff replied, until staff resolve it or hand
//! it back), leaves the message to them unanswered (publishing [`WITH_STAFF`]); else announces the brand agent typing, has the answer composed — the brand agent's dialogue,
//! the `/start` greeting or a group chat's invitation, as the message's stored [`Answer`] says,
//! with the [`Inbound`] rebuilt from its stored [`Trust`] — stores it naming the message it
//! answers (one answer per message, enforced by the database) with its delivery in the same
//! transaction, publishes it, and wakes the worker for the delivery (and whatever else the turn
//! queued).
//!
//! [`Store::lock_conversation`]: crate::store::Store::lock_conversation

use std::time::Duration;

use serde_json::Value;

use super::trust::{Answer, Trust};
use crate::agent::Inbound;
use crate::agent::fixed::FixedReply;
use crate::events::InboxEvent;
use crate::state::AppState;
use crate::store::{
    Channel, Direction, IngestOutcome, Job, JobStatus, Message, NewDelivery, StoreError,
};
use crate::util::new_id;
use crate::worker::{self, JobError, JobFuture};

/// The turn job's kind. Payload: `{"conversation_id", "message_id"}`; dedupe key
/// `agent_reply:<message id>` (one turn per message). The name predates the turn answering
/// more than the brand agent's way; jobs queued under it keep running.
pub const JOB_TURN: &str = "agent_reply";
/// Attempts a turn gets before it is a dead letter.
pub const TURN_ATTEMPTS: i64 = 5;

/// The worker's handler for [`JOB_TURN`].
pub fn job<'a>(state: &'a AppState, job: &'a Job) -> JobFuture<'a> {
    Box::pin(async move {
        let message_id = job
            .payload
            .get("message_id")
            .and_then(Value::as_str)
            .ok_or_else(|| JobError::Dead(format!("{JOB_TURN} job without message_id")))?;
        run(state, message_id).await.map(|_| ())
    })
}

/// Answers one stored inbound message; returns its answer (None: it gets none). Safe to run
/// again: a message is answered once.
pub async fn run(state: &AppState, message_id: &str) -> Result<Option<Message>, JobError> {
    let store = &state.store;
    let message = store
        .message_by_id(message_id)
        .await?
        .ok_or_else(|| JobError::Dead(format!("no message {message_id}")))?;
    if message.direction != Direction::Inbound {
        return Ok(None);
    }
    let answer = Answer::of(&message);
    if answer == Answer::Nothing {
        return Ok(None);
    }
    let channel = Channel::parse(&message.channel).map_err(JobError::Dead)?;
    let delivery = channel.delivers().then(|| NewDelivery {
        channel: message.channel.clone(),
        max_attempts: state.retry_policy(&channel).max_attempts,
    });
    let conversation_id = message.conversation_id.as_str();
    let _turn = store.lock_conversation(conversation_id).await?;
    if let Some(done) = store.answer_to(message_id).await? {
        if let Some(d) = &delivery {
            store.enqueue_delivery(&done.id, conversation_id, d).await?;
            state.wake_worker();
        }
        return Ok(Some(done));
    }
    if matches!(answer, Answer::Agent | Answer::Greeting)
        && with_staff(state, conversation_id).await?
    {
        // A person has this conversation (escalated, or staff replied): the message waits for
        // them. Staff see it arrive; the shopper's channel is told a person will answer.
        state.hub.publish(InboxEvent::Status {
            conversation_id: conversation_id.to_string(),
            status: WITH_STAFF.into(),
        });
        return Ok(None);
    }
    state.hub.publish(InboxEvent::Typing {
        conversation_id: conversation_id.to_string(),
        author: "brand_agent".into(),
    });
    let fixed = FixedReply {
        conversation_id,
        message_id,
        channel: &message.channel,
        deliver: delivery.as_ref(),
    };
    let composed = match &answer {
        Answer::Greeting if state.agent.greets() => match state.agent.greet(&fixed).await {
            Ok(Some(m)) => Ok((m, None)),
            Ok(None) => agent_turn(state, &message, delivery.as_ref()).await,
            Err(e) => Err(e),
        },
        Answer::GroupChat { bot } => {
            let bot = match bot {
                Some(b) => Some(b.clone()),
                None => store.get_setting(TELEGRAM_BOT_SETTING).await?,
            };
            let bot = bot.ok_or_else(|| {
                JobError::retry(
                    "the Telegram bot's username is not known yet (getMe has not answered), so \
                     the group chat's invitation cannot link to it",
                )
            })?;
            state
                .agent
                .invite_to_private_chat(&fixed, &bot)
                .await
                .map(|m| (m, None))
        }
        _ => agent_turn(state, &message, delivery.as_ref()).await,
    };
    let (reply, escalation) = match composed {
        Ok(r) => r,
        // Another worker answered first (the database keeps one answer per message).
        Err(e)
            if e.downcast_ref::<StoreError>()
                .is_some_and(StoreError::is_unique_violation) =>
        {
            store.settle_writes().await;
            match store.answer_to(message_id).await? {
                Some(done) => return Ok(Some(done)),
                None => return Err(JobError::retry(format!("{e:#}"))),
            }
        }
        Err(e) => return Err(JobError::retry(format!("the brand agent failed: {e:#}"))),
    };
    state.hub.publish(InboxEvent::Message {
        conversation_id: conversation_id.to_string(),
        message: Box::new(reply.clone()),
    });
    if let Some(e) = escalation {
        state.hub.publish(InboxEvent::Status {
            conversation_id: e.conversation_id,
            status: "escalated".into(),
        });
    }
    // The reply's delivery, and whatever else the turn queued (a one-time code by email).
    state.wake_worker();
    Ok(Some(reply))
}

/// The status event published when a message waits for the person who has its conversation.
pub const WITH_STAFF: &str = "with_staff";

/// Whether a person has the conversation, so the brand agent leaves its messages to them.
pub async fn with_staff(state: &AppState, conversation_id: &str) -> Result<bool, StoreError> {
    Ok(state
        .store
        .get_conversation(conversation_id)
        .await?
        .is_some_and(|c| c.with_staff))
}

/// The store setting the Telegram channel keeps its bot's username in (from `getMe`), for a
/// group chat's invitation when the message did not record it.
pub const TELEGRAM_BOT_SETTING: &str = "telegram_bot_username";

/// The brand agent's turn, its [`Inbound`] rebuilt from what was stored with the message.
async fn agent_turn(
    state: &AppState,
    message: &Message,
    deliver: Option<&NewDelivery>,
) -> anyhow::Result<(Message, Option<crate::store::Escalation>)> {
    let identity_email = match &message.author_id {
        Some(id) => state.store.get_identity(id).await?.and_then(|i| i.email),
        None => None,
    };
    let trust = Trust::of(message, identity_email.as_deref());
    let inbound = Inbound {
        conversation_id: &message.conversation_id,
        message_id: &message.id,
        identity_id: message.author_id.as_deref(),
        channel: &message.channel,
        text: &message.text,
        sender_email: trust.sender_email.as_deref(),
        sender_verified: trust.sender_verified,
        sender_email_is_claim: trust.sender_email_is_claim,
        confirms_writes: trust.confirms_writes,
        identity_linkable: trust.identity_linkable,
        requester: trust.requester.as_deref(),
        verify_from_claims: trust.verify_from_claims,
        vouched_customer: trust.vouched_customer.as_deref(),
        deliver,
    };
    let reply = state.agent.reply(&inbound).await?;
    Ok((reply.message, reply.escalation))
}

/// Why a channel that answers in the same request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The turn failed (it stays queued for a retry, or is a dead letter).
    #[error("{0}")]
    Failed(String),
    /// Another worker holds the turn and has not answered within the request's time.
    #[error("the answer is still being composed; the message is stored and will be answered")]
    TimedOut,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Answers a just-received message in this request: claims its turn job and runs it here, or —
/// when another worker holds it — waits for that worker's answer, up to `[server]
/// request_timeout_secs`. Returns the answer (None: the message gets none).
pub async fn answer_now(
    state: &AppState,
    received: &IngestOutcome,
) -> Result<Option<Message>, TurnError> {
    let store = &state.store;
    let Some(job_id) = &received.job_id else {
        return Ok(store.answer_to(&received.message_id).await?);
    };
    let wait = Duration::from_secs(state.config.server.request_timeout_secs.max(1));
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = state.hub.subscribe();
    let worker_id = new_id("wrk");
    let lease_ms =
        i64::try_from(state.config.jobs.lease_secs.max(1).saturating_mul(1000)).unwrap_or(60_000);
    loop {
        if let Some(done) = store.answer_to(&received.message_id).await? {
            return Ok(Some(done));
        }
        if let Some(claimed) = store.claim_job_by_id(job_id, &worker_id, lease_ms).await? {
            return match worker::run_claimed(
                state,
                &worker_id,
                Some(job as worker::Handler),
                &claimed,
            )
            .await
            {
                Ok(()) => Ok(store.answer_to(&received.message_id).await?),
                Err(e) => Err(TurnError::Failed(e.message().to_string())),
            };
        }
        match store.get_job(job_id).await? {
            None => return Ok(None),
            Some(j) if j.status == JobStatus::Done => {
                return Ok(store.answer_to(&received.message_id).await?);
            }
            Some(j) if j.status == JobStatus::Dead => {
                return Err(TurnError::Failed(
                    j.last_error.unwrap_or_else(|| "the turn gave up".into()),
                ));
            }
            // Running on another worker: its answer is published (on this instance) or
            // stored (on another); look again on either.
            Some(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(TurnError::TimedOut),
            _ = events.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
