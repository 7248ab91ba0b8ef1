//! HTTP side of the sandbox: the router, the gate every API request passes (faults, latency,
//! token, per-second limit, request log) and one handler per ActiveCampaign v3 endpoint, plus
//! the worker that processes queued bulk imports.
//!
//! Response shapes copy ActiveCampaign's own (ids and `meta.total` as strings, camelCase contact
//! resources, snake_case bulk bodies, the several error envelopes), because the sandbox exists to
//! make clients meet those quirks in tests.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::faults::{ConnHandle, FaultAction};
use super::limits::{BULK_WINDOW, GENERAL_WINDOW, SlidingWindow};
use super::state::{BatchStatus, ImportContact, SandboxContact};
use super::state::{RequestRecord, State as SandboxState};
use super::{SandboxOptions, lock};

/// "Contacts can be imported in batches of up to 250 items" (ActiveCampaign bulk import docs).
const MAX_CONTACTS_PER_BULK_IMPORT: usize = 250;
/// Bulk payloads must be "< 400K bytes (399 999 bytes or less)" (ActiveCampaign bulk import
/// docs).
const MAX_BULK_PAYLOAD_BYTES: usize = 400_000;
/// Bodies up to this size reach the handlers, so an oversized bulk import gets ActiveCampaign's
/// 400 rather than a generic 413 (our own ceiling, far above any legitimate request).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// "A typical endpoint will return 20 records by default" (ActiveCampaign pagination docs).
const DEFAULT_PAGE_LIMIT: usize = 20;
/// "... and will allow a maximum of 100" (ActiveCampaign pagination docs).
const MAX_PAGE_LIMIT: usize = 100;
/// Characters ActiveCampaign rejects in an email (bulk import docs, "Why Bulk Imports Fail").
const FORBIDDEN_EMAIL_CHARS: &[char] =
    &['"', '(', ')', ',', ':', ';', '<', '>', '@', '[', '\\', ']'];

const BULK_IMPORT_PATH: &str = "/api/3/import/bulk_import";
const API_TOKEN: HeaderName = HeaderName::from_static("api-token");
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");

/// Everything the handlers share: options, the data behind its lock, the limits and the queue
/// to the import worker.
pub(crate) struct Shared {
    /// Expected `Api-Token` value.
    token: String,
    retry_after_secs: u64,
    latency: Duration,
    import_delay: Duration,
    lists: Vec<(u64, String)>,
    fields: Vec<(u64, String)>,
    /// Ids of `lists`, for O(1) checks while importing.
    known_lists: HashSet<u64>,
    pub(crate) state: Mutex<SandboxState>,
    general_limit: Option<Mutex<SlidingWindow>>,
    bulk_limit: Option<Mutex<SlidingWindow>>,
    imports: mpsc::UnboundedSender<PendingImport>,
    /// Cancelled when the server shuts down: stops the import worker and cuts injected delays
    /// short (the connection is then dropped), so shutdown never waits on them.
    pub(crate) closing: CancellationToken,
}

/// A bulk import waiting for the worker.
pub(crate) struct PendingImport {
    batch_id: String,
    ready_at: Instant,
    contacts: Vec<ImportContact>,
}

