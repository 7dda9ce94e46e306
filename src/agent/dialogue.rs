//! The offline resolver: a dialogue manager that answers without any LLM. Each turn it reads the
//! message (intent, entities), verifies the shopper before disclosing anything, fills the slots a
//! request needs (order, reason, items, options, address), lists every change and waits for an
//! explicit "yes", and runs reads and writes through the one tool layer. Every reply is
//! rendered from `prompts/replies/*.hbs`; facts in it come from tool results only.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::agent::guard::{self, Signal};
use crate::agent::nlu::{self, Entities, Intent, ItemChoice};
use crate::agent::state::{Awaiting, DialogueState, Task, TaskKind};
use crate::agent::tools::{self, ActionRecord, Actor, ToolCall, ToolContext, ToolErrorCode};
use crate::agent::voice::{Templates, Voice};
use crate::commerce::policy::{ActionKind, Denial, Policy};
use crate::commerce::{Address, Customer, Order, OrderStatus, format_money};
use crate::search::{DocKind, PolicyChunk, SearchIndex};
use crate::store::{ConversationStatus, Store};
use crate::util::rfc3339;
use crate::verification::{self, CodeCheck, Limits, MAX_ORDER_CLAIMS_PER_MESSAGE};

/// What the resolver needs, shared by every conversation.
#[derive(Clone)]
pub struct Resolver {
    pub store: Store,
    pub policy: Arc<Policy>,
    pub voice: Arc<Voice>,
    pub templates: Arc<Templates>,
    pub search: SearchIndex,
    /// Policy sections by chunk id, for quoting whole sections.
    pub policy_chunks: Arc<HashMap<String, PolicyChunk>>,
    /// The words of those sections: a question using words they never do is not answered by
    /// the closest one ([`crate::agent::coverage`]).
    pub policy_vocab: Arc<crate::agent::coverage::Vocabulary>,
    /// How many failed verifications lock a conversation or a customer, and for how long.
    pub limits: Limits,
    /// Delivery attempts for emailed one-time codes; None when the store sends no email.
    pub code_mail_attempts: Option<i64>,
}

/// One inbound message as the resolver sees it.
pub struct Turn<'a> {
    /// The conversation and the sender's channel identity (scopes for counting failed
    /// verifications).
    pub conversation_id: &'a str,
    pub identity_id: Option<&'a str>,
    pub text: &'a str,
    pub channel: &'a str,
    /// The sender's email as the channel knows it (an email's From, the API's `from.email`).
    pub sender_email: Option<&'a str>,
    /// The channel vouches for that email (the API's `from.verified`).
    pub sender_verified: bool,
    /// The email's From address counts as the customer's email claim.
    pub sender_email_is_claim: bool,
    /// A "yes" in this message may confirm a pending write (see [`crate::agent::Inbound`]).
    pub confirms_writes: bool,
    /// A verification may be remembered on the sender's channel identity.
    pub identity_linkable: bool,
    /// `ip:<address>` or `agent:<id>`, when known.
    pub requester: Option<&'a str>,
    /// Claims written in the message may verify the sender (see [`crate::agent::Inbound`]).
    pub verify_from_claims: bool,
    /// The customer a credential on this message proves.
    pub vouched_customer: Option<&'a str>,
    /// The customer an already-verified identity is linked to.
    pub linked_customer: Option<&'a str>,
    pub now: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Citation {
    pub kind: &'static str,
    #[serde(rename = "ref")]
    pub reference: String,
}

/// A hand-over the caller must record.
#[derive(Debug, Clone)]
pub struct EscalationRequest {
    pub reason: String,
    pub summary: String,
    pub draft: String,
}

#[derive(Debug, Clone)]
pub struct TurnOutcome {
    pub reply: String,
    pub intent: Intent,
    pub confidence: f32,
    pub status: ConversationStatus,
    pub actions: Vec<ActionRecord>,
    pub verified_customer: Option<String>,
    pub citations: Vec<Citation>,
    pub escalation: Option<EscalationRequest>,
}

/// The working result of a turn before rendering.
struct Draft {
    template: &'static str,
    data: Value,
    status: ConversationStatus,
    actions: Vec<ActionRecord>,
    citations: Vec<Citation>,
    escalation: Option<(String, String)>,
}

impl Draft {
    fn new(template: &'static str, data: Value, status: ConversationStatus) -> Draft {
        Draft {
            template,
            data,
            status,
            actions: Vec::new(),
            citations: Vec::new(),
            escalation: None,
        }
    }
    fn ask(template: &'static str, data: Value) -> Draft {
        Draft::new(template, data, ConversationStatus::AwaitingCustomer)
    }
    fn done(template: &'static str, data: Value) -> Draft {
        Draft::new(template, data, ConversationStatus::Resolved)
    }
}

type R<T> = Result<T, anyhow::Error>;

impl Resolver {
    /// Answers one message, updating `state`.
    pub async fn respond(&self, state: &mut DialogueState, turn: &Turn<'_>) -> R<TurnOutcome> {
        // The intent of what the message asks, not of its greeting, thanks or signature.
        let class = nlu::classify(&nlu::request_text(turn.text));
        let ents = nlu::extract(turn.text);
        let first_turn = state.turns == 0;
        state.turns += 1;

        let draft = self.decide(state, turn, &class, &ents).await?;
        if let Some(c) = draft.citations.iter().find(|c| c.kind == "order") {
            state.last_order = Some(c.reference.clone());
        }
        self.finish(state, turn, &class, draft, first_turn).await
    }

    /// Renders a turn's draft in the brand's voice for the channel.
    async fn finish(
        &self,
        state: &DialogueState,
        turn: &Turn<'_>,
        class: &nlu::Classification,
        draft: Draft,
        first_turn: bool,
    ) -> R<TurnOutcome> {
        let verified = state.verified_customer.clone();
        let customer = match &verified {
            Some(id) => self.store.get_customer(id).await?,
            None => None,
        };
        let mut data = draft.data;
        if let Value::Object(m) = &mut data {
            m.entry("customer")
                .or_insert_with(|| customer_json(customer.as_ref()));
        }
        let body = self
            .templates
            .render(&format!("reply/{}", draft.template), &data)?;
        let wrapped = self.wrap(turn.channel, &body, first_turn)?;
        let reply = self.voice.polish(&wrapped);
        let escalation = match draft.escalation {
            Some((reason, summary)) => {
                // The draft staff approve answers from the conversation's facts: what was
                // asked, the order in question (the verified customer's own only), what was done.
                let mut facts = data.clone();
                if let Value::Object(m) = &mut facts {
                    m.insert(
                        "request".into(),
                        json!(turn.text.trim().chars().take(300).collect::<String>()),
                    );
                    let in_question = state
                        .task
                        .as_ref()
                        .and_then(|t| t.order.as_deref())
                        .or(state.last_order.as_deref());
                    let order = match (&customer, in_question) {
                        (Some(c), Some(number)) => self
                            .store
                            .find_order(number)
                            .await?
                            .filter(|o| o.customer_id.as_deref() == Some(c.id.as_str())),
                        _ => None,
                    };
                    if let Some(o) = order {
                        let tracking: Vec<&str> = o
                            .fulfillments
                            .iter()
                            .flat_map(|f| f.tracking_numbers.iter().map(String::as_str))
                            .collect();
                        m.insert(
                            "order".into(),
                            json!({"number": o.number, "status": o.status.describe(),
                                   "tracking": tracking.join(", ")}),
                        );
                    }
                    let done: Vec<&str> = draft
                        .actions
                        .iter()
                        .filter_map(|a| action_words(a.kind))
                        .collect();
                    if !done.is_empty() {
                        m.insert("done".into(), json!(done.join("; ")));
                    }
                }
                Some(EscalationRequest {
                    draft: self.escalation_draft(&reason, &facts)?,
                    reason,
                    summary,
                })
            }
            None => None,
        };
        Ok(TurnOutcome {
            reply,
            intent: class.intent,
            confidence: class.confidence,
            status: if escalation.is_some() {
                ConversationStatus::Escalated
            } else {
                draft.status
            },
            actions: draft.actions,
            verified_customer: verified,
            citations: draft.citations,
            escalation,
        })
    }

