//! The job worker: claims due jobs from the store, runs them, and records success, a retry with
//! exponential backoff and jitter, or a dead letter. A job interrupted by a crash is taken over
//! when its lease runs out. On shutdown the worker finishes the job in hand and stops.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, rebuild_index_live};
use crate::store::{JOB_DELIVER, Job, JobStatus};
use crate::util::{new_id, now_ms};

/// Rebuild the search index from the database (queued by `concierge import` while the server
/// holds the index).
pub const JOB_REINDEX: &str = "reindex";
/// Have the brand agent answer a stored inbound message (channels that acknowledge before
/// answering: email, Telegram, marketplaces). Payload: `{"conversation_id", "message_id"}`.
pub const JOB_AGENT_REPLY: &str = "agent_reply";

pub async fn run(state: AppState, stop: CancellationToken) {
    let worker_id = new_id("wrk");
    let poll = Duration::from_millis(state.config.jobs.poll_interval_ms.max(10));
    let lease_ms =
        i64::try_from(state.config.jobs.lease_secs.saturating_mul(1000)).unwrap_or(60_000);
    loop {
        if stop.is_cancelled() {
            return;
        }
        match state.store.claim_job(&worker_id, lease_ms).await {
            Ok(Some(job)) => {
                let id = job.id.clone();
                let attempts = job.attempts;
                let kind = job.kind.clone();
                let payload = job.payload.clone();
                let result = run_job(&state, job).await;
                let recorded = match result {
                    Ok(()) => state.store.complete_job(&id).await.map(|_| ()),
                    Err(e) => {
                        let retry_at = now_ms() + backoff_ms(attempts);
                        tracing::warn!(job = %id, kind = %kind, error = %e, "job failed; will retry");
                        match state.store.fail_job(&id, &e, retry_at).await {
                            Ok(JobStatus::Dead) => {
                                crate::outbox::on_dead_job(&state, &kind, &payload).await
                            }
                            Ok(_) => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                };
                if let Err(e) = recorded {
                    tracing::error!(job = %id, error = %e, "could not record the job's outcome");
                }
                continue;
            }
            Ok(None) => {
                if let Ok(n) = state.store.pending_jobs().await {
                    crate::telemetry::set_jobs_pending(n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not claim a job"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

async fn run_job(state: &AppState, job: Job) -> Result<(), String> {
    match job.kind.as_str() {
        JOB_REINDEX => rebuild_index_live(state)
            .await
            .map(|n| tracing::info!(documents = n, "search index refreshed"))
            .map_err(|e| format!("{e:#}")),
        JOB_DELIVER => {
            let id = job
                .payload
                .get("delivery_id")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            crate::outbox::deliver(state, id).await
        }
        JOB_AGENT_REPLY => crate::outbox::agent_reply(state, &job.payload).await,
        other => Err(format!("unknown job kind {other:?}")),
    }
}

/// Exponential backoff with ±20 % jitter: 1 s, 2 s, 4 s … capped at one hour.
pub fn backoff_ms(attempts: i64) -> i64 {
    let exp = attempts.clamp(1, 20) - 1;
    let base = 1000i64.saturating_mul(1i64 << exp).min(3_600_000);
    let jitter = rand::rng().random_range(-0.2..=0.2);
    base + (base as f64 * jitter) as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_grows_and_is_capped() {
        let b1 = super::backoff_ms(1);
        let b4 = super::backoff_ms(4);
        assert!((800..=1200).contains(&b1), "{b1}");
        assert!((6400..=9600).contains(&b4), "{b4}");
        assert!(super::backoff_ms(40) <= 4_320_000);
    }
}
