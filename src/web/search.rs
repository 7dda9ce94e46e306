//! Search over every message in the inbox, for the queue's search box: a small tantivy index of
//! its own in `<data dir>/inbox-search` (message id, conversation id, text).
//!
//! The database stays the truth and messages are append-only, so the index catches up from it:
//! before each search (and once at start) it adds the messages created since the last indexed
//! one, by (created_at, id). The commit records that position, so a restart continues where it
//! stopped. Each catch-up re-reads a few seconds before the mark, upserting by message id, so a
//! message whose transaction committed late is not missed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, STORED, STRING, Schema, TEXT, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::store::Store;

/// Messages read from the database per round.
const BATCH: i64 = 5_000;
/// How far before the mark each catch-up starts (late commits).
const SLACK_MS: i64 = 5_000;
/// Hits read per search; conversations are distinct hits' conversations.
const MAX_HITS: usize = 1_000;
const WRITER_MEMORY_BYTES: usize = 20 * 1024 * 1024;

#[derive(Clone)]
pub struct MessageSearch {
    inner: Arc<Inner>,
}

struct Inner {
    index: Index,
    reader: IndexReader,
    parser: QueryParser,
    id: Field,
    conversation: Field,
    text: Field,
    /// The writer, opened on first use; a std mutex because it is used on the blocking pool.
    writer: Mutex<Option<IndexWriter>>,
    /// (created_at, id) of the last message indexed.
    mark: Mutex<(i64, String)>,
    /// Messages indexed recently (id → created_at): the slack window is re-read on every
    /// catch-up, and these need no second write (nor a commit).
    recent: Mutex<HashMap<String, i64>>,
    /// One catch-up at a time.
    running: tokio::sync::Mutex<()>,
}

fn schema() -> (Schema, Field, Field, Field) {
    let mut b = Schema::builder();
    let id = b.add_text_field("id", STRING | STORED);
    let conversation = b.add_text_field("conversation_id", STRING | STORED);
    let text = b.add_text_field("text", TEXT);
    (b.build(), id, conversation, text)
}

