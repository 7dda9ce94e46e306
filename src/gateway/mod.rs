//! The consumer-agent gateway: A2A (1.0 and 0.3) JSON-RPC, MCP at `/mcp` and the native JSON API
//! under `/agent/v1/`, all over the same tools; signed agent identity (RFC 9421), Biscuit
//! capability tokens with spending limits, and idempotent writes.
//!
//! Every protocol front end does the same three things: [`authenticate`] the request (signature
//! and bearer token → [`Caller`]), run the call through [`run_tool`] (token checks, spending
//! limit, then the policy-checked tool layer as `Actor::ConsumerAgent`), and shape the answer in
//! its own dialect. Writes over HTTP go through the idempotency layer.

pub mod a2a;
pub mod a2a_tasks;
pub mod api;
pub mod calls;
pub mod delegation;
pub mod idempotency;
pub mod identity;
pub mod mcp;
pub mod negotiation;
pub mod settlement;
pub mod tokens;

use axum::Router;
use axum::http::{HeaderMap, Method, Uri};

use crate::agent::tools::{self, Actor, ToolCall, ToolContext, ToolError, ToolOutput};
use crate::commerce::{Millis, Minor};
use crate::state::AppState;

/// A registered consumer agent, as identified by the key that signed the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    pub id: String,
    pub name: String,
    pub key_id: String,
}

/// What a verified capability token lets its holder do.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The root token's revocation id: spending and revocation are tracked under it.
    pub token_id: String,
    /// The agent the token was issued to.
    pub agent_id: String,
    pub customer_id: String,
    /// Tool names allowed (narrowest of the token and its attenuations).
    pub ops: Vec<String>,
    /// Total value of refunds and exchanges allowed, in minor units; None = no limit.
    pub spend_limit: Option<Minor>,
    /// Product categories the writes may touch; empty = any.
    pub categories: Vec<String>,
    pub expires_at: Millis,
    /// Over the limit, a write is sent to staff for approval instead of being refused.
    pub escalate_over_limit: bool,
    /// The verified token, whose checks every call is authorized against.
    pub token: Option<std::sync::Arc<biscuit_auth::Biscuit>>,
}

/// Who is calling: the signing agent (None when unsigned) and the grant its token carries.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub agent: Option<AgentRef>,
    pub grant: Option<Grant>,
}

/// The parts of a request a signature covers.
pub struct SignedRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Why the gateway did not run a call. Each protocol maps these to its own error shape.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// 401: no valid signature or token; `code` says which check failed (e.g.
    /// "signature_stale", "nonce_reused", "digest_mismatch", "unknown_key", "key_revoked",
    /// "signature_required", "token_required", "token_invalid", "token_expired", "token_revoked").
    #[error("{message}")]
    Unauthenticated { code: &'static str, message: String },
    /// 403: the token does not allow this (operation, customer, category, spending limit).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// The tool layer refused or failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{0}")]
    Internal(String),
    /// 429: the agent key's request limit (`[limits] agent_key_per_minute`).
    #[error("{}", .0.message())]
    RateLimited(crate::limits::Refusal),
}

/// Tools anyone may call without a signature or token (catalogue reads).
pub const PUBLIC_TOOLS: &[&str] = &["get_product", "check_availability"];

/// The service's Ed25519 key (signs the audit head, roots the capability tokens).
pub fn service_key(state: &AppState) -> Result<&ed25519_dalek::SigningKey, GatewayError> {
    state.store.audit_signer().ok_or_else(|| {
        GatewayError::Internal("the service key is not loaded (see app::open_store)".into())
    })
}

fn unauthenticated(code: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::Unauthenticated {
        code,
        message: message.into(),
    }
}

fn forbidden(code: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::Forbidden {
        code,
        message: message.into(),
    }
}

/// The bearer token of `Authorization: Bearer <token>`, if any.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| unauthenticated("token_invalid", "the Authorization header is not ASCII"))?;
    let (scheme, token) = text.trim().split_once(' ').ok_or_else(|| {
        unauthenticated(
            "token_invalid",
            "the Authorization header must be `Bearer <capability token>`",
        )
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthenticated(
            "token_invalid",
            "the Authorization header must be `Bearer <capability token>`",
        ));
    }
    Ok(Some(token.trim().to_string()))
}

