//! The search change feed's rows (`search_changes`): every write that changes what the search
//! index holds records which documents changed, in the same transaction, so that each
//! instance's index can follow the database (see `crate::search::feed`). A row names a
//! document by the index's key (an order number, a product id); readers fetch the current row
//! and upsert it, or delete the document when the row is gone.
//!
//! Sequence numbers are read in commit order: on PostgreSQL a writer takes a transaction-scoped
//! advisory lock just before it inserts its rows (at the end of its transaction), so no
//! transaction that got a smaller number can commit after one with a larger number; SQLite
//! writers are serialized anyway. On PostgreSQL the transaction also notifies
//! [`SEARCH_CHANNEL`] at commit, so followers on other instances read at once.

use sqlx::AnyConnection;

use super::cluster::{SEARCH_CHANNEL, lock_key, notify_in};
use super::{Backend, Store, StoreResult, get_i64, get_str};
use crate::util::now_ms;

/// An import writing more records than this records one [`ChangeKind::All`] row instead of a
/// row per record.
pub const BULK_CHANGES: usize = 1_000;
/// Rows kept at least this long (then pruned; the newest row always stays).
pub const RETAIN_MS: i64 = 24 * 3_600_000;
/// Rows inserted per statement.
const ROWS_PER_INSERT: usize = 200;
/// The advisory lock that orders writers of the feed on PostgreSQL.
const FEED_LOCK: &str = "search_changes";

/// What a change row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// Key: the order number.
    Order,
    /// Key: the product id.
    Product,
    /// Everything may have changed (a bulk import): re-read it all.
    All,
    /// Key: an agent key id (registered or revoked). Not in the index: for read models.
    AgentKey,
    /// Key: an agent id (revoked with every key). Not in the index.
    Agent,
    /// Key: a capability token's revocation id (revoked). Not in the index.
    Token,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Order => "order",
            ChangeKind::Product => "product",
            ChangeKind::All => "all",
            ChangeKind::AgentKey => "key",
            ChangeKind::Agent => "agent",
            ChangeKind::Token => "token",
        }
    }

    fn parse(s: &str) -> Option<ChangeKind> {
        Some(match s {
            "order" => ChangeKind::Order,
            "product" => ChangeKind::Product,
            "all" => ChangeKind::All,
            "key" => ChangeKind::AgentKey,
            "agent" => ChangeKind::Agent,
            "token" => ChangeKind::Token,
            _ => return None,
        })
    }
}

/// One row of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchChange {
    pub seq: i64,
    pub kind: ChangeKind,
    pub key: String,
    /// The write removed the document (the row is gone, or the order was renumbered).
    pub deleted: bool,
}

/// A change a write is about to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// The order with this number was written.
    Order(String),
    /// No order has this number any more (deleted, or renumbered).
    OrderGone(String),
    Product(String),
    ProductGone(String),
    /// A customer's name or emails changed: every order of theirs shows them.
    CustomerOrders(String),
    /// Too much changed to list (a bulk import).
    All,
    /// An agent key was registered or revoked.
    AgentKey(String),
    /// An agent (and every key of it) was revoked.
    Agent(String),
    /// A capability token's revocation id was revoked.
    TokenRevoked(String),
}

