//! Application state: everything a request handler or a job may need, built once at start by
//! [`crate::app`] and shared by every face (channels, gateway, inbox UI, HTTP) and the job
//! worker. It sits below all of them, so none of them imports the application that assembles
//! it. Cheap to clone.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::agent::Agent;
use crate::commerce::policy::Policy;
use crate::config::marketplace::Marketplace;
use crate::config::{Config, RetryPolicy};
use crate::events::EventHub;
use crate::limits::Limits;
use crate::search::{IndexWriterHandle, SearchIndex};
use crate::store::{Channel, Store};
use crate::util::Secret;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub search: SearchIndex,
    pub indexer: IndexWriterHandle,
    pub policy: Arc<Policy>,
    pub agent: Arc<Agent>,
    /// Live events for the inbox and web chat sockets.
    pub hub: EventHub,
    pub api_key: Secret,
    /// Rate and concurrency limits (see [`crate::limits`]).
    pub limits: Arc<Limits>,
    /// The brand's marketplaces (`channels/*.toml` with a `[marketplace]` table), read once at
    /// start.
    pub marketplaces: Arc<[Marketplace]>,
    /// Wakes this instance's job worker when something here queued a job.
    pub jobs_queued: Arc<Notify>,
    /// Exposure limits and circuit breakers on agent commerce (`crate::risk`).
    pub risk: Arc<crate::negotiate::risk::Risk>,
    /// Consumer agents' negotiation sockets open on this instance (settlement news reaches
    /// them there).
    pub agent_sockets: Arc<crate::negotiate::sockets::AgentSockets>,
}

impl AppState {
    /// Tells the job worker a job is waiting (it also finds jobs by polling: other instances',
    /// and retries that come due).
    pub fn wake_worker(&self) {
        self.jobs_queued.notify_one();
    }

    /// A configured marketplace by name.
    pub fn marketplace(&self, name: &str) -> Option<&Marketplace> {
        self.marketplaces.iter().find(|m| m.name() == name)
    }

    /// How a delivery on `channel` is retried: `[email]` and `[telegram]` settings, a
    /// marketplace file's `reply` settings. Channels that answer in-band have no deliveries;
    /// they get the defaults.
    pub fn retry_policy(&self, channel: &Channel) -> RetryPolicy {
        match channel {
            Channel::Email => self.config.email.retry(),
            Channel::Telegram => self.config.telegram.retry(),
            Channel::Marketplace(name) => self
                .marketplace(name)
                .map(|m| m.config.reply.retry())
                .unwrap_or_default(),
            Channel::Api | Channel::Webchat | Channel::A2a => RetryPolicy::default(),
        }
    }
}
