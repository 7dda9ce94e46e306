//! Agreement between Concierge instances that share one PostgreSQL database, left to
//! PostgreSQL: notifications (`NOTIFY` to every instance's `LISTEN` connection), transaction-
//! scoped advisory locks (one holder at a time, released at commit, rollback or a dropped
//! connection), and a leader elected by a session advisory lock held on a dedicated connection.
//!
//! On SQLite there is one instance by design: [`Store::listen`] returns None, [`Store::lead`]
//! runs its work at once, and the advisory locks are refused (callers keep their in-process
//! lock). This module holds no business rules; what is locked, led or announced is the
//! caller's.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use sqlx::{Connection, Row};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Backend, Store, StoreError, StoreResult};
use crate::util::{new_id, now_ms};

/// Inbox events (ids only) published by one instance for the others.
pub const EVENTS_CHANNEL: &str = "concierge_events";
/// "The search change feed has new rows" (sent by the writing transaction at commit).
pub const SEARCH_CHANNEL: &str = "concierge_search";
/// Longest payload PostgreSQL accepts on a notification is 8000 bytes; ours stay below this.
pub const MAX_PAYLOAD_BYTES: usize = 7_900;

/// Notifications buffered per subscriber before it is told it lagged.
const NOTICE_BUFFER: usize = 4_096;
/// The listener sends itself a heartbeat this often…
const HEARTBEAT: Duration = Duration::from_secs(5);
/// …and reconnects when it has heard nothing (not even its heartbeat) for this long: a
/// connection can die without a word (a dropped network path, a failed-over database).
const SILENCE_LIMIT: Duration = Duration::from_secs(20);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest pause between two tries of a held advisory lock.
pub const LOCK_RETRY_MAX: Duration = Duration::from_millis(50);
/// A leader checks its connection this often; a follower tries to take over this often.
const LEADER_CHECK: Duration = Duration::from_secs(1);
/// A leader whose connection does not answer within this long steps down.
const LEADER_PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Server-side TCP keepalives on a leader's connection: when the leader's machine vanishes
/// without closing the connection, PostgreSQL drops it (and the lock) after about 5 + 2×3 s.
const LEADER_KEEPALIVES: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "5"),
    ("tcp_keepalives_interval", "2"),
    ("tcp_keepalives_count", "3"),
];
/// Settings key holding the public half of the service key the database was started with.
const SERVICE_KEY_SETTING: &str = "service_key_public";

/// What the listener tells its subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A notification on one of the channels listened to.
    Notification { channel: String, payload: String },
    /// Listening again after the connection was lost. Notifications sent since `lost_at`
    /// (epoch ms, the last moment the old connection was known to work) are gone: re-read.
    Resumed { lost_at: i64 },
}

/// The instance's `LISTEN` connection, shared by its subscribers. Cheap to clone.
#[derive(Clone)]
pub struct Listener {
    tx: broadcast::Sender<Notice>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("subscribers", &self.tx.receiver_count())
            .finish()
    }
}

impl Listener {
    /// Notices from now on. A subscriber that falls more than a few thousand behind gets
    /// `RecvError::Lagged` and should re-read, as after [`Notice::Resumed`].
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.tx.subscribe()
    }
}

/// A transaction-scoped advisory lock: held until [`release`](XactLock::release) or drop
/// (the transaction then rolls back, which releases it too; so does a dead connection).
pub struct XactLock {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    key: i64,
}

impl std::fmt::Debug for XactLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XactLock").field("key", &self.key).finish()
    }
}

impl XactLock {
    /// Ends the transaction, releasing the lock.
    pub async fn release(self) -> StoreResult<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Leadership of one role: a session advisory lock on a connection of its own. Lost when that
/// connection dies; [`release`](Leadership::release) hands it over at once.
pub struct Leadership {
    conn: PgConnection,
    key: i64,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &self.key)
            .finish()
    }
}

