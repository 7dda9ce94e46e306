//! The read tools and the disclosure gate: customer lookup (for verification), orders, the
//! verified customer's profile, products, availability, delivery estimates and return
//! eligibility. Nothing here writes.

use serde_json::{Map, Value, json};

use super::write::{delivered_at, take_items};
use super::{ActionRecord, ToolContext, ToolError, ToolErrorCode, ToolOutput, view};
use crate::commerce::policy::{ActionKind, Denial, RefundDestination};
use crate::commerce::{Order, OrderStatus, format_money};

/// The order `order_ref` ("#W123", "W123" or an id) if the caller may see it: staff see any
/// order; everyone else only the verified customer's. "No such order" and "not yours" give the
/// same error.
pub(super) async fn visible_order(
    ctx: &ToolContext<'_>,
    order_ref: &str,
) -> Result<Order, ToolError> {
    if !ctx.actor.is_staff() && ctx.customer_id.is_none() {
        return Err(ToolError::not_verified());
    }
    let found = ctx.store.find_order(order_ref).await?;
    match (found, ctx.customer_id.as_deref()) {
        (Some(o), _) if ctx.actor.is_staff() => Ok(o),
        (None, _) if ctx.actor.is_staff() => Err(ToolError::new(
            ToolErrorCode::NotFound,
            format!("There is no order {}.", view::order_label(order_ref)),
        )),
        (Some(o), Some(cid)) if o.customer_id.as_deref() == Some(cid) => Ok(o),
        _ => Err(ToolError::not_your_order(order_ref)),
    }
}

fn lookup_record(o: &Order, what: &str) -> Option<ActionRecord> {
    Some(ActionRecord {
        kind: "order_lookup",
        order: Some(o.number.clone()),
        details: json!({"lookup": what, "status": view::status_str(o)}),
    })
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

pub(super) async fn find_customer(
    ctx: &ToolContext<'_>,
    email: &Option<String>,
    first_name: &Option<String>,
    last_name: &Option<String>,
    zip: &Option<String>,
) -> Result<ToolOutput, ToolError> {
    let found = |id: &str, by: &str| ToolOutput {
        data: json!({"found": true, "customer_id": id, "matched_by": by}),
        action: None,
    };
    if let Some(email) = given(email) {
        return match ctx.store.find_customer_by_email(email).await? {
            Some(c) => Ok(found(&c.id, "email")),
            None => Err(ToolError::new(
                ToolErrorCode::NotFound,
                "I couldn't find an account with that email address. Please check it, or give \
                 your first and last name and ZIP code instead.",
            )),
        };
    }
    let (first, last, zip) = (given(first_name), given(last_name), given(zip));
    let (Some(first), Some(last), Some(zip)) = (first, last, zip) else {
        let missing: Vec<String> = [("first_name", first), ("last_name", last), ("zip", zip)]
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| format!("`{k}`"))
            .collect();
        return Err(ToolError::invalid(format!(
            "To find an account I need the email address, or the first name, last name and ZIP \
             code; missing: {}.",
            missing.join(", ")
        )));
    };
    let matches = ctx
        .store
        .find_customers_by_name_zip(first, last, zip)
        .await?;
    match matches.as_slice() {
        [one] => Ok(found(&one.id, "name_zip")),
        [] => Err(ToolError::new(
            ToolErrorCode::NotFound,
            "I couldn't find an account with that name and ZIP code. Please check them, or give \
             the email address on your account.",
        )),
        _ => Err(ToolError::new(
            ToolErrorCode::NotFound,
            "More than one account matches that name and ZIP code; please give the email \
             address on your account instead.",
        )),
    }
}

pub(super) async fn get_order(
    ctx: &ToolContext<'_>,
    order_ref: &str,
) -> Result<ToolOutput, ToolError> {
    let o = visible_order(ctx, order_ref).await?;
    Ok(ToolOutput {
        data: view::order(&o),
        action: lookup_record(&o, "details"),
    })
}

