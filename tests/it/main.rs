//! Concierge's integration tests: one binary, a module per feature.

#[macro_use]
mod helpers;

mod a2a_tck;
mod a2a_trust;
mod agent;
mod api;
mod architecture;
mod browser;
mod cli;
mod cluster;
mod drill;
mod email;
mod fake_stripe;
mod fuzz;
mod gateway;
mod gateway_trust;
mod group_commit;
mod inbox;
mod limits;
mod llm;
mod marketplace;
mod negotiate;
mod read_models;
mod risk;
mod settle;
mod shopify;
mod smtp_sink;
mod store;
mod telegram;
mod tools;
mod verification;
mod webchat;
