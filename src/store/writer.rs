//! Write transactions, and SQLite's single writer with group commit.
//!
//! Every write goes through [`Store::begin_write`] (or the one-statement helpers below), which
//! hands out a [`WriteTx`]. On PostgreSQL that is a pooled transaction. On SQLite, which allows
//! one writer at a time, it is a turn on the one connection this process writes with — the
//! connections of the pool only read (`PRAGMA query_only`), so writers never wait on SQLite's
//! lock with its sleep-and-retry busy handler; they queue here instead, first come first served.
//!
//! Group commit: the writer keeps one SQLite transaction open across the writes of several
//! callers. Each caller's writes run inside a savepoint of their own; `commit` releases it and
//! then either commits the whole group — when nobody else is waiting to write, the group holds
//! [`MAX_BATCH`] writes, or the group is [`MAX_WAIT`] old — or leaves that to the next writer in
//! line. Either way `commit` returns only once the group's COMMIT is done, with its outcome: no
//! caller is told its write is stored before it is. A caller whose writes fail (a constraint
//! violation, say) gets its own error and rolls back to its savepoint, leaving the others'
//! writes in the group untouched; a transaction dropped without `commit` is rolled back the same
//! way. A failed COMMIT fails every caller of the group.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::AnyConnection;
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::{Backend, Store, StoreError, StoreResult};

/// Most writes committed together.
pub const MAX_BATCH: usize = 64;
/// Longest a group stays open while others queue behind it.
pub const MAX_WAIT: Duration = Duration::from_millis(2);

/// A group's outcome: None while open, then Ok or the COMMIT's error.
type Outcome = Option<Result<(), Arc<str>>>;

/// SQLite's one writing connection.
pub(crate) struct Writer {
    conn: Arc<Mutex<WriterConn>>,
    /// Callers waiting for `conn`.
    queued: AtomicUsize,
    /// Groups committed, and the writes they held.
    groups: AtomicU64,
    writes: AtomicU64,
}

struct WriterConn {
    /// None once the store is closed.
    conn: Option<AnyConnection>,
    /// The open group, if any.
    group: Option<Group>,
    /// What a dropped [`WriteTx`] left to roll back.
    dirty: Option<Undo>,
}

/// How a write's changes are undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// It was the group's first: the whole transaction holds nothing else.
    Transaction,
    /// Others' writes precede it: back to its savepoint.
    Savepoint,
}

struct Group {
    opened: Instant,
    members: usize,
    done: watch::Sender<Outcome>,
}

