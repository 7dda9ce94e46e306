//! Marketplace replies out: the outbox hands over a delivery on `marketplace:<name>`; the reply
//! text, the thread id (from the conversation's thread key `<name>:<thread id>`) and the buyer
//! and order (from the inbound message it answers) fill the configured body template, which is
//! sent to `reply.url` with the configured headers and `Idempotency-Key: <delivery key>` (stable
//! across retries, so a marketplace that honours it never shows a reply twice). A non-2xx answer
//! is an error with the status and the start of the body; the outbox retries with backoff and
//! keeps a dead letter after the last attempt.

use std::sync::OnceLock;
use std::time::Duration;

use handlebars::Handlebars;
use serde_json::{Value, json};

use super::config::{Marketplace, ReplyConfig};
use crate::app::AppState;
use crate::store::{Delivery, Direction, Message};

/// How much of a failed response's body an error keeps.
const ERROR_EXCERPT_CHARS: usize = 300;

/// Sends a delivery; returns the marketplace's id for the reply when `reply.id_pointer` finds one.
pub async fn send(state: &AppState, delivery: &Delivery) -> Result<Option<String>, String> {
    let name = delivery
        .channel
        .strip_prefix("marketplace:")
        .ok_or_else(|| format!("{} is not a marketplace channel", delivery.channel))?;
    let all = super::config::load_dir(&state.config.brand.channels)?;
    let m = all
        .into_iter()
        .find(|m| m.name() == name)
        .ok_or_else(|| format!("marketplace {name:?} is not configured"))?;
    if !m.config.enabled {
        return Err(format!("marketplace {name:?} is disabled"));
    }
    let store = &state.store;
    let (reply, conversation) = crate::outbox::reply_of(store, delivery).await?;
    let thread_id = conversation
        .thread_key
        .strip_prefix(&format!("{name}:"))
        .ok_or_else(|| {
            format!(
                "conversation {} is not a {name} thread ({:?})",
                conversation.id, conversation.thread_key
            )
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
    post_reply(&m, &vars, &delivery.idempotency_key).await
}

/// The inbound message a reply answers (its `in_reply_to`, else the last inbound one before it).
async fn answered_message(state: &AppState, reply: &Message) -> Result<Option<Message>, String> {
    let store = &state.store;
    if let Some(id) = reply.meta.get("in_reply_to").and_then(Value::as_str)
        && let Some(m) = store.message_by_id(id).await.map_err(|e| e.to_string())?
    {
        return Ok(Some(m));
    }
    let earlier = store
        .messages_after(&reply.conversation_id, 0)
        .await
        .map_err(|e| e.to_string())?;
    Ok(earlier
        .into_iter()
        .rfind(|m| m.seq < reply.seq && m.direction == Direction::Inbound))
}

/// What a reply template may use.
#[derive(Debug, Clone)]
pub struct ReplyVars {
    pub text: String,
    pub thread_id: String,
    pub buyer_id: String,
    pub order: String,
}

/// Sends one reply as configured; `Ok` carries the marketplace's id for it, if found.
pub async fn post_reply(
    m: &Marketplace,
    vars: &ReplyVars,
    idempotency_key: &str,
) -> Result<Option<String>, String> {
    let cfg = &m.config.reply;
    let url = render_url(&cfg.url, vars);
    let body = render_body(&cfg.body, vars)?;
    let method = reqwest::Method::from_bytes(cfg.method.as_bytes())
        .map_err(|_| format!("reply.method {:?} is not a method", cfg.method))?;
    let mut request = client()?
        .request(method, &url)
        .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", idempotency_key);
    for (name, value) in headers(cfg, |k| std::env::var(k).ok())? {
        request = request.header(name, value);
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{} reply to {} failed: {e}", m.name(), redact(&url)))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let excerpt: String = text.chars().take(ERROR_EXCERPT_CHARS).collect();
        return Err(format!(
            "{} answered {status}: {}",
            m.name(),
            excerpt.trim()
        ));
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
            reqwest::Client::builder()
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

/// Escapes a value for use inside a JSON string literal.
fn json_string_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string()
}

/// Renders the body template; the result must be JSON.
pub fn render_body(template: &str, vars: &ReplyVars) -> Result<String, String> {
    let mut hbs = Handlebars::new();
    hbs.set_strict_mode(true);
    hbs.register_escape_fn(json_string_escape);
    let data = json!({
        "text": vars.text,
        "thread_id": vars.thread_id,
        "buyer_id": vars.buyer_id,
        "order": vars.order,
    });
    let body = hbs
        .render_template(template, &data)
        .map_err(|e| format!("reply.body does not render: {e}"))?;
    serde_json::from_str::<Value>(&body)
        .map_err(|e| format!("reply.body does not render to JSON: {e}"))?;
    Ok(body)
}

/// Checks a body template at load time (with awkward sample values).
pub fn check_body_template(template: &str) -> Result<(), String> {
    render_body(
        template,
        &ReplyVars {
            text: "a \"quoted\"\nline \\ with </script>".into(),
            thread_id: "t-1".into(),
            buyer_id: "b-1".into(),
            order: String::new(),
        },
    )
    .map(|_| ())
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
