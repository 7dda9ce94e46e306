//! Telegram out: sends a queued reply with `sendMessage` to the conversation's chat (its
//! thread key is `telegram:<chat id>`). The agent has already wrapped the text for the channel
//! (`channels/telegram.hbs` when present, else `channels/default.hbs`); here it is only tidied
//! for Telegram (plain text, no parse mode, so nothing needs escaping) and split into messages
//! of at most [`MAX_MESSAGE_CHARS`]. Returns the id of the first message sent. Telegram has no
//! idempotency key, so a crash between sending and recording the delivery can repeat it once.
//!
//! What Telegram refuses for good — a chat that does not exist, a bot the user blocked or a
//! group removed it from, any other `Bad Request`/`Forbidden` — is a permanent failure (a dead
//! letter at once); a network error, flood control, a server error or an unreadable answer is
//! transient, and so is a rejected token (fixed in the configuration, the retries go through).

use teloxide::RequestError;
use teloxide::requests::{Request, Requester};
use teloxide::types::ChatId;

use super::CHANNEL;
use crate::channels::SendError;
use crate::state::AppState;
use crate::store::Delivery;

/// Telegram's limit is 4096 characters per message; stay a little below it.
pub const MAX_MESSAGE_CHARS: usize = 4000;

/// Sends a delivery; returns the Telegram message id of (the first part of) the reply.
pub async fn send(state: &AppState, delivery: &Delivery) -> Result<Option<String>, SendError> {
    let bot = super::bot(&state.config.telegram).map_err(SendError::Transient)?;
    let store = &state.store;
    let (message, conversation) = crate::channels::outbox::reply_of(store, delivery).await?;
    let chat_id = chat_id(&conversation.thread_key).ok_or_else(|| {
        SendError::Permanent(format!(
            "conversation {} is not a Telegram chat (thread {:?})",
            conversation.id, conversation.thread_key
        ))
    })?;
    let text = format_for_telegram(&message.text);
    let mut first = None;
    for part in split(&text, MAX_MESSAGE_CHARS) {
        let sent = bot
            .send_message(ChatId(chat_id), part)
            .send()
            .await
            .map_err(|e| {
                let why = format!("Telegram sendMessage to chat {chat_id} failed: {e}");
                if is_permanent(&e) {
                    SendError::Permanent(why)
                } else {
                    SendError::Transient(why)
                }
            })?;
        first.get_or_insert(sent.id.0.to_string());
    }
    Ok(first)
}

/// Whether Telegram refused a request for good (see the module documentation).
pub fn is_permanent(e: &RequestError) -> bool {
    use teloxide::ApiError;
    match e {
        RequestError::Api(ApiError::InvalidToken) => false,
        RequestError::Api(ApiError::Unknown(text)) => {
            text.starts_with("Bad Request") || text.starts_with("Forbidden")
        }
        RequestError::Api(_) | RequestError::MigrateToChatId(_) => true,
        RequestError::RetryAfter(_)
        | RequestError::Network(_)
        | RequestError::InvalidJson { .. }
        | RequestError::Io(_) => false,
    }
}

/// The chat id in a Telegram conversation's thread key.
pub fn chat_id(thread_key: &str) -> Option<i64> {
    thread_key
        .strip_prefix(CHANNEL)?
        .strip_prefix(':')?
        .parse()
        .ok()
}

/// Plain text for Telegram: Unix line ends, no trailing spaces, at most one blank line in a
/// row, never empty.
pub fn format_for_telegram(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.replace("\r\n", "\n").replace('\r', "\n").lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    let out = out.trim().to_string();
    if out.is_empty() {
        "…".to_string()
    } else {
        out
    }
}

/// Splits text into parts of at most `max` characters, preferring paragraph, then line, then
/// word boundaries.
pub fn split(text: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    let max = max.max(1);
    while rest.chars().count() > max {
        let cut = rest
            .char_indices()
            .nth(max)
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let head = &rest[..cut];
        let at = head
            .rfind("\n\n")
            .or_else(|| head.rfind('\n'))
            .or_else(|| head.rfind(' '))
            .filter(|&i| i > 0)
            .unwrap_or(cut);
        parts.push(rest[..at].trim_end().to_string());
        rest = rest[at..].trim_start();
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest.to_string());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_chat_id() {
        assert_eq!(chat_id("telegram:12345"), Some(12345));
        assert_eq!(chat_id("telegram:-1001234"), Some(-1001234));
        assert_eq!(chat_id("email:abc"), None);
        assert_eq!(chat_id("telegram:"), None);
    }

    #[test]
    fn tidies_text() {
        assert_eq!(
            format_for_telegram("Hi  \r\n\r\n\r\n\nThere\n"),
            "Hi\n\nThere"
        );
        assert_eq!(format_for_telegram("  \n "), "…");
    }

    #[test]
    fn splits_long_text_on_boundaries() {
        let para = "word ".repeat(500);
        let text = format!("{}\n\n{}", para.trim(), para.trim());
        let parts = split(&text, 3000);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.chars().count() <= 3000));
        assert_eq!(
            parts.concat().replace(' ', "").len(),
            text.replace([' ', '\n'], "").len()
        );
        assert_eq!(split("short", 10), vec!["short".to_string()]);
        let unbroken = "x".repeat(25);
        assert_eq!(split(&unbroken, 10).len(), 3);
    }
}
