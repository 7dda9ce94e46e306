//! `concierge bench settle`: settling negotiated deals (issue #15) against a server in this
//! process on a fresh SQLite data dir:
//!
//! 1. settlement latency (signed `POST /agent/v1/deals/{id}/settle` → 201, client wall clock)
//!    paying with a gift card from the store, p50/p99;
//! 2. the same paying with a card through a Stripe stand-in: an axum server in this process
//!    speaking the PaymentIntents wire format (form bodies, Bearer key, Idempotency-Key replay;
//!    create, confirm, retrieve, cancel, refund), answering at once — so the figure is
//!    Concierge's own cost of the two HTTP calls, not a real processor's latency;
//! 3. negotiations + settlements per second end to end: N agents, each on its own socket,
//!    negotiating a deal (an offer at list price, which the brand accepts) and settling it,
//!    back to back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::SigningKey;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::app::Application;
use crate::bench::percentile;
use crate::commerce::{Address, Customer, PaymentMethod, Product, Variant};
use crate::gateway::{identity, tokens};

const CUSTOMER: &str = "bench_payer";
const SHIRT: &str = "bench-settle-shirt";
const GIFT: &str = "gift_card_bench";
const CARD: &str = "pm_card_bench";
const STRIPE_KEY: &str = "sk_test_bench_0123456789";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

// ---- the Stripe stand-in ----

#[derive(Default)]
struct Stand {
    intents: HashMap<String, Value>,
    answers: HashMap<String, Value>,
    next: u64,
}

type StandState = Arc<Mutex<Stand>>;

fn bad(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"type": "invalid_request_error", "message": message}})),
    )
        .into_response()
}

/// Checks the key; a POST with an Idempotency-Key seen before gets its first answer again.
fn replay(
    s: &StandState,
    headers: &HeaderMap,
    path: &str,
) -> Result<Option<String>, Box<Response>> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {STRIPE_KEY}") {
        return Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}})),
            )
                .into_response(),
        ));
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("{path}|{k}"));
    if let Some(k) = &key
        && let Some(a) = s.lock().ok().and_then(|m| m.answers.get(k).cloned())
    {
        return Err(Box::new(axum::Json(a).into_response()));
    }
    Ok(key)
}

fn keep(s: &StandState, key: Option<String>, answer: &Value) {
    if let (Some(k), Ok(mut m)) = (key, s.lock()) {
        m.answers.insert(k, answer.clone());
    }
}

