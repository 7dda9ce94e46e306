//! Idempotent writes: `Idempotency-Key` by the rules in PROTOCOLS.md (replay, conflict, in flight).
//!
//! A key is claimed per caller (`scope`) with an INSERT on the (scope, key) primary key, so two
//! concurrent requests with one key cannot both run. Then:
//! - same key, same request, finished → the stored status and body again, with
//!   `Idempotent-Replayed: true`;
//! - same key, another request (method, path or body differ) → 422 `idempotency_conflict`;
//! - same key while the first request runs → 409 `idempotency_in_flight` with `Retry-After: 1`;
//! - a 5xx answer is not stored: the key is released and a retry runs again;
//! - keys are kept 24 hours (older ones are purged lazily); a key is at most 255 characters of
//!   printable ASCII. A claim whose request never finished (client gone, process stopped) may be
//!   taken over by a retry after [`ABANDONED_AFTER_MS`].

use std::future::Future;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::state::AppState;
use crate::store::IdempotencyClaim;

/// How long a key (and its answer) is kept.
pub const KEEP_MS: i64 = 24 * 3600 * 1000;
/// A claim older than this whose request never finished may be taken over by a retry (well
/// beyond the request timeout).
pub const ABANDONED_AFTER_MS: i64 = 120 * 1000;
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Checks a key: 1 to 255 printable ASCII characters.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the Idempotency-Key header is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "the Idempotency-Key is {} characters long; at most {MAX_KEY_LEN} are allowed",
            key.len()
        ));
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("the Idempotency-Key must be printable ASCII".into());
    }
    Ok(())
}

/// Runs `work` at most once per (`scope`, `key`): `scope` is the caller (agent id, or "public"),
/// `fingerprint` the request (method, path, body) so a reused key with another body is a
/// conflict. Without a key the work just runs.
pub async fn run<F>(
    state: &AppState,
    scope: &str,
    key: Option<&str>,
    fingerprint: &[u8],
    work: F,
) -> Response
where
    F: Future<Output = (StatusCode, Value)>,
{
    let Some(key) = key else {
        let (status, body) = work.await;
        return (status, axum::Json(body)).into_response();
    };
    if let Err(message) = check_key(key) {
        return error(StatusCode::BAD_REQUEST, "idempotency_key_invalid", &message);
    }
    let store = &state.store;
    let now = crate::util::now_ms();
    let fingerprint = crate::util::sha256_hex(fingerprint);
    if rand::random::<u8>() < 4 {
        let _ = store.purge_idempotency_keys(now - KEEP_MS).await;
    }
    let claim = store
        .claim_idempotency_key(
            scope,
            key,
            &fingerprint,
            now,
            now - KEEP_MS,
            now - ABANDONED_AFTER_MS,
        )
        .await;
    let claim = match claim {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "idempotency claim failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Something went wrong on our side and nothing was changed. Please try again.",
            );
        }
    };
    match claim {
        IdempotencyClaim::Claimed => {}
        IdempotencyClaim::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = (status, axum::Json(body)).into_response();
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return resp;
        }
        IdempotencyClaim::Conflict => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_conflict",
                "this Idempotency-Key was already used for a different request; use a new key \
                 for a new request",
            );
        }
        IdempotencyClaim::InFlight => {
            let mut resp = error(
                StatusCode::CONFLICT,
                "idempotency_in_flight",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            );
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            );
            return resp;
        }
    }
    let (status, body) = work.await;
    let stored = if status.is_server_error() {
        store.release_idempotency_key(scope, key).await
    } else {
        store
            .complete_idempotency_key(scope, key, status.as_u16(), &body)
            .await
    };
    if let Err(e) = stored {
        tracing::error!(error = %e, "storing an idempotent answer failed");
    }
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_checked() {
        assert!(super::check_key("order-1234-return").is_ok());
        assert!(super::check_key("").is_err());
        assert!(super::check_key(&"k".repeat(256)).is_err());
        assert!(super::check_key(&"k".repeat(255)).is_ok());
        assert!(super::check_key("caf\u{e9}").is_err());
    }
}
