//! What the brand agent remembers about a conversation between turns (persisted as JSON on the
//! conversation): who has been verified, what they have claimed so far, and the request being
//! worked on with its filled slots and the exact action waiting for a "yes".

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::agent::tools::ToolCall;
use crate::commerce::Address;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DialogueState {
    /// The one customer this conversation is about, once proven.
    pub verified_customer: Option<String>,
    /// When it was proven (a verification older than `[verification] link_ttl_days` lapses).
    pub verified_at: Option<i64>,
    /// How it was proven: "claims", "code", "channel", "credential" or "link" (an earlier
    /// verification remembered on the sender's identity, which a new conversation reuses
    /// without renewing it).
    pub verified_by: Option<String>,
    /// The address a one-time code was emailed to in this conversation (never shown).
    pub code_email: Option<String>,
    /// Identity claims collected before verification.
    pub claimed_email: Option<String>,
    pub claimed_orders: Vec<String>,
    pub claimed_zip: Option<String>,
    pub claimed_name: Option<(String, String)>,
    /// Failed verification attempts.
    pub failed_verifications: u32,
    /// The request in progress.
    pub task: Option<Task>,
    /// Consecutive turns the agent did not understand.
    pub low_confidence_streak: u32,
    /// Turns answered so far (0 before the first reply).
    pub turns: u32,
    /// The question the last reply could not answer from the policies and offered a person
    /// for: a "yes" to the next reply hands the conversation over.
    pub offered_person: Option<String>,
    /// The order the conversation last looked at (a hand-over's draft names it).
    pub last_order: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    OrderStatus,
    Cancel,
    ChangeAddress,
    UpdateProfileAddress,
    Return,
    Exchange,
    ModifyItems,
    ChangePayment,
    RefundStatus,
    Invoice,
}

impl TaskKind {
    /// Whether the request changes something (and so needs an explicit yes).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            TaskKind::Cancel
                | TaskKind::ChangeAddress
                | TaskKind::UpdateProfileAddress
                | TaskKind::Return
                | TaskKind::Exchange
                | TaskKind::ModifyItems
                | TaskKind::ChangePayment
        )
    }

    pub fn needs_order(self) -> bool {
        self != TaskKind::UpdateProfileAddress
    }
}

/// What the agent is waiting for from the shopper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Awaiting {
    Verification,
    Order,
    Reason,
    Items,
    NewOptions,
    Address,
    Confirmation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub kind: TaskKind,
    /// Order number ("#W2611340").
    pub order: Option<String>,
    pub reason: Option<String>,
    /// Indexes into the order's items.
    pub items: Option<Vec<usize>>,
    /// Wanted options for exchanged / modified items.
    #[serde(default)]
    pub new_options: Map<String, Value>,
    pub payment_hint: Option<String>,
    pub address: Option<Address>,
    pub awaiting: Option<Awaiting>,
    /// The exact change listed to the shopper, run on "yes".
    pub pending_call: Option<ToolCall>,
    /// What the shopper said about this request so far (items and options named before
    /// verification still count).
    #[serde(default)]
    pub texts: Vec<String>,
}

impl Task {
    pub fn new(kind: TaskKind) -> Task {
        Task {
            kind,
            order: None,
            reason: None,
            items: None,
            new_options: Map::new(),
            payment_hint: None,
            address: None,
            awaiting: None,
            pending_call: None,
            texts: Vec::new(),
        }
    }
}

impl DialogueState {
    pub fn from_value(v: &Value) -> DialogueState {
        serde_json::from_value(v.clone()).unwrap_or_default()
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