pub(super) async fn list_customer_orders(ctx: &ToolContext<'_>) -> Result<ToolOutput, ToolError> {
    let Some(cid) = ctx.customer_id.as_deref() else {
        return Err(ToolError::not_verified());
    };
    let Some(customer) = ctx.store.get_customer(cid).await? else {
        return Err(ToolError::new(
            ToolErrorCode::NotFound,
            "I couldn't find your account any more; please verify again.",
        ));
    };
    let orders = ctx.store.list_customer_orders(cid).await?;
    Ok(ToolOutput {
        data: json!({
            "customer": view::customer(&customer),
            "orders": orders.iter().map(view::order_summary).collect::<Vec<_>>(),
        }),
        action: None,
    })
}

fn no_product(product_id: &str) -> ToolError {
    ToolError::new(
        ToolErrorCode::NotFound,
        format!(
            "There is no product {product_id:?}. Note that a product id is not an item id: an \
             order's items name their product_id."
        ),
    )
}

pub(super) async fn get_product(
    ctx: &ToolContext<'_>,
    product_id: &str,
) -> Result<ToolOutput, ToolError> {
    let p = ctx
        .store
        .get_product(product_id.trim())
        .await?
        .ok_or_else(|| no_product(product_id))?;
    Ok(ToolOutput {
        data: view::product(&p),
        action: None,
    })
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_lowercase(),
        other => other.to_string().to_lowercase(),
    }
}

pub(super) async fn check_availability(
    ctx: &ToolContext<'_>,
    product_id: &str,
    options: &Map<String, Value>,
) -> Result<ToolOutput, ToolError> {
    let p = ctx
        .store
        .get_product(product_id.trim())
        .await?
        .ok_or_else(|| no_product(product_id))?;
    let mut names: Vec<String> = p.option_names.clone();
    for v in &p.variants {
        for k in v.options.keys() {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                names.push(k.clone());
            }
        }
    }
    // Each wanted option resolved to the product's own option name.
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (k, v) in options {
        let Some(name) = names.iter().find(|n| n.eq_ignore_ascii_case(k.trim())) else {
            return Err(ToolError::invalid(format!(
                "options.{k}: the {} has no option {k:?}; its options are {}.",
                p.name,
                names.join(", ")
            )));
        };
        wanted.push((name.clone(), value_text(v)));
    }
    let matching: Vec<_> = p
        .variants
        .iter()
        .filter(|v| {
            wanted.iter().all(|(k, want)| {
                v.options
                    .get(k)
                    .is_some_and(|have| value_text(have) == *want)
            })
        })
        .collect();
    let available: Vec<&str> = matching
        .iter()
        .filter(|v| view::is_available(v))
        .map(|v| v.id.as_str())
        .collect();
    Ok(ToolOutput {
        data: json!({
            "product_id": p.id,
            "name": p.name,
            "options": options,
            "matching": matching.iter().map(|v| view::variant(v)).collect::<Vec<_>>(),
            "available_item_ids": available,
        }),
        action: Some(ActionRecord {
            kind: "availability",
            order: None,
            details: json!({"product_id": p.id, "options": options,
                            "matching": matching.len(), "available": available.len()}),
        }),
    })
}

pub(super) async fn delivery_estimate(
    ctx: &ToolContext<'_>,
    order_ref: &str,
) -> Result<ToolOutput, ToolError> {
    let o = visible_order(ctx, order_ref).await?;
    let fs = &o.fulfillments;
    let delivered = delivered_at(&o);
    let estimated = fs.iter().filter_map(|f| f.estimated_at).max();
    let shipped = fs.iter().filter_map(|f| f.shipped_at).max();
    let (basis, earliest, latest) = if let Some(d) = delivered {
        ("delivered", Some(d), Some(d))
    } else if let Some(e) = estimated {
        ("carrier_estimate", Some(e), Some(e))
    } else if let Some(s) = shipped {
        let (a, b) = ctx.policy.shipping_estimate(None, s);
        ("shipped_plus_shipping_time", Some(a), Some(b))
    } else if matches!(o.status, OrderStatus::Pending)
        && let Some(created) = o.created_at
    {
        let (a, b) = ctx.policy.delivery_estimate_from_order(None, created);
        ("ordered_plus_handling_and_shipping_time", Some(a), Some(b))
    } else {
        ("unknown", None, None)
    };
    let text = match (basis, earliest, latest) {
        ("delivered", Some(d), _) => format!("Delivered on {}.", view::date(d)),
        (_, Some(a), Some(b)) if a == b => format!("Expected on {}.", view::date(a)),
        (_, Some(a), Some(b)) => {
            format!("Expected between {} and {}.", view::date(a), view::date(b))
        }
        _ => match o.status {
            OrderStatus::Cancelled => {
                "This order was cancelled, so it will not be delivered.".into()
            }
            _ => "There is no delivery date for this order yet.".into(),
        },
    };
    let carriers: Vec<&str> = fs.iter().filter_map(|f| f.carrier.as_deref()).collect();
    let tracking: Vec<&str> = o.tracking_numbers().collect();
    Ok(ToolOutput {
        data: json!({
            "order_id": o.id, "number": o.number, "status": view::status_str(&o),
            "basis": basis, "earliest": view::time(earliest), "latest": view::time(latest),
            "text": text, "carriers": carriers, "tracking_numbers": tracking,
        }),
        action: lookup_record(&o, "delivery_estimate"),
    })
}

