//! The brand agent: understands a shopper's message (intents, entities), verifies who they are,
//! and resolves the request through the one tool layer under the brand's policy — or hands it to
//! a person with a ready draft. [`Agent::reply`] is what the inbox's turn calls for a stored
//! message (under the conversation's lock): it answers, stores the reply (with its delivery when
//! the channel has one), and records any hand-over. [`fixed`] holds the replies given without a
//! dialogue turn (the `/start` greeting, a group chat's invitation).

pub mod coverage;
pub mod dialogue;
pub mod fixed;
pub mod guard;
pub mod llm;
pub mod nlu;
pub mod state;
pub mod tools;
pub mod voice;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Value, json};

use crate::commerce::policy::Policy;
use crate::search::SearchIndex;
use crate::store::{
    AuthorKind, ConversationStatus, Direction, Escalation, Message, NewDelivery, NewMessage, Store,
};
use dialogue::{Resolver, Turn, TurnOutcome};
use state::DialogueState;
use voice::{Templates, Voice};

/// Where the brand's wording lives.
pub struct BrandPaths<'a> {
    pub brand_dir: &'a Path,
    pub prompts_dir: &'a Path,
    pub channels_dir: &'a Path,
}

/// A message as the agent needs it: who sent it, how far the channel vouches for them.
pub struct Inbound<'a> {
    pub conversation_id: &'a str,
    pub message_id: &'a str,
    pub identity_id: Option<&'a str>,
    pub channel: &'a str,
    pub text: &'a str,
    pub sender_email: Option<&'a str>,
    pub sender_verified: bool,
    /// Email channel: the From address is the customer's email claim.
    pub sender_email_is_claim: bool,
    /// A "yes" in this message may confirm a pending write. False for an email whose sender is
    /// not authenticated and that does not answer one of our own outgoing messages.
    pub confirms_writes: bool,
    /// A verification made in this conversation may be remembered on the sender's channel
    /// identity. False for unauthenticated email, group chats and consumer agents' contexts.
    pub identity_linkable: bool,
    /// Who is asking beyond the channel identity, for counting failed verifications:
    /// `ip:<address>` or `agent:<id>`, when known.
    pub requester: Option<&'a str>,
    /// Claims written in the message (email, order numbers, ZIP, name) may verify the sender.
    /// False where only a credential may (a consumer agent's text conversation).
    pub verify_from_claims: bool,
    /// The customer a credential on this message proves (a consumer agent's capability token).
    pub vouched_customer: Option<&'a str>,
    /// The reply's delivery, stored with it, when the channel sends replies through the outbox.
    pub deliver: Option<&'a NewDelivery>,
}

/// What the agent did with a message.
#[derive(Debug, Clone)]
pub struct AgentReply {
    pub message: Message,
    pub outcome: TurnOutcome,
    pub escalation: Option<Escalation>,
}

impl AgentReply {
    /// The API channel's `resolution` object.
    pub fn resolution(&self) -> Value {
        resolution_json(&self.outcome)
    }
}

pub fn resolution_json(o: &TurnOutcome) -> Value {
    let status = match o.status {
        ConversationStatus::Escalated => "escalated",
        ConversationStatus::AwaitingCustomer => "awaiting_customer",
        _ => "resolved",
    };
    let mut v = json!({
        "intent": o.intent.as_str(),
        "confidence": (f64::from(o.confidence) * 1000.0).round() / 1000.0,
        "status": status,
        "actions": o.actions,
        "citations": o.citations,
    });
    if let Some(c) = &o.verified_customer {
        v["verified_customer"] = json!(c);
    }
    v
}

fn llm_failure_kind(e: &llm::LlmError) -> &'static str {
    match e {
        llm::LlmError::Api(_) => "api",
        llm::LlmError::Timeout(_) => "timeout",
        llm::LlmError::TooManySteps(_) => "steps",
        llm::LlmError::Leak(_) => "leak",
        llm::LlmError::Malformed(_) => "malformed",
        llm::LlmError::Other(_) => "other",
    }
}

pub struct Agent {
    resolver: Resolver,
    llm: Option<llm::LlmAgent>,
}

impl Agent {
    pub fn load(
        paths: &BrandPaths<'_>,
        llm_config: &crate::config::LlmConfig,
        store: Store,
        search: SearchIndex,
        policy: Arc<Policy>,
    ) -> anyhow::Result<Agent> {
        let voice = Voice::load(&paths.brand_dir.join("voice.toml"))?;
        let templates = Templates::load(paths.prompts_dir, paths.channels_dir)?;
        let llm = llm::LlmAgent::from_config(llm_config);
        let mut required = vec!["reply/clarify", "reply/escalated", "reply/escalation_draft"];
        if llm.is_some() {
            required.push("prompt/system");
        }
        for required in required {
            anyhow::ensure!(
                templates.has(required),
                "template {required}.hbs is missing from {}",
                paths.prompts_dir.join("replies").display()
            );
        }
        let chunks = crate::search::load_policy_dir(&paths.brand_dir.join("policies"))
            .context("cannot read the brand's policy texts")?;
        Ok(Agent {
            resolver: Resolver {
                store,
                policy,
                voice: Arc::new(voice),
                templates: Arc::new(templates),
                search,
                policy_vocab: Arc::new(coverage::Vocabulary::of(
                    chunks
                        .iter()
                        .flat_map(|c| [c.heading.as_str(), c.text.as_str()]),
                )),
                policy_chunks: Arc::new(chunks.into_iter().map(|c| (c.id.clone(), c)).collect()),
                limits: crate::verification::Limits::default(),
                code_mail_attempts: None,
            },
            llm,
        })
    }

