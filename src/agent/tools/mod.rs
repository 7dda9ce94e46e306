//! The one tool layer: every read of shop data on a shopper's behalf and every support action
//! (cancel, change, return, exchange, escalate) goes through [`execute`], whoever calls it — the
//! offline resolver, an LLM through function calling, staff in the inbox, or a shopper's own
//! agent. It owns the disclosure gate (who may see which order), the business rules for writes
//! (the brand's [`Policy`] plus τ-bench retail's tool semantics, which the demo policy follows),
//! and the shopper-readable wording of refusals.
//!
//! It must not talk SQL (the store does, see `Store::apply_order_change`), decide how a
//! conversation goes (asking for confirmation before a write, changing a conversation's status
//! on escalation: the caller does that), or word successful replies (the caller's templates do).
//!
//! Rules that hold for every call:
//! - Order and customer reads need a verified customer (`ctx.customer_id`) and the order must be
//!   theirs; a missing order and someone else's order give the same [`ToolErrorCode::NotYourOrder`]
//!   and the same message. Staff may read and act on any order. Product reads are public.
//! - Every write runs in one transaction that re-reads the order, checks, changes it and appends
//!   an entry to the hash-chained action log. Refusals (policy, ownership, "needs approval") are
//!   logged too: staff see what was asked and why it was not done. Only argument errors caught
//!   before [`execute`] ([`parse_call`]) and database failures leave no entry.
//! - A refund above the policy's auto-approval limit from any actor but staff is refused with
//!   [`ToolErrorCode::NeedsApproval`] and nothing changes; a staff member approves it by making
//!   the same call as [`Actor::Staff`].
//! - [`ToolCall::Escalate`] only records the hand-over (reason, summary) in the log; the caller
//!   changes the conversation's status, since it knows the conversation.

mod read;
mod spec;
mod view;
mod write;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::commerce::policy::Policy;
use crate::commerce::{Address, Millis};
use crate::store::{Store, StoreError};

pub use spec::{ToolSpec, parse_call, tool_specs};

/// Who is calling a tool. Recorded with every write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    OfflineResolver,
    Llm,
    Staff { id: String },
    ConsumerAgent { id: String },
}

impl Actor {
    /// "offline_resolver", "llm", "staff", "consumer_agent".
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::OfflineResolver => "offline_resolver",
            Actor::Llm => "llm",
            Actor::Staff { .. } => "staff",
            Actor::ConsumerAgent { .. } => "consumer_agent",
        }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            Actor::Staff { id } | Actor::ConsumerAgent { id } => Some(id),
            Actor::OfflineResolver | Actor::Llm => None,
        }
    }

    pub fn is_staff(&self) -> bool {
        matches!(self, Actor::Staff { .. })
    }
}

/// Everything a call runs with.
pub struct ToolContext<'a> {
    pub store: &'a Store,
    pub policy: &'a Policy,
    pub actor: Actor,
    /// the verified customer this call acts for; None = nobody verified yet
    pub customer_id: Option<String>,
    pub now: Millis,
}

/// One tool call. Serialised as `{"action": "<name>", …arguments}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ToolCall {
    /// By email, or by first name + last name + ZIP. Returns only whether one customer matches
    /// and their id; the caller uses it to mark the customer verified.
    FindCustomer {
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        first_name: Option<String>,
        #[serde(default)]
        last_name: Option<String>,
        #[serde(default)]
        zip: Option<String>,
    },
    GetOrder {
        order_id: String,
    },
    /// The verified customer's profile (name, default address, payment methods) and orders.
    ListCustomerOrders {},
    GetProduct {
        product_id: String,
    },
    /// The product's variants matching the (partial) options, with availability, price, stock.
    CheckAvailability {
        product_id: String,
        #[serde(default)]
        options: Map<String, Value>,
    },
    /// From fulfilment dates (delivered, carrier estimate, shipped + shipping time), else the
    /// policy's handling + shipping time from the order date, else "unknown".
    DeliveryEstimate {
        order_id: String,
    },
    ReturnEligibility {
        order_id: String,
        #[serde(default)]
        item_ids: Option<Vec<String>>,
    },
    CancelOrder {
        order_id: String,
        reason: String,
    },
    ModifyOrderAddress {
        order_id: String,
        address: Address,
    },
    ModifyOrderItems {
        order_id: String,
        item_ids: Vec<String>,
        new_item_ids: Vec<String>,
        payment_method_id: String,
    },
    ModifyOrderPayment {
        order_id: String,
        payment_method_id: String,
    },
    ReturnItems {
        order_id: String,
        item_ids: Vec<String>,
        payment_method_id: String,
    },
    ExchangeItems {
        order_id: String,
        item_ids: Vec<String>,
        new_item_ids: Vec<String>,
        payment_method_id: String,
    },
    UpdateCustomerAddress {
        address: Address,
    },
    Escalate {
        reason: String,
        summary: String,
    },
}

