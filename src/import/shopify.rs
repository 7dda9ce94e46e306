//! Shopify Admin REST JSON → Concierge's model: orders (line items, fulfilments, transactions,
//! refunds and the embedded customer), products and customers, plus the single bodies of the
//! `fulfillments/create` and `refunds/create` webhooks. Every parser accepts the same envelopes
//! (`{"orders":[…]}`, `{"order":{…}}`, a bare array, a bare object, NDJSON). Pure: bytes in,
//! values out; it never reads files, calls Shopify or writes the store.
//!
//! Ids are prefixed (`shopify-450789469`) for customers, products, orders and refunds; variant
//! ids are Shopify's own, unprefixed. Payment method ids are gateway labels
//! (`shopify-gateway-bogus`): Shopify does not expose stored cards.

use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Map, Value};

use super::{ImportBatch, ImportError, decode};
use crate::commerce::model::{
    Address, Customer, Fulfillment, Millis, Minor, Order, OrderItem, OrderStatus, PaymentEntry,
    PaymentKind, Product, Refund, Variant, minor_from_f64, parse_minor,
};

const SOURCE: &str = "shopify";
/// Shopify product bodies (and bodies missing `currency`) carry no currency; this is assumed.
const DEFAULT_CURRENCY: &str = "USD";

/// Parses Shopify orders; embedded customers come along (deduplicated by id).
pub fn parse_orders(file: &str, bytes: &[u8]) -> Result<ImportBatch, ImportError> {
    let mut batch = ImportBatch::default();
    for raw in parse_records::<RawOrder>(file, bytes, "order", "orders")? {
        let (order, customer) = order(raw);
        if let Some(c) = customer {
            add_customer(&mut batch.customers, c);
        }
        batch.orders.push(order);
    }
    Ok(batch)
}

/// Parses Shopify products.
pub fn parse_products(file: &str, bytes: &[u8]) -> Result<ImportBatch, ImportError> {
    let products = parse_records::<RawProduct>(file, bytes, "product", "products")?;
    Ok(ImportBatch {
        products: products.into_iter().map(product).collect(),
        ..ImportBatch::default()
    })
}

/// Parses Shopify customers (deduplicated by id, the most recently updated wins).
pub fn parse_customers(file: &str, bytes: &[u8]) -> Result<ImportBatch, ImportError> {
    let mut batch = ImportBatch::default();
    for raw in parse_records::<RawCustomer>(file, bytes, "customer", "customers")? {
        add_customer(&mut batch.customers, customer(raw));
    }
    Ok(batch)
}

/// Parses a `fulfillments/create` body: the order it belongs to (`shopify-<order_id>`) and the
/// fulfilment.
pub fn parse_fulfillment(file: &str, bytes: &[u8]) -> Result<(String, Fulfillment), ImportError> {
    let raw: RawFulfillment = parse_one(file, bytes, "fulfillment", "fulfillments")?;
    let order_id = raw.order_id.as_ref().ok_or_else(|| {
        ImportError::new(file, "missing field `order_id`")
            .at(0)
            .in_field("order_id")
    })?;
    Ok((prefixed(order_id), fulfillment(&raw)))
}

/// Parses an `orders/delete` or `products/delete` body (`{"id": 450789469}`): the id of the
/// record as stored (`shopify-450789469`). `singular`/`plural` name the record ("order").
pub fn parse_deleted(
    file: &str,
    bytes: &[u8],
    singular: &str,
    plural: &str,
) -> Result<String, ImportError> {
    #[derive(Deserialize)]
    struct RawDeleted {
        id: Id,
    }
    let raw: RawDeleted = parse_one(file, bytes, singular, plural)?;
    Ok(prefixed(&raw.id))
}

/// Parses a `refunds/create` body. Its currency is the refund transactions' (else USD).
pub fn parse_refund(file: &str, bytes: &[u8]) -> Result<Refund, ImportError> {
    let raw: RawRefund = parse_one(file, bytes, "refund", "refunds")?;
    let order_id = raw.order_id.as_ref().ok_or_else(|| {
        ImportError::new(file, "missing field `order_id`")
            .at(0)
            .in_field("order_id")
    })?;
    let currency = raw.transactions.iter().find_map(|t| t.currency.clone());
    Ok(refund(
        &raw,
        &prefixed(order_id),
        currency.as_deref().unwrap_or(DEFAULT_CURRENCY),
    ))
}

// ---------------------------------------------------------------------------------------------
// Envelopes

