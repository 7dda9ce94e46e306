//! Web chat over a real WebSocket: hello/welcome with a signed token, a question answered by
//! the agent, a staff reply that arrives while the visitor is away delivered on reconnect, and
//! bad frames answered with an error while the socket stays usable.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use concierge::store::{AuthorKind, Direction, NewMessage};

use crate::helpers::TestApp;

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn connect(app: &TestApp) -> Socket {
    let url = format!("{}/chat/ws", app.addr.replace("http://", "ws://"));
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
