//! The Telegram channel end to end against a fake Bot API server (axum, real Bot API JSON):
//! `/start` is greeted in the brand's voice and an order question answered with its tracking
//! number, both through `sendMessage`; long polling answers every update exactly once across
//! restarts, also when a crash left the offset behind; webhook mode refuses a wrong secret,
//! registers itself with setWebhook, and accepts every sample update in
//! `shared/data/webhooks/telegram` without a server error. Deliveries: a chat Telegram says does
//! not exist is a dead letter at once, a 502 is retried; the job worker sends several replies at
//! once (up to `[jobs] concurrency`) and starts on a queued job without waiting for its poll.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::routing::post;
use concierge::util::Secret;
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, shared_data};

pub(crate) const TOKEN: &str = "123456:TEST-token_abc";
const WEBHOOK_SECRET: &str = "telegram-webhook-secret-0123";
const CHAT: i64 = 7_700_001;
const ORDER_QUESTION: &str = "where is my order #W6310710? my email is anya.garcia2061@example.com";

/// One getUpdates call as the fake saw it.
#[derive(Debug, Clone)]
pub(crate) struct Poll {
    offset: Option<i64>,
    returned: Vec<i64>,
    /// The path prefix the client was given (`<fake url>/<tag>` as its API URL), if any: tells
    /// apart several clients of one fake.
    pub(crate) tag: Option<String>,
}

#[derive(Default)]
struct FakeState {
    updates: Vec<Value>,
    /// (chat id, text) per sendMessage.
    sent: Vec<(i64, String)>,
    polls: Vec<Poll>,
    webhooks: Vec<Value>,
    next_message_id: i64,
    /// Answers sendMessage gives a chat instead of sending, in turn (status, body).
    refusals: std::collections::HashMap<i64, Vec<(u16, Value)>>,
    /// sendMessage calls per chat, refused ones included.
    attempts: std::collections::HashMap<i64, usize>,
    /// How long each sendMessage takes.
    send_delay: Duration,
    in_flight: usize,
    peak_in_flight: usize,
}