/// The records of a file: each top-level JSON value (one for a document, one per line for
/// NDJSON; blank lines are whitespace), unwrapped from `{"<plural>":[…]}`, `{"<singular>":{…}}`
/// or `[…]`. A record's index counts across the whole file.
fn records(
    file: &str,
    bytes: &[u8],
    singular: &str,
    plural: &str,
) -> Result<Vec<Value>, ImportError> {
    let mut out = Vec::new();
    for doc in serde_json::Deserializer::from_slice(bytes).into_iter::<Value>() {
        let doc =
            doc.map_err(|e| ImportError::new(file, format!("not valid JSON: {e}")).at(out.len()))?;
        match doc {
            Value::Array(items) => out.extend(items),
            Value::Object(mut obj)
                if !obj.contains_key("id")
                    && (obj.contains_key(plural) || obj.contains_key(singular)) =>
            {
                match (obj.remove(plural), obj.remove(singular)) {
                    (Some(Value::Array(items)), _) => out.extend(items),
                    (None, Some(one @ Value::Object(_))) => out.push(one),
                    _ => {
                        return Err(ImportError::new(
                            file,
                            format!("`{plural}` must be an array and `{singular}` an object"),
                        )
                        .at(out.len()));
                    }
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

fn parse_records<T: DeserializeOwned>(
    file: &str,
    bytes: &[u8],
    singular: &str,
    plural: &str,
) -> Result<Vec<T>, ImportError> {
    records(file, bytes, singular, plural)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| decode(file, i, v))
        .collect()
}

fn parse_one<T: DeserializeOwned>(
    file: &str,
    bytes: &[u8],
    singular: &str,
    plural: &str,
) -> Result<T, ImportError> {
    let mut all = records(file, bytes, singular, plural)?;
    if all.len() != 1 {
        return Err(ImportError::new(
            file,
            format!("expected one {singular}, found {}", all.len()),
        ));
    }
    decode(file, 0, all.remove(0))
}

// ---------------------------------------------------------------------------------------------
// Raw Shopify shapes (only the fields Concierge uses; the rest is ignored)

/// A Shopify id: a JSON number (REST) or a non-empty string.
#[derive(Debug, Clone, PartialEq)]
struct Id(String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) if n.is_u64() || n.is_i64() => Ok(Id(n.to_string())),
            Value::String(s) if !s.trim().is_empty() => Ok(Id(s.trim().to_string())),
            other => Err(D::Error::custom(format!(
                "expected an id (integer or string), found {other}"
            ))),
        }
    }
}

/// A decimal amount: Shopify's string ("398.00"), or a plain JSON number.
#[derive(Debug, Clone, Copy)]
struct Money(Minor);

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        let parsed = match Value::deserialize(d)? {
            Value::String(s) => parse_minor(&s).ok_or(format!(
                "\"{s}\" is not a decimal amount with at most two decimals (like \"398.00\")"
            )),
            Value::Number(n) => n
                .as_f64()
                .and_then(minor_from_f64)
                .ok_or(format!("{n} is not an amount with at most two decimals")),
            other => Err(format!("expected a decimal amount, found {other}")),
        };
        parsed.map(Money).map_err(D::Error::custom)
    }
}

/// An RFC 3339 time ("2008-01-10T11:00:00-05:00") as epoch ms; null or "" is `None`.
fn time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    use time::format_description::well_known::Rfc3339;
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => time::OffsetDateTime::parse(s.trim(), &Rfc3339)
            .map(|t| Some((t.unix_timestamp_nanos() / 1_000_000) as Millis))
            .map_err(|e| D::Error::custom(format!("\"{s}\" is not an RFC 3339 time: {e}"))),
    }
}

/// A list that may also be null or absent.
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Tags: Shopify REST's comma-separated string, or an array of strings.
fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let all: Vec<String> = match Value::deserialize(d)? {
        Value::Null => Vec::new(),
        Value::String(s) => s.split(',').map(str::to_string).collect(),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!("expected a tag, found {other}"))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(D::Error::custom(format!("expected tags, found {other}"))),
    };
    Ok(all
        .into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect())
}

#[derive(Deserialize)]
struct RawOrder {
    id: Id,
    name: Option<String>,
    order_number: Option<i64>,
    email: Option<String>,
    contact_email: Option<String>,
    currency: Option<String>,
    total_price: Option<Money>,
    #[serde(default, deserialize_with = "time")]
    created_at: Option<Millis>,
    #[serde(default, deserialize_with = "time")]
    updated_at: Option<Millis>,
    #[serde(default, deserialize_with = "time")]
    processed_at: Option<Millis>,
    #[serde(default, deserialize_with = "time")]
    cancelled_at: Option<Millis>,
    cancel_reason: Option<String>,
    fulfillment_status: Option<String>,
    gateway: Option<String>,
    #[serde(default, deserialize_with = "list")]
    payment_gateway_names: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    line_items: Vec<RawLineItem>,
    shipping_address: Option<RawAddress>,
    #[serde(default, deserialize_with = "list")]
    fulfillments: Vec<RawFulfillment>,
    /// Present only in some exports; when it is, it is the whole payment history.
    transactions: Option<Vec<RawTransaction>>,
    #[serde(default, deserialize_with = "list")]
    refunds: Vec<RawRefund>,
    customer: Option<RawCustomer>,
}

#[derive(Deserialize)]
struct RawLineItem {
    id: Option<Id>,
    variant_id: Option<Id>,
    product_id: Option<Id>,
    title: Option<String>,
    name: Option<String>,
    variant_title: Option<String>,
    sku: Option<String>,
    price: Money,
    #[serde(default = "one")]
    quantity: i64,
    #[serde(default, deserialize_with = "list")]
    properties: Vec<RawProperty>,
}

fn one() -> i64 {
    1
}

#[derive(Deserialize)]
struct RawProperty {
    name: String,
    #[serde(default)]
    value: Value,
}

