//! Contacts one at a time, as acexport reads and changes them around bulk imports: `contacts`
//! (look a contact up by `email`), `contacts/{id}/contactLists` (its status on each list) and
//! `POST contactLists` (set its status on a list: 1 subscribes, 2 unsubscribes). Unlike a bulk
//! import, `contactLists` with status 1 re-subscribes someone who unsubscribed ("WARNING: If
//! you change a status from unsubscribed to active, you can re-subscribe a contact to a list
//! from which they had manually unsubscribed", ActiveCampaign API reference).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::catalog::{PageQuery, page};
use super::{ApiError, Shared};
use crate::sandbox::lock;
use crate::sandbox::state::{Id, ListStatus, SandboxContact};

/// The contact endpoints, behind the gate.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/3/contacts", get(contacts))
        .route("/api/3/contacts/{id}/contactLists", get(contact_lists))
        .route("/api/3/contactLists", post(set_contact_list))
}

/// A contact as v3 resources show it: camelCase, ids as strings.
fn contact_json(contact: &SandboxContact) -> Value {
    json!({
        "id": contact.id.to_string(), "email": contact.email,
        "firstName": contact.first_name.clone().unwrap_or_default(),
        "lastName": contact.last_name.clone().unwrap_or_default(),
        "phone": contact.phone.clone().unwrap_or_default(), "deleted": "0",
    })
}

#[derive(Debug, Deserialize)]
struct ContactsQuery {
    email: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

/// `GET /contacts?email=`: the contact with that email (any case), or none; without `email`,
/// a page of all contacts.
async fn contacts(State(shared): State<Arc<Shared>>, Query(q): Query<ContactsQuery>) -> Response {
    let (offset, limit) = match page(q.page.limit.as_deref(), q.page.offset.as_deref()) {
        Ok(page) => page,
        Err(error) => return error.into_response(),
    };
    let state = lock(&shared.state);
    let found: Vec<SandboxContact> = match q.email.as_deref() {
        Some(email) => state.contact(email).into_iter().collect(),
        None => state.contacts(),
    };
    let total = found.len().to_string();
    let page: Vec<Value> = found
        .iter()
        .skip(offset)
        .take(limit)
        .map(contact_json)
        .collect();
    axum::Json(json!({"contacts": page, "meta": {"total": total}})).into_response()
}

/// `GET /contacts/{id}/contactLists`: `status` is a string here, a number in the answer to
/// `POST /contactLists` (as in ActiveCampaign's examples).
async fn contact_lists(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let found = id
        .parse::<u64>()
        .ok()
        .and_then(|n| lock(&shared.state).contact_by_id(n));
    let Some((contact, lists)) = found else {
        return ApiError::NotFound {
            kind: "Subscriber",
            id,
        }
        .into_response();
    };
    let lists: Vec<Value> = lists
        .into_iter()
        .map(|(list, status)| {
            json!({
                "contact": contact.id.to_string(), "list": list.to_string(),
                "status": status.code().to_string(), "id": format!("{}{list}", contact.id),
            })
        })
        .collect();
    axum::Json(json!({"contactLists": lists})).into_response()
}

#[derive(Debug, Deserialize)]
struct ContactListBody {
    #[serde(rename = "contactList")]
    contact_list: ContactList,
}

#[derive(Debug, Deserialize)]
struct ContactList {
    list: Id,
    contact: Id,
    status: Id,
}

/// `POST /contactLists`: sets the contact's status on the list. ActiveCampaign documents
/// only `400 {}` as its failure.
async fn set_contact_list(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(ContactListBody { contact_list: c }) = serde_json::from_slice(&body) else {
        let reason = "contactList needs list, contact and status";
        return ApiError::EmptyBadRequest { reason }.into_response();
    };
    let status = match c.status.0 {
        1 => ListStatus::Active,
        2 => ListStatus::Unsubscribed,
        _ => {
            let reason = "status must be 1 or 2";
            return ApiError::EmptyBadRequest { reason }.into_response();
        }
    };
    if !shared.known_lists.contains(&c.list.0) {
        let reason = "no such list";
        return ApiError::EmptyBadRequest { reason }.into_response();
    }
    let mut state = lock(&shared.state);
    if !state.set_list_status(c.contact.0, c.list.0, status) {
        let reason = "no such contact";
        return ApiError::EmptyBadRequest { reason }.into_response();
    }
    let contacts: Vec<Value> = state
        .contact_by_id(c.contact.0)
        .iter()
        .map(|(contact, _)| contact_json(contact))
        .collect();
    let body = json!({
        "contacts": contacts,
        "contactList": {
            "contact": c.contact.0.to_string(), "list": c.list.0.to_string(),
            "status": status.code(), "sourceid": "4",
            "id": format!("{}{}", c.contact.0, c.list.0),
        },
    });
    axum::Json(body).into_response()
}
