//! Risk controls on agent commerce (issue #15): exposure limits checked atomically on `open` and
//! on every move that raises exposure, financial circuit breakers (tripped by settlement
//! failures, half-open after the cool-down, closed by a success, tripped and reset by staff,
//! persisted and audited), and counterparty monitoring on the inbox's Agents page — driven over
//! the real negotiation WebSocket, the inbox's forms, and the settlement saga's face
//! (`concierge::risk::settlement_finished`).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use concierge::commerce::{Customer, Product, Variant};
use concierge::gateway::{identity, tokens};
use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Db, TestApp, repo_path};
use crate::inbox::{add_staff, login};

const KETTLE: &str = "v-kettle";
/// The kettle's list price: with the one free shipping option, one kettle's list value.
const KETTLE_PRICE: i64 = 12_000;
const CUSTOMER: &str = "cust_ana";
const OTHER_CUSTOMER: &str = "cust_bo";

/// A brand directory: the shipped voice and policies, and a negotiation file with `risk`
/// appended (no quantity breaks, one free shipping option, 60 s deadlines).
fn brand(risk: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = repo_path("brand");
    for f in ["policy.toml", "voice.toml"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    for e in std::fs::read_dir(src.join("policies")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("policies").join(e.file_name())).unwrap();
    }
    std::fs::write(
        dir.path().join("negotiation.toml"),
        format!("deadline_ms = 60000\n{risk}\n"),
    )
    .unwrap();
    dir
}

fn customer(id: &str, first: &str) -> Customer {
    Customer {
        id: id.into(),
        source: "test".into(),
        first_name: first.into(),
        last_name: "Lima".into(),
        emails: vec![format!("{}@example.com", first.to_lowercase())],
        phones: vec![],
        addresses: vec![],
        payment_methods: vec![],
        note: None,
        created_at: None,
        updated_at: None,
    }
}

/// A shop selling a tea kettle ($120, stock untracked), with two customers, under `risk`.
async fn shop(db: Db, risk: &str) -> Option<(TestApp, tempfile::TempDir)> {
    let dir = brand(risk);
    let brand_dir = dir.path().to_path_buf();
    let app = TestApp::spawn_on_with(db, move |c| c.brand.dir = brand_dir).await?;
    let s = app.store();
    s.put_product(&Product {
        id: "p-kettle".into(),
        source: "test".into(),
        name: "Tea Kettle".into(),
        product_type: Some("Kitchen".into()),
        vendor: None,
        description: None,
        tags: vec![],
        option_names: vec![],
        variants: vec![Variant {
            id: KETTLE.into(),
            product_id: "p-kettle".into(),
            title: None,
            sku: None,
            options: Default::default(),
            price: KETTLE_PRICE,
            currency: "USD".into(),
            available: true,
            stock: None,
        }],
        created_at: None,
        updated_at: None,
    })
    .await
    .unwrap();
    s.put_customer(&customer(CUSTOMER, "Ana")).await.unwrap();
    s.put_customer(&customer(OTHER_CUSTOMER, "Bo"))
        .await
        .unwrap();
    Some((app, dir))
}

struct Agent {
    id: String,
    key: SigningKey,
    key_id: String,
    token: String,
}

async fn agent(app: &TestApp, name: &str, customer: &str) -> Agent {
    let crate::negotiate::Agent { id, key, key_id } = crate::negotiate::register(app, name).await;
    let now = concierge::util::now_ms();
    let spec = tokens::TokenSpec {
        agent_id: id.clone(),
        customer_id: customer.into(),
        ops: vec!["negotiate".into()],
        spend_limit: None,
        categories: vec![],
        expires_at: now + 3_600_000,
        escalate_over_limit: false,
    };
    let service = concierge::gateway::service_key(&app.state).unwrap();
    let token = tokens::issue(app.store(), service, &spec, "test", now)
        .await
        .unwrap()
        .0;
    Agent {
        id,
        key,
        key_id,
        token,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, a: &Agent) -> Ws {
    let http = app.url("/agent/v1/negotiations/ws");
    let mut req = http
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    let h = identity::sign_request(
        &a.key,
        &a.key_id,
        "GET",
        &http,
        b"",
        &concierge::util::random_token(12),
        concierge::util::now_ms() / 1000,
    );
    for (name, value) in h.pairs() {
        req.headers_mut().insert(name, value.parse().unwrap());
    }
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", a.token).parse().unwrap(),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade")
        .0
}

