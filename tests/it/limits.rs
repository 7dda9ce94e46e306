//! Limits on every door, from the outside: the per-address limit on public routes (and
//! `X-Forwarded-For` only from a trusted proxy), the per-agent-key limit on the gateway, the web
//! chat's message, typing and socket limits and its Origin check, the sign-in limits and the cap
//! on password checks; the security headers of the inbox and chat pages; the data dir's file
//! modes. Each refusal is a 429 with `Retry-After` and a body naming the limit.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Db, TestApp};
use crate::inbox::{PASSWORD, add_staff, try_login, try_login_with};

async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.client.get(app.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on {}", r.status()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A 429 JSON refusal naming `limit`.
async fn assert_refused(r: reqwest::Response, limit: &str) {
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["limit"], limit, "{body}");
}

#[tokio::test]
async fn public_routes_are_limited_per_client_address() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.limits.public_per_ip_per_minute = 5).await;
    for i in 0..5 {
        let r = get(&app, "/openapi.json", &[]).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert_refused(get(&app, "/openapi.json", &[]).await, "public_per_ip").await;
    // Every public door shares the address's budget…
    assert_refused(
        get(&app, "/.well-known/agent-card.json", &[]).await,
        "public_per_ip",
    )
    .await;
    let r = app
        .client
        .post(app.url("/api/v1/messages"))
        .bearer_auth(crate::helpers::API_KEY)
        .json(&json!({"thread": "t", "text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_refused(r, "public_per_ip").await;
    // …the inbox sign-in answers with a page that names the limit…
    let r = get(&app, "/inbox/login", &[]).await;
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("public_per_ip") && page.contains("5 requests a minute"),
        "{page}"
    );
    // …and routes that are not public (health checks) are not limited.
    assert_eq!(get(&app, "/healthz", &[]).await.status(), 200);
    // An untrusted peer cannot pick another address with X-Forwarded-For.
    assert_refused(
        get(&app, "/openapi.json", &[("x-forwarded-for", "203.0.113.9")]).await,
        "public_per_ip",
    )
    .await;
    let text = concierge::telemetry::metrics_handle().render();
    assert!(
        text.contains("concierge_limit_refusals_total{limit=\"public_per_ip\"}"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.limits.public_per_ip_per_minute = 3;
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let a = [("x-forwarded-for", "203.0.113.1")];
    let b = [("x-forwarded-for", "198.51.100.7, 203.0.113.2")];
    for _ in 0..3 {
        assert_eq!(get(&app, "/openapi.json", &a).await.status(), 200);
    }
    assert_refused(get(&app, "/openapi.json", &a).await, "public_per_ip").await;
    // Another client behind the same proxy has its own budget (the proxy's entry is the last).
    for _ in 0..3 {
        assert_eq!(get(&app, "/openapi.json", &b).await.status(), 200);
    }
    assert_refused(get(&app, "/openapi.json", &b).await, "public_per_ip").await;
    // A spoofed first entry does not escape: the proxy appended the real address.
    let spoofed = [("x-forwarded-for", "192.0.2.1, 203.0.113.1")];
    assert_refused(get(&app, "/openapi.json", &spoofed).await, "public_per_ip").await;
    app.stop().await;
}

async fn sign_in_limits_per_address_behind_a_proxy(db: Db) {
    let Some(app) = TestApp::spawn_on_with(db, |c| {
        c.limits.login_per_ip = 3;
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await
    else {
        return;
    };
    add_staff(&app, "ana@example.com", "agent").await;
    let from_a = [("x-forwarded-for", "203.0.113.1")];
    for email in ["x1@example.com", "x2@example.com", "x3@example.com"] {
        let r = try_login_with(&app, email, "wrong password", &from_a).await;
        assert_eq!(r.status(), 401);
    }
    // A fourth failure from that address is refused, even for a real account and password…
    let r = try_login_with(&app, "ana@example.com", PASSWORD, &from_a).await;
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 60);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("3 failed sign-ins from one address"),
        "{page}"
    );
    // …while another client behind the proxy signs in.
    let r = try_login_with(
        &app,
        "ana@example.com",
        PASSWORD,
        &[("x-forwarded-for", "203.0.113.2")],
    )
    .await;
    assert_eq!(r.status(), 303);
    app.stop().await;
}
on_both!(sign_in_limits_per_address_behind_a_proxy);

async fn untrusted_forwarded_for_is_ignored_by_sign_in(db: Db) {
    let Some(app) = TestApp::spawn_on_with(db, |c| c.limits.login_per_ip = 2).await else {
        return;
    };
    for (i, ip) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
        let r = try_login_with(
            &app,
            &format!("y{i}@example.com"),
            "nope nope",
            &[("x-forwarded-for", ip)],
        )
        .await;
        assert_eq!(r.status(), 401);
    }
    let r = try_login_with(
        &app,
        "y9@example.com",
        "nope nope",
        &[("x-forwarded-for", "203.0.113.3")],
    )
    .await;
    assert_eq!(
        r.status(),
        429,
        "X-Forwarded-For from an untrusted peer must not count"
    );
    app.stop().await;
}
on_both!(untrusted_forwarded_for_is_ignored_by_sign_in);

/// 20 wrong passwords for one email at once: the attempts are reserved before checking, so at
/// most 5 passwords are checked and the rest are refused.
async fn parallel_wrong_sign_ins_are_checked_at_most_five_times(db: Db) {
    let Some(app) = TestApp::spawn_on(db).await else {
        return;
    };
    add_staff(&app, "bo@example.com", "agent").await;
    let before = app.state.limits.password_checks_done();
    let tries = (0..20).map(|_| try_login(&app, "bo@example.com", "not the password"));
    let statuses: Vec<u16> = futures::future::join_all(tries)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + refused, 20, "{statuses:?}");
    assert!(
        checked <= 5,
        "{checked} wrong passwords were checked: {statuses:?}"
    );
    assert!(refused >= 15, "{statuses:?}");
    let done = app.state.limits.password_checks_done() - before;
    assert!(done <= 5, "{done} Argon2 checks ran");
    assert!(
        app.state.limits.password_checks_peak() <= 2,
        "the semaphore caps running checks"
    );
    // The right password is refused too until the window passes.
    let r = try_login(&app, "bo@example.com", PASSWORD).await;
    assert_eq!(r.status(), 429);
    let text = concierge::telemetry::metrics_handle().render();
    assert!(text.contains("concierge_password_checks_total"), "{text}");
    app.stop().await;
}
on_both!(parallel_wrong_sign_ins_are_checked_at_most_five_times);

#[tokio::test]
async fn password_checks_beyond_the_queue_are_refused() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.limits.password_checks = 1;
        c.limits.password_check_queue = 0;
        c.limits.login_per_ip = 1000;
    })
    .await;
    let tries = (0..16).map(|i| {
        let app = &app;
        async move { try_login(app, &format!("p{i}@example.com"), "wrong password").await }
    });
    let responses = futures::future::join_all(tries).await;
    let mut refused = 0;
    for r in responses {
        match r.status().as_u16() {
            401 => {}
            429 => {
                refused += 1;
                assert!(retry_after(&r) >= 1);
                let page = r.text().await.unwrap();
                assert!(
                    page.contains("1 password checks at once and 0 waiting"),
                    "{page}"
                );
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert!(
        refused >= 1,
        "16 parallel sign-ins with one check at a time and no queue"
    );
    assert_eq!(app.state.limits.password_checks_peak(), 1);
    // Refused attempts were never checked, so they do not count against the address.
    let done = app.state.limits.password_checks_done();
    assert_eq!(done, 16 - refused as u64);
    app.stop().await;
}

// ---- the gateway, per agent key ----

struct Key {
    key: ed25519_dalek::SigningKey,
    key_id: String,
}

async fn register(app: &TestApp, name: &str) -> Key {
    use concierge::gateway::identity;
    let key = identity::generate_key();
    let key_id = identity::key_id(&key.verifying_key());
    app.store()
        .register_agent_key(
            name,
            &key_id,
            &identity::encode_public_key(&key.verifying_key()),
            concierge::util::now_ms(),
        )
        .await
        .unwrap();
    Key { key, key_id }
}

impl Key {
    fn signed(
        &self,
        app: &TestApp,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> reqwest::RequestBuilder {
        let url = app.url(path);
        let sig = concierge::gateway::identity::sign_request(
            &self.key,
            &self.key_id,
            method,
            &url,
            body,
            &concierge::util::random_token(12),
            concierge::util::now_ms() / 1000,
        );
        let mut req = app.client.request(method.parse().unwrap(), url);
        for (k, v) in sig.pairs() {
            req = req.header(k, v);
        }
        if !body.is_empty() {
            req = req
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        req
    }
}

#[tokio::test]
async fn each_agent_key_has_its_own_request_limit() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.limits.agent_key_per_minute = 3).await;
    let one = register(&app, "one").await;
    let two = register(&app, "two").await;
    for i in 0..3 {
        let r = one
            .signed(&app, "GET", "/agent/v1/policies?q=returns", b"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}: {:?}", r.text().await);
    }
    let r = one
        .signed(&app, "GET", "/agent/v1/policies?q=returns", b"")
        .send()
        .await
        .unwrap();
    assert_refused(r, "agent_key").await;
    // A2A answers in JSON-RPC, with the limit in the error's data.
    let body = serde_json::to_vec(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "nope"}}),
    )
    .unwrap();
    let r = one
        .signed(&app, "POST", "/a2a", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["data"]["code"], "rate_limited", "{v}");
    assert_eq!(v["error"]["data"]["limit"], "agent_key", "{v}");
    // MCP too.
    let body =
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).unwrap();
    let r = one
        .signed(&app, "POST", "/mcp", &body)
        .header("accept", "application/json, text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    // Another key is not affected, nor are unsigned public reads.
    let r = two
        .signed(&app, "GET", "/agent/v1/policies?q=returns", b"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get(&app, "/agent/v1/policies?q=returns", &[]).await;
    assert_eq!(r.status(), 200);
    app.stop().await;
}

// ---- web chat ----

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(app: &TestApp) -> String {
    format!("{}/chat/ws", app.addr.replace("http://", "ws://"))
}

async fn connect(app: &TestApp) -> Socket {
    tokio_tungstenite::connect_async(ws_url(app))
        .await
        .expect("websocket")
        .0
}

/// The handshake's HTTP status when it is refused (None when the socket opened).
async fn handshake(app: &TestApp, origin: Option<&str>) -> Result<Socket, (u16, Option<String>)> {
    let mut req = ws_url(app).into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((s, _)) => Ok(s),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string()),
        )),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Ws::Text(v.to_string().into())).await.unwrap();
}

