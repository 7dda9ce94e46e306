//! Agent-to-agent negotiation over `GET /agent/v1/negotiations/ws` (issue #14), driven from
//! the outside: a real WebSocket client signing the upgrade (RFC 9421) and every committing
//! frame (Ed25519 over JCS) with a registered agent key, against a running Concierge.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use concierge::commerce::{Customer, Product, Variant};
use concierge::gateway::{identity, tokens};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Db, TestApp};

const SHIRT: &str = "v-shirt-m";
const KETTLE: &str = "v-kettle";
const GIFT: &str = "v-gift-50";
const SOLD_OUT: &str = "v-mug";
const CUSTOMER: &str = "cust_ana";

fn product(
    id: &str,
    category: &str,
    variant: &str,
    price: i64,
    stock: Option<i64>,
    available: bool,
) -> Product {
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
            sku: None,
            options: Default::default(),
            price,
            currency: "USD".into(),
            available,
            stock,
        }],
        created_at: None,
        updated_at: None,
    }
}

/// A small catalogue: a T-shirt ($50, 8 in stock), a tea kettle ($120, stock untracked), a
/// gift card (not negotiable), a sold-out mug; and one customer.
async fn shop(db: Db) -> Option<TestApp> {
    let app = TestApp::spawn_on(db).await?;
    let s = app.store();
    s.put_product(&product("p-shirt", "T-Shirt", SHIRT, 5000, Some(8), true))
        .await
        .unwrap();
    s.put_product(&product(
        "p-kettle",
        "Tea Kettle",
        KETTLE,
        12000,
        None,
        true,
    ))
    .await
    .unwrap();
    s.put_product(&product("p-gift", "Gift Card", GIFT, 5000, None, true))
        .await
        .unwrap();
    s.put_product(&product("p-mug", "Mug", SOLD_OUT, 1500, None, false))
        .await
        .unwrap();
    s.put_customer(&Customer {
        id: CUSTOMER.into(),
        source: "test".into(),
        first_name: "Ana".into(),
        last_name: "Lima".into(),
        emails: vec!["ana@example.com".into()],
        phones: vec![],
        addresses: vec![],
        payment_methods: vec![],
        note: None,
        created_at: None,
        updated_at: None,
    })
    .await
    .unwrap();
    Some(app)
}

/// A registered consumer agent with its signing key (shared by the settlement and risk tests).
pub(crate) struct Agent {
    pub id: String,
    pub key: SigningKey,
    pub key_id: String,
}

pub(crate) async fn register(app: &TestApp, name: &str) -> Agent {
    let key = identity::generate_key();
    let key_id = identity::key_id(&key.verifying_key());
    let now = concierge::util::now_ms();
    app.store()
        .register_agent_key(
            name,
            &key_id,
            &identity::encode_public_key(&key.verifying_key()),
            now,
        )
        .await
        .unwrap();
    let id = app
        .store()
        .agent_key(&key_id)
        .await
        .unwrap()
        .unwrap()
        .agent_id;
    Agent { id, key, key_id }
}

