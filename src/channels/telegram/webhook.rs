//! Webhook mode: Telegram posts each update to `POST /channels/telegram/webhook` with the
//! `X-Telegram-Bot-Api-Secret-Token` header set to `[telegram] webhook_secret`. A missing or
//! wrong secret is refused (401; compared in constant time), as is every request when no secret
//! is configured. An update is stored before the 200 goes back; anything that is not a text
//! message is acknowledged and ignored, and a storage failure answers 503 so Telegram retries
//! (the inbox dedupes the retry).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use teloxide::Bot;
use teloxide::payloads::SetWebhookSetters;
use teloxide::requests::{Request, Requester};

use super::WEBHOOK_PATH;
use super::inbound::{self, Received};
use crate::error::ApiError;
use crate::state::AppState;
use crate::util::{constant_time_eq, sha256_hex};

pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

pub(super) async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let cfg = &state.config.telegram;
    if cfg.token.is_none() || cfg.mode != "webhook" {
        return Err(ApiError::NotFound(
            "the Telegram webhook is not enabled ([telegram] mode = \"webhook\")".into(),
        ));
    }
    let Some(secret) = &cfg.webhook_secret else {
        tracing::warn!("a Telegram webhook call was refused: [telegram] webhook_secret is not set");
        return Err(ApiError::Unauthorized(
            "the Telegram webhook needs [telegram] webhook_secret".into(),
        ));
    };
    let given = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // Digests first, so the comparison time does not depend on the secret's length either.
    if !constant_time_eq(
        sha256_hex(given).as_bytes(),
        sha256_hex(secret.expose().as_bytes()).as_bytes(),
    ) {
        return Err(ApiError::Unauthorized(
            "missing or wrong X-Telegram-Bot-Api-Secret-Token".into(),
        ));
    }
    let raw: Value = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
        message: format!("the body is not JSON: {e}"),
    })?;
    if !raw.is_object() {
        return Err(ApiError::BadRequest {
            message: "the body is not a Telegram update".into(),
        });
    }
    let received = inbound::receive_raw(&state, &raw).await.map_err(|e| {
        tracing::error!(error = %e, "cannot store a Telegram update");
        ApiError::Unavailable("the update could not be stored; retry later".into())
    })?;
    let update_id = raw.get("update_id").cloned().unwrap_or(Value::Null);
    Ok(Json(match received {
        Received::Stored {
            conversation_id,
            message_id,
            duplicate,
        } => json!({
            "ok": true,
            "update_id": update_id,
            "conversation_id": conversation_id,
            "message_id": message_id,
            "duplicate": duplicate,
        }),
        Received::Ignored(why) => json!({"ok": true, "update_id": update_id, "ignored": why}),
    }))
}

/// Registers `<public_url>/channels/telegram/webhook` with Telegram (setWebhook).
pub(super) async fn register(bot: Bot, public_url: String, secret: Option<String>) {
    let url = format!("{}{WEBHOOK_PATH}", public_url.trim_end_matches('/'));
    let url = match reqwest::Url::parse(&url) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(url, error = %e, "cannot register the Telegram webhook: not a URL");
            return;
        }
    };
    let mut request = bot.set_webhook(url.clone());
    if let Some(s) = secret {
        request = request.secret_token(s);
    }
    match request.send().await {
        Ok(_) => tracing::info!(url = %url, "Telegram webhook registered"),
        Err(e) => tracing::error!(url = %url, error = %e, "cannot register the Telegram webhook"),
    }
}
