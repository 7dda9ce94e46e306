//! The agent's offline language understanding: which of 33 intents a shopper's message expresses
//! (a compact linear model learned from the Bitext customer-support set plus our own shop-style
//! examples, shipped in the repo and loaded once), and which entities it mentions (order numbers,
//! emails, ZIP codes, tracking numbers, names, yes/no, cancel reasons, payment hints, addresses,
//! product options, products and order items).
//!
//! It only reads text: no network, no LLM, no store, no policy. What to do about an intent or an
//! entity is the agent's business, not this module's. Nothing here panics on any input text.

mod csv;
mod dataset;
mod entities;
mod features;
mod matching;
mod model;
mod request;

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

pub use dataset::{EvalReport, Example, evaluate, load_dataset, own_examples, split};
pub use entities::{AddressMention, Entities, extract};
pub use matching::{ItemChoice, match_items, match_options, match_products};
pub use model::{IntentModel, train};

/// What a shopper wants. The first 27 are the Bitext customer-support intents; the last six are
/// Concierge's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    CancelOrder,
    ChangeOrder,
    ChangeShippingAddress,
    CheckCancellationFee,
    CheckInvoice,
    CheckPaymentMethods,
    CheckRefundPolicy,
    Complaint,
    ContactCustomerService,
    ContactHumanAgent,
    CreateAccount,
    DeleteAccount,
    DeliveryOptions,
    DeliveryPeriod,
    EditAccount,
    GetInvoice,
    GetRefund,
    NewsletterSubscription,
    PaymentIssue,
    PlaceOrder,
    RecoverPassword,
    RegistrationProblems,
    Review,
    SetUpShippingAddress,
    SwitchAccount,
    TrackOrder,
    TrackRefund,
    ReturnItem,
    ExchangeItem,
    CheckAvailability,
    Greeting,
    Thanks,
    Other,
}

impl Intent {
    pub const ALL: [Intent; 33] = [
        Intent::CancelOrder,
        Intent::ChangeOrder,
        Intent::ChangeShippingAddress,
        Intent::CheckCancellationFee,
        Intent::CheckInvoice,
        Intent::CheckPaymentMethods,
        Intent::CheckRefundPolicy,
        Intent::Complaint,
        Intent::ContactCustomerService,
        Intent::ContactHumanAgent,
        Intent::CreateAccount,
        Intent::DeleteAccount,
        Intent::DeliveryOptions,
        Intent::DeliveryPeriod,
        Intent::EditAccount,
        Intent::GetInvoice,
        Intent::GetRefund,
        Intent::NewsletterSubscription,
        Intent::PaymentIssue,
        Intent::PlaceOrder,
        Intent::RecoverPassword,
        Intent::RegistrationProblems,
        Intent::Review,
        Intent::SetUpShippingAddress,
        Intent::SwitchAccount,
        Intent::TrackOrder,
        Intent::TrackRefund,
        Intent::ReturnItem,
        Intent::ExchangeItem,
        Intent::CheckAvailability,
        Intent::Greeting,
        Intent::Thanks,
        Intent::Other,
    ];

    /// The snake_case name, as in the Bitext data and the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::CancelOrder => "cancel_order",
            Intent::ChangeOrder => "change_order",
            Intent::ChangeShippingAddress => "change_shipping_address",
            Intent::CheckCancellationFee => "check_cancellation_fee",
            Intent::CheckInvoice => "check_invoice",
            Intent::CheckPaymentMethods => "check_payment_methods",
            Intent::CheckRefundPolicy => "check_refund_policy",
            Intent::Complaint => "complaint",
            Intent::ContactCustomerService => "contact_customer_service",
            Intent::ContactHumanAgent => "contact_human_agent",
            Intent::CreateAccount => "create_account",
            Intent::DeleteAccount => "delete_account",
            Intent::DeliveryOptions => "delivery_options",
            Intent::DeliveryPeriod => "delivery_period",
            Intent::EditAccount => "edit_account",
            Intent::GetInvoice => "get_invoice",
            Intent::GetRefund => "get_refund",
            Intent::NewsletterSubscription => "newsletter_subscription",
            Intent::PaymentIssue => "payment_issue",
            Intent::PlaceOrder => "place_order",
            Intent::RecoverPassword => "recover_password",
            Intent::RegistrationProblems => "registration_problems",
            Intent::Review => "review",
            Intent::SetUpShippingAddress => "set_up_shipping_address",
            Intent::SwitchAccount => "switch_account",
            Intent::TrackOrder => "track_order",
            Intent::TrackRefund => "track_refund",
            Intent::ReturnItem => "return_item",
            Intent::ExchangeItem => "exchange_item",
            Intent::CheckAvailability => "check_availability",
            Intent::Greeting => "greeting",
            Intent::Thanks => "thanks",
            Intent::Other => "other",
        }
    }

    /// Parses the snake_case name (surrounding blanks and case ignored).
    pub fn parse(s: &str) -> Option<Intent> {
        let s = s.trim().to_ascii_lowercase();
        Intent::ALL.into_iter().find(|i| i.as_str() == s)
    }

    /// Position in [`Intent::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Intent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The model's verdict on one message.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Classification {
    pub intent: Intent,
    /// The model's probability for `intent`, 0..1 (softmax with a temperature fitted on data the
    /// model was not trained on, so roughly calibrated).
    pub confidence: f32,
    /// The second most likely intent and its probability.
    pub runner_up: Option<(Intent, f32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum NluError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Data {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("intent model: {0}")]
    Model(String),
}

/// The model file shipped in the repo (regenerate with
/// `cargo test --lib agent::nlu -- --ignored regenerate`).
pub(crate) const SHIPPED_MODEL: &[u8] = include_bytes!("intent_model.txt");

/// Where the shipped model file lives in the source tree (for the regenerating test).
#[cfg(test)]
pub(crate) const SHIPPED_MODEL_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/agent/nlu/intent_model.txt"
);

/// The Bitext CSV the model is trained on, for tests.
#[cfg(test)]
pub(crate) const BITEXT_CSV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/bitext-customer-support/Bitext_Sample_Customer_Support_Training_Dataset_4514.csv"
);

/// The shipped intent model, parsed once on first use. A broken shipped file (caught by the
/// tests) degrades to a model that answers `other` for everything rather than panicking.
pub fn shipped_model() -> &'static IntentModel {
    static MODEL: OnceLock<IntentModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        IntentModel::from_bytes(SHIPPED_MODEL).unwrap_or_else(|e| {
            tracing::error!(error = %e, "shipped intent model unreadable; everything is `other`");
            IntentModel::empty()
        })
    })
}

/// Where the Bitext CSV lives under the shared data folder (`shared/data/`).
pub const BITEXT_FILE: &str =
    "bitext-customer-support/Bitext_Sample_Customer_Support_Training_Dataset_4514.csv";

/// The shipped model's report on the held-out split: what `concierge eval intents` prints.
pub fn evaluate_shipped(bitext_csv: &std::path::Path) -> Result<EvalReport, NluError> {
    let (_, held_out) = load_dataset(bitext_csv)?;
    Ok(evaluate(shipped_model(), &held_out))
}

pub use request::request_text;

/// Classifies one message with the shipped model.
pub fn classify(text: &str) -> Classification {
    shipped_model().classify(text)
}

#[cfg(test)]
mod tests;
