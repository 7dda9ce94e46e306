//! Concierge's integration tests: one binary, a module per feature.

mod agent;
mod api;
mod browser;
mod cli;
mod email;
mod helpers;
mod llm;
mod smtp_sink;
mod store;
mod tools;
mod webchat;
