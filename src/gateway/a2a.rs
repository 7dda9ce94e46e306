//! A2A 1.0 and 0.3 JSON-RPC: the agent card, SendMessage/SendStreamingMessage/GetTask/ListTasks/CancelTask.
//!
//! One endpoint (`POST /a2a`) serves both dialects: the method name picks the shapes (1.0 names
//! such as `SendMessage` answer in 1.0 shapes, 0.3 names such as `message/send` in 0.3 shapes —
//! the names never collide); an `A2A-Version` header, when present, must name 1.x or 0.3.
//!
//! A message is one of two things:
//! - a data part `{"action": "<tool>", …arguments}`: the tool runs directly (no LLM) for the
//!   caller, and the task completes with the tool's structured result as a data-part artifact;
//!   a refusal sets the state: not verified → INPUT_REQUIRED, signature or token missing or not
//!   allowing it → AUTH_REQUIRED, the brand's policy → REJECTED, no such order → FAILED;
//! - text: it is stored in the inbox as a message from a consumer agent in the context's
//!   conversation (channel "a2a") and the brand agent answers; when it asks a question
//!   (verification, confirmation) the task is INPUT_REQUIRED and the caller answers in the same
//!   task.
//!
//! Tasks and contexts persist per caller: a signing agent's under its id, whatever contexts it
//! names; an unsigned caller's per context, and only in contexts the server minted for it (the
//! context id, 144 random bits, is its only credential — a contextId the server did not mint is
//! refused). Each text context is its own inbox conversation and sender identity: nothing one
//! context learns about a customer reaches another. Resending a message with the same
//! messageId in the same scope returns its task instead of running it again.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

use super::a2a_tasks::{
    self as tasks, Artifact, Dialect, Message, Part, Role, Task, TaskState, artifact_event,
    status_event, task_json,
};
use super::calls::{self, GatewayCall};
use super::{Caller, GatewayError, SignedRequest, authenticate};
use crate::agent::tools::ToolErrorCode;
use crate::inbox::{self, Answer, InboxError, Intake, Trust, TurnError};
use crate::state::AppState;
use crate::store::{AuthorKind, InboundMessage};

/// Where the JSON-RPC endpoint lives.
pub const RPC_PATH: &str = "/a2a";
const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: usize = 50;

pub fn routes(_state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/.well-known/agent-card.json", get(card))
        // The 0.2/0.3 well-known path, for older clients.
        .route("/.well-known/agent.json", get(card))
        // Relative to the interface URL, for clients given that URL as their base.
        .route("/a2a/.well-known/agent-card.json", get(card))
        .route(RPC_PATH, post(rpc))
}

// ---- the agent card ----

/// The URL clients reach us at (see [`crate::http::hosts::public_base`]).
pub fn base_url(state: &AppState, uri: &Uri, headers: &HeaderMap) -> String {
    crate::http::hosts::public_base(state.config.server.public_url.as_deref(), uri, headers)
}

pub fn brand_name(state: &AppState) -> String {
    crate::agent::voice::Voice::load(&state.config.brand.dir.join("voice.toml"))
        .map(|v| v.name)
        .unwrap_or_else(|_| "Concierge".to_string())
}

