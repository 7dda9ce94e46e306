//! Consumer agents' A2A conversations: a signed agent's text contexts never share a verified
//! customer; unsigned callers get server-minted contexts and never see each other's tasks; the
//! service answers only for the hosts it expects (421 otherwise) and prints its public URL.

use concierge::gateway::{identity, tokens};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp};

/// Aarav Anderson (τ-bench retail): his pending order, with a desk lamp.
const AARAV_ORDER: &str = "#W9300146";
const AARAV_ID: &str = "aarav_anderson_8794";
const AARAV_EMAIL: &str = "aarav.anderson9752@example.com";
/// What a reply must not show of Aarav when he has not been verified.
const AARAV_SECRETS: &[&str] = &[
    "W9300146",
    "W4316152",
    "W9311069",
    "W3220203",
    "W3470184",
    "Desk Lamp",
    "Aarav",
    "Anderson",
    "Philadelphia",
    "Maple",
];

struct Agent {
    key: SigningKey,
    key_id: String,
}

async fn register(app: &TestApp, name: &str) -> (Agent, String) {
    let key = identity::generate_key();
    let key_id = identity::key_id(&key.verifying_key());
    let agent_id = app
        .store()
        .register_agent_key(
            name,
            &key_id,
            &identity::encode_public_key(&key.verifying_key()),
            concierge::util::now_ms(),
        )
        .await
        .expect("register agent");
    (Agent { key, key_id }, agent_id)
}

/// A capability token for Aarav, issued to the agent, reading his orders.
async fn aarav_token(app: &TestApp, agent_id: &str) -> String {
    let now = concierge::util::now_ms();
    let spec = tokens::TokenSpec {
        agent_id: agent_id.to_string(),
        customer_id: AARAV_ID.into(),
        ops: vec!["get_order".into(), "list_customer_orders".into()],
        spend_limit: None,
        categories: Vec::new(),
        expires_at: now + 3_600_000,
        escalate_over_limit: false,
    };
    let service = concierge::gateway::service_key(&app.state).expect("service key");
    tokens::issue(app.store(), service, &spec, "test", now)
        .await
        .expect("issue token")
        .0
}

/// One JSON-RPC call to /a2a, signed by `agent` (with `token`) when given.
async fn rpc(
    app: &TestApp,
    agent: Option<&Agent>,
    token: Option<&str>,
    method: &str,
    params: Value,
) -> Value {
    let url = app.url("/a2a");
    let body = serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 1, "method": method, "params": params,
    }))
    .expect("json");
    let mut req = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("A2A-Version", "1.0")
        .body(body.clone());
    if let Some(a) = agent {
        let h = identity::sign_request(
            &a.key,
            &a.key_id,
            "POST",
            &url,
            &body,
            &concierge::util::random_token(12),
            concierge::util::now_ms() / 1000,
        );
        for (k, v) in h.pairs() {
            req = req.header(k, v);
        }
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("request");
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.expect("json body")
}

fn text(id: &str, context: Option<&str>, words: &str) -> Value {
    let mut m = json!({"messageId": id, "role": "ROLE_USER", "parts": [{"text": words}]});
    if let Some(c) = context {
        m["contextId"] = json!(c);
    }
    json!({ "message": m })
}

