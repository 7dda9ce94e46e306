//! Terms and the negotiable ranges (`issues`): what both sides offer, as the protocol writes it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::ShippingOption;
use crate::commerce::Minor;

/// One line of terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub variant_id: String,
    pub quantity: i64,
    /// Minor units.
    pub unit_price: Minor,
}

/// `{"lines": [...], "shipping": "<option id>", "currency": "USD"}`; the total is derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    pub lines: Vec<Line>,
    pub shipping: String,
    pub currency: String,
}

impl Terms {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// `sha256:` + hex of SHA-256 over the JCS bytes of the terms.
    pub fn hash(&self) -> String {
        crate::util::jcs_sha256(&self.to_json())
    }

    pub fn line(&self, variant_id: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.variant_id == variant_id)
    }
}

/// One negotiable line, as fixed at `open`: the product, its list price, floor, cost and the
/// quantity range (stock-aware).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineSetup {
    pub variant_id: String,
    pub product_id: String,
    pub name: String,
    pub category: String,
    /// List unit price, minor units.
    pub list_price: Minor,
    /// The lowest unit price the brand ever offers or accepts (a hard limit).
    pub floor: Minor,
    /// The brand's unit cost (known, or `cost_ratio` of list).
    pub cost: Minor,
    pub min_quantity: i64,
    /// At most this many units: stock, or `max_quantity` when stock is not tracked.
    pub max_quantity: i64,
    /// The quantity the agent asked for at `open`.
    pub quantity: i64,
}

/// What is fixed when a negotiation opens: lines, shipping options, strategy and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub currency: String,
    pub lines: Vec<LineSetup>,
    pub shipping: Vec<ShippingOption>,
    /// Asking-price discounts by quantity: (min_quantity, discount).
    pub breaks: Vec<(i64, f64)>,
    pub exponent: f64,
    pub target: f64,
    pub accept_near_deadline: f64,
    /// What the agent's token had left to spend when the negotiation opened (None = no limit).
    pub remaining_limit: Option<Minor>,
    /// The token's categories, lower-cased (empty = any).
    pub token_categories: Vec<String>,
    pub max_rounds: u32,
    pub opened_at: i64,
    pub deadline_at: i64,
    pub deal_valid_ms: i64,
}

impl Setup {
    pub fn line(&self, variant_id: &str) -> Option<&LineSetup> {
        self.lines.iter().find(|l| l.variant_id == variant_id)
    }

    pub fn shipping_option(&self, id: &str) -> Option<&ShippingOption> {
        self.shipping.iter().find(|o| o.id == id)
    }

    /// The asking unit price for `quantity` units of a line: list less the quantity break,
    /// never below the floor.
    pub fn ask(&self, line: &LineSetup, quantity: i64) -> Minor {
        let discount = self
            .breaks
            .iter()
            .filter(|(q, _)| quantity >= *q)
            .map(|(_, d)| *d)
            .fold(0.0, f64::max);
        let ask = (line.list_price as f64 * (1.0 - discount)).round() as Minor;
        ask.max(line.floor)
    }

    /// Lines + shipping: the total the terms come to (never sent as truth by anyone).
    pub fn total(&self, terms: &Terms) -> Minor {
        let goods: Minor = terms
            .lines
            .iter()
            .map(|l| l.quantity.saturating_mul(l.unit_price))
            .fold(0, Minor::saturating_add);
        let ship = self
            .shipping_option(&terms.shipping)
            .map(|o| o.price)
            .unwrap_or(0);
        goods.saturating_add(ship)
    }

    /// The brand's margin on the terms: price over cost per unit, plus shipping charged over
    /// its cost.
    pub fn margin(&self, terms: &Terms) -> Minor {
        let goods: Minor = terms
            .lines
            .iter()
            .map(|l| {
                let cost = self.line(&l.variant_id).map(|s| s.cost).unwrap_or(0);
                l.quantity.saturating_mul(l.unit_price - cost)
            })
            .sum();
        let ship = self
            .shipping_option(&terms.shipping)
            .map(|o| o.price - o.cost)
            .unwrap_or(0);
        goods + ship
    }

