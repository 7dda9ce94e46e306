//! Prometheus metrics of negotiations (served on `[metrics] bind` with the others):
//!
//! - `concierge_negotiations_opened_total{category}`
//! - `concierge_negotiations_agreed_total{category}`
//! - `concierge_negotiations_ended_total{reason}` (rejected, deadline, rounds, ended_by_agent, limit,
//!   circuit_open)
//! - `concierge_negotiation_rounds` (histogram: rounds used, by outcome)
//! - `concierge_negotiation_time_to_agreement_seconds` (histogram)
//! - `concierge_negotiation_brand_utility` and `concierge_negotiation_brand_advantage`
//!   (histograms of each deal's brand utility and advantage `(u − floor)/(list − floor)`)
//! - `concierge_negotiation_move_seconds` (histogram: server time per agent move, by kind)
//! - `concierge_negotiation_errors_total{code}` (error frames sent)

/// The first line's category labels a negotiation (bounded by the catalogue's categories).
fn category(setup: &super::Setup) -> String {
    setup
        .lines
        .first()
        .map(|l| l.category.clone())
        .unwrap_or_default()
}

pub fn opened(setup: &super::Setup) {
    metrics::counter!("concierge_negotiations_opened_total", "category" => category(setup))
        .increment(1);
}

pub fn agreed(setup: &super::Setup, rounds: u32, elapsed_ms: i64, utility: f64, advantage: f64) {
    metrics::counter!("concierge_negotiations_agreed_total", "category" => category(setup))
        .increment(1);
    metrics::histogram!("concierge_negotiation_rounds", "outcome" => "agreed")
        .record(f64::from(rounds));
    metrics::histogram!("concierge_negotiation_time_to_agreement_seconds")
        .record(elapsed_ms.max(0) as f64 / 1000.0);
    metrics::histogram!("concierge_negotiation_brand_utility").record(utility);
    metrics::histogram!("concierge_negotiation_brand_advantage").record(advantage);
}

pub fn ended(reason: &str, rounds: u32) {
    let reason = match reason {
        "rejected" | "deadline" | "rounds" | "ended_by_agent" | "limit" | "circuit_open" => {
            reason.to_string()
        }
        _ => "other".to_string(),
    };
    metrics::counter!("concierge_negotiations_ended_total", "reason" => reason).increment(1);
    metrics::histogram!("concierge_negotiation_rounds", "outcome" => "ended")
        .record(f64::from(rounds));
}

pub fn move_time(kind: &'static str, seconds: f64) {
    metrics::histogram!("concierge_negotiation_move_seconds", "kind" => kind).record(seconds);
    if PROBING.load(std::sync::atomic::Ordering::Relaxed) {
        PROBE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(std::time::Duration::from_secs_f64(seconds));
    }
}

static PROBING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static PROBE: std::sync::Mutex<Vec<std::time::Duration>> = std::sync::Mutex::new(Vec::new());

/// For `concierge bench negotiate`: keep every move's server time in memory from now on
/// (`true`), or stop; [`take_move_times`] hands them over.
pub fn probe_move_times(on: bool) {
    PROBING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The server times of the moves handled since the probe was switched on.
pub fn take_move_times() -> Vec<std::time::Duration> {
    std::mem::take(&mut *PROBE.lock().unwrap_or_else(|e| e.into_inner()))
}

pub fn error(code: &'static str) {
    metrics::counter!("concierge_negotiation_errors_total", "code" => code).increment(1);
}
