//! The intent model's data: the Bitext CSV plus our own example files embedded from
//! `examples/<intent>.txt`, a deterministic stratified train/held-out split by a hash of each
//! utterance, and the held-out evaluation report. It reads the one CSV it is pointed at and
//! nothing else from disk.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::model::IntentModel;
use super::{Intent, NluError};

/// One labelled utterance.
pub type Example = (String, Intent);

/// Our own example utterances, one per line, by intent.
const OWN_EXAMPLES: &[(Intent, &str)] = &[
    (Intent::ReturnItem, include_str!("examples/return_item.txt")),
    (
        Intent::ExchangeItem,
        include_str!("examples/exchange_item.txt"),
    ),
    (
        Intent::CheckAvailability,
        include_str!("examples/check_availability.txt"),
    ),
    (Intent::Greeting, include_str!("examples/greeting.txt")),
    (Intent::Thanks, include_str!("examples/thanks.txt")),
    (Intent::Other, include_str!("examples/other.txt")),
    (Intent::TrackOrder, include_str!("examples/track_order.txt")),
    (
        Intent::ContactHumanAgent,
        include_str!("examples/contact_human_agent.txt"),
    ),
    (
        Intent::CancelOrder,
        include_str!("examples/cancel_order.txt"),
    ),
    (
        Intent::ChangeOrder,
        include_str!("examples/change_order.txt"),
    ),
    (
        Intent::ChangeShippingAddress,
        include_str!("examples/change_shipping_address.txt"),
    ),
    (Intent::GetRefund, include_str!("examples/get_refund.txt")),
    (
        Intent::TrackRefund,
        include_str!("examples/track_refund.txt"),
    ),
    (Intent::Complaint, include_str!("examples/complaint.txt")),
    (
        Intent::DeliveryPeriod,
        include_str!("examples/delivery_period.txt"),
    ),
    (Intent::PlaceOrder, include_str!("examples/place_order.txt")),
    (
        Intent::CheckRefundPolicy,
        include_str!("examples/check_refund_policy.txt"),
    ),
    (
        Intent::CheckPaymentMethods,
        include_str!("examples/check_payment_methods.txt"),
    ),
    (
        Intent::PaymentIssue,
        include_str!("examples/payment_issue.txt"),
    ),
];

/// Share of each intent's examples held out for evaluation.
const HELD_OUT_SHARE: f64 = 0.2;

/// Our own examples (embedded in the binary), in file order.
pub fn own_examples() -> Vec<Example> {
    let mut out = Vec::new();
    for (intent, text) in OWN_EXAMPLES {
        for line in text.lines() {
            let line = line.trim();
            if !line.is_empty() {
                out.push((line.to_string(), *intent));
            }
        }
    }
    out
}

/// Loads the training data (Bitext CSV at `bitext_csv` + the embedded own examples), splits it,
/// and returns (train, held_out).
pub fn load_dataset(bitext_csv: &Path) -> Result<(Vec<Example>, Vec<Example>), NluError> {
    let mut all = read_bitext(bitext_csv)?;
    all.extend(own_examples());
    Ok(split(all))
}

/// The (instruction, intent) rows of the Bitext CSV.
pub(crate) fn read_bitext(path: &Path) -> Result<Vec<Example>, NluError> {
    Ok(read_bitext_rows(path)?
        .into_iter()
        .map(|r| (r.instruction, r.intent))
        .collect())
}

/// One Bitext row, with the entity columns the entity tests use.
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct BitextRow {
    pub instruction: String,
    pub intent: Intent,
    pub entity_type: String,
    pub entity_value: String,
    pub start_offset: Option<usize>,
    pub end_offset: Option<usize>,
}

