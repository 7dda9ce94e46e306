//! The settlement saga: reserve stock → create the order → take payment → confirm → tell the
//! agent. Each step is logged as started (committed) before it runs and as done or failed
//! after, in the same transaction as its effect and its audit-log entry, so a step's effect and
//! its record never disagree. A failed step undoes the steps before it in reverse (void or
//! refund the payment, remove the unconfirmed order, release the reservation), each undo logged
//! and audited the same way.
//!
//! A settlement runs as a durable job (`settle`, [`JOB_SETTLE`]): the request that starts it
//! claims the job and runs it at once ([`Mode::Live`]); if that process dies, the job's lease
//! runs out and a worker (this instance after a restart, or another) takes it over
//! ([`Mode::Recover`]): a settlement interrupted before its confirm step committed is undone
//! (reason `interrupted`), one interrupted after it is finished (the agent is told). Either way
//! no deal is left half settled.

use serde_json::{Value, json};
use sqlx::Row;

use super::payments::{self, Payment, StepTx};
use super::store::{self as sstore, Hold, Settlement, StepRecord};
use crate::commerce::{
    Address, Order, OrderItem, OrderStatus, PaymentEntry, PaymentKind, PaymentMethod,
};
use crate::state::AppState;
use crate::store::{Backend, Store, StoreResult, Touched, WriteTx};
use crate::util::now_ms;
use crate::worker::JobError;

/// The job kind that runs (and recovers) a settlement; payload `{deal_id, attempt}`.
pub const JOB_SETTLE: &str = "settle";

/// The forward steps, with their place in the log (telling the agent comes last, after any
/// compensation).
pub const RESERVE: (&str, i64) = ("reserve_stock", 1);
pub const ORDER: (&str, i64) = ("create_order", 2);
pub const PAYMENT: (&str, i64) = ("take_payment", 3);
pub const CONFIRM: (&str, i64) = ("confirm", 4);
pub const NOTIFY: (&str, i64) = ("notify_agent", 20);
/// The compensations, run in this order (the reverse of the steps they undo).
pub const UNDO_PAYMENT: (&str, i64) = ("undo_payment", 11);
pub const CANCEL_ORDER: (&str, i64) = ("cancel_order", 12);
pub const RELEASE: (&str, i64) = ("release_stock", 13);

/// Statuses of a finished step (an undo of a payment ends as how it was undone).
fn is_finished_ok(status: &str) -> bool {
    matches!(status, "done" | "refunded" | "voided" | "nothing_taken")
}

/// The order a settlement attempt creates: its id and number (the same, τ-bench style: `#S`
/// and sixteen digits derived from the deal and the attempt, so every run of the step writes
/// the same order; an order of that id that is not this deal's is never overwritten).
pub fn order_id_for(deal_id: &str, attempt: i64) -> String {
    let h = crate::util::sha256_hex(format!("{deal_id}:{attempt}").as_bytes());
    let n = u64::from_str_radix(&h[..15], 16).unwrap_or(0) % 10_000_000_000_000_000;
    format!("#S{n:016}")
}

/// One line of a deal, with what the order needs of it.
#[derive(Debug, Clone)]
pub struct DealLine {
    pub variant_id: String,
    pub product_id: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price: i64,
}

/// A deal as settling it needs it.
#[derive(Debug, Clone)]
pub struct DealInfo {
    pub deal_id: String,
    pub negotiation_id: String,
    pub agent_id: String,
    pub token_id: String,
    pub customer_id: String,
    pub total: i64,
    pub currency: String,
    pub valid_until: i64,
    /// When the deal was made (unix ms).
    pub agreed_at: i64,
    pub categories: Vec<String>,
    pub lines: Vec<DealLine>,
    pub shipping: String,
    pub shipping_price: i64,
}

