//! The search index: a tantivy index in the data dir over orders, products and the brand's policy
//! sections, so the agent and the inbox can find "#W2611340", a tracking number, an email, a
//! product by its words, or the policy section that answers a shopper's question.
//!
//! The database is the source of truth and this index is only a rebuildable copy: the index
//! itself never reads or writes the database, and when its on-disk schema is out of date it
//! wipes the index and says so ([`SearchIndex::needs_rebuild`]) instead of migrating anything.
//! One writer task ([`SearchIndex::spawn_writer`]) or one bulk [`SearchIndex::rebuild`] writes
//! at a time. [`feed`] is the one bridge from the database: it builds documents from the store
//! and keeps each instance's index following the store's change feed; the feed position the
//! index reflects is committed with the documents ([`SearchIndex::feed_position`]).

pub mod feed;
mod policy;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{IndexRecordOption, Schema, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{
    Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, TantivyDocument, TantivyError,
    Term,
};

use crate::commerce::model::{Order, Product};
pub use policy::{HEADING_SEPARATOR, PolicyChunk, chunk_policy, load_policy_dir};
use schema::{Fields, build_schema, register_analyzers, to_document};
pub use writer::{BATCH_DOCS, IndexWriterHandle, MAX_COMMIT_DELAY};

/// Score of each exact-field match (order number, tracking number, email, id). Far above any
/// full-text BM25 score, so exact matches rank first.
const EXACT_SCORE: f32 = 1_000.0;
/// Queries are cut to this many characters.
const MAX_QUERY_CHARS: usize = 1_000;
/// At most this many query tokens are tried against the exact fields.
const MAX_EXACT_TOKENS: usize = 64;
/// Results per search at most.
const MAX_LIMIT: usize = 1_000;
/// Snippet length for policy hits.
const SNIPPET_CHARS: usize = 200;
/// `rebuild`'s writer: total indexing arena, split over up to 8 threads.
const REBUILD_MEMORY_BYTES: usize = 192 * 1024 * 1024;
/// `rebuild` reports progress every this many documents.
const PROGRESS_EVERY: u64 = 1_000;

/// What a document in the index is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    Order,
    Product,
    Policy,
}

impl DocKind {
    pub const ALL: [DocKind; 3] = [DocKind::Order, DocKind::Product, DocKind::Policy];

    /// "order" | "product" | "policy": the stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Order => "order",
            DocKind::Product => "product",
            DocKind::Policy => "policy",
        }
    }

    /// Parses "orders" | "products" | "policies" and the singulars, any case.
    pub fn parse(s: &str) -> Option<DocKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "order" | "orders" => Some(DocKind::Order),
            "product" | "products" => Some(DocKind::Product),
            "policy" | "policies" => Some(DocKind::Policy),
            _ => None,
        }
    }
}

impl std::fmt::Display for DocKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DocKind {
    type Err = SearchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DocKind::parse(s).ok_or_else(|| SearchError::UnknownKind(s.to_string()))
    }
}

/// What gets indexed. Orders carry the customer's name and emails so an order is found by them.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "built once per document and moved; the writer queue boxes it"
)]
pub enum IndexDoc {
    Order {
        order: Order,
        customer_name: Option<String>,
        customer_emails: Vec<String>,
    },
    Product(Product),
    Policy(PolicyChunk),
}

impl IndexDoc {
    pub fn kind(&self) -> DocKind {
        match self {
            IndexDoc::Order { .. } => DocKind::Order,
            IndexDoc::Product(_) => DocKind::Product,
            IndexDoc::Policy(_) => DocKind::Policy,
        }
    }

    /// The key the document is upserted by: order number, product id, or chunk id.
    pub fn key(&self) -> &str {
        match self {
            IndexDoc::Order { order, .. } => &order.number,
            IndexDoc::Product(p) => &p.id,
            IndexDoc::Policy(c) => &c.id,
        }
    }
}

/// One search result.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub kind: DocKind,
    /// Order number / product id / policy chunk id.
    pub key: String,
    /// "#W2611340 · Noah Brown" / product name / "Policy › Returns › Return window".
    pub title: String,
    /// Orders: status, total and items. Products: type, variants, prices, options. Policies:
    /// the best-matching passage (about 200 characters), plain text.
    pub snippet: String,
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("cannot use the search index directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the search index at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: TantivyError,
    },
    #[error(
        "the search index is locked by another writer (a running writer task, or another \
         concierge process on the same data dir); stop it first"
    )]
    WriterBusy,
    #[error("the search index writer has stopped: {0}")]
    WriterStopped(String),
    #[error("unknown document kind {0:?} (expected orders, products or policies)")]
    UnknownKind(String),
    #[error("search index error: {0}")]
    Index(#[from] TantivyError),
}