pub(crate) fn read_bitext_rows(path: &Path) -> Result<Vec<BitextRow>, NluError> {
    let text = std::fs::read_to_string(path).map_err(|source| NluError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let data_err = |message: String| NluError::Data {
        path: path.to_path_buf(),
        message,
    };
    let rows = super::csv::parse(&text).map_err(data_err)?;
    let mut rows = rows.into_iter();
    let header = rows
        .next()
        .ok_or_else(|| data_err("empty file".to_string()))?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| data_err(format!("no `{name}` column")))
    };
    let (c_text, c_intent) = (col("instruction")?, col("intent")?);
    let (c_type, c_value) = (col("entity_type")?, col("entity_value")?);
    let (c_start, c_end) = (col("start_offset")?, col("end_offset")?);
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let get = |c: usize| row.get(c).map(String::as_str).unwrap_or("");
        let intent = Intent::parse(get(c_intent)).ok_or_else(|| {
            data_err(format!(
                "record {}: unknown intent {:?}",
                i + 2,
                get(c_intent)
            ))
        })?;
        let text = get(c_text).trim();
        if text.is_empty() {
            continue;
        }
        out.push(BitextRow {
            instruction: text.to_string(),
            intent,
            entity_type: get(c_type).to_string(),
            entity_value: get(c_value).to_string(),
            start_offset: get(c_start).trim().parse().ok(),
            end_offset: get(c_end).trim().parse().ok(),
        });
    }
    Ok(out)
}

fn utterance_key(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn utterance_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Drops repeated utterances (case and spacing ignored; the first wins), then holds out, per
/// intent, the 20 % of utterances with the smallest SHA-256 of their lower-cased text. Order
/// within each half is the input order.
pub fn split(examples: Vec<Example>) -> (Vec<Example>, Vec<Example>) {
    let mut seen = HashSet::new();
    let unique: Vec<Example> = examples
        .into_iter()
        .filter(|(t, _)| seen.insert(utterance_key(t)))
        .collect();
    let mut by_intent: HashMap<Intent, Vec<([u8; 32], usize)>> = HashMap::new();
    for (i, (t, intent)) in unique.iter().enumerate() {
        by_intent
            .entry(*intent)
            .or_default()
            .push((utterance_hash(&utterance_key(t)), i));
    }
    let mut held = HashSet::new();
    for list in by_intent.values_mut() {
        list.sort_unstable();
        let n = (list.len() as f64 * HELD_OUT_SHARE).round() as usize;
        held.extend(list.iter().take(n).map(|(_, i)| *i));
    }
    let (mut train, mut held_out) = (Vec::new(), Vec::new());
    for (i, e) in unique.into_iter().enumerate() {
        if held.contains(&i) {
            held_out.push(e);
        } else {
            train.push(e);
        }
    }
    (train, held_out)
}

/// How a model does on held-out examples.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    pub total: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// (intent, examples, correct), in [`Intent::ALL`] order, intents with examples only.
    pub per_intent: Vec<(Intent, usize, usize)>,
    /// (true, predicted, count) for the mistakes, most frequent first.
    pub confused: Vec<(Intent, Intent, usize)>,
}

/// Classifies every held-out example with `model` and tallies the results.
pub fn evaluate(model: &IntentModel, held_out: &[(String, Intent)]) -> EvalReport {
    let mut per: HashMap<Intent, (usize, usize)> = HashMap::new();
    let mut confused: HashMap<(Intent, Intent), usize> = HashMap::new();
    let mut correct = 0;
    for (text, truth) in held_out {
        let got = model.classify(text).intent;
        let e = per.entry(*truth).or_default();
        e.0 += 1;
        if got == *truth {
            e.1 += 1;
            correct += 1;
        } else {
            *confused.entry((*truth, got)).or_default() += 1;
        }
    }
    let per_intent = Intent::ALL
        .iter()
        .filter_map(|i| per.get(i).map(|(n, c)| (*i, *n, *c)))
        .collect();
    let mut confused: Vec<(Intent, Intent, usize)> =
        confused.into_iter().map(|((t, p), n)| (t, p, n)).collect();
    confused.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    let total = held_out.len();
    EvalReport {
        total,
        correct,
        accuracy: if total == 0 {
            0.0
        } else {
            correct as f64 / total as f64
        },
        per_intent,
        confused,
    }
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "accuracy {:.4} ({}/{} held-out utterances)",
            self.accuracy, self.correct, self.total
        )?;
        writeln!(f, "most confused (true -> predicted):")?;
        if self.confused.is_empty() {
            writeln!(f, "  none")?;
        }
        for (t, p, n) in self.confused.iter().take(10) {
            writeln!(f, "  {:<26} -> {:<26} {n}", t.as_str(), p.as_str())?;
        }
        writeln!(f, "per intent:")?;
        for (i, n, c) in &self.per_intent {
            let acc = if *n == 0 { 0.0 } else { *c as f64 / *n as f64 };
            writeln!(f, "  {:<26} {acc:.3} ({c}/{n})", i.as_str())?;
        }
        Ok(())
    }
}
