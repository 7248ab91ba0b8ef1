//! Admission: the `Api-Token` check and the per-second request limit (ActiveCampaign limits
//! each account, so the limit sits with the token that names it). Admitted answers carry the
//! `RateLimit-*` headers. The `/_sandbox` views need the same token: they show every profile
//! the sandbox received.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, RATELIMIT_LIMIT, RATELIMIT_REMAINING, Shared};
use crate::sandbox::lock;

const API_TOKEN: HeaderName = HeaderName::from_static("api-token");

/// Whether the request carries the sandbox's token.
fn has_token(shared: &Shared, request: &Request) -> bool {
    request
        .headers()
        .get(API_TOKEN)
        .is_some_and(|value| same_bytes(value.as_bytes(), shared.token.as_bytes()))
}

/// Compares without stopping at the first difference, so the answer's timing does not tell
/// how much of a guessed token was right.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The token check in front of the `/_sandbox` views: no limit, no request log, the API's 403.
pub(super) async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if !has_token(&shared, &request) {
        return ApiError::Forbidden.into_response();
    }
    next.run(request).await
}

/// Token check and per-second limit, then the handler; successful answers carry the
/// `RateLimit-*` headers.
pub(super) async fn admit(shared: &Shared, request: Request, next: Next) -> Response {
    if !has_token(shared, &request) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_the_same_only_when_every_byte_and_the_length_match() {
        let cases: [(&[u8], &[u8], bool); 5] = [
            (b"token", b"token", true),
            (b"token", b"tokem", false),
            (b"token", b"token-", false),
            (b"", b"token", false),
            (b"", b"", true),
        ];
        for (a, b, same) in cases {
            assert_eq!(same_bytes(a, b), same, "{a:?} {b:?}");
        }
    }
}
