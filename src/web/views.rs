//! The pages: the queue (filters, message search, pages of 50), the escalation list (age and
//! SLA), a conversation (timeline across channels, escalation draft, customer sidebar with
//! orders) and the staff admin page; plus the HTML fragments the live script inserts.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::StaffAuth;
use super::{WebError, WebState, age, ago, author_label, clip, minutes, reason_label, when};
use crate::commerce::format_money;
use crate::commerce::model::{Customer, Order, options_text};
use crate::store::{
    Conversation, Direction, Message, QueueFilter, QueueRow, StaffMember, StaffNote,
};
use crate::util::now_ms;

/// A message search lists at most this many conversations (the best matches).
pub const SEARCH_LIMIT: usize = 200;
/// Conversations per queue page.
pub const PAGE_SIZE: i64 = 50;
/// An escalation older than this many minutes (unless an admin set another) is past its SLA.
pub const DEFAULT_SLA_MINUTES: i64 = 30;
const SLA_SETTING: &str = "inbox_sla_minutes";
const STATUSES: [(&str, &str); 4] = [
    ("open", "Open"),
    ("awaiting_customer", "Awaiting customer"),
    ("escalated", "Escalated"),
    ("resolved", "Resolved"),
];

pub(crate) fn status_label(s: &str) -> &'static str {
    STATUSES
        .iter()
        .find(|(k, _)| *k == s)
        .map(|(_, v)| *v)
        .unwrap_or("Unknown")
}

pub(crate) async fn sla_minutes(web: &WebState) -> i64 {
    match web.app.store.get_setting(SLA_SETTING).await {
        Ok(Some(v)) => v.parse().unwrap_or(DEFAULT_SLA_MINUTES),
        _ => DEFAULT_SLA_MINUTES,
    }
}

pub(crate) async fn set_sla_minutes(web: &WebState, minutes: i64) -> Result<(), WebError> {
    web.app
        .store
        .set_setting(SLA_SETTING, &minutes.to_string())
        .await?;
    Ok(())
}

/// What every page's layout needs.
pub(super) async fn layout(
    web: &WebState,
    auth: &StaffAuth,
    title: &str,
    nav: &str,
) -> Result<serde_json::Map<String, Value>, WebError> {
    let flash = auth.take_flash(web).await?;
    let open = web.app.store.count_open_escalations().await?;
    let mut m = serde_json::Map::new();
    m.insert("title".into(), json!(title));
    m.insert("nav".into(), json!(nav));
    m.insert("me".into(), auth.me());
    m.insert(
        "flash".into(),
        json!(flash.map(|f| match f.strip_prefix("error:") {
            Some(text) => json!({"error": true, "text": text}),
            None => json!({"error": false, "text": f}),
        })),
    );
    m.insert("open_escalations".into(), json!(open));
    Ok(m)
}

#[derive(Debug, Default, Deserialize)]
pub struct QueueQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    assignee: Option<String>,
    #[serde(default)]
    escalated: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    page: Option<i64>,
}

fn nonblank(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn row_view(r: &QueueRow, now: i64, sla_ms: i64) -> Value {
    let who = r
        .customer_name
        .clone()
        .or_else(|| r.sender.clone())
        .unwrap_or_else(|| "Unknown sender".into());
    let escalation_age = r.escalated_at.map(|t| now - t);
    json!({
        "id": r.id,
        "url": format!("/inbox/c/{}", r.id),
        "channel": r.channel,
        "status": r.status,
        "status_label": status_label(&r.status),
        "who": who,
        "subject": r.subject,
        "preview": r.last_text.as_deref().map(|t| clip(t, 140)),
        "last_author": r.last_author.as_deref().map(author_label),
        "assignee": r.assignee_email,
        "tags": r.tags,
        "escalation": r.open_escalation.as_deref().map(reason_label),
        "sla_breach": r.open_escalation.is_some() && escalation_age.is_some_and(|a| a > sla_ms),
        "updated": age(now - r.updated_at),
        "updated_at": when(r.updated_at),
    })
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (k, v) in pairs {
        if v.is_empty() {
            continue;
        }
        s.push(if s.is_empty() { '?' } else { '&' });
        s.push_str(k);
        s.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                s.push(b as char);
            } else {
                s.push_str(&format!("%{b:02X}"));
            }
        }
    }
    s
}

