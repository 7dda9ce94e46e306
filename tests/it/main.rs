//! Concierge's integration tests: one binary, a module per feature.

mod agent;
mod api;
mod cli;
mod helpers;
mod llm;
mod store;
mod tools;
mod webchat;
