//! Risk controls on agent commerce (issue #15): exposure-based limits ([`exposure`]) and
//! financial circuit breakers ([`breakers`]), configured by `[risk]` in
//! `brand/negotiation.toml` ([`RiskConfig`]).
//!
//! [`Risk`] is the in-memory book of one running instance: the exposure ledger and the breakers
//! under ONE lock, so every check and the change it allows happen as one step (200 concurrent
//! `open`s against a cap admit exactly as many as fit). It is rebuilt from the store at start
//! and kept exact as negotiations open, move, end, reach deals and settle (`crate::risk` does
//! the rebuilding, persists the breakers' transitions it reports through [`Record`]s, and is the
//! face the settlement saga calls). On several instances sharing PostgreSQL each instance holds
//! its own book: caps hold per instance for what that instance admits after its start (plus what
//! it found in the store at start), not across instances.

pub mod breakers;
pub mod exposure;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::commerce::Minor;
use breakers::{Breaker, Cause, State};
use exposure::{Entry, Ledger};

/// `[risk]` in `brand/negotiation.toml`. Every cap is optional: absent means no cap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// Off: no exposure caps and no breakers (exposure is still measured and shown).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// One agent's open exposure (open negotiations + unsettled deals), minor units.
    pub max_agent_exposure: Option<Minor>,
    /// One customer's open exposure, over every agent acting for them.
    pub max_customer_exposure: Option<Minor>,
    /// The brand's open exposure over all agents.
    pub max_brand_exposure: Option<Minor>,
    /// The largest share (0..=1) of the brand's open exposure one agent may hold; 1 = off.
    #[serde(default = "one")]
    pub max_agent_share: f64,
    /// The share cap applies only once the brand's exposure would be above this (so the first
    /// agent of the day is not refused).
    #[serde(default)]
    pub share_floor: Minor,
    /// Negotiations one agent may have open at once (over all its sockets).
    #[serde(default = "default_per_agent")]
    pub max_negotiations_per_agent: usize,
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// `[risk.breaker]`: when the brand's and each agent's breaker trips, and how it recovers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Trip the brand's breaker when its open exposure would go above this.
    pub brand_exposure: Option<Minor>,
    /// Trip an agent's breaker when its open exposure would go above this.
    pub agent_exposure: Option<Minor>,
    /// The settlements the failure rate is taken over (the last N).
    #[serde(default = "default_window")]
    pub failure_window: usize,
    /// Trip when more than this share of the window failed…
    #[serde(default = "default_rate")]
    pub failure_rate: f64,
    /// …once the window holds at least this many settlements.
    #[serde(default = "default_min")]
    pub min_settlements: usize,
    /// Trip on this many failures within `failure_secs` (0 = off).
    #[serde(default = "default_failures")]
    pub failures: usize,
    #[serde(default = "default_failure_secs")]
    pub failure_secs: i64,
    /// Trip the brand's breaker when more than this was settled in the last hour.
    pub brand_settled_per_hour: Option<Minor>,
    /// Trip an agent's breaker when more than this of its deals settled in the last hour.
    pub agent_settled_per_hour: Option<Minor>,
    /// How long a tripped breaker stays open before it lets probes through (milliseconds).
    #[serde(default = "default_cooldown")]
    pub cooldown_ms: i64,
    /// New negotiations a half-open breaker lets through.
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
    /// Whether existing deals may still settle while a breaker is open.
    #[serde(default)]
    pub settle_while_open: bool,
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_per_agent() -> usize {
    256
}
fn default_window() -> usize {
    50
}
fn default_rate() -> f64 {
    0.2
}
fn default_min() -> usize {
    10
}
fn default_failures() -> usize {
    10
}
fn default_failure_secs() -> i64 {
    300
}
fn default_cooldown() -> i64 {
    300_000
}
fn default_probes() -> u32 {
    3
}

