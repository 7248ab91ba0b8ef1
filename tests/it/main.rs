//! Integration tests: one binary, one module per area. They run the real `acexport` binary
//! and the built-in ActiveCampaign sandbox over loopback.

mod deploy;
mod engine;
mod daemon;
