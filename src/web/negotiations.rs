//! The `Negotiations` page of the staff inbox: every negotiation with consumer agents (filters
//! by status, agent and category), figures per agent and per category (agreements, mean brand
//! utility and advantage), and one negotiation's transcript with an SVG chart of both sides'
//! offers over the rounds.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::StaffAuth;
use super::views::layout;
use super::{WebError, WebState, when};
use crate::commerce::format_money;
use crate::negotiate::store::{self as nstore, ListFilter};
use crate::negotiate::{Negotiation, Terms};
use crate::util::now_ms;

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    category: Option<String>,
}

#[derive(Default)]
struct Tally {
    opened: u64,
    agreed: u64,
    utility: f64,
    advantage: f64,
}

impl Tally {
    fn row(&self, name: &str) -> Value {
        let n = self.agreed.max(1) as f64;
        json!({
            "name": name,
            "opened": self.opened,
            "agreed": self.agreed,
            "rate": format!("{:.0} %", 100.0 * self.agreed as f64 / self.opened.max(1) as f64),
            "utility": if self.agreed > 0 { format!("{:.2}", self.utility / n) } else { "–".into() },
            "advantage": if self.agreed > 0 { format!("{:.2}", self.advantage / n) } else { "–".into() },
        })
    }
}

fn final_terms(n: &Negotiation) -> Option<Terms> {
    n.moves
        .iter()
        .rev()
        .find(|m| m.kind == "accept")
        .and_then(|m| m.terms.clone())
}

pub async fn list(
    State(web): State<WebState>,
    auth: StaffAuth,
    Query(f): Query<Filters>,
) -> Result<Response, WebError> {
    let store = &web.app.store;
    let names: HashMap<String, String> = store
        .list_agents()
        .await?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
    let pick = |s: &Option<String>| s.as_deref().map(str::trim).unwrap_or("").to_string();
    let filter = ListFilter {
        status: pick(&f.status),
        agent_id: pick(&f.agent),
        category: pick(&f.category),
        limit: 200,
    };
    let rows = nstore::list(store, &filter).await?;
    let now = now_ms();
    let mut by_agent: BTreeMap<String, Tally> = BTreeMap::new();
    let mut by_category: BTreeMap<String, Tally> = BTreeMap::new();
    let mut out = Vec::new();
    for r in &rows {
        let agent = names
            .get(&r.agent_id)
            .cloned()
            .unwrap_or_else(|| r.agent_id.clone());
        let mut deal = None;
        let mut u = None;
        if r.status == "agreed"
            && let Some(n) = nstore::load(store, &r.id).await?
            && let Some(t) = final_terms(&n)
        {
            deal = Some(format_money(n.setup.total(&t), &t.currency));
            u = Some((n.setup.utility(&t), n.setup.advantage(&t)));
        }
        for tally in [
            by_agent.entry(agent.clone()).or_default(),
            by_category.entry(r.categories.join(", ")).or_default(),
        ] {
            tally.opened += 1;
            if let Some((utility, advantage)) = u {
                tally.agreed += 1;
                tally.utility += utility;
                tally.advantage += advantage;
            }
        }
        let live = matches!(r.status.as_str(), "open" | "offering");
        out.push(json!({
            "id": r.id,
            "agent": agent,
            "customer": r.customer_id,
            "categories": r.categories.join(", "),
            "status": if live && now >= r.deadline_at { "expired".to_string() } else { r.status.clone() },
            "reason": r.end_reason,
            "rounds": r.round,
            "deal": deal,
            "opened": when(r.opened_at),
        }));
    }
    let mut data = layout(&web, &auth, "Negotiations", "negotiations").await?;
    data.insert("negotiations".into(), json!(out));
    data.insert(
        "by_agent".into(),
        json!(by_agent.iter().map(|(k, t)| t.row(k)).collect::<Vec<_>>()),
    );
    data.insert(
        "by_category".into(),
        json!(
            by_category
                .iter()
                .map(|(k, t)| t.row(k))
                .collect::<Vec<_>>()
        ),
    );
    data.insert(
        "filters".into(),
        json!({"status": filter.status, "agent": filter.agent_id, "category": filter.category}),
    );
    data.insert(
        "agents".into(),
        json!(
            names
                .iter()
                .map(
                    |(id, name)| json!({"id": id, "name": name, "selected": *id == filter.agent_id})
                )
                .collect::<Vec<_>>()
        ),
    );
    data.insert(
        "statuses".into(),
        json!(
            ["open", "offering", "agreed", "ended", "expired"]
                .iter()
                .map(|s| json!({"value": s, "selected": *s == filter.status}))
                .collect::<Vec<_>>()
        ),
    );
    web.page("negotiations", &data)
}

