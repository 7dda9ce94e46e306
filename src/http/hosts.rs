//! Which `Host` a request may name, and the one base URL every absolute link the service prints
//! starts with (agent card, A2A and OpenAPI links, `@target-uri` of signed requests).
//!
//! With `[server] public_url` set, that URL is the base and the `Host` header is never used.
//! Without it the base comes from the request, so the request's `Host` must be one the operator
//! expects: `[server] allowed_hosts`, or by default the bind address, `localhost`, `127.0.0.1`
//! and `[::1]` on the port the listener actually bound. Any other `Host` gets 421 Misdirected
//! Request before a handler runs — a forged `Host` can never end up in a link or a signature
//! base. `/healthz` is exempt (load balancers probe it by IP address; it prints no URL).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::ServerConfig;

/// The service's base URL, without a trailing slash: `[server] public_url` when set, else the
/// scheme (the request's, or `X-Forwarded-Proto` when http/https, else http) and the authority
/// the request was sent to (its URI's, else its `Host`). Only requests that passed [`check`]
/// reach a handler, so without `public_url` the authority is an allowed host.
pub fn public_base(public_url: Option<&str>, uri: &Uri, headers: &HeaderMap) -> String {
    if let Some(u) = public_url {
        return u.trim_end_matches('/').to_string();
    }
    let scheme = uri
        .scheme_str()
        .map(str::to_ascii_lowercase)
        .or_else(|| {
            headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_ascii_lowercase())
                .filter(|v| v == "http" || v == "https")
        })
        .unwrap_or_else(|| "http".into());
    let authority = request_authority(uri, headers).unwrap_or_default();
    format!("{scheme}://{authority}")
}

/// The authority a request names: its URI's (HTTP/2, absolute-form), else its `Host` header;
/// lower-cased.
pub fn request_authority(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    uri.authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .map(|a| a.to_ascii_lowercase())
}

/// The hosts a request may name when `[server] public_url` is unset.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// (host, port): host lower-case (IPv6 in brackets); None = any port.
    entries: Vec<(String, Option<u16>)>,
}

fn parse_authority(s: &str) -> Option<(String, Option<u16>)> {
    let a: Authority = s.trim().parse().ok()?;
    if a.as_str().contains('@') {
        return None;
    }
    Some((a.host().to_ascii_lowercase(), a.port_u16()))
}

impl AllowedHosts {
    /// From `[server] allowed_hosts` (entries `host` — any port — or `host:port`), or the
    /// defaults on the bound port when the list is empty.
    pub fn new(server: &ServerConfig, bound: SocketAddr) -> AllowedHosts {
        let port = bound.port();
        let mut entries = Vec::new();
        if server.allowed_hosts.is_empty() {
            if let Some((host, _)) = parse_authority(&server.bind) {
                entries.push((host, Some(port)));
            }
            for host in ["localhost", "127.0.0.1", "[::1]"] {
                entries.push((host.to_string(), Some(port)));
            }
            let ip = match bound.ip() {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            };
            entries.push((ip, Some(port)));
        } else {
            for h in &server.allowed_hosts {
                match parse_authority(h) {
                    Some(e) => entries.push(e),
                    None => {
                        tracing::warn!(host = %h, "[server] allowed_hosts: not a host[:port]; ignored")
                    }
                }
            }
        }
        AllowedHosts { entries }
    }

    /// Whether a request naming this authority (`host[:port]`) is ours. A missing port is 80.
    pub fn allows(&self, authority: &str) -> bool {
        let Some((host, port)) = parse_authority(authority) else {
            return false;
        };
        let port = port.unwrap_or(80);
        self.entries
            .iter()
            .any(|(h, p)| *h == host && p.is_none_or(|p| p == port))
    }
}

/// The middleware: 421 for a `Host` that is not allowed (see the module docs).
pub async fn check(State(hosts): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let authority = request_authority(req.uri(), req.headers());
    match authority {
        Some(a) if hosts.allows(&a) => next.run(req).await,
        other => {
            metrics::counter!("concierge_misdirected_requests_total").increment(1);
            let named = match &other {
                Some(a) => format!("host {:?}", a.chars().take(100).collect::<String>()),
                None => "no host".to_string(),
            };
            (
                StatusCode::MISDIRECTED_REQUEST,
                axum::Json(serde_json::json!({"error": {
                    "code": "misdirected_request",
                    "message": format!(
                        "this server does not answer for {named}: the operator sets \
                         [server] public_url, or lists the host in [server] allowed_hosts"
                    ),
                }})),
            )
                .into_response()
        }
    }
}

/// Adds the host check to the public router, unless `[server] public_url` is set.
pub fn layer(router: axum::Router, server: &ServerConfig, bound: SocketAddr) -> axum::Router {
    if server.public_url.is_some() {
        return router;
    }
    let hosts = Arc::new(AllowedHosts::new(server, bound));
    router.layer(axum::middleware::from_fn_with_state(hosts, check))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(bind: &str, allowed: &[&str]) -> ServerConfig {
        ServerConfig {
            bind: bind.into(),
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn defaults_are_the_bound_port_on_local_names() {
        let bound: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let h = AllowedHosts::new(&server("127.0.0.1:0", &[]), bound);
        for ok in [
            "127.0.0.1:40123",
            "localhost:40123",
            "LOCALHOST:40123",
            "[::1]:40123",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:40123",
            "localhost:8080",
            "localhost",
            "user@localhost:40123",
            "",
            "127.0.0.1:40123/x",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
    }

    #[test]
    fn configured_hosts_with_and_without_port() {
        let bound: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let h = AllowedHosts::new(
            &server("0.0.0.0:8080", &["support.example.com", "10.0.0.5:8080"]),
            bound,
        );
        assert!(h.allows("support.example.com"));
        assert!(h.allows("Support.Example.com:443"));
        assert!(h.allows("10.0.0.5:8080"));
        assert!(!h.allows("10.0.0.5:9090"));
        assert!(
            !h.allows("localhost:8080"),
            "the list replaces the defaults"
        );
    }

    #[test]
    fn the_public_url_wins_over_the_request() {
        let uri: Uri = "/a2a".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "evil.example".parse().unwrap());
        assert_eq!(
            public_base(Some("https://support.example.com/"), &uri, &headers),
            "https://support.example.com"
        );
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(public_base(None, &uri, &headers), "https://evil.example");
    }
}
