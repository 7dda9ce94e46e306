//! The tool layer (`concierge::agent::tools`) against a real store, on SQLite (always) and
//! PostgreSQL (when `TEST_DATABASE_URL` is set): the disclosure gate, the policy checks on every
//! write, concurrency, the hash-chained action log, and the τ-bench replay — every task of
//! τ-bench v1's retail test split replayed through `parse_call`/`execute`, with the exported
//! database compared to what τ-bench's own tools would have produced.

use std::path::Path;

use concierge::agent::tools::{
    self, Actor, ToolCall, ToolContext, ToolError, ToolErrorCode, ToolOutput, parse_call,
};
use concierge::commerce::policy::Policy;
use concierge::commerce::{OrderStatus, PaymentKind};
use concierge::import::{self, ImportBatch, ImportKind};
use concierge::store::{Backend, Store};
use serde_json::{Map, Value, json};

use crate::helpers::{Db, fresh_postgres, repo_path, shared_data};

const NOW: i64 = 1_750_000_000_000;

fn brand_policy() -> Policy {
    Policy::load(&repo_path("brand/policy.toml")).expect("brand policy loads")
}

fn tau_batch() -> ImportBatch {
    let mut batches = import::load(
        ImportKind::TauRetail,
        &shared_data("tau-bench-retail/tau-bench-v1"),
    )
    .expect("parse tau-bench");
    batches.remove(0).1
}

/// An empty store on `db`; None when Postgres is not configured.
async fn open(db: Db) -> Option<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = match db {
        Db::Sqlite => Store::open(&dir.path().join("data"), None, 4).await,
        Db::Postgres => Store::connect(&fresh_postgres().await?, 4).await,
    }
    .expect("open store");
    Some((store, dir))
}

/// A store with the τ-bench data imported.
async fn open_tau(db: Db) -> Option<(Store, tempfile::TempDir)> {
    let (store, dir) = open(db).await?;
    let b = tau_batch();
    store
        .import(&b.customers, &b.products, &b.orders, |_| {})
        .await
        .expect("import");
    Some((store, dir))
}

fn ctx<'a>(store: &'a Store, policy: &'a Policy, customer: Option<&str>) -> ToolContext<'a> {
    ToolContext {
        store,
        policy,
        actor: Actor::Llm,
        customer_id: customer.map(str::to_string),
        now: NOW,
    }
}

async fn call(ctx: &ToolContext<'_>, name: &str, args: Value) -> Result<ToolOutput, ToolError> {
    let call = parse_call(name, &args).unwrap_or_else(|e| panic!("{name} {args}: {e}"));
    tools::execute(ctx, &call).await
}

fn refused(r: Result<ToolOutput, ToolError>) -> ToolError {
    match r {
        Ok(out) => panic!("expected a refusal, got {}", out.data),
        Err(e) => e,
    }
}

async fn gift_balance(store: &Store, customer: &str, method: &str) -> Option<i64> {
    let c = store.get_customer(customer).await.unwrap().unwrap();
    c.payment_methods
        .iter()
        .find(|m| m.id == method)
        .and_then(|m| m.balance)
}

