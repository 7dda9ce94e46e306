//! The read models (orders, products, agents' keys, token revocations kept in memory) are exact:
//! each kind of write is seen by the very next read through the gateway — a staff cancel, a
//! Shopify `orders/updated` webhook, an import, a token revocation, a key revocation — on both
//! engines. And signature nonces, claimed in memory and stored in batches, are still refused
//! after a restart.

use concierge::agent::tools::{self, Actor, ToolCall, ToolContext};
use concierge::commerce::OrderStatus;
use concierge::gateway::{identity, tokens};
use reqwest::Method;
use serde_json::{Value, json};

use crate::gateway_trust::{Call, call, delegate, register, service_key, setup};
use crate::helpers::{Db, TestApp};

/// Sofia Rossi's pending order (τ-bench retail).
const SOFIA_ORDER: &str = "#W5918442";
const SOFIA: &str = "sofia.rossi2645@example.com";

async fn order_status(app: &TestApp, agent: &crate::gateway_trust::Agent, token: &str) -> Value {
    let a = call(
        app,
        Some(agent),
        Call::new(Method::GET, "/agent/v1/orders/W5918442").token(token),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["data"]["status"].clone()
}

async fn a_staff_cancel_is_seen_by_the_next_read(db: Db) {
    let Some(app) = setup(db).await else { return };
    let agent = register(&app, "reader").await;
    let token = delegate(&app, &agent, SOFIA_ORDER, SOFIA, json!({})).await;
    // Read twice: the second read is served from memory.
    assert_eq!(order_status(&app, &agent, &token).await, "pending");
    assert_eq!(order_status(&app, &agent, &token).await, "pending");
    // Staff cancel it (what the inbox's order form runs).
    let ctx = ToolContext {
        store: app.store(),
        policy: &app.state.policy,
        actor: Actor::Staff {
            id: "staff_ana".into(),
        },
        customer_id: Some("sofia_rossi_8776".into()),
        now: concierge::util::now_ms(),
    };
    tools::execute(
        &ctx,
        &ToolCall::CancelOrder {
            order_id: SOFIA_ORDER.into(),
            reason: "no longer needed".into(),
        },
    )
    .await
    .expect("staff cancel");
    assert_eq!(order_status(&app, &agent, &token).await, "cancelled");
}
on_both!(a_staff_cancel_is_seen_by_the_next_read);

async fn an_import_is_seen_by_the_next_read(db: Db) {
    let Some(app) = setup(db).await else { return };
    let store = app.store();
    let mut order = store.find_order(SOFIA_ORDER).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    // Warm every read model an order read uses.
    for _ in 0..2 {
        let (s, body) = app.get_json("/api/v1/orders/W5918442").await;
        assert_eq!((s, &body["status"]), (200, &json!("pending")), "{body}");
    }
    // A small import (one record per row of the change feed) …
    order.status = OrderStatus::Processed;
    store
        .import(&[], &[], &[order.clone()], |_| {})
        .await
        .unwrap();
    let (_, body) = app.get_json("/api/v1/orders/W5918442").await;
    assert_eq!(body["status"], "processed", "{body}");
    // … and a bulk one (recorded as "everything changed").
    let batches = concierge::import::load(
        concierge::import::ImportKind::TauRetail,
        &crate::helpers::shared_data("tau-bench-retail/tau-bench-v1"),
    )
    .unwrap();
    let (_, b) = &batches[0];
    let mut orders = b.orders.clone();
    assert!(
        b.customers.len() + b.products.len() + orders.len() > 1_000,
        "a bulk import"
    );
    for o in &mut orders {
        if o.number == SOFIA_ORDER {
            o.status = OrderStatus::Delivered;
        }
    }
    store
        .import(&b.customers, &b.products, &orders, |_| {})
        .await
        .unwrap();
    let (_, body) = app.get_json("/api/v1/orders/W5918442").await;
    assert_eq!(body["status"], "delivered", "{body}");
    // A product changed by an import is read anew too.
    let product_id = b.products[0].id.clone();
    let path = format!("/agent/v1/products/{product_id}");
    let read = || async {
        let r = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    read().await;
    let mut product = b.products[0].clone();
    product.name = "Renamed by the import".into();
    store.import(&[], &[product], &[], |_| {}).await.unwrap();
    assert_eq!(read().await["data"]["name"], "Renamed by the import");
}
on_both!(an_import_is_seen_by_the_next_read);

async fn revocations_are_seen_by_the_next_read(db: Db) {
    let Some(app) = setup(db).await else { return };
    let agent = register(&app, "reader").await;
    let token = delegate(&app, &agent, SOFIA_ORDER, SOFIA, json!({})).await;
    assert_eq!(order_status(&app, &agent, &token).await, "pending");
    assert_eq!(order_status(&app, &agent, &token).await, "pending");
    // The token, revoked as staff or the CLI do.
    let key = service_key(&app);
    tokens::revoke(
        app.store(),
        &key,
        &token,
        "staff_ana",
        concierge::util::now_ms(),
    )
    .await
    .unwrap()
    .expect("revoked");
    let a = call(
        &app,
        Some(&agent),
        Call::new(Method::GET, "/agent/v1/orders/W5918442").token(&token),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, "token_revoked"), "{}", a.body);
    // The key: the next signed request with it is refused.
    let whoami = || Call::new(Method::GET, "/agent/v1/whoami");
    assert_eq!(call(&app, Some(&agent), whoami()).await.status, 200);
    assert_eq!(call(&app, Some(&agent), whoami()).await.status, 200);
    app.store()
        .revoke_agent_key(&agent.key_id, concierge::util::now_ms())
        .await
        .unwrap()
        .expect("a key");
    let a = call(&app, Some(&agent), whoami()).await;
    assert_eq!((a.status, a.code()), (401, "key_revoked"), "{}", a.body);
    // A key registered after a lookup found nothing is found at once.
    let other = identity::generate_key();
    let other_id = identity::key_id(&other.verifying_key());
    assert!(app.store().agent_key(&other_id).await.unwrap().is_none());
    app.store()
        .register_agent_key(
            "second",
            &other_id,
            &identity::encode_public_key(&other.verifying_key()),
            concierge::util::now_ms(),
        )
        .await
        .unwrap();
    assert!(app.store().agent_key(&other_id).await.unwrap().is_some());
}
on_both!(revocations_are_seen_by_the_next_read);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopify_orders_updated_webhook_is_seen_by_the_next_read() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.shopify.webhook_secret = Some(concierge::util::Secret::new(crate::shopify::SECRET))
    })
    .await;
    let order = crate::shopify::unfulfilled_order();
    let (s, reply) =
        crate::shopify::deliver(&app, "orders/create", "rm-1", order.to_string().as_bytes()).await;
    assert_eq!(s, 200, "{reply}");
    let number = order["order"]["name"]
        .as_str()
        .unwrap()
        .trim_start_matches('#')
        .to_string();
    let path = format!("/api/v1/orders/{number}");
    for _ in 0..2 {
        let (s, body) = app.get_json(&path).await;
        assert_eq!(s, 200, "{body}");
        assert_ne!(body["status"], "cancelled", "{body}");
    }
    let mut updated = order.clone();
    updated["order"]["cancelled_at"] = "2008-01-10T11:00:00-05:00".into();
    updated["order"]["cancel_reason"] = "customer".into();
    updated["order"]["updated_at"] = "2030-01-01T00:00:00-05:00".into();
    let (s, reply) = crate::shopify::deliver(
        &app,
        "orders/updated",
        "rm-2",
        updated.to_string().as_bytes(),
    )
    .await;
    assert_eq!((s, &reply["applied"]), (200, &true.into()), "{reply}");
    let (_, body) = app.get_json(&path).await;
    assert_eq!(body["status"], "cancelled", "{body}");
}

