//! Agent identity (RFC 9421), capability tokens, idempotency and the signed audit head — driven
//! over real HTTP against a running Concierge, with requests signed the way a consumer agent
//! signs them.

use concierge::gateway::{identity, tokens};
use ed25519_dalek::SigningKey;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp};

/// Aarav Anderson: three delivered orders paid by gift card (τ-bench retail).
const AARAV: &str = "aarav.anderson9752@example.com";
const AARAV_GIFT_CARD: &str = "gift_card_7245904";
/// Ivan Santos: another customer.
const IVAN_ORDER: &str = "#W6893533";

pub(crate) struct Agent {
    name: String,
    pub(crate) key: SigningKey,
    pub(crate) key_id: String,
}

pub(crate) async fn register(app: &TestApp, name: &str) -> Agent {
    let key = identity::generate_key();
    let public = key.verifying_key();
    let key_id = identity::key_id(&public);
    app.store()
        .register_agent_key(
            name,
            &key_id,
            &identity::encode_public_key(&public),
            concierge::util::now_ms(),
        )
        .await
        .expect("register agent");
    Agent {
        name: name.into(),
        key,
        key_id,
    }
}

/// A rotated key for an existing agent.
pub(crate) async fn add_key(app: &TestApp, agent: &Agent) -> Agent {
    let key = identity::generate_key();
    let key_id = identity::key_id(&key.verifying_key());
    app.store()
        .register_agent_key(
            &agent.name,
            &key_id,
            &identity::encode_public_key(&key.verifying_key()),
            concierge::util::now_ms(),
        )
        .await
        .expect("add key");
    Agent {
        name: agent.name.clone(),
        key,
        key_id,
    }
}

fn now_s() -> i64 {
    concierge::util::now_ms() / 1000
}

/// One signed request: (status, headers, body).
pub(crate) struct Call<'a> {
    method: Method,
    path: &'a str,
    body: Option<Value>,
    token: Option<&'a str>,
    idempotency_key: Option<&'a str>,
    pub(crate) nonce: Option<String>,
    pub(crate) created: Option<i64>,
}

