//! Long polling: `getUpdates` with `offset` = the last processed update id + 1 and `timeout` =
//! `[telegram] poll_timeout_secs`, one update at a time, in order. An update counts as
//! processed once its message is stored and its answer queued; only then is its id written to
//! the store (setting [`OFFSET_SETTING`]). A crash before that write makes the next start read
//! the update again, and the inbox's dedupe turns the second pass into a no-op: nothing is lost
//! and nothing is answered twice. Errors back off exponentially (up to 30 s, or as long as
//! Telegram's flood control asks); a stop request ends a pending poll at once.

use std::time::Duration;

use teloxide::Bot;
use teloxide::RequestError;
use teloxide::payloads::GetUpdatesSetters;
use teloxide::requests::{Request, Requester};
use teloxide::types::Update;
use tokio_util::sync::CancellationToken;

use super::OFFSET_SETTING;
use super::inbound::{self, Received};
use crate::state::AppState;
use crate::store::Store;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) async fn run(state: AppState, bot: Bot, stop: CancellationToken) {
    let timeout = u32::try_from(state.config.telegram.poll_timeout_secs).unwrap_or(u32::MAX);
    let mut backoff = Duration::from_secs(1);
    let mut last = loop {
        match load_offset(&state.store).await {
            Ok(last) => break last,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the Telegram offset");
                if !pause(&stop, &mut backoff).await {
                    return;
                }
            }
        }
    };
    tracing::info!(last_update_id = last, "Telegram long polling started");
    loop {
        let mut request = bot.get_updates().timeout(timeout);
        if let Some(next) = last
            .and_then(|l| l.checked_add(1))
            .and_then(|n| i32::try_from(n).ok())
        {
            request = request.offset(next);
        }
        let result = tokio::select! {
            _ = stop.cancelled() => break,
            r = request.send() => r,
        };
        let updates = match result {
            Ok(u) => u,
            Err(e) => {
                if let RequestError::RetryAfter(s) = &e {
                    backoff = backoff.max(s.duration());
                }
                tracing::warn!(error = %e, "Telegram getUpdates failed");
                if !pause(&stop, &mut backoff).await {
                    break;
                }
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        for update in &updates {
            match process(&state, update).await {
                Ok(()) => last = Some(u64::from(update.id.0)),
                Err(e) => {
                    // Not saved: the update is read again after the pause.
                    tracing::error!(update_id = update.id.0, error = %e, "cannot store a Telegram update");
                    if !pause(&stop, &mut backoff).await {
                        tracing::info!("Telegram long polling stopped");
                        return;
                    }
                    break;
                }
            }
        }
    }
    tracing::info!("Telegram long polling stopped");
}

/// Stores one update, then records it as processed.
async fn process(state: &AppState, update: &Update) -> Result<(), crate::store::StoreError> {
    match inbound::receive_update(state, update).await? {
        Received::Stored { duplicate, .. } => {
            tracing::debug!(update_id = update.id.0, duplicate, "Telegram update stored");
        }
        Received::Ignored(why) => {
            tracing::debug!(update_id = update.id.0, why, "Telegram update ignored");
        }
    }
    state
        .store
        .set_setting(OFFSET_SETTING, &update.id.0.to_string())
        .await
}

/// The last processed update id, if any.
pub(super) async fn load_offset(store: &Store) -> Result<Option<u64>, crate::store::StoreError> {
    Ok(store
        .get_setting(OFFSET_SETTING)
        .await?
        .and_then(|v| v.trim().parse::<u64>().ok()))
}

/// Waits out the backoff (doubling it for next time); false when asked to stop meanwhile.
async fn pause(stop: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (wait * 2).min(MAX_BACKOFF);
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}