    /// Wraps a reply for its channel (`channels/<channel>.hbs`, else `channels/default.hbs`).
    pub fn wrap(&self, channel: &str, body: &str, first_turn: bool) -> R<String> {
        let name = if self.templates.has(&format!("channel/{channel}")) {
            format!("channel/{channel}")
        } else {
            "channel/default".to_string()
        };
        if !self.templates.has(&name) {
            return Ok(body.to_string());
        }
        let render = |body: &str| {
            self.templates.render(
                &name,
                &json!({"body": body, "first": first_turn, "voice": &*self.voice}),
            )
        };
        let wrapped = render(body)?;
        // A reply that signs off itself (a farewell) in a channel whose wrapper signs off too
        // (email) is signed once.
        let sign_off = self.voice.sign_off.trim();
        if !sign_off.is_empty()
            && wrapped.matches(sign_off).count() > body.matches(sign_off).count()
            && let Some(unsigned) = body.trim_end().strip_suffix(sign_off)
        {
            return Ok(render(unsigned.trim_end())?);
        }
        Ok(wrapped)
    }

    fn escalation_draft(&self, reason: &str, data: &Value) -> R<String> {
        let mut d = data.clone();
        if let Value::Object(m) = &mut d {
            m.insert("reason".into(), json!(reason));
            m.insert("voice".into(), serde_json::to_value(&*self.voice)?);
        }
        Ok(self
            .voice
            .polish(&self.templates.render("reply/escalation_draft", &d)?))
    }

    async fn decide(
        &self,
        state: &mut DialogueState,
        turn: &Turn<'_>,
        class: &nlu::Classification,
        ents: &Entities,
    ) -> R<Draft> {
        self.collect_claims(state, turn, ents);

        // A person takes over on request, and always for legal, fraud, safety or data deletion.
        let signal = guard::signal(turn.text).or(match class.intent {
            Intent::ContactHumanAgent if class.confidence >= 0.5 => Some(Signal::HumanRequested),
            _ => None,
        });
        if let Some(s) = signal {
            state.task = None;
            let mut d = Draft::new(
                "escalated",
                json!({"signal": s.reason(), "voice": &*self.voice}),
                ConversationStatus::Escalated,
            );
            d.escalation = Some((s.reason().to_string(), self.summary(state, turn, class)));
            d.actions.push(escalated_action(s.reason()));
            return Ok(d);
        }

        // "Yes" to the offer of a person for a question the policies do not answer.
        if let Some(question) = state.offered_person.take()
            && ents.yes
            && !ents.no
        {
            state.task = None;
            let mut d = Draft::new(
                "escalated",
                json!({"signal": "unanswered_question", "voice": &*self.voice}),
                ConversationStatus::Escalated,
            );
            let summary = format!(
                "Asked a question our policies do not answer: \"{}\". {}",
                question.chars().take(300).collect::<String>(),
                self.summary(state, turn, class)
            );
            d.escalation = Some(("unanswered_question".to_string(), summary));
            d.actions.push(escalated_action("unanswered_question"));
            return Ok(d);
        }

        // Verify as soon as the shopper has given enough.
        let verification = self.try_verify(state, turn).await?;
        if let Some(d) = verification_draft(&verification, turn) {
            return Ok(d);
        }

        // The task this message is about: a pending one, or a new one from the intent.
        let new_kind = task_for(class.intent, ents, turn.text);
        let confident = class.confidence as f64 >= self.policy.escalation.low_confidence;
        if let Some(task) = &state.task {
            let awaiting_yes = task.awaiting == Some(Awaiting::Confirmation);
            if awaiting_yes && ents.yes && !ents.no {
                return self.execute_pending(state, turn).await;
            }
            if awaiting_yes && ents.no && !ents.yes {
                let kind = task.kind;
                state.task = None;
                return Ok(Draft::done("declined", json!({"task": kind})));
            }
            // A different request replaces this one (a change of mind).
            if let Some(k) = new_kind
                && k != task.kind
                && confident
                && !slot_answer(task.awaiting, ents)
            {
                state.task = Some(Task::new(k));
            }
        } else if let Some(k) = new_kind {
            state.task = Some(Task::new(k));
        }

        if state.task.is_some() {
            state.low_confidence_streak = 0;
            return self.advance_task(state, turn, ents).await;
        }

        // Requests answered without a task.
        match class.intent {
            Intent::Greeting if confident => {
                state.low_confidence_streak = 0;
                return Ok(Draft::ask("greeting", json!({"voice": &*self.voice})));
            }
            Intent::Thanks if confident => {
                state.low_confidence_streak = 0;
                return Ok(Draft::done("thanks", json!({"voice": &*self.voice})));
            }
            Intent::CheckAvailability | Intent::PlaceOrder => {
                if let Some(d) = self.availability(turn, ents).await? {
                    state.low_confidence_streak = 0;
                    return Ok(d);
                }
            }
            Intent::ContactCustomerService => {
                state.low_confidence_streak = 0;
                return Ok(Draft::done("contact", json!({"voice": &*self.voice})));
            }
            Intent::Complaint | Intent::PaymentIssue => {
                let mut d = Draft::new(
                    "escalated",
                    json!({"signal": class.intent.as_str(), "voice": &*self.voice}),
                    ConversationStatus::Escalated,
                );
                d.escalation = Some(("out_of_scope".to_string(), self.summary(state, turn, class)));
                d.actions.push(escalated_action("out_of_scope"));
                return Ok(d);
            }
            Intent::Review => {
                state.low_confidence_streak = 0;
                return Ok(Draft::done("review", json!({"voice": &*self.voice})));
            }
            _ => {}
        }

        // Questions the brand's policy texts answer.
        if (confident || is_policy_intent(class.intent))
            && let Some(d) = self.policy_answer(turn.text)?
        {
            state.low_confidence_streak = 0;
            if d.template == "unanswered" {
                state.offered_person = Some(turn.text.to_string());
            }
            return Ok(d);
        }

        // Not understood: ask once, then hand over.
        state.low_confidence_streak += 1;
        if state.low_confidence_streak >= 2 {
            state.low_confidence_streak = 0;
            let mut d = Draft::new(
                "escalated",
                json!({"signal": "low_confidence", "voice": &*self.voice}),
                ConversationStatus::Escalated,
            );
            d.escalation = Some((
                "low_confidence".to_string(),
                self.summary(state, turn, class),
            ));
            d.actions.push(escalated_action("low_confidence"));
            return Ok(d);
        }
        Ok(Draft::ask("clarify", json!({})))
    }

    /// Notes the identity claims a message makes (email, order numbers, ZIP, name).
    pub(crate) fn collect_claims(
        &self,
        state: &mut DialogueState,
        turn: &Turn<'_>,
        ents: &Entities,
    ) {
        if let Some(e) = ents.emails.first() {
            state.claimed_email = Some(e.clone());
        } else if turn.sender_email_is_claim
            && state.claimed_email.is_none()
            && let Some(e) = turn.sender_email
        {
            state.claimed_email = Some(e.to_lowercase());
        }
        // At most two order numbers of a message take part in verification, and at most two
        // are kept across messages: a list of guesses proves nothing.
        for n in ents.order_numbers.iter().take(MAX_ORDER_CLAIMS_PER_MESSAGE) {
            if !state.claimed_orders.contains(n) {
                state.claimed_orders.push(n.clone());
            }
        }
        let extra = state
            .claimed_orders
            .len()
            .saturating_sub(MAX_ORDER_CLAIMS_PER_MESSAGE);
        state.claimed_orders.drain(..extra);
        if let Some(z) = ents.zip_codes.first() {
            state.claimed_zip = Some(z.clone());
        }
        if let Some(n) = ents.names.first() {
            state.claimed_name = Some(n.clone());
        }
    }

