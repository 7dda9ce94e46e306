//! Web chat: an embeddable widget (`GET /chat/widget.js`, one `<script>` tag on the brand's
//! site), a demo page (`GET /chat`) and the WebSocket `/chat/ws` it talks to.
//!
//! Frames are JSON. Client → server: `hello {token?}`, `message {text, client_id}`, `typing`.
//! Server → client: `welcome {token, history}`, `message {id, author, text, ts}`,
//! `ack {client_id, id}` (sent once the message is stored with its turn), `typing`,
//! `error {message}` (the socket stays usable). The turn runs at once in a task of its own, but
//! it is the durable job every channel's turn is: a service killed between the ack and the
//! answer answers the message after it restarts (once its lease runs out), once. The token is signed (HMAC-SHA256, key kept in the store) and brings a
//! visitor back to their conversation; on reconnect the history delivers what they missed.
//!
//! Limits: a browser page may open the socket only from an allowed origin (`[chat]
//! allowed_origins`; empty: this service's own origin), at most `sockets_per_ip` sockets per
//! client address, `messages_per_minute` messages per socket and `messages_per_minute_per_ip`
//! per address, `typing_per_minute` typing frames per socket; `welcome` carries at most the
//! latest `history_limit` messages. A refused frame is answered `error {code: "rate_limited",
//! limit, retry_after_secs, message}` and the socket stays open.

use axum::Router;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::events::InboxEvent;
use crate::inbox::{Answer, Intake, Trust};
use crate::limits::ChatSocket;
use crate::state::AppState;
use crate::store::{AuthorKind, Direction, InboundMessage, Message, Store};

const WIDGET_JS: &str = include_str!("assets/widget.js");
const DEMO_HTML: &str = include_str!("assets/demo.html");
/// Longest chat message accepted, in characters.
const MAX_TEXT: usize = 4000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/chat", get(demo_page))
        .route("/chat/widget.js", get(widget))
        .route("/chat/ws", get(upgrade))
}

/// The demo shop page, its products and example questions taken from the store (so every
/// example works against the store it is served from).
async fn demo_page(State(state): State<AppState>) -> Html<String> {
    let (products, order) = match state.store.showcase(4).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "the demo page could not read the store");
            (Vec::new(), None)
        }
    };
    let esc = handlebars::html_escape;
    let mut html = DEMO_HTML.to_string();
    for i in 0..4 {
        let card = products
            .get(i)
            .map(|p| {
                let price = p
                    .variants
                    .iter()
                    .find(|v| v.available)
                    .or(p.variants.first())
                    .map(|v| crate::commerce::format_money(v.price, &v.currency))
                    .unwrap_or_default();
                format!(
                    "<span class=\"tag\">{}</span><h3>{}</h3><div class=\"price\">{}</div>",
                    esc(p.product_type.as_deref().unwrap_or("New")),
                    esc(&p.name),
                    esc(&price)
                )
            })
            .unwrap_or_default();
        html = html.replace(&format!("%%CARD{i}%%"), &card);
    }
    let product = products
        .iter()
        .find(|p| p.variants.len() > 1)
        .or(products.first())
        .map(|p| p.name.to_lowercase())
        .unwrap_or_else(|| "order".into());
    let html = html
        .replace("%%ORDER%%", &esc(order.as_deref().unwrap_or("number")))
        .replace("%%PRODUCT%%", &esc(&product));
    Html(html)
}

async fn widget() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        WIDGET_JS,
    )
        .into_response()
}

async fn upgrade(State(state): State<AppState>, req: Request) -> Response {
    if let Err(origin) = origin_allowed(&state, req.headers()) {
        crate::telemetry::count_limit_refusal("chat_origin");
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"error": {"code": "origin_not_allowed", "message": format!(
                "pages from {origin} may not open this chat; the brand lists allowed origins in [chat] allowed_origins"
            )}})),
        )
            .into_response();
    }
    let ip = crate::http::client_ip::request_ip(&state, &req);
    let (mut parts, _body) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let limiter = match state.limits.open_chat_socket(ip) {
        Ok(s) => s,
        Err(refusal) => return refusal.json_response(),
    };
    // Chat frames are small: modest buffers keep an idle socket cheap (the defaults are 128 KiB
    // each way), and frames are written out at once.
    ws.max_message_size(64 * 1024)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| session(state, socket, limiter, ip))
}

