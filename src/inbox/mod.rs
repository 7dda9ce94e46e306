//! The one inbox, and the conversation turn. Every channel and face hands its messages here,
//! normalized as [`InboundMessage`](crate::store::InboundMessage) with what the turn needs to
//! know about them ([`Intake`]: the channel's [`Trust`] in the sender, who composes the
//! [`Answer`]). The inbox:
//!
//! 1. **receives** ([`receive`]): validates the message, stores it once (a repeated delivery is
//!    recognized) together with its turn job — one transaction, before the channel gets its
//!    acknowledgement — counts it, publishes it to live subscribers and wakes the job worker;
//! 2. **turns** ([`turn`]): the turn job — run by the worker, or at once by a channel that
//!    answers in the same request ([`turn::answer_now`]) — takes the conversation's lock, checks
//!    the message has no answer yet, has the brand agent (or a fixed reply) answer, stores the
//!    answer with its delivery when the channel has one, and publishes it;
//! 3. **sends** staff replies down the same store → publish → deliver path ([`reply`]).
//!
//! It does not parse channel payloads (each channel adapter's job), decide answers (the brand
//! agent's) or send them (the outbox's, `channels::outbox`).

pub mod relay;
pub mod reply;
pub mod trust;
pub mod turn;

use crate::events::InboxEvent;
use crate::state::AppState;
use crate::store::{Channel, InboundMessage, IngestOutcome, NewJob, Store, StoreError};
use crate::telemetry;

pub use trust::{Answer, Trust};
pub use turn::{JOB_TURN, TurnError};

/// Longest message text accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 20_000;
/// Longest thread key or channel message id accepted.
pub const MAX_KEY_CHARS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The message is unusable as given; the string names the field and the problem.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A message as a channel adapter hands it over, with what its turn needs.
#[derive(Debug, Clone)]
pub struct Intake {
    pub message: InboundMessage,
    pub trust: Trust,
    pub answer: Answer,
}

/// Receives a message: [`store_message`], then tells live subscribers and — unless the
/// channel answers in the same request — wakes the job worker for its turn.
pub async fn receive(state: &AppState, intake: Intake) -> Result<IngestOutcome, InboxError> {
    let inline = Channel::parse(&intake.message.channel).is_ok_and(|c| c.answers_inline());
    let outcome = store_message(&state.store, intake).await?;
    if !outcome.duplicate
        && let Some(stored) = state.store.message_by_id(&outcome.message_id).await?
    {
        state.hub.publish(InboxEvent::Message {
            conversation_id: outcome.conversation_id.clone(),
            message: Box::new(stored),
        });
    }
    if outcome.job_id.is_some() && !inline {
        state.wake_worker();
    }
    Ok(outcome)
}

/// Checks a message and stores it with its turn job (none when it gets no answer), in one
/// transaction; counts it. Needs only the store: `concierge email ingest` stores mail this way
/// for the running server's worker to answer.
pub async fn store_message(store: &Store, intake: Intake) -> Result<IngestOutcome, InboxError> {
    let Intake {
        mut message,
        trust,
        answer,
    } = intake;
    validate(&message)?;
    Channel::parse(&message.channel).map_err(|e| InboxError::Invalid {
        field: "channel",
        message: e,
    })?;
    trust::record(&mut message.meta, &trust, &answer);
    let job = (answer != Answer::Nothing).then_some(NewJob {
        kind: JOB_TURN,
        max_attempts: turn::TURN_ATTEMPTS,
    });
    let outcome = store.ingest_scheduling(&message, job).await?;
    if !outcome.duplicate {
        telemetry::count_message(&message.channel, "in");
    }
    Ok(outcome)
}

pub(crate) fn validate(msg: &InboundMessage) -> Result<(), InboxError> {
    let invalid = |field, message: &str| InboxError::Invalid {
        field,
        message: message.to_string(),
    };
    if msg.thread_key.trim().is_empty() {
        return Err(invalid("thread", "must not be empty"));
    }
    if msg.thread_key.chars().count() > MAX_KEY_CHARS {
        return Err(invalid("thread", "is longer than 256 characters"));
    }
    if let Some(id) = &msg.external_id
        && (id.trim().is_empty() || id.chars().count() > MAX_KEY_CHARS)
    {
        return Err(invalid("message_id", "must be 1 to 256 characters"));
    }
    if msg.text.trim().is_empty() && msg.attachments.as_array().is_none_or(Vec::is_empty) {
        return Err(invalid("text", "must not be empty"));
    }
    if msg.text.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid("text", "is longer than 20000 characters"));
    }
    Ok(())
}