    /// Verifies the shopper from the claims collected so far (the LLM mode's step): either go
    /// on (noting whether a verified conversation just asked about another customer's
    /// account), or give the reply about a lock or a one-time code as it is.
    pub(crate) async fn verify(
        &self,
        state: &mut DialogueState,
        turn: &Turn<'_>,
        first_turn: bool,
    ) -> R<VerifyStep> {
        let result = self.try_verify(state, turn).await?;
        if let VerifyResult::OtherCustomer = result {
            return Ok(VerifyStep::Proceed {
                other_customer: true,
            });
        }
        match verification_draft(&result, turn) {
            Some(draft) => {
                let class = nlu::classify(turn.text);
                Ok(VerifyStep::Reply(
                    self.finish(state, turn, &class, draft, first_turn).await?,
                ))
            }
            None => Ok(VerifyStep::Proceed {
                other_customer: false,
            }),
        }
    }

    async fn try_verify(&self, state: &mut DialogueState, turn: &Turn<'_>) -> R<VerifyResult> {
        // Proof that needs no guessing: a credential, a fresh link on the sender's identity, a
        // channel that vouches for the sender's email.
        if state.verified_customer.is_none() {
            if let Some(c) = turn.vouched_customer {
                mark_verified(state, c, "credential", turn.now);
            } else if let Some(c) = turn.linked_customer {
                mark_verified(state, c, "link", turn.now);
            } else if turn.sender_verified
                && let Some(email) = turn.sender_email
                && let Some(c) = self.store.find_customer_by_email(email).await?
            {
                mark_verified(state, &c.id, "channel", turn.now);
            }
        }
        // Already verified: another customer's email, order or credential never switches it.
        if let Some(cid) = state.verified_customer.clone() {
            let mut other = turn.vouched_customer.is_some_and(|v| v != cid);
            if !other
                && let Some(email) = &state.claimed_email
                && let Some(found) = self.store.find_customer_by_email(email).await?
            {
                other = found.id != cid;
            }
            forget_claims(state, turn);
            return Ok(if other {
                state.claimed_email = None;
                VerifyResult::OtherCustomer
            } else {
                VerifyResult::Verified
            });
        }
        if !turn.verify_from_claims {
            // Only a credential may verify here: written claims are ignored, and not counted.
            forget_claims(state, turn);
            state.claimed_email = None;
            return Ok(VerifyResult::NotYet);
        }

        // A one-time code emailed to the address on file.
        if let Some(email) = state.code_email.clone()
            && let Some(code) = six_digit_code(turn.text)
        {
            let scope = code_scope(turn.conversation_id);
            return Ok(
                match verification::redeem_code(&self.store, &scope, &email, &code, turn.now)
                    .await?
                {
                    CodeCheck::Verified(customer) => {
                        state.code_email = None;
                        mark_verified(state, &customer, "code", turn.now);
                        forget_claims(state, turn);
                        VerifyResult::Verified
                    }
                    CodeCheck::Wrong { left } => VerifyResult::CodeWrong { left },
                    CodeCheck::NoCode | CodeCheck::AttemptsExceeded | CodeCheck::Used => {
                        state.code_email = None;
                        VerifyResult::CodeExpired
                    }
                },
            );
        }
        if asks_for_code(turn.text)
            && let Some(email) = state.claimed_email.clone()
        {
            self.send_code(state, turn, &email).await?;
            forget_claims(state, turn);
            return Ok(VerifyResult::CodeSent);
        }

        // Claims: order number + email, email + ZIP, full name + ZIP. Each try counts against
        // the conversation, the sender, the requester and the customer (or email) claimed,
        // before it is checked; a locked scope means nothing is checked.
        let email = state.claimed_email.clone();
        let orders = if email.is_some() {
            state.claimed_orders.clone()
        } else {
            Vec::new()
        };
        let zip = state.claimed_zip.clone();
        let name = state.claimed_name.clone();
        let by_email_zip = email.is_some() && zip.is_some();
        let by_name_zip = name.is_some() && zip.is_some();
        if orders.is_empty() && !by_email_zip && !by_name_zip {
            return Ok(VerifyResult::NotYet);
        }
        let scopes = self.attempt_scopes(turn, email.as_deref(), &orders).await?;
        let ticket = match verification::begin(
            &self.store,
            &self.limits,
            &scopes,
            Some(turn.conversation_id),
            turn.now,
        )
        .await?
        {
            Ok(t) => t,
            Err(lock) => {
                let code_sent = self.offer_code(state, turn).await?;
                forget_claims(state, turn);
                return Ok(VerifyResult::Locked {
                    until: lock.until,
                    code_sent,
                    failed: false,
                });
            }
        };
        let found = self
            .check_claims(email.as_deref(), &orders, zip.as_deref(), name.as_ref())
            .await;
        let passed = matches!(found, Ok(Some(_)));
        self.store
            .close_verification_attempt(&ticket, passed)
            .await?;
        if let Some(id) = found? {
            mark_verified(state, &id, "claims", turn.now);
            forget_claims(state, turn);
            return Ok(VerifyResult::Verified);
        }
        state.failed_verifications += 1;
        if let Some(lock) =
            verification::locked(&self.store, &self.limits, &scopes, turn.now).await?
        {
            let code_sent = self.offer_code(state, turn).await?;
            forget_claims(state, turn);
            return Ok(VerifyResult::Locked {
                until: lock.until,
                code_sent,
                failed: true,
            });
        }
        // Forget the failed claims so the next attempt starts clean.
        forget_claims(state, turn);
        if !turn.sender_email_is_claim {
            state.claimed_email = None;
        }
        Ok(VerifyResult::Failed)
    }

    /// The scopes one verification attempt counts against.
    async fn attempt_scopes(
        &self,
        turn: &Turn<'_>,
        email: Option<&str>,
        orders: &[String],
    ) -> R<Vec<crate::store::AttemptScope>> {
        let limits = &self.limits;
        let mut scopes = vec![limits.conversation(turn.conversation_id)];
        if let Some(id) = turn.identity_id {
            scopes.push(limits.identity(id));
        }
        if let Some(r) = turn.requester {
            scopes.push(limits.requester(r));
        }
        if let Some(e) = email {
            match self.store.find_customer_by_email(e).await? {
                Some(c) => scopes.push(limits.customer(&c.id)),
                None => scopes.push(limits.email(e)),
            }
        }
        for number in orders {
            if let Some(o) = self.store.get_order_by_number(number).await?
                && let Some(c) = &o.customer_id
            {
                scopes.push(limits.customer(c));
            }
        }
        Ok(scopes)
    }

    /// The customer the claims prove, if they do.
    async fn check_claims(
        &self,
        email: Option<&str>,
        orders: &[String],
        zip: Option<&str>,
        name: Option<&(String, String)>,
    ) -> R<Option<String>> {
        if let Some(email) = email {
            for number in orders {
                if let Some(o) = self.store.get_order_by_number(number).await?
                    && self.order_matches_email(&o, email).await?
                    && let Some(c) = o.customer_id
                {
                    return Ok(Some(c));
                }
            }
            if let Some(zip) = zip
                && let Some(c) = self.store.find_customer_by_email(email).await?
                && c.addresses.iter().any(|a| a.zip.trim() == zip)
            {
                return Ok(Some(c.id));
            }
        }
        if let (Some((first, last)), Some(zip)) = (name, zip) {
            let matches = self
                .store
                .find_customers_by_name_zip(first, last, zip)
                .await?;
            if matches.len() == 1 {
                return Ok(Some(matches[0].id.clone()));
            }
        }
        Ok(None)
    }

    /// Under a lock: emails a one-time code to the claimed address (when this conversation has
    /// not sent it one yet). True when the shopper should expect one.
    async fn offer_code(&self, state: &mut DialogueState, turn: &Turn<'_>) -> R<bool> {
        let Some(email) = state.claimed_email.clone() else {
            return Ok(false);
        };
        if self.code_mail_attempts.is_none() {
            return Ok(false);
        }
        if state.code_email.as_deref() == Some(email.as_str()) {
            return Ok(true);
        }
        self.send_code(state, turn, &email).await
    }

