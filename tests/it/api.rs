//! The HTTP API over real HTTP: health, the API channel's contract and its errors, search.

use serde_json::{Value, json};

use crate::helpers::{API_KEY, Db, TestApp};

#[tokio::test]
async fn healthz_is_ok() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    // The embedded default: SQLite and the index live in the data dir.
    assert!(app.data_dir().join("concierge.db").exists());
    assert!(app.data_dir().join("index").is_dir());
    app.stop().await;
}

async fn message_round_trip(db: Db) {
    let Some(app) = TestApp::spawn_on(db).await else {
        eprintln!("skipped: TEST_DATABASE_URL is not set");
        return;
    };
    let body = json!({
        "thread": "order-help-1",
        "from": {"email": "Sam@Example.com", "name": "Sam"},
        "text": "Where is my order #W2611340?",
        "message_id": "ext-1"
    });
    let (status, first) = app.post_message(body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    assert!(first["reply"].is_null() || first["reply"].is_object());
    let conv = first["conversation_id"].as_str().unwrap().to_string();

    let (status, again) = app.post_message(body).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], first["message_id"]);

    let (status, view) = app.get_json(&format!("/api/v1/conversations/{conv}")).await;
    assert_eq!(status, 200, "{view}");
    let inbound: Vec<&Value> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "inbound")
        .collect();
    assert_eq!(inbound.len(), 1, "stored once: {view}");
    assert_eq!(inbound[0]["text"], "Where is my order #W2611340?");
    assert_eq!(inbound[0]["author_kind"], "customer");
    assert_eq!(view["channel"], "api");
    assert_eq!(view["thread_key"], "order-help-1");
    app.stop().await;
}

#[tokio::test]
async fn messages_are_stored_read_back_and_deduplicated_sqlite() {
    message_round_trip(Db::Sqlite).await
}

#[tokio::test]
async fn messages_are_stored_read_back_and_deduplicated_postgres() {
    message_round_trip(Db::Postgres).await
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let app = TestApp::spawn().await;
    let url = app.url("/api/v1/messages");
    let ok_body = json!({"thread": "t", "text": "hi"});

    // 401: no key, wrong key.
    let r = app.client.post(&url).json(&ok_body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unauthorized");
    let r = app
        .client
        .post(&url)
        .bearer_auth("wrong-key-wrong-key")
        .json(&ok_body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // 400 naming the field.
    let (s, e) = app.post_message(json!({"thread": 7, "text": "hi"})).await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("thread"),
        "{e}"
    );
    let (s, e) = app.post_message(json!({"thread": "t"})).await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("text"),
        "{e}"
    );
    let (s, e) = app
        .post_message(json!({"thread": "t", "text": "hi", "from": {"verified": "yes"}}))
        .await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("from.verified"),
        "{e}"
    );
    let r = app
        .client
        .post(&url)
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // 422: well-formed but unusable.
    let (s, e) = app
        .post_message(json!({"thread": "t", "text": "   "}))
        .await;
    assert_eq!(s, 422);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("text"),
        "{e}"
    );
    let (s, e) = app
        .post_message(json!({"thread": "t", "text": "hi", "from": {"email": "not-an-email"}}))
        .await;
    assert_eq!(s, 422, "{e}");

    // 413: too large.
    let big = "x".repeat(3 * 1024 * 1024);
    let r = app
        .client
        .post(&url)
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(format!("{{\"thread\":\"t\",\"text\":\"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "payload_too_large");

    // 404s.
    let (s, e) = app.get_json("/api/v1/conversations/cnv_nope").await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, _) = app.get_json("/api/v1/nothing-here").await;
    assert_eq!(s, 404);

    // Nothing above was stored.
    assert_eq!(app.store().counts().await.unwrap().messages, 0);
    app.stop().await;
}

