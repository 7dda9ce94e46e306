//! The brand's negotiation strategy, read from `brand/negotiation.toml` (see
//! docs/negotiation.md): what is negotiable, the floors, costs, quantity breaks, shipping
//! options, the concession curve and acceptance rule, rounds and time.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::commerce::Minor;

/// The most rounds a negotiation may have (the protocol's cap).
pub const MAX_ROUNDS_CAP: u32 = 50;
/// The longest a negotiation may last, in milliseconds (the protocol's cap).
pub const MAX_DEADLINE_MS: i64 = 60_000;

/// `brand/negotiation.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegotiationConfig {
    /// Off: `open` is refused with `not_negotiable`.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "usd")]
    pub currency: String,
    /// Rounds (moves of both sides) at most; an agent may ask for fewer.
    #[serde(default = "default_rounds")]
    pub max_rounds: u32,
    /// Milliseconds a negotiation may last at most; an agent may ask for less.
    #[serde(default = "default_deadline")]
    pub deadline_ms: i64,
    /// Units per line when a variant's stock is not tracked.
    #[serde(default = "default_max_quantity")]
    pub max_quantity: i64,
    /// Lines per negotiation.
    #[serde(default = "default_max_lines")]
    pub max_lines: usize,
    /// How long a deal's terms hold after the deal, in seconds.
    #[serde(default = "default_valid")]
    pub deal_valid_secs: i64,
    /// Negotiations one socket may have open at once.
    #[serde(default = "default_per_socket")]
    pub max_open_per_socket: usize,
    #[serde(default)]
    pub strategy: Strategy,
    /// The rule for everything not named below.
    #[serde(default)]
    pub defaults: Rule,
    /// Rules by product category (product type), case-insensitive.
    #[serde(default)]
    pub categories: BTreeMap<String, Rule>,
    /// Rules by product id.
    #[serde(default)]
    pub products: BTreeMap<String, Rule>,
    /// Lower asking prices for larger quantities of a line.
    #[serde(default)]
    pub quantity_breaks: Vec<QuantityBreak>,
    /// Shipping options the agent chooses from; the first is the default.
    #[serde(default = "default_shipping")]
    pub shipping: Vec<ShippingOption>,
    /// Exposure limits and circuit breakers (`[risk]`, see docs/negotiation.md).
    #[serde(default)]
    pub risk: super::risk::RiskConfig,
}

/// The concession curve and the acceptance rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strategy {
    /// e in `x(t) = 1 − (1 − target)·t^e`: above 1 concedes late (Boulware), 1 linearly,
    /// below 1 early (Conceder). `x` is the price's position between floor (0) and ask (1).
    #[serde(default = "default_exponent")]
    pub exponent: f64,
    /// The position the brand concedes to by the deadline (0 = floor, 1 = asking price).
    #[serde(default = "default_target")]
    pub target: f64,
    /// From this share of the rounds or time on, an offer at or above the target is accepted.
    #[serde(default = "default_near")]
    pub accept_near_deadline: f64,
}

/// Floors and costs for a product, a category or everything. Unset fields fall back to the
/// category's, then the defaults'.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub negotiable: Option<bool>,
    /// The lowest unit price as a share of the list price (0.8 = 20 % off at most).
    pub floor_share: Option<f64>,
    /// The lowest unit price in minor units; with `floor_share` too, the higher one holds.
    pub floor_amount: Option<Minor>,
    /// The brand's unit cost as a share of the list price, when the cost is not known.
    pub cost_ratio: Option<f64>,
}

/// From `min_quantity` units of a line on, the asking price is `discount` (a share) lower.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantityBreak {
    pub min_quantity: i64,
    pub discount: f64,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShippingOption {
    pub id: String,
    pub label: String,
    /// What the buyer pays, minor units.
    pub price: Minor,
    /// What it costs the brand, minor units.
    pub cost: Minor,
}

fn yes() -> bool {
    true
}
fn usd() -> String {
    "USD".into()
}
fn default_rounds() -> u32 {
    20
}
fn default_deadline() -> i64 {
    30_000
}
fn default_max_quantity() -> i64 {
    20
}
fn default_max_lines() -> usize {
    10
}
fn default_valid() -> i64 {
    86_400
}
fn default_per_socket() -> usize {
    256
}
fn default_exponent() -> f64 {
    4.0
}
fn default_target() -> f64 {
    0.35
}
fn default_near() -> f64 {
    0.95
}
fn default_shipping() -> Vec<ShippingOption> {
    vec![ShippingOption {
        id: "standard".into(),
        label: "Standard".into(),
        price: 0,
        cost: 0,
    }]
}

impl Default for Strategy {
    fn default() -> Strategy {
        Strategy {
            exponent: default_exponent(),
            target: default_target(),
            accept_near_deadline: default_near(),
        }
    }
}

