//! Read models: what the hot reads ask for again and again, kept in memory and exact under
//! writes — agents' keys, token revocations, orders recently read and the catalogue's products
//! (with their variants and availability).
//!
//! A read that misses loads from the database and keeps the answer (found or not). Every write
//! that changes what a model holds names it in the change list it records in the store's change
//! feed ([`super::changes`]); once the write has committed, this instance forgets those entries
//! before the write returns, so a read that follows a write never sees the old value. Other
//! instances (and other processes on the same SQLite file, such as the CLI) learn of the write
//! from the feed, whose follower forgets the named entries before it re-reads them.
//!
//! A read racing a write cannot put the old value back: each model has an epoch that every
//! forgetting bumps, and a loaded value is kept only when the epoch it was loaded under is
//! still current.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use super::KeyLookup;
use super::changes::{Change, ChangeKind};
use super::commerce::order_number_key;
use crate::commerce::{Order, Product};

/// Entries kept per model before the older half is dropped.
const ORDERS: usize = 20_000;
const PRODUCTS: usize = 20_000;
const KEYS: usize = 10_000;
const REVOCATIONS: usize = 50_000;

/// One model: a bounded map with an epoch.
struct Model<K, V> {
    state: Mutex<State<K, V>>,
    capacity: usize,
}

struct State<K, V> {
    epoch: u64,
    /// Recent entries; when full, they become `older` and the previous `older` is dropped.
    recent: HashMap<K, V>,
    older: HashMap<K, V>,
}