/// A line item as fulfilments and refunds reference it.
#[derive(Deserialize)]
struct RawLineRef {
    id: Option<Id>,
    variant_id: Option<Id>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAddress {
    id: Option<Id>,
    name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    address1: Option<String>,
    address2: Option<String>,
    city: Option<String>,
    province: Option<String>,
    province_code: Option<String>,
    country: Option<String>,
    country_code: Option<String>,
    zip: Option<String>,
    phone: Option<String>,
}

#[derive(Deserialize)]
struct RawFulfillment {
    id: Option<Id>,
    order_id: Option<Id>,
    status: Option<String>,
    shipment_status: Option<String>,
    tracking_company: Option<String>,
    tracking_number: Option<String>,
    #[serde(default, deserialize_with = "list")]
    tracking_numbers: Vec<String>,
    tracking_url: Option<String>,
    #[serde(default, deserialize_with = "list")]
    tracking_urls: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    line_items: Vec<RawLineRef>,
    #[serde(default, deserialize_with = "time")]
    created_at: Option<Millis>,
    #[serde(default, deserialize_with = "time")]
    updated_at: Option<Millis>,
}

#[derive(Deserialize)]
struct RawTransaction {
    kind: Option<String>,
    status: Option<String>,
    amount: Money,
    gateway: Option<String>,
    currency: Option<String>,
    #[serde(default, deserialize_with = "time")]
    processed_at: Option<Millis>,
    #[serde(default, deserialize_with = "time")]
    created_at: Option<Millis>,
}

#[derive(Deserialize)]
struct RawRefund {
    id: Id,
    order_id: Option<Id>,
    note: Option<String>,
    #[serde(default, deserialize_with = "time")]
    created_at: Option<Millis>,
    #[serde(default, deserialize_with = "list")]
    refund_line_items: Vec<RawRefundLine>,
    #[serde(default, deserialize_with = "list")]
    transactions: Vec<RawTransaction>,
}

#[derive(Deserialize)]
struct RawRefundLine {
    line_item_id: Option<Id>,
    line_item: Option<RawLineRef>,
}

#[derive(Deserialize)]
struct RawCustomer {
    id: Id,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    phone: Option<String>,
    note: Option<String>,
    #[serde(default, deserialize_with = "time")]
    created_at: Option<Millis>,
    #[serde(default, deserialize_with = "time")]
    updated_at: Option<Millis>,
    default_address: Option<RawAddress>,
    #[serde(default, deserialize_with = "list")]
    addresses: Vec<RawAddress>,
}

#[derive(Deserialize)]
struct RawProduct {
    id: Id,
    title: String,
    body_html: Option<String>,
    vendor: Option<String>,
    product_type: Option<String>,
    #[serde(default, deserialize_with = "tags")]
    tags: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    options: Vec<RawOption>,
    #[serde(default, deserialize_with = "list")]
    variants: Vec<RawVariant>,
    #[serde(default, deserialize_with = "time")]
    created_at: Option<Millis>,
    #[serde(default, deserialize_with = "time")]
    updated_at: Option<Millis>,
}

#[derive(Deserialize)]
struct RawOption {
    name: String,
}

#[derive(Deserialize)]
struct RawVariant {
    id: Id,
    title: Option<String>,
    sku: Option<String>,
    price: Money,
    option1: Option<String>,
    option2: Option<String>,
    option3: Option<String>,
    inventory_quantity: Option<i64>,
    inventory_policy: Option<String>,
    inventory_management: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Mapping

fn prefixed(id: &Id) -> String {
    format!("shopify-{}", id.0)
}

fn gateway_id(gateway: &str) -> String {
    format!("shopify-gateway-{}", gateway.trim())
}

/// Some(trimmed) unless null or blank.
fn text(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The id an order item (and the fulfilments carrying it) is known by: its variant id, or
/// `line-<line id>` for a custom line without a variant.
fn item_key(variant_id: &Option<Id>, line_id: &Option<Id>) -> String {
    match (variant_id, line_id) {
        (Some(v), _) => v.0.clone(),
        (None, Some(l)) => format!("line-{}", l.0),
        (None, None) => "line-unknown".to_string(),
    }
}

/// Converts one order; its embedded customer, if any, is returned alongside.
fn order(raw: RawOrder) -> (Order, Option<Customer>) {
    let id = prefixed(&raw.id);
    let currency = text(&raw.currency).unwrap_or_else(|| DEFAULT_CURRENCY.to_string());
    let items: Vec<OrderItem> = raw.line_items.iter().map(line_item).collect();
    let items_total: Minor = items.iter().map(|i| i.price * i.quantity).sum();
    let total = raw.total_price.map_or(items_total, |m| m.0);
    let fulfillments: Vec<Fulfillment> = raw.fulfillments.iter().map(fulfillment).collect();
    let refunds: Vec<Refund> = raw
        .refunds
        .iter()
        .map(|r| refund(r, &id, &currency))
        .collect();
    let gateway = raw
        .payment_gateway_names
        .first()
        .or(raw.gateway.as_ref())
        .map_or_else(|| gateway_id("unknown"), |g| gateway_id(g));
    let paid_at = raw.processed_at.or(raw.created_at);
    let payments = match &raw.transactions {
        Some(txs) => transaction_entries(txs, &gateway),
        None => std::iter::once(PaymentEntry {
            kind: PaymentKind::Payment,
            amount: total,
            payment_method_id: gateway.clone(),
            created_at: paid_at,
        })
        .chain(refunds.iter().map(|r| PaymentEntry {
            kind: PaymentKind::Refund,
            amount: r.amount,
            payment_method_id: r.payment_method_id.clone().unwrap_or(gateway.clone()),
            created_at: r.created_at,
        }))
        .collect(),
    };
    let delivered = fulfillments
        .iter()
        .any(|f| f.status.as_deref() == Some("delivered"));
    let shipped = fulfillments
        .iter()
        .any(|f| !matches!(f.status.as_deref(), Some("failure" | "error" | "cancelled")));
    let status = if raw.cancelled_at.is_some() {
        OrderStatus::Cancelled
    } else if delivered {
        OrderStatus::Delivered
    } else if shipped
        || matches!(
            raw.fulfillment_status.as_deref(),
            Some("fulfilled" | "partial")
        )
    {
        OrderStatus::Processed
    } else {
        OrderStatus::Pending
    };
    let customer = raw.customer.map(customer);
    let email = text(&raw.email)
        .or_else(|| text(&raw.contact_email))
        .or_else(|| customer.as_ref().and_then(|c| c.emails.first().cloned()));
    let number = text(&raw.name).unwrap_or_else(|| match raw.order_number {
        Some(n) => format!("#{n}"),
        None => format!("#{}", raw.id.0),
    });
    let order = Order {
        id,
        number,
        source: SOURCE.to_string(),
        customer_id: customer.as_ref().map(|c| c.id.clone()),
        email,
        status,
        items_modified: false,
        currency,
        items,
        shipping_address: raw.shipping_address.as_ref().map(address),
        fulfillments,
        payments,
        total,
        cancel_reason: text(&raw.cancel_reason),
        created_at: raw.created_at,
        updated_at: raw.updated_at,
        cancelled_at: raw.cancelled_at,
        position: 0,
        returns: Vec::new(),
        exchanges: Vec::new(),
        refunds,
    };
    (order, customer)
}

fn line_item(raw: &RawLineItem) -> OrderItem {
    let mut options = Map::new();
    if let Some(v) = text(&raw.variant_title).filter(|v| v != "Default Title") {
        options.insert("variant".to_string(), Value::String(v));
    }
    // Properties whose name starts with "_" are private to the shop's apps.
    for p in raw.properties.iter().filter(|p| !p.name.starts_with('_')) {
        options.insert(p.name.clone(), p.value.clone());
    }
    OrderItem {
        line_id: raw.id.as_ref().map(|l| l.0.clone()),
        variant_id: item_key(&raw.variant_id, &raw.id),
        product_id: raw.product_id.as_ref().map(prefixed).unwrap_or_default(),
        name: text(&raw.title)
            .or_else(|| text(&raw.name))
            .unwrap_or_default(),
        options,
        sku: text(&raw.sku),
        price: raw.price.0,
        quantity: raw.quantity,
    }
}

/// Status is the shipment status when Shopify knows it ("in_transit", "delivered"), else the
/// fulfilment's own ("success", "failure"). A delivered shipment's `updated_at` is taken as its
/// delivery time.
fn fulfillment(raw: &RawFulfillment) -> Fulfillment {
    let mut tracking_numbers = raw.tracking_numbers.clone();
    let mut tracking_urls = raw.tracking_urls.clone();
    for (list, one) in [
        (&mut tracking_numbers, &raw.tracking_number),
        (&mut tracking_urls, &raw.tracking_url),
    ] {
        if let Some(v) = text(one).filter(|v| !list.contains(v)) {
            list.push(v);
        }
    }
    let status = text(&raw.shipment_status).or_else(|| text(&raw.status));
    let delivered = status.as_deref() == Some("delivered");
    Fulfillment {
        id: raw.id.as_ref().map(|i| i.0.clone()),
        carrier: text(&raw.tracking_company),
        status,
        tracking_numbers,
        tracking_urls,
        item_ids: raw
            .line_items
            .iter()
            .map(|l| item_key(&l.variant_id, &l.id))
            .collect(),
        shipped_at: raw.created_at,
        delivered_at: if delivered { raw.updated_at } else { None },
        estimated_at: None,
    }
}

/// The payment history from Shopify transactions: sales and captures are payments (an
/// authorization only when nothing was captured), refunds are refunds; voids and failed or
/// errored transactions are skipped.
fn transaction_entries(txs: &[RawTransaction], gateway: &str) -> Vec<PaymentEntry> {
    let ok = |t: &&RawTransaction| !matches!(t.status.as_deref(), Some("failure" | "error"));
    let captured = txs
        .iter()
        .filter(ok)
        .any(|t| matches!(t.kind.as_deref(), Some("sale" | "capture")));
    txs.iter()
        .filter(ok)
        .filter_map(|t| {
            let kind = match t.kind.as_deref() {
                Some("sale" | "capture") => PaymentKind::Payment,
                Some("authorization") if !captured => PaymentKind::Payment,
                Some("refund") => PaymentKind::Refund,
                _ => return None,
            };
            Some(PaymentEntry {
                kind,
                amount: t.amount.0,
                payment_method_id: t
                    .gateway
                    .as_deref()
                    .map_or_else(|| gateway.to_string(), gateway_id),
                created_at: t.processed_at.or(t.created_at),
            })
        })
        .collect()
}

/// A refund: its amount is the sum of its successful refund transactions.
fn refund(raw: &RawRefund, order_id: &str, currency: &str) -> Refund {
    let txs: Vec<&RawTransaction> = raw
        .transactions
        .iter()
        .filter(|t| t.kind.as_deref().is_none_or(|k| k == "refund"))
        .filter(|t| !matches!(t.status.as_deref(), Some("failure" | "error")))
        .collect();
    Refund {
        id: prefixed(&raw.id),
        order_id: raw.order_id.as_ref().map_or(order_id.to_string(), prefixed),
        amount: txs.iter().map(|t| t.amount.0).sum(),
        currency: currency.to_string(),
        payment_method_id: txs
            .iter()
            .find_map(|t| t.gateway.as_deref().map(gateway_id)),
        note: text(&raw.note),
        line_ids: raw
            .refund_line_items
            .iter()
            .filter_map(|l| {
                l.line_item_id
                    .as_ref()
                    .or(l.line_item.as_ref().and_then(|li| li.id.as_ref()))
            })
            .map(|id| id.0.clone())
            .collect(),
        created_at: raw.created_at,
    }
}

fn address(raw: &RawAddress) -> Address {
    let name = text(&raw.name).unwrap_or_else(|| {
        let full = format!(
            "{} {}",
            raw.first_name.as_deref().unwrap_or(""),
            raw.last_name.as_deref().unwrap_or("")
        );
        full.trim().to_string()
    });
    let get = |s: &Option<String>| text(s).unwrap_or_default();
    Address {
        name,
        address1: get(&raw.address1),
        address2: get(&raw.address2),
        city: get(&raw.city),
        state: text(&raw.province_code).unwrap_or_else(|| get(&raw.province)),
        country: text(&raw.country_code).unwrap_or_else(|| get(&raw.country)),
        zip: get(&raw.zip),
        phone: get(&raw.phone),
    }
}

/// A customer: email lower-cased; default address first, then the others.
fn customer(raw: RawCustomer) -> Customer {
    let mut addresses: Vec<Address> = raw.default_address.iter().map(address).collect();
    let default_id = raw.default_address.as_ref().and_then(|a| a.id.clone());
    for a in &raw.addresses {
        let converted = address(a);
        let is_default = a.id.is_some() && a.id == default_id;
        if !is_default && !addresses.contains(&converted) {
            addresses.push(converted);
        }
    }
    Customer {
        id: prefixed(&raw.id),
        source: SOURCE.to_string(),
        first_name: text(&raw.first_name).unwrap_or_default(),
        last_name: text(&raw.last_name).unwrap_or_default(),
        emails: text(&raw.email)
            .map(|e| e.to_lowercase())
            .into_iter()
            .collect(),
        phones: text(&raw.phone).into_iter().collect(),
        addresses,
        payment_methods: Vec::new(),
        note: text(&raw.note),
        created_at: raw.created_at,
        updated_at: raw.updated_at,
    }
}

/// Adds a customer, or replaces an earlier record of the same id unless that one is newer.
fn add_customer(customers: &mut Vec<Customer>, c: Customer) {
    match customers.iter_mut().find(|old| old.id == c.id) {
        Some(old) if old.updated_at > c.updated_at => {}
        Some(old) => *old = c,
        None => customers.push(c),
    }
}

fn product(raw: RawProduct) -> Product {
    let id = prefixed(&raw.id);
    let option_names: Vec<String> = raw.options.iter().map(|o| o.name.clone()).collect();
    let variants = raw
        .variants
        .iter()
        .map(|v| {
            let mut options = Map::new();
            for (i, value) in [&v.option1, &v.option2, &v.option3].into_iter().enumerate() {
                if let Some(value) = text(value) {
                    let name = option_names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("option{}", i + 1));
                    options.insert(name, Value::String(value));
                }
            }
            Variant {
                id: v.id.0.clone(),
                product_id: id.clone(),
                title: text(&v.title),
                sku: text(&v.sku),
                options,
                price: v.price.0,
                currency: DEFAULT_CURRENCY.to_string(),
                available: v.inventory_quantity.is_some_and(|q| q > 0)
                    || v.inventory_policy.as_deref() == Some("continue")
                    || v.inventory_management.is_none(),
                stock: v.inventory_quantity,
            }
        })
        .collect();
    Product {
        id,
        source: SOURCE.to_string(),
        name: raw.title.trim().to_string(),
        product_type: text(&raw.product_type),
        vendor: text(&raw.vendor),
        description: raw
            .body_html
            .as_deref()
            .map(html_to_text)
            .filter(|d| !d.is_empty()),
        tags: raw.tags,
        option_names,
        variants,
        created_at: raw.created_at,
        updated_at: raw.updated_at,
    }
}

/// Plain text from simple HTML: tags dropped (block tags become line breaks), common entities
/// decoded, whitespace collapsed.
fn html_to_text(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        let tag = rest[start + 1..start + len].trim_start_matches('/');
        let name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let block = [
            "p",
            "br",
            "div",
            "li",
            "tr",
            "ul",
            "ol",
            "table",
            "blockquote",
        ];
        if block.contains(&name.as_str()) || (name.len() == 2 && name.starts_with('h')) {
            out.push('\n');
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    let decoded = [
        ("&nbsp;", " "),
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", "\""),
        ("&#39;", "'"),
        ("&apos;", "'"),
        ("&amp;", "&"),
    ]
    .iter()
    .fold(out, |s, (from, to)| s.replace(from, to));
    decoded
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/webhooks/shopify/"
    );

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{FIXTURES}{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("missing test data {path}: {e}"))
    }

