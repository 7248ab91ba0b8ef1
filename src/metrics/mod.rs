//! Prometheus metrics of this process ([`Metrics`], `registry.rs`) and the daemon's small HTTP
//! server for `/metrics` and `/healthz` (`server.rs`).
//!
//! A leaf module: it depends on nothing else in the crate, so the engine records into it (the
//! ActiveCampaign client counts its requests, permits and 429s where they happen) without
//! depending on anything above it, and the service layer records run outcomes. There is one
//! registry per process ([`global`]), as Prometheus clients usually keep: recording is an
//! atomic add, and every client and run of the process reaches it without being handed it.
//! Only the daemon serves it; in other processes (`export run` in a terminal) nothing reads it.

mod registry;
mod server;

pub use registry::{Metrics, OTHER_EXPORTS, RunFinished, global};
pub use server::{Health, Limits, Liveness, bind, serve};
