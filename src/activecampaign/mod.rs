//! ActiveCampaign API v3: the account's endpoint, its rate budget, the retry classifier, wire
//! types and the client. Facts and sources: `../shared/reference/activecampaign-api.md`.

pub mod budget;
mod budget_file;
pub mod client;
mod endpoint;
pub mod host;
pub mod retry;
pub mod wire;

pub use client::{AcError, Client, ClientOptions};
pub use host::{BaseUrl, HostError};

/// Most contacts in one bulk import (ActiveCampaign bulk import docs).
pub const MAX_CONTACTS_PER_BULK_IMPORT: usize = 250;
/// A bulk import body must be smaller than this many bytes (ActiveCampaign bulk import docs:
/// "399,999 bytes or less").
pub const MAX_BULK_IMPORT_BYTES: usize = 400_000;
