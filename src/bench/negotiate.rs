//! `concierge bench negotiate`: agent-to-agent negotiation over `GET /agent/v1/negotiations/ws`
//! (issue #14), against a server in this process on a fresh SQLite data dir with the brand's
//! `brand/negotiation.toml`:
//!
//! 1. per-round server time (frame read → answer stored and ready to send), p50/p99;
//! 2. a 20-round negotiation over one WebSocket (`open`, ten buyer offers and nine counter-
//!    offers, the brand's acceptance → `deal` stored with its audit entry), wall-clock p50/p99
//!    from the client;
//! 3. negotiations per second with N sockets, each running such negotiations back to back;
//! 4. with the Python clients installed (`scripts/install-python-clients`), NegMAS buyers
//!    (Boulware, Linear, Conceder, NaiveTitForTat, MiCRO, Aspiration) against the server, next
//!    to NegMAS's own AspirationNegotiator playing the brand in the same scenarios: agreement
//!    rate and the brand's mean utility (`tests/py/negmas_agent.py --compare`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use ed25519_dalek::SigningKey;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::app::Application;
use crate::bench::percentile;
use crate::commerce::{Customer, Product, Variant};
use crate::gateway::{identity, tokens};

const CUSTOMER: &str = "bench_buyer";
const SHIRT: &str = "bench-shirt";
const KETTLE: &str = "bench-kettle";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Bench {
    addr: SocketAddr,
    key: SigningKey,
    key_id: String,
    token: String,
}

fn product(id: &str, category: &str, variant: &str, price: i64) -> Product {
    Product {
        id: id.into(),
        source: "bench".into(),
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
            available: true,
            stock: None,
        }],
        created_at: None,
        updated_at: None,
    }
}

impl Bench {
    async fn connect(&self) -> anyhow::Result<Ws> {
        let http = format!(
            "http://{}{}",
            self.addr,
            crate::gateway::negotiation::WS_PATH
        );
        let mut req = http.replacen("http://", "ws://", 1).into_client_request()?;
        let h = identity::sign_request(
            &self.key,
            &self.key_id,
            "GET",
            &http,
            b"",
            &crate::util::random_token(12),
            crate::util::now_ms() / 1000,
        );
        for (name, value) in h.pairs() {
            req.headers_mut().insert(name, value.parse()?);
        }
        req.headers_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(ws)
    }

    fn sign(&self, mut frame: Value) -> Value {
        frame["sig"] = json!(crate::negotiate::frames::sign(&self.key, &frame));
        frame
    }
}

async fn call(ws: &mut Ws, frame: &Value) -> anyhow::Result<Value> {
    ws.send(Message::Text(frame.to_string().into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(_)) => continue,
            other => anyhow::bail!("socket closed: {other:?}"),
        }
    }
}

