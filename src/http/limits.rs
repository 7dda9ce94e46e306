//! The limits' HTTP side ([`crate::limits`] holds the limits themselves): the per-address limit
//! on public routes, and the gateway's refusal details on a rate-limited agent key.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};

use crate::limits::{is_public_route, with_gateway_refusals};
use crate::state::AppState;

/// Middleware: the per-address limit on public routes.
pub async fn public_per_ip(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !is_public_route(path) {
        return next.run(req).await;
    }
    let page = path.starts_with("/inbox");
    let ip = super::client_ip::request_ip(&state, &req);
    match state.limits.public(ip) {
        Ok(()) => next.run(req).await,
        Err(r) if page => r.page_response(),
        Err(r) => r.json_response(),
    }
}

/// Middleware on the gateway: each front end answers a refused agent key in its own dialect
/// (429 with code `rate_limited`); this adds `Retry-After` and the limit's name and wait to the
/// error object (`error` for JSON, `error.data` for JSON-RPC).
pub async fn gateway_refusals(req: Request, next: Next) -> Response {
    let (response, refusal) = with_gateway_refusals(next.run(req)).await;
    let Some(refusal) = refusal else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    parts
        .headers
        .insert(header::RETRY_AFTER, refusal.retry_header());
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return refusal.json_response();
    };
    let patched = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|mut v| {
            let error = v.get_mut("error")?;
            let target = if error.get("data").is_some_and(Value::is_object) {
                error.get_mut("data")?
            } else {
                error
            };
            let obj = target.as_object_mut()?;
            obj.insert("limit".into(), json!(refusal.limit));
            obj.insert("retry_after_secs".into(), json!(refusal.retry_after_secs()));
            serde_json::to_vec(&v).ok()
        });
    match patched {
        Some(b) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(b))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}
