//! Negotiations, their moves and deals in the database (migration 0014), on SQLite and
//! PostgreSQL through the store's pool. Moves are written with an optimistic check on the
//! negotiation's round, so two sockets (or two instances) racing on one negotiation cannot both
//! move; a deal, its moves and its audit-log entry commit in one transaction.

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Deal, Move, Negotiation, Status, Terms};
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
fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what: what.into(),
        message: e.to_string(),
    })
}

/// A row of the negotiation list (staff inbox, metrics).
#[derive(Debug, Clone)]
pub struct Summary {
    pub id: String,
    pub agent_id: String,
    pub customer_id: String,
    pub status: String,
    pub round: i64,
    pub categories: Vec<String>,
    pub end_reason: Option<String>,
    pub deal_id: Option<String>,
    pub opened_at: i64,
    pub updated_at: i64,
    pub deadline_at: i64,
}

/// Stores a newly opened negotiation. A second `open` with the same request id by the same
/// agent is a unique violation: the caller answers with the stored one.
pub async fn insert(store: &Store, n: &Negotiation) -> StoreResult<()> {
    let categories: Vec<&str> = n.setup.lines.iter().map(|l| l.category.as_str()).collect();
    store
        .write_execute(
    sqlx::query(
        "INSERT INTO negotiations (id, agent_id, key_id, customer_id, token_id, request_id, \
           status, round, max_rounds, deadline_at, categories, setup, opened_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'open', 0, $7, $8, $9, $10, $11, $11)",
    )
    .bind(n.id.as_str())
    .bind(n.agent_id.as_str())
    .bind(n.key_id.as_str())
    .bind(n.customer_id.as_str())
    .bind(n.token_id.as_str())
    .bind(n.request_id.as_str())
    .bind(i64::from(n.setup.max_rounds))
    .bind(n.setup.deadline_at)
    .bind(serde_json::to_string(&categories).unwrap_or_default())
    .bind(serde_json::to_string(&n.setup).unwrap_or_default())
    .bind(n.setup.opened_at),
        )
    .await?;
    Ok(())
}

/// The negotiation an agent opened with `request_id`, if any.
pub async fn find_by_request(
    store: &Store,
    agent_id: &str,
    request_id: &str,
) -> StoreResult<Option<Negotiation>> {
    let row = sqlx::query("SELECT id FROM negotiations WHERE agent_id = $1 AND request_id = $2")
        .bind(agent_id)
        .bind(request_id)
        .fetch_optional(store.pool())
        .await?;
    match row {
        Some(r) => load(store, &s(&r, "id")?).await,
        None => Ok(None),
    }
}

/// A negotiation rebuilt from its row and its transcript.
pub async fn load(store: &Store, id: &str) -> StoreResult<Option<Negotiation>> {
    let Some(row) = sqlx::query("SELECT * FROM negotiations WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?
    else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT round, side, kind, terms, total, frame, sig, at FROM negotiation_moves \
         WHERE negotiation_id = $1 ORDER BY round",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await?;
    let mut moves = Vec::with_capacity(rows.len());
    for r in &rows {
        let side = if s(r, "side")? == "brand" {
            "brand"
        } else {
            "agent"
        };
        let kind = match s(r, "kind")?.as_str() {
            "accept" => "accept",
            "end" => "end",
            _ => "offer",
        };
        let terms: Option<Terms> = match os(r, "terms")? {
            Some(t) => Some(json(&t, "negotiation_moves.terms")?),
            None => None,
        };
        moves.push(Move {
            round: u32::try_from(i(r, "round")?).unwrap_or(0),
            side,
            kind,
            terms,
            total: r.try_get::<Option<i64>, _>("total")?,
            frame: json(&s(r, "frame")?, "negotiation_moves.frame")?,
            sig: os(r, "sig")?,
            at: i(r, "at")?,
        });
    }
    Ok(Some(Negotiation {
        id: s(&row, "id")?,
        agent_id: s(&row, "agent_id")?,
        key_id: s(&row, "key_id")?,
        customer_id: s(&row, "customer_id")?,
        token_id: s(&row, "token_id")?,
        request_id: s(&row, "request_id")?,
        setup: json(&s(&row, "setup")?, "negotiations.setup")?,
        moves,
        end_reason: os(&row, "end_reason")?,
        deal_id: os(&row, "deal_id")?,
        stored_status: Status::parse(&s(&row, "status")?),
    }))
}

/// What a move changes: the moves to append (agent's, and the brand's answer) and the state
/// they leave.
pub struct Step<'a> {
    pub negotiation_id: &'a str,
    /// The round the negotiation must be at (optimistic check).
    pub expect_round: u32,
    pub moves: &'a [Move],
    pub status: Status,
    pub end_reason: Option<&'a str>,
    pub now: i64,
}

