//! The write tools' rules, checked inside the store's write transaction against the order as it
//! is now: the brand's policy (statuses, once-only, lock after an item change, windows, cancel
//! reasons, refund destinations, exchange rules, the auto-approval limit), plus τ-bench retail's
//! tool semantics for what a write does (payment-history entries, gift-card balances, sorted
//! item lists, statuses). The effects are applied to the draft the store hands over; the store
//! persists them and logs the call. No SQL here.
//!
//! Deliberate differences from τ-bench v1: a cancellation refunds each payment method's *net*
//! amount (τ refunds every history entry, so an order whose payment was switched would be
//! refunded twice); an item id may name a unit of a line with quantity > 1 (the line is split);
//! and the brand policy's extra rules (same-variant swaps, approval limit, windows) apply.

use std::collections::HashMap;
use std::fmt;

use serde_json::{Value, json};

use super::{ActionRecord, ToolCall, ToolContext, ToolError, ToolErrorCode, ToolOutput, view};
use crate::commerce::policy::{ActionKind, Denial, RefundDestination};
use crate::commerce::{
    Address, Customer, ExchangeRequest, Millis, Minor, Order, OrderStatus, PaymentEntry,
    PaymentKind, Refund, ReturnRequest, Variant, format_money, options_text,
};
use crate::store::Store;

/// The latest delivery date across fulfilments.
pub(super) fn delivered_at(o: &Order) -> Option<Millis> {
    o.fulfillments.iter().filter_map(|f| f.delivered_at).max()
}

/// The order lines `ids` name, one unit each, in the order given: an id listed twice needs two
/// units in the order. Errors name the offending `field[index]`.
pub(super) fn take_items(o: &Order, ids: &[String], field: &str) -> Result<Vec<usize>, ToolError> {
    let mut left: Vec<i64> = o.items.iter().map(|i| i.quantity.max(0)).collect();
    let mut out = Vec::with_capacity(ids.len());
    for (j, id) in ids.iter().enumerate() {
        let id = id.trim();
        let found = o.items.iter().enumerate().position(|(k, it)| {
            left[k] > 0 && (it.variant_id == id || it.line_id.as_deref() == Some(id))
        });
        match found {
            Some(k) => {
                left[k] -= 1;
                out.push(k);
            }
            None => {
                let listed = o.items.iter().any(|it| it.variant_id == id);
                let why = if listed {
                    format!("is listed more times than order {} has it", o.number)
                } else {
                    format!("is not in order {}", o.number)
                };
                return Err(ToolError::invalid(format!(
                    "{field}[{j}]: item {id} {why}. Please check the item ids in the order details."
                )));
            }
        }
    }
    Ok(out)
}

fn short_status(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::Processed => "shipped",
        other => other.as_str(),
    }
}

/// A policy denial in words a shopper understands.
pub(super) fn denial_message(denial: &Denial, o: &Order) -> String {
    let n = &o.number;
    match denial {
        Denial::Disabled(a) | Denial::NotAnOrderAction(a) => format!(
            "Sorry, {} isn't something I can do here; a team member can help with that.",
            view::action_noun(*a)
        ),
        Denial::Status {
            action,
            status,
            allowed,
        } => {
            let allowed: Vec<String> = allowed
                .iter()
                .map(|s| short_status(*s).to_string())
                .collect();
            format!(
                "Order {n} is {}; only {} orders can {}.",
                status.describe(),
                view::or_list(&allowed),
                view::action_phrase(*action)
            )
        }
        Denial::AlreadyDone(a) => match a {
            ActionKind::ModifyOrderItems => format!(
                "The items of order {n} have already been changed once, and they can only be \
                 changed one time."
            ),
            ActionKind::ReturnItems => format!(
                "Order {n} already has a return request, and an order can only have one return."
            ),
            ActionKind::ExchangeItems => format!(
                "Order {n} already has an exchange request, and an order can only be exchanged \
                 once."
            ),
            other => format!(
                "Order {n} has already had this done once; {} is only possible once per order.",
                view::action_noun(*other)
            ),
        },
        Denial::LockedAfterItemChange(a) => {
            let what = match a {
                ActionKind::CancelOrder => "cancel it",
                ActionKind::ModifyOrderAddress => "change its shipping address",
                ActionKind::ModifyOrderItems => "change its items again",
                ActionKind::ModifyOrderPayment => "change its payment method",
                _ => "change it",
            };
            format!(
                "The items of order {n} were already changed, so I can no longer {what}; a team \
                 member can help."
            )
        }
        Denial::OutsideWindow { action, days } => {
            let what = match action {
                ActionKind::ReturnItems => "a return",
                ActionKind::ExchangeItems => "an exchange",
                _ => "this",
            };
            let when = delivered_at(o)
                .map(|d| format!(" on {}", view::date(d)))
                .unwrap_or_default();
            format!(
                "Order {n} was delivered{when}, more than {days} days ago; {what} is only possible \
                 within {days} days of delivery."
            )
        }
    }
}

