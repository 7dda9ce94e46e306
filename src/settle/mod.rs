//! Settlement (issue #15): a negotiated deal becomes a paid order through a saga that either
//! completes or undoes every step ([`saga`]), with payments behind one trait ([`payments`]:
//! gift cards from the store, cards through Stripe) and its state in the database ([`store`]).
//! The HTTP face is `gateway::settlement` (`POST /agent/v1/deals/{id}/settle`).

pub mod payments;
pub mod saga;
pub mod store;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::commerce::Address;
use crate::state::AppState;
use crate::store::Job;
use crate::util::now_ms;
use crate::worker::{self, JobError, JobFuture};

pub use saga::JOB_SETTLE;

// ---- the request ----

/// The shipping address in a settle request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressIn {
    pub address1: String,
    #[serde(default)]
    pub address2: String,
    pub city: String,
    #[serde(default)]
    pub state: String,
    pub zip: String,
    pub country: String,
}

/// The body of `POST /agent/v1/deals/{id}/settle`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleBody {
    pub payment_method_id: String,
    #[serde(default)]
    pub address: Option<AddressIn>,
}

/// Reads the body; Err is a message naming what is wrong (a 422).
pub fn parse_body(body: &[u8]) -> Result<SettleBody, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(
            "the body must be a JSON object: {\"payment_method_id\": \"…\", \"address\"?: {…}}"
                .into(),
        );
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: SettleBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            format!("the body is not a settle request: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })?;
    if parsed.payment_method_id.trim().is_empty() {
        return Err(
            "payment_method_id is empty: name one of the customer's stored gift cards or cards"
                .into(),
        );
    }
    if parsed.payment_method_id.chars().count() > 100 {
        return Err("payment_method_id is longer than 100 characters".into());
    }
    if let Some(a) = &parsed.address {
        for (field, value, required) in [
            ("address1", &a.address1, true),
            ("address2", &a.address2, false),
            ("city", &a.city, true),
            ("state", &a.state, false),
            ("zip", &a.zip, true),
            ("country", &a.country, true),
        ] {
            if required && value.trim().is_empty() {
                return Err(format!("address.{field} is empty"));
            }
            if value.chars().count() > 200 {
                return Err(format!("address.{field} is longer than 200 characters"));
            }
        }
    }
    Ok(parsed)
}

/// Who asks to settle, as the gateway authenticated them.
pub struct SettleRequest<'a> {
    pub deal_id: &'a str,
    pub agent_id: &'a str,
    /// The root token id of the capability token presented.
    pub token_id: &'a str,
    pub token_customer_id: &'a str,
    /// Whether that token allows the `settle` operation (checked by the gateway with its
    /// every attenuation).
    pub token_allows_settle: bool,
    pub idempotency_key: &'a str,
    pub body: SettleBody,
}

fn failed(deal_id: &str, reason: &str, steps: Value) -> Value {
    json!({"deal_id": deal_id, "status": "failed", "reason": reason, "steps": steps})
}

fn error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