    /// The same structure (quantities, shipping) priced with `price(line setup, quantity)`.
    pub fn priced(&self, like: &Terms, price: impl Fn(&LineSetup, i64) -> Minor) -> Terms {
        Terms {
            lines: like
                .lines
                .iter()
                .filter_map(|l| {
                    self.line(&l.variant_id).map(|s| Line {
                        variant_id: l.variant_id.clone(),
                        quantity: l.quantity,
                        unit_price: price(s, l.quantity),
                    })
                })
                .collect(),
            shipping: like.shipping.clone(),
            currency: self.currency.clone(),
        }
    }

    /// The terms the negotiation opens with: the quantities asked for, at list price, with the
    /// first shipping option.
    pub fn list_terms(&self) -> Terms {
        Terms {
            lines: self
                .lines
                .iter()
                .map(|l| Line {
                    variant_id: l.variant_id.clone(),
                    quantity: l.quantity,
                    unit_price: l.list_price,
                })
                .collect(),
            shipping: self
                .shipping
                .first()
                .map(|o| o.id.clone())
                .unwrap_or_default(),
            currency: self.currency.clone(),
        }
    }

    /// The brand's utility of `terms`: its margin as a share of the margin at list prices for
    /// the same quantities and shipping (1 = list, can exceed 1; below 0 = a loss).
    pub fn utility(&self, terms: &Terms) -> f64 {
        let list = self.margin(&self.priced(terms, |s, _| s.list_price));
        if list <= 0 {
            return 0.0;
        }
        self.margin(terms) as f64 / list as f64
    }

    /// The utility of the same structure at the floors (the brand's reservation value).
    pub fn reservation(&self, terms: &Terms) -> f64 {
        self.utility(&self.priced(terms, |s, _| s.floor))
    }

    /// `(u − floor)/(list − floor)`: 0 at the floors, 1 at list prices.
    pub fn advantage(&self, terms: &Terms) -> f64 {
        let r = self.reservation(terms);
        if (1.0 - r).abs() < 1e-12 {
            return 1.0;
        }
        (self.utility(terms) - r) / (1.0 - r)
    }

    /// The `issues` of the `opened` frame: the negotiable ranges.
    pub fn issues(&self) -> Value {
        json!({
            "lines": self.lines.iter().map(|l| json!({
                "variant_id": l.variant_id,
                "product_id": l.product_id,
                "name": l.name,
                "category": l.category,
                "list_price": l.list_price,
                "quantity": {"min": l.min_quantity, "max": l.max_quantity},
                "unit_price": {"min": 1, "max": l.list_price},
            })).collect::<Vec<_>>(),
            "shipping": self.shipping.iter().map(|o| json!({
                "id": o.id, "label": o.label, "price": o.price,
            })).collect::<Vec<_>>(),
            "currency": self.currency,
        })
    }

    /// Whether `terms` lie inside the issues' ranges; the error names what does not.
    pub fn check_ranges(&self, terms: &Terms) -> Result<(), String> {
        if terms.currency != self.currency {
            return Err(format!(
                "currency {:?}: this negotiation is in {}",
                terms.currency, self.currency
            ));
        }
        if self.shipping_option(&terms.shipping).is_none() {
            return Err(format!(
                "shipping {:?} is not one of the options: {}",
                terms.shipping,
                self.shipping
                    .iter()
                    .map(|o| o.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if terms.lines.is_empty() {
            return Err("terms need at least one line".into());
        }
        for (i, l) in terms.lines.iter().enumerate() {
            let Some(s) = self.line(&l.variant_id) else {
                return Err(format!(
                    "lines[{i}]: variant {:?} is not part of this negotiation",
                    l.variant_id
                ));
            };
            if terms.lines[..i]
                .iter()
                .any(|p| p.variant_id == l.variant_id)
            {
                return Err(format!("lines[{i}]: variant {:?} twice", l.variant_id));
            }
            if l.quantity < s.min_quantity || l.quantity > s.max_quantity {
                return Err(format!(
                    "lines[{i}]: quantity {} is outside {}..={}",
                    l.quantity, s.min_quantity, s.max_quantity
                ));
            }
            if l.unit_price < 1 || l.unit_price > s.list_price {
                return Err(format!(
                    "lines[{i}]: unit_price {} is outside 1..={} (minor units)",
                    l.unit_price, s.list_price
                ));
            }
        }
        Ok(())
    }
}
