//! Shopify webhooks: HMAC verification over the exact body bytes (the shared test vectors),
//! every topic applied to the store from the upstream fixture bodies, replays and racing
//! deliveries applied once, bad signatures and bad bodies changing nothing, and the search index
//! following along.

use std::time::{Duration, Instant};

use concierge::commerce::{OrderStatus, PaymentKind};
use concierge::util::Secret;
use serde_json::Value;

use crate::helpers::{Db, TestApp, shared_data};

pub(crate) const SECRET: &str = "test-app-client-secret";
const URL: &str = "/channels/shopify/webhooks";
const ORDER_ID: &str = "shopify-450789469";

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(shared_data(&format!("webhooks/shopify/{name}"))).expect("read fixture")
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(Db::Sqlite, |c| {
        c.shopify.webhook_secret = Some(Secret::new(SECRET))
    })
    .await
}

/// POSTs `body` as Shopify would: signed with the test secret, with topic and webhook id.
pub(crate) async fn deliver(app: &TestApp, topic: &str, id: &str, body: &[u8]) -> (u16, Value) {
    let hmac = concierge::channels::shopify::sign(SECRET.as_bytes(), body);
    deliver_signed(app, topic, id, body, Some(&hmac)).await
}

async fn deliver_signed(
    app: &TestApp,
    topic: &str,
    id: &str,
    body: &[u8],
    hmac: Option<&str>,
) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url(URL))
        .header("Content-Type", "application/json")
        .header("X-Shopify-Topic", topic)
        .header("X-Shopify-Webhook-Id", id)
        .header("X-Shopify-Shop-Domain", "example.myshopify.com")
        .body(body.to_vec());
    if let Some(h) = hmac {
        req = req.header("X-Shopify-Hmac-Sha256", h);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The order fixture without its fulfilment, so fulfilment webhooks have something to add.
pub(crate) fn unfulfilled_order() -> Value {
    let mut v = fixture_json("shopify_python_api__order.json");
    v["order"]["fulfillments"] = serde_json::json!([]);
    v["order"]["fulfillment_status"] = Value::Null;
    v
}

async fn counts(app: &TestApp) -> concierge::store::StoreCounts {
    app.store().counts().await.expect("counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_test_vectors_decide_acceptance() {
    let app = spawn().await;
    let vectors = fixture_json("hmac_test_vectors.json");
    assert_eq!(vectors["secret_utf8"], SECRET);
    let list = vectors["vectors"].as_array().expect("vectors");
    assert!(list.len() >= 4);
    for (i, v) in list.iter().enumerate() {
        let (body, topic) = match v["body_file"].as_str() {
            Some(file) => (fixture(file), "orders/create"),
            // `{}` is no order; a topic we ignore still shows the signature was accepted.
            None => (
                v["body_literal"]
                    .as_str()
                    .expect("literal")
                    .as_bytes()
                    .to_vec(),
                "shop/update",
            ),
        };
        let before = counts(&app).await;
        let hmac = v["x_shopify_hmac_sha256"].as_str().expect("hmac");
        let (status, reply) =
            deliver_signed(&app, topic, &format!("vector-{i}"), &body, Some(hmac)).await;
        let want = if v["expect_valid"] == true { 200 } else { 401 };
        assert_eq!(status, want, "vector {i} ({:?}): {reply}", v["why"]);
        if want == 401 {
            assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");
            assert_eq!(counts(&app).await, before, "vector {i} changed the store");
        }
    }
    // The valid orders/create vector was applied.
    assert!(app.store().get_order(ORDER_ID).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_signature_is_401_and_changes_nothing() {
    let app = spawn().await;
    let body = fixture("orders_create_body_compact.json");
    let wrong = concierge::channels::shopify::sign(b"another-secret", &body);
    let (status, reply) = deliver_signed(&app, "orders/create", "w1", &body, Some(&wrong)).await;
    assert_eq!(status, 401, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{reply}"
    );
    let (status, reply) = deliver_signed(&app, "orders/create", "w2", &body, None).await;
    assert_eq!(status, 401, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing X-Shopify-Hmac-Sha256"),
        "{reply}"
    );
    assert_eq!(counts(&app).await, Default::default());
    assert!(app.store().get_order(ORDER_ID).await.unwrap().is_none());

    // A rejected delivery does not burn its id: the genuine one with the same id applies.
    let (status, reply) = deliver(&app, "orders/create", "w1", &body).await;
    assert_eq!(
        (status, &reply["applied"]),
        (200, &Value::Bool(true)),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_is_off_without_a_secret() {
    let app = TestApp::spawn().await;
    let body = fixture("orders_create_body_compact.json");
    let (status, reply) = deliver(&app, "orders/create", "w1", &body).await;
    assert_eq!(status, 404, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("off"));
    assert_eq!(counts(&app).await.orders, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_create_stores_the_order_and_search_finds_it() {
    let app = spawn().await;
    let body = fixture("orders_create_body_compact.json");
    let (status, reply) = deliver(&app, "orders/create", "oc-1", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["topic"], "orders/create");
    assert_eq!(reply["applied"], true);
    assert_eq!(reply["duplicate"], false);
    assert_eq!(reply["order"], "#1001");

    let order = app
        .store()
        .get_order_by_number("#1001")
        .await
        .unwrap()
        .expect("order #1001 stored");
    assert_eq!(order.id, ORDER_ID);
    assert_eq!(order.items.len(), 3, "{:?}", order.items);
    assert!(order.items.iter().all(|i| i.name.contains("IPod Nano")));
    assert_eq!(order.customer_id.as_deref(), Some("shopify-207119551"));
    let customer = app
        .store()
        .get_customer("shopify-207119551")
        .await
        .unwrap()
        .expect("the order's customer is stored");
    assert_eq!(customer.emails, ["bob.norman@hostmail.com"]);

    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, found) = app.get_json("/api/v1/search?q=1001&kind=orders").await;
        assert_eq!(status, 200, "{found}");
        if found["hits"]
            .as_array()
            .is_some_and(|h| h.iter().any(|hit| hit["key"] == "#1001"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "search never found #1001: {found}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_lifecycle_fulfilment_refund_cancel() {
    let app = spawn().await;
    let store = app.store();
    let (status, reply) = deliver(
        &app,
        "orders/create",
        "l-1",
        unfulfilled_order().to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let order = store.get_order(ORDER_ID).await.unwrap().unwrap();
    assert!(order.fulfillments.is_empty());
    assert_eq!(order.status, OrderStatus::Pending);

    // fulfillments/create, the fixture's exact bytes.
    let (status, reply) = deliver(
        &app,
        "fulfillments/create",
        "l-2",
        &fixture("shopify_python_api__fulfillment.json"),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (&reply["applied"], &reply["order"]),
        (&true.into(), &"#1001".into())
    );
    let order = store.get_order(ORDER_ID).await.unwrap().unwrap();
    assert_eq!(order.tracking_numbers().collect::<Vec<_>>(), ["1Z2345"]);
    assert_eq!(order.status, OrderStatus::Processed);
    assert_eq!(
        store
            .get_order_by_tracking("1Z2345")
            .await
            .unwrap()
            .map(|o| o.id),
        Some(ORDER_ID.to_string())
    );

    // fulfillments/update: the same fulfilment, now delivered, replaces it.
    let mut update = fixture_json("shopify_python_api__fulfillment.json");
    update["fulfillment"]["shipment_status"] = "delivered".into();
    let (status, reply) = deliver(
        &app,
        "fulfillments/update",
        "l-3",
        update.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let order = store.get_order(ORDER_ID).await.unwrap().unwrap();
    assert_eq!(order.fulfillments.len(), 1);
    assert_eq!(order.status, OrderStatus::Delivered);

    // refunds/create, the fixture's exact bytes; a replay of the same webhook id is a duplicate.
    let refund = fixture("shopify_python_api__refund.json");
    let (status, reply) = deliver(&app, "refunds/create", "l-4", &refund).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["applied"], true);
    let (status, reply) = deliver(&app, "refunds/create", "l-4", &refund).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (&reply["duplicate"], &reply["applied"]),
        (&true.into(), &false.into())
    );
    // Shopify may also redeliver under a new id: the refund's own id keeps it single.
    let (status, _) = deliver(&app, "refunds/create", "l-4-again", &refund).await;
    assert_eq!(status, 200);
    let order = store.get_order(ORDER_ID).await.unwrap().unwrap();
    assert_eq!(order.refunds.len(), 1, "{:?}", order.refunds);
    assert_eq!(order.refunds[0].id, "shopify-509562969");
    assert_eq!(order.refunds[0].amount, 20900);
    let refunds: Vec<_> = order
        .payments
        .iter()
        .filter(|p| p.kind == PaymentKind::Refund)
        .map(|p| p.amount)
        .collect();
    assert_eq!(refunds, [20900]);

    // orders/cancelled: the status follows; the refund raised by webhook survives the sync.
    let mut cancelled = unfulfilled_order();
    cancelled["order"]["cancelled_at"] = "2008-01-11T11:00:00-05:00".into();
    cancelled["order"]["cancel_reason"] = "customer".into();
    let (status, reply) = deliver(
        &app,
        "orders/cancelled",
        "l-5",
        cancelled.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let order = store.get_order(ORDER_ID).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(order.cancel_reason.as_deref(), Some("customer"));
    assert_eq!(order.refunds.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deliveries_of_one_webhook_apply_once() {
    let app = spawn().await;
    let (status, _) = deliver(
        &app,
        "orders/create",
        "r-0",
        &fixture("orders_create_body_compact.json"),
    )
    .await;
    assert_eq!(status, 200);
    let refund = fixture("shopify_python_api__refund.json");
    let (a, b, c) = tokio::join!(
        deliver(&app, "refunds/create", "r-1", &refund),
        deliver(&app, "refunds/create", "r-1", &refund),
        deliver(&app, "refunds/create", "r-1", &refund),
    );
    let replies = [a, b, c];
    assert!(replies.iter().all(|(s, _)| *s == 200), "{replies:?}");
    let applied = replies.iter().filter(|(_, r)| r["applied"] == true).count();
    let duplicates = replies
        .iter()
        .filter(|(_, r)| r["duplicate"] == true)
        .count();
    assert_eq!((applied, duplicates), (1, 2), "{replies:?}");
    let order = app.store().get_order(ORDER_ID).await.unwrap().unwrap();
    assert_eq!(order.refunds.len(), 1);
    let refund_entries = order
        .payments
        .iter()
        .filter(|p| p.kind == PaymentKind::Refund)
        .count();
    assert_eq!(refund_entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_and_products_update() {
    let app = spawn().await;
    let store = app.store();
    let (status, reply) = deliver(
        &app,
        "customers/update",
        "c-1",
        &fixture("shopify_python_api__customer.json"),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["applied"], true);
    let c = store
        .get_customer("shopify-207119551")
        .await
        .unwrap()
        .expect("customer stored");
    assert_eq!(c.emails, ["bob.norman@hostmail.com"]);
    assert_eq!(c.full_name(), "Bob Norman");

    let mut changed = fixture_json("shopify_python_api__customer.json");
    changed["customer"]["email"] = "Bob.New@Example.com".into();
    let (status, _) = deliver(
        &app,
        "customers/update",
        "c-2",
        changed.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let c = store
        .get_customer("shopify-207119551")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.emails, ["bob.new@example.com"]);
    assert_eq!(
        store
            .find_customer_by_email("bob.new@example.com")
            .await
            .unwrap()
            .map(|c| c.id),
        Some(c.id.clone())
    );

    let (status, reply) = deliver(
        &app,
        "products/update",
        "p-1",
        &fixture("shopify_python_api__product.json"),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let p = store
        .get_product("shopify-632910392")
        .await
        .unwrap()
        .expect("product stored");
    assert_eq!(p.name, "IPod Nano - 8GB");
    assert_eq!(p.variants.len(), 4);
    assert!(
        p.variants.iter().all(|v| v.price == 19900),
        "{:?}",
        p.variants
    );

    let mut repriced = fixture_json("shopify_python_api__product.json");
    repriced["product"]["variants"][0]["price"] = "149.50".into();
    let (status, _) = deliver(
        &app,
        "products/update",
        "p-2",
        repriced.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let p = store
        .get_product("shopify-632910392")
        .await
        .unwrap()
        .unwrap();
    let v = p
        .variants
        .iter()
        .find(|v| v.id == "808950810")
        .expect("variant");
    assert_eq!(v.price, 14950);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_unknown_topics_and_early_fulfilments() {
    let app = spawn().await;
    // A body that does not parse: 422 naming the field, nothing written, id not burned.
    let (status, reply) = deliver(
        &app,
        "refunds/create",
        "b-1",
        br#"{"refund": {"id": 1, "transactions": []}}"#,
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("order_id"),
        "{reply}"
    );
    let (status, reply) = deliver(&app, "orders/create", "b-2", b"{\"order\": [1, 2]}").await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(counts(&app).await, Default::default());

    // An unknown topic is acknowledged (Shopify retries non-2xx) and ignored.
    let (status, reply) = deliver(&app, "app/uninstalled", "b-3", b"{}").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (&reply["ignored"], &reply["topic"]),
        (&true.into(), &"app/uninstalled".into())
    );

    // A fulfilment for an order not here yet: acknowledged, not applied, and a redelivery
    // after the order arrived applies it.
    let fulfilment = fixture("shopify_python_api__fulfillment.json");
    let (status, reply) = deliver(&app, "fulfillments/create", "b-4", &fulfilment).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["applied"], false, "{reply}");
    assert!(
        reply["reason"].as_str().unwrap().contains(ORDER_ID),
        "{reply}"
    );
    let order = unfulfilled_order().to_string();
    assert_eq!(
        deliver(&app, "orders/create", "b-5", order.as_bytes())
            .await
            .0,
        200
    );
    let (status, reply) = deliver(&app, "fulfillments/create", "b-4", &fulfilment).await;
    assert_eq!((status, &reply["applied"]), (200, &true.into()), "{reply}");

    // An orders/updated older than the stored order is skipped.
    let mut old = unfulfilled_order();
    old["order"]["updated_at"] = "2007-01-01T00:00:00-05:00".into();
    old["order"]["email"] = "stale@example.com".into();
    let (status, reply) = deliver(&app, "orders/updated", "b-6", old.to_string().as_bytes()).await;
    assert_eq!((status, &reply["applied"]), (200, &false.into()), "{reply}");
    let stored = app.store().get_order(ORDER_ID).await.unwrap().unwrap();
    assert_ne!(stored.email.as_deref(), Some("stale@example.com"));
    assert_eq!(stored.tracking_numbers().count(), 1);
}