/// Whether the page opening the socket may: no `Origin` (not a browser page), an origin in
/// `[chat] allowed_origins`, or — when that list is empty — this service's own origin (its
/// `public_url`, else the host the request was sent to). Err carries the refused origin.
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim().trim_end_matches('/');
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b.trim().trim_end_matches('/'));
    let allowed = &state.config.chat.allowed_origins;
    let ok = if !allowed.is_empty() {
        allowed.iter().any(|a| same(origin, a))
    } else if let Some(public) = &state.config.server.public_url {
        let public = public.trim();
        let base = match public.find("://") {
            Some(i) => match public[i + 3..].find('/') {
                Some(j) => &public[..i + 3 + j],
                None => public,
            },
            None => public,
        };
        same(origin, base)
    } else {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        !host.is_empty() && origin_host.eq_ignore_ascii_case(host.trim())
    };
    if ok { Ok(()) } else { Err(origin.to_string()) }
}

/// The error frame of a refused frame.
fn refused_frame(r: &crate::limits::Refusal) -> Value {
    let mut f = r.fields();
    if let Some(o) = f.as_object_mut() {
        o.insert("type".into(), json!("error"));
    }
    f
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ClientFrame {
    Hello {
        #[serde(default)]
        token: Option<String>,
    },
    Message {
        text: String,
        client_id: String,
    },
    Typing,
}

/// The visitor a signed token names.
struct Visitor {
    id: String,
    thread_key: String,
}

async fn session(state: AppState, socket: WebSocket, limiter: ChatSocket, ip: std::net::IpAddr) {
    crate::telemetry::chat_sockets(1);
    let (mut sink, mut stream) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<String>(64);
    let writer = tokio::spawn(async move {
        while let Some(text) = out_rx.recv().await {
            if sink.send(WsMessage::Text(text.into())).await.is_err() {
                break;
            }
        }
    });
    let mut events = state.hub.subscribe();
    let mut visitor: Option<Visitor> = None;
    let mut conversation: Option<String> = None;
    // Only the first of a run of refused typing frames is answered.
    let mut typing_refused = false;
    let history_limit = i64::from(state.config.chat.history_limit.max(1));
    loop {
        tokio::select! {
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(WsMessage::Text(t))) => t.to_string(),
                    Some(Ok(WsMessage::Binary(_))) => {
                        send(&out, json!({"type": "error", "message": "frames must be JSON text"})).await;
                        continue;
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<ClientFrame>(&text) {
                    Err(e) => send(&out, json!({"type": "error", "message": format!("bad frame: {e}")})).await,
                    Ok(ClientFrame::Hello { token }) => {
                        if let Err(r) = limiter.message() {
                            send(&out, refused_frame(&r)).await;
                            continue;
                        }
                        match hello(&state, token.as_deref(), history_limit).await {
                            Ok((v, conv, welcome)) => {
                                visitor = Some(v);
                                conversation = conv;
                                send(&out, welcome).await;
                            }
                            Err(e) => {
                                let id = crate::error::log_internal("web chat hello failed", &format!("{e:#}"));
                                send(&out, json!({"type": "error", "message": crate::error::internal_message(&id)})).await;
                            }
                        }
                    }
                    Ok(ClientFrame::Typing) => {
                        match limiter.typing() {
                            Ok(()) => {
                                typing_refused = false;
                                if let Some(c) = &conversation {
                                    state.hub.publish(InboxEvent::Typing { conversation_id: c.clone(), author: "customer".into() });
                                }
                            }
                            Err(r) => {
                                if !typing_refused {
                                    send(&out, refused_frame(&r)).await;
                                }
                                typing_refused = true;
                            }
                        }
                    }
                    Ok(ClientFrame::Message { text, client_id }) => {
                        if let Err(r) = limiter.message() {
                            let mut f = refused_frame(&r);
                            if let Some(o) = f.as_object_mut() {
                                o.insert("client_id".into(), json!(client_id));
                            }
                            send(&out, f).await;
                            continue;
                        }
                        let Some(v) = &visitor else {
                            send(&out, json!({"type": "error", "message": "send a hello frame first"})).await;
                            continue;
                        };
                        match message(&state, v, &text, &client_id, ip).await {
                            Ok((conv, id)) => {
                                conversation = Some(conv);
                                // The ack says the message is stored (with its turn).
                                send(&out, json!({"type": "ack", "client_id": client_id, "id": id})).await;
                            }
                            Err(e) => send(&out, json!({"type": "error", "message": e, "client_id": client_id})).await,
                        }
                    }
                }
            }
            event = events.recv() => {
                match event {
                    Ok(InboxEvent::Message { conversation_id, message })
                        if Some(&conversation_id) == conversation.as_ref()
                            && message.direction != Direction::Internal =>
                    {
                        send(&out, frame_of(&message)).await;
                    }
                    Ok(InboxEvent::Typing { conversation_id, author }) if Some(&conversation_id) == conversation.as_ref() && author != "customer" => {
                        send(&out, json!({"type": "typing"})).await;
                    }
                    Ok(InboxEvent::Status { conversation_id, status })
                        if Some(&conversation_id) == conversation.as_ref()
                            && status == crate::inbox::turn::WITH_STAFF =>
                    {
                        send(&out, handoff_frame(&state)).await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed events: send the history again; the widget de-duplicates by id.
                        if let Some(c) = &conversation
                            && let Ok(msgs) = state.store.recent_messages(c, history_limit).await
                        {
                            for m in &msgs {
                                send(&out, frame_of(m)).await;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    _ => {}
                }
            }
        }
    }
    drop(out);
    let _ = writer.await;
    drop(limiter);
    crate::telemetry::chat_sockets(-1);
}

async fn send(out: &mpsc::Sender<String>, frame: Value) {
    let _ = out.send(frame.to_string()).await;
}

fn frame_of(m: &Message) -> Value {
    let author = match m.author_kind {
        AuthorKind::Customer | AuthorKind::ConsumerAgent => "customer",
        AuthorKind::BrandAgent => "brand_agent",
        AuthorKind::Staff => "staff",
    };
    json!({"type": "message", "id": m.id, "author": author, "text": m.text, "ts": m.created_at})
}

fn external_id(v: &Visitor, client_id: &str) -> String {
    format!("{}:{}", v.id, client_id)
}

async fn hello(
    state: &AppState,
    token: Option<&str>,
    history_limit: i64,
) -> anyhow::Result<(Visitor, Option<String>, Value)> {
    let key = signing_key(&state.store).await?;
    let visitor_id = token
        .and_then(|t| verify_token(&key, t))
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let token = sign_token(&key, &visitor_id);
    let thread_key = format!("webchat:{visitor_id}");
    let conversation = state
        .store
        .conversation_by_thread("webchat", &thread_key)
        .await?;
    let history: Vec<Value> = match &conversation {
        Some(c) => state
            .store
            .recent_messages(&c.id, history_limit)
            .await?
            .iter()
            .map(frame_of)
            .collect(),
        None => Vec::new(),
    };
    Ok((
        Visitor {
            id: visitor_id,
            thread_key,
        },
        conversation.map(|c| c.id),
        json!({"type": "welcome", "token": token, "history": history}),
    ))
}

/// Stores a visitor's message with its turn and starts the turn at once; returns the
/// conversation's and the message's ids.
async fn message(
    state: &AppState,
    v: &Visitor,
    text: &str,
    client_id: &str,
    ip: std::net::IpAddr,
) -> Result<(String, String), String> {
    let text = check_message(text, client_id)?;
    let msg = InboundMessage {
        channel: "webchat".into(),
        thread_key: v.thread_key.clone(),
        external_id: Some(external_id(v, client_id)),
        sender_id: v.id.clone(),
        sender_name: None,
        sender_email: None,
        sender_verified: false,
        author_kind: AuthorKind::Customer,
        subject: None,
        text: text.to_string(),
        html: None,
        attachments: json!([]),
        meta: json!({}),
    };
    let intake = Intake {
        message: msg,
        trust: Trust::own_surface().with_requester(Some(format!("ip:{ip}"))),
        answer: Answer::Agent,
    };
    let outcome = crate::inbox::receive(state, intake).await.map_err(|e| {
        crate::error::internal_message(&crate::error::log_internal(
            "web chat message could not be stored",
            &e,
        ))
    })?;
    let ids = (outcome.conversation_id.clone(), outcome.message_id.clone());
    if !outcome.duplicate {
        // The answer reaches the socket as a live event; the turn is durable, so a crash from
        // here on leaves it to the job worker.
        let state = state.clone();
        tokio::spawn(async move {
            match crate::inbox::turn::answer_now(&state, &outcome).await {
                // Another worker holds the turn: its answer is published like this one's.
                Ok(_) | Err(crate::inbox::TurnError::TimedOut) => {}
                Err(e) => tracing::warn!(error = %e, conversation = %outcome.conversation_id,
                    "a web chat turn failed; the job worker retries it"),
            }
        });
    }
    Ok(ids)
}

/// Tells the visitor their message waits for a person (a person has the conversation), with
/// the brand's support hours.
fn handoff_frame(state: &AppState) -> Value {
    let hours = &state.agent.resolver().voice.support_hours;
    let mut text =
        String::from("A person from our team has this conversation and will answer here.");
    if !hours.trim().is_empty() {
        text.push_str(&format!(
            " Support hours: {}.",
            hours.trim().trim_end_matches('.')
        ));
    }
    json!({"type": "handoff", "text": text})
}

/// A visitor's message text, trimmed, if it and its `client_id` are acceptable; else why not.
pub(crate) fn check_message<'a>(text: &'a str, client_id: &str) -> Result<&'a str, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the message is empty".into());
    }
    if text.chars().count() > MAX_TEXT {
        return Err(format!("the message is longer than {MAX_TEXT} characters"));
    }
    if client_id.trim().is_empty() || client_id.len() > 100 {
        return Err("client_id must be 1 to 100 characters".into());
    }
    Ok(text)
}

