//! `concierge bench memory`: the server's resident memory with a large store and many open
//! chat sockets. The server is a `concierge serve` child process of this binary, so the figure
//! is the server's alone (the bench's own client sockets live in this process): after start
//! with N generated orders in its SQLite store and search index, then with M web-chat sockets
//! connected and welcomed, then after a few hundred order reads have warmed its read models.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::bench::{BENCH_KEY, HttpConn, wait_frame};

pub async fn run(orders: usize, sockets: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let t = Instant::now();
    let demo = crate::demo::generate(
        11,
        crate::util::now_ms(),
        crate::demo::DemoSize {
            customers: (orders / 4).max(1),
            orders,
        },
    );
    let store = crate::store::Store::open(&data, None, 4).await?;
    store
        .import(&demo.customers, &demo.products, &demo.orders, |_| {})
        .await?;
    store.close().await;
    let numbers: Vec<String> = demo.orders.iter().map(|o| o.number.clone()).collect();
    drop(demo);
    println!(
        "memory: {orders} generated orders imported in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let exe = std::env::current_exe().context("cannot find this binary to start the server")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .arg("--bind")
        .arg(addr.to_string())
        .env("CONCIERGE_API_KEY", BENCH_KEY)
        .env("CONCIERGE_LOG__LEVEL", "warn")
        .env("CONCIERGE_CHAT__SOCKETS_PER_IP", "0")
        // Each socket's hello counts as a chat message from the bench's one address.
        .env("CONCIERGE_CHAT__MESSAGES_PER_MINUTE_PER_IP", "0")
        .env("CONCIERGE_CHAT__MESSAGES_PER_MINUTE", "0")
        .env("CONCIERGE_LIMITS__PUBLIC_PER_IP_PER_MINUTE", "0")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start `concierge serve`")?;
    let pid = child.id().context("the server has no pid")?;
    let started = Instant::now();
    loop {
        if let Ok(mut c) = HttpConn::connect(addr).await
            && c.exchange(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
                .await
                .is_ok_and(|s| s == 200)
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the server did not answer /healthz within 5 minutes"
        );
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the server exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the start-up work (index checks, the first feed pass) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_of(pid)?;
    println!(
        "  server started in {:.1} s; resident memory with {orders} orders: {:.1} MiB",
        started.elapsed().as_secs_f64(),
        idle as f64 / 1024.0
    );

    let url = format!("ws://{addr}/chat/ws");
    let client_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    let mut open = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(client_config), true)
                .await?;
        ws.send(Ws::Text(r#"{"type":"hello"}"#.into())).await?;
        wait_frame(&mut ws, "welcome", None).await?;
        open.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_sockets = rss_of(pid)?;
    println!(
        "  with {} chat sockets open: {:.1} MiB ({:.1} KiB per socket)",
        open.len(),
        with_sockets as f64 / 1024.0,
        with_sockets.saturating_sub(idle) as f64 / open.len().max(1) as f64
    );

    let mut conn = HttpConn::connect(addr).await?;
    for n in numbers.iter().step_by((numbers.len() / 500).max(1)) {
        let req = format!(
            "GET /api/v1/orders/{} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {BENCH_KEY}\r\n\r\n",
            n.trim_start_matches('#')
        );
        let status = conn.exchange(req.as_bytes()).await?;
        anyhow::ensure!(status == 200, "order read answered {status}");
    }
    let warm = rss_of(pid)?;
    println!(
        "  after 500 order reads (read models warm), sockets still open: {:.1} MiB",
        warm as f64 / 1024.0
    );
    drop(open);
    let _ = child.kill().await;
    Ok(())
}

/// Resident memory of process `pid` in KiB (Linux).
fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("resident memory is read from /proc (Linux only)")?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}
