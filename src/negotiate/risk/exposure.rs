//! The exposure ledger: how much value each agent, each customer and the brand have in flight.
//!
//! An open negotiation counts at the brand's latest offer total (its list value before the
//! brand has offered); an agreed deal counts at its total until its settlement finishes
//! (settled or failed) or its `valid_until` passes (a deal past it can no longer settle). A
//! negotiation counts until it ends, reaches a deal or passes its deadline.
//!
//! The ledger is plain data; [`super::Risk`] holds it under one lock, so a check and the
//! change it allows are one step.

use std::collections::{BTreeSet, HashMap};

use crate::commerce::Minor;

/// One negotiation's or deal's exposure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub agent: String,
    pub customer: String,
    pub value: Minor,
    /// When it stops counting on its own: the negotiation's deadline, the deal's `valid_until`.
    pub until: i64,
}

/// An agent's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentTotals {
    /// Open negotiations plus unsettled deals.
    pub value: Minor,
    /// Open negotiations.
    pub open: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Negotiation,
    Deal,
}

#[derive(Debug, Default)]
pub struct Ledger {
    negotiations: HashMap<String, Entry>,
    deals: HashMap<String, Entry>,
    expiries: BTreeSet<(i64, Kind, String)>,
    agents: HashMap<String, AgentTotals>,
    customers: HashMap<String, Minor>,
    brand: Minor,
}

impl Ledger {
    pub fn brand(&self) -> Minor {
        self.brand
    }

    pub fn agent(&self, agent: &str) -> AgentTotals {
        self.agents.get(agent).copied().unwrap_or_default()
    }

    pub fn customer(&self, customer: &str) -> Minor {
        self.customers.get(customer).copied().unwrap_or(0)
    }

    /// Every agent with something in flight.
    pub fn agents(&self) -> impl Iterator<Item = (&String, &AgentTotals)> {
        self.agents.iter()
    }

    /// Every customer with something in flight.
    pub fn customers(&self) -> impl Iterator<Item = (&String, &Minor)> {
        self.customers.iter()
    }

    pub fn negotiation(&self, id: &str) -> Option<&Entry> {
        self.negotiations.get(id)
    }

    pub fn deal_count(&self) -> usize {
        self.deals.len()
    }

    fn account(&mut self, e: &Entry, sign: Minor, open: isize) {
        let a = self.agents.entry(e.agent.clone()).or_default();
        a.value += sign * e.value;
        a.open = (a.open as isize + open).max(0) as usize;
        if a.value == 0 && a.open == 0 {
            self.agents.remove(&e.agent);
        }
        let c = self.customers.entry(e.customer.clone()).or_insert(0);
        *c += sign * e.value;
        if *c == 0 {
            self.customers.remove(&e.customer);
        }
        self.brand += sign * e.value;
    }

    /// Sets (or adds) an open negotiation's value.
    pub fn set_negotiation(&mut self, id: &str, e: Entry) {
        self.remove_negotiation(id);
        self.account(&e, 1, 1);
        self.expiries
            .insert((e.until, Kind::Negotiation, id.to_string()));
        self.negotiations.insert(id.to_string(), e);
    }

    /// A negotiation ended (or was never stored); true when it was counted.
    pub fn remove_negotiation(&mut self, id: &str) -> bool {
        match self.negotiations.remove(id) {
            Some(e) => {
                self.account(&e, -1, -1);
                self.expiries
                    .remove(&(e.until, Kind::Negotiation, id.to_string()));
                true
            }
            None => false,
        }
    }

    /// An agreed deal, counted until its settlement finishes.
    pub fn set_deal(&mut self, id: &str, e: Entry) {
        self.remove_deal(id);
        self.account(&e, 1, 0);
        self.expiries.insert((e.until, Kind::Deal, id.to_string()));
        self.deals.insert(id.to_string(), e);
    }

    pub fn remove_deal(&mut self, id: &str) -> bool {
        match self.deals.remove(id) {
            Some(e) => {
                self.account(&e, -1, 0);
                self.expiries.remove(&(e.until, Kind::Deal, id.to_string()));
                true
            }
            None => false,
        }
    }

    /// A settlement of the agent's deal with the customer for `total` finished: releases that
    /// deal (the one with exactly that total, else the customer's nearest in value). False when
    /// no deal of theirs is counted.
    pub fn release_settled(&mut self, agent: &str, customer: &str, total: Minor) -> bool {
        let id = self
            .deals
            .iter()
            .filter(|(_, e)| e.agent == agent && e.customer == customer)
            .min_by_key(|(id, e)| ((e.value - total).abs(), (*id).clone()))
            .map(|(id, _)| id.clone());
        match id {
            Some(id) => self.remove_deal(&id),
            None => false,
        }
    }

    /// Drops what has stopped counting by `now` (deadlines and `valid_until` passed).
    pub fn prune(&mut self, now: i64) {
        while let Some((at, kind, id)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            match kind {
                Kind::Negotiation => self.remove_negotiation(&id),
                Kind::Deal => self.remove_deal(&id),
            };
            // Removal took the expiry out; make sure a stale one cannot loop.
            self.expiries.remove(&(at, kind, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(agent: &str, customer: &str, value: Minor, until: i64) -> Entry {
        Entry {
            agent: agent.into(),
            customer: customer.into(),
            value,
            until,
        }
    }

    #[test]
    fn risk_ledger_totals_follow_every_move() {
        let mut l = Ledger::default();
        l.set_negotiation("n1", e("a", "c1", 1000, 100));
        l.set_negotiation("n2", e("a", "c2", 500, 200));
        l.set_negotiation("n3", e("b", "c1", 300, 300));
        assert_eq!(l.brand(), 1800);
        assert_eq!(
            l.agent("a"),
            AgentTotals {
                value: 1500,
                open: 2
            }
        );
        assert_eq!(l.customer("c1"), 1300);
        // A lower brand offer lowers the exposure.
        l.set_negotiation("n1", e("a", "c1", 800, 100));
        assert_eq!(l.agent("a").value, 1300);
        assert_eq!(l.agent("a").open, 2);
        // A deal moves it out of the open count, at the deal's total.
        l.remove_negotiation("n1");
        l.set_deal("d1", e("a", "c1", 750, 10_000));
        assert_eq!(
            l.agent("a"),
            AgentTotals {
                value: 1250,
                open: 1
            }
        );
        assert_eq!(l.brand(), 1550);
        // Deadlines pass.
        l.prune(250);
        assert_eq!(l.agent("a").open, 0);
        assert_eq!(l.agent("a").value, 750);
        assert_eq!(l.brand(), 1050);
        // The settlement releases the deal.
        assert!(l.release_settled("a", "c1", 750));
        assert!(!l.release_settled("a", "c1", 750));
        assert_eq!(l.agent("a"), AgentTotals::default());
        l.prune(10_000);
        assert_eq!(l.brand(), 0);
        assert_eq!(l.customer("c1"), 0);
        assert_eq!(l.agents().count(), 0);
    }
}
