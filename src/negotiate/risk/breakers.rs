//! Financial circuit breakers: one for the brand, one per agent. Closed lets everything
//! through; open refuses new negotiations (`circuit_open`) and ends those in flight; after the
//! cool-down it is half-open and lets a few negotiations through as probes, closing on a
//! success (a settlement that settles; for a breaker tripped by exposure, a probe admitted
//! under the cap) and opening again on a failure. A breaker tripped by staff stays open until
//! staff reset it.
//!
//! Each breaker also keeps the windows its rules read: the last settlements' outcomes, the
//! failures of the last minutes and the value settled in the last hour.

use std::collections::VecDeque;

use super::BreakerConfig;
use crate::commerce::Minor;

pub const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Closed,
    /// `until`: when it goes half-open (None: held open by staff).
    Open {
        until: Option<i64>,
    },
    /// Probes admitted so far.
    HalfOpen {
        admitted: u32,
    },
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    /// For the Prometheus gauge: 0 closed, 1 half-open, 2 open.
    pub fn level(&self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen { .. } => 1.0,
            State::Open { .. } => 2.0,
        }
    }
}

/// What tripped a breaker (the first word of its reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Exposure,
    FailureRate,
    Failures,
    SettledValue,
    Staff,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Exposure => "exposure",
            Cause::FailureRate => "failure_rate",
            Cause::Failures => "failures",
            Cause::SettledValue => "settled_value",
            Cause::Staff => "staff",
        }
    }

    pub fn parse(reason: &str) -> Cause {
        match reason.split(':').next().unwrap_or_default().trim() {
            "exposure" => Cause::Exposure,
            "failure_rate" => Cause::FailureRate,
            "failures" => Cause::Failures,
            "settled_value" => Cause::SettledValue,
            _ => Cause::Staff,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    pub state: State,
    /// Why it is in its state (for an open or half-open breaker: what tripped it).
    pub reason: String,
    pub since: i64,
    /// Settlement outcomes, oldest first: (finished at, settled).
    outcomes: VecDeque<(i64, bool)>,
    /// Failure times within `failure_secs`.
    failures: VecDeque<i64>,
    /// (settled at, total) within the last hour.
    settled: VecDeque<(i64, Minor)>,
}

impl Breaker {
    pub fn new(now: i64) -> Breaker {
        Breaker {
            state: State::Closed,
            reason: String::new(),
            since: now,
            outcomes: VecDeque::new(),
            failures: VecDeque::new(),
            settled: VecDeque::new(),
        }
    }

    /// Adds a finished settlement to the windows.
    pub fn record(&mut self, c: &BreakerConfig, settled: bool, total: Minor, at: i64) {
        self.outcomes.push_back((at, settled));
        while self.outcomes.len() > c.failure_window.max(1) {
            self.outcomes.pop_front();
        }
        if settled {
            self.settled.push_back((at, total));
        } else {
            self.failures.push_back(at);
        }
        self.prune(c, at);
    }

    fn prune(&mut self, c: &BreakerConfig, now: i64) {
        while self
            .failures
            .front()
            .is_some_and(|t| *t <= now - c.failure_secs * 1000)
        {
            self.failures.pop_front();
        }
        while self
            .settled
            .front()
            .is_some_and(|(t, _)| *t <= now - HOUR_MS)
        {
            self.settled.pop_front();
        }
    }

    /// Forgets the windows (on close and reset: a fresh start, not the failures that tripped
    /// it).
    pub fn clear(&mut self) {
        self.outcomes.clear();
        self.failures.clear();
        self.settled.clear();
    }

    /// Value settled in the last hour.
    pub fn settled_last_hour(&mut self, c: &BreakerConfig, now: i64) -> Minor {
        self.prune(c, now);
        self.settled.iter().map(|(_, v)| *v).sum()
    }

    /// (failed, out of) in the outcome window.
    pub fn failure_counts(&self) -> (usize, usize) {
        (
            self.outcomes.iter().filter(|(_, ok)| !ok).count(),
            self.outcomes.len(),
        )
    }

    /// Whether the settlement rules say trip now, and why.
    pub fn verdict(
        &mut self,
        c: &BreakerConfig,
        settled_cap: Option<Minor>,
        now: i64,
    ) -> Option<(Cause, String)> {
        self.prune(c, now);
        let (failed, of) = self.failure_counts();
        if of >= c.min_settlements.max(1) && failed as f64 > c.failure_rate * of as f64 {
            return Some((
                Cause::FailureRate,
                format!(
                    "failure_rate: {failed} of the last {of} settlements failed (over {:.0} %)",
                    c.failure_rate * 100.0
                ),
            ));
        }
        if c.failures > 0 && self.failures.len() >= c.failures {
            return Some((
                Cause::Failures,
                format!(
                    "failures: {} settlements failed in {} s",
                    self.failures.len(),
                    c.failure_secs
                ),
            ));
        }
        if let Some(cap) = settled_cap {
            let value = self.settled_last_hour(c, now);
            if value > cap {
                return Some((
                    Cause::SettledValue,
                    format!("settled_value: {value} settled in the last hour, over {cap}"),
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        toml::from_str("failure_window = 10\nmin_settlements = 4\nfailures = 3\nfailure_secs = 60\nfailure_rate = 0.2").unwrap()
    }

    #[test]
    fn risk_breaker_windows_trip_on_rate_count_and_value() {
        let c = config();
        let mut b = Breaker::new(0);
        // Rate: 1 of 4 is 25 % > 20 %.
        for (i, ok) in [true, true, true, false].into_iter().enumerate() {
            b.record(&c, ok, 100, i as i64 * 1000);
        }
        let (cause, why) = b.verdict(&c, None, 4000).expect("trips");
        assert_eq!(cause, Cause::FailureRate, "{why}");
        // Not before min_settlements.
        let mut b = Breaker::new(0);
        b.record(&c, false, 100, 0);
        assert!(b.verdict(&c, None, 0).is_none());
        // Count in time: three failures in a minute among many successes.
        let mut b = Breaker::new(0);
        for i in 0..10 {
            b.record(&c, true, 100, i);
        }
        for i in 0..3 {
            b.record(&c, false, 100, 100_000 + i * 10_000);
        }
        let mut quiet = b.clone();
        // 3 of the last 10 is 30 %: rate trips first; with a high rate allowed, the count does.
        let lax = BreakerConfig {
            failure_rate: 0.9,
            ..config()
        };
        assert_eq!(b.verdict(&lax, None, 121_000).unwrap().0, Cause::Failures);
        // A minute later the failures have aged out of the count.
        assert!(quiet.verdict(&lax, None, 200_000).is_none());
        // Settled value per hour.
        let mut b = Breaker::new(0);
        b.record(&lax, true, 600, 0);
        b.record(&lax, true, 600, 1000);
        assert_eq!(
            b.verdict(&lax, Some(1000), 2000).unwrap().0,
            Cause::SettledValue
        );
        assert!(b.verdict(&lax, Some(1000), HOUR_MS + 1).is_none());
        assert_eq!(Cause::parse("failure_rate: x"), Cause::FailureRate);
        assert_eq!(Cause::parse("whatever"), Cause::Staff);
    }
}
