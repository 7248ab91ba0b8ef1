//! Admission: the `Api-Token` check and the per-second request limit (ActiveCampaign limits
//! each account, so the limit sits with the token that names it). Admitted answers carry the
//! `RateLimit-*` headers.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, RATELIMIT_LIMIT, RATELIMIT_REMAINING, Shared};
use crate::sandbox::lock;

const API_TOKEN: HeaderName = HeaderName::from_static("api-token");

/// Token check and per-second limit, then the handler; successful answers carry the
/// `RateLimit-*` headers.
pub(super) async fn admit(shared: &Shared, request: Request, next: Next) -> Response {
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
