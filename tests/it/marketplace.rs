//! Signed-webhook marketplaces: the eBay preset checks eBay's SDK fixture signatures (the valid
//! notification is acknowledged, the tampered ones refused); a test marketplace signed with
//! HMAC-SHA256 stores a buyer's message, refuses bad signatures and payloads, and posts the
//! agent's reply to a fake marketplace — through two failures, delivered once.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{Db, TestApp, repo_path, shared_data};

const EBAY_PATH: &str = "/channels/marketplace/ebay/webhook";
const SHOP_PATH: &str = "/channels/marketplace/shop/webhook";

fn fixture() -> Value {
    let path = shared_data("webhooks/ebay/event_notification_nodejs_sdk__test.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn post_raw(app: &TestApp, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut r = app
        .client
        .post(app.url(path))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn error_message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn the_ebay_preset_accepts_the_sdk_fixtures_valid_signature_and_refuses_the_others() {
    let app = TestApp::spawn().await;
    let cases = fixture();
    for (case, want) in [
        ("VALID", 200),
        ("INVALID", 401),
        ("SIGNATURE_MISMATCH", 401),
    ] {
        let c = &cases[case];
        // Exactly what eBay's SDK signs: JSON.stringify of the message (compact, keys in order).
        let body = serde_json::to_string(&c["message"]).unwrap();
        let sig = c["signature"].as_str().unwrap();
        let (status, answer) = post_raw(&app, EBAY_PATH, &[("X-EBAY-SIGNATURE", sig)], &body).await;
        assert_eq!(status, want, "{case}: {answer}");
        if want == 200 {
            // MARKETPLACE_ACCOUNT_DELETION carries no buyer message: acknowledged, not stored.
            assert_eq!(answer["ok"], true);
            let ignored = answer["ignored"].as_str().unwrap();
            assert!(
                ignored.contains("MARKETPLACE_ACCOUNT_DELETION"),
                "{ignored}"
            );
        } else {
            let why = error_message(&answer);
            assert!(why.contains("does not match"), "{case}: {why}");
        }
    }

    // The same valid body signed under a key id the preset does not know (the INVALID case's
    // public_key): refused for that reason.
    let valid = &cases["VALID"];
    let body = serde_json::to_string(&valid["message"]).unwrap();
    let mut header: Value =
        serde_json::from_slice(&B64.decode(valid["signature"].as_str().unwrap()).unwrap()).unwrap();
    header["kid"] = cases["INVALID"]["public_key"].clone();
    let forged = B64.encode(serde_json::to_vec(&header).unwrap());
    let (status, answer) = post_raw(&app, EBAY_PATH, &[("X-EBAY-SIGNATURE", &forged)], &body).await;
    assert_eq!(status, 401);
    assert!(
        error_message(&answer).contains("unknown key id"),
        "{answer}"
    );

    // No header, or one that is not eBay's signature object.
    let (status, answer) = post_raw(&app, EBAY_PATH, &[], &body).await;
    assert_eq!(status, 401);
    assert!(
        error_message(&answer).contains("missing X-EBAY-SIGNATURE"),
        "{answer}"
    );
    let (status, _) = post_raw(
        &app,
        EBAY_PATH,
        &[("X-EBAY-SIGNATURE", "bm90IGpzb24=")],
        &body,
    )
    .await;
    assert_eq!(status, 401);

    // A body that is not the signed one (pretty-printed) does not verify either.
    let pretty = serde_json::to_string_pretty(&valid["message"]).unwrap();
    let (status, _) = post_raw(
        &app,
        EBAY_PATH,
        &[("X-EBAY-SIGNATURE", valid["signature"].as_str().unwrap())],
        &pretty,
    )
    .await;
    assert_eq!(status, 401);

    // The generic preset is a disabled template: no endpoint.
    let (status, _) = post_raw(&app, "/channels/marketplace/generic/webhook", &[], "{}").await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// What the fake marketplace saw.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, HeaderMap, Value)>,
    fail_first: usize,
}

type Shared = Arc<Mutex<Seen>>;

/// A fake marketplace API: `POST /threads/{id}/messages` fails `fail_first` times with a 500,
/// then answers 201 with an id.
async fn fake_marketplace(fail_first: usize) -> (String, Shared) {
    let seen: Shared = Arc::new(Mutex::new(Seen {
        fail_first,
        ..Seen::default()
    }));
    let app = axum::Router::new()
        .route(
            "/threads/{id}/messages",
            post(
                |State(seen): State<Shared>,
                 axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
                 headers: HeaderMap,
                 Json(body): Json<Value>| async move {
                    let mut s = seen.lock().unwrap();
                    s.requests.push((uri.path().to_string(), headers, body));
                    if s.requests.len() <= s.fail_first {
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Json(json!({"error": "temporarily unavailable"})),
                        )
                    } else {
                        (StatusCode::CREATED, Json(json!({"id": "mkt-msg-1"})))
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

/// A channels folder with one HMAC-signed marketplace, `shop`, replying to `base`.
fn write_channels(dir: &Path, base: &str, secret_env: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(repo_path("channels/default.hbs"), dir.join("default.hbs")).unwrap();
    let toml = format!(
        r#"
[marketplace]
name = "shop"

[marketplace.signature]
scheme = "hmac-sha256"
header = "X-Marketplace-Signature"
encoding = "hex"
secret_env = "{secret_env}"

[marketplace.fields]
buyer_id = "/buyer/id"
buyer_name = "/buyer/name"
thread_id = "/thread_id"
message_id = "/message/id"
text = "/message/text"
order = "/order_id"
topic = "/type"

[marketplace.reply]
url = "{base}/threads/{{thread_id}}/messages"
body = '''{{"thread": "{{{{thread_id}}}}", "to": "{{{{buyer_id}}}}", "order": "{{{{order}}}}", "text": "{{{{text}}}}"}}'''
id_pointer = "/id"
headers = {{ X-Api-Key = "test-key" }}
"#
    );
    std::fs::write(dir.join("shop.toml"), toml).unwrap();
    // A second marketplace whose secret is never set: it must not be mounted.
    let unset = toml_without_secret();
    std::fs::write(dir.join("other.toml"), unset).unwrap();
}

fn toml_without_secret() -> &'static str {
    r#"
kind = "marketplace"
name = "other"
signature = { scheme = "hmac-sha256", header = "X-Sig", secret_env = "CONCIERGE_TEST_NEVER_SET_MARKETPLACE_SECRET" }
fields = { buyer_id = "/b", thread_id = "/t", message_id = "/m", text = "/x" }
reply = { url = "http://127.0.0.1:9/x", body = '{"text": "{{text}}"}' }
"#
}

fn sign(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

async fn app_with_shop(base: &str) -> (TestApp, String, tempfile::TempDir) {
    let secret = format!("whsec-{}", concierge::util::random_token(16));
    let var = format!(
        "CONCIERGE_TEST_MARKETPLACE_SECRET_{}",
        concierge::util::random_token(6)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_uppercase()
    );
    // SAFETY: a variable only this test reads, with a name no other test uses, set before the
    // app that reads it starts.
    unsafe { std::env::set_var(&var, &secret) };
    let channels = tempfile::tempdir().unwrap();
    write_channels(channels.path(), base, &var);
    let dir = channels.path().to_path_buf();
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.brand.channels = dir;
        c.jobs.poll_interval_ms = 50;
    })
    .await;
    (app, secret, channels)
}

fn buyer_message(message_id: &str, text: &str) -> String {
    serde_json::to_string(&json!({
        "type": "buyer_message",
        "thread_id": "T-77",
        "order_id": "#W2378156",
        "buyer": {"id": "buyer-42", "name": "Ann"},
        "message": {"id": message_id, "text": text},
    }))
    .unwrap()
}

async fn wait_for<F: Fn() -> bool>(what: &str, secs: u64, done: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_buyer_message_is_answered_on_the_marketplace_after_two_failures_once() {
    let (base, seen) = fake_marketplace(2).await;
    let (app, secret, _channels) = app_with_shop(&base).await;
    let body = buyer_message(
        "m-1",
        "Hi, where is my order #W2378156? It has not arrived.",
    );
    let sig = sign(&secret, &body);
    let (status, first) =
        post_raw(&app, SHOP_PATH, &[("X-Marketplace-Signature", &sig)], &body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let conv = first["conversation_id"].as_str().unwrap().to_string();
    // Stored before the 200, on the marketplace's thread.
    let c = app
        .store()
        .conversation_by_thread("marketplace:shop", "shop:T-77")
        .await
        .unwrap()
        .expect("conversation stored");
    assert_eq!(c.id, conv);
    let m = app
        .store()
        .message_by_external_id("marketplace:shop", "m-1")
        .await
        .unwrap()
        .expect("message stored");
    assert_eq!(m.meta["order"], "#W2378156");
    assert_eq!(m.meta["buyer_id"], "buyer-42");

    // The marketplace redelivers: recognized, not answered twice.
    let (status, again) =
        post_raw(&app, SHOP_PATH, &[("X-Marketplace-Signature", &sig)], &body).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], first["message_id"]);

    // 500, 500, then delivered (backoff ~1 s, ~2 s).
    wait_for("three reply attempts", 30, || {
        seen.lock().unwrap().requests.len() >= 3
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = app
            .store()
            .deliveries_for_conversation(&conv)
            .await
            .unwrap();
        if d.first().is_some_and(|d| d.status == "sent") {
            assert_eq!(d.len(), 1);
            assert_eq!(d[0].channel, "marketplace:shop");
            assert_eq!(d[0].attempts, 3);
            assert_eq!(d[0].external_id.as_deref(), Some("mkt-msg-1"));
            break;
        }
        assert!(Instant::now() < deadline, "not marked sent: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reply = app
        .store()
        .reply_to(&m.id)
        .await
        .unwrap()
        .expect("the agent replied");
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.requests.len(), 3, "delivered once after two failures");
        let keys: Vec<&str> = s
            .requests
            .iter()
            .map(|(_, h, _)| h.get("idempotency-key").unwrap().to_str().unwrap())
            .collect();
        assert!(!keys[0].is_empty());
        assert!(
            keys.iter().all(|k| *k == keys[0]),
            "one idempotency key: {keys:?}"
        );
        let (path, headers, sent) = &s.requests[2];
        assert_eq!(path, "/threads/T-77/messages");
        assert_eq!(headers.get("x-api-key").unwrap(), "test-key");
        assert_eq!(sent["thread"], "T-77");
        assert_eq!(sent["to"], "buyer-42");
        assert_eq!(sent["order"], "#W2378156");
        let text = sent["text"].as_str().unwrap();
        assert_eq!(text, reply.text);
        assert!(!text.trim().is_empty());
    }
    app.stop().await;
}

#[tokio::test]
async fn the_hmac_endpoint_refuses_bad_signatures_and_names_what_is_missing() {
    let (base, seen) = fake_marketplace(0).await;
    let (app, secret, _channels) = app_with_shop(&base).await;
    let body = buyer_message("m-9", "Can I return the lamp?");

    // Missing, malformed and wrong signatures: 401 saying why; nothing stored.
    let (s, a) = post_raw(&app, SHOP_PATH, &[], &body).await;
    assert_eq!(s, 401);
    assert!(
        error_message(&a).contains("missing X-Marketplace-Signature"),
        "{a}"
    );
    let (s, a) = post_raw(&app, SHOP_PATH, &[("X-Marketplace-Signature", "zz")], &body).await;
    assert_eq!(s, 401);
    assert!(error_message(&a).contains("not hex"), "{a}");
    let wrong = sign("not-the-secret", &body);
    let (s, a) = post_raw(
        &app,
        SHOP_PATH,
        &[("X-Marketplace-Signature", &wrong)],
        &body,
    )
    .await;
    assert_eq!(s, 401);
    assert!(error_message(&a).contains("does not match"), "{a}");
    let tampered = body.replace("lamp", "sofa");
    let sig = sign(&secret, &body);
    let (s, _) = post_raw(
        &app,
        SHOP_PATH,
        &[("X-Marketplace-Signature", &sig)],
        &tampered,
    )
    .await;
    assert_eq!(s, 401);
    assert!(
        app.store()
            .conversation_by_thread("marketplace:shop", "shop:T-77")
            .await
            .unwrap()
            .is_none(),
        "nothing stored for refused webhooks"
    );

    // Signed but not JSON, or without the message id: 422 naming it.
    let junk = "not json";
    let (s, a) = post_raw(
        &app,
        SHOP_PATH,
        &[("X-Marketplace-Signature", &sign(&secret, junk))],
        junk,
    )
    .await;
    assert_eq!(s, 422);
    assert!(error_message(&a).contains("not JSON"), "{a}");
    let no_id = r#"{"thread_id":"T-1","buyer":{"id":"b"},"message":{"text":"hello"}}"#;
    let (s, a) = post_raw(
        &app,
        SHOP_PATH,
        &[("X-Marketplace-Signature", &sign(&secret, no_id))],
        no_id,
    )
    .await;
    assert_eq!(s, 422);
    assert!(error_message(&a).contains("/message/id"), "{a}");

    // A notification without a buyer message: acknowledged and ignored.
    let status_change = r##"{"type":"order_shipped","thread_id":"T-1","order_id":"#W1"}"##;
    let (s, a) = post_raw(
        &app,
        SHOP_PATH,
        &[("X-Marketplace-Signature", &sign(&secret, status_change))],
        status_change,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        a["ignored"].as_str().unwrap().contains("order_shipped"),
        "{a}"
    );

    // The marketplace whose secret is not set has no endpoint.
    let (s, _) = post_raw(&app, "/channels/marketplace/other/webhook", &[], "{}").await;
    assert_eq!(s, 404);

    // A good one is stored and answered (the fake marketplace gets the reply).
    let (s, a) = post_raw(&app, SHOP_PATH, &[("X-Marketplace-Signature", &sig)], &body).await;
    assert_eq!(s, 200, "{a}");
    wait_for("the reply", 20, || {
        !seen.lock().unwrap().requests.is_empty()
    })
    .await;
    app.stop().await;
}
