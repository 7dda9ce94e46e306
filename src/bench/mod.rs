//! `concierge bench …`: measurements an operator can repeat on their own machine. Each bench
//! sets up its own temporary data dir, prints what it measured and how, and cleans up. Build
//! with `--release` for figures worth quoting.

pub mod gateway;
mod memory;
pub mod negotiate;
mod settle;
pub mod web;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::Application;
use crate::config::Config;
use crate::import::{self, ImportKind};
use crate::search::{self, IndexDoc};
use crate::util::Secret;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time `import tau-retail` of a τ-bench folder into a fresh SQLite store (or PostgreSQL
    /// with --database-url).
    Import {
        #[arg(long, default_value = "../shared/data/tau-bench-retail/tau-bench-v1")]
        path: PathBuf,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Build the search index over generated orders and report documents per second.
    Index {
        #[arg(long, default_value_t = 100_000)]
        orders: usize,
    },
    /// Order lookup by number: in the store, and over HTTP (GET /api/v1/orders/{number}),
    /// p50/p99 and requests/s.
    Lookup {
        #[arg(long, default_value = "../shared/data/tau-bench-retail/tau-bench-v1")]
        path: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrent HTTP connections.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// Web chat: order-status round trips over the WebSocket (question sent → agent's answer
    /// received), p50/p99; then idle sockets held open, with memory per socket.
    Chat {
        #[arg(long, default_value = "../shared/data/tau-bench-retail/tau-bench-v1")]
        path: PathBuf,
        #[arg(long, default_value_t = 500)]
        round_trips: usize,
        #[arg(long, default_value_t = 1000)]
        idle: usize,
    },
    /// Signed marketplace webhooks: a buyer message signed with HMAC-SHA256 in, stored, and the
    /// agent's reply queued (the 200) — p50/p99 and messages/s.
    Webhook {
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// A single-turn order-status question to the brand agent (offline resolver) over HTTP:
    /// POST /api/v1/messages from a verified sender, p50/p99 and messages/s — at each of the
    /// given connection counts, on SQLite and (with --database-url) on PostgreSQL.
    Agent {
        #[arg(long, default_value = "../shared/data/tau-bench-retail/tau-bench-v1")]
        path: PathBuf,
        #[arg(long, default_value_t = 3_000)]
        messages: usize,
        /// Connection counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        concurrency: Vec<usize>,
        /// Also on PostgreSQL: a server URL whose user may create databases (a temporary
        /// database is made and dropped).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Memory: the server's resident memory (a `concierge serve` child process) with N
    /// generated orders in its store and M web-chat sockets open.
    Memory {
        #[arg(long, default_value_t = 100_000)]
        orders: usize,
        #[arg(long, default_value_t = 1_000)]
        sockets: usize,
    },
    /// The consumer-agent gateway: signed structured order status over /agent/v1 (GET, POST)
    /// and A2A data parts, next to a bare axum handler — p50/p99 and requests/s.
    Gateway {
        #[arg(long, default_value = "../shared/data/tau-bench-retail/tau-bench-v1")]
        path: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// The Python that runs the a2a-sdk reference server (the test set-up's venv).
        #[arg(long, default_value = "target/pyclients/bin/python")]
        reference_python: PathBuf,
        /// The a2a-sdk reference server: answers every A2A message with a fixed sentence.
        #[arg(long, default_value = "bench/a2a_reference.py")]
        reference_script: PathBuf,
    },
    /// Agent-to-agent negotiation over the WebSocket: per-round server time, a 20-round
    /// negotiation p50/p99, negotiations/s over N sockets, and NegMAS buyers against the brand
    /// next to NegMAS's AspirationNegotiator in the brand's place (needs the Python clients).
    Negotiate {
        #[arg(long, default_value_t = 500)]
        negotiations: usize,
        #[arg(long, default_value_t = 32)]
        sockets: usize,
        /// The Python of the client venv (default: target/pyclients/bin/python when present).
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Settling negotiated deals: settlement latency p50/p99 paying with a gift card and with
    /// a card through an in-process Stripe stand-in, and negotiations + settlements per second
    /// end to end over N agents.
    Settle {
        #[arg(long, default_value_t = 200)]
        settlements: usize,
        #[arg(long, default_value_t = 8)]
        agents: usize,
    },
    /// The staff inbox: queue (N conversations), escalation list and a long conversation,
    /// rendered in-process and over HTTP — p50/p99.
    Inbox {
        #[arg(long, default_value_t = 10_000)]
        conversations: usize,
        #[arg(long, default_value_t = 500)]
        messages: usize,
        #[arg(long, default_value_t = 200)]
        renders: usize,
    },
}

pub async fn run(what: BenchCommand) -> anyhow::Result<()> {
    match what {
        BenchCommand::Inbox {
            conversations,
            messages,
            renders,
        } => web::run(conversations, messages, renders).await,
        BenchCommand::Import {
            path,
            runs,
            database_url,
        } => bench_import(&path, runs, database_url).await,
        BenchCommand::Index { orders } => bench_index(orders),
        BenchCommand::Lookup {
            path,
            requests,
            concurrency,
        } => bench_lookup(&path, requests, concurrency).await,
        BenchCommand::Chat {
            path,
            round_trips,
            idle,
        } => bench_chat(&path, round_trips, idle).await,
        BenchCommand::Webhook {
            messages,
            concurrency,
        } => bench_webhook(messages, concurrency).await,
        BenchCommand::Agent {
            path,
            messages,
            concurrency,
            database_url,
        } => bench_agent(&path, messages, &concurrency, database_url.as_deref()).await,
        BenchCommand::Memory { orders, sockets } => memory::run(orders, sockets).await,
        BenchCommand::Settle {
            settlements,
            agents,
        } => settle::run(settlements, agents).await,
        BenchCommand::Gateway {
            path,
            requests,
            concurrency,
            reference_python,
            reference_script,
        } => {
            let reference = gateway::Reference {
                python: reference_python,
                script: reference_script,
            };
            gateway::run(&path, requests, concurrency, &reference).await
        }
        BenchCommand::Negotiate {
            negotiations,
            sockets,
            python,
        } => {
            let python = python.or_else(|| {
                let venv = std::env::var("CONCIERGE_PYCLIENTS")
                    .unwrap_or_else(|_| "target/pyclients".into());
                Some(PathBuf::from(venv).join("bin/python")).filter(|p| p.exists())
            });
            negotiate::run(negotiations, sockets, python).await
        }
    }
}

async fn bench_import(
    path: &std::path::Path,
    runs: usize,
    url: Option<String>,
) -> anyhow::Result<()> {
    let mut parse_times = Vec::new();
    let mut write_times = Vec::new();
    for _ in 0..runs.max(1) {
        let dir = tempfile::tempdir()?;
        let t = Instant::now();
        let batches = import::load(ImportKind::TauRetail, path)?;
        parse_times.push(t.elapsed());
        let store = crate::store::Store::open(dir.path(), url.as_deref(), 4).await?;
        let t = Instant::now();
        for (_, b) in &batches {
            store
                .import(&b.customers, &b.products, &b.orders, |_| {})
                .await?;
        }
        write_times.push(t.elapsed());
        store.close().await;
    }
    let engine = if url.is_some() { "postgres" } else { "sqlite" };
    println!(
        "import tau-retail ({}; {engine}; {} runs): parse median {:.1} ms, write median {:.1} ms, total median {:.1} ms",
        path.display(),
        parse_times.len(),
        ms(median(&mut parse_times)),
        ms(median(&mut write_times)),
        ms(median(&mut parse_times)) + ms(median(&mut write_times)),
    );
    Ok(())
}

fn bench_index(orders: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    let demo = crate::demo::generate(
        7,
        crate::util::now_ms(),
        crate::demo::DemoSize {
            customers: (orders / 4).max(1),
            orders,
        },
    );
    let generated = t.elapsed();
    let names: std::collections::HashMap<&str, (String, Vec<String>)> = demo
        .customers
        .iter()
        .map(|c| (c.id.as_str(), (c.full_name(), c.emails.clone())))
        .collect();
    let docs: Vec<IndexDoc> = demo
        .orders
        .iter()
        .map(|o| {
            let c = o.customer_id.as_deref().and_then(|id| names.get(id));
            IndexDoc::Order {
                order: o.clone(),
                customer_name: c.map(|c| c.0.clone()),
                customer_emails: c.map(|c| c.1.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let (n, took) = search::bench_rebuild(docs)?;
    println!(
        "index build: {n} orders in {:.2} s = {:.0} docs/s (generating them took {:.2} s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64().max(1e-9),
        generated.as_secs_f64()
    );
    Ok(())
}

async fn bench_lookup(
    path: &std::path::Path,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = bench_config(dir.path())?;
    let key = BENCH_KEY;
    let batches = import::load(ImportKind::TauRetail, path)?;
    let store = crate::app::open_store(&config).await?;
    for (_, b) in &batches {
        store
            .import(&b.customers, &b.products, &b.orders, |_| {})
            .await?;
    }
    let numbers: Vec<String> = batches
        .iter()
        .flat_map(|(_, b)| {
            b.orders
                .iter()
                .map(|o| o.number.trim_start_matches('#').to_string())
        })
        .collect();
    anyhow::ensure!(!numbers.is_empty(), "no orders in {}", path.display());

    // In the store.
    let mut times = Vec::with_capacity(requests);
    for i in 0..requests {
        let t = Instant::now();
        let o = store
            .get_order_by_number(&numbers[i % numbers.len()])
            .await?;
        times.push(t.elapsed());
        anyhow::ensure!(o.is_some(), "order lookup found nothing");
    }
    store.close().await;
    println!(
        "store lookup by number ({requests} lookups): p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&mut times, 50.0)),
        ms(percentile(&mut times, 99.0))
    );

    // Over HTTP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = Application::build_with_listener(config, listener).await?;
    let (mut all, wall) = drive(app, concurrency, requests, move |c, i, per_conn| {
        let n = &numbers[(c * per_conn + i) % numbers.len()];
        Ok(get_request(&format!("/api/v1/orders/{n}"), key))
    })
    .await?;
    println!(
        "HTTP GET /api/v1/orders/{{number}} ({} requests, {} connections, client-side latency over loopback): p50 {:.3} ms, p99 {:.3} ms, {:.0} requests/s",
        all.len(),
        concurrency.max(1),
        ms(percentile(&mut all, 50.0)),
        ms(percentile(&mut all, 99.0)),
        all.len() as f64 / wall.as_secs_f64()
    );
    Ok(())
}

async fn bench_agent(
    path: &std::path::Path,
    messages: usize,
    concurrency: &[usize],
    database_url: Option<&str>,
) -> anyhow::Result<()> {
    println!(
        "agent: single-turn order status over HTTP (POST /api/v1/messages, verified sender, offline resolver), {messages} messages per run"
    );
    let mut engines = vec![None];
    if database_url.is_some() {
        engines.push(database_url);
    }
    for server in engines {
        let engine = if server.is_some() {
            "postgres"
        } else {
            "sqlite"
        };
        for &conns in concurrency {
            // Each run starts from a fresh data dir and so a fresh service key: on PostgreSQL
            // it gets a database of its own too (a database remembers its service key).
            let scratch = match server {
                Some(url) => Some(crate::drill::ScratchDatabase::create(url).await?),
                None => None,
            };
            let url = scratch.as_ref().map(|s| s.url.as_str());
            let (_dir, app, asks) = bench_app(path, url).await?;
            let run = format!("{engine}-{conns}-{}", crate::util::random_token(4));
            let (mut all, wall) = drive(app, conns, messages, move |c, i, per_conn| {
                let (email, number) = &asks[(c * per_conn + i) % asks.len()];
                let body = serde_json::json!({
                    "thread": format!("bench-{run}-{c}-{i}"),
                    "from": {"email": email, "verified": true},
                    "text": format!("Where is my order {number}?"),
                })
                .to_string();
                let auth = format!("Bearer {BENCH_KEY}");
                Ok(post_request(
                    "/api/v1/messages",
                    &[("Authorization", &auth)],
                    &body,
                ))
            })
            .await?;
            println!(
                "  {engine}, {conns} connections: p50 {:.2} ms, p99 {:.2} ms, {:.0} messages/s",
                ms(percentile(&mut all, 50.0)),
                ms(percentile(&mut all, 99.0)),
                all.len() as f64 / wall.as_secs_f64()
            );
            if let Some(s) = scratch {
                s.drop_it().await;
            }
        }
    }
    Ok(())
}

/// Registers a consumer agent with a new key: (its key, key id, agent id).
pub(crate) async fn register_agent(
    store: &crate::store::Store,
    name: &str,
) -> anyhow::Result<(ed25519_dalek::SigningKey, String, String)> {
    use crate::gateway::identity;
    let key = identity::generate_key();
    let key_id = identity::key_id(&key.verifying_key());
    store
        .register_agent_key(
            name,
            &key_id,
            &identity::encode_public_key(&key.verifying_key()),
            crate::util::now_ms(),
        )
        .await?;
    let agent_id = store
        .agent_key(&key_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the agent key did not register"))?
        .agent_id;
    Ok((key, key_id, agent_id))
}

pub(crate) const BENCH_KEY: &str = "bench-key-0123456789abcdef";

/// A bench's configuration: data in `dir/data`, the bench API key, quiet logs, no rate limits,
/// and the hosts the benches' raw requests name (`bench`, or the listener's address).
pub(crate) fn bench_config(dir: &std::path::Path) -> anyhow::Result<Config> {
    let mut config = Config::load(None, Vec::<(String, String)>::new())?;
    config.data_dir = dir.join("data");
    config.api.key = Some(Secret::new(BENCH_KEY));
    config.log.level = "warn".into();
    config.without_rate_limits();
    config
        .server
        .allowed_hosts
        .extend(["bench".to_string(), "127.0.0.1".to_string()]);
    Ok(config)
}

/// Starts an app on a temporary data dir with the τ-bench store; returns it with (email,
/// order number) pairs to ask about.
async fn bench_app(
    path: &std::path::Path,
    database_url: Option<&str>,
) -> anyhow::Result<(tempfile::TempDir, Application, Vec<(String, String)>)> {
    let dir = tempfile::tempdir()?;
    let mut config = bench_config(dir.path())?;
    config.database.url = database_url.map(Secret::new);
    let batches = import::load(ImportKind::TauRetail, path)?;
    let store = crate::app::open_store(&config).await?;
    let mut asks = Vec::new();
    for (_, b) in &batches {
        store
            .import(&b.customers, &b.products, &b.orders, |_| {})
            .await?;
        let emails: std::collections::HashMap<&str, &str> = b
            .customers
            .iter()
            .filter_map(|c| Some((c.id.as_str(), c.primary_email()?)))
            .collect();
        for o in &b.orders {
            if let Some(e) = o.customer_id.as_deref().and_then(|c| emails.get(c)) {
                asks.push((e.to_string(), o.number.clone()));
            }
        }
    }
    store.close().await;
    anyhow::ensure!(
        !asks.is_empty(),
        "no orders with customers in {}",
        path.display()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = Application::build_with_listener(config, listener).await?;
    Ok((dir, app, asks))
}

async fn bench_chat(path: &std::path::Path, round_trips: usize, idle: usize) -> anyhow::Result<()> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as Ws;
    let (_dir, app, asks) = bench_app(path, None).await?;
    let url = format!("ws://{}/chat/ws", app.local_addr());
    // The bench's own client sockets use small buffers too, so the memory figure is mostly the
    // server's.
    let client_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));

    // Round trips: each on a fresh visitor (one customer per conversation).
    let mut times = Vec::with_capacity(round_trips);
    for i in 0..round_trips {
        let (email, number) = &asks[i % asks.len()];
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(client_config), true)
                .await?;
        ws.send(Ws::Text(r#"{"type":"hello"}"#.into())).await?;
        wait_frame(&mut ws, "welcome", None).await?;
        let text = format!("Where is my order {number}? My email is {email}");
        let frame =
            serde_json::json!({"type": "message", "text": text, "client_id": format!("b{i}")});
        let t = Instant::now();
        ws.send(Ws::Text(frame.to_string().into())).await?;
        wait_frame(&mut ws, "message", Some("brand_agent")).await?;
        times.push(t.elapsed());
        let _ = ws.close(None).await;
    }
    println!(
        "chat round trip, order status over the WebSocket ({} questions, offline resolver): p50 {:.2} ms, p99 {:.2} ms",
        times.len(),
        ms(percentile(&mut times, 50.0)),
        ms(percentile(&mut times, 99.0))
    );

    // Idle sockets: connected and welcomed, then left open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib();
    let mut sockets = Vec::with_capacity(idle);
    for _ in 0..idle {
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(client_config), true)
                .await?;
        ws.send(Ws::Text(r#"{"type":"hello"}"#.into())).await?;
        wait_frame(&mut ws, "welcome", None).await?;
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    let open = crate::telemetry::metrics_handle()
        .render()
        .lines()
        .find(|l| l.starts_with("concierge_chat_sockets "))
        .map(str::to_string)
        .unwrap_or_default();
    println!(
        "idle sockets: {} held ({open}); process memory {:.1} MiB → {:.1} MiB = {:.1} KiB per socket (server and bench client share this process, so this counts both ends)",
        sockets.len(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / sockets.len().max(1) as f64
    );
    drop(sockets);
    let _ = tx.send(());
    server.await??;
    Ok(())
}

async fn wait_frame<S>(
    ws: &mut S,
    kind: &str,
    author: Option<&str>,
) -> anyhow::Result<serde_json::Value>
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures::StreamExt;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no frame within 30 s")?
            .context("socket closed")??;
        if let tokio_tungstenite::tungstenite::Message::Text(t) = frame {
            let v: serde_json::Value = serde_json::from_str(&t)?;
            if v["type"] == kind && author.is_none_or(|a| v["author"] == a) {
                return Ok(v);
            }
            anyhow::ensure!(
                v["type"] != "error",
                "waiting for a {kind} frame, the server answered {v}"
            );
        }
    }
}

async fn bench_webhook(messages: usize, concurrency: usize) -> anyhow::Result<()> {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let dir = tempfile::tempdir()?;
    let channels = dir.path().join("channels");
    std::fs::create_dir_all(&channels)?;
    std::fs::write(
        channels.join("bench.toml"),
        r#"[marketplace]
name = "bench"
[marketplace.signature]
scheme = "hmac-sha256"
header = "X-Marketplace-Signature"
encoding = "base64"
secret_env = "CONCIERGE_BENCH_MARKETPLACE_SECRET"
[marketplace.fields]
buyer_id = "/buyer/id"
thread_id = "/thread_id"
message_id = "/message/id"
text = "/message/text"
[marketplace.reply]
url = "http://127.0.0.1:9/threads/{thread_id}/messages"
body = '{"text": "{{text}}"}'
"#,
    )?;
    let secret = "bench-secret-0123456789";
    // SAFETY: set before the app starts; nothing else reads the environment concurrently here.
    unsafe { std::env::set_var("CONCIERGE_BENCH_MARKETPLACE_SECRET", secret) };
    let mut config = bench_config(dir.path())?;
    config.brand.channels = channels;
    // The worker would start answering; this measures intake (verify, store, queue).
    config.jobs.poll_interval_ms = 3_600_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = Application::build_with_listener(config, listener).await?;
    let (mut all, wall) = drive(app, concurrency, messages, move |c, i, _| {
        let body = serde_json::json!({
            "thread_id": format!("t-{c}-{i}"),
            "buyer": {"id": format!("buyer-{c}-{i}")},
            "message": {"id": format!("m-{c}-{i}"), "text": "Where is my order #W2611340?"},
        })
        .to_string();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())?;
        mac.update(body.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        Ok(post_request(
            "/channels/marketplace/bench/webhook",
            &[("X-Marketplace-Signature", &sig)],
            &body,
        ))
    })
    .await?;
    println!(
        "signed marketplace webhook in → stored, reply queued ({} messages, {} connections): p50 {:.2} ms, p99 {:.2} ms, {:.0} messages/s",
        all.len(),
        concurrency.max(1),
        ms(percentile(&mut all, 50.0)),
        ms(percentile(&mut all, 99.0)),
        all.len() as f64 / wall.as_secs_f64()
    );
    Ok(())
}

/// Resident memory of this process in KiB (Linux), 0 elsewhere.
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Serves `app`, sends `total` requests spread over `concurrency` keep-alive connections
/// (`request(connection, i, per_connection)` builds each raw request), stops the server, and
/// returns every latency and the wall time. An answer other than 200 is an error.
async fn drive<F>(
    app: Application,
    concurrency: usize,
    total: usize,
    request: F,
) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize, usize, usize) -> anyhow::Result<String> + Send + Sync + 'static,
{
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    let driven = drive_addr(addr, concurrency, total, request).await;
    let _ = tx.send(());
    server.await??;
    driven
}

/// Sends `total` requests to a server already listening on `addr`, over `concurrency`
/// keep-alive connections, as [`drive`] does.
pub(crate) async fn drive_addr<F>(
    addr: std::net::SocketAddr,
    concurrency: usize,
    total: usize,
    request: F,
) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize, usize, usize) -> anyhow::Result<String> + Send + Sync + 'static,
{
    let request = std::sync::Arc::new(request);
    let conns = concurrency.max(1);
    let per_conn = total.div_ceil(conns);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = HttpConn::connect(addr).await?;
            let mut times = Vec::with_capacity(per_conn);
            for i in 0..per_conn {
                let req = request(c, i, per_conn)?;
                let t = Instant::now();
                let status = conn.exchange(req.as_bytes()).await?;
                times.push(t.elapsed());
                anyhow::ensure!(status == 200, "the server answered {status} to:\n{req}");
            }
            anyhow::Ok(times)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, started.elapsed()))
}

fn get_request(path: &str, bearer: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {bearer}\r\n\r\n")
}

fn post_request(path: &str, headers: &[(&str, &str)], json: &str) -> String {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )
}

/// A minimal keep-alive HTTP/1.1 client for benchmarks (no TLS, no chunked bodies): enough
/// to measure our own server without pulling a client library into the binary.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<HttpConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends one raw request and reads the whole response; returns the status code.
    pub async fn exchange(&mut self, req: &[u8]) -> anyhow::Result<u16> {
        self.stream.write_all(req).await?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&self.buf[..end]).context("response head")?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("status line")?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .context("content-length")?;
            while self.buf.len() < end + 4 + len {
                let n = self.stream.read(&mut chunk).await?;
                anyhow::ensure!(n > 0, "server closed the connection");
                self.buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> Duration {
    percentile(v, 50.0)
}

/// The p-th percentile (nearest rank) of some durations.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
