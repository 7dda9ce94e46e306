//! The `Risk` page of the staff inbox: the brand's open exposure against its caps (per agent and
//! per customer), every circuit breaker's state with forms to trip or reset it, and the
//! breakers' history (each transition with its action-log entry). Also the counterparty
//! monitoring rows of the Agents page ([`monitoring_rows`]).

use std::collections::HashMap;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};

use super::auth::{Post, StaffAuth};
use super::views::layout;
use super::{WebError, WebState, when};
use crate::commerce::{Minor, format_money};
use crate::negotiate::NegotiationConfig;
use crate::risk::monitor;
use crate::util::now_ms;

fn money(v: Option<Minor>, currency: &str) -> String {
    v.map_or_else(|| "no cap".to_string(), |v| format_money(v, currency))
}

/// Agent ids to names.
async fn agent_names(web: &WebState) -> Result<HashMap<String, String>, WebError> {
    Ok(web
        .app
        .store
        .list_agents()
        .await?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect())
}

fn breaker_label(key: &str, names: &HashMap<String, String>) -> String {
    match key.strip_prefix("agent:") {
        Some(id) => format!("Agent {}", names.get(id).map_or(id, String::as_str)),
        None => "Brand (every agent)".into(),
    }
}

pub async fn page(State(web): State<WebState>, auth: StaffAuth) -> Result<Response, WebError> {
    let app = &web.app;
    let now = now_ms();
    let negotiation = NegotiationConfig::for_brand(&app.config.brand.dir);
    let currency = negotiation.currency.clone();
    let c = app.risk.config();
    let names = agent_names(&web).await?;
    let exposure = app.risk.exposure(now);
    let agents: Vec<Value> = exposure
        .agents
        .iter()
        .map(|(id, value, open)| {
            json!({
                "agent": names.get(id).cloned().unwrap_or_else(|| id.clone()),
                "exposure": format_money(*value, &currency),
                "share": if exposure.brand > 0 { format!("{:.0} %", 100.0 * *value as f64 / exposure.brand as f64) } else { "–".into() },
                "open": open,
            })
        })
        .collect();
    let customers: Vec<Value> = exposure
        .customers
        .iter()
        .take(20)
        .map(|(id, value)| json!({"customer": id, "exposure": format_money(*value, &currency)}))
        .collect();
    let breakers: Vec<Value> = app
        .risk
        .breakers(now)
        .into_iter()
        .map(|b| {
            json!({
                "key": b.scope.key(),
                "label": breaker_label(&b.scope.key(), &names),
                "state": b.state,
                "open": b.state == "open",
                "closed": b.state == "closed",
                "reason": b.reason,
                "since": when(b.since),
                "until": b.until.map(when),
                "failures": format!("{} of {}", b.failed, b.window),
                "settled_hour": format_money(b.settled_last_hour, &currency),
            })
        })
        .collect();
    let history: Vec<Value> = crate::risk::store::history(&app.store, "", 100)
        .await?
        .into_iter()
        .map(|e| {
            json!({
                "at": when(e.at),
                "breaker": breaker_label(&e.breaker, &names),
                "from": e.from,
                "to": e.to,
                "reason": e.reason,
                "by": match e.actor_kind.as_str() {
                    "staff" => format!("staff {}", e.actor_id.unwrap_or_default()),
                    _ => "rules".to_string(),
                },
                "audit_seq": e.audit_seq,
            })
        })
        .collect();
    let mut agent_choices: Vec<Value> = names
        .iter()
        .map(|(id, name)| json!({"key": format!("agent:{id}"), "name": name}))
        .collect();
    agent_choices.sort_by_key(|v| v["name"].as_str().unwrap_or_default().to_string());
    let b = &c.breaker;
    let mut data = layout(&web, &auth, "Risk", "risk").await?;
    data.insert(
        "risk".into(),
        json!({
            "enabled": c.enabled,
            "brand_exposure": format_money(exposure.brand, &currency),
            "deals": exposure.deals,
            "caps": [
                {"name": "Per agent", "value": money(c.max_agent_exposure, &currency)},
                {"name": "Per customer", "value": money(c.max_customer_exposure, &currency)},
                {"name": "Brand-wide", "value": money(c.max_brand_exposure, &currency)},
                {"name": "One agent's share", "value": if c.max_agent_share < 1.0 { format!("{:.0} % above {}", c.max_agent_share * 100.0, format_money(c.share_floor, &currency)) } else { "no cap".into() }},
                {"name": "Open negotiations per agent", "value": c.max_negotiations_per_agent.to_string()},
                {"name": "Breaker: brand exposure", "value": money(b.brand_exposure, &currency)},
                {"name": "Breaker: agent exposure", "value": money(b.agent_exposure, &currency)},
                {"name": "Breaker: failure rate", "value": format!("over {:.0} % of the last {} (from {})", b.failure_rate * 100.0, b.failure_window, b.min_settlements)},
                {"name": "Breaker: failures in time", "value": if b.failures > 0 { format!("{} in {} s", b.failures, b.failure_secs) } else { "off".into() }},
                {"name": "Breaker: brand settled per hour", "value": money(b.brand_settled_per_hour, &currency)},
                {"name": "Breaker: agent settled per hour", "value": money(b.agent_settled_per_hour, &currency)},
                {"name": "Breaker: cool-down, probes", "value": format!("{} s, {} probes", b.cooldown_ms / 1000, b.half_open_probes)},
                {"name": "Settling while open", "value": if b.settle_while_open { "allowed" } else { "refused" }},
            ],
            "agents": agents,
            "customers": customers,
            "breakers": breakers,
            "history": history,
            "agent_choices": agent_choices,
        }),
    );
    web.page("risk", &data)
}

