//! The intent model: multinomial logistic regression over the sparse features of
//! [`super::features`], trained by SGD with L2 (fixed seed, so training is deterministic), its
//! weights quantized to 8 bits and written as a compact text file. A softmax temperature fitted
//! on a slice of the training data the provisional model did not see makes the probabilities
//! roughly calibrated. It knows nothing of the data files; [`super::dataset`] feeds it.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::features::{self, FeatureConfig};
use super::{Classification, Intent, NluError};

const MAGIC: &str = "concierge-intent-model 1";
const K: usize = Intent::ALL.len();

/// A trained intent classifier. Build one with [`train`], or read the shipped one with
/// [`super::shipped_model`].
#[derive(Debug, Clone)]
pub struct IntentModel {
    cfg: FeatureConfig,
    temperature: f32,
    /// Weight quantum: stored weights are `i8 × scale`.
    scale: f32,
    bias: [f32; K],
    vocab: HashMap<String, u32>,
    /// Feature names in id order (for writing).
    names: Vec<String>,
    /// `names.len() × K`, row-major by feature.
    weights: Vec<f32>,
}

/// Training knobs. The defaults are the shipped model's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrainConfig {
    pub features: FeatureConfig,
    /// Features seen in fewer training examples are dropped.
    pub min_count: usize,
    pub epochs: usize,
    pub learning_rate: f32,
    pub l2: f32,
    pub seed: u64,
    /// Share of the training examples held back to fit the softmax temperature (0 = none).
    pub calibration_share: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            features: FeatureConfig::default(),
            min_count: 2,
            epochs: 12,
            learning_rate: 0.5,
            l2: 1e-5,
            seed: 0x5eed_c0c1_e26e,
            calibration_share: 0.15,
        }
    }
}

/// Trains the intent model on `examples` with the shipped settings (deterministic).
pub fn train(examples: &[(String, Intent)]) -> IntentModel {
    train_with(examples, &TrainConfig::default())
}

pub(crate) fn train_with(examples: &[(String, Intent)], tc: &TrainConfig) -> IntentModel {
    let mut temperature = 1.0;
    if tc.calibration_share > 0.0 {
        let (fit, calib): (Vec<_>, Vec<_>) = examples
            .iter()
            .cloned()
            .partition(|(text, _)| !in_calibration_slice(text, tc.calibration_share));
        if !fit.is_empty() && !calib.is_empty() {
            let provisional = fit_model(&fit, tc, 1.0);
            temperature = provisional.best_temperature(&calib);
        }
    }
    fit_model(examples, tc, temperature)
}

fn in_calibration_slice(text: &str, share: f64) -> bool {
    let digest = Sha256::digest(format!("calibration:{}", text.trim().to_lowercase()).as_bytes());
    let v = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    (v as f64) < share * (u32::MAX as f64)
}