/// The logged form of a refusal: the store records `Display`.
struct Refusal(ToolError);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.audit_outcome())
    }
}

/// The log's description of `call` by `ctx` (a macro: the store's request type is built, not
/// named, here).
macro_rules! request {
    ($ctx:expr, $call:expr) => {
        Store::action_request($call.name(), $call.args_json(), $ctx.now)
            .by($ctx.actor.kind(), $ctx.actor.id())
            .for_customer($ctx.customer_id.as_deref())
    };
}

/// Runs an order or customer write: checks who is asking, then applies the rules inside the
/// store's transaction; every outcome is logged.
pub(super) async fn execute_write(
    ctx: &ToolContext<'_>,
    call: &ToolCall,
) -> Result<ToolOutput, ToolError> {
    let req = request!(ctx, call);
    if !ctx.actor.is_staff() && ctx.customer_id.is_none() {
        let e = ToolError::not_verified();
        ctx.store
            .record_action(&req, call.order_id(), &e.audit_outcome())
            .await?;
        return Err(e);
    }
    if let ToolCall::UpdateCustomerAddress { address } = call {
        let Some(cid) = ctx.customer_id.as_deref() else {
            let e = ToolError::invalid(
                "No customer is selected: verify the customer before changing their address.",
            );
            ctx.store
                .record_action(&req, None, &e.audit_outcome())
                .await?;
            return Err(e);
        };
        let outcome = ctx
            .store
            .apply_customer_change(&req, cid, |customer| {
                update_customer_address(ctx, customer, address).map_err(Refusal)
            })
            .await?;
        return match outcome {
            Ok((mut out, entry)) => {
                out.data["audit_seq"] = entry.seq.into();
                Ok(out)
            }
            Err((Refusal(e), _)) => Err(e),
        };
    }
    let Some(order_ref) = call.order_id() else {
        return Err(ToolError::invalid(format!(
            "{} is not a write tool.",
            call.name()
        )));
    };
    let extra: Vec<String> = match call {
        ToolCall::ModifyOrderItems { new_item_ids, .. }
        | ToolCall::ExchangeItems { new_item_ids, .. } => new_item_ids.clone(),
        _ => Vec::new(),
    };
    let outcome = ctx
        .store
        .apply_order_change(&req, order_ref, &extra, |draft| {
            let Some(d) = draft else {
                return Err(Refusal(missing_order(ctx, order_ref)));
            };
            let mut w = Write {
                ctx,
                order: &mut d.order,
                customer: &mut d.customer,
                variants: &d.variants,
            };
            w.apply(call, order_ref).map_err(Refusal)
        })
        .await?;
    match outcome {
        Ok((mut out, entry)) => {
            out.data["audit_seq"] = entry.seq.into();
            Ok(out)
        }
        Err((Refusal(e), _)) => Err(e),
    }
}

fn missing_order(ctx: &ToolContext<'_>, order_ref: &str) -> ToolError {
    if ctx.actor.is_staff() {
        ToolError::new(
            ToolErrorCode::NotFound,
            format!("There is no order {}.", view::order_label(order_ref)),
        )
    } else {
        ToolError::not_your_order(order_ref)
    }
}