impl<'a> Call<'a> {
    pub(crate) fn new(method: Method, path: &'a str) -> Call<'a> {
        Call {
            method,
            path,
            body: None,
            token: None,
            idempotency_key: None,
            nonce: None,
            created: None,
        }
    }
    pub(crate) fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
    pub(crate) fn token(mut self, token: &'a str) -> Self {
        self.token = Some(token);
        self
    }
    fn key(mut self, key: &'a str) -> Self {
        self.idempotency_key = Some(key);
        self
    }
}

pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub(crate) async fn send(app: &TestApp, req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let _ = app;
    Answer {
        status,
        headers,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

/// Builds the request, signed by `agent` when given.
pub(crate) fn build(
    app: &TestApp,
    agent: Option<&Agent>,
    call: &Call<'_>,
) -> reqwest::RequestBuilder {
    let url = app.url(call.path);
    let body = call
        .body
        .as_ref()
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let mut req = app.client.request(call.method.clone(), &url);
    if !body.is_empty() {
        req = req
            .header("content-type", "application/json")
            .body(body.clone());
    }
    if let Some(agent) = agent {
        let nonce = call
            .nonce
            .clone()
            .unwrap_or_else(|| concierge::util::random_token(16));
        let h = identity::sign_request(
            &agent.key,
            &agent.key_id,
            call.method.as_str(),
            &url,
            &body,
            &nonce,
            call.created.unwrap_or_else(now_s),
        );
        for (name, value) in h.pairs() {
            req = req.header(name, value);
        }
    }
    if let Some(t) = call.token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = call.idempotency_key {
        req = req.header("idempotency-key", k);
    }
    req
}

pub(crate) async fn call(app: &TestApp, agent: Option<&Agent>, call: Call<'_>) -> Answer {
    send(app, build(app, agent, &call)).await
}

/// A token for `email` through the delegation endpoint (order number + email).
pub(crate) async fn delegate(
    app: &TestApp,
    agent: &Agent,
    order: &str,
    email: &str,
    extra: Value,
) -> String {
    let mut body = json!({"order_id": order, "email": email});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let a = call(
        app,
        Some(agent),
        Call::new(Method::POST, "/agent/v1/delegations").body(body),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["token"].as_str().expect("token").to_string()
}

async fn tool(
    app: &TestApp,
    agent: &Agent,
    token: &str,
    name: &str,
    args: Value,
    key: Option<&str>,
) -> Answer {
    let path = format!("/agent/v1/tools/{name}");
    let mut c = Call::new(Method::POST, &path).body(args).token(token);
    if let Some(k) = key {
        c = c.key(k);
    }
    call(app, Some(agent), c).await
}

pub(crate) async fn setup(db: Db) -> Option<TestApp> {
    let app = TestApp::spawn_on(db).await?;
    app.import_tau().await;
    Some(app)
}

pub(crate) fn service_key(app: &TestApp) -> SigningKey {
    app.store().audit_signer().expect("service key").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_requests_get_public_reads_only() {
    let app = setup(Db::Sqlite).await.expect("app");
    // A catalogue read needs nothing.
    let a = call(
        &app,
        None,
        Call::new(Method::POST, "/agent/v1/tools/get_product")
            .body(json!({"product_id": "6679515468"})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // A write about a customer needs a signature…
    let a = call(
        &app,
        None,
        Call::new(Method::POST, "/agent/v1/tools/cancel_order")
            .body(json!({"order_id": "#W9300146", "reason": "no longer needed"})),
    )
    .await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.code(), "signature_required");
    // … and a token presented without one is refused too.
    let agent = register(&app, "helper").await;
    let token = delegate(&app, &agent, "#W4316152", AARAV, json!({})).await;
    let a = call(
        &app,
        None,
        Call::new(Method::POST, "/agent/v1/tools/cancel_order")
            .body(json!({"order_id": "#W9300146", "reason": "no longer needed"}))
            .token(&token),
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "signature_required");
    // A signed write without a token: token_required.
    let a = call(
        &app,
        Some(&agent),
        Call::new(Method::POST, "/agent/v1/tools/cancel_order")
            .body(json!({"order_id": "#W9300146", "reason": "no longer needed"})),
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "token_required");
    // Nothing was cancelled.
    let order = app
        .store()
        .get_order_by_number("#W9300146")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order.status.as_str(), "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_body_a_stale_or_forged_signature_and_unknown_keys_are_refused() {
    let app = setup(Db::Sqlite).await.expect("app");
    let agent = register(&app, "helper").await;
    let token = delegate(&app, &agent, "#W4316152", AARAV, json!({})).await;
    let url = app.url("/agent/v1/tools/cancel_order");
    let signed_body =
        serde_json::to_vec(&json!({"order_id": "#W9300146", "reason": "no longer needed"}))
            .unwrap();
    let changed =
        serde_json::to_vec(&json!({"order_id": "#W9300146", "reason": "ordered by mistake"}))
            .unwrap();
    let h = identity::sign_request(
        &agent.key,
        &agent.key_id,
        "POST",
        &url,
        &signed_body,
        "n-1",
        now_s(),
    );

    // The body changed after signing, Content-Digest kept: the digest no longer matches.
    let mut req = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .body(changed.clone());
    for (k, v) in h.pairs() {
        req = req.header(k, v);
    }
    let a = send(&app, req).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.code(), "digest_mismatch");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("body")
    );

    // The digest recomputed for the new body, the old signature kept: the signature fails.
    let mut req = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .body(changed.clone());
    req = req
        .header("signature-input", &h.signature_input)
        .header("signature", &h.signature)
        .header("content-digest", identity::content_digest(&changed));
    let a = send(&app, req).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.code(), "bad_signature");

    // Signed for another URL.
    let other = identity::sign_request(
        &agent.key,
        &agent.key_id,
        "POST",
        &app.url("/agent/v1/tools/return_items"),
        &signed_body,
        "n-2",
        now_s(),
    );
    let mut req = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .body(signed_body.clone());
    for (k, v) in other.pairs() {
        req = req.header(k, v);
    }
    assert_eq!(send(&app, req).await.code(), "bad_signature");

    // Created six minutes ago.
    let mut c = Call::new(Method::POST, "/agent/v1/tools/cancel_order")
        .body(json!({"order_id": "#W9300146", "reason": "no longer needed"}))
        .token(&token);
    c.created = Some(now_s() - 360);
    let a = call(&app, Some(&agent), c).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "signature_stale");

    // A key nobody registered.
    let stranger = Agent {
        name: "stranger".into(),
        key: identity::generate_key(),
        key_id: "not-registered".into(),
    };
    let a = call(
        &app,
        Some(&stranger),
        Call::new(Method::GET, "/agent/v1/whoami"),
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "unknown_key");

    // A signature that covers too little.
    let mut req = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .body(signed_body.clone());
    let bad_input = h.signature_input.replace(" \"content-digest\"", "");
    req = req
        .header("signature-input", bad_input)
        .header("signature", &h.signature)
        .header("content-digest", h.content_digest.clone().unwrap());
    let a = send(&app, req).await;
    assert_eq!(a.code(), "signature_incomplete", "{}", a.body);

    // Nothing was cancelled by any of them.
    let order = app
        .store()
        .get_order_by_number("#W9300146")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order.status.as_str(), "pending");
}

async fn replayed_nonce_is_refused(db: Db) {
    let Some(app) = setup(db).await else { return };
    let agent = register(&app, "helper").await;
    let mut first = Call::new(Method::GET, "/agent/v1/whoami");
    first.nonce = Some("nonce-1".into());
    let created = now_s();
    first.created = Some(created);
    let req = build(&app, Some(&agent), &first);
    let replay = req.try_clone().expect("clone");
    let a = send(&app, req).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["agent"]["name"], "helper");
    let a = send(&app, replay).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.code(), "nonce_reused");
    // The same nonce with another key of the same agent is a different (key, nonce) pair.
    let second = add_key(&app, &agent).await;
    let mut again = Call::new(Method::GET, "/agent/v1/whoami");
    again.nonce = Some("nonce-1".into());
    assert_eq!(call(&app, Some(&second), again).await.status, 200);
}
on_both!(replayed_nonce_is_refused);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_and_agents_are_refused_and_keys_rotate() {
    let app = setup(Db::Sqlite).await.expect("app");
    let old = register(&app, "helper").await;
    let new = add_key(&app, &old).await;
    let whoami = || Call::new(Method::GET, "/agent/v1/whoami");
    assert_eq!(call(&app, Some(&old), whoami()).await.status, 200);
    assert_eq!(call(&app, Some(&new), whoami()).await.status, 200);
    // Rotation: the old key is revoked, the new one keeps working.
    app.store()
        .revoke_agent_key(&old.key_id, concierge::util::now_ms())
        .await
        .unwrap();
    let a = call(&app, Some(&old), whoami()).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "key_revoked");
    assert_eq!(call(&app, Some(&new), whoami()).await.status, 200);
    // Revoking the agent revokes every key.
    assert!(
        app.store()
            .revoke_agent("helper", concierge::util::now_ms())
            .await
            .unwrap()
    );
    let a = call(&app, Some(&new), whoami()).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "key_revoked");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("helper")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_one_customer_cannot_read_another() {
    let app = setup(Db::Sqlite).await.expect("app");
    let agent = register(&app, "helper").await;
    let token = delegate(&app, &agent, "#W4316152", AARAV, json!({})).await;
    let own = tool(
        &app,
        &agent,
        &token,
        "get_order",
        json!({"order_id": "#W3470184"}),
        None,
    )
    .await;
    assert_eq!(own.status, 200, "{}", own.body);
    let other = tool(
        &app,
        &agent,
        &token,
        "get_order",
        json!({"order_id": IVAN_ORDER}),
        None,
    )
    .await;
    assert_eq!(other.status, 404, "{}", other.body);
    assert_eq!(other.code(), "not_your_order");
    assert!(!other.body.to_string().contains("Garden Hose"));
    // Another agent cannot use the token, even with a valid signature of its own.
    let thief = register(&app, "thief").await;
    let a = tool(
        &app,
        &thief,
        &token,
        "get_order",
        json!({"order_id": "#W3470184"}),
        None,
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "token_agent_mismatch");
    // A wrong email gets no token, and does not say which half was wrong.
    let a = call(
        &app,
        Some(&agent),
        Call::new(Method::POST, "/agent/v1/delegations")
            .body(json!({"order_id": IVAN_ORDER, "email": AARAV})),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.code(), "verification_failed");
}

