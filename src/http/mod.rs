//! The HTTP plumbing every face shares: the API channel's handlers ([`api`]), the client's
//! address behind trusted proxies ([`client_ip`]), security headers, `Host` checks and the
//! limits' middleware. The router that mounts every face is assembled by [`crate::app`]. Every
//! error leaves as an [`ApiError`](crate::error::ApiError) — never a panic, never a 500 for bad
//! input.

pub mod api;
pub mod client_ip;
pub mod headers;
pub mod hosts;
pub mod limits;
