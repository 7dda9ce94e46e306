//! The brand's machine rules (`brand/policy.toml`): which order statuses each support action
//! applies to, cancel reasons, one-time changes, return/exchange windows, refund destinations and
//! the auto-approval limit, exchange rules, shipping times and escalation settings. The file is
//! parsed and validated once; the tool layer then asks [`Policy`] before any write.
//!
//! This module decides nothing about wording (that lives in `brand/policies/*.md`) and changes no
//! data: it only answers questions about the rules. Business days skip Saturdays and Sundays and
//! are counted in UTC; public holidays are not modelled.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::model::{Millis, Minor, Order, OrderStatus, format_minor, minor_from_f64, parse_minor};

/// One day in milliseconds.
pub const DAY_MS: Millis = 86_400_000;

/// A support action the agent can take; each has an [`ActionRule`] in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    CancelOrder,
    ModifyOrderAddress,
    ModifyOrderItems,
    ModifyOrderPayment,
    ReturnItems,
    ExchangeItems,
    UpdateCustomerAddress,
    Refund,
}

impl ActionKind {
    pub const ALL: [ActionKind; 8] = [
        ActionKind::CancelOrder,
        ActionKind::ModifyOrderAddress,
        ActionKind::ModifyOrderItems,
        ActionKind::ModifyOrderPayment,
        ActionKind::ReturnItems,
        ActionKind::ExchangeItems,
        ActionKind::UpdateCustomerAddress,
        ActionKind::Refund,
    ];

    /// The key used in `policy.toml` (`cancel_order`).
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::CancelOrder => "cancel_order",
            ActionKind::ModifyOrderAddress => "modify_order_address",
            ActionKind::ModifyOrderItems => "modify_order_items",
            ActionKind::ModifyOrderPayment => "modify_order_payment",
            ActionKind::ReturnItems => "return_items",
            ActionKind::ExchangeItems => "exchange_items",
            ActionKind::UpdateCustomerAddress => "update_customer_address",
            ActionKind::Refund => "refund",
        }
    }

    pub fn parse(s: &str) -> Option<ActionKind> {
        let norm = s.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        ActionKind::ALL.into_iter().find(|a| a.as_str() == norm)
    }

    /// False for actions on the customer's profile rather than on an order.
    pub fn is_order_action(self) -> bool {
        self != ActionKind::UpdateCustomerAddress
    }
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Bad TOML, an unknown key, a missing key or a value of the wrong kind; `message` is toml's,
    /// with line and column.
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    /// Well-formed but inconsistent: `key` is the dotted path of the offending value.
    #[error("{file}: `{key}` {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// The brand's rules, as in `brand/policy.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// ISO 4217 code every amount in the file is in.
    pub currency: String,
    pub actions: Actions,
    pub refunds: RefundRules,
    pub exchange: ExchangeRules,
    pub shipping: ShippingRules,
    pub escalation: EscalationRules,
}