type HmacSha256 = Hmac<Sha256>;

async fn signing_key(store: &Store) -> anyhow::Result<Vec<u8>> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    if let Some(k) = store.get_setting("webchat_key").await? {
        return Ok(b64.decode(k)?);
    }
    let key = crate::util::random_token(32);
    store.set_setting("webchat_key", &key).await?;
    // Two first visitors at once: whichever key was stored last wins for both.
    let stored = store.get_setting("webchat_key").await?.unwrap_or(key);
    Ok(b64.decode(stored)?)
}

pub(crate) fn sign_token(key: &[u8], visitor: &str) -> String {
    let sig = match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(visitor.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    };
    format!(
        "v1.{visitor}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    )
}

/// The visitor id a token carries, if its signature holds.
pub(crate) fn verify_token(key: &[u8], token: &str) -> Option<String> {
    let rest = token.strip_prefix("v1.")?;
    let (visitor, sig) = rest.rsplit_once('.')?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .ok()?;
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(visitor.as_bytes());
    mac.verify_slice(&sig).ok()?;
    (!visitor.is_empty() && visitor.len() <= 64).then(|| visitor.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_and_visitor() {
        let t = sign_token(b"k1", "visitor-1");
        assert_eq!(verify_token(b"k1", &t).as_deref(), Some("visitor-1"));
        assert_eq!(verify_token(b"k2", &t), None);
        let forged = t.replace("visitor-1", "visitor-2");
        assert_eq!(verify_token(b"k1", &forged), None);
        assert_eq!(verify_token(b"k1", "garbage"), None);
    }
}
