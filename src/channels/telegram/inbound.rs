//! Telegram in: one Bot API update into the inbox. A text message (or a captioned photo or
//! document) is stored as the Telegram user's message in the chat's conversation
//! (`thread_key = "telegram:<chat id>"`, deduplicated on `"<chat id>:<message id>"`) with its
//! turn, which answers `/start` (and `/help`) with the brand's greeting and anything else by the
//! brand agent. Storing and scheduling are one idempotent step, so handing the same update over
//! twice (a restart before the offset was saved, a webhook retry) stores and answers it once.
//! Other updates (edits, stickers, callback queries, membership changes, kinds teloxide does
//! not know) are acknowledged and ignored.
//!
//! Only a private chat is a conversation with one shopper: there the message is trusted as the
//! Telegram user's (the identity may be linked, a "yes" confirms). In a group, supergroup or
//! channel anyone in the chat reads the answers, so the brand agent never runs there: the
//! message's answer is a short public invitation to a private chat (the bot's username, from
//! [`super::group`], is recorded with it), nothing is verified and the identity is never linked.
//!
//! Updates are parsed with teloxide's types; a message they reject (older payloads without
//! `chat.type` or `from.is_bot`, as in Telegram's own documentation samples) is read leniently
//! for the few fields needed here.

use serde::Deserialize;
use serde_json::{Value, json};
use teloxide::types::{Message, Update, UpdateKind};

use super::CHANNEL;
use crate::inbox::{Answer, InboxError, Intake, Trust};
use crate::state::AppState;
use crate::store::{AuthorKind, InboundMessage, StoreError};

/// A text message as this channel needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMessage {
    pub update_id: u64,
    pub chat_id: i64,
    pub message_id: i64,
    /// The Telegram user who wrote it (None for anonymous channel or group posts).
    pub user_id: Option<u64>,
    pub name: Option<String>,
    pub username: Option<String>,
    pub text: String,
    /// Unix seconds, as Telegram sent it.
    pub date: Option<i64>,
    /// "private", "group", "supergroup", "channel", or "unknown".
    pub chat_type: &'static str,
}

impl TextMessage {
    /// A one-to-one chat between the bot and one user.
    pub fn is_private(&self) -> bool {
        self.chat_type == "private"
    }
}

fn chat_type_name(name: &str) -> &'static str {
    match name {
        "private" => "private",
        "group" => "group",
        "supergroup" => "supergroup",
        "channel" => "channel",
        _ => "unknown",
    }
}

/// What became of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Stored (or recognized as already stored) and answered or queued for an answer.
    Stored {
        conversation_id: String,
        message_id: String,
        duplicate: bool,
    },
    /// Acknowledged without storing; the reason, for logs.
    Ignored(&'static str),
}

/// Reads the text message out of a parsed update, if it has one.
pub fn text_message(update: &Update) -> Result<TextMessage, &'static str> {
    match &update.kind {
        UpdateKind::Message(m) => from_message(u64::from(update.id.0), m),
        UpdateKind::EditedMessage(_) | UpdateKind::EditedBusinessMessage(_) => {
            Err("edited message")
        }
        UpdateKind::ChannelPost(_) | UpdateKind::EditedChannelPost(_) => Err("channel post"),
        UpdateKind::CallbackQuery(_) => Err("callback query"),
        UpdateKind::MyChatMember(_) | UpdateKind::ChatMember(_) => Err("chat member update"),
        UpdateKind::Error(_) => Err("unknown or unreadable update"),
        _ => Err("not a message"),
    }
}

fn from_message(update_id: u64, m: &Message) -> Result<TextMessage, &'static str> {
    let text = m
        .text()
        .or_else(|| m.caption())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or("message without text")?;
    if m.from.as_ref().is_some_and(|u| u.is_bot) {
        return Err("message from a bot");
    }
    let user = m.from.as_ref();
    Ok(TextMessage {
        update_id,
        chat_id: m.chat.id.0,
        message_id: i64::from(m.id.0),
        user_id: user.map(|u| u.id.0),
        name: user.map(|u| u.full_name()).filter(|n| !n.trim().is_empty()),
        username: user.and_then(|u| u.username.clone()),
        text: text.to_string(),
        date: Some(m.date.timestamp()),
        chat_type: if m.chat.is_private() {
            "private"
        } else if m.chat.is_group() {
            "group"
        } else if m.chat.is_supergroup() {
            "supergroup"
        } else if m.chat.is_channel() {
            "channel"
        } else {
            "unknown"
        },
    })
}

