//! The gateway's tool list, shared by A2A data parts, MCP and `/agent/v1`: every tool of the tool
//! layer ([`tool_specs`]) plus `search_policy`, a public read of the brand's indexed policies
//! that only the gateway offers (the brand agent reads policies through its own dialogue).
//! [`parse`] turns a name and JSON arguments into a [`GatewayCall`], naming the bad field;
//! [`run`] runs it for a [`Caller`]; [`http_error`] gives each failure its HTTP status and code.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Caller, GatewayError, run_tool};
use crate::agent::tools::{ToolCall, ToolError, ToolErrorCode, ToolOutput, ToolSpec};
use crate::search::DocKind;
use crate::state::AppState;

pub const SEARCH_POLICY: &str = "search_policy";
const MAX_POLICY_HITS: usize = 10;

/// Every tool a consumer agent can call, in a stable order (built once).
pub fn specs() -> &'static [ToolSpec] {
    static SPECS: std::sync::OnceLock<Vec<ToolSpec>> = std::sync::OnceLock::new();
    SPECS.get_or_init(build_specs)
}

fn build_specs() -> Vec<ToolSpec> {
    let mut specs = crate::agent::tools::tool_specs();
    specs.push(ToolSpec {
        name: SEARCH_POLICY,
        description: "Search the brand's published policies (shipping, returns, exchanges, \
                      cancellations, warranty, payments) and return the best-matching \
                      passages with their section titles. Public: needs no token.",
        parameters: json!({
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "The question or keywords, such as 'return window for opened items'."},
                "limit": {"type": "integer", "description": "How many passages to return (1 to 10, default 3)."}
            },
            "required": ["query"],
            "additionalProperties": false
        }),
        write: false,
    });
    specs
}

/// True for the tools that need no customer: product reads and policy search.
pub fn is_public(name: &str) -> bool {
    name == SEARCH_POLICY || super::PUBLIC_TOOLS.contains(&name)
}

/// True for calls whose effects must happen at most once (writes and escalations).
pub fn needs_idempotency(name: &str) -> bool {
    name == "escalate" || specs().iter().any(|s| s.name == name && s.write)
}

/// One call a consumer agent asked for.
#[derive(Debug, Clone)]
pub enum GatewayCall {
    Tool(ToolCall),
    SearchPolicy { query: String, limit: usize },
}

impl GatewayCall {
    pub fn name(&self) -> &'static str {
        match self {
            GatewayCall::Tool(c) => c.name(),
            GatewayCall::SearchPolicy { .. } => SEARCH_POLICY,
        }
    }
}

/// Parses a call; errors are [`ToolErrorCode::InvalidArgument`] and name the field.
pub fn parse(name: &str, args: &Value) -> Result<GatewayCall, ToolError> {
    if name.trim() != SEARCH_POLICY {
        return crate::agent::tools::parse_call(name, args).map(GatewayCall::Tool);
    }
    let obj = match args {
        Value::Object(m) => m,
        other => {
            return Err(ToolError::new(
                ToolErrorCode::InvalidArgument,
                format!(
                    "The arguments of {SEARCH_POLICY} must be a JSON object, not {}.",
                    json_kind(other)
                ),
            ));
        }
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "query" | "limit"))
    {
        return Err(ToolError::new(
            ToolErrorCode::InvalidArgument,
            format!("{SEARCH_POLICY} has no argument {k:?}; it takes query and limit."),
        ));
    }
    let query = match obj.get("query") {
        Some(Value::String(q)) if !q.trim().is_empty() => q.trim().to_string(),
        Some(Value::String(_)) => return Err(invalid("query: must not be empty.")),
        Some(other) => {
            return Err(invalid(&format!(
                "query: must be a string, not {}.",
                json_kind(other)
            )));
        }
        None => return Err(invalid("query: is required.")),
    };
    let limit = match obj.get("limit") {
        None | Some(Value::Null) => 3,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_POLICY_HITS as u64).contains(&n) => n as usize,
            _ => return Err(invalid("limit: must be an integer from 1 to 10.")),
        },
    };
    Ok(GatewayCall::SearchPolicy { query, limit })
}

fn invalid(msg: &str) -> ToolError {
    ToolError::new(
        ToolErrorCode::InvalidArgument,
        format!("Bad arguments for {SEARCH_POLICY}: {msg}"),
    )
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Runs a call for `caller`.
pub async fn run(
    state: &AppState,
    caller: &Caller,
    call: &GatewayCall,
) -> Result<ToolOutput, GatewayError> {
    match call {
        GatewayCall::Tool(c) => run_tool(state, caller, c).await,
        GatewayCall::SearchPolicy { query, limit } => {
            let index = state.search.clone();
            let (q, limit) = (query.clone(), *limit);
            let hits =
                tokio::task::spawn_blocking(move || index.search(&q, Some(DocKind::Policy), limit))
                    .await
                    .map_err(|e| GatewayError::Internal(format!("policy search failed: {e}")))?
                    .map_err(|e| GatewayError::Internal(format!("policy search failed: {e}")))?;
            let passages: Vec<Value> = hits
                .into_iter()
                .map(
                    |h| json!({"id": h.key, "title": h.title, "text": h.snippet, "score": h.score}),
                )
                .collect();
            Ok(ToolOutput {
                data: json!({"query": query, "passages": passages}),
                action: None,
            })
        }
    }
}

/// The HTTP status and machine-readable code of a failed call.
pub fn http_error(e: &GatewayError) -> (StatusCode, &'static str) {
    match e {
        GatewayError::Unauthenticated { code, .. } => (StatusCode::UNAUTHORIZED, code),
        GatewayError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
        GatewayError::Tool(t) => (tool_status(t.code), t.code.as_str()),
        GatewayError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        GatewayError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
    }
}

pub fn tool_status(code: ToolErrorCode) -> StatusCode {
    match code {
        ToolErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ToolErrorCode::NotVerified => StatusCode::UNAUTHORIZED,
        ToolErrorCode::NotFound | ToolErrorCode::NotYourOrder => StatusCode::NOT_FOUND,
        ToolErrorCode::PolicyRefused | ToolErrorCode::NeedsApproval => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ToolErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The message shown for a failure: internal details stay in the log.
pub fn error_message(e: &GatewayError) -> String {
    match e {
        GatewayError::Internal(detail) => crate::error::internal_message(
            &crate::error::log_internal("gateway call failed", detail),
        ),
        other => other.to_string(),
    }
}

/// `{"error": {"code", "message"}}`.
pub fn error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}