    /// Emails a one-time code for this conversation to `email` when it is an address on file
    /// (only ever to the customer's own address; an unknown address gets a code nobody sees,
    /// so the answer is the same). True when a code was issued.
    async fn send_code(&self, state: &mut DialogueState, turn: &Turn<'_>, email: &str) -> R<bool> {
        let Some(attempts) = self.code_mail_attempts else {
            return Ok(false);
        };
        let email = email.trim().to_lowercase();
        let customer = self.store.find_customer_by_email(&email).await?;
        let on_file = customer
            .as_ref()
            .and_then(|c| c.emails.iter().find(|e| e.trim().to_lowercase() == email))
            .cloned();
        let issued = verification::issue_code(
            &self.store,
            &code_scope(turn.conversation_id),
            customer.as_ref().map(|c| c.id.as_str()),
            &email,
            Some(verification::CODE_MAX_SENDS_PER_ADDRESS),
            turn.now,
        )
        .await?;
        let Ok(code) = issued else {
            // Enough codes went out: the ones already sent still work.
            return Ok(state.code_email.as_deref() == Some(email.as_str()));
        };
        state.code_email = Some(email.clone());
        if let (Some(customer), Some(to)) = (customer, on_file) {
            let body = self.templates.render(
                "reply/code_email",
                &json!({"code": code, "voice": &*self.voice}),
            )?;
            let text = self.voice.polish(&self.wrap("email", &body, true)?);
            self.store
                .send_account_email(&to, &customer.id, "Your verification code", &text, attempts)
                .await?;
        }
        Ok(true)
    }

    async fn order_matches_email(&self, order: &Order, email: &str) -> R<bool> {
        let email = email.trim().to_lowercase();
        if order.email.as_deref().map(str::to_lowercase).as_deref() == Some(email.as_str()) {
            return Ok(true);
        }
        if let Some(cid) = &order.customer_id
            && let Some(c) = self.store.get_customer(cid).await?
        {
            return Ok(c.emails.iter().any(|e| e.to_lowercase() == email));
        }
        Ok(false)
    }