/// The lenient reading of a raw update's `message`, for payloads teloxide rejects.
#[derive(Deserialize)]
struct LooseUpdate {
    update_id: u64,
    message: Option<LooseMessage>,
}

#[derive(Deserialize)]
struct LooseMessage {
    message_id: i64,
    date: Option<i64>,
    chat: LooseChat,
    from: Option<LooseUser>,
    text: Option<String>,
    caption: Option<String>,
}

#[derive(Deserialize)]
struct LooseChat {
    id: i64,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct LooseUser {
    id: u64,
    #[serde(default)]
    is_bot: bool,
    first_name: Option<String>,
    last_name: Option<String>,
    username: Option<String>,
}

/// Reads a raw update (a webhook body): its id when it has one, and its text message.
pub fn parse_raw(raw: &Value) -> (Option<u64>, Result<TextMessage, &'static str>) {
    let Some(update_id) = raw.get("update_id").and_then(Value::as_u64) else {
        return (None, Err("not an update (no update_id)"));
    };
    let strict = serde_json::from_value::<Update>(raw.clone())
        .map_err(|_| "unreadable update")
        .and_then(|u| text_message(&u));
    if strict.is_ok() || raw.get("message").is_none() {
        return (Some(update_id), strict);
    }
    // teloxide rejected the message; read what we need from it directly.
    let loose = serde_json::from_value::<LooseUpdate>(raw.clone())
        .ok()
        .and_then(|u| u.message.map(|m| (u.update_id, m)));
    let Some((update_id, m)) = loose else {
        return (Some(update_id), strict);
    };
    let text = m
        .text
        .or(m.caption)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    // Without `chat.type` (old payloads) a chat is private only when it is the sender's own.
    let chat_type = match &m.chat.kind {
        Some(kind) => chat_type_name(kind),
        None if m.chat.id > 0
            && m.from
                .as_ref()
                .is_some_and(|u| i64::try_from(u.id).ok() == Some(m.chat.id)) =>
        {
            "private"
        }
        None => "unknown",
    };
    let parsed = match (text, &m.from) {
        (None, _) => Err("message without text"),
        (Some(_), Some(u)) if u.is_bot => Err("message from a bot"),
        (Some(text), from) => Ok(TextMessage {
            update_id,
            chat_id: m.chat.id,
            message_id: m.message_id,
            user_id: from.as_ref().map(|u| u.id),
            name: from.as_ref().and_then(|u| {
                let name = [u.first_name.as_deref(), u.last_name.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                Some(name).filter(|n| !n.trim().is_empty())
            }),
            username: from.as_ref().and_then(|u| u.username.clone()),
            text,
            date: m.date,
            chat_type,
        }),
    };
    (Some(update_id), parsed)
}

/// Stores and answers a parsed update (polling).
pub async fn receive_update(state: &AppState, update: &Update) -> Result<Received, StoreError> {
    match text_message(update) {
        Ok(t) => receive_text(state, &t).await,
        Err(why) => Ok(Received::Ignored(why)),
    }
}

/// Stores and answers a raw update (webhook).
pub async fn receive_raw(state: &AppState, raw: &Value) -> Result<Received, StoreError> {
    match parse_raw(raw).1 {
        Ok(t) => receive_text(state, &t).await,
        Err(why) => Ok(Received::Ignored(why)),
    }
}

/// Stores one text message with its turn (which makes sure it gets its answer). Safe to repeat.
pub async fn receive_text(state: &AppState, t: &TextMessage) -> Result<Received, StoreError> {
    let msg = InboundMessage {
        channel: CHANNEL.into(),
        thread_key: format!("{CHANNEL}:{}", t.chat_id),
        external_id: Some(format!("{}:{}", t.chat_id, t.message_id)),
        sender_id: match t.user_id {
            Some(id) => id.to_string(),
            None => format!("chat:{}", t.chat_id),
        },
        sender_name: t.name.clone().or_else(|| t.username.clone()),
        sender_email: None,
        sender_verified: false,
        author_kind: AuthorKind::Customer,
        subject: None,
        text: t.text.chars().take(crate::inbox::MAX_TEXT_CHARS).collect(),
        html: None,
        attachments: Value::Array(Vec::new()),
        meta: json!({
            "update_id": t.update_id,
            "chat_id": t.chat_id,
            "message_id": t.message_id,
            "user_id": t.user_id,
            "username": t.username,
            "date": t.date,
            "chat_type": t.chat_type,
        }),
    };
    let answer = if !t.is_private() {
        // The invitation links to the bot; a failed getMe leaves it to the stored username.
        let bot = match super::group::bot_username(state).await {
            Ok(name) => Some(name),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot learn the Telegram bot's username"
                );
                None
            }
        };
        Answer::GroupChat { bot }
    } else if greeting_command(&t.text) {
        Answer::Greeting
    } else {
        Answer::Agent
    };
    let trust = Trust {
        confirms_writes: t.is_private(),
        identity_linkable: t.is_private(),
        verify_from_claims: true,
        ..Trust::default()
    };
    let intake = Intake {
        message: msg,
        trust,
        answer,
    };
    let outcome = match crate::inbox::receive(state, intake).await {
        Ok(o) => o,
        Err(InboxError::Invalid { field, message }) => {
            tracing::warn!(field, message, "ignoring an unusable Telegram message");
            return Ok(Received::Ignored("unusable message"));
        }
        Err(InboxError::Store(e)) => return Err(e),
    };
    Ok(Received::Stored {
        conversation_id: outcome.conversation_id,
        message_id: outcome.message_id,
        duplicate: outcome.duplicate,
    })
}