impl MessageSearch {
    pub fn open(dir: &Path) -> anyhow::Result<MessageSearch> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let (schema, id, conversation, text) = schema();
        let open = || -> tantivy::Result<Index> {
            let directory = MmapDirectory::open(dir)?;
            if Index::exists(&directory)? {
                let index = Index::open(directory)?;
                if index.schema() == schema {
                    return Ok(index);
                }
                drop(index);
                tracing::warn!(path = %dir.display(), "inbox search index has another schema; rebuilding it");
                return Err(tantivy::TantivyError::SchemaError("old schema".into()));
            }
            Index::create(directory, schema.clone(), Default::default())
        };
        let index = match open() {
            Ok(i) => i,
            Err(_) => {
                // A copy of the database: rebuilding it from scratch is always safe.
                let _ = std::fs::remove_dir_all(dir);
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
                Index::create(
                    MmapDirectory::open(dir)?,
                    schema.clone(),
                    Default::default(),
                )?
            }
        };
        let mark = index
            .load_metas()?
            .payload
            .and_then(|p| {
                let (at, id) = p.split_once(' ')?;
                Some((at.parse::<i64>().ok()?, id.to_string()))
            })
            .unwrap_or((i64::MIN, String::new()));
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let parser = QueryParser::for_index(&index, vec![text]);
        Ok(MessageSearch {
            inner: Arc::new(Inner {
                index,
                reader,
                parser,
                id,
                conversation,
                text,
                writer: Mutex::new(None),
                mark: Mutex::new(mark),
                recent: Mutex::new(HashMap::new()),
                running: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Starts a catch-up in the background (at start-up, so the first search is quick).
    pub fn spawn_catch_up(&self, store: Store) {
        let me = self.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = me.catch_up(&store).await {
                    tracing::warn!(error = format!("{e:#}"), "inbox search could not catch up");
                }
            });
        }
    }

    /// Indexes the messages added since the last catch-up; returns how many were indexed.
    pub async fn catch_up(&self, store: &Store) -> anyhow::Result<u64> {
        let _one = self.inner.running.lock().await;
        let (mut at, mut id) = {
            let m = self
                .inner
                .mark
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            if m.0 == i64::MIN {
                (i64::MIN, String::new())
            } else {
                (m.0 - SLACK_MS, String::new())
            }
        };
        let mut total = 0u64;
        loop {
            let mut batch = store.messages_since(at, &id, BATCH).await?;
            let Some(last) = batch.last() else { break };
            let (last_at, last_id) = (last.3, last.0.clone());
            let full = batch.len() as i64 == BATCH;
            {
                let mut recent = self
                    .inner
                    .recent
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?;
                batch.retain(|m| !recent.contains_key(&m.0));
                recent.retain(|_, t| *t >= last_at - 2 * SLACK_MS);
                for m in batch.iter().filter(|m| m.3 >= last_at - 2 * SLACK_MS) {
                    recent.insert(m.0.clone(), m.3);
                }
            }
            if !batch.is_empty() {
                total += batch.len() as u64;
                let inner = self.inner.clone();
                let mark = (last_at, last_id.clone());
                let written = tokio::task::spawn_blocking(move || inner.write(batch, mark)).await?;
                if let Err(e) = written {
                    // Not written after all: forget them so the next catch-up tries again.
                    if let Ok(mut recent) = self.inner.recent.lock() {
                        recent.clear();
                    }
                    return Err(e);
                }
            }
            (at, id) = (last_at, last_id);
            if !full {
                break;
            }
        }
        Ok(total)
    }

    /// Conversations whose messages match `query`, best match first (at most `limit`).
    pub async fn conversations(
        &self,
        store: &Store,
        query: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<String>> {
        if let Err(e) = self.catch_up(store).await {
            // Searching what is indexed beats failing the page; the next search retries.
            tracing::warn!(error = format!("{e:#}"), "inbox search could not catch up");
        }
        let inner = self.inner.clone();
        let query = query.chars().take(500).collect::<String>();
        tokio::task::spawn_blocking(move || {
            let (q, _) = inner.parser.parse_query_lenient(&query);
            let searcher = inner.reader.searcher();
            let top = searcher.search(&*q, &TopDocs::with_limit(MAX_HITS).order_by_score())?;
            let mut out: Vec<String> = Vec::new();
            for (_, addr) in top {
                let doc: TantivyDocument = searcher.doc(addr)?;
                if let Some(c) = doc.get_first(inner.conversation).and_then(|v| v.as_str())
                    && !out.iter().any(|o| o == c)
                {
                    out.push(c.to_string());
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await?
    }
}

impl Inner {
    fn write(
        &self,
        batch: Vec<(String, String, String, i64)>,
        mark: (i64, String),
    ) -> anyhow::Result<()> {
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| anyhow::anyhow!("the inbox search writer failed earlier"))?;
        if guard.is_none() {
            *guard = Some(
                self.index
                    .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
                    .map_err(|e| {
                        anyhow::anyhow!("cannot open the inbox search index for writing: {e}")
                    })?,
            );
        }
        let Some(writer) = guard.as_mut() else {
            unreachable!("set above")
        };
        for (id, conversation, text, _) in batch {
            writer.delete_term(Term::from_field_text(self.id, &id));
            let mut doc = TantivyDocument::default();
            doc.add_text(self.id, &id);
            doc.add_text(self.conversation, &conversation);
            doc.add_text(self.text, &text);
            writer.add_document(doc)?;
        }
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&format!("{} {}", mark.0, mark.1));
        prepared.commit()?;
        self.reader.reload()?;
        if let Ok(mut m) = self.mark.lock() {
            *m = mark;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_conversations_by_message_words_and_resumes_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None, 2).await.unwrap();
        let msg = |thread: &str, text: &str| crate::store::InboundMessage {
            channel: "api".into(),
            thread_key: thread.into(),
            external_id: None,
            sender_id: thread.into(),
            sender_name: None,
            sender_email: None,
            sender_verified: false,
            author_kind: crate::store::AuthorKind::Customer,
            subject: None,
            text: text.into(),
            html: None,
            attachments: serde_json::json!([]),
            meta: serde_json::json!({}),
        };
        let a = store
            .ingest(&msg("t1", "my parcel arrived crushed"))
            .await
            .unwrap();
        store.ingest(&msg("t2", "where is my order")).await.unwrap();
        let idx = dir.path().join("inbox-search");
        let search = MessageSearch::open(&idx).unwrap();
        let hits = search.conversations(&store, "crushed", 10).await.unwrap();
        assert_eq!(hits, vec![a.conversation_id.clone()]);
        drop(search);

        let c = store
            .ingest(&msg("t3", "the lamp is crushed too"))
            .await
            .unwrap();
        let search = MessageSearch::open(&idx).unwrap();
        let mut hits = search.conversations(&store, "crushed", 10).await.unwrap();
        hits.sort();
        let mut want = vec![a.conversation_id, c.conversation_id];
        want.sort();
        assert_eq!(hits, want);
        assert!(
            search
                .conversations(&store, "zebra", 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
