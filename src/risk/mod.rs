//! Risk controls on agent commerce (issue #15) as the service runs them: the exposure limits
//! and financial circuit breakers of [`crate::negotiate::risk`] (the in-memory book every
//! `AppState` holds as `risk`), rebuilt from the store at start ([`start`]), their transitions
//! stored and audited in order by one task, the face the settlement saga calls
//! ([`settlement_allowed`], [`settlement_finished`]), staff's trip and reset, and counterparty
//! monitoring ([`monitor`]).
//!
//! Prometheus metrics (on `[metrics] bind`): `concierge_risk_exposure{scope="brand"}`,
//! `concierge_risk_agent_exposure{agent}`, `concierge_risk_agent_negotiations{agent}`,
//! `concierge_risk_breaker_state{breaker}` (0 closed, 1 half-open, 2 open),
//! `concierge_risk_breaker_trips_total{scope,reason}`, `concierge_risk_refusals_total{cap}`,
//! `concierge_risk_agent_events_total{kind}`, `concierge_settlement_latency_seconds`
//! (agreement → settled) and `concierge_settlement_outcomes_total{outcome,reason}`.

pub mod monitor;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::negotiate::NegotiationConfig;
use crate::negotiate::risk::{Record, Risk, RiskConfig, Scope};
use crate::state::AppState;
use crate::store::Store;
use crate::util::now_ms;

pub use crate::negotiate::risk::{BreakerView, ExposureView, Halt, Refusal};

/// Builds this instance's book from the brand's `[risk]` settings and the store, and starts
/// the task that stores what it reports (it ends when the book is dropped).
pub async fn start(store: &Store, brand_dir: &std::path::Path) -> anyhow::Result<Arc<Risk>> {
    let negotiation = NegotiationConfig::for_brand(brand_dir);
    start_with(
        store,
        negotiation.risk.clone(),
        negotiation.deal_valid_secs * 1000,
    )
    .await
}

/// [`start`] with the settings given.
pub async fn start_with(
    store: &Store,
    config: RiskConfig,
    deal_valid_ms: i64,
) -> anyhow::Result<Arc<Risk>> {
    let (risk, records) = Risk::new(config);
    let found = store::rebuild(store, &risk, deal_valid_ms, now_ms()).await?;
    tracing::debug!(?found, "risk book rebuilt from the store");
    tokio::spawn(persist(store.clone(), records));
    Ok(risk)
}

