//! Replies the brand agent gives without a dialogue turn, in the brand's voice and the channel's
//! wrapper: the greeting that answers `/start` (`prompts/replies/greeting.hbs`), and the short
//! public answer to a message in a group chat (`prompts/replies/group_chat.hbs`), which invites
//! the shopper to a private chat — nothing about an account is ever said where everyone reads
//! along. Like [`Agent::reply`], each stores its reply naming the message it answers, with the
//! reply's delivery, and the caller holds the conversation's lock.

use serde_json::json;

use super::Agent;
use super::state::DialogueState;
use crate::store::{AuthorKind, ConversationStatus, Direction, Message, NewDelivery, NewMessage};

/// Where a fixed reply goes.
pub struct FixedReply<'a> {
    pub conversation_id: &'a str,
    /// The inbound message it answers.
    pub message_id: &'a str,
    pub channel: &'a str,
    pub deliver: Option<&'a NewDelivery>,
}

impl Agent {
    /// Whether the brand has a greeting (`reply/greeting`).
    pub fn greets(&self) -> bool {
        self.resolver.templates.has("reply/greeting")
    }

    /// Greets the shopper (counts as the conversation's turn). None when the greeting cannot be
    /// rendered: then the dialogue answers the message instead.
    pub async fn greet(&self, to: &FixedReply<'_>) -> anyhow::Result<Option<Message>> {
        let store = &self.resolver.store;
        let mut dialogue =
            DialogueState::from_value(&store.conversation_state(to.conversation_id).await?);
        let text = self
            .resolver
            .templates
            .render("reply/greeting", &json!({"voice": &*self.resolver.voice}))
            .map_err(|e| anyhow::anyhow!(e.to_string()))
            .and_then(|body| self.resolver.wrap(to.channel, &body, dialogue.turns == 0))
            .map(|t| self.resolver.voice.polish(&t));
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "the greeting did not render; the brand agent answers instead"
                );
                return Ok(None);
            }
        };
        dialogue.turns += 1;
        store
            .save_conversation_state(to.conversation_id, &dialogue.to_value())
            .await?;
        let message = self
            .store_fixed(to, text, "greeting", "awaiting_customer")
            .await?;
        Ok(Some(message))
    }

    /// Answers a group chat's message with an invitation to message the bot (`bot`: its
    /// username) privately, and marks the conversation resolved.
    pub async fn invite_to_private_chat(
        &self,
        to: &FixedReply<'_>,
        bot: &str,
    ) -> anyhow::Result<Message> {
        let body = self.resolver.templates.render(
            "reply/group_chat",
            &json!({
                "bot": bot,
                "link": format!("https://t.me/{bot}"),
                "voice": &*self.resolver.voice,
            }),
        )?;
        let text = self
            .resolver
            .voice
            .polish(&self.resolver.wrap(to.channel, &body, false)?);
        let message = self.store_fixed(to, text, "group_chat", "resolved").await?;
        self.resolver
            .store
            .set_conversation_status(to.conversation_id, ConversationStatus::Resolved)
            .await?;
        Ok(message)
    }

    async fn store_fixed(
        &self,
        to: &FixedReply<'_>,
        text: String,
        intent: &str,
        status: &str,
    ) -> anyhow::Result<Message> {
        let message = self
            .resolver
            .store
            .append_outbound(
                to.conversation_id,
                &NewMessage {
                    direction: Direction::Outbound,
                    author_kind: AuthorKind::BrandAgent,
                    author_id: None,
                    text,
                    html: None,
                    meta: json!({
                        "in_reply_to": to.message_id,
                        "resolution": {
                            "intent": intent,
                            "status": status,
                            "actions": [],
                            "citations": [],
                        },
                    }),
                },
                Some(to.message_id),
                to.deliver,
            )
            .await?;
        crate::telemetry::count_message(to.channel, "out");
        Ok(message)
    }
}