/// Settles a deal: checks, starts an attempt with its job, runs it at once and answers with
/// its outcome: (HTTP status, body).
pub async fn settle(state: &AppState, req: SettleRequest<'_>) -> (u16, Value) {
    let store = &state.store;
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, deal = %req.deal_id, "settle: internal error");
        (
            500,
            error("internal", "our fault: nothing was changed; try again"),
        )
    };
    let info = match saga::deal_info(store, req.deal_id).await {
        Ok(Some(i)) if i.agent_id == req.agent_id => i,
        Ok(_) => return (404, error("not_found", "no such deal of yours")),
        Err(e) => return internal(&e),
    };
    let deal_token = req.token_id == info.token_id;
    if !deal_token && !req.token_allows_settle {
        return (
            403,
            error(
                "operation_not_allowed",
                "settle with the token the deal was negotiated under, or a token allowing `settle`",
            ),
        );
    }
    if req.token_customer_id != info.customer_id {
        return (
            403,
            error(
                "token_forbids",
                "this capability token is for another customer than the deal's",
            ),
        );
    }
    // The same request again (its first answer was lost or not stored): the outcome of the
    // attempt it started, whichever attempt that was.
    match store::attempt_by_key(store, req.deal_id, req.idempotency_key).await {
        Ok(Some(a)) => return attempt_answer(state, &a).await,
        Ok(None) => {}
        Err(e) => return internal(&e),
    }
    // What the latest attempt says.
    let existing = match store::get(store, req.deal_id).await {
        Ok(s) => s,
        Err(e) => return internal(&e),
    };
    if let Some(s) = &existing {
        match s.status.as_str() {
            "settled" => {
                return (
                    409,
                    json!({"deal_id": req.deal_id, "status": "settled", "order_id": s.order_id,
                           "reason": "already_settled", "steps": []}),
                );
            }
            "running" | "compensating" => {
                return (
                    409,
                    json!({"deal_id": req.deal_id, "status": "failed", "reason": "settlement_in_progress",
                           "steps": [], "error": {"code": "settlement_in_progress",
                           "message": "another settlement of this deal is running; its outcome will be on GET /agent/v1/deals/{id}"}}),
                );
            }
            _ => {}
        }
    }
    if now_ms() > info.valid_until {
        return (409, failed(req.deal_id, "deal_expired", json!([])));
    }
    // The payment method: the customer's own, served by a provider.
    let customer = match store.get_customer(&info.customer_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return (
                422,
                error(
                    "invalid_body",
                    "the deal's customer is no longer in the store",
                ),
            );
        }
        Err(e) => return internal(&e),
    };
    let method_id = req.body.payment_method_id.trim();
    let Some(method) = customer.payment_methods.iter().find(|m| m.id == method_id) else {
        let known: Vec<&str> = customer
            .payment_methods
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        return (
            422,
            error(
                "invalid_body",
                &format!(
                    "payment_method_id {method_id:?} is not one of the customer's stored payment methods ({})",
                    if known.is_empty() {
                        "they have none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ),
        );
    };
    let provider = match payments::provider_for(&state.config.payments, method) {
        Ok(p) => p,
        Err(m) => return (422, error("invalid_body", &m)),
    };
    if method.is_gift_card() && !method.currency.eq_ignore_ascii_case(&info.currency) {
        return (
            422,
            error(
                "invalid_body",
                &format!(
                    "gift card {} holds {}, the deal is in {}",
                    method.id, method.currency, info.currency
                ),
            ),
        );
    }
    let given = req.body.address.clone().map(|a| Address {
        name: customer.full_name(),
        address1: a.address1.trim().into(),
        address2: a.address2.trim().into(),
        city: a.city.trim().into(),
        state: a.state.trim().into(),
        country: a.country.trim().into(),
        zip: a.zip.trim().into(),
        phone: String::new(),
    });
    let Some(address) = saga::ship_to(given, &customer) else {
        return (
            422,
            error(
                "invalid_body",
                "the customer has no stored address: give one as address {address1, address2, city, state, zip, country}",
            ),
        );
    };
    if let Err(why) = crate::risk::settlement_allowed(state, req.agent_id).await {
        return (409, failed(req.deal_id, &why, json!([])));
    }
    // Start the attempt and its job (one transaction), then run it here.
    let now = now_ms();
    let lease = i64::try_from(state.config.jobs.lease_secs.max(1)).unwrap_or(60) * 1000;
    let started = async {
        let mut tx = store.begin_audited_write().await?;
        let attempt = store::start_in(
            &mut tx,
            &store::NewAttempt {
                deal_id: req.deal_id,
                agent_id: req.agent_id,
                customer_id: &info.customer_id,
                total: info.total,
                currency: &info.currency,
                idempotency_key: req.idempotency_key,
                payment_method_id: method_id,
                provider: provider.name(),
                address: &address,
                now,
            },
        )
        .await?;
        let Some(attempt) = attempt else {
            return Ok(None);
        };
        let request = crate::store::Store::action_request(
            "settlement_started",
            json!({"deal_id": req.deal_id, "attempt": attempt, "total": info.total,
                   "currency": info.currency, "payment_method_id": method_id,
                   "provider": provider.name()}),
            now,
        )
        .by("consumer_agent", Some(req.agent_id))
        .for_customer(Some(&info.customer_id));
        state
            .store
            .record_action_in(&mut tx, &request, None, "applied")
            .await?;
        let job = state
            .store
            .enqueue_job_in(
                &mut tx,
                JOB_SETTLE,
                &json!({"deal_id": req.deal_id, "attempt": attempt}),
                Some(&format!("settle:{}:{attempt}", req.deal_id)),
                state.config.payments.settle_attempts.max(1),
                now + lease,
            )
            .await?;
        tx.commit().await?;
        Ok::<_, crate::store::StoreError>(Some((attempt, job)))
    }
    .await;
    let (_attempt, job_id) = match started {
        Ok(Some(s)) => s,
        Ok(None) => {
            return (
                409,
                json!({"deal_id": req.deal_id, "status": "failed", "reason": "settlement_in_progress", "steps": []}),
            );
        }
        Err(e) if e.is_unique_violation() => {
            return (
                409,
                json!({"deal_id": req.deal_id, "status": "failed", "reason": "settlement_in_progress", "steps": []}),
            );
        }
        Err(e) => return internal(&e),
    };
    let worker_id = crate::util::new_id("settle");
    match store.claim_job_by_id(&job_id, &worker_id, lease).await {
        Ok(Some(job)) => {
            let _ = worker::run_claimed(state, &worker_id, Some(live_job), &job).await;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "settle: could not claim the settlement's job; the worker will run it")
        }
    }
    current(state, req.deal_id).await
}

/// The outcome of one attempt (found by its Idempotency-Key) as the answer to a settle
/// request: 409 `settlement_in_progress` while it is still running forward.
pub async fn attempt_answer(state: &AppState, a: &store::Attempt) -> (u16, Value) {
    let log = match store::steps(&state.store, &a.deal_id, a.attempt).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "settle: could not read an attempt's steps");
            return (
                500,
                error(
                    "internal",
                    "the outcome could not be read; see GET /agent/v1/deals/{id}",
                ),
            );
        }
    };
    let outcome = saga::Outcome {
        deal_id: &a.deal_id,
        status: &a.status,
        order_id: a.order_id.as_deref(),
        reason: a.reason.as_deref(),
        http_status: a.http_status,
    };
    saga::answer_of(outcome, &log).unwrap_or_else(|| in_progress(&a.deal_id, &log))
}