    fn fixture_json(name: &str) -> Value {
        serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
    }

    /// 2008-01-10T11:00:00-05:00
    const ORDER_CREATED: Millis = 1_199_980_800_000;

    #[test]
    fn every_fixture_of_each_kind_imports() {
        type Parse = fn(&str, &[u8]) -> Result<ImportBatch, ImportError>;
        type Count = fn(&ImportBatch) -> usize;
        let kinds: [(&str, Parse, Count); 3] = [
            ("order", parse_orders, |b| b.orders.len()),
            ("product", parse_products, |b| b.products.len()),
            ("customer", parse_customers, |b| b.customers.len()),
        ];
        let mut seen = 0;
        for entry in std::fs::read_dir(FIXTURES).expect("fixture dir exists") {
            let name = entry.unwrap().file_name().to_string_lossy().to_string();
            for (kind, parse, count) in &kinds {
                if name.contains(&format!("_{kind}")) || name.starts_with(&format!("{kind}s_")) {
                    let batch = parse(&name, &fixture(&name)).unwrap_or_else(|e| panic!("{e}"));
                    assert!(count(&batch) >= 1, "{name} imported nothing");
                    seen += 1;
                }
            }
        }
        assert_eq!(
            seen, 5,
            "orders, order, orders_create body, product, customer"
        );
    }

