//! The API channel (`/api/v1/…`): a brand's own systems and simple integrations post shopper
//! messages and read conversations, orders and search results with a bearer API key.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::agent::Inbound;
use crate::app::AppState;
use crate::error::{ApiError, ApiJson};
use crate::inbox::{self, InboxError};
use crate::search::DocKind;
use crate::store::{AuthorKind, InboundMessage};
use crate::util::constant_time_eq;

/// Proof that the request carried the API key.
pub struct ApiKey;

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized("missing Authorization: Bearer <api key> header".into())
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization header must be `Bearer <api key>`".into())
            })?;
        if constant_time_eq(token.as_bytes(), state.api_key.expose().as_bytes()) {
            Ok(ApiKey)
        } else {
            Err(ApiError::Unauthorized("the API key is not valid".into()))
        }
    }
}

pub async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await.map_err(|e| {
        let id = crate::error::log_internal("health check: the database is unreachable", &e);
        ApiError::Unavailable(format!("the database is unreachable (request id {id})"))
    })?;
    Ok(Json(json!({ "status": "ok" })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    pub thread: String,
    #[serde(default)]
    pub from: Sender,
    pub text: String,
    #[serde(default)]
    pub message_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sender {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub verified: Option<bool>,
}

pub async fn post_message(
    State(state): State<AppState>,
    _key: ApiKey,
    ApiJson(body): ApiJson<PostMessage>,
) -> Result<Json<Value>, ApiError> {
    let email = match body.from.email.as_deref().map(str::trim) {
        Some("") | None => None,
        Some(e) if looks_like_email(e) => Some(e.to_lowercase()),
        Some(e) => {
            return Err(ApiError::Unprocessable(format!(
                "field `from.email`: {e:?} is not an email address"
            )));
        }
    };
    if body.from.verified == Some(true) && email.is_none() {
        return Err(ApiError::Unprocessable(
            "field `from.verified`: a verified sender needs `from.email`".into(),
        ));
    }
    let msg = InboundMessage {
        channel: "api".into(),
        thread_key: body.thread.trim().to_string(),
        external_id: body.message_id.clone(),
        // Only an email the caller vouches for identifies a person across threads; an
        // unverified claim must not inherit a link another conversation proved.
        sender_id: match (&email, body.from.verified) {
            (Some(e), Some(true)) => e.clone(),
            _ => format!("thread:{}", body.thread.trim()),
        },
        sender_name: body.from.name.clone().filter(|n| !n.trim().is_empty()),
        sender_email: email,
        sender_verified: body.from.verified.unwrap_or(false),
        author_kind: AuthorKind::Customer,
        subject: None,
        text: body.text.clone(),
        html: None,
        attachments: json!([]),
        meta: json!({}),
    };
    let outcome = inbox::receive(&state.store, &msg)
        .await
        .map_err(|e| match e {
            InboxError::Invalid { field, message } => {
                ApiError::Unprocessable(format!("field `{field}`: {message}"))
            }
            InboxError::Store(s) => s.into(),
        })?;
    let (reply, resolution) = if outcome.duplicate {
        // A repeated delivery gets the answer the first one got.
        match state.store.reply_to(&outcome.message_id).await? {
            Some(m) => (
                json!({"text": m.text}),
                m.meta.get("resolution").cloned().unwrap_or(Value::Null),
            ),
            None => (Value::Null, Value::Null),
        }
    } else {
        let inbound = Inbound {
            conversation_id: &outcome.conversation_id,
            message_id: &outcome.message_id,
            identity_id: Some(&outcome.identity_id),
            channel: "api",
            text: &msg.text,
            sender_email: msg.sender_email.as_deref(),
            sender_verified: msg.sender_verified,
            sender_email_is_claim: false,
            confirms_writes: true,
            identity_linkable: true,
            requester: None,
            verify_from_claims: true,
            vouched_customer: None,
        };
        let reply = crate::channels::answer(&state, &inbound)
            .await
            .map_err(|e| {
                ApiError::Internal(e.context("the brand agent failed; the message is stored"))
            })?;
        (json!({"text": reply.message.text}), reply.resolution())
    };
    Ok(Json(json!({
        "conversation_id": outcome.conversation_id,
        "message_id": outcome.message_id,
        "duplicate": outcome.duplicate,
        "reply": reply,
        "resolution": resolution,
    })))
}

fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

pub async fn get_conversation(
    State(state): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = state
        .store
        .conversation_view(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no conversation {id}")))?;
    let mut out = serde_json::to_value(&view.conversation).map_err(anyhow::Error::from)?;
    out["messages"] = serde_json::to_value(&view.messages).map_err(anyhow::Error::from)?;
    Ok(Json(out))
}

pub async fn get_order(
    State(state): State<AppState>,
    _key: ApiKey,
    Path(number): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let order = state
        .store
        .get_order_by_number(&number)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no order {number}")))?;
    Ok(Json(
        serde_json::to_value(&order).map_err(anyhow::Error::from)?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct SearchParams {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn search(
    State(state): State<AppState>,
    _key: ApiKey,
    Query(params): Query<SearchParams>,
) -> Result<Json<Value>, ApiError> {
    let q = params.q.unwrap_or_default();
    if q.trim().is_empty() {
        return Err(ApiError::bad_field("q", "must not be empty"));
    }
    let kind = match params.kind.as_deref() {
        None | Some("") => None,
        Some(k) => Some(DocKind::parse(k).ok_or_else(|| {
            ApiError::bad_field(
                "kind",
                format!("{k:?} is not one of orders, products, policies"),
            )
        })?),
    };
    let limit = params.limit.unwrap_or(10).clamp(1, 100);
    let index = state.search.clone();
    let hits = tokio::task::spawn_blocking(move || index.search(&q, kind, limit))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(anyhow::Error::from)?;
    Ok(Json(json!({ "hits": hits })))
}
