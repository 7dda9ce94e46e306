//! Import: turns outside data (Shopify Admin REST JSON, τ-bench retail JSON) into Concierge's
//! model values, and model values back into τ-bench JSON. Pure conversion: the only I/O here
//! is reading the files [`load`] is pointed at; nothing talks to the store, which persists each
//! [`ImportBatch`] in one transaction.

pub mod shopify;
pub mod tau;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::commerce::model::{Customer, Order, Product};

/// What a file import produced. Customers first, then products, then orders (that is the write
/// order).
#[derive(Debug, Default)]
pub struct ImportBatch {
    pub customers: Vec<Customer>,
    pub products: Vec<Product>,
    pub orders: Vec<Order>,
}

/// A malformed input: which file, which record (0-based index within the file, or within its
/// section for a τ2 `db.json`), which field (a JSON path inside the record such as
/// `line_items[0].price`), and what was wrong. `index` and `field` are `None` when the problem
/// is not tied to one record or field (an unreadable file, a JSON syntax error).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ImportError {
    pub file: String,
    pub index: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl ImportError {
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> ImportError {
        ImportError {
            file: file.into(),
            index: None,
            field: None,
            message: message.into(),
        }
    }

    /// The same error, tied to record `index`.
    pub fn at(mut self, index: usize) -> ImportError {
        self.index = Some(index);
        self
    }

    /// The same error, tied to `field` (empty: no field).
    pub fn in_field(mut self, field: impl Into<String>) -> ImportError {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    fn describe(&self) -> String {
        let mut out = self.file.clone();
        if let Some(i) = self.index {
            out.push_str(&format!(": record {i}"));
        }
        if let Some(f) = &self.field {
            out.push_str(&format!(": field `{f}`"));
        }
        out.push_str(": ");
        out.push_str(&self.message);
        out
    }
}

/// What `concierge import KIND PATH` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportKind {
    /// Shopify orders (`{"orders":[…]}`, `{"order":{…}}`, an `orders/create` body, an array or NDJSON).
    ShopifyOrders,
    /// Shopify products, in the same envelopes.
    ShopifyProducts,
    /// Shopify customers, in the same envelopes.
    ShopifyCustomers,
    /// A τ-bench v1 retail folder (users.json, products.json, orders.json) or a τ2 `db.json`.
    TauRetail,
}

/// Reads PATH as KIND: one batch per file, labelled with the file's path. A directory given for a
/// Shopify kind means each `.json` / `.ndjson` / `.jsonl` file in it, in name order; for
/// `tau-retail` a directory is one τ-bench folder (one batch) and a file is a τ2 `db.json`.
pub fn load(kind: ImportKind, path: &Path) -> Result<Vec<(String, ImportBatch)>, ImportError> {
    let label = path.display().to_string();
    let parse: fn(&str, &[u8]) -> Result<ImportBatch, ImportError> = match kind {
        ImportKind::ShopifyOrders => shopify::parse_orders,
        ImportKind::ShopifyProducts => shopify::parse_products,
        ImportKind::ShopifyCustomers => shopify::parse_customers,
        ImportKind::TauRetail if path.is_dir() => {
            return Ok(vec![(label, tau::parse_folder(path)?)]);
        }
        ImportKind::TauRetail => tau::parse_db,
    };
    let files = if path.is_dir() {
        json_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .map(|file| {
            let label = file.display().to_string();
            let bytes = read(file)?;
            let batch = parse(&label, &bytes)?;
            Ok((label, batch))
        })
        .collect()
}

/// The JSON / NDJSON files directly inside `dir`, sorted by name.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let label = dir.display().to_string();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ImportError::new(&label, format!("cannot list directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| ImportError::new(&label, format!("cannot list directory: {e}")))?
            .path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if path.is_file() && matches!(ext, "json" | "ndjson" | "jsonl") {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(ImportError::new(
            label,
            "no .json, .ndjson or .jsonl files in this directory",
        ));
    }
    files.sort();
    Ok(files)
}

/// A file's bytes, or an error naming it.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, ImportError> {
    std::fs::read(path)
        .map_err(|e| ImportError::new(path.display().to_string(), format!("cannot read: {e}")))
}

/// Deserializes one record, reporting the JSON path of a bad field. A missing field is reported
/// as the path of that field (`line_items[0].price`), not of the object lacking it.
pub(crate) fn decode<T: DeserializeOwned>(
    file: &str,
    index: usize,
    record: Value,
) -> Result<T, ImportError> {
    serde_path_to_error::deserialize(record).map_err(|e| {
        let mut field = e.path().to_string();
        if field == "." {
            field.clear();
        }
        let message = e.into_inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'));
        if let Some(name) = missing {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(name);
        }
        ImportError::new(file, message).at(index).in_field(field)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_names_what_is_known() {
        let e = ImportError::new("orders.json", "not a decimal amount")
            .at(3)
            .in_field("line_items[0].price");
        assert_eq!(
            e.to_string(),
            "orders.json: record 3: field `line_items[0].price`: not a decimal amount"
        );
        let e = ImportError::new("x.json", "cannot read: gone");
        assert_eq!(e.to_string(), "x.json: cannot read: gone");
    }

    #[test]
    fn decode_reports_missing_field_path() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            price: String,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Outer {
            id: u64,
            lines: Vec<Inner>,
        }
        let v = serde_json::json!({"id": 1, "lines": [{"price": "1"}, {}]});
        let e = decode::<Outer>("f", 7, v).unwrap_err();
        assert_eq!(
            (e.index, e.field.as_deref()),
            (Some(7), Some("lines[1].price"))
        );
        let e = decode::<Outer>("f", 0, serde_json::json!({"lines": []})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("id"));
    }

    #[test]
    fn load_reads_shopify_dir_and_tau_folder() {
        let dir = tempfile::tempdir().unwrap();
        let order = br##"{"order":{"id":5,"name":"#1005","total_price":"1.00","currency":"EUR"}}"##;
        std::fs::write(dir.path().join("b.json"), order).unwrap();
        std::fs::write(dir.path().join("a.ndjson"), b"{\"id\":4}\n\n{\"id\":6}\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let batches = load(ImportKind::ShopifyOrders, dir.path()).unwrap();
        let counts: Vec<usize> = batches.iter().map(|(_, b)| b.orders.len()).collect();
        assert_eq!(counts, [2, 1]);
        assert!(batches[0].0.ends_with("a.ndjson"));

        let missing = load(ImportKind::TauRetail, dir.path()).unwrap_err();
        assert!(missing.file.ends_with("users.json"), "{missing}");
        let unreadable = load(ImportKind::ShopifyOrders, &dir.path().join("nope.json"));
        assert!(unreadable.unwrap_err().message.starts_with("cannot read"));
    }
}