/// Records an escalation request; the caller changes the conversation's status.
pub(super) async fn escalate(
    ctx: &ToolContext<'_>,
    call: &ToolCall,
    reason: &str,
    summary: &str,
) -> Result<ToolOutput, ToolError> {
    if reason.trim().is_empty() {
        return Err(ToolError::invalid(
            "reason: say briefly why the conversation goes to a person.",
        ));
    }
    let entry = ctx
        .store
        .record_action(&request!(ctx, call), None, "recorded")
        .await?;
    Ok(ToolOutput {
        data: json!({"escalated": true, "reason": reason, "summary": summary,
                     "audit_seq": entry.seq}),
        action: Some(ActionRecord {
            kind: "escalated",
            order: None,
            details: json!({"reason": reason, "summary": summary}),
        }),
    })
}

fn check_address(address: &Address) -> Result<(), ToolError> {
    for (field, value) in [
        ("address1", &address.address1),
        ("city", &address.city),
        ("country", &address.country),
        ("zip", &address.zip),
    ] {
        if value.trim().is_empty() {
            return Err(ToolError::invalid(format!(
                "address.{field}: this part of the address is missing."
            )));
        }
    }
    Ok(())
}

/// `new` with the name and phone of `old` where `new` has none.
fn merged_address(old: Option<&Address>, new: &Address) -> Address {
    let mut a = new.clone();
    if let Some(old) = old {
        if a.name.trim().is_empty() {
            a.name = old.name.clone();
        }
        if a.phone.trim().is_empty() {
            a.phone = old.phone.clone();
        }
    }
    a
}

fn update_customer_address(
    ctx: &ToolContext<'_>,
    customer: Option<&mut Customer>,
    address: &Address,
) -> Result<ToolOutput, ToolError> {
    let Some(c) = customer else {
        return Err(ToolError::new(
            ToolErrorCode::NotFound,
            "I couldn't find your account any more; please verify again.",
        ));
    };
    if !ctx.policy.rule(ActionKind::UpdateCustomerAddress).enabled {
        return Err(ToolError::refused(format!(
            "Sorry, {} isn't something I can do here; a team member can help with that.",
            view::action_noun(ActionKind::UpdateCustomerAddress)
        )));
    }
    check_address(address)?;
    let new = merged_address(c.addresses.first(), address);
    match c.addresses.first_mut() {
        Some(first) => *first = new.clone(),
        None => c.addresses.push(new.clone()),
    }
    c.updated_at = Some(ctx.now);
    Ok(ToolOutput {
        data: json!({"customer_id": c.id, "default_address": view::address(&new)}),
        action: Some(ActionRecord {
            kind: "customer_address_updated",
            order: None,
            details: json!({"address": new.one_line()}),
        }),
    })
}

/// One order write, on the draft the store read inside its transaction.
struct Write<'a, 'c> {
    ctx: &'a ToolContext<'c>,
    order: &'a mut Order,
    customer: &'a mut Option<Customer>,
    variants: &'a HashMap<String, Variant>,
}

/// A planned swap: the order line and the variant replacing one unit of it.
struct Swap {
    line: usize,
    new: Variant,
}

impl Write<'_, '_> {
    fn apply(&mut self, call: &ToolCall, order_ref: &str) -> Result<ToolOutput, ToolError> {
        let ctx = self.ctx;
        if !ctx.actor.is_staff() && self.order.customer_id.as_deref() != ctx.customer_id.as_deref()
        {
            return Err(ToolError::not_your_order(order_ref));
        }
        match call {
            ToolCall::CancelOrder { reason, .. } => self.cancel(reason),
            ToolCall::ModifyOrderAddress { address, .. } => self.modify_address(address),
            ToolCall::ModifyOrderItems {
                item_ids,
                new_item_ids,
                payment_method_id,
                ..
            } => self.modify_items(item_ids, new_item_ids, payment_method_id),
            ToolCall::ModifyOrderPayment {
                payment_method_id, ..
            } => self.modify_payment(payment_method_id),
            ToolCall::ReturnItems {
                item_ids,
                payment_method_id,
                ..
            } => self.return_items(item_ids, payment_method_id),
            ToolCall::ExchangeItems {
                item_ids,
                new_item_ids,
                payment_method_id,
                ..
            } => self.exchange(item_ids, new_item_ids, payment_method_id),
            other => Err(ToolError::invalid(format!(
                "{} does not change an order.",
                other.name()
            ))),
        }
    }

    fn money(&self, amount: Minor) -> String {
        format_money(amount, &self.order.currency)
    }

