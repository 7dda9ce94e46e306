//! The index's schema, its analyzers, and how an [`IndexDoc`] becomes a tantivy document.
//!
//! Analyzer names carry a version: change what an analyzer does and bump its name, so the schema
//! on disk no longer matches and the index is rebuilt instead of being searched with the wrong
//! tokens.

use serde_json::Value as JsonValue;
use tantivy::schema::{
    Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RawTokenizer, RemoveLongFilter, SimpleTokenizer,
    Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, TantivyDocument};

use super::{DocKind, IndexDoc};
use crate::commerce::model::{Order, OrderStatus, Product, format_money};

/// Words split on non-alphanumerics, folded to ASCII lower case, stop words dropped, stemmed.
pub(crate) const TEXT_ANALYZER: &str = "concierge_text_v1";
/// The whole value as one lower-cased token: order numbers, emails, tracking numbers, ids.
pub(crate) const EXACT_ANALYZER: &str = "concierge_exact_v1";

/// Lucene's English stop words plus the filler of shoppers' questions ("how many days do I
/// have…"), so question words do not pull in every section that happens to contain them.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with", // Lucene's list
    "about", "am", "any", "can", "could", "did", "do", "does", "from", "get", "got", "had", "has",
    "have", "hello", "hi", "how", "i", "im", "just", "many", "me", "much", "my", "our", "please",
    "should", "so", "still", "thanks", "until", "us", "we", "what", "when", "where", "which",
    "who", "why", "would", "you", "your",
];

/// Registers the analyzers the schema names. Tantivy does not persist them: call this on every
/// `Index` value, created or opened.
pub(crate) fn register_analyzers(index: &Index) {
    let stop_words = StopWordFilter::remove(STOP_WORDS.iter().map(|w| (*w).to_string()));
    index.tokenizers().register(
        TEXT_ANALYZER,
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(40))
            .filter(LowerCaser)
            .filter(AsciiFoldingFilter)
            .filter(stop_words)
            .filter(Stemmer::new(Language::English))
            .build(),
    );
    index.tokenizers().register(
        EXACT_ANALYZER,
        TextAnalyzer::builder(RawTokenizer::default())
            .filter(LowerCaser)
            .build(),
    );
}

/// Field handles of [`build_schema`]'s schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    /// "order" | "product" | "policy": raw, indexed, stored.
    pub kind: Field,
    /// "order:#W2611340": the upsert/delete key across kinds; raw, indexed.
    pub uid: Field,
    /// Order number / product id / chunk id: raw, indexed, stored.
    pub key: Field,
    /// Stored only.
    pub title: Field,
    /// Stored only: order status and items, product variants and prices.
    pub summary: Field,
    // Exact fields (one lower-cased token per value).
    pub number: Field,
    pub tracking: Field,
    pub email: Field,
    pub item: Field,
    // Full-text fields.
    pub name: Field,
    pub product: Field,
    pub options: Field,
    pub category: Field,
    pub description: Field,
    pub heading: Field,
    /// Policy text; stored, the snippet source.
    pub body: Field,
}

impl Fields {
    pub fn exact(&self) -> [Field; 4] {
        [self.number, self.tracking, self.email, self.item]
    }

    /// Full-text fields with their query boosts.
    pub fn text(&self) -> [(Field, f32); 7] {
        [
            (self.name, 2.0),
            (self.product, 2.0),
            (self.options, 1.0),
            (self.category, 1.0),
            (self.description, 0.5),
            (self.heading, 2.0),
            (self.body, 1.0),
        ]
    }
}