impl Default for RiskConfig {
    fn default() -> RiskConfig {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

impl RiskConfig {
    /// Every value in range; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        let caps = [
            ("risk.max_agent_exposure", self.max_agent_exposure),
            ("risk.max_customer_exposure", self.max_customer_exposure),
            ("risk.max_brand_exposure", self.max_brand_exposure),
            ("risk.breaker.brand_exposure", self.breaker.brand_exposure),
            ("risk.breaker.agent_exposure", self.breaker.agent_exposure),
            (
                "risk.breaker.brand_settled_per_hour",
                self.breaker.brand_settled_per_hour,
            ),
            (
                "risk.breaker.agent_settled_per_hour",
                self.breaker.agent_settled_per_hour,
            ),
        ];
        for (name, cap) in caps {
            if cap.is_some_and(|c| c < 0) {
                return Err(format!("{name} must not be negative"));
            }
        }
        if !(self.max_agent_share > 0.0 && self.max_agent_share <= 1.0) {
            return Err("risk.max_agent_share must be in (0, 1]".into());
        }
        if self.share_floor < 0 {
            return Err("risk.share_floor must not be negative".into());
        }
        if self.max_negotiations_per_agent < 1 {
            return Err("risk.max_negotiations_per_agent must be at least 1".into());
        }
        let b = &self.breaker;
        if b.failure_window < 1 || b.min_settlements < 1 {
            return Err(
                "risk.breaker.failure_window and min_settlements must be at least 1".into(),
            );
        }
        if !(0.0..1.0).contains(&b.failure_rate) {
            return Err("risk.breaker.failure_rate must be in [0, 1)".into());
        }
        if b.failure_secs < 1 {
            return Err("risk.breaker.failure_secs must be at least 1".into());
        }
        if b.cooldown_ms < 0 {
            return Err("risk.breaker.cooldown_ms must not be negative".into());
        }
        if b.half_open_probes < 1 {
            return Err("risk.breaker.half_open_probes must be at least 1".into());
        }
        Ok(())
    }
}

/// Which breaker: the brand's, or an agent's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Brand,
    Agent(String),
}

impl Scope {
    /// The stored key: `brand` or `agent:<id>`.
    pub fn key(&self) -> String {
        match self {
            Scope::Brand => "brand".into(),
            Scope::Agent(id) => format!("agent:{id}"),
        }
    }

    pub fn parse(key: &str) -> Option<Scope> {
        match key {
            "brand" => Some(Scope::Brand),
            _ => key
                .strip_prefix("agent:")
                .filter(|id| !id.is_empty())
                .map(|id| Scope::Agent(id.to_string())),
        }
    }

    /// Whether this breaker governs `agent`.
    pub fn covers(&self, agent: &str) -> bool {
        match self {
            Scope::Brand => true,
            Scope::Agent(a) => a == agent,
        }
    }
}

/// Why something was refused: `code` is the frame's (`limit` or `circuit_open`), `cap` the
/// cap or breaker that refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub cap: String,
    pub message: String,
}

impl Refusal {
    fn limit(cap: &'static str, message: String) -> Refusal {
        Refusal {
            code: "limit",
            cap: cap.into(),
            message: format!("{cap}: {message}"),
        }
    }

    fn circuit(scope: &Scope, reason: &str) -> Refusal {
        let who = match scope {
            Scope::Brand => "the brand's circuit breaker".to_string(),
            Scope::Agent(_) => "this agent's circuit breaker".to_string(),
        };
        Refusal {
            code: "circuit_open",
            cap: scope.key(),
            message: format!("{who} is open ({reason}); agent commerce is halted for now"),
        }
    }
}

/// A breaker's change of state, to be stored and audited (by `crate::risk`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub breaker: String,
    pub from: &'static str,
    pub to: &'static str,
    pub reason: String,
    /// The staff member who tripped or reset it (None: the rules).
    pub staff_id: Option<String>,
    pub at: i64,
    /// Open: when it goes half-open.
    pub until: Option<i64>,
}

/// What the book reports for storing, in order.
#[derive(Debug)]
pub enum Record {
    Transition(Transition),
    /// Misbehaviour by an agent that is not stored anywhere else (`signature_failure`,
    /// `offer_out_of_range`).
    Counter {
        agent_id: String,
        kind: &'static str,
        at: i64,
    },
    /// Answered once every record before it is stored.
    Flush(oneshot::Sender<()>),
}

/// A breaker opened: sockets end the negotiations in flight it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt(pub Scope);

/// A breaker as the inbox shows it.
#[derive(Debug, Clone)]
pub struct BreakerView {
    pub scope: Scope,
    pub state: &'static str,
    pub reason: String,
    pub since: i64,
    pub until: Option<i64>,
    pub failed: usize,
    pub window: usize,
    pub settled_last_hour: Minor,
}

/// Exposure as the inbox and the metrics show it.
#[derive(Debug, Clone, Default)]
pub struct ExposureView {
    pub brand: Minor,
    /// (agent, exposure, open negotiations), largest first.
    pub agents: Vec<(String, Minor, usize)>,
    /// (customer, exposure), largest first.
    pub customers: Vec<(String, Minor)>,
    pub deals: usize,
}