on_both!(cancel_pending_refunds_to_gift_card);
async fn cancel_pending_refunds_to_gift_card(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    let c = ctx(&store, &policy, Some("noah_hernandez_4232"));
    let before = gift_balance(&store, "noah_hernandez_4232", "gift_card_3410768").await;
    assert_eq!(before, Some(5600));
    let out = call(
        &c,
        "cancel_order",
        json!({"order_id": "#W3897284", "reason": "Ordered by mistake"}),
    )
    .await
    .expect("cancel succeeds");
    let action = out.action.expect("a write reports its action");
    assert_eq!(
        (action.kind, action.order.as_deref()),
        ("order_cancelled", Some("#W3897284"))
    );
    assert_eq!(action.details["refund_total"], "267.58");

    let o = store.get_order("#W3897284").await.unwrap().unwrap();
    assert_eq!(o.status, OrderStatus::Cancelled);
    assert_eq!(o.cancel_reason.as_deref(), Some("ordered by mistake"));
    let last = o.payments.last().unwrap();
    assert_eq!(
        (last.kind, last.amount, last.payment_method_id.as_str()),
        (PaymentKind::Refund, 26758, "gift_card_3410768")
    );
    assert_eq!(o.refunds.len(), 1);
    assert_eq!(
        gift_balance(&store, "noah_hernandez_4232", "gift_card_3410768").await,
        Some(5600 + 26758),
        "gift-card refunds are credited at once"
    );
    let log = store.audit_entries(0, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    let e = &log[0];
    assert_eq!(
        (e.tool.as_str(), e.outcome.as_str()),
        ("cancel_order", "applied")
    );
    assert_eq!(e.customer_id.as_deref(), Some("noah_hernandez_4232"));
    assert_eq!(e.actor_kind, "llm");
    assert_eq!(e.before.as_ref().unwrap()["status"], "pending");
    assert_eq!(e.after.as_ref().unwrap()["status"], "cancelled");
    assert_eq!(e.effects[0]["balance_after"], 5600 + 26758);
}

on_both!(cancel_refusals_say_why);
async fn cancel_refusals_say_why(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    // #W2611340 is james_li_5688's shipped order; #W4817420 is ava_moore_2033's delivered one.
    let c = ctx(&store, &policy, Some("ava_moore_2033"));
    let e = refused(
        call(
            &c,
            "cancel_order",
            json!({"order_id": "#W4817420", "reason": "no longer needed"}),
        )
        .await,
    );
    assert_eq!(e.code, ToolErrorCode::PolicyRefused);
    assert_eq!(
        e.message,
        "Order #W4817420 is delivered; only pending orders can be cancelled."
    );
    let c = ctx(&store, &policy, Some("noah_hernandez_4232"));
    let e = refused(
        call(
            &c,
            "cancel_order",
            json!({"order_id": "#W3897284", "reason": "found it cheaper"}),
        )
        .await,
    );
    assert_eq!(e.code, ToolErrorCode::PolicyRefused);
    assert!(
        e.message
            .contains("\"no longer needed\" or \"ordered by mistake\""),
        "{}",
        e.message
    );
    let o = store.get_order("#W3897284").await.unwrap().unwrap();
    assert_eq!(o.status, OrderStatus::Pending, "a refusal changes nothing");
    assert_eq!(o.payments.len(), 1);
    // Refusals are logged for staff, with the reason.
    let log = store.audit_entries(0, 10).await.unwrap();
    assert_eq!(log.len(), 2);
    assert!(
        log[0]
            .outcome
            .starts_with("refused: policy_refused: Order #W4817420 is delivered")
    );
    assert!(log[1].after.is_none() && log[1].before.is_some());
}

on_both!(items_can_be_modified_once);
async fn items_can_be_modified_once(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    let c = ctx(&store, &policy, Some("fatima_anderson_2157"));
    let args = json!({"order_id": "#W2974929", "item_ids": ["3877188862"],
                      "new_item_ids": ["6843647669"], "payment_method_id": "paypal_7916550"});
    let out = call(&c, "modify_order_items", args.clone())
        .await
        .expect("first change");
    assert_eq!(out.action.map(|a| a.kind), Some("items_modified"));
    let o = store.get_order("#W2974929").await.unwrap().unwrap();
    assert!(o.items_modified && o.status == OrderStatus::Pending);
    assert!(o.items.iter().any(|i| i.variant_id == "6843647669"));
    let last = o.payments.last().unwrap();
    assert_eq!(
        (last.kind, last.amount),
        (PaymentKind::Refund, 18203 - 18010)
    );

    let args = json!({"order_id": "#W2974929", "item_ids": ["6843647669"],
                      "new_item_ids": ["3877188862"], "payment_method_id": "paypal_7916550"});
    let e = refused(call(&c, "modify_order_items", args).await);
    assert_eq!(e.code, ToolErrorCode::PolicyRefused);
    assert!(
        e.message.contains("can only be changed one time"),
        "{}",
        e.message
    );
    let e = refused(
        call(
            &c,
            "cancel_order",
            json!({"order_id": "#W2974929", "reason": "no longer needed"}),
        )
        .await,
    );
    assert!(e.message.contains("were already changed"), "{}", e.message);
}

on_both!(swap_rules_are_enforced);
async fn swap_rules_are_enforced(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    let c = ctx(&store, &policy, Some("ava_moore_2033"));
    // An unavailable variant of the same product.
    let e = refused(
        call(
            &c,
            "exchange_items",
            json!({"order_id": "#W4817420", "item_ids": ["6777246137"],
                   "new_item_ids": ["1434748144"], "payment_method_id": "gift_card_8168843"}),
        )
        .await,
    );
    assert_eq!(e.code, ToolErrorCode::PolicyRefused);
    assert!(
        e.message.contains("is not available right now"),
        "{}",
        e.message
    );
    // An item that is not in the order names the field.
    let e = refused(
        call(
            &c,
            "exchange_items",
            json!({"order_id": "#W4817420", "item_ids": ["0000000000"],
                   "new_item_ids": ["1434748144"], "payment_method_id": "gift_card_8168843"}),
        )
        .await,
    );
    assert_eq!(e.code, ToolErrorCode::InvalidArgument);
    assert!(e.message.starts_with("item_ids[0]"), "{}", e.message);
    // The same variant is not a swap (brand policy: allow_same_variant = false).
    let e = refused(
        call(
            &c,
            "exchange_items",
            json!({"order_id": "#W4817420", "item_ids": ["6777246137"],
                   "new_item_ids": ["6777246137"], "payment_method_id": "gift_card_8168843"}),
        )
        .await,
    );
    assert!(e.message.contains("same version"), "{}", e.message);
    let o = store.get_order("#W4817420").await.unwrap().unwrap();
    assert_eq!(o.status, OrderStatus::Delivered);
}

on_both!(refund_destination_must_be_original_or_gift_card);
async fn refund_destination_must_be_original_or_gift_card(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    let c = ctx(&store, &policy, Some("yara_hernandez_3670"));
    let ret = |method: &str| json!({"order_id": "#W7860975", "item_ids": ["1673859111"], "payment_method_id": method});
    let e = refused(call(&c, "return_items", ret("paypal_5589935")).await);
    assert_eq!(e.code, ToolErrorCode::PolicyRefused);
    assert!(
        e.message
            .contains("original payment method (credit_card_5528301)")
            && e.message.contains("gift cards"),
        "{}",
        e.message
    );
    // Someone else's gift card is not theirs.
    let e = refused(call(&c, "return_items", ret("gift_card_3410768")).await);
    assert!(e.message.starts_with("payment_method_id:"), "{}", e.message);
    // Their own gift card is fine.
    let out = call(&c, "return_items", ret("gift_card_3985012"))
        .await
        .expect("return");
    assert_eq!(out.action.map(|a| a.kind), Some("return_created"));
    let o = store.get_order("#W7860975").await.unwrap().unwrap();
    assert_eq!(o.status, OrderStatus::ReturnRequested);
    assert_eq!(o.returns[0].payment_method_id, "gift_card_3985012");
    assert_eq!(o.returns[0].item_ids, ["1673859111"]);
    // One return per order.
    let e = refused(call(&c, "return_items", ret("credit_card_5528301")).await);
    assert_eq!(e.code, ToolErrorCode::PolicyRefused);
}

on_both!(gift_card_must_cover_the_amount);
async fn gift_card_must_cover_the_amount(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    let c = ctx(&store, &policy, Some("emma_kovacs_7176"));
    let e = refused(
        call(
            &c,
            "modify_order_payment",
            json!({"order_id": "#W2307204", "payment_method_id": "gift_card_7777844"}),
        )
        .await,
    );
    assert_eq!(e.code, ToolErrorCode::PolicyRefused);
    assert_eq!(
        e.message,
        "Gift card gift_card_7777844 has a balance of $79.00, which does not cover the $122.80 \
         order total. Please choose another payment method."
    );
    let o = store.get_order("#W2307204").await.unwrap().unwrap();
    assert_eq!(o.payments.len(), 1);
    assert_eq!(
        gift_balance(&store, "emma_kovacs_7176", "gift_card_7777844").await,
        Some(7900)
    );
}

on_both!(orders_are_shown_only_to_their_customer);
async fn orders_are_shown_only_to_their_customer(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    // Unverified: reads and writes need a verified customer; the write attempt is logged.
    let anon = ctx(&store, &policy, None);
    let e = refused(call(&anon, "get_order", json!({"order_id": "#W3897284"})).await);
    assert_eq!(e.code, ToolErrorCode::NotVerified);
    let e = refused(
        call(
            &anon,
            "cancel_order",
            json!({"order_id": "#W3897284", "reason": "no longer needed"}),
        )
        .await,
    );
    assert_eq!(e.code, ToolErrorCode::NotVerified);
    let e = refused(call(&anon, "list_customer_orders", json!({})).await);
    assert_eq!(e.code, ToolErrorCode::NotVerified);
    // Products are public.
    assert!(
        call(&anon, "get_product", json!({"product_id": "9523456873"}))
            .await
            .is_ok()
    );

    // Someone else's order and a missing order look the same, and say nothing about the order.
    let c = ctx(&store, &policy, Some("ava_moore_2033"));
    let other = refused(call(&c, "get_order", json!({"order_id": "#W3897284"})).await);
    let missing = refused(call(&c, "get_order", json!({"order_id": "#W0000000"})).await);
    assert_eq!(other.code, ToolErrorCode::NotYourOrder);
    assert_eq!(missing.code, ToolErrorCode::NotYourOrder);
    assert_eq!(
        other.message.replace("#W3897284", "#X"),
        missing.message.replace("#W0000000", "#X")
    );
    for word in ["pending", "noah", "267", "gift"] {
        assert!(
            !other.message.to_lowercase().contains(word),
            "{}",
            other.message
        );
    }
    let e = refused(
        call(
            &c,
            "cancel_order",
            json!({"order_id": "#W3897284", "reason": "no longer needed"}),
        )
        .await,
    );
    assert_eq!(e.code, ToolErrorCode::NotYourOrder);
    let e = refused(call(&c, "delivery_estimate", json!({"order_id": "#W3897284"})).await);
    assert_eq!(e.code, ToolErrorCode::NotYourOrder);
    let o = store.get_order("#W3897284").await.unwrap().unwrap();
    assert_eq!(o.status, OrderStatus::Pending);

    // Staff may read any order.
    let staff = ToolContext {
        actor: Actor::Staff { id: "sam".into() },
        ..ctx(&store, &policy, None)
    };
    let out = call(&staff, "get_order", json!({"order_id": "W3897284"}))
        .await
        .expect("staff");
    assert_eq!(out.data["status"], "pending");
    let e = refused(call(&staff, "get_order", json!({"order_id": "#W0000000"})).await);
    assert_eq!(e.code, ToolErrorCode::NotFound);

    // FindCustomer returns an id and nothing else.
    let out = call(
        &anon,
        "find_customer",
        json!({"email": "Noah.Brown7922@example.com"}),
    )
    .await
    .expect("found");
    assert_eq!(out.data["customer_id"], "noah_brown_6181");
    assert_eq!(out.data.as_object().map(|m| m.len()), Some(3));
    let e = refused(call(&anon, "find_customer", json!({"first_name": "Noah"})).await);
    assert!(
        e.message.contains("`last_name`") && e.message.contains("`zip`"),
        "{}",
        e.message
    );

    // The log holds the refused write attempts (unverified, not theirs), not the reads.
    let log = store.audit_entries(0, 100).await.unwrap();
    let outcomes: Vec<&str> = log.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(outcomes[0].starts_with("refused: not_verified"));
    assert!(outcomes[1].starts_with("refused: not_your_order"));
}

on_both!(large_refunds_need_staff_approval);
async fn large_refunds_need_staff_approval(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    let c = ctx(&store, &policy, Some("sofia_rossi_8776"));
    let args = json!({"order_id": "#W5918442", "reason": "no longer needed"});
    let e = refused(call(&c, "cancel_order", args.clone()).await);
    assert_eq!(e.code, ToolErrorCode::NeedsApproval);
    assert!(
        e.message.contains("$1,463.70") && e.message.contains("$500.00"),
        "{}",
        e.message
    );
    assert_eq!(
        store.get_order("#W5918442").await.unwrap().unwrap().status,
        OrderStatus::Pending
    );
    // A staff member approves by making the same call.
    let staff = ToolContext {
        actor: Actor::Staff { id: "sam".into() },
        ..ctx(&store, &policy, Some("sofia_rossi_8776"))
    };
    call(&staff, "cancel_order", args)
        .await
        .expect("staff cancels");
    let log = store.audit_entries(0, 10).await.unwrap();
    assert!(log[0].outcome.starts_with("needs approval: "));
    assert_eq!(
        (log[1].actor_kind.as_str(), log[1].actor_id.as_deref()),
        ("staff", Some("sam"))
    );
    assert_eq!(log[1].outcome, "applied");
}

on_both!(concurrent_cancels_apply_once);
async fn concurrent_cancels_apply_once(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let (store, policy) = (store.clone(), policy.clone());
        handles.push(tokio::spawn(async move {
            let c = ctx(&store, &policy, Some("noah_hernandez_4232"));
            call(
                &c,
                "cancel_order",
                json!({"order_id": "#W3897284", "reason": "no longer needed"}),
            )
            .await
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.expect("join"));
    }
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    let err = results.into_iter().find_map(Result::err).unwrap();
    assert_eq!(err.code, ToolErrorCode::PolicyRefused);
    assert!(err.message.contains("is cancelled"), "{}", err.message);
    let o = store.get_order("#W3897284").await.unwrap().unwrap();
    let refunds = o
        .payments
        .iter()
        .filter(|p| p.kind == PaymentKind::Refund)
        .count();
    assert_eq!(refunds, 1, "refunded once");
    assert_eq!(
        gift_balance(&store, "noah_hernandez_4232", "gift_card_3410768").await,
        Some(5600 + 26758)
    );
    let check = store.verify_audit_chain().await.unwrap();
    assert!(check.is_intact() && check.checked == 2, "{check:?}");
}

on_both!(audit_chain_detects_tampering);
async fn audit_chain_detects_tampering(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    let c = ctx(&store, &policy, Some("noah_hernandez_4232"));
    let _ = call(
        &c,
        "cancel_order",
        json!({"order_id": "#W3897284", "reason": "nope"}),
    )
    .await;
    call(
        &c,
        "cancel_order",
        json!({"order_id": "#W3897284", "reason": "no longer needed"}),
    )
    .await
    .expect("cancel");
    call(
        &c,
        "escalate",
        json!({"reason": "human", "summary": "wants to talk"}),
    )
    .await
    .expect("escalate");
    let check = store.verify_audit_chain().await.unwrap();
    assert_eq!((check.checked, check.first_bad.clone()), (3, None));
    let log = store.audit_entries(0, 10).await.unwrap();
    assert_eq!(log[0].prev_hash, "0".repeat(64));
    assert_eq!(log[1].prev_hash, log[0].hash);
    assert_eq!(log[2].tool, "escalate");
    assert_eq!(store.audit_entries(1, 1).await.unwrap()[0].seq, 2);

    // The table refuses changes …
    let tamper = "UPDATE audit_log SET args = '{\"order_id\":\"#W3897284\",\"reason\":\"ordered by mistake\"}' WHERE seq = 2";
    assert!(
        store.write_execute(sqlx::query(tamper)).await.is_err(),
        "append-only"
    );
    // … and someone who removes that guard is still caught.
    let drop = match store.backend() {
        Backend::Sqlite => "DROP TRIGGER audit_log_no_update",
        Backend::Postgres => "DROP TRIGGER audit_log_no_update ON audit_log",
    };
    store.write_execute(sqlx::query(drop)).await.unwrap();
    store.write_execute(sqlx::query(tamper)).await.unwrap();
    let check = store.verify_audit_chain().await.unwrap();
    let bad = check.first_bad.expect("tampering detected");
    assert_eq!(bad.seq, 2, "{bad}");
    assert!(bad.problem.contains("content was changed"), "{bad}");
    assert_eq!(check.checked, 1);
}

on_both!(reads_report_lookups);
async fn reads_report_lookups(db: Db) {
    let Some((store, _dir)) = open_tau(db).await else {
        return;
    };
    let policy = brand_policy();
    let c = ctx(&store, &policy, Some("yara_hernandez_3670"));
    let out = call(&c, "return_eligibility", json!({"order_id": "#W7860975"}))
        .await
        .unwrap();
    assert_eq!(out.data["return"]["eligible"], true);
    assert_eq!(
        out.data["refund_destinations"][0]["payment_method_id"],
        "credit_card_5528301"
    );
    assert_eq!(out.action.map(|a| a.kind), Some("order_lookup"));
    let out = call(&c, "delivery_estimate", json!({"order_id": "#W7860975"}))
        .await
        .unwrap();
    assert_eq!(
        out.data["basis"], "unknown",
        "τ-bench orders carry no dates"
    );
    let out = call(&c, "list_customer_orders", json!({})).await.unwrap();
    assert!(out.data["orders"].as_array().is_some_and(|o| !o.is_empty()));
    assert!(out.action.is_none());
    let out = call(
        &c,
        "check_availability",
        json!({"product_id": "9523456873", "options": {"Color": "blue"}}),
    )
    .await
    .unwrap();
    let matching = out.data["matching"].as_array().cloned().unwrap_or_default();
    assert!(!matching.is_empty());
    assert!(matching.iter().all(|v| v["options"]["color"] == "blue"));
    assert_eq!(out.action.map(|a| a.kind), Some("availability"));
    let e = refused(
        call(
            &c,
            "check_availability",
            json!({"product_id": "9523456873", "options": {"flavour": "x"}}),
        )
        .await,
    );
    assert!(e.message.starts_with("options.flavour:"), "{}", e.message);
    assert!(
        store.audit_entries(0, 10).await.unwrap().is_empty(),
        "reads are not logged"
    );
}

// ---------------------------------------------------------------------------------------------
// The τ-bench replay.

/// τ-bench v1's retail data as τ-bench's own tools see it, with those tools' write semantics
/// (tau_bench/envs/retail/tools/*.py, see ../shared/data/tau-bench-retail/TOOLS.md), plus the
/// two rules our layer adds that τ-bench v1 does not enforce: the disclosure gate (the order must
/// be the verified user's) and, when the policy says so, no swapping an item for itself.
struct Tau {
    users: Map<String, Value>,
    orders: Map<String, Value>,
    products: Map<String, Value>,
    allow_same_variant: bool,
}

fn cents(v: &Value) -> i64 {
    (v.as_f64().unwrap_or(0.0) * 100.0).round() as i64
}

fn amount(c: i64) -> Value {
    Value::from(c as f64 / 100.0)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn read_json(path: &Path) -> Map<String, Value> {
    let bytes = std::fs::read(path).unwrap();
    match serde_json::from_slice(&bytes).unwrap() {
        Value::Object(m) => m,
        _ => panic!("{} is not an object", path.display()),
    }
}

impl Tau {
    fn load(allow_same_variant: bool) -> Tau {
        let dir = shared_data("tau-bench-retail/tau-bench-v1");
        Tau {
            users: read_json(&dir.join("users.json")),
            orders: read_json(&dir.join("orders.json")),
            products: read_json(&dir.join("products.json")),
            allow_same_variant,
        }
    }

    /// The order if it exists and is the verified user's.
    fn own_order(&self, kw: &Value, user: &str) -> Result<String, String> {
        let id = kw["order_id"].as_str().unwrap_or_default().to_string();
        match self.orders.get(&id) {
            None => Err("order not found".into()),
            Some(o) if o["user_id"] != user => Err("not the user's order".into()),
            Some(_) => Ok(id),
        }
    }

    fn counts_ok(order: &Value, item_ids: &[String]) -> bool {
        let all: Vec<String> = order["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["item_id"].as_str().unwrap().to_string())
            .collect();
        item_ids.iter().all(|id| {
            item_ids.iter().filter(|x| *x == id).count() <= all.iter().filter(|x| *x == id).count()
        })
    }

    /// The price difference of swapping `item_ids` for `new_item_ids`, with τ-bench's checks.
    fn swap_diff(
        &self,
        order: &Value,
        item_ids: &[String],
        new_item_ids: &[String],
    ) -> Result<i64, String> {
        if !Self::counts_ok(order, item_ids) {
            return Err("item not found".into());
        }
        if item_ids.len() != new_item_ids.len() {
            return Err("the number of items to be exchanged should match".into());
        }
        let mut diff = 0;
        for (old_id, new_id) in item_ids.iter().zip(new_item_ids) {
            let item = order["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["item_id"] == old_id.as_str())
                .unwrap();
            let variants = &self.products[item["product_id"].as_str().unwrap()]["variants"];
            let Some(v) = variants.get(new_id.as_str()) else {
                return Err(format!("new item {new_id} not found"));
            };
            if v["available"] != true {
                return Err(format!("new item {new_id} not available"));
            }
            if !self.allow_same_variant && old_id == new_id {
                return Err("same item (brand policy)".into());
            }
            diff += cents(&v["price"]) - cents(&item["price"]);
        }
        Ok(diff)
    }

    fn method<'a>(&'a mut self, user: &str, id: &str) -> Option<&'a mut Value> {
        self.users[user]["payment_methods"].get_mut(id)
    }

    /// Applies one ground-truth action; Err where τ-bench's tool (or our added rule) refuses.
    fn apply(&mut self, name: &str, kw: &Value, user: &str) -> Result<(), String> {
        match name {
            "get_order_details" => self.own_order(kw, user).map(|_| ()),
            "get_product_details" => match self
                .products
                .contains_key(kw["product_id"].as_str().unwrap_or(""))
            {
                true => Ok(()),
                false => Err("product not found".into()),
            },
            "cancel_pending_order" => {
                let id = self.own_order(kw, user)?;
                let order = &self.orders[&id];
                if order["status"] != "pending" {
                    return Err("non-pending order cannot be cancelled".into());
                }
                let reason = kw["reason"].as_str().unwrap_or_default();
                if !["no longer needed", "ordered by mistake"].contains(&reason) {
                    return Err("invalid reason".into());
                }
                let payments = order["payment_history"].as_array().unwrap().clone();
                let mut refunds = Vec::new();
                for p in &payments {
                    let method = p["payment_method_id"].as_str().unwrap().to_string();
                    refunds.push(json!({"transaction_type": "refund", "amount": p["amount"],
                                        "payment_method_id": method}));
                    if method.contains("gift_card") {
                        let pm = self.method(user, &method).unwrap();
                        pm["balance"] = amount(cents(&pm["balance"]) + cents(&p["amount"]));
                    }
                }
                let order = &mut self.orders[&id];
                order["status"] = "cancelled".into();
                order["cancel_reason"] = reason.into();
                order["payment_history"]
                    .as_array_mut()
                    .unwrap()
                    .extend(refunds);
                Ok(())
            }
            "modify_pending_order_address" => {
                let id = self.own_order(kw, user)?;
                if self.orders[&id]["status"] != "pending" {
                    return Err("non-pending order cannot be modified".into());
                }
                self.orders[&id]["address"] = tau_address(kw);
                Ok(())
            }
            "modify_pending_order_payment" => {
                let id = self.own_order(kw, user)?;
                let order = self.orders[&id].clone();
                if order["status"] != "pending" {
                    return Err("non-pending order cannot be modified".into());
                }
                let new = kw["payment_method_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if self.method(user, &new).is_none() {
                    return Err("payment method not found".into());
                }
                let history = order["payment_history"].as_array().unwrap();
                if history.len() > 1 || history[0]["transaction_type"] != "payment" {
                    return Err("there should be exactly one payment for a pending order".into());
                }
                let old = history[0]["payment_method_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                if old == new {
                    return Err("the new payment method should be different".into());
                }
                let amt = cents(&history[0]["amount"]);
                let pm = self.method(user, &new).unwrap();
                if pm["source"] == "gift_card" && cents(&pm["balance"]) < amt {
                    return Err("insufficient gift card balance".into());
                }
                if pm["source"] == "gift_card" {
                    pm["balance"] = amount(cents(&pm["balance"]) - amt);
                }
                if old.contains("gift_card") {
                    let pm = self.method(user, &old).unwrap();
                    pm["balance"] = amount(cents(&pm["balance"]) + amt);
                }
                let h = self.orders[&id]["payment_history"].as_array_mut().unwrap();
                h.push(json!({"transaction_type": "payment", "amount": amount(amt), "payment_method_id": new}));
                h.push(json!({"transaction_type": "refund", "amount": amount(amt), "payment_method_id": old}));
                Ok(())
            }
            "modify_pending_order_items" => {
                let id = self.own_order(kw, user)?;
                let order = self.orders[&id].clone();
                if order["status"] != "pending" {
                    return Err("non-pending order cannot be modified".into());
                }
                let (old_ids, new_ids) = (strs(&kw["item_ids"]), strs(&kw["new_item_ids"]));
                let diff = self.swap_diff(&order, &old_ids, &new_ids)?;
                let method = kw["payment_method_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let Some(pm) = self.method(user, &method) else {
                    return Err("payment method not found".into());
                };
                if pm["source"] == "gift_card" && cents(&pm["balance"]) < diff {
                    return Err("insufficient gift card balance".into());
                }
                if pm["source"] == "gift_card" {
                    pm["balance"] = amount(cents(&pm["balance"]) - diff);
                }
                let products = self.products.clone();
                let order = &mut self.orders[&id];
                order["payment_history"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({
                    "transaction_type": if diff > 0 { "payment" } else { "refund" },
                    "amount": amount(diff.abs()), "payment_method_id": method}));
                for (old_id, new_id) in old_ids.iter().zip(&new_ids) {
                    let item = order["items"]
                        .as_array_mut()
                        .unwrap()
                        .iter_mut()
                        .find(|i| i["item_id"] == old_id.as_str())
                        .unwrap();
                    let v = &products[item["product_id"].as_str().unwrap()]["variants"]
                        [new_id.as_str()];
                    item["item_id"] = new_id.as_str().into();
                    item["price"] = v["price"].clone();
                    item["options"] = v["options"].clone();
                }
                order["status"] = "pending (item modified)".into();
                Ok(())
            }
            "return_delivered_order_items" => {
                let id = self.own_order(kw, user)?;
                let order = self.orders[&id].clone();
                if order["status"] != "delivered" {
                    return Err("non-delivered order cannot be returned".into());
                }
                let method = kw["payment_method_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if self.method(user, &method).is_none() {
                    return Err("payment method not found".into());
                }
                if !method.contains("gift_card")
                    && order["payment_history"][0]["payment_method_id"] != method.as_str()
                {
                    return Err("payment method should be the original one or a gift card".into());
                }
                let mut ids = strs(&kw["item_ids"]);
                if !Self::counts_ok(&order, &ids) {
                    return Err("some item not found".into());
                }
                ids.sort();
                let order = &mut self.orders[&id];
                order["status"] = "return requested".into();
                order["return_items"] = json!(ids);
                order["return_payment_method_id"] = method.into();
                Ok(())
            }
            "exchange_delivered_order_items" => {
                let id = self.own_order(kw, user)?;
                let order = self.orders[&id].clone();
                if order["status"] != "delivered" {
                    return Err("non-delivered order cannot be exchanged".into());
                }
                let (mut old_ids, mut new_ids) = (strs(&kw["item_ids"]), strs(&kw["new_item_ids"]));
                let diff = self.swap_diff(&order, &old_ids, &new_ids)?;
                let method = kw["payment_method_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let Some(pm) = self.method(user, &method) else {
                    return Err("payment method not found".into());
                };
                if pm["source"] == "gift_card" && cents(&pm["balance"]) < diff {
                    return Err("insufficient gift card balance".into());
                }
                old_ids.sort();
                new_ids.sort();
                let order = &mut self.orders[&id];
                order["status"] = "exchange requested".into();
                order["exchange_items"] = json!(old_ids);
                order["exchange_new_items"] = json!(new_ids);
                order["exchange_payment_method_id"] = method.into();
                order["exchange_price_difference"] = amount(diff);
                Ok(())
            }
            "modify_user_address" => {
                self.users[user]["address"] = tau_address(kw);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn tau_address(kw: &Value) -> Value {
    json!({"address1": kw["address1"], "address2": kw["address2"], "city": kw["city"],
           "state": kw["state"], "country": kw["country"], "zip": kw["zip"]})
}

/// τ-bench's action as one of our calls: (tool, arguments), or None for actions with no
/// counterpart (calculate, think, list_all_product_types).
fn our_call(name: &str, kw: &Value) -> Option<(&'static str, Value)> {
    let pick = |keys: &[&str]| {
        let mut m = Map::new();
        for k in keys {
            if let Some(v) = kw.get(*k) {
                m.insert((*k).to_string(), v.clone());
            }
        }
        Value::Object(m)
    };
    let address = json!({"address1": kw["address1"], "address2": kw["address2"],
        "city": kw["city"], "state": kw["state"], "country": kw["country"], "zip": kw["zip"]});
    Some(match name {
        "find_user_id_by_email" | "find_user_id_by_name_zip" => (
            "find_customer",
            pick(&["email", "first_name", "last_name", "zip"]),
        ),
        "get_order_details" => ("get_order", pick(&["order_id"])),
        "get_product_details" => ("get_product", pick(&["product_id"])),
        "get_user_details" => ("list_customer_orders", json!({})),
        "transfer_to_human_agents" => (
            "escalate",
            json!({"reason": "transfer_to_human_agents", "summary": kw["summary"]}),
        ),
        "cancel_pending_order" => ("cancel_order", pick(&["order_id", "reason"])),
        "modify_pending_order_address" => (
            "modify_order_address",
            json!({"order_id": kw["order_id"], "address": address}),
        ),
        "modify_pending_order_payment" => (
            "modify_order_payment",
            pick(&["order_id", "payment_method_id"]),
        ),
        "modify_pending_order_items" => (
            "modify_order_items",
            pick(&["order_id", "item_ids", "new_item_ids", "payment_method_id"]),
        ),
        "return_delivered_order_items" => (
            "return_items",
            pick(&["order_id", "item_ids", "payment_method_id"]),
        ),
        "exchange_delivered_order_items" => (
            "exchange_items",
            pick(&["order_id", "item_ids", "new_item_ids", "payment_method_id"]),
        ),
        "modify_user_address" => ("update_customer_address", json!({"address": address})),
        _ => return None,
    })
}

/// The first difference between two τ-bench JSON values (numbers compared in cents, key order
/// ignored), for a readable failure.
fn first_diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut kx: Vec<&String> = x.keys().collect();
            let mut ky: Vec<&String> = y.keys().collect();
            kx.sort();
            ky.sort();
            if kx != ky {
                return Some(format!("{path}: keys {kx:?} vs {ky:?}"));
            }
            x.iter()
                .find_map(|(k, v)| first_diff(v, &y[k], &format!("{path}.{k}")))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_diff(v, w, &format!("{path}[{i}]"))),
        (Value::Number(_), Value::Number(_)) => {
            (cents(a) != cents(b)).then(|| format!("{path}: {a} vs {b}"))
        }
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}

/// Where each task's fresh store comes from: a SQLite file, or a PostgreSQL database used as a
/// template (`CREATE DATABASE … TEMPLATE …` copies it in a fraction of an import's time).
enum Template {
    Sqlite(tempfile::TempDir),
    Postgres { admin: String, url: String },
}

/// One task's copy (the SQLite one lives as long as its directory).
enum Instance {
    Sqlite { _dir: tempfile::TempDir },
    Postgres { admin: String, name: String },
}

async fn pg_admin(admin: &str, sql: String) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await.expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("admin statement");
    let _ = conn.close().await;
}

fn db_name(url: &str) -> (&str, &str) {
    url.rsplit_once('/').expect("database URL has a name")
}

impl Template {
    async fn build(db: Db) -> Option<Template> {
        let b = tau_batch();
        let (store, template) = match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = Store::open(&dir.path().join("data"), None, 4)
                    .await
                    .unwrap();
                (store, Template::Sqlite(dir))
            }
            Db::Postgres => {
                let url = fresh_postgres().await?;
                let admin = std::env::var("TEST_DATABASE_URL").ok()?;
                let store = Store::connect(&url, 4).await.unwrap();
                (store, Template::Postgres { admin, url })
            }
        };
        store
            .import(&b.customers, &b.products, &b.orders, |_| {})
            .await
            .expect("import");
        // (Closing checkpoints SQLite's WAL into the file.)
        store.close().await;
        Some(template)
    }

    async fn instance(&self, n: usize) -> (Store, Instance) {
        match self {
            Template::Sqlite(dir) => {
                let copy = tempfile::tempdir().expect("tempdir");
                let data = copy.path().join("data");
                std::fs::create_dir_all(&data).unwrap();
                for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
                    let entry = entry.unwrap();
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with("concierge.db") {
                        std::fs::copy(entry.path(), data.join(&name)).unwrap();
                    }
                }
                let store = Store::open(&data, None, 4).await.expect("open copy");
                (store, Instance::Sqlite { _dir: copy })
            }
            Template::Postgres { admin, url } => {
                let (prefix, template) = db_name(url);
                let name = format!("{template}_{n}");
                pg_admin(admin, format!("CREATE DATABASE {name} TEMPLATE {template}")).await;
                let store = Store::connect(&format!("{prefix}/{name}"), 4)
                    .await
                    .expect("open copy");
                let admin = admin.clone();
                (store, Instance::Postgres { admin, name })
            }
        }
    }

    async fn drop(self) {
        if let Template::Postgres { admin, url } = &self {
            pg_admin(admin, format!("DROP DATABASE IF EXISTS {}", db_name(url).1)).await;
        }
    }
}

impl Instance {
    async fn drop(self, store: Store) {
        store.close().await;
        if let Instance::Postgres { admin, name } = self {
            pg_admin(&admin, format!("DROP DATABASE IF EXISTS {name}")).await;
        }
    }
}

#[derive(Debug, Default)]
struct ReplayFigures {
    tasks: usize,
    actions: usize,
    calls: usize,
    writes_applied: usize,
    writes_refused_like_tau: usize,
    approvals_by_staff: usize,
    reads_refused_like_tau: usize,
    no_counterpart: usize,
    verified_as_other_user: Vec<usize>,
    /// Every call refused, as τ-bench's tool refuses it too: task, action, τ's reason, ours.
    refusals: Vec<String>,
}

/// τ-bench's own user lookup.
fn tau_find(tau: &Tau, kw: &Value) -> Option<String> {
    let lower = |v: &Value| v.as_str().unwrap_or_default().to_lowercase();
    tau.users
        .iter()
        .find(|(_, u)| match kw.get("email") {
            Some(e) => u["email"] == *e,
            None => {
                lower(&u["name"]["first_name"]) == lower(&kw["first_name"])
                    && lower(&u["name"]["last_name"]) == lower(&kw["last_name"])
                    && u["address"]["zip"] == kw["zip"]
            }
        })
        .map(|(id, _)| id.clone())
}

/// Replays every task of τ-bench v1's retail test split, each on a fresh copy of the imported
/// data, as the task's user (or whoever its own lookup verifies), through `parse_call` and
/// `execute`, as the LLM actor; a refund the policy sends for approval is approved by staff
/// making the same call. Every call must succeed exactly where τ-bench's tool succeeds (plus the
/// disclosure gate, and the same-variant rule when `allow_same_variant` is false), and the
/// exported database must equal τ-bench's after the same actions.
async fn tau_replay(db: Db, allow_same_variant: bool) -> Option<ReplayFigures> {
    let mut policy = brand_policy();
    policy.exchange.allow_same_variant = allow_same_variant;
    let template = Template::build(db).await?;
    let tasks: Vec<Value> = serde_json::from_slice(
        &std::fs::read(shared_data("tau-bench-retail/tau-bench-v1/tasks_test.json")).unwrap(),
    )
    .unwrap();
    let base = Tau::load(allow_same_variant);
    let mut figures = ReplayFigures::default();
    let mut failures: Vec<String> = Vec::new();
    for task in &tasks {
        let index = task["index"].as_u64().unwrap_or_default() as usize;
        let mut tau = Tau {
            users: base.users.clone(),
            orders: base.orders.clone(),
            products: base.products.clone(),
            allow_same_variant,
        };
        let (store, instance) = template.instance(index).await;
        let mut user = task["user_id"].as_str().unwrap().to_string();
        figures.tasks += 1;
        for action in task["actions"].as_array().unwrap() {
            figures.actions += 1;
            let name = action["name"].as_str().unwrap();
            let kw = &action["kwargs"];
            let Some((tool, args)) = our_call(name, kw) else {
                figures.no_counterpart += 1;
                continue;
            };
            figures.calls += 1;
            let call = match parse_call(tool, &args) {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("task {index}: {name} {kw}: parse_call: {e}"));
                    continue;
                }
            };
            let what = format!("task {index}: {name} {kw}");
            if tool == "find_customer" {
                let expected = tau_find(&tau, kw);
                let got = tools::execute(&ctx(&store, &policy, None), &call).await;
                let got_id = got
                    .as_ref()
                    .ok()
                    .and_then(|o| o.data["customer_id"].as_str().map(str::to_string));
                if got_id != expected {
                    failures.push(format!("{what}: found {got_id:?}, τ-bench {expected:?}"));
                }
                if let Some(id) = got_id
                    && id != user
                {
                    figures.verified_as_other_user.push(index);
                    user = id;
                }
                continue;
            }
            if name == "get_user_details" && kw["user_id"] != user.as_str() {
                failures.push(format!("{what}: asks for another user than {user}"));
            }
            let expected = tau.apply(name, kw, &user);
            let mut got = tools::execute(&ctx(&store, &policy, Some(&user)), &call).await;
            if let Err(e) = &got
                && e.code == ToolErrorCode::NeedsApproval
            {
                figures.approvals_by_staff += 1;
                let staff = ToolContext {
                    actor: Actor::Staff {
                        id: "approver".into(),
                    },
                    ..ctx(&store, &policy, Some(&user))
                };
                got = tools::execute(&staff, &call).await;
            }
            if let (Err(t), Err(e)) = (&expected, &got) {
                figures
                    .refusals
                    .push(format!("task {index} {name}: τ: {t}; ours: {}", e.message));
            }
            match (&expected, &got) {
                (Ok(()), Ok(_)) if call.is_write() => figures.writes_applied += 1,
                (Err(_), Err(_)) if call.is_write() => figures.writes_refused_like_tau += 1,
                (Err(_), Err(_)) => figures.reads_refused_like_tau += 1,
                (Ok(()), Ok(_)) => {}
                (Ok(()), Err(e)) => {
                    failures.push(format!("{what}: τ-bench succeeds, we refuse: {e:?}"))
                }
                (Err(t), Ok(_)) => {
                    failures.push(format!("{what}: τ-bench refuses ({t}), we succeed"))
                }
            }
        }
        let check = store.verify_audit_chain().await.unwrap();
        if !check.is_intact() {
            failures.push(format!("task {index}: audit chain broken: {check:?}"));
        }
        let (users, orders, _) = import::tau::export(
            &store.all_customers().await.unwrap(),
            &store.all_products().await.unwrap(),
            &store.all_orders().await.unwrap(),
        );
        for (got, want, what) in [
            (users, Value::Object(tau.users), "users"),
            (orders, Value::Object(tau.orders), "orders"),
        ] {
            if let Some(diff) = first_diff(&got, &want, what) {
                failures.push(format!(
                    "task {index}: export differs from τ-bench at {diff}"
                ));
            }
        }
        instance.drop(store).await;
    }
    template.drop().await;
    eprintln!("τ-bench replay ({db:?}, allow_same_variant = {allow_same_variant}): {figures:#?}");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Some(figures)
}

