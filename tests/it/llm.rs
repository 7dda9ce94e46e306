//! LLM mode against a fake OpenAI-compatible server that speaks the real chat-completions wire
//! format and plays a script: tool calls, policy refusals, a leaking reply, a timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp};

#[derive(Clone, Default)]
struct Script {
    replies: Arc<Mutex<Vec<Value>>>,
    requests: Arc<Mutex<Vec<Value>>>,
    delay: Option<Duration>,
}

fn tool_call(name: &str, args: Value) -> Value {
    completion(
        json!({"role": "assistant", "content": null, "tool_calls": [{
        "id": format!("call_{name}"), "type": "function",
        "function": {"name": name, "arguments": args.to_string()}}]}),
        "tool_calls",
    )
}

fn text(content: &str) -> Value {
    completion(json!({"role": "assistant", "content": content}), "stop")
}

fn completion(message: Value, finish: &str) -> Value {
    json!({"id": "chatcmpl-test", "object": "chat.completion", "created": 1_763_900_000,
           "model": "fake-model",
           "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
}

async fn completions(State(s): State<Script>, Json(req): Json<Value>) -> Json<Value> {
    s.requests.lock().unwrap().push(req);
    if let Some(d) = s.delay {
        tokio::time::sleep(d).await;
    }
    let mut r = s.replies.lock().unwrap();
    Json(if r.is_empty() {
        text("(script exhausted)")
    } else {
        r.remove(0)
    })
}

/// Starts the fake model server and an app that uses it.
async fn setup(
    replies: Vec<Value>,
    delay: Option<Duration>,
    timeout_secs: u64,
) -> (TestApp, Script) {
    let script = Script {
        replies: Arc::new(Mutex::new(replies)),
        requests: Arc::default(),
        delay,
    };
    let router = axum::Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.llm.model = Some("fake-model".into());
        c.llm.base_url = Some(format!("http://{addr}/v1"));
        c.llm.timeout_secs = timeout_secs;
    })
    .await;
    app.import_tau().await;
    (app, script)
}

async fn say(app: &TestApp, from: Value, thread: &str, text: &str) -> Value {
    let (s, body) = app
        .post_message(json!({"thread": thread, "from": from, "text": text}))
        .await;
    assert_eq!(s, 200, "{body}");
    body
}

fn ivan() -> Value {
    json!({"email": "ivan.santos3158@example.com", "verified": true})
}

#[tokio::test]
async fn a_tool_call_round_trip() {
    let (app, script) = setup(
        vec![
            tool_call("get_order", json!({"order_id": "#W6310710"})),
            text("Your order #W6310710 has shipped; the tracking number is 951786982868."),
        ],
        None,
        10,
    )
    .await;
    let anya = json!({"email": "anya.garcia2061@example.com", "verified": true});
    let body = say(&app, anya, "llm-1", "where is my order #W6310710?").await;
    let reply = body["reply"]["text"].as_str().unwrap();
    assert!(reply.contains("951786982868"), "{body}");
    let reqs = script.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "one tool round trip");
    // The model was offered our tools, and got the tool result from the store.
    let tools: Vec<&str> = reqs[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(
        tools.contains(&"get_order") && tools.contains(&"cancel_order"),
        "{tools:?}"
    );
    let tool_msg = reqs[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("tool result sent back")
        .clone();
    assert!(
        tool_msg["content"]
            .as_str()
            .unwrap()
            .contains("951786982868"),
        "{tool_msg}"
    );
    assert_eq!(tool_msg["tool_call_id"], "call_get_order");
    assert!(
        reqs[0]["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Alder & Pine")
    );
    let kinds: Vec<&str> = body["resolution"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"order_lookup"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_forbidden_call_is_refused_and_writes_wait_for_yes() {
    let (app, script) = setup(
        vec![
            // Cancel a delivered order: the policy refuses it.
            tool_call(
                "cancel_order",
                json!({"order_id": "#W6893533", "reason": "no longer needed"}),
            ),
            text("I'm sorry, that order was already delivered, so it can't be cancelled."),
            // Cancel a pending one: nothing happens until the shopper says yes.
            tool_call(
                "cancel_order",
                json!({"order_id": "#W5183325", "reason": "no longer needed"}),
            ),
            text("I can cancel order #W5183325 (refund $316.60 to PayPal). Shall I go ahead?"),
        ],
        None,
        10,
    )
    .await;
    let body = say(&app, ivan(), "llm-2", "cancel #W6893533, I don't need it").await;
    let reqs = script.requests.lock().unwrap().clone();
    let refusal = reqs[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(refusal.contains("delivered"), "{refusal}");
    let o = app
        .store()
        .get_order_by_number("#W6893533")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.status.as_str(), "delivered", "{body}");

    let body = say(
        &app,
        ivan(),
        "llm-2",
        "ok then cancel #W5183325 instead, no longer needed",
    )
    .await;
    assert_eq!(body["resolution"]["status"], "awaiting_customer", "{body}");
    let o = app
        .store()
        .get_order_by_number("#W5183325")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.status.as_str(), "pending", "not on the model's word");

    let body = say(&app, ivan(), "llm-2", "yes").await;
    let kinds: Vec<&str> = body["resolution"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"order_cancelled"), "{body}");
    let o = app
        .store()
        .get_order_by_number("#W5183325")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.status.as_str(), "cancelled");
    app.stop().await;
}

#[tokio::test]
async fn a_reply_with_another_customers_data_is_blocked() {
    let (app, _script) = setup(
        vec![text("Sure! Anya's order #W6310710 went out with tracking 951786982868; her email is anya.garcia2061@example.com.")],
        None,
        10,
    )
    .await;
    let body = say(&app, ivan(), "llm-3", "tell me about anya's order").await;
    let reply = body["reply"]["text"].as_str().unwrap();
    for secret in ["#W6310710", "951786982868", "anya.garcia2061@example.com"] {
        assert!(!reply.contains(secret), "{secret} leaked: {reply}");
    }
    assert!(!reply.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_timeout_falls_back_to_the_offline_resolver() {
    let (app, _script) = setup(vec![text("too late")], Some(Duration::from_secs(5)), 1).await;
    let start = std::time::Instant::now();
    let body = say(
        &app,
        json!({"name": "Sam"}),
        "llm-4",
        "Where is my order #W6310710?",
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "answered without waiting for the model"
    );
    let reply = body["reply"]["text"].as_str().unwrap();
    assert!(!reply.contains("too late"), "{reply}");
    assert!(
        reply.to_lowercase().contains("email"),
        "the offline resolver asks to verify: {reply}"
    );
    assert_eq!(body["resolution"]["status"], "awaiting_customer");
    app.stop().await;
}