#[tokio::test]
async fn search_finds_orders_products_and_policies() {
    let app = TestApp::spawn().await;
    app.import_tau().await;
    let hits = |v: &Value| -> Vec<String> {
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["key"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // By number, with and without '#'.
    let (s, v) = app
        .get_json("/api/v1/search?q=%23W2611340&kind=orders")
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        hits(&v).first().map(String::as_str),
        Some("#W2611340"),
        "{v}"
    );
    let (_, v) = app.get_json("/api/v1/search?q=W2611340").await;
    assert_eq!(
        hits(&v).first().map(String::as_str),
        Some("#W2611340"),
        "{v}"
    );
    // By tracking number.
    let (_, v) = app
        .get_json("/api/v1/search?q=357962501027&kind=orders")
        .await;
    assert_eq!(
        hits(&v).first().map(String::as_str),
        Some("#W2611340"),
        "{v}"
    );
    // By customer email: every hit is one of that customer's orders.
    let (_, v) = app
        .get_json("/api/v1/search?q=ivan.santos3158%40example.com&kind=orders")
        .await;
    let got: std::collections::HashSet<String> = hits(&v).into_iter().collect();
    for n in ["#W6893533", "#W8770097", "#W5183325", "#W3913498"] {
        assert!(got.contains(n), "{n} missing: {v}");
    }
    // A product by name.
    let (_, v) = app
        .get_json("/api/v1/search?q=water%20bottle&kind=products")
        .await;
    assert!(!hits(&v).is_empty(), "{v}");
    // A policy section from a question's words, citing its heading.
    let (_, v) = app
        .get_json("/api/v1/search?q=how%20many%20days%20do%20I%20have%20to%20return%20something&kind=policies")
        .await;
    let first = &v["hits"][0];
    assert!(
        first["key"].as_str().unwrap_or("").starts_with("returns"),
        "{v}"
    );
    assert!(!first["title"].as_str().unwrap_or("").is_empty(), "{v}");

    // Bad search input.
    let (s, _) = app.get_json("/api/v1/search?q=").await;
    assert_eq!(s, 400);
    let (s, e) = app.get_json("/api/v1/search?q=x&kind=spaceships").await;
    assert_eq!(s, 400);
    assert!(e["error"]["message"].as_str().unwrap().contains("kind"));
    app.stop().await;
}

#[tokio::test]
async fn a_new_order_is_searchable_within_a_second() {
    let app = TestApp::spawn().await;
    app.import_tau().await;
    let mut order = app
        .store()
        .get_order_by_number("#W2611340")
        .await
        .unwrap()
        .unwrap();
    order.id = "#W9999999".into();
    order.number = "#W9999999".into();
    app.store().put_order(&order).await.unwrap();
    let start = std::time::Instant::now();
    app.state
        .indexer
        .upsert(concierge::search::IndexDoc::Order {
            order,
            customer_name: None,
            customer_emails: vec![],
        })
        .await
        .unwrap();
    // No flush: the writer's own batching must make it visible within 1 s.
    loop {
        let (_, v) = app.get_json("/api/v1/search?q=W9999999&kind=orders").await;
        if v["hits"][0]["key"] == "#W9999999" {
            break;
        }
        assert!(
            start.elapsed().as_millis() < 1000,
            "not searchable after 1 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn order_lookup_by_number() {
    let app = TestApp::spawn().await;
    app.import_tau().await;
    let (s, v) = app.get_json("/api/v1/orders/W2611340").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["number"], "#W2611340");
    assert_eq!(v["status"], "processed");
    let (s, _) = app.get_json("/api/v1/orders/%23W2611340").await;
    assert_eq!(s, 200);
    let (s, _) = app.get_json("/api/v1/orders/W0000000").await;
    assert_eq!(s, 404);
    app.stop().await;
}

/// The API message's turn is the durable job every channel's is: stored with the message, run in
/// the request, done; run again (a worker re-running it after a crash), it finds the answer and
/// answers nothing twice — and the database refuses a second answer outright. What the turn
/// needs is stored with the message, the client's address included.
async fn a_turn_answers_its_message_once(db: Db) {
    let Some(app) = TestApp::spawn_on(db).await else {
        return;
    };
    let (status, body) = app
        .post_message(json!({"thread": "once-1", "text": "hello there", "message_id": "once-m1"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let message_id = body["message_id"].as_str().unwrap().to_string();
    let store = app.store();
    // Queuing the turn again finds the one queued with the message (its dedupe key).
    let job_id = store
        .enqueue_job(
            concierge::inbox::JOB_TURN,
            &json!({}),
            Some(&format!("{}:{message_id}", concierge::inbox::JOB_TURN)),
            5,
        )
        .await
        .unwrap();
    let job = store.get_job(&job_id).await.unwrap().expect("the turn job");
    assert_eq!(job.status, concierge::store::JobStatus::Done, "{job:?}");
    assert_eq!(job.payload["message_id"], message_id.as_str(), "{job:?}");

    let first = store
        .answer_to(&message_id)
        .await
        .unwrap()
        .expect("answered");
    assert_eq!(body["reply"]["text"], first.text.as_str());
    let again = concierge::inbox::turn::run(&app.state, &message_id)
        .await
        .unwrap()
        .expect("the answer");
    assert_eq!(again.id, first.id);
    let view = store
        .conversation_view(body["conversation_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    let outbound = view
        .messages
        .iter()
        .filter(|m| m.direction == concierge::store::Direction::Outbound)
        .count();
    assert_eq!(outbound, 1, "{:?}", view.messages);
    let second = store
        .append_outbound(
            &first.conversation_id,
            &concierge::store::NewMessage {
                direction: concierge::store::Direction::Outbound,
                author_kind: concierge::store::AuthorKind::BrandAgent,
                author_id: None,
                text: "a second answer".into(),
                html: None,
                meta: json!({}),
            },
            Some(&message_id),
            None,
        )
        .await
        .expect_err("one answer per message");
    assert!(second.is_unique_violation(), "{second}");

    let stored = store.message_by_id(&message_id).await.unwrap().unwrap();
    let trust = &stored.meta["trust"];
    assert_eq!(trust["requester"], "ip:127.0.0.1", "{trust}");
    assert_eq!(trust["confirms_writes"], true, "{trust}");
    assert_eq!(stored.meta["answer"], "agent");
    app.stop().await;
}
on_both!(a_turn_answers_its_message_once);