/// Loads a deal with its negotiation's setup (names, products, the shipping price).
pub async fn deal_info(store: &Store, deal_id: &str) -> StoreResult<Option<DealInfo>> {
    let Some((deal, agent_id)) = crate::negotiate::store::deal(store, deal_id).await? else {
        return Ok(None);
    };
    let d = &deal.deal;
    let negotiation_id = d["negotiation_id"].as_str().unwrap_or_default().to_string();
    let Some(n) = crate::negotiate::store::load(store, &negotiation_id).await? else {
        return Ok(None);
    };
    let terms: crate::negotiate::Terms =
        serde_json::from_value(d["terms"].clone()).map_err(|e| {
            crate::store::StoreError::Corrupt {
                what: "deals.deal.terms".into(),
                message: e.to_string(),
            }
        })?;
    let lines = terms
        .lines
        .iter()
        .map(|l| {
            let setup = n.setup.line(&l.variant_id);
            DealLine {
                variant_id: l.variant_id.clone(),
                product_id: setup.map(|s| s.product_id.clone()).unwrap_or_default(),
                name: setup.map(|s| s.name.clone()).unwrap_or_default(),
                quantity: l.quantity,
                unit_price: l.unit_price,
            }
        })
        .collect();
    let shipping_price = n
        .setup
        .shipping_option(&terms.shipping)
        .map(|o| o.price)
        .unwrap_or(0);
    Ok(Some(DealInfo {
        deal_id: deal_id.to_string(),
        negotiation_id,
        agent_id,
        token_id: n.token_id.clone(),
        customer_id: d["customer_id"].as_str().unwrap_or_default().to_string(),
        total: d["total"].as_i64().unwrap_or(0),
        currency: terms.currency.clone(),
        valid_until: d["valid_until"].as_i64().unwrap_or(0),
        agreed_at: d["created_at"].as_i64().unwrap_or(0),
        categories: n
            .setup
            .lines
            .iter()
            .map(|l| l.category.to_lowercase())
            .collect(),
        lines,
        shipping: terms.shipping,
        shipping_price,
    }))
}

/// Who runs the saga: the request that started it, or a worker that took it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    Recover,
}

/// How a step went wrong for the deal (not for our infrastructure).
struct Failure {
    reason: String,
    message: String,
    http: u16,
    detail: Value,
}

impl Failure {
    fn new(reason: impl Into<String>, message: impl Into<String>, http: u16) -> Failure {
        Failure {
            reason: reason.into(),
            message: message.into(),
            http,
            detail: Value::Null,
        }
    }
}

/// What a finished step writes besides its effect.
struct Finish<'a> {
    step: (&'static str, i64),
    status: &'a str,
    detail: Value,
    order_id: Option<&'a str>,
    before: Option<Value>,
    after: Option<Value>,
    effects: Value,
    /// The settlement's new status, reason and answer status.
    settlement: Option<(&'a str, Option<&'a str>, Option<u16>)>,
    payment_ref: Option<&'a str>,
    touched: Touched,
}

impl<'a> Finish<'a> {
    fn new(step: (&'static str, i64), status: &'a str, detail: Value) -> Finish<'a> {
        Finish {
            step,
            status,
            detail,
            order_id: None,
            before: None,
            after: None,
            effects: json!([]),
            settlement: None,
            payment_ref: None,
            touched: Touched::default(),
        }
    }
}

fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::retry(e.to_string())
}

/// The error of a run whose settlement changed under it (another run took the attempt over).
fn taken_over(s: &Settlement) -> crate::store::StoreError {
    crate::store::StoreError::Conflict(format!(
        "attempt {} of the settlement of deal {} is no longer {} here: another run took it over",
        s.attempt, s.deal_id, s.status
    ))
}

/// One run of the saga over one attempt.
struct Run<'a> {
    state: &'a AppState,
    s: Settlement,
    info: DealInfo,
    log: Vec<StepRecord>,
}

/// Runs (or resumes, or recovers) the attempt `attempt` of a deal's settlement to its end:
/// settled, or failed with every completed step undone. `Err` leaves it to be retried (the
/// job's backoff): a compensation that could not finish yet, or the store unavailable.
pub async fn drive(
    state: &AppState,
    deal_id: &str,
    attempt: i64,
    mode: Mode,
) -> Result<(), JobError> {
    let store = &state.store;
    let Some(s) = sstore::get(store, deal_id).await.map_err(retry)? else {
        return Err(JobError::Dead(format!("no settlement of deal {deal_id}")));
    };
    if s.attempt != attempt {
        // A later attempt owns the deal now; this one finished before it could start.
        return Ok(());
    }
    let Some(info) = deal_info(store, deal_id).await.map_err(retry)? else {
        return Err(JobError::Dead(format!("deal {deal_id} is gone")));
    };
    let log = sstore::steps(store, deal_id, attempt)
        .await
        .map_err(retry)?;
    let mut run = Run {
        state,
        s,
        info,
        log,
    };
    if run.s.status == "running" {
        if mode == Mode::Recover && !run.is(CONFIRM, "done") {
            run.interrupt().await.map_err(retry)?;
        } else {
            run.forward().await?;
        }
    }
    if run.s.status == "compensating" {
        run.compensate().await?;
    }
    if run.s.is_finished() && !run.is(NOTIFY, "done") {
        run.notify().await.map_err(retry)?;
        let since_agreement = u64::try_from(now_ms() - run.info.agreed_at)
            .ok()
            .filter(|_| run.info.agreed_at > 0)
            .map(std::time::Duration::from_millis);
        crate::risk::deal_settlement_finished(
            state,
            crate::risk::DealOutcome {
                deal_id: &run.info.deal_id,
                agent_id: &run.s.agent_id,
                customer_id: &run.s.customer_id,
                total: run.s.total,
                settled: run.s.status == "settled",
                reason: run.s.reason.as_deref(),
                since_agreement,
            },
        );
    }
    Ok(())
}

