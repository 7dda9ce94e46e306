//! The staff web inbox under `/inbox`: accounts and sessions, the queue, a conversation with its
//! customer sidebar, drafts to approve, replies, notes, tags, assignment and order actions —
//! server-rendered with handlebars, live-updated from the event hub.
//!
//! Pages are plain HTML forms (they work without JavaScript); a small script adds live updates
//! over server-sent events (`/inbox/events`) and a few keyboard shortcuts. Every page needs a
//! signed-in staff member ([`auth::StaffAuth`]); every POST carries the session's CSRF token
//! ([`auth::Post`]). Staff act through the same layers as the brand agent: replies are stored
//! messages put in the conversation's channel outbox, order actions go through
//! [`crate::agent::tools::execute`] as [`crate::agent::tools::Actor::Staff`].

mod actions;
mod auth;
mod live;
mod negotiations;
mod risk;
mod search;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use handlebars::Handlebars;
use serde::Serialize;

use crate::state::AppState;

pub use actions::check_role;
pub use auth::{hash_password, validate_password};

const CSS: &str = include_str!("assets/inbox.css");
const JS: &str = include_str!("assets/inbox.js");

/// Templates, embedded in the binary: (name, source).
const TEMPLATES: &[(&str, &str)] = &[
    ("layout", include_str!("templates/layout.hbs")),
    ("login", include_str!("templates/login.hbs")),
    ("queue", include_str!("templates/queue.hbs")),
    ("queue_row", include_str!("templates/queue_row.hbs")),
    ("escalations", include_str!("templates/escalations.hbs")),
    (
        "escalation_rows",
        include_str!("templates/escalation_rows.hbs"),
    ),
    ("conversation", include_str!("templates/conversation.hbs")),
    ("timeline_item", include_str!("templates/timeline_item.hbs")),
    ("order", include_str!("templates/order.hbs")),
    ("staff", include_str!("templates/staff.hbs")),
    ("agents", include_str!("templates/agents.hbs")),
    ("negotiations", include_str!("templates/negotiations.hbs")),
    ("negotiation", include_str!("templates/negotiation.hbs")),
    ("risk", include_str!("templates/risk.hbs")),
];

/// What every inbox handler runs with.
pub struct Web {
    pub app: AppState,
    hbs: Handlebars<'static>,
    search: search::MessageSearch,
}

pub(crate) type WebState = Arc<Web>;

/// The handlebars registry: strict (a misspelt field is an error, not an empty string) and
/// HTML-escaping every `{{value}}`.
pub fn templates() -> anyhow::Result<Handlebars<'static>> {
    let mut hbs = Handlebars::new();
    hbs.set_strict_mode(true);
    hbs.register_escape_fn(handlebars::html_escape);
    for (name, source) in TEMPLATES {
        hbs.register_template_string(name, source)
            .map_err(|e| anyhow::anyhow!("inbox template {name}: {e}"))?;
    }
    Ok(hbs)
}

impl Web {
    pub fn new(app: AppState) -> anyhow::Result<Web> {
        let search = search::MessageSearch::open(&app.config.data_dir.join("inbox-search"))?;
        Ok(Web {
            app,
            hbs: templates()?,
            search,
        })
    }

    /// Renders a template; a rendering failure is a 500 page naming the template.
    pub(crate) fn render<T: Serialize>(&self, name: &str, data: &T) -> Result<String, WebError> {
        self.hbs
            .render(name, data)
            .map_err(|e| WebError::Internal(format!("cannot render the {name} page: {e}")))
    }

    pub(crate) fn page<T: Serialize>(&self, name: &str, data: &T) -> Result<Response, WebError> {
        Ok(Html(self.render(name, data)?).into_response())
    }
}

pub fn routes(state: &AppState) -> Router<AppState> {
    let web = match Web::new(state.clone()) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            // The rest of the service still runs; the log says what is wrong.
            let id =
                crate::error::log_internal("the staff inbox is unavailable", &format!("{e:#}"));
            let message = format!(
                "The staff inbox is unavailable; the cause is in the server log (request id {id})."
            );
            return Router::new().route(
                "/inbox",
                get(move || async move { (StatusCode::SERVICE_UNAVAILABLE, message) }),
            );
        }
    };
    web.search.spawn_catch_up(web.app.store.clone());
    Router::new()
        .route("/inbox", get(views::queue))
        .route("/inbox/", get(views::queue))
        .route("/inbox/login", get(auth::login_page).post(auth::login))
        .route("/inbox/logout", post(auth::logout))
        .route("/inbox/escalations", get(views::escalations))
        .route("/inbox/escalations/rows", get(views::escalation_rows))
        .route("/inbox/rows/{id}", get(views::queue_row))
        .route("/inbox/c/{id}", get(views::conversation))
        .route("/inbox/c/{id}/messages", get(views::messages_after))
        .route("/inbox/c/{id}/reply", post(actions::reply))
        .route("/inbox/c/{id}/draft", post(actions::draft))
        .route("/inbox/c/{id}/assign", post(actions::assign))
        .route("/inbox/c/{id}/note", post(actions::note))
        .route("/inbox/c/{id}/status", post(actions::status))
        .route("/inbox/c/{id}/hand-back", post(actions::hand_back))
        .route("/inbox/c/{id}/tags", post(actions::tags))
        .route("/inbox/c/{id}/order", post(actions::order))
        .route(
            "/inbox/c/{id}/verification/unlock",
            post(actions::unlock_verification),
        )
        .route("/inbox/staff", get(views::staff).post(actions::add_staff))
        .route("/inbox/staff/{id}", post(actions::update_staff))
        .route("/inbox/agents", get(views::agents))
        .route(
            "/inbox/agents/tokens/{id}/revoke",
            post(actions::revoke_token),
        )
        .route("/inbox/negotiations", get(negotiations::list))
        .route("/inbox/negotiations/{id}", get(negotiations::show))
        .route("/inbox/risk", get(risk::page))
        .route("/inbox/risk/trip", post(risk::trip))
        .route("/inbox/risk/reset", post(risk::reset))
        .route("/inbox/events", get(live::events))
        .route("/inbox/assets/inbox.css", get(|| asset(CSS, "text/css")))
        .route(
            "/inbox/assets/inbox.js",
            get(|| asset(JS, "application/javascript")),
        )
        .with_state(web)
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, format!("{kind}; charset=utf-8")),
            (header::CACHE_CONTROL, "private, max-age=300".to_string()),
        ],
        body,
    )
        .into_response()
}

