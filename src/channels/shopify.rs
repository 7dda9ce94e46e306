//! Shopify webhooks: `POST /channels/shopify/webhooks` keeps the store current as orders,
//! fulfilments, refunds, customers and products change in the shop (or are deleted there); the
//! search index follows the store's change feed (`crate::search::feed`). Each
//! delivery is authenticated by `X-Shopify-Hmac-Sha256` over the raw body bytes (before any
//! parsing, compared in constant time), parsed with the same Shopify parsers as
//! `concierge import`, applied once per `X-Shopify-Webhook-Id`, and only then acknowledged.
//!
//! Exactly-once: a delivery first claims its webhook id with an atomic
//! `INSERT … ON CONFLICT DO NOTHING` on the `settings` table (`shopify_webhook:<id>` =
//! `applying:<ms>`); only the claimer applies, and it marks the key `done:<ms>:<topic>` after
//! its writes are committed and before it answers. A later delivery of the same id is answered
//! `{"duplicate": true}`; one that races an in-flight claim gets a 409 so Shopify retries it
//! (by then it is a duplicate). A claim left `applying` by a crash is taken over after
//! [`STALE_CLAIM_MS`]; every apply is idempotent by record id, so a takeover after a crash that
//! came between the writes and the `done` mark cannot double anything. Within one process the
//! applies are also serialized, so two webhooks touching the same order (a fulfilment and a
//! refund) do not lose each other's read-modify-write.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::commerce::{Fulfillment, Order, OrderStatus, PaymentEntry, PaymentKind, Refund};
use crate::error::{ApiError, BodyLimit};
use crate::import::ImportBatch;
use crate::import::shopify::{
    parse_customers, parse_deleted, parse_fulfillment, parse_orders, parse_products, parse_refund,
};
use crate::state::AppState;
use crate::store::{Store, StoreError};
use crate::util::{constant_time_eq, now_ms};

pub const WEBHOOK_PATH: &str = "/channels/shopify/webhooks";
const HMAC_HEADER: &str = "x-shopify-hmac-sha256";
const TOPIC_HEADER: &str = "x-shopify-topic";
const WEBHOOK_ID_HEADER: &str = "x-shopify-webhook-id";
/// A claim still `applying` after this long belongs to a delivery that died; it is taken over.
pub const STALE_CLAIM_MS: i64 = 60_000;

/// Serializes webhook applies within this process (see the module docs).
static APPLY_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn routes() -> Router<AppState> {
    Router::new().route(WEBHOOK_PATH, post(webhook))
}

async fn webhook(
    State(state): State<AppState>,
    limit: Option<axum::Extension<BodyLimit>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Some(secret) = &state.config.shopify.webhook_secret else {
        return Err(ApiError::NotFound(
            "the Shopify webhook endpoint is off: set `webhook_secret` in channels/shopify.toml \
             (the app's client secret) to turn it on"
                .into(),
        ));
    };
    let body = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) if e.status() == 413 => ApiError::PayloadTooLarge {
            limit: limit.map_or(usize::MAX, |l| l.0.0),
        },
        other => ApiError::BadRequest {
            message: format!("could not read the request body: {}", other.body_text()),
        },
    })?;
    verify_hmac(secret.expose().as_bytes(), &headers, &body)?;

    let topic = header(&headers, TOPIC_HEADER)
        .ok_or_else(|| ApiError::BadRequest {
            message: "missing X-Shopify-Topic header".into(),
        })?
        .to_string();
    let Some(parsed) = Parsed::from_body(&topic, &body)? else {
        tracing::debug!(
            topic,
            "ignored a Shopify webhook topic this service does not use"
        );
        return Ok(Json(json!({
            "topic": topic, "ignored": true, "applied": false, "duplicate": false,
        })));
    };
    let webhook_id = header(&headers, WEBHOOK_ID_HEADER).map(str::to_string);

    let guard = APPLY_LOCK.lock().await;
    let claim = match &webhook_id {
        Some(id) => match claim(&state.store, id).await? {
            Claim::Mine(claim) => Some(claim),
            Claim::Done => {
                return Ok(Json(json!({
                    "topic": topic, "applied": false, "duplicate": true,
                })));
            }
            Claim::InFlight => {
                return Err(ApiError::Conflict(format!(
                    "webhook {id} is being applied by another delivery; retry later"
                )));
            }
        },
        // Shopify always sends an id; without one there is nothing to dedupe on, and every
        // apply is idempotent by record id anyway.
        None => None,
    };
    let outcome = match parsed.apply(&state.store).await {
        Ok(outcome) => outcome,
        Err(e) => {
            if let Some(c) = &claim {
                release(&state.store, c).await;
            }
            return Err(e.into());
        }
    };
    match (&claim, &outcome.skipped) {
        (Some(c), None) => mark_done(&state.store, c, &topic).await?,
        // Nothing was written: let a later delivery try again (the order may have arrived).
        (Some(c), Some(_)) => release(&state.store, c).await,
        (None, _) => {}
    }
    drop(guard);

    let mut out = json!({
        "topic": topic,
        "applied": outcome.skipped.is_none(),
        "duplicate": false,
    });
    if let Some(number) = &outcome.order_number {
        out["order"] = json!(number);
    }
    if let Some(reason) = &outcome.skipped {
        out["reason"] = json!(reason);
    }
    Ok(Json(out))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Checks `X-Shopify-Hmac-Sha256` = base64(HMAC-SHA256(secret, raw body)), in constant time.
