//! Signing in and staying signed in: Argon2id password hashes, a random session token in an
//! HttpOnly SameSite=Lax cookie (stored server-side only as its SHA-256, expiring after
//! [`SESSION_IDLE_MS`] without use), a per-session CSRF token checked on every POST, and sign-in
//! limits: attempts per email and per client address counted in the database (reserved before
//! the password is checked, in one statement), and at most `[limits] password_checks` Argon2
//! checks at once.

use std::net::SocketAddr;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{ConnectInfo, Form, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::{WebError, WebState};
use crate::limits::Refusal;
use crate::store::{LoginReservation, StaffSession};
use crate::util::{constant_time_eq, now_ms, random_token, sha256_hex};

pub const SESSION_COOKIE: &str = "concierge_staff";
const LOGIN_CSRF_COOKIE: &str = "concierge_login_csrf";
/// A session ends after this long without a request.
pub const SESSION_IDLE_MS: i64 = 12 * 3600 * 1000;
pub const MIN_PASSWORD_CHARS: usize = 10;

/// Hashes a password with Argon2id (default parameters, random salt) to a PHC string.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Why a password is not acceptable, if it is not.
pub fn validate_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password must be at least {MIN_PASSWORD_CHARS} characters long"
        ));
    }
    if password.chars().count() > 1024 {
        return Err("the password must be at most 1024 characters long".into());
    }
    Ok(())
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether cookies must be marked Secure: the request came over TLS (as a proxy says) or the
/// service's public URL is https.
fn secure(web: &WebState, headers: &HeaderMap) -> bool {
    let proxied_tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let public_tls = web
        .app
        .config
        .server
        .public_url
        .as_deref()
        .is_some_and(|u| u.trim().to_ascii_lowercase().starts_with("https://"));
    proxied_tls || public_tls
}

fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let mut c =
        format!("{name}={value}; Path=/inbox; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}");
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The client's address, for the sign-in limits (`X-Forwarded-For` only from a trusted proxy).
fn client_ip(web: &WebState, parts: &Parts) -> String {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    crate::http::client_ip::client_ip(peer, &parts.headers, &web.app.limits.trusted).to_string()
}

/// A signed-in staff member. As an extractor it sends whoever is not signed in to the sign-in
/// page (and back here afterwards).
pub struct StaffAuth {
    pub session: StaffSession,
}

impl StaffAuth {
    pub fn staff_id(&self) -> &str {
        &self.session.staff.id
    }

    /// What the layout shows about the signed-in person.
    pub fn me(&self) -> serde_json::Value {
        json!({
            "id": self.session.staff.id,
            "email": self.session.staff.email,
            "display": self.session.staff.display(),
            "admin": self.session.staff.is_admin(),
            "csrf": self.session.csrf_token,
        })
    }

    /// The one-time notice, consumed: shown on this page and no other.
    pub async fn take_flash(&self, web: &WebState) -> Result<Option<String>, WebError> {
        if self.session.flash.is_some() {
            web.app
                .store
                .set_session_flash(&self.session.token_hash, None)
                .await?;
        }
        Ok(self.session.flash.clone())
    }

    /// Leaves a notice for the next page.
    pub async fn flash(&self, web: &WebState, text: &str) -> Result<(), WebError> {
        web.app
            .store
            .set_session_flash(&self.session.token_hash, Some(text))
            .await?;
        Ok(())
    }
}

impl FromRequestParts<WebState> for StaffAuth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &WebState) -> Result<Self, Response> {
        let to_login = |parts: &Parts| {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/inbox".into());
            let next =
                if parts.method == axum::http::Method::GET && !next.starts_with("/inbox/events") {
                    next
                } else {
                    "/inbox".into()
                };
            Redirect::to(&format!("/inbox/login?next={}", urlencode(&next))).into_response()
        };
        let Some(token) = cookie_value(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login(parts));
        };
        let hash = sha256_hex(token.as_bytes());
        let session = web
            .app
            .store
            .staff_session(&hash)
            .await
            .map_err(|e| WebError::from(e).into_response())?;
        let Some(session) = session else {
            return Err(to_login(parts));
        };
        // Slide the expiry, at most once a minute per session.
        let now = now_ms();
        if now - session.last_seen_at > 60_000 {
            web.app
                .store
                .touch_staff_session(&hash, now + SESSION_IDLE_MS)
                .await
                .map_err(|e| WebError::from(e).into_response())?;
        }
        Ok(StaffAuth { session })
    }
}