/// An inbox failure, shown as a page (never JSON: staff read it in a browser).
#[derive(Debug)]
pub(crate) enum WebError {
    NotFound(String),
    BadRequest(String),
    Forbidden(String),
    Internal(String),
}

impl From<crate::store::StoreError> for WebError {
    fn from(e: crate::store::StoreError) -> WebError {
        WebError::Internal(format!("the database failed: {e}"))
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, "That did not work", m),
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            WebError::Internal(m) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something broke",
                crate::error::internal_message(&crate::error::log_internal(
                    "inbox request failed",
                    &m,
                )),
            ),
        };
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
             <link rel=\"stylesheet\" href=\"/inbox/assets/inbox.css\"></head><body class=\"error-page\">\
             <main><h1>{title}</h1><p role=\"alert\">{}</p><p><a href=\"/inbox\">Back to the inbox</a></p></main></body></html>",
            handlebars::html_escape(&message)
        );
        (status, Html(body)).into_response()
    }
}

/// "3 min", "2 h 5 min", "4 d": how long ago, for ages and timestamps.
pub(crate) fn age(ms: i64) -> String {
    let mins = ms.max(0) / 60_000;
    if mins < 1 {
        "just now".into()
    } else if mins < 60 {
        format!("{mins} min")
    } else if mins < 24 * 60 {
        let (h, m) = (mins / 60, mins % 60);
        if m == 0 {
            format!("{h} h")
        } else {
            format!("{h} h {m} min")
        }
    } else {
        format!("{} d", mins / (24 * 60))
    }
}

/// "just now", "5 min ago": [`age`] as a time in the past.
pub(crate) fn ago(ms: i64) -> String {
    match age(ms) {
        a if a == "just now" => a,
        a => format!("{a} ago"),
    }
}

/// "1 minute", "30 minutes".
pub(crate) fn minutes(n: i64) -> String {
    if n == 1 {
        "1 minute".into()
    } else {
        format!("{n} minutes")
    }
}

/// "2026-11-23 22:41 UTC".
pub(crate) fn when(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
    match t {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => ms.to_string(),
    }
}

/// Words for an author kind, as badges show them.
pub(crate) fn author_label(kind: &str) -> &'static str {
    match kind {
        "customer" => "Customer",
        "brand_agent" => "Brand agent",
        "staff" => "Staff",
        "consumer_agent" => "Consumer agent",
        _ => "Unknown",
    }
}

/// Words for an escalation reason.
pub(crate) fn reason_label(reason: &str) -> String {
    match reason {
        "human_requested" => "Customer asked for a person".into(),
        "legal" => "Legal".into(),
        "fraud" => "Possible fraud".into(),
        "needs_approval" => "Needs approval".into(),
        "low_confidence" => "Agent was unsure".into(),
        "llm_failure" => "Agent failed".into(),
        "out_of_scope" => "Out of scope".into(),
        "unanswered_question" => "A question the policies do not answer".into(),
        "settlement_stuck" => "A settlement needs a person".into(),
        other => other.replace('_', " "),
    }
}

/// First `n` characters, with an ellipsis when cut.
pub(crate) fn clip(s: &str, n: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn templates_parse_and_escape_user_text() {
        let hbs = super::templates().expect("templates parse");
        let html = hbs
            .render(
                "timeline_item",
                &json!({"kind": "message", "id": "m1", "seq": 1, "author_kind": "customer",
                        "author": "Customer", "who": null, "direction": "inbound",
                        "text": "<script>alert(1)</script>", "when": "now", "delivery": null}),
            )
            .expect("render");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(super::age(30_000), "just now");
        assert_eq!(super::ago(30_000), "just now");
        assert_eq!(super::ago(5 * 60_000), "5 min ago");
        assert_eq!(super::minutes(1), "1 minute");
        assert_eq!(super::minutes(30), "30 minutes");
        assert_eq!(super::age(5 * 60_000), "5 min");
        assert_eq!(super::age(125 * 60_000), "2 h 5 min");
        assert_eq!(super::age(3 * 24 * 3_600_000), "3 d");
        assert_eq!(super::clip("abcdef", 3), "abc…");
        assert_eq!(super::when(0), "1970-01-01 00:00 UTC");
    }
}
