//! Marketplace webhooks in. The signature is checked over the raw body first (refused: 401
//! saying why, nothing read or stored); then the body must be JSON (else 422). A notification
//! without a buyer's text (eBay's `MARKETPLACE_ACCOUNT_DELETION`, a status change) is
//! acknowledged with 200 and ignored — logged, not stored. A buyer message needs a buyer id,
//! thread id and message id at the configured pointers (else 422 naming the pointer); it is
//! stored in the inbox as channel `marketplace:<name>`, thread `<name>:<thread id>`, deduplicated
//! on the marketplace's message id, and the brand agent's answer is queued — all before the
//! 200, so a marketplace that retries on failure never loses a message (a storage failure is a
//! 503; the retry is recognized as a duplicate).

use axum::Json;
use axum::body::Bytes;
use axum::extract::Query;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::verify;
use crate::config::marketplace::{Marketplace, SignatureConfig};
use crate::error::ApiError;
use crate::inbox::{Answer, InboxError, Intake, Trust};
use crate::state::AppState;
use crate::store::{AuthorKind, InboundMessage};

/// What became of a verified webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Stored {
        conversation_id: String,
        message_id: String,
        duplicate: bool,
    },
    /// Acknowledged without storing; the reason.
    Ignored(String),
}

/// `POST /channels/marketplace/<name>/webhook`.
pub async fn webhook(
    state: AppState,
    m: &Marketplace,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let header = match &m.config.signature {
        SignatureConfig::HmacSha256 { header, .. } | SignatureConfig::EbayEcdsa { header, .. } => {
            header
        }
    };
    let given = headers.get(header.as_str()).map(|v| v.as_bytes());
    if let Err(why) = verify::check(m, given, &body) {
        tracing::warn!(marketplace = m.name(), reason = %why, "a marketplace webhook was refused");
        return Err(ApiError::Unauthorized(format!(
            "signature check failed: {why}"
        )));
    }
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Unprocessable(format!("the body is not JSON: {e}")))?;
    let received = receive(&state, m, &payload).await?;
    Ok(Json(match received {
        Received::Stored {
            conversation_id,
            message_id,
            duplicate,
        } => json!({
            "ok": true,
            "conversation_id": conversation_id,
            "message_id": message_id,
            "duplicate": duplicate,
        }),
        Received::Ignored(why) => json!({"ok": true, "ignored": why}),
    }))
}

/// Stores a verified payload's buyer message and queues its answer.
pub async fn receive(
    state: &AppState,
    m: &Marketplace,
    payload: &Value,
) -> Result<Received, ApiError> {
    let msg = match read_payload(m, payload)? {
        Payload::Message(msg) => *msg,
        Payload::Ignored(why) => return Ok(Received::Ignored(why)),
    };
    // Stored with its turn in one step; a duplicate gets the turn queued only when it has none.
    let intake = Intake {
        message: msg,
        trust: Trust::own_surface(),
        answer: Answer::Agent,
    };
    let outcome = crate::inbox::receive(state, intake)
        .await
        .map_err(|e| match e {
            InboxError::Invalid { field, message } => {
                ApiError::Unprocessable(format!("{field}: {message}"))
            }
            InboxError::Store(s) => {
                tracing::error!(marketplace = m.name(), error = %s, "cannot store a marketplace message");
                ApiError::Unavailable("the message could not be stored; retry later".into())
            }
        })?;
    Ok(Received::Stored {
        conversation_id: outcome.conversation_id,
        message_id: outcome.message_id,
        duplicate: outcome.duplicate,
    })
}

/// What a verified payload holds.
pub(crate) enum Payload {
    /// A buyer's message, ready for the inbox.
    Message(Box<InboundMessage>),
    /// A notification without a buyer's text; why it is ignored.
    Ignored(String),
}

/// Reads a verified payload at the marketplace's configured pointers; an error names the
/// missing or mistyped field.
pub(crate) fn read_payload(m: &Marketplace, payload: &Value) -> Result<Payload, ApiError> {
    let f = &m.config.fields;
    let text = match payload.pointer(&f.text) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::Unprocessable(format!(
                "the text at {} is not a string",
                f.text
            )));
        }
    };
    let Some(text) = text else {
        let topic = f
            .topic
            .as_deref()
            .and_then(|p| scalar(payload, p))
            .unwrap_or_else(|| "unknown".into());
        tracing::info!(
            marketplace = m.name(),
            topic,
            "a marketplace notification without a buyer message was acknowledged and ignored"
        );
        return Ok(Payload::Ignored(format!(
            "no buyer message at {} (topic {topic})",
            f.text
        )));
    };
    let required = |key: &str, pointer: &str| {
        scalar(payload, pointer)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                ApiError::Unprocessable(format!("the payload has no {key} at {pointer}"))
            })
    };
    let buyer_id = required("buyer id", &f.buyer_id)?;
    let thread_id = required("thread id", &f.thread_id)?;
    let message_id = required("message id", &f.message_id)?;
    let order = f.order.as_deref().and_then(|p| scalar(payload, p));
    let buyer_name = f.buyer_name.as_deref().and_then(|p| scalar(payload, p));
    let topic = f.topic.as_deref().and_then(|p| scalar(payload, p));

    let msg = InboundMessage {
        channel: m.channel(),
        thread_key: format!("{}:{thread_id}", m.name()),
        external_id: Some(message_id),
        sender_id: buyer_id.clone(),
        sender_name: buyer_name,
        sender_email: None,
        sender_verified: false,
        author_kind: AuthorKind::Customer,
        subject: None,
        text: text.chars().take(crate::inbox::MAX_TEXT_CHARS).collect(),
        html: None,
        attachments: Value::Array(Vec::new()),
        meta: json!({
            "marketplace": m.name(),
            "buyer_id": buyer_id,
            "thread_id": thread_id,
            "order": order,
            "topic": topic,
        }),
    };
    Ok(Payload::Message(Box::new(msg)))
}

/// A string, number or boolean at a JSON pointer, as text.
fn scalar(payload: &Value, pointer: &str) -> Option<String> {
    match payload.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct ChallengeQuery {
    challenge_code: Option<String>,
}

/// `GET /channels/marketplace/<name>/webhook?challenge_code=…` — eBay's proof that the endpoint
/// belongs to the subscriber.
pub async fn challenge(
    state: AppState,
    m: &Marketplace,
    Query(q): Query<ChallengeQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(cfg) = &m.config.challenge else {
        return Err(ApiError::NotFound(
            "this marketplace has no endpoint challenge configured".into(),
        ));
    };
    let code = q
        .challenge_code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad_field("challenge_code", "is required"))?;
    let token = std::env::var(&cfg.token_env).ok().filter(|t| !t.is_empty()).ok_or_else(|| {
        tracing::warn!(marketplace = m.name(), var = %cfg.token_env, "an endpoint challenge could not be answered: the verification token is not set");
        ApiError::Unavailable(format!("the verification token ({}) is not set", cfg.token_env))
    })?;
    let endpoint = match (&cfg.endpoint, &state.config.server.public_url) {
        (Some(e), _) => e.clone(),
        (None, Some(base)) => format!("{}{}", base.trim_end_matches('/'), m.path()),
        (None, None) => {
            return Err(ApiError::Unavailable(
                "the endpoint URL is unknown: set challenge.endpoint or [server] public_url".into(),
            ));
        }
    };
    let digest = Sha256::new()
        .chain_update(code.as_bytes())
        .chain_update(token.as_bytes())
        .chain_update(endpoint.as_bytes())
        .finalize();
    Ok(Json(json!({"challengeResponse": hex::encode(digest)})))
}
