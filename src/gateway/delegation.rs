//! Issuing capability tokens to agents after the customer verifies (order number + email, or a
//! one-time code sent by email), plus two small trust endpoints.
//!
//! - `POST /agent/v1/delegations` (signed by the agent): `{"order_id", "email"}` — the order's
//!   email or its customer's — or `{"email", "code"}` with a code from the endpoint below; and
//!   optionally `ops`, `limit` (an amount like "100.00", at most the brand's refund
//!   auto-approval limit, which is also the default), `categories`, `expires_in` ("1h", at most
//!   7 days) and `over_limit` ("refuse" or "escalate"). Answers 201 with the token. A failed
//!   verification says only that it failed (no hint whether the order or the email was wrong).
//!   Failed order + email attempts count per agent, per claimed email (its customer) and per
//!   the order's customer under `[verification]`; a locked scope answers 429
//!   `verification_locked` with `Retry-After`, and no claim is checked until it opens.
//! - `POST /agent/v1/delegations/code` (signed): `{"email"}` — emails the customer a 6-digit
//!   code, valid 10 minutes, 5 attempts. Answers 202 whether or not the email is a customer's.
//! - `GET /agent/v1/whoami`: the verified caller (agent and grant), for debugging a signature.
//! - `GET /agent/v1/audit/head`: the action log's head and the service's signature over it, with
//!   the public key to check it (also the root key of the capability tokens).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

use super::{Caller, GatewayError, SignedRequest, authenticate, idempotency, service_key, tokens};
use crate::commerce::{Minor, format_minor, parse_minor};
use crate::state::AppState;
use crate::util::{now_ms, rfc3339};
use crate::verification::{self, CodeCheck, Limits};

pub use crate::verification::{CODE_MAX_ATTEMPTS, CODE_MAX_SENDS, CODE_TTL_MS};
/// Longest delegation an agent may ask for.
pub const MAX_DELEGATION_MS: i64 = 7 * 24 * 3600 * 1000;
/// Delegation length when the request does not say.
pub const DEFAULT_DELEGATION_MS: i64 = 3600 * 1000;

pub fn routes(_state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/agent/v1/delegations", post(delegate))
        .route("/agent/v1/delegations/code", post(send_code))
        .route("/agent/v1/whoami", get(whoami))
        .route("/agent/v1/audit/head", get(audit_head))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn gateway_error(e: &GatewayError) -> (StatusCode, Value) {
    let (status, code, message) = match e {
        GatewayError::Unauthenticated { code, message } => {
            (StatusCode::UNAUTHORIZED, *code, message.clone())
        }
        GatewayError::Forbidden { code, message } => {
            (StatusCode::FORBIDDEN, *code, message.clone())
        }
        GatewayError::Tool(t) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            t.code.as_str(),
            t.message.clone(),
        ),
        GatewayError::RateLimited(r) => {
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited", r.message())
        }
        GatewayError::Internal(detail) => {
            let id = crate::error::log_internal("delegation failed", detail);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!(
                    "Something went wrong on our side; nothing was issued. Please try again \
                     (request id {id})."
                ),
            )
        }
    };
    (status, json!({"error": {"code": code, "message": message}}))
}

fn respond((status, body): (StatusCode, Value)) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Signature realm=\"concierge-agent\""),
        );
    }
    resp
}

/// Authenticates a request that must be signed; the caller's agent.
async fn signed_agent(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Caller, GatewayError> {
    let caller = authenticate(
        state,
        &SignedRequest {
            method,
            uri,
            headers,
            body,
        },
    )
    .await?;
    if caller.agent.is_none() {
        return Err(GatewayError::Unauthenticated {
            code: "signature_required",
            message: "sign this request (RFC 9421) with a key registered with \
                      `concierge agents register`"
                .into(),
        });
    }
    Ok(caller)
}

fn parse_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, (StatusCode, Value)> {
    let bad = |m: String| {
        (
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "invalid_body", "message": m}}),
        )
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("the body must be a JSON object".into())),
        Err(e) => Err(bad(format!("the body is not valid JSON: {e}"))),
    }
}

fn str_field<'a>(
    body: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim())),
        Some(Value::String(_)) => Err(format!("{name} is empty")),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

