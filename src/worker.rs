//! The job worker: a bounded pool (`[jobs] concurrency`) that claims due jobs from the store and
//! runs them, each by the handler its kind is registered with ([`Handlers`]; the module that
//! owns a job kind names it and provides its handler). It wakes at once when this instance
//! queues a job ([`AppState::wake_worker`]) and otherwise polls every `[jobs] poll_interval_ms`
//! (jobs queued by other instances, retries coming due, leases running out).
//!
//! A running job renews its lease; a job whose worker died is taken over when the lease runs
//! out. A handler's [`JobError`] says what happens next: `Retry` — again after the backoff of its
//! [`RetryPolicy`], or a dead letter once the job has used its attempts; `Dead` — a dead letter
//! at once (an error no retry can fix). On shutdown the worker stops claiming and lets the jobs
//! in hand finish.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::RetryPolicy;
use crate::state::AppState;
use crate::store::{Job, JobStatus};
use crate::util::{new_id, now_ms};

/// Why a job did not complete, and whether it is worth another attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// A failure that may pass (a timeout, a 5xx, the database busy): the job runs again after
    /// the policy's backoff, unless it has used its attempts.
    Retry { error: String, policy: RetryPolicy },
    /// A failure no retry can fix (a chat that does not exist, a refused recipient): the job is
    /// a dead letter now.
    Dead(String),
}

impl JobError {
    /// A retryable failure with the default backoff.
    pub fn retry(error: impl Into<String>) -> JobError {
        JobError::Retry {
            error: error.into(),
            policy: RetryPolicy::default(),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            JobError::Retry { error, .. } | JobError::Dead(error) => error,
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl From<crate::store::StoreError> for JobError {
    fn from(e: crate::store::StoreError) -> JobError {
        JobError::retry(e.to_string())
    }
}

/// What a handler's run returns.
pub type JobFuture<'a> = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send + 'a>>;

/// Runs one claimed job.
pub type Handler = for<'a> fn(&'a AppState, &'a Job) -> JobFuture<'a>;

/// The job kinds this worker runs, each with its handler.
#[derive(Default, Clone)]
pub struct Handlers(HashMap<&'static str, Handler>);

impl Handlers {
    pub fn on(mut self, kind: &'static str, handler: Handler) -> Handlers {
        self.0.insert(kind, handler);
        self
    }

    pub fn get(&self, kind: &str) -> Option<Handler> {
        self.0.get(kind).copied()
    }
}

/// Claims and runs jobs until `stop`; then waits for the jobs in hand.
pub async fn run(state: AppState, handlers: Handlers, stop: CancellationToken) {
    let worker_id = new_id("wrk");
    let poll = Duration::from_millis(state.config.jobs.poll_interval_ms.max(10));
    let slots = Arc::new(Semaphore::new(
        usize::try_from(state.config.jobs.concurrency.max(1)).unwrap_or(1),
    ));
    let handlers = Arc::new(handlers);
    let mut running = JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        while running.try_join_next().is_some() {}
        match state.store.claim_job(&worker_id, lease_ms(&state)).await {
            Ok(Some(job)) => {
                let (state, handlers, worker_id) =
                    (state.clone(), handlers.clone(), worker_id.clone());
                running.spawn(async move {
                    let _slot = slot;
                    let handler = handlers.get(&job.kind);
                    let _ = run_claimed(&state, &worker_id, handler, &job).await;
                });
                continue;
            }
            Ok(None) => {
                drop(slot);
                if let Ok(n) = state.store.pending_jobs().await {
                    crate::telemetry::set_jobs_pending(n);
                }
            }
            Err(e) => {
                drop(slot);
                tracing::warn!(error = %e, "could not claim a job");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = state.jobs_queued.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    while running.join_next().await.is_some() {}
}

fn lease_ms(state: &AppState) -> i64 {
    i64::try_from(state.config.jobs.lease_secs.max(1).saturating_mul(1000)).unwrap_or(60_000)
}

/// Runs a job this worker has claimed (renewing its lease meanwhile) and records the outcome.
/// `handler` None: a kind this instance does not know, retried (another instance may).
pub async fn run_claimed(
    state: &AppState,
    worker_id: &str,
    handler: Option<Handler>,
    job: &Job,
) -> Result<(), JobError> {
    let result = match handler {
        None => Err(JobError::retry(format!("unknown job kind {:?}", job.kind))),
        Some(handler) => {
            let lease = lease_ms(state);
            let renew = async {
                let every = Duration::from_millis(u64::try_from(lease / 3).unwrap_or(1000).max(50));
                loop {
                    tokio::time::sleep(every).await;
                    match state.store.renew_job_lease(&job.id, worker_id, lease).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => {
                            tracing::warn!(job = %job.id, error = %e, "could not renew a job's lease")
                        }
                    }
                }
            };
            tokio::select! {
                r = handler(state, job) => r,
                () = renew => {
                    // Another worker took the job over when the lease ran out: this run stops
                    // here (dropping the handler mid-way, as a crash would) and leaves the
                    // outcome to that worker.
                    tracing::warn!(job = %job.id, kind = %job.kind,
                        "lost the lease on a running job; stopped it, its new worker carries on");
                    return Err(JobError::retry("the job's lease ran out; another worker took it over"));
                }
            }
        }
    };
    if let Err(e) = record(state, worker_id, job, &result).await {
        tracing::error!(job = %job.id, error = %e, "could not record the job's outcome");
    }
    result
}

/// Records what became of a job: done, queued again after its backoff, or dead — unless the
/// worker no longer holds it.
async fn record(
    state: &AppState,
    worker_id: &str,
    job: &Job,
    result: &Result<(), JobError>,
) -> crate::store::StoreResult<()> {
    let held = match result {
        Ok(()) => state.store.complete_job(&job.id, worker_id).await?,
        Err(JobError::Retry { error, policy }) => {
            let retry_at = now_ms() + policy.backoff_ms(job.attempts);
            match state
                .store
                .fail_job(&job.id, worker_id, error, retry_at)
                .await?
            {
                Some(JobStatus::Dead) => {
                    tracing::error!(job = %job.id, kind = %job.kind, error = %error,
                        "job failed its last attempt; it is a dead letter");
                    true
                }
                Some(_) => {
                    tracing::warn!(job = %job.id, kind = %job.kind, error = %error, "job failed; will retry");
                    true
                }
                None => false,
            }
        }
        Err(JobError::Dead(error)) => {
            tracing::error!(job = %job.id, kind = %job.kind, error = %error,
                "job failed for good; it is a dead letter");
            state.store.bury_job(&job.id, worker_id, error).await?
        }
    };
    if !held {
        tracing::warn!(job = %job.id, kind = %job.kind,
            "a job's outcome was not recorded: another worker holds it now");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::RetryPolicy;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        let b1 = p.backoff_ms(1);
        let b4 = p.backoff_ms(4);
        assert!((800..=1200).contains(&b1), "{b1}");
        assert!((6400..=9600).contains(&b4), "{b4}");
        assert!(p.backoff_ms(40) <= 4_320_000);
        let fast = RetryPolicy {
            max_attempts: 3,
            base_ms: 50,
            max_ms: 100,
        };
        assert!(fast.backoff_ms(5) <= 120, "{}", fast.backoff_ms(5));
    }
}