/// Checks the request's RFC 9421 signature (when present) and bearer token (when present).
/// An unsigned request yields `Caller::default()`; a signature or token that is present but
/// bad is an error. A token is only accepted in a request signed by the agent it was issued to.
pub async fn authenticate(
    state: &AppState,
    req: &SignedRequest<'_>,
) -> Result<Caller, GatewayError> {
    let now = crate::util::now_ms();
    let agent = identity::verify_request(state, req, now).await?;
    if let Some(a) = &agent {
        state
            .limits
            .agent_key(&a.key_id)
            .map_err(GatewayError::RateLimited)?;
    }
    let Some(token) = bearer(req.headers)? else {
        return Ok(Caller { agent, grant: None });
    };
    let Some(agent) = agent else {
        return Err(unauthenticated(
            "signature_required",
            "a capability token is only accepted in a request signed (RFC 9421) by the agent it \
             was issued to",
        ));
    };
    let grant = tokens::verify(&state.store, service_key(state)?, &token, now).await?;
    if grant.agent_id != agent.id {
        return Err(unauthenticated(
            "token_agent_mismatch",
            format!(
                "this capability token was issued to another agent, not to {:?}",
                agent.name
            ),
        ));
    }
    Ok(Caller {
        agent: Some(agent),
        grant: Some(grant),
    })
}

/// What a call is worth against the spending limit, and the product categories it touches.
#[derive(Debug, Default)]
struct CallWeight {
    value: Minor,
    categories: Vec<String>,
    order_id: Option<String>,
    currency: String,
}

/// Refunds and exchanges count against the limit: a return or an exchange by the price of the
/// items given back, an item change on a pending order likewise, a cancellation by the order's
/// total (all of it is refunded). Other calls are worth nothing. Categories are those of the
/// products the call changes (every item of the order for a cancellation). An order that is not
/// the customer's weighs nothing here: the tool layer refuses it.
async fn weigh(
    state: &AppState,
    grant: &Grant,
    call: &ToolCall,
) -> Result<CallWeight, GatewayError> {
    let internal = |e: crate::store::StoreError| GatewayError::Internal(e.to_string());
    let (order_ref, item_ids, new_item_ids, whole) = match call {
        ToolCall::CancelOrder { order_id, .. } => (order_id, &[][..], &[][..], true),
        ToolCall::ReturnItems {
            order_id, item_ids, ..
        } => (order_id, item_ids.as_slice(), &[][..], false),
        ToolCall::ExchangeItems {
            order_id,
            item_ids,
            new_item_ids,
            ..
        }
        | ToolCall::ModifyOrderItems {
            order_id,
            item_ids,
            new_item_ids,
            ..
        } => (
            order_id,
            item_ids.as_slice(),
            new_item_ids.as_slice(),
            false,
        ),
        _ => return Ok(CallWeight::default()),
    };
    let store = &state.store;
    let order = store.find_order(order_ref).await.map_err(internal)?;
    let Some(order) = order.filter(|o| o.customer_id.as_deref() == Some(&grant.customer_id)) else {
        return Ok(CallWeight::default());
    };
    let mut products: Vec<String> = Vec::new();
    let mut value: Minor = 0;
    if whole {
        value = order.total;
        products.extend(order.items.iter().map(|i| i.product_id.clone()));
    } else {
        let mut left: Vec<i64> = order.items.iter().map(|i| i.quantity.max(0)).collect();
        for id in item_ids {
            let id = id.trim();
            if let Some(k) = order.items.iter().enumerate().position(|(k, it)| {
                left[k] > 0 && (it.variant_id == id || it.line_id.as_deref() == Some(id))
            }) {
                left[k] -= 1;
                value += order.items[k].price;
                products.push(order.items[k].product_id.clone());
            }
        }
        for id in new_item_ids {
            if let Some(p) = store.variant_product(id.trim()).await.map_err(internal)? {
                products.push(p);
            }
        }
    }
    products.sort();
    products.dedup();
    Ok(CallWeight {
        value,
        // Compared case-insensitively: tokens hold categories lower-cased.
        categories: store
            .product_categories(&products)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|c| c.to_lowercase())
            .collect(),
        order_id: Some(order.id.clone()),
        currency: order.currency.clone(),
    })
}