/// What the agent asks the token to allow, bounded by the brand's policy.
struct Asked {
    ops: Vec<String>,
    limit: Option<Minor>,
    categories: Vec<String>,
    ttl_ms: i64,
    escalate: bool,
}

fn asked(state: &AppState, body: &serde_json::Map<String, Value>) -> Result<Asked, String> {
    let ops = match body.get("ops") {
        None | Some(Value::Null) => tokens::DEFAULT_OPERATIONS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "ops must be a list of operation names".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("ops must be a list of operation names".into()),
    };
    let ops = tokens::check_ops(&ops).map_err(|e| format!("ops: {e}"))?;
    let ceiling = state.policy.refunds.auto_approve_limit;
    let limit = match body.get("limit") {
        None | Some(Value::Null) => ceiling,
        Some(Value::String(s)) => {
            parse_minor(s).ok_or_else(|| format!("limit {s:?} is not an amount like 100.00"))?
        }
        Some(Value::Number(n)) => parse_minor(&n.to_string())
            .ok_or_else(|| format!("limit {n} is not an amount like 100.00"))?,
        Some(_) => return Err("limit must be an amount like \"100.00\"".into()),
    };
    if limit < 0 {
        return Err("limit must not be negative".into());
    }
    if limit > ceiling {
        return Err(format!(
            "limit {} is above {}, the most this store lets an agent refund or exchange without \
             staff approval",
            format_minor(limit),
            format_minor(ceiling)
        ));
    }
    let categories = match body.get("categories") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "categories must be a list of strings".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("categories must be a list of strings".into()),
    };
    let ttl_ms = match str_field(body, "expires_in")? {
        None => DEFAULT_DELEGATION_MS,
        Some(t) => {
            let d = tokens::parse_duration(t).map_err(|e| format!("expires_in: {e}"))?;
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        }
    };
    if ttl_ms > MAX_DELEGATION_MS {
        return Err("expires_in is longer than the 7 days a delegation may last".into());
    }
    let escalate = match str_field(body, "over_limit")? {
        None | Some("refuse") => false,
        Some("escalate") => true,
        Some(other) => {
            return Err(format!(
                "over_limit {other:?}: use \"refuse\" or \"escalate\""
            ));
        }
    };
    Ok(Asked {
        ops,
        limit: Some(limit),
        categories,
        ttl_ms,
        escalate,
    })
}

fn verification_failed() -> (StatusCode, Value) {
    (
        StatusCode::FORBIDDEN,
        json!({"error": {"code": "verification_failed", "message":
            "the customer could not be verified: check the order number and the email address \
             on the order"}}),
    )
}

/// Finds the customer an order + email pair verifies, if it does.
async fn verify_order_email(
    state: &AppState,
    order_ref: &str,
    email: &str,
) -> Result<Option<String>, GatewayError> {
    let internal = |e: crate::store::StoreError| GatewayError::Internal(e.to_string());
    let store = &state.store;
    let order = store.find_order(order_ref).await.map_err(internal)?;
    let Some(order) = order else { return Ok(None) };
    let Some(customer_id) = order.customer_id.clone() else {
        return Ok(None);
    };
    let email = email.trim().to_lowercase();
    if order.email.as_deref().map(|e| e.trim().to_lowercase()) == Some(email.clone()) {
        return Ok(Some(customer_id));
    }
    let customer = store.get_customer(&customer_id).await.map_err(internal)?;
    Ok(customer
        .filter(|c| c.emails.iter().any(|e| e.trim().to_lowercase() == email))
        .map(|c| c.id))
}

async fn delegate(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match signed_agent(&state, &method, &uri, &headers, &body).await {
        Ok(c) => c,
        Err(e) => return respond(gateway_error(&e)),
    };
    let Some(agent) = caller.agent.clone() else {
        return error(
            StatusCode::UNAUTHORIZED,
            "signature_required",
            "sign the request",
        );
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut fingerprint = b"POST /agent/v1/delegations\n".to_vec();
    fingerprint.extend_from_slice(&body);
    let mut resp = idempotency::run(&state, &agent.id, key.as_deref(), &fingerprint, async {
        match issue_delegation(&state, &agent, &body).await {
            Ok(v) => v,
            Err(e) => gateway_error(&e),
        }
    })
    .await;
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        // A lock's opening time, computed now (a replayed answer gets a fresh one).
        let secs = delegation_lock(&state, &agent.id, &body)
            .await
            .map_or(60, |l| l.retry_after_secs(now_ms()));
        if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
    }
    resp
}