impl Run<'_> {
    fn store(&self) -> &Store {
        &self.state.store
    }

    fn record(&self, step: (&str, i64)) -> Option<&StepRecord> {
        self.log.iter().find(|r| r.step == step.0)
    }

    fn is(&self, step: (&str, i64), status: &str) -> bool {
        self.record(step).is_some_and(|r| r.status == status)
    }

    fn order_id(&self) -> String {
        order_id_for(&self.s.deal_id, self.s.attempt)
    }

    async fn started(&mut self, step: (&str, i64)) -> StoreResult<()> {
        if self.record(step).is_some() {
            return Ok(());
        }
        let now = now_ms();
        sstore::step_started(
            self.store(),
            &self.s.deal_id,
            self.s.attempt,
            step.0,
            step.1,
            now,
        )
        .await?;
        self.log.push(StepRecord {
            step: step.0.to_string(),
            position: step.1,
            status: "started".into(),
            detail: Value::Null,
            audit_seq: None,
            started_at: now,
            finished_at: None,
        });
        Ok(())
    }

    /// Writes a finished step — its audit entry, its log record, the settlement's new state —
    /// in `tx` (which holds the step's effect) and commits.
    async fn finish(&mut self, mut tx: WriteTx, f: Finish<'_>) -> StoreResult<()> {
        let now = now_ms();
        let args = json!({
            "deal_id": self.s.deal_id,
            "attempt": self.s.attempt,
            "step": f.step.0,
            "status": f.status,
            "detail": f.detail,
        });
        let request = Store::action_request(&format!("settlement_{}", f.step.0), args, now)
            .by("consumer_agent", Some(&self.s.agent_id))
            .for_customer(Some(&self.s.customer_id));
        let outcome = if f.status == "failed" {
            format!(
                "refused: {}: {}",
                f.detail["reason"].as_str().unwrap_or("failed"),
                f.detail["message"].as_str().unwrap_or_default()
            )
        } else {
            "applied".to_string()
        };
        let entry = self
            .store()
            .record_change_in(
                &mut tx, &request, f.order_id, f.before, f.after, f.effects, &outcome,
            )
            .await?;
        sstore::step_finished_in(
            &mut tx,
            &self.s.deal_id,
            self.s.attempt,
            f.step.0,
            f.step.1,
            f.status,
            &f.detail,
            Some(entry.seq),
            now,
        )
        .await?;
        let order_for_settlement = if f.step == ORDER || f.step == CONFIRM {
            f.order_id
        } else {
            None
        };
        let (status, reason, http) = f.settlement.unwrap_or((self.s.status.as_str(), None, None));
        let status = status.to_string();
        // Written only while the settlement is as this run knows it: a run that lost its job
        // to a worker (its lease ran out) changes nothing from here on.
        let ours = sstore::set_status_in(
            &mut tx,
            &self.s.deal_id,
            sstore::Expect {
                attempt: self.s.attempt,
                status: &self.s.status,
            },
            sstore::NewStatus {
                status: &status,
                reason,
                order_id: order_for_settlement,
                payment_ref: f.payment_ref,
                http_status: http,
                compensated: false,
            },
            now,
        )
        .await?;
        if !ours {
            let _ = tx.rollback().await;
            return Err(taken_over(&self.s));
        }
        self.store().commit_touching(tx, &f.touched).await?;
        self.s.status = status;
        if let Some(r) = reason {
            self.s.reason = Some(r.to_string());
        }
        if let Some(h) = http {
            self.s.http_status = Some(i64::from(h));
        }
        if let Some(o) = order_for_settlement {
            self.s.order_id = Some(o.to_string());
        }
        if let Some(p) = f.payment_ref {
            self.s.payment_ref = Some(p.to_string());
        }
        if self.s.is_finished() {
            self.s.finished_at = Some(now);
        }
        let record = StepRecord {
            step: f.step.0.to_string(),
            position: f.step.1,
            status: f.status.to_string(),
            detail: f.detail,
            audit_seq: Some(entry.seq),
            started_at: now,
            finished_at: Some(now),
        };
        match self.log.iter_mut().find(|r| r.step == f.step.0) {
            Some(r) => {
                r.status = record.status;
                r.detail = record.detail;
                r.audit_seq = record.audit_seq;
                r.finished_at = record.finished_at;
            }
            None => self.log.push(record),
        }
        Ok(())
    }

    /// Records that `step` failed for the deal, and turns the settlement to compensating.
    async fn fail(&mut self, step: (&'static str, i64), f: Failure) -> StoreResult<()> {
        let tx = self.store().begin_audited_write().await?;
        let mut detail = json!({"reason": f.reason, "message": f.message});
        if let (Some(d), Value::Object(extra)) = (detail.as_object_mut(), f.detail) {
            d.extend(extra);
        }
        let payment_ref = detail["reference"].as_str().map(str::to_string);
        let mut fin = Finish::new(step, "failed", detail);
        fin.settlement = Some(("compensating", Some(&f.reason), Some(f.http)));
        fin.payment_ref = payment_ref.as_deref();
        self.finish(tx, fin).await
    }

    /// A worker took over a settlement its request never finished: it is undone.
    async fn interrupt(&mut self) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.store().begin_audited_write().await?;
        let request = Store::action_request(
            "settlement_interrupted",
            json!({"deal_id": self.s.deal_id, "attempt": self.s.attempt,
                   "steps": self.log.iter().map(|r| json!({"step": r.step, "status": r.status})).collect::<Vec<_>>()}),
            now,
        )
        .by("consumer_agent", Some(&self.s.agent_id))
        .for_customer(Some(&self.s.customer_id));
        self.store()
            .record_change_in(&mut tx, &request, None, None, None, json!([]), "applied")
            .await?;
        let ours = sstore::set_status_in(
            &mut tx,
            &self.s.deal_id,
            sstore::Expect {
                attempt: self.s.attempt,
                status: "running",
            },
            sstore::NewStatus {
                status: "compensating",
                reason: Some("interrupted"),
                http_status: Some(500),
                ..Default::default()
            },
            now,
        )
        .await?;
        if !ours {
            let _ = tx.rollback().await;
            return Err(taken_over(&self.s));
        }
        tx.commit().await?;
        self.s.status = "compensating".into();
        self.s.reason = Some("interrupted".into());
        self.s.http_status = Some(500);
        Ok(())
    }

    async fn forward(&mut self) -> Result<(), JobError> {
        for step in [RESERVE, ORDER, PAYMENT, CONFIRM] {
            if self.is(step, "done") {
                continue;
            }
            if self.is(step, "failed") {
                break;
            }
            self.started(step).await.map_err(retry)?;
            let result = match step.0 {
                "reserve_stock" => self.reserve().await,
                "create_order" => self.create_order().await,
                "take_payment" => self.take_payment().await,
                _ => self.confirm().await,
            };
            match result {
                Ok(None) => {}
                Ok(Some(f)) => {
                    self.fail(step, f).await.map_err(retry)?;
                    return Ok(());
                }
                Err(e) => return Err(retry(e)),
            }
        }
        Ok(())
    }

    // ---- the steps ----

    async fn reserve(&mut self) -> StoreResult<Option<Failure>> {
        let now = now_ms();
        let store = self.store().clone();
        let mut tx = store.begin_audited_write().await?;
        let lock = match store.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let expires_at =
            now + i64::try_from(self.state.config.payments.reservation_secs).unwrap_or(900) * 1000;
        let mut holds = Vec::new();
        let mut products: Vec<String> = Vec::new();
        for line in &self.info.lines {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT available, stock, product_id FROM variants WHERE id = $1{lock}"
            )))
            .bind(line.variant_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let short = match row {
                None => Some(format!("{} is no longer sold", line.name)),
                Some(r) => {
                    let available: i64 = r.try_get("available")?;
                    let stock: Option<i64> = r.try_get("stock")?;
                    let held =
                        sstore::held_in(&mut tx, &line.variant_id, &self.s.deal_id, now).await?;
                    match stock {
                        _ if available == 0 => Some(format!("{} is out of stock", line.name)),
                        Some(s) if s - held < line.quantity => Some(format!(
                            "{} has {} left; the deal is for {}",
                            line.name,
                            (s - held).max(0),
                            line.quantity
                        )),
                        _ => None,
                    }
                }
            };
            if let Some(message) = short {
                tx.rollback().await?;
                return Ok(Some(Failure::new("out_of_stock", message, 409)));
            }
            sstore::hold_in(
                &mut tx,
                &Hold {
                    deal_id: &self.s.deal_id,
                    attempt: self.s.attempt,
                    variant_id: &line.variant_id,
                    product_id: &line.product_id,
                    quantity: line.quantity,
                    expires_at,
                    now,
                },
            )
            .await?;
            holds.push(json!({"variant_id": line.variant_id, "quantity": line.quantity}));
            if !products.contains(&line.product_id) {
                products.push(line.product_id.clone());
            }
        }
        let mut fin = Finish::new(
            RESERVE,
            "done",
            json!({"holds": holds, "expires_at": expires_at}),
        );
        fin.touched.products = products;
        self.finish(tx, fin).await?;
        Ok(None)
    }

    async fn build_order(&self, tx: &mut WriteTx, now: i64) -> StoreResult<Order> {
        let store = self.store();
        let customer = store.get_customer(&self.s.customer_id).await?;
        let id = self.order_id();
        let mut items = Vec::new();
        for (i, line) in self.info.lines.iter().enumerate() {
            let row = sqlx::query("SELECT options, sku FROM variants WHERE id = $1")
                .bind(line.variant_id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
            let (options, sku) = match row {
                Some(r) => (
                    serde_json::from_str(&r.try_get::<String, _>("options")?).unwrap_or_default(),
                    r.try_get::<Option<String>, _>("sku")?,
                ),
                None => (Default::default(), None),
            };
            items.push(OrderItem {
                line_id: Some(format!("{id}-{}", i + 1)),
                variant_id: line.variant_id.clone(),
                product_id: line.product_id.clone(),
                name: line.name.clone(),
                options,
                sku,
                price: line.unit_price,
                quantity: line.quantity,
            });
        }
        let position: i64 = sqlx::query(
            "SELECT CAST(COALESCE(MAX(position), -1) + 1 AS BIGINT) AS next FROM orders WHERE customer_id = $1",
        )
        .bind(self.s.customer_id.as_str())
        .fetch_one(&mut **tx)
        .await?
        .try_get("next")?;
        let mut address = self.s.address.clone().unwrap_or_default();
        if address.name.is_empty()
            && let Some(c) = &customer
        {
            address.name = c.full_name();
        }
        Ok(Order {
            id: id.clone(),
            number: id,
            // The order's reference to the deal it settles.
            source: format!("deal:{}", self.s.deal_id),
            customer_id: Some(self.s.customer_id.clone()),
            email: customer
                .as_ref()
                .and_then(|c| c.primary_email().map(str::to_string)),
            status: OrderStatus::Pending,
            items_modified: false,
            currency: self.info.currency.clone(),
            items,
            shipping_address: Some(address),
            fulfillments: Vec::new(),
            payments: Vec::new(),
            total: self.info.total,
            cancel_reason: None,
            created_at: Some(now),
            updated_at: Some(now),
            cancelled_at: None,
            position,
            returns: Vec::new(),
            exchanges: Vec::new(),
            refunds: Vec::new(),
        })
    }

    async fn create_order(&mut self) -> StoreResult<Option<Failure>> {
        let now = now_ms();
        let store = self.store().clone();
        let mut tx = store.begin_audited_write().await?;
        let written = async {
            let order = self.build_order(&mut tx, now).await?;
            // The id is derived from the deal and attempt; an order of that id settling anything
            // else (or none) is never overwritten.
            if let Some(existing) = store.get_order_in(&mut tx, &order.id).await?
                && existing.source != order.source
            {
                return Err(crate::store::StoreError::Conflict(format!(
                    "order {} already exists and is not this deal's",
                    order.id
                )));
            }
            store.put_order_in(&mut tx, &order).await?;
            Ok::<Order, crate::store::StoreError>(order)
        }
        .await;
        let order = match written {
            Ok(o) => o,
            Err(e) => {
                let _ = tx.rollback().await;
                tracing::error!(deal = %self.s.deal_id, error = %e, "settlement: the order could not be written");
                return Ok(Some(Failure::new(
                    "order_failed",
                    format!("the order could not be stored: {e}"),
                    500,
                )));
            }
        };
        let after = serde_json::to_value(&order).ok();
        let mut fin = Finish::new(
            ORDER,
            "done",
            json!({"order_id": order.id, "total": order.total, "status": "pending"}),
        );
        fin.order_id = Some(&order.id);
        fin.after = after;
        fin.touched.orders = vec![order.number.clone()];
        self.finish(tx, fin).await?;
        Ok(None)
    }

    /// The payment method and its provider; Err: why it cannot pay any more.
    async fn payment(
        &self,
    ) -> StoreResult<Result<(Payment, std::sync::Arc<dyn payments::PaymentProvider>), Failure>>
    {
        let method_id = self.s.payment_method_id.clone().unwrap_or_default();
        let customer = self.store().get_customer(&self.s.customer_id).await?;
        let method = customer
            .and_then(|c| c.payment_methods.into_iter().find(|m| m.id == method_id))
            .unwrap_or_else(|| PaymentMethod {
                // Removed since the settlement started: a gift card is still credited back
                // by id; a card is undone at the processor by its reference.
                id: method_id.clone(),
                kind: if method_id.starts_with("gift_card_") {
                    "gift_card".into()
                } else {
                    "credit_card".into()
                },
                brand: None,
                last_four: None,
                balance: None,
                currency: self.s.currency.clone(),
            });
        let provider = match payments::provider_for(&self.state.config.payments, &method) {
            Ok(p) => p,
            Err(m) => return Ok(Err(Failure::new("payment_refused", m, 402))),
        };
        Ok(Ok((
            Payment {
                deal_id: self.s.deal_id.clone(),
                attempt: self.s.attempt,
                customer_id: self.s.customer_id.clone(),
                method,
                amount: self.s.total,
                currency: self.s.currency.clone(),
            },
            provider,
        )))
    }

    async fn take_payment(&mut self) -> StoreResult<Option<Failure>> {
        if now_ms() > self.info.valid_until {
            return Ok(Some(Failure::new(
                "deal_expired",
                "the deal's terms expired before it was paid",
                409,
            )));
        }
        let (payment, provider) = match self.payment().await? {
            Ok(p) => p,
            Err(f) => return Ok(Some(f)),
        };
        let mut step = StepTx::new(self.store(), &self.s.deal_id, self.s.attempt);
        match provider.charge(&payment, &mut step).await {
            Ok(charged) => {
                let tx = step.into_tx().await?;
                let mut fin = Finish::new(
                    PAYMENT,
                    "done",
                    json!({"provider": provider.name(), "reference": charged.reference,
                           "amount": payment.amount, "currency": payment.currency}),
                );
                fin.effects = charged.effects.clone();
                fin.payment_ref = Some(&charged.reference);
                self.finish(tx, fin).await?;
                Ok(None)
            }
            Err(e) => {
                if let Ok(tx) = step.into_tx().await {
                    let _ = tx.rollback().await;
                }
                let mut f = Failure::new(e.reason(), e.message(), 402);
                f.detail = json!({"provider": provider.name(), "reference": e.reference(),
                                  "may_have_moved": e.may_have_moved()});
                Ok(Some(f))
            }
        }
    }

    async fn confirm(&mut self) -> StoreResult<Option<Failure>> {
        let now = now_ms();
        let store = self.store().clone();
        let order_id = self.order_id();
        let mut tx = store.begin_audited_write().await?;
        let holds = sstore::holds_in(&mut tx, &self.s.deal_id, self.s.attempt).await?;
        if holds.len() != self.info.lines.len() || holds.iter().any(|h| h.3 <= now) {
            tx.rollback().await?;
            return Ok(Some(Failure::new(
                "reservation_expired",
                "the stock held for this settlement was released before it was confirmed",
                409,
            )));
        }
        let Some(mut order) = store.get_order_in(&mut tx, &order_id).await? else {
            tx.rollback().await?;
            return Ok(Some(Failure::new(
                "order_failed",
                format!("order {order_id} is gone"),
                500,
            )));
        };
        if order.status != OrderStatus::Pending {
            tx.rollback().await?;
            return Ok(Some(Failure::new(
                "order_changed",
                format!(
                    "order {order_id} was {} before it was confirmed",
                    order.status
                ),
                409,
            )));
        }
        let before = serde_json::to_value(&order).ok();
        order.payments.push(PaymentEntry {
            kind: PaymentKind::Payment,
            amount: self.s.total,
            payment_method_id: self.s.payment_method_id.clone().unwrap_or_default(),
            created_at: Some(now),
        });
        order.updated_at = Some(now);
        let written = async {
            store.put_order_in(&mut tx, &order).await?;
            for (variant, _, quantity, _) in &holds {
                sqlx::query(
                    "UPDATE variants SET stock = stock - $2 WHERE id = $1 AND stock IS NOT NULL",
                )
                .bind(variant.as_str())
                .bind(*quantity)
                .execute(&mut *tx)
                .await?;
            }
            sstore::end_holds_in(&mut tx, &self.s.deal_id, self.s.attempt, "consumed", now).await
        }
        .await;
        let products = match written {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.rollback().await;
                return Ok(Some(Failure::new(
                    "order_failed",
                    format!("the order could not be confirmed: {e}"),
                    500,
                )));
            }
        };
        let mut fin = Finish::new(
            CONFIRM,
            "done",
            json!({"order_id": order.id, "paid": self.s.total}),
        );
        fin.order_id = Some(&order_id);
        fin.before = before;
        fin.after = serde_json::to_value(&order).ok();
        fin.settlement = Some(("settled", None, Some(201)));
        fin.touched.orders = vec![order.number.clone()];
        fin.touched.products = products;
        self.finish(tx, fin).await?;
        Ok(None)
    }

    // ---- compensation ----

    /// Whether the payment step may have moved money (then it is undone).
    fn payment_needs_undo(&self) -> bool {
        match self.record(PAYMENT) {
            None => false,
            Some(r) if r.status == "failed" => {
                r.detail["may_have_moved"] == true || r.detail["reference"].is_string()
            }
            // Done, or started and never finished (a crash mid-call).
            Some(_) => true,
        }
    }

    async fn compensate(&mut self) -> Result<(), JobError> {
        // Undo the payment.
        if self.payment_needs_undo()
            && !self
                .record(UNDO_PAYMENT)
                .is_some_and(|r| is_finished_ok(&r.status))
        {
            self.started(UNDO_PAYMENT).await.map_err(retry)?;
            let (payment, provider) = match self.payment().await.map_err(retry)? {
                Ok(p) => p,
                Err(f) => return Err(JobError::retry(f.message)),
            };
            if self.s.payment_ref.is_none() {
                // The provider's handle may have been recorded by a run this one took over,
                // after this run read the settlement.
                if let Some(fresh) = sstore::get(self.store(), &self.s.deal_id)
                    .await
                    .map_err(retry)?
                    .filter(|f| f.attempt == self.s.attempt)
                {
                    self.s.payment_ref = fresh.payment_ref;
                }
            }
            let reference = self
                .record(PAYMENT)
                .and_then(|r| r.detail["reference"].as_str().map(str::to_string))
                .or_else(|| self.s.payment_ref.clone());
            let mut step = StepTx::new(self.store(), &self.s.deal_id, self.s.attempt);
            match provider
                .reverse(&payment, reference.as_deref(), &mut step)
                .await
            {
                Ok(rev) => {
                    let tx = step.into_tx().await.map_err(retry)?;
                    let mut fin = Finish::new(
                        UNDO_PAYMENT,
                        rev.as_str(),
                        json!({"provider": provider.name(), "reference": reference,
                               "amount": payment.amount, "currency": payment.currency}),
                    );
                    if rev == payments::Reversal::Refunded {
                        fin.effects = json!([{"payment_method_id": payment.method.id,
                                              "credited": payment.amount, "provider": provider.name()}]);
                    }
                    self.finish(tx, fin).await.map_err(retry)?;
                }
                Err(message) => {
                    if let Ok(tx) = step.into_tx().await {
                        let _ = tx.rollback().await;
                    }
                    tracing::warn!(deal = %self.s.deal_id, error = %message,
                        "settlement: the payment could not be undone yet; retrying");
                    if let Ok(tx) = self.store().begin_audited_write().await {
                        let fin = Finish::new(
                            UNDO_PAYMENT,
                            "failed",
                            json!({"reason": "undo_failed", "message": message}),
                        );
                        let _ = self.finish(tx, fin).await;
                    }
                    return Err(JobError::retry(message));
                }
            }
        }
        // Remove the unconfirmed order.
        if self.record(ORDER).is_some_and(|r| r.status != "failed")
            && !self.is(CANCEL_ORDER, "done")
        {
            self.started(CANCEL_ORDER).await.map_err(retry)?;
            let store = self.store().clone();
            let order_id = self.order_id();
            let mut tx = store.begin_audited_write().await.map_err(retry)?;
            let before = store
                .get_order_in(&mut tx, &order_id)
                .await
                .map_err(retry)?;
            // Only this deal's own order is removed, never another of the same id.
            let ours = format!("deal:{}", self.s.deal_id);
            let gone = if before.as_ref().is_some_and(|o| o.source == ours) {
                store
                    .delete_order_in(&mut tx, &order_id)
                    .await
                    .map_err(retry)?
            } else {
                None
            };
            let mut fin = Finish::new(
                CANCEL_ORDER,
                "done",
                json!({"order_id": order_id, "removed": gone.is_some()}),
            );
            fin.order_id = Some(&order_id);
            fin.before = before.and_then(|o| serde_json::to_value(o).ok());
            fin.touched.orders_gone = gone.into_iter().collect();
            self.finish(tx, fin).await.map_err(retry)?;
        }
        // Release the reservation.
        if self.record(RESERVE).is_some_and(|r| r.status != "failed") && !self.is(RELEASE, "done") {
            self.started(RELEASE).await.map_err(retry)?;
            let store = self.store().clone();
            let mut tx = store.begin_audited_write().await.map_err(retry)?;
            let products = sstore::end_holds_in(
                &mut tx,
                &self.s.deal_id,
                self.s.attempt,
                "released",
                now_ms(),
            )
            .await
            .map_err(retry)?;
            let mut fin = Finish::new(RELEASE, "done", json!({"products": products}));
            fin.touched.products = products.clone();
            self.finish(tx, fin).await.map_err(retry)?;
        }
        // Everything undone: the settlement failed.
        let now = now_ms();
        let mut tx = self.store().begin_audited_write().await.map_err(retry)?;
        let reason = self.s.reason.clone().unwrap_or_else(|| "failed".into());
        let request = Store::action_request(
            "settlement_failed",
            json!({"deal_id": self.s.deal_id, "attempt": self.s.attempt, "reason": reason}),
            now,
        )
        .by("consumer_agent", Some(&self.s.agent_id))
        .for_customer(Some(&self.s.customer_id));
        self.store()
            .record_change_in(&mut tx, &request, None, None, None, json!([]), "applied")
            .await
            .map_err(retry)?;
        let compensated = self
            .record(UNDO_PAYMENT)
            .is_some_and(|r| r.status == "refunded" || r.status == "voided")
            || self.is(CANCEL_ORDER, "done")
            || self.is(RELEASE, "done");
        let ours = sstore::set_status_in(
            &mut tx,
            &self.s.deal_id,
            sstore::Expect {
                attempt: self.s.attempt,
                status: "compensating",
            },
            sstore::NewStatus {
                status: "failed",
                compensated,
                ..Default::default()
            },
            now,
        )
        .await
        .map_err(retry)?;
        if !ours {
            let _ = tx.rollback().await;
            return Err(retry(taken_over(&self.s)));
        }
        tx.commit().await.map_err(retry)?;
        self.s.status = "failed".into();
        self.s.finished_at = Some(now);
        Ok(())
    }

    /// Tells the agent on its open negotiation sockets (the outcome is also on
    /// `GET /agent/v1/deals/{id}`).
    async fn notify(&mut self) -> StoreResult<()> {
        self.started(NOTIFY).await?;
        let settled = self.s.status == "settled";
        let mut frame = json!({
            "type": "settled",
            "negotiation_id": self.info.negotiation_id,
            "deal_id": self.s.deal_id,
            "order_id": if settled { json!(self.s.order_id) } else { Value::Null },
            "status": if settled { "settled" } else { "failed" },
        });
        if !settled {
            frame["reason"] = json!(self.s.reason);
        }
        let reached = self.state.agent_sockets.send(&self.s.agent_id, &frame);
        let tx = self.store().begin_audited_write().await?;
        let fin = Finish::new(NOTIFY, "done", json!({"sockets": reached, "frame": frame}));
        self.finish(tx, fin).await
    }
}

