//! What a turn needs to know about a message beyond its text, decided by the channel adapter
//! when the message arrives and stored with it, so the turn — run in the same request, by a
//! worker later, or again after a crash — answers exactly as the adapter meant:
//!
//! - `meta.trust` ([`Trust`]): how far the channel vouches for the sender (the brand agent's
//!   [`Inbound`](crate::agent::Inbound) is rebuilt from it);
//! - `meta.answer` ([`Answer`]): who composes the answer — the brand agent, the `/start`
//!   greeting, or a group chat's invitation to a private chat.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::{Channel, Message};

/// How far the channel vouched for a message's sender, as its adapter decided at intake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    /// The email the sender gave with this message (the API's `from.email`, an email's From).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_email: Option<String>,
    /// The channel vouches for that email (an authenticated caller, a relay's DMARC pass).
    #[serde(default)]
    pub sender_verified: bool,
    /// The email is only the sender's claim to be that customer (email's From).
    #[serde(default)]
    pub sender_email_is_claim: bool,
    /// A "yes" in this message may confirm a pending write.
    #[serde(default)]
    pub confirms_writes: bool,
    /// A verification made in the conversation may be remembered on the sender's identity.
    #[serde(default)]
    pub identity_linkable: bool,
    /// Claims written in the message may verify the sender (false where only a credential may).
    #[serde(default)]
    pub verify_from_claims: bool,
    /// The customer a credential on this message proves (a consumer agent's capability token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouched_customer: Option<String>,
    /// Who is asking beyond the channel identity: `ip:<address>` or `agent:<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
}

impl Trust {
    /// A shopper on one of the brand's own surfaces (the API, web chat, a marketplace): the
    /// conversation is theirs alone, so a verification may be linked and a "yes" confirms.
    pub fn own_surface() -> Trust {
        Trust {
            confirms_writes: true,
            identity_linkable: true,
            verify_from_claims: true,
            ..Trust::default()
        }
    }

    pub fn with_requester(mut self, requester: Option<String>) -> Trust {
        self.requester = requester;
        self
    }