/// The scopes an order + email attempt counts against: the agent, the claimed email (its
/// customer when it is one), and the order's customer.
async fn delegation_scopes(
    state: &AppState,
    limits: &Limits,
    agent_id: &str,
    order_ref: &str,
    email: &str,
) -> Result<Vec<crate::store::AttemptScope>, GatewayError> {
    let internal = |e: crate::store::StoreError| GatewayError::Internal(e.to_string());
    let mut scopes = vec![limits.agent(agent_id)];
    match state
        .store
        .find_customer_by_email(&email.trim().to_lowercase())
        .await
        .map_err(internal)?
    {
        Some(c) => scopes.push(limits.customer(&c.id)),
        None => scopes.push(limits.email(email)),
    }
    if let Some(order) = state.store.find_order(order_ref).await.map_err(internal)?
        && let Some(c) = &order.customer_id
    {
        scopes.push(limits.customer(c));
    }
    Ok(scopes)
}

/// The lock that holds for this delegation request now, if any.
async fn delegation_lock(
    state: &AppState,
    agent_id: &str,
    body: &[u8],
) -> Option<verification::Lock> {
    let body = parse_body(body).ok()?;
    let order = str_field(&body, "order_id").ok().flatten()?;
    let email = str_field(&body, "email").ok().flatten()?;
    let limits = Limits::new(state.config.verification.clone());
    let scopes = delegation_scopes(state, &limits, agent_id, order, email)
        .await
        .ok()?;
    verification::locked(&state.store, &limits, &scopes, now_ms())
        .await
        .ok()
        .flatten()
}

fn verification_locked(lock: &verification::Lock, now: i64) -> (StatusCode, Value) {
    let minutes = (lock.retry_after_secs(now) + 59) / 60;
    (
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": {"code": "verification_locked", "message": format!(
            "too many failed verifications for this agent or this customer; order + email \
             attempts are locked for {minutes} more minute(s). Ask the customer for a one-time \
             code instead (POST /agent/v1/delegations/code)"),
            "retry_after_secs": lock.retry_after_secs(now)}}),
    )
}

async fn issue_delegation(
    state: &AppState,
    agent: &super::AgentRef,
    body: &[u8],
) -> Result<(StatusCode, Value), GatewayError> {
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(e) => return Ok(e),
    };
    let bad = |m: String| {
        Ok((
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "invalid_argument", "message": m}}),
        ))
    };
    let fields = (
        str_field(&body, "order_id"),
        str_field(&body, "email"),
        str_field(&body, "code"),
    );
    let (order_id, email, code) = match fields {
        (Ok(o), Ok(e), Ok(c)) => (o, e, c),
        (Err(m), _, _) | (_, Err(m), _) | (_, _, Err(m)) => return bad(m),
    };
    let asked = match asked(state, &body) {
        Ok(a) => a,
        Err(m) => return bad(m),
    };
    let now = now_ms();
    let (customer_id, via) = match (order_id, email, code) {
        (Some(order), Some(email), None) => {
            let limits = Limits::new(state.config.verification.clone());
            let scopes = delegation_scopes(state, &limits, &agent.id, order, email).await?;
            let internal = |e: crate::store::StoreError| GatewayError::Internal(e.to_string());
            let ticket = match verification::begin(&state.store, &limits, &scopes, None, now)
                .await
                .map_err(internal)?
            {
                Ok(t) => t,
                Err(lock) => return Ok(verification_locked(&lock, now)),
            };
            let found = verify_order_email(state, order, email).await;
            let passed = matches!(found, Ok(Some(_)));
            state
                .store
                .close_verification_attempt(&ticket, passed)
                .await
                .map_err(internal)?;
            match found? {
                Some(c) => (c, "order_email"),
                None => return Ok(verification_failed()),
            }
        }
        (None, Some(email), Some(code)) => {
            match redeem_code(state, &agent.id, email, code, now).await? {
                Ok(c) => (c, "email_code"),
                Err(refusal) => return Ok(refusal),
            }
        }
        _ => {
            return bad(
                "send {\"order_id\", \"email\"} (an order and the email on it) or {\"email\", \
                 \"code\"} (a code from POST /agent/v1/delegations/code)"
                    .into(),
            );
        }
    };
    let spec = tokens::TokenSpec {
        agent_id: agent.id.clone(),
        customer_id: customer_id.clone(),
        ops: asked.ops,
        spend_limit: asked.limit,
        categories: asked.categories,
        expires_at: now + asked.ttl_ms,
        escalate_over_limit: asked.escalate,
    };
    let key = service_key(state)?;
    let (token, record) = tokens::issue(&state.store, key, &spec, via, now).await?;
    Ok((
        StatusCode::CREATED,
        json!({
            "token": token,
            "token_id": record.id,
            "customer_id": record.customer_id,
            "agent": agent.name,
            "ops": record.ops,
            "spend_limit": record.spend_limit.map(format_minor),
            "spend_limit_minor": record.spend_limit,
            "categories": record.categories,
            "over_limit": record.over_limit,
            "expires_at": rfc3339(record.expires_at),
            "public_key": base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(key.verifying_key().as_bytes()),
        }),
    ))
}

