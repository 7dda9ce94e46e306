//! The API channel (`/api/v1/…`): a brand's own systems and simple integrations post shopper
//! messages and read conversations, orders and search results with a bearer API key. A posted
//! message is stored with its turn and answered in the same request (the turn runs here, or —
//! when another worker holds it — the request waits for its answer, up to `[server]
//! request_timeout_secs`).

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{Value, json};

use super::client_ip::ClientIp;
use crate::error::{ApiError, ApiJson};
use crate::inbox::{self, Answer, InboxError, Intake, Trust, TurnError};
use crate::search::DocKind;
use crate::state::AppState;
use crate::store::{AuthorKind, InboundMessage, Message};
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
    ClientIp(ip): ClientIp,
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
    let sender_verified = body.from.verified.unwrap_or(false);
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
        sender_email: email.clone(),
        sender_verified,
        author_kind: AuthorKind::Customer,
        subject: None,
        text: body.text.clone(),
        html: None,
        attachments: json!([]),
        meta: json!({}),
    };
    let trust = Trust {
        sender_email: email,
        sender_verified,
        ..Trust::own_surface()
    }
    .with_requester(Some(format!("ip:{ip}")));
    let intake = Intake {
        message: msg,
        trust,
        answer: Answer::Agent,
    };
    let outcome = inbox::receive(&state, intake).await.map_err(|e| match e {
        InboxError::Invalid { field, message } => {
            ApiError::Unprocessable(format!("field `{field}`: {message}"))
        }
        InboxError::Store(s) => s.into(),
    })?;
    let answered = match inbox::turn::answer_now(&state, &outcome).await {
        Ok(answer) => answer,
        // A repeated delivery gets the answer the first one got, or none.
        Err(TurnError::Failed(_)) if outcome.duplicate => None,
        Err(TurnError::Failed(e)) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the brand agent failed; the message is stored: {e}"
            )));
        }
        Err(TurnError::TimedOut) => {
            return Err(ApiError::Unavailable(
                "the answer is taking too long; the message is stored and will be answered \
                 (post it again with the same message_id to get the answer)"
                    .into(),
            ));
        }
        Err(TurnError::Store(s)) => return Err(s.into()),
    };
    let (reply, resolution) = reply_json(answered.as_ref());
    // No answer because a person has the conversation: the message waits for them.
    let waiting_for_staff =
        answered.is_none() && inbox::turn::with_staff(&state, &outcome.conversation_id).await?;
    Ok(Json(json!({
        "conversation_id": outcome.conversation_id,
        "message_id": outcome.message_id,
        "duplicate": outcome.duplicate,
        "reply": reply,
        "resolution": resolution,
        "waiting_for_staff": waiting_for_staff,
    })))
}

/// The API's `reply` and `resolution` for a message's answer (null and null without one).
fn reply_json(answer: Option<&Message>) -> (Value, Value) {
    match answer {
        Some(m) => (
            json!({"text": m.text}),
            m.meta.get("resolution").cloned().unwrap_or(Value::Null),
        ),
        None => (Value::Null, Value::Null),
    }
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