/// One rule per [`ActionKind`]; all must be present.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    pub cancel_order: ActionRule,
    pub modify_order_address: ActionRule,
    pub modify_order_items: ActionRule,
    pub modify_order_payment: ActionRule,
    pub return_items: ActionRule,
    pub exchange_items: ActionRule,
    pub update_customer_address: ActionRule,
    pub refund: ActionRule,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Order statuses the action applies to; empty for customer-level actions.
    #[serde(
        default,
        deserialize_with = "de_statuses",
        serialize_with = "ser_statuses"
    )]
    pub statuses: Vec<OrderStatus>,
    /// Allowed reasons (cancel_order only), lower-case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The action may be taken at most once per order.
    #[serde(default)]
    pub once: bool,
    /// Not allowed any more once the order's items have been changed.
    #[serde(default)]
    pub locked_after_item_change: bool,
    /// Calendar days after delivery during which the action is allowed (when delivery is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_days: Option<u32>,
    /// The agent must get the customer's explicit yes before acting.
    #[serde(default = "yes")]
    pub confirm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundDestination {
    OriginalPaymentMethod,
    GiftCard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DayRange {
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRules {
    pub destinations: Vec<RefundDestination>,
    /// Refunds above this need a staff member's approval.
    #[serde(deserialize_with = "de_money", serialize_with = "ser_money")]
    pub auto_approve_limit: Minor,
    /// Gift-card refunds are credited at once.
    #[serde(default = "yes")]
    pub gift_card_immediate: bool,
    /// How long card and PayPal refunds take to arrive.
    pub processing_business_days: DayRange,
}

/// Rules for swapping items: exchanges of delivered items and item changes on pending orders.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRules {
    pub same_product: bool,
    pub require_available: bool,
    pub allow_same_variant: bool,
    pub gift_card_must_cover_difference: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShippingRules {
    /// Used when an order does not say how it ships.
    pub default_method: String,
    /// Business days from order to hand-over to the carrier.
    pub handling_business_days: DayRange,
    pub methods: BTreeMap<String, ShippingMethod>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShippingMethod {
    #[serde(default)]
    pub label: String,
    pub business_days: DayRange,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationRules {
    /// Hand over to staff below this confidence (0–1).
    pub low_confidence: f64,
    /// Hand over after this many clarifying questions without progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clarifications: Option<u32>,
    /// Topics that always go to a person.
    #[serde(default)]
    pub topics: Vec<String>,
}

/// Why the policy refuses an action on an order. `Display` is a sentence for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    Disabled(ActionKind),
    NotAnOrderAction(ActionKind),
    Status {
        action: ActionKind,
        status: OrderStatus,
        allowed: Vec<OrderStatus>,
    },
    AlreadyDone(ActionKind),
    LockedAfterItemChange(ActionKind),
    OutsideWindow {
        action: ActionKind,
        days: u32,
    },
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::Disabled(a) => write!(f, "{a} is switched off by the shop's policy"),
            Denial::NotAnOrderAction(a) => write!(f, "{a} is not an action on an order"),
            Denial::Status {
                action,
                status,
                allowed,
            } => {
                let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
                write!(
                    f,
                    "{action} is only possible for orders that are {}; this order is {status}",
                    allowed.join(" or ")
                )
            }
            Denial::AlreadyDone(a) => write!(f, "{a} can only be done once per order"),
            Denial::LockedAfterItemChange(a) => write!(
                f,
                "{a} is no longer possible because this order's items were already changed"
            ),
            Denial::OutsideWindow { action, days } => write!(
                f,
                "{action} is only possible within {days} days of delivery, and that time has passed"
            ),
        }
    }
}

impl Policy {
    /// Reads and validates a policy file. Errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn from_toml_str(s: &str) -> Result<Policy, PolicyError> {
        Self::parse(s, "policy.toml")
    }

    fn parse(s: &str, file: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(s).map_err(|e| PolicyError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        policy
            .validate()
            .map_err(|(key, message)| PolicyError::Invalid {
                file: file.to_string(),
                key,
                message,
            })?;
        Ok(policy)
    }

    /// Checks what serde cannot: consistency between keys and ranges of values.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
        let c = &self.currency;
        if c.len() != 3 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
            return bad(
                "currency",
                format!("must be a three-letter ISO 4217 code like \"USD\", not {c:?}"),
            );
        }
        for action in ActionKind::ALL {
            let rule = self.rule(action);
            let key = |k: &str| format!("actions.{action}.{k}");
            if action.is_order_action() && rule.enabled && rule.statuses.is_empty() {
                return bad(
                    &key("statuses"),
                    "lists no order statuses; list some, or set enabled = false".into(),
                );
            }
            if !action.is_order_action() && !rule.statuses.is_empty() {
                return bad(
                    &key("statuses"),
                    "must be empty: this action changes the customer's profile, not an order"
                        .into(),
                );
            }
            if action == ActionKind::CancelOrder && rule.enabled && rule.reasons.is_empty() {
                return bad(&key("reasons"), "must list at least one reason".into());
            }
            if action != ActionKind::CancelOrder && !rule.reasons.is_empty() {
                return bad(
                    &key("reasons"),
                    "is only meaningful for cancel_order".into(),
                );
            }
            if rule.reasons.iter().any(|r| r.trim().is_empty()) {
                return bad(&key("reasons"), "contains an empty reason".into());
            }
            match rule.window_days {
                Some(0) => return bad(&key("window_days"), "must be at least 1".into()),
                Some(_)
                    if !matches!(
                        action,
                        ActionKind::ReturnItems | ActionKind::ExchangeItems | ActionKind::Refund
                    ) =>
                {
                    return bad(
                        &key("window_days"),
                        "only applies to return_items, exchange_items and refund".into(),
                    );
                }
                _ => {}
            }
        }
        if self.refunds.destinations.is_empty() {
            return bad("refunds.destinations", "must list at least one".into());
        }
        if self.refunds.auto_approve_limit < 0 {
            return bad("refunds.auto_approve_limit", "must not be negative".into());
        }
        check_range(
            "refunds.processing_business_days",
            self.refunds.processing_business_days,
        )?;
        check_range(
            "shipping.handling_business_days",
            self.shipping.handling_business_days,
        )?;
        if self.shipping.methods.is_empty() {
            return bad("shipping.methods", "must define at least one method".into());
        }
        for (name, m) in &self.shipping.methods {
            check_range(
                &format!("shipping.methods.{name}.business_days"),
                m.business_days,
            )?;
        }
        if self.method(&self.shipping.default_method).is_none() {
            let known: Vec<&str> = self.shipping.methods.keys().map(String::as_str).collect();
            return bad(
                "shipping.default_method",
                format!(
                    "names {:?}, which is not under [shipping.methods] (defined: {})",
                    self.shipping.default_method,
                    known.join(", ")
                ),
            );
        }
        let lc = self.escalation.low_confidence;
        if !(0.0..=1.0).contains(&lc) {
            return bad(
                "escalation.low_confidence",
                format!("must be between 0 and 1, not {lc}"),
            );
        }
        Ok(())
    }

    pub fn rule(&self, action: ActionKind) -> &ActionRule {
        let a = &self.actions;
        match action {
            ActionKind::CancelOrder => &a.cancel_order,
            ActionKind::ModifyOrderAddress => &a.modify_order_address,
            ActionKind::ModifyOrderItems => &a.modify_order_items,
            ActionKind::ModifyOrderPayment => &a.modify_order_payment,
            ActionKind::ReturnItems => &a.return_items,
            ActionKind::ExchangeItems => &a.exchange_items,
            ActionKind::UpdateCustomerAddress => &a.update_customer_address,
            ActionKind::Refund => &a.refund,
        }
    }

    /// Whether the action is enabled and applies to orders in `status`. Customer-level actions
    /// (update_customer_address) do not depend on an order: true whenever enabled.
    pub fn allows_status(&self, action: ActionKind, status: OrderStatus) -> bool {
        let rule = self.rule(action);
        rule.enabled && (!action.is_order_action() || rule.statuses.contains(&status))
    }

    /// Whether a return/exchange is still inside the window; `None` delivered date → the window
    /// does not apply → true. Actions without a window are always inside.
    pub fn within_window(
        &self,
        action: ActionKind,
        delivered_at: Option<Millis>,
        now: Millis,
    ) -> bool {
        match (self.rule(action).window_days, delivered_at) {
            (Some(days), Some(delivered)) => now - delivered <= i64::from(days) * DAY_MS,
            _ => true,
        }
    }

    /// Every order-level rule at once: enabled, status, once-only, locked after an item change,
    /// and the delivery window (from the latest fulfilment delivery date, if any).
    pub fn check_order(
        &self,
        action: ActionKind,
        order: &Order,
        now: Millis,
    ) -> Result<(), Denial> {
        let rule = self.rule(action);
        if !rule.enabled {
            return Err(Denial::Disabled(action));
        }
        if !action.is_order_action() {
            return Err(Denial::NotAnOrderAction(action));
        }
        if !rule.statuses.contains(&order.status) {
            return Err(Denial::Status {
                action,
                status: order.status,
                allowed: rule.statuses.clone(),
            });
        }
        let done = match action {
            ActionKind::ModifyOrderItems => order.items_modified,
            ActionKind::ExchangeItems => !order.exchanges.is_empty(),
            ActionKind::ReturnItems => !order.returns.is_empty(),
            ActionKind::Refund => !order.refunds.is_empty(),
            _ => false,
        };
        if rule.once && done {
            return Err(Denial::AlreadyDone(action));
        }
        if rule.locked_after_item_change && order.items_modified {
            return Err(Denial::LockedAfterItemChange(action));
        }
        let delivered = order
            .fulfillments
            .iter()
            .filter_map(|f| f.delivered_at)
            .max();
        if !self.within_window(action, delivered, now) {
            let days = rule.window_days.unwrap_or_default();
            return Err(Denial::OutsideWindow { action, days });
        }
        Ok(())
    }

    /// Whether `reason` is an allowed cancel reason (case and surrounding space ignored).
    pub fn cancel_reason_allowed(&self, reason: &str) -> bool {
        let r = reason.trim();
        self.actions
            .cancel_order
            .reasons
            .iter()
            .any(|a| a.trim().eq_ignore_ascii_case(r))
    }

    pub fn refund_destination_allowed(&self, dest: RefundDestination) -> bool {
        self.refunds.destinations.contains(&dest)
    }

    /// Refunds above the auto-approval limit need a staff member.
    pub fn refund_needs_approval(&self, amount: Minor) -> bool {
        amount > self.refunds.auto_approve_limit
    }

    /// A shipping method by name (case-insensitive).
    pub fn method(&self, name: &str) -> Option<&ShippingMethod> {
        let name = name.trim();
        self.shipping
            .methods
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, m)| m)
    }

    fn method_or_default(&self, method: Option<&str>) -> DayRange {
        method
            .and_then(|m| self.method(m))
            .or_else(|| self.method(&self.shipping.default_method))
            .map(|m| m.business_days)
            .unwrap_or(DayRange { min: 3, max: 7 })
    }

    /// Earliest and latest delivery for a parcel handed to the carrier at `from`, in business
    /// days. An unknown or missing method uses the default method.
    pub fn shipping_estimate(&self, method: Option<&str>, from: Millis) -> (Millis, Millis) {
        let d = self.method_or_default(method);
        (
            add_business_days(from, d.min),
            add_business_days(from, d.max),
        )
    }

    /// Like [`Policy::shipping_estimate`] but for an order not yet shipped: adds the handling
    /// time between the order and the hand-over to the carrier.
    pub fn delivery_estimate_from_order(
        &self,
        method: Option<&str>,
        ordered_at: Millis,
    ) -> (Millis, Millis) {
        let d = self.method_or_default(method);
        let h = self.shipping.handling_business_days;
        (
            add_business_days(ordered_at, h.min + d.min),
            add_business_days(ordered_at, h.max + d.max),
        )
    }
}

