//! What staff do from the inbox: reply, approve / edit / reject a draft, assign, note, resolve
//! and reopen, tag, order actions through the tool layer, and (admins) manage staff. Every
//! handler takes a [`Post`] (signed in + CSRF token), does one thing, leaves a notice for the
//! next page and redirects back (POST → 303 → GET).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::auth::{Fields, Post};
use super::{WebError, WebState, hash_password, validate_password};
use crate::agent::tools::{self, Actor, ToolCall, ToolContext};
use crate::commerce::Address;
use crate::events::InboxEvent;
use crate::store::{Conversation, ConversationStatus, Message};
use crate::util::now_ms;

/// Longest reply or note, in characters (the inbox accepts the same from shoppers).
const MAX_TEXT: usize = crate::inbox::MAX_TEXT_CHARS;
const MAX_TAGS: usize = 20;
const MAX_TAG_CHARS: usize = 40;

fn back(id: &str) -> Response {
    Redirect::to(&format!("/inbox/c/{id}")).into_response()
}

async fn conversation(web: &WebState, id: &str) -> Result<Conversation, WebError> {
    web.app
        .store
        .get_conversation(id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("There is no conversation {id}.")))
}

/// A required text field, with the browser's CRLF line ends made LF.
fn checked_text(fields: &Fields, name: &str, what: &str) -> Result<String, WebError> {
    let text = fields.required(name, what)?.replace("\r\n", "\n");
    if text.chars().count() > MAX_TEXT {
        return Err(WebError::BadRequest(format!(
            "{what} is longer than {MAX_TEXT} characters."
        )));
    }
    Ok(text)
}

fn changed(web: &WebState, conv: &str, status: ConversationStatus) {
    web.app.hub.publish(InboxEvent::Status {
        conversation_id: conv.to_string(),
        status: status.as_str().to_string(),
    });
}

/// Sends a staff member's reply on the conversation's channel, the way the brand agent's
/// answers leave ([`crate::inbox::reply`]): stored with its delivery, published to live
/// subscribers (web chat delivers it over its socket, the inbox shows it), sent by the worker.
/// The conversation then waits for the customer.
pub async fn send_staff_reply(
    web: &WebState,
    conv: &Conversation,
    staff_id: &str,
    text: &str,
) -> Result<Message, WebError> {
    let store = &web.app.store;
    let message = crate::inbox::reply::send_staff_reply(&web.app, conv, staff_id, text).await?;
    if conv.status != ConversationStatus::AwaitingCustomer {
        store
            .set_conversation_status(&conv.id, ConversationStatus::AwaitingCustomer)
            .await?;
        changed(web, &conv.id, ConversationStatus::AwaitingCustomer);
    }
    Ok(message)
}

pub async fn reply(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    let conv = conversation(&web, &id).await?;
    let text = checked_text(&post.fields, "text", "The reply")?;
    let staff = post.auth.staff_id().to_string();
    // A reply by hand takes over any open hand-off.
    web.app
        .store
        .close_open_escalations(&id, "resolved", &staff)
        .await?;
    send_staff_reply(&web, &conv, &staff, &text).await?;
    post.auth
        .flash(&web, &format!("Reply sent on {}.", conv.channel))
        .await?;
    Ok(back(&id))
}

pub async fn draft(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    let conv = conversation(&web, &id).await?;
    let f = &post.fields;
    let esc_id = f.required("escalation_id", "The escalation")?;
    let escalation = web
        .app
        .store
        .get_escalation(esc_id)
        .await?
        .filter(|e| e.conversation_id == id)
        .ok_or_else(|| WebError::NotFound(format!("There is no escalation {esc_id} here.")))?;
    let staff = post.auth.staff_id().to_string();
    match f.get("decision") {
        Some("approve") => {
            let text = checked_text(f, "text", "The draft")?;
            if !web
                .app
                .store
                .close_escalation(&escalation.id, "approved", &staff)
                .await?
            {
                post.auth
                    .flash(
                        &web,
                        "error:Someone already handled this escalation; nothing was sent.",
                    )
                    .await?;
                return Ok(back(&id));
            }
            send_staff_reply(&web, &conv, &staff, &text).await?;
            let edited = text.trim() != escalation.draft.trim();
            post.auth
                .flash(
                    &web,
                    &format!(
                        "Draft {} and sent on {}.",
                        if edited {
                            "edited, approved"
                        } else {
                            "approved"
                        },
                        conv.channel
                    ),
                )
                .await?;
        }
        Some("reject") => {
            if web
                .app
                .store
                .close_escalation(&escalation.id, "rejected", &staff)
                .await?
            {
                changed(&web, &id, conv.status);
                post.auth
                    .flash(
                        &web,
                        "Draft rejected: nothing was sent. Write your own reply below.",
                    )
                    .await?;
            } else {
                post.auth
                    .flash(&web, "error:Someone already handled this escalation.")
                    .await?;
            }
        }
        _ => {
            return Err(WebError::BadRequest(
                "decision must be approve or reject".into(),
            ));
        }
    }
    Ok(back(&id))
}

