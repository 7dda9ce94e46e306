//! Payments behind one [`PaymentProvider`] trait: gift cards paid from the balances in our own
//! store ([`gift_card`]) and cards through Stripe's PaymentIntents API ([`stripe`]).
//!
//! A settlement's payment step hands the provider a [`StepTx`]: the step's write transaction,
//! opened on first use. A provider whose money lives in our store (gift cards) writes in it, so
//! the debit (or the credit back) and the saga log's record of it commit together or not at
//! all; a provider across the network never opens it, so no write is held open across an HTTP
//! call. The saga then records the outcome in the same transaction and commits.

pub mod gift_card;
pub mod stripe;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::commerce::{Minor, PaymentMethod};
use crate::config::PaymentsConfig;
use crate::store::{Store, StoreResult, WriteTx};

/// What to charge: one settlement attempt's payment.
#[derive(Debug, Clone)]
pub struct Payment {
    pub deal_id: String,
    pub attempt: i64,
    pub customer_id: String,
    /// The customer's stored payment method.
    pub method: PaymentMethod,
    pub amount: Minor,
    pub currency: String,
}

impl Payment {
    /// The idempotency key of one call the payment makes (`op`: "create", "confirm", "cancel",
    /// "refund"): the same for every retry of that call of this attempt, different for every
    /// other call, deal and attempt.
    pub fn idempotency_key(&self, op: &str) -> String {
        format!("concierge-{}-{}-payment-{op}", self.deal_id, self.attempt)
    }
}

/// Money taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charged {
    /// The provider's handle on it (a PaymentIntent id; the gift card's id).
    pub reference: String,
    /// What it changed outside the order, for the audit log.
    pub effects: Value,
}

/// Why a payment was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentError {
    /// Refused (a card declined, a gift card short of balance): no money moved.
    Declined {
        code: String,
        message: String,
        reference: Option<String>,
    },
    /// The provider refused the request itself (bad request, bad key; `payment_refused`) or
    /// could not be reached at all (`payment_unavailable`): no money moved.
    Refused {
        code: &'static str,
        message: String,
        reference: Option<String>,
    },
    /// The outcome is unknown (a timeout, a 5xx, a connection lost mid-call): money may have
    /// moved, so the payment must be undone before the settlement fails.
    Uncertain {
        code: &'static str,
        message: String,
        reference: Option<String>,
    },
}

impl PaymentError {
    /// The settlement's `reason`.
    pub fn reason(&self) -> String {
        match self {
            PaymentError::Declined { code, .. } => format!("payment_declined:{code}"),
            PaymentError::Refused { code, .. } => (*code).to_string(),
            PaymentError::Uncertain { code, .. } => (*code).to_string(),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            PaymentError::Declined { message, .. }
            | PaymentError::Refused { message, .. }
            | PaymentError::Uncertain { message, .. } => message,
        }
    }

    /// The provider's handle on the attempt, when one was made.
    pub fn reference(&self) -> Option<&str> {
        match self {
            PaymentError::Declined { reference, .. }
            | PaymentError::Refused { reference, .. }
            | PaymentError::Uncertain { reference, .. } => reference.as_deref(),
        }
    }

    /// Whether money may have moved (then the payment is undone).
    pub fn may_have_moved(&self) -> bool {
        matches!(self, PaymentError::Uncertain { .. })
    }

    pub fn to_json(&self) -> Value {
        json!({"reason": self.reason(), "message": self.message(), "reference": self.reference()})
    }
}

/// How a payment was undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reversal {
    /// Authorized or attempted but never captured: cancelled (Stripe), nothing to give back.
    Voided,
    /// Taken, and given back.
    Refunded,
    /// Nothing had been taken or attempted.
    Nothing,
}

impl Reversal {
    pub fn as_str(self) -> &'static str {
        match self {
            Reversal::Voided => "voided",
            Reversal::Refunded => "refunded",
            Reversal::Nothing => "nothing_taken",
        }
    }
}

/// The step's write transaction, opened on first use (see the module docs), and the
/// settlement attempt it belongs to.
pub struct StepTx {
    store: Store,
    deal_id: String,
    attempt: i64,
    tx: Option<WriteTx>,
}

impl StepTx {
    pub fn new(store: &Store, deal_id: &str, attempt: i64) -> StepTx {
        StepTx {
            store: store.clone(),
            deal_id: deal_id.to_string(),
            attempt,
            tx: None,
        }
    }

    /// The transaction, begun now if it was not yet.
    pub async fn get(&mut self) -> StoreResult<&mut WriteTx> {
        if self.tx.is_none() {
            self.tx = Some(self.store.begin_audited_write().await?);
        }
        Ok(self.tx.as_mut().expect("just begun"))
    }