/// A stand-in for api.telegram.org.
#[derive(Clone)]
pub(crate) struct FakeBotApi {
    pub(crate) url: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeBotApi {
    pub(crate) async fn start() -> FakeBotApi {
        let state = Arc::new(Mutex::new(FakeState {
            next_message_id: 5000,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/{bot}/{method}", post(bot_method).get(bot_method))
            .route(
                "/{tag}/{bot}/{method}",
                post(tagged_method).get(tagged_method),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeBotApi { url, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a private text message from Anya; returns its update id.
    pub(crate) fn push_text(&self, update_id: i64, text: &str) -> i64 {
        let message_id = update_id + 100;
        self.lock().updates.push(json!({
            "update_id": update_id,
            "message": {
                "message_id": message_id,
                "date": 1_767_000_000 + update_id,
                "chat": {"id": CHAT, "type": "private", "first_name": "Anya", "last_name": "Garcia", "username": "anya_g"},
                "from": {"id": CHAT, "is_bot": false, "first_name": "Anya", "last_name": "Garcia", "username": "anya_g", "language_code": "en"},
                "text": text,
            }
        }));
        update_id
    }

    /// Queues a text message from Anya in a group chat (`kind`: "group" or "supergroup").
    fn push_group_text(&self, update_id: i64, chat: i64, kind: &str, text: &str) -> i64 {
        self.lock().updates.push(json!({
            "update_id": update_id,
            "message": {
                "message_id": update_id + 100,
                "date": 1_767_000_000 + update_id,
                "chat": {"id": chat, "type": kind, "title": "Trail friends"},
                "from": {"id": CHAT, "is_bot": false, "first_name": "Anya", "last_name": "Garcia", "username": "anya_g", "language_code": "en"},
                "text": text,
            }
        }));
        update_id
    }

    pub(crate) fn sent(&self) -> Vec<(i64, String)> {
        self.lock().sent.clone()
    }

    pub(crate) fn polls(&self) -> Vec<Poll> {
        self.lock().polls.clone()
    }

    pub(crate) async fn wait_sent(&self, n: usize, secs: u64) -> Vec<(i64, String)> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let sent = self.sent();
            if sent.len() >= n || Instant::now() > deadline {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ok(result: Value) -> axum::Json<Value> {
    axum::Json(json!({"ok": true, "result": result}))
}

async fn bot_method(
    State(state): State<Arc<Mutex<FakeState>>>,
    UrlPath((bot, method)): UrlPath<(String, String)>,
    body: Bytes,
) -> axum::response::Response {
    answer(state, None, bot, method, body).await
}

async fn tagged_method(
    State(state): State<Arc<Mutex<FakeState>>>,
    UrlPath((tag, bot, method)): UrlPath<(String, String, String)>,
    body: Bytes,
) -> axum::response::Response {
    answer(state, Some(tag), bot, method, body).await
}

async fn answer(
    state: Arc<Mutex<FakeState>>,
    tag: Option<String>,
    bot: String,
    method: String,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if bot != format!("bot{TOKEN}") {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"})),
        )
            .into_response();
    }
    let params: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    // Bot API method names are case-insensitive (teloxide sends "GetUpdates").
    match method.to_ascii_lowercase().as_str() {
        "getme" => ok(json!({
            "id": 123456, "is_bot": true, "first_name": "Alder & Pine", "username": "AlderPineBot",
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false
        }))
        .into_response(),
        "getupdates" => {
            let offset = params.get("offset").and_then(Value::as_i64);
            let wait = params
                .get("timeout")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(1);
            let deadline = Instant::now() + Duration::from_secs(wait);
            let batch = loop {
                let batch: Vec<Value> = lock()
                    .updates
                    .iter()
                    .filter(|u| offset.is_none_or(|o| u["update_id"].as_i64() >= Some(o)))
                    .cloned()
                    .collect();
                if !batch.is_empty() || Instant::now() >= deadline {
                    break batch;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            lock().polls.push(Poll {
                tag,
                offset,
                returned: batch
                    .iter()
                    .filter_map(|u| u["update_id"].as_i64())
                    .collect(),
            });
            ok(Value::Array(batch)).into_response()
        }
        "sendmessage" => {
            let chat_id = params["chat_id"].as_i64().unwrap_or_default();
            let text = params["text"].as_str().unwrap_or_default().to_string();
            let delay = {
                let mut s = lock();
                *s.attempts.entry(chat_id).or_default() += 1;
                if let Some((status, body)) = s
                    .refusals
                    .get_mut(&chat_id)
                    .filter(|r| !r.is_empty())
                    .map(|r| r.remove(0))
                {
                    let status = axum::http::StatusCode::from_u16(status).unwrap();
                    return (status, axum::Json(body)).into_response();
                }
                s.in_flight += 1;
                s.peak_in_flight = s.peak_in_flight.max(s.in_flight);
                s.send_delay
            };
            tokio::time::sleep(delay).await;
            let mut s = lock();
            s.in_flight -= 1;
            s.next_message_id += 1;
            let id = s.next_message_id;
            s.sent.push((chat_id, text.clone()));
            ok(json!({
                "message_id": id,
                "date": 1_767_000_000,
                "chat": {"id": chat_id, "type": "private", "first_name": "Anya"},
                "from": {"id": 123456, "is_bot": true, "first_name": "Alder & Pine", "username": "AlderPineBot"},
                "text": text,
            }))
            .into_response()
        }
        "setwebhook" => {
            // Sent as multipart/form-data (it may carry a certificate): keep the raw form.
            lock()
                .webhooks
                .push(Value::String(String::from_utf8_lossy(&body).into_owned()));
            ok(json!(true)).into_response()
        }
        "deletewebhook" => ok(json!(true)).into_response(),
        _ => (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(json!({"ok": false, "error_code": 404, "description": "Not Found: method not found"})),
        )
            .into_response(),
    }
}

async fn polling_app(fake: &FakeBotApi) -> TestApp {
    let url = fake.url.clone();
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.telegram.token = Some(Secret::new(TOKEN));
        c.telegram.api_url = url;
        c.telegram.poll_timeout_secs = 1;
        c.jobs.poll_interval_ms = 50;
    })
    .await;
    app.import_tau().await;
    app
}

async fn webhook_app(fake: &FakeBotApi) -> TestApp {
    let url = fake.url.clone();
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.telegram.token = Some(Secret::new(TOKEN));
        c.telegram.api_url = url;
        c.telegram.mode = "webhook".into();
        c.telegram.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
        c.server.public_url = Some("https://support.alderandpine.example.com/".into());
        c.jobs.poll_interval_ms = 50;
    })
    .await;
    app.import_tau().await;
    app
}

async fn post_update(app: &TestApp, secret: Option<&str>, body: String) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url("/channels/telegram/webhook"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(s) = secret {
        req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn offset_setting(app: &TestApp) -> Option<String> {
    app.store().get_setting("telegram_offset").await.unwrap()
}

fn count(sent: &[(i64, String)], needle: &str) -> usize {
    sent.iter().filter(|(_, t)| t.contains(needle)).count()
}

#[tokio::test]
async fn start_is_greeted_and_an_order_question_answered_over_polling() {
    let fake = FakeBotApi::start().await;
    let app = polling_app(&fake).await;

    fake.push_text(1, "/start");
    let sent = fake.wait_sent(1, 15).await;
    assert_eq!(sent.len(), 1, "one greeting: {sent:?}");
    assert_eq!(sent[0].0, CHAT);
    assert!(
        sent[0]
            .1
            .contains("thanks for reaching out to Alder & Pine"),
        "greeted in the brand's voice: {}",
        sent[0].1
    );
    assert!(
        sent[0].1.contains("What can I do for you today?"),
        "{}",
        sent[0].1
    );

    fake.push_text(2, ORDER_QUESTION);
    let sent = fake.wait_sent(2, 20).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].0, CHAT);
    assert!(
        sent[1].1.contains("951786982868"),
        "the answer carries the tracking number: {}",
        sent[1].1
    );
    assert!(
        !sent[1].1.contains("thanks for reaching out"),
        "greeted once per conversation: {}",
        sent[1].1
    );

    // One conversation for the chat, the Telegram user as its identity.
    let conv = app
        .store()
        .conversation_by_thread("telegram", &format!("telegram:{CHAT}"))
        .await
        .unwrap()
        .expect("the chat's conversation");
    let (status, view) = app
        .get_json(&format!("/api/v1/conversations/{}", conv.id))
        .await;
    assert_eq!(status, 200, "{view}");
    let messages = view["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 4, "two in, two out: {view}");
    assert_eq!(offset_setting(&app).await.as_deref(), Some("2"));

    // Nothing else goes out.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fake.sent().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn restarts_answer_every_update_exactly_once() {
    let fake = FakeBotApi::start().await;
    let app = polling_app(&fake).await;

    // The first update is processed, then the app "crashes" before saving its offset (the
    // offset is rewound to simulate that) and comes back.
    let first = fake.push_text(41, ORDER_QUESTION);
    let sent = fake.wait_sent(1, 20).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(offset_setting(&app).await.as_deref(), Some("41"));
    app.store()
        .set_setting("telegram_offset", "40")
        .await
        .unwrap();
    let polls_before = fake.polls().len();
    let app = app.restart().await;

    // The second update arrives while the app is back.
    let second = fake.push_text(42, "thank you so much!");
    let sent = fake.wait_sent(2, 20).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    let polls = fake.polls();
    assert!(
        polls[polls_before..]
            .iter()
            .any(|p| p.returned.contains(&first)),
        "the unsaved update was read again: {polls:?}"
    );
    assert_eq!(offset_setting(&app).await.as_deref(), Some("42"));

    // A clean restart resumes after the last processed update.
    let polls_before = fake.polls().len();
    let app = app.restart().await;
    let third = fake.push_text(43, "/start");
    let sent = fake.wait_sent(3, 20).await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    let polls = fake.polls();
    assert!(
        polls[polls_before..]
            .iter()
            .all(|p| p.offset >= Some(second + 1)),
        "resumed from the saved offset: {polls:?}"
    );
    assert!(polls.iter().any(|p| p.returned.contains(&third)));

    // Each update answered exactly once, nothing lost.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = fake.sent();
    assert_eq!(sent.len(), 3, "exactly one reply per update: {sent:?}");
    assert_eq!(count(&sent, "951786982868"), 1, "{sent:?}");
    let stored = app
        .store()
        .conversation_by_thread("telegram", &format!("telegram:{CHAT}"))
        .await
        .unwrap()
        .expect("conversation");
    let (_, view) = app
        .get_json(&format!("/api/v1/conversations/{}", stored.id))
        .await;
    let inbound = view["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["direction"] == "inbound").count())
        .unwrap_or_default();
    assert_eq!(inbound, 3, "each update stored once: {view}");
    app.stop().await;
}

#[tokio::test]
async fn webhook_checks_the_secret_and_stores_each_update_once() {
    let fake = FakeBotApi::start().await;
    let app = webhook_app(&fake).await;

    // Registered with Telegram at start.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.lock().webhooks.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hooks = fake.lock().webhooks.clone();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let form = hooks[0].as_str().unwrap_or_default();
    assert!(
        form.contains("name=\"url\"")
            && form.contains("https://support.alderandpine.example.com/channels/telegram/webhook"),
        "{form}"
    );
    assert!(
        form.contains("name=\"secret_token\"") && form.contains(WEBHOOK_SECRET),
        "{form}"
    );

    let update = json!({
        "update_id": 900,
        "message": {
            "message_id": 77, "date": 1_767_000_000,
            "chat": {"id": CHAT, "type": "private", "first_name": "Anya"},
            "from": {"id": CHAT, "is_bot": false, "first_name": "Anya", "last_name": "Garcia"},
            "text": ORDER_QUESTION
        }
    })
    .to_string();
    let (status, body) = post_update(&app, None, update.clone()).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post_update(&app, Some("wrong-secret"), update.clone()).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post_update(&app, Some(&WEBHOOK_SECRET[..10]), update.clone()).await;
    assert_eq!(status, 401, "a prefix is not the secret: {body}");
    assert!(fake.sent().is_empty());

    let (status, body) = post_update(&app, Some(WEBHOOK_SECRET), update.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicate"], false, "{body}");
    // Telegram retries (say the 200 got lost): stored and answered once.
    let (status, again) = post_update(&app, Some(WEBHOOK_SECRET), update).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["message_id"], body["message_id"]);

    let sent = fake.wait_sent(1, 20).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, CHAT);
    assert!(sent[0].1.contains("951786982868"), "{}", sent[0].1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(fake.sent().len(), 1, "answered once");
    assert!(fake.polls().is_empty(), "webhook mode does not poll");

    // Garbage is a client error, not a server error.
    let (status, _) = post_update(&app, Some(WEBHOOK_SECRET), "not json".into()).await;
    assert_eq!(status, 400);
    app.stop().await;
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

#[tokio::test]
async fn every_sample_update_is_accepted() {
    let mut files = Vec::new();
    json_files(&shared_data("webhooks/telegram"), &mut files);
    files.sort();
    assert!(files.len() >= 20, "samples found: {files:?}");

    // The parser alone never fails on them.
    for f in &files {
        let raw: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let (id, _) = concierge::channels::telegram::inbound::parse_raw(&raw);
        assert_eq!(
            id,
            raw.get("update_id").and_then(Value::as_u64),
            "{}",
            f.display()
        );
    }

    let fake = FakeBotApi::start().await;
    let app = webhook_app(&fake).await;
    let mut stored = 0;
    for f in &files {
        let body = std::fs::read_to_string(f).unwrap();
        let (status, resp) = post_update(&app, Some(WEBHOOK_SECRET), body).await;
        assert_eq!(status, 200, "{}: {resp}", f.display());
        if resp.get("message_id").is_some() {
            stored += 1;
        }
    }
    assert!(
        stored >= 3,
        "the text messages among the samples are stored: {stored}"
    );
    // They are answered through the fake without any failing delivery.
    let sent = fake.wait_sent(1, 15).await;
    assert!(!sent.is_empty());
    app.stop().await;
}

/// In a group chat the bot discloses nothing of an account, even when asked with the order
/// number and email: a short public answer invites the shopper to a private chat
/// (t.me/<bot username> from getMe), and the Telegram user is not linked to the customer, so
/// their private chat starts unverified.
#[tokio::test]
async fn a_group_chat_gets_an_invitation_and_no_account_data() {
    const GROUP: i64 = -1_001_234_567_890;
    let fake = FakeBotApi::start().await;
    let app = polling_app(&fake).await;

    fake.push_group_text(1, GROUP, "supergroup", ORDER_QUESTION);
    let sent = fake.wait_sent(1, 20).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, GROUP);
    assert!(
        sent[0].1.contains("https://t.me/AlderPineBot"),
        "the invitation: {}",
        sent[0].1
    );
    for secret in ["951786982868", "W6310710", "anya.garcia2061", "tea kettle"] {
        assert!(!sent[0].1.contains(secret), "{secret} in {}", sent[0].1);
    }
    fake.push_group_text(2, -4_242, "group", "/start");
    let sent = fake.wait_sent(2, 20).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent[1].1.contains("https://t.me/AlderPineBot"),
        "{}",
        sent[1].1
    );

    let conv = app
        .store()
        .conversation_by_thread("telegram", &format!("telegram:{GROUP}"))
        .await
        .unwrap()
        .expect("the group's conversation");
    let identity = app
        .store()
        .get_identity(conv.identity_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!identity.verified, "{identity:?}");
    assert_eq!(identity.customer_id, None);
    let state = app.store().conversation_state(&conv.id).await.unwrap();
    assert!(
        state.get("verified_customer").is_none_or(|v| v.is_null()),
        "{state}"
    );

    // The same user in a private chat is a stranger until verified there.
    fake.push_text(3, "where is my order? the tea kettle one");
    let sent = fake.wait_sent(3, 20).await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[2].0, CHAT);
    assert!(!sent[2].1.contains("951786982868"), "{}", sent[2].1);
    app.stop().await;
}

async fn deliveries_of_chat(app: &TestApp, chat: i64) -> Vec<concierge::store::Delivery> {
    let Some(conv) = app
        .store()
        .conversation_by_thread("telegram", &format!("telegram:{chat}"))
        .await
        .unwrap()
    else {
        return Vec::new();
    };
    app.store()
        .deliveries_for_conversation(&conv.id)
        .await
        .unwrap()
}

async fn wait_delivery(
    app: &TestApp,
    chat: i64,
    status: &str,
    secs: u64,
) -> concierge::store::Delivery {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let all = deliveries_of_chat(app, chat).await;
        if let Some(d) = all.iter().find(|d| d.status == status) {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {status} delivery for chat {chat}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn private_update(update_id: i64, chat: i64, text: &str) -> String {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id + 100, "date": 1_767_000_000,
            "chat": {"id": chat, "type": "private", "first_name": "Sam"},
            "from": {"id": chat, "is_bot": false, "first_name": "Sam"},
            "text": text
        }
    })
    .to_string()
}

/// What Telegram refuses for good is not tried again; what may pass is, with the channel's
/// backoff.
#[tokio::test]
async fn a_missing_chat_is_a_dead_letter_at_once_and_a_bad_gateway_is_retried() {
    const GONE: i64 = 7_700_101;
    const FLAKY: i64 = 7_700_102;
    let fake = FakeBotApi::start().await;
    fake.lock().refusals.insert(
        GONE,
        vec![(
            400,
            json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}),
        )],
    );
    fake.lock().refusals.insert(
        FLAKY,
        vec![(
            502,
            json!({"ok": false, "error_code": 502, "description": "Bad Gateway"}),
        )],
    );
    let url = fake.url.clone();
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.telegram.token = Some(Secret::new(TOKEN));
        c.telegram.api_url = url;
        c.telegram.mode = "webhook".into();
        c.telegram.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
        c.telegram.max_attempts = 4;
        c.telegram.retry_base_ms = 100;
    })
    .await;

    for (id, chat) in [(1, GONE), (2, FLAKY)] {
        let (status, body) = post_update(
            &app,
            Some(WEBHOOK_SECRET),
            private_update(id, chat, "hello"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // teloxide waits 10 s after a Telegram 5xx before it reports it.
    let sent = wait_delivery(&app, FLAKY, "sent", 40).await;
    assert_eq!(sent.attempts, 2, "one 502, then sent: {sent:?}");
    assert_eq!(fake.lock().attempts.get(&FLAKY).copied(), Some(2));
    let job = app
        .store()
        .get_job(sent.job_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, concierge::store::JobStatus::Done);

    let dead = wait_delivery(&app, GONE, "dead", 10).await;
    assert_eq!(dead.attempts, 1, "{dead:?}");
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("chat not found"),
        "{dead:?}"
    );
    let job = app
        .store()
        .get_job(dead.job_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, concierge::store::JobStatus::Dead, "{job:?}");
    assert_eq!(job.attempts, 1, "{job:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        fake.lock().attempts.get(&GONE).copied(),
        Some(1),
        "never tried again"
    );
    assert_eq!(fake.sent().iter().filter(|(c, _)| *c == FLAKY).count(), 1);
    app.stop().await;
}

/// The worker runs several jobs at once, never more than `[jobs] concurrency`, and a job queued
/// on the instance starts at once rather than at the next poll (here a minute away).
#[tokio::test]
async fn the_worker_runs_jobs_side_by_side_and_wakes_when_one_is_queued() {
    let fake = FakeBotApi::start().await;
    fake.lock().send_delay = Duration::from_millis(700);
    let url = fake.url.clone();
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.telegram.token = Some(Secret::new(TOKEN));
        c.telegram.api_url = url;
        c.telegram.mode = "webhook".into();
        c.telegram.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
        c.jobs.poll_interval_ms = 60_000;
        c.jobs.concurrency = 3;
    })
    .await;
    // Let the worker's first look for due jobs pass: from now on only a wake-up starts a job.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    for i in 0..6 {
        let (status, body) = post_update(
            &app,
            Some(WEBHOOK_SECRET),
            private_update(10 + i, 7_700_200 + i, "hello"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let sent = fake.wait_sent(6, 30).await;
    let took = started.elapsed();
    assert_eq!(sent.len(), 6, "{sent:?}");
    let peak = fake.lock().peak_in_flight;
    assert!(peak >= 2, "replies were sent one at a time (peak {peak})");
    assert!(
        peak <= 3,
        "more than [jobs] concurrency at once (peak {peak})"
    );
    // Six sends of 0.7 s each, three at a time: about 1.4 s; one at a time would be 4.2 s, and
    // waiting for the poll a minute.
    assert!(took < Duration::from_secs(4), "took {took:?}");
    app.stop().await;
}