fn in_progress(deal_id: &str, log: &[store::StepRecord]) -> (u16, Value) {
    (
        409,
        json!({"deal_id": deal_id, "status": "failed", "reason": "settlement_in_progress",
               "steps": log.iter().map(|r| json!({"step": r.step, "status": r.status})).collect::<Vec<_>>(),
               "error": {"code": "settlement_in_progress",
                         "message": "the settlement is still running; it will be finished or undone — see GET /agent/v1/deals/{id}"}}),
    )
}

/// A finished attempt's answer again, for a settle request whose Idempotency-Key started it
/// (from this agent, naming the same payment method); None otherwise.
pub async fn replay(
    state: &AppState,
    deal_id: &str,
    agent_id: &str,
    idempotency_key: &str,
    payment_method_id: &str,
) -> Option<(u16, Value)> {
    let a = store::attempt_by_key(&state.store, deal_id, idempotency_key)
        .await
        .ok()
        .flatten()?;
    if a.agent_id != agent_id
        || !a.is_finished()
        || a.payment_method_id.as_deref() != Some(payment_method_id)
    {
        return None;
    }
    Some(attempt_answer(state, &a).await)
}

/// The settlement's outcome as the answer to a settle request.
pub async fn current(state: &AppState, deal_id: &str) -> (u16, Value) {
    let store = &state.store;
    let found = async {
        let Some(s) = store::get(store, deal_id).await? else {
            return Ok(None);
        };
        let log = store::steps(store, deal_id, s.attempt).await?;
        Ok::<_, crate::store::StoreError>(Some((s, log)))
    }
    .await;
    match found {
        Ok(Some((s, log))) => saga::answer(&s, &log).unwrap_or_else(|| in_progress(deal_id, &log)),
        Ok(None) => (404, error("not_found", "no settlement of this deal")),
        Err(e) => {
            tracing::error!(error = %e, "settle: could not read the outcome");
            (
                500,
                error(
                    "internal",
                    "the outcome could not be read; see GET /agent/v1/deals/{id}",
                ),
            )
        }
    }
}

