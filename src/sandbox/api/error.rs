//! The errors the sandbox's API answers with, each in the envelope ActiveCampaign uses for that
//! case (`errors[]` for 403, `message` for 404 and 429, `success: 0` with `failureReasons` for
//! bulk imports).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::bulk::{MAX_BULK_PAYLOAD_BYTES, MAX_CONTACTS_PER_BULK_IMPORT};
use super::{RATELIMIT_LIMIT, RATELIMIT_REMAINING, RETRY_AFTER};

/// Errors the API answers with, each in the envelope ActiveCampaign uses for that case.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("The Api-Token header is missing or does not match the sandbox's token")]
    Forbidden,
    #[error("Too Many Requests")]
    TooManyRequests { limit: u32, retry_after_secs: u64 },
    #[error("No Result found for {kind} with id {id}")]
    NotFound { kind: &'static str, id: String },
    #[error(
        "No endpoint {method} {path} in the sandbox's ActiveCampaign API v3 (it serves users/me, \
         lists/{{id}}, fields, contacts, contacts/{{id}}/contactLists, contactLists, \
         import/bulk_import, import/info)"
    )]
    UnknownEndpoint { method: String, path: String },
    #[error("Query parameter '{name}' must be a non-negative integer")]
    InvalidQuery { name: &'static str },
    #[error("'batchId' is a required field.")]
    MissingBatchId,
    /// A request ActiveCampaign documents only as `400 {}` (contactLists without a list,
    /// contact or valid status): the reason is for the sandbox's own logs.
    #[error("bad request: {reason}")]
    EmptyBadRequest { reason: &'static str },
    #[error(
        "The bulk import payload is {bytes} bytes; it must be under {MAX_BULK_PAYLOAD_BYTES} \
         bytes (399999 or less)"
    )]
    BulkPayloadTooLarge { bytes: usize },
    #[error(
        "A bulk import must hold 1 to {MAX_CONTACTS_PER_BULK_IMPORT} contacts; this one holds \
         {count}"
    )]
    BulkContactCount { count: usize },
    #[error("The bulk import body is not valid: {reason}")]
    BulkMalformed { reason: String },
    #[error("Rate limit exceeded.")]
    BulkRateLimited { per_minute: u32 },
    #[error(
        "JSON payload did not pass validation. Please fix failure Reasons and retry. The import \
         was not queued for processing."
    )]
    BulkInvalidContacts {
        failures: Vec<(usize, &'static str)>,
    },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            ApiError::Forbidden => {
                let body =
                    json!({"errors": [{"status": 403, "title": "Forbidden", "detail": message}]});
                (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
            }
            ApiError::TooManyRequests {
                limit,
                retry_after_secs,
            } => {
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    axum::Json(json!({"message": message})),
                )
                    .into_response();
                let headers = response.headers_mut();
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
                headers.insert(RATELIMIT_LIMIT, HeaderValue::from(limit));
                headers.insert(RATELIMIT_REMAINING, HeaderValue::from(0));
                response
            }
            ApiError::NotFound { .. } | ApiError::UnknownEndpoint { .. } => (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": message})),
            )
                .into_response(),
            ApiError::InvalidQuery { .. } => (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"message": message})),
            )
                .into_response(),
            ApiError::EmptyBadRequest { reason } => {
                tracing::debug!(reason, "Sandbox answered 400 {{}}");
                (StatusCode::BAD_REQUEST, axum::Json(json!({}))).into_response()
            }
            ApiError::MissingBatchId => {
                let body = json!({"success": 0, "message": message});
                (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
            }
            ApiError::BulkPayloadTooLarge { .. }
            | ApiError::BulkContactCount { .. }
            | ApiError::BulkMalformed { .. } => {
                let body = json!({"success": 0, "message": message, "failureReasons": [message]});
                (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
            }
            ApiError::BulkRateLimited { per_minute } => {
                let reason = format!(
                    "Up to {per_minute} imports may be requested per minute.Please batch contacts \
                     into larger requests, or retry this request in a minute."
                );
                let body = json!({"success": 0, "message": message, "failureReasons": [reason]});
                (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
            }
            ApiError::BulkInvalidContacts { failures } => {
                let reasons: Vec<Value> = failures
                    .into_iter()
                    .map(|(index, reason)| json!({"contact": index, "failureReason": reason}))
                    .collect();
                let body = json!({"success": 0, "message": message, "failureReasons": reasons});
                (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
            }
        }
    }
}
