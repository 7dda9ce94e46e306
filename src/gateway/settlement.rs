//! `POST /agent/v1/deals/{id}/settle` (issue #15): pays for a negotiated deal and turns it into
//! an order, through the settlement saga (`crate::settle`).
//!
//! Signed like every gateway request (RFC 9421 over `@method`, `@target-uri` and
//! `content-digest`) by the agent that made the deal, with a capability token that is the
//! deal's own (the one it was negotiated under) or one allowing `settle` for the deal's
//! customer; `Idempotency-Key` is required and handled by the gateway's idempotency layer.
//! Answers `{"deal_id", "status": "settled" | "failed", "order_id"?, "reason"?, "steps":
//! [{"step", "status"}]}`: 201 settled, 402 the payment failed, 409 the deal expired or is
//! settled already (or is being settled, or its stock is gone), 422 a bad body.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{SignedRequest, authenticate, calls, idempotency, tokens};
use crate::settle::{self, SettleRequest};
use crate::state::AppState;

/// The operation a token other than the deal's own must allow.
pub const OPERATION: &str = "settle";

pub fn routes() -> Router<AppState> {
    Router::new().route("/agent/v1/deals/{id}/settle", post(settle_deal))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(calls::error_body(code, message))).into_response()
}

async fn settle_deal(
    State(state): State<AppState>,
    Path(deal_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signed = SignedRequest {
        method: &method,
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let caller = match authenticate(&state, &signed).await {
        Ok(c) => c,
        Err(e) => {
            let (status, code) = calls::http_error(&e);
            return error(status, code, &calls::error_message(&e));
        }
    };
    let Some(agent) = caller.agent else {
        return error(
            StatusCode::UNAUTHORIZED,
            "signature_required",
            "sign the request (RFC 9421) with the key of the agent that made the deal",
        );
    };
    let Some(grant) = caller.grant else {
        return error(
            StatusCode::UNAUTHORIZED,
            "token_required",
            "settling needs the customer's capability token — the one the deal was negotiated \
             under, or one allowing `settle` — as `Authorization: Bearer <token>`",
        );
    };
    let now = crate::util::now_ms();
    if grant.expires_at <= now {
        return error(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            "this capability token has expired; ask the customer to delegate again",
        );
    }
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "settling moves money: send an Idempotency-Key header (1 to 255 printable ASCII \
             characters); a retry with the same key gets the same outcome",
        );
    };
    let parsed = match settle::parse_body(&body) {
        Ok(b) => b,
        Err(message) => return error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", &message),
    };
    // Does the token allow `settle` (with every attenuation) for this deal's products?
    let allows_settle = grant.ops.iter().any(|o| o == OPERATION)
        && match (
            &grant.token,
            settle::saga::deal_info(&state.store, &deal_id).await,
        ) {
            (Some(token), Ok(Some(info))) => tokens::authorize(
                token,
                &tokens::CallFacts {
                    operation: OPERATION,
                    customer_id: &grant.customer_id,
                    spend: 0,
                    categories: &info.categories,
                    now,
                },
            )
            .is_ok(),
            _ => false,
        };
    // The same request again after its first answer was lost with the process that gave it
    // (a crash mid-settlement, recovered by the settle job), or after a 5xx the idempotency
    // layer did not keep: every attempt records its key and outcome, so the retry gets that
    // attempt's outcome — an earlier attempt's too, after a newer one started.
    if let Some((status, body)) = settle::replay(
        &state,
        &deal_id,
        &agent.id,
        &key,
        parsed.payment_method_id.trim(),
    )
    .await
    {
        let mut resp = (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(body),
        )
            .into_response();
        resp.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
        return resp;
    }
    let mut fingerprint = Vec::with_capacity(body.len() + 64);
    fingerprint.extend_from_slice(method.as_str().as_bytes());
    fingerprint.push(b' ');
    fingerprint.extend_from_slice(uri.path().as_bytes());
    fingerprint.push(b'\n');
    fingerprint.extend_from_slice(&body);
    let scope = agent.id.clone();
    idempotency::run(&state, &scope, Some(&key), &fingerprint, async {
        let (status, body) = settle::settle(
            &state,
            SettleRequest {
                deal_id: &deal_id,
                agent_id: &agent.id,
                token_id: &grant.token_id,
                token_customer_id: &grant.customer_id,
                token_allows_settle: allows_settle,
                idempotency_key: &key,
                body: parsed,
            },
        )
        .await;
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
    })
    .await
}

/// The OpenAPI entry of the settle call.
pub fn openapi_paths(paths: &mut serde_json::Map<String, Value>) {
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let outcome = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Settlement"}}}});
    paths.insert(
        "/agent/v1/deals/{deal_id}/settle".into(),
        json!({"post": {
            "operationId": "settle_deal",
            "summary": "Pay for a negotiated deal and turn it into an order: reserve stock, create \
                        the order at the deal's prices, take payment (a stored gift card, or a \
                        card through the store's processor), confirm, and tell the agent (a \
                        `settled` frame on its negotiation socket). Any failure undoes every \
                        completed step. Signed by the deal's agent, with the deal's token or one \
                        allowing `settle`; Idempotency-Key required.",
            "tags": ["negotiation"],
            "parameters": [
                {"name": "deal_id", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "Idempotency-Key", "in": "header", "required": true, "schema": {"type": "string", "maxLength": 255}},
            ],
            "security": [{"agentSignature": [], "capabilityToken": []}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false, "required": ["payment_method_id"],
                "properties": {
                    "payment_method_id": {"type": "string", "description": "One of the customer's stored payment methods: a gift card (gift_card_…) or a card."},
                    "address": {"type": "object", "additionalProperties": false,
                        "required": ["address1", "city", "zip", "country"],
                        "description": "Where to ship; the customer's default address when absent.",
                        "properties": {"address1": {"type": "string"}, "address2": {"type": "string"},
                            "city": {"type": "string"}, "state": {"type": "string"},
                            "zip": {"type": "string"}, "country": {"type": "string"}}},
                }}}}},
            "responses": {
                "201": outcome("Settled: a paid order at the deal's prices."),
                "402": outcome("The payment failed (declined, short of balance, the processor failed or timed out); everything was undone."),
                "409": outcome("The deal expired, is settled already or being settled, or its stock is gone."),
                "422": err("A bad body, or a payment method that is not the customer's or cannot pay."),
                "400": err("No or a bad Idempotency-Key."),
                "401": err("No valid signature or token."),
                "403": err("The token is neither the deal's nor allows settle for its customer."),
                "404": err("No such deal of this agent."),
                "500": outcome("Our failure (the order could not be stored, or the settlement was interrupted); everything was undone."),
            },
        }}),
    );
}

/// The `Settlement` schema.
pub fn openapi_schema() -> Value {
    json!({
        "type": "object",
        "required": ["deal_id", "status", "steps"],
        "properties": {
            "deal_id": {"type": "string"},
            "status": {"type": "string", "enum": ["settled", "failed"]},
            "order_id": {"type": "string"},
            "reason": {"type": "string"},
            "steps": {"type": "array", "items": {"type": "object", "properties": {
                "step": {"type": "string"}, "status": {"type": "string"}}}},
        },
    })
}
