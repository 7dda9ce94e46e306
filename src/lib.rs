//! Concierge: a self-hosted customer-support agent service for e-commerce brands.
//!
//! The library holds everything; `main.rs` only parses the command line and calls [`cli::run`].

pub mod agent;
pub mod app;
pub mod bench;
pub mod channels;
pub mod cli;
pub mod commerce;
pub mod config;
pub mod demo;
pub mod drill;
pub mod error;
pub mod events;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod http_client;
pub mod import;
pub mod inbox;
pub mod limits;
pub mod negotiate;
pub mod risk;
pub mod search;
pub mod settle;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod util;
pub mod verification;
pub mod web;
pub mod worker;
