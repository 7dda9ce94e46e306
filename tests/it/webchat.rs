//! Web chat over a real WebSocket: hello/welcome with a signed token, a question answered by
//! the agent, a staff reply that arrives while the visitor is away delivered on reconnect, and
//! bad frames answered with an error while the socket stays usable. A message acknowledged by a
//! service that is then killed (`kill -9`, mid-turn) is answered once the service is back, once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use concierge::store::{AuthorKind, Direction, NewMessage};

use crate::helpers::TestApp;

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn connect(app: &TestApp) -> Socket {
    connect_to(&app.addr).await
}

/// A socket to the web chat of the service at `addr` (`http://host:port`).
pub(crate) async fn connect_to(addr: &str) -> Socket {
    let url = format!("{}/chat/ws", addr.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket")
        .0
}

pub(crate) async fn send(ws: &mut Socket, v: Value) {
    ws.send(Ws::Text(v.to_string().into())).await.unwrap();
}

/// The next frame matching `pred`, within 10 s.
pub(crate) async fn next_where(ws: &mut Socket, pred: impl Fn(&Value) -> bool) -> Value {
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

#[tokio::test]
async fn chat_answers_and_delivers_missed_staff_replies_on_reconnect() {
    let app = TestApp::spawn().await;
    app.import_tau().await;

    let mut ws = connect(&app).await;
    send(&mut ws, json!({"type": "hello"})).await;
    let welcome = next_where(&mut ws, |v| v["type"] == "welcome").await;
    let token = welcome["token"].as_str().unwrap().to_string();
    assert!(welcome["history"].as_array().unwrap().is_empty());

    // A bad frame gets an error; the socket stays usable.
    ws.send(Ws::Text("{not json".into())).await.unwrap();
    let err = next_where(&mut ws, |v| v["type"] == "error").await;
    assert!(
        err["message"].as_str().unwrap().contains("bad frame"),
        "{err}"
    );

    send(&mut ws, json!({"type": "message", "text": "How many days do I have to return something?", "client_id": "c-1"})).await;
    let ack = next_where(&mut ws, |v| v["type"] == "ack").await;
    assert_eq!(ack["client_id"], "c-1");
    let answer = next_where(&mut ws, |v| {
        v["type"] == "message" && v["author"] == "brand_agent"
    })
    .await;
    assert!(
        answer["text"].as_str().unwrap().contains("30 days"),
        "{answer}"
    );
    ws.close(None).await.ok();

    // While the visitor is away, a staff member replies.
    let conv = app
        .store()
        .conversation_by_thread(
            "webchat",
            &format!("webchat:{}", token.split('.').nth(1).unwrap()),
        )
        .await
        .unwrap()
        .expect("conversation exists");
    app.store()
        .append_message(
            &conv.id,
            &NewMessage {
                direction: Direction::Outbound,
                author_kind: AuthorKind::Staff,
                author_id: Some("staff-1".into()),
                text: "Hi, Jordan from the team here: your label is on its way.".into(),
                html: None,
                meta: json!({}),
            },
        )
        .await
        .unwrap();

    // Reconnect with the token: the conversation comes back, with the missed reply.
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"type": "hello", "token": token})).await;
    let welcome = next_where(&mut ws, |v| v["type"] == "welcome").await;
    let history = welcome["history"].as_array().unwrap();
    let authors: Vec<&str> = history
        .iter()
        .filter_map(|m| m["author"].as_str())
        .collect();
    assert_eq!(authors, ["customer", "brand_agent", "staff"], "{welcome}");
    assert!(history[2]["text"].as_str().unwrap().contains("Jordan"));

    // A forged token starts a fresh conversation instead.
    let mut other = connect(&app).await;
    send(
        &mut other,
        json!({"type": "hello", "token": token.replace('.', "x")}),
    )
    .await;
    let w = next_where(&mut other, |v| v["type"] == "welcome").await;
    assert!(w["history"].as_array().unwrap().is_empty());
    assert_ne!(w["token"], json!(token));

    // Messages before hello are refused with an error, not a dropped socket.
    send(&mut other, json!({"type": "typing"})).await;
    let mut fresh = connect(&app).await;
    send(
        &mut fresh,
        json!({"type": "message", "text": "hi", "client_id": "x"}),
    )
    .await;
    let e = next_where(&mut fresh, |v| v["type"] == "error").await;
    assert!(e["message"].as_str().unwrap().contains("hello"));
    app.stop().await;
}