/// Checks a one-time code: the customer it was sent for, or the refusal to answer.
async fn redeem_code(
    state: &AppState,
    agent_id: &str,
    email: &str,
    code: &str,
    now: i64,
) -> Result<Result<String, (StatusCode, Value)>, GatewayError> {
    let refuse = |code: &str, message: String| {
        Err((
            StatusCode::FORBIDDEN,
            json!({"error": {"code": code, "message": message}}),
        ))
    };
    let check = verification::redeem_code(&state.store, agent_id, email, code, now)
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    Ok(match check {
        CodeCheck::Verified(customer) => Ok(customer),
        CodeCheck::NoCode => refuse(
            "code_invalid",
            "there is no valid code for this email: request one at POST /agent/v1/delegations/code"
                .into(),
        ),
        CodeCheck::AttemptsExceeded => refuse(
            "code_attempts_exceeded",
            format!(
                "this code was tried {CODE_MAX_ATTEMPTS} times; request a new one at POST \
                 /agent/v1/delegations/code"
            ),
        ),
        CodeCheck::Wrong { left } => refuse(
            "code_invalid",
            format!("the code is not right; {left} attempt(s) left"),
        ),
        CodeCheck::Used => refuse("code_invalid", "this code was already used".into()),
    })
}

async fn send_code(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match signed_agent(&state, &method, &uri, &headers, &body).await {
        Ok(c) => c,
        Err(e) => return respond(gateway_error(&e)),
    };
    let Some(agent) = caller.agent else {
        return error(
            StatusCode::UNAUTHORIZED,
            "signature_required",
            "sign the request",
        );
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return respond(e),
    };
    let email = match str_field(&body, "email") {
        Ok(Some(e)) if e.contains('@') => e.to_lowercase(),
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "email must be the customer's email address",
            );
        }
        Err(m) => return error(StatusCode::BAD_REQUEST, "invalid_argument", &m),
    };
    if state.config.email.smtp_url.is_none() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "email_unavailable",
            "this store does not send email; verify with the order number and email instead",
        );
    }
    let accepted = (
        StatusCode::ACCEPTED,
        json!({"sent": true, "expires_in_seconds": CODE_TTL_MS / 1000,
               "message": "if this email belongs to a customer, a 6-digit code is on its way"}),
    );
    let customer = match state.store.find_customer_by_email(&email).await {
        Ok(c) => c,
        Err(e) => return respond(gateway_error(&GatewayError::Internal(e.to_string()))),
    };
    let now = now_ms();
    let issued = verification::issue_code(
        &state.store,
        &agent.id,
        customer.as_ref().map(|c| c.id.as_str()),
        &email,
        None,
        now,
    )
    .await;
    let code = match issued {
        Ok(Ok(code)) => code,
        Ok(Err(verification::CodeRefused::TooMany)) => {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_codes",
                &format!(
                    "{CODE_MAX_SENDS} codes were already sent to this address in the last 10 \
                     minutes; use one of them or try again later"
                ),
            );
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("600"),
            );
            return resp;
        }
        Err(e) => return respond(gateway_error(&GatewayError::Internal(e.to_string()))),
    };
    if customer.is_none() {
        return respond(accepted);
    }
    if let Err(e) = send_code_email(&state, &email, &agent.name, &code).await {
        tracing::warn!(error = %e, "sending a delegation code failed");
        return error(
            StatusCode::BAD_GATEWAY,
            "email_failed",
            "the code could not be emailed; try again later or verify with the order number",
        );
    }
    respond(accepted)
}

