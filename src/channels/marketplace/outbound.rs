//! Marketplace replies out: the outbox hands over a delivery on `marketplace:<name>`; the reply
//! text, the thread id (from the conversation's thread key `<name>:<thread id>`) and the buyer
//! and order (from the inbound message it answers) fill the configured body template, which is
//! sent to `reply.url` with the configured headers and `Idempotency-Key: <delivery key>` (stable
//! across retries, so a marketplace that honours it never shows a reply twice). A non-2xx answer
//! is an error with the status and the start of the body: a 4xx (other than 408 and 429) is a
//! permanent refusal, a dead letter at once; a 5xx, 408, 429, timeout or network error is
//! retried with the marketplace's backoff (`reply.max_attempts`, `retry_base_ms`,
//! `retry_max_ms`) and becomes a dead letter after the last attempt.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::channels::SendError;
use crate::config::marketplace::{Marketplace, ReplyConfig, ReplyVars, render_body};
use crate::state::AppState;
use crate::store::{Delivery, Direction, Message};

/// How much of a failed response's body an error keeps.
const ERROR_EXCERPT_CHARS: usize = 300;

/// Sends a delivery; returns the marketplace's id for the reply when `reply.id_pointer` finds one.
pub async fn send(
    state: &AppState,
    name: &str,
    delivery: &Delivery,
) -> Result<Option<String>, SendError> {
    // Settings can be fixed and the service restarted while the delivery waits: transient.
    let m = state
        .marketplace(name)
        .ok_or_else(|| SendError::Transient(format!("marketplace {name:?} is not configured")))?;
    if !m.config.enabled {
        return Err(SendError::Transient(format!(
            "marketplace {name:?} is disabled"
        )));
    }
    let store = &state.store;
    let (reply, conversation) = crate::channels::outbox::reply_of(store, delivery).await?;
    let thread_id = conversation
        .thread_key
        .strip_prefix(&format!("{name}:"))
        .ok_or_else(|| {
            SendError::Permanent(format!(
                "conversation {} is not a {name} thread ({:?})",
                conversation.id, conversation.thread_key
            ))
        })?
        .to_string();
    let inbound = answered_message(state, &reply).await?;
    let meta = inbound.as_ref().map(|i| &i.meta);
    let meta_str = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let vars = ReplyVars {
        text: reply.text.clone(),
        thread_id,
        buyer_id: meta_str("buyer_id"),
        order: meta_str("order"),
    };
    post_reply(m, &vars, &delivery.idempotency_key).await
}

/// The inbound message a reply answers (its `in_reply_to`, else the last inbound one before it).
async fn answered_message(state: &AppState, reply: &Message) -> Result<Option<Message>, SendError> {
    let store = &state.store;
    if let Some(id) = reply.meta.get("in_reply_to").and_then(Value::as_str)
        && let Some(m) = store.message_by_id(id).await?
    {
        return Ok(Some(m));
    }
    let earlier = store.messages_after(&reply.conversation_id, 0).await?;
    Ok(earlier
        .into_iter()
        .rfind(|m| m.seq < reply.seq && m.direction == Direction::Inbound))
}

