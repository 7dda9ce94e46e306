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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

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
    reply: Reply,
}

/// The nonces one store has seen. Shared by the store's clones.
#[derive(Default)]
pub(crate) struct NonceBook {
    seen: Mutex<Seen>,
    batcher: OnceLock<mpsc::UnboundedSender<Pending>>,
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
        let sent = self.nonce_batcher().send(Pending {
            key_id: key_id.to_string(),
            nonce: nonce.to_string(),
            expires_at,
            reply,
        });
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

    fn nonce_batcher(&self) -> &mpsc::UnboundedSender<Pending> {
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
async fn write_nonces(store: Store, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut purged = tokio::time::Instant::now();
    let mut batch: Vec<Pending> = Vec::new();
    while rx.recv_many(&mut batch, PER_BATCH * 4).await > 0 {
        let outcome = store.store_nonces(&batch).await;
        match outcome {
            Ok(stored) => {
                for (p, new) in batch.drain(..).zip(stored) {
                    let _ = p.reply.send(Ok(new));
                }
            }
            Err(e) => {
                let e: Arc<str> = Arc::from(e.to_string());
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
        if purged.elapsed() >= PURGE_EVERY {
            purged = tokio::time::Instant::now();
            if let Err(e) = store.purge_nonces(crate::util::now_ms()).await {
                tracing::warn!(error = %e, "cannot delete stale signature nonces");
            }
        }
    }
}