async fn send(ws: &mut Ws, frame: &Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
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

fn open_frame(request_id: &str, quantity: i64) -> Value {
    json!({"type": "open", "request_id": request_id,
           "items": [{"variant_id": KETTLE, "quantity": quantity}]})
}

fn signed(a: &Agent, mut frame: Value) -> Value {
    let sig = STANDARD.encode(
        a.key
            .sign(concierge::util::jcs(&frame).as_bytes())
            .to_bytes(),
    );
    frame["sig"] = json!(sig);
    frame
}

fn offer(a: &Agent, id: &str, round: u64, quantity: i64, unit_price: i64) -> Value {
    signed(
        a,
        json!({"type": "offer", "negotiation_id": id, "round": round, "terms": {
            "lines": [{"variant_id": KETTLE, "quantity": quantity, "unit_price": unit_price}],
            "shipping": "standard", "currency": "USD"}}),
    )
}

/// Opens a negotiation for one kettle and makes a deal on the brand's first counter-offer.
async fn deal(ws: &mut Ws, a: &Agent, request_id: &str) -> Value {
    let opened = call(ws, &open_frame(request_id, 1)).await;
    assert_eq!(opened["type"], "opened", "{opened}");
    let id = opened["negotiation_id"].as_str().unwrap();
    let counter = call(ws, &offer(a, id, 1, 1, 9_700)).await;
    assert_eq!(counter["type"], "offer", "{counter}");
    let hash = concierge::util::jcs_sha256(&counter["terms"]);
    let d = call(
        ws,
        &signed(
            a,
            json!({"type": "accept", "negotiation_id": id, "round": 3, "terms_hash": hash}),
        ),
    )
    .await;
    assert_eq!(d["type"], "deal", "{d}");
    d
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    use sqlx::Row;
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    row.try_get::<i64, _>(0).unwrap()
}

// ---- exposure ----

/// 200 concurrent `open`s from one agent on 20 sockets against a cap that fits 50 kettles:
/// exactly 50 are admitted, the rest refused `limit` naming the agent cap; a second agent is
/// unaffected until the brand-wide cap; ending one negotiation frees its room.
async fn risk_concurrent_opens_admit_exactly_what_fits(db: Db) {
    let Some((app, _brand)) = shop(
        db,
        &format!(
            "[risk]\nmax_agent_exposure = {}\nmax_brand_exposure = {}\nmax_negotiations_per_agent = 1000",
            50 * KETTLE_PRICE,
            75 * KETTLE_PRICE
        ),
    )
    .await
    else {
        return;
    };
    let a = agent(&app, "greedy-bot", CUSTOMER).await;
    let b = agent(&app, "other-bot", OTHER_CUSTOMER).await;
    let mut tasks = Vec::new();
    for s in 0..20 {
        let mut ws = connect(&app, &a).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                send(&mut ws, &open_frame(&format!("r-{s}-{i}"), 1)).await;
            }
            let mut frames = Vec::new();
            for _ in 0..10 {
                frames.push(recv(&mut ws).await);
            }
            (ws, frames)
        }));
    }
    let mut opened = Vec::new();
    let mut refused = 0;
    let mut sockets = Vec::new();
    for t in tasks {
        let (ws, frames) = t.await.unwrap();
        sockets.push(ws); // kept open: their negotiations stay theirs
        for f in frames {
            match f["type"].as_str().unwrap() {
                "opened" => opened.push(f["negotiation_id"].as_str().unwrap().to_string()),
                _ => {
                    assert_eq!(f["code"], "limit", "{f}");
                    assert!(
                        f["message"]
                            .as_str()
                            .unwrap()
                            .starts_with("max_agent_exposure"),
                        "{f}"
                    );
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(opened.len(), 50, "exactly as many as fit");
    assert_eq!(refused, 150);
    let stored = count(
        &app,
        &format!(
            "SELECT COUNT(*) FROM negotiations WHERE agent_id = '{}'",
            a.id
        ),
    )
    .await;
    assert_eq!(stored, 50);
    assert_eq!(
        app.state.risk.exposure(concierge::util::now_ms()).brand,
        50 * KETTLE_PRICE
    );

    // The second agent is unaffected until the brand-wide cap (25 more kettles).
    let mut wb = connect(&app, &b).await;
    for i in 0..25 {
        let f = call(&mut wb, &open_frame(&format!("b-{i}"), 1)).await;
        assert_eq!(f["type"], "opened", "#{i}: {f}");
    }
    let f = call(&mut wb, &open_frame("b-25", 1)).await;
    assert_eq!(f["code"], "limit", "{f}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .starts_with("max_brand_exposure"),
        "{f}"
    );

    // Ending one of the first agent's negotiations (from another of its sockets) frees room
    // under the brand's cap, for agent B.
    let mut wa = connect(&app, &a).await;
    let ended = call(
        &mut wa,
        &json!({"type": "end", "negotiation_id": opened[0], "reason": "changed my mind"}),
    )
    .await;
    assert_eq!(ended["type"], "ended", "{ended}");
    let f = call(&mut wb, &open_frame("b-26", 1)).await;
    assert_eq!(
        f["type"], "opened",
        "room freed by the ended negotiation: {f}"
    );
    app.stop().await;
}
on_both!(risk_concurrent_opens_admit_exactly_what_fits);

/// A brand counter-offer that would raise the agent's exposure over its cap ends the
/// negotiation (`limit`); a concurrent-negotiation cap refuses the next `open`.
async fn risk_offers_that_raise_exposure_are_checked(db: Db) {
    let Some((app, _brand)) = shop(
        db,
        &format!(
            "[risk]\nmax_agent_exposure = {}\nmax_negotiations_per_agent = 2",
            3 * KETTLE_PRICE
        ),
    )
    .await
    else {
        return;
    };
    let a = agent(&app, "bulk-bot", CUSTOMER).await;
    let mut ws = connect(&app, &a).await;
    let opened = call(&mut ws, &open_frame("r-1", 1)).await;
    assert_eq!(opened["type"], "opened", "{opened}");
    let id = opened["negotiation_id"].as_str().unwrap().to_string();
    // Five kettles: the brand's answer would be worth far more than 3 kettles.
    let r = call(&mut ws, &offer(&a, &id, 1, 5, 9_000)).await;
    assert_eq!(r["type"], "ended", "{r}");
    assert_eq!(r["reason"], "limit", "{r}");
    assert_eq!(app.state.risk.exposure(concierge::util::now_ms()).brand, 0);
    let reason = {
        use sqlx::Row;
        sqlx::query("SELECT end_reason FROM negotiations WHERE id = $1")
            .bind(id.as_str())
            .fetch_one(app.store().pool())
            .await
            .unwrap()
            .try_get::<Option<String>, _>("end_reason")
            .unwrap()
    };
    assert_eq!(reason.as_deref(), Some("limit"));
    // Two open at once at most.
    for r in ["r-2", "r-3"] {
        assert_eq!(call(&mut ws, &open_frame(r, 1)).await["type"], "opened");
    }
    let f = call(&mut ws, &open_frame("r-4", 1)).await;
    assert_eq!(f["code"], "limit", "{f}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .starts_with("max_negotiations_per_agent"),
        "{f}"
    );
    app.stop().await;
}
on_both!(risk_offers_that_raise_exposure_are_checked);

// ---- breakers ----

/// Breakers that trip on more than half of 3+ settlements failing, with a `cooldown_ms`
/// cool-down and one probe.
fn breaker(cooldown_ms: i64) -> String {
    format!(
        "[risk.breaker]\nfailure_window = 10\nmin_settlements = 3\nfailure_rate = 0.5\nfailures = 0\ncooldown_ms = {cooldown_ms}\nhalf_open_probes = 1"
    )
}

async fn breaker_events(app: &TestApp) -> Vec<(String, String, String, String)> {
    app.state.risk.flush().await;
    let mut out: Vec<_> = concierge::risk::store::history(app.store(), "", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.breaker, e.from, e.to, e.actor_kind))
        .collect();
    out.reverse();
    out
}

/// Injected settlement failures trip the brand's breaker: the negotiation in flight is ended
/// `circuit_open`, new opens (any agent's) are refused `circuit_open`, settling is refused;
/// after the cool-down one probe goes through, a successful settlement closes the breaker.
/// Every transition is stored with its action-log entry, and the chain verifies.
async fn risk_settlement_failures_trip_the_breaker_and_a_success_closes_it(db: Db) {
    concierge::telemetry::metrics_handle();
    let Some((app, _brand)) = shop(db, &breaker(4000)).await else {
        return;
    };
    let a = agent(&app, "shaky-bot", CUSTOMER).await;
    let b = agent(&app, "bystander-bot", OTHER_CUSTOMER).await;
    let mut ws = connect(&app, &a).await;
    let opened = call(&mut ws, &open_frame("in-flight", 1)).await;
    let in_flight = opened["negotiation_id"].as_str().unwrap().to_string();
    let state = &app.state;
    concierge::risk::settlement_allowed(state, &a.id)
        .await
        .expect("closed: settling is allowed");
    // One success, then failures: 2 of 3 failed is over 50 %.
    concierge::risk::settlement_finished(state, &a.id, CUSTOMER, 5_000, true);
    concierge::risk::settlement_finished(state, &a.id, CUSTOMER, 5_000, false);
    concierge::risk::settlement_finished_after(
        state,
        &a.id,
        CUSTOMER,
        5_000,
        false,
        Some("payment_declined"),
        None,
    );
    let ended = recv(&mut ws).await;
    assert_eq!(ended["type"], "ended", "{ended}");
    assert_eq!(ended["negotiation_id"], in_flight.as_str());
    assert_eq!(ended["reason"], "circuit_open");
    let f = call(&mut ws, &open_frame("refused", 1)).await;
    assert_eq!(f["code"], "circuit_open", "{f}");
    let mut wb = connect(&app, &b).await;
    let f = call(&mut wb, &open_frame("b-refused", 1)).await;
    assert_eq!(f["code"], "circuit_open", "the brand's breaker: {f}");
    let why = concierge::risk::settlement_allowed(state, &a.id)
        .await
        .unwrap_err();
    assert!(why.starts_with("circuit_open"), "{why}");

    // After the cool-down: half-open, one probe.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let probe = call(&mut wb, &open_frame("probe", 1)).await;
    assert_eq!(probe["type"], "opened", "the probe goes through: {probe}");
    let f = call(&mut ws, &open_frame("after-probe", 1)).await;
    assert_eq!(f["code"], "circuit_open", "probes taken: {f}");
    concierge::risk::settlement_allowed(state, &a.id)
        .await
        .expect("half-open: settling is allowed");
    concierge::risk::settlement_finished_after(
        state,
        &b.id,
        OTHER_CUSTOMER,
        5_000,
        true,
        None,
        Some(Duration::from_millis(1200)),
    );
    let f = call(&mut ws, &open_frame("closed-again", 1)).await;
    assert_eq!(f["type"], "opened", "a success closed it: {f}");

    let brand: Vec<_> = breaker_events(&app)
        .await
        .into_iter()
        .filter(|e| e.0 == "brand")
        .map(|e| (e.1, e.2, e.3))
        .collect();
    let s = |x: &str| x.to_string();
    assert_eq!(
        brand,
        [
            (s("closed"), s("open"), s("system")),
            (s("open"), s("half_open"), s("system")),
            (s("half_open"), s("closed"), s("system")),
        ]
    );
    let audited = app
        .store()
        .audit_entries(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.tool == "risk_breaker" && e.args["breaker"] == "brand")
        .count();
    assert_eq!(audited, 3);
    assert!(app.store().verify_audit_chain().await.unwrap().is_intact());
    let metrics = concierge::telemetry::metrics_handle().render();
    for name in [
        "concierge_risk_breaker_state",
        "concierge_settlement_outcomes_total",
        "concierge_risk_exposure",
        "concierge_risk_breaker_trips_total",
        "concierge_settlement_latency_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    assert!(metrics.contains("reason=\"payment_declined\""));
    app.stop().await;
}
on_both!(risk_settlement_failures_trip_the_breaker_and_a_success_closes_it);

/// Deals count as exposure until their settlement finishes; a restart rebuilds the book from
/// the store: open breakers stay open, the failure windows come back from `settlements` rows,
/// and settled deals no longer count (a deal whose settlement failed may still settle with
/// another payment method: it counts until its `valid_until`).
async fn risk_the_book_survives_a_restart(db: Db) {
    let Some((app, brand_dir)) = shop(db, &breaker(600_000)).await else {
        return;
    };
    let a = agent(&app, "dealer-bot", CUSTOMER).await;
    let mut ws = connect(&app, &a).await;
    let mut deals = Vec::new();
    for i in 0..3 {
        deals.push(deal(&mut ws, &a, &format!("d-{i}")).await);
    }
    let totals: i64 = deals
        .iter()
        .map(|d| d["deal"]["total"].as_i64().unwrap())
        .sum();
    let now = concierge::util::now_ms;
    assert_eq!(app.state.risk.exposure(now()).brand, totals, "deals count");
    // Two settlements failed (as the saga would store them), one is still running.
    for (i, status) in ["failed", "failed", "running"].iter().enumerate() {
        let d = &deals[i]["deal"];
        store_settlement(
            &app,
            Stored {
                deal_id: d["deal_id"].as_str().unwrap(),
                agent_id: &a.id,
                customer_id: CUSTOMER,
                total: d["total"].as_i64().unwrap(),
                status,
                reason: None,
                order_id: None,
                compensated: false,
                at: now(),
            },
        )
        .await;
    }
    // A negotiation in flight counts at the brand's latest offer (opened for 2 kettles, the
    // brand's counter-offer is for the 3 the agent asked for), not its list value.
    let opened = call(&mut ws, &open_frame("live", 2)).await;
    let live = opened["negotiation_id"].as_str().unwrap().to_string();
    let counter = call(&mut ws, &offer(&a, &live, 1, 3, 9_700)).await;
    assert_eq!(counter["type"], "offer", "{counter}");
    assert_eq!(counter["terms"]["lines"][0]["quantity"], 3, "{counter}");
    let offered: i64 = counter["terms"]["lines"][0]["unit_price"].as_i64().unwrap() * 3;
    assert!(offered > 2 * KETTLE_PRICE, "{counter}");
    // (The settlement rows above were written behind the running book's back: it learns of
    // them at the restart.)
    assert_eq!(app.state.risk.exposure(now()).brand, totals + offered);
    drop(ws);
    let app = app.restart().await;
    let third = deals[2]["deal"]["total"].as_i64().unwrap();
    assert_eq!(
        app.state.risk.exposure(now()).brand,
        totals + offered,
        "the deals not settled (two failed, one settling: each may still settle), and the live \
         negotiation at the brand's offer"
    );
    let mut ws = connect(&app, &a).await;
    let ended = call(
        &mut ws,
        &json!({"type": "end", "negotiation_id": live, "reason": "done"}),
    )
    .await;
    assert_eq!(ended["type"], "ended", "{ended}");
    assert_eq!(app.state.risk.exposure(now()).brand, totals);
    // The window came back with 2 failures of 2; min_settlements is 3: one more failure trips.
    let state = &app.state;
    concierge::risk::settlement_allowed(state, &a.id)
        .await
        .unwrap();
    concierge::risk::settlement_finished(state, &a.id, CUSTOMER, third, false);
    assert_eq!(
        app.state.risk.exposure(now()).brand,
        totals,
        "a failed settlement leaves its deal counting"
    );
    assert!(
        concierge::risk::settlement_allowed(state, &a.id)
            .await
            .is_err()
    );
    app.state.risk.flush().await;
    // An open breaker stays open across a restart.
    drop(ws);
    let app = app.restart().await;
    let mut ws = connect(&app, &a).await;
    let f = call(&mut ws, &open_frame("after-restart", 1)).await;
    assert_eq!(f["code"], "circuit_open", "{f}");
    drop(brand_dir);
    app.stop().await;
}
on_both!(risk_the_book_survives_a_restart);

// ---- staff ----

async fn page(staff: &crate::inbox::Staff, app: &TestApp, path: &str) -> String {
    let r = staff
        .client
        .get(app.url(path))
        .header("cookie", format!("concierge_staff={}", staff.cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.unwrap()
}

/// Staff see the breakers on the Risk page, trip an agent's breaker (that agent is refused
/// `circuit_open`, others are not), reset it, and both are in the history and the action log;
/// forms need the CSRF token and a breaker that exists.
async fn risk_staff_trip_and_reset_from_the_inbox_are_audited(db: Db) {
    let Some((app, _brand)) = shop(db, "[risk]\nmax_agent_exposure = 10000000").await else {
        return;
    };
    let a = agent(&app, "suspect-bot", CUSTOMER).await;
    let b = agent(&app, "fine-bot", OTHER_CUSTOMER).await;
    add_staff(&app, "risk@example.com", "agent").await;
    let staff = login(&app, "risk@example.com").await;
    let html = page(&staff, &app, "/inbox/risk").await;
    assert!(
        html.contains("data-breaker=\"brand\" data-state=\"closed\""),
        "{html}"
    );
    assert!(
        html.contains("data-testid=\"brand-exposure\">$0.00"),
        "{html}"
    );

    // No CSRF token: refused, nothing tripped.
    let r = staff
        .client
        .post(app.url("/inbox/risk/trip"))
        .header("cookie", format!("concierge_staff={}", staff.cookie))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("breaker=agent%3A{}&reason=x", a.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let breaker = format!("agent:{}", a.id);
    let (status, to) = staff
        .post(
            "/inbox/risk/trip",
            &[("breaker", breaker.as_str()), ("reason", "odd settlements")],
        )
        .await;
    assert_eq!((status, to.as_str()), (303, "/inbox/risk"));
    let mut wa = connect(&app, &a).await;
    let f = call(&mut wa, &open_frame("a-1", 1)).await;
    assert_eq!(f["code"], "circuit_open", "{f}");
    let mut wb = connect(&app, &b).await;
    let f = call(&mut wb, &open_frame("b-1", 1)).await;
    assert_eq!(f["type"], "opened", "{f}");
    let html = page(&staff, &app, "/inbox/risk").await;
    assert!(
        html.contains(&format!("data-breaker=\"{breaker}\" data-state=\"open\"")),
        "{html}"
    );
    assert!(html.contains("staff: odd settlements"), "{html}");
    assert!(html.contains("Breaker agent:"), "the flash: {html}");
    // A breaker that does not exist.
    let (status, _) = staff
        .post(
            "/inbox/risk/trip",
            &[("breaker", "planet:mars"), ("reason", "x")],
        )
        .await;
    assert_eq!(status, 303);
    let html = page(&staff, &app, "/inbox/risk").await;
    assert!(html.contains("Not tripped"), "{html}");
    let (status, _) = staff
        .post(
            "/inbox/risk/trip",
            &[("breaker", "agent:nobody"), ("reason", "x")],
        )
        .await;
    assert_eq!(status, 303);
    let html = page(&staff, &app, "/inbox/risk").await;
    assert!(html.contains("there is no agent nobody"), "{html}");
    assert!(!html.contains("data-breaker=\"agent:nobody\""), "{html}");

    let (status, _) = staff
        .post("/inbox/risk/reset", &[("breaker", breaker.as_str())])
        .await;
    assert_eq!(status, 303);
    let f = call(&mut wa, &open_frame("a-2", 1)).await;
    assert_eq!(f["type"], "opened", "reset: {f}");
    let events = breaker_events(&app).await;
    let staff_events: Vec<_> = events
        .iter()
        .filter(|e| e.0 == breaker)
        .map(|e| (e.1.as_str(), e.2.as_str(), e.3.as_str()))
        .collect();
    assert_eq!(
        staff_events,
        [("closed", "open", "staff"), ("open", "closed", "staff")]
    );
    let entries = app.store().audit_entries(0, 1000).await.unwrap();
    let audited: Vec<_> = entries
        .iter()
        .filter(|e| e.tool == "risk_breaker" && e.actor_kind == "staff")
        .collect();
    assert_eq!(audited.len(), 2);
    assert!(audited.iter().all(|e| e.actor_id.is_some()));
    assert!(app.store().verify_audit_chain().await.unwrap().is_intact());
    let html = page(&staff, &app, "/inbox/risk").await;
    assert!(html.contains("data-testid=\"breaker-history\""));
    assert!(html.contains("reset by staff"), "{html}");
    app.stop().await;
}
on_both!(risk_staff_trip_and_reset_from_the_inbox_are_audited);

// ---- monitoring ----

/// The Agents page shows each agent's figures; bad signatures and offers far outside the
/// ranges flag the agent that sent them, and a well-behaved one is not flagged.
async fn risk_agents_page_flags_misbehaving_agents(db: Db) {
    let Some((app, _brand)) = shop(db, "").await else {
        return;
    };
    let bad = agent(&app, "sloppy-bot", CUSTOMER).await;
    let good = agent(&app, "tidy-bot", OTHER_CUSTOMER).await;
    let mut ws = connect(&app, &bad).await;
    let opened = call(&mut ws, &open_frame("r-1", 1)).await;
    let id = opened["negotiation_id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let mut f = offer(&bad, &id, 1, 1, 9_000);
        f["sig"] = json!(STANDARD.encode([7u8; 64]));
        assert_eq!(call(&mut ws, &f).await["code"], "bad_signature");
    }
    // Over list (refused) and far under the floor (answered, but counted).
    for _ in 0..4 {
        let f = call(&mut ws, &offer(&bad, &id, 1, 1, KETTLE_PRICE + 1)).await;
        assert_eq!(f["code"], "terms_out_of_range", "{f}");
    }
    let f = call(&mut ws, &offer(&bad, &id, 1, 1, 100)).await;
    assert_ne!(f["type"], "error", "in range, answered: {f}");
    let mut wg = connect(&app, &good).await;
    let d = deal(&mut wg, &good, "g-1").await;
    // Its settlement failed after the order was made (a compensation).
    let now = concierge::util::now_ms();
    store_settlement(
        &app,
        Stored {
            deal_id: d["deal"]["deal_id"].as_str().unwrap(),
            agent_id: &good.id,
            customer_id: OTHER_CUSTOMER,
            total: d["deal"]["total"].as_i64().unwrap(),
            status: "failed",
            reason: Some("payment_declined"),
            order_id: Some("ord_1"),
            compensated: true,
            at: now,
        },
    )
    .await;
    app.state.risk.flush().await;

    add_staff(&app, "watch@example.com", "agent").await;
    let staff = login(&app, "watch@example.com").await;
    let html = page(&staff, &app, "/inbox/agents").await;
    let row = |agent_id: &str| {
        let start = html
            .find(&format!("data-agent=\"{agent_id}\""))
            .unwrap_or_else(|| panic!("no row for {agent_id}: {html}"));
        html[start..].split("</tr>").next().unwrap().to_string()
    };
    let bad_row = row(&bad.id);
    assert!(
        bad_row.contains("data-flag=\"signature failures\""),
        "{bad_row}"
    );
    assert!(
        bad_row.contains("data-flag=\"offers out of range\""),
        "{bad_row}"
    );
    assert!(bad_row.contains("sloppy-bot"), "{bad_row}");
    let good_row = row(&good.id);
    assert!(!good_row.contains("data-flag"), "{good_row}");
    let cells: Vec<&str> = good_row
        .split("<td>")
        .skip(1)
        .map(|c| c.split("</td>").next().unwrap())
        .collect();
    // Agent, negotiations, deals (rate), without deal, settlements, failed, compensations.
    assert_eq!(
        cells[1..7],
        ["1", "1 (100 %)", "0", "1", "1", "1"],
        "{good_row}"
    );
    app.stop().await;
}
on_both!(risk_agents_page_flags_misbehaving_agents);

/// A settlement attempt as the saga stores it (its row and its attempt's).
struct Stored<'a> {
    deal_id: &'a str,
    agent_id: &'a str,
    customer_id: &'a str,
    total: i64,
    status: &'a str,
    reason: Option<&'a str>,
    order_id: Option<&'a str>,
    compensated: bool,
    at: i64,
}

async fn store_settlement(app: &TestApp, s: Stored<'_>) {
    let finished = (s.status != "running").then_some(s.at);
    let mut tx = app.store().begin_write().await.unwrap();
    sqlx::query(
        "INSERT INTO settlements (deal_id, agent_id, customer_id, total, currency, status, reason, \
           order_id, started_at, finished_at, idempotency_key) \
         VALUES ($1, $2, $3, $4, 'USD', $5, $6, $7, $8, $9, 'k1')",
    )
    .bind(s.deal_id)
    .bind(s.agent_id)
    .bind(s.customer_id)
    .bind(s.total)
    .bind(s.status)
    .bind(s.reason)
    .bind(s.order_id)
    .bind(s.at)
    .bind(finished)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO settlement_attempts (deal_id, attempt, idempotency_key, agent_id, total, \
           status, reason, order_id, compensated, started_at, finished_at) \
         VALUES ($1, 1, 'k1', $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(s.deal_id)
    .bind(s.agent_id)
    .bind(s.total)
    .bind(s.status)
    .bind(s.reason)
    .bind(s.order_id)
    .bind(i64::from(s.compensated))
    .bind(s.at)
    .bind(finished)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}