pub(crate) fn verify_hmac(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let Some(given) = header(headers, HMAC_HEADER) else {
        return Err(ApiError::Unauthorized(
            "missing X-Shopify-Hmac-Sha256 header: Shopify webhooks must be signed".into(),
        ));
    };
    if body.is_empty() {
        return Err(ApiError::Unauthorized(
            "empty body: a Shopify webhook always carries a signed JSON body".into(),
        ));
    }
    let expected = sign(secret, body);
    if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
        return Err(ApiError::Unauthorized(
            "X-Shopify-Hmac-Sha256 does not match the body (wrong secret, or the body was altered)"
                .into(),
        ));
    }
    Ok(())
}

/// base64(HMAC-SHA256(secret, body)), as Shopify puts in `X-Shopify-Hmac-Sha256`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Dedupe

enum Claim {
    /// This delivery owns the webhook id; the value is what it wrote.
    Mine(ClaimToken),
    Done,
    InFlight,
}

struct ClaimToken {
    key: String,
    value: String,
}

async fn claim(store: &Store, webhook_id: &str) -> Result<Claim, StoreError> {
    let key = format!("shopify_webhook:{webhook_id}");
    let value = format!("applying:{}", now_ms());
    let inserted = store
        .write_execute(
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key.as_str())
            .bind(value.as_str()),
        )
        .await?
        .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Mine(ClaimToken { key, value }));
    }
    let Some(current) = store.get_setting(&key).await? else {
        // Released between our insert and read: the caller's retry will claim it.
        return Ok(Claim::InFlight);
    };
    if current.starts_with("done") {
        return Ok(Claim::Done);
    }
    let since = current
        .strip_prefix("applying:")
        .and_then(|ms| ms.parse::<i64>().ok())
        .unwrap_or(0);
    if now_ms() - since < STALE_CLAIM_MS {
        return Ok(Claim::InFlight);
    }
    // Take over a dead delivery's claim, unless someone else just did.
    let taken = store
        .write_execute(
            sqlx::query("UPDATE settings SET value = $1 WHERE key = $2 AND value = $3")
                .bind(value.as_str())
                .bind(key.as_str())
                .bind(current.as_str()),
        )
        .await?
        .rows_affected();
    Ok(if taken == 1 {
        Claim::Mine(ClaimToken { key, value })
    } else {
        Claim::InFlight
    })
}

async fn mark_done(store: &Store, claim: &ClaimToken, topic: &str) -> Result<(), StoreError> {
    store
        .write_execute(
            sqlx::query("UPDATE settings SET value = $1 WHERE key = $2")
                .bind(format!("done:{}:{topic}", now_ms()))
                .bind(claim.key.as_str()),
        )
        .await?;
    Ok(())
}