/// Why a step was not stored.
#[derive(Debug)]
pub enum StepError {
    /// Another move took the round first.
    Stale,
    Store(StoreError),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> StepError {
        StepError::Store(e)
    }
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> StepError {
        StepError::Store(e.into())
    }
}

async fn write_step(
    conn: &mut sqlx::AnyConnection,
    step: &Step<'_>,
    deal_id: Option<&str>,
) -> Result<(), StepError> {
    let last = step
        .moves
        .last()
        .map(|m| m.round)
        .unwrap_or(step.expect_round);
    let done = sqlx::query(
        "UPDATE negotiations SET round = $2, status = $3, end_reason = COALESCE($4, end_reason), \
           deal_id = COALESCE($5, deal_id), updated_at = $6 \
         WHERE id = $1 AND round = $7 AND status IN ('open', 'offering')",
    )
    .bind(step.negotiation_id)
    .bind(i64::from(last))
    .bind(step.status.as_str())
    .bind(step.end_reason)
    .bind(deal_id)
    .bind(step.now)
    .bind(i64::from(step.expect_round))
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Err(StepError::Stale);
    }
    for m in step.moves {
        let inserted = sqlx::query(
            "INSERT INTO negotiation_moves (negotiation_id, round, side, kind, terms, total, frame, sig, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(step.negotiation_id)
        .bind(i64::from(m.round))
        .bind(m.side)
        .bind(m.kind)
        .bind(m.terms.as_ref().map(|t| t.to_json().to_string()))
        .bind(m.total)
        .bind(m.frame.to_string())
        .bind(m.sig.as_deref())
        .bind(m.at)
        .execute(&mut *conn)
        .await;
        if let Err(e) = inserted {
            let e = StoreError::from(e);
            return Err(if e.is_unique_violation() {
                StepError::Stale
            } else {
                StepError::Store(e)
            });
        }
    }
    Ok(())
}

/// Stores a step (moves and the new state) before its answer goes out.
pub async fn store_step(store: &Store, step: &Step<'_>) -> Result<(), StepError> {
    let mut tx = store.begin_write().await?;
    write_step(&mut tx, step, None).await?;
    tx.commit().await?;
    Ok(())
}