/// POST /inbox/risk/trip: `breaker` (`brand` or `agent:<id>`) and `reason`.
pub async fn trip(State(web): State<WebState>, post: Post) -> Result<Response, WebError> {
    let breaker = post.fields.required("breaker", "The breaker")?.to_string();
    let reason = post.fields.get("reason").unwrap_or_default().to_string();
    let notice = match crate::risk::staff_trip(&web.app, &breaker, &reason, post.auth.staff_id())
        .await
    {
        Ok(()) => format!(
            "Breaker {breaker} tripped: new negotiations are refused and those in flight end until it is reset."
        ),
        Err(e) => format!("error:Not tripped: {e}."),
    };
    post.auth.flash(&web, &notice).await?;
    Ok(Redirect::to("/inbox/risk").into_response())
}

/// POST /inbox/risk/reset: `breaker`.
pub async fn reset(State(web): State<WebState>, post: Post) -> Result<Response, WebError> {
    let breaker = post.fields.required("breaker", "The breaker")?.to_string();
    let notice = match crate::risk::staff_reset(&web.app, &breaker, post.auth.staff_id()).await {
        Ok(()) => format!("Breaker {breaker} reset: closed."),
        Err(e) => format!("error:Not reset: {e}."),
    };
    post.auth.flash(&web, &notice).await?;
    Ok(Redirect::to("/inbox/risk").into_response())
}

/// The Agents page's counterparty monitoring: per agent its figures, exposure, breaker and
/// flags.
pub(super) async fn monitoring_rows(
    web: &WebState,
    names: &HashMap<&str, &str>,
) -> Result<Vec<Value>, WebError> {
    let now = now_ms();
    let currency = NegotiationConfig::for_brand(&web.app.config.brand.dir)
        .currency
        .clone();
    let exposure: HashMap<String, (Minor, usize)> = web
        .app
        .risk
        .exposure(now)
        .agents
        .into_iter()
        .map(|(a, v, n)| (a, (v, n)))
        .collect();
    let breakers: HashMap<String, &'static str> = web
        .app
        .risk
        .breakers(now)
        .into_iter()
        .map(|b| (b.scope.key(), b.state))
        .collect();
    let rows = monitor::figures(&web.app.store, now)
        .await?
        .into_iter()
        .map(|f| {
            let (value, open) = exposure.get(&f.agent_id).copied().unwrap_or((0, 0));
            json!({
                "agent": names.get(f.agent_id.as_str()).copied().unwrap_or(f.agent_id.as_str()),
                "agent_id": f.agent_id,
                "opened": f.opened,
                "agreed": f.agreed,
                "rate": f.agreement_rate().map_or_else(|| "–".to_string(), |r| format!("{:.0} %", r * 100.0)),
                "without_deal": f.without_deal(),
                "settlements": f.settlements,
                "failures": f.settlement_failures,
                "compensations": f.compensations,
                "out_of_range": f.out_of_range,
                "signature_failures": f.signature_failures,
                "exposure": format_money(value, &currency),
                "open": open,
                "breaker": breakers.get(&format!("agent:{}", f.agent_id)).copied().unwrap_or("closed"),
                "flags": f.flags,
                "flagged": !f.flags.is_empty(),
            })
        })
        .collect();
    Ok(rows)
}