impl Leadership {
    /// Whether the connection holding the lock still answers (then the lock is still held).
    pub async fn check(&mut self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&mut self.conn);
        matches!(
            tokio::time::timeout(LEADER_PING_TIMEOUT, ping).await,
            Ok(Ok(_))
        )
    }

    /// Gives the role up (unlock, then close the connection).
    pub async fn release(mut self) {
        let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.conn);
        let _ = tokio::time::timeout(LEADER_PING_TIMEOUT, unlock).await;
        let _ = tokio::time::timeout(LEADER_PING_TIMEOUT, self.conn.close()).await;
    }
}

/// The 64-bit advisory-lock key of a name: the first 8 bytes of its SHA-256, so every
/// instance (whatever its build) derives the same key.
pub fn lock_key(name: &str) -> i64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

fn not_postgres(what: &str) -> StoreError {
    StoreError::Conflict(format!(
        "{what} needs PostgreSQL; on SQLite there is only one instance"
    ))
}

/// Sends a notification from inside a transaction: PostgreSQL delivers it at commit, and not
/// at all on rollback. Nothing on SQLite.
pub(crate) async fn notify_in(
    conn: &mut AnyConnection,
    backend: Backend,
    channel: &str,
    payload: &str,
) -> StoreResult<()> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT 1 AS sent FROM pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

impl Store {
    /// Whether several instances may share this database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Connection options for a dedicated PostgreSQL connection to the pool's database.
    fn pg_options(&self, what: &str) -> StoreResult<PgConnectOptions> {
        if self.backend != Backend::Postgres {
            return Err(not_postgres(what));
        }
        let url = self.pool.connect_options().database_url.clone();
        Ok(PgConnectOptions::from_str(url.as_str())?.application_name("concierge"))
    }

