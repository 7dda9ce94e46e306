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

/// Attempts of the settle job: enough for a payment processor that is down for a while
/// (the job's backoff doubles from a second to an hour).
pub const JOB_ATTEMPTS: i64 = 25;

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
    // What an earlier attempt says.
    let existing = match store::get(store, req.deal_id).await {
        Ok(s) => s,
        Err(e) => return internal(&e),
    };
    if let Some(s) = &existing {
        if s.idempotency_key.as_deref() == Some(req.idempotency_key) {
            // The same request again (its first answer was lost or not stored).
            return current(state, req.deal_id).await;
        }
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
        let mut tx = store.begin_write().await?;
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
                JOB_ATTEMPTS,
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
        Ok(Some((s, log))) => match saga::answer(&s, &log) {
            Some(a) => a,
            None => (
                409,
                json!({"deal_id": deal_id, "status": "failed", "reason": "settlement_in_progress",
                       "steps": log.iter().map(|r| json!({"step": r.step, "status": r.status})).collect::<Vec<_>>(),
                       "error": {"code": "settlement_in_progress",
                                 "message": "the settlement is still running; it will be finished or undone — see GET /agent/v1/deals/{id}"}}),
            ),
        },
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

/// The request's own run of its settlement job.
fn live_job<'a>(state: &'a AppState, job: &'a Job) -> JobFuture<'a> {
    Box::pin(async move {
        let (deal, attempt) = payload(job)?;
        saga::drive(state, &deal, attempt, saga::Mode::Live).await
    })
}

/// The worker's run of a settlement job: a settlement whose request never finished it (the
/// process died, or its compensation is being retried).
pub fn job<'a>(state: &'a AppState, job: &'a Job) -> JobFuture<'a> {
    Box::pin(async move {
        let (deal, attempt) = payload(job)?;
        saga::drive(state, &deal, attempt, saga::Mode::Recover).await
    })
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