async fn the_spending_limit_holds_across_returns(db: Db) {
    let Some(app) = setup(db).await else { return };
    let agent = register(&app, "helper").await;
    let token = delegate(&app, &agent, "#W4316152", AARAV, json!({"limit": "200.00"})).await;
    let ret = |order: &'static str, item: &'static str| json!({"order_id": order, "item_ids": [item], "payment_method_id": AARAV_GIFT_CARD});
    let spent = || async {
        let who = call(
            &app,
            Some(&agent),
            Call::new(Method::GET, "/agent/v1/whoami").token(&token),
        )
        .await;
        who.body["grant"]["spent_minor"].as_i64().unwrap_or(-1)
    };
    // A call the tool layer refuses is not charged (the desk lamp's order is not delivered).
    let a = tool(
        &app,
        &agent,
        &token,
        "return_items",
        ret("#W9300146", "9190635437"),
        None,
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(spent().await, 0);
    // Tea kettle 94.80, then water bottle 54.04: 148.84 of 200.00.
    let a = tool(
        &app,
        &agent,
        &token,
        "return_items",
        ret("#W4316152", "7292993796"),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = tool(
        &app,
        &agent,
        &token,
        "return_items",
        ret("#W3470184", "2366567022"),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(spent().await, 14_884);
    // Garden hose 90.43 would make 239.27: refused, naming what is left.
    let a = tool(
        &app,
        &agent,
        &token,
        "return_items",
        ret("#W9311069", "9829827210"),
        None,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.code(), "spending_limit");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("$51.16") && message.contains("$200.00"),
        "{message}"
    );
    let order = app
        .store()
        .get_order_by_number("#W9311069")
        .await
        .unwrap()
        .unwrap();
    assert!(order.returns.is_empty(), "the refused return was not made");
    // A refused call leaves nothing reserved: the ledger holds exactly the two returns.
    assert_eq!(spent().await, 14_884);
    // A cancellation counts by the order's total (153.23 for the desk lamp's order): refused.
    let a = tool(
        &app,
        &agent,
        &token,
        "cancel_order",
        json!({"order_id": "#W9300146", "reason": "no longer needed"}),
        None,
    )
    .await;
    assert_eq!(a.code(), "spending_limit", "{}", a.body);
}
on_both!(the_spending_limit_holds_across_returns);

async fn concurrent_returns_cannot_both_pass_the_limit(db: Db) {
    let Some(app) = setup(db).await else { return };
    let agent = register(&app, "helper").await;
    // 100.00 allows either the tea kettle (94.80) or the garden hose (90.43), not both.
    let token = delegate(&app, &agent, "#W4316152", AARAV, json!({"limit": "100.00"})).await;
    let a = tool(
        &app,
        &agent,
        &token,
        "return_items",
        json!({"order_id": "#W4316152", "item_ids": ["7292993796"], "payment_method_id": AARAV_GIFT_CARD}),
        None,
    );
    let b = tool(
        &app,
        &agent,
        &token,
        "return_items",
        json!({"order_id": "#W9311069", "item_ids": ["9829827210"], "payment_method_id": AARAV_GIFT_CARD}),
        None,
    );
    let (a, b) = tokio::join!(a, b);
    let ok = [a.status, b.status].iter().filter(|s| **s == 200).count();
    assert!(ok <= 1, "both passed: {} / {}", a.body, b.body);
    for x in [&a, &b] {
        assert!(
            x.status == 200 || x.code() == "spending_limit",
            "{}",
            x.body
        );
    }
}
on_both!(concurrent_returns_cannot_both_pass_the_limit);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attenuated_token_is_narrower_than_its_parent() {
    let app = setup(Db::Sqlite).await.expect("app");
    let agent = register(&app, "helper").await;
    let parent = delegate(&app, &agent, "#W4316152", AARAV, json!({"limit": "300.00"})).await;
    let root = tokens::root_public_key(&service_key(&app)).unwrap();
    // Only reads, and at most 50.00 of spending.
    let child = tokens::attenuate(
        &parent,
        &root,
        Some(&["get_order".to_string()]),
        Some(5_000),
        None,
    )
    .expect("attenuate");
    let who = call(
        &app,
        Some(&agent),
        Call::new(Method::GET, "/agent/v1/whoami").token(&child),
    )
    .await;
    assert_eq!(
        who.body["grant"]["ops"],
        json!(["get_order"]),
        "{}",
        who.body
    );
    assert_eq!(who.body["grant"]["spend_limit_minor"], 5_000);
    let read = tool(
        &app,
        &agent,
        &child,
        "get_order",
        json!({"order_id": "#W3470184"}),
        None,
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
    let ret = json!({"order_id": "#W4316152", "item_ids": ["7292993796"], "payment_method_id": AARAV_GIFT_CARD});
    let a = tool(&app, &agent, &child, "return_items", ret.clone(), None).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.code(), "operation_not_allowed");
    // Same operations, lower limit: the 94.80 return the parent allows is over the child's.
    let child = tokens::attenuate(&parent, &root, None, Some(5_000), None).unwrap();
    let a = tool(&app, &agent, &child, "return_items", ret.clone(), None).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.code(), "spending_limit");
    // An attenuation cannot widen: a higher limit in a block changes nothing.
    let wide = tokens::attenuate(&parent, &root, None, Some(1_000_000), None).unwrap();
    let who = call(
        &app,
        Some(&agent),
        Call::new(Method::GET, "/agent/v1/whoami").token(&wide),
    )
    .await;
    assert_eq!(who.body["grant"]["spend_limit_minor"], 30_000);
    // An earlier expiry: already expired.
    let expired = tokens::attenuate(
        &parent,
        &root,
        None,
        None,
        Some(concierge::util::now_ms() - 1_000),
    )
    .unwrap();
    let a = tool(
        &app,
        &agent,
        &expired,
        "get_order",
        json!({"order_id": "#W3470184"}),
        None,
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "token_expired");
    // The parent still can.
    let a = tool(&app, &agent, &parent, "return_items", ret, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // Revoking the child leaves the parent; revoking the parent revokes both.
    let child =
        tokens::attenuate(&parent, &root, Some(&["get_order".to_string()]), None, None).unwrap();
    tokens::revoke(
        app.store(),
        &service_key(&app),
        &child,
        "cli",
        concierge::util::now_ms(),
    )
    .await
    .unwrap();
    let a = tool(
        &app,
        &agent,
        &child,
        "get_order",
        json!({"order_id": "#W3470184"}),
        None,
    )
    .await;
    assert_eq!(a.code(), "token_revoked");
    let a = tool(
        &app,
        &agent,
        &parent,
        "get_order",
        json!({"order_id": "#W3470184"}),
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    let child =
        tokens::attenuate(&parent, &root, Some(&["get_order".to_string()]), None, None).unwrap();
    tokens::revoke(
        app.store(),
        &service_key(&app),
        &parent,
        "cli",
        concierge::util::now_ms(),
    )
    .await
    .unwrap();
    for t in [&parent, &child] {
        let a = tool(
            &app,
            &agent,
            t,
            "get_order",
            json!({"order_id": "#W3470184"}),
            None,
        )
        .await;
        assert_eq!(a.status, 401);
        assert_eq!(a.code(), "token_revoked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn categories_scope_writes_and_over_limit_calls_can_go_to_staff() {
    let app = setup(Db::Sqlite).await.expect("app");
    let agent = register(&app, "helper").await;
    let token = delegate(
        &app,
        &agent,
        "#W4316152",
        AARAV,
        json!({"categories": ["Tea Kettle"]}),
    )
    .await;
    let a = tool(&app, &agent, &token, "return_items", json!({"order_id": "#W3470184", "item_ids": ["2366567022"], "payment_method_id": AARAV_GIFT_CARD}), None).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.code(), "category_not_allowed");
    let a = tool(&app, &agent, &token, "return_items", json!({"order_id": "#W4316152", "item_ids": ["7292993796"], "payment_method_id": AARAV_GIFT_CARD}), None).await;
    assert_eq!(a.status, 200, "{}", a.body);

    let escalating = delegate(
        &app,
        &agent,
        "#W4316152",
        AARAV,
        json!({"limit": "10.00", "over_limit": "escalate"}),
    )
    .await;
    let a = tool(&app, &agent, &escalating, "return_items", json!({"order_id": "#W3470184", "item_ids": ["2366567022"], "payment_method_id": AARAV_GIFT_CARD}), None).await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(a.code(), "needs_approval");
    let conv = app
        .store()
        .conversation_by_thread(
            "agent",
            &format!(
                "{}:{}",
                agent_id(&app, "helper").await,
                "aarav_anderson_8794"
            ),
        )
        .await
        .unwrap()
        .expect("an inbox conversation for staff");
    let escalations = app.store().escalations(&conv.id).await.unwrap();
    assert_eq!(escalations.len(), 1);
    assert_eq!(escalations[0].reason, "spending_limit");
    assert!(
        escalations[0].summary.contains("return_items"),
        "{}",
        escalations[0].summary
    );
}

async fn agent_id(app: &TestApp, name: &str) -> String {
    app.store().agent_by_name(name).await.unwrap().unwrap().id
}

async fn idempotent_writes_replay_and_conflict(db: Db) {
    let Some(app) = setup(db).await else { return };
    let agent = register(&app, "helper").await;
    let token = delegate(&app, &agent, "#W4316152", AARAV, json!({"limit": "300.00"})).await;
    let ret = json!({"order_id": "#W4316152", "item_ids": ["7292993796"], "payment_method_id": AARAV_GIFT_CARD});
    let first = tool(
        &app,
        &agent,
        &token,
        "return_items",
        ret.clone(),
        Some("ret-1"),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // The retry (a new signature and nonce, the same key and body) replays the answer.
    let again = tool(
        &app,
        &agent,
        &token,
        "return_items",
        ret.clone(),
        Some("ret-1"),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(again.body, first.body);
    let order = app
        .store()
        .get_order_by_number("#W4316152")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order.returns.len(), 1);
    let who = call(
        &app,
        Some(&agent),
        Call::new(Method::GET, "/agent/v1/whoami").token(&token),
    )
    .await;
    assert_eq!(who.body["grant"]["spent_minor"], 9_480, "charged once");
    // The same key for another request is a conflict.
    let other = json!({"order_id": "#W3470184", "item_ids": ["2366567022"], "payment_method_id": AARAV_GIFT_CARD});
    let a = tool(
        &app,
        &agent,
        &token,
        "return_items",
        other.clone(),
        Some("ret-1"),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(a.code(), "idempotency_conflict");
    // A refusal is stored and replayed too (it is not a server error).
    let a = tool(&app, &agent, &token, "return_items", json!({"order_id": "#W9300146", "item_ids": ["9190635437"], "payment_method_id": AARAV_GIFT_CARD}), Some("ret-2")).await;
    assert_eq!(a.status, 422);
    let b = tool(&app, &agent, &token, "return_items", json!({"order_id": "#W9300146", "item_ids": ["9190635437"], "payment_method_id": AARAV_GIFT_CARD}), Some("ret-2")).await;
    assert_eq!(b.status, 422);
    assert!(b.headers.get("idempotent-replayed").is_some());
    // Keys are per agent: another agent's "ret-1" is its own.
    let other_agent = register(&app, "other").await;
    let other_token = delegate(&app, &other_agent, "#W4316152", AARAV, json!({})).await;
    let a = tool(
        &app,
        &other_agent,
        &other_token,
        "return_items",
        other,
        Some("ret-1"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // A key longer than 255 characters.
    let long = "k".repeat(256);
    let a = tool(&app, &agent, &token, "return_items", ret, Some(&long)).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.code(), "idempotency_key_invalid");
}
on_both!(idempotent_writes_replay_and_conflict);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_key_answers_409_and_the_store_claims_race_safely() {
    let app = setup(Db::Sqlite).await.expect("app");
    let store = app.store();
    let now = concierge::util::now_ms();
    use concierge::store::IdempotencyClaim;
    let claim =
        |fp: &'static str| store.claim_idempotency_key("agt", "k", fp, now, now - 1, now - 60_000);
    let (a, b) = tokio::join!(claim("fp"), claim("fp"));
    let claims = [a.unwrap(), b.unwrap()];
    assert_eq!(
        claims
            .iter()
            .filter(|c| **c == IdempotencyClaim::Claimed)
            .count(),
        1,
        "{claims:?}"
    );
    assert!(claims.contains(&IdempotencyClaim::InFlight));
    assert_eq!(claim("other").await.unwrap(), IdempotencyClaim::Conflict);
    store
        .complete_idempotency_key("agt", "k", 201, &json!({"ok": true}))
        .await
        .unwrap();
    assert_eq!(
        claim("fp").await.unwrap(),
        IdempotencyClaim::Replay {
            status: 201,
            body: json!({"ok": true})
        }
    );
    // Over HTTP: a request while the first holds the key.
    let agent = register(&app, "helper").await;
    let token = delegate(&app, &agent, "#W4316152", AARAV, json!({})).await;
    let agent_id = agent_id(&app, "helper").await;
    let body = json!({"order_id": "#W4316152", "item_ids": ["7292993796"], "payment_method_id": AARAV_GIFT_CARD});
    let fp = {
        let mut f = b"POST /agent/v1/tools/return_items\n".to_vec();
        f.extend_from_slice(&serde_json::to_vec(&body).unwrap());
        concierge::util::sha256_hex(&f)
    };
    store
        .claim_idempotency_key(&agent_id, "busy", &fp, now, now - 1, now - 60_000)
        .await
        .unwrap();
    let a = tool(&app, &agent, &token, "return_items", body, Some("busy")).await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert_eq!(a.code(), "idempotency_in_flight");
    assert_eq!(
        a.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_code_by_email_delegates() {
    let sink = crate::smtp_sink::SmtpSink::start(0).await;
    let port = sink.port;
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.email.smtp_url = Some(concierge::util::Secret::new(format!(
            "smtp://127.0.0.1:{port}"
        )));
    })
    .await;
    app.import_tau().await;
    let agent = register(&app, "helper").await;
    let ask = |email: &'static str| {
        Call::new(Method::POST, "/agent/v1/delegations/code").body(json!({"email": email}))
    };
    let a = call(&app, Some(&agent), ask(AARAV)).await;
    assert_eq!(a.status, 202, "{}", a.body);
    // An unknown email gets the same answer, and no mail.
    let b = call(&app, Some(&agent), ask("nobody@example.com")).await;
    assert_eq!((b.status, &b.body), (202, &a.body));
    let mail = sink.messages();
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert!(mail[0].to.iter().any(|t| t.contains(AARAV)));
    let subject = mail[0].header("subject").unwrap();
    let code: String = subject.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(code.len(), 6, "{subject}");
    let redeem = |code: String| {
        Call::new(Method::POST, "/agent/v1/delegations").body(json!({"email": AARAV, "code": code}))
    };
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let a = call(&app, Some(&agent), redeem(wrong.into())).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.code(), "code_invalid");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4 attempt")
    );
    let a = call(&app, Some(&agent), redeem(code.clone())).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let token = a.body["token"].as_str().unwrap().to_string();
    let r = tool(
        &app,
        &agent,
        &token,
        "get_order",
        json!({"order_id": "#W3470184"}),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A code works once.
    let a = call(&app, Some(&agent), redeem(code)).await;
    assert_eq!(a.code(), "code_invalid");
    // Five wrong guesses use a code up.
    call(&app, Some(&agent), ask(AARAV)).await;
    for _ in 0..5 {
        call(&app, Some(&agent), redeem(wrong.into())).await;
    }
    let mail = sink.messages();
    let subject = mail.last().unwrap().header("subject").unwrap();
    let code: String = subject.chars().filter(char::is_ascii_digit).collect();
    let a = call(&app, Some(&agent), redeem(code)).await;
    assert_eq!(a.code(), "code_attempts_exceeded", "{}", a.body);
    // A third code in ten minutes is the last one.
    assert_eq!(call(&app, Some(&agent), ask(AARAV)).await.status, 202);
    let a = call(&app, Some(&agent), ask(AARAV)).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.code(), "too_many_codes");
    sink.stop();
}

/// Writes through the gateway sign the audit head; `concierge audit verify` checks chain and
/// signature, and names the entry where someone altered the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_checks_the_signed_head_and_finds_the_altered_entry() {
    let app = setup(Db::Sqlite).await.expect("app");
    let agent = register(&app, "helper").await;
    let token = delegate(&app, &agent, "#W4316152", AARAV, json!({})).await;
    for (order, item) in [
        ("#W4316152", "7292993796"),
        ("#W3470184", "2366567022"),
        ("#W9311069", "9829827210"),
    ] {
        let a = tool(
            &app,
            &agent,
            &token,
            "return_items",
            json!({"order_id": order, "item_ids": [item], "payment_method_id": AARAV_GIFT_CARD}),
            None,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // The delegation is on record, then the three returns, each by the agent for Aarav.
    let log = app.store().audit_entries(0, 10).await.unwrap();
    let tools: Vec<&str> = log.iter().map(|e| e.tool.as_str()).collect();
    assert_eq!(
        tools,
        [
            "issue_token",
            "return_items",
            "return_items",
            "return_items"
        ]
    );
    let agent_id = agent_id(&app, "helper").await;
    for e in &log {
        assert_eq!(e.actor_kind, "consumer_agent");
        assert_eq!(e.actor_id.as_deref(), Some(agent_id.as_str()));
        assert_eq!(e.customer_id.as_deref(), Some("aarav_anderson_8794"));
    }
    assert_eq!(log[0].args["verified_by"], "order_email");
    // The published head verifies with the published key.
    let head = call(&app, None, Call::new(Method::GET, "/agent/v1/audit/head")).await;
    assert_eq!(head.status, 200, "{}", head.body);
    assert_eq!(head.body["seq"], 4);
    assert_eq!(head.body["signed_seq"], 4);
    let public = identity::parse_public_key(head.body["public_key"].as_str().unwrap()).unwrap();
    assert!(concierge::store::verify_head(
        &public,
        4,
        head.body["hash"].as_str().unwrap(),
        head.body["signature"].as_str().unwrap()
    ));
    assert_eq!(public, service_key(&app).verifying_key());
    let key_file = app.data_dir().join("service_key.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The CLI reads the same data dir while the (idle) server runs: SQLite in WAL mode.
    let data = app.data_dir();

    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_concierge"))
            .current_dir(crate::helpers::repo_path(""))
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .args(["audit", "verify", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("intact: 4 entries") && stdout.contains("head is signed"),
        "{stdout}"
    );

    // A write made through the library without the service key leaves the head unsigned …
    {
        let store = concierge::store::Store::open(&data, None, 1).await.unwrap();
        let policy = concierge::commerce::policy::Policy::load(&crate::helpers::repo_path(
            "brand/policy.toml",
        ))
        .unwrap();
        let ctx = concierge::agent::tools::ToolContext {
            store: &store,
            policy: &policy,
            actor: concierge::agent::tools::Actor::Staff { id: "ops".into() },
            customer_id: None,
            now: concierge::util::now_ms(),
        };
        let call = concierge::agent::tools::ToolCall::CancelOrder {
            order_id: "#W9300146".into(),
            reason: "no longer needed".into(),
        };
        concierge::agent::tools::execute(&ctx, &call).await.unwrap();
        store.close().await;
    }
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("intact: 5 entries") && stdout.contains("up to entry 4"),
        "{stdout}"
    );
    // … until the service publishes it (signing on read).
    let head = call(&app, None, Call::new(Method::GET, "/agent/v1/audit/head")).await;
    assert_eq!(
        (head.body["seq"].clone(), head.body["signed_seq"].clone()),
        (json!(5), json!(5))
    );
    let out = verify();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("intact: 5 entries verified; the head is signed")
    );

    // Someone alters entry 2 behind the service's back.
    let db = data.join("concierge.db");
    let conn_url = format!("sqlite://{}", db.display());
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&conn_url).await.unwrap();
        sqlx::query("DROP TRIGGER audit_log_no_update")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET outcome = 'refused: policy_refused: nope' WHERE seq = 2")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let out = verify();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit entry 2") && err.contains("changed"),
        "{err}"
    );

    // … and then re-hashes the whole chain, head row included: every hash is consistent
    // again, but the signature over the head no longer matches.
    {
        use sqlx::{Connection, Row};
        let mut conn = sqlx::SqliteConnection::connect(&conn_url).await.unwrap();
        let store = concierge::store::Store::connect(&conn_url, 1)
            .await
            .unwrap();
        let entries = store.audit_entries(0, 100).await.unwrap();
        store.close().await;
        let mut prev = concierge::store::GENESIS_HASH.to_string();
        for mut e in entries {
            e.prev_hash = prev.clone();
            e.hash = e.expected_hash();
            sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3")
                .bind(&e.prev_hash)
                .bind(&e.hash)
                .bind(e.seq)
                .execute(&mut conn)
                .await
                .unwrap();
            prev = e.hash;
        }
        sqlx::query("UPDATE audit_head SET hash = $1, signed_hash = $1")
            .bind(&prev)
            .execute(&mut conn)
            .await
            .unwrap();
        let n: i64 = sqlx::query("SELECT count(*) AS n FROM audit_log")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get("n");
        assert_eq!(n, 5);
        conn.close().await.unwrap();
    }
    let out = verify();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit entry 5") && err.contains("signature"),
        "{err}"
    );
}

#[test]
fn the_agents_cli_registers_lists_issues_and_revokes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_concierge"))
            .current_dir(crate::helpers::repo_path(""))
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .env("CONCIERGE_DATA_DIR", &data)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, _, err) = run(&[
        "import",
        "tau-retail",
        crate::helpers::shared_data("tau-bench-retail/tau-bench-v1")
            .to_str()
            .unwrap(),
    ]);
    assert!(ok, "{err}");
    // keygen writes a private key the agent keeps and prints the public key to register.
    let key_file = tmp.path().join("agent.pem");
    let (ok, out, err) = run(&["agents", "keygen", "--out", key_file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let generated = identity::read_private_key(&key_file).unwrap();
    assert_eq!(
        out.lines().last().unwrap().trim(),
        identity::encode_public_key(&generated.verifying_key())
    );
    let (ok, _, err) = run(&["agents", "keygen", "--out", key_file.to_str().unwrap()]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let key = identity::generate_key();
    let pem = {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        key.verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap()
    };
    let (ok, out, err) = run(&[
        "agents",
        "register",
        "--name",
        "shopbot",
        "--public-key",
        &pem,
    ]);
    assert!(ok, "{err}");
    let key_id = out.lines().last().unwrap().trim().to_string();
    assert_eq!(key_id, identity::key_id(&key.verifying_key()));
    // The same key again is refused with a reason.
    let (ok, _, err) = run(&[
        "agents",
        "register",
        "--name",
        "other",
        "--public-key",
        &identity::encode_public_key(&key.verifying_key()),
    ]);
    assert!(!ok && err.contains("already registered"), "{err}");
    let (ok, _, err) = run(&["agents", "register", "--name", "x", "--public-key", "AAAA"]);
    assert!(!ok && err.contains("32 bytes"), "{err}");
    let (ok, out, _) = run(&["agents", "list"]);
    assert!(
        ok && out.contains("shopbot") && out.contains(&key_id),
        "{out}"
    );
    let (ok, out, err) = run(&[
        "agents",
        "token",
        "--agent",
        "shopbot",
        "--customer",
        AARAV,
        "--ops",
        "get_order,return_items",
        "--limit",
        "250.00",
        "--expires",
        "1h",
    ]);
    assert!(ok, "{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(
        out.contains("get_order, return_items") && out.contains("250.00"),
        "{out}"
    );
    let (ok, _, err) = run(&[
        "agents",
        "token",
        "--agent",
        "shopbot",
        "--customer",
        AARAV,
        "--ops",
        "teleport",
    ]);
    assert!(!ok && err.contains("teleport"), "{err}");
    let (ok, out, err) = run(&[
        "agents",
        "attenuate",
        "--token",
        &token,
        "--ops",
        "get_order",
    ]);
    assert!(ok, "{err}");
    assert_ne!(out.trim(), token);
    let (ok, out, _) = run(&["agents", "tokens"]);
    assert!(ok && out.contains("valid until"), "{out}");
    let (ok, out, err) = run(&["agents", "revoke-token", &token]);
    assert!(ok && out.contains("Revoked token"), "{err}");
    let (ok, out, _) = run(&["agents", "tokens"]);
    assert!(ok && out.contains("revoked"), "{out}");
    let (ok, out, err) = run(&["agents", "revoke", "--name", "shopbot"]);
    assert!(ok && out.contains("Revoked agent"), "{err}");
    let (ok, out, _) = run(&["agents", "list"]);
    assert!(ok && out.contains("revoked"), "{out}");
    let (ok, _, err) = run(&["agents", "revoke", "--name", "nobody"]);
    assert!(!ok && err.contains("no such agent"), "{err}");
}

/// `@target-uri` is the URL the client used: `[server] public_url` behind a proxy, else the
/// Host header with `X-Forwarded-Proto`; the path and query are taken as sent, not decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_uri_is_the_url_the_client_used() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.server.public_url = Some("https://shop.example.com/".into());
    })
    .await;
    let agent = register(&app, "helper").await;
    let path = "/agent/v1/whoami?note=a%20b&x=%2F";
    let signed_for = |url: &str, nonce: &str| {
        let h = identity::sign_request(&agent.key, &agent.key_id, "GET", url, b"", nonce, now_s());
        let mut req = app.client.get(app.url(path));
        for (k, v) in h.pairs() {
            req = req.header(k, v);
        }
        req
    };
    let a = send(
        &app,
        signed_for(&format!("https://shop.example.com{path}"), "p1"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["agent"]["name"], "helper");
    // The decoded query is not what was sent.
    let a = send(
        &app,
        signed_for(
            "https://shop.example.com/agent/v1/whoami?note=a b&x=/",
            "p2",
        ),
    )
    .await;
    assert_eq!(a.code(), "bad_signature", "{}", a.body);
    // The internal address is not the public one.
    let a = send(&app, signed_for(&app.url(path), "p3")).await;
    assert_eq!(a.code(), "bad_signature", "{}", a.body);
    app.stop().await;

    // Without public_url: scheme from X-Forwarded-Proto, authority from Host.
    let app = TestApp::spawn().await;
    let agent = register(&app, "helper").await;
    let host = app.addr.trim_start_matches("http://").to_string();
    let url = format!("https://{host}/agent/v1/whoami");
    let h = identity::sign_request(&agent.key, &agent.key_id, "GET", &url, b"", "f1", now_s());
    let mut req = app
        .client
        .get(app.url("/agent/v1/whoami"))
        .header("x-forwarded-proto", "https");
    for (k, v) in h.pairs() {
        req = req.header(k, v);
    }
    let a = send(&app, req).await;
    assert_eq!(a.status, 200, "{}", a.body);
}