    /// Sends `payload` (at most [`MAX_PAYLOAD_BYTES`]) to every instance listening on
    /// `channel`, this one included. Nothing on SQLite.
    pub async fn notify(&self, channel: &str, payload: &str) -> StoreResult<()> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(StoreError::Conflict(format!(
                "a notification payload is {} bytes; at most {MAX_PAYLOAD_BYTES} are sent",
                payload.len()
            )));
        }
        let mut conn = self.pool.acquire().await?;
        notify_in(&mut conn, self.backend, channel, payload).await
    }

    /// Waits for the advisory lock named `name` and holds it in a transaction of its own
    /// (one pooled connection) until the returned guard is released or dropped. PostgreSQL only.
    /// A waiter holds no connection while it waits (it retries every few milliseconds, up to
    /// [`LOCK_RETRY_MAX`]), so many waiters cannot starve the pool the holder needs.
    pub async fn xact_lock(&self, name: &str) -> StoreResult<XactLock> {
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(lock) = self.try_xact_lock(name).await? {
                return Ok(lock);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LOCK_RETRY_MAX);
        }
    }

    /// Takes the advisory lock named `name` if nobody holds it; None when someone does.
    pub async fn try_xact_lock(&self, name: &str) -> StoreResult<Option<XactLock>> {
        if self.backend != Backend::Postgres {
            return Err(not_postgres("an advisory lock"));
        }
        let key = lock_key(name);
        let mut tx = self.lock_pool().begin().await?;
        let row = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        if row.try_get::<bool, _>("locked")? {
            Ok(Some(XactLock { tx, key }))
        } else {
            tx.rollback().await?;
            Ok(None)
        }
    }

    /// The pool advisory locks are held on (see [`super::locks`]): as many connections as the
    /// query pool, opened as needed and closed when idle; a turn waits for one while every
    /// connection holds a lock, holding nothing else meanwhile.
    fn lock_pool(&self) -> &sqlx::AnyPool {
        if let Some(p) = self.locks.shared.get() {
            return p;
        }
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(self.pool.options().get_max_connections())
            .min_connections(0)
            .idle_timeout(Duration::from_secs(60))
            .acquire_timeout(Duration::from_secs(600))
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let _ = self.locks.shared.set(pool);
        self.locks.shared.get().unwrap_or(&self.pool)
    }

    /// The per-conversation turn lock across instances: while one instance holds it, no other
    /// runs a turn of this conversation. PostgreSQL only (SQLite keeps an in-process lock).
    pub async fn lock_conversation_pg(&self, conversation_id: &str) -> StoreResult<XactLock> {
        self.xact_lock(&format!("conversation:{conversation_id}"))
            .await
    }

    /// Becomes the leader for `role` if no instance is; None when another one is.
    pub async fn try_leadership(&self, role: &str) -> StoreResult<Option<Leadership>> {
        let options = self
            .pg_options("leader election")?
            .options(LEADER_KEEPALIVES);
        let key = lock_key(&format!("leader:{role}"));
        let mut conn = PgConnection::connect_with(&options).await?;
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if won {
            Ok(Some(Leadership { conn, key }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Runs `work` only while this instance leads `role`, until `stop`. The token `work` gets
    /// is cancelled when leadership is lost (the connection holding it stopped answering) or
    /// on `stop`; `work` should then return promptly. Followers try to take over every second,
    /// so when the leader stops or dies another instance leads within a few seconds.
    /// On SQLite this instance is the only one: `work` runs at once with `stop`.
    pub async fn lead<F, Fut>(&self, role: &str, stop: CancellationToken, mut work: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        if self.backend != Backend::Postgres {
            work(stop).await;
            return;
        }
        let mut backoff = LEADER_CHECK;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let pause = match self.try_leadership(role).await {
                Ok(Some(mut leadership)) => {
                    backoff = LEADER_CHECK;
                    tracing::info!(role, "this instance leads");
                    let lost = stop.child_token();
                    let running = work(lost.clone());
                    tokio::pin!(running);
                    let mut ticker = tokio::time::interval(LEADER_CHECK);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut held = true;
                    loop {
                        tokio::select! {
                            () = &mut running => break,
                            _ = ticker.tick(), if held => {
                                if !leadership.check().await {
                                    tracing::warn!(role, "lost the connection holding leadership; stepping down");
                                    held = false;
                                    lost.cancel();
                                }
                            }
                        }
                    }
                    if held {
                        leadership.release().await;
                        tracing::info!(role, "this instance stopped leading");
                    }
                    LEADER_CHECK
                }
                Ok(None) => LEADER_CHECK,
                Err(e) => {
                    tracing::warn!(role, error = %e, "cannot run for leader");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Starts this instance's `LISTEN` connection on `channels` (PostgreSQL; None on SQLite).
    /// Returns once listening (or after a first failed attempt, which is retried in the
    /// background). The connection is re-opened when lost, or when even its own heartbeat
    /// stops arriving; subscribers then get [`Notice::Resumed`]. Ends on `stop`.
    pub async fn listen(
        &self,
        channels: &[&str],
        stop: CancellationToken,
    ) -> Option<(Listener, JoinHandle<()>)> {
        let options = match self.pg_options("listening") {
            Ok(o) => o,
            Err(_) => return None,
        };
        let (tx, _) = broadcast::channel(NOTICE_BUFFER);
        let heartbeat = format!("concierge_{}", new_id("hb"));
        let mut all: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        all.push(heartbeat.clone());
        let (first_tx, first_rx) = oneshot::channel();
        let task = ListenTask {
            options,
            channels: all,
            heartbeat,
            store: self.clone(),
            tx: tx.clone(),
            stop,
        };
        let handle = tokio::spawn(task.run(first_tx));
        let _ = tokio::time::timeout(Duration::from_secs(10), first_rx).await;
        Some((Listener { tx }, handle))
    }

    /// Records `public_key` as the service key this database works with when none is
    /// recorded yet (the first start), and returns the recorded one.
    pub async fn adopt_service_key(&self, public_key: &str) -> StoreResult<String> {
        self.write_execute(
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(SERVICE_KEY_SETTING)
            .bind(public_key),
        )
        .await?;
        self.get_setting(SERVICE_KEY_SETTING)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                what: "settings".into(),
                message: format!("{SERVICE_KEY_SETTING} vanished right after it was written"),
            })
    }
}

struct ListenTask {
    options: PgConnectOptions,
    channels: Vec<String>,
    heartbeat: String,
    store: Store,
    tx: broadcast::Sender<Notice>,
    stop: CancellationToken,
}

impl ListenTask {
    async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(self.options.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener
            .listen_all(self.channels.iter().map(String::as_str))
            .await?;
        Ok(listener)
    }

    async fn run(self, first: oneshot::Sender<()>) {
        let mut first = Some(first);
        let mut backoff = Duration::from_millis(500);
        // The last moment a working connection was known to deliver (at first: the start).
        let heard = Arc::new(AtomicI64::new(now_ms()));
        let mut lost_at: Option<i64> = None;
        loop {
            let listener = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = self.connect() => r,
            };
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other instances' notifications; retrying");
                    if let Some(f) = first.take() {
                        let _ = f.send(());
                    }
                    if lost_at.is_none() {
                        lost_at = Some(heard.load(Ordering::Relaxed));
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(500);
            heard.store(now_ms(), Ordering::Relaxed);
            if let Some(f) = first.take() {
                let _ = f.send(());
            }
            if let Some(at) = lost_at.take() {
                tracing::info!("listening for other instances' notifications again");
                let _ = self.tx.send(Notice::Resumed { lost_at: at });
            }
            let mut reader = tokio::spawn(read(
                listener,
                self.heartbeat.clone(),
                self.tx.clone(),
                heard.clone(),
            ));
            let mut ticker = tokio::time::interval(HEARTBEAT);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => {
                        reader.abort();
                        return;
                    }
                    ended = &mut reader => {
                        if let Ok(e) = ended {
                            tracing::warn!(error = %e, "lost the connection listening for other instances");
                        }
                        break;
                    }
                    _ = ticker.tick() => {
                        let silent = now_ms() - heard.load(Ordering::Relaxed);
                        if silent > i64::try_from(SILENCE_LIMIT.as_millis()).unwrap_or(i64::MAX) {
                            tracing::warn!(silent_ms = silent, "the connection listening for other instances went silent; reconnecting");
                            reader.abort();
                            break;
                        }
                        if let Err(e) = self.store.notify(&self.heartbeat, "").await {
                            tracing::debug!(error = %e, "cannot send the listener's heartbeat");
                        }
                    }
                }
            }
            lost_at = Some(heard.load(Ordering::Relaxed));
        }
    }
}

/// Reads notifications until the connection fails for good. A connection lost and re-opened
/// by the listener itself is reported as [`Notice::Resumed`].
async fn read(
    mut listener: PgListener,
    heartbeat: String,
    tx: broadcast::Sender<Notice>,
    heard: Arc<AtomicI64>,
) -> sqlx::Error {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                heard.store(now_ms(), Ordering::Relaxed);
                if n.channel() != heartbeat {
                    let _ = tx.send(Notice::Notification {
                        channel: n.channel().to_string(),
                        payload: n.payload().to_string(),
                    });
                }
            }
            Ok(None) => {
                let lost_at = heard.load(Ordering::Relaxed);
                heard.store(now_ms(), Ordering::Relaxed);
                tracing::info!("re-opened the connection listening for other instances");
                let _ = tx.send(Notice::Resumed { lost_at });
            }
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_are_stable_and_distinct() {
        let a = super::lock_key("conversation:cnv_1");
        assert_eq!(a, super::lock_key("conversation:cnv_1"));
        assert_ne!(a, super::lock_key("conversation:cnv_2"));
        // Fixed by SHA-256, not by this build's hasher: every instance agrees.
        assert_eq!(
            super::lock_key(""),
            i64::from_be_bytes(*b"\xe3\xb0\xc4\x42\x98\xfc\x1c\x14")
        );
    }
}