fn fit_model(examples: &[(String, Intent)], tc: &TrainConfig, temperature: f32) -> IntentModel {
    let cfg = tc.features;
    // Vocabulary: features present in at least `min_count` examples, in name order.
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut seen: Vec<String> = Vec::new();
    for (text, _) in examples {
        seen.clear();
        features::featurize(&features::tokens(text), &cfg, |f, _| {
            seen.push(f.to_string())
        });
        seen.sort_unstable();
        seen.dedup();
        for f in seen.drain(..) {
            *counts.entry(f).or_insert(0) += 1;
        }
    }
    let mut names: Vec<String> = counts
        .into_iter()
        .filter(|(_, c)| *c >= tc.min_count)
        .map(|(f, _)| f)
        .collect();
    names.sort_unstable();
    let vocab: HashMap<String, u32> = names
        .iter()
        .enumerate()
        .map(|(i, f)| (f.clone(), i as u32))
        .collect();
    let mut model = IntentModel {
        cfg,
        temperature,
        scale: 1.0,
        bias: [0.0; K],
        vocab,
        weights: vec![0.0; names.len() * K],
        names,
    };
    let data: Vec<(Vec<(u32, f32)>, usize)> = examples
        .iter()
        .map(|(text, intent)| (model.vector(text), intent.index()))
        .collect();

    // SGD on the softmax loss; L2 as a shared multiplicative decay (weights = decay × stored).
    let mut rng = SplitMix64(tc.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut decay: f64 = 1.0;
    let mut stored = vec![0.0f32; model.weights.len()];
    let mut bias = [0.0f32; K];
    let mut step: u64 = 0;
    let total_steps = (tc.epochs * data.len()).max(1) as f64;
    let mut probs = [0.0f32; K];
    for _ in 0..tc.epochs {
        for i in (1..order.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        for &ix in &order {
            let (x, y) = &data[ix];
            let lr = tc.learning_rate * (1.0 - 0.9 * (step as f64 / total_steps)) as f32;
            step += 1;
            probs.copy_from_slice(&bias);
            for &(f, v) in x {
                let row = &stored[f as usize * K..f as usize * K + K];
                let v = v * decay as f32;
                for k in 0..K {
                    probs[k] += row[k] * v;
                }
            }
            softmax(&mut probs, 1.0);
            probs[*y] -= 1.0; // now the gradient of the loss w.r.t. the scores
            decay *= 1.0 - (lr * tc.l2) as f64;
            let g_scale = lr / decay as f32;
            for &(f, v) in x {
                let row = &mut stored[f as usize * K..f as usize * K + K];
                for k in 0..K {
                    row[k] -= g_scale * probs[k] * v;
                }
            }
            for k in 0..K {
                bias[k] -= lr * probs[k];
            }
            if decay < 1e-6 {
                for w in stored.iter_mut() {
                    *w *= decay as f32;
                }
                decay = 1.0;
            }
        }
    }
    for w in stored.iter_mut() {
        *w *= decay as f32;
    }
    model.set_quantized(&stored, &bias);
    model
}

impl IntentModel {
    /// A model with no features that answers `other` for everything.
    pub(crate) fn empty() -> IntentModel {
        let mut bias = [0.0; K];
        bias[Intent::Other.index()] = 1.0;
        IntentModel {
            cfg: FeatureConfig::default(),
            temperature: 1.0,
            scale: 1.0,
            bias,
            vocab: HashMap::new(),
            names: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// Number of features the model knows.
    pub fn feature_count(&self) -> usize {
        self.names.len()
    }

    /// The sparse, L2-normalised feature vector of `text` (ids sorted, unknown features dropped).
    fn vector(&self, text: &str) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = Vec::new();
        features::featurize(&features::tokens(text), &self.cfg, |f, w| {
            if let Some(&id) = self.vocab.get(f) {
                v.push((id, w));
            }
        });
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        v.dedup_by_key(|e| e.0);
        let norm = v.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
        if norm > 0.0 {
            for e in v.iter_mut() {
                e.1 /= norm;
            }
        }
        v
    }

    fn scores(&self, text: &str) -> ([f32; K], bool) {
        let x = self.vector(text);
        let mut s = self.bias;
        for &(f, v) in &x {
            let row = &self.weights[f as usize * K..f as usize * K + K];
            for k in 0..K {
                s[k] += row[k] * v;
            }
        }
        (s, !x.is_empty())
    }

    /// The probabilities of every intent for `text`, in [`Intent::ALL`] order.
    pub fn probabilities(&self, text: &str) -> [f32; K] {
        let (mut s, known) = self.scores(text);
        if !known {
            // Nothing the model has seen (empty text, emoji, another language): not a request.
            let mut p = [0.0; K];
            p[Intent::Other.index()] = 1.0;
            return p;
        }
        softmax(&mut s, self.temperature);
        s
    }

    /// The most likely intent of `text`, its probability and the runner-up.
    pub fn classify(&self, text: &str) -> Classification {
        let p = self.probabilities(text);
        let mut best = Intent::Other.index();
        let mut second: Option<usize> = None;
        for k in 0..K {
            if p[k] > p[best] || (p[k] == p[best] && k < best) {
                best = k;
            }
        }
        for k in 0..K {
            if k != best && second.is_none_or(|s| p[k] > p[s]) {
                second = Some(k);
            }
        }
        Classification {
            intent: Intent::ALL[best],
            confidence: p[best],
            runner_up: second
                .filter(|&s| p[s] > 0.0)
                .map(|s| (Intent::ALL[s], p[s])),
        }
    }

    /// The temperature in 0.3..=5 that minimises the log-loss on `examples`.
    fn best_temperature(&self, examples: &[(String, Intent)]) -> f32 {
        let scored: Vec<([f32; K], usize)> = examples
            .iter()
            .map(|(t, i)| (self.scores(t).0, i.index()))
            .collect();
        let mut best = (f64::INFINITY, 1.0f32);
        for step in 3..=50 {
            let t = step as f32 / 10.0;
            let mut loss = 0.0f64;
            for (s, y) in &scored {
                let mut p = *s;
                softmax(&mut p, t);
                loss -= (p[*y].max(1e-12) as f64).ln();
            }
            if loss < best.0 {
                best = (loss, t);
            }
        }
        best.1
    }

    /// Quantizes `weights` to 8 bits, drops features whose weights all round to zero, and keeps
    /// the dequantized values (so writing and reading the model changes nothing).
    fn set_quantized(&mut self, weights: &[f32], bias: &[f32; K]) {
        let max = weights.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        let scale: f32 = format!("{scale:e}").parse().unwrap_or(scale);
        let mut names = Vec::new();
        let mut kept = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            let q: Vec<f32> = weights[i * K..i * K + K]
                .iter()
                .map(|w| (w / scale).round().clamp(-127.0, 127.0))
                .collect();
            if q.iter().any(|v| *v != 0.0) {
                names.push(name.clone());
                kept.extend(q.iter().map(|v| v * scale));
            }
        }
        self.scale = scale;
        self.bias = bias.map(round_bias);
        self.vocab = names
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), i as u32))
            .collect();
        self.names = names;
        self.weights = kept;
    }

    /// The model file: a header, then one line per feature, `name<TAB>k:q k:q …` with the
    /// non-zero 8-bit weights by class index.
    pub fn to_bytes(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut s = String::with_capacity(self.names.len() * 40);
        let _ = writeln!(s, "{MAGIC}");
        let c = &self.cfg;
        let _ = writeln!(
            s,
            "features char {} {} {} bigram {}",
            c.char_min, c.char_max, c.char_weight, c.bigram_weight
        );
        let _ = writeln!(s, "temperature {}", self.temperature);
        let _ = writeln!(s, "scale {:e}", self.scale);
        let classes: Vec<&str> = Intent::ALL.iter().map(|i| i.as_str()).collect();
        let _ = writeln!(s, "classes {}", classes.join(" "));
        let bias: Vec<String> = self.bias.iter().map(|b| b.to_string()).collect();
        let _ = writeln!(s, "bias {}", bias.join(" "));
        let _ = writeln!(s, "weights {}", self.names.len());
        for (i, name) in self.names.iter().enumerate() {
            s.push_str(name);
            s.push('\t');
            let mut first = true;
            for k in 0..K {
                let q = (self.weights[i * K + k] / self.scale).round() as i32;
                if q != 0 {
                    if !first {
                        s.push(' ');
                    }
                    first = false;
                    let _ = write!(s, "{k}:{q}");
                }
            }
            s.push('\n');
        }
        s.into_bytes()
    }

    /// Reads a model file written by [`IntentModel::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<IntentModel, NluError> {
        let bad = |m: String| NluError::Model(m);
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let mut lines = text.lines();
        let mut header = |key: &str| -> Result<Vec<&str>, NluError> {
            let line = lines
                .next()
                .ok_or_else(|| bad(format!("missing `{key}` line")))?;
            let mut parts = line.split(' ');
            if parts.next() != Some(key) {
                return Err(bad(format!("expected `{key}`, found {line:?}")));
            }
            Ok(parts.collect())
        };
        let magic = header("concierge-intent-model")?;
        if magic != ["1"] {
            return Err(bad(format!("unsupported version {magic:?}")));
        }
        let f = header("features")?;
        let num = |s: Option<&&str>| -> Result<f32, NluError> {
            s.and_then(|v| v.parse::<f32>().ok())
                .ok_or_else(|| bad("bad number in header".to_string()))
        };
        if f.len() != 6 || f[0] != "char" || f[4] != "bigram" {
            return Err(bad(format!("bad features line {f:?}")));
        }
        let cfg = FeatureConfig {
            char_min: num(f.get(1))? as usize,
            char_max: num(f.get(2))? as usize,
            char_weight: num(f.get(3))?,
            bigram_weight: num(f.get(5))?,
        };
        let temperature = num(header("temperature")?.first())?;
        let scale = num(header("scale")?.first())?;
        let classes = header("classes")?;
        let expected: Vec<&str> = Intent::ALL.iter().map(|i| i.as_str()).collect();
        if classes != expected {
            return Err(bad("class list differs from Intent::ALL".to_string()));
        }
        let b = header("bias")?;
        if b.len() != K {
            return Err(bad(format!("{} biases for {K} classes", b.len())));
        }
        let mut bias = [0.0; K];
        for (k, v) in b.iter().enumerate() {
            bias[k] = num(Some(v))?;
        }
        let n = num(header("weights")?.first())? as usize;
        let mut names = Vec::with_capacity(n);
        let mut weights = vec![0.0f32; n * K];
        for (i, line) in lines.enumerate() {
            if i >= n {
                return Err(bad(format!("more than {n} weight lines")));
            }
            let (name, ws) = line
                .split_once('\t')
                .ok_or_else(|| bad(format!("weight line {} has no tab", i + 1)))?;
            for entry in ws.split(' ').filter(|e| !e.is_empty()) {
                let (k, q) = entry
                    .split_once(':')
                    .and_then(|(k, q)| Some((k.parse::<usize>().ok()?, q.parse::<i32>().ok()?)))
                    .filter(|(k, _)| *k < K)
                    .ok_or_else(|| bad(format!("bad weight {entry:?} for {name:?}")))?;
                weights[i * K + k] = q as f32 * scale;
            }
            names.push(name.to_string());
        }
        if names.len() != n {
            return Err(bad(format!(
                "{} weight lines, header says {n}",
                names.len()
            )));
        }
        let vocab = names
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), i as u32))
            .collect();
        Ok(IntentModel {
            cfg,
            temperature,
            scale,
            bias,
            vocab,
            names,
            weights,
        })
    }
}

/// Biases are written as decimal text; keep them at a precision that survives the round trip.
fn round_bias(b: f32) -> f32 {
    (b * 10_000.0).round() / 10_000.0
}

fn softmax(s: &mut [f32; K], temperature: f32) {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut sum = 0.0;
    for v in s.iter_mut() {
        *v = ((*v - max) / temperature).exp();
        sum += *v;
    }
    for v in s.iter_mut() {
        *v /= sum;
    }
}

/// A tiny deterministic PRNG for shuffling (SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