async fn next_where(ws: &mut Socket, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket closed")
            .expect("socket error");
        if let Ws::Text(t) = frame {
            let v: Value = serde_json::from_str(&t).unwrap();
            if pred(&v) {
                return v;
            }
        }
    }
}

fn refused(limit: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == "error" && v["code"] == "rate_limited" && v["limit"] == limit
}

#[tokio::test]
async fn chat_messages_are_limited_per_socket() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.chat.messages_per_minute = 3).await;
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"type": "hello"})).await;
    next_where(&mut ws, |v| v["type"] == "welcome").await;
    for i in 0..2 {
        send(
            &mut ws,
            json!({"type": "message", "text": "hello there", "client_id": format!("m{i}")}),
        )
        .await;
        next_where(&mut ws, |v| v["type"] == "ack").await;
    }
    send(
        &mut ws,
        json!({"type": "message", "text": "one more", "client_id": "m9"}),
    )
    .await;
    let err = next_where(&mut ws, refused("chat_messages_per_socket")).await;
    assert_eq!(err["client_id"], "m9");
    assert!(err["retry_after_secs"].as_u64().unwrap() >= 1, "{err}");
    // The socket stays open.
    send(&mut ws, json!({"type": "typing"})).await;
    ws.send(Ws::Text("{not json".into())).await.unwrap();
    next_where(&mut ws, |v| {
        v["type"] == "error"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("bad frame"))
    })
    .await;
    ws.close(None).await.ok();
    app.stop().await;
}