    #[test]
    fn orders_envelope_maps_order_customer_and_payment() {
        let b = parse_orders("orders.json", &fixture("shopify_python_api__orders.json")).unwrap();
        let o = &b.orders[0];
        assert_eq!(o.id, "shopify-450789469");
        assert_eq!(o.number, "#1001");
        assert_eq!(o.email.as_deref(), Some("bob.norman@hostmail.com"));
        assert_eq!((o.total, o.currency.as_str()), (59894, "USD"));
        assert_eq!(o.status, OrderStatus::Pending);
        assert_eq!(o.created_at, Some(ORDER_CREATED));
        assert_eq!(o.customer_id.as_deref(), Some("shopify-207119551"));
        assert_eq!(
            o.payments,
            [PaymentEntry {
                kind: PaymentKind::Payment,
                amount: 59894,
                payment_method_id: "shopify-gateway-bogus".into(),
                created_at: Some(ORDER_CREATED),
            }]
        );
        let addr = o.shipping_address.as_ref().unwrap();
        assert_eq!(
            (
                addr.name.as_str(),
                addr.state.as_str(),
                addr.country.as_str()
            ),
            ("Bob Norman", "KY", "US")
        );
        let c = &b.customers[0];
        assert_eq!(c.id, "shopify-207119551");
        assert_eq!(c.emails, ["bob.norman@hostmail.com"]);
        assert_eq!(c.phones, ["+16136120707"]);
        assert_eq!(c.addresses[0].city, "Louisville");
    }