/// Drops our claim so a later delivery can apply the webhook. Best effort: a claim that stays
/// is taken over once stale.
async fn release(store: &Store, claim: &ClaimToken) {
    let res = store
        .write_execute(
            sqlx::query("DELETE FROM settings WHERE key = $1 AND value = $2")
                .bind(claim.key.as_str())
                .bind(claim.value.as_str()),
        )
        .await;
    if let Err(e) = res {
        tracing::warn!(error = %e, key = claim.key, "could not release a Shopify webhook claim");
    }
}

// ---------------------------------------------------------------------------------------------
// Topics

/// A webhook body, parsed for its topic.
pub(crate) enum Parsed {
    Orders(ImportBatch),
    Fulfillment(String, Fulfillment),
    Refund(Refund),
    Customers(ImportBatch),
    Products(ImportBatch),
    /// `orders/delete`: the order's id as stored.
    OrderDeleted(String),
    /// `products/delete`: the product's id as stored.
    ProductDeleted(String),
}

/// What an apply touched (for the reply), or why it wrote nothing.
#[derive(Default)]
struct Outcome {
    order_number: Option<String>,
    skipped: Option<String>,
}

impl Parsed {
    /// Parses `body` for `topic`; None for a topic this service does not use. A body that does
    /// not parse is a 422 naming the field.
    pub(crate) fn from_body(topic: &str, body: &[u8]) -> Result<Option<Parsed>, ApiError> {
        let label = format!("{topic} webhook");
        let unprocessable = |e: crate::import::ImportError| ApiError::Unprocessable(e.to_string());
        Ok(Some(match topic {
            "orders/create"
            | "orders/updated"
            | "orders/cancelled"
            | "orders/fulfilled"
            | "orders/paid"
            | "orders/partially_fulfilled" => {
                Parsed::Orders(parse_orders(&label, body).map_err(unprocessable)?)
            }
            "fulfillments/create" | "fulfillments/update" => {
                let (order_id, f) = parse_fulfillment(&label, body).map_err(unprocessable)?;
                Parsed::Fulfillment(order_id, f)
            }
            "refunds/create" => Parsed::Refund(parse_refund(&label, body).map_err(unprocessable)?),
            "customers/create" | "customers/update" => {
                Parsed::Customers(parse_customers(&label, body).map_err(unprocessable)?)
            }
            "products/create" | "products/update" => {
                Parsed::Products(parse_products(&label, body).map_err(unprocessable)?)
            }
            "orders/delete" => Parsed::OrderDeleted(
                parse_deleted(&label, body, "order", "orders").map_err(unprocessable)?,
            ),
            "products/delete" => Parsed::ProductDeleted(
                parse_deleted(&label, body, "product", "products").map_err(unprocessable)?,
            ),
            _ => return Ok(None),
        }))
    }

    async fn apply(self, store: &Store) -> Result<Outcome, StoreError> {
        match self {
            Parsed::Orders(batch) => apply_orders(store, batch).await,
            Parsed::Fulfillment(order_id, f) => {
                let Some(mut order) = store.get_order(&order_id).await? else {
                    return Ok(missing_order(&order_id));
                };
                add_fulfillment(&mut order, f);
                store.put_order(&order).await?;
                Ok(touched_order(order))
            }
            Parsed::Refund(refund) => {
                let Some(mut order) = store.get_order(&refund.order_id).await? else {
                    return Ok(missing_order(&refund.order_id));
                };
                add_refund(&mut order, refund);
                store.put_order(&order).await?;
                Ok(touched_order(order))
            }
            Parsed::Customers(batch) => {
                store.import(&batch.customers, &[], &[], |_| {}).await?;
                Ok(Outcome::default())
            }
            Parsed::Products(batch) => {
                store.import(&[], &batch.products, &[], |_| {}).await?;
                Ok(Outcome::default())
            }
            // Deleting what is not here changes nothing and is done: the shop no longer has it.
            Parsed::OrderDeleted(id) => Ok(Outcome {
                order_number: store.delete_order(&id).await?,
                ..Outcome::default()
            }),
            Parsed::ProductDeleted(id) => {
                store.delete_product(&id).await?;
                Ok(Outcome::default())
            }
        }
    }
}