    /// Sets the verification limits (`[verification]`) and whether one-time codes can be
    /// emailed (`Some(delivery attempts)` when the store sends email).
    pub fn with_verification(
        mut self,
        limits: crate::verification::Limits,
        code_mail_attempts: Option<i64>,
    ) -> Agent {
        self.resolver.limits = limits;
        self.resolver.code_mail_attempts = code_mail_attempts;
        self
    }

    /// Whether replies come from an LLM (else the offline resolver).
    pub fn uses_llm(&self) -> bool {
        self.llm.is_some()
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Answers a stored inbound message: runs the dialogue, stores the reply (with its
    /// resolution in the message's meta, naming the message it answers, with its delivery),
    /// saves the dialogue state, links a newly verified customer, and records an escalation when
    /// one is needed. The caller holds the conversation's lock
    /// ([`Store::lock_conversation`]).
    pub async fn reply(&self, inbound: &Inbound<'_>) -> anyhow::Result<AgentReply> {
        let store = &self.resolver.store;
        let mut state =
            DialogueState::from_value(&store.conversation_state(inbound.conversation_id).await?);
        let now = crate::util::now_ms();
        let limits = &self.resolver.limits;
        // A verification older than the link lifetime lapses: the shopper proves it again.
        if state.verified_customer.is_some() && !limits.link_is_fresh(state.verified_at, now) {
            state.verified_customer = None;
            state.verified_at = None;
            state.verified_by = None;
            state.task = None;
        }
        let before = state.verified_customer.clone();
        let identity = match inbound.identity_id {
            Some(id) => store.get_identity(id).await?,
            None => None,
        };
        // A link remembered on the sender's identity counts while it is fresh, and only where
        // the identity may be linked at all (not an unauthenticated email, not a group chat).
        let linked = identity
            .as_ref()
            .filter(|i| {
                i.verified && inbound.identity_linkable && limits.link_is_fresh(i.verified_at, now)
            })
            .and_then(|i| i.customer_id.clone());
        let turn = Turn {
            conversation_id: inbound.conversation_id,
            identity_id: inbound.identity_id,
            text: inbound.text,
            channel: inbound.channel,
            sender_email: inbound.sender_email,
            sender_verified: inbound.sender_verified,
            sender_email_is_claim: inbound.sender_email_is_claim,
            confirms_writes: inbound.confirms_writes,
            identity_linkable: inbound.identity_linkable,
            requester: inbound.requester,
            verify_from_claims: inbound.verify_from_claims,
            vouched_customer: inbound.vouched_customer,
            linked_customer: linked.as_deref(),
            now,
        };
        let outcome = match &self.llm {
            None => self.resolver.respond(&mut state, &turn).await?,
            Some(llm) => {
                let history: Vec<Message> = store
                    .conversation_view(inbound.conversation_id)
                    .await?
                    .map(|v| v.messages)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|m| m.id != inbound.message_id)
                    .collect();
                let saved = state.clone();
                match llm
                    .respond(&self.resolver, &mut state, &turn, &history)
                    .await
                {
                    Ok(o) => o,
                    Err(e) => {
                        // Never leave the shopper without an answer: the offline resolver
                        // takes this turn.
                        tracing::warn!(error = %e, conversation = inbound.conversation_id, "LLM turn failed; the offline resolver answers");
                        crate::telemetry::count_llm_fallback(llm_failure_kind(&e));
                        state = saved;
                        self.resolver.respond(&mut state, &turn).await?
                    }
                }
            }
        };
        let newly_verified = state
            .verified_customer
            .clone()
            .filter(|c| before.as_ref() != Some(c));
        let from_link = state.verified_by.as_deref() == Some("link");
        if newly_verified.is_some() && from_link {
            // Reusing a link does not renew it: the conversation lapses when the link does.
            state.verified_at = identity.as_ref().and_then(|i| i.verified_at);
        }
        store
            .save_conversation_state(inbound.conversation_id, &state.to_value())
            .await?;
        if let Some(c) = &newly_verified {
            // The conversation is the customer's; the sender's identity remembers it only when
            // the channel allows and this was a fresh proof.
            let identity_id = inbound
                .identity_id
                .filter(|_| inbound.identity_linkable && !from_link);
            store
                .link_verified_customer(inbound.conversation_id, identity_id, c)
                .await?;
        }
        let message = store
            .append_outbound(
                inbound.conversation_id,
                &NewMessage {
                    direction: Direction::Outbound,
                    author_kind: AuthorKind::BrandAgent,
                    author_id: None,
                    text: outcome.reply.clone(),
                    html: None,
                    // When this turn began (it holds the conversation lock from before then until
                    // after this message is stored): turns of one conversation never overlap.
                    meta: json!({"in_reply_to": inbound.message_id, "turn_started_at": now, "resolution": resolution_json(&outcome)}),
                },
                Some(inbound.message_id),
                inbound.deliver,
            )
            .await?;
        crate::telemetry::count_message(inbound.channel, "out");
        let escalation = match &outcome.escalation {
            Some(e) => Some(
                store
                    .escalate(inbound.conversation_id, &e.reason, &e.summary, &e.draft)
                    .await?,
            ),
            None => {
                store
                    .set_conversation_status(inbound.conversation_id, outcome.status)
                    .await?;
                None
            }
        };
        Ok(AgentReply {
            message,
            outcome,
            escalation,
        })
    }
}