    #[test]
    fn single_order_maps_items_and_fulfillment() {
        let b = parse_orders("order.json", &fixture("shopify_python_api__order.json")).unwrap();
        let o = &b.orders[0];
        assert_eq!(o.items.len(), 3);
        let first = &o.items[0];
        assert_eq!(first.price, 19900);
        assert_eq!(
            (first.variant_id.as_str(), first.product_id.as_str()),
            ("39072856", "shopify-632910392")
        );
        assert_eq!(first.line_id.as_deref(), Some("466157049"));
        assert_eq!(first.sku.as_deref(), Some("IPOD2008GREEN"));
        assert_eq!(first.name, "IPod Nano - 8gb");
        assert_eq!(
            Value::Object(first.options.clone()),
            serde_json::json!({"variant": "green", "Custom Engraving": "Happy Birthday"})
        );
        let f = &o.fulfillments[0];
        assert_eq!(f.tracking_numbers, ["1Z2345"]);
        assert_eq!(f.item_ids, ["39072856"]);
        assert_eq!(f.status.as_deref(), Some("failure"));
        assert_eq!(f.tracking_urls.len(), 1);
        // A failed fulfilment does not make the order shipped.
        assert_eq!(o.status, OrderStatus::Pending);
        assert_eq!(
            o.payments[0].payment_method_id,
            "shopify-gateway-authorize_net"
        );
    }