/// A nonce accepted before a restart is refused after it (within the signature's 5 minutes).
/// The request is a read: on SQLite its nonce is stored without the request waiting, written
/// when the store closes and loaded back into memory at start; on PostgreSQL it is stored
/// before the answer.
async fn a_replayed_nonce_is_refused_after_a_restart(db: Db) {
    let public = "https://shop.example";
    let Some(app) = TestApp::spawn_on_with(db, |c| c.server.public_url = Some(public.into())).await
    else {
        return;
    };
    let agent = register(&app, "replayer").await;
    let signed = |app: &TestApp| {
        let h = identity::sign_request(
            &agent.key,
            &agent.key_id,
            "GET",
            &format!("{public}/agent/v1/whoami"),
            b"",
            "once-only",
            concierge::util::now_ms() / 1000,
        );
        let mut req = app.client.get(app.url("/agent/v1/whoami"));
        for (k, v) in h.pairs() {
            req = req.header(k, v);
        }
        req
    };
    let first = signed(&app);
    let replay = first.try_clone().unwrap();
    assert_eq!(first.send().await.unwrap().status(), 200);
    let app = app.restart().await;
    let r = replay_to(&app, replay).await;
    assert_eq!(r["error"]["code"], "nonce_reused", "{r}");
}
on_both!(a_replayed_nonce_is_refused_after_a_restart);

/// Sends a request built for the app before its restart to the restarted app's address.
async fn replay_to(app: &TestApp, req: reqwest::RequestBuilder) -> Value {
    let built = req.build().unwrap();
    let mut again = app
        .client
        .request(built.method().clone(), app.url(built.url().path()));
    for (k, v) in built.headers() {
        again = again.header(k, v);
    }
    let r = again.send().await.unwrap();
    assert_eq!(r.status(), 401);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uses_of_one_nonce_let_one_through() {
    let app = setup(Db::Sqlite).await.expect("app");
    let agent = register(&app, "racer").await;
    let mut sends = Vec::new();
    for _ in 0..16 {
        let mut c = Call::new(Method::GET, "/agent/v1/whoami");
        c.nonce = Some("the-same-nonce".into());
        c.created = Some(concierge::util::now_ms() / 1000);
        sends.push(crate::gateway_trust::build(&app, Some(&agent), &c).send());
    }
    let statuses: Vec<u16> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 401),
        "{statuses:?}"
    );
}