    fn check(&self, action: ActionKind) -> Result<(), ToolError> {
        self.ctx
            .policy
            .check_order(action, self.order, self.ctx.now)
            .map_err(|d| ToolError::refused(denial_message(&d, self.order)))
    }

    /// Refunds above the limit need staff: refuse for anyone else.
    fn approval(&self, refund: Minor, what: &str) -> Result<(), ToolError> {
        if refund > 0 && !self.ctx.actor.is_staff() && self.ctx.policy.refund_needs_approval(refund)
        {
            return Err(ToolError::new(
                ToolErrorCode::NeedsApproval,
                format!(
                    "{what} means a refund of {}, which is more than the {} I can refund on my \
                     own, so a team member needs to approve it first. Nothing has been changed \
                     yet.",
                    self.money(refund),
                    self.money(self.ctx.policy.refunds.auto_approve_limit)
                ),
            ));
        }
        Ok(())
    }

    /// Index of the customer's payment method `id`.
    fn method(&self, id: &str, field: &str) -> Result<usize, ToolError> {
        self.customer
            .as_ref()
            .and_then(|c| c.payment_methods.iter().position(|m| m.id == id.trim()))
            .ok_or_else(|| {
                ToolError::invalid(format!(
                    "{field}: {id} is not one of the payment methods saved on your account."
                ))
            })
    }

    fn is_gift_card(&self, id: &str) -> bool {
        self.customer.as_ref().is_some_and(|c| {
            c.payment_methods
                .iter()
                .any(|m| m.id == id && m.is_gift_card())
        })
    }

    /// Adds `delta` to gift card `id`'s balance (no-op for other methods).
    fn credit_gift_card(&mut self, id: &str, delta: Minor) {
        if let Some(c) = self.customer.as_mut()
            && let Some(m) = c
                .payment_methods
                .iter_mut()
                .find(|m| m.id == id && m.is_gift_card())
        {
            m.balance = Some(m.balance.unwrap_or(0) + delta);
        }
    }

    /// A gift card paying `amount` must cover it.
    fn gift_card_covers(&self, m: usize, amount: Minor, what: &str) -> Result<(), ToolError> {
        let Some(pm) = self
            .customer
            .as_ref()
            .and_then(|c| c.payment_methods.get(m))
        else {
            return Ok(());
        };
        let balance = pm.balance.unwrap_or(0);
        if pm.is_gift_card() && amount > 0 && balance < amount {
            return Err(ToolError::refused(format!(
                "Gift card {} has a balance of {}, which does not cover the {} {what}. Please \
                 choose another payment method.",
                pm.id,
                self.money(balance),
                self.money(amount)
            )));
        }
        Ok(())
    }

    fn pay(&mut self, kind: PaymentKind, amount: Minor, method: &str) {
        self.order.payments.push(PaymentEntry {
            kind,
            amount,
            payment_method_id: method.to_string(),
            created_at: Some(self.ctx.now),
        });
    }

    fn record_refund(&mut self, amount: Minor, method: &str, note: String, lines: Vec<String>) {
        let o = &mut *self.order;
        let id = format!("rfd-{}-{}", o.id, o.refunds.len() + 1);
        o.refunds.push(Refund {
            id,
            order_id: o.id.clone(),
            amount,
            currency: o.currency.clone(),
            payment_method_id: Some(method.to_string()),
            note: Some(note),
            line_ids: lines,
            created_at: Some(self.ctx.now),
        });
    }

    fn output(&self, kind: &'static str, details: Value) -> ToolOutput {
        ToolOutput {
            data: json!({"order": view::order(self.order), "details": details}),
            action: Some(ActionRecord {
                kind,
                order: Some(self.order.number.clone()),
                details,
            }),
        }
    }

