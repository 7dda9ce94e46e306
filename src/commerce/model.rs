//! The shop's data as Concierge holds it: customers, products and variants, orders with their
//! items, fulfilments and payment history, and the returns, exchanges and refunds raised on them.
//!
//! These are plain values. Importers build them, the store persists them, the search index and
//! the agent read them. Nothing here talks to a database. Money is always integer minor units
//! next to an ISO 4217 currency code; times are epoch milliseconds, `None` where the source did
//! not say (a time-window rule then does not apply).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An amount in minor units (cents for USD).
pub type Minor = i64;

/// Epoch milliseconds.
pub type Millis = i64;

/// A postal address. Fields a source does not give are empty strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    #[serde(default)]
    pub name: String,
    pub address1: String,
    #[serde(default)]
    pub address2: String,
    pub city: String,
    #[serde(default)]
    pub state: String,
    pub country: String,
    pub zip: String,
    #[serde(default)]
    pub phone: String,
}

impl Address {
    /// One line for a reply: "215 River Road, Suite 991, New York, NY 10083, USA".
    pub fn one_line(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for p in [&self.address1, &self.address2, &self.city] {
            if !p.trim().is_empty() {
                parts.push(p.trim().to_string());
            }
        }
        let state_zip = format!("{} {}", self.state.trim(), self.zip.trim());
        if !state_zip.trim().is_empty() {
            parts.push(state_zip.trim().to_string());
        }
        if !self.country.trim().is_empty() {
            parts.push(self.country.trim().to_string());
        }
        parts.join(", ")
    }
}

/// How a customer can pay: a card, PayPal, a gift card with its balance, or whatever a shop
/// system calls its gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethod {
    pub id: String,
    /// "credit_card", "paypal", "gift_card", or a gateway name.
    pub kind: String,
    pub brand: Option<String>,
    pub last_four: Option<String>,
    /// Gift cards only: the spendable balance.
    pub balance: Option<Minor>,
    pub currency: String,
}

impl PaymentMethod {
    pub fn is_gift_card(&self) -> bool {
        self.kind == "gift_card"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Stable key: the source's own id where it has a readable one ("noah_brown_6181"),
    /// else prefixed with the source ("shopify-207119551").
    pub id: String,
    /// Where the record came from: "tau", "shopify", "demo", "concierge".
    pub source: String,
    pub first_name: String,
    pub last_name: String,
    /// Primary email first. Stored lower-cased for lookups.
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    /// Default address first.
    pub addresses: Vec<Address>,
    pub payment_methods: Vec<PaymentMethod>,
    pub note: Option<String>,
    pub created_at: Option<Millis>,
    pub updated_at: Option<Millis>,
}

impl Customer {
    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
            .trim()
            .to_string()
    }
    pub fn primary_email(&self) -> Option<&str> {
        self.emails.first().map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub source: String,
    pub name: String,
    /// The shop's category ("T-Shirt", "Footwear"); capability tokens scope by it.
    pub product_type: Option<String>,
    pub vendor: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// Option names in display order ("color", "size").
    pub option_names: Vec<String>,
    pub variants: Vec<Variant>,
    pub created_at: Option<Millis>,
    pub updated_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// The purchasable item's id (τ-bench calls it item_id).
    pub id: String,
    pub product_id: String,
    pub title: Option<String>,
    pub sku: Option<String>,
    /// Option name → value, in the product's option order.
    pub options: Map<String, Value>,
    pub price: Minor,
    pub currency: String,
    pub available: bool,
    /// Units in stock when the source tracks it.
    pub stock: Option<i64>,
}

impl Variant {
    /// "blue, M, cotton" — the option values in order.
    pub fn options_text(&self) -> String {
        options_text(&self.options)
    }
}

/// "color: blue, size: M" style text for a map of options.
pub fn options_text(options: &Map<String, Value>) -> String {
    options
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}: {s}"),
            other => format!("{k}: {other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where an order is in its life. "processed" means shipped (τ-bench's word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Processed,
    Delivered,
    Cancelled,
    ReturnRequested,
    ExchangeRequested,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Pending,
        OrderStatus::Processed,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
        OrderStatus::ReturnRequested,
        OrderStatus::ExchangeRequested,
    ];

