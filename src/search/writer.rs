//! The single writer task: it owns the index's `IndexWriter`, applies upserts and deletes in the
//! order they were sent, and commits in batches (after [`BATCH_DOCS`] changes or
//! [`MAX_COMMIT_DELAY`] after the first uncommitted one), reloading the reader after each commit.
//!
//! It must not block the runtime: commits and merges run on the blocking pool. Nothing else may
//! write to the index while the task runs (tantivy's directory lock enforces that).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tantivy::indexer::IndexWriterOptions;
use tantivy::{IndexWriter, TantivyDocument, Term};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::schema::{to_document, uid};
use super::{DocKind, IndexDoc, SearchError, SearchIndex, writer_error};

/// Commit once this many changes are pending.
pub const BATCH_DOCS: usize = 1_000;
/// Commit at most this long after the first uncommitted change.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_millis(250);
/// Queued commands before `upsert` waits (back-pressure).
const CHANNEL_CAPACITY: usize = 1_024;
/// One indexing thread with a modest arena: live updates are small.
const WRITER_MEMORY_BYTES: usize = 32 * 1024 * 1024;

enum Command {
    Upsert(Box<IndexDoc>),
    Delete(DocKind, String),
    /// Every document of these kinds replaced by these, in one commit.
    Replace(Vec<DocKind>, Vec<IndexDoc>),
    /// The change-feed position the index reflects once what came before is committed.
    Position(i64),
    Flush(oneshot::Sender<Result<(), SearchError>>),
    Shutdown(oneshot::Sender<Result<(), SearchError>>),
}

/// Sends changes to the writer task. Cheap to clone; the task ends when [`shutdown`] is called
/// or every handle is dropped (either way it commits what is pending first).
///
/// [`shutdown`]: IndexWriterHandle::shutdown
#[derive(Clone)]
pub struct IndexWriterHandle {
    tx: mpsc::Sender<Command>,
    /// Why the task stopped, once it has.
    stopped: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for IndexWriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexWriterHandle")
            .field("stopped", &self.stopped.get())
            .finish()
    }
}

impl IndexWriterHandle {
    /// Enqueues an insert-or-replace of the document with this kind and key. Visible to
    /// `search` within about a second, or as soon as a following [`flush`](Self::flush) returns.
    pub async fn upsert(&self, doc: IndexDoc) -> Result<(), SearchError> {
        self.send(Command::Upsert(Box::new(doc))).await
    }

    /// Enqueues the removal of a document (no error if there is none).
    pub async fn delete(&self, kind: DocKind, key: &str) -> Result<(), SearchError> {
        self.send(Command::Delete(kind, key.to_string())).await
    }

    /// Enqueues replacing every document of `kinds` with `docs`. Searches see the old set or
    /// the new one, never a mix: both sides of the swap go into the same commit.
    pub async fn replace(&self, kinds: &[DocKind], docs: Vec<IndexDoc>) -> Result<(), SearchError> {
        self.send(Command::Replace(kinds.to_vec(), docs)).await
    }

    /// Enqueues recording that the index reflects the search change feed up to `seq`: it is
    /// committed with everything sent before it, and read back by
    /// [`SearchIndex::feed_position`](super::SearchIndex::feed_position).
    pub async fn record_position(&self, seq: i64) -> Result<(), SearchError> {
        self.send(Command::Position(seq)).await
    }

    /// Waits until everything enqueued before this call is committed and visible to `search`.
    /// Also reports a write that failed since the previous flush.
    pub async fn flush(&self) -> Result<(), SearchError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Flush(tx)).await?;
        rx.await.map_err(|_| self.stopped_error())?
    }

    /// Commits what is pending and stops the task (graceful shutdown). Other clones of this
    /// handle get [`SearchError::WriterStopped`] afterwards.
    pub async fn shutdown(self) -> Result<(), SearchError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Shutdown(tx)).await?;
        rx.await.map_err(|_| self.stopped_error())?
    }

    /// Whether the task has stopped (shut down, or failed).
    pub fn is_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    async fn send(&self, cmd: Command) -> Result<(), SearchError> {
        self.tx.send(cmd).await.map_err(|_| self.stopped_error())
    }

    fn stopped_error(&self) -> SearchError {
        SearchError::WriterStopped(
            self.stopped
                .get()
                .cloned()
                .unwrap_or_else(|| "the writer task ended".to_string()),
        )
    }
}

/// Opens the `IndexWriter` and spawns the task. When the writer cannot be opened (another writer
/// holds the lock), the handle comes back already stopped and every call reports why.
pub(crate) fn spawn(index: &SearchIndex) -> IndexWriterHandle {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let stopped = Arc::new(OnceLock::new());
    let options = IndexWriterOptions::builder()
        .memory_budget_per_thread(WRITER_MEMORY_BYTES)
        .num_worker_threads(1)
        .num_merge_threads(2)
        .build();
    match index
        .inner
        .index
        .writer_with_options::<TantivyDocument>(options)
    {
        Ok(writer) => {
            let position = index.feed_position();
            tokio::spawn(run(
                index.clone(),
                writer,
                position,
                rx,
                Arc::clone(&stopped),
            ));
        }
        Err(e) => {
            let err = writer_error(e);
            tracing::error!(error = %err, "search index writer could not start");
            let _ = stopped.set(format!("it could not start: {err}"));
            drop(rx);
        }
    }
    IndexWriterHandle { tx, stopped }
}

struct Task {
    index: SearchIndex,
    /// `None` once lost (a panic on the blocking pool) or consumed by `finish`.
    writer: Option<IndexWriter>,
    pending: usize,
    first_pending_at: Option<Instant>,
    /// A failure nobody was waiting for; the next flush reports it.
    deferred: Option<SearchError>,
    /// Why the writer is gone, if it is.
    fatal: Option<String>,
    /// The feed position every commit records (commits without one would forget it).
    position: Option<i64>,
}

