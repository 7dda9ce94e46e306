//! The Store: every read and write of Concierge's database, on SQLite (the embedded default, a
//! file in the data dir, WAL mode) or PostgreSQL (scale-out), through one set of SQL.
//!
//! Both engines take the same statements (`$1` placeholders, `ON CONFLICT … DO UPDATE`,
//! `RETURNING`) through `sqlx::Any`; where they differ (claiming jobs) the code branches on
//! [`Backend`]. Conventions: ids TEXT, times epoch-ms integers, money integer minor units, JSON
//! as TEXT. Schema lives in `migrations/sqlite` and `migrations/postgres`, applied at open.
//! This module holds no business rules: callers decide what may be written.

mod actions;
mod agents;
mod cache;
mod changes;
mod channel;
pub mod cluster;
mod commerce;
mod fast;
mod inbox;
mod jobs;
mod limits;
mod locks;
mod migrations;
mod nonces;
mod outbox;
mod settle;
mod staff;
mod verification;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Row};

pub use actions::{
    ActionRequest, AuditBreak, AuditEntry, AuditHead, AuditVerification, Audited, GENESIS_HASH,
    OrderDraft, audit_head_message, canonical_json, verify_head,
};
pub use agents::{
    AgentKeyRecord, AgentRecord, DelegationCode, IdempotencyClaim, KeyLookup, NewDelegationCode,
    TokenRecord,
};
pub use changes::{ChangeKind, RETAIN_MS as SEARCH_CHANGES_RETAIN_MS, SearchChange};
pub use channel::Channel;
pub use commerce::{ImportCounts, StoreCounts};
pub use inbox::{
    AuthorKind, Conversation, ConversationStatus, ConversationView, Direction, Escalation,
    Identity, InboundMessage, IngestOutcome, Message, NewMessage,
};
pub use jobs::{Job, JobStatus, NewJob};
pub use limits::LoginReservation;
pub use locks::ConversationLock;
pub use outbox::{Delivery, JOB_DELIVER, NewDelivery, REPLY_TOKEN_CHARS, random_base36};
pub use settle::Touched;
pub use staff::{OpenEscalation, QueueFilter, QueueRow, StaffMember, StaffNote, StaffSession};
pub use verification::{AttemptGate, AttemptScope, AttemptTicket, VerificationLock};
pub use writer::WriteTx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use postgres://… or leave it unset for SQLite")]
    UnsupportedUrl(String),
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("stored {what} is corrupt: {message}")]
    Corrupt { what: String, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error("the write was not committed: {0}")]
    GroupCommit(String),
}

impl StoreError {
    /// True when the error is a unique-constraint violation (optionally of a named
    /// constraint or index).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(e)) => e.is_unique_violation(),
            _ => false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The database handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The service's Ed25519 key, when attached: audited writes sign the log's head with it.
    audit_signer: Option<std::sync::Arc<ed25519_dalek::SigningKey>>,
    /// This process's conversation locks ([`Store::lock_conversation`]).
    locks: std::sync::Arc<locks::ConversationLocks>,
    /// SQLite: the one connection this process writes with (see [`WriteTx`]).
    writer: Option<std::sync::Arc<writer::Writer>>,
    /// The read models ([`cache`]).
    cache: std::sync::Arc<cache::ReadModels>,
    /// Signature nonces seen ([`nonces`]).
    nonces: std::sync::Arc<nonces::NonceBook>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

/// Every SQLite connection's settings.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;";

use migrations::{POSTGRES as POSTGRES_MIGRATOR, SQLITE as SQLITE_MIGRATOR};

impl Store {
    /// Opens the configured database: PostgreSQL when `url` is given, else
    /// `<data_dir>/concierge.db`. Applies migrations.
    pub async fn open(
        data_dir: &Path,
        url: Option<&str>,
        max_connections: u32,
    ) -> StoreResult<Store> {
        let url = match url {
            Some(u) => u.to_string(),
            None => {
                std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                let file = data_dir.join("concierge.db");
                format!("sqlite://{}?mode=rwc", file.display())
            }
        };
        Store::connect(&url, max_connections).await
    }

    /// Connects to a `sqlite://…` or `postgres://…` URL and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options = AnyConnectOptions::from_str(url)?;
        let mut pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30));
        let writer = if backend == Backend::Sqlite {
            // The writing connection comes first: it creates the file, sets WAL mode and
            // applies the migrations; the pool's connections then only read.
            let mut conn = AnyConnection::connect_with(&options).await?;
            sqlx::raw_sql(SQLITE_PRAGMAS).execute(&mut conn).await?;
            SQLITE_MIGRATOR.run(&mut conn).await?;
            pool = pool.after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::raw_sql(SQLITE_PRAGMAS).execute(&mut *conn).await?;
                    sqlx::raw_sql("PRAGMA query_only = ON")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
            Some(std::sync::Arc::new(writer::Writer::new(conn)))
        } else {
            None
        };
        let pool = pool.connect_with(options).await?;
        let store = Store {
            pool,
            backend,
            audit_signer: None,
            locks: Default::default(),
            writer,
            cache: Default::default(),
            nonces: Default::default(),
        };
        if backend == Backend::Postgres {
            POSTGRES_MIGRATOR.run(&store.pool).await?;
        } else {
            store.load_nonces().await?;
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.flush_nonces().await;
        self.close_writer().await;
        if let Some(locks) = self.locks.shared.get() {
            locks.close().await;
        }
        self.pool.close().await;
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<String, _>("value")).transpose()?)
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        self.write_execute(
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value),
        )
        .await?;
        Ok(())
    }
}

/// Hides the password in a database URL for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

// ---- row helpers shared by the submodules ----

fn get_str(row: &AnyRow, col: &str) -> StoreResult<String> {
    Ok(row.try_get::<String, _>(col)?)
}

fn get_opt_str(row: &AnyRow, col: &str) -> StoreResult<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(col)?)
}

fn get_i64(row: &AnyRow, col: &str) -> StoreResult<i64> {
    Ok(row.try_get::<i64, _>(col)?)
}

fn get_opt_i64(row: &AnyRow, col: &str) -> StoreResult<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}

fn get_json<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> StoreResult<T> {
    let text = get_str(row, col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        what: format!("column {col}"),
        message: e.to_string(),
    })
}

fn get_opt_json<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> StoreResult<Option<T>> {
    match get_opt_str(row, col)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: format!("column {col}"),
                message: e.to_string(),
            }),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing our own model types cannot fail (no maps with non-string keys).
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            super::redact_url("postgres://bob:secret@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(super::redact_url("postgres://db/x"), "postgres://db/x");
    }
}
