//! Typed configuration: `concierge.toml`, then `CONCIERGE_<SECTION>__<KEY>` environment
//! variables, then command-line flags. Secrets are [`Secret`]s and never show in `Debug`.
//!
//! Environment values are typed by the setting they override (a number stays a number, an API
//! key made of digits stays a string), and a variable naming an unknown setting is an error rather
//! than silently ignored.

pub mod marketplace;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::util::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite database, the search index, attachments and keys live.
    pub data_dir: PathBuf,
    /// Shorthand for `[database] url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<Secret>,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub api: ApiConfig,
    pub metrics: MetricsConfig,
    pub brand: BrandConfig,
    pub log: LogConfig,
    pub jobs: JobsConfig,
    pub llm: LlmConfig,
    pub email: EmailConfig,
    pub telegram: TelegramConfig,
    pub shopify: ShopifyConfig,
    pub chat: ChatConfig,
    pub verification: VerificationConfig,
    pub limits: LimitsConfig,
    pub payments: PaymentsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            database_url: None,
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            api: ApiConfig::default(),
            metrics: MetricsConfig::default(),
            brand: BrandConfig::default(),
            log: LogConfig::default(),
            jobs: JobsConfig::default(),
            llm: LlmConfig::default(),
            email: EmailConfig::default(),
            telegram: TelegramConfig::default(),
            shopify: ShopifyConfig::default(),
            chat: ChatConfig::default(),
            verification: VerificationConfig::default(),
            limits: LimitsConfig::default(),
            payments: PaymentsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the public HTTP listener binds.
    pub bind: String,
    /// The URL clients use to reach us, when behind a proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// A request taking longer than this is answered 503.
    pub request_timeout_secs: u64,
    /// How long shutdown waits for in-flight requests and jobs.
    pub shutdown_grace_secs: u64,
    /// `Host` values accepted when `public_url` is unset (others get 421). Empty: the bind
    /// address, `localhost` and `127.0.0.1` (with the bind port).
    pub allowed_hosts: Vec<String>,
    /// Peers (IP addresses or CIDR ranges) whose `X-Forwarded-For` names the client's address.
    /// Empty: the connecting address is the client's.
    pub trusted_proxies: Vec<String>,
    /// The service's Ed25519 key (PKCS#8 PEM) when it is not `<data_dir>/service_key.pem`:
    /// instances sharing a database must share one key (`CONCIERGE_SERVICE_KEY_FILE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_key_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1:8080".into(),
            public_url: None,
            max_body_bytes: 2 * 1024 * 1024,
            request_timeout_secs: 30,
            shutdown_grace_secs: 20,
            allowed_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            service_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…` for PostgreSQL; unset for the SQLite file in the data dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: 8,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer key for the API channel. Unset: a key is generated once and kept in the data dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the separate Prometheus listener (`/metrics`); unset: no metrics listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrandConfig {
    /// Folder with voice.toml, policy.toml and policies/*.md.
    pub dir: PathBuf,
    /// Folder with the LLM prompt templates and `replies/*.hbs` (the offline resolver's wording).
    pub prompts: PathBuf,
    /// Folder with per-channel settings and wrapping templates.
    pub channels: PathBuf,
}

impl Default for BrandConfig {
    fn default() -> Self {
        BrandConfig {
            dir: PathBuf::from("brand"),
            prompts: PathBuf::from("prompts"),
            channels: PathBuf::from("channels"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: String,
    /// A tracing filter such as `info,concierge=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "pretty".into(),
            level: "info".into(),
        }
    }
}

/// Settling negotiated deals (`crate::settle`): how long stock is held for a running
/// settlement, and the card processor. Gift cards are paid from the balances in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// How long a settlement's stock reservation holds before it no longer counts against
    /// availability (a settlement normally consumes or releases it within seconds).
    pub reservation_secs: u64,
    /// Attempts of a settlement's job (its backoff doubles from a second to an hour, so the
    /// default rides out a processor that is down for a day). A settlement still not finished
    /// or undone after them — a refund the processor keeps refusing — is handed to staff as an
    /// escalation.
    pub settle_attempts: i64,
    /// Card payments through Stripe's PaymentIntents API; off until a secret key is set.
    pub stripe: StripeConfig,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            reservation_secs: 900,
            settle_attempts: 25,
            stripe: StripeConfig::default(),
        }
    }
}

/// `[payments.stripe]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeConfig {
    /// The API's base URL (a test double's, or Stripe's).
    pub base_url: String,
    /// The environment variable holding the secret key (`sk_live_…`, `sk_test_…`).
    pub secret_key_env: String,
    /// The secret key itself, when not read from `secret_key_env`
    /// (`CONCIERGE_PAYMENTS__STRIPE__SECRET_KEY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<Secret>,
    /// Longest one API call may take; past it the payment's outcome is unknown and the
    /// settlement undoes it (cancel or refund).
    pub timeout_ms: u64,
}

impl Default for StripeConfig {
    fn default() -> Self {
        StripeConfig {
            base_url: "https://api.stripe.com".into(),
            secret_key_env: "STRIPE_SECRET_KEY".into(),
            secret_key: None,
            timeout_ms: 10_000,
        }
    }
}

impl StripeConfig {
    /// The secret key: `secret_key`, else the variable `secret_key_env` names; None = card
    /// payments are off.
    pub fn key(&self) -> Option<Secret> {
        self.secret_key.clone().or_else(|| {
            std::env::var(&self.secret_key_env)
                .ok()
                .filter(|k| !k.trim().is_empty())
                .map(|k| Secret::new(k.trim()))
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// How often an idle worker looks for due jobs (a job queued on this instance wakes it at
    /// once).
    pub poll_interval_ms: u64,
    /// How long a claimed job is leased before another worker may take it over. A running job
    /// renews its lease, so this is how long a crashed worker's job waits to be taken over.
    pub lease_secs: u64,
    /// Jobs one instance runs at once.
    pub concurrency: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            poll_interval_ms: 500,
            lease_secs: 60,
            concurrency: 8,
        }
    }
}

/// How a delivery on one channel is retried: attempts, then exponential backoff with ±20 %
/// jitter from `base_ms`, doubling per attempt, capped at `max_ms`. A delivery the far end
/// refuses for good (an unknown chat, a rejected recipient) is a dead letter at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: i64,
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for RetryPolicy {
    /// 8 attempts, 1 s, 2 s, 4 s … at most an hour apart.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_ms: 1000,
            max_ms: 3_600_000,
        }
    }
}

impl RetryPolicy {
    /// Milliseconds to wait after the `attempts`-th failed attempt.
    pub fn backoff_ms(&self, attempts: i64) -> i64 {
        use rand::Rng;
        let exp = attempts.clamp(1, 40) - 1;
        let base = i64::try_from(self.base_ms.max(1)).unwrap_or(i64::MAX);
        let cap = i64::try_from(self.max_ms.max(self.base_ms.max(1))).unwrap_or(i64::MAX);
        let wait = base
            .saturating_mul(1i64.checked_shl(exp as u32).unwrap_or(i64::MAX))
            .min(cap);
        let jitter = rand::rng().random_range(-0.2..=0.2);
        wait + (wait as f64 * jitter) as i64
    }
}

/// The optional LLM. With `model` set, the brand agent drives an OpenAI-compatible chat
/// completions endpoint with function calling; without it, the offline resolver answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// e.g. "gpt-4o-mini"; unset = no LLM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The endpoint; unset = `OPENAI_BASE_URL`, else OpenAI's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The environment variable holding the API key.
    pub api_key_env: String,
    /// Longest a whole turn (every model call and tool call) may take before the offline
    /// resolver answers instead.
    pub timeout_secs: u64,
    /// Most model calls in one turn.
    pub max_steps: u32,
    /// Sampling temperature.
    pub temperature: f32,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            model: None,
            base_url: None,
            api_key_env: "OPENAI_API_KEY".into(),
            timeout_secs: 20,
            max_steps: 6,
            temperature: 0.2,
        }
    }
}

/// The email channel. Also read from `channels/email.toml` (this file's `[email]` and the
/// environment win).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// `smtp://host:port`, `smtps://user:pass@host`, or with `?tls=required`; unset: replies are
    /// not sent by email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_url: Option<Secret>,
    /// The sender of replies, e.g. `Alder & Pine Support <help@alderandpine.example.com>`; its
    /// address also receives replies (plus-addressed with the conversation's token).
    pub from: String,
    /// Bearer secret for `POST /channels/email/inbound`; unset: that endpoint is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_secret: Option<Secret>,
    /// Delivery attempts before a reply is a dead letter.
    pub max_attempts: i64,
    /// Wait before the first retry of a failed delivery, in milliseconds (doubling after each
    /// further attempt).
    pub retry_base_ms: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub retry_max_ms: u64,
    /// Largest inbound message accepted, in bytes.
    pub max_message_bytes: usize,
    /// `authserv-id`s of the mail relays whose `Authentication-Results` header is believed
    /// (RFC 8601). A From address counts as proof only with `dmarc=pass` (or aligned
    /// `dkim=pass`) from one of them; otherwise it is only a claim.
    pub trusted_authserv_ids: Vec<String>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            smtp_url: None,
            from: "Support <support@example.com>".into(),
            inbound_secret: None,
            max_attempts: 8,
            retry_base_ms: 1000,
            retry_max_ms: 3_600_000,
            max_message_bytes: 25 * 1024 * 1024,
            trusted_authserv_ids: Vec::new(),
        }
    }
}

/// The Telegram channel (a bot). Also read from `channels/telegram.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramConfig {
    /// The bot token from @BotFather; unset: the channel is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// The Bot API base URL (a local Bot API server or a test double).
    pub api_url: String,
    /// "polling" (long polling, the default) or "webhook".
    pub mode: String,
    /// Webhook mode: the X-Telegram-Bot-Api-Secret-Token Telegram must send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Secret>,
    /// Long-polling timeout in seconds.
    pub poll_timeout_secs: u64,
    /// Delivery attempts before a reply is a dead letter.
    pub max_attempts: i64,
    /// Wait before the first retry of a failed delivery, in milliseconds (doubling after each
    /// further attempt).
    pub retry_base_ms: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub retry_max_ms: u64,
}

impl EmailConfig {
    /// How a reply by email is retried.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            base_ms: self.retry_base_ms,
            max_ms: self.retry_max_ms,
        }
    }
}

impl TelegramConfig {
    /// How a reply on Telegram is retried.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            base_ms: self.retry_base_ms,
            max_ms: self.retry_max_ms,
        }
    }
}

impl Default for TelegramConfig {
    fn default() -> Self {
        TelegramConfig {
            token: None,
            api_url: "https://api.telegram.org".into(),
            mode: "polling".into(),
            webhook_secret: None,
            poll_timeout_secs: 25,
            max_attempts: 8,
            retry_base_ms: 1000,
            retry_max_ms: 3_600_000,
        }
    }
}

/// Shopify webhooks (order, fulfilment, refund, customer and product sync). Also read from
/// `channels/shopify.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShopifyConfig {
    /// The app's client secret that signs webhooks (X-Shopify-Hmac-Sha256); unset: the webhook
    /// endpoint is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Secret>,
}

/// The web chat widget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Origins (`https://shop.example.com`) whose pages may open `/chat/ws`. Empty: only the
    /// service's own origin.
    pub allowed_origins: Vec<String>,
    /// Who may frame the demo page `/chat` (CSP `frame-ancestors` sources, e.g.
    /// `"https://shop.example.com"`). Empty: nobody (`'none'`).
    pub frame_ancestors: Vec<String>,
    /// Messages per minute on one socket.
    pub messages_per_minute: u32,
    /// Messages per minute from one client address, all its sockets together.
    pub messages_per_minute_per_ip: u32,
    /// `typing` frames per minute on one socket (more are dropped, and counted).
    pub typing_per_minute: u32,
    /// Sockets open at once from one client address.
    pub sockets_per_ip: u32,
    /// Most messages a `welcome` (and a catch-up after missed events) sends back: the latest.
    pub history_limit: u32,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            allowed_origins: Vec::new(),
            frame_ancestors: Vec::new(),
            messages_per_minute: 30,
            messages_per_minute_per_ip: 120,
            typing_per_minute: 60,
            sockets_per_ip: 20,
            history_limit: 200,
        }
    }
}

/// How a shopper proves who they are, and how guessing is stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerificationConfig {
    /// Days a verified link from a channel identity to a customer lasts.
    pub link_ttl_days: u32,
    /// Failed verifications in one conversation within the window before it is locked.
    pub max_conversation_failures: u32,
    /// Failed verifications naming one customer (or email) within the window before it is locked.
    pub max_customer_failures: u32,
    /// The counting window, in seconds.
    pub window_secs: u64,
}

impl Default for VerificationConfig {
    fn default() -> Self {
        VerificationConfig {
            link_ttl_days: 30,
            max_conversation_failures: 3,
            max_customer_failures: 5,
            window_secs: 3600,
        }
    }
}

/// Rate and concurrency limits on every door. A refusal is 429 with `Retry-After`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per minute from one client address on public routes.
    pub public_per_ip_per_minute: u32,
    /// Requests per minute signed by one agent key on the gateway.
    pub agent_key_per_minute: u32,
    /// Sign-in attempts for one email in the window before sign-in answers 429 for it (a
    /// successful sign-in clears the count).
    pub login_per_email: u32,
    /// Failed sign-in attempts from one client address in the window.
    pub login_per_ip: u32,
    /// The sign-in counting window, in seconds.
    pub login_window_secs: u64,
    /// Password checks (Argon2, ~19 MiB each) running at once.
    pub password_checks: u32,
    /// Sign-ins waiting for a password check beyond those running; more get 429.
    pub password_check_queue: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            public_per_ip_per_minute: 600,
            agent_key_per_minute: 6000,
            login_per_email: 5,
            login_per_ip: 20,
            login_window_secs: 900,
            password_checks: 2,
            password_check_queue: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the configuration. `file`: an explicit `--config` (must exist); without it
    /// `./concierge.toml` is read when present. `env`: the process environment (passed in so
    /// tests control it).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let default_path = Path::new("concierge.toml");
        let (path, text) = match file {
            Some(p) => (
                p.to_path_buf(),
                Some(
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                        path: p.to_path_buf(),
                        source,
                    })?,
                ),
            ),
            None if default_path.exists() => (
                default_path.to_path_buf(),
                Some(std::fs::read_to_string(default_path).map_err(|source| {
                    ConfigError::Read {
                        path: default_path.to_path_buf(),
                        source,
                    }
                })?),
            ),
            None => (default_path.to_path_buf(), None),
        };
        let mut table = match text {
            Some(t) => toml::from_str::<toml::Table>(&t).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?,
            None => toml::Table::new(),
        };
        merge_channel_files(&mut table)?;
        apply_env(&mut table, env)?;
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.log.format != "pretty" && self.log.format != "json" {
            return Err(ConfigError::Invalid(format!(
                "[log] format must be \"pretty\" or \"json\", not {:?}",
                self.log.format
            )));
        }
        if self.telegram.mode != "polling" && self.telegram.mode != "webhook" {
            return Err(ConfigError::Invalid(format!(
                "[telegram] mode must be \"polling\" or \"webhook\", not {:?}",
                self.telegram.mode
            )));
        }
        if self.telegram.mode == "webhook" && self.telegram.webhook_secret.is_none() {
            return Err(ConfigError::Invalid(
                "[telegram] mode = \"webhook\" needs webhook_secret (CONCIERGE_TELEGRAM__WEBHOOK_SECRET), which Telegram sends with every update".into(),
            ));
        }
        TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(|e| ConfigError::Invalid(format!("[server] trusted_proxies: {e}")))?;
        if let Some(bad) = self
            .chat
            .frame_ancestors
            .iter()
            .find(|s| !valid_csp_source(s))
        {
            return Err(ConfigError::Invalid(format!(
                "[chat] frame_ancestors: {bad:?} is not one CSP source (an origin such as \"https://shop.example.com\", or 'self')"
            )));
        }
        if self.jobs.concurrency == 0 {
            return Err(ConfigError::Invalid(
                "[jobs] concurrency must be at least 1".into(),
            ));
        }
        for (section, attempts) in [
            ("email", self.email.max_attempts),
            ("telegram", self.telegram.max_attempts),
        ] {
            if attempts < 1 {
                return Err(ConfigError::Invalid(format!(
                    "[{section}] max_attempts must be at least 1, not {attempts}"
                )));
            }
        }
        if self.limits.password_checks == 0 {
            return Err(ConfigError::Invalid(
                "[limits] password_checks must be at least 1".into(),
            ));
        }
        if self.payments.reservation_secs == 0 {
            return Err(ConfigError::Invalid(
                "[payments] reservation_secs must be at least 1".into(),
            ));
        }
        if self.payments.stripe.timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "[payments.stripe] timeout_ms must be at least 1".into(),
            ));
        }
        if !(self.payments.stripe.base_url.starts_with("http://")
            || self.payments.stripe.base_url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "[payments.stripe] base_url must be an http(s) URL, not {:?}",
                self.payments.stripe.base_url
            )));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "[database] max_connections must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Turns off the request-rate and socket limits (`[limits]` public and agent-key rates,
    /// `[chat]` message, typing and socket limits) — for benchmarks that measure the service
    /// itself. Sign-in limits stay.
    pub fn without_rate_limits(&mut self) {
        self.limits.public_per_ip_per_minute = 0;
        self.limits.agent_key_per_minute = 0;
        self.chat.messages_per_minute = 0;
        self.chat.messages_per_minute_per_ip = 0;
        self.chat.typing_per_minute = 0;
        self.chat.sockets_per_ip = 0;
    }

    /// The PostgreSQL URL when one is configured (`[database] url`, `database_url`).
    pub fn database_url(&self) -> Option<&Secret> {
        self.database.url.as_ref().or(self.database_url.as_ref())
    }
}

/// Reads `<channels dir>/<name>.toml` for the channel sections this config knows (`email`),
/// under what the main file says for the same section.
fn merge_channel_files(table: &mut toml::Table) -> Result<(), ConfigError> {
    let dir = table
        .get("brand")
        .and_then(|b| b.get("channels"))
        .and_then(toml::Value::as_str)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("channels"));
    for section in ["email", "telegram", "shopify"] {
        let path = dir.join(format!("{section}.toml"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let from_file: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = entry {
            for (k, v) in from_file {
                t.entry(k).or_insert(v);
            }
        }
    }
    Ok(())
}

/// Overlays `CONCIERGE_<SECTION>__<KEY>` (and the shorthands `CONCIERGE_API_KEY`,
/// `CONCIERGE_DATA_DIR`, `CONCIERGE_SERVICE_KEY_FILE`, `DATABASE_URL`) onto the parsed file.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let skeleton = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut vars: Vec<(String, String)> = env.into_iter().collect();
    // Deterministic: the specific `CONCIERGE_SECTION__KEY` form wins over shorthands.
    vars.sort_by_key(|(k, _)| k.contains("__"));
    for (var, raw) in vars {
        let path: Vec<String> = match var.as_str() {
            "DATABASE_URL" => vec!["database".into(), "url".into()],
            "CONCIERGE_API_KEY" => vec!["api".into(), "key".into()],
            "CONCIERGE_DATA_DIR" => vec!["data_dir".into()],
            "CONCIERGE_SERVICE_KEY_FILE" => vec!["server".into(), "service_key_file".into()],
            _ => match var.strip_prefix("CONCIERGE_") {
                Some(rest) if rest.contains("__") => {
                    rest.split("__").map(|p| p.to_ascii_lowercase()).collect()
                }
                _ => continue,
            },
        };
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "empty section or key name".into(),
            });
        }
        let value = typed_value(&skeleton, &path, &raw).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        let (last, parents) = path.split_last().ok_or_else(|| ConfigError::Env {
            var: var.clone(),
            message: "no key".into(),
        })?;
        let mut node = &mut *table;
        for part in parents {
            let entry = node
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("`{part}` is a value, not a section"),
                    });
                }
            };
        }
        node.insert(last.clone(), value);
    }
    Ok(())
}

/// Types an environment value like the default it overrides (numbers and booleans parsed,
/// everything else kept as text).
fn typed_value(skeleton: &toml::Table, path: &[String], raw: &str) -> Result<toml::Value, String> {
    let mut node: Option<&toml::Value> = None;
    let mut table = Some(skeleton);
    for part in path {
        node = table.and_then(|t| t.get(part));
        table = node.and_then(toml::Value::as_table);
    }
    Ok(match node {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("expected a whole number, got {raw:?}"))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(format!("expected true or false, got {raw:?}")),
        }),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| format!("expected a number, got {raw:?}"))?,
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}

/// Whether a `[chat] frame_ancestors` entry can go into the header as one CSP source.
pub fn valid_csp_source(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
}

/// `[server] trusted_proxies`, parsed: the peers whose `X-Forwarded-For` names the client.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parses the configured entries (IP addresses or CIDR ranges).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|e| parse_proxy(e))
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = crate::util::canonical_ip(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// One `trusted_proxies` entry: `10.0.0.0/8`, `192.0.2.7`, `::1`, `fd00::/8`.
pub fn parse_proxy(entry: &str) -> Result<ipnet::IpNet, String> {
    let e = entry.trim();
    if let Ok(net) = e.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    e.parse::<IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_env_with_types() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/concierge\"\n[server]\nbind = \"0.0.0.0:9000\"\n[database]\nmax_connections = 4\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("CONCIERGE_DATABASE__MAX_CONNECTIONS", "12"),
                ("CONCIERGE_API_KEY", "12345"),
                ("CONCIERGE_METRICS__BIND", "127.0.0.1:9100"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/concierge"));
        assert_eq!(c.server.bind, "0.0.0.0:9000");
        assert_eq!(c.database.max_connections, 12);
        assert_eq!(c.api.key.as_ref().map(Secret::expose), Some("12345"));
        assert_eq!(c.metrics.bind.as_deref(), Some("127.0.0.1:9100"));
        assert!(!format!("{c:?}").contains("12345"));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let e = Config::load(
            None,
            env(&[("CONCIERGE_DATABASE__MAX_CONNECTIONS", "many")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("CONCIERGE_DATABASE__MAX_CONNECTIONS"), "{e}");
        let e = Config::load(None, env(&[("CONCIERGE_SERVER__BINDD", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bindd"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        assert!(Config::load(Some(&missing), env(&[])).is_err());
    }

    #[test]
    fn database_url_from_env() {
        let c = Config::load(None, env(&[("DATABASE_URL", "postgres://u@h/db")])).unwrap();
        assert_eq!(
            c.database_url().map(Secret::expose),
            Some("postgres://u@h/db")
        );
    }

    #[test]
    fn service_key_file_from_env_or_file() {
        let c = Config::load(
            None,
            env(&[("CONCIERGE_SERVICE_KEY_FILE", "/run/secrets/key.pem")]),
        )
        .unwrap();
        assert_eq!(
            c.server.service_key_file.as_deref(),
            Some(Path::new("/run/secrets/key.pem"))
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("concierge.toml");
        std::fs::write(
            &file,
            "[server]\nservice_key_file = \"/etc/concierge/key.pem\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[])).unwrap();
        assert_eq!(
            c.server.service_key_file.as_deref(),
            Some(Path::new("/etc/concierge/key.pem"))
        );
        assert_eq!(Config::default().server.service_key_file, None);
    }
}
