//! Limits on every door: requests per client address on the public routes, requests per agent
//! key on the gateway, web chat message, `typing` and socket limits, and the cap on password
//! checks running at once. Rates are GCRA buckets (`governor`): `N per minute` allows a burst of
//! N, refilled at N a minute. A refusal is a [`Refusal`]: 429 with `Retry-After` and a body that
//! names the limit, counted in `concierge_limit_refusals_total{limit}`. A limit set to 0 is off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, TrustedProxies};

/// Why a request was refused, and when it may be tried again.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Which limit: `public_per_ip`, `agent_key`, `chat_messages_per_socket`,
    /// `chat_messages_per_ip`, `chat_sockets_per_ip`, `chat_typing`, `login_email`, `login_ip`,
    /// `password_checks`.
    pub limit: &'static str,
    pub retry_after: Duration,
    /// The limit in words, e.g. "600 requests a minute from one address".
    pub detail: String,
}

impl Refusal {
    /// Counts the refusal and returns it.
    pub fn new(limit: &'static str, retry_after: Duration, detail: impl Into<String>) -> Refusal {
        crate::telemetry::count_limit_refusal(limit);
        Refusal {
            limit,
            retry_after,
            detail: detail.into(),
        }
    }

    /// Whole seconds to wait, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }

    pub fn message(&self) -> String {
        let n = self.retry_after_secs();
        format!(
            "Too many requests: the limit is {}. Try again in {n} second{}.",
            self.detail,
            if n == 1 { "" } else { "s" }
        )
    }

    pub fn retry_header(&self) -> HeaderValue {
        HeaderValue::from(self.retry_after_secs())
    }

    /// The fields an error body carries about the refusal.
    pub fn fields(&self) -> Value {
        json!({"code": "rate_limited", "limit": self.limit, "retry_after_secs": self.retry_after_secs(),
               "message": self.message()})
    }

    /// 429, `Retry-After`, `{"error": {"code": "rate_limited", "limit", "retry_after_secs", "message"}}`.
    pub fn json_response(&self) -> Response {
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({ "error": self.fields() })),
        )
            .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, self.retry_header());
        resp
    }

    /// 429 and `Retry-After` with a small page (for browsers: the inbox sign-in).
    pub fn page_response(&self) -> Response {
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Too many requests</title>\
             <link rel=\"stylesheet\" href=\"/inbox/assets/inbox.css\"></head><body class=\"error-page\"><main>\
             <h1>Too many requests</h1><p role=\"alert\" data-limit=\"{}\">{}</p></main></body></html>",
            self.limit,
            handlebars::html_escape(&self.message())
        );
        let mut resp = (StatusCode::TOO_MANY_REQUESTS, Html(body)).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, self.retry_header());
        resp
    }
}

type Keyed<K> = DefaultKeyedRateLimiter<K>;

fn per_minute(n: u32) -> Option<Quota> {
    NonZeroU32::new(n).map(Quota::per_minute)
}