struct Inner {
    ledger: Ledger,
    breakers: HashMap<Scope, Breaker>,
}

/// One instance's risk book. Cheap to share (`Arc`).
pub struct Risk {
    config: RiskConfig,
    inner: Mutex<Inner>,
    halts: broadcast::Sender<Halt>,
    records: mpsc::UnboundedSender<Record>,
}

impl std::fmt::Debug for Risk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Risk").finish_non_exhaustive()
    }
}

impl Risk {
    /// An empty book, and the receiver of what it reports for storing.
    pub fn new(config: RiskConfig) -> (Arc<Risk>, mpsc::UnboundedReceiver<Record>) {
        let (records, rx) = mpsc::unbounded_channel();
        let (halts, _) = broadcast::channel(64);
        (
            Arc::new(Risk {
                config,
                inner: Mutex::new(Inner {
                    ledger: Ledger::default(),
                    breakers: HashMap::new(),
                }),
                halts,
                records,
            }),
            rx,
        )
    }

    pub fn config(&self) -> &RiskConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Breaker opened: tell the sockets.
    pub fn subscribe(&self) -> broadcast::Receiver<Halt> {
        self.halts.subscribe()
    }

    fn emit(&self, r: Record) {
        // The receiver lives as long as the service; after shutdown nothing is left to store.
        let _ = self.records.send(r);
    }