/// The answer to a settle request (and the `settlement` of `GET /agent/v1/deals/{id}`):
/// `{deal_id, status, order_id?, reason?, steps: [{step, status}]}` and its HTTP status. None
/// while the outcome is not decided yet (a forward step still to run).
pub fn answer(s: &Settlement, log: &[StepRecord]) -> Option<(u16, Value)> {
    answer_of(
        Outcome {
            deal_id: &s.deal_id,
            status: &s.status,
            order_id: s.order_id.as_deref(),
            reason: s.reason.as_deref(),
            http_status: s.http_status,
        },
        log,
    )
}

/// What an attempt came to, as far as its answer goes.
pub struct Outcome<'a> {
    pub deal_id: &'a str,
    pub status: &'a str,
    pub order_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub http_status: Option<i64>,
}

/// [`answer`] for any attempt (an earlier one, found by its Idempotency-Key).
pub fn answer_of(s: Outcome<'_>, log: &[StepRecord]) -> Option<(u16, Value)> {
    let steps: Vec<Value> = log
        .iter()
        .map(|r| json!({"step": r.step, "status": r.status}))
        .collect();
    match s.status {
        "settled" => Some((
            201,
            json!({"deal_id": s.deal_id, "status": "settled", "order_id": s.order_id, "steps": steps}),
        )),
        "failed" | "compensating" => {
            let http = s
                .http_status
                .and_then(|h| u16::try_from(h).ok())
                .unwrap_or(402);
            Some((
                http,
                json!({"deal_id": s.deal_id, "status": "failed", "reason": s.reason, "steps": steps}),
            ))
        }
        _ => None,
    }
}

/// The settlement as `GET /agent/v1/deals/{id}` shows it (None: never settled).
pub async fn view(store: &Store, deal_id: &str) -> StoreResult<Option<Value>> {
    let Some(s) = sstore::get(store, deal_id).await? else {
        return Ok(None);
    };
    let log = sstore::steps(store, deal_id, s.attempt).await?;
    let steps: Vec<Value> = log
        .iter()
        .map(|r| json!({"step": r.step, "status": r.status, "detail": r.detail, "audit_seq": r.audit_seq}))
        .collect();
    Ok(Some(json!({
        "status": s.status,
        "reason": s.reason,
        "order_id": if s.status == "settled" { json!(s.order_id) } else { Value::Null },
        "attempt": s.attempt,
        "total": s.total,
        "currency": s.currency,
        "payment_method_id": s.payment_method_id,
        "provider": s.provider,
        "started_at": s.started_at,
        "finished_at": s.finished_at,
        "steps": steps,
    })))
}

/// The address an order ships to: `given`, else the customer's default (first) address.
pub fn ship_to(given: Option<Address>, customer: &crate::commerce::Customer) -> Option<Address> {
    given.or_else(|| customer.addresses.first().cloned())
}