impl ToolCall {
    /// The tool's name, as in [`tool_specs`] and the serialised `action` tag.
    pub fn name(&self) -> &'static str {
        match self {
            ToolCall::FindCustomer { .. } => "find_customer",
            ToolCall::GetOrder { .. } => "get_order",
            ToolCall::ListCustomerOrders {} => "list_customer_orders",
            ToolCall::GetProduct { .. } => "get_product",
            ToolCall::CheckAvailability { .. } => "check_availability",
            ToolCall::DeliveryEstimate { .. } => "delivery_estimate",
            ToolCall::ReturnEligibility { .. } => "return_eligibility",
            ToolCall::CancelOrder { .. } => "cancel_order",
            ToolCall::ModifyOrderAddress { .. } => "modify_order_address",
            ToolCall::ModifyOrderItems { .. } => "modify_order_items",
            ToolCall::ModifyOrderPayment { .. } => "modify_order_payment",
            ToolCall::ReturnItems { .. } => "return_items",
            ToolCall::ExchangeItems { .. } => "exchange_items",
            ToolCall::UpdateCustomerAddress { .. } => "update_customer_address",
            ToolCall::Escalate { .. } => "escalate",
        }
    }

    /// True for calls that change shop data (orders, customers): the policy's `confirm` rule
    /// applies to them. Escalate changes no shop data (it is still logged).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            ToolCall::CancelOrder { .. }
                | ToolCall::ModifyOrderAddress { .. }
                | ToolCall::ModifyOrderItems { .. }
                | ToolCall::ModifyOrderPayment { .. }
                | ToolCall::ReturnItems { .. }
                | ToolCall::ExchangeItems { .. }
                | ToolCall::UpdateCustomerAddress { .. }
        )
    }

    /// The order the call is about, as given.
    pub fn order_id(&self) -> Option<&str> {
        match self {
            ToolCall::GetOrder { order_id }
            | ToolCall::DeliveryEstimate { order_id }
            | ToolCall::ReturnEligibility { order_id, .. }
            | ToolCall::CancelOrder { order_id, .. }
            | ToolCall::ModifyOrderAddress { order_id, .. }
            | ToolCall::ModifyOrderItems { order_id, .. }
            | ToolCall::ModifyOrderPayment { order_id, .. }
            | ToolCall::ReturnItems { order_id, .. }
            | ToolCall::ExchangeItems { order_id, .. } => Some(order_id),
            ToolCall::FindCustomer { .. }
            | ToolCall::ListCustomerOrders {}
            | ToolCall::GetProduct { .. }
            | ToolCall::CheckAvailability { .. }
            | ToolCall::UpdateCustomerAddress { .. }
            | ToolCall::Escalate { .. } => None,
        }
    }

    /// The call's arguments as JSON (without the `action` tag), as logged.
    pub fn args_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("action");
        }
        v
    }
}

/// What a successful call returns.
#[derive(Debug, Clone, Serialize)]
pub struct ToolOutput {
    pub data: Value,
    /// what was done, for the API's resolution.actions (None for reads)
    pub action: Option<ActionRecord>,
}