/// Runs one tool call for `caller`: public reads need nothing; anything about a customer needs a
/// signed request and a grant allowing the operation, within its spending limit and categories.
///
/// The spending limit holds under concurrency: the call's value is added to the root token's
/// total first (one atomic UPDATE), the token's checks then run against that total — which
/// includes every concurrent reservation — and the reservation is kept only if the tool call
/// succeeds.
pub async fn run_tool(
    state: &AppState,
    caller: &Caller,
    call: &ToolCall,
) -> Result<ToolOutput, GatewayError> {
    let now = crate::util::now_ms();
    let op = call.name();
    if PUBLIC_TOOLS.contains(&op) {
        let ctx = ToolContext {
            store: &state.store,
            policy: &state.policy,
            actor: Actor::ConsumerAgent {
                id: caller
                    .agent
                    .as_ref()
                    .map(|a| a.id.clone())
                    .unwrap_or_else(|| "anonymous".into()),
            },
            customer_id: None,
            now,
        };
        return Ok(tools::execute(&ctx, call).await?);
    }
    let Some(agent) = &caller.agent else {
        return Err(unauthenticated(
            "signature_required",
            format!("{op} is about a customer: sign the request (RFC 9421) with a registered key"),
        ));
    };
    let Some(grant) = &caller.grant else {
        return Err(unauthenticated(
            "token_required",
            format!(
                "{op} is about a customer: present the customer's capability token as \
                 `Authorization: Bearer <token>` (get one at POST /agent/v1/delegations)"
            ),
        ));
    };
    if grant.agent_id != agent.id {
        return Err(unauthenticated(
            "token_agent_mismatch",
            "this capability token was issued to another agent",
        ));
    }
    if grant.expires_at <= now {
        return Err(unauthenticated(
            "token_expired",
            "this capability token has expired; ask the customer to delegate again",
        ));
    }
    if !grant.ops.iter().any(|o| o == op) {
        return Err(forbidden(
            "operation_not_allowed",
            format!(
                "this token does not allow {op}; it allows: {}",
                if grant.ops.is_empty() {
                    "nothing any more".to_string()
                } else {
                    grant.ops.join(", ")
                }
            ),
        ));
    }
    let token = grant
        .token
        .as_ref()
        .ok_or_else(|| GatewayError::Internal("a grant without its token".into()))?;
    let weight = weigh(state, grant, call).await?;
    let facts = |spend: Minor| tokens::CallFacts {
        operation: op,
        customer_id: &grant.customer_id,
        spend,
        categories: &weight.categories,
        now,
    };
    // Everything but the spend first, so a refusal names the right reason.
    if let Err(failed) = tokens::authorize(token, &facts(0)) {
        let code = if weight.categories.is_empty() {
            "token_forbids"
        } else {
            "category_not_allowed"
        };
        let message = if weight.categories.is_empty() {
            format!("the capability token does not allow this call ({failed})")
        } else {
            format!(
                "the capability token does not allow this call for products in {} ({failed})",
                weight.categories.join(", ")
            )
        };
        return Err(forbidden(code, message));
    }
    let ctx = ToolContext {
        store: &state.store,
        policy: &state.policy,
        actor: Actor::ConsumerAgent {
            id: agent.id.clone(),
        },
        customer_id: Some(grant.customer_id.clone()),
        now,
    };
    let internal = |e: crate::store::StoreError| GatewayError::Internal(e.to_string());
    if weight.value <= 0 {
        // Nothing is spent: the checks above (with no spending) are all that applies.
        return Ok(tools::execute(&ctx, call).await?);
    }
    let (reservation, total) = state
        .store
        .reserve_spend(
            &grant.token_id,
            weight.value,
            op,
            weight.order_id.as_deref(),
            now,
        )
        .await
        .map_err(internal)?;
    if tokens::authorize(token, &facts(total)).is_err() {
        state
            .store
            .settle_spend(&reservation, false, now)
            .await
            .map_err(internal)?;
        return Err(over_limit(state, agent, grant, call, &weight, total - weight.value).await);
    }
    let result = tools::execute(&ctx, call).await;
    // The call's outcome stands either way; a reservation that cannot be settled stays
    // counted (the safe side of the limit) and is logged for staff.
    if let Err(e) = state
        .store
        .settle_spend(&reservation, result.is_ok(), crate::util::now_ms())
        .await
    {
        tracing::error!(error = %e, reservation, "could not settle a spending reservation");
    }
    Ok(result?)
}

