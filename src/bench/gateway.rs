//! `concierge bench gateway`: what a consumer agent waits for. Structured order status over the
//! native JSON API (`GET /agent/v1/orders/{id}`, `POST /agent/v1/tools/get_order`) and over an
//! A2A data part (`SendMessage` with `{"action": "get_order", …}`), every request signed
//! (RFC 9421, Ed25519) with a customer's capability token; a public product read (unsigned);
//! and A2A text turns answered by the brand agent, each in a new context. Next to them, two
//! floors served from the same process on listeners of their own: a bare axum handler that
//! returns an order-shaped JSON (the floor for any read), and one that also verifies the
//! request's Ed25519 RFC 9421 signature with a key it holds in memory (the floor for any signed
//! read). Each is measured unloaded (one connection: close to server time plus loopback) and at
//! the given concurrency (p50/p99 and requests/s); the report gives each path's share of its
//! floor measured in the same run.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::Application;
use crate::bench::{drive_addr, percentile};
use crate::gateway::{identity, tokens};
use crate::import::{self, ImportKind};

/// How many customers get a token (requests cycle through them and their orders).
const CUSTOMERS: usize = 64;

struct Holder {
    token: String,
    orders: Vec<String>,
}

/// The a2a-sdk server answering a fixed sentence, for the A2A text turns' comparison.
pub struct Reference {
    pub python: std::path::PathBuf,
    pub script: std::path::PathBuf,
}

