//! Counting verification attempts per scope within a window, for the dialogue and the gateway's
//! order + email delegation. A scope is a string such as `conversation:<id>`,
//! `customer:<id>`, `email:<address>`, `identity:<id>`, `ip:<address>` or `agent:<id>`; the
//! caller says how many failures each scope allows. The check and the record of an attempt are
//! one step (a write transaction that locks the scopes' rows), so concurrent attempts cannot
//! slip past a limit: an attempt counts as a failure from the moment it is let through until it
//! is closed as passed. An attempt refused by a lock is kept as `refused` (not counted) so staff
//! see which lock a conversation ran into. The rules (which scopes, which limits) belong to the
//! callers.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Backend, Store, StoreResult, get_i64, get_str};
use crate::util::new_id;

type Millis = i64;

/// A scope an attempt counts against, with the failures it allows within the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptScope {
    pub key: String,
    pub max_failures: u32,
}

/// A scope that reached its limit: how many failures it has and when the oldest one that
/// keeps it locked leaves the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerificationLock {
    pub scope: String,
    pub failures: i64,
    pub until: Millis,
}

/// What asking to attempt a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptGate {
    /// The attempt may check its claim; close it with [`Store::close_verification_attempt`].
    Open(AttemptTicket),
    /// At least one scope is locked; nothing was recorded and the claim must not be checked.
    Locked(Vec<VerificationLock>),
}

/// The rows an open attempt recorded (one per scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptTicket {
    ids: Vec<String>,
}

impl Store {
    /// Lets one verification attempt through unless a scope is locked, recording it (as a
    /// failure until closed) against every scope in the same transaction.
    pub async fn open_verification_attempt(
        &self,
        scopes: &[AttemptScope],
        conversation_id: Option<&str>,
        now: Millis,
        window_ms: i64,
    ) -> StoreResult<AttemptGate> {
        // Sorted and deduplicated, so concurrent transactions lock rows in the same order.
        let scopes: BTreeMap<&str, u32> = scopes
            .iter()
            .map(|s| (s.key.as_str(), s.max_failures))
            .collect();
        let mut tx = self.begin_write().await?;
        for scope in scopes.keys() {
            sqlx::query(
                "INSERT INTO verification_scopes (scope, created_at) VALUES ($1, $2) \
                 ON CONFLICT (scope) DO NOTHING",
            )
            .bind(*scope)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if self.backend == Backend::Postgres {
                sqlx::query("SELECT scope FROM verification_scopes WHERE scope = $1 FOR UPDATE")
                    .bind(*scope)
                    .fetch_one(&mut *tx)
                    .await?;
            }
        }
        let mut locks = Vec::new();
        for (scope, max) in &scopes {
            if let Some(lock) = scope_lock(&mut tx, scope, *max, now, window_ms).await? {
                locks.push(lock);
            }
        }
        if !locks.is_empty() {
            tx.rollback().await?;
            // Not counted, but remembered where it was made, so staff looking at the
            // conversation see the lock it ran into.
            if let Some(conversation) = conversation_id {
                for scope in scopes.keys() {
                    self.write_execute(sqlx::query(
                        "INSERT INTO verification_attempts (id, scope, conversation_id, outcome, created_at) \
                         VALUES ($1, $2, $3, 'refused', $4)",
                    )
                    .bind(new_id("vat"))
                    .bind(*scope)
                    .bind(conversation)
                    .bind(now)
                    )
                    .await?;
                }
            }
            return Ok(AttemptGate::Locked(locks));
        }
        let mut ids = Vec::with_capacity(scopes.len());
        for scope in scopes.keys() {
            let id = new_id("vat");
            sqlx::query(
                "INSERT INTO verification_attempts (id, scope, conversation_id, outcome, created_at) \
                 VALUES ($1, $2, $3, 'pending', $4)",
            )
            .bind(id.as_str())
            .bind(*scope)
            .bind(conversation_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(AttemptGate::Open(AttemptTicket { ids }))
    }

    /// Records how an attempt ended: a pass stops counting; a failure keeps counting.
    pub async fn close_verification_attempt(
        &self,
        ticket: &AttemptTicket,
        passed: bool,
    ) -> StoreResult<()> {
        let outcome = if passed { "passed" } else { "failed" };
        for id in &ticket.ids {
            self.write_execute(
                sqlx::query("UPDATE verification_attempts SET outcome = $2 WHERE id = $1")
                    .bind(id.as_str())
                    .bind(outcome),
            )
            .await?;
        }
        Ok(())
    }

    /// The scopes among `scopes` that are locked now (read only).
    pub async fn verification_locks(
        &self,
        scopes: &[AttemptScope],
        now: Millis,
        window_ms: i64,
    ) -> StoreResult<Vec<VerificationLock>> {
        let mut conn = self.pool.acquire().await?;
        let mut locks = Vec::new();
        for s in scopes {
            if let Some(lock) =
                scope_lock(&mut conn, &s.key, s.max_failures, now, window_ms).await?
            {
                locks.push(lock);
            }
        }
        Ok(locks)
    }

    /// The scopes attempts made in this conversation counted against within the window.
    pub async fn conversation_verification_scopes(
        &self,
        conversation_id: &str,
        since: Millis,
    ) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT scope FROM verification_attempts \
             WHERE conversation_id = $1 AND created_at > $2 ORDER BY scope",
        )
        .bind(conversation_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| get_str(r, "scope")).collect()
    }

    /// Lifts the locks on these scopes: their counted attempts stop counting. Returns how many
    /// attempts were lifted.
    pub async fn lift_verification_locks(
        &self,
        scopes: &[String],
        by: &str,
        now: Millis,
    ) -> StoreResult<u64> {
        let mut lifted = 0;
        let mut tx = self.begin_write().await?;
        for scope in scopes {
            let done = sqlx::query(
                "UPDATE verification_attempts SET lifted_at = $2, lifted_by = $3 \
                 WHERE scope = $1 AND outcome IN ('pending', 'failed') AND lifted_at IS NULL",
            )
            .bind(scope.as_str())
            .bind(now)
            .bind(by)
            .execute(&mut *tx)
            .await?;
            lifted += done.rows_affected();
        }
        tx.commit().await?;
        Ok(lifted)
    }
}

/// The lock on one scope, if its failures within the window reached `max`.
async fn scope_lock(
    conn: &mut sqlx::AnyConnection,
    scope: &str,
    max: u32,
    now: Millis,
    window_ms: i64,
) -> StoreResult<Option<VerificationLock>> {
    let max = i64::from(max.max(1));
    let count = sqlx::query(
        "SELECT count(*) AS n FROM verification_attempts \
         WHERE scope = $1 AND created_at > $2 AND outcome IN ('pending', 'failed') AND lifted_at IS NULL",
    )
    .bind(scope)
    .bind(now - window_ms)
    .fetch_one(&mut *conn)
    .await?;
    let failures = get_i64(&count, "n")?;
    if failures < max {
        return Ok(None);
    }
    // Locked until the failure that makes the count reach `max` (the max-th newest) leaves
    // the window.
    let row = sqlx::query(
        "SELECT created_at FROM verification_attempts \
         WHERE scope = $1 AND created_at > $2 AND outcome IN ('pending', 'failed') AND lifted_at IS NULL \
         ORDER BY created_at DESC LIMIT 1 OFFSET $3",
    )
    .bind(scope)
    .bind(now - window_ms)
    .bind(max - 1)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some(VerificationLock {
        scope: scope.to_string(),
        failures,
        until: get_i64(&row, "created_at")? + window_ms,
    }))
}