/// Checks one key against a keyed limiter; drops idle keys now and then so the table stays as
/// small as the set of recently active clients.
fn check_keyed<K: std::hash::Hash + Eq + Clone>(
    limiter: &Keyed<K>,
    key: &K,
    checks: &AtomicU64,
) -> Result<(), Duration> {
    if checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

/// The limits of one running service (shared by every request).
pub struct Limits {
    pub trusted: TrustedProxies,
    public: Option<Keyed<IpAddr>>,
    public_n: u32,
    agent_key: Option<Keyed<String>>,
    agent_key_n: u32,
    chat_ip: Option<Keyed<IpAddr>>,
    chat_ip_n: u32,
    chat_socket_quota: Option<Quota>,
    chat_socket_n: u32,
    chat_typing_quota: Option<Quota>,
    chat_typing_n: u32,
    chat_sockets: Mutex<HashMap<IpAddr, u32>>,
    chat_sockets_max: u32,
    checks: AtomicU64,
    password: Arc<Semaphore>,
    password_n: u32,
    password_waiting: AtomicU32,
    password_queue: u32,
    password_running: AtomicU32,
    password_peak: AtomicU32,
    password_done: AtomicU64,
    pub login_per_email: i64,
    pub login_per_ip: i64,
    pub login_window_ms: i64,
}

impl Limits {
    pub fn new(config: &Config) -> anyhow::Result<Limits> {
        let l = &config.limits;
        let c = &config.chat;
        Ok(Limits {
            trusted: TrustedProxies::parse(&config.server.trusted_proxies)
                .map_err(|e| anyhow::anyhow!("[server] trusted_proxies: {e}"))?,
            public: per_minute(l.public_per_ip_per_minute).map(RateLimiter::keyed),
            public_n: l.public_per_ip_per_minute,
            agent_key: per_minute(l.agent_key_per_minute).map(RateLimiter::keyed),
            agent_key_n: l.agent_key_per_minute,
            chat_ip: per_minute(c.messages_per_minute_per_ip).map(RateLimiter::keyed),
            chat_ip_n: c.messages_per_minute_per_ip,
            chat_socket_quota: per_minute(c.messages_per_minute),
            chat_socket_n: c.messages_per_minute,
            chat_typing_quota: per_minute(c.typing_per_minute),
            chat_typing_n: c.typing_per_minute,
            chat_sockets: Mutex::new(HashMap::new()),
            chat_sockets_max: c.sockets_per_ip,
            checks: AtomicU64::new(0),
            password: Arc::new(Semaphore::new(l.password_checks.max(1) as usize)),
            password_n: l.password_checks.max(1),
            password_waiting: AtomicU32::new(0),
            password_queue: l.password_check_queue,
            password_running: AtomicU32::new(0),
            password_peak: AtomicU32::new(0),
            password_done: AtomicU64::new(0),
            login_per_email: i64::from(l.login_per_email),
            login_per_ip: i64::from(l.login_per_ip),
            login_window_ms: (l.login_window_secs as i64).saturating_mul(1000),
        })
    }

    /// One request from `ip` on a public route.
    pub fn public(&self, ip: IpAddr) -> Result<(), Refusal> {
        let Some(l) = &self.public else { return Ok(()) };
        check_keyed(l, &ip, &self.checks).map_err(|wait| {
            Refusal::new(
                "public_per_ip",
                wait,
                format!("{} requests a minute from one address", self.public_n),
            )
        })
    }

    /// One request signed (and verified) with the agent key `key_id`. A refusal inside a
    /// gateway request is also remembered for [`gateway_refusals`], which adds `Retry-After`.
    pub fn agent_key(&self, key_id: &str) -> Result<(), Refusal> {
        let Some(l) = &self.agent_key else {
            return Ok(());
        };
        check_keyed(l, &key_id.to_string(), &self.checks).map_err(|wait| {
            let r = Refusal::new(
                "agent_key",
                wait,
                format!(
                    "{} requests a minute signed by one agent key",
                    self.agent_key_n
                ),
            );
            let _ = GATEWAY_REFUSAL
                .try_with(|slot| *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone()));
            r
        })
    }

    /// A new web chat socket from `ip`; the slot is given back when dropped.
    pub fn open_chat_socket(self: &Arc<Self>, ip: IpAddr) -> Result<ChatSocket, Refusal> {
        let mut open = self.chat_sockets.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if self.chat_sockets_max > 0 && *n >= self.chat_sockets_max {
            if *n == 0 {
                open.remove(&ip);
            }
            return Err(Refusal::new(
                "chat_sockets_per_ip",
                Duration::from_secs(5),
                format!(
                    "{} chat connections open at once from one address",
                    self.chat_sockets_max
                ),
            ));
        }
        *n += 1;
        Ok(ChatSocket {
            limits: self.clone(),
            ip,
            messages: self.chat_socket_quota.map(RateLimiter::direct),
            typing: self.chat_typing_quota.map(RateLimiter::direct),
        })
    }
}

/// An open web chat socket: its own message and `typing` buckets, and its slot in the per-address
/// count.
pub struct ChatSocket {
    limits: Arc<Limits>,
    ip: IpAddr,
    messages: Option<DefaultDirectRateLimiter>,
    typing: Option<DefaultDirectRateLimiter>,
}

