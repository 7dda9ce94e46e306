//! Logs and metrics. Structured logs through `tracing` (pretty on a terminal, or JSON lines);
//! request spans are named by the matched route, not the raw path, so they stay low-cardinality.
//! Prometheus metrics are recorded process-wide and served only on the separate listener set by
//! `[metrics] bind` — never on the public port.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global tracing subscriber. Safe to call more than once (later calls are no-ops).
pub fn init_tracing(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); then ours only renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Middleware: counts requests and records latency by route, method and status.
pub async fn track_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("concierge_http_requests_total", &labels).increment(1);
    metrics::histogram!("concierge_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

/// A message came in or went out on a channel.
pub fn count_message(channel: &str, direction: &'static str) {
    metrics::counter!(
        "concierge_messages_total",
        "channel" => channel.to_string(),
        "direction" => direction
    )
    .increment(1);
}

/// Jobs waiting or running, as last seen by the worker.
pub fn set_jobs_pending(n: i64) {
    metrics::gauge!("concierge_jobs_pending").set(n as f64);
}

/// The LLM failed a turn and the offline resolver answered.
pub fn count_llm_fallback(kind: &'static str) {
    metrics::counter!("concierge_llm_fallbacks_total", "kind" => kind).increment(1);
}

/// Web chat sockets open now.
pub fn chat_sockets(delta: i64) {
    metrics::gauge!("concierge_chat_sockets").increment(delta as f64);
}

/// A request, frame or socket refused by a limit (`crate::limits`), by the limit's name.
pub fn count_limit_refusal(limit: &'static str) {
    metrics::counter!("concierge_limit_refusals_total", "limit" => limit).increment(1);
}

/// A sign-in password (Argon2) check done.
pub fn count_password_check() {
    metrics::counter!("concierge_password_checks_total").increment(1);
}