pub async fn queue(
    State(web): State<WebState>,
    auth: StaffAuth,
    Query(q): Query<QueueQuery>,
) -> Result<Response, WebError> {
    let store = &web.app.store;
    let status = nonblank(&q.status);
    if let Some(s) = &status
        && !STATUSES.iter().any(|(k, _)| k == s)
    {
        return Err(WebError::BadRequest(format!(
            "{s:?} is not a status: use open, awaiting_customer, escalated or resolved"
        )));
    }
    let channel = nonblank(&q.channel);
    let assignee_param = nonblank(&q.assignee);
    let assignee = match assignee_param.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some("me") => Some(Some(auth.staff_id().to_string())),
        Some(id) => Some(Some(id.to_string())),
    };
    let escalated = q
        .escalated
        .as_deref()
        .is_some_and(|v| v == "1" || v == "on");
    let search = nonblank(&q.q);
    let ids = match &search {
        Some(text) => Some(
            web.search
                .conversations(store, text, SEARCH_LIMIT)
                .await
                .map_err(|e| WebError::Internal(format!("message search failed: {e:#}")))?,
        ),
        None => None,
    };
    let capped = ids.as_ref().is_some_and(|i| i.len() >= SEARCH_LIMIT);
    let filter = QueueFilter {
        status: status.clone(),
        channel: channel.clone(),
        assignee,
        escalated,
        ids,
    };
    let page = q.page.unwrap_or(1).max(1);
    let (rows, total) = store
        .queue(&filter, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        .await?;
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let now = now_ms();
    let sla_ms = sla_minutes(&web).await * 60_000;
    let staff = store.list_staff().await?;
    let channels = store.conversation_channels().await?;
    let base = [
        ("status", status.as_deref().unwrap_or("")),
        ("channel", channel.as_deref().unwrap_or("")),
        ("assignee", assignee_param.as_deref().unwrap_or("")),
        ("escalated", if escalated { "1" } else { "" }),
        ("q", search.as_deref().unwrap_or("")),
    ];
    let page_url = |p: i64| {
        let p = p.to_string();
        let mut pairs = base.to_vec();
        pairs.push(("page", &p));
        format!("/inbox{}", query_string(&pairs))
    };
    let mut data = layout(&web, &auth, "Queue", "queue").await?;
    data.insert(
        "rows".into(),
        json!(
            rows.iter()
                .map(|r| row_view(r, now, sla_ms))
                .collect::<Vec<_>>()
        ),
    );
    data.insert("total".into(), json!(total));
    data.insert("search_capped".into(), json!(capped));
    data.insert("search_limit".into(), json!(SEARCH_LIMIT));
    data.insert(
        "filters".into(),
        json!({
            "q": search,
            "escalated": escalated,
            "statuses": STATUSES.iter().map(|(k, v)| json!({"value": k, "label": v, "selected": status.as_deref() == Some(*k)})).collect::<Vec<_>>(),
            "channels": channels.iter().map(|c| json!({"value": c, "label": c, "selected": channel.as_deref() == Some(c.as_str())})).collect::<Vec<_>>(),
            "assignees": assignee_options(&staff, assignee_param.as_deref(), true),
            "active": status.is_some() || channel.is_some() || assignee_param.is_some() || escalated || search.is_some(),
            // Only the unfiltered first page takes live rows (a changed conversation goes on top).
            "live": page == 1 && !(status.is_some() || channel.is_some() || assignee_param.is_some() || escalated || search.is_some()),
        }),
    );
    data.insert(
        "pager".into(),
        json!({
            "page": page, "pages": pages,
            "from": if total == 0 { 0 } else { (page - 1) * PAGE_SIZE + 1 },
            "to": ((page - 1) * PAGE_SIZE + rows.len() as i64),
            "prev": (page > 1).then(|| page_url(page - 1)),
            "next": (page < pages).then(|| page_url(page + 1)),
        }),
    );
    web.page("queue", &data)
}