fn payload(job: &Job) -> Result<(String, i64), JobError> {
    let deal = job.payload["deal_id"].as_str().map(str::to_string);
    let attempt = job.payload["attempt"].as_i64();
    match (deal, attempt) {
        (Some(d), Some(a)) => Ok((d, a)),
        _ => Err(JobError::Dead(format!(
            "bad settle job payload {}",
            job.payload
        ))),
    }
}

/// Runs a settlement job: the request's own run ([`saga::Mode::Live`]) or a worker's
/// ([`saga::Mode::Recover`]). When the job fails its last attempt with the settlement neither
/// finished nor undone (a refund the processor keeps refusing), staff get an escalation.
async fn run_job(state: &AppState, job: &Job, mode: saga::Mode) -> Result<(), JobError> {
    let (deal, attempt) = payload(job)?;
    let result = saga::drive(state, &deal, attempt, mode).await;
    if let Err(e) = &result
        && (matches!(e, JobError::Dead(_)) || job.attempts >= job.max_attempts)
        && let Err(esc) = escalate_stuck(state, &deal, attempt, e.message()).await
    {
        tracing::error!(deal = %deal, error = %esc, "settle: could not escalate a stuck settlement");
    }
    result
}

/// The request's own run of its settlement job.
fn live_job<'a>(state: &'a AppState, job: &'a Job) -> JobFuture<'a> {
    Box::pin(run_job(state, job, saga::Mode::Live))
}

/// The worker's run of a settlement job: a settlement whose request never finished it (the
/// process died, or its compensation is being retried).
pub fn job<'a>(state: &'a AppState, job: &'a Job) -> JobFuture<'a> {
    Box::pin(run_job(state, job, saga::Mode::Recover))
}

