//! The public HTTP surface: health, the API channel and search. Handlers are thin: they
//! authenticate, validate, call the store / inbox / index, and shape JSON. Every error leaves
//! as an [`ApiError`] — never a panic, never a 500 for bad input.

mod api;
pub mod client_ip;
pub mod headers;
pub mod hosts;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::routing::{get, post};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use crate::error::{ApiError, BodyLimit};

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    let timeout = Duration::from_secs(state.config.server.request_timeout_secs);
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/api/v1/messages", post(api::post_message))
        .route("/api/v1/conversations/{id}", get(api::get_conversation))
        .route("/api/v1/orders/{number}", get(api::get_order))
        .route("/api/v1/search", get(api::search))
        .merge(crate::channels::webchat::routes())
        .merge(crate::channels::email::routes::routes(
            state.config.email.max_message_bytes,
        ))
        .merge(crate::channels::shopify::routes())
        .merge(crate::channels::telegram::routes())
        .merge(crate::channels::marketplace::routes(&state))
        .merge(crate::web::routes(&state))
        .merge(
            crate::gateway::routes(&state)
                .layer(axum::middleware::from_fn(crate::limits::gateway_refusals)),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({"error": {"code": "method_not_allowed", "message": "this endpoint does not take that method"}})),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::limits::public_per_ip,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            headers::security_headers,
        ))
        .layer(axum::middleware::from_fn(crate::telemetry::track_requests))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(BodyLimit(limit)))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str)
                    .unwrap_or("unmatched");
                tracing::info_span!("request", method = %req.method(), route)
            }),
        )
        .with_state(state)
}
