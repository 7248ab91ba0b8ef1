//! Bulk imports: `import/bulk_import` checks a batch the way ActiveCampaign does and queues it,
//! the worker applies queued batches once their delay has passed, and `import/info` reports where
//! a batch stands (queued, active, completed with its successes and failures).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{ApiError, MAX_BODY_BYTES, Shared};
use crate::sandbox::lock;
use crate::sandbox::state::{BatchStatus, ImportContact};

/// "Contacts can be imported in batches of up to 250 items" (ActiveCampaign bulk import docs).
pub(super) const MAX_CONTACTS_PER_BULK_IMPORT: usize = 250;
/// Bulk payloads must be "< 400K bytes (399 999 bytes or less)" (ActiveCampaign bulk import
/// docs).
pub(super) const MAX_BULK_PAYLOAD_BYTES: usize = 400_000;
/// Characters ActiveCampaign rejects in an email (bulk import docs, "Why Bulk Imports Fail").
const FORBIDDEN_EMAIL_CHARS: &[char] =
    &['"', '(', ')', ',', ':', ';', '<', '>', '@', '[', '\\', ']'];

pub(super) const BULK_IMPORT_PATH: &str = "/api/3/import/bulk_import";

/// The bulk endpoints, behind the gate.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(BULK_IMPORT_PATH, post(bulk_import))
        .route("/api/3/import/info", get(import_info))
}

/// A bulk import waiting for the worker.
pub(crate) struct PendingImport {
    batch_id: String,
    ready_at: Instant,
    contacts: Vec<ImportContact>,
}

/// Applies queued bulk imports in arrival order once their delay has passed, until the server
/// closes.
pub(crate) async fn process_imports(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<PendingImport>,
) {
    let stop = shared.closing.clone();
    loop {
        let pending = tokio::select! {
            () = stop.cancelled() => return,
            pending = queue.recv() => match pending {
                Some(pending) => pending,
                None => return,
            },
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(pending.ready_at.into()) => {}
        }
        let contacts = pending.contacts.len();
        lock(&shared.state).apply_batch(&pending.batch_id, pending.contacts, &shared.known_lists);
        tracing::debug!(contacts, "Sandbox processed a bulk import");
    }
}

/// Number of contacts in a bulk import body, passed from the handler to the request log.
#[derive(Debug, Clone, Copy)]
pub(super) struct BulkContacts(pub(super) usize);

/// Number of contacts in the body of a bulk import answered by a fault (0 for other paths), so
/// the request log shows what the client tried to send.
pub(super) async fn bulk_contacts_in(path: &str, request: Request) -> usize {
    if path != BULK_IMPORT_PATH {
        return 0;
    }
    match axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await {
        Ok(body) => count_bulk_contacts(&body),
        Err(_) => 0,
    }
}

/// Number of entries in a bulk body's `contacts[]`, without keeping them; 0 if unreadable.
fn count_bulk_contacts(body: &[u8]) -> usize {
    #[derive(Deserialize)]
    struct Count {
        #[serde(default)]
        contacts: Vec<IgnoredAny>,
    }
    serde_json::from_slice::<Count>(body).map_or(0, |count| count.contacts.len())
}

/// Whether ActiveCampaign would accept `email`, by its documented rules: a non-empty part before
/// exactly one `@`, none of `" ( ) , : ; < > @ [ \ ]`, and a domain with a `.` followed by at
/// least two letters (bulk import docs, "Why Bulk Imports Fail").
fn email_is_valid(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    if local.is_empty() || local.contains(FORBIDDEN_EMAIL_CHARS) {
        return false;
    }
    if domain.contains(FORBIDDEN_EMAIL_CHARS) {
        return false;
    }
    let Some((_, top_level)) = domain.rsplit_once('.') else {
        return false;
    };
    top_level.len() >= 2 && top_level.chars().all(|c| c.is_ascii_alphabetic())
}

#[derive(Debug, Deserialize)]
struct BulkBody {
    contacts: Option<Vec<ImportContact>>,
}

async fn bulk_import(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let (count, result) = accept_bulk(&shared, &body);
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            if matches!(error, ApiError::BulkRateLimited { .. }) {
                lock(&shared.state).stats.bulk_rate_limited += 1;
            } else {
                lock(&shared.state).stats.bulk_rejected += 1;
            }
            error.into_response()
        }
    };
    response.extensions_mut().insert(BulkContacts(count));
    response
}

