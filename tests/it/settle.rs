//! Settlement (issue #15): `POST /agent/v1/deals/{id}/settle` turns a negotiated deal into a
//! paid order, or undoes everything it did. Driven from the outside: a registered agent
//! negotiates a deal over the real WebSocket, then settles it with signed HTTP requests; cards
//! are paid through a fake Stripe speaking the real wire format (tests/it/fake_stripe.rs).
//! After every failure the store must be exactly as before the settle (the τ-bench export and
//! every variant's stock compared), the processor must show a void or refund wherever money
//! moved, and the agent must be told why — on its socket, in the answer, and on
//! `GET /agent/v1/deals/{id}`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use concierge::commerce::{Address, Customer, PaymentMethod, Product, Variant};
use concierge::gateway::{identity, tokens};
use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::fake_stripe::{Confirm, FakeStripe, SECRET_KEY};
use crate::helpers::{Db, TestApp};
pub(crate) use crate::negotiate::{Agent, register};

const SHIRT: &str = "v-shirt-m";
const KETTLE: &str = "v-kettle";
const CUSTOMER: &str = "cust_ana";
const GIFT: &str = "gift_card_ana";
const CARD: &str = "credit_card_ana";
const PAYPAL: &str = "paypal_ana";

fn product(id: &str, category: &str, variant: &str, price: i64, stock: Option<i64>) -> Product {
    Product {
        id: id.into(),
        source: "test".into(),
        name: category.into(),
        product_type: Some(category.into()),
        vendor: None,
        description: None,
        tags: vec![],
        option_names: vec![],
        variants: vec![Variant {
            id: variant.into(),
            product_id: id.into(),
            title: None,
            sku: Some(format!("sku-{variant}")),
            options: Default::default(),
            price,
            currency: "USD".into(),
            available: true,
            stock,
        }],
        created_at: None,
        updated_at: None,
    }
}

fn method(id: &str, kind: &str, balance: Option<i64>) -> PaymentMethod {
    PaymentMethod {
        id: id.into(),
        kind: kind.into(),
        brand: (kind == "credit_card").then(|| "visa".into()),
        last_four: (kind == "credit_card").then(|| "4242".into()),
        balance,
        currency: "USD".into(),
    }
}

fn home() -> Address {
    Address {
        name: "Ana Lima".into(),
        address1: "1 Harbour St".into(),
        address2: String::new(),
        city: "Lisbon".into(),
        state: "LX".into(),
        country: "PT".into(),
        zip: "1100-001".into(),
        phone: String::new(),
    }
}

/// A small shop: a T-shirt ($50, 8 in stock), a tea kettle ($120, stock untracked); Ana with a
/// $1,000 gift card, a card and PayPal. `stripe`: card payments through the fake.
async fn shop(
    db: Db,
    stripe: Option<&FakeStripe>,
    brand: Option<std::path::PathBuf>,
) -> Option<TestApp> {
    shop_with(db, stripe, brand, |_| {}).await
}

async fn shop_with(
    db: Db,
    stripe: Option<&FakeStripe>,
    brand: Option<std::path::PathBuf>,
    tweak: impl FnOnce(&mut concierge::config::Config) + Send + 'static,
) -> Option<TestApp> {
    let stripe = stripe.map(|s| s.url.clone());
    let app = TestApp::spawn_on_with(db, move |c| {
        tweak(c);
        if let Some(url) = stripe {
            c.payments.stripe.base_url = url;
            c.payments.stripe.secret_key = Some(concierge::util::Secret::new(SECRET_KEY));
            c.payments.stripe.timeout_ms = 1500;
        }
        if let Some(b) = brand {
            c.brand.dir = b;
        }
    })
    .await?;
    stock_shop(&app).await;
    Some(app)
}

async fn stock_shop(app: &TestApp) {
    let s = app.store();
    s.put_product(&product("p-shirt", "T-Shirt", SHIRT, 5000, Some(8)))
        .await
        .unwrap();
    s.put_product(&product("p-kettle", "Tea Kettle", KETTLE, 12000, None))
        .await
        .unwrap();
    s.put_customer(&Customer {
        id: CUSTOMER.into(),
        source: "test".into(),
        first_name: "Ana".into(),
        last_name: "Lima".into(),
        emails: vec!["ana@example.com".into()],
        phones: vec![],
        addresses: vec![home()],
        payment_methods: vec![
            method(GIFT, "gift_card", Some(100_000)),
            method(CARD, "credit_card", None),
            method(PAYPAL, "paypal", None),
        ],
        note: None,
        created_at: None,
        updated_at: None,
    })
    .await
    .unwrap();
}

