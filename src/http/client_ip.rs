//! The client's address, for every per-address limit: the connecting peer, or — only when the
//! peer is one of `[server] trusted_proxies` — the address the proxies recorded in
//! `X-Forwarded-For`. The list is read from the right (the entry the nearest proxy added) and
//! the first address that is not itself a trusted proxy is the client; a client cannot push an
//! address of its choice past a proxy that appends what it saw.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;

pub use crate::config::TrustedProxies;
use crate::state::AppState;
use crate::util::canonical_ip as canonical;

/// The client address of a request.
pub fn request_ip(state: &AppState, req: &Request) -> IpAddr {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    client_ip(peer, req.headers(), &state.limits.trusted)
}

/// Extracts the client address of a request (a handler argument).
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.limits.trusted,
        )))
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`).
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// The client's address. `peer` is the connecting address (None only for in-process callers
/// without a socket, which count as one unspecified client).
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> IpAddr {
    let Some(peer) = peer else {
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    let mut client = canonical(peer.ip());
    if !trusted.contains(client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // A garbled entry: the last address we could trust the chain to is the client.
            break;
        };
        client = canonical(ip);
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.9".into()]).unwrap();
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.4:5000".parse().unwrap();
        let h = headers("203.0.113.5, 10.9.9.9");
        assert_eq!(
            client_ip(Some(proxy), &h, &trusted).to_string(),
            "203.0.113.5"
        );
        assert_eq!(
            client_ip(Some(stranger), &h, &trusted).to_string(),
            "198.51.100.4"
        );
        // A client-supplied first entry is ignored when a proxy appended the real one.
        let h = headers("1.1.1.1, 203.0.113.5");
        assert_eq!(
            client_ip(Some(proxy), &h, &trusted).to_string(),
            "203.0.113.5"
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(Some(proxy), &HeaderMap::new(), &trusted).to_string(),
            "10.1.2.3"
        );
        // Garbage stops the walk at the last trusted hop.
        let h = headers("nonsense, 10.9.9.9");
        assert_eq!(client_ip(Some(proxy), &h, &trusted).to_string(), "10.9.9.9");
        assert!(crate::config::parse_proxy("not-an-ip").is_err());
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:1".parse().unwrap();
        assert_eq!(
            client_ip(Some(mapped), &headers("203.0.113.5"), &trusted).to_string(),
            "203.0.113.5"
        );
    }
}