/// The checks ActiveCampaign makes, in its order (size, count, rate, emails), then queueing;
/// returns the number of contacts in the body (0 when it could not be read) and the answer.
fn accept_bulk(shared: &Shared, body: &[u8]) -> (usize, Result<Response, ApiError>) {
    if body.len() >= MAX_BULK_PAYLOAD_BYTES {
        let bytes = body.len();
        let count = count_bulk_contacts(body);
        return (count, Err(ApiError::BulkPayloadTooLarge { bytes }));
    }
    let contacts = match serde_json::from_slice::<BulkBody>(body) {
        Ok(BulkBody {
            contacts: Some(contacts),
        }) => contacts,
        Ok(BulkBody { contacts: None }) => {
            let reason = "'contacts' is a required field".to_owned();
            return (0, Err(ApiError::BulkMalformed { reason }));
        }
        Err(error) => {
            let reason = error.to_string();
            return (0, Err(ApiError::BulkMalformed { reason }));
        }
    };
    let count = contacts.len();
    if count == 0 || count > MAX_CONTACTS_PER_BULK_IMPORT {
        return (count, Err(ApiError::BulkContactCount { count }));
    }
    // The per-minute limit covers multi-contact imports only (single-contact ones have their
    // own, which the sandbox does not model).
    if count > 1
        && let Some(window) = &shared.bulk_limit
    {
        let mut window = lock(window);
        if window.try_hit(Instant::now()).is_err() {
            let per_minute = window.limit();
            return (count, Err(ApiError::BulkRateLimited { per_minute }));
        }
    }
    let failures: Vec<(usize, &'static str)> = contacts
        .iter()
        .enumerate()
        .filter_map(|(index, contact)| match contact.email.as_deref() {
            None => Some((index, "Field 'email' is required")),
            Some(email) if !email_is_valid(email) => {
                Some((index, "Field 'email' incorrect format"))
            }
            Some(_) => None,
        })
        .collect();
    if !failures.is_empty() {
        return (count, Err(ApiError::BulkInvalidContacts { failures }));
    }

    let batch_id = new_batch_id();
    let now = Instant::now();
    let ready_at = now + shared.import_delay;
    let completes_at = ready_at + shared.import_delay;
    let success_key = {
        let mut state = lock(&shared.state);
        state.queue_batch(batch_id.clone(), count, ready_at, completes_at);
        state.next_success_key()
    };
    let pending = PendingImport {
        batch_id: batch_id.clone(),
        ready_at,
        contacts,
    };
    // The worker only stops when the server does; an import sent then is moot.
    if shared.imports.send(pending).is_err() {
        tracing::debug!("Sandbox import worker has stopped; a bulk import will stay queued");
    }
    let mut body = Map::new();
    body.insert(success_key.to_owned(), json!(1));
    body.insert("queued_contacts".to_owned(), json!(count));
    body.insert("batchId".to_owned(), json!(batch_id));
    body.insert("message".to_owned(), json!("Contact import queued"));
    (count, Ok(axum::Json(Value::Object(body)).into_response()))
}

/// A random batch id in UUID form, like ActiveCampaign's.
fn new_batch_id() -> String {
    let bits: u128 = rand::random();
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[derive(Debug, Deserialize)]
struct InfoQuery {
    #[serde(rename = "batchId")]
    batch_id: Option<String>,
}

async fn import_info(State(shared): State<Arc<Shared>>, Query(q): Query<InfoQuery>) -> Response {
    let Some(batch_id) = q.batch_id.filter(|id| !id.is_empty()) else {
        return ApiError::MissingBatchId.into_response();
    };
    let body = {
        let state = lock(&shared.state);
        match state.batch_status(&batch_id, Instant::now()) {
            None => None,
            // "status may be false (a boolean)" right after the import (ActiveCampaign docs).
            Some(BatchStatus::Queued) => Some(json!({"status": false})),
            Some(BatchStatus::Active) => Some(json!({"status": "active"})),
            Some(BatchStatus::Completed(outcome)) => {
                let success: Vec<String> = outcome.success.iter().map(u64::to_string).collect();
                Some(json!({"status": "completed", "success": success, "failure": outcome.failure}))
            }
        }
    };
    match body {
        Some(body) => axum::Json(body).into_response(),
        None => ApiError::NotFound {
            kind: "Batch",
            id: batch_id,
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_an_ordinary_email() {
        assert!(email_is_valid("jane.doe+news@example.co.uk"));
    }

    #[test]
    fn rejects_an_email_without_a_local_part() {
        assert!(!email_is_valid("@example.com"));
    }

    #[test]
    fn rejects_an_email_with_two_at_signs() {
        assert!(!email_is_valid("a@b@example.com"));
    }

    #[test]
    fn rejects_an_email_with_a_forbidden_character() {
        assert!(!email_is_valid("jane,doe@example.com"));
    }

    #[test]
    fn rejects_a_domain_without_a_two_letter_ending() {
        assert!(!email_is_valid("jane@example.c"));
        assert!(!email_is_valid("jane@localhost"));
        assert!(!email_is_valid("jane@example.12"));
    }

    #[test]
    fn a_batch_id_looks_like_a_uuid() {
        let id = new_batch_id();
        let lengths: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(lengths, vec![8, 4, 4, 4, 12]);
    }
}
