//! The email channel: inbound MIME (an inbound-mail webhook or a mail pipe) into the inbox with
//! robust threading, and replies out over SMTP through the outbox.

pub mod auth;
pub mod inbound;
pub mod outbound;
pub mod parse;
pub mod quote;
pub mod routes;
pub mod thread;

pub use outbound::send;
