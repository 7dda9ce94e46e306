//! The HTTP boundary's error: every failure a client can see, as JSON
//! `{"error": {"code", "message"}}` with the right status. Bad input is a 4xx naming what was
//! wrong; an internal failure is logged with its cause chain and the client gets a generic 500.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::store::StoreError;

/// Logs an internal failure with its cause chain under a new request id, and returns the id:
/// the client is shown the id, never the cause (database messages, paths, hosts).
pub fn log_internal(what: &str, cause: &dyn std::fmt::Display) -> String {
    let id = crate::util::new_id("req");
    tracing::error!(request_id = %id, error = %cause, "{what}");
    id
}

/// The words a client sees for an internal failure.
pub fn internal_message(request_id: &str) -> String {
    format!(
        "Something went wrong on our side and nothing was changed. Please try again in a moment \
         (request id {request_id})."
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the {limit} bytes allowed")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_field(field: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError::BadRequest {
            message: format!("field `{field}`: {message}"),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::Conflict(m),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(e) => {
                internal_message(&log_internal("request failed", &format!("{e:#}")))
            }
            other => other.to_string(),
        };
        (
            status,
            Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response()
    }
}

/// A JSON body extractor whose rejections are [`ApiError`]s: malformed JSON and wrong or
/// missing fields are a 400 naming the field's path; an oversized body is a 413.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(usize::MAX);
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(BytesRejection::FailedToBufferBody(e)) => {
                let text = e.to_string();
                return Err(if text.contains("length limit") || e.status() == 413 {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::BadRequest {
                        message: format!("could not read the request body: {text}"),
                    }
                });
            }
            Err(other) => {
                return Err(ApiError::BadRequest {
                    message: other.body_text(),
                });
            }
        };
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, naming the path of the first bad field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest {
            message: "request body is empty; expected a JSON object".into(),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest {
                message: format!("request body is not valid JSON: {inner}"),
            }
        } else if path == "." {
            ApiError::BadRequest {
                message: inner.to_string(),
            }
        } else {
            ApiError::bad_field(&path, inner)
        }
    })
}

/// The body limit in force, put in request extensions so rejections can quote it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        thread: String,
        from: From,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct From {
        verified: Option<bool>,
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<Body>(br#"{"thread": 5, "from": {}}"#).unwrap_err();
        assert!(e.to_string().contains("`thread`"), "{e}");
        let e = parse_json::<Body>(br#"{"thread": "t", "from": {"verified": "yes"}}"#).unwrap_err();
        assert!(e.to_string().contains("`from.verified`"), "{e}");
        let e = parse_json::<Body>(br#"{"thread": "t""#).unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        let e = parse_json::<Body>(br#"{"from": {}}"#).unwrap_err();
        assert!(e.to_string().contains("thread"), "{e}");
    }
}