impl Shared {
    pub(crate) fn new(opts: SandboxOptions) -> (Arc<Self>, mpsc::UnboundedReceiver<PendingImport>) {
        let (imports, queue) = mpsc::unbounded_channel();
        let shared = Shared {
            known_lists: opts.lists.iter().map(|(id, _)| *id).collect(),
            general_limit: opts
                .requests_per_second
                .map(|limit| Mutex::new(SlidingWindow::new(limit, GENERAL_WINDOW))),
            bulk_limit: opts
                .bulk_imports_per_minute
                .map(|limit| Mutex::new(SlidingWindow::new(limit, BULK_WINDOW))),
            state: Mutex::new(SandboxState::new(opts.store_contacts, opts.history)),
            token: opts.token,
            retry_after_secs: opts.retry_after_secs,
            latency: opts.latency,
            import_delay: opts.import_delay,
            lists: opts.lists,
            fields: opts.fields,
            imports,
            closing: CancellationToken::new(),
        };
        (Arc::new(shared), queue)
    }
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

/// The sandbox's routes: the API behind the gate, and the unauthenticated `/_sandbox` views.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/3/users/me", get(users_me))
        .route("/api/3/lists/{id}", get(list))
        .route("/api/3/fields", get(fields))
        .route(BULK_IMPORT_PATH, post(bulk_import))
        .route("/api/3/import/info", get(import_info))
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(unknown_endpoint)
        .layer(middleware::from_fn_with_state(shared.clone(), gate));
    Router::new()
        .route("/_sandbox/stats", get(view_stats))
        .route("/_sandbox/contacts", get(view_contacts))
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

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
         lists/{{id}}, fields, import/bulk_import, import/info)"
    )]
    UnknownEndpoint { method: String, path: String },
    #[error("Query parameter '{name}' must be a non-negative integer")]
    InvalidQuery { name: &'static str },
    #[error("'batchId' is a required field.")]
    MissingBatchId,
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

/// Number of contacts in a bulk import body, passed from the handler to the request log.
#[derive(Debug, Clone, Copy)]
struct BulkContacts(usize);

/// Every API request passes here: injected faults first, then the token, then the per-second
/// limit; then the handler; then the configured latency; and the request is logged.
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let at = Instant::now();
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let conn = request
        .extensions()
        .get::<ConnectInfo<ConnHandle>>()
        .map(|info| info.0.clone());
    let fault = {
        let mut state = lock(&shared.state);
        let fault = state.faults.take(&path);
        if fault.is_some() {
            state.stats.faults_applied += 1;
        }
        fault
    };
    // `None` as the answer means the connection is dropped.
    let (answer, faulted_contacts) = match fault {
        None => (Some(admit(&shared, request, next).await), None),
        Some(FaultAction::Delay(delay)) => {
            if pause(&shared, delay).await {
                (Some(admit(&shared, request, next).await), None)
            } else {
                (None, None)
            }
        }
        Some(FaultAction::Status {
            status,
            retry_after,
            body,
        }) => {
            let contacts = bulk_contacts_in(&path, request).await;
            (
                Some(fault_response(status, retry_after, body)),
                Some(contacts),
            )
        }
        Some(FaultAction::Drop) => (None, Some(bulk_contacts_in(&path, request).await)),
    };
    let latency_cut_short = answer.is_some() && !pause(&shared, shared.latency).await;
    let answer = if latency_cut_short { None } else { answer };
    let record = RequestRecord {
        at,
        method,
        path,
        status: answer.as_ref().map_or(0, |r| r.status().as_u16()),
        contacts: faulted_contacts
            .or_else(|| {
                let answer = answer.as_ref()?;
                answer.extensions().get::<BulkContacts>().map(|c| c.0)
            })
            .unwrap_or(0),
    };
    {
        let mut state = lock(&shared.state);
        state.record_request(record);
    }
    answer.unwrap_or_else(|| {
        if let Some(conn) = conn {
            conn.kill();
        }
        // Never written: the killed stream fails the write and hyper closes the connection.
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    })
}

/// Waits `duration` unless the server is closing; returns whether the wait ran to the end.
async fn pause(shared: &Shared, duration: Duration) -> bool {
    if duration.is_zero() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = shared.closing.cancelled() => false,
    }
}

/// Number of contacts in the body of a bulk import answered by a fault (0 for other paths), so
/// the request log shows what the client tried to send.
async fn bulk_contacts_in(path: &str, request: Request) -> usize {
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

/// Token check and per-second limit, then the handler; successful answers carry the
/// `RateLimit-*` headers.
async fn admit(shared: &Shared, request: Request, next: Next) -> Response {
    let token_ok = request
        .headers()
        .get(API_TOKEN)
        .is_some_and(|value| value.as_bytes() == shared.token.as_bytes());
    if !token_ok {
        lock(&shared.state).stats.forbidden += 1;
        return ApiError::Forbidden.into_response();
    }
    let mut budget = None;
    if let Some(window) = &shared.general_limit {
        let mut window = lock(window);
        let limit = window.limit();
        match window.try_hit(Instant::now()) {
            Ok(remaining) => budget = Some((limit, remaining)),
            Err(_) => {
                drop(window);
                lock(&shared.state).stats.too_many_requests += 1;
                let error = ApiError::TooManyRequests {
                    limit,
                    retry_after_secs: shared.retry_after_secs,
                };
                return error.into_response();
            }
        }
    }
    let mut response = next.run(request).await;
    if let Some((limit, remaining)) = budget {
        let headers = response.headers_mut();
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from(limit));
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(remaining));
    }
    response
}

fn fault_response(status: u16, retry_after: Option<u64>, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    (status, headers, body).into_response()
}

/// `limit` and `offset` query parameters, kept as text so a bad value gets a JSON error.
#[derive(Debug, Deserialize)]
struct PageQuery {
    limit: Option<String>,
    offset: Option<String>,
}

/// A page as `(offset, limit)`: limit defaults to 20 and is capped at 100 (0 means default).
fn page(limit: Option<&str>, offset: Option<&str>) -> Result<(usize, usize), ApiError> {
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

/// Whether ActiveCampaign would accept `email`, by its documented rules: a non-empty part before
/// exactly one `@`, none of `" ( ) , : ; < > @ [ \ ]`, and a domain with a `.` followed by at
/// least two letters (bulk import docs, "Why Bulk Imports Fail").
pub(crate) fn email_is_valid(email: &str) -> bool {
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

async fn unknown_endpoint(request: Request) -> Response {
    let error = ApiError::UnknownEndpoint {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    };
    error.into_response()
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
    fn a_page_defaults_to_twenty_and_caps_at_a_hundred() {
        assert_eq!(page(None, None).ok(), Some((0, 20)));
        assert_eq!(page(Some("500"), Some("40")).ok(), Some((40, 100)));
    }

    #[test]
    fn a_batch_id_looks_like_a_uuid() {
        let id = new_batch_id();
        let lengths: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(lengths, vec![8, 4, 4, 4, 12]);
    }
}
