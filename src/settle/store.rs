//! Settlements, their saga log and stock reservations in the database (migration 0015), on
//! SQLite and PostgreSQL through the store's writer. Every write here runs in a transaction the
//! saga hands in, so a step's effect, its log record and its audit entry commit together.

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::commerce::Address;
use crate::store::{Backend, Store, StoreError, StoreResult, WriteTx};

/// A settlement: the latest attempt to settle one deal.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub deal_id: String,
    pub agent_id: String,
    pub customer_id: String,
    pub total: i64,
    pub currency: String,
    /// "running", "compensating", "settled" or "failed".
    pub status: String,
    pub reason: Option<String>,
    pub order_id: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub attempt: i64,
    pub idempotency_key: Option<String>,
    pub payment_method_id: Option<String>,
    pub provider: Option<String>,
    pub payment_ref: Option<String>,
    pub address: Option<Address>,
    /// The HTTP status of the answer, once the outcome is decided.
    pub http_status: Option<i64>,
}

impl Settlement {
    pub fn is_finished(&self) -> bool {
        self.status == "settled" || self.status == "failed"
    }
}

/// One record of the saga log.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub step: String,
    pub position: i64,
    /// "started", then "done" or "failed" — or, for undoing a payment, how it was undone
    /// ("refunded", "voided", "nothing_taken").
    pub status: String,
    pub detail: Value,
    pub audit_seq: Option<i64>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        message: e.to_string(),
    }
}

fn settlement_from_row(r: &AnyRow) -> StoreResult<Settlement> {
    let address: Option<String> = r.try_get("address")?;
    Ok(Settlement {
        deal_id: r.try_get("deal_id")?,
        agent_id: r.try_get("agent_id")?,
        customer_id: r.try_get("customer_id")?,
        total: r.try_get("total")?,
        currency: r.try_get("currency")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        order_id: r.try_get("order_id")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        attempt: r.try_get("attempt")?,
        idempotency_key: r.try_get("idempotency_key")?,
        payment_method_id: r.try_get("payment_method_id")?,
        provider: r.try_get("provider")?,
        payment_ref: r.try_get("payment_ref")?,
        address: address
            .map(|a| serde_json::from_str(&a).map_err(|e| corrupt("settlements.address", e)))
            .transpose()?,
        http_status: r.try_get("http_status")?,
    })
}

/// The settlement of a deal, if one was ever started (read from the pool).
pub async fn get(store: &Store, deal_id: &str) -> StoreResult<Option<Settlement>> {
    let row = sqlx::query("SELECT * FROM settlements WHERE deal_id = $1")
        .bind(deal_id)
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(settlement_from_row).transpose()
}

/// The same, inside a write transaction (seeing its own writes; on PostgreSQL locking the row).
pub async fn get_in(
    store: &Store,
    tx: &mut WriteTx,
    deal_id: &str,
) -> StoreResult<Option<Settlement>> {
    let sql = match store.backend() {
        Backend::Postgres => "SELECT * FROM settlements WHERE deal_id = $1 FOR UPDATE",
        Backend::Sqlite => "SELECT * FROM settlements WHERE deal_id = $1",
    };
    let row = sqlx::query(sql)
        .bind(deal_id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(settlement_from_row).transpose()
}

/// The saga log of one attempt, in step order.
pub async fn steps(store: &Store, deal_id: &str, attempt: i64) -> StoreResult<Vec<StepRecord>> {
    let rows = sqlx::query(
        "SELECT * FROM settlement_steps WHERE deal_id = $1 AND attempt = $2 ORDER BY position",
    )
    .bind(deal_id)
    .bind(attempt)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let detail: Option<String> = r.try_get("detail")?;
            Ok(StepRecord {
                step: r.try_get("step")?,
                position: r.try_get("position")?,
                status: r.try_get("status")?,
                detail: match detail {
                    Some(d) => serde_json::from_str(&d)
                        .map_err(|e| corrupt("settlement_steps.detail", e))?,
                    None => Value::Null,
                },
                audit_seq: r.try_get("audit_seq")?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
            })
        })
        .collect()
}