pub async fn run(
    path: &Path,
    requests: usize,
    concurrency: usize,
    reference: &Reference,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = crate::bench::bench_config(dir.path())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = Application::build_with_listener(config, listener).await?;
    let state = app.state().clone();
    let addr = app.local_addr();

    // The shop, an agent key and one token per customer.
    let batches = import::load(ImportKind::TauRetail, path)?;
    let mut by_customer: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (_, b) in &batches {
        state
            .store
            .import(&b.customers, &b.products, &b.orders, |_| {})
            .await?;
        for o in &b.orders {
            if let Some(c) = &o.customer_id {
                by_customer
                    .entry(c.clone())
                    .or_default()
                    .push(o.number.clone());
            }
        }
    }
    anyhow::ensure!(
        !by_customer.is_empty(),
        "no orders with customers in {}",
        path.display()
    );
    let now = crate::util::now_ms();
    let key = identity::generate_key();
    let key_id = identity::key_id(&key.verifying_key());
    let agent_id = state
        .store
        .register_agent_key(
            "bench-agent",
            &key_id,
            &identity::encode_public_key(&key.verifying_key()),
            now,
        )
        .await?;
    let service = crate::gateway::service_key(&state)?;
    let mut holders = Vec::new();
    for (customer, orders) in by_customer.into_iter().take(CUSTOMERS) {
        let spec = tokens::TokenSpec {
            agent_id: agent_id.clone(),
            customer_id: customer,
            ops: vec!["get_order".into()],
            spend_limit: None,
            categories: Vec::new(),
            expires_at: now + 24 * 3_600_000,
            escalate_over_limit: false,
        };
        let (token, _) = tokens::issue(&state.store, service, &spec, "bench", now).await?;
        holders.push(Holder { token, orders });
    }
    let product = batches
        .iter()
        .find_map(|(_, b)| b.products.first().map(|p| p.id.clone()))
        .ok_or_else(|| anyhow::anyhow!("no products in {}", path.display()))?;
    // The floors: bare axum handlers on listeners of their own in this process.
    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = bare_listener.local_addr()?;
    let floor_key = key.verifying_key();
    let bare = tokio::spawn(async move {
        let router = axum::Router::new()
            .route(
                "/status",
                axum::routing::get(|| async { axum::Json(order_shaped()) }),
            )
            .route(
                "/agent/v1/orders/{id}",
                axum::routing::get(
                    move |method: axum::http::Method,
                          uri: axum::http::Uri,
                          headers: axum::http::HeaderMap| async move {
                        verify_floor(&floor_key, &method, &uri, &headers)
                    },
                ),
            );
        axum::serve(bare_listener, router).await
    });
    let signer = Arc::new(Signer {
        product,
        seq: Default::default(),
        key,
        key_id,
        base: format!("http://{addr}"),
        floor_base: format!("http://{bare_addr}"),
        holders,
    });

    in_process(&state, &signer, unloaded_count(requests)).await?;

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));

    println!(
        "gateway benchmark: {} signed customers, {requests} requests per run, {concurrency} connections (client-side latency over loopback; signing happens before the clock starts)",
        signer.holders.len()
    );
    let unloaded = unloaded_count(requests);
    type Build = fn(&Signer, usize, usize) -> String;
    let scenarios: [(&str, SocketAddr, Build); 8] = [
        (
            "floor: bare axum handler (GET, order-shaped JSON)",
            bare_addr,
            bare_request,
        ),
        (
            "floor: bare axum handler verifying one Ed25519 RFC 9421 signature",
            bare_addr,
            Signer::floor_order,
        ),
        (
            "GET /agent/v1/products/{id} (public read, unsigned)",
            addr,
            product_request,
        ),
        (
            "GET /agent/v1/products/{id}/availability (public read, unsigned)",
            addr,
            availability_request,
        ),
        (
            "GET /agent/v1/orders/{id} (signed + token)",
            addr,
            Signer::get_order,
        ),
        (
            "POST /agent/v1/tools/get_order (signed + token)",
            addr,
            Signer::post_order,
        ),
        (
            "A2A SendMessage, data part get_order (signed + token, task persisted)",
            addr,
            Signer::a2a_order,
        ),
        (
            "A2A SendMessage, text turn in a new context (signed + token, brand agent, offline)",
            addr,
            Signer::a2a_text,
        ),
    ];
    // Requests/s at full concurrency, by scenario, for the shares below.
    let mut loaded: Vec<f64> = Vec::new();
    for (name, target, build) in scenarios {
        // Text turns are slower: fewer of them.
        let (unloaded, requests) = if name.contains("text turn") {
            (unloaded.min(500), (requests / 4).max(500))
        } else {
            (unloaded, requests)
        };
        for (conns, total) in [(1, unloaded), (concurrency, requests)] {
            let s = signer.clone();
            let (mut times, wall) =
                drive_addr(target, conns, total, move |c, i, _| Ok(build(&s, c, i))).await?;
            let rate = times.len() as f64 / wall.as_secs_f64();
            println!(
                "  {name}, {conns} conn: p50 {:.3} ms, p99 {:.3} ms, {rate:.0} requests/s",
                ms(percentile(&mut times, 50.0)),
                ms(percentile(&mut times, 99.0)),
            );
            if conns == concurrency {
                loaded.push(rate);
            }
        }
    }
    let text_turns = loaded.last().copied().unwrap_or(0.0);
    match reference_turns(reference, &signer, concurrency, (requests / 4).max(500)).await {
        Ok(rate) => println!(
            "  A2A text turns: Concierge's brand agent {text_turns:.0}/s vs the a2a-sdk fixed-answer server {rate:.0}/s = {:.1}×",
            text_turns / rate
        ),
        Err(e) => println!("  (no a2a-sdk reference run: {e:#})"),
    }
    if let [bare, floor, product, availability, get, ..] = loaded[..] {
        println!("  shares of the floors at {concurrency} connections (same run):");
        println!(
            "    public product read: {:.0}% of the bare handler; availability: {:.0}%",
            100.0 * product / bare,
            100.0 * availability / bare
        );
        println!(
            "    signed + token order read: {:.0}% of the signature-verifying handler",
            100.0 * get / floor
        );
    }
    let _ = tx.send(());
    server.await??;
    bare.abort();
    Ok(())
}

struct Signer {
    /// A product for the public read.
    product: String,
    /// Makes every nonce and messageId unique across runs.
    seq: std::sync::atomic::AtomicU64,
    key: ed25519_dalek::SigningKey,
    key_id: String,
    base: String,
    /// The signature-verifying floor's address.
    floor_base: String,
    holders: Vec<Holder>,
}

impl Signer {
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn pick(&self, c: usize, i: usize) -> (&Holder, &str) {
        let h = &self.holders[(c * 7919 + i) % self.holders.len()];
        (h, &h.orders[i % h.orders.len()])
    }

    fn signed(&self, method: &str, path: &str, token: &str, body: &str, nonce: &str) -> String {
        self.signed_for(&self.base, method, path, token, body, nonce)
    }