pub async fn assign(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    let conv = conversation(&web, &id).await?;
    let store = &web.app.store;
    let (assignee, label) = match post.fields.get("assignee") {
        None | Some("none") => (None, "nobody".to_string()),
        Some("me") => (Some(post.auth.staff_id().to_string()), "you".to_string()),
        Some(other) => match store.get_staff(other).await? {
            Some(s) if s.active => (Some(s.id.clone()), s.display().to_string()),
            _ => {
                return Err(WebError::BadRequest(format!(
                    "{other:?} is not an active staff member"
                )));
            }
        },
    };
    store.set_assignee(&id, assignee.as_deref()).await?;
    changed(&web, &id, conv.status);
    post.auth
        .flash(&web, &format!("Assigned to {label}."))
        .await?;
    Ok(back(&id))
}

pub async fn note(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    conversation(&web, &id).await?;
    let text = checked_text(&post.fields, "text", "The note")?;
    web.app
        .store
        .add_staff_note(&id, post.auth.staff_id(), &text)
        .await?;
    post.auth
        .flash(&web, "Note added (only staff see it).")
        .await?;
    Ok(back(&id))
}

pub async fn status(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    conversation(&web, &id).await?;
    let store = &web.app.store;
    let (status, notice) = match post.fields.get("action") {
        Some("resolve") => {
            store
                .close_open_escalations(&id, "resolved", post.auth.staff_id())
                .await?;
            (ConversationStatus::Resolved, "Conversation resolved.")
        }
        Some("reopen") => (ConversationStatus::Open, "Conversation reopened."),
        _ => {
            return Err(WebError::BadRequest(
                "action must be resolve or reopen".into(),
            ));
        }
    };
    store.set_conversation_status(&id, status).await?;
    changed(&web, &id, status);
    post.auth.flash(&web, notice).await?;
    Ok(back(&id))
}

/// Hands a conversation a person had back to the brand agent: it answers the shopper's next
/// message again (open escalations close as handed back).
pub async fn hand_back(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    conversation(&web, &id).await?;
    let notice = if web.app.store.hand_back(&id, post.auth.staff_id()).await? {
        changed(&web, &id, ConversationStatus::AwaitingCustomer);
        "Handed back: the brand agent answers the shopper's next message."
    } else {
        "The brand agent already answers this conversation."
    };
    post.auth.flash(&web, notice).await?;
    Ok(back(&id))
}

/// Lifts the verification locks that hold on this conversation (its own, its sender's, the
/// customer's it claimed) as the signed-in staff member; recorded in the action log.
pub async fn unlock_verification(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    let conv = conversation(&web, &id).await?;
    let store = &web.app.store;
    let now = now_ms();
    let limits = crate::verification::Limits::new(web.app.config.verification.clone());
    let Some(lock) = crate::verification::conversation_locks(store, &limits, &id, now).await?
    else {
        post.auth
            .flash(&web, "Verification is not locked here.")
            .await?;
        return Ok(back(&id));
    };
    let scopes: Vec<String> = lock.scopes.iter().map(|l| l.scope.clone()).collect();
    let lifted = store
        .lift_verification_locks(&scopes, post.auth.staff_id(), now)
        .await?;
    let customer = conv.customer_id.clone().or_else(|| {
        scopes
            .iter()
            .find_map(|s| s.strip_prefix("customer:").map(str::to_string))
    });
    let request = crate::store::Store::action_request(
        "lift_verification_lock",
        serde_json::json!({"conversation_id": id, "scopes": scopes, "attempts_lifted": lifted}),
        now,
    )
    .by("staff", Some(post.auth.staff_id()))
    .for_customer(customer.as_deref());
    store.record_action(&request, None, "recorded").await?;
    post.auth
        .flash(
            &web,
            "Verification lock lifted: the shopper can prove who they are again.",
        )
        .await?;
    Ok(back(&id))
}

/// Tags from "refund, VIP,  late delivery": trimmed, lower-cased, without repeats.
pub fn parse_tags(text: &str) -> Result<Vec<String>, String> {
    let mut tags: Vec<String> = Vec::new();
    for t in text.split(',') {
        let t = t.trim().to_lowercase();
        if t.is_empty() || tags.contains(&t) {
            continue;
        }
        if t.chars().count() > MAX_TAG_CHARS {
            return Err(format!(
                "the tag {t:?} is longer than {MAX_TAG_CHARS} characters"
            ));
        }
        tags.push(t);
    }
    if tags.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags, please"));
    }
    Ok(tags)
}