/// What a new attempt starts with.
pub struct NewAttempt<'a> {
    pub deal_id: &'a str,
    pub agent_id: &'a str,
    pub customer_id: &'a str,
    pub total: i64,
    pub currency: &'a str,
    pub idempotency_key: &'a str,
    pub payment_method_id: &'a str,
    pub provider: &'a str,
    pub address: &'a Address,
    pub now: i64,
}

/// Starts an attempt: the deal's first (a new row), or the next after a failed one. Returns
/// the attempt's number, or None when the deal is being settled or is settled already
/// (another request got there first).
pub async fn start_in(tx: &mut WriteTx, a: &NewAttempt<'_>) -> StoreResult<Option<i64>> {
    let address = serde_json::to_string(a.address).unwrap_or_default();
    let inserted = sqlx::query(
        "INSERT INTO settlements (deal_id, agent_id, customer_id, total, currency, status, \
           started_at, attempt, idempotency_key, payment_method_id, provider, address, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'running', $6, 1, $7, $8, $9, $10, $6) \
         ON CONFLICT (deal_id) DO NOTHING",
    )
    .bind(a.deal_id)
    .bind(a.agent_id)
    .bind(a.customer_id)
    .bind(a.total)
    .bind(a.currency)
    .bind(a.now)
    .bind(a.idempotency_key)
    .bind(a.payment_method_id)
    .bind(a.provider)
    .bind(address.as_str())
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 1 {
        insert_attempt_in(tx, a, 1).await?;
        return Ok(Some(1));
    }
    let row = sqlx::query(
        "UPDATE settlements SET status = 'running', attempt = attempt + 1, reason = NULL, \
           order_id = NULL, started_at = $2, finished_at = NULL, idempotency_key = $3, \
           payment_method_id = $4, provider = $5, payment_ref = NULL, address = $6, \
           http_status = NULL, updated_at = $2 \
         WHERE deal_id = $1 AND status = 'failed' RETURNING attempt",
    )
    .bind(a.deal_id)
    .bind(a.now)
    .bind(a.idempotency_key)
    .bind(a.payment_method_id)
    .bind(a.provider)
    .bind(address.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(attempt) = row.map(|r| r.try_get::<i64, _>("attempt")).transpose()? else {
        return Ok(None);
    };
    insert_attempt_in(tx, a, attempt).await?;
    Ok(Some(attempt))
}

async fn insert_attempt_in(tx: &mut WriteTx, a: &NewAttempt<'_>, attempt: i64) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO settlement_attempts (deal_id, attempt, idempotency_key, agent_id, total, \
           payment_method_id, status, started_at) VALUES ($1, $2, $3, $4, $5, $6, 'running', $7)",
    )
    .bind(a.deal_id)
    .bind(attempt)
    .bind(a.idempotency_key)
    .bind(a.agent_id)
    .bind(a.total)
    .bind(a.payment_method_id)
    .bind(a.now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Logs that a step is about to run (idempotent: a step started before keeps its record).
pub async fn step_started(
    store: &Store,
    deal_id: &str,
    attempt: i64,
    step: &str,
    position: i64,
    now: i64,
) -> StoreResult<()> {
    store
        .write_execute(
            sqlx::query(
                "INSERT INTO settlement_steps (deal_id, attempt, step, position, status, started_at) \
                 VALUES ($1, $2, $3, $4, 'started', $5) \
                 ON CONFLICT (deal_id, attempt, step) DO NOTHING",
            )
            .bind(deal_id)
            .bind(attempt)
            .bind(step)
            .bind(position)
            .bind(now),
        )
        .await?;
    Ok(())
}

/// Logs how a step ended, in the step's transaction.
#[allow(clippy::too_many_arguments)]
pub async fn step_finished_in(
    tx: &mut WriteTx,
    deal_id: &str,
    attempt: i64,
    step: &str,
    position: i64,
    status: &str,
    detail: &Value,
    audit_seq: Option<i64>,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO settlement_steps (deal_id, attempt, step, position, status, detail, audit_seq, \
           started_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
         ON CONFLICT (deal_id, attempt, step) DO UPDATE SET status = excluded.status, \
           detail = excluded.detail, audit_seq = excluded.audit_seq, finished_at = excluded.finished_at",
    )
    .bind(deal_id)
    .bind(attempt)
    .bind(step)
    .bind(position)
    .bind(status)
    .bind(detail.to_string())
    .bind(audit_seq)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The state a write expects the settlement in: this attempt, in this status. A write made
/// under another expectation (the attempt was taken over by a worker that found its lease run
/// out, or a newer attempt started) changes nothing.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub attempt: i64,
    pub status: &'a str,
}

/// A new state for the settlement (and its attempt's row).
#[derive(Debug, Clone, Copy, Default)]
pub struct NewStatus<'a> {
    pub status: &'a str,
    pub reason: Option<&'a str>,
    pub order_id: Option<&'a str>,
    pub payment_ref: Option<&'a str>,
    pub http_status: Option<u16>,
    /// A completed step was undone (counterparty monitoring counts compensations).
    pub compensated: bool,
}

/// Moves the settlement to `to.status` (with the reason, the order, the payment's reference
/// and the answer's HTTP status where given), in the step's transaction — only when it is
/// still as `expect`ed; false (nothing written) otherwise.
pub async fn set_status_in(
    tx: &mut WriteTx,
    deal_id: &str,
    expect: Expect<'_>,
    to: NewStatus<'_>,
    now: i64,
) -> StoreResult<bool> {
    let finished = (to.status == "settled" || to.status == "failed").then_some(now);
    let done = sqlx::query(
        "UPDATE settlements SET status = $2, reason = COALESCE($3, reason), \
           order_id = COALESCE($4, order_id), payment_ref = COALESCE($5, payment_ref), \
           http_status = COALESCE($6, http_status), finished_at = COALESCE($7, finished_at), \
           updated_at = $8 WHERE deal_id = $1 AND attempt = $9 AND status = $10",
    )
    .bind(deal_id)
    .bind(to.status)
    .bind(to.reason)
    .bind(to.order_id)
    .bind(to.payment_ref)
    .bind(to.http_status.map(i64::from))
    .bind(finished)
    .bind(now)
    .bind(expect.attempt)
    .bind(expect.status)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE settlement_attempts SET status = $3, reason = COALESCE($4, reason), \
           order_id = COALESCE($5, order_id), http_status = COALESCE($6, http_status), \
           finished_at = COALESCE($7, finished_at), \
           compensated = CASE WHEN $8 = 1 THEN 1 ELSE compensated END \
         WHERE deal_id = $1 AND attempt = $2",
    )
    .bind(deal_id)
    .bind(expect.attempt)
    .bind(to.status)
    .bind(to.reason)
    .bind(to.order_id)
    .bind(to.http_status.map(i64::from))
    .bind(finished)
    .bind(i64::from(to.compensated))
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// Records the payment provider's handle on an attempt's payment the moment the provider has
/// one (before any money can move), committed at once — only while the attempt is still
/// running forward; false when it is not (then the payment must not go on).
pub async fn note_payment_ref(
    store: &Store,
    deal_id: &str,
    attempt: i64,
    reference: &str,
) -> StoreResult<bool> {
    let done = store
        .write_execute(
            sqlx::query(
                "UPDATE settlements SET payment_ref = $3, updated_at = $4 \
                 WHERE deal_id = $1 AND attempt = $2 AND status = 'running'",
            )
            .bind(deal_id)
            .bind(attempt)
            .bind(reference)
            .bind(crate::util::now_ms()),
        )
        .await?;
    Ok(done.rows_affected() > 0)
}

/// One attempt, as its Idempotency-Key finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub deal_id: String,
    pub attempt: i64,
    pub agent_id: String,
    pub payment_method_id: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub order_id: Option<String>,
    pub http_status: Option<i64>,
}