async fn create(
    State(s): State<StandState>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let key = match replay(&s, &headers, "create") {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let get = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let (Some(amount), Some(currency), Some(pm)) =
        (get("amount"), get("currency"), get("payment_method"))
    else {
        return bad("amount, currency and payment_method are required");
    };
    let intent = {
        let Ok(mut m) = s.lock() else {
            return bad("busy");
        };
        m.next += 1;
        let id = format!("pi_bench{}", m.next);
        let intent = json!({"id": id, "object": "payment_intent", "status": "requires_confirmation",
                            "amount": amount.parse::<i64>().unwrap_or(0), "currency": currency,
                            "payment_method": pm});
        m.intents.insert(id, intent.clone());
        intent
    };
    keep(&s, key, &intent);
    axum::Json(intent).into_response()
}

fn transition(s: &StandState, id: &str, to: &str) -> Option<Value> {
    let mut m = s.lock().ok()?;
    let i = m.intents.get_mut(id)?;
    i["status"] = json!(to);
    Some(i.clone())
}

async fn confirm(
    State(s): State<StandState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let key = match replay(&s, &headers, &format!("confirm {id}")) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match transition(&s, &id, "succeeded") {
        Some(i) => {
            keep(&s, key, &i);
            axum::Json(i).into_response()
        }
        None => bad("No such payment_intent"),
    }
}

async fn cancel(
    State(s): State<StandState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let key = match replay(&s, &headers, &format!("cancel {id}")) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match transition(&s, &id, "canceled") {
        Some(i) => {
            keep(&s, key, &i);
            axum::Json(i).into_response()
        }
        None => bad("No such payment_intent"),
    }
}

async fn retrieve(
    State(s): State<StandState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = replay(&s, &headers, "get") {
        return *r;
    }
    match s.lock().ok().and_then(|m| m.intents.get(&id).cloned()) {
        Some(i) => axum::Json(i).into_response(),
        None => bad("No such payment_intent"),
    }
}

async fn refund(
    State(s): State<StandState>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let key = match replay(&s, &headers, "refund") {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let pi = form
        .iter()
        .find(|(k, _)| k == "payment_intent")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let r = json!({"id": format!("re_{pi}"), "object": "refund", "payment_intent": pi, "status": "succeeded"});
    keep(&s, key, &r);
    axum::Json(r).into_response()
}

/// Starts the stand-in; its base URL.
async fn stripe_stand_in() -> anyhow::Result<String> {
    use axum::routing::{get, post};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/v1/payment_intents", post(create))
        .route("/v1/payment_intents/{id}", get(retrieve))
        .route("/v1/payment_intents/{id}/confirm", post(confirm))
        .route("/v1/payment_intents/{id}/cancel", post(cancel))
        .route("/v1/refunds", post(refund))
        .with_state(StandState::default());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

// ---- the buyer ----

struct Buyer {
    addr: SocketAddr,
    key: SigningKey,
    key_id: String,
    token: String,
    http: reqwest::Client,
}

impl Buyer {
    fn signed(&self, method: &str, url: &str, body: &[u8]) -> identity::SignatureHeaders {
        identity::sign_request(
            &self.key,
            &self.key_id,
            method,
            url,
            body,
            &crate::util::random_token(12),
            crate::util::now_ms() / 1000,
        )
    }

    async fn connect(&self) -> anyhow::Result<Ws> {
        let http = format!(
            "http://{}{}",
            self.addr,
            crate::gateway::negotiation::WS_PATH
        );
        let mut req = http.replacen("http://", "ws://", 1).into_client_request()?;
        for (name, value) in self.signed("GET", &http, b"").pairs() {
            req.headers_mut().insert(name, value.parse()?);
        }
        req.headers_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        Ok(tokio_tungstenite::connect_async(req).await?.0)
    }

    /// A deal: open, an offer at list price, which the brand accepts. Its id.
    async fn deal(&self, ws: &mut Ws, request_id: &str) -> anyhow::Result<String> {
        let opened = call(
            ws,
            &json!({"type": "open", "request_id": request_id,
                    "items": [{"variant_id": SHIRT, "quantity": 1}]}),
        )
        .await?;
        anyhow::ensure!(opened["type"] == "opened", "open: {opened}");
        let id = opened["negotiation_id"].clone();
        let terms = json!({"lines": [{"variant_id": SHIRT, "quantity": 1, "unit_price": 5000}],
                           "shipping": "standard", "currency": "USD"});
        let mut offer = json!({"type": "offer", "negotiation_id": id, "round": 1, "terms": terms});
        offer["sig"] = json!(crate::negotiate::frames::sign(&self.key, &offer));
        let deal = call(ws, &offer).await?;
        anyhow::ensure!(deal["type"] == "deal", "deal: {deal}");
        Ok(deal["deal"]["deal_id"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Settles a deal; the time to the 201.
    async fn settle(&self, deal_id: &str, method: &str) -> anyhow::Result<Duration> {
        let url = format!("http://{}/agent/v1/deals/{deal_id}/settle", self.addr);
        let body = serde_json::to_vec(&json!({"payment_method_id": method}))?;
        let started = Instant::now();
        let mut req = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("idempotency-key", format!("bench-{deal_id}"))
            .bearer_auth(&self.token)
            .body(body.clone());
        for (name, value) in self.signed("POST", &url, &body).pairs() {
            req = req.header(name, value);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await?;
        anyhow::ensure!(status == 201, "settle: {status} {answer}");
        Ok(started.elapsed())
    }
}

async fn call(ws: &mut Ws, frame: &Value) -> anyhow::Result<Value> {
    ws.send(Message::Text(frame.to_string().into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                // `settled` frames of earlier deals arrive on the same socket: skip them.
                if v["type"] == "settled" {
                    continue;
                }
                return Ok(v);
            }
            Some(Ok(_)) => continue,
            other => anyhow::bail!("socket closed: {other:?}"),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(settlements: usize, agents: usize) -> anyhow::Result<()> {
    let stripe = stripe_stand_in().await?;
    let dir = tempfile::tempdir()?;
    let mut config = crate::bench::bench_config(dir.path())?;
    config.payments.stripe.base_url = stripe.clone();
    config.payments.stripe.secret_key = Some(crate::util::Secret::new(STRIPE_KEY));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = Application::build_with_listener(config, listener).await?;
    let state = app.state().clone();
    let addr = app.local_addr();
    let store = &state.store;
    store
        .put_product(&Product {
            id: "bench-settle-p-shirt".into(),
            source: "bench".into(),
            name: "T-Shirt".into(),
            product_type: Some("T-Shirt".into()),
            vendor: None,
            description: None,
            tags: vec![],
            option_names: vec![],
            variants: vec![Variant {
                id: SHIRT.into(),
                product_id: "bench-settle-p-shirt".into(),
                title: None,
                sku: None,
                options: Default::default(),
                price: 5000,
                currency: "USD".into(),
                available: true,
                stock: Some(10_000_000),
            }],
            created_at: None,
            updated_at: None,
        })
        .await?;
    store
        .put_customer(&Customer {
            id: CUSTOMER.into(),
            source: "bench".into(),
            first_name: "Bench".into(),
            last_name: "Payer".into(),
            emails: vec!["payer@bench.example".into()],
            phones: vec![],
            addresses: vec![Address {
                name: "Bench Payer".into(),
                address1: "1 Bench St".into(),
                city: "Lisbon".into(),
                country: "PT".into(),
                zip: "1100".into(),
                ..Default::default()
            }],
            payment_methods: vec![
                PaymentMethod {
                    id: GIFT.into(),
                    kind: "gift_card".into(),
                    brand: None,
                    last_four: None,
                    balance: Some(i64::MAX / 4),
                    currency: "USD".into(),
                },
                PaymentMethod {
                    id: CARD.into(),
                    kind: "credit_card".into(),
                    brand: Some("visa".into()),
                    last_four: Some("4242".into()),
                    balance: None,
                    currency: "USD".into(),
                },
            ],
            note: None,
            created_at: None,
            updated_at: None,
        })
        .await?;
    let service = crate::gateway::service_key(&state)?.clone();
    let mut buyers = Vec::new();
    for i in 0..agents.max(1) {
        let now = crate::util::now_ms();
        let (key, key_id, agent_id) =
            crate::bench::register_agent(store, &format!("bench-payer-{i}")).await?;
        let spec = tokens::TokenSpec {
            agent_id,
            customer_id: CUSTOMER.into(),
            ops: vec!["negotiate".into()],
            spend_limit: None,
            categories: vec![],
            expires_at: now + 24 * 3_600_000,
            escalate_over_limit: false,
        };
        let (token, _) = tokens::issue(store, &service, &spec, "bench", now).await?;
        buyers.push(Arc::new(Buyer {
            addr,
            key,
            key_id,
            token,
            http: crate::http_client::client(),
        }));
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    println!(
        "bench settle: SQLite in {}, {settlements} settlements per payment method; the card \
         processor is an in-process Stripe stand-in at {stripe} (answers at once)",
        dir.path().display()
    );

    // 1 + 2: one agent, one settlement at a time.
    let b = buyers[0].clone();
    let mut ws = b.connect().await?;
    for (label, method) in [("gift card", GIFT), ("card via the Stripe stand-in", CARD)] {
        for i in 0..10 {
            let d = b.deal(&mut ws, &format!("warm-{method}-{i}")).await?;
            b.settle(&d, method).await?;
        }
        let mut times = Vec::with_capacity(settlements);
        for i in 0..settlements {
            let d = b.deal(&mut ws, &format!("one-{method}-{i}")).await?;
            times.push(b.settle(&d, method).await?);
        }
        println!(
            "  settlement latency, {label} (signed POST → 201: reserve, order, payment, confirm, notify; \
             each step logged and audited): p50 {:.2} ms, p99 {:.2} ms",
            ms(percentile(&mut times, 50.0)),
            ms(percentile(&mut times, 99.0))
        );
    }
    drop(ws);

    // 3: end to end, N agents in parallel.
    let per_agent = (settlements * 2 / buyers.len()).max(5);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, b) in buyers.iter().enumerate() {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = b.connect().await?;
            for i in 0..per_agent {
                let d = b.deal(&mut ws, &format!("par-{n}-{i}")).await?;
                b.settle(&d, GIFT).await?;
            }
            anyhow::Ok(per_agent)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  end to end, {} agents × {per_agent} (negotiate a deal over the socket, then settle it with the gift card): \
         {:.0} negotiations + settlements/s",
        buyers.len(),
        done as f64 / secs
    );
    let _ = tx.send(());
    server.await??;
    Ok(())
}
