//! Telegram group chats (groups, supergroups, channels): everyone in the chat reads the bot's
//! answers, so nothing about an account is ever said there. A message in such a chat is stored
//! to be answered with a short public invitation to message the bot privately at
//! `t.me/<bot username>` ([`crate::agent::fixed`]); the brand agent does not run, nothing is
//! verified, and the sender's identity is never linked to a customer. The bot's username comes
//! from `getMe`, asked once per bot and API URL, recorded with the message and kept in the
//! store for a turn whose message could not record it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::state::AppState;

/// The bot's username (`getMe`), remembered per API URL and token, and in the store.
pub async fn bot_username(state: &AppState) -> anyhow::Result<String> {
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
    let body: Value = crate::http_client::client()
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
    state
        .store
        .set_setting(crate::inbox::turn::TELEGRAM_BOT_SETTING, &name)
        .await?;
    Ok(name)
}