    /// The stored form, which is also τ-bench's ("return requested").
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Processed => "processed",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::ReturnRequested => "return requested",
            OrderStatus::ExchangeRequested => "exchange requested",
        }
    }

    /// Parses the stored form, the snake_case form, and "shipped" as processed.
    pub fn parse(s: &str) -> Option<OrderStatus> {
        let norm = s.trim().to_ascii_lowercase().replace('_', " ");
        Some(match norm.as_str() {
            "pending" => OrderStatus::Pending,
            "processed" | "shipped" => OrderStatus::Processed,
            "delivered" => OrderStatus::Delivered,
            "cancelled" | "canceled" => OrderStatus::Cancelled,
            "return requested" => OrderStatus::ReturnRequested,
            "exchange requested" => OrderStatus::ExchangeRequested,
            _ => return None,
        })
    }

    /// Words a shopper understands.
    pub fn describe(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending (not shipped yet)",
            OrderStatus::Processed => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::ReturnRequested => "return requested",
            OrderStatus::ExchangeRequested => "exchange requested",
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of an order. τ-bench orders list each unit as its own line (quantity 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    /// The shop system's line id when it has one (Shopify line_item id).
    pub line_id: Option<String>,
    pub variant_id: String,
    pub product_id: String,
    pub name: String,
    pub options: Map<String, Value>,
    pub sku: Option<String>,
    /// Unit price.
    pub price: Minor,
    pub quantity: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fulfillment {
    pub id: Option<String>,
    pub carrier: Option<String>,
    /// "in_transit", "delivered", "success", … as the source says.
    pub status: Option<String>,
    pub tracking_numbers: Vec<String>,
    pub tracking_urls: Vec<String>,
    /// Variant ids (or line ids) this shipment carries.
    pub item_ids: Vec<String>,
    pub shipped_at: Option<Millis>,
    pub delivered_at: Option<Millis>,
    pub estimated_at: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentKind {
    Payment,
    Refund,
}

impl PaymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Payment => "payment",
            PaymentKind::Refund => "refund",
        }
    }
    pub fn parse(s: &str) -> Option<PaymentKind> {
        match s {
            "payment" => Some(PaymentKind::Payment),
            "refund" => Some(PaymentKind::Refund),
            _ => None,
        }
    }
}