/// Stores the book's records in the order they were made.
async fn persist(store: Store, mut records: mpsc::UnboundedReceiver<Record>) {
    while let Some(r) = records.recv().await {
        match r {
            Record::Transition(t) => {
                if let Err(e) = store::store_transition(&store, &t).await {
                    tracing::error!(error = %e, breaker = %t.breaker, to = t.to,
                        "could not store a circuit breaker's transition");
                } else {
                    tracing::warn!(breaker = %t.breaker, from = t.from, to = t.to,
                        reason = %t.reason, "circuit breaker");
                }
            }
            Record::Counter { agent_id, kind, at } => {
                if let Err(e) = store::count(&store, &agent_id, kind, at).await {
                    tracing::error!(error = %e, agent = %agent_id, kind, "could not count");
                }
            }
            Record::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

// ---- the settlement saga's face ----

/// Whether a deal of `agent_id` may settle now: Err (starting `circuit_open`) while the brand's
/// or the agent's breaker is open, unless `[risk.breaker] settle_while_open`.
pub async fn settlement_allowed(state: &AppState, agent_id: &str) -> Result<(), String> {
    state.risk.settlement_allowed(agent_id, now_ms())
}

/// A settlement of the agent's deal with the customer for `total` finished (`settled` or
/// failed): a settled deal stops counting as exposure (a failed one keeps counting until its
/// `valid_until`, as it may be settled again), and the outcome feeds the breakers' windows
/// (failure rate, failures in time, value settled per hour), which may trip them.
pub fn settlement_finished(
    state: &AppState,
    agent_id: &str,
    customer_id: &str,
    total: i64,
    settled: bool,
) {
    settlement_finished_after(state, agent_id, customer_id, total, settled, None, None);
}

/// [`settlement_finished`] with the outcome's reason (a failure's, e.g. `payment_declined`) and
/// the time from agreement to the end of the settlement, for the metrics.
pub fn settlement_finished_after(
    state: &AppState,
    agent_id: &str,
    customer_id: &str,
    total: i64,
    settled: bool,
    reason: Option<&str>,
    since_agreement: Option<Duration>,
) {
    record_settlement(
        state,
        None,
        agent_id,
        customer_id,
        total,
        settled,
        reason,
        since_agreement,
    );
}

/// What the settlement saga reports when a deal's settlement ends: [`settlement_finished_after`]
/// for that very deal, which stops counting as exposure.
pub struct DealOutcome<'a> {
    pub deal_id: &'a str,
    pub agent_id: &'a str,
    pub customer_id: &'a str,
    pub total: i64,
    pub settled: bool,
    pub reason: Option<&'a str>,
    pub since_agreement: Option<Duration>,
}

/// A deal's settlement finished; see [`DealOutcome`].
pub fn deal_settlement_finished(state: &AppState, o: DealOutcome<'_>) {
    record_settlement(
        state,
        Some(o.deal_id),
        o.agent_id,
        o.customer_id,
        o.total,
        o.settled,
        o.reason,
        o.since_agreement,
    );
}

#[allow(clippy::too_many_arguments)]
fn record_settlement(
    state: &AppState,
    deal_id: Option<&str>,
    agent_id: &str,
    customer_id: &str,
    total: i64,
    settled: bool,
    reason: Option<&str>,
    since_agreement: Option<Duration>,
) {
    let outcome = if settled { "settled" } else { "failed" };
    metrics::counter!(
        "concierge_settlement_outcomes_total",
        "outcome" => outcome,
        "reason" => reason_label(reason.unwrap_or(outcome))
    )
    .increment(1);
    if let (true, Some(d)) = (settled, since_agreement) {
        metrics::histogram!("concierge_settlement_latency_seconds").record(d.as_secs_f64());
    }
    state
        .risk
        .deal_settlement_finished(deal_id, agent_id, customer_id, total, settled, now_ms());
}

/// A reason as a metric label: a short snake_case word, else `other` (labels stay few).
fn reason_label(reason: &str) -> String {
    let word = reason.split(':').next().unwrap_or_default().trim();
    if !word.is_empty()
        && word.len() <= 40
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        word.to_string()
    } else {
        "other".into()
    }
}

// ---- staff ----

/// Staff trip a breaker (`brand` or `agent:<id>`): it holds until staff reset it. Returns once
/// the transition and its audit entry are stored.
pub async fn staff_trip(
    state: &AppState,
    breaker: &str,
    reason: &str,
    staff_id: &str,
) -> Result<(), String> {
    let scope = parse_scope(state, breaker).await?;
    if reason.trim().is_empty() {
        return Err("say why the breaker is tripped".into());
    }
    if reason.chars().count() > 500 {
        return Err("the reason is longer than 500 characters".into());
    }
    state.risk.trip(&scope, reason, staff_id, now_ms());
    state.risk.flush().await;
    Ok(())
}

/// Staff reset a breaker: closed, its windows forgotten; stored and audited before it returns.
pub async fn staff_reset(state: &AppState, breaker: &str, staff_id: &str) -> Result<(), String> {
    let scope = parse_scope(state, breaker).await?;
    state.risk.reset(&scope, staff_id, now_ms());
    state.risk.flush().await;
    Ok(())
}

/// `brand`, or `agent:<id>` of a registered agent.
async fn parse_scope(state: &AppState, breaker: &str) -> Result<Scope, String> {
    let scope = Scope::parse(breaker.trim()).ok_or_else(|| {
        format!("{breaker:?} is not a breaker: use `brand` or `agent:<agent id>`")
    })?;
    if let Scope::Agent(id) = &scope {
        let agents = state
            .store
            .list_agents()
            .await
            .map_err(|e| format!("the database failed: {e}"))?;
        if !agents.iter().any(|a| &a.id == id) {
            return Err(format!("there is no agent {id}"));
        }
    }
    Ok(scope)
}

#[cfg(test)]
mod tests {
    #[test]
    fn risk_reason_labels_stay_few() {
        assert_eq!(super::reason_label("payment_declined"), "payment_declined");
        assert_eq!(
            super::reason_label("circuit_open: the brand"),
            "circuit_open"
        );
        assert_eq!(super::reason_label("Card was declined!"), "other");
    }
}