    fn cancel(&mut self, reason: &str) -> Result<ToolOutput, ToolError> {
        self.check(ActionKind::CancelOrder)?;
        let reasons = &self.ctx.policy.actions.cancel_order.reasons;
        let Some(reason) = reasons
            .iter()
            .find(|r| r.trim().eq_ignore_ascii_case(reason.trim()))
            .cloned()
        else {
            let quoted: Vec<String> = reasons.iter().map(|r| format!("\"{r}\"")).collect();
            return Err(ToolError::refused(format!(
                "An order can only be cancelled because it is {}.",
                view::or_list(&quoted)
            )));
        };
        // Each method gets back what it paid net of earlier refunds, in payment order.
        let mut net: Vec<(String, Minor)> = Vec::new();
        for p in &self.order.payments {
            let signed = match p.kind {
                PaymentKind::Payment => p.amount,
                PaymentKind::Refund => -p.amount,
            };
            match net.iter_mut().find(|(m, _)| *m == p.payment_method_id) {
                Some((_, sum)) => *sum += signed,
                None => net.push((p.payment_method_id.clone(), signed)),
            }
        }
        net.retain(|(_, amount)| *amount > 0);
        let total: Minor = net.iter().map(|(_, a)| a).sum();
        self.approval(total, &format!("Cancelling order {}", self.order.number))?;
        let mut refunds = Vec::new();
        for (method, amount) in &net {
            self.pay(PaymentKind::Refund, *amount, method);
            let gift = self.is_gift_card(method);
            if gift {
                self.credit_gift_card(method, *amount);
            }
            self.record_refund(*amount, method, format!("cancelled: {reason}"), Vec::new());
            refunds.push(
                json!({"payment_method_id": method, "amount": view::money(*amount),
                                "gift_card": gift}),
            );
        }
        let now = self.ctx.now;
        let o = &mut *self.order;
        o.status = OrderStatus::Cancelled;
        o.cancel_reason = Some(reason.clone());
        o.cancelled_at = Some(now);
        o.updated_at = Some(now);
        Ok(self.output(
            "order_cancelled",
            json!({"reason": reason, "refunds": refunds, "refund_total": view::money(total),
                   "refund_text": self.money(total)}),
        ))
    }

    fn modify_address(&mut self, address: &Address) -> Result<ToolOutput, ToolError> {
        self.check(ActionKind::ModifyOrderAddress)?;
        check_address(address)?;
        let new = merged_address(self.order.shipping_address.as_ref(), address);
        self.order.shipping_address = Some(new.clone());
        self.order.updated_at = Some(self.ctx.now);
        Ok(self.output("address_updated", json!({"address": new.one_line()})))
    }

    /// Checks a list of swaps against the exchange rules; returns them and the price difference
    /// (new minus old).
    fn plan_swaps(
        &self,
        item_ids: &[String],
        new_item_ids: &[String],
    ) -> Result<(Vec<Swap>, Minor), ToolError> {
        if item_ids.is_empty() {
            return Err(ToolError::invalid(
                "item_ids: name at least one item of the order.",
            ));
        }
        if item_ids.len() != new_item_ids.len() {
            return Err(ToolError::invalid(format!(
                "new_item_ids: give one new item for each item in item_ids ({} items, {} new \
                 items).",
                item_ids.len(),
                new_item_ids.len()
            )));
        }
        let rules = &self.ctx.policy.exchange;
        let lines = take_items(self.order, item_ids, "item_ids")?;
        let mut swaps = Vec::with_capacity(lines.len());
        let mut diff: Minor = 0;
        for (j, (&line, new_id)) in lines.iter().zip(new_item_ids).enumerate() {
            let old = &self.order.items[line];
            let new_id = new_id.trim();
            let Some(new) = self.variants.get(new_id) else {
                return Err(ToolError::invalid(format!(
                    "new_item_ids[{j}]: there is no item {new_id}. Please check the item ids in \
                     the product details."
                )));
            };
            if rules.same_product && new.product_id != old.product_id {
                return Err(ToolError::refused(format!(
                    "Item {new_id} is not a version of the {}; an item can only be swapped for \
                     another version of the same product.",
                    old.name
                )));
            }
            if !rules.allow_same_variant && new.id == old.variant_id {
                return Err(ToolError::refused(format!(
                    "Item {new_id} is the same version of the {} ({}) as the one in the order; \
                     please choose a different option.",
                    old.name,
                    options_text(&old.options)
                )));
            }
            if rules.require_available && !view::is_available(new) {
                return Err(ToolError::refused(format!(
                    "The {} with {} (item {new_id}) is not available right now; please choose \
                     another option.",
                    old.name,
                    options_text(&new.options)
                )));
            }
            diff += new.price - old.price;
            swaps.push(Swap {
                line,
                new: new.clone(),
            });
        }
        Ok((swaps, diff))
    }