    fn signed_for(
        &self,
        base: &str,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
        nonce: &str,
    ) -> String {
        let created = crate::util::now_ms() / 1000;
        let url = format!("{base}{path}");
        let sig = identity::sign_request(
            &self.key,
            &self.key_id,
            method,
            &url,
            body.as_bytes(),
            nonce,
            created,
        );
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n",
            base.trim_start_matches("http://")
        );
        for (k, v) in sig.pairs() {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if body.is_empty() {
            head.push_str("\r\n");
        } else {
            head.push_str(&format!(
                "A2A-Version: 1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        head
    }

    fn get_order(&self, c: usize, i: usize) -> String {
        let (h, order) = self.pick(c, i);
        let path = format!("/agent/v1/orders/{}", order.trim_start_matches('#'));
        self.signed("GET", &path, &h.token, "", &format!("g-{}", self.next()))
    }

    fn floor_order(&self, c: usize, i: usize) -> String {
        let (h, order) = self.pick(c, i);
        let path = format!("/agent/v1/orders/{}", order.trim_start_matches('#'));
        self.signed_for(
            &self.floor_base,
            "GET",
            &path,
            &h.token,
            "",
            &format!("f-{}", self.next()),
        )
    }

    fn a2a_text(&self, c: usize, i: usize) -> String {
        let (h, order) = self.pick(c, i);
        let n = self.next();
        let body = json!({
            "jsonrpc": "2.0", "id": i, "method": "SendMessage",
            "params": {"message": {
                "messageId": format!("bench-text-{n}"), "role": "ROLE_USER",
                "contextId": format!("bench-context-{n}"),
                "parts": [{"text": format!("Hi, where is my order {order}?")}],
            }},
        })
        .to_string();
        self.signed("POST", "/a2a", &h.token, &body, &format!("t-{n}"))
    }

    fn post_order(&self, c: usize, i: usize) -> String {
        let (h, order) = self.pick(c, i);
        let body = json!({ "order_id": order }).to_string();
        self.signed(
            "POST",
            "/agent/v1/tools/get_order",
            &h.token,
            &body,
            &format!("p-{}", self.next()),
        )
    }

    fn a2a_order(&self, c: usize, i: usize) -> String {
        let (h, order) = self.pick(c, i);
        let body = json!({
            "jsonrpc": "2.0", "id": i, "method": "SendMessage",
            "params": {"message": {
                "messageId": format!("bench-{}", self.next()), "role": "ROLE_USER",
                "parts": [{"data": {"action": "get_order", "order_id": order}}],
            }},
        })
        .to_string();
        self.signed(
            "POST",
            "/a2a",
            &h.token,
            &body,
            &format!("a-{}", self.next()),
        )
    }
}

fn unloaded_count(requests: usize) -> usize {
    (requests / 10).clamp(200, 2_000)
}

/// Where a signed order read spends its server time, measured in process, one at a time:
/// checking the signature and token, the token's checks plus the tool, and the tool alone.
async fn in_process(
    state: &crate::state::AppState,
    signer: &Signer,
    n: usize,
) -> anyhow::Result<()> {
    use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

    use crate::agent::tools::{self, Actor, ToolCall, ToolContext};
    use crate::gateway::{SignedRequest, authenticate, run_tool};

    let mut auth_t = Vec::with_capacity(n);
    let mut run_t = Vec::with_capacity(n);
    let mut tool_t = Vec::with_capacity(n);
    let mut total_t = Vec::with_capacity(n);
    let method = Method::GET;
    for i in 0..n {
        let (h, order) = signer.pick(i % 32, i);
        let path = format!("/agent/v1/orders/{}", order.trim_start_matches('#'));
        let raw = signer.signed("GET", &path, &h.token, "", &format!("i-{}", signer.next()));
        let mut headers = HeaderMap::new();
        for line in raw.lines().skip(1).take_while(|l| !l.is_empty()) {
            if let Some((k, v)) = line.split_once(": ") {
                headers.insert(
                    HeaderName::from_bytes(k.as_bytes())?,
                    HeaderValue::from_str(v)?,
                );
            }
        }
        let uri: Uri = path.parse()?;
        let req = SignedRequest {
            method: &method,
            uri: &uri,
            headers: &headers,
            body: &[],
        };
        let t = Instant::now();
        let caller = authenticate(state, &req)
            .await
            .map_err(|e| anyhow::anyhow!("authenticate: {e}"))?;
        auth_t.push(t.elapsed());
        let started = t;
        let call = ToolCall::GetOrder {
            order_id: order.to_string(),
        };
        let t = Instant::now();
        run_tool(state, &caller, &call)
            .await
            .map_err(|e| anyhow::anyhow!("run_tool: {e}"))?;
        run_t.push(t.elapsed());
        total_t.push(started.elapsed());
        let ctx = ToolContext {
            store: &state.store,
            policy: &state.policy,
            actor: Actor::ConsumerAgent { id: "bench".into() },
            customer_id: caller.grant.as_ref().map(|g| g.customer_id.clone()),
            now: crate::util::now_ms(),
        };
        let t = Instant::now();
        tools::execute(&ctx, &call).await?;
        tool_t.push(t.elapsed());
    }
    println!("  server time in process, one at a time ({n} signed order reads):");
    for (name, v) in [
        (
            "a signed order read in all (authenticate + run_tool)",
            &mut total_t,
        ),
        ("authenticate (signature, nonce, token)", &mut auth_t),
        ("run_tool (token checks + get_order)", &mut run_t),
        ("get_order tool alone", &mut tool_t),
    ] {
        println!(
            "    {name}: p50 {:.3} ms, p99 {:.3} ms",
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0))
        );
    }
    Ok(())
}

fn product_request(s: &Signer, _: usize, _: usize) -> String {
    format!(
        "GET /agent/v1/products/{} HTTP/1.1\r\nHost: bench\r\n\r\n",
        s.product
    )
}

fn availability_request(s: &Signer, _: usize, _: usize) -> String {
    format!(
        "GET /agent/v1/products/{}/availability HTTP/1.1\r\nHost: bench\r\n\r\n",
        s.product
    )
}

/// What the floors answer: about the size of an order status.
fn order_shaped() -> serde_json::Value {
    json!({"data": {"order_id": "#W0000000", "status": "delivered", "items": [
        {"name": "T-shirt", "quantity": 1, "price": "$49.99"}],
        "fulfillments": [{"carrier": "UPS", "tracking_numbers": ["1Z999"], "status": "delivered"}],
        "total": "$49.99"}})
}

/// The signed floor: parse the RFC 9421 headers, build the signature base, verify it with the
/// key in memory — what any signed read must do at least — then answer like [`order_shaped`].
fn verify_floor(
    key: &ed25519_dalek::VerifyingKey,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use ed25519_dalek::Verifier;
    let req = crate::gateway::SignedRequest {
        method,
        uri,
        headers,
        body: &[],
    };
    let verified = (|| {
        let input = headers.get("signature-input")?.to_str().ok()?;
        let signature = headers.get("signature")?.to_str().ok()?;
        let (params, sig) = identity::parse_signature_headers(input, signature).ok()?;
        let base = identity::signature_base(&params, None, &req).ok()?;
        let sig = ed25519_dalek::Signature::from_slice(&sig).ok()?;
        key.verify(base.as_bytes(), &sig).ok()
    })();
    match verified {
        Some(()) => axum::Json(order_shaped()).into_response(),
        None => axum::http::StatusCode::UNAUTHORIZED.into_response(),
    }
}

fn bare_request(_: &Signer, _: usize, _: usize) -> String {
    "GET /status HTTP/1.1\r\nHost: bench\r\n\r\n".to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts the a2a-sdk reference server, sends it the same A2A text turns at `concurrency`,
/// stops it, and returns its requests/s.
async fn reference_turns(
    reference: &Reference,
    signer: &Arc<Signer>,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<f64> {
    use anyhow::Context;
    use tokio::io::AsyncBufReadExt;
    anyhow::ensure!(
        reference.python.exists() && reference.script.exists(),
        "{} or {} is missing (scripts/install-python-clients makes the first)",
        reference.python.display(),
        reference.script.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = tokio::process::Command::new(&reference.python)
        .arg(&reference.script)
        .arg("--port")
        .arg(port.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the a2a-sdk reference server")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("the reference server did not start within 60 s")??;
    anyhow::ensure!(
        ready.as_deref().is_some_and(|l| l.starts_with("ready")),
        "the reference server said {ready:?}"
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let s = signer.clone();
    let (mut times, wall) = drive_addr(addr, concurrency, requests, move |c, i, _| {
        Ok(s.a2a_text(c, i))
    })
    .await?;
    let rate = times.len() as f64 / wall.as_secs_f64();
    println!(
        "  a2a-sdk reference fixed-answer server (Python, uvicorn), same A2A text turns, {concurrency} conn: p50 {:.3} ms, p99 {:.3} ms, {rate:.0} requests/s",
        ms(percentile(&mut times, 50.0)),
        ms(percentile(&mut times, 99.0)),
    );
    let _ = child.kill().await;
    Ok(rate)
}
