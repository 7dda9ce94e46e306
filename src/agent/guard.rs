//! Guards around the agent: signals that a person must take over (a request for a human, legal
//! or fraud language, safety, data-deletion demands), and the leak filter that stops a reply
//! carrying another customer's order numbers, emails, addresses or tracking numbers. Guards only
//! look; the caller decides what to do.

use std::collections::HashSet;

use crate::commerce::{Customer, Order};

/// Why a conversation must go to a person regardless of what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    HumanRequested,
    Legal,
    Fraud,
    Safety,
    DataDeletion,
}

impl Signal {
    pub fn reason(self) -> &'static str {
        match self {
            Signal::HumanRequested => "human_requested",
            Signal::Legal => "legal",
            Signal::Fraud => "fraud",
            Signal::Safety => "safety",
            Signal::DataDeletion => "data_deletion",
        }
    }
}

const LEGAL: &[&str] = &[
    "lawyer",
    "attorney",
    "lawsuit",
    "sue you",
    "suing",
    "legal action",
    "small claims",
    "court",
    "solicitor",
];
const FRAUD: &[&str] = &[
    "fraud",
    "scam",
    "stolen card",
    "stolen credit card",
    "unauthorized charge",
    "unauthorised charge",
    "didn't authorize",
    "did not authorize",
    "chargeback",
    "dispute the charge",
    "identity theft",
    "someone used my card",
    "hacked",
];
const SAFETY: &[&str] = &[
    "injured",
    "injury",
    "burned me",
    "caught fire",
    "exploded",
    "electric shock",
    "hospital",
    "unsafe",
    "safety hazard",
];
const DELETION: &[&str] = &[
    "delete my data",
    "erase my data",
    "delete all my data",
    "gdpr",
    "ccpa",
    "right to be forgotten",
    "remove my personal data",
];
const HUMAN: &[&str] = &[
    "human",
    "real person",
    "a person",
    "live agent",
    "speak to someone",
    "talk to someone",
    "representative",
    "manager",
    "supervisor",
    "operator",
];

/// The strongest hand-over signal in a message, if any.
pub fn signal(text: &str) -> Option<Signal> {
    let t = format!(" {} ", text.to_lowercase());
    let has = |words: &[&str]| words.iter().any(|w| contains_phrase(&t, w));
    if has(LEGAL) {
        Some(Signal::Legal)
    } else if has(FRAUD) {
        Some(Signal::Fraud)
    } else if has(SAFETY) {
        Some(Signal::Safety)
    } else if has(DELETION) {
        Some(Signal::DataDeletion)
    } else if has(HUMAN) {
        Some(Signal::HumanRequested)
    } else {
        None
    }
}

fn contains_phrase(haystack: &str, phrase: &str) -> bool {
    let mut start = 0;
    while let Some(pos) = haystack[start..].find(phrase) {
        let s = start + pos;
        let e = s + phrase.len();
        let before = haystack[..s]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let after = haystack[e..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        if before && after {
            return true;
        }
        start = e;
    }
    false
}

/// What a reply may mention: the verified customer's own identifiers.
#[derive(Debug, Default)]
pub struct Disclosure {
    allowed: HashSet<String>,
}

impl Disclosure {
    /// Allows the customer's emails, their orders' numbers and tracking numbers, and their
    /// addresses' street lines.
    pub fn for_customer(customer: Option<&Customer>, orders: &[Order]) -> Disclosure {
        let mut allowed = HashSet::new();
        if let Some(c) = customer {
            allowed.extend(c.emails.iter().map(|e| e.to_lowercase()));
            for a in &c.addresses {
                allowed.insert(a.address1.to_lowercase());
            }
        }
        for o in orders {
            allowed.insert(o.number.to_lowercase());
            allowed.extend(o.tracking_numbers().map(str::to_lowercase));
            if let Some(a) = &o.shipping_address {
                allowed.insert(a.address1.to_lowercase());
            }
        }
        Disclosure { allowed }
    }

    pub fn allow(&mut self, value: &str) {
        self.allowed.insert(value.to_lowercase());
    }

    /// The identifiers in `reply` that belong to shop data but not to this customer: order
    /// numbers, emails and tracking numbers found in the store (`known` tells whether a token is
    /// one the store holds).
    pub fn leaks(&self, reply: &str, is_known: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for token in reply.split(|c: char| c.is_whitespace() || ",;()[]<>\"'".contains(c)) {
            let t = token.trim_end_matches(['.', '!', '?', ':']);
            if t.len() < 4 {
                continue;
            }
            let lower = t.to_lowercase();
            let looks_sensitive = t.starts_with('#')
                || t.contains('@')
                || (t.len() >= 10
                    && t.chars().all(|c| c.is_ascii_alphanumeric())
                    && t.chars().any(|c| c.is_ascii_digit()));
            if looks_sensitive && !self.allowed.contains(&lower) && is_known(t) {
                out.push(t.to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(
            signal("Can I talk to a human please"),
            Some(Signal::HumanRequested)
        );
        assert_eq!(
            signal("my lawyer will hear about this"),
            Some(Signal::Legal)
        );
        assert_eq!(
            signal("There is a charge I didn't authorize"),
            Some(Signal::Fraud)
        );
        assert_eq!(
            signal("please delete my data under GDPR"),
            Some(Signal::DataDeletion)
        );
        assert_eq!(signal("where is my order?"), None);
        // Whole words only: "humanely" is not "human", "courtesy" is not "court".
        assert_eq!(
            signal("thanks for the courtesy, treat the goods humanely"),
            None
        );
    }
}