async fn card(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let base = base_url(&state, &uri, &headers);
    let mut resp = axum::Json(agent_card(&state, &base)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

/// The A2A 1.0 agent card (with the 0.3 `url`/`preferredTransport`/`protocolVersion` fields
/// for older clients).
pub fn agent_card(state: &AppState, base: &str) -> Value {
    let brand = brand_name(state);
    let url = format!("{base}{RPC_PATH}");
    let signed =
        json!([{"schemes": {"agentSignature": {"list": []}, "capabilityToken": {"list": []}}}]);
    let skill = |id: &str,
                 name: &str,
                 description: &str,
                 tags: &[&str],
                 examples: &[&str],
                 public: bool| {
        let mut s = json!({
            "id": id, "name": name, "description": description, "tags": tags, "examples": examples,
            "inputModes": ["text/plain", "application/json"],
            "outputModes": ["text/plain", "application/json"],
        });
        if !public {
            s["securityRequirements"] = signed.clone();
        }
        s
    };
    json!({
        "name": format!("{brand} customer support"),
        "description": format!(
            "{brand}'s support agent for shoppers' own AI agents. Send text to talk to the brand agent \
             (it verifies the shopper and confirms before changing an order), or a data part \
             {{\"action\": \"<tool>\", …arguments}} to run a tool directly and get structured data back. \
             Tools: {}. Product, availability and policy requests are public; anything about a \
             customer's orders needs an RFC 9421 signature by a registered agent key and a Biscuit \
             capability token (Authorization: Bearer) the customer granted.",
            calls::specs().iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        ),
        "version": env!("CARGO_PKG_VERSION"),
        "supportedInterfaces": [
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "0.3"}
        ],
        "provider": {"organization": brand, "url": base},
        "documentationUrl": format!("{base}/openapi.json"),
        "capabilities": {
            "streaming": true,
            "pushNotifications": false,
            "extendedAgentCard": false,
            "extensions": with_negotiation(service_key_extension(state, base), state, base),
        },
        // Anonymous access is one alternative (the public skills: products, availability,
        // policies); a signature with a customer's token the other. Customer skills require the
        // latter (their own securityRequirements).
        "securityRequirements": [{}, signed[0].clone()],
        // The same in the 0.3 / OpenAPI shape: {} is anonymous access.
        "security": [{}, {"agentSignature": [], "capabilityToken": []}],
        "securitySchemes": {
            "agentSignature": {"apiKeySecurityScheme": {
                // "location" is A2A 1.0's name, "in" OpenAPI's and A2A 0.3's.
                "location": "header", "in": "header", "name": "Signature",
                "description": "RFC 9421 HTTP Message Signature (Signature-Input, Signature, Content-Digest) by the agent's registered Ed25519 key."
            }},
            "capabilityToken": {"httpAuthSecurityScheme": {
                "scheme": "bearer", "bearerFormat": "Biscuit",
                "description": "A Biscuit capability token for one customer: allowed tools, spending limit, categories, expiry."
            }}
        },
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": [
            skill("order-status", "Order status",
                  "Status, items, shipments and tracking of a customer's order (tool get_order; list_customer_orders for all orders).",
                  &["orders", "tracking", "status"],
                  &["Where is my order #W0000000?", r##"{"action": "get_order", "order_id": "#W0000000"}"##], false),
            skill("availability", "Product availability",
                  "A product's variants with price, stock and availability, optionally filtered by options (tools get_product, check_availability). Public.",
                  &["products", "stock", "availability"],
                  &["Is the blue hiking backpack in stock?", r#"{"action": "check_availability", "product_id": "6086499569", "options": {"color": "blue"}}"#], true),
            skill("delivery-estimate", "Delivery estimates",
                  "When an order will arrive, from carrier and fulfilment dates or the brand's shipping times (tool delivery_estimate).",
                  &["delivery", "shipping", "eta"],
                  &["When will order #W0000000 arrive?", r##"{"action": "delivery_estimate", "order_id": "#W0000000"}"##], false),
            skill("returns-exchanges", "Returns and exchanges",
                  "Which items can be returned, and returns or exchanges of delivered items within the brand's policy (tools return_eligibility, return_items, exchange_items).",
                  &["returns", "exchanges", "refunds"],
                  &["Can I return the shoes from order #W0000000?", r##"{"action": "return_eligibility", "order_id": "#W0000000"}"##], false),
            skill("cancellations", "Cancellations and order changes",
                  "Cancel a pending order or change its address, items or payment (tools cancel_order, modify_order_address, modify_order_items, modify_order_payment).",
                  &["cancel", "modify", "orders"],
                  &["Cancel order #W0000000, I ordered by mistake.", r##"{"action": "cancel_order", "order_id": "#W0000000", "reason": "ordered by mistake"}"##], false),
            skill("policy-questions", "Policy questions",
                  "Answers from the brand's published policies: shipping, returns, exchanges, warranty, payments (tool search_policy, or ask in text). Public.",
                  &["policy", "faq", "shipping", "returns"],
                  &["How long do I have to return an item?", r#"{"action": "search_policy", "query": "return window"}"#], true),
        ],
        // A2A 0.3 clients read these.
        "url": url,
        "preferredTransport": "JSONRPC",
        "protocolVersion": "0.3.0",
    })
}

/// The extensions, with negotiation's (`gateway::negotiation`) after the service key's.
fn with_negotiation(mut extensions: Value, state: &AppState, base: &str) -> Value {
    if let Some(list) = extensions.as_array_mut() {
        list.push(super::negotiation::card_extension(state, base));
    }
    extensions
}

/// The service's Ed25519 public key, which signs the capability tokens customers grant and the
/// action log's head: an agent (or an auditor) checks both with it.
fn service_key_extension(state: &AppState, base: &str) -> Value {
    use base64::Engine;
    match super::service_key(state) {
        Ok(key) => json!([{
            "uri": "urn:concierge:extension:service-key:v1",
            "description": "The Ed25519 key this service signs capability tokens (Biscuit root \
                            key) and the audit log's head with.",
            "required": false,
            "params": {
                "algorithm": "ed25519",
                "publicKey": base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(key.verifying_key().as_bytes()),
                "auditHead": format!("{base}/agent/v1/audit/head"),
            }
        }]),
        Err(_) => json!([]),
    }
}

// ---- JSON-RPC ----

/// A JSON-RPC error.
#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }
    fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(-32602, format!("Invalid params: {}", message.into()))
    }
    fn task_not_found(id: &str) -> RpcError {
        RpcError::new(-32001, format!("Task not found: no task {id:?}"))
    }
    fn internal(e: impl std::fmt::Display) -> RpcError {
        let id = crate::error::log_internal("A2A request failed", &e);
        RpcError::new(
            -32603,
            format!("Internal error: something went wrong on our side (request id {id})"),
        )
    }
}

impl From<crate::store::StoreError> for RpcError {
    fn from(e: crate::store::StoreError) -> RpcError {
        RpcError::internal(e)
    }
}

fn error_json(id: &Value, e: &RpcError) -> Value {
    let mut err = json!({"code": e.code, "message": e.message});
    if let Some(d) = &e.data {
        err["data"] = d.clone();
    }
    json!({"jsonrpc": "2.0", "id": id, "error": err})
}

fn rpc_error(id: &Value, e: RpcError) -> Response {
    axum::Json(error_json(id, &e)).into_response()
}

fn rpc_result(id: &Value, result: Value) -> Response {
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Send,
    Stream,
    Get,
    List,
    Cancel,
    Subscribe,
    PushConfig,
    ExtendedCard,
}

fn method_op(method: &str) -> Option<(Dialect, Op)> {
    Some(match method {
        "SendMessage" => (Dialect::V1, Op::Send),
        "SendStreamingMessage" => (Dialect::V1, Op::Stream),
        "GetTask" => (Dialect::V1, Op::Get),
        "ListTasks" => (Dialect::V1, Op::List),
        "CancelTask" => (Dialect::V1, Op::Cancel),
        "SubscribeToTask" => (Dialect::V1, Op::Subscribe),
        "CreateTaskPushNotificationConfig"
        | "GetTaskPushNotificationConfig"
        | "ListTaskPushNotificationConfigs"
        | "DeleteTaskPushNotificationConfig" => (Dialect::V1, Op::PushConfig),
        "GetExtendedAgentCard" => (Dialect::V1, Op::ExtendedCard),
        "message/send" => (Dialect::V03, Op::Send),
        "message/stream" => (Dialect::V03, Op::Stream),
        "tasks/get" => (Dialect::V03, Op::Get),
        "tasks/list" => (Dialect::V03, Op::List),
        "tasks/cancel" => (Dialect::V03, Op::Cancel),
        "tasks/resubscribe" => (Dialect::V03, Op::Subscribe),
        "tasks/pushNotificationConfig/set"
        | "tasks/pushNotificationConfig/get"
        | "tasks/pushNotificationConfig/list"
        | "tasks/pushNotificationConfig/delete" => (Dialect::V03, Op::PushConfig),
        "agent/getAuthenticatedExtendedCard" => (Dialect::V03, Op::ExtendedCard),
        _ => return None,
    })
}

async fn rpc(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let null = Value::Null;
    if let Some(v) = headers.get("a2a-version") {
        let v = v.to_str().unwrap_or("").trim();
        let ok =
            v.is_empty() || v == "1" || v.starts_with("1.") || v == "0.3" || v.starts_with("0.3.");
        if !ok {
            return rpc_error(
                &null,
                RpcError::new(
                    -32009,
                    format!(
                        "Version not supported: A2A-Version {v:?}; this agent speaks 1.0 and 0.3"
                    ),
                ),
            );
        }
    }
    let Envelope {
        id,
        dialect,
        op,
        params,
    } = match read_envelope(&body) {
        Ok(e) => e,
        Err(refused) => {
            let (id, e) = *refused;
            return rpc_error(&id, e);
        }
    };
    let signed = SignedRequest {
        method: &method,
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let caller = match authenticate(&state, &signed).await {
        Ok(c) => c,
        Err(e) => {
            let (status, code) = calls::http_error(&e);
            let mut err = RpcError::new(
                -32600,
                format!("Unauthenticated: {}", calls::error_message(&e)),
            );
            err.data = Some(json!({"code": code}));
            let mut resp = (status, axum::Json(error_json(&id, &err))).into_response();
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"concierge-agent\""),
                );
            }
            return resp;
        }
    };
    let outcome = match op {
        Op::Send => send(&state, &caller, dialect, &params).await,
        Op::Stream => return stream(state, caller, dialect, id, params).await,
        Op::Get => get_task(&state, &caller, dialect, &params).await,
        Op::List => list_tasks(&state, &caller, dialect, &params).await,
        Op::Cancel => cancel_task(&state, &caller, dialect, &params).await,
        Op::Subscribe => return subscribe(&state, &caller, dialect, id, &params).await,
        Op::PushConfig => Err(RpcError::new(
            -32003,
            "Push notifications are not supported: use SendStreamingMessage or poll GetTask",
        )),
        Op::ExtendedCard => Err(RpcError::new(
            -32007,
            "This agent has no extended agent card: the public card is complete",
        )),
    };
    match outcome {
        Ok(v) => rpc_result(&id, v),
        Err(e) => rpc_error(&id, e),
    }
}

/// A JSON-RPC request's envelope: its id, method and params, checked before the caller is.
pub(crate) struct Envelope {
    pub(crate) id: Value,
    pub(crate) dialect: Dialect,
    pub(crate) op: Op,
    pub(crate) params: Value,
}

/// Reads a request body into its envelope, or the error to answer with (and the id to answer to).
pub(crate) fn read_envelope(body: &[u8]) -> Result<Envelope, Box<(Value, RpcError)>> {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Err(Box::new((
                Value::Null,
                RpcError::new(
                    -32700,
                    format!("Parse error: the body is not valid JSON: {e}"),
                ),
            )));
        }
    };
    let Value::Object(obj) = req else {
        let what = if req.is_array() {
            "batch requests are not supported; send one request object"
        } else {
            "the body must be a JSON-RPC request object"
        };
        return Err(Box::new((
            Value::Null,
            RpcError::new(-32600, format!("Invalid Request: {what}")),
        )));
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    if !matches!(id, Value::Null | Value::String(_) | Value::Number(_)) {
        return Err(Box::new((
            Value::Null,
            RpcError::new(
                -32600,
                "Invalid Request: id must be a string, a number or null",
            ),
        )));
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Box::new((
            id,
            RpcError::new(-32600, "Invalid Request: jsonrpc must be \"2.0\""),
        )));
    }
    let Some(method_name) = obj.get("method").and_then(Value::as_str) else {
        return Err(Box::new((
            id,
            RpcError::new(-32600, "Invalid Request: method must be a string"),
        )));
    };
    let Some((dialect, op)) = method_op(method_name) else {
        return Err(Box::new((
            id,
            RpcError::new(
                -32601,
                format!(
                    "Method not found: {method_name:?}; this agent serves SendMessage, \
                     SendStreamingMessage, GetTask, ListTasks, CancelTask, SubscribeToTask \
                     (and the 0.3 names message/send, message/stream, tasks/get, tasks/list, \
                     tasks/cancel, tasks/resubscribe)"
                ),
            ),
        )));
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(Box::new((
                id,
                RpcError::invalid_params("params must be an object"),
            )));
        }
    };
    Ok(Envelope {
        id,
        dialect,
        op,
        params,
    })
}

/// Whose tasks and contexts a caller sees: a signing agent's are all under `agent:<id>` (it
/// names its contexts as it likes); an unsigned caller's under `public:<context id>`, one scope
/// per context the server minted, so the context id (unguessable) is what makes them the caller.
pub fn scope_of(caller: &Caller, context_id: &str) -> String {
    match &caller.agent {
        Some(a) => format!("agent:{}", a.id),
        None => format!("{PUBLIC_SCOPE}{context_id}"),
    }
}

const PUBLIC_SCOPE: &str = "public:";

/// A context id or an unsigned caller's task id: 144 random bits, base64url.
fn new_secret_id() -> String {
    crate::util::random_token(18)
}

fn unknown_context(context_id: &str) -> RpcError {
    RpcError::invalid_params(format!(
        "unknown context {context_id:?}: unsigned callers continue only a context this agent \
         started for them; send the first message without contextId and use the contextId of \
         the reply"
    ))
}

/// The caller's task with this id: a signing agent's own, or — for an unsigned caller, who
/// proves nothing but the ids it was given — a task of some unsigned context.
async fn find_task(state: &AppState, caller: &Caller, id: &str) -> Result<Task, RpcError> {
    let task = match &caller.agent {
        Some(_) => tasks::get_task(&state.store, &scope_of(caller, ""), id).await?,
        None => tasks::task_by_id(&state.store, id)
            .await?
            .filter(|t| t.scope.starts_with(PUBLIC_SCOPE)),
    };
    task.ok_or_else(|| RpcError::task_not_found(id))
}

pub(crate) fn str_param<'a>(params: &'a Value, key: &str) -> Result<Option<&'a str>, RpcError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(RpcError::invalid_params(format!("{key} must be a string"))),
    }
}

pub(crate) fn uint_param(params: &Value, key: &str) -> Result<Option<usize>, RpcError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()).map(Some))
            .ok_or_else(|| {
                RpcError::invalid_params(format!("{key} must be a non-negative integer"))
            }),
    }
}