/// Upserts orders and their customers in one transaction, skipping an order whose stored copy
/// is newer (Shopify does not promise delivery order).
async fn apply_orders(store: &Store, mut batch: ImportBatch) -> Result<Outcome, StoreError> {
    let mut stale = Vec::new();
    let mut fresh = Vec::new();
    for order in batch.orders {
        let stored = store.get_order(&order.id).await?;
        match (stored.and_then(|o| o.updated_at), order.updated_at) {
            (Some(have), Some(got)) if have > got => stale.push(order),
            _ => fresh.push(order),
        }
    }
    if fresh.is_empty() {
        let numbers: Vec<&str> = stale.iter().map(|o| o.number.as_str()).collect();
        return Ok(Outcome {
            order_number: numbers.first().map(|n| n.to_string()),
            skipped: Some(format!(
                "the stored copy of {} is newer than this webhook's",
                numbers.join(", ")
            )),
        });
    }
    let wanted: std::collections::HashSet<&str> = fresh
        .iter()
        .filter_map(|o| o.customer_id.as_deref())
        .collect();
    batch.customers.retain(|c| wanted.contains(c.id.as_str()));
    store.import(&batch.customers, &[], &fresh, |_| {}).await?;
    Ok(Outcome {
        order_number: fresh.first().map(|o| o.number.clone()),
        ..Outcome::default()
    })
}

fn missing_order(order_id: &str) -> Outcome {
    Outcome {
        skipped: Some(format!(
            "order {order_id} is not in the store (yet); import it or wait for its orders/create"
        )),
        ..Outcome::default()
    }
}

fn touched_order(order: Order) -> Outcome {
    Outcome {
        order_number: Some(order.number),
        ..Outcome::default()
    }
}

/// Replaces the fulfilment with the same id (or adds it) and moves the order along: delivered
/// when the shipment is, else processed — never backwards, and never out of cancelled or a
/// return/exchange request.
fn add_fulfillment(order: &mut Order, f: Fulfillment) {
    let delivered = f.status.as_deref() == Some("delivered");
    let failed = matches!(f.status.as_deref(), Some("failure" | "error" | "cancelled"));
    match order
        .fulfillments
        .iter_mut()
        .find(|have| have.id.is_some() && have.id == f.id)
    {
        Some(have) => *have = f,
        None => order.fulfillments.push(f),
    }
    order.status = match order.status {
        OrderStatus::Pending | OrderStatus::Processed if delivered => OrderStatus::Delivered,
        OrderStatus::Pending if !failed => OrderStatus::Processed,
        other => other,
    };
}

/// Adds the refund and its payment-history entry, unless a refund with its id is there.
fn add_refund(order: &mut Order, refund: Refund) {
    if order.refunds.iter().any(|r| r.id == refund.id) {
        return;
    }
    let method = refund
        .payment_method_id
        .clone()
        .or_else(|| order.payments.first().map(|p| p.payment_method_id.clone()))
        .unwrap_or_else(|| "shopify-gateway-unknown".to_string());
    order.payments.push(PaymentEntry {
        kind: PaymentKind::Refund,
        amount: refund.amount,
        payment_method_id: method,
        created_at: refund.created_at,
    });
    order.refunds.push(refund);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_shopify() {
        // From /work/shared/data/webhooks/shopify/hmac_test_vectors.json.
        assert_eq!(
            sign(b"test-app-client-secret", b"{}"),
            "wAprg15KdQH0AJ2i2bqJ83OEDf86zbUTEt5UDLEszag="
        );
        let mut h = HeaderMap::new();
        h.insert(
            HMAC_HEADER,
            "wAprg15KdQH0AJ2i2bqJ83OEDf86zbUTEt5UDLEszag="
                .parse()
                .unwrap(),
        );
        assert!(verify_hmac(b"test-app-client-secret", &h, b"{}").is_ok());
        assert!(verify_hmac(b"other", &h, b"{}").is_err());
        assert!(verify_hmac(b"test-app-client-secret", &h, b"{ }").is_err());
        assert!(verify_hmac(b"test-app-client-secret", &HeaderMap::new(), b"{}").is_err());
    }
}
