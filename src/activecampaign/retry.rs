//! Whether to retry an attempt is decided here, by one pure function; how to wait is the
//! client's business. Kept apart so every rule is a one-line table test.

use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;

/// Wait after a 429 without a usable `Retry-After`.
pub const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(5);
/// Wait after a bulk-import "Rate limit exceeded." (ActiveCampaign says: retry in a minute; our
/// own bulk budget makes this rare, so another integration on the account is the likely cause).
pub const BULK_THROTTLE_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Success,
    /// ActiveCampaign asked us to slow down; wait this long (the whole account pauses). Not a
    /// failure: it does not use up an attempt.
    Throttled(Duration),
    /// Might work a moment later: back off and retry while attempts remain.
    Transient,
    /// Retrying cannot help (bad key, unknown list, invalid contact, redirect, TLS failure...).
    Permanent,
}

/// What an attempt produced, reduced to what the classifier needs.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    Response {
        status: StatusCode,
        retry_after: Option<&'a str>,
        body: &'a [u8],
    },
    Timeout,
    /// Connection refused or reset, incomplete response.
    Connection,
    /// Certificate or handshake failure: not transient, fail fast.
    Tls,
}

pub fn classify(attempt: Attempt<'_>) -> Verdict {
    match attempt {
        Attempt::Timeout | Attempt::Connection => Verdict::Transient,
        Attempt::Tls => Verdict::Permanent,
        Attempt::Response {
            status,
            retry_after,
            body,
        } => {
            if status.is_success() {
                Verdict::Success
            } else if status.is_redirection() {
                // Never followed (the key would go with it); asking again gets the same answer.
                Verdict::Permanent
            } else if status == StatusCode::TOO_MANY_REQUESTS {
                Verdict::Throttled(parse_retry_after(retry_after).unwrap_or(DEFAULT_THROTTLE_WAIT))
            } else if status == StatusCode::BAD_REQUEST && is_bulk_rate_limit(body) {
                // Bulk import signals its own limit with a 400, not a 429.
                Verdict::Throttled(parse_retry_after(retry_after).unwrap_or(BULK_THROTTLE_WAIT))
            } else if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
                // Includes 503, which ActiveCampaign has been seen to send at its rate limit.
                Verdict::Transient
            } else {
                Verdict::Permanent
            }
        }
    }
}

/// `Retry-After` in seconds (ActiveCampaign's form); HTTP dates are not used by it.
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let secs: f64 = value?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

fn is_bulk_rate_limit(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Body {
        message: Option<String>,
    }
    serde_json::from_slice::<Body>(body)
        .ok()
        .and_then(|b| b.message)
        .is_some_and(|m| m.to_ascii_lowercase().contains("rate limit exceeded"))
}

/// Exponential backoff with full jitter: a random wait in [base/2, min(cap, base * 2^n)].
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let floor = (base / 2).min(ceiling);
    if ceiling <= floor {
        return ceiling;
    }
    let span = (ceiling - floor).as_millis() as u64;
    floor + Duration::from_millis(rand::rng().random_range(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, retry_after: Option<&'static str>, body: &'static str) -> Verdict {
        classify(Attempt::Response {
            status: StatusCode::from_u16(status).expect("status"),
            retry_after,
            body: body.as_bytes(),
        })
    }

    #[test]
    fn success_is_success() {
        assert_eq!(response(200, None, "{}"), Verdict::Success);
        assert_eq!(response(201, None, "{}"), Verdict::Success);
    }

    #[test]
    fn too_many_requests_waits_for_retry_after() {
        assert_eq!(
            response(429, Some("3"), ""),
            Verdict::Throttled(Duration::from_secs(3))
        );
        assert_eq!(
            response(429, None, ""),
            Verdict::Throttled(DEFAULT_THROTTLE_WAIT)
        );
        assert_eq!(
            response(429, Some("soon"), ""),
            Verdict::Throttled(DEFAULT_THROTTLE_WAIT)
        );
    }

    #[test]
    fn a_bulk_rate_limit_400_is_throttling_not_a_failure() {
        let body = r#"{"success":0,"message":"Rate limit exceeded.","failureReasons":["Up to 100 imports may be requested per minute."]}"#;
        assert_eq!(
            response(400, None, body),
            Verdict::Throttled(BULK_THROTTLE_WAIT)
        );
    }

    #[test]
    fn a_validation_400_is_permanent() {
        let body = r#"{"success":0,"message":"JSON payload did not pass validation.","failureReasons":[{"contact":3,"failureReason":"Field 'email' incorrect format"}]}"#;
        assert_eq!(response(400, None, body), Verdict::Permanent);
    }

    #[test]
    fn server_errors_and_connection_problems_are_transient() {
        for status in [500, 502, 503, 504, 408] {
            assert_eq!(response(status, None, ""), Verdict::Transient, "{status}");
        }
        assert_eq!(classify(Attempt::Timeout), Verdict::Transient);
        assert_eq!(classify(Attempt::Connection), Verdict::Transient);
    }

    #[test]
    fn auth_not_found_and_tls_failures_are_permanent() {
        assert_eq!(
            response(403, None, r#"{"message":"Forbidden"}"#),
            Verdict::Permanent
        );
        assert_eq!(response(404, None, "{}"), Verdict::Permanent);
        assert_eq!(response(422, None, "{}"), Verdict::Permanent);
        assert_eq!(classify(Attempt::Tls), Verdict::Permanent);
    }

    #[test]
    fn redirects_are_permanent_whatever_their_code() {
        for status in [300, 301, 302, 303, 304, 307, 308] {
            assert_eq!(
                response(status, Some("1"), ""),
                Verdict::Permanent,
                "{status}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_stays_within_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..20 {
            let wait = backoff(attempt, base, cap);
            assert!(wait <= cap, "{wait:?}");
            assert!(wait >= Duration::from_millis(50), "{wait:?}");
        }
        assert!(backoff(0, base, cap) <= base);
        // The ceiling doubles per attempt: later attempts wait longer on average.
        let mean = |attempt| {
            (0..200)
                .map(|_| backoff(attempt, base, cap).as_millis())
                .sum::<u128>()
                / 200
        };
        assert!(mean(3) > 2 * mean(0), "{} vs {}", mean(3), mean(0));
    }
}
