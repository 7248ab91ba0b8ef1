//! The account's catalog, as much of it as acexport reads: `users/me` (is the key valid),
//! `lists/{id}` (does the list exist) and `fields` (the custom fields, 20 per page by default, so
//! a client must paginate).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Shared};

/// "A typical endpoint will return 20 records by default" (ActiveCampaign pagination docs).
const DEFAULT_PAGE_LIMIT: usize = 20;
/// "... and will allow a maximum of 100" (ActiveCampaign pagination docs).
const MAX_PAGE_LIMIT: usize = 100;

/// The catalog endpoints, behind the gate.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/3/users/me", get(users_me))
        .route("/api/3/lists/{id}", get(list))
        .route("/api/3/fields", get(fields))
}

/// `limit` and `offset` query parameters, kept as text so a bad value gets a JSON error.
#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    pub(super) limit: Option<String>,
    pub(super) offset: Option<String>,
}

/// A page as `(offset, limit)`: limit defaults to 20 and is capped at 100 (0 means default).
pub(super) fn page(limit: Option<&str>, offset: Option<&str>) -> Result<(usize, usize), ApiError> {
    let parse = |value: Option<&str>, name| match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<usize>()
            .map(Some)
            .map_err(|_| ApiError::InvalidQuery { name }),
    };
    let limit = match parse(limit, "limit")? {
        None | Some(0) => DEFAULT_PAGE_LIMIT,
        Some(limit) => limit.min(MAX_PAGE_LIMIT),
    };
    let offset = parse(offset, "offset")?.unwrap_or(0);
    Ok((offset, limit))
}

async fn users_me() -> Response {
    axum::Json(json!({"user": {
        "username": "sandbox", "firstName": "Sandbox", "lastName": "User",
        "email": "sandbox@example.com", "phone": "", "id": "1"
    }}))
    .into_response()
}

fn list_json(id: u64, name: &str) -> Value {
    let stringid: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect();
    json!({
        "id": id.to_string(), "name": name, "stringid": stringid, "userid": "1",
        "private": "0", "optinoptout": "1", "user": "1"
    })
}

async fn list(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let found = id
        .parse::<u64>()
        .ok()
        .and_then(|id| shared.lists.iter().find(|(list_id, _)| *list_id == id));
    match found {
        Some((id, name)) => axum::Json(json!({"list": list_json(*id, name)})).into_response(),
        None => ApiError::NotFound { kind: "_List", id }.into_response(),
    }
}

async fn fields(State(shared): State<Arc<Shared>>, Query(q): Query<PageQuery>) -> Response {
    let (offset, limit) = match page(q.limit.as_deref(), q.offset.as_deref()) {
        Ok(page) => page,
        Err(error) => return error.into_response(),
    };
    let page: Vec<Value> = shared
        .fields
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(id, title)| {
            json!({
                "id": id.to_string(), "title": title, "type": "text",
                "perstag": format!("FIELD{id}"), "isrequired": "0", "visible": "1", "defval": ""
            })
        })
        .collect();
    let total = shared.fields.len().to_string();
    let body =
        json!({"fieldOptions": [], "fieldRels": [], "fields": page, "meta": {"total": total}});
    axum::Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_defaults_to_twenty_and_caps_at_a_hundred() {
        assert_eq!(page(None, None).ok(), Some((0, 20)));
        assert_eq!(page(Some("500"), Some("40")).ok(), Some((40, 100)));
    }
}
