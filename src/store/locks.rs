//! The conversation lock: one turn at a time per conversation, so two messages of one
//! conversation are answered one after the other, each seeing the dialogue state the previous
//! one left. Held from before the turn reads the state until its reply is stored. This
//! process's locks live in a map of weak references (an entry goes when nobody holds or waits
//! for it). On PostgreSQL, where several instances may share the database, the holder also takes
//! a transaction-scoped advisory lock on the conversation (see [`super::cluster`]), so no two
//! instances run turns of one conversation at once; waiting in-process first keeps one instance's
//! waiters from each holding a database connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::{Store, StoreResult};

/// The in-process lock map, shared by every clone of a [`Store`].
#[derive(Default)]
pub(super) struct ConversationLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// PostgreSQL: the connections advisory locks are held on, apart from the pool queries use.
    /// A turn holds its lock's connection for the whole turn while its queries take others; from
    /// one pool, as many turns as connections would each hold one and wait for another forever.
    pub(super) shared: tokio::sync::OnceCell<sqlx::AnyPool>,
}

impl ConversationLocks {
    fn lock_for(&self, conversation_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(l) = map.get(conversation_id).and_then(Weak::upgrade) {
            return l;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(conversation_id.to_string(), Arc::downgrade(&l));
        l
    }
}

/// A held conversation lock; dropping it lets the next turn of the conversation run.
pub struct ConversationLock {
    // Field order is drop order: the database lock goes before the in-process one.
    _shared: Option<super::cluster::XactLock>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Store {
    /// Waits until no other turn of the conversation runs, then holds the conversation until
    /// the returned guard is dropped.
    pub async fn lock_conversation(&self, conversation_id: &str) -> StoreResult<ConversationLock> {
        let lock = self.locks.lock_for(conversation_id);
        let guard = lock.lock_owned().await;
        let shared = if self.is_shared() {
            Some(self.lock_conversation_pg(conversation_id).await?)
        } else {
            None
        };
        Ok(ConversationLock {
            _shared: shared,
            _guard: guard,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_holder_per_conversation_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), None, 2)
            .await
            .unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (store, inside, peak) = (store.clone(), inside.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let _held = store.lock_conversation("cnv_1").await.unwrap();
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        // Another conversation is not held up.
        let _other = store.lock_conversation("cnv_2").await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        assert!(store.locks.map.lock().unwrap().len() <= 2);
    }
}