    /// Replaces one unit of each swap's line with the new variant (splitting lines that hold
    /// more than one unit).
    fn apply_swaps(&mut self, swaps: Vec<Swap>) {
        // Splitting inserts lines, so apply from the last line backwards.
        let mut swaps = swaps;
        swaps.sort_by_key(|s| std::cmp::Reverse(s.line));
        for s in swaps {
            let Some(old) = self.order.items.get_mut(s.line) else {
                continue;
            };
            let mut unit = old.clone();
            unit.quantity = 1;
            unit.variant_id = s.new.id.clone();
            unit.product_id = s.new.product_id.clone();
            unit.price = s.new.price;
            unit.options = s.new.options.clone();
            unit.sku = s.new.sku.clone();
            unit.line_id = None;
            if old.quantity > 1 {
                old.quantity -= 1;
                self.order.items.insert(s.line + 1, unit);
            } else {
                *old = unit;
            }
        }
    }

    fn modify_items(
        &mut self,
        item_ids: &[String],
        new_item_ids: &[String],
        payment_method_id: &str,
    ) -> Result<ToolOutput, ToolError> {
        self.check(ActionKind::ModifyOrderItems)?;
        let (swaps, diff) = self.plan_swaps(item_ids, new_item_ids)?;
        let m = self.method(payment_method_id, "payment_method_id")?;
        self.gift_card_covers(m, diff, "price difference")?;
        self.approval(
            -diff,
            &format!("Changing the items of order {}", self.order.number),
        )?;
        let method = payment_method_id.trim();
        // Like τ-bench: one entry for the difference, even when it is zero.
        let kind = if diff > 0 {
            PaymentKind::Payment
        } else {
            PaymentKind::Refund
        };
        self.pay(kind, diff.abs(), method);
        self.credit_gift_card(method, -diff);
        if diff < 0 {
            self.record_refund(-diff, method, "item change".into(), new_item_ids.to_vec());
        }
        let pairs: Vec<Value> = swaps
            .iter()
            .filter_map(|s| {
                self.order.items.get(s.line).map(|old| {
                    json!({"item_id": old.variant_id, "new_item_id": s.new.id,
                           "name": old.name, "new_options": options_text(&s.new.options)})
                })
            })
            .collect();
        self.apply_swaps(swaps);
        let now = self.ctx.now;
        let o = &mut *self.order;
        o.items_modified = true;
        o.total = o.items_total();
        o.updated_at = Some(now);
        Ok(self.output(
            "items_modified",
            json!({"swaps": pairs, "price_difference": view::money(diff),
                   "payment_method_id": method}),
        ))
    }

    fn modify_payment(&mut self, payment_method_id: &str) -> Result<ToolOutput, ToolError> {
        self.check(ActionKind::ModifyOrderPayment)?;
        let m = self.method(payment_method_id, "payment_method_id")?;
        let n = self.order.number.clone();
        let (old, amount) = match self.order.payments.as_slice() {
            [p] if p.kind == PaymentKind::Payment => (p.payment_method_id.clone(), p.amount),
            _ => {
                return Err(ToolError::refused(format!(
                    "The payment of order {n} has already been changed or partly refunded, so I \
                     can't switch it to another method; a team member can help."
                )));
            }
        };
        let new = payment_method_id.trim().to_string();
        if old == new {
            return Err(ToolError::refused(format!(
                "Order {n} is already paid with {new}; choose a different payment method."
            )));
        }
        self.gift_card_covers(m, amount, "order total")?;
        self.pay(PaymentKind::Payment, amount, &new);
        self.pay(PaymentKind::Refund, amount, &old);
        self.credit_gift_card(&new, -amount);
        self.credit_gift_card(&old, amount);
        self.record_refund(amount, &old, format!("payment moved to {new}"), Vec::new());
        self.order.updated_at = Some(self.ctx.now);
        Ok(self.output(
            "payment_updated",
            json!({"from": old, "to": new, "amount": view::money(amount)}),
        ))
    }