    fn tool_ctx<'a>(&'a self, state: &DialogueState, now: i64) -> ToolContext<'a> {
        ToolContext {
            store: &self.store,
            policy: &self.policy,
            actor: Actor::OfflineResolver,
            customer_id: state.verified_customer.clone(),
            now,
        }
    }

    /// Moves the current task forward: verification, then each missing slot, then the
    /// confirmation (writes) or the answer (reads).
    async fn advance_task(
        &self,
        state: &mut DialogueState,
        turn: &Turn<'_>,
        ents: &Entities,
    ) -> R<Draft> {
        let Some(mut task) = state.task.clone() else {
            return Ok(Draft::ask("clarify", json!({})));
        };
        // Slots this message fills.
        task.texts.push(turn.text.to_string());
        if task.texts.len() > 8 {
            task.texts.remove(0);
        }
        if let Some(n) = ents.order_numbers.first() {
            if task.order.as_deref() != Some(n) {
                task.items = None;
                task.pending_call = None;
            }
            task.order = Some(n.clone());
        }
        if let Some(r) = &ents.reason {
            task.reason = Some(r.clone());
        }
        if let Some(p) = &ents.payment_hint {
            task.payment_hint = Some(p.clone());
        }
        if let Some(a) = &ents.address {
            task.address = Some(Address {
                name: String::new(),
                address1: a.address1.clone(),
                address2: a.address2.clone(),
                city: a.city.clone(),
                state: a.state.clone(),
                country: String::new(),
                zip: a.zip.clone(),
                phone: String::new(),
            });
        }
        let draft = self.advance(state, &mut task, turn, ents).await;
        // A finished (or abandoned) task is cleared by `advance`; otherwise keep its progress.
        if state.task.is_some() {
            state.task = Some(task);
        }
        draft
    }

    async fn advance(
        &self,
        state: &mut DialogueState,
        task: &mut Task,
        turn: &Turn<'_>,
        ents: &Entities,
    ) -> R<Draft> {
        let Some(customer_id) = state.verified_customer.clone() else {
            task.awaiting = Some(Awaiting::Verification);
            let failed = state.failed_verifications > 0;
            return Ok(Draft::ask(
                "ask_verification",
                json!({"failed": failed, "task": task.kind, "has_email": state.claimed_email.is_some()}),
            ));
        };
        let customer = self
            .store
            .get_customer(&customer_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("verified customer {customer_id} vanished"))?;

        if task.kind == TaskKind::UpdateProfileAddress {
            return self.profile_address(state, task, &customer, turn).await;
        }

        // The order.
        let orders = self.store.list_customer_orders(&customer.id).await?;
        let order = match &task.order {
            Some(n) => {
                let wanted = normalize_number(n);
                match orders
                    .iter()
                    .find(|o| o.number.eq_ignore_ascii_case(&wanted))
                {
                    Some(o) => o.clone(),
                    None => {
                        // Not theirs (or no such order): say nothing about it.
                        task.order = None;
                        task.awaiting = Some(Awaiting::Order);
                        return Ok(Draft::ask(
                            "order_not_found",
                            json!({"number": wanted, "orders": orders_json(&orders)}),
                        ));
                    }
                }
            }
            None => {
                let candidates: Vec<&Order> = orders
                    .iter()
                    .filter(|o| candidate_for(task.kind, o.status))
                    .collect();
                if candidates.len() == 1 && orders.len() == 1 {
                    task.order = Some(candidates[0].number.clone());
                    candidates[0].clone()
                } else {
                    task.awaiting = Some(Awaiting::Order);
                    let list: Vec<Order> = if candidates.is_empty() {
                        orders.clone()
                    } else {
                        candidates.into_iter().cloned().collect()
                    };
                    return Ok(Draft::ask(
                        "ask_order",
                        json!({"task": task.kind, "orders": orders_json(&list)}),
                    ));
                }
            }
        };

        match task.kind {
            TaskKind::OrderStatus | TaskKind::Invoice | TaskKind::RefundStatus => {
                state.task = None;
                self.order_status(state, &order, task.kind, turn.now).await
            }
            TaskKind::Cancel => self.cancel(state, task, &order, turn.now).await,
            TaskKind::ChangeAddress => self.change_address(state, task, &order, turn).await,
            TaskKind::Return => {
                self.return_items(state, task, &order, &customer, turn, ents)
                    .await
            }
            TaskKind::Exchange | TaskKind::ModifyItems => {
                self.exchange(state, task, &order, turn, ents).await
            }
            TaskKind::ChangePayment => {
                self.change_payment(state, task, &order, &customer, turn)
                    .await
            }
            TaskKind::UpdateProfileAddress => unreachable_task(),
        }
    }

    async fn order_status(
        &self,
        state: &DialogueState,
        order: &Order,
        kind: TaskKind,
        now: i64,
    ) -> R<Draft> {
        let ctx = self.tool_ctx(state, now);
        let out = tools::execute(
            &ctx,
            &ToolCall::GetOrder {
                order_id: order.number.clone(),
            },
        )
        .await;
        let order_data = match out {
            Ok(o) => o,
            Err(e) => return Ok(Draft::ask("refused", json!({"message": e.message}))),
        };
        let template = match kind {
            TaskKind::Invoice => "order_invoice",
            TaskKind::RefundStatus => "refund_status",
            _ => "order_status",
        };
        let mut d = Draft::done(template, json!({"order": order_json(order, &self.policy)}));
        d.actions
            .push(order_data.action.unwrap_or_else(|| ActionRecord {
                kind: "order_lookup",
                order: Some(order.number.clone()),
                details: json!({}),
            }));
        d.citations.push(Citation {
            kind: "order",
            reference: order.number.clone(),
        });
        Ok(d)
    }

    /// Checks the policy before offering an action, so a refusal comes at once.
    fn precheck(&self, action: ActionKind, order: &Order, now: i64) -> Option<Draft> {
        match self.policy.check_order(action, order, now) {
            Ok(()) => None,
            Err(denial) => Some(Draft::done(
                "refused",
                json!({"message": denial_sentence(&denial, order)}),
            )),
        }
    }

    async fn cancel(
        &self,
        state: &mut DialogueState,
        task: &mut Task,
        order: &Order,
        now: i64,
    ) -> R<Draft> {
        if let Some(d) = self.precheck(ActionKind::CancelOrder, order, now) {
            state.task = None;
            return Ok(d);
        }
        let reason = match task.reason.as_deref() {
            Some(r) if self.policy.cancel_reason_allowed(r) => r.to_string(),
            _ => {
                task.awaiting = Some(Awaiting::Reason);
                return Ok(Draft::ask(
                    "ask_cancel_reason",
                    json!({"order": order_json(order, &self.policy), "reasons": self.policy.actions.cancel_order.reasons}),
                ));
            }
        };
        let call = ToolCall::CancelOrder {
            order_id: order.number.clone(),
            reason: reason.clone(),
        };
        Ok(self.confirm(
            task,
            call,
            json!({"kind": "cancel", "order": order_json(order, &self.policy), "reason": reason}),
        ))
    }

    async fn change_address(
        &self,
        state: &mut DialogueState,
        task: &mut Task,
        order: &Order,
        turn: &Turn<'_>,
    ) -> R<Draft> {
        if let Some(d) = self.precheck(ActionKind::ModifyOrderAddress, order, turn.now) {
            state.task = None;
            return Ok(d);
        }
        let Some(mut address) = task.address.clone() else {
            task.awaiting = Some(Awaiting::Address);
            return Ok(Draft::ask(
                "ask_address",
                json!({"order": order_json(order, &self.policy)}),
            ));
        };
        if address.country.is_empty() {
            address.country = order
                .shipping_address
                .as_ref()
                .map(|a| a.country.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "USA".into());
        }
        let call = ToolCall::ModifyOrderAddress {
            order_id: order.number.clone(),
            address: address.clone(),
        };
        Ok(self.confirm(
            task,
            call,
            json!({"kind": "address", "order": order_json(order, &self.policy), "address": address.one_line()}),
        ))
    }

    async fn profile_address(
        &self,
        _state: &mut DialogueState,
        task: &mut Task,
        customer: &Customer,
        _turn: &Turn<'_>,
    ) -> R<Draft> {
        let Some(mut address) = task.address.clone() else {
            task.awaiting = Some(Awaiting::Address);
            return Ok(Draft::ask("ask_address", json!({"profile": true})));
        };
        if address.country.is_empty() {
            address.country = customer
                .addresses
                .first()
                .map(|a| a.country.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "USA".into());
        }
        let call = ToolCall::UpdateCustomerAddress {
            address: address.clone(),
        };
        Ok(self.confirm(
            task,
            call,
            json!({"kind": "profile_address", "address": address.one_line()}),
        ))
    }

    fn refund_method(
        &self,
        task: &Task,
        order: &Order,
        customer: &Customer,
    ) -> Option<(String, String)> {
        let original = order.payments.first().map(|p| p.payment_method_id.clone());
        let gift = customer
            .payment_methods
            .iter()
            .find(|m| m.is_gift_card())
            .map(|m| m.id.clone());
        let describe = |id: &str| {
            customer
                .payment_methods
                .iter()
                .find(|m| m.id == id)
                .map(describe_method)
                .unwrap_or_else(|| id.replace('_', " "))
        };
        let chosen = match task.payment_hint.as_deref() {
            Some("gift card") => gift.or(original),
            _ => original,
        }?;
        let text = describe(&chosen);
        Some((chosen, text))
    }

    async fn return_items(
        &self,
        state: &mut DialogueState,
        task: &mut Task,
        order: &Order,
        customer: &Customer,
        turn: &Turn<'_>,
        ents: &Entities,
    ) -> R<Draft> {
        if let Some(d) = self.precheck(ActionKind::ReturnItems, order, turn.now) {
            state.task = None;
            return Ok(d);
        }
        let Some(items) = self.pick_items(task, order, ents) else {
            task.awaiting = Some(Awaiting::Items);
            return Ok(Draft::ask(
                "ask_items",
                json!({"task": task.kind, "order": order_json(order, &self.policy)}),
            ));
        };
        let Some((method_id, method_text)) = self.refund_method(task, order, customer) else {
            state.task = None;
            return Ok(Draft::done(
                "refused",
                json!({"message": format!("I can't find how order {} was paid, so I can't set up the refund here.", order.number)}),
            ));
        };
        let item_ids: Vec<String> = items
            .iter()
            .map(|&i| order.items[i].variant_id.clone())
            .collect();
        let refund: i64 = items.iter().map(|&i| order.items[i].price).sum();
        let call = ToolCall::ReturnItems {
            order_id: order.number.clone(),
            item_ids,
            payment_method_id: method_id,
        };
        Ok(self.confirm(
            task,
            call,
            json!({"kind": "return", "order": order_json(order, &self.policy),
                   "items": items.iter().map(|&i| item_json(order, i)).collect::<Vec<_>>(),
                   "refund": format_money(refund, &order.currency), "method": method_text}),
        ))
    }

    /// The items the shopper means, from everything said about this request (newest first).
    fn pick_items(&self, task: &mut Task, order: &Order, _ents: &Entities) -> Option<Vec<usize>> {
        let described: Vec<(String, String)> = order
            .items
            .iter()
            .map(|i| (i.name.clone(), crate::commerce::options_text(&i.options)))
            .collect();
        for text in task.texts.clone().iter().rev() {
            match nlu::match_items(text, &described) {
                ItemChoice::All => {
                    task.items = Some((0..order.items.len()).collect());
                    break;
                }
                ItemChoice::Some(v) if !v.is_empty() => {
                    task.items = Some(v);
                    break;
                }
                _ => {}
            }
        }
        if task.items.is_none() && order.items.len() == 1 {
            task.items = Some(vec![0]);
        }
        task.items
            .clone()
            .filter(|v| !v.is_empty() && v.iter().all(|&i| i < order.items.len()))
    }

    async fn exchange(
        &self,
        state: &mut DialogueState,
        task: &mut Task,
        order: &Order,
        turn: &Turn<'_>,
        ents: &Entities,
    ) -> R<Draft> {
        // On a pending order an exchange is an item change; on a delivered one, an exchange.
        let action = if order.status == OrderStatus::Pending {
            task.kind = TaskKind::ModifyItems;
            ActionKind::ModifyOrderItems
        } else {
            task.kind = TaskKind::Exchange;
            ActionKind::ExchangeItems
        };
        if let Some(d) = self.precheck(action, order, turn.now) {
            state.task = None;
            return Ok(d);
        }
        let Some(items) = self.pick_items(task, order, ents) else {
            task.awaiting = Some(Awaiting::Items);
            return Ok(Draft::ask(
                "ask_items",
                json!({"task": task.kind, "order": order_json(order, &self.policy)}),
            ));
        };
        // What they want instead: options named in this message, for each chosen item.
        let mut new_ids = Vec::new();
        let mut lines = Vec::new();
        let mut unavailable = Vec::new();
        for &i in &items {
            let item = &order.items[i];
            let Some(product) = self.store.get_product(&item.product_id).await? else {
                continue;
            };
            let offered = offered_options(&product);
            for text in &task.texts {
                for (k, v) in nlu::match_options(text, &offered) {
                    task.new_options.insert(k, v);
                }
            }
            if task.new_options.is_empty() {
                continue;
            }
            let mut target = item.options.clone();
            for (k, v) in &task.new_options {
                if target.contains_key(k) {
                    target.insert(k.clone(), v.clone());
                }
            }
            match product.variants.iter().find(|v| v.options == target && v.id != item.variant_id) {
                Some(v) if v.available => {
                    new_ids.push(v.id.clone());
                    lines.push(json!({"from": item_json(order, i), "to": crate::commerce::options_text(&v.options),
                                      "price": format_money(v.price, &v.currency)}));
                }
                _ => unavailable.push(json!({"name": item.name, "wanted": crate::commerce::options_text(&target),
                    "alternatives": product.variants.iter().filter(|v| v.available && v.id != item.variant_id)
                        .take(4).map(|v| crate::commerce::options_text(&v.options)).collect::<Vec<_>>()})),
            }
        }
        if task.new_options.is_empty() {
            task.awaiting = Some(Awaiting::NewOptions);
            return Ok(Draft::ask(
                "ask_new_options",
                json!({"items": items.iter().map(|&i| item_json(order, i)).collect::<Vec<_>>()}),
            ));
        }
        if !unavailable.is_empty() || new_ids.len() != items.len() {
            task.new_options = Map::new();
            task.awaiting = Some(Awaiting::NewOptions);
            return Ok(Draft::ask(
                "variant_unavailable",
                json!({"items": unavailable}),
            ));
        }
        let method = order
            .payments
            .first()
            .map(|p| p.payment_method_id.clone())
            .unwrap_or_default();
        let item_ids: Vec<String> = items
            .iter()
            .map(|&i| order.items[i].variant_id.clone())
            .collect();
        let call = if action == ActionKind::ModifyOrderItems {
            ToolCall::ModifyOrderItems {
                order_id: order.number.clone(),
                item_ids,
                new_item_ids: new_ids,
                payment_method_id: method,
            }
        } else {
            ToolCall::ExchangeItems {
                order_id: order.number.clone(),
                item_ids,
                new_item_ids: new_ids,
                payment_method_id: method,
            }
        };
        let kind = if action == ActionKind::ModifyOrderItems {
            "modify_items"
        } else {
            "exchange"
        };
        Ok(self.confirm(
            task,
            call,
            json!({"kind": kind, "order": order_json(order, &self.policy), "lines": lines}),
        ))
    }

    async fn change_payment(
        &self,
        state: &mut DialogueState,
        task: &mut Task,
        order: &Order,
        customer: &Customer,
        turn: &Turn<'_>,
    ) -> R<Draft> {
        if let Some(d) = self.precheck(ActionKind::ModifyOrderPayment, order, turn.now) {
            state.task = None;
            return Ok(d);
        }
        let current = order.payments.first().map(|p| p.payment_method_id.as_str());
        let wanted = task.payment_hint.as_deref().and_then(|hint| {
            customer.payment_methods.iter().find(|m| {
                Some(m.id.as_str()) != current
                    && match hint {
                        "gift card" => m.is_gift_card(),
                        "paypal" => m.kind == "paypal",
                        "credit card" => m.kind == "credit_card",
                        _ => false,
                    }
            })
        });
        let Some(method) = wanted else {
            task.awaiting = Some(Awaiting::Reason);
            let others: Vec<String> = customer
                .payment_methods
                .iter()
                .filter(|m| Some(m.id.as_str()) != current)
                .map(describe_method)
                .collect();
            return Ok(Draft::ask(
                "ask_payment_method",
                json!({"order": order_json(order, &self.policy), "methods": others}),
            ));
        };
        let call = ToolCall::ModifyOrderPayment {
            order_id: order.number.clone(),
            payment_method_id: method.id.clone(),
        };
        Ok(self.confirm(
            task,
            call,
            json!({"kind": "payment", "order": order_json(order, &self.policy), "method": describe_method(method)}),
        ))
    }

    fn confirm(&self, task: &mut Task, call: ToolCall, details: Value) -> Draft {
        task.pending_call = Some(call);
        task.awaiting = Some(Awaiting::Confirmation);
        Draft::ask("confirm", details)
    }

    async fn execute_pending(&self, state: &mut DialogueState, turn: &Turn<'_>) -> R<Draft> {
        // A "yes" that cannot confirm (an email whose sender is unproven and that does not
        // answer our own email): nothing runs, the listed change stays pending for a yes that
        // comes through the email we sent to the address on file.
        if !turn.confirms_writes {
            let kind = state.task.as_ref().map(|t| t.kind);
            return Ok(Draft::ask("confirm_by_email", json!({"task": kind})));
        }
        let Some(task) = state.task.take() else {
            return Ok(Draft::ask("clarify", json!({})));
        };
        let Some(call) = task.pending_call.clone() else {
            state.task = Some(task);
            return Ok(Draft::ask("clarify", json!({})));
        };
        let ctx = self.tool_ctx(state, turn.now);
        match tools::execute(&ctx, &call).await {
            Ok(out) => {
                let order = match call.order_id() {
                    Some(n) => self.store.get_order_by_number(n).await?,
                    None => None,
                };
                let mut d = Draft::done(
                    "action_done",
                    json!({"action": call.name(), "result": out.data,
                           "order": order.as_ref().map(|o| order_json(o, &self.policy))}),
                );
                if let Some(a) = out.action {
                    d.actions.push(a);
                }
                if let Some(o) = &order {
                    d.citations.push(Citation {
                        kind: "order",
                        reference: o.number.clone(),
                    });
                }
                Ok(d)
            }
            Err(e) if e.code == ToolErrorCode::NeedsApproval => {
                let mut d = Draft::new(
                    "needs_approval",
                    json!({"message": e.message, "action": call.name()}),
                    ConversationStatus::Escalated,
                );
                d.escalation = Some((
                    "needs_approval".into(),
                    format!(
                        "{} needs staff approval: {}. Requested change: {}",
                        call.name(),
                        e.message,
                        serde_json::to_string(&call).unwrap_or_default()
                    ),
                ));
                d.actions.push(escalated_action("needs_approval"));
                Ok(d)
            }
            Err(e) => Ok(Draft::done("refused", json!({"message": e.message}))),
        }
    }

    async fn availability(&self, turn: &Turn<'_>, _ents: &Entities) -> R<Option<Draft>> {
        let index = self.search.clone();
        let q = turn.text.to_string();
        let hits = tokio::task::spawn_blocking(move || index.search(&q, Some(DocKind::Product), 5))
            .await??;
        let Some(hit) = hits.first() else {
            return Ok(None);
        };
        let Some(product) = self.store.get_product(&hit.key).await? else {
            return Ok(None);
        };
        let wanted = nlu::match_options(turn.text, &offered_options(&product));
        let ctx = ToolContext {
            store: &self.store,
            policy: &self.policy,
            actor: Actor::OfflineResolver,
            customer_id: None,
            now: turn.now,
        };
        let out = tools::execute(
            &ctx,
            &ToolCall::CheckAvailability {
                product_id: product.id.clone(),
                options: wanted.clone(),
            },
        )
        .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => return Ok(Some(Draft::done("refused", json!({"message": e.message})))),
        };
        let matching: Vec<&crate::commerce::Variant> = product
            .variants
            .iter()
            .filter(|v| wanted.iter().all(|(k, val)| v.options.get(k) == Some(val)))
            .collect();
        let available: Vec<Value> = matching
            .iter()
            .filter(|v| v.available)
            .take(6)
            .map(|v| json!({"options": crate::commerce::options_text(&v.options), "price": format_money(v.price, &v.currency), "stock": v.stock}))
            .collect();
        let mut d = Draft::done(
            "availability",
            json!({"product": product.name, "wanted": crate::commerce::options_text(&wanted),
                   "any_wanted": !wanted.is_empty(), "available": available,
                   "alternatives": product.variants.iter().filter(|v| v.available).take(4)
                        .map(|v| crate::commerce::options_text(&v.options)).collect::<Vec<_>>()}),
        );
        d.actions.push(out.action.unwrap_or(ActionRecord {
            kind: "availability",
            order: None,
            details: json!({"product_id": product.id}),
        }));
        d.citations.push(Citation {
            kind: "product",
            reference: product.id.clone(),
        });
        Ok(Some(d))
    }

    /// Answers from the brand's policy texts, quoting the best section and citing it.
    fn policy_answer(&self, question: &str) -> R<Option<Draft>> {
        let hits = self.search.search(question, Some(DocKind::Policy), 3)?;
        let Some(hit) = hits.first() else {
            return Ok(None);
        };
        if hit.score < 1.0 {
            return Ok(None);
        }
        let text = self
            .policy_chunks
            .get(&hit.key)
            .map(|c| c.text.clone())
            .unwrap_or_else(|| hit.snippet.clone());
        let heading = self
            .policy_chunks
            .get(&hit.key)
            .map(|c| c.heading.clone())
            .unwrap_or_else(|| hit.title.clone());
        // The closest section does not answer a question about what no policy mentions: say
        // so and offer a person, rather than call the question answered.
        let missing = self.policy_vocab.uncovered(question);
        if !missing.is_empty() {
            let mut d = Draft::ask(
                "unanswered",
                json!({"missing": missing.join(", "), "heading": heading, "text": text.trim(),
                       "ref": hit.key}),
            );
            d.actions.push(ActionRecord {
                kind: "unanswered",
                order: None,
                details: json!({"missing": missing}),
            });
            return Ok(Some(d));
        }
        let mut d = Draft::done(
            "policy_answer",
            json!({"heading": heading, "text": text.trim(), "ref": hit.key}),
        );
        d.citations.push(Citation {
            kind: "policy",
            reference: hit.key.clone(),
        });
        Ok(Some(d))
    }

    fn summary(
        &self,
        state: &DialogueState,
        turn: &Turn<'_>,
        class: &nlu::Classification,
    ) -> String {
        // Plain words first; the machine's labels on a details line of their own.
        let mut parts = vec![format!(
            "The shopper wrote on {}: \"{}\"",
            channel_words(turn.channel),
            turn.text.trim().chars().take(300).collect::<String>(),
        )];
        parts.push(match &state.verified_customer {
            Some(_) => "They have proved they are the account holder.".into(),
            None => "They have not proved who they are yet.".into(),
        });
        if let Some(o) = state
            .task
            .as_ref()
            .and_then(|t| t.order.as_ref())
            .or(state.last_order.as_ref())
        {
            parts.push(format!("The order in question is {o}."));
        }
        let mut details = format!(
            "Details: understood as {}, {:.0}% sure",
            class.intent.as_str(),
            class.confidence * 100.0
        );
        if let Some(c) = &state.verified_customer {
            details.push_str(&format!("; customer {c}"));
        }
        format!("{}\n{details}.", parts.join(" "))
    }
}

