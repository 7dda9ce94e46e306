//! `concierge bench gateway`: what a consumer agent waits for. Structured order status over the
//! native JSON API (`GET /agent/v1/orders/{id}`, `POST /agent/v1/tools/get_order`) and over an
//! A2A data part (`SendMessage` with `{"action": "get_order", …}`), every request signed
//! (RFC 9421, Ed25519) with a customer's capability token; a public product read (unsigned)
//! for comparison — next to a bare axum handler that returns a small JSON, served from the same
//! process on its own listener, as the floor for this machine. Each is measured unloaded (one connection: close to server time plus loopback)
//! and at the given concurrency (p50/p99 and requests/s).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::Application;
use crate::bench::{drive_addr, percentile};
use crate::config::Config;
use crate::gateway::{identity, tokens};
use crate::import::{self, ImportKind};
use crate::util::Secret;

/// How many customers get a token (requests cycle through them and their orders).
const CUSTOMERS: usize = 64;

struct Holder {
    token: String,
    orders: Vec<String>,
}

pub async fn run(path: &Path, requests: usize, concurrency: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::load(None, Vec::<(String, String)>::new())?;
    config.data_dir = dir.path().join("data");
    config.api.key = Some(Secret::new("bench-key-0123456789abcdef"));
    config.log.level = "warn".into();
    config.without_rate_limits();
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
    let signer = Arc::new(Signer {
        product,
        seq: Default::default(),
        key,
        key_id,
        base: format!("http://{addr}"),
        holders,
    });

    in_process(&state, &signer, unloaded_count(requests)).await?;

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));

    // The floor: a bare axum handler on its own listener in this process.
    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = bare_listener.local_addr()?;
    let bare = tokio::spawn(async move {
        let router = axum::Router::new().route(
            "/status",
            axum::routing::get(|| async {
                axum::Json(json!({"order_id": "#W0000000", "status": "delivered"}))
            }),
        );
        axum::serve(bare_listener, router).await
    });

    println!(
        "gateway benchmark: {} signed customers, {requests} requests per run, {concurrency} connections (client-side latency over loopback; signing happens before the clock starts)",
        signer.holders.len()
    );
    let unloaded = unloaded_count(requests);
    type Build = fn(&Signer, usize, usize) -> String;
    let scenarios: [(&str, SocketAddr, Build); 5] = [
        (
            "bare axum handler (GET, small JSON)",
            bare_addr,
            bare_request,
        ),
        (
            "GET /agent/v1/products/{id} (public read, unsigned)",
            addr,
            product_request,
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
    ];
    for (name, target, build) in scenarios {
        for (conns, total) in [(1, unloaded), (concurrency, requests)] {
            let s = signer.clone();
            let (mut times, wall) =
                drive_addr(target, conns, total, move |c, i, _| Ok(build(&s, c, i))).await?;
            println!(
                "  {name}, {conns} conn: p50 {:.3} ms, p99 {:.3} ms, {:.0} requests/s",
                ms(percentile(&mut times, 50.0)),
                ms(percentile(&mut times, 99.0)),
                times.len() as f64 / wall.as_secs_f64()
            );
        }
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
        let created = crate::util::now_ms() / 1000;
        let url = format!("{}{path}", self.base);
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
            self.base.trim_start_matches("http://")
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
        let call = ToolCall::GetOrder {
            order_id: order.to_string(),
        };
        let t = Instant::now();
        run_tool(state, &caller, &call)
            .await
            .map_err(|e| anyhow::anyhow!("run_tool: {e}"))?;
        run_t.push(t.elapsed());
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

fn bare_request(_: &Signer, _: usize, _: usize) -> String {
    "GET /status HTTP/1.1\r\nHost: bench\r\n\r\n".to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
