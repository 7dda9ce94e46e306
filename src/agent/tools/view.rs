//! What the tools show: JSON views of orders, customers and products for callers (templates,
//! LLMs, consumer agents), and the small pieces of wording refusals share. Amounts are decimal
//! strings ("47.84") next to the currency; times are RFC 3339. Pure functions, no I/O.

use serde_json::{Value, json};

use crate::commerce::policy::ActionKind;
use crate::commerce::{
    Address, Customer, Millis, Minor, Order, OrderStatus, PaymentMethod, Product, Variant,
    format_minor, format_money,
};
use crate::util::rfc3339;

/// "#W123" for what a shopper typed ("w123", "#W123 ").
pub fn order_label(order_ref: &str) -> String {
    let t = order_ref.trim();
    if t.starts_with('#') {
        t.to_string()
    } else {
        format!("#{t}")
    }
}

pub fn money(amount: Minor) -> Value {
    Value::String(format_minor(amount))
}

pub fn time(t: Option<Millis>) -> Value {
    t.map(|t| Value::String(rfc3339(t))).unwrap_or(Value::Null)
}

/// A date a shopper reads: "2025-01-03".
pub fn date(t: Millis) -> String {
    let s = rfc3339(t);
    s.get(..10).map(str::to_string).unwrap_or(s)
}

pub fn address(a: &Address) -> Value {
    json!({
        "name": a.name, "address1": a.address1, "address2": a.address2, "city": a.city,
        "state": a.state, "country": a.country, "zip": a.zip, "phone": a.phone,
        "text": a.one_line(),
    })
}

/// "pending", or τ-bench's "pending (item modified)".
pub fn status_str(o: &Order) -> &'static str {
    if o.items_modified && o.status == OrderStatus::Pending {
        "pending (item modified)"
    } else {
        o.status.as_str()
    }
}

pub fn order(o: &Order) -> Value {
    let items: Vec<Value> = o
        .items
        .iter()
        .map(|i| {
            json!({
                "item_id": i.variant_id, "product_id": i.product_id, "name": i.name,
                "options": i.options, "sku": i.sku, "price": money(i.price), "quantity": i.quantity,
            })
        })
        .collect();
    let fulfillments: Vec<Value> = o
        .fulfillments
        .iter()
        .map(|f| {
            json!({
                "carrier": f.carrier, "status": f.status, "tracking_numbers": f.tracking_numbers,
                "tracking_urls": f.tracking_urls, "item_ids": f.item_ids,
                "shipped_at": time(f.shipped_at), "delivered_at": time(f.delivered_at),
                "estimated_at": time(f.estimated_at),
            })
        })
        .collect();
    let payments: Vec<Value> = o
        .payments
        .iter()
        .map(|p| {
            json!({"kind": p.kind.as_str(), "amount": money(p.amount),
                   "payment_method_id": p.payment_method_id})
        })
        .collect();
    let returns: Vec<Value> = o
        .returns
        .iter()
        .map(|r| {
            json!({"item_ids": r.item_ids, "payment_method_id": r.payment_method_id,
                   "status": r.status, "refund": money(r.refund)})
        })
        .collect();
    let exchanges: Vec<Value> = o
        .exchanges
        .iter()
        .map(|x| {
            json!({"item_ids": x.item_ids, "new_item_ids": x.new_item_ids,
                   "payment_method_id": x.payment_method_id, "status": x.status,
                   "price_difference": money(x.price_difference)})
        })
        .collect();
    json!({
        "order_id": o.id,
        "number": o.number,
        "status": status_str(o),
        "status_text": o.status.describe(),
        "items_modified": o.items_modified,
        "currency": o.currency,
        "total": money(o.total),
        "items": items,
        "shipping_address": o.shipping_address.as_ref().map(address),
        "fulfillments": fulfillments,
        "payments": payments,
        "cancel_reason": o.cancel_reason,
        "returns": returns,
        "exchanges": exchanges,
        "created_at": time(o.created_at),
    })
}