impl Attempt {
    pub fn is_finished(&self) -> bool {
        self.status == "settled" || self.status == "failed"
    }
}

/// The attempt a deal's settle request with this Idempotency-Key started, if one did.
pub async fn attempt_by_key(
    store: &Store,
    deal_id: &str,
    idempotency_key: &str,
) -> StoreResult<Option<Attempt>> {
    let row = sqlx::query(
        "SELECT deal_id, attempt, agent_id, payment_method_id, status, reason, order_id, \
           http_status FROM settlement_attempts WHERE deal_id = $1 AND idempotency_key = $2",
    )
    .bind(deal_id)
    .bind(idempotency_key)
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| {
        Ok(Attempt {
            deal_id: r.try_get("deal_id")?,
            attempt: r.try_get("attempt")?,
            agent_id: r.try_get("agent_id")?,
            payment_method_id: r.try_get("payment_method_id")?,
            status: r.try_get("status")?,
            reason: r.try_get("reason")?,
            order_id: r.try_get("order_id")?,
            http_status: r.try_get("http_status")?,
        })
    })
    .transpose()
}

/// Units of a variant held by running settlements' reservations (not expired), other than
/// `except_deal`'s.
pub async fn held_in(
    tx: &mut WriteTx,
    variant_id: &str,
    except_deal: &str,
    now: i64,
) -> StoreResult<i64> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) AS held FROM stock_reservations \
         WHERE variant_id = $1 AND status = 'held' AND expires_at > $2 AND deal_id <> $3",
    )
    .bind(variant_id)
    .bind(now)
    .bind(except_deal)
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get("held")?)
}