pub async fn show(
    State(web): State<WebState>,
    auth: StaffAuth,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let store = &web.app.store;
    let n = nstore::load(store, &id)
        .await?
        .ok_or_else(|| WebError::NotFound("No such negotiation.".into()))?;
    let now = now_ms();
    let currency = n.setup.currency.clone();
    let money = |m: i64| format_money(m, &currency);
    let moves: Vec<Value> = n
        .moves
        .iter()
        .map(|m| {
            json!({
                "round": m.round,
                "side": m.side,
                "kind": m.kind,
                "lines": m.terms.as_ref().map(|t| t.lines.iter().map(|l| format!("{} × {} at {}", l.quantity, l.variant_id, money(l.unit_price))).collect::<Vec<_>>().join("; ")),
                "shipping": m.terms.as_ref().map(|t| t.shipping.clone()),
                "total": m.total.map(money),
                "utility": m.terms.as_ref().map(|t| format!("{:.2}", n.setup.utility(t))),
                "signed": m.sig.is_some(),
                "at": when(m.at),
            })
        })
        .collect();
    let deal = nstore::deal_of(store, &id).await?;
    let mut data = layout(&web, &auth, "Negotiation", "negotiations").await?;
    data.insert(
        "n".into(),
        json!({
            "id": n.id,
            "agent": n.agent_id,
            "customer": n.customer_id,
            "status": n.status(now).as_str(),
            "reason": n.reason(now),
            "rounds": n.round(),
            "max_rounds": n.setup.max_rounds,
            "opened": when(n.setup.opened_at),
            "deadline": when(n.setup.deadline_at),
            "lines": n.setup.lines.iter().map(|l| json!({
                "name": l.name, "variant": l.variant_id, "category": l.category,
                "list": money(l.list_price), "floor": money(l.floor), "max": l.max_quantity,
            })).collect::<Vec<_>>(),
        }),
    );
    data.insert("moves".into(), json!(moves));
    data.insert("chart".into(), json!(chart(&n)));
    data.insert(
        "deal".into(),
        json!(deal.map(|d| json!({
            "id": d.id(),
            "total": d.deal["total"].as_i64().map(money),
            "hash": d.deal_hash,
            "brand_sig": d.brand_sig,
            "agent_sig": d.agent_sig,
            "audit_seq": d.audit_seq,
        }))),
    );
    web.page("negotiation", &data)
}

/// An SVG line chart of both sides' offers (totals) over the rounds, with the list and floor
/// totals as guides. Numbers only: nothing from the agent reaches the markup.
pub fn chart(n: &Negotiation) -> String {
    let (w, h, pad) = (640.0, 240.0, 36.0);
    let list = n.setup.total(&n.setup.list_terms()) as f64;
    let floor = n
        .setup
        .total(&n.setup.priced(&n.setup.list_terms(), |s, _| s.floor)) as f64;
    let points: Vec<(&str, u32, f64)> = n
        .moves
        .iter()
        .filter_map(|m| m.total.map(|t| (m.side, m.round, t as f64)))
        .collect();
    let lo = points.iter().map(|p| p.2).fold(floor, f64::min) * 0.95;
    let hi = points.iter().map(|p| p.2).fold(list, f64::max) * 1.02;
    let rounds = f64::from(n.setup.max_rounds.max(2));
    let x = |r: u32| pad + (f64::from(r) / rounds) * (w - 2.0 * pad);
    let y = |v: f64| h - pad - (v - lo) / (hi - lo).max(1.0) * (h - 2.0 * pad);
    let line = |side: &str| {
        points
            .iter()
            .filter(|p| p.0 == side)
            .map(|p| format!("{:.1},{:.1}", x(p.1), y(p.2)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let dots = |side: &str, class: &str| {
        points
            .iter()
            .filter(|p| p.0 == side)
            .map(|p| format!("<circle class=\"{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"><title>round {}: {:.2}</title></circle>", x(p.1), y(p.2), p.1, p.2 / 100.0))
            .collect::<String>()
    };
    format!(
        "<svg class=\"negotiation-chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"Offers by round: agent and brand totals\" data-testid=\"negotiation-chart\">\
         <line class=\"guide list\" x1=\"{pad}\" x2=\"{x2}\" y1=\"{yl:.1}\" y2=\"{yl:.1}\"/><text x=\"{pad}\" y=\"{tl:.1}\">list {list:.2}</text>\
         <line class=\"guide floor\" x1=\"{pad}\" x2=\"{x2}\" y1=\"{yf:.1}\" y2=\"{yf:.1}\"/><text x=\"{pad}\" y=\"{tf:.1}\">floor {floor:.2}</text>\
         <polyline class=\"agent\" fill=\"none\" points=\"{agent}\"/><polyline class=\"brand\" fill=\"none\" points=\"{brand}\"/>{ad}{bd}\
         <text x=\"{x2}\" y=\"{bottom}\" text-anchor=\"end\">round</text>\
         <text class=\"agent\" x=\"{pad}\" y=\"{bottom}\">● agent</text><text class=\"brand\" x=\"{legend}\" y=\"{bottom}\">● brand</text></svg>",
        x2 = w - pad,
        yl = y(list),
        tl = y(list) - 4.0,
        yf = y(floor),
        tf = y(floor) + 14.0,
        list = list / 100.0,
        floor = floor / 100.0,
        agent = line("agent"),
        brand = line("brand"),
        ad = dots("agent", "agent"),
        bd = dots("brand", "brand"),
        bottom = h - 8.0,
        legend = pad + 80.0,
    )
}