/// Monday = 0 … Sunday = 6, in UTC. 1970-01-01 was a Thursday.
pub fn weekday(t: Millis) -> u32 {
    (t.div_euclid(DAY_MS) + 3).rem_euclid(7) as u32
}

pub fn is_business_day(t: Millis) -> bool {
    weekday(t) < 5
}

/// `t` moved forward by `days` business days (Saturdays and Sundays skipped), keeping the time
/// of day. From a weekend, the first business day counted is Monday.
pub fn add_business_days(t: Millis, days: u32) -> Millis {
    let mut out = t;
    let mut left = days;
    while left > 0 {
        out += DAY_MS;
        if is_business_day(out) {
            left -= 1;
        }
    }
    out
}

fn check_range(key: &str, r: DayRange) -> Result<(), (String, String)> {
    if r.min > r.max || r.max > 90 {
        return Err((
            key.to_string(),
            format!(
                "must have min <= max <= 90, not min = {}, max = {}",
                r.min, r.max
            ),
        ));
    }
    Ok(())
}

fn yes() -> bool {
    true
}

fn de_statuses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OrderStatus>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            OrderStatus::parse(s).ok_or_else(|| {
                let known: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
                D::Error::custom(format!(
                    "unknown order status {s:?} (known: {})",
                    known.join(", ")
                ))
            })
        })
        .collect()
}