/// Hands a settlement its job gave up on to staff: an escalation in the inbox (on the
/// consumer agent's conversation about this deal) saying what is left undone, and an audit
/// entry. Once per attempt.
pub async fn escalate_stuck(
    state: &AppState,
    deal_id: &str,
    attempt: i64,
    error: &str,
) -> Result<(), crate::store::StoreError> {
    let store = &state.store;
    let Some(s) = store::get(store, deal_id).await? else {
        return Ok(());
    };
    if s.attempt != attempt || s.is_finished() {
        return Ok(());
    }
    let log = store::steps(store, deal_id, attempt).await?;
    let steps: Vec<String> = log
        .iter()
        .map(|r| format!("{} {}", r.step.replace('_', " "), r.status))
        .collect();
    let money = format!(
        "{}.{:02} {}",
        s.total / 100,
        (s.total % 100).abs(),
        s.currency
    );
    let text = format!(
        "The settlement of deal {deal_id} ({money}, payment method {}, {}) could not be {} \
         automatically: {error}. Steps so far: {}. Check the payment at the processor{} and \
         finish or undo it by hand; the customer's order and stock are as the steps say.",
        s.payment_method_id.as_deref().unwrap_or("unknown"),
        s.provider.as_deref().unwrap_or("no provider"),
        if s.status == "compensating" {
            "undone"
        } else {
            "finished"
        },
        steps.join(", "),
        s.payment_ref
            .as_deref()
            .map(|r| format!(" (reference {r})"))
            .unwrap_or_default(),
    );
    let customer = store.get_customer(&s.customer_id).await?;
    let inbound = crate::store::InboundMessage {
        channel: "agent".into(),
        thread_key: format!("settlement:{deal_id}"),
        external_id: Some(format!("settlement-stuck:{deal_id}:{attempt}")),
        sender_id: s.agent_id.clone(),
        sender_name: None,
        sender_email: customer
            .as_ref()
            .and_then(|c| c.primary_email().map(str::to_string)),
        sender_verified: true,
        author_kind: crate::store::AuthorKind::ConsumerAgent,
        subject: Some(format!("Settlement needs a person: deal {deal_id}")),
        text: text.clone(),
        html: None,
        attachments: json!([]),
        meta: json!({"deal_id": deal_id, "attempt": attempt, "settlement_status": s.status}),
    };
    let outcome = store.ingest(&inbound).await?;
    if outcome.duplicate {
        return Ok(());
    }
    store
        .escalate(
            &outcome.conversation_id,
            "settlement_stuck",
            &text,
            "We are sorting out the payment for this order by hand and will confirm shortly.",
        )
        .await?;
    let request = crate::store::Store::action_request(
        "settlement_escalated",
        json!({"deal_id": deal_id, "attempt": attempt, "status": s.status, "error": error}),
        now_ms(),
    )
    .by("consumer_agent", Some(&s.agent_id))
    .for_customer(Some(&s.customer_id));
    store.record_action(&request, None, "applied").await?;
    Ok(())
}

/// The settlement of a deal for `GET /agent/v1/deals/{id}`.
pub async fn view(state: &AppState, deal_id: &str) -> Option<Value> {
    match saga::view(&state.store, deal_id).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "could not read a settlement");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_body;

    #[test]
    fn settle_bodies_are_read_with_errors_that_name_the_field() {
        let ok = parse_body(br#"{"payment_method_id": "gift_card_1"}"#).unwrap();
        assert_eq!(ok.payment_method_id, "gift_card_1");
        assert!(ok.address.is_none());
        let with = parse_body(
            br#"{"payment_method_id": "pm_1", "address": {"address1": "1 A St", "city": "X", "zip": "1", "country": "US"}}"#,
        )
        .unwrap();
        assert_eq!(with.address.unwrap().state, "");
        for (body, needle) in [
            (&b""[..], "JSON object"),
            (b"[]", "settle request"),
            (b"{}", "payment_method_id"),
            (br#"{"payment_method_id": " "}"#, "payment_method_id is empty"),
            (br#"{"payment_method_id": "g", "amount": 1}"#, "amount"),
            (br#"{"payment_method_id": "g", "address": {"city": "X"}}"#, "address"),
            (
                br#"{"payment_method_id": "g", "address": {"address1": "a", "city": "X", "zip": "", "country": "US"}}"#,
                "address.zip",
            ),
        ] {
            let e = parse_body(body).unwrap_err();
            assert!(e.contains(needle), "{}: {e}", String::from_utf8_lossy(body));
        }
        // Every field is bounded, counted in characters.
        let long = "é".repeat(201);
        let body = format!(
            r#"{{"payment_method_id": "g", "address": {{"address1": "a", "address2": "{long}", "city": "X", "zip": "1", "country": "US"}}}}"#
        );
        let e = parse_body(body.as_bytes()).unwrap_err();
        assert!(e.contains("address.address2 is longer than 200"), "{e}");
        let ok = "é".repeat(200);
        let body = format!(
            r#"{{"payment_method_id": "g", "address": {{"address1": "{ok}", "city": "X", "zip": "1", "country": "US"}}}}"#
        );
        assert!(parse_body(body.as_bytes()).is_ok());
        let body = format!(r#"{{"payment_method_id": "{}"}}"#, "g".repeat(101));
        let e = parse_body(body.as_bytes()).unwrap_err();
        assert!(e.contains("payment_method_id is longer than 100"), "{e}");
    }
}