pub(crate) fn build_schema() -> (Schema, Fields) {
    let exact = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(EXACT_ANALYZER)
            .set_index_option(IndexRecordOption::Basic),
    );
    let text_indexing = TextFieldIndexing::default()
        .set_tokenizer(TEXT_ANALYZER)
        .set_index_option(IndexRecordOption::WithFreqsAndPositions);
    let text = TextOptions::default().set_indexing_options(text_indexing.clone());
    let stored_text = TextOptions::default()
        .set_indexing_options(text_indexing)
        .set_stored();

    let mut b = Schema::builder();
    let fields = Fields {
        kind: b.add_text_field("kind", STRING | STORED),
        uid: b.add_text_field("uid", STRING),
        key: b.add_text_field("key", STRING | STORED),
        title: b.add_text_field("title", STORED),
        summary: b.add_text_field("summary", STORED),
        number: b.add_text_field("number", exact.clone()),
        tracking: b.add_text_field("tracking", exact.clone()),
        email: b.add_text_field("email", exact.clone()),
        item: b.add_text_field("item", exact),
        name: b.add_text_field("name", text.clone()),
        product: b.add_text_field("product", text.clone()),
        options: b.add_text_field("options", text.clone()),
        category: b.add_text_field("category", text.clone()),
        description: b.add_text_field("description", text.clone()),
        heading: b.add_text_field("heading", text),
        body: b.add_text_field("body", stored_text),
    };
    (b.build(), fields)
}

/// The cross-kind unique key a document is upserted and deleted by.
pub(crate) fn uid(kind: DocKind, key: &str) -> String {
    format!("{}:{}", kind.as_str(), key)
}

pub(crate) fn to_document(f: &Fields, doc: &IndexDoc) -> TantivyDocument {
    let mut d = TantivyDocument::default();
    let kind = doc.kind();
    let key = doc.key();
    d.add_text(f.kind, kind.as_str());
    d.add_text(f.uid, uid(kind, key));
    d.add_text(f.key, key);
    match doc {
        IndexDoc::Order {
            order,
            customer_name,
            customer_emails,
        } => order_fields(f, &mut d, order, customer_name.as_deref(), customer_emails),
        IndexDoc::Product(product) => product_fields(f, &mut d, product),
        IndexDoc::Policy(chunk) => {
            d.add_text(
                f.title,
                format!("Policy{}{}", super::HEADING_SEPARATOR, chunk.heading),
            );
            d.add_text(f.heading, &chunk.heading);
            d.add_text(f.body, &chunk.text);
        }
    }
    d
}

fn add_nonempty(d: &mut TantivyDocument, field: Field, value: &str) {
    let v = value.trim();
    if !v.is_empty() {
        d.add_text(field, v);
    }
}

/// "#W2611340" is indexed as "#w2611340" and "w2611340".
fn add_number_forms(d: &mut TantivyDocument, field: Field, value: &str) {
    let v = value.trim();
    add_nonempty(d, field, v);
    if let Some(stripped) = v.strip_prefix('#') {
        add_nonempty(d, field, stripped);
    }
}

