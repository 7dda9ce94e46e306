//! Unit tests of the pure parts: call parsing and specs, call metadata, item counting and the
//! wording of policy refusals. The database paths are covered by `tests/it/tools.rs`.

use serde_json::{Value, json};

use super::write::{denial_message, take_items};
use super::*;
use crate::commerce::policy::{ActionKind, DAY_MS, Denial, Policy};
use crate::commerce::{Fulfillment, Order, OrderItem, OrderStatus};

const BRAND_POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/brand/policy.toml");

fn policy() -> Policy {
    match Policy::load(std::path::Path::new(BRAND_POLICY)) {
        Ok(p) => p,
        Err(e) => panic!("brand policy: {e}"),
    }
}

fn order() -> Order {
    let item = |id: &str, price: i64, quantity: i64| OrderItem {
        line_id: None,
        variant_id: id.into(),
        product_id: "p1".into(),
        name: "Mug".into(),
        options: serde_json::Map::new(),
        sku: None,
        price,
        quantity,
    };
    Order {
        id: "#W1".into(),
        number: "#W1".into(),
        source: "test".into(),
        customer_id: Some("ann_1".into()),
        email: None,
        status: OrderStatus::Pending,
        items_modified: false,
        currency: "USD".into(),
        items: vec![
            item("i1", 1000, 1),
            item("i2", 2000, 2),
            item("i1", 1000, 1),
        ],
        shipping_address: None,
        fulfillments: Vec::new(),
        payments: Vec::new(),
        total: 6000,
        cancel_reason: None,
        created_at: None,
        updated_at: None,
        cancelled_at: None,
        position: 0,
        returns: Vec::new(),
        exchanges: Vec::new(),
        refunds: Vec::new(),
    }
}

/// A plausible argument object for each tool.
fn example_args(name: &str) -> Value {
    let address = json!({"address1": "1 Main St", "address2": "", "city": "Austin",
                         "state": "TX", "country": "USA", "zip": "78701"});
    match name {
        "find_customer" => json!({"email": "ann@example.com"}),
        "list_customer_orders" => json!({}),
        "get_product" => json!({"product_id": "p1"}),
        "check_availability" => json!({"product_id": "p1", "options": {"color": "red"}}),
        "cancel_order" => json!({"order_id": "#W1", "reason": "no longer needed"}),
        "modify_order_address" => json!({"order_id": "#W1", "address": address}),
        "modify_order_items" | "exchange_items" => json!({"order_id": "#W1",
            "item_ids": ["i1"], "new_item_ids": ["i2"], "payment_method_id": "gift_card_1"}),
        "modify_order_payment" => json!({"order_id": "#W1", "payment_method_id": "paypal_1"}),
        "return_items" => json!({"order_id": "#W1", "item_ids": ["i1"],
                                 "payment_method_id": "paypal_1"}),
        "update_customer_address" => json!({"address": address}),
        "escalate" => json!({"reason": "out of scope", "summary": "wants a discount"}),
        _ => json!({"order_id": "#W1"}),
    }
}

#[test]
fn every_spec_parses_and_round_trips() {
    let specs = tool_specs();
    assert_eq!(specs.len(), 15);
    for spec in &specs {
        let call = match parse_call(spec.name, &example_args(spec.name)) {
            Ok(c) => c,
            Err(e) => panic!("{}: {e}", spec.name),
        };
        assert_eq!(call.name(), spec.name);
        assert_eq!(call.is_write(), spec.write, "{}", spec.name);
        assert_eq!(spec.parameters["type"], "object", "{}", spec.name);
        // Every required parameter is a property, and the example gives them all.
        let props = spec.parameters["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for r in spec.parameters["required"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let r = r.as_str().unwrap_or_default().to_string();
            assert!(
                props.contains_key(&r),
                "{}: required {r} not a property",
                spec.name
            );
        }
        // The serialised call carries the tool name as its tag and parses back.
        let v = serde_json::to_value(&call).unwrap_or(Value::Null);
        assert_eq!(v["action"], spec.name);
        let back = parse_call(spec.name, &call.args_json());
        assert_eq!(back.map(|c| c.name()).ok(), Some(spec.name));
    }
}