impl ChatSocket {
    /// One `message` (or `hello`) frame: the socket's bucket, then the address's.
    pub fn message(&self) -> Result<(), Refusal> {
        if let Some(l) = &self.messages {
            l.check().map_err(|not_until| {
                Refusal::new(
                    "chat_messages_per_socket",
                    not_until.wait_time_from(DefaultClock::default().now()),
                    format!(
                        "{} messages a minute on one chat",
                        self.limits.chat_socket_n
                    ),
                )
            })?;
        }
        if let Some(l) = &self.limits.chat_ip {
            check_keyed(l, &self.ip, &self.limits.checks).map_err(|wait| {
                Refusal::new(
                    "chat_messages_per_ip",
                    wait,
                    format!(
                        "{} chat messages a minute from one address",
                        self.limits.chat_ip_n
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// One `typing` frame.
    pub fn typing(&self) -> Result<(), Refusal> {
        let Some(l) = &self.typing else { return Ok(()) };
        l.check().map_err(|not_until| {
            Refusal::new(
                "chat_typing",
                not_until.wait_time_from(DefaultClock::default().now()),
                format!(
                    "{} typing notices a minute on one chat",
                    self.limits.chat_typing_n
                ),
            )
        })
    }
}

impl Drop for ChatSocket {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .chat_sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Limits {
    /// A turn at checking a password: at most `[limits] password_checks` run at once and
    /// `password_check_queue` wait; anyone beyond is refused at once rather than queued (each
    /// check holds ~19 MiB).
    pub async fn password_check(self: &Arc<Self>) -> Result<PasswordTurn, Refusal> {
        let permit = match self.password.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let waiting = self.password_waiting.fetch_add(1, Ordering::SeqCst);
                if waiting >= self.password_queue {
                    self.password_waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(Refusal::new(
                        "password_checks",
                        Duration::from_secs(1),
                        format!(
                            "{} password checks at once and {} waiting",
                            self.password_n, self.password_queue
                        ),
                    ));
                }
                let permit = self.password.clone().acquire_owned().await;
                self.password_waiting.fetch_sub(1, Ordering::SeqCst);
                permit.map_err(|_| {
                    Refusal::new(
                        "password_checks",
                        Duration::from_secs(1),
                        "password checks (the service is stopping)",
                    )
                })?
            }
        };
        let running = self.password_running.fetch_add(1, Ordering::SeqCst) + 1;
        self.password_peak.fetch_max(running, Ordering::SeqCst);
        Ok(PasswordTurn {
            limits: self.clone(),
            _permit: permit,
        })
    }

    /// Password checks done since start (also `concierge_password_checks_total`).
    pub fn password_checks_done(&self) -> u64 {
        self.password_done.load(Ordering::SeqCst)
    }

    /// The most password checks that ever ran at once.
    pub fn password_checks_peak(&self) -> u32 {
        self.password_peak.load(Ordering::SeqCst)
    }
}

/// The right to run one password check; the check is counted when it is given back.
pub struct PasswordTurn {
    limits: Arc<Limits>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for PasswordTurn {
    fn drop(&mut self) {
        self.limits.password_running.fetch_sub(1, Ordering::SeqCst);
        self.limits.password_done.fetch_add(1, Ordering::SeqCst);
        crate::telemetry::count_password_check();
    }
}

/// The routes limited per client address: everything reachable without a staff session or a
/// platform's webhook secret — the web chat, the API channel, the consumer-agent gateway (A2A,
/// MCP, `/agent/v1`, the agent card, the OpenAPI document) and the inbox sign-in.
pub fn is_public_route(path: &str) -> bool {
    path == "/chat"
        || path.starts_with("/chat/")
        || path.starts_with("/api/")
        || path == "/a2a"
        || path.starts_with("/a2a/")
        || path == "/mcp"
        || path.starts_with("/mcp/")
        || path.starts_with("/agent/")
        || path.starts_with("/.well-known/")
        || path == "/openapi.json"
        || path == "/inbox/login"
}

tokio::task_local! {
    static GATEWAY_REFUSAL: Mutex<Option<Refusal>>;
}

/// Runs `inner` (a gateway request) and returns its output with the agent-key refusal it met,
/// if any (see [`Limits::agent_key`]): the gateway's middleware adds `Retry-After` and the
/// limit's name to the answer (`crate::http::limits::gateway_refusals`).
pub async fn with_gateway_refusals<F: std::future::Future>(
    inner: F,
) -> (F::Output, Option<Refusal>) {
    GATEWAY_REFUSAL
        .scope(Mutex::new(None), async move {
            let out = inner.await;
            let refusal = GATEWAY_REFUSAL
                .try_with(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).take())
                .ok()
                .flatten();
            (out, refusal)
        })
        .await
}