pub fn order_summary(o: &Order) -> Value {
    json!({
        "order_id": o.id, "number": o.number, "status": status_str(o),
        "total": money(o.total), "currency": o.currency,
        "items": o.items.iter().map(|i| i.quantity).sum::<i64>(),
        "created_at": time(o.created_at),
    })
}

pub fn payment_method(m: &PaymentMethod) -> Value {
    json!({
        "payment_method_id": m.id, "kind": m.kind, "brand": m.brand, "last_four": m.last_four,
        "balance": m.balance.map(money), "text": method_text(m),
    })
}

/// "gift card (balance $12.30)", "visa credit card ending 9212", "paypal".
pub fn method_text(m: &PaymentMethod) -> String {
    let kind = m.kind.replace('_', " ");
    match (m.is_gift_card(), &m.brand, &m.last_four, m.balance) {
        (true, _, _, Some(b)) => format!("{kind} (balance {})", format_money(b, &m.currency)),
        (_, Some(brand), Some(last), _) => format!("{brand} {kind} ending {last}"),
        (_, None, Some(last), _) => format!("{kind} ending {last}"),
        _ => kind,
    }
}

pub fn customer(c: &Customer) -> Value {
    json!({
        "customer_id": c.id,
        "name": c.full_name(),
        "email": c.primary_email(),
        "default_address": c.addresses.first().map(address),
        "payment_methods": c.payment_methods.iter().map(payment_method).collect::<Vec<_>>(),
    })
}

pub fn variant(v: &Variant) -> Value {
    json!({
        "item_id": v.id, "options": v.options, "options_text": v.options_text(),
        "price": money(v.price), "currency": v.currency, "available": is_available(v),
        "stock": v.stock,
    })
}

pub fn product(p: &Product) -> Value {
    json!({
        "product_id": p.id, "name": p.name, "product_type": p.product_type,
        "description": p.description, "option_names": p.option_names,
        "variants": p.variants.iter().map(variant).collect::<Vec<_>>(),
    })
}

/// Sellable now: marked available and not tracked as out of stock.
pub fn is_available(v: &Variant) -> bool {
    v.available && v.stock.is_none_or(|s| s > 0)
}

/// "cancelled", "have their shipping address changed", … for "only pending orders can …".
pub fn action_phrase(action: ActionKind) -> &'static str {
    match action {
        ActionKind::CancelOrder => "be cancelled",
        ActionKind::ModifyOrderAddress => "have their shipping address changed",
        ActionKind::ModifyOrderItems => "have their items changed",
        ActionKind::ModifyOrderPayment => "have their payment method changed",
        ActionKind::ReturnItems => "be returned",
        ActionKind::ExchangeItems => "be exchanged",
        ActionKind::UpdateCustomerAddress => "have the account address changed",
        ActionKind::Refund => "be refunded",
    }
}

/// "cancelling an order", … for "… is not something I can do".
pub fn action_noun(action: ActionKind) -> &'static str {
    match action {
        ActionKind::CancelOrder => "cancelling an order",
        ActionKind::ModifyOrderAddress => "changing an order's shipping address",
        ActionKind::ModifyOrderItems => "changing an order's items",
        ActionKind::ModifyOrderPayment => "changing an order's payment method",
        ActionKind::ReturnItems => "returning items",
        ActionKind::ExchangeItems => "exchanging items",
        ActionKind::UpdateCustomerAddress => "changing the address on your account",
        ActionKind::Refund => "issuing a refund",
    }
}

/// "a or b or c".
pub fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_lists() {
        assert_eq!(order_label(" W123 "), "#W123");
        assert_eq!(order_label("#W1"), "#W1");
        assert_eq!(or_list(&["a".into()]), "a");
        assert_eq!(or_list(&["a".into(), "b".into(), "c".into()]), "a, b or c");
        assert_eq!(date(1_735_916_400_000), "2025-01-03");
    }
}