/// A state-changing request: a signed-in staff member, and a form whose `_csrf` field (or
/// `X-CSRF-Token` header) matches the session's token. Anything else is refused with 403.
pub struct Post {
    pub auth: StaffAuth,
    pub fields: Fields,
}

/// A form's fields, in order (a field may repeat, like checked boxes).
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first value of a field, trimmed; None when absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The first value as given (not trimmed), "" when absent.
    pub fn raw(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// Every non-blank value of a field.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// A required field, or a 400 naming it.
    pub fn required(&self, name: &str, what: &str) -> Result<&str, WebError> {
        self.get(name).ok_or_else(|| {
            WebError::BadRequest(format!("{what} is missing: fill it in and send again."))
        })
    }
}

fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::response::Html(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Refused</title>\
             <link rel=\"stylesheet\" href=\"/inbox/assets/inbox.css\"></head><body class=\"error-page\"><main>\
             <h1>Refused: the form's security token is missing or wrong</h1>\
             <p role=\"alert\">The page may be out of date, or the request came from another site. \
             Go back, reload the page and try again.</p><p><a href=\"/inbox\">Back to the inbox</a></p></main></body></html>",
        ),
    )
        .into_response()
}

impl FromRequest<WebState> for Post {
    type Rejection = Response;

    async fn from_request(req: Request, web: &WebState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let auth = StaffAuth::from_request_parts(&mut parts, web).await?;
        let header_token = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let req = Request::from_parts(parts, body);
        let Form(pairs) = Form::<Vec<(String, String)>>::from_request(req, web)
            .await
            .map_err(|e| {
                WebError::BadRequest(format!("the form could not be read: {e}")).into_response()
            })?;
        let fields = Fields(pairs);
        let given = header_token.or_else(|| fields.get("_csrf").map(str::to_string));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), auth.session.csrf_token.as_bytes()) => {
                Ok(Post { auth, fields })
            }
            _ => Err(csrf_refused()),
        }
    }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Only a path inside the inbox may be returned to after signing in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/inbox") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/inbox".into(),
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn login_form(
    web: &WebState,
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    email: &str,
    error: Option<&str>,
) -> Response {
    // Double-submit token: the form and a cookie carry the same random value.
    let token = random_token(24);
    let html = web.render(
        "login",
        &json!({"title": "Sign in", "me": null, "flash": null, "nav": "login",
                "csrf": token, "next": next, "email": email, "error": error}),
    );
    match html {
        Ok(html) => {
            let mut resp = (status, axum::response::Html(html)).into_response();
            resp.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(LOGIN_CSRF_COOKIE, &token, 3600, secure(web, headers)),
            );
            resp
        }
        Err(e) => e.into_response(),
    }
}

