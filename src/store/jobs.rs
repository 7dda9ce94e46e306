//! Durable jobs: work that must survive a crash (conversation turns, deliveries, index updates,
//! imports handed to a running server). A worker claims a due job with a lease, which it renews
//! while the job runs; if the worker dies, the lease runs out and another worker takes the job
//! over. A job is claimed either as the next due one ([`Store::claim_job`]) or by id
//! ([`Store::claim_job_by_id`]: a request that answers its own message at once). On PostgreSQL
//! several instances claim concurrently with `FOR UPDATE SKIP LOCKED`; on SQLite the write lock
//! serializes claims.

use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;

use super::{Backend, Store, StoreResult, get_i64, get_json, get_opt_str, get_str, to_json};
use crate::util::{new_id, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    /// Failed more often than it may; kept, with its last error, for staff to see and retry.
    Dead,
}

impl JobStatus {
    fn parse(s: &str) -> JobStatus {
        match s {
            "running" => JobStatus::Running,
            "done" => JobStatus::Done,
            "dead" => JobStatus::Dead,
            _ => JobStatus::Queued,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub payload: Value,
    pub status: JobStatus,
    /// Attempts so far, this one included once claimed.
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: i64,
    pub last_error: Option<String>,
    pub dedupe_key: Option<String>,
}

/// A job to queue together with the row it works on (in the same transaction).
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub kind: &'a str,
    pub max_attempts: i64,
}

/// Inserts a job in a transaction; with a `dedupe_key` already queued, returns that job's id.
pub(super) async fn insert_job(
    tx: &mut super::WriteTx,
    kind: &str,
    payload: &Value,
    dedupe_key: Option<&str>,
    max_attempts: i64,
) -> StoreResult<String> {
    let now = now_ms();
    let id = new_id("job");
    sqlx::query(
        "INSERT INTO jobs (id, kind, payload, status, attempts, max_attempts, run_at, dedupe_key, created_at, updated_at) \
         VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $5, $5) ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(id.as_str())
    .bind(kind)
    .bind(to_json(payload))
    .bind(max_attempts)
    .bind(now)
    .bind(dedupe_key)
    .execute(&mut **tx)
    .await?;
    if let Some(key) = dedupe_key {
        let row = sqlx::query("SELECT id FROM jobs WHERE dedupe_key = $1")
            .bind(key)
            .fetch_one(&mut **tx)
            .await?;
        return get_str(&row, "id");
    }
    Ok(id)
}

impl Store {
    /// Queues a job. With a `dedupe_key`, a second job with the same key is not queued (the
    /// first one's id is returned).
    pub async fn enqueue_job(
        &self,
        kind: &str,
        payload: &Value,
        dedupe_key: Option<&str>,
        max_attempts: i64,
    ) -> StoreResult<String> {
        let mut tx = self.begin_write().await?;
        let id = insert_job(&mut tx, kind, payload, dedupe_key, max_attempts).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Queues a job in the caller's write transaction, due at `run_at` (a job that must exist
    /// exactly when the row it works on does, but that the caller means to run itself first —
    /// it claims it by id; the worker takes it only if that never happens). With a
    /// `dedupe_key` already queued, returns that job's id.
    pub async fn enqueue_job_in(
        &self,
        tx: &mut super::WriteTx,
        kind: &str,
        payload: &Value,
        dedupe_key: Option<&str>,
        max_attempts: i64,
        run_at: i64,
    ) -> StoreResult<String> {
        let id = insert_job(tx, kind, payload, dedupe_key, max_attempts).await?;
        sqlx::query("UPDATE jobs SET run_at = $2 WHERE id = $1 AND status = 'queued'")
            .bind(id.as_str())
            .bind(run_at)
            .execute(&mut **tx)
            .await?;
        Ok(id)
    }

    /// Claims the next due job (queued and due, or running with an expired lease) for
    /// `lease_ms`.
    pub async fn claim_job(&self, worker: &str, lease_ms: i64) -> StoreResult<Option<Job>> {
        let now = now_ms();
        let sql = match self.backend {
            Backend::Postgres => {
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $1, \
                   locked_until = $2, updated_at = $3 \
                 WHERE id = (SELECT id FROM jobs WHERE (status = 'queued' AND run_at <= $3) \
                   OR (status = 'running' AND locked_until < $3) ORDER BY run_at, id LIMIT 1 \
                   FOR UPDATE SKIP LOCKED) RETURNING *"
            }
            Backend::Sqlite => {
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $1, \
                   locked_until = $2, updated_at = $3 \
                 WHERE id = (SELECT id FROM jobs WHERE (status = 'queued' AND run_at <= $3) \
                   OR (status = 'running' AND locked_until < $3) ORDER BY run_at, id LIMIT 1) \
                 RETURNING *"
            }
        };
        let row = self
            .write_fetch_optional(sqlx::query(sql).bind(worker).bind(now + lease_ms).bind(now))
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Claims one job by id for `lease_ms`: when it is queued (due or not), or running on a
    /// lease that has run out. None when it is done, dead, missing, or another worker holds it.
    pub async fn claim_job_by_id(
        &self,
        id: &str,
        worker: &str,
        lease_ms: i64,
    ) -> StoreResult<Option<Job>> {
        let now = now_ms();
        let row = self
            .write_fetch_optional(
                sqlx::query(
                    "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $2, \
               locked_until = $3, updated_at = $4 \
             WHERE id = $1 AND (status = 'queued' OR (status = 'running' AND locked_until < $4)) \
             RETURNING *",
                )
                .bind(id)
                .bind(worker)
                .bind(now + lease_ms)
                .bind(now),
            )
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Renews the lease on a job `worker` holds; false when it no longer holds it.
    pub async fn renew_job_lease(
        &self,
        id: &str,
        worker: &str,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let now = now_ms();
        let done = self
            .write_execute(
                sqlx::query(
                    "UPDATE jobs SET locked_until = $3, updated_at = $4 \
             WHERE id = $1 AND locked_by = $2 AND status = 'running'",
                )
                .bind(id)
                .bind(worker)
                .bind(now + lease_ms)
                .bind(now),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks a job `worker` holds done; false when it no longer holds it (its lease ran out and
    /// another worker took the job: that worker records the outcome).
    pub async fn complete_job(&self, id: &str, worker: &str) -> StoreResult<bool> {
        let done = self
            .write_execute(
                sqlx::query(
                    "UPDATE jobs SET status = 'done', locked_until = NULL, locked_by = NULL, \
                       updated_at = $3 WHERE id = $1 AND locked_by = $2 AND status = 'running'",
                )
                .bind(id)
                .bind(worker)
                .bind(now_ms()),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a failed attempt of a job `worker` holds: the job runs again at `retry_at`, or is
    /// dead when it has used its attempts. None when `worker` no longer holds it.
    pub async fn fail_job(
        &self,
        id: &str,
        worker: &str,
        error: &str,
        retry_at: i64,
    ) -> StoreResult<Option<JobStatus>> {
        let row = self
            .write_fetch_optional(
                sqlx::query(
                    "UPDATE jobs SET status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
                       run_at = $4, last_error = $3, locked_until = NULL, locked_by = NULL, updated_at = $5 \
                     WHERE id = $1 AND locked_by = $2 AND status = 'running' RETURNING status",
                )
                .bind(id)
                .bind(worker)
                .bind(error)
                .bind(retry_at)
                .bind(now_ms()),
            )
            .await?;
        row.map(|r| Ok(JobStatus::parse(&get_str(&r, "status")?)))
            .transpose()
    }

    /// Gives up at once a job `worker` holds (an error no retry can fix): dead, with the error
    /// kept. False when `worker` no longer holds it.
    pub async fn bury_job(&self, id: &str, worker: &str, error: &str) -> StoreResult<bool> {
        let done = self
            .write_execute(
                sqlx::query(
                    "UPDATE jobs SET status = 'dead', last_error = $3, locked_until = NULL, \
                       locked_by = NULL, updated_at = $4 \
                     WHERE id = $1 AND locked_by = $2 AND status = 'running'",
                )
                .bind(id)
                .bind(worker)
                .bind(error)
                .bind(now_ms()),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Puts a dead (or queued) job back to run now, with fresh attempts.
    pub async fn retry_job_now(&self, id: &str) -> StoreResult<bool> {
        let done = self
            .write_execute(
                sqlx::query(
                    "UPDATE jobs SET status = 'queued', attempts = 0, run_at = $2, updated_at = $2 \
             WHERE id = $1 AND status IN ('dead', 'queued')",
                )
                .bind(id)
                .bind(now_ms()),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn get_job(&self, id: &str) -> StoreResult<Option<Job>> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Jobs not finished yet (queued or running), for metrics and health.
    pub async fn pending_jobs(&self) -> StoreResult<i64> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_one(&self.pool)
                .await?;
        get_i64(&row, "n")
    }
}

fn job_from_row(r: &AnyRow) -> StoreResult<Job> {
    Ok(Job {
        id: get_str(r, "id")?,
        kind: get_str(r, "kind")?,
        payload: get_json(r, "payload")?,
        status: JobStatus::parse(&get_str(r, "status")?),
        attempts: get_i64(r, "attempts")?,
        max_attempts: get_i64(r, "max_attempts")?,
        run_at: get_i64(r, "run_at")?,
        last_error: get_opt_str(r, "last_error")?,
        dedupe_key: get_opt_str(r, "dedupe_key")?,
    })
}
