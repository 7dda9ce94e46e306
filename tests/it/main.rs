//! Concierge's integration tests: one binary, a module per feature.

mod api;
mod cli;
mod helpers;
mod store;
