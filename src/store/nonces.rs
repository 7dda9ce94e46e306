//! Replay protection for signed requests: each `(key id, nonce)` is accepted once while its
//! signature could still be fresh.
//!
//! A nonce is claimed in memory first — a repeat seen by this instance is refused at once, and
//! two concurrent requests with the same nonce cannot both pass — then persisted: one task
//! writes the nonces of many concurrent requests with one statement per batch
//! (`INSERT … ON CONFLICT DO NOTHING RETURNING`), and each request waits for its batch's commit.
//! So a nonce is never accepted before it is stored: a replay after a restart, or through
//! another instance sharing the database, hits the stored row and is refused. The memory is
//! bounded (older entries are dropped; the table still refuses them); stored rows are deleted
//! once stale.
//!
//! One exception, for speed: a read (GET/HEAD, which changes nothing) on SQLite — one instance
//! by design — is answered once its nonce is claimed in memory, and the nonce is stored by the
//! same batches without the request waiting. At start the store loads the unexpired stored
//! nonces into memory, and closing the store writes every nonce still queued, so a replayed
//! read after a restart is still refused; only a crash in the milliseconds between a read's
//! answer and its batch's commit can forget that read's nonce.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use sqlx::Row;

use super::{Store, StoreError, StoreResult, get_str};
use crate::commerce::Millis;

/// Nonces remembered in memory before the older half is dropped.
const IN_MEMORY: usize = 200_000;
/// Nonces written per statement.
const PER_BATCH: usize = 200;
/// How often stale stored nonces are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(30);

type Reply = oneshot::Sender<Result<bool, Arc<str>>>;

struct Pending {
    key_id: String,
    nonce: String,
    expires_at: Millis,
    /// None when nobody waits for the nonce to be stored (a read on SQLite).
    reply: Option<Reply>,
}

/// What the batch writer is asked to do.
enum Job {
    Store(Pending),
    /// Answer once everything queued before it is stored.
    Flush(oneshot::Sender<()>),
}

/// The nonces one store has seen. Shared by the store's clones.
#[derive(Default)]
pub(crate) struct NonceBook {
    seen: Mutex<Seen>,
    batcher: OnceLock<mpsc::UnboundedSender<Job>>,
}

#[derive(Default)]
struct Seen {
    recent: HashMap<[u8; 16], Millis>,
    older: HashMap<[u8; 16], Millis>,
}