/// A capability token for the customer: `ops`, a limit in minor units, categories.
async fn token(
    app: &TestApp,
    agent: &Agent,
    ops: &[&str],
    limit: Option<i64>,
    categories: &[&str],
) -> String {
    let now = concierge::util::now_ms();
    let spec = tokens::TokenSpec {
        agent_id: agent.id.clone(),
        customer_id: CUSTOMER.into(),
        ops: ops.iter().map(|s| s.to_string()).collect(),
        spend_limit: limit,
        categories: categories.iter().map(|s| s.to_string()).collect(),
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

fn ws_url(app: &TestApp) -> (String, String) {
    let http = app.url("/agent/v1/negotiations/ws");
    (http.replacen("http://", "ws://", 1), http)
}

/// Opens the socket: signed by `agent` when given, with `token` when given. Err is the HTTP
/// status of a refused upgrade.
async fn connect(app: &TestApp, agent: Option<&Agent>, token: Option<&str>) -> Result<Ws, u16> {
    let (ws, http) = ws_url(app);
    let mut req = ws.into_client_request().unwrap();
    if let Some(a) = agent {
        let created = concierge::util::now_ms() / 1000;
        let h = identity::sign_request(
            &a.key,
            &a.key_id,
            "GET",
            &http,
            b"",
            &concierge::util::random_token(12),
            created,
        );
        for (name, value) in h.pairs() {
            req.headers_mut().insert(name, value.parse().unwrap());
        }
    }
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

async fn send(ws: &mut Ws, frame: &Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
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
    send(ws, frame).await;
    recv(ws).await
}

fn sign(key: &SigningKey, mut frame: Value) -> Value {
    let sig = STANDARD.encode(key.sign(concierge::util::jcs(&frame).as_bytes()).to_bytes());
    frame["sig"] = json!(sig);
    frame
}

fn terms(lines: &[(&str, i64, i64)], shipping: &str) -> Value {
    json!({
        "lines": lines.iter().map(|(v, q, p)| json!({"variant_id": v, "quantity": q, "unit_price": p})).collect::<Vec<_>>(),
        "shipping": shipping,
        "currency": "USD",
    })
}

fn offer(agent: &Agent, id: &str, round: u64, t: Value) -> Value {
    sign(
        &agent.key,
        json!({"type": "offer", "negotiation_id": id, "round": round, "terms": t}),
    )
}

fn accept(agent: &Agent, id: &str, round: u64, brand_terms: &Value) -> Value {
    let hash = concierge::util::jcs_sha256(brand_terms);
    sign(
        &agent.key,
        json!({"type": "accept", "negotiation_id": id, "round": round, "terms_hash": hash}),
    )
}

async fn open(ws: &mut Ws, request_id: &str, items: Value, extra: Value) -> Value {
    let mut f = json!({"type": "open", "request_id": request_id, "items": items});
    if let (Some(o), Value::Object(e)) = (f.as_object_mut(), extra) {
        o.extend(e);
    }
    call(ws, &f).await
}

fn service_public(app: &TestApp) -> ed25519_dalek::VerifyingKey {
    concierge::gateway::service_key(&app.state)
        .unwrap()
        .verifying_key()
}

fn verify_b64(key: &ed25519_dalek::VerifyingKey, value: &Value, sig: &str) -> bool {
    let bytes = STANDARD.decode(sig).unwrap();
    key.verify(
        concierge::util::jcs(value).as_bytes(),
        &Signature::from_slice(&bytes).unwrap(),
    )
    .is_ok()
}

/// Checks a deal frame from both sides' public keys alone.
fn check_deal(app: &TestApp, agent: &Agent, d: &Value) {
    assert_eq!(d["type"], "deal", "{d}");
    let deal = &d["deal"];
    assert_eq!(d["deal_hash"], concierge::util::jcs_sha256(deal));
    assert!(
        verify_b64(&service_public(app), deal, d["brand_sig"].as_str().unwrap()),
        "brand_sig"
    );
    let t = &deal["terms"];
    let agent_frame = if deal["agent_move"] == "accept" {
        json!({"type": "accept", "negotiation_id": deal["negotiation_id"], "round": deal["agent_round"], "terms_hash": concierge::util::jcs_sha256(t)})
    } else {
        json!({"type": "offer", "negotiation_id": deal["negotiation_id"], "round": deal["agent_round"], "terms": t})
    };
    assert!(
        verify_b64(
            &agent.key.verifying_key(),
            &agent_frame,
            d["agent_sig"].as_str().unwrap()
        ),
        "agent_sig"
    );
    assert_eq!(deal["agent_key_id"], agent.key_id.as_str());
    assert_eq!(deal["customer_id"], CUSTOMER);
    for k in [
        "deal_id",
        "negotiation_id",
        "terms",
        "total",
        "valid_until",
        "created_at",
    ] {
        assert!(!deal[k].is_null(), "deal.{k}");
    }
}

// ---- a deal, and what proves it ----

async fn a_negotiation_ends_in_a_deal_both_sides_can_prove(db: Db) {
    let Some(app) = shop(db).await else { return };
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"], Some(100_000), &[]).await;
    let mut ws = connect(&app, Some(&agent), Some(&tok))
        .await
        .expect("upgrade");
    let opened = open(
        &mut ws,
        "r-1",
        json!([{"variant_id": SHIRT, "quantity": 2}]),
        json!({"max_rounds": 20, "deadline_ms": 20000}),
    )
    .await;
    assert_eq!(opened["type"], "opened", "{opened}");
    assert_eq!(opened["request_id"], "r-1");
    assert_eq!(opened["max_rounds"], 20);
    let line = &opened["issues"]["lines"][0];
    assert_eq!(line["quantity"]["max"], 8, "stock-aware quantity bound");
    assert_eq!(opened["list_terms"]["lines"][0]["unit_price"], 5000);
    assert!(opened["issues"]["shipping"].as_array().unwrap().len() >= 2);
    let id = opened["negotiation_id"].as_str().unwrap().to_string();
    // The same open again is the same negotiation.
    let again = open(
        &mut ws,
        "r-1",
        json!([{"variant_id": SHIRT, "quantity": 2}]),
        json!({}),
    )
    .await;
    assert_eq!(again["negotiation_id"], id.as_str());

    // The first brand offer is signed by the service key and names the next round.
    let first = call(
        &mut ws,
        &offer(&agent, &id, 1, terms(&[(SHIRT, 2, 3000)], "standard")),
    )
    .await;
    assert_eq!(first["type"], "offer", "{first}");
    assert_eq!(first["round"], 2);
    let mut unsigned = first.clone();
    let sig = unsigned.as_object_mut().unwrap().remove("sig").unwrap();
    assert!(verify_b64(
        &service_public(&app),
        &unsigned,
        sig.as_str().unwrap()
    ));
    let brand_price = first["terms"]["lines"][0]["unit_price"].as_i64().unwrap();
    assert!((4000..=5000).contains(&brand_price), "{first}");

    assert!((3750..=5000).contains(&brand_price), "{first}");
    let mut round = 3;
    let mut price = 3500;
    let deal = loop {
        let r = call(
            &mut ws,
            &offer(&agent, &id, round, terms(&[(SHIRT, 2, price)], "standard")),
        )
        .await;
        match r["type"].as_str().unwrap() {
            "offer" => {
                let theirs = r["terms"]["lines"][0]["unit_price"].as_i64().unwrap();
                if theirs <= 4600 {
                    break call(&mut ws, &accept(&agent, &id, round + 2, &r["terms"])).await;
                }
                round += 2;
                price += 150;
            }
            _ => break r,
        }
    };
    check_deal(&app, &agent, &deal);
    let t = &deal["deal"]["terms"];
    let unit = t["lines"][0]["unit_price"].as_i64().unwrap();
    assert!(
        unit >= 3750,
        "never below the T-shirt floor (75 % of list): {deal}"
    );
    assert_eq!(deal["deal"]["total"], unit * 2 + 599);

    // The signed reads: the transcript and the deal with both signatures.
    let deal_id = deal["deal"]["deal_id"].as_str().unwrap();
    let (status, body) = signed_get(&app, &agent, &format!("/agent/v1/deals/{deal_id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deal_hash"], deal["deal_hash"]);
    assert_eq!(body["agent_sig"], deal["agent_sig"]);
    let (status, body) = signed_get(&app, &agent, &format!("/agent/v1/negotiations/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "agreed");
    let moves = body["moves"].as_array().unwrap();
    assert_eq!(moves.len() as i64, body["round"].as_i64().unwrap());
    assert!(
        moves
            .iter()
            .filter(|m| m["side"] == "agent")
            .all(|m| m["sig"].is_string())
    );
    // Another agent sees neither.
    let other = register(&app, "snoop").await;
    let (status, _) = signed_get(&app, &other, &format!("/agent/v1/deals/{deal_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = signed_get(&app, &other, &format!("/agent/v1/negotiations/{id}")).await;
    assert_eq!(status, 404);

    // The deal is on the audit chain, which still verifies.
    let v = app.store().verify_audit_chain().await.unwrap();
    assert!(v.is_intact(), "{v:?}");
    let entries = app.store().audit_entries(0, 1000).await.unwrap();
    let e = entries
        .iter()
        .find(|e| e.tool == "negotiation_deal")
        .expect("audit entry");
    assert_eq!(e.args["deal_hash"], deal["deal_hash"]);
    // The deal's value is committed under the token.
    let spent = app
        .store()
        .token_spent(&tokens_id(&app, &agent).await)
        .await
        .unwrap();
    assert_eq!(spent, deal["deal"]["total"].as_i64().unwrap());
    // After the deal, further moves are refused.
    let r = call(
        &mut ws,
        &offer(&agent, &id, 99, terms(&[(SHIRT, 2, 4000)], "standard")),
    )
    .await;
    assert_eq!(r["code"], "negotiation_closed", "{r}");
    app.stop().await;
}
crate::on_both!(a_negotiation_ends_in_a_deal_both_sides_can_prove);

async fn tokens_id(app: &TestApp, agent: &Agent) -> String {
    app.store().list_tokens(Some(&agent.id)).await.unwrap()[0]
        .id
        .clone()
}

async fn signed_get(app: &TestApp, agent: &Agent, path: &str) -> (u16, Value) {
    let url = app.url(path);
    let h = identity::sign_request(
        &agent.key,
        &agent.key_id,
        "GET",
        &url,
        b"",
        &concierge::util::random_token(12),
        concierge::util::now_ms() / 1000,
    );
    let mut req = app.client.get(&url);
    for (n, v) in h.pairs() {
        req = req.header(n, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

// ---- bad input ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_store_no_move() {
    let app = shop(Db::Sqlite).await.unwrap();
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"], None, &[]).await;
    let mut ws = connect(&app, Some(&agent), Some(&tok)).await.unwrap();
    let opened = open(
        &mut ws,
        "r-1",
        json!([{"variant_id": SHIRT, "quantity": 1}]),
        json!({}),
    )
    .await;
    let id = opened["negotiation_id"].as_str().unwrap().to_string();
    let moves = || async {
        concierge::negotiate::store::move_count(app.store(), &id)
            .await
            .unwrap()
    };
    let good = terms(&[(SHIRT, 1, 3000)], "standard");

    let expect = |r: &Value, code: &str| {
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["code"], code, "{r}");
        assert!(!r["message"].as_str().unwrap().is_empty());
    };
    ws.send(Message::Text("{not json".into())).await.unwrap();
    expect(&recv(&mut ws).await, "bad_json");
    expect(
        &call(&mut ws, &json!({"type": "haggle", "negotiation_id": id})).await,
        "unknown_type",
    );
    expect(&call(&mut ws, &json!({"type": "offer", "negotiation_id": id, "round": 1, "terms": good, "sig": "x".repeat(20_000)})).await, "frame_too_large");
    // No signature, a garbage one, and another key's.
    expect(
        &call(
            &mut ws,
            &json!({"type": "offer", "negotiation_id": id, "round": 1, "terms": good}),
        )
        .await,
        "bad_signature",
    );
    let mut forged = offer(&agent, &id, 1, good.clone());
    forged["sig"] = json!(STANDARD.encode([0u8; 64]));
    expect(&call(&mut ws, &forged).await, "bad_signature");
    let stranger = register(&app, "stranger").await;
    expect(
        &call(&mut ws, &offer(&stranger, &id, 1, good.clone())).await,
        "bad_signature",
    );
    // A signature over other terms than those sent.
    let mut swapped = offer(&agent, &id, 1, good.clone());
    swapped["terms"]["lines"][0]["unit_price"] = json!(100);
    expect(&call(&mut ws, &swapped).await, "bad_signature");
    // Out of turn: a round ahead; accepting before the brand offered anything.
    expect(
        &call(&mut ws, &offer(&agent, &id, 3, good.clone())).await,
        "out_of_turn",
    );
    expect(
        &call(&mut ws, &accept(&agent, &id, 1, &good)).await,
        "nothing_to_accept",
    );
    // Terms outside the issues' ranges.
    for bad in [
        terms(&[(SHIRT, 9, 3000)], "standard"), // more than the 8 in stock
        terms(&[(SHIRT, 1, 6000)], "standard"), // above list
        terms(&[(SHIRT, 1, 3000)], "teleport"), // no such shipping option
        terms(&[(KETTLE, 1, 3000)], "standard"), // not part of this negotiation
        json!({"lines": [{"variant_id": SHIRT, "quantity": 1, "unit_price": 3000}], "shipping": "standard", "currency": "EUR"}),
    ] {
        expect(
            &call(&mut ws, &offer(&agent, &id, 1, bad)).await,
            "terms_out_of_range",
        );
    }
    expect(
        &call(&mut ws, &offer(&agent, "neg_nope", 1, good.clone())).await,
        "unknown_negotiation",
    );
    assert_eq!(moves().await, 0, "nothing stored as a move");

    // The negotiation is still usable; then a replayed move is stale.
    let first = offer(&agent, &id, 1, good.clone());
    let r = call(&mut ws, &first).await;
    assert_eq!(r["type"], "offer", "{r}");
    assert_eq!(moves().await, 2);
    expect(&call(&mut ws, &first).await, "stale_round");
    // Accepting other terms than the brand's latest offer.
    expect(
        &call(&mut ws, &accept(&agent, &id, 3, &good)).await,
        "hash_mismatch",
    );
    assert_eq!(moves().await, 2);

    // Another agent's negotiation, from its own socket.
    let thief_tok = token(&app, &stranger, &["negotiate"], None, &[]).await;
    let mut other = connect(&app, Some(&stranger), Some(&thief_tok))
        .await
        .unwrap();
    expect(
        &call(&mut other, &offer(&stranger, &id, 3, good.clone())).await,
        "not_your_negotiation",
    );
    expect(
        &call(&mut other, &json!({"type": "resume", "negotiation_id": id})).await,
        "not_your_negotiation",
    );
    expect(
        &call(&mut other, &json!({"type": "end", "negotiation_id": id})).await,
        "not_your_negotiation",
    );
    assert_eq!(moves().await, 2);

    // Open: products that cannot be negotiated.
    expect(
        &open(
            &mut ws,
            "r-2",
            json!([{"variant_id": GIFT, "quantity": 1}]),
            json!({}),
        )
        .await,
        "not_negotiable",
    );
    expect(
        &open(
            &mut ws,
            "r-3",
            json!([{"variant_id": SOLD_OUT, "quantity": 1}]),
            json!({}),
        )
        .await,
        "out_of_stock",
    );
    expect(
        &open(
            &mut ws,
            "r-4",
            json!([{"variant_id": "v-none", "quantity": 1}]),
            json!({}),
        )
        .await,
        "terms_out_of_range",
    );
    expect(
        &open(
            &mut ws,
            "r-5",
            json!([{"variant_id": SHIRT, "quantity": 1}]),
            json!({"max_rounds": 51}),
        )
        .await,
        "bad_frame",
    );
    expect(
        &open(
            &mut ws,
            "r-6",
            json!([{"variant_id": SHIRT, "quantity": 1}]),
            json!({"deadline_ms": 60001}),
        )
        .await,
        "bad_frame",
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_need_a_signature_and_a_token_allowing_negotiate_within_its_categories() {
    let app = shop(Db::Sqlite).await.unwrap();
    let agent = register(&app, "buyer-bot").await;
    assert_eq!(connect(&app, None, None).await.err(), Some(401), "unsigned");
    assert_eq!(
        connect(&app, Some(&agent), None).await.err(),
        Some(401),
        "no token"
    );
    let reader = token(&app, &agent, &["get_order"], None, &[]).await;
    assert_eq!(
        connect(&app, Some(&agent), Some(&reader)).await.err(),
        Some(403),
        "no negotiate"
    );
    let stranger = register(&app, "stranger").await;
    let tok = token(&app, &agent, &["negotiate"], None, &["Tea Kettle"]).await;
    assert_eq!(
        connect(&app, Some(&stranger), Some(&tok)).await.err(),
        Some(401),
        "another agent's token"
    );
    // A token scoped to kettles negotiates kettles, not shirts.
    let mut ws = connect(&app, Some(&agent), Some(&tok)).await.unwrap();
    let r = open(
        &mut ws,
        "r-1",
        json!([{"variant_id": SHIRT, "quantity": 1}]),
        json!({}),
    )
    .await;
    assert_eq!(r["code"], "category_not_allowed", "{r}");
    let r = open(
        &mut ws,
        "r-2",
        json!([{"variant_id": KETTLE, "quantity": 1}]),
        json!({}),
    )
    .await;
    assert_eq!(r["type"], "opened", "{r}");
    // A limit below what the items cost at their floors refuses the open.
    let small = token(&app, &agent, &["negotiate"], Some(5000), &[]).await;
    let mut ws = connect(&app, Some(&agent), Some(&small)).await.unwrap();
    let r = open(
        &mut ws,
        "r-3",
        json!([{"variant_id": KETTLE, "quantity": 1}]),
        json!({}),
    )
    .await;
    assert_eq!(r["code"], "spending_limit", "{r}");

    // Discovery: the agent card's extension and the OpenAPI entries.
    let card: Value = app
        .client
        .get(app.url("/.well-known/agent-card.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ext = card["capabilities"]["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["uri"] == "urn:concierge:extension:negotiation:v1")
        .expect("extension")
        .clone();
    assert_eq!(ext["params"]["url"], ws_url(&app).0);
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/agent/v1/negotiations/{negotiation_id}"]["get"].is_object());
    assert!(doc["paths"]["/agent/v1/deals/{deal_id}"]["get"].is_object());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_limit_caps_every_offer_and_deal() {
    // Metrics are recorded once a recorder is installed (the [metrics] listener does it).
    let _ = concierge::telemetry::metrics_handle();
    let app = shop(Db::Sqlite).await.unwrap();
    let agent = register(&app, "buyer-bot").await;
    // Two shirts at list + shipping is 10,599; the token has 9,000.
    let tok = token(&app, &agent, &["negotiate"], Some(9000), &[]).await;
    let mut ws = connect(&app, Some(&agent), Some(&tok)).await.unwrap();
    let opened = open(
        &mut ws,
        "r-1",
        json!([{"variant_id": SHIRT, "quantity": 2}]),
        json!({}),
    )
    .await;
    let id = opened["negotiation_id"].as_str().unwrap().to_string();
    // Even a generous offer over the limit is not accepted; the brand's counter fits the limit.
    let r = call(
        &mut ws,
        &offer(&agent, &id, 1, terms(&[(SHIRT, 2, 5000)], "standard")),
    )
    .await;
    assert_eq!(r["type"], "offer", "{r}");
    let unit = r["terms"]["lines"][0]["unit_price"].as_i64().unwrap();
    assert!(unit * 2 + 599 <= 9000 && unit >= 3750, "{r}");
    let d = call(&mut ws, &accept(&agent, &id, 3, &r["terms"])).await;
    check_deal(&app, &agent, &d);
    let left = 9000 - d["deal"]["total"].as_i64().unwrap();
    // What is left cannot buy another pair even at the floors.
    let r = open(
        &mut ws,
        "r-2",
        json!([{"variant_id": SHIRT, "quantity": 2}]),
        json!({}),
    )
    .await;
    assert_eq!(r["code"], "spending_limit", "{left} left: {r}");

    // Staff see it on the Negotiations page, with its transcript and chart.
    crate::inbox::add_staff(&app, "sam@example.com", "agent").await;
    let staff = crate::inbox::login(&app, "sam@example.com").await;
    let get = |path: String| {
        let cookie = staff.cookie.clone();
        let c = crate::inbox::client();
        let url = app.url(&path);
        async move {
            let r = c
                .get(url)
                .header("cookie", format!("concierge_staff={cookie}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, page) = get("/inbox/negotiations".into()).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&id) && page.contains("buyer-bot") && page.contains("agreed"),
        "{page}"
    );
    assert!(page.contains("negotiations-by-category") && page.contains("T-Shirt"));
    let (_, filtered) = get("/inbox/negotiations?status=ended".into()).await;
    assert!(!filtered.contains(&id), "the status filter applies");
    let (status, page) = get(format!("/inbox/negotiations/{id}")).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<svg class=\"negotiation-chart\"")
            && page.contains("<polyline class=\"brand\""),
        "{page}"
    );
    assert!(page.contains(d["deal_hash"].as_str().unwrap()));
    // And in the metrics.
    let metrics = concierge::telemetry::metrics_handle().render();
    assert!(
        metrics.contains("concierge_negotiations_agreed_total"),
        "{metrics}"
    );
    assert!(metrics.contains("concierge_negotiation_move_seconds"));
    app.stop().await;
}

// ---- resume ----

async fn resume_after_a_dropped_socket_and_a_restart(db: Db) {
    let Some(app) = shop(db).await else { return };
    let agent = register(&app, "buyer-bot").await;
    let tok = token(&app, &agent, &["negotiate"], None, &[]).await;
    let mut ws = connect(&app, Some(&agent), Some(&tok)).await.unwrap();
    let opened = open(
        &mut ws,
        "r-1",
        json!([{"variant_id": KETTLE, "quantity": 1}]),
        json!({"deadline_ms": 8000}),
    )
    .await;
    let id = opened["negotiation_id"].as_str().unwrap().to_string();
    let deadline = opened["deadline_at"].as_i64().unwrap();
    let r2 = call(
        &mut ws,
        &offer(&agent, &id, 1, terms(&[(KETTLE, 1, 8000)], "pickup")),
    )
    .await;
    assert_eq!(r2["round"], 2, "{r2}");
    drop(ws);

    // A new socket resumes: the same state.
    let mut ws = connect(&app, Some(&agent), Some(&tok)).await.unwrap();
    let s = call(&mut ws, &json!({"type": "resume", "negotiation_id": id})).await;
    assert_eq!(s["type"], "state", "{s}");
    assert_eq!(s["status"], "offering");
    assert_eq!(s["round"], 2);
    assert_eq!(s["your_turn"], true);
    assert_eq!(s["last_brand_offer"]["terms"], r2["terms"]);
    assert_eq!(s["last_brand_offer"]["sig"], r2["sig"]);
    assert_eq!(s["deadline_at"], deadline);
    let r4 = call(
        &mut ws,
        &offer(&agent, &id, 3, terms(&[(KETTLE, 1, 8500)], "pickup")),
    )
    .await;
    assert_eq!(r4["round"], 4, "{r4}");
    drop(ws);

    // The server restarts: the state is rebuilt from the transcript.
    let app = app.restart().await;
    let mut ws = connect(&app, Some(&agent), Some(&tok)).await.unwrap();
    let s = call(&mut ws, &json!({"type": "resume", "negotiation_id": id})).await;
    assert_eq!(s["status"], "offering", "{s}");
    assert_eq!(s["round"], 4);
    assert_eq!(s["last_brand_offer"]["terms"], r4["terms"]);
    assert_eq!(s["last_agent_offer"]["round"], 3);
    // A replay of the move before the restart is stale; the deadline still holds, and passes
    // while the socket waits: the server ends it.
    let r = call(
        &mut ws,
        &offer(&agent, &id, 3, terms(&[(KETTLE, 1, 8500)], "pickup")),
    )
    .await;
    assert_eq!(r["code"], "stale_round", "{r}");
    let ended = recv(&mut ws).await;
    assert!(
        concierge::util::now_ms() >= deadline,
        "not before the deadline"
    );
    assert_eq!(
        ended,
        json!({"type": "ended", "negotiation_id": id, "reason": "deadline"})
    );
    let r = call(
        &mut ws,
        &offer(&agent, &id, 5, terms(&[(KETTLE, 1, 9000)], "pickup")),
    )
    .await;
    assert_eq!(r["code"], "negotiation_closed", "{r}");
    let s = call(&mut ws, &json!({"type": "resume", "negotiation_id": id})).await;
    assert_eq!(
        (s["status"].as_str(), s["reason"].as_str()),
        (Some("expired"), Some("deadline")),
        "{s}"
    );
    app.stop().await;
}
crate::on_both!(resume_after_a_dropped_socket_and_a_restart);

// ---- many at once ----

async fn a_hundred_negotiations_on_ten_sockets_all_finish(db: Db) {
    let Some(app) = shop(db).await else { return };
    let agent = std::sync::Arc::new(register(&app, "fleet").await);
    let tok = token(&app, &agent, &["negotiate"], None, &[]).await;
    let mut tasks = Vec::new();
    for s in 0..10 {
        let ws = connect(&app, Some(&agent), Some(&tok)).await.unwrap();
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            // Open ten at once, then drive them all interleaved on this one socket.
            for n in 0..10 {
                let f = json!({"type": "open", "request_id": format!("s{s}-n{n}"), "items": [{"variant_id": if n % 2 == 0 { SHIRT } else { KETTLE }, "quantity": 1 + n % 3}], "max_rounds": 16});
                sink.send(Message::Text(f.to_string().into())).await.unwrap();
            }
            let mut budgets = std::collections::HashMap::new();
            let mut done = Vec::new();
            while done.len() < 10 {
                let m = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.expect("frame").unwrap().unwrap();
                let Message::Text(t) = m else { continue };
                let f: Value = serde_json::from_str(&t).unwrap();
                let id = f["negotiation_id"].as_str().unwrap_or_default().to_string();
                match f["type"].as_str().unwrap() {
                    "opened" => {
                        let line = &f["issues"]["lines"][0];
                        let list = line["list_price"].as_i64().unwrap();
                        let (v, q) = (line["variant_id"].as_str().unwrap().to_string(), f["list_terms"]["lines"][0]["quantity"].as_i64().unwrap());
                        // Half the buyers can afford the floor zone, half cannot.
                        let budget = if budgets.len() % 2 == 0 { list * 95 / 100 } else { list * 70 / 100 };
                        budgets.insert(id.clone(), (v.clone(), q, budget, list / 2));
                        let o = offer(&agent, &id, 1, terms(&[(&v, q, list / 2)], "standard"));
                        sink.send(Message::Text(o.to_string().into())).await.unwrap();
                    }
                    "offer" => {
                        let round = f["round"].as_u64().unwrap();
                        let (v, q, budget, start) = budgets[&id].clone();
                        let theirs = f["terms"]["lines"][0]["unit_price"].as_i64().unwrap();
                        let k = (round / 2) as i64;
                        let mine = (start + (budget - start) * k / 7).min(budget);
                        let next = if theirs <= mine {
                            accept(&agent, &id, round + 1, &f["terms"])
                        } else if round + 1 >= 16 {
                            json!({"type": "end", "negotiation_id": id, "reason": "no zone"})
                        } else {
                            offer(&agent, &id, round + 1, terms(&[(&v, q, mine)], "standard"))
                        };
                        sink.send(Message::Text(next.to_string().into())).await.unwrap();
                    }
                    "deal" | "ended" => done.push((id, f)),
                    other => panic!("unexpected {other}: {f}"),
                }
            }
            done
        }));
    }
    let mut deals = 0;
    let mut ended = 0;
    for t in tasks {
        for (_, f) in t.await.unwrap() {
            if f["type"] == "deal" {
                check_deal(&app, &agent, &f);
                for l in f["deal"]["terms"]["lines"].as_array().unwrap() {
                    let floor = if l["variant_id"] == SHIRT { 3750 } else { 9600 };
                    assert!(l["unit_price"].as_i64().unwrap() >= floor, "{f}");
                }
                deals += 1;
            } else {
                ended += 1;
            }
        }
    }
    assert_eq!(deals + ended, 100);
    assert!(deals >= 40, "agreements where the zones overlap: {deals}");
    let all = concierge::negotiate::store::list(
        app.store(),
        &concierge::negotiate::store::ListFilter {
            limit: 1000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(all.len(), 100, "none lost");
    assert!(
        all.iter()
            .all(|n| n.status == "agreed" || n.status == "ended"),
        "every one finished"
    );
    assert_eq!(all.iter().filter(|n| n.status == "agreed").count(), deals);
    app.stop().await;
}
crate::on_both!(a_hundred_negotiations_on_ten_sockets_all_finish);

// ---- NegMAS agents over the real socket ----

/// The Python of the client venv (scripts/install-python-clients), or None (the test skips) —
/// unless CONCIERGE_REQUIRE_PYCLIENTS is set.
fn python() -> Option<std::path::PathBuf> {
    let venv = std::env::var("CONCIERGE_PYCLIENTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| crate::helpers::repo_path("target/pyclients"));
    let py = venv.join("bin/python");
    let ready = py.exists()
        && std::process::Command::new(&py)
            .args(["-c", "import negmas, websockets"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ready {
        return Some(py);
    }
    if std::env::var("CONCIERGE_REQUIRE_PYCLIENTS").is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!(
            "negmas is required but missing from {}: run scripts/install-python-clients",
            venv.display()
        );
    }
    eprintln!(
        "skipped: no negmas in {} (run scripts/install-python-clients)",
        venv.display()
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negmas_negotiators_reach_deals_within_the_floor_and_limit() {
    let Some(py) = python() else { return };
    let app = shop(Db::Sqlite).await.unwrap();
    let agent = register(&app, "negmas").await;
    let limit = 1_000_000;
    let tok = token(&app, &agent, &["negotiate"], Some(limit), &[]).await;
    let (list, floor) = (5000, 3750);
    let cfg = json!({
        "base": app.addr,
        "key_seed": STANDARD.encode(agent.key.to_bytes()),
        "key_id": agent.key_id,
        "token": tok,
        "service_key": identity::encode_public_key(&service_public(&app)),
        "variant_id": SHIRT, "quantity": 2, "list_price": list, "floor": floor, "cost": 2000,
        "ship_price": 599, "ship_cost": 450, "shipping": "standard",
        "budgets": [4100, 4400, 4700, 5000],
        "negotiators": ["boulware", "linear", "conceder", "tit_for_tat", "micro", "aspiration"],
        "n_steps": 10, "compare": false,
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), cfg.to_string()).unwrap();
    let out = tokio::process::Command::new(&py)
        .arg(crate::helpers::repo_path("tests/py/negmas_agent.py"))
        .arg(file.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "negmas_agent.py: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 24);
    let mut total = 0;
    for r in runs {
        if r["agreement"] == true {
            assert_eq!(r["verified"], true, "{r}");
            assert!(
                r["price"].as_i64().unwrap() >= floor,
                "below the floor: {r}"
            );
            total += r["total"].as_i64().unwrap();
            // The deal is stored with both signatures, as the agent got it.
            let (status, d) = signed_get(
                &app,
                &agent,
                &format!("/agent/v1/deals/{}", r["deal_id"].as_str().unwrap()),
            )
            .await;
            assert_eq!(status, 200, "{d}");
        }
    }
    assert!(total <= limit);
    // The time-based buyers and NegMAS's AspirationNegotiator reach deals where the zones
    // overlap. (NaiveTitForTat and MiCRO mirror the brand's late concessions and reach none
    // within 10 steps — nor do they against NegMAS's own AspirationNegotiator as the brand.)
    for name in ["boulware", "linear", "conceder", "aspiration"] {
        let deals = runs
            .iter()
            .filter(|r| r["negotiator"] == name && r["agreement"] == true)
            .count();
        assert!(
            deals >= 1,
            "{name} reached no deal although every budget is above the floor: {v}"
        );
    }
    let full_budget = runs.iter().filter(|r| {
        r["budget"] == list
            && ["boulware", "linear", "conceder", "aspiration"]
                .contains(&r["negotiator"].as_str().unwrap())
    });
    assert!(
        full_budget.clone().all(|r| r["agreement"] == true),
        "a buyer ready to pay list gets a deal: {v}"
    );
    app.stop().await;
}
