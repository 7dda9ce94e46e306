//! The risk book in the database (migration 0016, and the `settlements` table of 0015): the
//! rebuild at start, the breakers' stored state and history (each transition with its entry in
//! the action log, in one transaction), and the agents' misbehaviour counters.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::negotiate::Setup;
use crate::negotiate::risk::exposure::Entry;
use crate::negotiate::risk::{Risk, Scope, Transition};
use crate::store::{Store, StoreError, StoreResult};

fn s(row: &AnyRow, col: &str) -> StoreResult<String> {
    Ok(row.try_get::<String, _>(col)?)
}
fn os(row: &AnyRow, col: &str) -> StoreResult<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(col)?)
}
fn i(row: &AnyRow, col: &str) -> StoreResult<i64> {
    Ok(row.try_get::<i64, _>(col)?)
}
fn oi(row: &AnyRow, col: &str) -> StoreResult<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}

/// The most recent finished settlements read back into the breakers' windows at start.
const WINDOW_ROWS: i64 = 5000;

/// What the rebuild found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub negotiations: usize,
    pub deals: usize,
    pub settlements: usize,
    pub breakers: usize,
}

/// Fills an empty book from the store: live negotiations (at the brand's latest offer, or list
/// value), deals not yet settled and still valid (a failed settlement may be retried), the
/// recent settlements' outcomes,
/// and every breaker's stored state.
pub async fn rebuild(
    store: &Store,
    risk: &Risk,
    deal_valid_ms: i64,
    now: i64,
) -> StoreResult<Rebuilt> {
    let mut out = Rebuilt::default();
    let rows = sqlx::query(
        "SELECT n.id, n.agent_id, n.customer_id, n.setup, n.deadline_at, \
           (SELECT m.total FROM negotiation_moves m WHERE m.negotiation_id = n.id \
              AND m.side = 'brand' AND m.kind = 'offer' ORDER BY m.round DESC LIMIT 1) AS offered \
         FROM negotiations n WHERE n.status IN ('open', 'offering') AND n.deadline_at > $1",
    )
    .bind(now)
    .fetch_all(store.pool())
    .await?;
    for r in &rows {
        let value = match oi(r, "offered")? {
            Some(v) => v,
            None => {
                let setup: Setup =
                    serde_json::from_str(&s(r, "setup")?).map_err(|e| StoreError::Corrupt {
                        what: "negotiations.setup".into(),
                        message: e.to_string(),
                    })?;
                setup.total(&setup.list_terms())
            }
        };
        risk.restore_negotiation(
            &s(r, "id")?,
            Entry {
                agent: s(r, "agent_id")?,
                customer: s(r, "customer_id")?,
                value,
                until: i(r, "deadline_at")?,
            },
        );
        out.negotiations += 1;
    }
    let rows = sqlx::query(
        "SELECT d.id, d.agent_id, d.customer_id, d.total, d.deal FROM deals d \
         WHERE d.created_at > $1 AND NOT EXISTS (SELECT 1 FROM settlements s \
           WHERE s.deal_id = d.id AND s.status = 'settled')",
    )
    .bind(now - deal_valid_ms.max(0))
    .fetch_all(store.pool())
    .await?;
    for r in &rows {
        let deal: serde_json::Value = serde_json::from_str(&s(r, "deal")?).unwrap_or_default();
        let until = deal["valid_until"].as_i64().unwrap_or(0);
        if until <= now {
            continue;
        }
        risk.restore_deal(
            &s(r, "id")?,
            Entry {
                agent: s(r, "agent_id")?,
                customer: s(r, "customer_id")?,
                value: i(r, "total")?,
                until,
            },
        );
        out.deals += 1;
    }
    let rows = sqlx::query(
        "SELECT agent_id, status, total, finished_at FROM settlement_attempts \
         WHERE status IN ('settled', 'failed') AND finished_at IS NOT NULL \
         ORDER BY finished_at DESC LIMIT $1",
    )
    .bind(WINDOW_ROWS)
    .fetch_all(store.pool())
    .await?;
    for r in rows.iter().rev() {
        risk.restore_outcome(
            &s(r, "agent_id")?,
            s(r, "status")? == "settled",
            i(r, "total")?,
            i(r, "finished_at")?,
        );
        out.settlements += 1;
    }
    let rows = sqlx::query("SELECT * FROM risk_breakers")
        .fetch_all(store.pool())
        .await?;
    for r in &rows {
        let Some(scope) = Scope::parse(&s(r, "breaker")?) else {
            continue;
        };
        risk.restore_breaker(
            scope,
            &s(r, "state")?,
            &s(r, "reason")?,
            i(r, "since")?,
            oi(r, "open_until")?,
        );
        out.breakers += 1;
    }
    Ok(out)
}