/// Records `changes` in the caller's transaction. Call it last, just before commit: on
/// PostgreSQL it takes the feed's ordering lock, held until the transaction ends.
pub(crate) async fn record(
    conn: &mut AnyConnection,
    backend: Backend,
    changes: &[Change],
) -> StoreResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    if backend == Backend::Postgres {
        sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock($1)")
            .bind(lock_key(FEED_LOCK))
            .execute(&mut *conn)
            .await?;
    }
    let now = now_ms();
    let mut rows: Vec<(ChangeKind, &str, bool)> = Vec::new();
    for change in changes {
        match change {
            Change::Order(n) => rows.push((ChangeKind::Order, n.as_str(), false)),
            Change::OrderGone(n) => rows.push((ChangeKind::Order, n.as_str(), true)),
            Change::Product(id) => rows.push((ChangeKind::Product, id.as_str(), false)),
            Change::ProductGone(id) => rows.push((ChangeKind::Product, id.as_str(), true)),
            Change::All => rows.push((ChangeKind::All, "", false)),
            Change::AgentKey(k) => rows.push((ChangeKind::AgentKey, k.as_str(), false)),
            Change::Agent(a) => rows.push((ChangeKind::Agent, a.as_str(), false)),
            Change::TokenRevoked(r) => rows.push((ChangeKind::Token, r.as_str(), false)),
            Change::CustomerOrders(id) => {
                sqlx::query(
                    "INSERT INTO search_changes (kind, key, deleted, created_at) \
                     SELECT 'order', number, 0, $1 FROM orders WHERE customer_id = $2",
                )
                .bind(now)
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let b = i * 3;
                format!("(${}, ${}, ${}, $1)", b + 2, b + 3, b + 4)
            })
            .collect();
        let sql = format!(
            "INSERT INTO search_changes (kind, key, deleted, created_at) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for (kind, key, deleted) in chunk {
            q = q.bind(kind.as_str()).bind(*key).bind(i64::from(*deleted));
        }
        q.execute(&mut *conn).await?;
    }
    notify_in(conn, backend, SEARCH_CHANNEL, "").await
}

impl Store {
    /// Records `changes` in `tx`, commits it, and has this instance's read models forget what
    /// the changes made stale — all before returning, so the next read sees the write.
    pub(crate) async fn commit_changes(
        &self,
        mut tx: super::WriteTx,
        changes: &[Change],
    ) -> StoreResult<()> {
        record(&mut tx, self.backend, changes).await?;
        tx.commit().await?;
        self.cache.forget(changes);
        Ok(())
    }

    /// Has the read models forget what rows of the feed name (written by any instance).
    pub fn forget_changed(&self, changes: &[SearchChange]) {
        for c in changes {
            self.cache.forget_row(c.kind, &c.key);
        }
    }

    /// Has the read models forget everything (after the feed was pruned past a follower).
    pub fn forget_all_read(&self) {
        self.cache.clear();
    }

    /// Feed rows after `after_seq`, oldest first, at most `limit`.
    pub async fn search_changes_after(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<SearchChange>> {
        let rows = sqlx::query(
            "SELECT seq, kind, key, deleted FROM search_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let kind = get_str(r, "kind")?;
            out.push(SearchChange {
                seq: get_i64(r, "seq")?,
                kind: ChangeKind::parse(&kind).ok_or_else(|| super::StoreError::Corrupt {
                    what: "search_changes.kind".into(),
                    message: format!("unknown kind {kind:?}"),
                })?,
                key: get_str(r, "key")?,
                deleted: get_i64(r, "deleted")? != 0,
            });
        }
        Ok(out)
    }

    /// The oldest and newest sequence numbers kept (None, None when nothing was recorded).
    pub async fn search_changes_bounds(&self) -> StoreResult<(Option<i64>, Option<i64>)> {
        let row = sqlx::query("SELECT MIN(seq) AS oldest, MAX(seq) AS newest FROM search_changes")
            .fetch_one(&self.pool)
            .await?;
        Ok((
            super::get_opt_i64(&row, "oldest")?,
            super::get_opt_i64(&row, "newest")?,
        ))
    }

    /// Deletes rows recorded before `before_ms`, except the newest row (so sequence numbers
    /// keep growing and followers can tell how far back the feed reaches). Returns how many.
    pub async fn prune_search_changes(&self, before_ms: i64) -> StoreResult<u64> {
        let done = self
            .write_execute(
                sqlx::query(
                    "DELETE FROM search_changes WHERE created_at < $1 \
             AND seq < (SELECT MAX(seq) FROM search_changes)",
                )
                .bind(before_ms),
            )
            .await?;
        Ok(done.rows_affected())
    }
}