    /// Reads a stored message's `meta.trust`. What a message stored before a field existed
    /// lacks is read as the code of its time decided it: email proves nothing and its From is a
    /// claim; a Telegram message is trusted in a private chat only; other channels are the
    /// brand's own surfaces. `identity_email` stands in for an email the message did not record.
    pub fn of(message: &Message, identity_email: Option<&str>) -> Trust {
        let channel = Channel::parse(&message.channel).ok();
        let open = match channel {
            Some(Channel::Email) => false,
            Some(Channel::Telegram) => telegram_private(&message.meta),
            _ => true,
        };
        let stored = message.meta.get("trust").filter(|t| t.is_object());
        let flag = |k: &str, legacy: bool| {
            stored
                .and_then(|t| t.get(k))
                .and_then(Value::as_bool)
                .unwrap_or(match stored {
                    // Recorded trust without this flag: the flags it had were all there was.
                    Some(_)
                        if matches!(
                            k,
                            "sender_verified" | "confirms_writes" | "identity_linkable"
                        ) =>
                    {
                        false
                    }
                    _ => legacy,
                })
        };
        let text = |k: &str| {
            stored
                .and_then(|t| t.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Trust {
            sender_email: text("sender_email").or_else(|| identity_email.map(str::to_string)),
            sender_verified: flag("sender_verified", false),
            sender_email_is_claim: flag("sender_email_is_claim", channel == Some(Channel::Email)),
            confirms_writes: flag("confirms_writes", open),
            identity_linkable: flag("identity_linkable", open),
            verify_from_claims: flag("verify_from_claims", true),
            vouched_customer: text("vouched_customer"),
            requester: text("requester"),
        }
    }
}

/// Who composes a message's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The brand agent's turn.
    Agent,
    /// `/start` in a private Telegram chat: the brand's greeting (the agent answers when the
    /// greeting cannot be rendered).
    Greeting,
    /// A message in a group chat, where everyone reads along: a short public invitation to
    /// message the bot (`bot`: its username) privately; the agent never runs there.
    GroupChat { bot: Option<String> },
    /// Nothing (an auto-reply, a bounce, a no-reply sender): stored, never answered.
    Nothing,
}

impl Answer {
    /// Reads a stored message's `meta.answer`. A message without it is the agent's — except a
    /// Telegram message from a group chat stored before the field existed, which still only
    /// gets the group chat's answer.
    pub fn of(message: &Message) -> Answer {
        match message.meta.get("answer").and_then(Value::as_str) {
            Some("greeting") => Answer::Greeting,
            Some("group_chat") => Answer::GroupChat {
                bot: message
                    .meta
                    .get("bot_username")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            },
            Some("nothing") => Answer::Nothing,
            Some(_) => Answer::Agent,
            None if message.channel == Channel::Telegram.to_string()
                && !telegram_private(&message.meta) =>
            {
                Answer::GroupChat { bot: None }
            }
            None => Answer::Agent,
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            Answer::Agent => "agent",
            Answer::Greeting => "greeting",
            Answer::GroupChat { .. } => "group_chat",
            Answer::Nothing => "nothing",
        }
    }
}

/// Writes the trust and the answer into a message's meta before it is stored.
pub(super) fn record(meta: &mut Value, trust: &Trust, answer: &Answer) {
    if !meta.is_object() {
        *meta = json!({});
    }
    meta["trust"] = serde_json::to_value(trust).unwrap_or_else(|_| json!({}));
    meta["answer"] = json!(answer.as_str());
    if let Answer::GroupChat { bot: Some(bot) } = answer {
        meta["bot_username"] = json!(bot);
    }
}

/// Whether a Telegram message came from a private chat: its `meta.chat_type`, or — for messages
/// stored before that was recorded — a positive chat id (Telegram's private chats have the
/// user's id, groups and channels negative ones).
pub fn telegram_private(meta: &Value) -> bool {
    match meta.get("chat_type").and_then(Value::as_str) {
        Some(t) => t == "private",
        None => meta
            .get("chat_id")
            .and_then(Value::as_i64)
            .is_some_and(|id| id > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuthorKind, Direction};

    fn message(channel: &str, meta: Value) -> Message {
        Message {
            id: "msg_1".into(),
            conversation_id: "cnv_1".into(),
            seq: 1,
            channel: channel.into(),
            external_id: None,
            direction: Direction::Inbound,
            author_kind: AuthorKind::Customer,
            author_id: None,
            text: "hi".into(),
            html: None,
            attachments: json!([]),
            meta,
            created_at: 0,
        }
    }

    #[test]
    fn stored_trust_reads_back_as_recorded() {
        let trust = Trust {
            sender_email: Some("a@b.example".into()),
            sender_verified: true,
            vouched_customer: Some("cus_1".into()),
            requester: Some("agent:agt_1".into()),
            ..Trust::default()
        };
        let mut meta = json!({"a2a": {"taskId": "t"}});
        record(&mut meta, &trust, &Answer::Agent);
        let m = message("a2a", meta);
        assert_eq!(Trust::of(&m, Some("other@b.example")), trust);
        assert_eq!(Answer::of(&m), Answer::Agent);
    }

    #[test]
    fn messages_stored_before_trust_read_as_their_time_decided() {
        // An email with the three flags it used to carry: its From is a claim.
        let email = message(
            "email",
            json!({"trust": {"sender_verified": false, "identity_linkable": false, "confirms_writes": true}}),
        );
        let t = Trust::of(&email, Some("a@b.example"));
        assert!(t.sender_email_is_claim && t.confirms_writes && t.verify_from_claims);
        assert!(!t.identity_linkable);
        assert_eq!(t.sender_email.as_deref(), Some("a@b.example"));
        // A group chat message without `answer` never reaches the agent.
        let group = message("telegram", json!({"chat_id": -100, "chat_type": "group"}));
        assert_eq!(Answer::of(&group), Answer::GroupChat { bot: None });
        assert!(!Trust::of(&group, None).identity_linkable);
        let web = message("webchat", json!({}));
        assert_eq!(Trust::of(&web, None), Trust::own_surface());
    }
}