    /// Records the provider's handle on the payment (a PaymentIntent's id) for good, at once,
    /// before the call that can move money: a settlement interrupted after it can always find
    /// the payment and undo it. Err (the payment must not go on): it could not be recorded, or
    /// the settlement is no longer running forward (another run took it over).
    pub async fn note_reference(&mut self, reference: &str) -> Result<(), String> {
        match super::store::note_payment_ref(&self.store, &self.deal_id, self.attempt, reference)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "the settlement of deal {} is no longer running forward; payment {reference} is not confirmed",
                self.deal_id
            )),
            Err(e) => Err(format!(
                "payment {reference} could not be recorded ({e}); it is not confirmed"
            )),
        }
    }

    /// Whether a provider opened it (tests: remote providers must not).
    pub fn is_open(&self) -> bool {
        self.tx.is_some()
    }

    /// The transaction, to commit.
    pub async fn into_tx(mut self) -> StoreResult<WriteTx> {
        self.get().await?;
        Ok(self.tx.take().expect("just begun"))
    }
}

/// A way to take and give back money.
pub trait PaymentProvider: Send + Sync {
    /// "gift_card", "stripe".
    fn name(&self) -> &'static str;

    /// Takes the payment. Idempotent per [`Payment::idempotency_key`]: a retry after a lost
    /// answer takes nothing twice.
    fn charge<'a>(
        &'a self,
        payment: &'a Payment,
        step: &'a mut StepTx,
    ) -> BoxFuture<'a, Result<Charged, PaymentError>>;

    /// Undoes whatever [`charge`](Self::charge) did or may have done — voids what was only
    /// attempted or authorized, refunds what was taken. `reference`: the provider's handle when
    /// the charge returned one. Idempotent; an `Err` means it could not find out or could not
    /// undo it yet (the settlement retries).
    fn reverse<'a>(
        &'a self,
        payment: &'a Payment,
        reference: Option<&'a str>,
        step: &'a mut StepTx,
    ) -> BoxFuture<'a, Result<Reversal, String>>;
}

/// Which provider serves a payment method, or why none does (a 422 for the caller).
pub fn provider_for(
    config: &PaymentsConfig,
    method: &PaymentMethod,
) -> Result<Arc<dyn PaymentProvider>, String> {
    if method.is_gift_card() || method.id.starts_with("gift_card_") {
        return Ok(Arc::new(gift_card::GiftCard));
    }
    let is_card = matches!(method.kind.as_str(), "credit_card" | "card" | "debit_card")
        || method.id.starts_with("pm_")
        || method.id.starts_with("card_");
    if !is_card {
        return Err(format!(
            "payment method {} is a {}, which cannot pay for a deal here; use a gift card or a card",
            method.id,
            method.kind.replace('_', " ")
        ));
    }
    match stripe::Stripe::from_config(&config.stripe) {
        Some(s) => Ok(Arc::new(s)),
        None => Err(format!(
            "payment method {} is a card, and card payments are not configured on this store \
             ([payments.stripe] secret key); use a gift card",
            method.id
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Secret;

    fn method(id: &str, kind: &str) -> PaymentMethod {
        PaymentMethod {
            id: id.into(),
            kind: kind.into(),
            brand: None,
            last_four: None,
            balance: None,
            currency: "USD".into(),
        }
    }

    #[test]
    fn settle_providers_serve_gift_cards_and_configured_cards_only() {
        let mut c = PaymentsConfig::default();
        c.stripe.secret_key_env = "CONCIERGE_TEST_NO_SUCH_VARIABLE".into();
        let gift = provider_for(&c, &method("gift_card_1", "gift_card")).unwrap();
        assert_eq!(gift.name(), "gift_card");
        let e = provider_for(&c, &method("credit_card_1", "credit_card"))
            .err()
            .unwrap();
        assert!(e.contains("not configured"), "{e}");
        let e = provider_for(&c, &method("paypal_1", "paypal"))
            .err()
            .unwrap();
        assert!(e.contains("paypal"), "{e}");
        c.stripe.secret_key = Some(Secret::new("sk_test_x"));
        let card = provider_for(&c, &method("credit_card_1", "credit_card")).unwrap();
        assert_eq!(card.name(), "stripe");
    }

    #[test]
    fn settle_idempotency_keys_differ_per_call_deal_and_attempt() {
        let p = Payment {
            deal_id: "deal_a".into(),
            attempt: 1,
            customer_id: "c".into(),
            method: method("pm_1", "card"),
            amount: 100,
            currency: "USD".into(),
        };
        let mut q = p.clone();
        q.attempt = 2;
        assert_ne!(p.idempotency_key("create"), p.idempotency_key("confirm"));
        assert_ne!(p.idempotency_key("create"), q.idempotency_key("create"));
        assert_eq!(
            p.idempotency_key("refund"),
            p.clone().idempotency_key("refund")
        );
    }
}
