//! A fake Stripe for the settlement tests: an axum server on port 0 speaking the PaymentIntents
//! wire format — form-encoded POSTs, `Authorization: Bearer sk_…`, `Idempotency-Key` replay
//! (the same key returns the first answer again, 5xx included, as Stripe does), errors as
//! `{"error": {"type", "code", "decline_code", "message"}}` with 402 for card declines. What
//! confirming does is set per test ([`Confirm`]): succeed, decline, charge and then answer late
//! (a timeout for the client), charge and then fail with a 500, or charge and hang until
//! released. Everything it was asked and every intent, refund and cancellation are kept for
//! the test to inspect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Notify;

pub const SECRET_KEY: &str = "sk_test_concierge_fake_0123456789";

/// What `POST /v1/payment_intents/{id}/confirm` does.
#[derive(Debug, Clone, PartialEq)]
pub enum Confirm {
    Succeed,
    /// 402 card_error with this decline code; nothing charged.
    Decline(&'static str),
    /// Charges, then answers 200 only after this long (past the client's timeout).
    ChargeThenSlow(Duration),
    /// Charges, then answers 500 (stored under the key like any answer).
    ChargeThenFail,
    /// Charges, then waits until [`FakeStripe::release`] before answering.
    ChargeThenHang,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub form: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Inner {
    intents: HashMap<String, Value>,
    refunds: Vec<Value>,
    cancels: Vec<String>,
    calls: Vec<Call>,
    answers: HashMap<String, (u16, Value)>,
    confirm: Option<Confirm>,
    /// Refund requests still to fail with a 500 (Stripe having a bad minute).
    refund_failures: usize,
    next: u64,
}

#[derive(Clone)]
pub struct FakeStripe {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    release: Arc<Notify>,
}

fn stripe_error(status: StatusCode, kind: &str, code: &str, message: &str) -> (u16, Value) {
    (
        status.as_u16(),
        json!({"error": {"type": kind, "code": code, "message": message}}),
    )
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeStripe {
            url,
            inner: Arc::new(Mutex::new(Inner {
                confirm: Some(Confirm::Succeed),
                ..Default::default()
            })),
            release: Arc::new(Notify::new()),
        };
        let app = Router::new()
            .route("/v1/payment_intents", post(create))
            .route("/v1/payment_intents/{id}", get(retrieve))
            .route("/v1/payment_intents/{id}/confirm", post(confirm))
            .route("/v1/payment_intents/{id}/cancel", post(cancel))
            .route("/v1/refunds", post(refund))
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    pub fn set_confirm(&self, c: Confirm) {
        self.inner.lock().unwrap().confirm = Some(c);
    }

    /// Makes the next `n` refund requests fail with a 500, before doing anything.
    pub fn fail_refunds(&self, n: usize) {
        self.inner.lock().unwrap().refund_failures = n;
    }

    /// Lets a [`Confirm::ChargeThenHang`] confirmation answer.
    pub fn release(&self) {
        self.release.notify_waiters();
    }

    pub fn intents(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .inner
            .lock()
            .unwrap()
            .intents
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|i| i["id"].as_str().unwrap_or_default().to_string());
        v
    }

    pub fn refunds(&self) -> Vec<Value> {
        self.inner.lock().unwrap().refunds.clone()
    }

    pub fn cancels(&self) -> Vec<String> {
        self.inner.lock().unwrap().cancels.clone()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Money taken and not given back, over every intent (minor units).
    pub fn net_charged(&self) -> i64 {
        let inner = self.inner.lock().unwrap();
        let charged: i64 = inner
            .intents
            .values()
            .filter(|i| i["status"] == "succeeded")
            .map(|i| i["amount"].as_i64().unwrap_or(0))
            .sum();
        let refunded: i64 = inner
            .refunds
            .iter()
            .map(|r| r["amount"].as_i64().unwrap_or(0))
            .sum();
        charged - refunded
    }

    /// Records the call; checks the key; replays a stored answer for a reused
    /// Idempotency-Key.
    fn begin(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        form: &[(String, String)],
    ) -> Result<(), (u16, Value)> {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut inner = self.inner.lock().unwrap();
        inner.calls.push(Call {
            method: method.into(),
            path: path.into(),
            form: form.to_vec(),
            idempotency_key: key.clone(),
            authorization: auth.clone(),
        });
        if auth.as_deref() != Some(&format!("Bearer {SECRET_KEY}")) {
            return Err(stripe_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "api_key_invalid",
                "Invalid API Key provided",
            ));
        }
        if method == "POST"
            && let Some(k) = &key
            && let Some(stored) = inner.answers.get(&format!("{path}|{k}"))
        {
            return Err(stored.clone());
        }
        Ok(())
    }

    fn store_answer(&self, path: &str, headers: &HeaderMap, answer: &(u16, Value)) {
        if let Some(k) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
            self.inner
                .lock()
                .unwrap()
                .answers
                .insert(format!("{path}|{k}"), answer.clone());
        }
    }
}