fn assignee_options(staff: &[StaffMember], selected: Option<&str>, filters: bool) -> Vec<Value> {
    let mut out = Vec::new();
    if filters {
        out.push(json!({"value": "me", "label": "Me", "selected": selected == Some("me")}));
    }
    out.push(json!({"value": "none", "label": "Nobody", "selected": selected == Some("none") || (!filters && selected.is_none())}));
    for s in staff.iter().filter(|s| s.active) {
        out.push(json!({"value": s.id, "label": s.display(), "selected": selected == Some(s.id.as_str())}));
    }
    out
}

/// One queue row, for the live script (a conversation that changed moves to the top).
pub async fn queue_row(
    State(web): State<WebState>,
    _auth: StaffAuth,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let filter = QueueFilter {
        ids: Some(vec![id.clone()]),
        ..Default::default()
    };
    let (rows, _) = web.app.store.queue(&filter, 0, 1).await?;
    let row = rows
        .first()
        .ok_or_else(|| WebError::NotFound(format!("no conversation {id}")))?;
    let sla_ms = sla_minutes(&web).await * 60_000;
    Ok(Html(web.render("queue_row", &row_view(row, now_ms(), sla_ms))?).into_response())
}

async fn escalation_rows_data(web: &WebState) -> Result<Value, WebError> {
    let now = now_ms();
    let sla = sla_minutes(web).await;
    let rows = web.app.store.open_escalations(500).await?;
    Ok(json!({
        "sla_minutes": sla,
        "sla_text": minutes(sla),
        "rows": rows.iter().map(|e| json!({
            "id": e.id,
            "url": format!("/inbox/c/{}", e.conversation_id),
            "conversation_id": e.conversation_id,
            "reason": reason_label(&e.reason),
            "summary": clip(&e.summary, 200),
            "channel": e.channel,
            "who": e.customer_name.clone().or_else(|| e.sender.clone()).unwrap_or_else(|| "Unknown sender".into()),
            "assignee": e.assignee_email,
            "age": age(now - e.created_at),
            "since": when(e.created_at),
            "sla_breach": now - e.created_at > sla * 60_000,
        })).collect::<Vec<_>>(),
    }))
}

pub async fn escalations(
    State(web): State<WebState>,
    auth: StaffAuth,
) -> Result<Response, WebError> {
    let mut data = layout(&web, &auth, "Escalations", "escalations").await?;
    let rows = escalation_rows_data(&web).await?;
    data.insert("esc".into(), rows);
    web.page("escalations", &data)
}

/// The escalation table's rows, for the live script.
pub async fn escalation_rows(
    State(web): State<WebState>,
    _auth: StaffAuth,
) -> Result<Response, WebError> {
    let rows = escalation_rows_data(&web).await?;
    Ok(Html(web.render("escalation_rows", &rows)?).into_response())
}

/// Staff by id, for naming who wrote what.
async fn staff_names(
    web: &WebState,
) -> Result<(Vec<StaffMember>, HashMap<String, String>), WebError> {
    let staff = web.app.store.list_staff().await?;
    let names = staff
        .iter()
        .map(|s| (s.id.clone(), s.display().to_string()))
        .collect();
    Ok((staff, names))
}