/// The answer to a call over the spending limit: a refusal naming what is left, or — when the
/// token says so — an escalation to staff, who can make the same call themselves.
async fn over_limit(
    state: &AppState,
    agent: &AgentRef,
    grant: &Grant,
    call: &ToolCall,
    weight: &CallWeight,
    spent_before: Minor,
) -> GatewayError {
    let money = |m: Minor| crate::commerce::format_money(m, &weight.currency);
    let left = match grant.spend_limit {
        Some(limit) => format!(
            "only {} of the {} this agent may refund or exchange for the customer is left",
            money((limit - spent_before).max(0)),
            money(limit)
        ),
        None => "the token's spending limit does not allow it".to_string(),
    };
    let what = format!("{} is worth {}", call.name(), money(weight.value));
    if !grant.escalate_over_limit {
        return forbidden("spending_limit", format!("Refused: {what}, but {left}."));
    }
    match escalate_over_limit(state, agent, grant, call, &what, &left).await {
        Ok(()) => GatewayError::Tool(ToolError::new(
            tools::ToolErrorCode::NeedsApproval,
            format!(
                "{what}, which is over this agent's spending limit ({left}); a member of the \
                 store's team has been asked to approve it and will follow up with the customer."
            ),
        )),
        Err(e) => GatewayError::Internal(format!("escalating an over-limit call: {e}")),
    }
}

async fn escalate_over_limit(
    state: &AppState,
    agent: &AgentRef,
    grant: &Grant,
    call: &ToolCall,
    what: &str,
    left: &str,
) -> Result<(), crate::store::StoreError> {
    let store = &state.store;
    let customer = store.get_customer(&grant.customer_id).await?;
    let email = customer
        .as_ref()
        .and_then(|c| c.primary_email().map(str::to_string));
    let args = serde_json::to_string(&call.args_json()).unwrap_or_default();
    let text = format!(
        "Consumer agent {:?} asked, for this customer: {} {args}. {what}, over the agent's \
         spending limit: {left}. To approve, make the same change as staff.",
        agent.name,
        call.name()
    );
    let inbound = crate::store::InboundMessage {
        channel: "agent".into(),
        thread_key: format!("{}:{}", agent.id, grant.customer_id),
        external_id: Some(crate::util::new_id("agr")),
        sender_id: agent.id.clone(),
        sender_name: Some(agent.name.clone()),
        sender_email: email,
        sender_verified: true,
        author_kind: crate::store::AuthorKind::ConsumerAgent,
        subject: Some(format!(
            "Approval needed: {} by {}",
            call.name(),
            agent.name
        )),
        text: text.clone(),
        html: None,
        attachments: serde_json::json!([]),
        meta: serde_json::json!({"agent_id": agent.id, "token_id": grant.token_id, "call": call}),
    };
    let outcome = store.ingest(&inbound).await?;
    store
        .escalate(
            &outcome.conversation_id,
            "spending_limit",
            &text,
            "The change you asked for needs a team member's approval; we will get back to you \
             shortly.",
        )
        .await?;
    Ok(())
}

pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(a2a::routes(state))
        .merge(mcp::routes(state))
        .merge(api::routes(state))
        .merge(delegation::routes(state))
        .merge(negotiation::routes())
        .merge(settlement::routes())
}
