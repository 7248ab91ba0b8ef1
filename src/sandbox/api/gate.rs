//! The gate every API request passes: its arrival is counted (the peaks per second and per
//! minute), then injected faults, then admission (`auth`), then the handler, then the configured
//! latency; every request is logged, whatever its fate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::admit;
use super::bulk::{BULK_IMPORT_PATH, BulkContacts, bulk_contacts_in};
use super::{RETRY_AFTER, Shared};
use crate::sandbox::faults::{ConnHandle, FaultAction};
use crate::sandbox::lock;
use crate::sandbox::state::RequestRecord;

/// Every API request passes here: injected faults first, then the token, then the per-second
/// limit; then the handler; then the configured latency; and the request is logged.
pub(super) async fn gate(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let at = Instant::now();
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let conn = request
        .extensions()
        .get::<ConnectInfo<ConnHandle>>()
        .map(|info| info.0.clone());
    let fault = {
        let mut state = lock(&shared.state);
        state.count_arrival(method == "POST" && path == BULK_IMPORT_PATH);
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