/// Emails the customer their one-time code over the store's SMTP server.
async fn send_code_email(
    state: &AppState,
    to: &str,
    agent_name: &str,
    code: &str,
) -> Result<(), String> {
    use lettre::message::Mailbox;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let cfg = &state.config.email;
    let smtp = cfg.smtp_url.as_ref().ok_or("[email] smtp_url is not set")?;
    let from: Mailbox = cfg
        .from
        .parse()
        .map_err(|e| format!("[email] from {:?} is not a mailbox: {e}", cfg.from))?;
    let to: Mailbox = to
        .parse()
        .map_err(|e| format!("{to:?} is not an email address: {e}"))?;
    let text = format!(
        "Your verification code is {code}\n\n\
         The assistant \"{agent_name}\" asked to act for you with our store (look up your \
         orders, and start returns or exchanges within a spending limit). Give it this code only \
         if you asked it to. The code is valid for 10 minutes.\n\n\
         If this was not you, ignore this email; nothing happens without the code.\n"
    );
    let email = Message::builder()
        .from(from)
        .to(to)
        .subject(format!("Your verification code: {code}"))
        .body(text)
        .map_err(|e| format!("cannot build the email: {e}"))?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp.expose())
        .map_err(|e| format!("[email] smtp_url is not usable: {e}"))?
        .timeout(Some(std::time::Duration::from_secs(20)))
        .build();
    transport
        .send(email)
        .await
        .map_err(|e| format!("SMTP delivery failed: {e}"))?;
    Ok(())
}

async fn whoami(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authenticate(
        &state,
        &SignedRequest {
            method: &method,
            uri: &uri,
            headers: &headers,
            body: &body,
        },
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return respond(gateway_error(&e)),
    };
    let spent = match &caller.grant {
        Some(g) => state.store.token_spent(&g.token_id).await.unwrap_or(0),
        None => 0,
    };
    let agent = caller
        .agent
        .as_ref()
        .map(|a| json!({"id": a.id, "name": a.name, "key_id": a.key_id}));
    let grant = caller.grant.as_ref().map(|g| {
        json!({
            "token_id": g.token_id,
            "customer_id": g.customer_id,
            "ops": g.ops,
            "spend_limit_minor": g.spend_limit,
            "spent_minor": spent,
            "categories": g.categories,
            "expires_at": rfc3339(g.expires_at),
        })
    });
    (
        StatusCode::OK,
        axum::Json(json!({"agent": agent, "grant": grant})),
    )
        .into_response()
}

async fn audit_head(State(state): State<AppState>) -> Response {
    let key = match service_key(&state) {
        Ok(k) => k.verifying_key(),
        Err(e) => return respond(gateway_error(&e)),
    };
    // Signing on read too: writes made without the key (a script using the library) leave the
    // head unsigned until the service next writes or publishes it.
    let head = match state.store.sign_audit_head().await {
        Ok(h) => h,
        Err(e) => return respond(gateway_error(&GatewayError::Internal(e.to_string()))),
    };
    let message = match (head.signed_seq, &head.signed_hash) {
        (Some(s), Some(h)) => {
            Some(String::from_utf8_lossy(&crate::store::audit_head_message(s, h)).into_owned())
        }
        _ => None,
    };
    (
        StatusCode::OK,
        axum::Json(json!({
            "seq": head.seq,
            "hash": head.hash,
            "signed_seq": head.signed_seq,
            "signed_hash": head.signed_hash,
            "signature": head.signature,
            "signed_message": message,
            "signed_at": head.signed_at.map(rfc3339),
            "algorithm": "ed25519",
            "public_key": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes()),
        })),
    )
        .into_response()
}
