//! The native JSON API under `/agent/v1/` and its OpenAPI document at `/openapi.json`.
//!
//! `POST /agent/v1/tools/{name}` runs any tool with a JSON object of arguments; a few read-only
//! routes (`GET /agent/v1/orders/{order_id}`, …) name the common reads. Answers are
//! `{"data": …}` (plus `"action"` for what a write did) or `{"error": {"code", "message"}}`:
//! 400 bad arguments (the message names the field), 401 no valid signature or token, 403 the
//! token does not allow it, 404 no such order or product (or not the customer's), 422 refused by
//! the brand's policy, 409/422 idempotency. Writes go through the idempotency layer
//! (`Idempotency-Key`).

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::calls::{self, GatewayCall};
use super::{Caller, SignedRequest, authenticate, idempotency};
use crate::state::AppState;

pub fn routes(_state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/agent/v1/tools", get(list_tools))
        .route("/agent/v1/tools/{name}", post(call_tool))
        .route("/agent/v1/orders/{order_id}", get(order))
        .route(
            "/agent/v1/orders/{order_id}/delivery-estimate",
            get(delivery_estimate),
        )
        .route(
            "/agent/v1/orders/{order_id}/return-eligibility",
            get(return_eligibility),
        )
        .route("/agent/v1/products/{product_id}", get(product))
        .route(
            "/agent/v1/products/{product_id}/availability",
            get(availability),
        )
        .route("/agent/v1/policies", get(policies))
}

/// The parts of the request a signature covers.
struct Req {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Req {
    fn signed(&self) -> SignedRequest<'_> {
        SignedRequest {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            body: &self.body,
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(calls::error_body(code, message))).into_response()
}

async fn list_tools() -> Response {
    let tools: Vec<Value> = calls::specs()
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "description": s.description,
                "input_schema": s.parameters,
                "write": s.write,
                "public": calls::is_public(s.name),
                "path": format!("/agent/v1/tools/{}", s.name),
            })
        })
        .collect();
    axum::Json(json!({ "tools": tools })).into_response()
}

async fn call_tool(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let args = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "the body must be a JSON object of the tool's arguments",
                );
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    &format!("the body is not valid JSON: {e}"),
                );
            }
        }
    };
    let req = Req {
        method,
        uri,
        headers,
        body,
    };
    run(&state, &req, &name, &args).await
}

/// Authenticates, parses and runs one call; writes go through the idempotency layer.
async fn run(state: &AppState, req: &Req, name: &str, args: &Value) -> Response {
    let caller = match authenticate(state, &req.signed()).await {
        Ok(c) => c,
        Err(e) => return gateway_error(&e),
    };
    let call = match calls::parse(name, args) {
        Ok(c) => c,
        Err(e) => {
            let status = if calls::specs().iter().any(|s| s.name == name.trim()) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::NOT_FOUND
            };
            let code = if status == StatusCode::NOT_FOUND {
                "unknown_tool"
            } else {
                e.code.as_str()
            };
            return error(status, code, &e.message);
        }
    };
    if !calls::needs_idempotency(call.name()) {
        let (status, body) = execute(state, &caller, &call).await;
        return (status, axum::Json(body)).into_response();
    }
    let scope = caller
        .agent
        .as_ref()
        .map(|a| a.id.clone())
        .unwrap_or_else(|| "public".to_string());
    let key = req
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut fingerprint = Vec::with_capacity(req.body.len() + 64);
    fingerprint.extend_from_slice(req.method.as_str().as_bytes());
    fingerprint.push(b' ');
    fingerprint.extend_from_slice(req.uri.path().as_bytes());
    fingerprint.push(b'\n');
    fingerprint.extend_from_slice(&req.body);
    idempotency::run(state, &scope, key.as_deref(), &fingerprint, async {
        execute(state, &caller, &call).await
    })
    .await
}

async fn execute(state: &AppState, caller: &Caller, call: &GatewayCall) -> (StatusCode, Value) {
    match calls::run(state, caller, call).await {
        Ok(out) => {
            let mut body = json!({ "data": out.data });
            if let Some(a) = out.action {
                body["action"] = json!(a);
            }
            (StatusCode::OK, body)
        }
        Err(e) => {
            let (status, code) = calls::http_error(&e);
            (status, calls::error_body(code, &calls::error_message(&e)))
        }
    }
}

