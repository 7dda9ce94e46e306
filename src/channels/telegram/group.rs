//! Telegram group chats (groups, supergroups, channels): everyone in the chat reads the bot's
//! answers, so nothing about an account is ever said there. A message in such a chat gets a
//! short public answer (`prompts/replies/group_chat.hbs`) inviting the shopper to message the
//! bot privately at `t.me/<bot username>`; the brand agent does not run, nothing is verified,
//! and the sender's identity is never linked to a customer. The bot's username comes from
//! `getMe`, asked once per bot and API URL.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::CHANNEL;
use crate::app::AppState;
use crate::inbox::events::InboxEvent;
use crate::store::{AuthorKind, ConversationStatus, Direction, Message, NewMessage};

/// Answers a stored message from a group chat and puts the answer in the outbox.
pub async fn answer(state: &AppState, message: &Message) -> anyhow::Result<()> {
    let store = &state.store;
    let username = bot_username(state).await?;
    let resolver = state.agent.resolver();
    let body = resolver.templates.render(
        "reply/group_chat",
        &json!({
            "bot": username,
            "link": format!("https://t.me/{username}"),
            "voice": &*resolver.voice,
        }),
    )?;
    let text = resolver
        .voice
        .polish(&resolver.wrap(CHANNEL, &body, false)?);
    let reply = store
        .append_message(
            &message.conversation_id,
            &NewMessage {
                direction: Direction::Outbound,
                author_kind: AuthorKind::BrandAgent,
                author_id: None,
                text,
                html: None,
                meta: json!({
                    "in_reply_to": message.id,
                    "resolution": {
                        "intent": "group_chat",
                        "status": "resolved",
                        "actions": [],
                        "citations": [],
                    },
                }),
            },
        )
        .await?;
    crate::telemetry::count_message(CHANNEL, "out");
    store
        .set_conversation_status(&message.conversation_id, ConversationStatus::Resolved)
        .await?;
    state.hub.publish(InboxEvent::Message {
        conversation_id: message.conversation_id.clone(),
        message: Box::new(reply.clone()),
    });
    store
        .enqueue_delivery(
            &reply.id,
            &message.conversation_id,
            CHANNEL,
            state.config.email.max_attempts,
        )
        .await?;
    Ok(())
}

/// The bot's username (`getMe`), remembered per API URL and token.
async fn bot_username(state: &AppState) -> anyhow::Result<String> {
    static KNOWN: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cfg = &state.config.telegram;
    let key = crate::util::sha256_hex(
        format!(
            "{}\n{}",
            cfg.api_url,
            cfg.token.as_ref().map(|t| t.expose()).unwrap_or_default()
        )
        .as_bytes(),
    );
    let known = KNOWN.get_or_init(Mutex::default);
    let cached = known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if let Some(name) = cached {
        return Ok(name);
    }
    // Read leniently: teloxide's `Me` insists on every field of the newest Bot API.
    let token = cfg
        .token
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("[telegram] token is not set"))?;
    let url = format!(
        "{}/bot{}/getMe",
        cfg.api_url.trim_end_matches('/'),
        token.expose()
    );
    let failed =
        "Telegram getMe failed, so the bot's username for the private-chat link is unknown";
    let body: Value = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(reqwest::Error::without_url)
        .context(failed)?
        .error_for_status()
        .map_err(reqwest::Error::without_url)
        .context(failed)?
        .json()
        .await
        .map_err(reqwest::Error::without_url)
        .context(failed)?;
    let name = body
        .pointer("/result/username")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "Telegram getMe returned an unusable bot username {name:?}"
    );
    known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, name.clone());
    Ok(name)
}
