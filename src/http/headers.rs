//! Security headers. Every response: `X-Content-Type-Options: nosniff`. The staff inbox: a
//! Content-Security-Policy without inline script, `frame-ancestors 'none'` (and
//! `X-Frame-Options: DENY`) and `Referrer-Policy: no-referrer`. The web chat demo page: the
//! same script policy, inline styles allowed (a brand's page), framing as `[chat]
//! frame_ancestors` says (default: nobody) and `Referrer-Policy: strict-origin-when-cross-origin`.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;

pub const INBOX_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The chat demo page's policy, with its `frame-ancestors` sources (empty: `'none'`).
pub fn chat_csp(frame_ancestors: &[String]) -> String {
    let ancestors = if frame_ancestors.is_empty() {
        "'none'".to_string()
    } else {
        frame_ancestors.join(" ")
    };
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors {ancestors}"
    )
}

pub async fn security_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path == "/inbox" || path.starts_with("/inbox/") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(INBOX_CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    } else if path == "/chat" {
        let csp = chat_csp(&state.config.chat.frame_ancestors);
        if let Ok(v) = HeaderValue::from_str(&csp) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        if state.config.chat.frame_ancestors.is_empty() {
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        }
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("strict-origin-when-cross-origin"),
        );
    }
    resp
}