fn value_text(v: &JsonValue) -> String {
    match v {
        JsonValue::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn order_fields(
    f: &Fields,
    d: &mut TantivyDocument,
    order: &Order,
    customer_name: Option<&str>,
    customer_emails: &[String],
) {
    let name = customer_name.map(str::trim).filter(|n| !n.is_empty());
    d.add_text(
        f.title,
        match name {
            Some(n) => format!("{} · {n}", order.number),
            None => order.number.clone(),
        },
    );
    d.add_text(f.summary, order_summary(order));

    add_number_forms(d, f.number, &order.number);
    if order.id != order.number {
        add_number_forms(d, f.number, &order.id);
    }
    for t in order.tracking_numbers() {
        add_nonempty(d, f.tracking, t);
    }
    for e in order.email.iter().chain(customer_emails) {
        add_nonempty(d, f.email, e);
    }
    if let Some(n) = name {
        d.add_text(f.name, n);
    }
    if let Some(addr) = &order.shipping_address {
        let ship_to = addr.name.trim();
        if !ship_to.is_empty() && Some(ship_to) != name {
            d.add_text(f.name, ship_to);
        }
    }
    for item in &order.items {
        add_nonempty(d, f.item, &item.variant_id);
        add_nonempty(d, f.item, &item.product_id);
        if let Some(sku) = &item.sku {
            add_nonempty(d, f.item, sku);
        }
        add_nonempty(d, f.product, &item.name);
        for v in item.options.values() {
            add_nonempty(d, f.options, &value_text(v));
        }
    }
}

/// "delivered · $54.04 · Water Bottle (750ml, red); T-Shirt (blue, M)".
pub(crate) fn order_summary(order: &Order) -> String {
    const MAX_ITEMS: usize = 6;
    let status = if order.items_modified && order.status == OrderStatus::Pending {
        "pending (item modified)".to_string()
    } else {
        order.status.as_str().to_string()
    };
    let items: Vec<String> = order
        .items
        .iter()
        .take(MAX_ITEMS)
        .map(|i| {
            let opts: Vec<String> = i.options.values().map(value_text).collect();
            let qty = if i.quantity > 1 {
                format!(" ×{}", i.quantity)
            } else {
                String::new()
            };
            if opts.is_empty() {
                format!("{}{qty}", i.name)
            } else {
                format!("{} ({}){qty}", i.name, opts.join(", "))
            }
        })
        .collect();
    let mut items = items.join("; ");
    if order.items.len() > MAX_ITEMS {
        items.push_str(&format!("; +{} more", order.items.len() - MAX_ITEMS));
    }
    let mut parts = vec![status, format_money(order.total, &order.currency)];
    if !items.is_empty() {
        parts.push(items);
    }
    parts.join(" · ")
}

fn product_fields(f: &Fields, d: &mut TantivyDocument, product: &Product) {
    d.add_text(f.title, &product.name);
    d.add_text(f.summary, product_summary(product));
    add_nonempty(d, f.item, &product.id);
    add_nonempty(d, f.product, &product.name);
    for c in product
        .product_type
        .iter()
        .chain(&product.vendor)
        .chain(&product.tags)
    {
        add_nonempty(d, f.category, c);
    }
    if let Some(desc) = &product.description {
        add_nonempty(d, f.description, desc);
    }
    for v in &product.variants {
        add_nonempty(d, f.item, &v.id);
        if let Some(sku) = &v.sku {
            add_nonempty(d, f.item, sku);
        }
        if let Some(t) = &v.title {
            add_nonempty(d, f.options, t);
        }
        for val in v.options.values() {
            add_nonempty(d, f.options, &value_text(val));
        }
    }
}

/// "T-Shirt · 12 variants, 9 available · $19.99–$24.99 · color: blue, red; size: S, M".
pub(crate) fn product_summary(product: &Product) -> String {
    const MAX_VALUES: usize = 8;
    let mut parts: Vec<String> = Vec::new();
    if let Some(t) = product.product_type.as_deref().map(str::trim)
        && !t.is_empty()
    {
        parts.push(t.to_string());
    }
    let total = product.variants.len();
    let available = product.variants.iter().filter(|v| v.available).count();
    parts.push(format!(
        "{total} variant{}, {available} available",
        if total == 1 { "" } else { "s" }
    ));
    let min = product.variants.iter().min_by_key(|v| v.price);
    let max = product.variants.iter().max_by_key(|v| v.price);
    if let (Some(min), Some(max)) = (min, max) {
        if min.price == max.price {
            parts.push(format_money(min.price, &min.currency));
        } else {
            parts.push(format!(
                "{}–{}",
                format_money(min.price, &min.currency),
                format_money(max.price, &max.currency)
            ));
        }
    }
    // Option names in the product's order, then any the variants have that it does not list.
    let mut names: Vec<String> = product.option_names.clone();
    for v in &product.variants {
        for k in v.options.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let mut opts: Vec<String> = Vec::new();
    for name in names {
        let mut values: Vec<String> = Vec::new();
        for v in &product.variants {
            if let Some(val) = v.options.get(&name) {
                let t = value_text(val);
                if !values.contains(&t) {
                    values.push(t);
                }
            }
        }
        if values.is_empty() {
            continue;
        }
        let more = values.len() > MAX_VALUES;
        values.truncate(MAX_VALUES);
        let mut line = format!("{name}: {}", values.join(", "));
        if more {
            line.push_str(", …");
        }
        opts.push(line);
    }
    if !opts.is_empty() {
        parts.push(opts.join("; "));
    }
    parts.join(" · ")
}