    #[test]
    fn webhook_body_is_a_bare_order() {
        let b = parse_orders("body", &fixture("orders_create_body_compact.json")).unwrap();
        let o = &b.orders[0];
        assert_eq!((o.number.as_str(), o.total), ("#1001", 40994));
        assert_eq!(o.items.iter().map(|i| i.price).sum::<Minor>(), 59700);
        assert_eq!(b.customers[0].emails, ["bob.norman@hostmail.com"]);
        assert_eq!(b.customers[0].addresses[0].zip, "40202");
    }

    #[test]
    fn order_status_refunds_and_transactions() {
        let mut v = fixture_json("shopify_python_api__order.json");
        v["order"]["fulfillments"][0]["shipment_status"] = "delivered".into();
        let refund = fixture_json("shopify_python_api__refund.json");
        v["order"]["refunds"] = serde_json::json!([refund["refund"]]);
        let o = &parse_orders("o", v.to_string().as_bytes()).unwrap().orders[0];
        assert_eq!(o.status, OrderStatus::Delivered);
        assert!(o.fulfillments[0].delivered_at.is_some());
        assert_eq!(o.refunds[0].amount, 20900);
        let kinds: Vec<_> = o.payments.iter().map(|p| (p.kind, p.amount)).collect();
        assert_eq!(
            kinds,
            [(PaymentKind::Payment, 40994), (PaymentKind::Refund, 20900)]
        );

        v["order"]["cancelled_at"] = "2008-01-11T11:00:00-05:00".into();
        v["order"]["transactions"] = serde_json::json!([
            {"kind": "authorization", "status": "success", "amount": "10.00", "gateway": "bogus"},
            {"kind": "capture", "status": "success", "amount": "10.00", "gateway": "bogus"},
            {"kind": "sale", "status": "failure", "amount": "99.00"},
            {"kind": "refund", "status": "success", "amount": "4.50", "gateway": "manual"}
        ]);
        let o = &parse_orders("o", v.to_string().as_bytes()).unwrap().orders[0];
        assert_eq!(o.status, OrderStatus::Cancelled);
        let entries: Vec<_> = o
            .payments
            .iter()
            .map(|p| (p.kind, p.amount, p.payment_method_id.as_str()))
            .collect();
        assert_eq!(
            entries,
            [
                (PaymentKind::Payment, 1000, "shopify-gateway-bogus"),
                (PaymentKind::Refund, 450, "shopify-gateway-manual")
            ]
        );
    }

    #[test]
    fn product_maps_variants_tags_and_text() {
        let b = parse_products("p", &fixture("shopify_python_api__product.json")).unwrap();
        let p = &b.products[0];
        assert_eq!(p.id, "shopify-632910392");
        assert_eq!(p.name, "IPod Nano - 8GB");
        assert_eq!(p.product_type.as_deref(), Some("Cult Products"));
        assert_eq!(p.vendor.as_deref(), Some("Apple"));
        assert_eq!(p.tags, ["Emotive", "Flash Memory", "MP3", "Music"]);
        assert_eq!(p.option_names, ["Title"]);
        let d = p.description.as_deref().unwrap();
        assert!(
            d.starts_with("It's the small iPod") && !d.contains('<'),
            "{d}"
        );
        assert_eq!(p.variants.len(), 4);
        let v = &p.variants[0];
        assert_eq!(
            (v.id.as_str(), v.price, v.stock),
            ("808950810", 19900, Some(10))
        );
        assert_eq!(v.product_id, p.id);
        assert_eq!(v.options.get("Title"), Some(&Value::from("Pink")));
        assert!(v.available);
        assert_eq!(v.sku.as_deref(), Some("IPOD2008PINK"));
    }

    #[test]
    fn variant_availability() {
        let body = |qty: i64, policy: &str, mgmt: Value| {
            serde_json::json!({"id": 1, "title": "T", "variants": [{"id": 2, "price": "1.00",
                "inventory_quantity": qty, "inventory_policy": policy, "inventory_management": mgmt}]})
            .to_string()
        };
        let available = |b: String| {
            parse_products("p", b.as_bytes()).unwrap().products[0].variants[0].available
        };
        assert!(!available(body(0, "deny", "shopify".into())));
        assert!(available(body(0, "continue", "shopify".into())));
        assert!(available(body(0, "deny", Value::Null)));
        assert!(available(body(3, "deny", "shopify".into())));
    }

    #[test]
    fn customer_maps_addresses_once() {
        let b = parse_customers("c", &fixture("shopify_python_api__customer.json")).unwrap();
        let c = &b.customers[0];
        assert_eq!(c.id, "shopify-207119551");
        assert_eq!(
            (c.first_name.as_str(), c.last_name.as_str()),
            ("Bob", "Norman")
        );
        assert_eq!(c.emails, ["bob.norman@hostmail.com"]);
        assert_eq!(c.addresses.len(), 1);
        assert_eq!(c.addresses[0].address1, "Chestnut Street 92");
        assert!(c.phones.is_empty());
    }