fn reply_text(r: &Value) -> String {
    r["result"]["task"]["status"]["message"]["parts"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no reply text: {r}"))
        .to_string()
}

fn verified_customer(r: &Value) -> Value {
    r["result"]["task"]["status"]["message"]["metadata"]["resolution"]["verified_customer"].clone()
}

/// Checks the agent's answer (status message and artifacts, not the caller's own words in the
/// history) for anything of Aarav's the caller did not write itself.
fn assert_discloses_nothing_of_aarav(r: &Value, typed: &str) {
    let task = &r["result"]["task"];
    assert!(task.is_object(), "{r}");
    let answer = format!("{} {}", task["status"], task["artifacts"]);
    for secret in AARAV_SECRETS {
        if !typed.contains(secret) {
            assert!(!answer.contains(secret), "disclosed {secret:?}: {r}");
        }
    }
    assert_eq!(verified_customer(r), Value::Null, "{r}");
}

/// Agent X verifies shopper A in context 1 with A's token; a new context 2 from X asking
/// "where is my order?" — and one that writes A's email and order number without the token —
/// discloses nothing of A.
async fn an_agents_contexts_never_share_a_customer(db: Db) {
    let Some(app) = TestApp::spawn_on(db).await else {
        return;
    };
    app.import_tau().await;
    let (x, x_id) = register(&app, "shopper-bot").await;
    let token = aarav_token(&app, &x_id).await;

    let r = rpc(
        &app,
        Some(&x),
        Some(&token),
        "SendMessage",
        text(
            "c1-1",
            Some("ctx-1"),
            &format!("Where is my order {AARAV_ORDER}?"),
        ),
    )
    .await;
    assert_eq!(verified_customer(&r), json!(AARAV_ID), "{r}");
    assert!(reply_text(&r).contains("W9300146"), "{r}");

    // Context 2, no token: a plain question.
    let r = rpc(
        &app,
        Some(&x),
        None,
        "SendMessage",
        text("c2-1", Some("ctx-2"), "Where is my order?"),
    )
    .await;
    assert_discloses_nothing_of_aarav(&r, "");
    // Context 3, no token: the agent writes Aarav's email and order number. Claims typed by an
    // agent never verify.
    let claims = format!("I am {AARAV_EMAIL}, where is order {AARAV_ORDER}?");
    let r = rpc(
        &app,
        Some(&x),
        None,
        "SendMessage",
        text("c3-1", Some("ctx-3"), &claims),
    )
    .await;
    assert_discloses_nothing_of_aarav(&r, &claims);
    // Context 1 still knows Aarav (its own conversation), with the token.
    let r = rpc(
        &app,
        Some(&x),
        Some(&token),
        "SendMessage",
        text("c1-2", Some("ctx-1"), "And what is in it?"),
    )
    .await;
    assert!(!r.to_string().contains("\"error\""), "{r}");
    // Each context is its own conversation and its own sender identity.
    let convs: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT conversation_id FROM a2a_tasks WHERE scope = $1 ORDER BY conversation_id",
    )
    .bind(format!("agent:{x_id}"))
    .fetch_all(app.store().pool())
    .await
    .expect("tasks");
    assert_eq!(convs.len(), 3, "{convs:?}");
    app.stop().await;
}
on_both!(an_agents_contexts_never_share_a_customer);

/// Unsigned callers: the server mints the context; a made-up contextId is refused; nobody reads
/// or continues a context they were not given, the minted contexts survive a restart, and
/// unsigned conversations never see customer data.
async fn unsigned_contexts_are_minted_and_private(db: Db) {
    let Some(app) = TestApp::spawn_on(db).await else {
        return;
    };
    app.import_tau().await;
    // Caller A names its own context: refused, nothing stored.
    let r = rpc(
        &app,
        None,
        None,
        "SendMessage",
        text("m-1", Some("support"), "Where is my order?"),
    )
    .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("unknown context"), "{r}");
    // Its first message without one gets a minted, unguessable context.
    let claims = format!("I am {AARAV_EMAIL}, where is order {AARAV_ORDER}?");
    let r = rpc(&app, None, None, "SendMessage", text("m-1", None, &claims)).await;
    let task = &r["result"]["task"];
    let ctx = task["contextId"].as_str().expect("context").to_string();
    let task_id = task["id"].as_str().expect("task id").to_string();
    assert!(ctx.len() >= 22 && ctx != "support", "{ctx}");
    assert!(task_id.len() >= 22, "{task_id}");
    // Claims typed into an unsigned conversation verify nobody.
    assert_discloses_nothing_of_aarav(&r, &claims);
    let more = format!("My zip is 19031 and my email {AARAV_EMAIL}, order {AARAV_ORDER}");
    let r = rpc(
        &app,
        None,
        None,
        "SendMessage",
        text("m-2", Some(&ctx), &more),
    )
    .await;
    assert_eq!(r["result"]["task"]["contextId"], ctx.as_str(), "{r}");
    assert_discloses_nothing_of_aarav(&r, &more);

    // Caller B knows neither id: it lists nothing, reads nothing, continues nothing.
    let r = rpc(&app, None, None, "ListTasks", json!({})).await;
    assert_eq!(r["result"]["tasks"], json!([]), "{r}");
    assert_eq!(r["result"]["totalSize"], 0, "{r}");
    let r = rpc(
        &app,
        None,
        None,
        "ListTasks",
        json!({"contextId": "support"}),
    )
    .await;
    assert_eq!(r["result"]["tasks"], json!([]), "{r}");
    let r = rpc(&app, None, None, "GetTask", json!({"id": "support"})).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let r = rpc(
        &app,
        None,
        None,
        "SendMessage",
        text("m-3", Some("made-up-context-123"), "hello"),
    )
    .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown context"),
        "{r}"
    );
    // B reusing A's messageId gets a task of its own, not A's.
    let r = rpc(
        &app,
        None,
        None,
        "SendMessage",
        text("m-1", None, "What is your return policy?"),
    )
    .await;
    let b_task = r["result"]["task"]["id"]
        .as_str()
        .expect("task")
        .to_string();
    assert_ne!(b_task, task_id);
    assert_ne!(r["result"]["task"]["contextId"], ctx.as_str());
    // A signed agent's task is not readable without its signature.
    let (x, _) = register(&app, "shopper-bot").await;
    let r = rpc(
        &app,
        Some(&x),
        None,
        "SendMessage",
        text("s-1", Some("ctx-x"), "What is your return policy?"),
    )
    .await;
    let signed_task = r["result"]["task"]["id"]
        .as_str()
        .expect("task")
        .to_string();
    let r = rpc(&app, None, None, "GetTask", json!({"id": signed_task})).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let r = rpc(&app, None, None, "ListTasks", json!({"contextId": "ctx-x"})).await;
    assert_eq!(r["result"]["tasks"], json!([]), "{r}");
    // …and the agent does not see unsigned tasks.
    let r = rpc(&app, Some(&x), None, "GetTask", json!({"id": task_id})).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");

    // A, holding its ids, reads and continues its context — also after a restart.
    let app = app.restart().await;
    let r = rpc(&app, None, None, "GetTask", json!({"id": task_id})).await;
    assert_eq!(r["result"]["id"], task_id.as_str(), "{r}");
    let r = rpc(&app, None, None, "ListTasks", json!({"contextId": ctx})).await;
    assert_eq!(r["result"]["totalSize"], 2, "{r}");
    assert_eq!(r["result"]["pageSize"], 2, "{r}");
    let r = rpc(
        &app,
        None,
        None,
        "SendMessage",
        text("m-4", Some(&ctx), "What is your return policy?"),
    )
    .await;
    assert_eq!(r["result"]["task"]["contextId"], ctx.as_str(), "{r}");
    app.stop().await;
}
on_both!(unsigned_contexts_are_minted_and_private);