/// Stores a breaker's transition: its new state, the history row and the action-log entry,
/// in one transaction. Returns the entry's sequence number.
pub async fn store_transition(store: &Store, t: &Transition) -> StoreResult<i64> {
    let mut tx = store.begin_write().await?;
    let (actor_kind, actor_id) = match &t.staff_id {
        Some(id) => ("staff", Some(id.as_str())),
        None => ("system", None),
    };
    let request = Store::action_request(
        "risk_breaker",
        serde_json::json!({
            "breaker": t.breaker,
            "from": t.from,
            "to": t.to,
            "reason": t.reason,
            "open_until": t.until,
        }),
        t.at,
    )
    .by(actor_kind, actor_id);
    let entry = store
        .record_action_in(&mut tx, &request, None, "recorded")
        .await?;
    sqlx::query(
        "INSERT INTO risk_breakers (breaker, state, reason, since, open_until, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $4) \
         ON CONFLICT (breaker) DO UPDATE SET state = excluded.state, reason = excluded.reason, \
           since = excluded.since, open_until = excluded.open_until, updated_at = excluded.updated_at",
    )
    .bind(t.breaker.as_str())
    .bind(t.to)
    .bind(t.reason.as_str())
    .bind(t.at)
    .bind(t.until)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO risk_breaker_events (id, breaker, at, from_state, to_state, reason, \
           actor_kind, actor_id, open_until, audit_seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(crate::util::new_id("rbe"))
    .bind(t.breaker.as_str())
    .bind(t.at)
    .bind(t.from)
    .bind(t.to)
    .bind(t.reason.as_str())
    .bind(actor_kind)
    .bind(actor_id)
    .bind(t.until)
    .bind(entry.seq)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(entry.seq)
}

/// Counts one misbehaviour of an agent.
pub async fn count(store: &Store, agent_id: &str, kind: &str, at: i64) -> StoreResult<()> {
    store
        .write_execute(
            sqlx::query(
                "INSERT INTO risk_agent_counters (agent_id, kind, count, last_at) \
                 VALUES ($1, $2, 1, $3) \
                 ON CONFLICT (agent_id, kind) DO UPDATE SET \
                   count = risk_agent_counters.count + 1, last_at = excluded.last_at",
            )
            .bind(agent_id)
            .bind(kind)
            .bind(at),
        )
        .await?;
    Ok(())
}

/// One row of a breaker's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerEvent {
    pub breaker: String,
    pub at: i64,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub actor_kind: String,
    pub actor_id: Option<String>,
    pub open_until: Option<i64>,
    pub audit_seq: i64,
}

/// The latest transitions (of one breaker, or all when `breaker` is empty), newest first.
pub async fn history(store: &Store, breaker: &str, limit: i64) -> StoreResult<Vec<BreakerEvent>> {
    let rows = sqlx::query(
        "SELECT * FROM risk_breaker_events WHERE ($1 = '' OR breaker = $1) \
         ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(breaker)
    .bind(limit.max(1))
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(BreakerEvent {
                breaker: s(r, "breaker")?,
                at: i(r, "at")?,
                from: s(r, "from_state")?,
                to: s(r, "to_state")?,
                reason: s(r, "reason")?,
                actor_kind: s(r, "actor_kind")?,
                actor_id: os(r, "actor_id")?,
                open_until: oi(r, "open_until")?,
                audit_seq: i(r, "audit_seq")?,
            })
        })
        .collect()
}