impl<K: Eq + Hash + Clone, V: Clone> Model<K, V> {
    fn new(capacity: usize) -> Self {
        Model {
            state: Mutex::new(State {
                epoch: 0,
                recent: HashMap::new(),
                older: HashMap::new(),
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K, V>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached value, or the epoch to load one under.
    fn get(&self, key: &K) -> Result<V, u64> {
        let mut s = self.lock();
        if let Some(v) = s.recent.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = s.older.remove(key) {
            s.insert(key.clone(), v.clone(), self.capacity);
            return Ok(v);
        }
        Err(s.epoch)
    }

    /// Keeps a loaded value, unless something was forgotten since `epoch`.
    fn put(&self, epoch: u64, key: K, value: V) {
        let mut s = self.lock();
        if s.epoch == epoch {
            s.insert(key, value, self.capacity);
        }
    }

    /// Forgets the entries `stale` picks.
    fn forget(&self, stale: impl Fn(&K, &V) -> bool) {
        let mut s = self.lock();
        s.epoch += 1;
        s.recent.retain(|k, v| !stale(k, v));
        s.older.retain(|k, v| !stale(k, v));
    }

    fn forget_key(&self, key: &K) {
        let mut s = self.lock();
        s.epoch += 1;
        s.recent.remove(key);
        s.older.remove(key);
    }

    fn clear(&self) {
        let mut s = self.lock();
        s.epoch += 1;
        s.recent.clear();
        s.older.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let s = self.lock();
        s.recent.len() + s.older.len()
    }
}

impl<K: Eq + Hash, V> State<K, V> {
    fn insert(&mut self, key: K, value: V, capacity: usize) {
        if self.recent.len() >= capacity / 2 {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(key, value);
    }
}

/// How an order was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum OrderKey {
    Id(String),
    /// The number's lookup key ([`order_number_key`]).
    Number(String),
}

/// The store's read models. One per [`super::Store`] (shared by its clones).
pub(crate) struct ReadModels {
    /// Found orders with their number's lookup key (for forgetting by number), or None.
    orders: Model<OrderKey, Option<Arc<(String, Order)>>>,
    products: Model<String, Option<Product>>,
    keys: Model<String, Option<KeyLookup>>,
    /// Revocation id → revoked.
    revocations: Model<String, bool>,
}

impl Default for ReadModels {
    fn default() -> Self {
        ReadModels {
            orders: Model::new(ORDERS),
            products: Model::new(PRODUCTS),
            keys: Model::new(KEYS),
            revocations: Model::new(REVOCATIONS),
        }
    }
}

impl ReadModels {
    pub(crate) fn order(&self, key: &OrderKey) -> Result<Option<Order>, u64> {
        self.orders.get(key).map(|o| o.map(|entry| entry.1.clone()))
    }

    pub(crate) fn keep_order(&self, epoch: u64, key: OrderKey, order: Option<Order>) {
        let entry = order.map(|o| Arc::new((order_number_key(&o.number), o)));
        self.orders.put(epoch, key, entry);
    }

    pub(crate) fn product(&self, id: &str) -> Result<Option<Product>, u64> {
        self.products.get(&id.to_string())
    }

    pub(crate) fn keep_product(&self, epoch: u64, id: &str, product: Option<Product>) {
        self.products.put(epoch, id.to_string(), product);
    }

    pub(crate) fn key(&self, key_id: &str) -> Result<Option<KeyLookup>, u64> {
        self.keys.get(&key_id.to_string())
    }

    pub(crate) fn keep_key(&self, epoch: u64, key_id: &str, key: Option<KeyLookup>) {
        self.keys.put(epoch, key_id.to_string(), key);
    }

    pub(crate) fn revoked(&self, revocation_id: &str) -> Result<bool, u64> {
        self.revocations.get(&revocation_id.to_string())
    }

    pub(crate) fn keep_revoked(&self, epoch: u64, revocation_id: &str, revoked: bool) {
        self.revocations
            .put(epoch, revocation_id.to_string(), revoked);
    }

    /// Forgets what the committed `changes` made stale.
    pub(crate) fn forget(&self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::Order(n) | Change::OrderGone(n) => self.forget_row(ChangeKind::Order, n),
                Change::Product(id) | Change::ProductGone(id) => {
                    self.forget_row(ChangeKind::Product, id)
                }
                Change::CustomerOrders(id) => self.orders.forget(|_, o| match o {
                    Some(entry) => entry.1.customer_id.as_deref() == Some(id.as_str()),
                    None => true,
                }),
                Change::All => self.forget_row(ChangeKind::All, ""),
                Change::AgentKey(k) => self.forget_row(ChangeKind::AgentKey, k),
                Change::Agent(a) => self.forget_row(ChangeKind::Agent, a),
                Change::TokenRevoked(r) => self.forget_row(ChangeKind::Token, r),
            }
        }
    }

    /// Forgets what one row of the change feed names.
    pub(crate) fn forget_row(&self, kind: ChangeKind, key: &str) {
        match kind {
            ChangeKind::Order => {
                // The order with this number, and every "not found" (it may exist now).
                let number = order_number_key(key);
                self.orders.forget(|k, o| {
                    let same = match o {
                        Some(entry) => entry.0 == number,
                        None => true,
                    };
                    same || matches!(k, OrderKey::Number(n) if *n == number)
                });
            }
            ChangeKind::Product => self.products.forget_key(&key.to_string()),
            ChangeKind::All => {
                self.orders.clear();
                self.products.clear();
            }
            ChangeKind::AgentKey => self.keys.forget_key(&key.to_string()),
            ChangeKind::Agent => self.keys.forget(|_, k| match k {
                Some(k) => k.agent_id == key,
                None => false,
            }),
            ChangeKind::Token => self.revocations.forget_key(&key.to_string()),
        }
    }

    /// Forgets everything (the feed was pruned past this instance's position).
    pub(crate) fn clear(&self) {
        self.orders.clear();
        self.products.clear();
        self.keys.clear();
        self.revocations.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_loaded_before_a_forget_is_not_kept() {
        let m: Model<String, u32> = Model::new(10);
        let epoch = m.get(&"a".into()).unwrap_err();
        m.forget_key(&"a".into());
        m.put(epoch, "a".into(), 1);
        assert!(m.get(&"a".into()).is_err(), "the stale load was dropped");
        let epoch = m.get(&"a".into()).unwrap_err();
        m.put(epoch, "a".into(), 2);
        assert_eq!(m.get(&"a".into()), Ok(2));
    }

    #[test]
    fn the_model_stays_bounded_and_keeps_what_is_used() {
        let m: Model<u32, u32> = Model::new(10);
        for i in 0..100 {
            let e = m.get(&i).unwrap_err();
            m.put(e, i, i);
            // The first key is read all along, so it stays.
            assert_eq!(m.get(&0), Ok(0));
        }
        assert!(m.len() <= 10, "{}", m.len());
    }
}