fn reply((status, body): (u16, Value), replayed: bool) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", "true".parse().unwrap());
    }
    r
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn create(
    State(f): State<FakeStripe>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let path = "/v1/payment_intents";
    if let Err(a) = f.begin("POST", path, &headers, &form) {
        return reply(a, true);
    }
    let amount = field(&form, "amount").and_then(|a| a.parse::<i64>().ok());
    let answer = match (
        amount,
        field(&form, "currency"),
        field(&form, "payment_method"),
    ) {
        (Some(amount), Some(currency), Some(pm)) if amount > 0 => {
            let mut inner = f.inner.lock().unwrap();
            inner.next += 1;
            let id = format!("pi_fake{:06}", inner.next);
            let metadata: serde_json::Map<String, Value> = form
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("metadata[")
                        .and_then(|r| r.strip_suffix(']'))
                        .map(|k| (k.to_string(), json!(v)))
                })
                .collect();
            let intent = json!({
                "id": id, "object": "payment_intent", "amount": amount, "currency": currency,
                "payment_method": pm, "status": "requires_confirmation", "metadata": metadata,
                "amount_received": 0,
            });
            inner.intents.insert(id, intent.clone());
            (200, intent)
        }
        _ => stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_missing",
            "amount, currency and payment_method are required",
        ),
    };
    f.store_answer(path, &headers, &answer);
    reply(answer, false)
}

async fn retrieve(
    State(f): State<FakeStripe>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/payment_intents/{id}");
    if let Err(a) = f.begin("GET", &path, &headers, &[]) {
        return reply(a, false);
    }
    let found = f.inner.lock().unwrap().intents.get(&id).cloned();
    match found {
        Some(i) => reply((200, i), false),
        None => reply(
            stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "resource_missing",
                "No such payment_intent",
            ),
            false,
        ),
    }
}

async fn confirm(
    State(f): State<FakeStripe>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let path = format!("/v1/payment_intents/{id}/confirm");
    if let Err(a) = f.begin("POST", &path, &headers, &form) {
        return reply(a, true);
    }
    let mode = f
        .inner
        .lock()
        .unwrap()
        .confirm
        .clone()
        .unwrap_or(Confirm::Succeed);
    let set = |status: &str| {
        let mut inner = f.inner.lock().unwrap();
        let i = inner.intents.get_mut(&id)?;
        i["status"] = json!(status);
        if status == "succeeded" {
            i["amount_received"] = i["amount"].clone();
        }
        Some(i.clone())
    };
    let answer = match mode {
        Confirm::Succeed => match set("succeeded") {
            Some(i) => (200, i),
            None => stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "resource_missing",
                "No such payment_intent",
            ),
        },
        Confirm::Decline(code) => {
            let i = set("requires_payment_method").unwrap_or(Value::Null);
            (
                402,
                json!({"error": {"type": "card_error", "code": "card_declined", "decline_code": code,
                                 "message": "Your card was declined.", "payment_intent": i}}),
            )
        }
        Confirm::ChargeThenSlow(d) => {
            let i = set("succeeded").unwrap_or(Value::Null);
            tokio::time::sleep(d).await;
            (200, i)
        }
        Confirm::ChargeThenFail => {
            set("succeeded");
            stripe_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "internal",
                "An unknown error occurred",
            )
        }
        Confirm::ChargeThenHang => {
            let i = set("succeeded").unwrap_or(Value::Null);
            f.release.notified().await;
            (200, i)
        }
    };
    f.store_answer(&path, &headers, &answer);
    reply(answer, false)
}

async fn cancel(
    State(f): State<FakeStripe>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let path = format!("/v1/payment_intents/{id}/cancel");
    if let Err(a) = f.begin("POST", &path, &headers, &form) {
        return reply(a, true);
    }
    let answer = {
        let mut inner = f.inner.lock().unwrap();
        match inner.intents.get_mut(&id) {
            None => stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "resource_missing",
                "No such payment_intent",
            ),
            Some(i) if i["status"] == "succeeded" => stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "payment_intent_unexpected_state",
                "You cannot cancel this PaymentIntent because it has a status of succeeded.",
            ),
            Some(i) => {
                i["status"] = json!("canceled");
                let i = i.clone();
                inner.cancels.push(id.clone());
                (200, i)
            }
        }
    };
    f.store_answer(&path, &headers, &answer);
    reply(answer, false)
}

async fn refund(
    State(f): State<FakeStripe>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let path = "/v1/refunds";
    if let Err(a) = f.begin("POST", path, &headers, &form) {
        return reply(a, true);
    }
    {
        let mut inner = f.inner.lock().unwrap();
        if inner.refund_failures > 0 {
            inner.refund_failures -= 1;
            // Failed before running: not stored under the key, so a retry runs.
            return reply(
                stripe_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "api_error",
                    "unavailable",
                    "Try again later",
                ),
                false,
            );
        }
    }
    let answer = {
        let mut inner = f.inner.lock().unwrap();
        let pi = field(&form, "payment_intent")
            .unwrap_or_default()
            .to_string();
        match inner.intents.get(&pi).cloned() {
            Some(i) if i["status"] == "succeeded" => {
                let already: i64 = inner
                    .refunds
                    .iter()
                    .filter(|r| r["payment_intent"] == pi.as_str())
                    .map(|r| r["amount"].as_i64().unwrap_or(0))
                    .sum();
                let amount = i["amount"].as_i64().unwrap_or(0) - already;
                if amount <= 0 {
                    stripe_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "charge_already_refunded",
                        "Charge has already been refunded.",
                    )
                } else {
                    inner.next += 1;
                    let r = json!({"id": format!("re_fake{:06}", inner.next), "object": "refund",
                                   "amount": amount, "payment_intent": pi, "status": "succeeded"});
                    inner.refunds.push(r.clone());
                    (200, r)
                }
            }
            Some(_) => stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "charge_not_succeeded",
                "This PaymentIntent has no successful charge to refund.",
            ),
            None => stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "resource_missing",
                "No such payment_intent",
            ),
        }
    };
    f.store_answer(path, &headers, &answer);
    reply(answer, false)
}