fn gateway_error(e: &super::GatewayError) -> Response {
    let (status, code) = calls::http_error(e);
    let mut resp = error(status, code, &calls::error_message(e));
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"concierge-agent\""),
        );
    }
    resp
}

async fn read(
    state: &AppState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    name: &str,
    args: Value,
) -> Response {
    let req = Req {
        method,
        uri,
        headers,
        body: Bytes::new(),
    };
    run(state, &req, name, &args).await
}

async fn order(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let args = json!({ "order_id": order_id });
    read(&state, method, uri, headers, "get_order", args).await
}

async fn delivery_estimate(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let args = json!({ "order_id": order_id });
    read(&state, method, uri, headers, "delivery_estimate", args).await
}

async fn return_eligibility(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut args = json!({ "order_id": order_id });
    if let Some(items) = q.get("item_ids") {
        let ids: Vec<&str> = items
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        args["item_ids"] = json!(ids);
    }
    read(&state, method, uri, headers, "return_eligibility", args).await
}

async fn product(
    State(state): State<AppState>,
    Path(product_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let args = json!({ "product_id": product_id });
    read(&state, method, uri, headers, "get_product", args).await
}

/// Every query parameter is an option to match (`?color=blue&size=M`).
async fn availability(
    State(state): State<AppState>,
    Path(product_id): Path<String>,
    Query(options): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let args = json!({ "product_id": product_id, "options": options });
    read(&state, method, uri, headers, "check_availability", args).await
}

async fn policies(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut args = json!({ "query": q.get("q").cloned().unwrap_or_default() });
    if let Some(limit) = q.get("limit") {
        match limit.parse::<u64>() {
            Ok(n) => args["limit"] = json!(n),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    "limit: must be an integer from 1 to 10",
                );
            }
        }
    }
    read(&state, method, uri, headers, calls::SEARCH_POLICY, args).await
}

async fn openapi(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let base = super::a2a::base_url(&state, &uri, &headers);
    axum::Json(openapi_document(&state, &base)).into_response()
}