/// Maps tantivy's lock failure to [`SearchError::WriterBusy`].
fn writer_error(e: TantivyError) -> SearchError {
    match e {
        TantivyError::LockFailure(..) => SearchError::WriterBusy,
        other => SearchError::Index(other),
    }
}

struct Inner {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    parser: QueryParser,
    needs_rebuild: AtomicBool,
    /// Where it lives; `None` in RAM.
    path: Option<PathBuf>,
}

/// The index. Cheap to clone; searching is safe from any thread.
#[derive(Clone)]
pub struct SearchIndex {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("path", &self.inner.path)
            .field("num_docs", &self.num_docs())
            .field("needs_rebuild", &self.needs_rebuild())
            .finish()
    }
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it if missing. If the index there has another schema
    /// (an older Concierge) or cannot be read, its files are deleted and an empty index is
    /// created; [`needs_rebuild`](Self::needs_rebuild) is then true, as it is for a new index.
    pub fn open(dir: &Path) -> Result<SearchIndex, SearchError> {
        let path = dir.to_path_buf();
        std::fs::create_dir_all(dir).map_err(|source| SearchError::Dir {
            path: path.clone(),
            source,
        })?;
        let open_err = |source: TantivyError| SearchError::Open {
            path: path.clone(),
            source,
        };
        let (schema, fields) = build_schema();
        let directory = MmapDirectory::open(dir).map_err(|e| open_err(e.into()))?;
        let exists = Index::exists(&directory).map_err(|e| open_err(e.into()))?;
        let (index, fresh) = if !exists {
            let index =
                Index::create(directory, schema, IndexSettings::default()).map_err(open_err)?;
            (index, true)
        } else {
            match Index::open(directory) {
                Ok(index) if index.schema() == schema => (index, false),
                Ok(_) => {
                    tracing::warn!(path = %dir.display(), "search index has an old schema; recreating it (a rebuild is needed)");
                    (recreate(dir, schema).map_err(open_err)?, true)
                }
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "search index is unreadable; recreating it (a rebuild is needed)");
                    (recreate(dir, schema).map_err(open_err)?, true)
                }
            }
        };
        Self::from_index(index, fields, fresh, Some(path.clone())).map_err(open_err)
    }

    /// A new, empty index in memory (tests, benchmarks). `needs_rebuild` is true.
    pub fn open_in_ram() -> Result<SearchIndex, SearchError> {
        let (schema, fields) = build_schema();
        let index = Index::builder().schema(schema).create_in_ram()?;
        Ok(Self::from_index(index, fields, true, None)?)
    }

    fn from_index(
        index: Index,
        fields: Fields,
        fresh: bool,
        path: Option<PathBuf>,
    ) -> Result<SearchIndex, TantivyError> {
        register_analyzers(&index);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let text = fields.text();
        let mut parser = QueryParser::for_index(&index, text.iter().map(|(f, _)| *f).collect());
        for (field, boost) in text {
            parser.set_field_boost(field, boost);
        }
        Ok(SearchIndex {
            inner: Arc::new(Inner {
                index,
                reader,
                fields,
                parser,
                needs_rebuild: AtomicBool::new(fresh),
                path,
            }),
        })
    }

    /// True when the index was just created empty or recreated after a schema change, until a
    /// [`rebuild`](Self::rebuild) succeeds. The caller then reindexes from the database.
    pub fn needs_rebuild(&self) -> bool {
        self.inner.needs_rebuild.load(Ordering::Relaxed)
    }

    /// Starts the single writer task (tokio) that owns the `IndexWriter`; returns a handle.
    /// Documents are upserted by key and committed in batches: after [`BATCH_DOCS`] changes or
    /// [`MAX_COMMIT_DELAY`] after the first uncommitted one, so a write is searchable within a
    /// second. Only one writer may exist per index: if another holds it, the handle comes back
    /// stopped and its calls return [`SearchError::WriterBusy`]'s message.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn_writer(&self) -> IndexWriterHandle {
        writer::spawn(self)
    }

    /// Searches everything (or one kind). Exact matches of a query token on an order number
    /// (with or without '#', any case), tracking number, email or product/variant id/SKU rank
    /// first; then full-text matches on names, options, product types and policy text. Any
    /// query string is accepted: syntax it cannot parse is searched as plain words.
    pub fn search(
        &self,
        query: &str,
        kind: Option<DocKind>,
        limit: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        let query = clip_chars(query, MAX_QUERY_CHARS);
        let limit = limit.min(MAX_LIMIT);
        if query.trim().is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let f = &self.inner.fields;

        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for token in exact_tokens(query) {
            for field in f.exact() {
                let term = TermQuery::new(
                    Term::from_field_text(field, &token),
                    IndexRecordOption::Basic,
                );
                clauses.push((
                    Occur::Should,
                    Box::new(ConstScoreQuery::new(Box::new(term), EXACT_SCORE)),
                ));
            }
        }
        // Shoppers' punctuation must never fail a search: what does not parse is skipped.
        let (text, _ignored) = self.inner.parser.parse_query_lenient(query);
        clauses.push((Occur::Should, text));
        let mut q: Box<dyn Query> = Box::new(BooleanQuery::new(clauses));
        if let Some(kind) = kind {
            let only = TermQuery::new(
                Term::from_field_text(f.kind, kind.as_str()),
                IndexRecordOption::Basic,
            );
            q = Box::new(BooleanQuery::new(vec![
                (Occur::Must, q),
                (
                    Occur::Must,
                    Box::new(ConstScoreQuery::new(Box::new(only), 0.0)),
                ),
            ]));
        }

        let searcher = self.inner.reader.searcher();
        let top = searcher.search(&*q, &TopDocs::with_limit(limit).order_by_score())?;
        let mut snippets: Option<SnippetGenerator> = None;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            let text_of = |field| {
                doc.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let Some(kind) = DocKind::parse(&text_of(f.kind)) else {
                continue;
            };
            let snippet = match kind {
                DocKind::Policy => {
                    let generator = match &mut snippets {
                        Some(g) => g,
                        empty => {
                            let mut g = SnippetGenerator::create(&searcher, &*q, f.body)?;
                            g.set_max_num_chars(SNIPPET_CHARS);
                            empty.insert(g)
                        }
                    };
                    policy_snippet(generator, &doc, &text_of(f.body))
                }
                DocKind::Order | DocKind::Product => text_of(f.summary),
            };
            hits.push(Hit {
                kind,
                key: text_of(f.key),
                title: text_of(f.title),
                snippet,
                score,
            });
        }
        Ok(hits)
    }

    /// The search change feed's sequence number this index reflects, as last committed (None
    /// for a new index, or one built before the index followed the feed).
    pub fn feed_position(&self) -> Option<i64> {
        let payload = self.inner.index.load_metas().ok()?.payload?;
        serde_json::from_str::<FeedPayload>(&payload)
            .ok()
            .map(|p| p.search_changes)
    }

    /// Documents visible to `search`.
    pub fn num_docs(&self) -> u64 {
        self.inner.reader.searcher().num_docs()
    }

    /// Synchronous bulk rebuild for `concierge reindex` and benchmarks: clears the index, adds
    /// every doc from the iterator with one multi-threaded writer, commits once, waits for
    /// merges, and makes the result visible. Calls `progress(n)` every 1,000 docs and once more
    /// with the total at the end. Returns the count. Keys are expected to be unique (no
    /// per-document delete is done). Blocks: from async code, run it in `spawn_blocking`, and
    /// not while a writer task is running (that is [`SearchError::WriterBusy`]).
    pub fn rebuild(
        &self,
        docs: impl Iterator<Item = IndexDoc>,
        progress: impl FnMut(u64),
    ) -> Result<u64, SearchError> {
        self.rebuild_at(docs, None, progress)
    }

    /// [`rebuild`](Self::rebuild), recording that the documents reflect the search change feed
    /// up to `position` (read before the documents were).
    pub fn rebuild_at(
        &self,
        docs: impl Iterator<Item = IndexDoc>,
        position: Option<i64>,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, SearchError> {
        let fields = &self.inner.fields;
        let mut writer: IndexWriter = self
            .inner
            .index
            .writer(REBUILD_MEMORY_BYTES)
            .map_err(writer_error)?;
        writer.delete_all_documents()?;
        let mut n: u64 = 0;
        for doc in docs {
            writer.add_document(to_document(fields, &doc))?;
            n += 1;
            if n.is_multiple_of(PROGRESS_EVERY) {
                progress(n);
            }
        }
        commit_with(&mut writer, position.map(position_payload).as_deref())?;
        writer.wait_merging_threads()?;
        self.inner.reader.reload()?;
        if !n.is_multiple_of(PROGRESS_EVERY) || n == 0 {
            progress(n);
        }
        self.inner.needs_rebuild.store(false, Ordering::Relaxed);
        Ok(n)
    }
}

