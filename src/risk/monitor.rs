//! Counterparty monitoring: per consumer agent, how its negotiations and settlements went and
//! how often it misbehaved, with flags on the outliers (the inbox's Agents page).
//!
//! Figures come from the store (negotiations, settlements) and from the counters of what the
//! negotiation socket refused without storing (bad signatures, offers far outside the issues'
//! ranges). An agent is flagged when:
//!
//! - it rarely agrees: at least [`MIN_OPENS`] negotiations and under [`LOW_AGREEMENT`] of them
//!   reached a deal (opening without dealing probes the brand's prices);
//! - its settlements fail: at least [`MIN_SETTLEMENTS`] and more than [`HIGH_FAILURE`] failed;
//! - compensations (a settlement undone after a step had completed) reach [`COMPENSATIONS`];
//! - offers far outside the ranges reach [`OUT_OF_RANGE`];
//! - signature failures reach [`SIGNATURE_FAILURES`].

use std::collections::BTreeMap;

use sqlx::Row;

use crate::store::{Store, StoreResult};

pub const MIN_OPENS: i64 = 20;
pub const LOW_AGREEMENT: f64 = 0.05;
pub const MIN_SETTLEMENTS: i64 = 5;
pub const HIGH_FAILURE: f64 = 0.2;
pub const COMPENSATIONS: i64 = 3;
pub const OUT_OF_RANGE: i64 = 5;
pub const SIGNATURE_FAILURES: i64 = 3;

/// An agent offer under this share of a line's floor counts as far outside the range.
pub const LOWBALL_SHARE: f64 = 0.5;

/// One agent's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentFigures {
    pub agent_id: String,
    pub opened: i64,
    pub agreed: i64,
    /// Still open (not past their deadline).
    pub live: i64,
    pub settlements: i64,
    pub settled: i64,
    pub settlement_failures: i64,
    pub compensations: i64,
    pub out_of_range: i64,
    pub signature_failures: i64,
    pub flags: Vec<&'static str>,
}

impl AgentFigures {
    /// Negotiations that ended without a deal.
    pub fn without_deal(&self) -> i64 {
        (self.opened - self.agreed - self.live).max(0)
    }

    /// Deals per finished negotiation (None before any finished).
    pub fn agreement_rate(&self) -> Option<f64> {
        let finished = self.opened - self.live;
        (finished > 0).then(|| self.agreed as f64 / finished as f64)
    }

    fn flag(&mut self) {
        let finished = self.opened - self.live;
        if finished >= MIN_OPENS && self.agreement_rate().unwrap_or(1.0) < LOW_AGREEMENT {
            self.flags.push("rarely agrees");
        }
        if self.settlements >= MIN_SETTLEMENTS
            && self.settlement_failures as f64 > HIGH_FAILURE * self.settlements as f64
        {
            self.flags.push("settlements fail");
        }
        if self.compensations >= COMPENSATIONS {
            self.flags.push("compensations");
        }
        if self.out_of_range >= OUT_OF_RANGE {
            self.flags.push("offers out of range");
        }
        if self.signature_failures >= SIGNATURE_FAILURES {
            self.flags.push("signature failures");
        }
    }
}

/// Every agent that negotiated, settled or misbehaved, by id, with its flags.
pub async fn figures(store: &Store, now: i64) -> StoreResult<Vec<AgentFigures>> {
    let mut by: BTreeMap<String, AgentFigures> = BTreeMap::new();
    let get = |by: &mut BTreeMap<String, AgentFigures>, id: String| {
        by.entry(id.clone())
            .or_insert_with(|| AgentFigures {
                agent_id: id,
                ..Default::default()
            })
            .clone()
    };
    let rows = sqlx::query(
        "SELECT agent_id, COUNT(*) AS opened, \
           SUM(CASE WHEN status = 'agreed' THEN 1 ELSE 0 END) AS agreed, \
           SUM(CASE WHEN status IN ('open', 'offering') AND deadline_at > $1 THEN 1 ELSE 0 END) AS live \
         FROM negotiations GROUP BY agent_id",
    )
    .bind(now)
    .fetch_all(store.pool())
    .await?;
    for r in &rows {
        let id: String = r.try_get("agent_id")?;
        let mut f = get(&mut by, id.clone());
        f.opened = r.try_get("opened")?;
        f.agreed = r.try_get::<Option<i64>, _>("agreed")?.unwrap_or(0);
        f.live = r.try_get::<Option<i64>, _>("live")?.unwrap_or(0);
        by.insert(id, f);
    }
    let rows = sqlx::query(
        "SELECT agent_id, COUNT(*) AS n, \
           SUM(CASE WHEN status = 'settled' THEN 1 ELSE 0 END) AS settled, \
           SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed, \
           SUM(CASE WHEN status = 'compensating' OR compensated = 1 THEN 1 ELSE 0 END) \
             AS compensations \
         FROM settlement_attempts GROUP BY agent_id",
    )
    .fetch_all(store.pool())
    .await?;
    for r in &rows {
        let id: String = r.try_get("agent_id")?;
        let mut f = get(&mut by, id.clone());
        f.settlements = r.try_get("n")?;
        f.settled = r.try_get::<Option<i64>, _>("settled")?.unwrap_or(0);
        f.settlement_failures = r.try_get::<Option<i64>, _>("failed")?.unwrap_or(0);
        f.compensations = r.try_get::<Option<i64>, _>("compensations")?.unwrap_or(0);
        by.insert(id, f);
    }
    let rows = sqlx::query("SELECT agent_id, kind, count FROM risk_agent_counters")
        .fetch_all(store.pool())
        .await?;
    for r in &rows {
        let id: String = r.try_get("agent_id")?;
        let kind: String = r.try_get("kind")?;
        let n: i64 = r.try_get("count")?;
        let mut f = get(&mut by, id.clone());
        match kind.as_str() {
            "signature_failure" => f.signature_failures = n,
            "offer_out_of_range" => f.out_of_range = n,
            _ => {}
        }
        by.insert(id, f);
    }
    Ok(by
        .into_values()
        .map(|mut f| {
            f.flag();
            f
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_outliers_are_flagged_and_others_are_not() {
        let mut quiet = AgentFigures {
            opened: 30,
            agreed: 10,
            settlements: 10,
            settled: 9,
            settlement_failures: 1,
            ..Default::default()
        };
        quiet.flag();
        assert!(quiet.flags.is_empty(), "{:?}", quiet.flags);
        let mut loud = AgentFigures {
            opened: 40,
            agreed: 1,
            live: 2,
            settlements: 5,
            settlement_failures: 2,
            compensations: 3,
            out_of_range: 5,
            signature_failures: 3,
            ..Default::default()
        };
        loud.flag();
        assert_eq!(
            loud.flags,
            [
                "rarely agrees",
                "settlements fail",
                "compensations",
                "offers out of range",
                "signature failures"
            ]
        );
        assert_eq!(loud.without_deal(), 37);
    }
}