fn message_item(
    m: &Message,
    names: &HashMap<String, String>,
    customer: Option<&str>,
    delivery: Option<String>,
) -> Value {
    let kind = m.author_kind.as_str();
    let who = match kind {
        "staff" => m
            .author_id
            .as_deref()
            .map(|id| names.get(id).cloned().unwrap_or_else(|| id.to_string())),
        "consumer_agent" => m.author_id.clone(),
        "customer" => customer.map(str::to_string),
        _ => None,
    };
    json!({
        "kind": "message",
        "id": m.id,
        "seq": m.seq,
        "author_kind": kind,
        "author": author_label(kind),
        "who": who,
        "direction": m.direction.as_str(),
        "text": m.text,
        "when": when(m.created_at),
        "delivery": delivery,
    })
}

fn note_item(n: &StaffNote) -> Value {
    json!({
        "kind": "note",
        "id": n.id,
        "seq": null,
        "author_kind": "note",
        "author": "Private note",
        "who": n.staff_email,
        "direction": "internal",
        "text": n.text,
        "when": when(n.created_at),
        "delivery": null,
    })
}

/// How an outbound message reached (or is reaching) its channel.
fn delivery_text(
    conv: &Conversation,
    m: &Message,
    deliveries: &HashMap<String, crate::store::Delivery>,
) -> Option<String> {
    if m.direction != Direction::Outbound {
        return None;
    }
    if let Some(d) = deliveries.get(&m.id) {
        return Some(match (&d.status[..], &d.last_error) {
            ("sent", _) => format!("Delivered on {}", d.channel),
            ("queued", _) => format!("Queued for {}", d.channel),
            (s, Some(e)) => format!("{s} on {} ({} attempts): {e}", d.channel, d.attempts),
            (s, None) => format!("{s} on {}", d.channel),
        });
    }
    Some(match conv.channel.as_str() {
        "api" => "Delivered on api (in the conversation the API returns)".into(),
        "webchat" => "Delivered on webchat (sent to the open chat, kept for reconnects)".into(),
        c if crate::store::Channel::parse(c).is_ok_and(|c| c.delivers()) => {
            format!("Not queued for {c}")
        }
        c => format!("Delivered on {c}"),
    })
}

pub(crate) async fn timeline(
    web: &WebState,
    conv: &Conversation,
    messages: &[Message],
    notes: &[StaffNote],
    names: &HashMap<String, String>,
    customer: Option<&str>,
) -> Result<Vec<Value>, WebError> {
    let deliveries: HashMap<String, crate::store::Delivery> = web
        .app
        .store
        .deliveries_for_conversation(&conv.id)
        .await?
        .into_iter()
        .map(|d| (d.message_id.clone(), d))
        .collect();
    let mut items = Vec::with_capacity(messages.len() + notes.len());
    let mut notes = notes.iter().peekable();
    for m in messages {
        while let Some(n) = notes.next_if(|n| n.created_at < m.created_at) {
            items.push(note_item(n));
        }
        let d = delivery_text(conv, m, &deliveries);
        items.push(message_item(m, names, customer, d));
    }
    items.extend(notes.map(note_item));
    Ok(items)
}