enum VerifyResult {
    Verified,
    NotYet,
    Failed,
    OtherCustomer,
    /// Verification is locked for a scope of this attempt until `until`.
    Locked {
        until: i64,
        code_sent: bool,
        failed: bool,
    },
    CodeSent,
    CodeWrong {
        left: i64,
    },
    CodeExpired,
}

/// What verification made of a turn in the LLM mode.
pub(crate) enum VerifyStep {
    Proceed {
        other_customer: bool,
    },
    /// A reply about a lock or a one-time code, to give as it is.
    Reply(TurnOutcome),
}

/// The reply a verification result needs before anything else, if any.
fn verification_draft(result: &VerifyResult, turn: &Turn<'_>) -> Option<Draft> {
    Some(match result {
        VerifyResult::OtherCustomer => Draft::ask("one_customer_only", json!({})),
        VerifyResult::Locked {
            until,
            code_sent,
            failed,
        } => {
            let minutes = ((until - turn.now).max(0) + 59_999) / 60_000;
            Draft::ask(
                "verification_locked",
                json!({"minutes": minutes.max(1), "code_sent": code_sent, "failed": failed}),
            )
        }
        VerifyResult::CodeSent => Draft::ask("code_sent", json!({})),
        VerifyResult::CodeWrong { left } => Draft::ask("code_wrong", json!({"left": left})),
        VerifyResult::CodeExpired => Draft::ask("code_wrong", json!({"expired": true})),
        VerifyResult::Verified | VerifyResult::NotYet | VerifyResult::Failed => return None,
    })
}