/// One reservation to hold.
pub struct Hold<'a> {
    pub deal_id: &'a str,
    pub attempt: i64,
    pub variant_id: &'a str,
    pub product_id: &'a str,
    pub quantity: i64,
    pub expires_at: i64,
    pub now: i64,
}

/// Holds stock (idempotent per deal, attempt and variant).
pub async fn hold_in(tx: &mut WriteTx, h: &Hold<'_>) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO stock_reservations (id, deal_id, attempt, variant_id, product_id, quantity, \
           status, expires_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'held', $7, $8, $8) ON CONFLICT (id) DO NOTHING",
    )
    .bind(format!("{}:{}:{}", h.deal_id, h.attempt, h.variant_id))
    .bind(h.deal_id)
    .bind(h.attempt)
    .bind(h.variant_id)
    .bind(h.product_id)
    .bind(h.quantity)
    .bind(h.expires_at)
    .bind(h.now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An attempt's reservations still held: (variant, product, quantity, expires_at).
pub async fn holds_in(
    tx: &mut WriteTx,
    deal_id: &str,
    attempt: i64,
) -> StoreResult<Vec<(String, String, i64, i64)>> {
    let rows = sqlx::query(
        "SELECT variant_id, product_id, quantity, expires_at FROM stock_reservations \
         WHERE deal_id = $1 AND attempt = $2 AND status = 'held' ORDER BY variant_id",
    )
    .bind(deal_id)
    .bind(attempt)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("variant_id")?,
                r.try_get("product_id")?,
                r.try_get("quantity")?,
                r.try_get("expires_at")?,
            ))
        })
        .collect()
}

/// Ends an attempt's held reservations as `status` ("consumed" or "released"); the products
/// they were for.
pub async fn end_holds_in(
    tx: &mut WriteTx,
    deal_id: &str,
    attempt: i64,
    status: &str,
    now: i64,
) -> StoreResult<Vec<String>> {
    let rows = sqlx::query(
        "UPDATE stock_reservations SET status = $3, updated_at = $4 \
         WHERE deal_id = $1 AND attempt = $2 AND status = 'held' RETURNING product_id",
    )
    .bind(deal_id)
    .bind(attempt)
    .bind(status)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>("product_id")?))
        .collect()
}

/// Settlements of an agent, newest first (staff views, the risk engineer's figures).
pub async fn list_for_agent(
    store: &Store,
    agent_id: &str,
    limit: i64,
) -> StoreResult<Vec<Settlement>> {
    let rows = sqlx::query(
        "SELECT * FROM settlements WHERE agent_id = $1 ORDER BY started_at DESC LIMIT $2",
    )
    .bind(agent_id)
    .bind(limit.max(1))
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(settlement_from_row).collect()
}