    /// Refunds go to the original payment method or one of the customer's gift cards, as the
    /// policy allows.
    fn refund_destination(&self, payment_method_id: &str) -> Result<String, ToolError> {
        let id = payment_method_id.trim();
        let policy = self.ctx.policy;
        let original = self
            .order
            .payments
            .first()
            .map(|p| p.payment_method_id.as_str());
        let owned = self.method(id, "payment_method_id");
        let to_original = policy
            .refund_destination_allowed(RefundDestination::OriginalPaymentMethod)
            && original == Some(id);
        if !to_original {
            owned?;
        }
        let to_gift_card =
            policy.refund_destination_allowed(RefundDestination::GiftCard) && self.is_gift_card(id);
        if to_original || to_gift_card {
            return Ok(id.to_string());
        }
        let mut options = Vec::new();
        if policy.refund_destination_allowed(RefundDestination::OriginalPaymentMethod)
            && let Some(o) = original
        {
            options.push(format!("the original payment method ({o})"));
        }
        if policy.refund_destination_allowed(RefundDestination::GiftCard) {
            options.push("one of your gift cards".to_string());
        }
        Err(ToolError::refused(format!(
            "A refund can only go to {}; {id} is not one of those.",
            view::or_list(&options)
        )))
    }

    fn return_items(
        &mut self,
        item_ids: &[String],
        payment_method_id: &str,
    ) -> Result<ToolOutput, ToolError> {
        self.check(ActionKind::ReturnItems)?;
        if item_ids.is_empty() {
            return Err(ToolError::invalid(
                "item_ids: name at least one item to return.",
            ));
        }
        let method = self.refund_destination(payment_method_id)?;
        let lines = take_items(self.order, item_ids, "item_ids")?;
        let refund: Minor = lines.iter().map(|&k| self.order.items[k].price).sum();
        self.approval(
            refund,
            &format!("Returning these items of order {}", self.order.number),
        )?;
        let mut sorted: Vec<String> = item_ids.iter().map(|s| s.trim().to_string()).collect();
        sorted.sort();
        let now = self.ctx.now;
        let o = &mut *self.order;
        let id = match o.returns.len() {
            0 => format!("ret-{}", o.id),
            n => format!("ret-{}-{}", o.id, n + 1),
        };
        o.returns.push(ReturnRequest {
            id,
            order_id: o.id.clone(),
            item_ids: sorted.clone(),
            payment_method_id: method.clone(),
            status: "requested".into(),
            refund,
            currency: o.currency.clone(),
            created_at: Some(now),
        });
        o.status = OrderStatus::ReturnRequested;
        o.updated_at = Some(now);
        Ok(self.output(
            "return_created",
            json!({"item_ids": sorted, "payment_method_id": method,
                   "refund": view::money(refund), "refund_text": self.money(refund)}),
        ))
    }

    fn exchange(
        &mut self,
        item_ids: &[String],
        new_item_ids: &[String],
        payment_method_id: &str,
    ) -> Result<ToolOutput, ToolError> {
        self.check(ActionKind::ExchangeItems)?;
        let (_, diff) = self.plan_swaps(item_ids, new_item_ids)?;
        let m = self.method(payment_method_id, "payment_method_id")?;
        self.gift_card_covers(m, diff, "price difference")?;
        self.approval(
            -diff,
            &format!("Exchanging these items of order {}", self.order.number),
        )?;
        let mut old: Vec<String> = item_ids.iter().map(|s| s.trim().to_string()).collect();
        let mut new: Vec<String> = new_item_ids.iter().map(|s| s.trim().to_string()).collect();
        old.sort();
        new.sort();
        let method = payment_method_id.trim().to_string();
        let now = self.ctx.now;
        let o = &mut *self.order;
        let id = match o.exchanges.len() {
            0 => format!("exc-{}", o.id),
            n => format!("exc-{}-{}", o.id, n + 1),
        };
        o.exchanges.push(ExchangeRequest {
            id,
            order_id: o.id.clone(),
            item_ids: old.clone(),
            new_item_ids: new.clone(),
            payment_method_id: method.clone(),
            status: "requested".into(),
            price_difference: diff,
            currency: o.currency.clone(),
            created_at: Some(now),
        });
        o.status = OrderStatus::ExchangeRequested;
        o.updated_at = Some(now);
        Ok(self.output(
            "exchange_created",
            json!({"item_ids": old, "new_item_ids": new, "payment_method_id": method,
                   "price_difference": view::money(diff), "price_difference_text": self.money(diff)}),
        ))
    }
}