/// Where one-time codes asked for in a conversation are kept (the codes table's requester).
fn code_scope(conversation_id: &str) -> String {
    format!("conversation:{conversation_id}")
}

fn mark_verified(state: &mut DialogueState, customer: &str, by: &str, now: i64) {
    state.verified_customer = Some(customer.to_string());
    state.verified_at = Some(now);
    state.verified_by = Some(by.to_string());
    state.failed_verifications = 0;
}

/// Forgets the order, ZIP and name claims (the email stays when the channel makes it the
/// sender's claim).
fn forget_claims(state: &mut DialogueState, turn: &Turn<'_>) {
    state.claimed_zip = None;
    state.claimed_name = None;
    state.claimed_orders.clear();
    if !turn.sender_email_is_claim && state.verified_customer.is_some() {
        state.claimed_email = None;
    }
}

/// A 6-digit code typed on its own or in a sentence ("it's 123456").
fn six_digit_code(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
}

/// "Send me a code", "can you email me a verification code?"
fn asks_for_code(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("code")
        && [
            "send", "email", "mail", "new", "another", "get", "want", "need",
        ]
        .iter()
        .any(|w| t.contains(w))
        && six_digit_code(text).is_none()
}

fn unreachable_task() -> R<Draft> {
    Err(anyhow::anyhow!(
        "profile address is handled before order selection"
    ))
}

/// Whether an entity answers the slot being waited for (so it is not a change of mind).
fn slot_answer(awaiting: Option<Awaiting>, ents: &Entities) -> bool {
    match awaiting {
        Some(Awaiting::Verification) => {
            !ents.emails.is_empty()
                || !ents.zip_codes.is_empty()
                || !ents.names.is_empty()
                || !ents.order_numbers.is_empty()
        }
        Some(Awaiting::Order) => !ents.order_numbers.is_empty(),
        Some(Awaiting::Reason) => ents.reason.is_some() || ents.payment_hint.is_some(),
        Some(Awaiting::Address) => ents.address.is_some(),
        Some(Awaiting::Items) | Some(Awaiting::NewOptions) => true,
        Some(Awaiting::Confirmation) | None => false,
    }
}

/// Which task an intent starts.
fn task_for(intent: Intent, ents: &Entities, text: &str) -> Option<TaskKind> {
    // An address in the message is about where things go, whatever else it says.
    if ents.address.is_some() {
        return Some(match intent {
            Intent::SetUpShippingAddress | Intent::EditAccount if ents.order_numbers.is_empty() => {
                TaskKind::UpdateProfileAddress
            }
            _ => TaskKind::ChangeAddress,
        });
    }
    // "How long do I have to return…?" asks about the policy, not for a return.
    if ents.order_numbers.is_empty() && is_general_question(text) {
        return None;
    }
    Some(match intent {
        Intent::TrackOrder => TaskKind::OrderStatus,
        Intent::DeliveryPeriod if !ents.order_numbers.is_empty() => TaskKind::OrderStatus,
        Intent::CancelOrder => TaskKind::Cancel,
        Intent::ChangeShippingAddress => TaskKind::ChangeAddress,
        Intent::SetUpShippingAddress => TaskKind::UpdateProfileAddress,
        Intent::ReturnItem | Intent::GetRefund => TaskKind::Return,
        Intent::ExchangeItem | Intent::ChangeOrder => TaskKind::Exchange,
        Intent::TrackRefund => TaskKind::RefundStatus,
        Intent::GetInvoice | Intent::CheckInvoice => TaskKind::Invoice,
        Intent::PaymentIssue if ents.payment_hint.is_some() && !ents.order_numbers.is_empty() => {
            TaskKind::ChangePayment
        }
        _ => return None,
    })
}

/// A question about how things work in general ("how many days do I have to return?",
/// "can I cancel after it ships?") rather than a request about one order.
fn is_general_question(text: &str) -> bool {
    let t = format!(
        " {} ",
        text.to_lowercase().replace(['?', ',', '.', '!'], " ")
    );
    let general = [
        " how many ",
        " how long ",
        " how much ",
        " how do ",
        " how does ",
        " what is your ",
        " what's your ",
        " what are your ",
        " do you ",
        " is it possible ",
        " policy ",
        " can i ",
        " can you ",
        " do i have ",
        " are there ",
        " is there ",
    ];
    let personal = [
        " my ",
        " mine ",
        " i ordered ",
        " i bought ",
        " i received ",
        " i got ",
    ];
    general.iter().any(|g| t.contains(g)) && !personal.iter().any(|p| t.contains(p))
}

fn is_policy_intent(intent: Intent) -> bool {
    matches!(
        intent,
        Intent::CheckRefundPolicy
            | Intent::CheckCancellationFee
            | Intent::DeliveryOptions
            | Intent::DeliveryPeriod
            | Intent::CheckPaymentMethods
            | Intent::NewsletterSubscription
            | Intent::CreateAccount
            | Intent::DeleteAccount
            | Intent::EditAccount
            | Intent::RecoverPassword
            | Intent::RegistrationProblems
            | Intent::SwitchAccount
    )
}

