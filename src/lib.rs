//! acexport: exports customer segments into ActiveCampaign lists, on a refresh schedule and on
//! demand. The binary (`src/main.rs`) is a thin shell over this library so that tests drive the
//! same code paths as production.
//!
//! Data flows one way: `cli` and `daemon` → `service` (every user operation, typed) →
//! `pipeline` (the engine: matching → plan → deliver → record) → `store`, `activecampaign`,
//! `source`. The engine never imports the service, and the CLI never touches the store.
//! `metrics` sits below them all: anyone records into it, it depends on nothing of the crate.

pub mod activecampaign;
pub mod alerts;
pub mod cli;
pub mod daemon;
pub mod escape;
pub mod identity;
pub mod metrics;
pub mod pipeline;
pub mod redact;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod scheduler;
pub mod secrets;
pub mod service;
pub mod settings;
pub mod source;
pub mod store;
pub mod telemetry;