/// Whether the policy allows `action` on `o` now, and if not, why (shopper wording).
fn eligibility(ctx: &ToolContext<'_>, action: ActionKind, o: &Order) -> Value {
    let rule = ctx.policy.rule(action);
    let deadline = match (rule.window_days, delivered_at(o)) {
        (Some(days), Some(d)) => Some(d + i64::from(days) * crate::commerce::policy::DAY_MS),
        _ => None,
    };
    let verdict: Result<(), Denial> = ctx.policy.check_order(action, o, ctx.now);
    json!({
        "eligible": verdict.is_ok(),
        "reason": verdict.err().map(|d| super::write::denial_message(&d, o)),
        "deadline": view::time(deadline),
        "window_days": rule.window_days,
    })
}

pub(super) async fn return_eligibility(
    ctx: &ToolContext<'_>,
    order_ref: &str,
    item_ids: Option<&[String]>,
) -> Result<ToolOutput, ToolError> {
    let o = visible_order(ctx, order_ref).await?;
    let lines: Vec<usize> = match item_ids {
        Some(ids) => take_items(&o, ids, "item_ids")?,
        None => o
            .items
            .iter()
            .enumerate()
            .flat_map(|(i, it)| std::iter::repeat_n(i, usize::try_from(it.quantity).unwrap_or(0)))
            .collect(),
    };
    let items: Vec<Value> = lines
        .iter()
        .filter_map(|&i| o.items.get(i))
        .map(|it| {
            json!({"item_id": it.variant_id, "product_id": it.product_id, "name": it.name,
                   "options": it.options, "price": view::money(it.price)})
        })
        .collect();
    let refund: i64 = lines
        .iter()
        .filter_map(|&i| o.items.get(i))
        .map(|it| it.price)
        .sum();
    let mut destinations: Vec<Value> = Vec::new();
    if ctx
        .policy
        .refund_destination_allowed(RefundDestination::OriginalPaymentMethod)
        && let Some(first) = o.payments.first()
    {
        destinations.push(json!({"payment_method_id": first.payment_method_id,
                                 "kind": "original_payment_method"}));
    }
    if ctx
        .policy
        .refund_destination_allowed(RefundDestination::GiftCard)
        && let Some(cid) = o.customer_id.as_deref()
        && let Some(c) = ctx.store.get_customer(cid).await?
    {
        for m in c.payment_methods.iter().filter(|m| m.is_gift_card()) {
            if o.payments.first().map(|p| &p.payment_method_id) != Some(&m.id) {
                destinations.push(json!({"payment_method_id": m.id, "kind": "gift_card"}));
            }
        }
    }
    let needs_approval = ctx.policy.refund_needs_approval(refund);
    Ok(ToolOutput {
        data: json!({
            "order_id": o.id, "number": o.number, "status": view::status_str(&o),
            "delivered_at": view::time(delivered_at(&o)),
            "return": eligibility(ctx, ActionKind::ReturnItems, &o),
            "exchange": eligibility(ctx, ActionKind::ExchangeItems, &o),
            "items": items,
            "refund_total": view::money(refund),
            "refund_text": format_money(refund, &o.currency),
            "refund_destinations": destinations,
            "refund_needs_approval": needs_approval,
        }),
        action: lookup_record(&o, "return_eligibility"),
    })
}