/// `/start` or `/help`, possibly addressed (`/start@SomeBot`) or with a deep-link payload.
pub fn greeting_command(text: &str) -> bool {
    let first = text.split_whitespace().next().unwrap_or_default();
    let command = first.split('@').next().unwrap_or_default();
    command.eq_ignore_ascii_case("/start") || command.eq_ignore_ascii_case("/help")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_greeting_commands() {
        assert!(greeting_command("/start"));
        assert!(greeting_command("/start@AlderPineBot"));
        assert!(greeting_command("/start ref-123"));
        assert!(greeting_command("/HELP"));
        assert!(!greeting_command("/started"));
        assert!(!greeting_command("where is my order?"));
        assert!(!greeting_command(""));
    }

    #[test]
    fn reads_a_modern_text_update() {
        let raw = json!({
            "update_id": 7,
            "message": {
                "message_id": 42, "date": 1_700_000_000,
                "chat": {"id": 555, "type": "private", "first_name": "Anya"},
                "from": {"id": 555, "is_bot": false, "first_name": "Anya", "last_name": "Garcia", "username": "anya"},
                "text": "hello"
            }
        });
        let (id, t) = parse_raw(&raw);
        assert_eq!(id, Some(7));
        let t = t.expect("a text message");
        assert_eq!((t.chat_id, t.message_id, t.user_id), (555, 42, Some(555)));
        assert_eq!(t.name.as_deref(), Some("Anya Garcia"));
        assert_eq!(t.text, "hello");
    }

    #[test]
    fn reads_an_old_style_update_leniently() {
        // No chat.type, no from.is_bot: teloxide's Message rejects it.
        let raw = json!({
            "update_id": 10000,
            "message": {
                "date": 1441645532, "message_id": 1365,
                "chat": {"id": 1111111, "first_name": "Test"},
                "from": {"id": 1111111, "first_name": "Test", "last_name": "Lastname"},
                "text": "/start"
            }
        });
        let (id, t) = parse_raw(&raw);
        assert_eq!(id, Some(10000));
        let t = t.expect("a text message");
        assert_eq!((t.chat_id, t.message_id), (1111111, 1365));
        assert_eq!(t.name.as_deref(), Some("Test Lastname"));
    }

    #[test]
    fn ignores_what_is_not_a_text_message() {
        let edited = json!({"update_id": 1, "edited_message": {"message_id": 1, "date": 1, "chat": {"id": 1, "type": "private"}, "text": "x"}});
        assert!(parse_raw(&edited).1.is_err());
        let unknown = json!({"update_id": 2, "something_new": {"a": 1}});
        assert!(parse_raw(&unknown).1.is_err());
        let not_update = json!({"id": "4382bfdwdsb323b2d9", "data": "x"});
        assert_eq!(parse_raw(&not_update).0, None);
    }
}