/// What a commit records besides documents.
#[derive(Serialize, Deserialize)]
struct FeedPayload {
    search_changes: i64,
}

fn position_payload(seq: i64) -> String {
    serde_json::to_string(&FeedPayload {
        search_changes: seq,
    })
    .unwrap_or_default()
}

/// Commits, recording `payload` in the index's meta file when given.
fn commit_with(writer: &mut IndexWriter, payload: Option<&str>) -> tantivy::Result<u64> {
    let mut prepared = writer.prepare_commit()?;
    if let Some(p) = payload {
        prepared.set_payload(p);
    }
    prepared.commit()
}

/// Rebuilds an in-RAM index from `docs` and times it (conversion, indexing, commit and merges).
pub fn bench_rebuild(docs: Vec<IndexDoc>) -> Result<(u64, Duration), SearchError> {
    let index = SearchIndex::open_in_ram()?;
    let started = Instant::now();
    let n = index.rebuild(docs.into_iter(), |_| {})?;
    Ok((n, started.elapsed()))
}

/// Deletes the index's own files in `dir` (meta files, locks, segment files named by their
/// 32-hex-digit id) and creates an empty index there. Other files are left alone.
fn recreate(dir: &Path, schema: Schema) -> Result<Index, TantivyError> {
    for entry in std::fs::read_dir(dir).map_err(|e| TantivyError::IoError(Arc::new(e)))? {
        let entry = entry.map_err(|e| TantivyError::IoError(Arc::new(e)))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().is_ok_and(|t| t.is_file()) || !is_index_file(&name) {
            continue;
        }
        std::fs::remove_file(entry.path()).map_err(|e| TantivyError::IoError(Arc::new(e)))?;
    }
    let directory = MmapDirectory::open(dir)?;
    Index::create(directory, schema, IndexSettings::default())
}