fn fingerprint(key_id: &str, nonce: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(key_id.as_bytes());
    h.update([0]);
    h.update(nonce.as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

impl NonceBook {
    /// Claims the nonce in memory: false when this instance saw it already (unexpired).
    fn claim(&self, id: [u8; 16], expires_at: Millis, now: Millis) -> bool {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let seen = s
            .recent
            .get(&id)
            .or_else(|| s.older.get(&id))
            .is_some_and(|until| *until >= now);
        if seen {
            return false;
        }
        if s.recent.len() >= IN_MEMORY / 2 {
            s.older = std::mem::take(&mut s.recent);
        }
        s.recent.insert(id, expires_at);
        true
    }

    /// Remembers nonces loaded from the store at start.
    fn preload(&self, rows: impl IntoIterator<Item = ([u8; 16], Millis)>) {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (id, until) in rows {
            if s.recent.len() >= IN_MEMORY / 2 {
                break;
            }
            s.recent.insert(id, until);
        }
    }

    /// Forgets a claim whose nonce could not be stored (so a retry may use it).
    fn unclaim(&self, id: &[u8; 16]) {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.recent.remove(id);
        s.older.remove(id);
    }
}

impl Store {
    /// Remembers a signature nonce for `key_id` until `expires_at`. False when it was already
    /// used — by this instance, another one, or before a restart. Returns once it is stored.
    pub async fn remember_nonce(
        &self,
        key_id: &str,
        nonce: &str,
        expires_at: Millis,
    ) -> StoreResult<bool> {
        let id = fingerprint(key_id, nonce);
        if !self.nonces.claim(id, expires_at, crate::util::now_ms()) {
            return Ok(false);
        }
        let (reply, answer) = oneshot::channel();
        let sent = self.nonce_batcher().send(Job::Store(Pending {
            key_id: key_id.to_string(),
            nonce: nonce.to_string(),
            expires_at,
            reply: Some(reply),
        }));
        let outcome = match sent {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err(Arc::from("the nonce writer stopped"))),
            Err(_) => Err(Arc::from("the nonce writer stopped")),
        };
        match outcome {
            Ok(stored) => Ok(stored),
            Err(e) => {
                self.nonces.unclaim(&id);
                Err(StoreError::GroupCommit(e.to_string()))
            }
        }
    }

    /// [`remember_nonce`](Self::remember_nonce) for a request that changes nothing: on SQLite
    /// it returns once the nonce is claimed in memory (this instance is the only one, and it
    /// loaded the stored nonces at start), and the nonce is stored without waiting; on
    /// PostgreSQL, where other instances share the table, it waits like any other request.
    pub async fn remember_read_nonce(
        &self,
        key_id: &str,
        nonce: &str,
        expires_at: Millis,
    ) -> StoreResult<bool> {
        if self.backend != super::Backend::Sqlite {
            return self.remember_nonce(key_id, nonce, expires_at).await;
        }
        let id = fingerprint(key_id, nonce);
        if !self.nonces.claim(id, expires_at, crate::util::now_ms()) {
            return Ok(false);
        }
        self.nonce_batcher()
            .send(Job::Store(Pending {
                key_id: key_id.to_string(),
                nonce: nonce.to_string(),
                expires_at,
                reply: None,
            }))
            .map_err(|_| StoreError::GroupCommit("the nonce writer stopped".into()))?;
        Ok(true)
    }

    /// Loads the unexpired stored nonces into memory (SQLite, at start), newest first.
    pub(super) async fn load_nonces(&self) -> StoreResult<usize> {
        let rows = sqlx::query(
            "SELECT key_id, nonce, expires_at FROM agent_nonces WHERE expires_at >= $1 \
             ORDER BY expires_at DESC LIMIT $2",
        )
        .bind(crate::util::now_ms())
        .bind((IN_MEMORY / 2) as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut loaded = Vec::with_capacity(rows.len());
        for r in &rows {
            let until: i64 = r.try_get("expires_at")?;
            loaded.push((
                fingerprint(&get_str(r, "key_id")?, &get_str(r, "nonce")?),
                until,
            ));
        }
        let n = loaded.len();
        self.nonces.preload(loaded);
        Ok(n)
    }

    /// Waits until every nonce queued so far is stored (closing the store).
    pub(super) async fn flush_nonces(&self) {
        let Some(batcher) = self.nonces.batcher.get() else {
            return;
        };
        let (done, flushed) = oneshot::channel();
        if batcher.send(Job::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    fn nonce_batcher(&self) -> &mpsc::UnboundedSender<Job> {
        self.nonces.batcher.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_nonces(self.clone(), rx));
            tx
        })
    }

    /// Forgets nonces whose signatures can no longer be fresh.
    pub async fn purge_nonces(&self, now: Millis) -> StoreResult<u64> {
        let done = self
            .write_execute(sqlx::query("DELETE FROM agent_nonces WHERE expires_at < $1").bind(now))
            .await?;
        Ok(done.rows_affected())
    }

    /// Stores a batch of nonces; the ones that were new.
    async fn store_nonces(&self, batch: &[Pending]) -> StoreResult<Vec<bool>> {
        let mut stored: HashMap<(&str, &str), bool> = HashMap::new();
        let mut tx = self.begin_write().await?;
        for chunk in batch.chunks(PER_BATCH) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${}, ${})", i * 3 + 1, i * 3 + 2, i * 3 + 3))
                .collect();
            let sql = format!(
                "INSERT INTO agent_nonces (key_id, nonce, expires_at) VALUES {} \
                 ON CONFLICT (key_id, nonce) DO NOTHING RETURNING key_id, nonce",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                q = q
                    .bind(p.key_id.as_str())
                    .bind(p.nonce.as_str())
                    .bind(p.expires_at);
            }
            let rows = q.fetch_all(&mut *tx).await?;
            let mut new: Vec<(String, String)> = Vec::with_capacity(rows.len());
            for r in &rows {
                new.push((get_str(r, "key_id")?, get_str(r, "nonce")?));
            }
            for p in chunk {
                let is_new = new.iter().any(|(k, n)| *k == p.key_id && *n == p.nonce);
                stored.insert((p.key_id.as_str(), p.nonce.as_str()), is_new);
            }
        }
        tx.commit().await?;
        Ok(batch
            .iter()
            .map(|p| stored[&(p.key_id.as_str(), p.nonce.as_str())])
            .collect())
    }
}