pub(crate) fn task_id_param(params: &Value) -> Result<&str, RpcError> {
    match str_param(params, "id")? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(RpcError::invalid_params("id (the task id) is required")),
    }
}

// ---- SendMessage ----

/// What a new message will do.
pub(crate) enum Work {
    Call(GatewayCall),
    Text(String),
}

/// A message accepted for processing: the task it belongs to (already holding the message,
/// state WORKING) and the work to do; or a task that already answered this messageId.
enum Prepared {
    Done(Task),
    Run(Box<Task>, Work),
}

pub(crate) struct SendParams {
    pub(crate) message: Message,
    pub(crate) history_length: Option<usize>,
}

pub(crate) fn parse_send(params: &Value) -> Result<SendParams, RpcError> {
    let m = params
        .get("message")
        .ok_or_else(|| RpcError::invalid_params("message is required"))?;
    let message = tasks::parse_message(m).map_err(RpcError::invalid_params)?;
    if message.role != Role::User {
        return Err(RpcError::invalid_params(
            "message.role: a client sends ROLE_USER messages",
        ));
    }
    let history_length = match params.get("configuration") {
        Some(c) => uint_param(c, "historyLength")?,
        None => None,
    };
    Ok(SendParams {
        message,
        history_length,
    })
}

/// The message's request: a data part naming an action, else its text.
pub(crate) fn work_of(m: &Message) -> Result<Work, RpcError> {
    for (i, p) in m.parts.iter().enumerate() {
        if let Part::Data(d) = p {
            let Some(obj) = d.as_object() else {
                return Err(RpcError::invalid_params(format!(
                    "message.parts[{i}].data: a structured request is an object {{\"action\": \"<tool>\", …arguments}}"
                )));
            };
            let Some(action) = obj.get("action").and_then(Value::as_str) else {
                return Err(RpcError::invalid_params(format!(
                    "message.parts[{i}].data.action: is required and names a tool, one of {}",
                    calls::specs()
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let mut args = obj.clone();
            args.remove("action");
            let call = calls::parse(action, &Value::Object(args)).map_err(|e| {
                let mut err =
                    RpcError::invalid_params(format!("message.parts[{i}].data: {}", e.message));
                err.data = Some(json!({"code": e.code.as_str()}));
                err
            })?;
            return Ok(Work::Call(call));
        }
    }
    let text: Vec<&str> = m
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) if !t.trim().is_empty() => Some(t.as_str()),
            _ => None,
        })
        .collect();
    if !text.is_empty() {
        return Ok(Work::Text(text.join("\n")));
    }
    if m.parts
        .iter()
        .any(|p| matches!(p, Part::Url { .. } | Part::Raw { .. }))
    {
        return Err(RpcError::new(
            -32005,
            "Content type not supported: send text, or a data part {\"action\": \"<tool>\", …}; files are not read",
        ));
    }
    Err(RpcError::invalid_params(
        "message.parts: needs a non-empty text part or a data part with an action",
    ))
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn prepare(
    state: &AppState,
    caller: &Caller,
    mut message: Message,
) -> Result<Prepared, RpcError> {
    let now = crate::util::now_ms();
    if let Some(task_id) = message.task_id.clone() {
        let mut task = find_task(state, caller, &task_id).await?;
        if task.message_id == message.message_id
            || task
                .history
                .iter()
                .any(|h| h.message_id == message.message_id)
        {
            return Ok(Prepared::Done(task));
        }
        if let Some(c) = &message.context_id
            && *c != task.context_id
        {
            return Err(RpcError::invalid_params(format!(
                "message.contextId: task {task_id} belongs to context {}",
                task.context_id
            )));
        }
        if task.state.is_terminal() {
            return Err(RpcError::new(
                -32004,
                format!(
                    "Unsupported operation: task {task_id} is {} and takes no more messages; \
                     send a new message without taskId (same contextId to continue the conversation)",
                    task.state.db()
                ),
            ));
        }
        let work = work_of(&message)?;
        message.context_id = Some(task.context_id.clone());
        task.history.push(message);
        task.state = TaskState::Working;
        task.status_message = None;
        task.updated_at = now;
        return Ok(Prepared::Run(Box::new(task), work));
    }
    let work = work_of(&message)?;
    // An unsigned caller continues only a context minted for it; its first message gets a new
    // one. A signing agent names its own contexts (they live under its scope).
    let context_id = match (&caller.agent, message.context_id.clone()) {
        (Some(_), Some(c)) => c,
        (None, Some(c)) => {
            if !tasks::public_context_exists(&state.store, &c).await? {
                return Err(unknown_context(&c));
            }
            c
        }
        (_, None) => {
            let c = new_secret_id();
            if caller.agent.is_none() {
                tasks::mint_public_context(&state.store, &c, now).await?;
            }
            c
        }
    };
    let scope = scope_of(caller, &context_id);
    // A resent message gets its task back instead of running again. Reads skip the lookup:
    // they change nothing, and the unique (scope, messageId) index catches a resend when the
    // task is saved.
    let read_only = matches!(&work, Work::Call(c) if !calls::needs_idempotency(c.name()));
    if !read_only
        && let Some(t) = tasks::task_by_message(&state.store, &scope, &message.message_id).await?
    {
        return Ok(Prepared::Done(t));
    }
    let id = new_secret_id();
    message.context_id = Some(context_id.clone());
    message.task_id = Some(id.clone());
    Ok(Prepared::Run(
        Box::new(Task {
            id,
            scope,
            context_id,
            message_id: message.message_id.clone(),
            state: TaskState::Working,
            status_message: None,
            history: vec![message],
            artifacts: Vec::new(),
            conversation_id: None,
            created_at: now,
            updated_at: now,
        }),
        work,
    ))
}

fn agent_message(task: &Task, parts: Vec<Part>, metadata: Option<Value>) -> Message {
    Message {
        message_id: new_id(),
        role: Role::Agent,
        parts,
        context_id: Some(task.context_id.clone()),
        task_id: Some(task.id.clone()),
        metadata,
    }
}

/// Does the work and records the outcome on the task; returns the artifacts it added.
async fn execute(
    state: &AppState,
    caller: &Caller,
    task: &mut Task,
    work: Work,
) -> Result<Vec<Artifact>, RpcError> {
    let mut added = Vec::new();
    match work {
        Work::Call(call) => match calls::run(state, caller, &call).await {
            Ok(out) => {
                let artifact = Artifact {
                    artifact_id: new_id(),
                    name: call.name().to_string(),
                    parts: vec![Part::Data(out.data)],
                    metadata: out.action.map(|a| json!({ "action": a })),
                };
                task.artifacts.push(artifact.clone());
                added.push(artifact);
                task.state = TaskState::Completed;
                task.status_message = None;
            }
            Err(e) => {
                let (http, code) = calls::http_error(&e);
                let message = calls::error_message(&e);
                task.state = match &e {
                    GatewayError::Unauthenticated { .. } | GatewayError::Forbidden { .. } => {
                        TaskState::AuthRequired
                    }
                    GatewayError::Tool(t) => match t.code {
                        ToolErrorCode::NotVerified => TaskState::InputRequired,
                        ToolErrorCode::PolicyRefused | ToolErrorCode::NeedsApproval => {
                            TaskState::Rejected
                        }
                        ToolErrorCode::NotFound
                        | ToolErrorCode::NotYourOrder
                        | ToolErrorCode::InvalidArgument
                        | ToolErrorCode::Internal => TaskState::Failed,
                    },
                    GatewayError::Internal(_) | GatewayError::RateLimited(_) => TaskState::Failed,
                };
                let reply = agent_message(
                    task,
                    vec![
                        Part::Text(message.clone()),
                        Part::Data(json!({"error": {
                            "code": code, "message": message, "status": http.as_u16(),
                        }})),
                    ],
                    None,
                );
                task.history.push(reply.clone());
                task.status_message = Some(reply);
            }
        },
        Work::Text(text) => {
            let reply = converse(state, caller, task, &text).await?;
            let parts = vec![Part::Text(reply.text.clone())];
            let msg = agent_message(
                task,
                parts.clone(),
                Some(
                    json!({"resolution": reply.resolution, "conversationId": reply.conversation_id}),
                ),
            );
            task.conversation_id = Some(reply.conversation_id.clone());
            task.history.push(msg.clone());
            task.status_message = Some(msg);
            task.state = if reply.awaiting {
                TaskState::InputRequired
            } else {
                TaskState::Completed
            };
            if task.state == TaskState::Completed {
                let artifact = Artifact {
                    artifact_id: new_id(),
                    name: "answer".into(),
                    parts,
                    metadata: None,
                };
                task.artifacts.push(artifact.clone());
                added.push(artifact);
            }
        }
    }
    task.updated_at = crate::util::now_ms().max(task.updated_at);
    Ok(added)
}

/// What a consumer agent's text conversation may do for a customer, from the call's
/// credentials: the same token checks as a data part (a signed request, the token issued to
/// that agent, not revoked or expired — done by `authenticate` — and the token's own checks).
#[derive(Debug, Default, PartialEq, Eq)]
struct TextRights {
    /// The customer the token proves, when it allows reading their orders (`get_order`, what
    /// the brand agent discloses in text).
    customer: Option<String>,
    /// A "yes" may confirm a write the brand agent proposes: only when the token allows every
    /// write the brand agent can make, with no spending limit and no category restriction —
    /// otherwise writes go through data parts, where the token's limits are enforced per call.
    confirms_writes: bool,
}

/// The writes the brand agent can propose in a conversation.
const DIALOGUE_WRITES: &[&str] = &[
    "cancel_order",
    "modify_order_address",
    "modify_order_items",
    "modify_order_payment",
    "update_customer_address",
    "return_items",
    "exchange_items",
];

fn text_rights(caller: &Caller) -> TextRights {
    let (Some(agent), Some(grant)) = (&caller.agent, &caller.grant) else {
        return TextRights::default();
    };
    let now = crate::util::now_ms();
    let Some(token) = grant.token.as_ref() else {
        return TextRights::default();
    };
    if grant.agent_id != agent.id || grant.expires_at <= now {
        return TextRights::default();
    }
    let allows = |op: &str| {
        grant.ops.iter().any(|o| o == op)
            && super::tokens::authorize(
                token,
                &super::tokens::CallFacts {
                    operation: op,
                    customer_id: &grant.customer_id,
                    spend: 0,
                    categories: &[],
                    now,
                },
            )
            .is_ok()
    };
    if !allows("get_order") {
        return TextRights::default();
    }
    TextRights {
        customer: Some(grant.customer_id.clone()),
        confirms_writes: grant.spend_limit.is_none()
            && grant.categories.is_empty()
            && DIALOGUE_WRITES.iter().all(|op| allows(op)),
    }
}

struct Reply {
    text: String,
    conversation_id: String,
    awaiting: bool,
    resolution: Value,
}

/// Stores the text as a consumer agent's message in the context's conversation and has the
/// brand agent answer it.
async fn converse(
    state: &AppState,
    caller: &Caller,
    task: &Task,
    text: &str,
) -> Result<Reply, RpcError> {
    let user_message = task.history.last().map(|m| m.message_id.clone());
    // One identity per (agent, context): whatever one conversation of an agent learns about a
    // customer never carries over to its other contexts.
    let (sender_id, sender_name) = match &caller.agent {
        Some(a) => (
            format!("agent:{}/{}", a.id, task.context_id),
            Some(a.name.clone()),
        ),
        None => (format!("a2a:{}", task.context_id), None),
    };
    let msg = InboundMessage {
        channel: "a2a".into(),
        thread_key: format!("{}/{}", task.scope, task.context_id),
        external_id: user_message.map(|m| format!("{}/{m}", task.scope)),
        sender_id,
        sender_name,
        sender_email: None,
        sender_verified: false,
        author_kind: AuthorKind::ConsumerAgent,
        subject: None,
        text: text.to_string(),
        html: None,
        attachments: json!([]),
        meta: json!({"a2a": {"taskId": task.id, "contextId": task.context_id}}),
    };
    let rights = text_rights(caller);
    let trust = Trust {
        confirms_writes: rights.confirms_writes,
        identity_linkable: false,
        // What an agent writes about a shopper is hearsay: only a capability token verifies.
        verify_from_claims: false,
        vouched_customer: rights.customer.clone(),
        ..Trust::default()
    }
    .with_requester(caller.agent.as_ref().map(|a| format!("agent:{}", a.id)));
    let intake = Intake {
        message: msg,
        trust,
        answer: Answer::Agent,
    };
    let outcome = inbox::receive(state, intake).await.map_err(|e| match e {
        InboxError::Invalid { field, message } => {
            RpcError::invalid_params(format!("message text ({field}): {message}"))
        }
        InboxError::Store(s) => RpcError::internal(s),
    })?;
    let answer = match inbox::turn::answer_now(state, &outcome).await {
        Ok(Some(m)) => m,
        Ok(None)
            if inbox::turn::with_staff(state, &outcome.conversation_id)
                .await
                .map_err(RpcError::internal)? =>
        {
            // A person from the store's team has this conversation: the message waits for
            // them; the agent is told so, and may write again.
            return Ok(Reply {
                text: "A person from the store's team is handling this conversation; your \
                       message is with them and they will answer here."
                    .into(),
                conversation_id: outcome.conversation_id,
                awaiting: true,
                resolution: json!({"status": "escalated", "waiting_for_staff": true}),
            });
        }
        Ok(None) => return Err(RpcError::internal("the brand agent gave no answer")),
        Err(e @ (TurnError::Failed(_) | TurnError::TimedOut)) => {
            return Err(RpcError::internal(format!("the brand agent failed: {e}")));
        }
        Err(TurnError::Store(s)) => return Err(RpcError::internal(s)),
    };
    let resolution = answer
        .meta
        .get("resolution")
        .cloned()
        .unwrap_or(Value::Null);
    let awaiting = resolution.get("status").and_then(Value::as_str) == Some("awaiting_customer");
    Ok(Reply {
        text: answer.text,
        conversation_id: outcome.conversation_id,
        awaiting,
        resolution,
    })
}

fn send_result(task: &Task, d: Dialect, history_length: Option<usize>) -> Value {
    let t = task_json(task, d, history_length, true);
    match d {
        Dialect::V1 => json!({ "task": t }),
        Dialect::V03 => t,
    }
}

async fn send(
    state: &AppState,
    caller: &Caller,
    d: Dialect,
    params: &Value,
) -> Result<Value, RpcError> {
    let p = parse_send(params)?;
    match prepare(state, caller, p.message).await? {
        Prepared::Done(t) => Ok(send_result(&t, d, p.history_length)),
        Prepared::Run(mut task, work) => {
            execute(state, caller, &mut task, work).await?;
            match tasks::save_task(&state.store, &task).await {
                Ok(()) => Ok(send_result(&task, d, p.history_length)),
                // The same message sent twice at once: the first one's task is the answer.
                Err(e) if e.is_unique_violation() => {
                    state.store.settle_writes().await;
                    let first = tasks::task_by_message(&state.store, &task.scope, &task.message_id)
                        .await?
                        .ok_or_else(|| RpcError::internal(e))?;
                    Ok(send_result(&first, d, p.history_length))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn sse_event(id: &Value, result: Value) -> Event {
    Event::default().data(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
}

fn sse_response(rx: tokio::sync::mpsc::Receiver<Event>) -> Response {
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// SendStreamingMessage / message/stream: the task (WORKING), then its artifacts and the final
/// status as Server-Sent Events. Bad requests are answered with a plain JSON-RPC error.
async fn stream(state: AppState, caller: Caller, d: Dialect, id: Value, params: Value) -> Response {
    let p = match parse_send(&params) {
        Ok(p) => p,
        Err(e) => return rpc_error(&id, e),
    };
    let prepared = match prepare(&state, &caller, p.message).await {
        Ok(x) => x,
        Err(e) => return rpc_error(&id, e),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(8);
    match prepared {
        Prepared::Done(t) => {
            let _ = tx
                .send(sse_event(&id, send_result(&t, d, p.history_length)))
                .await;
        }
        Prepared::Run(mut task, work) => {
            match tasks::save_task(&state.store, &task).await {
                Ok(()) => {}
                Err(e) if e.is_unique_violation() => {
                    state.store.settle_writes().await;
                    return match tasks::task_by_message(&state.store, &task.scope, &task.message_id)
                        .await
                    {
                        Ok(Some(first)) => {
                            let _ = tx
                                .send(sse_event(&id, send_result(&first, d, p.history_length)))
                                .await;
                            drop(tx);
                            sse_response(rx)
                        }
                        Ok(None) => rpc_error(&id, RpcError::internal(e)),
                        Err(e) => rpc_error(&id, e.into()),
                    };
                }
                Err(e) => return rpc_error(&id, e.into()),
            }
            let _ = tx
                .send(sse_event(&id, send_result(&task, d, p.history_length)))
                .await;
            tokio::spawn(async move {
                let outcome = execute(&state, &caller, &mut task, work).await;
                let saved = match &outcome {
                    Ok(_) => tasks::save_task(&state.store, &task)
                        .await
                        .map_err(RpcError::from),
                    Err(_) => Ok(()),
                };
                match (outcome, saved) {
                    (Ok(added), Ok(())) => {
                        for a in &added {
                            let _ = tx.send(sse_event(&id, artifact_event(&task, a, d))).await;
                        }
                        let _ = tx.send(sse_event(&id, status_event(&task, d))).await;
                    }
                    (Err(e), _) | (Ok(_), Err(e)) => {
                        // The task failed on our side: record it and end the stream with the error.
                        task.state = TaskState::Failed;
                        task.status_message = Some(agent_message(
                            &task,
                            vec![Part::Text(e.message.clone())],
                            None,
                        ));
                        let _ = tasks::save_task(&state.store, &task).await;
                        let _ = tx.send(sse_event(&id, status_event(&task, d))).await;
                        let _ = tx
                            .send(
                                Event::default()
                                    .event("error")
                                    .data(error_json(&id, &e).to_string()),
                            )
                            .await;
                    }
                }
            });
        }
    }
    sse_response(rx)
}

// ---- GetTask, ListTasks, CancelTask, SubscribeToTask ----

async fn get_task(
    state: &AppState,
    caller: &Caller,
    d: Dialect,
    params: &Value,
) -> Result<Value, RpcError> {
    let id = task_id_param(params)?;
    let history_length = uint_param(params, "historyLength")?;
    let task = find_task(state, caller, id).await?;
    Ok(task_json(&task, d, history_length, true))
}

/// Milliseconds since the epoch of an RFC 3339 timestamp (sub-millisecond digits dropped).
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

fn page_token(t: &Task) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", t.updated_at, t.id))
}

pub(crate) fn parse_page_token(s: &str) -> Option<(i64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (t, id) = raw.split_once(':')?;
    Some((t.parse().ok()?, id.to_string()))
}

/// ListTasks: a signing agent's tasks (all, or one context's); for an unsigned caller only the
/// tasks of the context it presents — nothing without one.
async fn list_tasks(
    state: &AppState,
    caller: &Caller,
    d: Dialect,
    params: &Value,
) -> Result<Value, RpcError> {
    let context_id = str_param(params, "contextId")?.filter(|s| !s.is_empty());
    let status = match str_param(params, "status")? {
        None | Some("") | Some("TASK_STATE_UNSPECIFIED") => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            RpcError::invalid_params(format!("status: {s:?} is not a task state"))
        })?),
    };
    let page_size = uint_param(params, "pageSize")?.unwrap_or(DEFAULT_PAGE);
    if page_size == 0 || page_size > MAX_PAGE {
        return Err(RpcError::invalid_params(format!(
            "pageSize must be from 1 to {MAX_PAGE}"
        )));
    }
    let after = match str_param(params, "pageToken")? {
        None | Some("") => None,
        Some(tok) => Some(parse_page_token(tok).ok_or_else(|| {
            RpcError::invalid_params("pageToken is not a token this agent gave out")
        })?),
    };
    let updated_since = match str_param(params, "statusTimestampAfter")? {
        None | Some("") => None,
        Some(ts) => Some(parse_rfc3339_ms(ts).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "statusTimestampAfter: {ts:?} is not an RFC 3339 timestamp such as \
                 2026-01-31T12:00:00Z"
            ))
        })?),
    };
    let history_length = uint_param(params, "historyLength")?;
    let include_artifacts = params
        .get("includeArtifacts")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (mut page, total) = match (&caller.agent, context_id) {
        // Unsigned and no context presented: there is nothing this caller has shown it owns.
        (None, None) => (Vec::new(), 0),
        (_, context) => {
            let scope = scope_of(caller, context.unwrap_or_default());
            let filter = tasks::TaskFilter {
                context_id: context,
                state: status,
                updated_since,
            };
            // One more than the page, to know whether another page follows.
            tasks::list_tasks(&state.store, &scope, filter, after, page_size + 1).await?
        }
    };
    let more = page.len() > page_size;
    page.truncate(page_size);
    let next = if more {
        page.last().map(page_token).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(json!({
        "tasks": page.iter().map(|t| task_json(t, d, history_length, include_artifacts)).collect::<Vec<_>>(),
        "nextPageToken": next,
        // The size of this page (A2A 1.0: the number of tasks returned).
        "pageSize": page.len(),
        "totalSize": total,
    }))
}

async fn cancel_task(
    state: &AppState,
    caller: &Caller,
    d: Dialect,
    params: &Value,
) -> Result<Value, RpcError> {
    let id = task_id_param(params)?;
    let mut task = find_task(state, caller, id).await?;
    if task.state.is_terminal() {
        return Err(RpcError::new(
            -32002,
            format!(
                "Task cannot be canceled: task {id} is already {}",
                task.state.db()
            ),
        ));
    }
    task.state = TaskState::Canceled;
    task.status_message = None;
    task.updated_at = crate::util::now_ms().max(task.updated_at);
    tasks::save_task(&state.store, &task).await?;
    Ok(task_json(&task, d, None, true))
}

/// SubscribeToTask / tasks/resubscribe: our tasks change only when the client sends a message,
/// so a subscription gets the task's current state and ends.
async fn subscribe(
    state: &AppState,
    caller: &Caller,
    d: Dialect,
    id: Value,
    params: &Value,
) -> Response {
    let outcome = async {
        let task_id = task_id_param(params)?;
        let task = find_task(state, caller, task_id).await?;
        if task.state.is_terminal() {
            return Err(RpcError::new(
                -32004,
                format!(
                    "Unsupported operation: task {task_id} is {}; read it with GetTask",
                    task.state.db()
                ),
            ));
        }
        Ok(task)
    }
    .await;
    match outcome {
        Err(e) => rpc_error(&id, e),
        Ok(task) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Event>(2);
            let first = match d {
                Dialect::V1 => json!({ "task": task_json(&task, d, None, true) }),
                Dialect::V03 => task_json(&task, d, None, true),
            };
            let _ = tx.send(sse_event(&id, first)).await;
            let _ = tx.send(sse_event(&id, status_event(&task, d))).await;
            sse_response(rx)
        }
    }
}