async fn run(
    index: SearchIndex,
    writer: IndexWriter,
    position: Option<i64>,
    mut rx: mpsc::Receiver<Command>,
    stopped: Arc<OnceLock<String>>,
) {
    let mut task = Task {
        index,
        position,
        writer: Some(writer),
        pending: 0,
        first_pending_at: None,
        deferred: None,
        fatal: None,
    };
    let reason = loop {
        let cmd = match task.first_pending_at {
            Some(first) => tokio::select! {
                cmd = rx.recv() => cmd,
                () = tokio::time::sleep_until(first + MAX_COMMIT_DELAY) => {
                    if let Err(e) = task.commit().await {
                        task.deferred.get_or_insert(e);
                    }
                    if let Some(fatal) = task.fatal.take() {
                        break fatal;
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match cmd {
            None => {
                if let Err(e) = task.finish().await {
                    tracing::error!(error = %e, "search index writer: final commit failed");
                }
                break "every writer handle was dropped".to_string();
            }
            Some(Command::Upsert(doc)) => task.upsert(&doc),
            Some(Command::Delete(kind, key)) => task.delete(kind, &key),
            Some(Command::Replace(kinds, docs)) => task.replace(&kinds, &docs),
            Some(Command::Position(seq)) => {
                task.position = Some(seq);
                task.touch();
            }
            Some(Command::Flush(reply)) => {
                let committed = task.commit().await;
                let result = match task.deferred.take() {
                    Some(e) => Err(e),
                    None => committed,
                };
                let _ = reply.send(result);
            }
            Some(Command::Shutdown(reply)) => {
                let result = task.finish().await;
                let result = match task.deferred.take() {
                    Some(e) => Err(e),
                    None => result,
                };
                let _ = reply.send(result);
                break "the writer was shut down".to_string();
            }
        }
        if task.pending >= BATCH_DOCS
            && let Err(e) = task.commit().await
        {
            task.deferred.get_or_insert(e);
        }
        if let Some(fatal) = task.fatal.take() {
            break fatal;
        }
    };
    tracing::debug!(reason = %reason, "search index writer stopped");
    let _ = stopped.set(reason);
    // Dropping `rx` now fails the remaining senders with the reason set above.
}

impl Task {
    fn touch(&mut self) {
        self.pending += 1;
        self.first_pending_at.get_or_insert_with(Instant::now);
    }

    fn upsert(&mut self, doc: &IndexDoc) {
        let Some(writer) = &self.writer else { return };
        let fields = &self.index.inner.fields;
        let term = Term::from_field_text(fields.uid, &uid(doc.kind(), doc.key()));
        writer.delete_term(term);
        if let Err(e) = writer.add_document(to_document(fields, doc)) {
            tracing::error!(error = %e, kind = doc.kind().as_str(), key = doc.key(), "search index: add failed");
            self.deferred.get_or_insert(e.into());
        }
        self.touch();
    }

    fn delete(&mut self, kind: DocKind, key: &str) {
        let Some(writer) = &self.writer else { return };
        let fields = &self.index.inner.fields;
        writer.delete_term(Term::from_field_text(fields.uid, &uid(kind, key)));
        self.touch();
    }

    fn replace(&mut self, kinds: &[DocKind], docs: &[IndexDoc]) {
        let Some(writer) = &self.writer else { return };
        let fields = &self.index.inner.fields;
        for kind in kinds {
            writer.delete_term(Term::from_field_text(fields.kind, kind.as_str()));
        }
        let mut failed = None;
        for doc in docs {
            if let Err(e) = writer.add_document(to_document(fields, doc)) {
                tracing::error!(error = %e, kind = doc.kind().as_str(), key = doc.key(), "search index: add failed");
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            self.deferred.get_or_insert(e.into());
        }
        self.touch();
        self.pending += docs.len();
    }

    /// Commits pending changes on the blocking pool and reloads the reader.
    async fn commit(&mut self) -> Result<(), SearchError> {
        if self.pending == 0 {
            return Ok(());
        }
        let pending = self.pending;
        self.pending = 0;
        self.first_pending_at = None;
        let Some(mut writer) = self.writer.take() else {
            return Err(SearchError::WriterStopped(
                "the index writer is gone".to_string(),
            ));
        };
        let reader = self.index.inner.reader.clone();
        let payload = self.position.map(super::position_payload);
        let joined = tokio::task::spawn_blocking(move || {
            let result =
                super::commit_with(&mut writer, payload.as_deref()).and_then(|_| reader.reload());
            (writer, result)
        })
        .await;
        match joined {
            Ok((writer, result)) => {
                self.writer = Some(writer);
                result.map_err(|e| {
                    tracing::error!(error = %e, changes = pending, "search index commit failed");
                    SearchError::from(e)
                })
            }
            Err(e) => {
                let why = format!("the index writer panicked while committing: {e}");
                tracing::error!("{why}");
                self.fatal = Some(why.clone());
                Err(SearchError::WriterStopped(why))
            }
        }
    }

    /// Commits what is pending, then waits for merges and releases the writer (and its lock).
    async fn finish(&mut self) -> Result<(), SearchError> {
        let committed = self.commit().await;
        let Some(writer) = self.writer.take() else {
            return committed;
        };
        let merged = tokio::task::spawn_blocking(move || writer.wait_merging_threads()).await;
        committed?;
        match merged {
            Ok(result) => Ok(result?),
            Err(e) => Err(SearchError::WriterStopped(format!(
                "the index writer panicked while finishing merges: {e}"
            ))),
        }
    }
}