impl Default for NegotiationConfig {
    fn default() -> NegotiationConfig {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

/// A product's resolved rule: what the strategy and the limits use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    pub negotiable: bool,
    pub floor_share: f64,
    pub floor_amount: Minor,
    pub cost_ratio: f64,
}

impl NegotiationConfig {
    /// Reads and checks `path`; a missing file is the defaults.
    pub fn load(path: &Path) -> anyhow::Result<NegotiationConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let config: NegotiationConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// The configuration of the brand in `brand_dir`, read once per process (a missing file
    /// gives the defaults; a broken one is logged and gives the defaults with negotiation off).
    pub fn for_brand(brand_dir: &Path) -> std::sync::Arc<NegotiationConfig> {
        use std::sync::{Arc, Mutex, OnceLock};
        type Cache = Mutex<BTreeMap<std::path::PathBuf, Arc<NegotiationConfig>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(brand_dir.to_path_buf())
            .or_insert_with(|| {
                Arc::new(
                    NegotiationConfig::load(&brand_dir.join("negotiation.toml")).unwrap_or_else(
                        |e| {
                            tracing::error!(error = %e, "negotiation is off: the strategy file is broken");
                            NegotiationConfig {
                                enabled: false,
                                ..Default::default()
                            }
                        },
                    ),
                )
            })
            .clone()
    }

    /// Every value in range; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        if self.max_rounds < 2 || self.max_rounds > MAX_ROUNDS_CAP {
            return Err(format!("max_rounds must be 2..={MAX_ROUNDS_CAP}"));
        }
        if self.deadline_ms < 100 || self.deadline_ms > MAX_DEADLINE_MS {
            return Err(format!("deadline_ms must be 100..={MAX_DEADLINE_MS}"));
        }
        if self.max_quantity < 1 || self.max_lines < 1 || self.max_open_per_socket < 1 {
            return Err(
                "max_quantity, max_lines and max_open_per_socket must be at least 1".into(),
            );
        }
        let s = &self.strategy;
        if !(s.exponent > 0.0 && s.exponent <= 100.0) {
            return Err("strategy.exponent must be in (0, 100]".into());
        }
        if !(0.0..=1.0).contains(&s.target) || !(0.0..=1.0).contains(&s.accept_near_deadline) {
            return Err(
                "strategy.target and strategy.accept_near_deadline must be in [0, 1]".into(),
            );
        }
        let rules = std::iter::once(("defaults".to_string(), &self.defaults))
            .chain(
                self.categories
                    .iter()
                    .map(|(k, r)| (format!("categories.{k:?}"), r)),
            )
            .chain(
                self.products
                    .iter()
                    .map(|(k, r)| (format!("products.{k:?}"), r)),
            );
        for (name, r) in rules {
            if let Some(f) = r.floor_share
                && !(0.0..=1.0).contains(&f)
            {
                return Err(format!("{name}.floor_share must be in [0, 1]"));
            }
            if let Some(c) = r.cost_ratio
                && !(0.0..=1.0).contains(&c)
            {
                return Err(format!("{name}.cost_ratio must be in [0, 1]"));
            }
            if r.floor_amount.is_some_and(|a| a < 0) {
                return Err(format!("{name}.floor_amount must not be negative"));
            }
        }
        for b in &self.quantity_breaks {
            if b.min_quantity < 2 || !(0.0..1.0).contains(&b.discount) {
                return Err("quantity_breaks: min_quantity ≥ 2 and discount in [0, 1)".into());
            }
        }
        self.risk.check()?;
        if self.shipping.is_empty() {
            return Err("at least one shipping option".into());
        }
        for (i, o) in self.shipping.iter().enumerate() {
            if o.id.trim().is_empty() || o.price < 0 || o.cost < 0 {
                return Err(format!("shipping[{i}]: an id, and price and cost ≥ 0"));
            }
            if self.shipping[..i].iter().any(|p| p.id == o.id) {
                return Err(format!("shipping[{i}]: id {:?} twice", o.id));
            }
        }
        Ok(())
    }

    /// The rule for a product: its own, else its category's, else the defaults, else built-in
    /// defaults (negotiable, floor 80 % of list, cost 60 % of list).
    pub fn rule(&self, product_id: &str, category: Option<&str>) -> Resolved {
        let product = self.products.get(product_id);
        let cat = category.and_then(|c| {
            self.categories
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(c))
                .map(|(_, r)| r)
        });
        let layers = [product, cat, Some(&self.defaults)];
        let pick = |f: &dyn Fn(&Rule) -> Option<f64>| layers.iter().flatten().find_map(|r| f(r));
        Resolved {
            negotiable: layers
                .iter()
                .flatten()
                .find_map(|r| r.negotiable)
                .unwrap_or(true),
            floor_share: pick(&|r| r.floor_share).unwrap_or(0.8),
            floor_amount: layers
                .iter()
                .flatten()
                .find_map(|r| r.floor_amount)
                .unwrap_or(0),
            cost_ratio: pick(&|r| r.cost_ratio).unwrap_or(0.6),
        }
    }

    /// The asking-price discount for `quantity` units of a line (the largest break reached).
    pub fn break_discount(&self, quantity: i64) -> f64 {
        self.quantity_breaks
            .iter()
            .filter(|b| quantity >= b.min_quantity)
            .map(|b| b.discount)
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_strategy_file_loads_and_rules_fall_back() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("brand/negotiation.toml");
        let c = NegotiationConfig::load(&path).expect("brand/negotiation.toml");
        assert!(c.enabled);
        let r = c.rule("nope", Some("no such category"));
        assert!(r.negotiable);
        assert!(r.floor_share > 0.0 && r.floor_share < 1.0);
        let d = NegotiationConfig::default();
        assert_eq!(d.max_rounds, 20);
        assert!(d.check().is_ok());
        assert!(toml::from_str::<NegotiationConfig>("max_roundz = 3").is_err());
        let bad: NegotiationConfig = toml::from_str("max_rounds = 80").unwrap();
        assert!(bad.check().unwrap_err().contains("max_rounds"));
    }
}
