//! The index follows the database. Writes that change what the index holds record rows in the
//! store's search change feed (`search_changes`, in the writing transaction); each instance runs
//! one follower that reads the rows after the position its index reflects, fetches the current
//! orders and products they name and upserts them through the writer task (or deletes the
//! documents whose rows are gone), then records the new position in the same commit. So a
//! write made through any instance is searchable on every instance within a second, deletes
//! included, and an instance that was down catches up from where its index stopped.
//!
//! The follower reads on a short interval and, on PostgreSQL, at once when the writing
//! transaction's notification arrives. When more changed than is worth fetching one by one
//! (a bulk import), or the feed was pruned past the index's position, it replaces every order
//! and product document in one commit. At start, an index with no position (new, rebuilt
//! schema, or from before the feed) or a stale one is rebuilt from the database.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DocKind, IndexDoc, IndexWriterHandle, SearchIndex, load_policy_dir};
use crate::store::cluster::{Listener, Notice, SEARCH_CHANNEL};
use crate::store::{Backend, ChangeKind, SearchChange, Store, StoreResult};
use crate::util::now_ms;

/// Rows read per pass; a pass that finds this many (or an `all` row) replaces everything.
const BATCH: i64 = 500;
/// How often the follower reads without being told (PostgreSQL also notifies).
const POLL_POSTGRES: Duration = Duration::from_secs(1);
/// SQLite has no notifications: the follower reads more often.
const POLL_SQLITE: Duration = Duration::from_millis(200);
/// Longest wait after failed reads.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often old feed rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Every document the index holds: orders (with their customer's name and emails), products,
/// and the brand's policy sections.
pub async fn documents(store: &Store, brand_dir: &Path) -> anyhow::Result<Vec<IndexDoc>> {
    let mut docs = commerce_documents(store).await?;
    for chunk in load_policy_dir(&brand_dir.join("policies"))
        .context("cannot read the brand's policy texts")?
    {
        docs.push(IndexDoc::Policy(chunk));
    }
    Ok(docs)
}

/// Every order and product document, from the database.
async fn commerce_documents(store: &Store) -> StoreResult<Vec<IndexDoc>> {
    let customers = store.all_customers().await?;
    let by_id: HashMap<&str, &crate::commerce::Customer> =
        customers.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut docs = Vec::new();
    for order in store.all_orders().await? {
        let customer = order.customer_id.as_deref().and_then(|id| by_id.get(id));
        docs.push(IndexDoc::Order {
            customer_name: customer.map(|c| c.full_name()),
            customer_emails: customer.map(|c| c.emails.clone()).unwrap_or_default(),
            order,
        });
    }
    for product in store.all_products().await? {
        docs.push(IndexDoc::Product(product));
    }
    Ok(docs)
}

/// Rebuilds the whole index from the database (no writer task may be running on it),
/// recording the feed position read before the documents: changes after it are applied again
/// by the follower, which is harmless.
pub async fn rebuild(
    store: &Store,
    index: &SearchIndex,
    brand_dir: &Path,
    progress: impl FnMut(u64, u64) + Send + 'static,
) -> anyhow::Result<u64> {
    let (_, newest) = store.search_changes_bounds().await?;
    let docs = documents(store, brand_dir).await?;
    let total = docs.len() as u64;
    let index = index.clone();
    let mut progress = progress;
    let n = tokio::task::spawn_blocking(move || {
        index.rebuild_at(docs.into_iter(), Some(newest.unwrap_or(0)), |n| {
            progress(n, total)
        })
    })
    .await??;
    Ok(n)
}

/// Whether the index must be rebuilt before the follower can take over: it is new or was
/// wiped, it has no feed position, the feed was pruned past its position, or its position is
/// ahead of the feed (it was built from another database).
pub async fn must_rebuild(store: &Store, index: &SearchIndex) -> StoreResult<bool> {
    if index.needs_rebuild() {
        return Ok(true);
    }
    let Some(position) = index.feed_position() else {
        return Ok(true);
    };
    let (oldest, newest) = store.search_changes_bounds().await?;
    Ok(position > newest.unwrap_or(0) || oldest.is_some_and(|o| o > position + 1))
}

/// Starts the follower for this instance's index; it ends on `stop`. `listener` (PostgreSQL)
/// wakes it when another transaction recorded changes.
pub fn spawn(
    store: &Store,
    index: &SearchIndex,
    indexer: &IndexWriterHandle,
    listener: Option<&Listener>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let follower = Follower {
        store: store.clone(),
        indexer: indexer.clone(),
        position: index.feed_position(),
    };
    let notices = listener.map(Listener::subscribe);
    tokio::spawn(follower.run(notices, stop))
}