fn ser_statuses<S: Serializer>(v: &[OrderStatus], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|st| st.as_str()))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MoneyRepr {
    Int(i64),
    Float(f64),
    Text(String),
}

fn de_money<'de, D: Deserializer<'de>>(d: D) -> Result<Minor, D::Error> {
    let parsed = match MoneyRepr::deserialize(d)? {
        MoneyRepr::Int(i) => i.checked_mul(100),
        MoneyRepr::Float(f) => minor_from_f64(f),
        MoneyRepr::Text(t) => parse_minor(&t),
    };
    parsed.ok_or_else(|| {
        D::Error::custom("expected an amount with at most two decimals, like 500.00 or \"500.00\"")
    })
}

fn ser_money<S: Serializer>(v: &Minor, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_minor(*v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commerce::model::Fulfillment;

    const BRAND_POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/brand/policy.toml");

    fn brand() -> Policy {
        match Policy::load(Path::new(BRAND_POLICY)) {
            Ok(p) => p,
            Err(e) => panic!("brand policy does not load: {e}"),
        }
    }

    fn brand_text() -> String {
        std::fs::read_to_string(BRAND_POLICY).unwrap_or_default()
    }

    /// The brand file with one line replaced; panics if `from` is not in it.
    fn edited(from: &str, to: &str) -> String {
        let text = brand_text();
        assert!(text.contains(from), "brand/policy.toml has no {from:?}");
        text.replacen(from, to, 1)
    }

    fn err_text(s: &str) -> String {
        match Policy::from_toml_str(s) {
            Ok(_) => panic!("policy unexpectedly accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn brand_policy_loads() {
        let p = brand();
        assert_eq!(p.currency, "USD");
        assert_eq!(p.refunds.auto_approve_limit, 50_000);
        assert_eq!(p.rule(ActionKind::ReturnItems).window_days, Some(30));
        assert!(p.rule(ActionKind::ModifyOrderItems).once);
        assert!(p.cancel_reason_allowed("Ordered by mistake "));
        assert!(!p.cancel_reason_allowed("found it cheaper"));
        assert!(p.refund_destination_allowed(RefundDestination::GiftCard));
        assert!(p.refund_needs_approval(50_001) && !p.refund_needs_approval(50_000));
        // Serialises back to TOML that loads to the same policy.
        let back = toml::to_string(&p).map_err(|e| e.to_string());
        let again = back.and_then(|t| Policy::from_toml_str(&t).map_err(|e| e.to_string()));
        assert_eq!(again.as_ref().ok(), Some(&p), "{again:?}");
    }

    #[test]
    fn statuses_are_enforced() {
        let p = brand();
        use ActionKind::*;
        use OrderStatus::*;
        for a in [
            CancelOrder,
            ModifyOrderAddress,
            ModifyOrderItems,
            ModifyOrderPayment,
        ] {
            assert!(p.allows_status(a, Pending), "{a}");
            for s in [Processed, Delivered, Cancelled, ReturnRequested] {
                assert!(!p.allows_status(a, s), "{a} on {s}");
            }
        }
        for a in [ReturnItems, ExchangeItems] {
            assert!(p.allows_status(a, Delivered));
            assert!(!p.allows_status(a, Pending) && !p.allows_status(a, Processed));
        }
        assert!(p.allows_status(UpdateCustomerAddress, Cancelled));
        // A disabled action allows nothing.
        let off = edited(
            "[actions.return_items]\n",
            "[actions.return_items]\nenabled = false\n",
        );
        let off = Policy::from_toml_str(&off).map_err(|e| e.to_string());
        assert_eq!(
            off.map(|p| p.allows_status(ReturnItems, Delivered)),
            Ok(false)
        );
    }

    #[test]
    fn check_order_combines_rules() {
        let p = brand();
        let now = 1_750_000_000_000;
        let mut o: Order = serde_json::from_value(serde_json::json!({
            "id": "#D1", "number": "#D1", "source": "demo", "customer_id": null, "email": null,
            "status": "pending", "items_modified": false, "currency": "USD", "items": [],
            "shipping_address": null, "fulfillments": [], "payments": [], "total": 0,
            "cancel_reason": null, "created_at": null, "updated_at": null, "cancelled_at": null,
            "position": 0, "returns": [], "exchanges": [], "refunds": []
        }))
        .unwrap_or_else(|e| panic!("order json: {e}"));
        assert_eq!(p.check_order(ActionKind::CancelOrder, &o, now), Ok(()));
        o.items_modified = true;
        assert_eq!(
            p.check_order(ActionKind::ModifyOrderItems, &o, now),
            Err(Denial::AlreadyDone(ActionKind::ModifyOrderItems))
        );
        assert!(matches!(
            p.check_order(ActionKind::CancelOrder, &o, now),
            Err(Denial::LockedAfterItemChange(_))
        ));
        o.status = OrderStatus::Delivered;
        o.fulfillments.push(Fulfillment {
            delivered_at: Some(now - 31 * DAY_MS),
            ..Fulfillment::default()
        });
        let denial = p.check_order(ActionKind::ReturnItems, &o, now);
        assert!(matches!(
            denial,
            Err(Denial::OutsideWindow { days: 30, .. })
        ));
        assert!(
            denial
                .err()
                .map(|d| d.to_string())
                .unwrap_or_default()
                .contains("30 days")
        );
        o.fulfillments[0].delivered_at = Some(now - 29 * DAY_MS);
        assert_eq!(p.check_order(ActionKind::ExchangeItems, &o, now), Ok(()));
    }

    #[test]
    fn window_with_known_and_unknown_dates() {
        let p = brand();
        let now = 1_750_000_000_000;
        let r = ActionKind::ReturnItems;
        assert!(p.within_window(r, Some(now - 30 * DAY_MS), now));
        assert!(!p.within_window(r, Some(now - 30 * DAY_MS - 1), now));
        assert!(p.within_window(r, Some(now - DAY_MS), now));
        assert!(
            p.within_window(r, None, now),
            "unknown delivery date: window does not apply"
        );
        assert!(!p.within_window(ActionKind::ExchangeItems, Some(now - 45 * DAY_MS), now));
        // Actions without a window are always inside.
        assert!(p.within_window(ActionKind::CancelOrder, Some(now - 400 * DAY_MS), now));
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let e = err_text(&edited("window_days = 30", "windw_days = 30"));
        assert!(e.contains("windw_days") && e.contains("line"), "{e}");
        let e = err_text(&edited("[actions.refund]", "[actions.refunds]"));
        assert!(e.contains("refunds"), "{e}");
        let e = err_text(&edited(
            "statuses = [\"delivered\"]",
            "statuses = [\"deliverd\"]",
        ));
        assert!(
            e.contains("deliverd") && e.contains("unknown order status"),
            "{e}"
        );
        let e = err_text(&edited(
            "auto_approve_limit = 500.00",
            "auto_approve_limit = \"5x\"",
        ));
        assert!(e.contains("auto_approve_limit"), "{e}");
        let e = err_text(&edited(
            "default_method = \"standard\"",
            "default_method = \"overnight\"",
        ));
        assert!(
            e.contains("shipping.default_method") && e.contains("overnight"),
            "{e}"
        );
        let e = err_text(&edited("statuses = []", "statuses = [\"pending\"]"));
        assert!(
            e.contains("actions.update_customer_address.statuses"),
            "{e}"
        );
        let e = err_text(&edited("low_confidence = 0.55", "low_confidence = 1.5"));
        assert!(e.contains("escalation.low_confidence"), "{e}");
        let e = err_text(&edited(
            "[actions.refund]",
            "[actions.refund_x]\n[actions.refund]",
        ));
        assert!(e.contains("refund_x"), "{e}");
        match Policy::load(Path::new("/nonexistent/policy.toml")) {
            Err(PolicyError::Read { path, .. }) => assert!(path.contains("nonexistent")),
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn money_accepts_number_or_string() {
        for (v, want) in [("500.00", 50_000), ("\"499.99\"", 49_999), ("250", 25_000)] {
            let p = Policy::from_toml_str(&edited(
                "auto_approve_limit = 500.00",
                &format!("auto_approve_limit = {v}"),
            ));
            assert_eq!(
                p.map(|p| p.refunds.auto_approve_limit).ok(),
                Some(want),
                "{v}"
            );
        }
    }

    #[test]
    fn shipping_estimate_skips_weekends() {
        let p = brand();
        // 2025-01-03 15:00 UTC is a Friday.
        let friday = 1_735_916_400_000;
        assert_eq!(weekday(friday), 4);
        let (early, late) = p.shipping_estimate(Some("standard"), friday);
        assert_eq!(
            early,
            friday + 5 * DAY_MS,
            "3 business days from Friday: Wednesday"
        );
        assert_eq!(
            late,
            friday + 11 * DAY_MS,
            "7 business days from Friday: Tuesday week"
        );
        let (e, l) = p.shipping_estimate(Some("EXPRESS"), friday);
        assert_eq!((e, l), (friday + 3 * DAY_MS, friday + 5 * DAY_MS));
        assert_eq!(p.shipping_estimate(None, friday), (early, late));
        assert_eq!(p.shipping_estimate(Some("teleport"), friday), (early, late));
        // From a Saturday, one business day lands on Monday.
        assert_eq!(add_business_days(friday + DAY_MS, 1), friday + 3 * DAY_MS);
        let (e, l) = p.delivery_estimate_from_order(None, friday);
        assert_eq!(
            (e, l),
            (add_business_days(friday, 4), add_business_days(friday, 9))
        );
        for t in [early, late, e, l] {
            assert!(is_business_day(t));
        }
    }
}