pub async fn tags(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    let conv = conversation(&web, &id).await?;
    let tags = parse_tags(post.fields.raw("tags")).map_err(WebError::BadRequest)?;
    web.app.store.set_tags(&id, &tags).await?;
    changed(&web, &id, conv.status);
    post.auth
        .flash(
            &web,
            &if tags.is_empty() {
                "Tags cleared.".to_string()
            } else {
                format!("Tags: {}.", tags.join(", "))
            },
        )
        .await?;
    Ok(back(&id))
}

/// The tool call an order form asks for.
fn order_call(f: &Fields) -> Result<ToolCall, String> {
    let order_id = f.get("order_id").ok_or("the order is missing")?.to_string();
    let items = f.all("item_ids");
    let payment = || {
        f.get("payment_method_id")
            .map(str::to_string)
            .ok_or("choose a payment method for the refund or charge")
    };
    Ok(match f.get("action") {
        Some("cancel") => ToolCall::CancelOrder {
            order_id,
            reason: f.get("reason").ok_or("choose a reason")?.to_string(),
        },
        Some("address") => ToolCall::ModifyOrderAddress {
            order_id,
            address: Address {
                name: f.raw("name").trim().to_string(),
                address1: f
                    .get("address1")
                    .ok_or("address line 1 is missing")?
                    .to_string(),
                address2: f.raw("address2").trim().to_string(),
                city: f.get("city").ok_or("the city is missing")?.to_string(),
                state: f.raw("state").trim().to_string(),
                country: f
                    .get("country")
                    .ok_or("the country is missing")?
                    .to_string(),
                zip: f.get("zip").ok_or("the ZIP code is missing")?.to_string(),
                phone: String::new(),
            },
        },
        Some("return") => {
            if items.is_empty() {
                return Err("tick the items to return".into());
            }
            ToolCall::ReturnItems {
                order_id,
                item_ids: items,
                payment_method_id: payment()?,
            }
        }
        Some("exchange") => {
            let new_items: Vec<String> = f
                .raw("new_item_ids")
                .split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if items.is_empty() || new_items.len() != items.len() {
                return Err(
                    "tick the items to exchange and give one new variant id for each".into(),
                );
            }
            ToolCall::ExchangeItems {
                order_id,
                item_ids: items,
                new_item_ids: new_items,
                payment_method_id: payment()?,
            }
        }
        _ => return Err("action must be cancel, address, return or exchange".into()),
    })
}

pub async fn order(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    let conv = conversation(&web, &id).await?;
    let call = match order_call(&post.fields) {
        Ok(c) => c,
        Err(e) => {
            post.auth
                .flash(&web, &format!("error:Not done: {e}."))
                .await?;
            return Ok(back(&id));
        }
    };
    let ctx = ToolContext {
        store: &web.app.store,
        policy: &web.app.policy,
        actor: Actor::Staff {
            id: post.auth.staff_id().to_string(),
        },
        customer_id: conv.customer_id.clone(),
        now: now_ms(),
    };
    let order = call.order_id().unwrap_or_default().to_string();
    match tools::execute(&ctx, &call).await {
        Ok(out) => {
            let what = match call {
                ToolCall::CancelOrder { .. } => "cancelled",
                ToolCall::ModifyOrderAddress { .. } => "shipping address changed",
                ToolCall::ReturnItems { .. } => "return created",
                ToolCall::ExchangeItems { .. } => "exchange created",
                _ => "updated",
            };
            let number = out
                .action
                .as_ref()
                .and_then(|a| a.order.clone())
                .unwrap_or(order);
            let text = format!("Order {number}: {what}.");
            web.app
                .store
                .add_staff_note(&id, post.auth.staff_id(), &text)
                .await?;
            post.auth.flash(&web, &text).await?;
        }
        Err(e) => {
            post.auth
                .flash(&web, &format!("error:Refused: {}", e.message))
                .await?;
        }
    }
    Ok(back(&id))
}

fn require_admin(post: &Post) -> Result<(), WebError> {
    if post.auth.session.staff.is_admin() {
        Ok(())
    } else {
        Err(WebError::Forbidden("Only admins manage staff.".into()))
    }
}

pub fn check_role(role: &str) -> Result<(), String> {
    match role {
        "admin" | "agent" => Ok(()),
        other => Err(format!("{other:?} is not a role: use admin or agent")),
    }
}