    #[test]
    fn fulfillment_and_refund_webhooks() {
        let (order, f) =
            parse_fulfillment("f", &fixture("shopify_python_api__fulfillment.json")).unwrap();
        assert_eq!(order, "shopify-450789469");
        assert_eq!(f.id.as_deref(), Some("255858046"));
        assert_eq!(f.carrier.as_deref(), Some("null-company"));
        assert_eq!(f.tracking_numbers, ["1Z2345"]);
        assert_eq!(f.tracking_urls, ["http://www.google.com/search?q=1Z2345"]);
        assert_eq!(f.item_ids, ["39072856"]);
        assert!(f.shipped_at.is_some());

        let r = parse_refund("r", &fixture("shopify_python_api__refund.json")).unwrap();
        assert_eq!(
            (r.id.as_str(), r.order_id.as_str()),
            ("shopify-509562969", "shopify-450789469")
        );
        assert_eq!((r.amount, r.currency.as_str()), (20900, "USD"));
        assert_eq!(
            r.payment_method_id.as_deref(),
            Some("shopify-gateway-bogus")
        );
        assert_eq!(r.line_ids, ["703073504", "466157049"]);
        assert_eq!(r.note.as_deref(), Some("it broke during shipping"));

        let no_order = br#"{"fulfillment": {"id": 1}}"#;
        let e = parse_fulfillment("f", no_order).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("order_id"));
    }

    #[test]
    fn bad_records_name_index_and_field() {
        let good = fixture_json("shopify_python_api__order.json")["order"].clone();
        let mut bad = good.clone();
        bad["line_items"][1]["price"] = "abc".into();
        let file = serde_json::json!({"orders": [good.clone(), bad]}).to_string();
        let e = parse_orders("orders.json", file.as_bytes()).unwrap_err();
        assert_eq!(e.index, Some(1));
        assert_eq!(e.field.as_deref(), Some("line_items[1].price"));
        assert!(e.message.contains("\"abc\""), "{e}");
        assert!(
            e.to_string()
                .starts_with("orders.json: record 1: field `line_items[1].price`")
        );

        let mut missing = good.clone();
        missing["line_items"][0]
            .as_object_mut()
            .unwrap()
            .remove("price");
        let e = parse_orders("o", missing.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            (e.index, e.field.as_deref()),
            (Some(0), Some("line_items[0].price"))
        );
        assert!(e.message.contains("missing field"), "{e}");

        let mut bad_date = good.clone();
        bad_date["created_at"] = "yesterday".into();
        let e = parse_orders("o", bad_date.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("created_at"));

        let e = parse_products("p", br#"{"products": [{"id": 1, "variants": []}]}"#).unwrap_err();
        assert_eq!((e.index, e.field.as_deref()), (Some(0), Some("title")));
    }

    #[test]
    fn every_envelope_gives_the_same_records() {
        let order = fixture_json("shopify_python_api__order.json")["order"].clone();
        let line = order.to_string();
        let files = [
            serde_json::json!({"orders": [order, order]}).to_string(),
            serde_json::json!([order, order]).to_string(),
            format!("{line}\n{line}\n"),
        ];
        for file in &files {
            let b = parse_orders("f", file.as_bytes()).unwrap();
            assert_eq!(b.orders.len(), 2, "{file}");
            assert_eq!(b.orders[1].id, "shopify-450789469");
        }
        for file in [serde_json::json!({ "order": order }), order.clone()] {
            let b = parse_orders("f", file.to_string().as_bytes()).unwrap();
            assert_eq!(b.orders.len(), 1);
        }
        let customers = r#"{"customers": [{"id": 1, "email": "A@B.example"}, {"id": 2}]}"#;
        let b = parse_customers("c", customers.as_bytes()).unwrap();
        assert_eq!(b.customers[0].emails, ["a@b.example"]);
        assert_eq!(b.customers.len(), 2);
        let e = parse_orders("f", br#"{"orders": {"id": 1}}"#).unwrap_err();
        assert!(e.message.contains("must be an array"), "{e}");
    }

    #[test]
    fn ndjson_records_are_lines() {
        let good = fixture_json("shopify_python_api__order.json")["order"].to_string();
        let mut bad = fixture_json("shopify_python_api__order.json")["order"].clone();
        bad["total_price"] = "12.345".into();
        let ok = format!("{good}\n\n{good}\n");
        assert_eq!(parse_orders("n", ok.as_bytes()).unwrap().orders.len(), 2);
        // Both orders carry the same customer: it is imported once.
        assert_eq!(parse_orders("n", ok.as_bytes()).unwrap().customers.len(), 1);

        let e = parse_orders("n.ndjson", format!("{good}\n{bad}\n").as_bytes()).unwrap_err();
        assert_eq!(
            (e.index, e.field.as_deref()),
            (Some(1), Some("total_price"))
        );
        let e = parse_orders("n.ndjson", format!("{good}\n{{\"id\": 1,\n").as_bytes()).unwrap_err();
        assert_eq!(e.index, Some(1));
        assert!(e.message.starts_with("not valid JSON"), "{e}");
    }

    #[test]
    fn html_becomes_plain_text() {
        assert_eq!(
            html_to_text("<h1>Hi</h1><p>Fish &amp; chips<br/>served <b>hot</b></p>"),
            "Hi\nFish & chips\nserved hot"
        );
    }
}
