//! The Telegram channel: a bot on the Bot API through teloxide's [`Bot`]. Updates arrive by
//! long polling (the default; [`polling`]) or by webhook (`POST /channels/telegram/webhook`,
//! [`webhook`]); both hand them to [`inbound`], which stores each text message in the inbox
//! (deduplicated on `"<chat id>:<message id>"`) with its turn: the brand agent's answer, the
//! brand's greeting for `/start`, or a group chat's invitation. Replies leave through the outbox
//! and [`send`]
//! (`sendMessage` to the conversation's chat). Polling persists the last processed update id
//! (setting [`OFFSET_SETTING`]) only after the update is stored, so a restart neither loses an
//! update nor answers one twice.

pub mod group;
pub mod inbound;
pub mod outbound;
mod polling;
mod webhook;

use std::time::Duration;

use axum::Router;
use axum::routing::post;
use teloxide::Bot;
use tokio_util::sync::CancellationToken;

use crate::config::TelegramConfig;
use crate::state::AppState;

pub use outbound::send;

/// The channel's name in the inbox and the outbox.
pub const CHANNEL: &str = "telegram";
/// The store setting holding the last update id polling has fully processed.
pub const OFFSET_SETTING: &str = "telegram_offset";
/// Where Telegram posts updates in webhook mode.
pub const WEBHOOK_PATH: &str = "/channels/telegram/webhook";

pub fn routes() -> Router<AppState> {
    Router::new().route(WEBHOOK_PATH, post(webhook::receive))
}

/// Starts long polling when the channel is configured for it (on one instance at a time). In
/// webhook mode, registers the webhook with Telegram when `[server] public_url` is set (in the
/// background) and returns None.
pub fn spawn(state: &AppState, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = &state.config.telegram;
    cfg.token.as_ref()?;
    let bot = match bot(cfg) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "the Telegram channel cannot start");
            return None;
        }
    };
    if cfg.mode == "webhook" {
        if let Some(public) = state.config.server.public_url.clone() {
            let secret = cfg.webhook_secret.as_ref().map(|s| s.expose().to_string());
            tokio::spawn(webhook::register(bot, public, secret));
        }
        return None;
    }
    // Telegram allows one long poll per bot: with several instances, only the leader polls.
    let state = state.clone();
    Some(tokio::spawn(async move {
        let store = state.store.clone();
        store
            .lead("telegram-polling", stop, |lead| {
                polling::run(state.clone(), bot.clone(), lead)
            })
            .await
    }))
}

/// A Bot API client for the configured token and API URL. Its HTTP timeout outlasts a long
/// poll (teloxide's default client gives up after 17 seconds).
pub fn bot(cfg: &TelegramConfig) -> Result<Bot, String> {
    let token = cfg
        .token
        .as_ref()
        .ok_or("[telegram] token is not set, so the Telegram channel is off")?;
    let url = reqwest::Url::parse(&cfg.api_url)
        .map_err(|e| format!("[telegram] api_url {:?} is not a URL: {e}", cfg.api_url))?;
    let client = teloxide::net::default_reqwest_settings()
        .timeout(Duration::from_secs(
            cfg.poll_timeout_secs.saturating_add(15),
        ))
        .build()
        .map_err(|e| format!("cannot build the Telegram HTTP client: {e}"))?;
    Ok(Bot::with_client(token.expose(), client).set_api_url(url))
}