/// One thing done, for the API's `resolution.actions`. Order lookups and availability checks
/// are reported too ("order_lookup", "availability"); customer lookups, profile and product
/// reads are not.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    /// "order_lookup" | "availability" | "order_cancelled" | "address_updated" |
    /// "items_modified" | "payment_updated" | "return_created" | "exchange_created" |
    /// "customer_address_updated" | "escalated"
    pub kind: &'static str,
    /// The order number ("#W…").
    pub order: Option<String>,
    pub details: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorCode {
    /// No such customer, product or (for staff) order.
    NotFound,
    /// The call needs a verified customer and there is none.
    NotVerified,
    /// The order is not the verified customer's — or does not exist: the same to the shopper.
    NotYourOrder,
    /// The brand's policy does not allow it (status, window, reason, destination, …).
    PolicyRefused,
    /// A malformed or inconsistent argument; the message names it.
    InvalidArgument,
    /// Allowed, but only with a staff member's approval (refund above the limit).
    NeedsApproval,
    /// Our fault (database); the message does not expose details.
    Internal,
}

impl ToolErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolErrorCode::NotFound => "not_found",
            ToolErrorCode::NotVerified => "not_verified",
            ToolErrorCode::NotYourOrder => "not_your_order",
            ToolErrorCode::PolicyRefused => "policy_refused",
            ToolErrorCode::InvalidArgument => "invalid_argument",
            ToolErrorCode::NeedsApproval => "needs_approval",
            ToolErrorCode::Internal => "internal",
        }
    }
}

/// Why a call did not happen. `message` is a sentence a shopper understands and can act on.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct ToolError {
    pub code: ToolErrorCode,
    pub message: String,
}

impl ToolError {
    pub fn new(code: ToolErrorCode, message: impl Into<String>) -> ToolError {
        ToolError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn not_verified() -> ToolError {
        ToolError::new(
            ToolErrorCode::NotVerified,
            "I need to confirm who you are first: please give the email address on your account, \
             or your first and last name and ZIP code.",
        )
    }

    /// The one answer for "no such order" and "not your order".
    pub(crate) fn not_your_order(order_ref: &str) -> ToolError {
        ToolError::new(
            ToolErrorCode::NotYourOrder,
            format!(
                "I couldn't find order {} on your account. Please check the order number.",
                view::order_label(order_ref)
            ),
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> ToolError {
        ToolError::new(ToolErrorCode::InvalidArgument, message)
    }

    pub(crate) fn refused(message: impl Into<String>) -> ToolError {
        ToolError::new(ToolErrorCode::PolicyRefused, message)
    }

    /// How the action log records this refusal.
    pub(crate) fn audit_outcome(&self) -> String {
        match self.code {
            ToolErrorCode::NeedsApproval => format!("needs approval: {}", self.message),
            code => format!("refused: {}: {}", code.as_str(), self.message),
        }
    }
}

impl From<StoreError> for ToolError {
    fn from(e: StoreError) -> ToolError {
        tracing::error!(error = %e, "tool call failed in the store");
        ToolError::new(
            ToolErrorCode::Internal,
            "Something went wrong on our side and nothing was changed. Please try again in a \
             moment.",
        )
    }
}

/// Runs one call for `ctx.actor` on behalf of `ctx.customer_id`.
pub async fn execute(ctx: &ToolContext<'_>, call: &ToolCall) -> Result<ToolOutput, ToolError> {
    match call {
        ToolCall::FindCustomer {
            email,
            first_name,
            last_name,
            zip,
        } => read::find_customer(ctx, email, first_name, last_name, zip).await,
        ToolCall::GetOrder { order_id } => read::get_order(ctx, order_id).await,
        ToolCall::ListCustomerOrders {} => read::list_customer_orders(ctx).await,
        ToolCall::GetProduct { product_id } => read::get_product(ctx, product_id).await,
        ToolCall::CheckAvailability {
            product_id,
            options,
        } => read::check_availability(ctx, product_id, options).await,
        ToolCall::DeliveryEstimate { order_id } => read::delivery_estimate(ctx, order_id).await,
        ToolCall::ReturnEligibility { order_id, item_ids } => {
            read::return_eligibility(ctx, order_id, item_ids.as_deref()).await
        }
        ToolCall::Escalate { reason, summary } => write::escalate(ctx, call, reason, summary).await,
        _ => write::execute_write(ctx, call).await,
    }
}

#[cfg(test)]
mod tests;