#[tokio::test]
async fn chat_messages_are_limited_per_address_across_sockets() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.chat.messages_per_minute_per_ip = 4).await;
    let mut a = connect(&app).await;
    let mut b = connect(&app).await;
    for ws in [&mut a, &mut b] {
        send(ws, json!({"type": "hello"})).await;
        next_where(ws, |v| v["type"] == "welcome").await;
        send(
            ws,
            json!({"type": "message", "text": "hi", "client_id": "x"}),
        )
        .await;
        next_where(ws, |v| v["type"] == "ack").await;
    }
    send(
        &mut b,
        json!({"type": "message", "text": "again", "client_id": "y"}),
    )
    .await;
    next_where(&mut b, refused("chat_messages_per_ip")).await;
    app.stop().await;
}

#[tokio::test]
async fn chat_typing_frames_are_limited() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.chat.typing_per_minute = 2).await;
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"type": "hello"})).await;
    next_where(&mut ws, |v| v["type"] == "welcome").await;
    for _ in 0..3 {
        send(&mut ws, json!({"type": "typing"})).await;
    }
    let err = next_where(&mut ws, refused("chat_typing")).await;
    assert!(err["retry_after_secs"].as_u64().unwrap() >= 1, "{err}");
    app.stop().await;
}

#[tokio::test]
async fn chat_sockets_are_limited_per_address() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.chat.sockets_per_ip = 2).await;
    let a = connect(&app).await;
    let _b = connect(&app).await;
    let (status, retry) = handshake(&app, None)
        .await
        .expect_err("a third socket is refused");
    assert_eq!(status, 429);
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    // Closing one gives its slot back.
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match handshake(&app, None).await {
            Ok(_) => break,
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the slot was not given back: {e:?}"),
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn chat_sockets_only_from_allowed_origins() {
    let app = TestApp::spawn().await;
    let own = app.addr.clone();
    assert!(
        handshake(&app, Some(&own)).await.is_ok(),
        "the service's own page"
    );
    let (status, _) = handshake(&app, Some("https://evil.example"))
        .await
        .expect_err("refused");
    assert_eq!(status, 403);
    app.stop().await;

    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.chat.allowed_origins = vec!["https://shop.example.com".into()];
    })
    .await;
    assert!(
        handshake(&app, Some("https://shop.example.com"))
            .await
            .is_ok()
    );
    let (status, _) = handshake(&app, Some("https://evil.example"))
        .await
        .expect_err("refused");
    assert_eq!(status, 403);
    let own = app.addr.clone();
    assert_eq!(
        handshake(&app, Some(&own)).await.err().map(|e| e.0),
        Some(403)
    );
    app.stop().await;
}