/// Orders worth offering for a request.
fn candidate_for(kind: TaskKind, status: OrderStatus) -> bool {
    match kind {
        TaskKind::Cancel | TaskKind::ChangeAddress | TaskKind::ChangePayment => {
            status == OrderStatus::Pending
        }
        TaskKind::Return => status == OrderStatus::Delivered,
        TaskKind::Exchange | TaskKind::ModifyItems => {
            matches!(status, OrderStatus::Delivered | OrderStatus::Pending)
        }
        _ => true,
    }
}

fn normalize_number(n: &str) -> String {
    let t = n.trim().to_uppercase();
    if t.starts_with('#') {
        t
    } else {
        format!("#{t}")
    }
}

fn escalated_action(reason: &str) -> ActionRecord {
    ActionRecord {
        kind: "escalated",
        order: None,
        details: json!({"reason": reason}),
    }
}

fn offered_options(product: &crate::commerce::Product) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for v in &product.variants {
        for (k, val) in &v.options {
            let val = val
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| val.to_string());
            match out.iter_mut().find(|(n, _)| n == k) {
                Some((_, vals)) => {
                    if !vals.contains(&val) {
                        vals.push(val);
                    }
                }
                None => out.push((k.clone(), vec![val])),
            }
        }
    }
    out
}

fn describe_method(m: &crate::commerce::PaymentMethod) -> String {
    match m.kind.as_str() {
        "credit_card" => format!(
            "{} card ending {}",
            m.brand.as_deref().unwrap_or("credit"),
            m.last_four.as_deref().unwrap_or("????")
        ),
        "gift_card" => match m.balance {
            Some(b) => format!("gift card ({} balance)", format_money(b, &m.currency)),
            None => "gift card".into(),
        },
        "paypal" => "PayPal".into(),
        other => other.replace('_', " "),
    }
}

/// A policy refusal in words a shopper understands.
pub(crate) fn denial_sentence(denial: &Denial, order: &Order) -> String {
    let what = |a: ActionKind| match a {
        ActionKind::CancelOrder => "cancelled",
        ActionKind::ModifyOrderAddress => "given a new shipping address",
        ActionKind::ModifyOrderItems => "changed",
        ActionKind::ModifyOrderPayment => "moved to another payment method",
        ActionKind::ReturnItems => "returned",
        ActionKind::ExchangeItems => "exchanged",
        ActionKind::UpdateCustomerAddress => "updated",
        ActionKind::Refund => "refunded",
    };
    match denial {
        Denial::Status {
            action, allowed, ..
        } => {
            let allowed: Vec<&str> = allowed.iter().map(|s| s.describe()).collect();
            format!(
                "Order {} is {}; only orders that are {} can be {}.",
                order.number,
                order.status.describe(),
                allowed.join(" or "),
                what(*action)
            )
        }
        Denial::AlreadyDone(a) => format!(
            "Order {} has already been {} once, and that can only happen once per order.",
            order.number,
            what(*a)
        ),
        Denial::LockedAfterItemChange(a) => format!(
            "The items of order {} were already changed, so it can no longer be {}.",
            order.number,
            what(*a)
        ),
        Denial::OutsideWindow { action, days } => format!(
            "Order {} was delivered more than {days} days ago, so it can no longer be {}.",
            order.number,
            what(*action)
        ),
        Denial::Disabled(a) | Denial::NotAnOrderAction(a) => format!(
            "Orders can't be {} through this chat; a member of our team can help.",
            what(*a)
        ),
    }
}

/// A channel's name in a sentence.
fn channel_words(channel: &str) -> &str {
    match channel {
        "api" => "the API",
        "webchat" => "web chat",
        "agent" => "a consumer agent's channel",
        other => other,
    }
}

/// What an action record says was done, in words for the shopper (None: nothing done).
fn action_words(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "order_cancelled" => "the order was cancelled",
        "address_updated" => "the order's address was changed",
        "items_modified" => "the order's items were changed",
        "payment_updated" => "the order's payment method was changed",
        "return_created" => "a return was opened",
        "exchange_created" => "an exchange was opened",
        "customer_address_updated" => "the default address was updated",
        _ => return None,
    })
}

fn customer_json(c: Option<&Customer>) -> Value {
    match c {
        Some(c) => json!({"first_name": c.first_name, "name": c.full_name()}),
        None => Value::Null,
    }
}

fn item_json(order: &Order, i: usize) -> Value {
    let it = &order.items[i];
    json!({"n": i + 1, "name": it.name, "options": crate::commerce::options_text(&it.options),
           "price": format_money(it.price, &order.currency), "quantity": it.quantity})
}

fn orders_json(orders: &[Order]) -> Vec<Value> {
    orders
        .iter()
        .map(|o| json!({"number": o.number, "status": o.status.describe(),
                        "items": o.items.iter().map(|i| i.name.clone()).collect::<Vec<_>>().join(", ")}))
        .collect()
}

/// An order as replies show it: every fact comes from the stored order.
pub fn order_json(o: &Order, policy: &Policy) -> Value {
    let date = |ms: Option<i64>| ms.map(|m| rfc3339(m)[..10].to_string());
    let delivered = o.fulfillments.iter().filter_map(|f| f.delivered_at).max();
    let estimated = o.fulfillments.iter().filter_map(|f| f.estimated_at).max();
    let shipped = o.fulfillments.iter().filter_map(|f| f.shipped_at).max();
    // When it arrives: the carrier's delivery date, else its estimate, else the policy's
    // shipping times from the ship or order date; unknown when the order has no dates.
    let eta = match (o.status, delivered, estimated, shipped, o.created_at) {
        (OrderStatus::Cancelled, ..) => None,
        (_, Some(d), ..) => Some(format!("It was delivered on {}.", &rfc3339(d)[..10])),
        (_, None, Some(e), ..) => Some(format!("It is expected by {}.", &rfc3339(e)[..10])),
        (_, None, None, Some(s), _) => {
            let (a, b) = policy.shipping_estimate(None, s);
            Some(format!(
                "It should arrive between {} and {}.",
                &rfc3339(a)[..10],
                &rfc3339(b)[..10]
            ))
        }
        (OrderStatus::Pending, None, None, None, Some(c)) => {
            let (a, b) = policy.delivery_estimate_from_order(None, c);
            Some(format!(
                "It should arrive between {} and {}.",
                &rfc3339(a)[..10],
                &rfc3339(b)[..10]
            ))
        }
        _ => None,
    };
    json!({
        "eta": eta,
        "number": o.number,
        "status": o.status.as_str(),
        "status_text": o.status.describe(),
        "created": date(o.created_at),
        "total": format_money(o.total, &o.currency),
        "items": (0..o.items.len()).map(|i| item_json(o, i)).collect::<Vec<_>>(),
        "address": o.shipping_address.as_ref().map(Address::one_line),
        "shipments": o.fulfillments.iter().map(|f| json!({
            "carrier": f.carrier,
            "tracking": f.tracking_numbers,
            "url": f.tracking_urls.first(),
            "shipped": date(f.shipped_at),
            "delivered": date(f.delivered_at),
            "estimated": date(f.estimated_at),
        })).collect::<Vec<_>>(),
        "payments": o.payments.iter().map(|p| json!({
            "kind": p.kind.as_str(), "amount": format_money(p.amount, &o.currency), "method": p.payment_method_id,
        })).collect::<Vec<_>>(),
        "cancel_reason": o.cancel_reason,
        "returns": o.returns.iter().map(|r| json!({"status": r.status, "refund": format_money(r.refund, &r.currency)})).collect::<Vec<_>>(),
        "exchanges": o.exchanges.iter().map(|x| json!({"status": x.status})).collect::<Vec<_>>(),
        "refunds": o.refunds.iter().map(|r| json!({"amount": format_money(r.amount, &r.currency)})).collect::<Vec<_>>(),
    })
}