pub(crate) async fn token(app: &TestApp, agent: &Agent, ops: &[&str]) -> String {
    let now = concierge::util::now_ms();
    let spec = tokens::TokenSpec {
        agent_id: agent.id.clone(),
        customer_id: CUSTOMER.into(),
        ops: ops.iter().map(|s| s.to_string()).collect(),
        spend_limit: Some(1_000_000),
        categories: vec![],
        expires_at: now + 3_600_000,
        escalate_over_limit: false,
    };
    let service = concierge::gateway::service_key(&app.state).unwrap();
    tokens::issue(app.store(), service, &spec, "test", now)
        .await
        .unwrap()
        .0
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn signed_headers(agent: &Agent, method: &str, url: &str, body: &[u8]) -> Vec<(String, String)> {
    let h = identity::sign_request(
        &agent.key,
        &agent.key_id,
        method,
        url,
        body,
        &concierge::util::random_token(12),
        concierge::util::now_ms() / 1000,
    );
    h.pairs()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn connect(base: &str, agent: &Agent, tok: &str) -> Ws {
    let http = format!("{base}/agent/v1/negotiations/ws");
    let mut req = http
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    for (k, v) in signed_headers(agent, "GET", &http, b"") {
        req.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req.headers_mut()
        .insert("authorization", format!("Bearer {tok}").parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade")
        .0
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn call(ws: &mut Ws, frame: &Value) -> Value {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    recv(ws).await
}

fn sign(key: &SigningKey, mut frame: Value) -> Value {
    let sig = STANDARD.encode(key.sign(concierge::util::jcs(&frame).as_bytes()).to_bytes());
    frame["sig"] = json!(sig);
    frame
}

/// Negotiates a deal for `qty` of `variant` on `ws` (an offer at list price, which the brand
/// takes — or, if it counters, its counter-offer accepted). Returns the `deal` frame.
pub(crate) async fn make_deal(
    ws: &mut Ws,
    agent: &Agent,
    variant: &str,
    qty: i64,
    list: i64,
) -> Value {
    let opened = call(
        ws,
        &json!({"type": "open", "request_id": concierge::util::random_token(8),
                "items": [{"variant_id": variant, "quantity": qty}]}),
    )
    .await;
    assert_eq!(opened["type"], "opened", "{opened}");
    let id = opened["negotiation_id"].as_str().unwrap().to_string();
    let terms = json!({"lines": [{"variant_id": variant, "quantity": qty, "unit_price": list}],
                       "shipping": "standard", "currency": "USD"});
    let r = call(
        ws,
        &sign(
            &agent.key,
            json!({"type": "offer", "negotiation_id": id, "round": 1, "terms": terms}),
        ),
    )
    .await;
    let deal = if r["type"] == "offer" {
        let hash = concierge::util::jcs_sha256(&r["terms"]);
        call(
            ws,
            &sign(
                &agent.key,
                json!({"type": "accept", "negotiation_id": id, "round": 3, "terms_hash": hash}),
            ),
        )
        .await
    } else {
        r
    };
    assert_eq!(deal["type"], "deal", "{deal}");
    deal
}

/// POST /agent/v1/deals/{id}/settle, signed; (status, body, replayed?).
pub(crate) async fn settle(
    base: &str,
    agent: &Agent,
    tok: &str,
    deal_id: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value, bool) {
    let url = format!("{base}/agent/v1/deals/{deal_id}/settle");
    let bytes = serde_json::to_vec(body).unwrap();
    let client = concierge::http_client::client();
    let mut req = client
        .post(&url)
        .header("content-type", "application/json")
        .bearer_auth(tok)
        .body(bytes.clone());
    for (k, v) in signed_headers(agent, "POST", &url, &bytes) {
        req = req.header(k, v);
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let r = req.send().await.expect("settle request");
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (status, r.json().await.unwrap_or(Value::Null), replayed)
}

pub(crate) async fn get_deal(base: &str, agent: &Agent, deal_id: &str) -> (u16, Value) {
    let url = format!("{base}/agent/v1/deals/{deal_id}");
    let mut req = concierge::http_client::client().get(&url);
    for (k, v) in signed_headers(agent, "GET", &url, b"") {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Everything a settlement may touch: the τ-bench export (users with gift-card balances and
/// order lists, orders, products) and every variant's stock.
pub(crate) async fn snapshot(app: &TestApp) -> Value {
    let s = app.store();
    let customers = s.all_customers().await.unwrap();
    let products = s.all_products().await.unwrap();
    let orders = s.all_orders().await.unwrap();
    let (users, orders_json, products_json) =
        concierge::import::tau::export(&customers, &products, &orders);
    let stock: Vec<Value> = products
        .iter()
        .flat_map(|p| p.variants.iter())
        .map(|v| json!([v.id, v.stock, v.available]))
        .collect();
    json!({"users": users, "orders": orders_json, "products": products_json, "stock": stock})
}

fn step_status(body: &Value, step: &str) -> Option<String> {
    body["steps"]
        .as_array()?
        .iter()
        .find(|s| s["step"] == step)
        .and_then(|s| s["status"].as_str().map(str::to_string))
}

async fn gift_balance(app: &TestApp) -> i64 {
    let c = app.store().get_customer(CUSTOMER).await.unwrap().unwrap();
    c.payment_methods
        .iter()
        .find(|m| m.id == GIFT)
        .and_then(|m| m.balance)
        .unwrap()
}

/// Reads frames until a `settled` one (other frames are skipped).
async fn settled_frame(ws: &mut Ws) -> Value {
    loop {
        let f = recv(ws).await;
        if f["type"] == "settled" {
            return f;
        }
    }
}

fn audit_tools(entries: &[concierge::store::AuditEntry]) -> Vec<String> {
    entries.iter().map(|e| e.tool.clone()).collect()
}

// ---- the happy paths ----

async fn settle_with_a_gift_card_makes_a_paid_order_at_the_deals_prices(db: Db) {
    // A data dir of the test's own, so that `concierge export` can read it after the server
    // stops.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.clone();
    let Some(app) = TestApp::spawn_on_with(db, move |c| c.data_dir = d).await else {
        return;
    };
    stock_shop(&app).await;
    let db_url = app.config.database_url().map(|u| u.expose().to_string());
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, SHIRT, 2, 5000).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    let total = deal["deal"]["total"].as_i64().unwrap();
    let unit = deal["deal"]["terms"]["lines"][0]["unit_price"]
        .as_i64()
        .unwrap();
    let before_balance = gift_balance(&app).await;
    // The agreed deal counts as the agent's exposure until it is settled.
    let exposure = app.state.risk.exposure(concierge::util::now_ms());
    assert_eq!((exposure.brand, exposure.deals), (total, 1));

    let (status, body, _) = settle(
        &app.addr,
        &agent,
        &tok,
        &deal_id,
        Some("k-1"),
        &json!({"payment_method_id": GIFT}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "settled");
    let exposure = app.state.risk.exposure(concierge::util::now_ms());
    assert_eq!(
        (exposure.brand, exposure.deals),
        (0, 0),
        "settled deals stop counting"
    );
    assert_eq!(body["deal_id"], deal_id.as_str());
    let order_id = body["order_id"].as_str().unwrap().to_string();
    for step in [
        "reserve_stock",
        "create_order",
        "take_payment",
        "confirm",
        "notify_agent",
    ] {
        assert_eq!(
            step_status(&body, step).as_deref(),
            Some("done"),
            "{step}: {body}"
        );
    }
    // The agent hears it on its socket.
    let f = settled_frame(&mut ws).await;
    assert_eq!(f["deal_id"], deal_id.as_str());
    assert_eq!(f["order_id"], order_id.as_str());
    assert_eq!(f["status"], "settled");
    assert_eq!(f["negotiation_id"], deal["negotiation_id"]);

    // A paid order at the deal's prices, shipped to the default address.
    let order = app
        .store()
        .get_order(&order_id)
        .await
        .unwrap()
        .expect("order");
    assert_eq!(order.customer_id.as_deref(), Some(CUSTOMER));
    assert_eq!(
        order.source,
        format!("deal:{deal_id}"),
        "the order names its deal"
    );
    assert_eq!(order.status, concierge::commerce::OrderStatus::Pending);
    assert_eq!(order.total, total);
    assert_eq!(order.items.len(), 1);
    assert_eq!(
        (
            order.items[0].variant_id.as_str(),
            order.items[0].quantity,
            order.items[0].price
        ),
        (SHIRT, 2, unit)
    );
    assert_eq!(order.payments.len(), 1);
    assert_eq!(
        (
            order.payments[0].amount,
            order.payments[0].payment_method_id.as_str()
        ),
        (total, GIFT)
    );
    assert_eq!(order.shipping_address.as_ref().unwrap().city, "Lisbon");
    assert_eq!(gift_balance(&app).await, before_balance - total);
    let shirt = app.store().get_product("p-shirt").await.unwrap().unwrap();
    assert_eq!(
        shirt.variants[0].stock,
        Some(6),
        "the reservation was consumed"
    );

    // The τ-bench export shows it.
    let snap = snapshot(&app).await;
    assert_eq!(snap["orders"][&order_id]["user_id"], CUSTOMER);
    assert_eq!(
        snap["orders"][&order_id]["items"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        snap["orders"][&order_id]["payment_history"][0]["payment_method_id"],
        GIFT
    );
    assert!(
        snap["users"][CUSTOMER]["orders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == order_id.as_str()),
        "{}",
        snap["users"][CUSTOMER]
    );

    // The same request again: the same outcome, replayed; another key: already settled.
    let (s2, b2, replayed) = settle(
        &app.addr,
        &agent,
        &tok,
        &deal_id,
        Some("k-1"),
        &json!({"payment_method_id": GIFT}),
    )
    .await;
    assert_eq!((s2, &b2), (201, &body));
    assert!(replayed);
    let (s3, b3, _) = settle(
        &app.addr,
        &agent,
        &tok,
        &deal_id,
        Some("k-2"),
        &json!({"payment_method_id": GIFT}),
    )
    .await;
    assert_eq!(s3, 409, "{b3}");
    assert_eq!(b3["reason"], "already_settled");
    assert_eq!(b3["order_id"], order_id.as_str());
    assert_eq!(
        gift_balance(&app).await,
        before_balance - total,
        "charged once"
    );

    // The deal shows its settlement; the audit chain has every step and verifies.
    let (st, d) = get_deal(&app.addr, &agent, &deal_id).await;
    assert_eq!(st, 200, "{d}");
    assert!(d["brand_sig"].is_string() && d["agent_sig"].is_string());
    assert_eq!(d["settlement"]["status"], "settled");
    assert_eq!(d["settlement"]["order_id"], order_id.as_str());
    let entries = app.store().audit_entries(0, 10_000).await.unwrap();
    let tools = audit_tools(&entries);
    for t in [
        "settlement_started",
        "settlement_reserve_stock",
        "settlement_create_order",
        "settlement_take_payment",
        "settlement_confirm",
        "settlement_notify_agent",
    ] {
        assert!(tools.iter().any(|x| x == t), "{t} in {tools:?}");
    }
    let paid = entries
        .iter()
        .find(|e| e.tool == "settlement_take_payment")
        .unwrap();
    assert_eq!(paid.effects[0]["balance_after"], before_balance - total);
    let v = app.store().verify_audit_chain().await.unwrap();
    assert!(v.is_intact(), "{v:?}");

    // `concierge export tau-retail` (the binary) shows the paid order and the spent balance;
    // `concierge audit verify` agrees the chain is intact.
    app.stop().await;
    let [users, orders, _products] = export(&data, db_url.as_deref(), &tmp.path().join("export"))
        .try_into()
        .unwrap();
    let o = &orders[&order_id];
    assert_eq!(o["user_id"], CUSTOMER, "{o}");
    assert_eq!(o["status"], "pending");
    let items = o["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i["item_id"] == SHIRT));
    let price = |v: &Value| (v.as_f64().unwrap() * 100.0).round() as i64;
    assert!(items.iter().all(|i| price(&i["price"]) == unit), "{o}");
    assert_eq!(o["payment_history"][0]["transaction_type"], "payment");
    assert_eq!(price(&o["payment_history"][0]["amount"]), total);
    assert_eq!(o["payment_history"][0]["payment_method_id"], GIFT);
    assert!(
        users[CUSTOMER]["orders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == order_id.as_str())
    );
    assert_eq!(
        price(&users[CUSTOMER]["payment_methods"][GIFT]["balance"]),
        before_balance - total
    );
    let mut verify = crate::cli::concierge(&data);
    if let Some(url) = &db_url {
        verify.env("DATABASE_URL", url);
    }
    let out = verify.args(["audit", "verify"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
on_both!(settle_with_a_gift_card_makes_a_paid_order_at_the_deals_prices);

async fn settle_with_a_card_pays_through_stripe(db: Db) {
    let stripe = FakeStripe::start().await;
    let Some(app) = shop(db, Some(&stripe), None).await else {
        return;
    };
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, KETTLE, 1, 12000).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    let total = deal["deal"]["total"].as_i64().unwrap();
    let address = json!({"address1": "9 Rua Augusta", "address2": "3E", "city": "Porto", "state": "PO", "zip": "4000-001", "country": "PT"});
    let (status, body, _) = settle(
        &app.addr,
        &agent,
        &tok,
        &deal_id,
        Some("card-1"),
        &json!({"payment_method_id": CARD, "address": address}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let order_id = body["order_id"].as_str().unwrap();
    let order = app.store().get_order(order_id).await.unwrap().unwrap();
    assert_eq!(order.shipping_address.as_ref().unwrap().city, "Porto");
    assert_eq!(order.payments[0].payment_method_id, CARD);
    // Stripe saw one intent for the deal's total, confirmed; form bodies, the key, an
    // Idempotency-Key per call.
    let intents = stripe.intents();
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["amount"], total);
    assert_eq!(intents[0]["currency"], "usd");
    assert_eq!(intents[0]["payment_method"], CARD);
    assert_eq!(intents[0]["status"], "succeeded");
    assert_eq!(intents[0]["metadata"]["deal_id"], deal_id.as_str());
    let calls = stripe.calls();
    let posts: Vec<_> = calls.iter().filter(|c| c.method == "POST").collect();
    assert_eq!(posts.len(), 2, "create and confirm: {calls:?}");
    assert!(posts.iter().all(|c| {
        c.idempotency_key
            .as_deref()
            .is_some_and(|k| k.contains(&deal_id))
    }));
    assert_ne!(posts[0].idempotency_key, posts[1].idempotency_key);
    assert_eq!(posts[0].path, "/v1/payment_intents");
    assert!(
        posts[0]
            .form
            .contains(&("amount".into(), total.to_string())),
        "{:?}",
        posts[0].form
    );
    assert!(
        posts[0]
            .form
            .contains(&("payment_method".into(), CARD.into()))
    );
    assert!(posts[1].path.ends_with("/confirm"));
    assert!(
        calls
            .iter()
            .all(|c| c.authorization.as_deref() == Some(&format!("Bearer {SECRET_KEY}")))
    );
    assert_eq!(stripe.net_charged(), total);
    assert!(app.store().verify_audit_chain().await.unwrap().is_intact());
}
on_both!(settle_with_a_card_pays_through_stripe);

// ---- failures: everything undone ----

/// One failure story: a deal, the snapshot, the settle (with `key`), the store as before,
/// the agent told on its socket and on the deal; the same key again gives the same outcome.
struct Failed {
    app: TestApp,
    agent: Agent,
    tok: String,
    deal_id: String,
    total: i64,
    status: u16,
    body: Value,
}

async fn fail_story(
    app: TestApp,
    variant: &str,
    qty: i64,
    list: i64,
    pm: &str,
    before_settle: impl AsyncFnOnce(&TestApp),
) -> Failed {
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, variant, qty, list).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    let total = deal["deal"]["total"].as_i64().unwrap();
    before_settle(&app).await;
    let before = snapshot(&app).await;
    let (status, body, _) = settle(
        &app.addr,
        &agent,
        &tok,
        &deal_id,
        Some("try-1"),
        &json!({"payment_method_id": pm}),
    )
    .await;
    assert_eq!(body["status"], "failed", "{body}");
    assert!(body["reason"].is_string(), "{body}");
    assert!(body.get("order_id").is_none_or(Value::is_null), "{body}");
    // Exactly as before.
    let after = snapshot(&app).await;
    assert!(
        before == after,
        "the store changed:\nbefore {before}\nafter {after}"
    );
    // Told why: on the socket, and on the deal.
    let f = settled_frame(&mut ws).await;
    assert_eq!(
        (f["status"].as_str(), f["reason"].as_str()),
        (Some("failed"), body["reason"].as_str()),
        "{f}"
    );
    let (_, d) = get_deal(&app.addr, &agent, &deal_id).await;
    assert_eq!(d["settlement"]["status"], "failed", "{d}");
    assert_eq!(d["settlement"]["reason"], body["reason"]);
    // The same key again: the same outcome.
    let (s2, b2, _) = settle(
        &app.addr,
        &agent,
        &tok,
        &deal_id,
        Some("try-1"),
        &json!({"payment_method_id": pm}),
    )
    .await;
    assert_eq!((s2, &b2), (status, &body));
    assert!(snapshot(&app).await == before);
    assert!(app.store().verify_audit_chain().await.unwrap().is_intact());
    Failed {
        app,
        agent,
        tok,
        deal_id,
        total,
        status,
        body,
    }
}

async fn a_declined_card_fails_402_voids_the_intent_and_changes_nothing(db: Db) {
    let stripe = FakeStripe::start().await;
    let Some(app) = shop(db, Some(&stripe), None).await else {
        return;
    };
    stripe.set_confirm(Confirm::Decline("insufficient_funds"));
    let f = fail_story(app, SHIRT, 2, 5000, CARD, async |_: &TestApp| {}).await;
    assert_eq!(f.status, 402);
    assert_eq!(f.body["reason"], "payment_declined:insufficient_funds");
    assert_eq!(
        step_status(&f.body, "take_payment").as_deref(),
        Some("failed")
    );
    assert_eq!(
        step_status(&f.body, "undo_payment").as_deref(),
        Some("voided"),
        "{}",
        f.body
    );
    assert_eq!(
        step_status(&f.body, "cancel_order").as_deref(),
        Some("done")
    );
    assert_eq!(
        step_status(&f.body, "release_stock").as_deref(),
        Some("done")
    );
    assert_eq!(stripe.cancels().len(), 1, "the attempted intent is voided");
    assert_eq!(stripe.net_charged(), 0);
    // Another card (a new key) may try again: a new attempt, settled.
    stripe.set_confirm(Confirm::Succeed);
    let (s, b, _) = settle(
        &f.app.addr,
        &f.agent,
        &f.tok,
        &f.deal_id,
        Some("try-2"),
        &json!({"payment_method_id": GIFT}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        f.app
            .store()
            .get_order(b["order_id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap()
            .total,
        f.total
    );
    // Each key keeps its own attempt's outcome: the first key, retried after the second
    // attempt settled, still gets its decline (not a third attempt, not `already_settled`);
    // the second gets its settlement again.
    for (key, pm, status, body) in [("try-1", CARD, f.status, &f.body), ("try-2", GIFT, 201, &b)] {
        let (s2, b2, _) = settle(
            &f.app.addr,
            &f.agent,
            &f.tok,
            &f.deal_id,
            Some(key),
            &json!({"payment_method_id": pm}),
        )
        .await;
        assert_eq!((s2, &b2), (status, body), "{key}");
    }
    let s = concierge::settle::store::get(f.app.store(), &f.deal_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.attempt, s.status.as_str()), (2, "settled"));
    // Counterparty monitoring counts both attempts: one failed and undone, one settled.
    let figures = concierge::risk::monitor::figures(f.app.store(), concierge::util::now_ms())
        .await
        .unwrap();
    let mine = figures
        .iter()
        .find(|a| a.agent_id == f.agent.id)
        .expect("the agent's figures");
    assert_eq!(
        (
            mine.settlements,
            mine.settled,
            mine.settlement_failures,
            mine.compensations
        ),
        (2, 1, 1, 1),
        "{mine:?}"
    );
    // A write expecting the attempt in another state changes nothing (a run that lost its
    // job to another worker).
    let mut tx = f.app.store().begin_audited_write().await.unwrap();
    let written = concierge::settle::store::set_status_in(
        &mut tx,
        &f.deal_id,
        concierge::settle::store::Expect {
            attempt: 2,
            status: "running",
        },
        concierge::settle::store::NewStatus {
            status: "compensating",
            ..Default::default()
        },
        concierge::util::now_ms(),
    )
    .await
    .unwrap();
    assert!(!written);
    tx.commit().await.unwrap();
    let again = concierge::settle::store::get(f.app.store(), &f.deal_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, s);
}
on_both!(a_declined_card_fails_402_voids_the_intent_and_changes_nothing);

async fn a_gift_card_short_of_balance_fails_402(db: Db) {
    let Some(app) = shop(db, None, None).await else {
        return;
    };
    let f = fail_story(app, KETTLE, 9, 12000, GIFT, async |app: &TestApp| {
        // The kettle deal is worth more than the card holds once the card has been spent.
        let mut c = app.store().get_customer(CUSTOMER).await.unwrap().unwrap();
        c.payment_methods[0].balance = Some(1000);
        app.store().put_customer(&c).await.unwrap();
    })
    .await;
    assert_eq!(f.status, 402);
    assert_eq!(f.body["reason"], "payment_declined:insufficient_balance");
    assert_eq!(gift_balance(&f.app).await, 1000);
}
on_both!(a_gift_card_short_of_balance_fails_402);

async fn a_processor_timeout_refunds_what_was_charged(db: Db) {
    let stripe = FakeStripe::start().await;
    let Some(app) = shop(db, Some(&stripe), None).await else {
        return;
    };
    stripe.set_confirm(Confirm::ChargeThenSlow(Duration::from_secs(4)));
    let f = fail_story(app, SHIRT, 1, 5000, CARD, async |_: &TestApp| {}).await;
    assert_eq!(f.status, 402);
    assert_eq!(f.body["reason"], "payment_timeout");
    assert_eq!(
        step_status(&f.body, "undo_payment").as_deref(),
        Some("refunded"),
        "{}",
        f.body
    );
    assert_eq!(stripe.refunds().len(), 1);
    assert_eq!(stripe.refunds()[0]["amount"], f.total);
    assert_eq!(stripe.net_charged(), 0);
}
on_both!(a_processor_timeout_refunds_what_was_charged);

async fn a_processor_error_after_charging_refunds_it(db: Db) {
    let stripe = FakeStripe::start().await;
    let Some(app) = shop(db, Some(&stripe), None).await else {
        return;
    };
    stripe.set_confirm(Confirm::ChargeThenFail);
    let f = fail_story(app, SHIRT, 3, 5000, CARD, async |_: &TestApp| {}).await;
    assert_eq!(f.status, 402);
    assert_eq!(f.body["reason"], "payment_error");
    assert_eq!(
        step_status(&f.body, "undo_payment").as_deref(),
        Some("refunded")
    );
    assert_eq!(stripe.refunds().len(), 1, "charged, so refunded");
    assert_eq!(stripe.net_charged(), 0);
}
on_both!(a_processor_error_after_charging_refunds_it);

async fn stock_gone_after_the_deal_fails_409_before_any_payment(db: Db) {
    let stripe = FakeStripe::start().await;
    let Some(app) = shop(db, Some(&stripe), None).await else {
        return;
    };
    let f = fail_story(app, SHIRT, 5, 5000, CARD, async |app: &TestApp| {
        app.store()
            .put_product(&product("p-shirt", "T-Shirt", SHIRT, 5000, Some(3)))
            .await
            .unwrap();
    })
    .await;
    assert_eq!(f.status, 409);
    assert_eq!(f.body["reason"], "out_of_stock");
    assert_eq!(
        step_status(&f.body, "reserve_stock").as_deref(),
        Some("failed")
    );
    assert!(step_status(&f.body, "take_payment").is_none(), "{}", f.body);
    assert!(stripe.calls().is_empty(), "no money was asked for");
}
on_both!(stock_gone_after_the_deal_fails_409_before_any_payment);

/// Makes every INSERT into `orders` fail, as a full disk or a broken constraint would.
async fn break_order_writes(app: &TestApp) {
    let store = app.store();
    match store.backend() {
        concierge::store::Backend::Sqlite => {
            store
                .write_execute(sqlx::query(
                    "CREATE TRIGGER orders_fail BEFORE INSERT ON orders \
                     BEGIN SELECT RAISE(ABORT, 'disk I/O error (test)'); END",
                ))
                .await
                .unwrap();
        }
        concierge::store::Backend::Postgres => {
            store
                .write_execute(sqlx::query(
                    "CREATE FUNCTION orders_fail() RETURNS trigger AS $$ BEGIN \
                     RAISE EXCEPTION 'disk I/O error (test)'; END $$ LANGUAGE plpgsql",
                ))
                .await
                .unwrap();
            store
                .write_execute(sqlx::query(
                    "CREATE TRIGGER orders_fail BEFORE INSERT ON orders \
                     FOR EACH ROW EXECUTE FUNCTION orders_fail()",
                ))
                .await
                .unwrap();
        }
    }
}

async fn an_order_write_failure_releases_the_stock_and_takes_no_money(db: Db) {
    let Some(app) = shop(db, None, None).await else {
        return;
    };
    let before_balance = gift_balance(&app).await;
    let f = fail_story(app, SHIRT, 2, 5000, GIFT, async |app: &TestApp| {
        break_order_writes(app).await
    })
    .await;
    assert_eq!(f.status, 500);
    assert_eq!(f.body["reason"], "order_failed");
    assert_eq!(
        step_status(&f.body, "create_order").as_deref(),
        Some("failed")
    );
    assert_eq!(
        step_status(&f.body, "release_stock").as_deref(),
        Some("done")
    );
    assert!(step_status(&f.body, "take_payment").is_none());
    assert_eq!(gift_balance(&f.app).await, before_balance);
    let shirt = f.app.store().get_product("p-shirt").await.unwrap().unwrap();
    assert_eq!(shirt.variants[0].stock, Some(8), "nothing held any more");
}
on_both!(an_order_write_failure_releases_the_stock_and_takes_no_money);

/// A copy of the brand folder whose deals hold for one second.
fn brand_with_short_deals() -> (tempfile::TempDir, std::path::PathBuf) {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                copy(&p, &to.join(e.file_name()));
            } else {
                std::fs::copy(&p, to.join(e.file_name())).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("brand");
    copy(&crate::helpers::repo_path("brand"), &dir);
    let file = dir.join("negotiation.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("deal_valid_secs = 86400"));
    std::fs::write(
        &file,
        text.replace("deal_valid_secs = 86400", "deal_valid_secs = 1"),
    )
    .unwrap();
    (tmp, dir)
}

async fn an_expired_deal_cannot_settle(db: Db) {
    let (_tmp, brand) = brand_with_short_deals();
    let Some(app) = shop(db, None, Some(brand)).await else {
        return;
    };
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, SHIRT, 1, 5000).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let before = snapshot(&app).await;
    let (status, body, _) = settle(
        &app.addr,
        &agent,
        &tok,
        &deal_id,
        Some("late"),
        &json!({"payment_method_id": GIFT}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], "deal_expired");
    assert!(snapshot(&app).await == before);
}
on_both!(an_expired_deal_cannot_settle);

async fn a_refund_that_fails_is_retried_by_the_settle_job_until_it_goes_through(db: Db) {
    let stripe = FakeStripe::start().await;
    let Some(app) = shop(db, Some(&stripe), None).await else {
        return;
    };
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, SHIRT, 1, 5000).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    let before = snapshot(&app).await;
    stripe.set_confirm(Confirm::ChargeThenFail);
    stripe.fail_refunds(2);
    let (status, body, _) = settle(
        &app.addr,
        &agent,
        &tok,
        &deal_id,
        Some("flaky"),
        &json!({"payment_method_id": CARD}),
    )
    .await;
    // The outcome is decided (failed) though the refund has not gone through yet.
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], "payment_error");
    assert_eq!(
        step_status(&body, "undo_payment").as_deref(),
        Some("failed"),
        "{body}"
    );
    assert_eq!(
        stripe.net_charged(),
        deal["deal"]["total"].as_i64().unwrap()
    );
    // The worker retries the job until the refund goes through, then undoes the rest.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let settlement = loop {
        let (_, d) = get_deal(&app.addr, &agent, &deal_id).await;
        if d["settlement"]["status"] == "failed" {
            break d["settlement"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never compensated: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(settlement["reason"], "payment_error");
    assert_eq!(stripe.refunds().len(), 1);
    assert_eq!(stripe.net_charged(), 0);
    assert!(snapshot(&app).await == before);
    let f = settled_frame(&mut ws).await;
    assert_eq!(f["status"], "failed");
    assert!(app.store().verify_audit_chain().await.unwrap().is_intact());
}
on_both!(a_refund_that_fails_is_retried_by_the_settle_job_until_it_goes_through);

async fn a_settlement_its_job_gives_up_on_is_handed_to_staff(db: Db) {
    let stripe = FakeStripe::start().await;
    let Some(app) = shop_with(db, Some(&stripe), None, |c| c.payments.settle_attempts = 2).await
    else {
        return;
    };
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, SHIRT, 1, 5000).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    stripe.set_confirm(Confirm::ChargeThenFail);
    // The processor refuses every refund: the money cannot be given back automatically.
    stripe.fail_refunds(1000);
    let (status, body, _) = settle(
        &app.addr,
        &agent,
        &tok,
        &deal_id,
        Some("stuck"),
        &json!({"payment_method_id": CARD}),
    )
    .await;
    assert_eq!(status, 402, "{body}");
    // The request's run was attempt 1 of 2; the worker's run is the last, and then staff get
    // the settlement with what is left to undo.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let escalation = loop {
        let open = app.store().open_escalations(50).await.unwrap();
        if let Some(e) = open.into_iter().find(|e| e.reason == "settlement_stuck") {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "never escalated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = format!("{escalation:?}");
    assert!(text.contains(&deal_id), "{text}");
    let intent = stripe.intents()[0]["id"].as_str().unwrap().to_string();
    assert!(
        text.contains(&intent),
        "names the payment to refund: {text}"
    );
    assert!(text.contains("undo payment failed"), "{text}");
    // The settlement is still being undone (not claimed as failed or settled), the money is
    // still out, and the escalation is in the audit chain.
    let s = concierge::settle::store::get(app.store(), &deal_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.status, "compensating");
    assert_eq!(
        stripe.net_charged(),
        deal["deal"]["total"].as_i64().unwrap()
    );
    let entries = app.store().audit_entries(0, 1000).await.unwrap();
    assert!(
        audit_tools(&entries).contains(&"settlement_escalated".to_string()),
        "{:?}",
        audit_tools(&entries)
    );
    assert!(app.store().verify_audit_chain().await.unwrap().is_intact());
}
on_both!(a_settlement_its_job_gives_up_on_is_handed_to_staff);

// ---- concurrency ----

async fn concurrent_settles_of_one_deal_charge_once(db: Db) {
    let Some(app) = shop(db, None, None).await else {
        return;
    };
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, SHIRT, 2, 5000).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    let total = deal["deal"]["total"].as_i64().unwrap();
    let before = gift_balance(&app).await;
    let keys: Vec<String> = (0..6).map(|i| format!("race-{i}")).collect();
    let body = json!({"payment_method_id": GIFT});
    let answers = futures::future::join_all(
        keys.iter()
            .map(|k| settle(&app.addr, &agent, &tok, &deal_id, Some(k), &body)),
    )
    .await;
    let settled = answers.iter().filter(|(s, _, _)| *s == 201).count();
    assert_eq!(settled, 1, "{answers:?}");
    for (s, b, _) in answers.iter().filter(|(s, _, _)| *s != 201) {
        assert_eq!(*s, 409, "{b}");
        assert!(
            b["reason"] == "settlement_in_progress" || b["reason"] == "already_settled",
            "{b}"
        );
    }
    assert_eq!(gift_balance(&app).await, before - total, "charged once");
    let orders = app.store().list_customer_orders(CUSTOMER).await.unwrap();
    assert_eq!(orders.len(), 1, "one order");
    let shirt = app.store().get_product("p-shirt").await.unwrap().unwrap();
    assert_eq!(shirt.variants[0].stock, Some(6));
}
on_both!(concurrent_settles_of_one_deal_charge_once);

async fn two_deals_racing_for_the_last_stock_settle_one(db: Db) {
    let Some(app) = shop(db, None, None).await else {
        return;
    };
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    // Both deals are for 5 of the 8 shirts: each was possible when it was made.
    let a = make_deal(&mut ws, &agent, SHIRT, 5, 5000).await;
    let b = make_deal(&mut ws, &agent, SHIRT, 5, 5000).await;
    let ids = [
        a["deal"]["deal_id"].as_str().unwrap().to_string(),
        b["deal"]["deal_id"].as_str().unwrap().to_string(),
    ];
    let body = json!({"payment_method_id": GIFT});
    let answers = futures::future::join_all(
        ids.iter()
            .map(|id| settle(&app.addr, &agent, &tok, id, Some(id), &body)),
    )
    .await;
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _, _)| *s).collect();
    statuses.sort();
    assert_eq!(statuses, vec![201, 409], "{answers:?}");
    let lost = answers.iter().find(|(s, _, _)| *s == 409).unwrap();
    assert_eq!(lost.1["reason"], "out_of_stock", "{}", lost.1);
    let shirt = app.store().get_product("p-shirt").await.unwrap().unwrap();
    assert_eq!(shirt.variants[0].stock, Some(3), "8 − 5, never oversold");
    assert_eq!(
        app.store()
            .list_customer_orders(CUSTOMER)
            .await
            .unwrap()
            .len(),
        1
    );
}
on_both!(two_deals_racing_for_the_last_stock_settle_one);

// ---- the request itself ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_requests_are_checked_with_clear_errors() {
    let app = shop(Db::Sqlite, None, None).await.unwrap();
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, SHIRT, 1, 5000).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    let before = snapshot(&app).await;
    let base = &app.addr;
    for (body, needle) in [
        (json!({}), "payment_method_id"),
        (json!({"payment_method_id": GIFT, "tip": 5}), "tip"),
        (json!({"payment_method_id": ""}), "payment_method_id"),
        (json!({"payment_method_id": 42}), "payment_method_id"),
        (
            json!({"payment_method_id": "gift_card_someone_else"}),
            "not one of the customer's",
        ),
        (json!({"payment_method_id": PAYPAL}), "paypal"),
        (json!({"payment_method_id": CARD}), "not configured"),
        (
            json!({"payment_method_id": GIFT, "address": {"address1": "x", "zip": "1", "country": "PT"}}),
            "city",
        ),
        (
            json!({"payment_method_id": GIFT, "address": {"address1": "x", "city": " ", "zip": "1", "country": "PT"}}),
            "address.city",
        ),
    ] {
        let (s, b, _) = settle(
            base,
            &agent,
            &tok,
            &deal_id,
            Some(&concierge::util::random_token(8)),
            &body,
        )
        .await;
        assert_eq!(s, 422, "{body} → {b}");
        let m = b["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(needle), "{body}: {m:?} should name {needle:?}");
    }
    // No Idempotency-Key.
    let (s, b, _) = settle(
        base,
        &agent,
        &tok,
        &deal_id,
        None,
        &json!({"payment_method_id": GIFT}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("idempotency_key_required")),
        "{b}"
    );
    // Another agent: no such deal of theirs.
    let other = register(&app, "snoop").await;
    let other_tok = token(&app, &other, &["settle"]).await;
    let (s, _, _) = settle(
        base,
        &other,
        &other_tok,
        &deal_id,
        Some("o-1"),
        &json!({"payment_method_id": GIFT}),
    )
    .await;
    assert_eq!(s, 404);
    // A token of the same agent that is neither the deal's nor allows settle.
    let reader = token(&app, &agent, &["get_order"]).await;
    let (s, b, _) = settle(
        base,
        &agent,
        &reader,
        &deal_id,
        Some("r-1"),
        &json!({"payment_method_id": GIFT}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("operation_not_allowed")),
        "{b}"
    );
    // Unsigned.
    let r = concierge::http_client::client()
        .post(format!("{base}/agent/v1/deals/{deal_id}/settle"))
        .header("idempotency-key", "u-1")
        .json(&json!({"payment_method_id": GIFT}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        snapshot(&app).await == before,
        "nothing was changed by refused requests"
    );
    // A token allowing `settle` (not the deal's) settles it.
    let settler = token(&app, &agent, &["settle"]).await;
    let (s, b, _) = settle(
        base,
        &agent,
        &settler,
        &deal_id,
        Some("s-1"),
        &json!({"payment_method_id": GIFT}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_reservations_count_against_availability_while_a_payment_is_in_flight() {
    let stripe = FakeStripe::start().await;
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.payments.stripe.base_url = stripe.url.clone();
        c.payments.stripe.secret_key = Some(concierge::util::Secret::new(SECRET_KEY));
        c.payments.stripe.timeout_ms = 20_000;
    })
    .await;
    stock_shop(&app).await;
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, SHIRT, 5, 5000).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    stripe.set_confirm(Confirm::ChargeThenHang);
    let base = app.addr.clone();
    let deal = deal_id.clone();
    let settling = tokio::spawn(async move {
        settle(
            &base,
            &agent,
            &tok,
            &deal_id,
            Some("hold"),
            &json!({"payment_method_id": CARD}),
        )
        .await
    });
    // While the card is being charged, 5 of the 8 shirts are held: every read of
    // availability sees 3, and a second buyer cannot open a negotiation for 5.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let p = app.store().get_product("p-shirt").await.unwrap().unwrap();
        if p.variants[0].stock == Some(3) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reservation never showed: {:?}",
            p.variants[0].stock
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = concierge::http_client::client()
        .get(app.url("/agent/v1/products/p-shirt/availability"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let avail: Value = r.json().await.unwrap();
    assert!(avail.to_string().contains("\"stock\":3"), "{avail}");
    let rival = register(&app, "rival-bot").await;
    let rival_tok = token(&app, &rival, &["negotiate"]).await;
    let mut rws = connect(&app.addr, &rival, &rival_tok).await;
    let refused = call(&mut rws, &json!({"type": "open", "request_id": "r", "items": [{"variant_id": SHIRT, "quantity": 5}]})).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "terms_out_of_range", "{refused}");
    // The charge is in flight (the card charged, the answer held back): the intent's id was
    // recorded for good before the call that charges, so a crash now could still undo it.
    while !stripe.calls().iter().any(|c| c.path.ends_with("/confirm")) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = concierge::settle::store::get(app.store(), &deal)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.payment_ref.as_deref(),
        stripe.intents()[0]["id"].as_str(),
        "{s:?}"
    );
    stripe.release();
    let (status, body, _) = settling.await.unwrap();
    assert_eq!(status, 201, "{body}");
    let p = app.store().get_product("p-shirt").await.unwrap().unwrap();
    assert_eq!(p.variants[0].stock, Some(3), "consumed: 8 − 5");
}

// ---- a crash between steps ----

/// A `concierge serve` on `data`, talking to the fake Stripe, with a one-second job lease (so
/// a dead process's settlement is taken over quickly). Returns it and its base URL once it
/// answers health.
async fn serve(
    data: &std::path::Path,
    db_url: Option<&str>,
    stripe: &FakeStripe,
) -> (crate::cli::Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = crate::cli::concierge(data);
    if let Some(url) = db_url {
        cmd.env("DATABASE_URL", url);
    }
    let child = cmd
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("CONCIERGE_PAYMENTS__STRIPE__BASE_URL", &stripe.url)
        .env("CONCIERGE_PAYMENTS__STRIPE__SECRET_KEY", SECRET_KEY)
        .env("CONCIERGE_PAYMENTS__STRIPE__TIMEOUT_MS", "60000")
        .env("CONCIERGE_JOBS__LEASE_SECS", "1")
        .env("CONCIERGE_JOBS__POLL_INTERVAL_MS", "100")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start concierge serve");
    let server = crate::cli::Server(child);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = concierge::http_client::client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "concierge serve did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (server, base)
}

fn export(data: &std::path::Path, db_url: Option<&str>, out: &std::path::Path) -> Vec<Value> {
    let mut cmd = crate::cli::concierge(data);
    if let Some(url) = db_url {
        cmd.env("DATABASE_URL", url);
    }
    let done = cmd
        .args(["export", "tau-retail"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    ["users.json", "orders.json", "products.json"]
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(out.join(f)).unwrap()).unwrap())
        .collect()
}

async fn a_process_killed_mid_payment_is_undone_by_the_restarted_one(db: Db) {
    let stripe = FakeStripe::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The shop, an agent, its token and a deal, made in-process on the data dir (and, on
    // PostgreSQL, a fresh database).
    let d = data.clone();
    let Some(app) = TestApp::spawn_on_with(db, move |c| c.data_dir = d).await else {
        return;
    };
    let db_url = app.config.database_url().map(|u| u.expose().to_string());
    stock_shop(&app).await;
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, SHIRT, 2, 5000).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    drop(ws);
    let before_snapshot = snapshot(&app).await;
    app.stop().await;
    let before = export(&data, db_url.as_deref(), &tmp.path().join("before"));

    // The binary takes the settle request; the card is charged and the process dies before
    // the answer (between the payment and its record).
    stripe.set_confirm(Confirm::ChargeThenHang);
    let (mut first, base) = serve(&data, db_url.as_deref(), &stripe).await;
    let url = format!("{base}/agent/v1/deals/{deal_id}/settle");
    let body = json!({"payment_method_id": CARD});
    let bytes = serde_json::to_vec(&body).unwrap();
    let mut req = concierge::http_client::client()
        .post(&url)
        .header("content-type", "application/json")
        .header("idempotency-key", "crash-1")
        .bearer_auth(&tok)
        .body(bytes.clone());
    for (k, v) in signed_headers(&agent, "POST", &url, &bytes) {
        req = req.header(k, v);
    }
    let in_flight = tokio::spawn(req.send());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !stripe.calls().iter().any(|c| c.path.ends_with("/confirm")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the payment never reached Stripe"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the client got no answer"
    );
    assert_eq!(
        stripe.net_charged(),
        deal["deal"]["total"].as_i64().unwrap(),
        "money moved"
    );
    stripe.release();
    stripe.set_confirm(Confirm::Succeed);

    // Restarted: the settle job is taken over and undoes it all.
    let (second, base) = serve(&data, db_url.as_deref(), &stripe).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let settlement = loop {
        let (s, d) = get_deal(&base, &agent, &deal_id).await;
        assert_eq!(s, 200, "{d}");
        if d["settlement"]["status"] == "failed" {
            break d["settlement"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "not recovered: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(settlement["reason"], "interrupted", "{settlement}");
    let steps: Vec<(String, String)> = settlement["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().into(),
                s["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        steps.contains(&("undo_payment".into(), "refunded".into())),
        "{steps:?}"
    );
    assert!(
        steps.contains(&("cancel_order".into(), "done".into())),
        "{steps:?}"
    );
    assert!(
        steps.contains(&("release_stock".into(), "done".into())),
        "{steps:?}"
    );
    assert_eq!(stripe.refunds().len(), 1, "the charge is refunded");
    assert_eq!(stripe.net_charged(), 0);
    // The same key again: the same (failed) outcome.
    let (s, b, replayed) = settle(&base, &agent, &tok, &deal_id, Some("crash-1"), &body).await;
    assert_eq!(
        (s, b["status"].as_str(), b["reason"].as_str()),
        (500, Some("failed"), Some("interrupted")),
        "{b}"
    );
    assert!(replayed);
    let mut second = second;
    let pid = second.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while second.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The store is exactly as before: the export, and every variant's stock.
    let after = export(&data, db_url.as_deref(), &tmp.path().join("after"));
    assert!(before == after, "the export changed");
    let d = data.clone();
    let app = TestApp::spawn_with(db, move |c| {
        c.data_dir = d;
        c.database.url = db_url.map(concierge::util::Secret::new);
    })
    .await;
    assert!(snapshot(&app).await == before_snapshot);
    assert!(app.store().verify_audit_chain().await.unwrap().is_intact());
    app.stop().await;
}
on_both!(a_process_killed_mid_payment_is_undone_by_the_restarted_one);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_a_reservation_past_its_expiry_stops_counting_and_the_settlement_is_undone() {
    let stripe = FakeStripe::start().await;
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.payments.stripe.base_url = stripe.url.clone();
        c.payments.stripe.secret_key = Some(concierge::util::Secret::new(SECRET_KEY));
        c.payments.stripe.timeout_ms = 20_000;
        c.payments.reservation_secs = 1;
    })
    .await;
    stock_shop(&app).await;
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"]).await;
    let mut ws = connect(&app.addr, &agent, &tok).await;
    let deal = make_deal(&mut ws, &agent, SHIRT, 5, 5000).await;
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap().to_string();
    let before = snapshot(&app).await;
    stripe.set_confirm(Confirm::ChargeThenHang);
    let base = app.addr.clone();
    let settling = tokio::spawn(async move {
        settle(
            &base,
            &agent,
            &tok,
            &deal_id,
            Some("slow"),
            &json!({"payment_method_id": CARD}),
        )
        .await
    });
    let stock = async || {
        app.store()
            .get_product("p-shirt")
            .await
            .unwrap()
            .unwrap()
            .variants[0]
            .stock
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stock().await != Some(3) {
        assert!(std::time::Instant::now() < deadline, "never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the hold's expiry the shirts are available again, though the payment still hangs.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(stock().await, Some(8), "an expired hold no longer counts");
    stripe.release();
    let (status, body, _) = settling.await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "reservation_expired");
    assert_eq!(
        step_status(&body, "undo_payment").as_deref(),
        Some("refunded")
    );
    assert_eq!(stripe.net_charged(), 0);
    assert!(snapshot(&app).await == before);
}

/// On PostgreSQL every settlement step locks the audit head before any other row (stock, the
/// settlement, an order), the lock every audited write takes first, so a step and an order
/// change by staff or the brand agent cannot deadlock on each other's rows.
#[tokio::test]
async fn settlement_steps_lock_the_audit_head_first_on_postgres() {
    let Some(app) = TestApp::spawn_on_with(Db::Postgres, |_| {}).await else {
        return;
    };
    let store = app.store();
    let tx = store.begin_audited_write().await.unwrap();
    let try_head = async || {
        let mut other = store.pool().acquire().await.unwrap();
        sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE NOWAIT")
            .fetch_optional(&mut *other)
            .await
    };
    let held = try_head().await;
    assert!(held.is_err(), "the head is not locked");
    tx.rollback().await.unwrap();
    assert!(try_head().await.is_ok());
}
