//! `concierge bench inbox`: how fast the staff inbox renders with a full queue. Fills a fresh
//! SQLite data dir with N conversations (3 messages each, every tenth escalated) and one with M
//! messages, signs a staff member in, then times the queue page, a filtered and a searched
//! queue, the escalation list and the long conversation — in-process (routing, session lookup,
//! queries and handlebars; no network), then over HTTP on a keep-alive loopback connection.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use crate::app::Application;
use crate::bench::{HttpConn, percentile};
use crate::util::{now_ms, random_token, sha256_hex};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(conversations: usize, messages: usize, renders: usize) -> anyhow::Result<()> {
    let renders = renders.max(1);
    let dir = tempfile::tempdir()?;
    let config = crate::bench::bench_config(dir.path())?;

    let store = crate::app::open_store(&config).await?;
    let t = Instant::now();
    let long = store.seed_inbox_for_bench(conversations, messages).await?;
    let staff = store
        .create_staff(
            "bench@example.com",
            Some("Bench"),
            "admin",
            &crate::web::hash_password(&random_token(16))?,
        )
        .await?;
    let token = random_token(32);
    store
        .create_staff_session(
            &sha256_hex(token.as_bytes()),
            &staff.id,
            &random_token(24),
            now_ms() + 3_600_000,
        )
        .await?;
    store.close().await;
    println!(
        "filled {} conversations (+1 with {messages} messages) in {:.1} s",
        conversations,
        t.elapsed().as_secs_f64()
    );
    let cookie = format!("concierge_staff={token}");
    let pages = [
        ("queue, first page", "/inbox".to_string()),
        ("queue, escalated filter", "/inbox?escalated=1".to_string()),
        ("queue, page 100", "/inbox?page=100".to_string()),
        ("queue, message search", "/inbox?q=kettle".to_string()),
        ("escalation list", "/inbox/escalations".to_string()),
        (
            "conversation with many messages",
            format!("/inbox/c/{long}"),
        ),
    ];

    // In-process: the router answers without a socket.
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let app = Application::build_with_listener(config.clone(), listener).await?;
        let router = crate::app::router(app.state().clone());
        // The first search indexes every message; time it apart from the renders.
        let t = Instant::now();
        let warm = send(&router, "/inbox?q=warmup", &cookie).await?;
        println!(
            "message search index built on first search in {:.0} ms",
            ms(t.elapsed())
        );
        anyhow::ensure!(
            warm.0 == StatusCode::OK,
            "warm-up search answered {}",
            warm.0
        );
        println!(
            "in-process (server-side: routing, session, queries, rendering), {renders} renders each:"
        );
        for (label, path) in &pages {
            let mut times = Vec::with_capacity(renders);
            let mut bytes = 0;
            for _ in 0..renders {
                let t = Instant::now();
                let (status, len) = send(&router, path, &cookie).await?;
                times.push(t.elapsed());
                anyhow::ensure!(status == StatusCode::OK, "{path} answered {status}");
                bytes = len;
            }
            println!(
                "  {label:<34} p50 {:>7.2} ms  p99 {:>7.2} ms  ({} KiB)",
                ms(percentile(&mut times, 50.0)),
                ms(percentile(&mut times, 99.0)),
                bytes / 1024
            );
        }
        drop(router);
        drop(app);
    }
    // Let the in-process router's search writer go before the server opens the index.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Over HTTP, one keep-alive connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = Application::build_with_listener(config, listener).await?;
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    let mut conn = HttpConn::connect(addr).await?;
    println!("over HTTP (loopback, keep-alive, client-side latency), {renders} requests each:");
    for (label, path) in &pages {
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nCookie: {cookie}\r\n\r\n");
        let mut times = Vec::with_capacity(renders);
        for _ in 0..renders {
            let t = Instant::now();
            let status = conn.exchange(req.as_bytes()).await?;
            times.push(t.elapsed());
            anyhow::ensure!(status == 200, "{path} answered {status}");
        }
        println!(
            "  {label:<34} p50 {:>7.2} ms  p99 {:>7.2} ms",
            ms(percentile(&mut times, 50.0)),
            ms(percentile(&mut times, 99.0))
        );
    }
    drop(conn);
    let _ = tx.send(());
    server.await??;
    Ok(())
}

/// One GET through the router; (status, body length).
async fn send(
    router: &axum::Router,
    path: &str,
    cookie: &str,
) -> anyhow::Result<(StatusCode, usize)> {
    let req = Request::get(path)
        .header("cookie", cookie)
        .body(Body::empty())?;
    let resp = router.clone().oneshot(req).await?;
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
    Ok((status, body.len()))
}
