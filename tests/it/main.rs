//! Integration tests: one binary, one module per area. They run the real `acexport` binary
//! and the built-in ActiveCampaign sandbox over loopback.

mod access;
mod alerts;
mod budget;
mod cleared;
mod cli_connection;
mod cli_export;
mod cli_segment;
mod cli_settings;
mod daemon;
mod deploy;
mod engine;
mod layout;
mod metrics;
mod outcomes;
mod resume;
mod security_http;
mod security_sandbox;
mod security_sources;
mod security_state;
mod security_triggers;
mod sources;
mod status;
mod store_faults;
mod support;