/// Stores a deal: the step that made it, the deal with both signatures, and its audit-log
/// entry, in one transaction. Returns the audit entry's sequence number.
pub async fn store_deal(
    store: &Store,
    step: &Step<'_>,
    deal: &Deal,
    agent_id: &str,
    customer_id: &str,
) -> Result<i64, StepError> {
    let mut tx = store.begin_write().await?;
    let deal_id = deal.id().to_string();
    write_step(&mut tx, step, Some(&deal_id)).await?;
    let request = Store::action_request(
        "negotiation_deal",
        serde_json::json!({
            "deal_id": deal_id,
            "negotiation_id": step.negotiation_id,
            "deal_hash": deal.deal_hash,
            "total": deal.deal["total"],
            "currency": deal.deal["terms"]["currency"],
            "brand_sig": deal.brand_sig,
            "agent_sig": deal.agent_sig,
        }),
        step.now,
    )
    .by("consumer_agent", Some(agent_id))
    .for_customer(Some(customer_id));
    let entry = store
        .record_action_in(&mut tx, &request, None, "applied")
        .await?;
    sqlx::query(
        "INSERT INTO deals (id, negotiation_id, agent_id, customer_id, deal, deal_hash, brand_sig, \
           agent_sig, total, currency, audit_seq, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(deal_id.as_str())
    .bind(step.negotiation_id)
    .bind(agent_id)
    .bind(customer_id)
    .bind(deal.deal.to_string())
    .bind(deal.deal_hash.as_str())
    .bind(deal.brand_sig.as_str())
    .bind(deal.agent_sig.as_str())
    .bind(deal.deal["total"].as_i64().unwrap_or(0))
    .bind(deal.deal["terms"]["currency"].as_str().unwrap_or(""))
    .bind(entry.seq)
    .bind(step.now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(entry.seq)
}

/// Marks a live negotiation expired (its deadline passed); false when it was not live.
pub async fn expire(store: &Store, id: &str, now: i64) -> StoreResult<bool> {
    let done = store
        .write_execute(
            sqlx::query(
                "UPDATE negotiations SET status = 'expired', end_reason = 'deadline', updated_at = $2 \
                 WHERE id = $1 AND status IN ('open', 'offering')",
            )
            .bind(id)
            .bind(now),
        )
        .await?;
    Ok(done.rows_affected() == 1)
}

fn deal_from_row(r: &AnyRow) -> StoreResult<Deal> {
    Ok(Deal {
        deal: json::<Value>(&s(r, "deal")?, "deals.deal")?,
        deal_hash: s(r, "deal_hash")?,
        brand_sig: s(r, "brand_sig")?,
        agent_sig: s(r, "agent_sig")?,
        audit_seq: i(r, "audit_seq")?,
    })
}

/// A deal by id, with the agent that made it.
pub async fn deal(store: &Store, id: &str) -> StoreResult<Option<(Deal, String)>> {
    let row = sqlx::query("SELECT * FROM deals WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok((deal_from_row(&r)?, s(&r, "agent_id")?)))
        .transpose()
}

/// The deal a negotiation reached, if any.
pub async fn deal_of(store: &Store, negotiation_id: &str) -> StoreResult<Option<Deal>> {
    let row = sqlx::query("SELECT * FROM deals WHERE negotiation_id = $1")
        .bind(negotiation_id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| deal_from_row(&r)).transpose()
}

/// Filters for [`list`]; empty strings mean any.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: String,
    pub agent_id: String,
    pub category: String,
    pub limit: i64,
}

/// Negotiations, newest first.
pub async fn list(store: &Store, f: &ListFilter) -> StoreResult<Vec<Summary>> {
    let rows = sqlx::query(
        "SELECT id, agent_id, customer_id, status, round, categories, end_reason, deal_id, \
           opened_at, updated_at, deadline_at FROM negotiations \
         WHERE ($1 = '' OR status = $1) AND ($2 = '' OR agent_id = $2) \
         ORDER BY opened_at DESC LIMIT $3",
    )
    .bind(f.status.as_str())
    .bind(f.agent_id.as_str())
    .bind(if f.category.is_empty() {
        f.limit.max(1)
    } else {
        5000
    })
    .fetch_all(store.pool())
    .await?;
    let mut out = Vec::new();
    for r in &rows {
        let categories: Vec<String> = json(&s(r, "categories")?, "negotiations.categories")?;
        if !f.category.is_empty()
            && !categories
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&f.category))
        {
            continue;
        }
        out.push(Summary {
            id: s(r, "id")?,
            agent_id: s(r, "agent_id")?,
            customer_id: s(r, "customer_id")?,
            status: s(r, "status")?,
            round: i(r, "round")?,
            categories,
            end_reason: os(r, "end_reason")?,
            deal_id: os(r, "deal_id")?,
            opened_at: i(r, "opened_at")?,
            updated_at: i(r, "updated_at")?,
            deadline_at: i(r, "deadline_at")?,
        });
        if out.len() as i64 >= f.limit.max(1) {
            break;
        }
    }
    Ok(out)
}

/// Counts of moves in the database for a negotiation (tests: nothing stored for bad frames).
pub async fn move_count(store: &Store, negotiation_id: &str) -> StoreResult<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM negotiation_moves WHERE negotiation_id = $1")
        .bind(negotiation_id)
        .fetch_one(store.pool())
        .await?;
    i(&row, "n")
}