fn is_index_file(name: &str) -> bool {
    let segment = name.len() > 33
        && name.as_bytes()[32] == b'.'
        && name[..32].bytes().all(|b| b.is_ascii_hexdigit());
    segment
        || matches!(
            name,
            "meta.json" | ".managed.json" | ".tantivy-writer.lock" | ".tantivy-meta.lock"
        )
        || name.starts_with(".tmp")
}

/// The query's tokens as the exact fields hold them: split on spaces and brackets, outer
/// punctuation trimmed (a leading '#' kept), lower-cased. "order#W1" also yields "#w1" and "w1".
fn exact_tokens(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |t: &str| {
        if t.chars().any(char::is_alphanumeric) && t.len() <= 200 && !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    };
    let separators = |c: char| c.is_whitespace() || ",;()[]{}<>\"`|".contains(c);
    for raw in query.split(separators) {
        let t = raw
            .trim_matches(|c: char| !(c.is_alphanumeric() || c == '#'))
            .to_lowercase();
        push(&t);
        if let Some((_, after)) = t.rsplit_once('#') {
            push(&format!("#{after}"));
            push(after);
        }
    }
    out.truncate(MAX_EXACT_TOKENS);
    out
}

/// The best-matching passage of a policy section (the whole text when short), or its
/// beginning when no query word is in it; whitespace collapsed.
fn policy_snippet(generator: &SnippetGenerator, doc: &TantivyDocument, body: &str) -> String {
    let body = body.trim();
    if body.chars().count() <= SNIPPET_CHARS {
        return collapse_whitespace(body);
    }
    let snippet = generator.snippet_from_doc(doc);
    let range = snippet.fragment_range();
    let (start, mut end) = if snippet.fragment().trim().is_empty() {
        (0, clip_chars(body, SNIPPET_CHARS).len())
    } else {
        (range.start, range.end)
    };
    // Keep trailing punctuation ("rule." rather than "rule…").
    if let Some(rest) = body.get(end..) {
        let punct = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_punctuation())
                .len();
        end += punct;
    }
    let Some(fragment) = body.get(start..end) else {
        return collapse_whitespace(clip_chars(body, SNIPPET_CHARS));
    };
    let mut s = String::new();
    if start > 0 {
        s.push('…');
    }
    s.push_str(&collapse_whitespace(fragment));
    if end < body.len() {
        s.push('…');
    }
    s
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first `max` characters of `s` (on a char boundary).
fn clip_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