    /// Resolves once every record reported so far is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.emit(Record::Flush(tx));
        let _ = rx.await;
    }

    // ---- rebuilding at start ----

    /// A live negotiation found in the store; also puts one back as it was counted before a
    /// move that was not stored.
    pub fn restore_negotiation(&self, id: &str, e: Entry) {
        let mut g = self.lock();
        let agent = e.agent.clone();
        g.ledger.set_negotiation(id, e);
        gauge_exposure(&g.ledger, &agent);
    }

    /// An agreed deal with no finished settlement.
    pub fn restore_deal(&self, id: &str, e: Entry) {
        self.lock().ledger.set_deal(id, e);
    }

    /// A finished settlement, into the windows (no breaker is tripped by history).
    pub fn restore_outcome(&self, agent: &str, settled: bool, total: Minor, at: i64) {
        let mut g = self.lock();
        for scope in [Scope::Brand, Scope::Agent(agent.to_string())] {
            g.breakers
                .entry(scope)
                .or_insert_with(|| Breaker::new(at))
                .record(&self.config.breaker, settled, total, at);
        }
    }

    /// A breaker's stored state.
    pub fn restore_breaker(
        &self,
        scope: Scope,
        state: &str,
        reason: &str,
        since: i64,
        until: Option<i64>,
    ) {
        let mut g = self.lock();
        let b = g
            .breakers
            .entry(scope.clone())
            .or_insert_with(|| Breaker::new(since));
        b.state = match state {
            "open" => State::Open { until },
            "half_open" => State::HalfOpen { admitted: 0 },
            _ => State::Closed,
        };
        b.reason = reason.to_string();
        b.since = since;
        gauge_breaker(&scope, &b.state);
    }

    // ---- breakers ----

    fn change(
        &self,
        g: &mut Inner,
        scope: &Scope,
        to: State,
        reason: String,
        staff_id: Option<&str>,
        now: i64,
    ) {
        let b = g
            .breakers
            .entry(scope.clone())
            .or_insert_with(|| Breaker::new(now));
        let from = b.state.as_str();
        let until = match &to {
            State::Open { until } => *until,
            _ => None,
        };
        let opened = matches!(to, State::Open { .. }) && !matches!(b.state, State::Open { .. });
        if matches!(to, State::Closed) {
            b.clear();
        }
        b.state = to;
        b.reason = reason.clone();
        b.since = now;
        gauge_breaker(scope, &b.state);
        if opened {
            metrics::counter!(
                "concierge_risk_breaker_trips_total",
                "scope" => if *scope == Scope::Brand { "brand" } else { "agent" },
                "reason" => Cause::parse(&reason).as_str()
            )
            .increment(1);
        }
        self.emit(Record::Transition(Transition {
            breaker: scope.key(),
            from,
            to: b.state.as_str(),
            reason,
            staff_id: staff_id.map(str::to_string),
            at: now,
            until,
        }));
        if opened {
            let _ = self.halts.send(Halt(scope.clone()));
        }
    }

    fn trip_locked(&self, g: &mut Inner, scope: &Scope, reason: String, now: i64) {
        let until = Some(now + self.config.breaker.cooldown_ms);
        self.change(g, scope, State::Open { until }, reason, None, now);
    }

    /// Open breakers whose cool-down has passed become half-open. A breaker half-open for a
    /// whole cool-down with all its probes taken and no settlement since (the probes never
    /// reached a settled deal) lets a new round of probes through, so it cannot stay stuck.
    fn refresh(&self, g: &mut Inner, scope: &Scope, now: i64) {
        let cooldown = self.config.breaker.cooldown_ms;
        let probes = self.config.breaker.half_open_probes;
        let due = g.breakers.get(scope).is_some_and(|b| match b.state {
            State::Open { until: Some(u) } => u <= now,
            State::HalfOpen { admitted } => admitted >= probes && b.since + cooldown <= now,
            _ => false,
        });
        if due {
            let reason = g
                .breakers
                .get(scope)
                .map(|b| b.reason.clone())
                .unwrap_or_default();
            self.change(g, scope, State::HalfOpen { admitted: 0 }, reason, None, now);
        }
    }

    fn state_of(g: &Inner, scope: &Scope) -> (State, String) {
        g.breakers
            .get(scope)
            .map(|b| (b.state.clone(), b.reason.clone()))
            .unwrap_or((State::Closed, String::new()))
    }

    /// Whether the brand's and the agent's breakers let a move (or, with `probe`, a new
    /// negotiation) through; Err names the open one.
    fn gate(&self, g: &mut Inner, agent: &str, probe: bool, now: i64) -> Result<(), Refusal> {
        if !self.config.enabled {
            return Ok(());
        }
        for scope in [Scope::Brand, Scope::Agent(agent.to_string())] {
            self.refresh(g, &scope, now);
            match Self::state_of(g, &scope) {
                (State::Open { .. }, reason) => return Err(Refusal::circuit(&scope, &reason)),
                (State::HalfOpen { admitted }, reason)
                    if probe && admitted >= self.config.breaker.half_open_probes =>
                {
                    return Err(Refusal::circuit(
                        &scope,
                        &format!("{reason}; half-open, its probes are taken"),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// After an admitted new negotiation: half-open breakers count the probe, and one tripped
    /// by exposure closes (the exposure is back under its cap).
    fn probed(&self, g: &mut Inner, agent: &str, now: i64) {
        for scope in [Scope::Brand, Scope::Agent(agent.to_string())] {
            let (state, reason) = Self::state_of(g, &scope);
            if let State::HalfOpen { admitted } = state {
                if Cause::parse(&reason) == Cause::Exposure {
                    self.change(
                        g,
                        &scope,
                        State::Closed,
                        "probe admitted under the exposure cap".into(),
                        None,
                        now,
                    );
                } else if let Some(b) = g.breakers.get_mut(&scope) {
                    b.state = State::HalfOpen {
                        admitted: admitted + 1,
                    };
                }
            }
        }
    }

    /// Whether a move in a negotiation already open may go on (Err: a breaker is open).
    pub fn gate_move(&self, agent: &str, now: i64) -> Result<(), Refusal> {
        let mut g = self.lock();
        self.gate(&mut g, agent, false, now)
    }

    /// Staff trip a breaker: it stays open until staff reset it.
    pub fn trip(&self, scope: &Scope, reason: &str, staff_id: &str, now: i64) {
        let mut g = self.lock();
        let reason = format!("staff: {}", reason.trim());
        self.change(
            &mut g,
            scope,
            State::Open { until: None },
            reason,
            Some(staff_id),
            now,
        );
    }

    /// Staff reset a breaker: closed, its windows forgotten.
    pub fn reset(&self, scope: &Scope, staff_id: &str, now: i64) {
        let mut g = self.lock();
        self.change(
            &mut g,
            scope,
            State::Closed,
            "reset by staff".into(),
            Some(staff_id),
            now,
        );
    }

    // ---- exposure ----

    /// Checks a new negotiation (worth `value`, counting until `until`) against the breakers
    /// and every cap, and counts it — or refuses, counting nothing.
    pub fn admit_open(
        &self,
        id: &str,
        agent: &str,
        customer: &str,
        value: Minor,
        until: i64,
        now: i64,
    ) -> Result<(), Refusal> {
        self.admit(id, agent, customer, value, until, now, true)
    }

    /// A negotiation as the book counts it now (to put back if a move raising it is not stored).
    pub fn negotiation_entry(&self, id: &str) -> Option<exposure::Entry> {
        self.lock().ledger.negotiation(id).cloned()
    }

    /// A negotiation's value changes (the brand's next offer, a deal): checked against every
    /// cap when it rises, counted at the new value.
    pub fn admit_value(
        &self,
        id: &str,
        agent: &str,
        customer: &str,
        value: Minor,
        until: i64,
        now: i64,
    ) -> Result<(), Refusal> {
        self.admit(id, agent, customer, value, until, now, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        id: &str,
        agent: &str,
        customer: &str,
        value: Minor,
        until: i64,
        now: i64,
        new: bool,
    ) -> Result<(), Refusal> {
        let c = &self.config;
        let mut g = self.lock();
        g.ledger.prune(now);
        let result = self.check(&mut g, id, agent, customer, value, now, new);
        match &result {
            Ok(()) => {
                g.ledger.set_negotiation(
                    id,
                    Entry {
                        agent: agent.into(),
                        customer: customer.into(),
                        value,
                        until,
                    },
                );
                if new && c.enabled {
                    self.probed(&mut g, agent, now);
                }
            }
            Err(r) => {
                metrics::counter!("concierge_risk_refusals_total", "cap" => cap_label(&r.cap))
                    .increment(1);
            }
        }
        gauge_exposure(&g.ledger, agent);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        g: &mut Inner,
        id: &str,
        agent: &str,
        customer: &str,
        value: Minor,
        now: i64,
        new: bool,
    ) -> Result<(), Refusal> {
        let c = &self.config;
        if !c.enabled {
            return Ok(());
        }
        self.gate(g, agent, new, now)?;
        let current = g.ledger.negotiation(id).map(|e| e.value).unwrap_or(0);
        let totals = g.ledger.agent(agent);
        if new && totals.open + 1 > c.max_negotiations_per_agent {
            return Err(Refusal::limit(
                "max_negotiations_per_agent",
                format!(
                    "this agent already has {} negotiations open, the most it may have at once",
                    totals.open
                ),
            ));
        }
        let delta = value - current;
        if delta <= 0 {
            return Ok(());
        }
        let agent_after = totals.value + delta;
        let brand_after = g.ledger.brand() + delta;
        let customer_after = g.ledger.customer(customer) + delta;
        let over = |cap: Option<Minor>, after: Minor| cap.filter(|cap| after > *cap);
        if let Some(cap) = over(c.max_agent_exposure, agent_after) {
            return Err(Refusal::limit(
                "max_agent_exposure",
                format!(
                    "this agent's open exposure would be {agent_after}, over its cap of {cap} (minor units)"
                ),
            ));
        }
        if let Some(cap) = over(c.max_customer_exposure, customer_after) {
            return Err(Refusal::limit(
                "max_customer_exposure",
                format!(
                    "the customer's open exposure would be {customer_after}, over its cap of {cap} (minor units)"
                ),
            ));
        }
        if let Some(cap) = over(c.max_brand_exposure, brand_after) {
            return Err(Refusal::limit(
                "max_brand_exposure",
                format!(
                    "the brand's open exposure would be {brand_after}, over its cap of {cap} (minor units)"
                ),
            ));
        }
        if c.max_agent_share < 1.0
            && brand_after > c.share_floor
            && agent_after as f64 > c.max_agent_share * brand_after as f64
        {
            return Err(Refusal::limit(
                "max_agent_share",
                format!(
                    "this agent would hold {:.0} % of the brand's open exposure, over the cap of {:.0} %",
                    100.0 * agent_after as f64 / brand_after as f64,
                    100.0 * c.max_agent_share
                ),
            ));
        }
        // The breakers' exposure rules: trip, and refuse what would have passed the line.
        let trips = [
            (Scope::Brand, c.breaker.brand_exposure, brand_after),
            (
                Scope::Agent(agent.to_string()),
                c.breaker.agent_exposure,
                agent_after,
            ),
        ];
        for (scope, cap, after) in trips {
            if let Some(cap) = over(cap, after) {
                let reason = format!("exposure: open exposure would be {after}, over {cap}");
                self.trip_locked(g, &scope, reason.clone(), now);
                return Err(Refusal::circuit(&scope, &reason));
            }
        }
        Ok(())
    }

    /// A negotiation reached a deal: it stops counting as open, the deal counts at its total
    /// until its settlement finishes or `valid_until` passes.
    pub fn deal(
        &self,
        negotiation_id: &str,
        deal_id: &str,
        agent: &str,
        customer: &str,
        total: Minor,
        valid_until: i64,
    ) {
        let mut g = self.lock();
        g.ledger.remove_negotiation(negotiation_id);
        g.ledger.set_deal(
            deal_id,
            Entry {
                agent: agent.into(),
                customer: customer.into(),
                value: total,
                until: valid_until,
            },
        );
        gauge_exposure(&g.ledger, agent);
    }

    /// A negotiation ended, expired, or was not stored after all.
    pub fn release(&self, negotiation_id: &str) {
        let mut g = self.lock();
        let agent = g
            .ledger
            .negotiation(negotiation_id)
            .map(|e| e.agent.clone());
        if g.ledger.remove_negotiation(negotiation_id)
            && let Some(a) = agent
        {
            gauge_exposure(&g.ledger, &a);
        }
    }

    // ---- settlements ----

    /// Whether a deal of `agent` may settle now (Err: why not, starting `circuit_open`).
    pub fn settlement_allowed(&self, agent: &str, now: i64) -> Result<(), String> {
        if !self.config.enabled || self.config.breaker.settle_while_open {
            return Ok(());
        }
        let mut g = self.lock();
        self.gate(&mut g, agent, false, now)
            .map_err(|r| format!("circuit_open: {}", r.message))
    }

    /// A settlement finished: the deal's exposure is released and the outcome feeds both
    /// breakers' windows, which may trip them; a half-open breaker closes on a success and
    /// opens again on a failure.
    pub fn settlement_finished(
        &self,
        agent: &str,
        customer: &str,
        total: Minor,
        settled: bool,
        now: i64,
    ) {
        self.deal_settlement_finished(None, agent, customer, total, settled, now);
    }

    /// [`settlement_finished`](Self::settlement_finished) of a known deal: that very deal
    /// stops counting (without its id, the customer's deal closest in value does).
    pub fn deal_settlement_finished(
        &self,
        deal_id: Option<&str>,
        agent: &str,
        customer: &str,
        total: Minor,
        settled: bool,
        now: i64,
    ) {
        let c = &self.config;
        let mut g = self.lock();
        g.ledger.prune(now);
        // A settled deal stops counting. A failed settlement leaves its deal agreed and
        // unsettled — it may be settled again with another payment method — so it keeps
        // counting until its `valid_until`.
        if settled {
            match deal_id {
                Some(id) => {
                    g.ledger.remove_deal(id);
                }
                None => {
                    g.ledger.release_settled(agent, customer, total);
                }
            }
        }
        gauge_exposure(&g.ledger, agent);
        for scope in [Scope::Brand, Scope::Agent(agent.to_string())] {
            self.refresh(&mut g, &scope, now);
            let settled_cap = match scope {
                Scope::Brand => c.breaker.brand_settled_per_hour,
                Scope::Agent(_) => c.breaker.agent_settled_per_hour,
            };
            let b = g
                .breakers
                .entry(scope.clone())
                .or_insert_with(|| Breaker::new(now));
            b.record(&c.breaker, settled, total, now);
            if !c.enabled {
                continue;
            }
            let next = match b.state {
                State::HalfOpen { .. } if settled => Some(None),
                State::HalfOpen { .. } => Some(Some(
                    "failures: a settlement failed while half-open".to_string(),
                )),
                State::Closed => b
                    .verdict(&c.breaker, settled_cap, now)
                    .map(|(_, reason)| Some(reason)),
                State::Open { .. } => None,
            };
            match next {
                Some(None) => self.change(
                    &mut g,
                    &scope,
                    State::Closed,
                    "a settlement succeeded while half-open".into(),
                    None,
                    now,
                ),
                Some(Some(reason)) => self.trip_locked(&mut g, &scope, reason, now),
                None => {}
            }
        }
    }

    // ---- monitoring ----

    /// Counts a misbehaviour of an agent that nothing else stores.
    pub fn note(&self, agent_id: &str, kind: &'static str, now: i64) {
        metrics::counter!("concierge_risk_agent_events_total", "kind" => kind).increment(1);
        self.emit(Record::Counter {
            agent_id: agent_id.to_string(),
            kind,
            at: now,
        });
    }

    /// Every breaker known (the brand's always), brand first.
    pub fn breakers(&self, now: i64) -> Vec<BreakerView> {
        let mut g = self.lock();
        g.breakers
            .entry(Scope::Brand)
            .or_insert_with(|| Breaker::new(now));
        let scopes: Vec<Scope> = g.breakers.keys().cloned().collect();
        for s in &scopes {
            self.refresh(&mut g, s, now);
        }
        let c = self.config.breaker.clone();
        let mut out: Vec<BreakerView> = g
            .breakers
            .iter_mut()
            .map(|(scope, b)| {
                let (failed, window) = b.failure_counts();
                BreakerView {
                    scope: scope.clone(),
                    state: b.state.as_str(),
                    reason: b.reason.clone(),
                    since: b.since,
                    until: match b.state {
                        State::Open { until } => until,
                        _ => None,
                    },
                    failed,
                    window,
                    settled_last_hour: b.settled_last_hour(&c, now),
                }
            })
            .collect();
        out.sort_by_key(|v| (v.scope != Scope::Brand, v.scope.key()));
        out
    }

    /// The exposure now.
    pub fn exposure(&self, now: i64) -> ExposureView {
        let mut g = self.lock();
        g.ledger.prune(now);
        let mut agents: Vec<(String, Minor, usize)> = g
            .ledger
            .agents()
            .map(|(a, t)| (a.clone(), t.value, t.open))
            .collect();
        agents.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut customers: Vec<(String, Minor)> =
            g.ledger.customers().map(|(c, v)| (c.clone(), *v)).collect();
        customers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ExposureView {
            brand: g.ledger.brand(),
            agents,
            customers,
            deals: g.ledger.deal_count(),
        }
    }
}

fn cap_label(cap: &str) -> String {
    if cap.starts_with("agent:") {
        "agent_breaker".into()
    } else if cap == "brand" {
        "brand_breaker".into()
    } else {
        cap.to_string()
    }
}

fn gauge_breaker(scope: &Scope, state: &State) {
    metrics::gauge!("concierge_risk_breaker_state", "breaker" => scope.key()).set(state.level());
}

fn gauge_exposure(ledger: &Ledger, agent: &str) {
    metrics::gauge!("concierge_risk_exposure", "scope" => "brand").set(ledger.brand() as f64);
    let t = ledger.agent(agent);
    metrics::gauge!("concierge_risk_agent_exposure", "agent" => agent.to_string())
        .set(t.value as f64);
    metrics::gauge!("concierge_risk_agent_negotiations", "agent" => agent.to_string())
        .set(t.open as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(toml: &str) -> Arc<Risk> {
        let c: RiskConfig = toml::from_str(toml).unwrap();
        c.check().unwrap();
        Risk::new(c).0
    }

    #[test]
    fn risk_caps_refuse_and_name_the_cap() {
        let r = book(
            "max_agent_exposure = 1000\nmax_customer_exposure = 1500\nmax_brand_exposure = 2500\nmax_negotiations_per_agent = 3",
        );
        r.admit_open("n1", "a", "c1", 600, i64::MAX, 0).unwrap();
        let e = r.admit_open("n2", "a", "c2", 500, i64::MAX, 0).unwrap_err();
        assert_eq!((e.code, e.cap.as_str()), ("limit", "max_agent_exposure"));
        r.admit_open("n3", "b", "c1", 900, i64::MAX, 0).unwrap();
        let e = r.admit_open("n4", "b", "c1", 100, i64::MAX, 0).unwrap_err();
        assert_eq!(e.cap, "max_customer_exposure");
        r.admit_open("n5", "c", "c2", 1000, i64::MAX, 0).unwrap();
        let e = r.admit_open("n6", "b", "c3", 100, i64::MAX, 0).unwrap_err();
        assert_eq!(e.cap, "max_brand_exposure");
        // Lowering is always fine; raising is checked.
        r.admit_value("n1", "a", "c1", 100, i64::MAX, 0).unwrap();
        let e = r
            .admit_value("n1", "a", "c1", 1100, i64::MAX, 0)
            .unwrap_err();
        assert_eq!(e.cap, "max_agent_exposure");
        assert_eq!(r.exposure(0).brand, 2000);
        // A raise whose move was not stored is put back.
        let before = r.negotiation_entry("n1").unwrap();
        r.admit_value("n1", "a", "c1", 150, i64::MAX, 0).unwrap();
        assert_eq!(r.exposure(0).brand, 2050);
        r.restore_negotiation("n1", before);
        assert_eq!(r.exposure(0).brand, 2000);
        // Concurrent negotiations.
        r.admit_open("n7", "a", "c4", 1, i64::MAX, 0).unwrap();
        r.admit_open("n8", "a", "c4", 1, i64::MAX, 0).unwrap();
        let e = r.admit_open("n9", "a", "c4", 1, i64::MAX, 0).unwrap_err();
        assert_eq!(e.cap, "max_negotiations_per_agent");
        r.release("n7");
        r.admit_open("n9", "a", "c4", 1, i64::MAX, 0).unwrap();
    }

    #[test]
    fn risk_share_cap_spares_the_first_agent_below_the_floor() {
        let r = book("max_agent_share = 0.5\nshare_floor = 1000");
        r.admit_open("n1", "a", "c", 800, i64::MAX, 0).unwrap();
        let e = r.admit_open("n2", "a", "c", 400, i64::MAX, 0).unwrap_err();
        assert_eq!(e.cap, "max_agent_share");
        // b: 800 of 1600 is 50 %: allowed.
        r.admit_open("n3", "b", "c", 800, i64::MAX, 0).unwrap();
        // a: 900 of 1700 is 53 %: not; after a third agent's 200, 900 of 1900 is.
        assert!(r.admit_open("n4", "a", "c", 100, i64::MAX, 0).is_err());
        r.admit_open("n5", "c", "c", 200, i64::MAX, 0).unwrap();
        r.admit_open("n4", "a", "c", 100, i64::MAX, 0).unwrap();
    }

    #[test]
    fn risk_breaker_trips_half_opens_and_closes() {
        let r = book(
            "[breaker]\nfailure_window = 4\nmin_settlements = 2\nfailure_rate = 0.4\ncooldown_ms = 100\nhalf_open_probes = 1",
        );
        let mut halts = r.subscribe();
        r.settlement_finished("a", "c", 10, true, 0);
        r.settlement_finished("a", "c", 10, false, 1);
        let e = r.admit_open("n1", "a", "c", 10, i64::MAX, 2).unwrap_err();
        assert_eq!(e.code, "circuit_open");
        assert!(
            r.settlement_allowed("a", 2)
                .unwrap_err()
                .starts_with("circuit_open")
        );
        assert!(
            r.gate_move("b", 2).is_err(),
            "the brand's breaker covers every agent"
        );
        assert_eq!(halts.try_recv().unwrap(), Halt(Scope::Brand));
        // Half-open after the cool-down: one probe.
        r.admit_open("n1", "a", "c", 10, i64::MAX, 200).unwrap();
        assert!(r.admit_open("n2", "b", "c", 10, i64::MAX, 200).is_err());
        // A probe that never settles: after another cool-down a new probe may go through.
        assert!(r.admit_open("n2", "b", "c", 10, i64::MAX, 290).is_err());
        r.admit_open("n1b", "a", "c", 10, i64::MAX, 300).unwrap();
        assert!(r.admit_open("n2", "b", "c", 10, i64::MAX, 300).is_err());
        r.settlement_allowed("a", 300).unwrap();
        r.settlement_finished("a", "c", 10, true, 301);
        r.admit_open("n2", "b", "c", 10, i64::MAX, 302).unwrap();
        let states: Vec<&str> = r.breakers(302).iter().map(|b| b.state).collect();
        assert!(states.iter().all(|s| *s == "closed"), "{states:?}");
        // Staff hold one open until reset.
        r.trip(&Scope::Agent("a".into()), "looks odd", "staff_1", 350);
        assert!(
            r.admit_open("n3", "a", "c", 10, i64::MAX, 10_000_000)
                .is_err()
        );
        r.admit_open("n4", "b", "c", 10, i64::MAX, 351).unwrap();
        r.reset(&Scope::Agent("a".into()), "staff_1", 352);
        r.admit_open("n3", "a", "c", 10, i64::MAX, 353).unwrap();
    }

    #[test]
    fn risk_exposure_breaker_trips_and_a_probe_under_the_cap_closes_it() {
        let r = book("[breaker]\nagent_exposure = 100\ncooldown_ms = 10");
        r.admit_open("n1", "a", "c", 80, i64::MAX, 0).unwrap();
        let e = r.admit_open("n2", "a", "c", 30, i64::MAX, 1).unwrap_err();
        assert_eq!((e.code, e.cap.as_str()), ("circuit_open", "agent:a"));
        r.release("n1");
        r.admit_open("n3", "a", "c", 30, i64::MAX, 20).unwrap();
        assert_eq!(r.breakers(20)[1].state, "closed");
    }

    #[test]
    fn risk_config_is_checked() {
        assert!(RiskConfig::default().check().is_ok());
        let bad: RiskConfig = toml::from_str("max_agent_share = 0").unwrap();
        assert!(bad.check().unwrap_err().contains("max_agent_share"));
        assert!(toml::from_str::<RiskConfig>("max_agent_exposur = 1").is_err());
    }
}