/// One entry of an order's payment history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEntry {
    pub kind: PaymentKind,
    pub amount: Minor,
    pub payment_method_id: String,
    pub created_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnRequest {
    pub id: String,
    pub order_id: String,
    pub item_ids: Vec<String>,
    pub payment_method_id: String,
    pub status: String,
    pub refund: Minor,
    pub currency: String,
    pub created_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeRequest {
    pub id: String,
    pub order_id: String,
    pub item_ids: Vec<String>,
    pub new_item_ids: Vec<String>,
    pub payment_method_id: String,
    pub status: String,
    /// New items' total minus old items' total (negative: the customer gets money back).
    pub price_difference: Minor,
    pub currency: String,
    pub created_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub order_id: String,
    pub amount: Minor,
    pub currency: String,
    pub payment_method_id: Option<String>,
    pub note: Option<String>,
    /// Line ids (or variant ids) refunded.
    pub line_ids: Vec<String>,
    pub created_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Stable key: τ-bench's "#W2611340", or "shopify-450789469".
    pub id: String,
    /// What the shopper sees and quotes: "#W2611340", "#1001".
    pub number: String,
    pub source: String,
    pub customer_id: Option<String>,
    /// The contact email on the order, when the source gives one.
    pub email: Option<String>,
    pub status: OrderStatus,
    /// τ-bench's "pending (item modified)": items may be modified once.
    pub items_modified: bool,
    pub currency: String,
    pub items: Vec<OrderItem>,
    pub shipping_address: Option<Address>,
    pub fulfillments: Vec<Fulfillment>,
    pub payments: Vec<PaymentEntry>,
    pub total: Minor,
    pub cancel_reason: Option<String>,
    pub created_at: Option<Millis>,
    pub updated_at: Option<Millis>,
    pub cancelled_at: Option<Millis>,
    /// Position in the customer's list of orders (τ-bench keeps that order).
    pub position: i64,
    pub returns: Vec<ReturnRequest>,
    pub exchanges: Vec<ExchangeRequest>,
    pub refunds: Vec<Refund>,
}

impl Order {
    /// Every tracking number across fulfilments.
    pub fn tracking_numbers(&self) -> impl Iterator<Item = &str> {
        self.fulfillments
            .iter()
            .flat_map(|f| f.tracking_numbers.iter().map(String::as_str))
    }

    /// Sum of line prices × quantities.
    pub fn items_total(&self) -> Minor {
        self.items.iter().map(|i| i.price * i.quantity).sum()
    }
}

/// Formats minor units as "1,234.56 USD"-free plain decimal: "1234.56".
pub fn format_minor(amount: Minor) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// Formats an amount for a shopper: "$1,234.56" for USD, "1,234.56 EUR" otherwise.
pub fn format_money(amount: Minor, currency: &str) -> String {
    let plain = format_minor(amount);
    let (sign, digits) = match plain.strip_prefix('-') {
        Some(rest) => ("-", rest.to_string()),
        None => ("", plain),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((&digits, "00"));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match currency {
        "USD" => format!("{sign}${grouped}.{frac}"),
        "EUR" => format!("{sign}€{grouped}.{frac}"),
        "GBP" => format!("{sign}£{grouped}.{frac}"),
        other => format!("{sign}{grouped}.{frac} {other}"),
    }
}

/// Parses a decimal amount ("12.5", "398.00", "-3") into minor units, exactly (no float
/// rounding). At most two decimals.
pub fn parse_minor(text: &str) -> Option<Minor> {
    let t = text.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > 2 {
        return None;
    }
    let whole: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let cents: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<2}").parse().ok()?
    };
    let v = whole.checked_mul(100)?.checked_add(cents)?;
    Some(if neg { -v } else { v })
}

/// Converts a JSON number that carries a decimal amount (τ-bench's `47.84`) into minor units.
/// Rejects amounts with more than two decimals.
pub fn minor_from_f64(amount: f64) -> Option<Minor> {
    if !amount.is_finite() {
        return None;
    }
    let scaled = amount * 100.0;
    let rounded = scaled.round();
    if (scaled - rounded).abs() > 1e-6 * scaled.abs().max(1.0) {
        return None;
    }
    if rounded.abs() > 9.0e15 {
        return None;
    }
    Some(rounded as i64)
}

/// The decimal value of minor units as a JSON number (for τ-bench export): 4784 → 47.84.
pub fn minor_to_f64(amount: Minor) -> f64 {
    amount as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_parses_exactly() {
        assert_eq!(parse_minor("398.00"), Some(39800));
        assert_eq!(parse_minor("12.5"), Some(1250));
        assert_eq!(parse_minor("-3"), Some(-300));
        assert_eq!(parse_minor("0.05"), Some(5));
        assert_eq!(parse_minor("1.005"), None);
        assert_eq!(parse_minor("abc"), None);
        assert_eq!(parse_minor(""), None);
        assert_eq!(minor_from_f64(47.84), Some(4784));
        assert_eq!(minor_from_f64(536.65), Some(53665));
        assert_eq!(minor_from_f64(0.125), None);
        assert_eq!(minor_to_f64(4784), 47.84);
        assert_eq!(format_money(123456, "USD"), "$1,234.56");
        assert_eq!(format_money(-5, "EUR"), "-€0.05");
        assert_eq!(format_minor(-1999), "-19.99");
    }

    #[test]
    fn status_round_trips() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("shipped"), Some(OrderStatus::Processed));
        assert_eq!(OrderStatus::parse("lost"), None);
    }
}