/// The OpenAPI 3.1 document of `/agent/v1`, generated from the tool specs; `base` is the
/// service's public base URL.
pub fn openapi_document(state: &AppState, base: &str) -> Value {
    let mut paths = Map::new();
    let secured = json!([{"agentSignature": [], "capabilityToken": []}]);
    let responses = |ok: &str| {
        json!({
            "200": {"description": ok, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
            "400": err_ref("The arguments are malformed; the message names the field."),
            "401": err_ref("No valid signature or capability token (see error.code)."),
            "403": err_ref("The capability token does not allow this call."),
            "404": err_ref("No such tool, order or product (or not the customer's order)."),
            "409": err_ref("A request with this Idempotency-Key is still in flight."),
            "422": err_ref("Refused by the brand's policy, or the Idempotency-Key was used with another body."),
            "500": err_ref("Our fault; nothing was changed."),
        })
    };
    for s in calls::specs() {
        let public = calls::is_public(s.name);
        let mut op = json!({
            "operationId": s.name,
            "summary": s.description,
            "tags": [if s.write { "writes" } else { "reads" }],
            "requestBody": {
                "required": !s.parameters["required"].as_array().is_none_or(Vec::is_empty),
                "content": {"application/json": {"schema": s.parameters}}
            },
            "responses": responses("The tool's result."),
        });
        op["security"] = if public {
            json!([{}, {"agentSignature": []}])
        } else {
            secured.clone()
        };
        if calls::needs_idempotency(s.name) {
            op["parameters"] = json!([{"$ref": "#/components/parameters/IdempotencyKey"}]);
        }
        paths.insert(format!("/agent/v1/tools/{}", s.name), json!({ "post": op }));
    }
    let path_param = |name: &str, desc: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "description": desc});
    let order_param = path_param(
        "order_id",
        "The order number, such as 'W0000000' (or '%23W0000000').",
    );
    let product_param = path_param("product_id", "The product id.");
    let friendly = [
        (
            "/agent/v1/orders/{order_id}",
            "get_order",
            &order_param,
            "The order's status, items, fulfilments and tracking (same as the get_order tool).",
            secured.clone(),
        ),
        (
            "/agent/v1/orders/{order_id}/delivery-estimate",
            "delivery_estimate",
            &order_param,
            "When the order arrives (same as the delivery_estimate tool).",
            secured.clone(),
        ),
        (
            "/agent/v1/orders/{order_id}/return-eligibility",
            "return_eligibility",
            &order_param,
            "Which items can be returned (same as the return_eligibility tool; ?item_ids=a,b narrows).",
            secured.clone(),
        ),
        (
            "/agent/v1/products/{product_id}",
            "get_product",
            &product_param,
            "A product and its variants (public).",
            json!([{}]),
        ),
        (
            "/agent/v1/products/{product_id}/availability",
            "check_availability",
            &product_param,
            "Variants matching the options given as query parameters, such as ?color=blue&size=M (public).",
            json!([{}]),
        ),
    ];
    for (path, tool, param, summary, security) in friendly {
        paths.insert(
            path.to_string(),
            json!({"get": {
                "operationId": format!("{tool}_get"),
                "summary": summary,
                "tags": ["reads"],
                "parameters": [param],
                "security": security,
                "responses": responses("The tool's result."),
            }}),
        );
    }
    paths.insert(
        "/agent/v1/policies".into(),
        json!({"get": {
            "operationId": "search_policy_get",
            "summary": "Search the brand's policies (public; same as the search_policy tool).",
            "tags": ["reads"],
            "parameters": [
                {"name": "q", "in": "query", "required": true, "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 10}}
            ],
            "security": [{}],
            "responses": responses("The best-matching policy passages."),
        }}),
    );
    paths.insert(
        "/agent/v1/tools".into(),
        json!({"get": {
            "operationId": "list_tools",
            "summary": "Every tool with its JSON Schema.",
            "security": [{}],
            "responses": {"200": {"description": "The tools.", "content": {"application/json": {"schema": {"type": "object"}}}}}
        }}),
    );
    super::negotiation::openapi_paths(&mut paths);
    super::settlement::openapi_paths(&mut paths);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("{} consumer-agent API", super::a2a::brand_name(state)),
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The tools of the brand's support agent for shoppers' own AI agents: order status, delivery estimates, availability, returns and exchanges, cancellations, policies. Requests about a customer are signed (RFC 9421 HTTP Message Signatures, Ed25519, over @method @target-uri content-digest) and carry a Biscuit capability token (Authorization: Bearer) that the customer granted; product and policy reads are public. The same tools are served over A2A (/.well-known/agent-card.json) and MCP (/mcp)."
        },
        "servers": [{"url": base}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "agentSignature": {
                    "type": "apiKey", "in": "header", "name": "Signature",
                    "description": "RFC 9421 HTTP Message Signature (with Signature-Input and Content-Digest headers) by the agent's registered Ed25519 key."
                },
                "capabilityToken": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "Biscuit",
                    "description": "A Biscuit capability token naming the customer, the allowed tools, a spending limit and an expiry; holders may attenuate it."
                }
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key", "in": "header", "required": false,
                    "schema": {"type": "string", "maxLength": 255},
                    "description": "Same key and body: the first answer is replayed (Idempotent-Replayed: true). Same key, other body: 422 idempotency_conflict. Still running: 409 idempotency_in_flight."
                }
            },
            "schemas": {
                "Result": {
                    "type": "object",
                    "properties": {
                        "data": {"description": "The tool's structured result."},
                        "action": {"type": "object", "description": "What a write did (kind, order, details)."}
                    },
                    "required": ["data"]
                },
                "Settlement": super::settlement::openapi_schema(),
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "object", "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string", "description": "A sentence the shopper can act on."}
                    }, "required": ["code", "message"]}},
                    "required": ["error"]
                }
            }
        }
    })
}

fn err_ref(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}
