//! The consumer-agent protocols: A2A, MCP and /agent/v1, driven by real third-party clients.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, repo_path};

/// A product in the τ-bench catalogue (a T-shirt with variants).
const PRODUCT: &str = "9523456873";
/// james_li_5688's order (processed).
const ORDER: &str = "#W2611340";

async fn app_with_shop(db: Db) -> Option<TestApp> {
    let app = TestApp::spawn_on(db).await?;
    app.import_tau().await;
    Some(app)
}

/// A JSON-RPC call to /a2a; `version` is the A2A-Version header.
async fn rpc(app: &TestApp, version: Option<&str>, method: &str, params: Value) -> (u16, Value) {
    let mut req = app.client.post(app.url("/a2a")).json(&json!({
        "jsonrpc": "2.0", "id": "req-1", "method": method, "params": params,
    }));
    if let Some(v) = version {
        req = req.header("A2A-Version", v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// An unauthenticated GET (the helpers' get_json sends the API key).
async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app.client.get(app.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn data_message(id: &str, data: Value) -> Value {
    json!({"messageId": id, "role": "ROLE_USER", "parts": [{"data": data}]})
}

#[tokio::test]
async fn agent_card_lists_interfaces_and_skills() {
    let app = TestApp::spawn().await;
    let (status, card) = get(&app, "/.well-known/agent-card.json").await;
    assert_eq!(status, 200);
    assert_eq!(card["name"], "Alder & Pine customer support");
    let iface = &card["supportedInterfaces"][0];
    assert_eq!(iface["url"], app.url("/a2a"));
    assert_eq!(iface["protocolBinding"], "JSONRPC");
    assert_eq!(iface["protocolVersion"], "1.0");
    assert_eq!(card["capabilities"]["streaming"], true);
    let skills: Vec<&str> = card["skills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        skills,
        [
            "order-status",
            "availability",
            "delivery-estimate",
            "returns-exchanges",
            "cancellations",
            "policy-questions"
        ]
    );
    for s in card["skills"].as_array().unwrap() {
        assert!(!s["description"].as_str().unwrap().is_empty());
        assert!(!s["tags"].as_array().unwrap().is_empty());
    }
    // Customer skills declare the signature and token; public ones do not.
    assert!(card["skills"][0]["securityRequirements"].is_array());
    assert!(card["skills"][1].get("securityRequirements").is_none());
    // The service key that signs tokens and the audit head is published, and is the one in use.
    let ext = &card["capabilities"]["extensions"][0];
    assert_eq!(ext["uri"], "urn:concierge:extension:service-key:v1");
    let (status, head) = get(&app, "/agent/v1/audit/head").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(ext["params"]["publicKey"], head["public_key"]);
    assert_eq!(ext["params"]["auditHead"], app.url("/agent/v1/audit/head"));
    assert_eq!(
        ext["params"]["publicKey"].as_str().unwrap().len(),
        43,
        "32 bytes, base64url without padding"
    );
    app.stop().await;
}

#[tokio::test]
async fn openapi_lists_every_tool() {
    let app = TestApp::spawn().await;
    let (status, tools) = get(&app, "/agent/v1/tools").await;
    assert_eq!(status, 200);
    let names: Vec<String> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"get_order".to_string()));
    assert!(names.contains(&"search_policy".to_string()));
    let (status, doc) = get(&app, "/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for n in &names {
        let op = &doc["paths"][format!("/agent/v1/tools/{n}")]["post"];
        assert_eq!(op["operationId"], n.as_str(), "{n}");
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["type"],
            "object"
        );
    }
    assert!(doc["paths"]["/agent/v1/orders/{order_id}"]["get"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["capabilityToken"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["paths"]["/agent/v1/tools/cancel_order"]["post"]["parameters"][0]["$ref"],
        "#/components/parameters/IdempotencyKey"
    );
    app.stop().await;
}

async fn a2a_data_parts(db: Db) {
    let Some(app) = app_with_shop(db).await else {
        return;
    };
    // A public structured request runs the tool and completes with a data artifact.
    let msg = data_message(
        "m-1",
        json!({"action": "check_availability", "product_id": PRODUCT, "options": {"size": "M"}}),
    );
    let (status, r) = rpc(&app, Some("1.0"), "SendMessage", json!({"message": msg})).await;
    assert_eq!(status, 200, "{r}");
    let task = &r["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{r}");
    let artifact = &task["artifacts"][0];
    assert_eq!(artifact["name"], "check_availability");
    let data = &artifact["parts"][0]["data"];
    assert!(!data["matching"].as_array().unwrap().is_empty(), "{data}");
    for v in data["matching"].as_array().unwrap() {
        assert_eq!(v["options"]["size"], "M", "{v}");
    }
    assert_eq!(task["history"][0]["role"], "ROLE_USER");
    assert!(task["history"][0].get("kind").is_none());
    let task_id = task["id"].as_str().unwrap().to_string();
    let context_id = task["contextId"].as_str().unwrap().to_string();

    // The same messageId again in its context: the same task, not a second run.
    let mut resent = msg.clone();
    resent["contextId"] = json!(context_id);
    let (_, again) = rpc(&app, Some("1.0"), "SendMessage", json!({"message": resent})).await;
    assert_eq!(again["result"]["task"]["id"], task_id.as_str(), "{again}");

    // A policy search in the same context.
    let mut policy = data_message(
        "m-2",
        json!({"action": "search_policy", "query": "return window"}),
    );
    policy["contextId"] = json!(context_id);
    let (_, r) = rpc(&app, Some("1.0"), "SendMessage", json!({"message": policy})).await;
    let passages = &r["result"]["task"]["artifacts"][0]["parts"][0]["data"]["passages"];
    assert!(!passages.as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["result"]["task"]["contextId"], context_id.as_str());

    // An order read without a signature or token is not allowed.
    let msg = data_message("m-3", json!({"action": "get_order", "order_id": ORDER}));
    let (_, r) = rpc(&app, Some("1.0"), "SendMessage", json!({"message": msg})).await;
    let t = &r["result"]["task"];
    let state = t["status"]["state"].as_str().unwrap();
    assert!(
        state == "TASK_STATE_AUTH_REQUIRED" || state == "TASK_STATE_INPUT_REQUIRED",
        "{r}"
    );
    assert!(t.get("artifacts").is_none());
    let reason = &t["status"]["message"];
    assert_eq!(reason["role"], "ROLE_AGENT");
    assert!(!reason["parts"][0]["text"].as_str().unwrap().is_empty());
    assert!(reason["parts"][1]["data"]["error"]["code"].is_string());
    assert!(
        !r.to_string().contains("james"),
        "leaked customer data: {r}"
    );
    let refused_id = t["id"].as_str().unwrap().to_string();

    // GetTask reads it back; historyLength trims the history.
    let (_, got) = rpc(&app, Some("1.0"), "GetTask", json!({"id": task_id})).await;
    assert_eq!(got["result"]["id"], task_id.as_str());
    assert_eq!(got["result"]["artifacts"][0]["parts"][0]["data"], *data);
    let (_, got) = rpc(
        &app,
        Some("1.0"),
        "GetTask",
        json!({"id": task_id, "historyLength": 0}),
    )
    .await;
    assert!(got["result"].get("history").is_none());

    // ListTasks by context, paged.
    let (_, page1) = rpc(
        &app,
        Some("1.0"),
        "ListTasks",
        json!({"contextId": context_id, "pageSize": 1}),
    )
    .await;
    let res = &page1["result"];
    assert_eq!(res["totalSize"], 2, "{page1}");
    assert_eq!(res["pageSize"], 1, "{page1}");
    assert_eq!(res["tasks"].as_array().unwrap().len(), 1);
    assert!(res["tasks"][0].get("artifacts").is_none());
    let token = res["nextPageToken"].as_str().unwrap();
    assert!(!token.is_empty());
    let (_, page2) = rpc(
        &app,
        Some("1.0"),
        "ListTasks",
        json!({"contextId": context_id, "pageSize": 1, "pageToken": token, "includeArtifacts": true}),
    )
    .await;
    let ids: Vec<&str> = [&page1, &page2]
        .iter()
        .map(|p| p["result"]["tasks"][0]["id"].as_str().unwrap())
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert!(ids.contains(&task_id.as_str()));
    assert!(page2["result"]["tasks"][0]["artifacts"].is_array());
    assert_eq!(page2["result"]["nextPageToken"], "", "{page2}");
    // Unsigned callers list only a context they present.
    let (_, r) = rpc(&app, Some("1.0"), "ListTasks", json!({})).await;
    assert_eq!(r["result"]["tasks"], json!([]), "{r}");
    assert_eq!(r["result"]["pageSize"], 0, "{r}");

    // CancelTask: a completed task cannot be canceled; a waiting one can.
    let (_, r) = rpc(&app, Some("1.0"), "CancelTask", json!({"id": task_id})).await;
    assert_eq!(r["error"]["code"], -32002, "{r}");
    let (_, r) = rpc(&app, Some("1.0"), "CancelTask", json!({"id": refused_id})).await;
    assert_eq!(r["result"]["status"]["state"], "TASK_STATE_CANCELED", "{r}");
    let (_, r) = rpc(&app, Some("1.0"), "CancelTask", json!({"id": refused_id})).await;
    assert_eq!(r["error"]["code"], -32002);
    app.stop().await;
}
on_both!(a2a_data_parts);

async fn a2a_text_goes_to_the_brand_agent(db: Db) {
    let Some(app) = app_with_shop(db).await else {
        return;
    };
    // 0.3 dialect: kind fields, lowercase states.
    let msg = json!({"kind": "message", "messageId": "t-1", "role": "user",
                     "parts": [{"kind": "text", "text": format!("Where is my order {ORDER}?")}]});
    let (status, r) = rpc(&app, None, "message/send", json!({"message": msg})).await;
    assert_eq!(status, 200, "{r}");
    let task = &r["result"];
    assert_eq!(task["kind"], "task", "{r}");
    assert_eq!(task["status"]["state"], "input-required", "{r}");
    let question = task["status"]["message"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert!(question.contains("email"), "{question}");
    assert_eq!(task["status"]["message"]["role"], "agent");
    assert_eq!(task["status"]["message"]["parts"][0]["kind"], "text");
    let task_id = task["id"].as_str().unwrap().to_string();
    let conversation = task["metadata"]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();

    // The staff inbox shows it as a consumer agent's message on the a2a channel.
    let view = app
        .store()
        .conversation_view(&conversation)
        .await
        .unwrap()
        .unwrap();
    let first = &view.messages[0];
    assert_eq!(first.channel, "a2a");
    assert_eq!(first.author_kind.as_str(), "consumer_agent");
    assert!(first.text.contains(ORDER));

    // The answer to the agent's question continues the same task; an unsigned conversation
    // never verifies a shopper from what it writes, so nothing of the order is disclosed.
    let reply = json!({"kind": "message", "messageId": "t-2", "role": "user", "taskId": task_id,
                       "parts": [{"kind": "text", "text": "My email is james.li4495@example.com"}]});
    let (_, r) = rpc(&app, None, "message/send", json!({"message": reply})).await;
    let task = &r["result"];
    assert_eq!(task["id"], task_id.as_str(), "{r}");
    assert_eq!(task["history"].as_array().unwrap().len(), 4);
    assert!(
        task["status"]["message"]["metadata"]["resolution"]
            .get("verified_customer")
            .is_none(),
        "{r}"
    );
    for secret in [
        "James",
        "processed",
        "River Road",
        "Office Chair",
        "Water Bottle",
    ] {
        assert!(!r.to_string().contains(secret), "disclosed {secret}: {r}");
    }

    // tasks/get in 0.3 shapes; a task that is over takes no more messages.
    let (_, got) = rpc(&app, None, "tasks/get", json!({"id": task_id})).await;
    assert_eq!(got["result"]["id"], task_id.as_str());
    // (cancelled when the agent still waits for an answer; a completed task stays completed)
    let _ = rpc(&app, None, "tasks/cancel", json!({"id": task_id})).await;
    let more = json!({"kind": "message", "messageId": "t-3", "role": "user", "taskId": task_id,
                      "parts": [{"kind": "text", "text": "thanks"}]});
    let (_, r) = rpc(&app, None, "message/send", json!({"message": more})).await;
    assert_eq!(r["error"]["code"], -32004, "{r}");
    let view = app
        .store()
        .conversation_view(&conversation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.messages.len(), 4);
    app.stop().await;
}
on_both!(a2a_text_goes_to_the_brand_agent);

#[tokio::test]
async fn a2a_errors_have_json_rpc_codes() {
    let app = TestApp::spawn().await;
    let post = |body: &'static str| {
        app.client
            .post(app.url("/a2a"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r: Value = post("{not json").await.unwrap().json().await.unwrap();
    assert_eq!(r["error"]["code"], -32700);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    assert_eq!(r["id"], Value::Null);
    let r: Value = post("[]").await.unwrap().json().await.unwrap();
    assert_eq!(r["error"]["code"], -32600);
    let r: Value = post(r#"{"jsonrpc":"2.0","id":7,"method":"Nope"}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], -32601);
    assert_eq!(r["id"], 7);

    let (_, r) = rpc(&app, Some("1.0"), "SendMessage", json!({})).await;
    assert_eq!(r["error"]["code"], -32602);
    assert!(
        r["error"]["message"].as_str().unwrap().contains("message"),
        "{r}"
    );
    let bad_args = data_message("e-1", json!({"action": "get_product"}));
    let (_, r) = rpc(
        &app,
        Some("1.0"),
        "SendMessage",
        json!({"message": bad_args}),
    )
    .await;
    assert_eq!(r["error"]["code"], -32602);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("product_id"),
        "{r}"
    );
    let unknown = data_message("e-2", json!({"action": "launch_rocket"}));
    let (_, r) = rpc(
        &app,
        Some("1.0"),
        "SendMessage",
        json!({"message": unknown}),
    )
    .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("launch_rocket"),
        "{r}"
    );
    let no_action = data_message("e-3", json!({"order_id": ORDER}));
    let (_, r) = rpc(
        &app,
        Some("1.0"),
        "SendMessage",
        json!({"message": no_action}),
    )
    .await;
    assert!(
        r["error"]["message"].as_str().unwrap().contains("action"),
        "{r}"
    );
    let file = json!({"messageId": "e-4", "role": "ROLE_USER",
                      "parts": [{"url": "https://example.com/receipt.pdf", "mediaType": "application/pdf"}]});
    let (_, r) = rpc(&app, Some("1.0"), "SendMessage", json!({"message": file})).await;
    assert_eq!(r["error"]["code"], -32005, "{r}");
    let (_, r) = rpc(&app, Some("1.0"), "GetTask", json!({"id": "no-such-task"})).await;
    assert_eq!(r["error"]["code"], -32001);
    let (_, r) = rpc(&app, Some("2.0"), "GetTask", json!({"id": "x"})).await;
    assert_eq!(r["error"]["code"], -32009);
    let (_, r) = rpc(
        &app,
        Some("1.0"),
        "CreateTaskPushNotificationConfig",
        json!({}),
    )
    .await;
    assert_eq!(r["error"]["code"], -32003);
    app.stop().await;
}

/// Reads an SSE body into its `data:` payloads.
fn sse_events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|block| {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            (!data.is_empty()).then(|| serde_json::from_str(&data.join("\n")).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a2a_streams_task_events() {
    let app = app_with_shop(Db::Sqlite).await.unwrap();
    let msg = data_message(
        "s-1",
        json!({"action": "get_product", "product_id": PRODUCT}),
    );
    let r = app
        .client
        .post(app.url("/a2a"))
        .header("A2A-Version", "1.0")
        .header("Accept", "text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 3, "method": "SendStreamingMessage",
                      "params": {"message": msg}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events.iter().all(|e| e["id"] == 3 && e["jsonrpc"] == "2.0"));
    assert_eq!(
        events[0]["result"]["task"]["status"]["state"],
        "TASK_STATE_WORKING"
    );
    let art = &events[1]["result"]["artifactUpdate"]["artifact"];
    assert_eq!(art["parts"][0]["data"]["product_id"], PRODUCT, "{art}");
    assert_eq!(
        events[2]["result"]["statusUpdate"]["status"]["state"],
        "TASK_STATE_COMPLETED"
    );

    // 0.3: message/stream with kind fields and a final flag.
    let msg = json!({"kind": "message", "messageId": "s-2", "role": "user",
                     "parts": [{"kind": "data", "data": {"action": "get_product", "product_id": PRODUCT}}]});
    let r = app
        .client
        .post(app.url("/a2a"))
        .json(
            &json!({"jsonrpc": "2.0", "id": "x", "method": "message/stream",
                      "params": {"message": msg}}),
        )
        .send()
        .await
        .unwrap();
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events[0]["result"]["kind"], "task");
    assert_eq!(events[1]["result"]["kind"], "artifact-update");
    assert_eq!(events[2]["result"]["kind"], "status-update");
    assert_eq!(events[2]["result"]["final"], true);
    assert_eq!(events[2]["result"]["status"]["state"], "completed");
    app.stop().await;
}

/// One MCP JSON-RPC POST; returns the status, the session header and the JSON answer (from a
/// JSON body or the first SSE event).
async fn mcp_post(
    app: &TestApp,
    session: Option<&str>,
    body: Value,
) -> (u16, Option<String>, Value) {
    let mut req = app
        .client
        .post(app.url("/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .json(&body);
    if let Some(s) = session {
        req = req.header("Mcp-Session-Id", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let sid = r
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text)
        .ok()
        .or_else(|| sse_events(&text).into_iter().next())
        .unwrap_or(Value::Null);
    (status, sid, v)
}

#[tokio::test]
async fn mcp_lists_and_calls_tools_over_http() {
    let app = app_with_shop(Db::Sqlite).await.unwrap();
    let (status, sid, init) = mcp_post(
        &app,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "concierge-test", "version": "1"}}}),
    )
    .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "concierge");
    assert!(init["result"]["capabilities"]["tools"].is_object());
    let _ = mcp_post(
        &app,
        sid.as_deref(),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    let (_, _, list) = mcp_post(
        &app,
        sid.as_deref(),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    let tools = list["result"]["tools"].as_array().unwrap();
    let get_order = tools.iter().find(|t| t["name"] == "get_order").unwrap();
    assert_eq!(get_order["inputSchema"]["required"], json!(["order_id"]));
    assert_eq!(get_order["annotations"]["readOnlyHint"], true);
    let cancel = tools.iter().find(|t| t["name"] == "cancel_order").unwrap();
    assert_eq!(cancel["annotations"]["destructiveHint"], true);
    assert!(tools.iter().any(|t| t["name"] == "search_policy"));

    let (_, _, call) = mcp_post(
        &app,
        sid.as_deref(),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "check_availability", "arguments": {"product_id": PRODUCT, "options": {"color": "blue"}}}}),
    )
    .await;
    let res = &call["result"];
    assert_eq!(res["isError"], false, "{call}");
    assert_eq!(res["structuredContent"]["product_id"], PRODUCT, "{call}");
    let text: Value = serde_json::from_str(res["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, res["structuredContent"]);

    // Bad arguments and refusals are tool errors the model can read.
    let (_, _, bad) = mcp_post(
        &app,
        sid.as_deref(),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "get_product", "arguments": {}}}),
    )
    .await;
    assert_eq!(bad["result"]["isError"], true, "{bad}");
    assert!(
        bad["result"]["structuredContent"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("product_id")
    );
    let (_, _, refused) = mcp_post(
        &app,
        sid.as_deref(),
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": "get_order", "arguments": {"order_id": ORDER}}}),
    )
    .await;
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    let (_, _, unknown) = mcp_post(
        &app,
        sid.as_deref(),
        json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {
            "name": "launch_rocket", "arguments": {}}}),
    )
    .await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");

    // A cross-origin browser request is refused.
    let r = app
        .client
        .post(app.url("/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .header("Origin", "https://evil.example")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    app.stop().await;
}

#[tokio::test]
async fn agent_api_runs_tools_with_clear_errors() {
    let app = app_with_shop(Db::Sqlite).await.unwrap();
    let r = app
        .client
        .post(app.url("/agent/v1/tools/check_availability"))
        .json(&json!({"product_id": PRODUCT, "options": {"size": "M"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["product_id"], PRODUCT, "{body}");

    let (status, body) = get(
        &app,
        &format!("/agent/v1/products/{PRODUCT}/availability?size=M"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["data"]["matching"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["options"]["size"] == "M")
    );
    let (status, body) = get(&app, "/agent/v1/policies?q=refund").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body["data"]["passages"].as_array().unwrap().is_empty());

    // Bad arguments name the field; unknown tools are 404; bad JSON is 400.
    let r = app
        .client
        .post(app.url("/agent/v1/tools/get_product"))
        .json(&json!({"product": PRODUCT}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_argument");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("product"),
        "{body}"
    );
    let r = app
        .client
        .post(app.url("/agent/v1/tools/launch_rocket"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = app
        .client
        .post(app.url("/agent/v1/tools/get_product"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");

    // Orders need a signed request and a token.
    let (status, body) = get(&app, "/agent/v1/orders/W2611340").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["code"].is_string());
    let (status, _) = get(&app, "/agent/v1/products/0000000000").await;
    assert_eq!(status, 404);
    app.stop().await;
}

// ---- real third-party clients (Python) ----

/// The Python of the client virtualenv made by scripts/install-python-clients, or None (the
/// test skips) — unless CONCIERGE_REQUIRE_PYCLIENTS is set, when a missing venv fails.
fn python() -> Option<PathBuf> {
    let venv = std::env::var("CONCIERGE_PYCLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_path("target/pyclients"));
    let venv = if venv.is_absolute() {
        venv
    } else {
        repo_path(&venv.to_string_lossy())
    };
    let py = venv.join("bin/python");
    if py.exists() {
        return Some(py);
    }
    if std::env::var("CONCIERGE_REQUIRE_PYCLIENTS").is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!(
            "the Python clients are required but {} is missing: run scripts/install-python-clients",
            py.display()
        );
    }
    eprintln!(
        "skipped: no Python client venv at {} (run scripts/install-python-clients)",
        venv.display()
    );
    None
}

async fn run_python(py: &PathBuf, script: &str, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(py)
        .arg(repo_path(&format!("tests/py/{script}")))
        .args(args)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_a2a_sdk_client() {
    let Some(py) = python() else { return };
    let app = app_with_shop(Db::Sqlite).await.unwrap();
    let seen = run_python(&py, "a2a_client.py", &[&app.url(""), PRODUCT, ORDER]).await;
    assert_eq!(seen["card"]["name"], "Alder & Pine customer support");
    assert_eq!(seen["card"]["skills"].as_array().unwrap().len(), 6);
    // The text went to the brand agent, which asks who the shopper is.
    assert_eq!(seen["text"]["state"], "TASK_STATE_INPUT_REQUIRED", "{seen}");
    assert!(
        seen["text"]["reply"].as_str().unwrap().contains("email"),
        "{seen}"
    );
    let events: Vec<&str> = seen["text"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(events, ["task", "status_update"], "{seen}");
    // The data part ran the tool.
    assert_eq!(seen["data"]["result"]["product_id"], PRODUCT, "{seen}");
    assert_eq!(seen["get"]["state"], "TASK_STATE_COMPLETED");
    let mut both = vec![
        seen["text"]["task_id"].as_str().unwrap(),
        seen["data"]["task_id"].as_str().unwrap(),
    ];
    both.sort();
    assert_eq!(seen["list"], json!(both));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_mcp_client() {
    let Some(py) = python() else { return };
    let app = app_with_shop(Db::Sqlite).await.unwrap();
    let seen = run_python(&py, "mcp_client.py", &[&app.url("/mcp"), PRODUCT]).await;
    assert!(seen["tools"].as_array().unwrap().len() >= 15, "{seen}");
    assert_eq!(seen["call"]["product_id"], PRODUCT, "{seen}");
    assert_eq!(seen["refused"]["is_error"], true, "{seen}");
    assert!(seen["refused"]["structured"]["error"]["code"].is_string());
    app.stop().await;
}

// ---- signed agents with capability tokens ----

/// A registered agent with a key and a token for one customer.
struct Agent {
    key: ed25519_dalek::SigningKey,
    key_id: String,
    token: String,
}

async fn agent_for(app: &TestApp, name: &str, customer_order: &str, ops: &[&str]) -> Agent {
    use concierge::gateway::{identity, tokens};
    let now = concierge::util::now_ms();
    let key = identity::generate_key();
    let key_id = identity::key_id(&key.verifying_key());
    let agent_id = app
        .store()
        .register_agent_key(
            name,
            &key_id,
            &identity::encode_public_key(&key.verifying_key()),
            now,
        )
        .await
        .unwrap();
    let order = app
        .store()
        .get_order(customer_order)
        .await
        .unwrap()
        .unwrap();
    let spec = tokens::TokenSpec {
        agent_id,
        customer_id: order.customer_id.clone().unwrap(),
        ops: ops.iter().map(|s| s.to_string()).collect(),
        spend_limit: None,
        categories: Vec::new(),
        expires_at: now + 3_600_000,
        escalate_over_limit: false,
    };
    let service = concierge::gateway::service_key(&app.state).unwrap();
    let (token, _) = tokens::issue(app.store(), service, &spec, "test", now)
        .await
        .unwrap();
    Agent { key, key_id, token }
}

impl Agent {
    /// A request signed over method, URL and body, with the token.
    fn request(
        &self,
        app: &TestApp,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> reqwest::RequestBuilder {
        let url = app.url(path);
        let nonce = concierge::util::random_token(12);
        let created = concierge::util::now_ms() / 1000;
        let sig = concierge::gateway::identity::sign_request(
            &self.key,
            &self.key_id,
            method,
            &url,
            body,
            &nonce,
            created,
        );
        let mut req = app
            .client
            .request(method.parse().unwrap(), url)
            .header("Authorization", format!("Bearer {}", self.token));
        for (k, v) in sig.pairs() {
            req = req.header(k, v);
        }
        if !body.is_empty() {
            req = req
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        req
    }

    async fn send(
        &self,
        app: &TestApp,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let r = self
            .request(app, method, path, &bytes)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, r.json().await.unwrap_or(Value::Null), headers)
    }
}

async fn signed_agents_act_for_their_customer(db: Db) {
    let Some(app) = app_with_shop(db).await else {
        return;
    };
    let agent = agent_for(
        &app,
        "shopper-assistant",
        "#W3897284",
        &["get_order", "cancel_order", "delivery_estimate"],
    )
    .await;

    // /agent/v1: the customer's order, signed with the token.
    let (status, body, _) = agent
        .send(&app, "GET", "/agent/v1/orders/W3897284", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"].to_string().contains("W3897284"), "{body}");
    let (status, body, _) = agent
        .send(
            &app,
            "POST",
            "/agent/v1/tools/delivery_estimate",
            Some(&json!({"order_id": "#W4802126"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Someone else's order looks like no order; an operation the token lacks is 403.
    let (status, body, _) = agent
        .send(&app, "GET", "/agent/v1/orders/W2611340", None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_your_order");
    let (status, body, _) = agent
        .send(
            &app,
            "POST",
            "/agent/v1/tools/return_eligibility",
            Some(&json!({"order_id": "#W3897284"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // A tampered body breaks the signature.
    let signed = serde_json::to_vec(&json!({"order_id": "#W3897284"})).unwrap();
    let r = agent
        .request(&app, "POST", "/agent/v1/tools/get_order", &signed)
        .body(serde_json::to_vec(&json!({"order_id": "#W2611340"})).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // A write with an Idempotency-Key runs once; the retry replays the answer.
    let cancel = json!({"order_id": "#W3897284", "reason": "ordered by mistake"});
    let bytes = serde_json::to_vec(&cancel).unwrap();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let r = agent
            .request(&app, "POST", "/agent/v1/tools/cancel_order", &bytes)
            .header("Idempotency-Key", "cancel-1")
            .send()
            .await
            .unwrap();
        let replayed = r.headers().get("idempotent-replayed").is_some();
        answers.push((
            r.status().as_u16(),
            replayed,
            r.json::<Value>().await.unwrap(),
        ));
    }
    assert_eq!(answers[0].0, 200, "{:?}", answers[0]);
    assert_eq!(answers[0].2["action"]["kind"], "order_cancelled");
    assert_eq!(
        (answers[1].0, answers[1].1),
        (200, true),
        "{:?}",
        answers[1]
    );
    assert_eq!(answers[0].2, answers[1].2);
    let order = app.store().get_order("#W3897284").await.unwrap().unwrap();
    assert_eq!(order.status.as_str(), "cancelled");

    // A2A: the same agent, a data part about its customer's order.
    let msg = data_message(
        "a-1",
        json!({"action": "get_order", "order_id": "#W4802126"}),
    );
    let body =
        json!({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": msg}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let r: Value = agent
        .request(&app, "POST", "/a2a", &bytes)
        .header("A2A-Version", "1.0")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task = &r["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{r}");
    assert!(
        task["artifacts"][0]["parts"][0]["data"]
            .to_string()
            .contains("W4802126")
    );
    // Not allowed by the token: AUTH_REQUIRED with the reason.
    let msg = data_message(
        "a-2",
        json!({"action": "return_eligibility", "order_id": "#W4802126"}),
    );
    let body =
        json!({"jsonrpc": "2.0", "id": 2, "method": "SendMessage", "params": {"message": msg}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let r: Value = agent
        .request(&app, "POST", "/a2a", &bytes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task = &r["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_AUTH_REQUIRED", "{r}");
    assert_eq!(
        task["status"]["message"]["parts"][1]["data"]["error"]["code"],
        "operation_not_allowed"
    );
    // A signed agent lists its own tasks without a contextId; the public ones are not among them.
    let public = data_message(
        "p-1",
        json!({"action": "get_product", "product_id": PRODUCT}),
    );
    let _ = rpc(&app, Some("1.0"), "SendMessage", json!({"message": public})).await;
    let body = json!({"jsonrpc": "2.0", "id": 3, "method": "ListTasks", "params": {}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let r: Value = agent
        .request(&app, "POST", "/a2a", &bytes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"]["totalSize"], 2, "{r}");

    // MCP: the signature covers each POST.
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "get_order", "arguments": {"order_id": "#W4802126"}}});
    let bytes = serde_json::to_vec(&call).unwrap();
    let r = agent
        .request(&app, "POST", "/mcp", &bytes)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text)
        .ok()
        .or_else(|| sse_events(&text).into_iter().next())
        .unwrap();
    assert_eq!(v["result"]["isError"], false, "{v}");
    assert!(
        v["result"]["structuredContent"]
            .to_string()
            .contains("W4802126")
    );
    // A bad signature on /mcp is refused before the MCP server sees it.
    let r = app
        .client
        .post(app.url("/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .header(
            "Signature-Input",
            "sig1=(\"@method\");created=1;keyid=\"nope\"",
        )
        .header("Signature", "sig1=:AAAA:")
        .json(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    app.stop().await;
}
on_both!(signed_agents_act_for_their_customer);