/// One scripted 20-round negotiation: the buyer offers under the floor nine times (rounds 1,
/// 3, …, 17; the brand counters each in rounds 2, …, 18), then offers the brand's own last
/// price in round 19, which the brand accepts (round 20: the signed deal).
async fn twenty_rounds(b: &Bench, ws: &mut Ws, request_id: &str) -> anyhow::Result<Value> {
    let opened = call(
        ws,
        &json!({"type": "open", "request_id": request_id, "items": [{"variant_id": SHIRT, "quantity": 2}],
                "max_rounds": 20, "deadline_ms": 60000}),
    )
    .await?;
    anyhow::ensure!(opened["type"] == "opened", "open: {opened}");
    let id = opened["negotiation_id"].clone();
    let mut last = Value::Null;
    for round in (1..=17).step_by(2) {
        let terms = json!({"lines": [{"variant_id": SHIRT, "quantity": 2, "unit_price": 2000 + round * 10}],
                           "shipping": "standard", "currency": "USD"});
        last = call(
            ws,
            &b.sign(json!({"type": "offer", "negotiation_id": id, "round": round, "terms": terms})),
        )
        .await?;
        anyhow::ensure!(last["type"] == "offer", "round {round}: {last}");
    }
    let deal = call(
        ws,
        &b.sign(
            json!({"type": "offer", "negotiation_id": id, "round": 19, "terms": last["terms"]}),
        ),
    )
    .await?;
    anyhow::ensure!(deal["type"] == "deal", "accept: {deal}");
    Ok(deal)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(
    negotiations: usize,
    sockets: usize,
    python: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = crate::bench::bench_config(dir.path())?;
    let brand_dir = config.brand.dir.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = Application::build_with_listener(config, listener).await?;
    let state = app.state().clone();
    let addr = app.local_addr();
    let store = &state.store;
    store
        .put_product(&product("bench-p-shirt", "T-Shirt", SHIRT, 5000))
        .await?;
    store
        .put_product(&product("bench-p-kettle", "Tea Kettle", KETTLE, 12000))
        .await?;
    store
        .put_customer(&Customer {
            id: CUSTOMER.into(),
            source: "bench".into(),
            first_name: "Bench".into(),
            last_name: "Buyer".into(),
            emails: vec!["buyer@bench.example".into()],
            phones: vec![],
            addresses: vec![],
            payment_methods: vec![],
            note: None,
            created_at: None,
            updated_at: None,
        })
        .await?;
    let now = crate::util::now_ms();
    let (key, key_id, agent_id) = crate::bench::register_agent(store, "bench-buyer").await?;
    let service = crate::gateway::service_key(&state)?.clone();
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
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    let bench = Arc::new(Bench {
        addr,
        key,
        key_id,
        token,
    });

    println!(
        "bench negotiate: SQLite in {}, strategy {}/negotiation.toml, {negotiations} scripted \
         20-round negotiations (10 buyer offers, 9 counter-offers, the brand accepts → signed deal + audit entry)",
        dir.path().display(),
        brand_dir.display()
    );

    // 1 + 2: one socket, one negotiation at a time.
    let mut ws = bench.connect().await?;
    for i in 0..20 {
        twenty_rounds(&bench, &mut ws, &format!("warm-{i}")).await?;
    }
    crate::negotiate::metrics::probe_move_times(true);
    let _ = crate::negotiate::metrics::take_move_times();
    let mut whole = Vec::with_capacity(negotiations);
    for i in 0..negotiations {
        let t = Instant::now();
        twenty_rounds(&bench, &mut ws, &format!("one-{i}")).await?;
        whole.push(t.elapsed());
    }
    crate::negotiate::metrics::probe_move_times(false);
    let mut moves = crate::negotiate::metrics::take_move_times();
    println!(
        "  per-round server time (frame in → answer stored, {} moves): p50 {:.3} ms, p99 {:.3} ms",
        moves.len(),
        ms(percentile(&mut moves, 50.0)),
        ms(percentile(&mut moves, 99.0))
    );
    println!(
        "  20-round negotiation over one WebSocket (client wall clock, open → deal): p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&mut whole, 50.0)),
        ms(percentile(&mut whole, 99.0))
    );

    // 3: N sockets in parallel.
    let per_socket = (negotiations * 2 / sockets.max(1)).max(5);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sockets {
        let b = bench.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = b.connect().await?;
            let mut times = Vec::with_capacity(per_socket);
            for i in 0..per_socket {
                let t = Instant::now();
                twenty_rounds(&b, &mut ws, &format!("par-{s}-{i}")).await?;
                times.push(t.elapsed());
            }
            anyhow::Ok(times)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  {sockets} sockets × {per_socket} negotiations: {:.0} negotiations/s ({:.0} moves/s), each p50 {:.2} ms, p99 {:.2} ms",
        all.len() as f64 / secs,
        all.len() as f64 * 20.0 / secs,
        ms(percentile(&mut all, 50.0)),
        ms(percentile(&mut all, 99.0))
    );

    // 4: NegMAS.
    match python {
        None => println!(
            "  NegMAS comparison skipped: no Python client venv (run scripts/install-python-clients)"
        ),
        Some(py) => negmas(&bench, &service, &brand_dir, &py).await?,
    }
    let _ = tx.send(());
    server.await??;
    Ok(())
}

/// The NegMAS comparison: `tests/py/negmas_agent.py` with `compare`.
async fn negmas(
    b: &Bench,
    service: &SigningKey,
    brand_dir: &std::path::Path,
    py: &std::path::Path,
) -> anyhow::Result<()> {
    let config = crate::negotiate::NegotiationConfig::for_brand(brand_dir);
    let script = std::path::Path::new("tests/py/negmas_agent.py");
    anyhow::ensure!(
        script.exists(),
        "run the bench from the project folder (tests/py/negmas_agent.py)"
    );
    let ship = config
        .shipping
        .first()
        .ok_or_else(|| anyhow::anyhow!("no shipping option"))?
        .clone();
    let mut lines = Vec::new();
    for (variant, category, list, product) in [
        (SHIRT, "T-Shirt", 5000i64, "bench-p-shirt"),
        (KETTLE, "Tea Kettle", 12000, "bench-p-kettle"),
    ] {
        let rule = config.rule(product, Some(category));
        let floor = ((list as f64 * rule.floor_share).ceil() as i64)
            .max(rule.floor_amount)
            .min(list);
        let cost = (list as f64 * rule.cost_ratio).round() as i64;
        // Buyers whose budgets sit between the floor and the list price (the zones overlap).
        let budgets: Vec<i64> = [0.25, 0.5, 0.75, 1.0]
            .iter()
            .map(|f| floor + ((list - floor) as f64 * f) as i64)
            .collect();
        let cfg = json!({
            "base": format!("http://{}", b.addr),
            "key_seed": base64::engine::general_purpose::STANDARD.encode(b.key.to_bytes()),
            "key_id": b.key_id,
            "token": b.token,
            "service_key": identity::encode_public_key(&service.verifying_key()),
            "variant_id": variant, "quantity": 2, "list_price": list, "floor": floor, "cost": cost,
            "ship_price": ship.price, "ship_cost": ship.cost, "shipping": ship.id,
            "budgets": budgets,
            "negotiators": ["boulware", "linear", "conceder", "tit_for_tat", "micro", "aspiration"],
            "n_steps": 10, "compare": true,
        });
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), cfg.to_string())?;
        let out = tokio::process::Command::new(py)
            .arg(script)
            .arg(file.path())
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "negmas_agent.py failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?;
        let below = v["runs"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|r| r["price"].as_i64().is_some_and(|p| p < floor))
                    .count()
            })
            .unwrap_or(0);
        lines.push(format!(
            "  NegMAS buyers vs {category} (list {list}, floor {floor}, 6 negotiators × 4 budgets, 20 rounds): \
             Concierge agreement {:.0} %, brand mean utility {:.3} (deals below floor: {below}); \
             NegMAS AspirationNegotiator as the brand: agreement {:.0} %, mean utility {:.3}",
            v["concierge"]["agreement_rate"].as_f64().unwrap_or(0.0) * 100.0,
            v["concierge"]["mean_brand_utility"].as_f64().unwrap_or(0.0),
            v["negmas_aspiration"]["agreement_rate"].as_f64().unwrap_or(0.0) * 100.0,
            v["negmas_aspiration"]["mean_brand_utility"].as_f64().unwrap_or(0.0),
        ));
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