fn order_view(o: &Order, customer: Option<&Customer>) -> Value {
    let money = |m| format_money(m, &o.currency);
    let item_name = |id: &str| {
        o.items
            .iter()
            .find(|i| i.variant_id == id || i.line_id.as_deref() == Some(id))
            .map(|i| i.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let addr = o.shipping_address.clone().unwrap_or_default();
    json!({
        "id": o.id,
        "number": o.number,
        "status": o.status.as_str(),
        "status_class": o.status.as_str().replace(' ', "-"),
        "total": money(o.total),
        "created": o.created_at.map(when),
        "items": o.items.iter().map(|i| json!({
            "variant_id": i.variant_id,
            "name": i.name,
            "options": options_text(&i.options),
            "price": money(i.price),
            "quantity": i.quantity,
        })).collect::<Vec<_>>(),
        "address": o.shipping_address.as_ref().map(|a| a.one_line()),
        "addr": {
            "name": addr.name, "address1": addr.address1, "address2": addr.address2,
            "city": addr.city, "state": addr.state, "country": addr.country, "zip": addr.zip,
        },
        "fulfillments": o.fulfillments.iter().map(|f| json!({
            "carrier": f.carrier,
            "status": f.status,
            "tracking": f.tracking_numbers.iter().enumerate().map(|(i, n)| json!({
                "number": n,
                "url": f.tracking_urls.get(i).filter(|u| u.starts_with("https://") || u.starts_with("http://")),
            })).collect::<Vec<_>>(),
            "shipped": f.shipped_at.map(when),
            "delivered": f.delivered_at.map(when),
            "estimated": f.estimated_at.map(when),
        })).collect::<Vec<_>>(),
        "returns": o.returns.iter().map(|r| json!({
            "status": r.status,
            "items": r.item_ids.iter().map(|i| item_name(i)).collect::<Vec<_>>().join(", "),
            "refund": format_money(r.refund, &r.currency),
            "created": r.created_at.map(when),
        })).collect::<Vec<_>>(),
        "exchanges": o.exchanges.iter().map(|x| json!({
            "status": x.status,
            "items": x.item_ids.iter().map(|i| item_name(i)).collect::<Vec<_>>().join(", "),
            "difference": format_money(x.price_difference, &x.currency),
        })).collect::<Vec<_>>(),
        "refunds": o.refunds.iter().map(|r| json!({
            "amount": format_money(r.amount, &r.currency),
            "note": r.note,
        })).collect::<Vec<_>>(),
        "payment_methods": payment_methods(customer),
        "cancelled": o.status == crate::commerce::OrderStatus::Cancelled,
    })
}

fn payment_methods(customer: Option<&Customer>) -> Vec<Value> {
    customer
        .map(|c| {
            c.payment_methods
                .iter()
                .map(|p| {
                    let mut label = p.kind.replace('_', " ");
                    if let Some(b) = &p.brand {
                        label = format!("{b} {label}");
                    }
                    if let Some(l) = &p.last_four {
                        label.push_str(&format!(" ····{l}"));
                    }
                    if let Some(b) = p.balance {
                        label.push_str(&format!(" (balance {})", format_money(b, &p.currency)));
                    }
                    json!({"id": p.id, "label": label})
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn conversation(
    State(web): State<WebState>,
    auth: StaffAuth,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let store = &web.app.store;
    let view = store
        .conversation_view(&id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("There is no conversation {id}.")))?;
    let conv = &view.conversation;
    let notes = store.staff_notes(&id).await?;
    let (staff, names) = staff_names(&web).await?;
    let customer = match &conv.customer_id {
        Some(c) => store.get_customer(c).await?,
        None => None,
    };
    let identity = match &conv.identity_id {
        Some(i) => store.get_identity(i).await?,
        None => None,
    };
    let sender = identity
        .as_ref()
        .and_then(|i| i.display_name.clone().or_else(|| i.email.clone()));
    let customer_label = customer
        .as_ref()
        .map(Customer::full_name)
        .or(sender.clone());
    let items = timeline(
        &web,
        conv,
        &view.messages,
        &notes,
        &names,
        customer_label.as_deref(),
    )
    .await?;
    let now = now_ms();
    let sla_ms = sla_minutes(&web).await * 60_000;
    let escalations = store.escalations(&id).await?;
    let open = escalations.iter().find(|e| e.status == "open");
    let past: Vec<Value> = escalations
        .iter()
        .filter(|e| e.status != "open")
        .map(|e| {
            json!({
                "reason": reason_label(&e.reason),
                "status": e.status,
                "by": e.resolved_by.as_deref().map(|b| names.get(b).cloned().unwrap_or_else(|| b.to_string())),
                "when": e.resolved_at.map(when),
            })
        })
        .collect();
    let (orders, identities, others) = match &customer {
        Some(c) => (
            store.list_customer_orders(&c.id).await?,
            store.customer_identities(&c.id).await?,
            store.customer_conversation_ids(&c.id, 20).await?,
        ),
        None => (
            Vec::new(),
            identity.clone().into_iter().collect(),
            Vec::new(),
        ),
    };
    let mut data = layout(
        &web,
        &auth,
        &format!("Conversation on {}", conv.channel),
        "queue",
    )
    .await?;
    data.insert(
        "conv".into(),
        json!({
            "id": conv.id,
            "channel": conv.channel,
            "status": conv.status.as_str(),
            "status_label": status_label(conv.status.as_str()),
            "resolved": conv.status == crate::store::ConversationStatus::Resolved,
            "with_staff": conv.with_staff,
            "subject": conv.subject,
            "thread": conv.thread_key,
            "tags": conv.tags,
            "tags_text": conv.tags.join(", "),
            "assignee": conv.assignee.as_deref().map(|a| names.get(a).cloned().unwrap_or_else(|| a.to_string())),
            "assigned_to_me": conv.assignee.as_deref() == Some(auth.staff_id()),
            "created": when(conv.created_at),
            "who": customer_label.clone().unwrap_or_else(|| "Unknown sender".into()),
            "last_seq": view.messages.last().map_or(0, |m| m.seq),
            "message_count": view.messages.len(),
        }),
    );
    data.insert("items".into(), json!(items));
    data.insert(
        "escalation".into(),
        json!(open.map(|e| json!({
            "id": e.id,
            "reason": reason_label(&e.reason),
            "summary": e.summary,
            "draft": e.draft,
            "age": ago(now - e.created_at),
            "sla_breach": now - e.created_at > sla_ms,
        }))),
    );
    data.insert("past_escalations".into(), json!(past));
    data.insert(
        "assignees".into(),
        json!(assignee_options(&staff, conv.assignee.as_deref(), false)),
    );
    data.insert(
        "customer".into(),
        json!(customer.as_ref().map(|c| json!({
            "id": c.id,
            "name": c.full_name(),
            "emails": c.emails,
            "phones": c.phones,
            "address": c.addresses.first().map(|a| a.one_line()),
            "note": c.note,
        }))),
    );
    data.insert(
        "identities".into(),
        json!(
            identities
                .iter()
                .map(|i| json!({
                    "channel": i.channel,
                    "external_id": i.external_id,
                    "name": i.display_name,
                    "email": i.email,
                    "verified": i.verified,
                }))
                .collect::<Vec<_>>()
        ),
    );
    data.insert(
        "orders".into(),
        json!(
            orders
                .iter()
                .map(|o| order_view(o, customer.as_ref()))
                .collect::<Vec<_>>()
        ),
    );
    data.insert(
        "other_conversations".into(),
        json!(others.iter().filter(|(cid, ..)| *cid != id).map(|(cid, ch, st, up)| json!({
            "url": format!("/inbox/c/{cid}"), "channel": ch, "status": status_label(st), "updated": ago(now - up),
        })).collect::<Vec<_>>()),
    );
    data.insert(
        "cancel_reasons".into(),
        json!(web.app.policy.actions.cancel_order.reasons),
    );
    let limits = crate::verification::Limits::new(web.app.config.verification.clone());
    let lock = crate::verification::conversation_locks(store, &limits, &id, now).await?;
    data.insert(
        "verification_lock".into(),
        json!(lock.map(|l| json!({
            "until": when(l.until),
            "scopes": l.scopes.iter().map(|s| json!({
                "what": crate::verification::describe_scope(&s.scope),
                "failures": s.failures,
            })).collect::<Vec<_>>(),
        }))),
    );
    web.page("conversation", &data)
}

#[derive(Deserialize)]
pub struct AfterQuery {
    #[serde(default)]
    after: i64,
}

/// Timeline items after a sequence number, as HTML, for the live script.
pub async fn messages_after(
    State(web): State<WebState>,
    _auth: StaffAuth,
    Path(id): Path<String>,
    Query(q): Query<AfterQuery>,
) -> Result<Response, WebError> {
    let store = &web.app.store;
    let conv = store
        .get_conversation(&id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("There is no conversation {id}.")))?;
    let messages = store.messages_after(&id, q.after).await?;
    let (_, names) = staff_names(&web).await?;
    let customer = match &conv.customer_id {
        Some(c) => store.get_customer(c).await?.map(|c| c.full_name()),
        None => None,
    };
    let items = timeline(&web, &conv, &messages, &[], &names, customer.as_deref()).await?;
    let mut html = String::new();
    for item in &items {
        html.push_str(&web.render("timeline_item", item)?);
    }
    Ok(Html(html).into_response())
}

pub async fn staff(State(web): State<WebState>, auth: StaffAuth) -> Result<Response, WebError> {
    if !auth.session.staff.is_admin() {
        return Err(WebError::Forbidden("Only admins manage staff.".into()));
    }
    let list = web.app.store.list_staff().await?;
    let mut data = layout(&web, &auth, "Staff", "staff").await?;
    data.insert(
        "staff".into(),
        json!(
            list.iter()
                .map(|s| json!({
                    "id": s.id,
                    "email": s.email,
                    "name": s.name,
                    "role": s.role,
                    "admin": s.is_admin(),
                    "active": s.active,
                    "me": s.id == auth.staff_id(),
                    "since": when(s.created_at),
                }))
                .collect::<Vec<_>>()
        ),
    );
    data.insert("sla_minutes".into(), json!(sla_minutes(&web).await));
    web.page("staff", &data)
}

/// Consumer agents and the capability tokens customers granted them, newest first; any staff
/// member may revoke a token here.
pub async fn agents(State(web): State<WebState>, auth: StaffAuth) -> Result<Response, WebError> {
    let store = &web.app.store;
    let agents = store.list_agents().await?;
    let names: HashMap<&str, &str> = agents
        .iter()
        .map(|a| (a.id.as_str(), a.name.as_str()))
        .collect();
    let now = now_ms();
    let mut customers: HashMap<String, String> = HashMap::new();
    let mut rows = Vec::new();
    for t in store.list_tokens(None).await?.iter().take(200) {
        if !customers.contains_key(&t.customer_id) {
            let label = match store.get_customer(&t.customer_id).await? {
                Some(c) => match c.emails.first() {
                    Some(e) => format!("{} <{e}>", c.full_name()),
                    None => c.full_name(),
                },
                None => t.customer_id.clone(),
            };
            customers.insert(t.customer_id.clone(), label);
        }
        rows.push(json!({
            "id": t.id,
            "agent": names.get(t.agent_id.as_str()).copied().unwrap_or(t.agent_id.as_str()),
            "customer": customers.get(&t.customer_id),
            "ops": t.ops.join(", "),
            "limit": t.spend_limit.map_or_else(|| "no limit".to_string(), |l| format_money(l, "USD")),
            "spent": format_money(t.spent, "USD"),
            "issued": when(t.issued_at),
            "via": t.issued_via,
            "expires": when(t.expires_at),
            "expired": t.expires_at <= now,
            "revoked": t.revoked_at.map(when),
        }));
    }
    let monitoring = super::risk::monitoring_rows(&web, &names).await?;
    let mut data = layout(&web, &auth, "Consumer agents", "agents").await?;
    data.insert("tokens".into(), json!(rows));
    data.insert("monitoring".into(), json!(monitoring));
    data.insert(
        "agents".into(),
        json!(
            agents
                .iter()
                .map(|a| json!({
                    "name": a.name,
                    "keys": a.keys.iter().filter(|k| k.revoked_at.is_none()).count(),
                    "since": when(a.created_at),
                    "revoked": a.revoked_at.is_some(),
                }))
                .collect::<Vec<_>>()
        ),
    );
    web.page("agents", &data)
}