/// The batch writer: takes whatever nonces are waiting, stores them together, answers each.
async fn write_nonces(store: Store, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut purged = tokio::time::Instant::now();
    let mut jobs: Vec<Job> = Vec::new();
    let mut batch: Vec<Pending> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while rx.recv_many(&mut jobs, PER_BATCH * 4).await > 0 {
        for job in jobs.drain(..) {
            match job {
                Job::Store(p) => batch.push(p),
                Job::Flush(done) => flushes.push(done),
            }
        }
        if !batch.is_empty() {
            let outcome = store.store_nonces(&batch).await;
            match outcome {
                Ok(stored) => {
                    for (p, new) in batch.drain(..).zip(stored) {
                        if let Some(reply) = p.reply {
                            let _ = reply.send(Ok(new));
                        }
                    }
                }
                Err(e) => {
                    let e: Arc<str> = Arc::from(e.to_string());
                    for p in batch.drain(..) {
                        match p.reply {
                            Some(reply) => {
                                let _ = reply.send(Err(e.clone()));
                            }
                            None => tracing::error!(error = %e, key_id = %p.key_id,
                                "could not store a read's signature nonce"),
                        }
                    }
                }
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        if purged.elapsed() >= PURGE_EVERY {
            purged = tokio::time::Instant::now();
            if let Err(e) = store.purge_nonces(crate::util::now_ms()).await {
                tracing::warn!(error = %e, "cannot delete stale signature nonces");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    /// A read's nonce on SQLite is not waited for, yet survives a restart: closing the store
    /// writes what is queued, and opening it loads the stored nonces back into memory.
    #[tokio::test]
    async fn a_reads_nonce_survives_a_restart_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let until = crate::util::now_ms() + 60_000;
        let store = Store::open(dir.path(), None, 2).await.unwrap();
        assert!(
            store
                .remember_read_nonce("k1", "n-read", until)
                .await
                .unwrap()
        );
        assert!(
            !store
                .remember_read_nonce("k1", "n-read", until)
                .await
                .unwrap()
        );
        assert!(store.remember_nonce("k1", "n-write", until).await.unwrap());
        // Closed at once: the read's nonce may still be queued.
        store.close().await;

        let store = Store::open(dir.path(), None, 2).await.unwrap();
        // Refused from memory (loaded at start), for reads and writes alike.
        assert!(
            !store
                .remember_read_nonce("k1", "n-read", until)
                .await
                .unwrap()
        );
        assert!(
            !store
                .remember_read_nonce("k1", "n-write", until)
                .await
                .unwrap()
        );
        assert!(!store.remember_nonce("k1", "n-read", until).await.unwrap());
        assert!(
            store
                .remember_read_nonce("k2", "n-read", until)
                .await
                .unwrap()
        );
        // Expired nonces are not loaded.
        store.close().await;
        let store = Store::open(dir.path(), None, 2).await.unwrap();
        let loaded = store.load_nonces().await.unwrap();
        assert_eq!(loaded, 3, "n-read and n-write of k1, n-read of k2");
        store.close().await;
    }
}
