//! HTTP side of the sandbox: the router and the state the handlers share. One module per
//! concern: `gate` (faults, latency and the request log around every API request), `auth` (the
//! `Api-Token` check and the per-second limit), `catalog` (users/me, lists, custom fields: what
//! acexport reads when it checks a connection), `contacts` (looking a contact up by email, its
//! lists, and `contactLists` to change its status on one), `bulk` (bulk_import, import/info and the worker
//! that processes queued imports), `inspection` (the `/_sandbox/*` views, behind the same token)
//! and `error` (ActiveCampaign's error envelopes).
//!
//! Only the endpoints acexport calls are served. Response shapes copy ActiveCampaign's own (ids
//! and `meta.total` as strings, snake_case bulk bodies, the several error envelopes), because the
//! sandbox exists to make clients meet those quirks in tests.

mod auth;
mod bulk;
mod catalog;
mod contacts;
mod error;
mod gate;
mod inspection;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderName;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::SandboxOptions;
use super::limits::{BULK_WINDOW, GENERAL_WINDOW, SlidingWindow};
use super::state::State as SandboxState;
use error::ApiError;

pub(crate) use bulk::{PendingImport, process_imports};

/// Bodies up to this size reach the handlers, so an oversized bulk import gets ActiveCampaign's
/// 400 rather than a generic 413 (our own ceiling, far above any legitimate request).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

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

impl Shared {
    pub(crate) fn new(opts: SandboxOptions) -> (Arc<Self>, mpsc::UnboundedReceiver<PendingImport>) {
        let (imports, queue) = mpsc::unbounded_channel();
        let mut state = SandboxState::new(opts.store_contacts, opts.history);
        state.empty_values = opts.empty_values;
        let shared = Shared {
            known_lists: opts.lists.iter().map(|(id, _)| *id).collect(),
            general_limit: opts
                .requests_per_second
                .map(|limit| Mutex::new(SlidingWindow::new(limit, GENERAL_WINDOW))),
            bulk_limit: opts
                .bulk_imports_per_minute
                .map(|limit| Mutex::new(SlidingWindow::new(limit, BULK_WINDOW))),
            state: Mutex::new(state),
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

/// The sandbox's routes: the API behind the gate, and the `/_sandbox` views behind the token.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let views = inspection::routes().layer(middleware::from_fn_with_state(
        shared.clone(),
        auth::require_token,
    ));
    let api = Router::new()
        .merge(catalog::routes())
        .merge(contacts::routes())
        .merge(bulk::routes())
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(unknown_endpoint)
        .layer(middleware::from_fn_with_state(shared.clone(), gate::gate));
    Router::new()
        .merge(views)
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

async fn unknown_endpoint(request: Request) -> Response {
    let error = ApiError::UnknownEndpoint {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    };
    error.into_response()
}