impl Writer {
    pub(crate) fn new(conn: AnyConnection) -> Writer {
        Writer {
            conn: Arc::new(Mutex::new(WriterConn {
                conn: Some(conn),
                group: None,
                dirty: None,
            })),
            queued: AtomicUsize::new(0),
            groups: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    async fn lock(&self) -> OwnedMutexGuard<WriterConn> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let guard = self.conn.clone().lock_owned().await;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// A turn on the connection, inside a savepoint of the open group (opened if none is).
    /// Runs as a task of its own, so a caller that gives up half-way (a request whose client
    /// went away) cannot leave the connection in a state nobody knows about.
    async fn begin(self: &Arc<Self>) -> StoreResult<WriteTx> {
        let me = self.clone();
        tokio::spawn(async move { me.begin_now().await })
            .await
            .map_err(|e| StoreError::GroupCommit(format!("the write could not start: {e}")))?
    }

    async fn begin_now(self: Arc<Self>) -> StoreResult<WriteTx> {
        let mut guard = self.lock().await;
        guard.clean_up().await;
        if guard.conn.is_none() {
            return Err(StoreError::GroupCommit("the store is closed".into()));
        }
        // The group's first write needs no savepoint: undoing it undoes the transaction.
        let undo = if guard.group.is_none() {
            sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(guard.conn())
                .await?;
            guard.group = Some(Group {
                opened: Instant::now(),
                members: 0,
                done: watch::channel(None).0,
            });
            Undo::Transaction
        } else {
            if let Err(e) = sqlx::raw_sql("SAVEPOINT w").execute(guard.conn()).await {
                guard.fail_group(&e.to_string()).await;
                return Err(e.into());
            }
            Undo::Savepoint
        };
        Ok(WriteTx {
            inner: Some(Inner::Sqlite {
                guard,
                writer: self,
                undo,
            }),
        })
    }

    /// Commits the open group now, if there is one (after a dropped write), unless another
    /// writer is in line to do it.
    pub(crate) async fn flush(&self) {
        let mut guard = self.lock().await;
        guard.clean_up().await;
        if self.queued.load(Ordering::SeqCst) == 0 {
            let _ = guard.commit_group().await;
        }
    }

    /// Commits the open group now, whoever waits behind.
    async fn commit_open(&self) {
        let mut guard = self.lock().await;
        guard.clean_up().await;
        let _ = guard.commit_group().await;
    }

    /// Commits the open group and closes the connection: later writes fail.
    pub(crate) async fn close(&self) {
        let mut guard = self.lock().await;
        guard.clean_up().await;
        let _ = guard.commit_group().await;
        if let Some(mut conn) = guard.conn.take() {
            // Leaves the database file complete on its own.
            let _ = sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut conn)
                .await;
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

impl WriterConn {
    fn conn(&mut self) -> &mut AnyConnection {
        self.conn.as_mut().expect("the writer's connection is open")
    }

    /// Rolls back what a dropped transaction left.
    async fn clean_up(&mut self) {
        let Some(undo) = self.dirty.take() else {
            return;
        };
        if self.conn.is_none() {
            return;
        }
        match undo {
            Undo::Transaction => self.fail_group("rolled back").await,
            Undo::Savepoint => {
                if let Err(e) = sqlx::raw_sql("ROLLBACK TO w; RELEASE w")
                    .execute(self.conn())
                    .await
                {
                    // The savepoint is gone: SQLite rolled the whole transaction back.
                    self.fail_group(&e.to_string()).await;
                }
            }
        }
    }

    /// Commits the group and tells its members.
    async fn commit_group(&mut self) -> Result<(), Arc<str>> {
        let Some(group) = self.group.take() else {
            return Ok(());
        };
        let outcome = match sqlx::raw_sql("COMMIT").execute(self.conn()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(self.conn()).await;
                Err(Arc::<str>::from(e.to_string()))
            }
        };
        group.done.send_replace(Some(outcome.clone()));
        outcome
    }

    /// The group's transaction is lost: every member fails.
    async fn fail_group(&mut self, error: &str) {
        if let Some(conn) = self.conn.as_mut() {
            let _ = sqlx::raw_sql("ROLLBACK").execute(conn).await;
        }
        if let Some(group) = self.group.take() {
            group.done.send_replace(Some(Err(Arc::from(format!(
                "the write was lost with its group's transaction: {error}"
            )))));
        }
    }
}

/// A write transaction: deref it to a connection (`&mut *tx`) to run statements, then
/// [`commit`](WriteTx::commit). Dropped without commit, its writes are rolled back.
pub struct WriteTx {
    /// Some until committed (or dropped).
    inner: Option<Inner>,
}

enum Inner {
    Pooled(sqlx::Transaction<'static, sqlx::Any>),
    Sqlite {
        guard: OwnedMutexGuard<WriterConn>,
        writer: Arc<Writer>,
        undo: Undo,
    },
}

impl WriteTx {
    /// Makes the writes durable. Returns once they are committed (with their group, on
    /// SQLite), or with the error that kept them from it.
    pub async fn commit(mut self) -> StoreResult<()> {
        let Some(inner) = self.inner.take() else {
            return Err(StoreError::Conflict(
                "the write transaction was already finished".into(),
            ));
        };
        let (g, writer, undo) = match inner {
            Inner::Pooled(tx) => return Ok(tx.commit().await?),
            Inner::Sqlite {
                guard,
                writer,
                undo,
            } => (guard, writer, undo),
        };
        // In a task of its own, like `begin`: the group's commit must not stop half-way.
        tokio::spawn(finish(g, writer, undo))
            .await
            .map_err(|e| StoreError::GroupCommit(format!("the commit did not finish: {e}")))?
    }

    /// Undoes the writes (only this transaction's, on SQLite).
    pub async fn rollback(mut self) -> StoreResult<()> {
        match self.inner.take() {
            None => Ok(()),
            Some(Inner::Pooled(tx)) => Ok(tx.rollback().await?),
            Some(Inner::Sqlite {
                mut guard,
                writer,
                undo,
            }) => {
                guard.dirty = Some(undo);
                guard.clean_up().await;
                if writer.queued.load(Ordering::SeqCst) == 0 {
                    let _ = guard.commit_group().await;
                }
                Ok(())
            }
        }
    }

    fn conn(&self) -> &AnyConnection {
        match self.inner.as_ref().expect("an open write transaction") {
            Inner::Pooled(tx) => tx,
            Inner::Sqlite { guard, .. } => guard.conn.as_ref().expect("an open connection"),
        }
    }

    fn conn_mut(&mut self) -> &mut AnyConnection {
        match self.inner.as_mut().expect("an open write transaction") {
            Inner::Pooled(tx) => tx,
            Inner::Sqlite { guard, .. } => guard.conn(),
        }
    }
}

/// Releases a write's savepoint and commits its group, or waits for the writer in line to.
async fn finish(
    mut g: OwnedMutexGuard<WriterConn>,
    writer: Arc<Writer>,
    undo: Undo,
) -> StoreResult<()> {
    if undo == Undo::Savepoint
        && let Err(e) = sqlx::raw_sql("RELEASE w").execute(g.conn()).await
    {
        g.dirty = Some(undo);
        drop(g);
        spawn_flush(writer);
        return Err(e.into());
    }
    let Some(group) = g.group.as_mut() else {
        return Err(StoreError::GroupCommit("no open write group".into()));
    };
    group.members += 1;
    let mut done = group.done.subscribe();
    let now = group.members >= MAX_BATCH
        || group.opened.elapsed() >= MAX_WAIT
        || writer.queued.load(Ordering::SeqCst) == 0;
    let outcome = if now {
        let members = group.members as u64;
        let outcome = g.commit_group().await;
        if outcome.is_ok() {
            writer.groups.fetch_add(1, Ordering::Relaxed);
            writer.writes.fetch_add(members, Ordering::Relaxed);
        }
        outcome
    } else {
        drop(g);
        loop {
            // A writer in line commits the group; should none (its caller gone), flush.
            let waited = tokio::time::timeout(MAX_WAIT * 4, async {
                done.wait_for(Option::is_some)
                    .await
                    .map(|v| v.clone().unwrap_or(Ok(())))
            })
            .await;
            match waited {
                Ok(Ok(outcome)) => break outcome,
                Ok(Err(_)) => break Err(Arc::from("the writer stopped before committing")),
                Err(_) => writer.flush().await,
            }
        }
    };
    outcome.map_err(|e| StoreError::GroupCommit(e.to_string()))
}

fn spawn_flush(writer: Arc<Writer>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move { writer.flush().await });
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(Inner::Sqlite {
            mut guard,
            writer,
            undo,
        }) = self.inner.take()
        {
            guard.dirty = Some(undo);
            drop(guard);
            // Members of the group may be waiting for a commit nobody else will start.
            spawn_flush(writer);
        }
    }
}

impl Deref for WriteTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        self.conn()
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.conn_mut()
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, AnyArguments>;

impl Store {
    /// Starts a write transaction (see the module docs).
    pub async fn begin_write(&self) -> StoreResult<WriteTx> {
        match (&self.writer, self.backend) {
            (Some(writer), Backend::Sqlite) => writer.begin().await,
            _ => Ok(WriteTx {
                inner: Some(Inner::Pooled(self.pool.begin().await?)),
            }),
        }
    }

    /// Runs one statement as a write of its own.
    pub async fn write_execute(&self, query: AnyQuery<'_>) -> StoreResult<AnyQueryResult> {
        let mut tx = self.begin_write().await?;
        let done = query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Runs one writing statement with `RETURNING`: its row, if any.
    pub async fn write_fetch_optional(&self, query: AnyQuery<'_>) -> StoreResult<Option<AnyRow>> {
        let mut tx = self.begin_write().await?;
        let row = query.fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Runs one writing statement with `RETURNING` that always returns a row: that row.
    pub async fn write_fetch_one(&self, query: AnyQuery<'_>) -> StoreResult<AnyRow> {
        let mut tx = self.begin_write().await?;
        let row = query.fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Runs one writing statement with `RETURNING`: its rows.
    pub async fn write_fetch_all(&self, query: AnyQuery<'_>) -> StoreResult<Vec<AnyRow>> {
        let mut tx = self.begin_write().await?;
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Makes what the open group holds visible to reads (SQLite), by committing it now. For a
    /// write that failed on a row another write of its group added (a unique violation), before
    /// it reads that row: until the group commits, reads do not see it.
    pub async fn settle_writes(&self) {
        if let Some(w) = &self.writer {
            w.commit_open().await;
        }
    }

    /// SQLite: how many groups the writer committed, and how many writes they held (write
    /// transactions committed through a group; a group committed by a flush is not counted).
    pub fn group_commits(&self) -> Option<(u64, u64)> {
        self.writer.as_ref().map(|w| {
            (
                w.groups.load(Ordering::Relaxed),
                w.writes.load(Ordering::Relaxed),
            )
        })
    }

    /// Commits whatever group is open and closes the writing connection (at shutdown).
    pub(crate) async fn close_writer(&self) {
        if let Some(w) = &self.writer {
            w.close().await;
        }
    }
}
