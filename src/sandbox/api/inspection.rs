//! The sandbox's own views, outside ActiveCampaign's API: `/_sandbox/stats` (the counters, with
//! the most requests that arrived in one second and bulk imports in one minute) and
//! `/_sandbox/contacts` (what arrived, optionally on one list), so a person trying
//! `acexport sandbox` can see what an export delivered. They need the API's `Api-Token` (the
//! router puts `auth::require_token` in front): the contacts are whatever profiles were sent.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use crate::sandbox::lock;
use crate::sandbox::state::SandboxContact;

/// The views, outside the gate: the token is checked in front of them (see the router), but no
/// limit applies and they are not in the request log.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sandbox/stats", get(view_stats))
        .route("/_sandbox/contacts", get(view_contacts))
}

async fn view_stats(State(shared): State<Arc<Shared>>) -> Response {
    let stats = lock(&shared.state).stats();
    axum::Json(stats).into_response()
}

#[derive(Debug, Deserialize)]
struct ViewContactsQuery {
    list: Option<u64>,
}

async fn view_contacts(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ViewContactsQuery>,
) -> Response {
    let found = lock(&shared.state).contacts_on_list(q.list);
    let contacts: Vec<Value> = found
        .iter()
        .map(|(contact, status)| {
            let mut value = contact_json(contact);
            value["fields"] = json!(contact.fields);
            value["tags"] = json!(contact.tags);
            if let Some(status) = status {
                value["status"] = json!(status);
            }
            value
        })
        .collect();
    axum::Json(json!({"total": contacts.len(), "contacts": contacts})).into_response()
}

/// A contact as v3 resources show it: camelCase, ids as strings, empty strings for blanks.
fn contact_json(contact: &SandboxContact) -> Value {
    json!({
        "id": contact.id.to_string(),
        "email": contact.email,
        "firstName": contact.first_name.as_deref().unwrap_or(""),
        "lastName": contact.last_name.as_deref().unwrap_or(""),
        "phone": contact.phone.as_deref().unwrap_or(""),
        "deleted": "0",
        "orgid": "0",
    })
}
