//! MCP at `/mcp` (streamable HTTP, rmcp): the tools with JSON schemas and structured results.
//!
//! The tools are the gateway's ([`calls::specs`]): `tools/list` gives each one's JSON Schema and
//! hints (read-only, destructive), `tools/call` runs it for the caller and answers with
//! `structuredContent` (the tool's data) and the same JSON as text; a refusal is a result with
//! `isError: true` and `{"error": {"code", "message"}}`, so the calling model reads why.
//!
//! Every POST is authenticated before rmcp sees it: a layer reads the body, checks the RFC 9421
//! signature and bearer token over it ([`authenticate`]) and hands the [`Caller`] to the handler
//! through the request's extensions; a bad signature or token is a 401/403 with a JSON error.
//! Browsers' cross-origin requests are refused: an `Origin` must be the configured public URL's
//! (or a loopback origin when none is configured).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, InitializeResult,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::Value;

use super::calls;
use super::{Caller, SignedRequest, authenticate};
use crate::state::AppState;

pub const PATH: &str = "/mcp";

pub fn routes(state: &AppState) -> Router<AppState> {
    let handler_state = state.clone();
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // Hosts are the operator's business (a reverse proxy in front); Origin is checked below
        // and by rmcp.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(state.config.server.max_body_bytes);
    config = config
        .with_allowed_origins(allowed_origins(state))
        .enforce_origin_validation();
    let service = StreamableHttpService::new(
        move || {
            Ok(ConciergeMcp {
                state: handler_state.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new().nest_service(
        PATH,
        tower::ServiceBuilder::new()
            .layer(middleware::from_fn_with_state(
                state.clone(),
                authenticate_layer,
            ))
            .service(service),
    )
}

/// The browser origins allowed to call `/mcp`: the public URL's, else loopback ones.
fn allowed_origins(state: &AppState) -> Vec<String> {
    match &state.config.server.public_url {
        Some(u) => {
            let u = u.trim_end_matches('/');
            // scheme://host[:port] without a path
            let origin = match u.find("://") {
                Some(i) => match u[i + 3..].find('/') {
                    Some(j) => u[..i + 3 + j].to_string(),
                    None => u.to_string(),
                },
                None => u.to_string(),
            };
            let has_port = origin[origin.find("://").map_or(0, |i| i + 3)..].contains(':');
            vec![if has_port {
                origin
            } else {
                format!("{origin}:*")
            }]
        }
        None => vec![
            "http://localhost:*".into(),
            "http://127.0.0.1:*".into(),
            "http://[::1]:*".into(),
        ],
    }
}

/// Authenticates each POST over its body and passes the [`Caller`] on in the extensions.
async fn authenticate_layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, state.config.server.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is too large",
            );
        }
    };
    // Inside nest_service the URI lost its prefix; the signature covers the full target.
    let original = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| parts.uri.clone());
    let signed = SignedRequest {
        method: &parts.method,
        uri: &original,
        headers: &parts.headers,
        body: &bytes,
    };
    match authenticate(&state, &signed).await {
        Ok(caller) => {
            parts.extensions.insert(caller);
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => {
            let (status, code) = calls::http_error(&e);
            json_error(status, code, &calls::error_message(&e))
        }
    }
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut resp = (status, axum::Json(calls::error_body(code, message))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"concierge-agent\""),
        );
    }
    resp
}

/// The MCP server: one per session, sharing the app state.
#[derive(Clone)]
pub struct ConciergeMcp {
    state: AppState,
}

/// The gateway's tools as MCP tools.
pub fn mcp_tools() -> Vec<Tool> {
    calls::specs()
        .iter()
        .map(|s| {
            let schema = match &s.parameters {
                Value::Object(m) => m.clone(),
                _ => serde_json::Map::new(),
            };
            let annotations = ToolAnnotations::new()
                .read_only(!s.write && s.name != "escalate")
                .destructive(s.write)
                .idempotent(!s.write)
                .open_world(false);
            Tool::new(s.name, s.description, Arc::new(schema)).with_annotations(annotations)
        })
        .collect()
}

fn caller_of(ctx: &RequestContext<RoleServer>) -> Caller {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .unwrap_or_default()
}

impl ServerHandler for ConciergeMcp {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("concierge", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "{}'s customer-support tools for shoppers' AI agents: order status, delivery \
                 estimates, availability, returns and exchanges, cancellations, policies. Product \
                 and policy tools are public; customer tools need a signed request with the \
                 customer's capability token.",
                super::a2a::brand_name(&self.state)
            ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(mcp_tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        mcp_tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name = request.name.to_string();
        if !calls::specs().iter().any(|s| s.name == name) {
            return Err(McpError::invalid_params(
                format!(
                    "unknown tool {name:?}; the tools are {}",
                    calls::specs()
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None,
            ));
        }
        let args = Value::Object(request.arguments.unwrap_or_default());
        let call = match calls::parse(&name, &args) {
            Ok(c) => c,
            Err(e) => {
                return Ok(CallToolResult::structured_error(calls::error_body(
                    e.code.as_str(),
                    &e.message,
                ))
                .into());
            }
        };
        let caller = caller_of(&context);
        Ok(match calls::run(&self.state, &caller, &call).await {
            Ok(out) => CallToolResult::structured(out.data),
            Err(e) => {
                let (_, code) = calls::http_error(&e);
                CallToolResult::structured_error(calls::error_body(code, &calls::error_message(&e)))
            }
        }
        .into())
    }
}