pub async fn login_page(
    State(web): State<WebState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    login_form(
        &web,
        &headers,
        StatusCode::OK,
        &safe_next(q.next.as_deref()),
        "",
        None,
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
    #[serde(default, rename = "_csrf")]
    csrf: String,
}

pub async fn login(State(web): State<WebState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers.clone();
    let ip = client_ip(&web, &parts);
    let Ok(Form(form)) =
        Form::<LoginForm>::from_request(Request::from_parts(parts, body), &web).await
    else {
        return WebError::BadRequest("the sign-in form could not be read".into()).into_response();
    };
    let next = safe_next(form.next.as_deref());
    let cookie = cookie_value(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if form.csrf.is_empty() || !constant_time_eq(form.csrf.as_bytes(), cookie.as_bytes()) {
        return csrf_refused();
    }
    let email = form.email.trim().to_lowercase();
    if email.is_empty() || form.password.is_empty() {
        return login_form(
            &web,
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            &next,
            &email,
            Some("Enter your email and password."),
        );
    }
    let store = &web.app.store;
    let limits = &web.app.limits;
    // Reserve the attempt first (one statement checks and counts), then check the password.
    let now = now_ms();
    let reservation = store
        .reserve_login_attempt(
            &email,
            &ip,
            now,
            limits.login_window_ms,
            limits.login_per_email,
            limits.login_per_ip,
        )
        .await;
    match reservation {
        Ok(LoginReservation::Granted) => {}
        Ok(LoginReservation::Refused { scope, until }) => {
            let (limit, detail) = if scope == "email" {
                (
                    "login_email",
                    format!("{} sign-in attempts for one email", limits.login_per_email),
                )
            } else {
                (
                    "login_ip",
                    format!("{} failed sign-ins from one address", limits.login_per_ip),
                )
            };
            let wait = std::time::Duration::from_millis((until - now).max(1000) as u64);
            let refusal = Refusal::new(limit, wait, detail);
            return refused(&web, &headers, &next, &email, &refusal);
        }
        Err(e) => return WebError::from(e).into_response(),
    }
    let permit = match limits.password_check().await {
        Ok(p) => p,
        Err(refusal) => {
            // Not checked: the attempt does not count.
            if let Err(e) = store.release_login_attempt(&email, &ip).await {
                return WebError::from(e).into_response();
            }
            return refused(&web, &headers, &next, &email, &refusal);
        }
    };
    let found = match store.staff_login(&email).await {
        Ok(f) => f,
        Err(e) => return WebError::from(e).into_response(),
    };
    // Unknown emails cost the same hashing time as known ones.
    let (staff, phc) = match found {
        Some((s, h)) if s.active => (Some(s), h),
        _ => (None, DUMMY_HASH.to_string()),
    };
    let password = form.password.clone();
    let ok = tokio::task::spawn_blocking(move || {
        let ok = verify_password(&password, &phc);
        drop(permit);
        ok
    })
    .await
    .unwrap_or(false);
    let Some(staff) = staff.filter(|_| ok) else {
        // The reserved attempt stays counted as a failure.
        return login_form(
            &web,
            &headers,
            StatusCode::UNAUTHORIZED,
            &next,
            &email,
            Some("That email and password do not match an active staff account."),
        );
    };
    let token = random_token(32);
    let csrf = random_token(24);
    let created = async {
        store.login_succeeded(&email, &ip, now_ms()).await?;
        store
            .create_staff_session(
                &sha256_hex(token.as_bytes()),
                &staff.id,
                &csrf,
                now_ms() + SESSION_IDLE_MS,
            )
            .await
    };
    if let Err(e) = created.await {
        return WebError::from(e).into_response();
    }
    tracing::info!(staff = %staff.id, "staff member signed in");
    let secure = secure(&web, &headers);
    let mut resp = Redirect::to(&next).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, SESSION_IDLE_MS / 1000, secure),
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_CSRF_COOKIE, "", 0, secure),
    );
    resp
}

/// The sign-in page again, 429 with `Retry-After`, saying which limit and for how long.
fn refused(
    web: &WebState,
    headers: &HeaderMap,
    next: &str,
    email: &str,
    refusal: &Refusal,
) -> Response {
    let text = if refusal.limit.starts_with("login_") {
        let minutes = refusal.retry_after_secs().div_ceil(60);
        format!(
            "Too many failed sign-ins (the limit is {}). Try again in {minutes} minute{}.",
            refusal.detail,
            if minutes == 1 { "" } else { "s" }
        )
    } else {
        refusal.message()
    };
    let mut resp = login_form(
        web,
        headers,
        StatusCode::TOO_MANY_REQUESTS,
        next,
        email,
        Some(&text),
    );
    if let Ok(v) = HeaderValue::from_str(&refusal.retry_after_secs().to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

pub async fn logout(State(web): State<WebState>, headers: HeaderMap, post: Post) -> Response {
    if let Err(e) = web
        .app
        .store
        .delete_staff_session(&post.auth.session.token_hash)
        .await
    {
        return WebError::from(e).into_response();
    }
    let mut resp = Redirect::to("/inbox/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, secure(&web, &headers)),
    );
    resp
}

/// A valid Argon2id hash of a random password nobody knows: verifying against it takes as long
/// as a real check.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password(&random_token(24)).unwrap_or_default());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse battery!", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough pw").is_ok());
    }

    #[test]
    fn only_inbox_paths_are_returned_to() {
        assert_eq!(safe_next(Some("/inbox/c/1")), "/inbox/c/1");
        assert_eq!(safe_next(Some("https://evil.example")), "/inbox");
        assert_eq!(safe_next(Some("//evil.example")), "/inbox");
        assert_eq!(safe_next(None), "/inbox");
        assert_eq!(urlencode("/inbox?a=b c"), "/inbox%3Fa%3Db%20c");
    }
}