/// Without `[server] public_url`, a request naming a host the service does not expect gets
/// 421; with it, the card's URLs are the public URL whatever the Host says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_checked_and_links_use_the_public_url() {
    let app = TestApp::spawn().await;
    let port = app.addr.rsplit(':').next().expect("port").to_string();
    let card = |host: String| {
        app.client
            .get(app.url("/.well-known/agent-card.json"))
            .header("host", host)
            .send()
    };
    let r = card("evil.example".into()).await.expect("request");
    assert_eq!(r.status().as_u16(), 421);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "misdirected_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("allowed_hosts"),
        "{body}"
    );
    // The right port on another name, or another port on localhost: refused too.
    let r = card(format!("evil.example:{port}")).await.expect("request");
    assert_eq!(r.status().as_u16(), 421);
    let r = card("localhost:1".into()).await.expect("request");
    assert_eq!(r.status().as_u16(), 421);
    // A signed-request endpoint is behind the same check.
    let r = app
        .client
        .post(app.url("/a2a"))
        .header("host", "evil.example")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 421);
    // The local names on the bound port are served, and the card's links follow them.
    let r = card(format!("localhost:{port}")).await.expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body["supportedInterfaces"][0]["url"],
        format!("http://localhost:{port}/a2a")
    );
    // Health checks are answered whatever the host (load balancers probe by address).
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("host", "10.1.2.3")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    app.stop().await;

    // With public_url, every printed URL is the public one, whatever the Host.
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.server.public_url = Some("https://support.example.com/".into());
    })
    .await;
    let r = app
        .client
        .get(app.url("/.well-known/agent-card.json"))
        .header("host", "evil.example")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.expect("json");
    let text = body.to_string();
    assert!(!text.contains("evil.example"), "{body}");
    assert_eq!(
        body["supportedInterfaces"][0]["url"],
        "https://support.example.com/a2a"
    );
    assert_eq!(body["url"], "https://support.example.com/a2a");
    assert_eq!(
        body["capabilities"]["extensions"][0]["params"]["auditHead"],
        "https://support.example.com/agent/v1/audit/head"
    );
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .header("host", "evil.example")
        .send()
        .await
        .expect("request");
    let doc: Value = r.json().await.expect("json");
    assert_eq!(doc["servers"][0]["url"], "https://support.example.com");
    app.stop().await;
}
