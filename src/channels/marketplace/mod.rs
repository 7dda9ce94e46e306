//! Signed-webhook marketplaces (eBay, or any marketplace that posts JSON webhooks signed with
//! HMAC-SHA256), one per `channels/<name>.toml` with a `[marketplace]` table
//! ([`crate::config::marketplace`], read once at start into the application state).
//! Each enabled marketplace whose signature can be checked gets
//! `POST /channels/marketplace/<name>/webhook` ([`inbound`]: verify, then store the buyer's
//! message and queue the agent's answer) and, for eBay's endpoint challenge, a `GET` on the same
//! path. Replies leave through the outbox on channel `marketplace:<name>` and [`send`]
//! ([`outbound`]: an HTTP request built from the file's `[marketplace.reply]`). A marketplace
//! that is disabled, or cannot verify what it would receive (an HMAC secret not set, no public
//! keys), mounts no endpoint — a log line says why — so nothing unverifiable is ever accepted.

pub mod inbound;
pub mod outbound;
pub mod verify;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::post;

use super::SendError;
use crate::state::AppState;
use crate::store::Delivery;

pub use crate::config::marketplace::Marketplace;

/// The brand's marketplaces, read once at start. An invalid file turns every marketplace off
/// (and says which file and why), as a half-read set of settings would be worse.
pub fn load(channels_dir: &std::path::Path) -> Vec<Marketplace> {
    match crate::config::marketplace::load_dir(channels_dir) {
        Ok(all) => all,
        Err(e) => {
            tracing::error!(error = %e, "marketplace channels are off: a marketplace file is invalid");
            Vec::new()
        }
    }
}

/// The webhook routes of every usable marketplace.
pub fn routes(state: &AppState) -> Router<AppState> {
    let mut router = Router::new();
    for m in state.marketplaces.iter().cloned() {
        if !m.config.enabled {
            tracing::info!(
                marketplace = m.name(),
                file = %m.file.display(),
                "marketplace is disabled (enabled = false)"
            );
            continue;
        }
        if let Some(why) = m.unverifiable() {
            tracing::warn!(
                marketplace = m.name(),
                "marketplace endpoint not mounted: {why}"
            );
            continue;
        }
        tracing::info!(marketplace = m.name(), path = %m.path(), "marketplace webhook mounted");
        let path = m.path();
        let m = Arc::new(m);
        let for_post = m.clone();
        let for_get = m;
        router = router.route(
            &path,
            post(
                move |State(state): State<AppState>, headers: HeaderMap, body: Bytes| {
                    let m = for_post.clone();
                    async move { inbound::webhook(state, &m, headers, body).await }
                },
            )
            .get(
                move |State(state): State<AppState>, query: Query<inbound::ChallengeQuery>| {
                    let m = for_get.clone();
                    async move { inbound::challenge(state, &m, query).await }
                },
            ),
        );
    }
    router
}

/// Sends a delivery on `marketplace:<name>`; returns the marketplace's id for the message.
pub async fn send(
    state: &AppState,
    name: &str,
    delivery: &Delivery,
) -> Result<Option<String>, SendError> {
    outbound::send(state, name, delivery).await
}