#[test]
fn bad_arguments_name_the_field() {
    let e = parse_call("get_order", &json!({"order_id": 5})).err();
    let e = e.unwrap_or_else(|| panic!("accepted a number"));
    assert_eq!(e.code, ToolErrorCode::InvalidArgument);
    assert!(e.message.starts_with("order_id:"), "{}", e.message);

    let e = parse_call("cancel_order", &json!({"order_id": "#W1"})).err();
    assert!(e.is_some_and(|e| e.message.contains("reason")));

    let e = parse_call(
        "modify_order_address",
        &json!({"order_id": "#W1", "address": {"address1": "x", "city": "y", "country": "z"}}),
    )
    .err();
    assert!(e.is_some_and(|e| e.message.contains("address") && e.message.contains("zip")));

    let e = parse_call(
        "return_items",
        &json!({"order_id": "#W1", "item_ids": "i1",
                                                "payment_method_id": "x"}),
    )
    .err();
    assert!(e.is_some_and(|e| e.message.starts_with("item_ids:")));

    let e = parse_call("refund_everything", &json!({})).err();
    assert!(e.is_some_and(|e| e.message.contains("cancel_order")));

    let e = parse_call("get_order", &json!(["#W1"])).err();
    assert!(e.is_some_and(|e| e.message.contains("JSON object")));

    // Nulls are absent optionals.
    let c = parse_call(
        "return_eligibility",
        &json!({"order_id": "#W1", "item_ids": null}),
    );
    assert!(matches!(
        c,
        Ok(ToolCall::ReturnEligibility { item_ids: None, .. })
    ));
}

#[test]
fn call_metadata() {
    let c = ToolCall::ExchangeItems {
        order_id: "#W1".into(),
        item_ids: vec![],
        new_item_ids: vec![],
        payment_method_id: "x".into(),
    };
    assert_eq!(
        (c.name(), c.is_write(), c.order_id()),
        ("exchange_items", true, Some("#W1"))
    );
    let e = ToolCall::Escalate {
        reason: "r".into(),
        summary: "s".into(),
    };
    assert!(!e.is_write() && e.order_id().is_none());
    assert_eq!(
        serde_json::to_value(Actor::Staff { id: "sam".into() }).ok(),
        Some(json!({"kind": "staff", "id": "sam"}))
    );
    assert_eq!(
        serde_json::to_value(ToolErrorCode::NotYourOrder).ok(),
        Some(json!("not_your_order"))
    );
    assert_eq!(
        ToolError::new(ToolErrorCode::NeedsApproval, "m").audit_outcome(),
        "needs approval: m"
    );
    assert_eq!(
        ToolError::refused("m").audit_outcome(),
        "refused: policy_refused: m"
    );
}

#[test]
fn items_are_counted_with_duplicates_and_quantities() {
    let o = order();
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        take_items(&o, &ids(&["i1", "i1"]), "item_ids").ok(),
        Some(vec![0, 2])
    );
    assert_eq!(
        take_items(&o, &ids(&["i2", "i2"]), "item_ids").ok(),
        Some(vec![1, 1])
    );
    let e = take_items(&o, &ids(&["i1", "i1", "i1"]), "item_ids").err();
    assert!(
        e.is_some_and(|e| e.message.starts_with("item_ids[2]") && e.message.contains("more times"))
    );
    let e = take_items(&o, &ids(&["i9"]), "item_ids").err();
    assert!(e.is_some_and(|e| e.message.contains("is not in order #W1")));
}

#[test]
fn denials_read_as_sentences() {
    let p = policy();
    let now = 1_750_000_000_000;
    let denied = |action: ActionKind, o: &Order| match p.check_order(action, o, now) {
        Ok(()) => panic!("{action} unexpectedly allowed"),
        Err(d) => denial_message(&d, o),
    };
    let mut o = order();
    o.status = OrderStatus::Delivered;
    assert_eq!(
        denied(ActionKind::CancelOrder, &o),
        "Order #W1 is delivered; only pending orders can be cancelled."
    );
    o.fulfillments.push(Fulfillment {
        delivered_at: Some(now - 31 * DAY_MS),
        ..Fulfillment::default()
    });
    assert_eq!(
        denied(ActionKind::ReturnItems, &o),
        format!(
            "Order #W1 was delivered on {}, more than 30 days ago; a return is only possible \
             within 30 days of delivery.",
            super::view::date(now - 31 * DAY_MS)
        )
    );
    let mut o = order();
    o.items_modified = true;
    assert!(denied(ActionKind::ModifyOrderItems, &o).contains("only be changed one time"));
    assert!(denied(ActionKind::CancelOrder, &o).contains("so I can no longer cancel it"));
    // A standalone refund is not one of the tools, but its denial still reads as a sentence.
    let d = Denial::Disabled(ActionKind::Refund);
    assert!(denial_message(&d, &o).starts_with("Sorry, issuing a refund isn't something"));
}