on_both!(tau_replay_brand_policy);
async fn tau_replay_brand_policy(db: Db) {
    let Some(f) = tau_replay(db, false).await else {
        return;
    };
    assert_eq!(f.tasks, 115);
    // The brand refuses exchanging an item for the very same item (τ2 refuses it too; τ-bench v1
    // allows it): tasks 18, 91 and 108 ask for that once each.
    assert!(f.writes_applied >= 150, "{f:?}");
}

on_both!(tau_replay_tau_rules);
async fn tau_replay_tau_rules(db: Db) {
    let Some(f) = tau_replay(db, true).await else {
        return;
    };
    assert_eq!(f.tasks, 115);
    assert!(f.writes_applied >= 150, "{f:?}");
}

#[test]
fn tau_actions_map_to_tools() {
    let kw = json!({"order_id": "#W1", "address1": "1 A St", "address2": "", "city": "X",
                    "state": "NY", "country": "USA", "zip": "10001"});
    let (tool, args) = our_call("modify_pending_order_address", &kw).unwrap();
    let call = parse_call(tool, &args).unwrap();
    assert!(
        matches!(call, ToolCall::ModifyOrderAddress { ref address, .. } if address.zip == "10001")
    );
    assert!(our_call("calculate", &json!({"expression": "1+1"})).is_none());
}