/// POST /inbox/staff: add a staff member (`action=add`) or set the escalation SLA
/// (`action=sla`).
pub async fn add_staff(State(web): State<WebState>, post: Post) -> Result<Response, WebError> {
    require_admin(&post)?;
    let f = &post.fields;
    let back = Redirect::to("/inbox/staff").into_response();
    if f.get("action") == Some("sla") {
        let minutes: i64 = f
            .get("sla_minutes")
            .and_then(|m| m.parse().ok())
            .filter(|m| (1..=7 * 24 * 60).contains(m))
            .ok_or_else(|| {
                WebError::BadRequest(
                    "The SLA must be a whole number of minutes, 1 to 10080.".into(),
                )
            })?;
        super::views::set_sla_minutes(&web, minutes).await?;
        post.auth
            .flash(
                &web,
                &format!("Escalations now warn after {minutes} minutes."),
            )
            .await?;
        return Ok(back);
    }
    let email = f.required("email", "The email")?.to_lowercase();
    if !email.contains('@') || email.chars().any(char::is_whitespace) {
        post.auth
            .flash(&web, &format!("error:{email:?} is not an email address."))
            .await?;
        return Ok(back);
    }
    let role = f.get("role").unwrap_or("agent");
    check_role(role).map_err(WebError::BadRequest)?;
    let password = f.raw("password");
    if let Err(e) = validate_password(password) {
        post.auth
            .flash(&web, &format!("error:Not added: {e}."))
            .await?;
        return Ok(back);
    }
    let hash = hash_password(password).map_err(|e| WebError::Internal(e.to_string()))?;
    match web
        .app
        .store
        .create_staff(&email, f.get("name"), role, &hash)
        .await
    {
        Ok(s) => {
            post.auth
                .flash(&web, &format!("Added {} as {}.", s.email, s.role))
                .await?
        }
        Err(crate::store::StoreError::Conflict(m)) => {
            post.auth
                .flash(&web, &format!("error:Not added: {m}."))
                .await?
        }
        Err(e) => return Err(e.into()),
    }
    Ok(back)
}

/// POST /inbox/staff/{id}: enable, disable, change role or set a new password.
pub async fn update_staff(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    require_admin(&post)?;
    let store = &web.app.store;
    let target = store
        .get_staff(&id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("There is no staff member {id}.")))?;
    let last_admin = target.is_admin() && target.active && store.count_active_admins().await? <= 1;
    let notice = match post.fields.get("action") {
        Some("disable") => {
            if last_admin {
                format!(
                    "error:{} is the last active admin and stays enabled.",
                    target.email
                )
            } else {
                store.set_staff_active(&id, false).await?;
                format!("{} can no longer sign in.", target.email)
            }
        }
        Some("enable") => {
            store.set_staff_active(&id, true).await?;
            format!("{} can sign in again.", target.email)
        }
        Some(role @ ("admin" | "agent")) => {
            if role == "agent" && last_admin {
                format!(
                    "error:{} is the last active admin and stays admin.",
                    target.email
                )
            } else {
                store.set_staff_role(&id, role).await?;
                format!("{} is now {role}.", target.email)
            }
        }
        Some("password") => {
            let pw = post.fields.raw("password");
            match validate_password(pw) {
                Err(e) => format!("error:Password not changed: {e}."),
                Ok(()) => {
                    let hash = hash_password(pw).map_err(|e| WebError::Internal(e.to_string()))?;
                    store.set_staff_password(&id, &hash).await?;
                    format!("New password set for {}.", target.email)
                }
            }
        }
        _ => {
            return Err(WebError::BadRequest(
                "action must be disable, enable, admin, agent or password".into(),
            ));
        }
    };
    post.auth.flash(&web, &notice).await?;
    Ok(Redirect::to("/inbox/staff").into_response())
}

/// Revokes a consumer agent's capability token (and every token narrowed from it) as the
/// signed-in staff member; recorded in the action log.
pub async fn revoke_token(
    State(web): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> Result<Response, WebError> {
    let store = &web.app.store;
    let key =
        crate::gateway::service_key(&web.app).map_err(|e| WebError::Internal(e.to_string()))?;
    let notice = match crate::gateway::tokens::revoke(
        store,
        key,
        &id,
        post.auth.staff_id(),
        crate::util::now_ms(),
    )
    .await
    {
        Ok(Some(_)) => "Token revoked: the agent can no longer act with it.".to_string(),
        Ok(None) => format!("error:There is no token {id}."),
        Err(e) => format!("error:Token not revoked: {e}"),
    };
    post.auth.flash(&web, &notice).await?;
    Ok(Redirect::to("/inbox/agents").into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_are_normalized() {
        assert_eq!(
            super::parse_tags(" Refund, VIP,refund ,, late delivery").unwrap(),
            ["refund", "vip", "late delivery"]
        );
        assert!(super::parse_tags(&"x".repeat(41)).is_err());
        assert!(super::parse_tags("").unwrap().is_empty());
    }
}
