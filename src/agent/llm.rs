//! LLM mode: with `[llm] model` set, the brand agent drives an OpenAI-compatible chat
//! completions endpoint (async-openai) with function calling over the same tool layer.
//!
//! The model is never trusted. Verification is done by our own code from what the shopper
//! wrote; every tool call passes the same policy checks and disclosure gate as the offline
//! resolver (the actor is recorded as `llm`); a write is never run on the model's word — it
//! becomes the pending change the shopper must confirm with an explicit yes, which the
//! offline resolver then carries out; and a reply that carries another customer's order
//! numbers, emails or tracking numbers is blocked before it is sent. On an error, a timeout or
//! a blocked reply the offline resolver answers instead.

use std::collections::HashSet;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
use serde_json::{Value, json};

use crate::agent::dialogue::{
    Citation, EscalationRequest, Resolver, Turn, TurnOutcome, VerifyStep,
};
use crate::agent::guard::{self, Disclosure};
use crate::agent::nlu;
use crate::agent::state::{Awaiting, DialogueState, Task, TaskKind};
use crate::agent::tools::{self, ActionRecord, Actor, ToolCall, ToolContext};
use crate::config::LlmConfig;
use crate::store::{AuthorKind, ConversationStatus, Direction, Message};

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the model endpoint failed: {0}")]
    Api(String),
    #[error("the model took longer than {0:?}")]
    Timeout(Duration),
    #[error("the model used all {0} steps without answering")]
    TooManySteps(u32),
    #[error("the model's reply mentioned data of another customer ({0}); blocked")]
    Leak(String),
    #[error("the model's answer was unusable: {0}")]
    Malformed(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub struct LlmAgent {
    client: Client<OpenAIConfig>,
    model: String,
    max_steps: u32,
    timeout: Duration,
    temperature: f32,
}

impl LlmAgent {
    /// The LLM agent when `[llm] model` is configured. The key comes from the environment
    /// variable `api_key_env`; the endpoint from `base_url`, else `OPENAI_BASE_URL`.
    pub fn from_config(config: &LlmConfig) -> Option<LlmAgent> {
        let model = config.model.clone().filter(|m| !m.trim().is_empty())?;
        // Before the OpenAI client exists: it makes a default HTTP client of its own first.
        let http = crate::http_client::client();
        let mut oc = OpenAIConfig::new();
        if let Ok(key) = std::env::var(&config.api_key_env) {
            oc = oc.with_api_key(key);
        }
        let base = config
            .base_url
            .clone()
            .or_else(|| std::env::var("OPENAI_BASE_URL").ok());
        if let Some(b) = base {
            oc = oc.with_api_base(b.trim_end_matches('/').to_string());
        }
        Some(LlmAgent {
            client: Client::with_config(oc).with_http_client(http),
            model,
            max_steps: config.max_steps.max(1),
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
            temperature: config.temperature,
        })
    }

    /// Answers one turn with the model, within the time limit.
    pub async fn respond(
        &self,
        resolver: &Resolver,
        state: &mut DialogueState,
        turn: &Turn<'_>,
        history: &[Message],
    ) -> Result<TurnOutcome, LlmError> {
        match tokio::time::timeout(self.timeout, self.run(resolver, state, turn, history)).await {
            Ok(r) => r,
            Err(_) => Err(LlmError::Timeout(self.timeout)),
        }
    }

    async fn run(
        &self,
        resolver: &Resolver,
        state: &mut DialogueState,
        turn: &Turn<'_>,
        history: &[Message],
    ) -> Result<TurnOutcome, LlmError> {
        let class = nlu::classify(turn.text);
        let ents = nlu::extract(turn.text);
        let first_turn = state.turns == 0;
        // Deterministic parts stay ours: hand-over signals, and yes/no to a listed change.
        let pending = state
            .task
            .as_ref()
            .is_some_and(|t| t.awaiting == Some(Awaiting::Confirmation));
        if guard::signal(turn.text).is_some() || (pending && (ents.yes || ents.no)) {
            return resolver.respond(state, turn).await.map_err(LlmError::Other);
        }
        state.turns += 1;
        resolver.collect_claims(state, turn, &ents);
        let other_customer = match resolver.verify(state, turn, first_turn).await? {
            VerifyStep::Proceed { other_customer } => other_customer,
            // A lock or a one-time code: our own words, not the model's.
            VerifyStep::Reply(outcome) => return Ok(outcome),
        };

        let customer = match &state.verified_customer {
            Some(id) => resolver
                .store
                .get_customer(id)
                .await
                .map_err(anyhow::Error::from)?,
            None => None,
        };
        let orders = match &customer {
            Some(c) => resolver
                .store
                .list_customer_orders(&c.id)
                .await
                .map_err(anyhow::Error::from)?,
            None => Vec::new(),
        };
        let system = resolver.templates.render(
            "prompt/system",
            &json!({
                "voice": &*resolver.voice,
                "policy": policy_summary(resolver),
                "channel": turn.channel,
                "customer": customer.as_ref().map(|c| json!({"id": c.id, "name": c.full_name(), "first_name": c.first_name})),
                "orders": orders.iter().map(|o| json!({"number": o.number, "status": o.status.as_str()})).collect::<Vec<_>>(),
                "other_customer": other_customer,
            }),
        ).map_err(|e| LlmError::Other(e.into()))?;

        let mut messages = vec![json!({"role": "system", "content": system})];
        for m in history.iter().rev().take(20).rev() {
            let role = match (m.direction, m.author_kind) {
                (Direction::Inbound, _) => "user",
                (Direction::Outbound, AuthorKind::BrandAgent | AuthorKind::Staff) => "assistant",
                _ => continue,
            };
            messages.push(json!({"role": role, "content": m.text}));
        }
        messages.push(json!({"role": "user", "content": turn.text}));

        let mut tool_defs: Vec<Value> = tools::tool_specs()
            .iter()
            .map(|s| {
                json!({"type": "function", "function": {"name": s.name, "description": s.description, "parameters": s.parameters}})
            })
            .collect();
        tool_defs.push(json!({"type": "function", "function": {
            "name": "search_policies",
            "description": "Search the shop's policy texts (returns, shipping, cancellations, warranty, privacy, refunds, exchanges). Returns the best sections with a reference to cite.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
        }}));

        let ctx = ToolContext {
            store: &resolver.store,
            policy: &resolver.policy,
            actor: Actor::Llm,
            customer_id: state.verified_customer.clone(),
            now: turn.now,
        };
        let mut actions: Vec<ActionRecord> = Vec::new();
        let mut citations: Vec<Citation> = Vec::new();
        let mut escalation: Option<EscalationRequest> = None;
        let mut awaiting_confirmation = false;

        for _ in 0..self.max_steps {
            let request: CreateChatCompletionRequest = serde_json::from_value(json!({
                "model": self.model,
                "messages": messages,
                "tools": tool_defs,
                "temperature": self.temperature,
            }))
            .map_err(|e| LlmError::Malformed(format!("request: {e}")))?;
            let response: CreateChatCompletionResponse =
                self.client
                    .chat()
                    .create(request)
                    .await
                    .map_err(|e| LlmError::Api(e.to_string()))?;
            let message = response
                .choices
                .first()
                .map(|c| serde_json::to_value(&c.message).unwrap_or(Value::Null))
                .ok_or_else(|| LlmError::Malformed("no choices".into()))?;
            let calls: Vec<Value> = message
                .get("tool_calls")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if calls.is_empty() {
                let content = message
                    .get("content")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| LlmError::Malformed("empty reply".into()))?
                    .to_string();
                self.check_leaks(
                    resolver,
                    &content,
                    customer.as_ref(),
                    &orders,
                    history,
                    turn.text,
                )
                .await?;
                let wrapped = resolver.wrap(turn.channel, &content, first_turn)?;
                let reply = resolver.voice.polish(&wrapped);
                let status = if escalation.is_some() {
                    ConversationStatus::Escalated
                } else if awaiting_confirmation || reply.trim_end().ends_with('?') {
                    ConversationStatus::AwaitingCustomer
                } else {
                    ConversationStatus::Resolved
                };
                return Ok(TurnOutcome {
                    reply,
                    intent: class.intent,
                    confidence: class.confidence,
                    status,
                    actions,
                    verified_customer: state.verified_customer.clone(),
                    citations,
                    escalation,
                });
            }
            messages.push(message.clone());
            for call in calls {
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let args: Value = call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .and_then(|a| serde_json::from_str(a).ok())
                    .unwrap_or(Value::Null);
                let result = self
                    .run_tool(
                        resolver,
                        &ctx,
                        state,
                        &name,
                        &args,
                        &mut actions,
                        &mut citations,
                        &mut escalation,
                        &mut awaiting_confirmation,
                    )
                    .await;
                messages.push(
                    json!({"role": "tool", "tool_call_id": id, "content": result.to_string()}),
                );
            }
        }
        Err(LlmError::TooManySteps(self.max_steps))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_tool(
        &self,
        resolver: &Resolver,
        ctx: &ToolContext<'_>,
        state: &mut DialogueState,
        name: &str,
        args: &Value,
        actions: &mut Vec<ActionRecord>,
        citations: &mut Vec<Citation>,
        escalation: &mut Option<EscalationRequest>,
        awaiting_confirmation: &mut bool,
    ) -> Value {
        if name == "search_policies" {
            let q = args
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return match resolver
                .search
                .search(q, Some(crate::search::DocKind::Policy), 3)
            {
                Ok(hits) => {
                    let sections: Vec<Value> = hits
                        .iter()
                        .map(|h| {
                            let text = resolver
                                .policy_chunks
                                .get(&h.key)
                                .map(|c| c.text.clone())
                                .unwrap_or_else(|| h.snippet.clone());
                            json!({"ref": h.key, "heading": h.title, "text": text})
                        })
                        .collect();
                    if let Some(h) = hits.first() {
                        citations.push(Citation {
                            kind: "policy",
                            reference: h.key.clone(),
                        });
                    }
                    json!({"sections": sections})
                }
                Err(e) => json!({"error": e.to_string()}),
            };
        }
        let call = match tools::parse_call(name, args) {
            Ok(c) => c,
            Err(e) => return json!({"error": e.message}),
        };
        if let ToolCall::Escalate { reason, summary } = &call {
            *escalation = Some(EscalationRequest {
                reason: "llm_requested".into(),
                summary: format!("{reason}: {summary}"),
                draft: String::new(),
            });
            actions.push(ActionRecord {
                kind: "escalated",
                order: None,
                details: json!({"reason": reason}),
            });
            return json!({"status": "escalated", "instruction": "Tell the customer a member of the support team will take over here."});
        }
        if call.is_write() {
            // Never on the model's word: the change waits for the shopper's explicit yes.
            if state.verified_customer.is_none() {
                return json!({"error": "The customer is not verified yet. Ask for their order number and email, or email and ZIP code, or full name and ZIP code."});
            }
            if let Some(refusal) = precheck(resolver, state, &call, ctx.now).await {
                return json!({"error": refusal, "code": "policy_refused"});
            }
            let kind = task_kind_of(&call);
            let mut task = Task::new(kind);
            task.order = call.order_id().map(str::to_string);
            task.pending_call = Some(call.clone());
            task.awaiting = Some(Awaiting::Confirmation);
            state.task = Some(task);
            *awaiting_confirmation = true;
            return json!({"status": "confirmation_required",
                "instruction": "Nothing has been changed. List exactly what will change (order, items, amounts, address or payment method) and ask the customer to reply yes to confirm or no to cancel."});
        }
        match tools::execute(ctx, &call).await {
            Ok(out) => {
                if let Some(a) = out.action {
                    if let Some(o) = &a.order {
                        citations.push(Citation {
                            kind: "order",
                            reference: o.clone(),
                        });
                    }
                    actions.push(a);
                }
                out.data
            }
            Err(e) => json!({"error": e.message, "code": e.code}),
        }
    }

    /// Blocks a reply that names shop data the shopper has no right to: order numbers, emails
    /// or tracking numbers the store holds that are neither the verified customer's nor
    /// something the shopper wrote themselves.
    async fn check_leaks(
        &self,
        resolver: &Resolver,
        reply: &str,
        customer: Option<&crate::commerce::Customer>,
        orders: &[crate::commerce::Order],
        history: &[Message],
        text: &str,
    ) -> Result<(), LlmError> {
        let mut disclosure = Disclosure::for_customer(customer, orders);
        let said: Vec<&str> = history
            .iter()
            .filter(|m| m.direction == Direction::Inbound)
            .map(|m| m.text.as_str())
            .chain(std::iter::once(text))
            .collect();
        for t in said {
            for token in t.split(|c: char| c.is_whitespace() || ",;()[]<>\"'".contains(c)) {
                disclosure.allow(token.trim_end_matches(['.', '!', '?', ':']));
            }
        }
        let candidates = disclosure.leaks(reply, |_| true);
        let mut known = HashSet::new();
        for c in candidates {
            let store = &resolver.store;
            let hit = if c.contains('@') {
                store.find_customer_by_email(&c).await.map(|x| x.is_some())
            } else if c.starts_with('#') {
                store.get_order_by_number(&c).await.map(|x| x.is_some())
            } else {
                store.get_order_by_tracking(&c).await.map(|x| x.is_some())
            };
            if hit.map_err(anyhow::Error::from)? {
                known.insert(c);
            }
        }
        match known.into_iter().next() {
            Some(token) => Err(LlmError::Leak(token)),
            None => Ok(()),
        }
    }
}

/// Refuses a proposed write at once when the order is not the customer's or the policy forbids
/// it (the tool layer checks again when it runs).
async fn precheck(
    resolver: &Resolver,
    state: &DialogueState,
    call: &ToolCall,
    now: i64,
) -> Option<String> {
    use crate::commerce::policy::ActionKind;
    let action = match call {
        ToolCall::CancelOrder { reason, .. } => {
            if !resolver.policy.cancel_reason_allowed(reason) {
                return Some(format!(
                    "An order can only be cancelled because it is {}.",
                    resolver.policy.actions.cancel_order.reasons.join(" or ")
                ));
            }
            ActionKind::CancelOrder
        }
        ToolCall::ModifyOrderAddress { .. } => ActionKind::ModifyOrderAddress,
        ToolCall::ModifyOrderItems { .. } => ActionKind::ModifyOrderItems,
        ToolCall::ModifyOrderPayment { .. } => ActionKind::ModifyOrderPayment,
        ToolCall::ReturnItems { .. } => ActionKind::ReturnItems,
        ToolCall::ExchangeItems { .. } => ActionKind::ExchangeItems,
        _ => return None,
    };
    let number = call.order_id()?;
    let order = resolver
        .store
        .get_order_by_number(number)
        .await
        .ok()
        .flatten();
    match order {
        Some(o) if o.customer_id.is_some() && o.customer_id == state.verified_customer => resolver
            .policy
            .check_order(action, &o, now)
            .err()
            .map(|d| crate::agent::dialogue::denial_sentence(&d, &o)),
        _ => Some(format!(
            "There is no order {number} on this customer's account."
        )),
    }
}

fn task_kind_of(call: &ToolCall) -> TaskKind {
    match call {
        ToolCall::CancelOrder { .. } => TaskKind::Cancel,
        ToolCall::ModifyOrderAddress { .. } => TaskKind::ChangeAddress,
        ToolCall::ModifyOrderItems { .. } => TaskKind::ModifyItems,
        ToolCall::ModifyOrderPayment { .. } => TaskKind::ChangePayment,
        ToolCall::ReturnItems { .. } => TaskKind::Return,
        ToolCall::ExchangeItems { .. } => TaskKind::Exchange,
        ToolCall::UpdateCustomerAddress { .. } => TaskKind::UpdateProfileAddress,
        _ => TaskKind::OrderStatus,
    }
}

/// The machine policy in a few lines for the system prompt.
fn policy_summary(resolver: &Resolver) -> Vec<String> {
    let p = &resolver.policy;
    let statuses = |v: &[crate::commerce::OrderStatus]| {
        v.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let a = &p.actions;
    let mut out = vec![
        format!(
            "Cancel only orders that are {}; reasons accepted: {}.",
            statuses(&a.cancel_order.statuses),
            a.cancel_order.reasons.join(", ")
        ),
        format!(
            "Change address, items or payment only for orders that are {}; items can be changed once.",
            statuses(&a.modify_order_items.statuses)
        ),
        format!(
            "Returns and exchanges only for orders that are {}, within {} days of delivery when the delivery date is known.",
            statuses(&a.return_items.statuses),
            a.return_items.window_days.unwrap_or(0)
        ),
        "Refunds go to the original payment method or one of the customer's gift cards."
            .to_string(),
        format!(
            "Refunds above {} need staff approval.",
            crate::commerce::format_money(p.refunds.auto_approve_limit, &p.currency)
        ),
        "Exchanges and item changes: same product, an available variant.".to_string(),
    ];
    out.retain(|s| !s.is_empty());
    out
}
