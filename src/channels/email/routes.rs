//! `POST /channels/email/inbound`: inbound-mail services (or a brand's own MTA) post a raw
//! RFC 822 message — as a `message/rfc822` body, or as the `mime` / `body-mime` field of a
//! multipart form — with `Authorization: Bearer <[email] inbound_secret>`. The message is
//! committed before the 200; the answer goes out later through the outbox.

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::header;
use axum::routing::post;
use serde_json::{Value, json};

use super::inbound::{self, EmailInError};
use crate::error::{ApiError, BodyLimit};
use crate::state::AppState;
use crate::util::constant_time_eq;

pub fn routes(max_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/channels/email/inbound", post(inbound_mail))
        .layer(DefaultBodyLimit::max(max_bytes))
        .layer(axum::Extension(BodyLimit(max_bytes)))
}

async fn inbound_mail(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let secret = state.config.email.inbound_secret.as_ref().ok_or_else(|| {
        ApiError::NotFound("the email inbound endpoint is off: set [email] inbound_secret".into())
    })?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("missing Authorization: Bearer <inbound secret>".into())
        })?;
    if !constant_time_eq(given.trim().as_bytes(), secret.expose().as_bytes()) {
        return Err(ApiError::Unauthorized(
            "the inbound secret is not valid".into(),
        ));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let limit = state.config.email.max_message_bytes;
    let raw: Vec<u8> = if content_type.starts_with("multipart/form-data") {
        let mut form =
            Multipart::from_request(req, &state)
                .await
                .map_err(|e| ApiError::BadRequest {
                    message: format!("multipart body: {e}"),
                })?;
        let mut found = None;
        while let Some(field) = form.next_field().await.map_err(|e| ApiError::BadRequest {
            message: format!("multipart body: {e}"),
        })? {
            if matches!(field.name(), Some("mime") | Some("body-mime")) {
                found = Some(field.bytes().await.map_err(|e| ApiError::BadRequest {
                    message: format!("multipart field: {e}"),
                })?);
                break;
            }
        }
        found
            .ok_or_else(|| {
                ApiError::bad_field("mime", "the form has no `mime` or `body-mime` field")
            })?
            .to_vec()
    } else {
        axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::PayloadTooLarge { limit })?
            .to_vec()
    };
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest {
            message: "the body is empty; expected a raw RFC 822 message".into(),
        });
    }
    let support = support_address(&state.config.email.from);
    let refused = |e: EmailInError| match e {
        EmailInError::Unparseable(_) | EmailInError::NoSender | EmailInError::Invalid(_) => {
            ApiError::Unprocessable(e.to_string())
        }
        EmailInError::Store(s) => s.into(),
        EmailInError::Attachment(io) => ApiError::Internal(io.into()),
    };
    let read = inbound::read(
        &state.store,
        &state.config.data_dir,
        &support,
        &state.config.email.trusted_authserv_ids,
        &raw,
    )
    .await
    .map_err(refused)?;
    let outcome = crate::inbox::receive(&state, read.intake.clone())
        .await
        .map_err(|e| refused(e.into()))?;
    Ok(Json(json!(read.receipt(&outcome))))
}

/// The bare address of the configured sender ("Shop <help@shop.example>" → "help@shop.example").
pub fn support_address(from: &str) -> String {
    match (from.rfind('<'), from.rfind('>')) {
        (Some(a), Some(b)) if b > a => from[a + 1..b].trim().to_lowercase(),
        _ => from.trim().to_lowercase(),
    }
}