#[tokio::test]
async fn the_widget_and_demo_page_are_served() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("/chat/widget.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    let js = r.text().await.unwrap();
    assert!(js.contains("/chat/ws") && js.contains("hello"));
    let page = app
        .client
        .get(app.url("/chat"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<script src=\"/chat/widget.js\""), "{page}");
    app.stop().await;
}

/// A stand-in for the LLM endpoint that holds every request until told to answer: the turn it
/// serves stays in flight as long as the test wants.
#[derive(Clone, Default)]
struct StallingModel {
    answering: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

async fn stalling_completions(
    axum::extract::State(m): axum::extract::State<StallingModel>,
    axum::Json(_req): axum::Json<Value>,
) -> axum::Json<Value> {
    m.requests.fetch_add(1, Ordering::SeqCst);
    while !m.answering.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    axum::Json(json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1_763_900_000,
        "model": "fake-model",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                     "message": {"role": "assistant", "content": "Happy to help with that!"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
}

/// `concierge serve` on `data` with the stalling model, on a free port; returns the child and
/// its address once it answers health checks.
async fn serve(data: &std::path::Path, model: &str) -> (crate::cli::Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = crate::cli::concierge(data)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("CONCIERGE_LLM__MODEL", "fake-model")
        .env("CONCIERGE_LLM__BASE_URL", model)
        .env("CONCIERGE_LLM__TIMEOUT_SECS", "300")
        .env("OPENAI_API_KEY", "test-key")
        .env("CONCIERGE_JOBS__LEASE_SECS", "2")
        .env("CONCIERGE_JOBS__POLL_INTERVAL_MS", "100")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start concierge serve");
    let server = crate::cli::Server(child);
    let addr = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = concierge::http_client::client()
            .get(format!("{addr}/healthz"))
            .send()
            .await
            && r.status().is_success()
        {
            return (server, addr);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "concierge serve did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn authors(history: &Value, author: &str) -> usize {
    history
        .as_array()
        .map_or(0, |h| h.iter().filter(|m| m["author"] == author).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_acknowledged_before_a_kill_is_answered_after_restart_once() {
    let model = StallingModel::default();
    let router = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(stalling_completions),
        )
        .with_state(model.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model_url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    let (mut server, addr) = serve(&data, &model_url).await;
    let mut ws = connect_to(&addr).await;
    send(&mut ws, json!({"type": "hello"})).await;
    let token = next_where(&mut ws, |v| v["type"] == "welcome").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    send(
        &mut ws,
        json!({"type": "message", "text": "do you ship to Canada?", "client_id": "c-1"}),
    )
    .await;
    next_where(&mut ws, |v| v["type"] == "ack" && v["client_id"] == "c-1").await;
    // The turn is under way (the model has the question) when the service dies.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while model.requests.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the turn never reached the model"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.0.kill().expect("kill -9");
    server.0.wait().unwrap();
    drop(ws);

    model.answering.store(true, Ordering::SeqCst);
    let (server, addr) = serve(&data, &model_url).await;
    let mut ws = connect_to(&addr).await;
    send(&mut ws, json!({"type": "hello", "token": token})).await;
    let welcome = next_where(&mut ws, |v| v["type"] == "welcome").await;
    assert_eq!(authors(&welcome["history"], "customer"), 1, "{welcome}");
    if authors(&welcome["history"], "brand_agent") == 0 {
        // Answered once the dead instance's lease on the turn runs out (2 s here).
        let reply = next_where(&mut ws, |v| {
            v["type"] == "message" && v["author"] == "brand_agent"
        })
        .await;
        assert!(
            reply["text"]
                .as_str()
                .unwrap_or_default()
                .contains("Happy to help with that!"),
            "the model's answer: {reply}"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut again = connect_to(&addr).await;
    send(&mut again, json!({"type": "hello", "token": token})).await;
    let welcome = next_where(&mut again, |v| v["type"] == "welcome").await;
    assert_eq!(
        authors(&welcome["history"], "brand_agent"),
        1,
        "answered once: {welcome}"
    );
    assert_eq!(authors(&welcome["history"], "customer"), 1, "{welcome}");
    drop(server);
}
