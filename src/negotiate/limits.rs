//! Hard limits, checked outside the strategy on every offer the brand sends and every deal
//! either side makes: never below a floor, never above stock, never over what the agent's
//! token has left to spend, never a product outside the token's categories. Whatever a
//! strategy (or a bug in one) proposes, terms that fail here never leave the server.

use super::terms::{Setup, Terms};
use crate::commerce::Minor;

/// Why terms break a hard limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    BelowFloor {
        variant_id: String,
        unit_price: Minor,
        floor: Minor,
    },
    OverStock {
        variant_id: String,
        quantity: i64,
        max: i64,
    },
    OverLimit {
        total: Minor,
        remaining: Minor,
    },
    Category {
        variant_id: String,
        category: String,
    },
    Malformed(String),
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::BelowFloor {
                variant_id,
                unit_price,
                floor,
            } => {
                write!(
                    f,
                    "{variant_id}: unit price {unit_price} is below the floor {floor}"
                )
            }
            Violation::OverStock {
                variant_id,
                quantity,
                max,
            } => {
                write!(
                    f,
                    "{variant_id}: quantity {quantity} is over the {max} available"
                )
            }
            Violation::OverLimit { total, remaining } => write!(
                f,
                "the total {total} is over the {remaining} the agent's token has left to spend"
            ),
            Violation::Category {
                variant_id,
                category,
            } => write!(
                f,
                "{variant_id}: category {category:?} is outside the token's categories"
            ),
            Violation::Malformed(m) => write!(f, "{m}"),
        }
    }
}

/// Checks `terms` against every hard limit; `remaining` is what the token has left now (None
/// = no limit).
pub fn check(setup: &Setup, terms: &Terms, remaining: Option<Minor>) -> Result<(), Violation> {
    setup.check_ranges(terms).map_err(Violation::Malformed)?;
    for l in &terms.lines {
        let Some(s) = setup.line(&l.variant_id) else {
            return Err(Violation::Malformed(format!(
                "unknown variant {}",
                l.variant_id
            )));
        };
        if l.unit_price < s.floor {
            return Err(Violation::BelowFloor {
                variant_id: l.variant_id.clone(),
                unit_price: l.unit_price,
                floor: s.floor,
            });
        }
        if l.quantity > s.max_quantity || l.quantity < 1 {
            return Err(Violation::OverStock {
                variant_id: l.variant_id.clone(),
                quantity: l.quantity,
                max: s.max_quantity,
            });
        }
        if !setup.token_categories.is_empty()
            && !setup
                .token_categories
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&s.category))
        {
            return Err(Violation::Category {
                variant_id: l.variant_id.clone(),
                category: s.category.clone(),
            });
        }
    }
    if let Some(remaining) = remaining {
        let total = setup.total(terms);
        if total > remaining {
            return Err(Violation::OverLimit { total, remaining });
        }
    }
    Ok(())
}