/// Sends one reply as configured; `Ok` carries the marketplace's id for it, if found.
pub async fn post_reply(
    m: &Marketplace,
    vars: &ReplyVars,
    idempotency_key: &str,
) -> Result<Option<String>, SendError> {
    let cfg = &m.config.reply;
    let url = render_url(&cfg.url, vars);
    let body = render_body(&cfg.body, vars).map_err(SendError::Permanent)?;
    let method = reqwest::Method::from_bytes(cfg.method.as_bytes()).map_err(|_| {
        SendError::Transient(format!("reply.method {:?} is not a method", cfg.method))
    })?;
    let mut request = client()
        .map_err(SendError::Transient)?
        .request(method, &url)
        .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", idempotency_key);
    for (name, value) in headers(cfg, |k| std::env::var(k).ok()).map_err(SendError::Transient)? {
        request = request.header(name, value);
    }
    let response = request.body(body).send().await.map_err(|e| {
        SendError::Transient(format!(
            "{} reply to {} failed: {e}",
            m.name(),
            redact(&url)
        ))
    })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let excerpt: String = text.chars().take(ERROR_EXCERPT_CHARS).collect();
        let why = format!("{} answered {status}: {}", m.name(), excerpt.trim());
        let refused = status.is_client_error()
            && status != reqwest::StatusCode::REQUEST_TIMEOUT
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
        return Err(if refused {
            SendError::Permanent(why)
        } else {
            SendError::Transient(why)
        });
    }
    Ok(cfg.id_pointer.as_deref().and_then(|p| {
        let v: Value = serde_json::from_str(&text).ok()?;
        match v.pointer(p)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }))
}

/// One HTTP client for every marketplace (connection pooling across replies).
fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            crate::http_client::builder()
                .user_agent(concat!("concierge/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The URL without its query (which may carry a token) for error messages.
fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Fills `{thread_id}`, `{buyer_id}` and `{order}` in the reply URL, percent-encoded.
pub fn render_url(template: &str, vars: &ReplyVars) -> String {
    template
        .replace("{thread_id}", &percent_encode(&vars.thread_id))
        .replace("{buyer_id}", &percent_encode(&vars.buyer_id))
        .replace("{order}", &percent_encode(&vars.order))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The configured headers with `${VAR}` replaced from the environment (unset: an error naming
/// the variable, never its value).
pub fn headers(
    cfg: &ReplyConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (name, value) in &cfg.headers {
        let mut rendered = String::new();
        let mut rest = value.as_str();
        while let Some(start) = rest.find("${") {
            rendered.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("reply.headers.{name}: unclosed ${{"))?;
            let var = &after[..end];
            let val = env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!(
                    "reply.headers.{name} needs the environment variable {var}, which is not set"
                )
            })?;
            rendered.push_str(&val);
            rest = &after[end + 1..];
        }
        rendered.push_str(rest);
        out.push((name.clone(), rendered));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> ReplyVars {
        ReplyVars {
            text: "Hi \"Ann\"\nYour order shipped.".into(),
            thread_id: "th 1/2".into(),
            buyer_id: "ann".into(),
            order: "#W123".into(),
        }
    }

    #[test]
    fn renders_a_json_body_with_escaped_values() {
        let body = render_body(
            r#"{"threadId": "{{thread_id}}", "text": "{{text}}", "order": "{{order}}"}"#,
            &vars(),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["text"], "Hi \"Ann\"\nYour order shipped.");
        assert_eq!(v["threadId"], "th 1/2");
        assert_eq!(v["order"], "#W123");
        assert!(render_body(r#"{"x": "{{nope}}"}"#, &vars()).is_err());
        assert!(render_body(r#"{"x": {{text}}}"#, &vars()).is_err());
    }

    #[test]
    fn fills_and_encodes_the_url() {
        assert_eq!(
            render_url("https://m.example/threads/{thread_id}/messages", &vars()),
            "https://m.example/threads/th%201%2F2/messages"
        );
    }

    #[test]
    fn expands_header_variables() {
        let cfg: ReplyConfig = toml::from_str(
            r#"
url = "https://m.example/x"
body = "{}"
headers = { Authorization = "Bearer ${TOKEN_X}", X-Static = "yes" }
"#,
        )
        .unwrap();
        let h = headers(&cfg, |k| (k == "TOKEN_X").then(|| "abc".to_string())).unwrap();
        assert!(h.contains(&("Authorization".into(), "Bearer abc".into())));
        assert!(h.contains(&("X-Static".into(), "yes".into())));
        let e = headers(&cfg, |_| None).unwrap_err();
        assert!(e.contains("TOKEN_X"), "{e}");
    }
}