struct Follower {
    store: Store,
    indexer: IndexWriterHandle,
    /// The last row applied (None: nothing known yet; the first pass replaces everything).
    position: Option<i64>,
}

impl Follower {
    async fn run(
        mut self,
        mut notices: Option<broadcast::Receiver<Notice>>,
        stop: CancellationToken,
    ) {
        let poll = match self.store.backend() {
            Backend::Postgres => POLL_POSTGRES,
            Backend::Sqlite => POLL_SQLITE,
        };
        let mut wait = poll;
        let mut pruned_at = Instant::now();
        loop {
            match self.catch_up().await {
                Ok(()) => wait = poll,
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "the search index could not follow the database; retrying"
                    );
                    wait = (wait * 2).clamp(poll, MAX_BACKOFF);
                }
            }
            if pruned_at.elapsed() >= PRUNE_EVERY {
                pruned_at = Instant::now();
                match self
                    .store
                    .prune_search_changes(now_ms() - crate::store::SEARCH_CHANGES_RETAIN_MS)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "pruned old search changes"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune old search changes"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                () = told(&mut notices) => {}
            }
        }
    }

    /// Applies every row after the position, in passes of at most [`BATCH`].
    async fn catch_up(&mut self) -> anyhow::Result<()> {
        loop {
            let (oldest, newest) = self.store.search_changes_bounds().await?;
            let Some(newest) = newest else {
                return Ok(());
            };
            let position = match self.position {
                Some(p) if p >= newest => return Ok(()),
                Some(p) if oldest.is_none_or(|o| o <= p + 1) => p,
                // Nothing known yet, or rows after the position were pruned.
                _ => return self.replace_all(newest).await,
            };
            let changes = self.store.search_changes_after(position, BATCH).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                return Ok(());
            };
            if changes.len() as i64 >= BATCH || changes.iter().any(|c| c.kind == ChangeKind::All) {
                return self.replace_all(newest.max(last)).await;
            }
            self.apply(&changes).await?;
            self.indexer.record_position(last).await?;
            self.position = Some(last);
            tracing::debug!(
                changes = changes.len(),
                position = last,
                "search index applied changes"
            );
        }
    }

    /// Upserts the current version of each document the rows name, or deletes it when its
    /// row is gone.
    async fn apply(&self, changes: &[SearchChange]) -> anyhow::Result<()> {
        // The read models first: what is read below must be the database's current rows.
        self.store.forget_changed(changes);
        let mut seen = HashSet::new();
        for c in changes {
            if !seen.insert((c.kind, c.key.as_str())) {
                continue;
            }
            match c.kind {
                ChangeKind::Order => match self.store.get_order_by_number(&c.key).await? {
                    Some(order) if order.number == c.key => {
                        let customer = match &order.customer_id {
                            Some(id) => self.store.get_customer(id).await?,
                            None => None,
                        };
                        self.indexer
                            .upsert(IndexDoc::Order {
                                customer_name: customer.as_ref().map(|cu| cu.full_name()),
                                customer_emails: customer.map(|cu| cu.emails).unwrap_or_default(),
                                order,
                            })
                            .await?;
                    }
                    _ => self.indexer.delete(DocKind::Order, &c.key).await?,
                },
                ChangeKind::Product => match self.store.get_product(&c.key).await? {
                    Some(product) => self.indexer.upsert(IndexDoc::Product(product)).await?,
                    None => self.indexer.delete(DocKind::Product, &c.key).await?,
                },
                ChangeKind::All | ChangeKind::AgentKey | ChangeKind::Agent | ChangeKind::Token => {}
            }
        }
        Ok(())
    }

    /// Replaces every order and product document with the database's, as of the feed's row
    /// `newest` (read before the documents).
    async fn replace_all(&mut self, newest: i64) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        self.store.forget_all_read();
        let docs = commerce_documents(&self.store).await?;
        let n = docs.len();
        self.indexer
            .replace(&[DocKind::Order, DocKind::Product], docs)
            .await?;
        self.indexer.record_position(newest).await?;
        self.position = Some(newest);
        tracing::info!(
            documents = n,
            took_ms = started.elapsed().as_millis() as u64,
            "search index re-read every order and product"
        );
        Ok(())
    }
}

/// Completes when the listener says the feed has new rows, or that notifications may have
/// been missed; never without a listener (SQLite).
async fn told(notices: &mut Option<broadcast::Receiver<Notice>>) {
    let Some(rx) = notices else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(Notice::Notification { channel, .. }) if channel == SEARCH_CHANNEL => return,
            Ok(Notice::Notification { .. }) => continue,
            Ok(Notice::Resumed { .. }) | Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => {
                *notices = None;
                return std::future::pending().await;
            }
        }
    }
}