#[tokio::test]
async fn chat_history_on_hello_is_bounded() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.chat.history_limit = 3).await;
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"type": "hello"})).await;
    let welcome = next_where(&mut ws, |v| v["type"] == "welcome").await;
    let token = welcome["token"].as_str().unwrap().to_string();
    for i in 0..4 {
        send(&mut ws, json!({"type": "message", "text": format!("note number {i}"), "client_id": format!("h{i}")})).await;
        next_where(&mut ws, |v| v["type"] == "ack").await;
    }
    ws.close(None).await.ok();
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"type": "hello", "token": token})).await;
    let welcome = next_where(&mut ws, |v| v["type"] == "welcome").await;
    let history = welcome["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{welcome}");
    // The latest ones, oldest first.
    let texts: Vec<&str> = history.iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(
        !texts.iter().any(|t| t.contains("note number 0")),
        "{texts:?}"
    );
    app.stop().await;
}

// ---- headers ----

#[tokio::test]
async fn inbox_and_chat_pages_send_security_headers() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.chat.frame_ancestors = vec!["https://shop.example.com".into()];
    })
    .await;
    for path in ["/inbox/login", "/inbox/assets/inbox.js"] {
        let r = get(&app, path, &[]).await;
        assert_eq!(r.status(), 200);
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    let page = get(&app, "/inbox/login", &[]).await.text().await.unwrap();
    assert_no_inline_script(&page);

    let r = get(&app, "/chat", &[]).await;
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(
        csp.contains("frame-ancestors https://shop.example.com"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers().contains_key("referrer-policy"));
    assert_no_inline_script(&r.text().await.unwrap());
    app.stop().await;

    // By default nobody may frame the demo page.
    let app = TestApp::spawn().await;
    let r = get(&app, "/chat", &[]).await;
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    app.stop().await;
}

fn assert_no_inline_script(html: &str) {
    for (i, _) in html.match_indices("<script") {
        let tag = &html[i..i + html[i..].find('>').unwrap()];
        assert!(tag.contains(" src="), "inline script: {tag}");
    }
    let lower = html.to_ascii_lowercase();
    for attr in [
        " onclick=",
        " onload=",
        " onsubmit=",
        " onchange=",
        " oninput=",
        "javascript:",
    ] {
        assert!(!lower.contains(attr), "inline handler {attr}");
    }
}

// ---- files ----

#[cfg(unix)]
#[tokio::test]
async fn data_dir_and_private_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let app = TestApp::spawn().await;
    let dir = app.data_dir();
    let db = dir.join("concierge.db");
    let key = dir.join("service_key.pem");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&key), 0o600);
    let wal = dir.join("concierge.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600);
    }
    // Wrong modes from before (a copied data dir, another umask) are fixed at start.
    let app = app
        .restart_with(|| {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        })
        .await;
    assert_eq!(mode(&app.data_dir()), 0o700);
    assert_eq!(mode(&app.data_dir().join("concierge.db")), 0o600);
    assert_eq!(mode(&app.data_dir().join("service_key.pem")), 0o600);
    app.stop().await;
}
