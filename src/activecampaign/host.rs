//! The REST endpoint of an ActiveCampaign account. Users paste a bare hostname (as Customer
//! Insights asks), or a URL copied from ActiveCampaign's Developer settings; both are accepted
//! and normalised to `https://HOST`. Plain http is allowed only for loopback hosts (the
//! sandbox and local tests), so an API key is never sent in clear over a network.

use std::net::IpAddr;

use reqwest::Url;

use crate::redact::redact_host_input;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HostError {
    #[error(
        "the ActiveCampaign host is empty; give the REST endpoint hostname, e.g. acme.api-us1.com"
    )]
    Empty,
    #[error(
        "{input:?} is not a valid ActiveCampaign REST endpoint hostname (expected e.g. \
         acme.api-us1.com): {reason}"
    )]
    Invalid { input: String, reason: String },
    #[error(
        "plain http:// is refused for {host}: an API key must not cross a network unencrypted. \
         Use the https endpoint (http is accepted for loopback hosts only)"
    )]
    PlainHttp { host: String },
}

/// A normalised base URL such as `https://acme.api-us1.com` (no trailing slash, no `/api/3`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl(String);

impl BaseUrl {
    pub fn parse(input: &str) -> Result<BaseUrl, HostError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(HostError::Empty);
        }
        let invalid = |reason: &str| HostError::Invalid {
            input: redact_host_input(trimmed),
            reason: reason.to_owned(),
        };
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_owned()
        } else {
            format!("https://{trimmed}")
        };
        let url = Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
        let scheme = url.scheme();
        if scheme != "https" && scheme != "http" {
            return Err(invalid("only https:// is supported"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "credentials in the URL are not allowed; use the API key option",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                "a query string or fragment is not part of the hostname",
            ));
        }
        let path = url.path().trim_end_matches('/');
        if !(path.is_empty() || path == "/api/3") {
            return Err(invalid(
                "only the hostname is needed (optionally followed by /api/3)",
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| invalid("no hostname"))?
            .to_owned();
        if scheme == "http" && !is_loopback(&host) {
            return Err(HostError::PlainHttp { host });
        }
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        Ok(BaseUrl(format!("{scheme}://{authority}")))
    }

    /// `https://HOST` as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host (with port when given), for messages and as the rate-budget key: ActiveCampaign
    /// counts its limits per account, and one account is one host.
    pub fn host(&self) -> &str {
        self.0.split("://").nth(1).unwrap_or(&self.0)
    }

    /// Full URL of an API v3 resource path such as `users/me`.
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/3/{}", self.0, path)
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.host())
    }
}

/// 127.0.0.0/8, ::1 and `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_does_not_repeat_credentials_or_a_query_string() {
        for input in [
            "https://user:s3cret-key@acme.api-us1.com",
            "acme.api-us1.com?api_key=s3cret-key",
            "user:s3cret-key@acme.api-us1.com/x#s3cret-key",
        ] {
            let message = BaseUrl::parse(input).expect_err(input).to_string();
            assert!(!message.contains("s3cret-key"), "{message}");
            assert!(message.contains("acme.api-us1.com"), "{message}");
        }
    }

    #[test]
    fn a_bare_hostname_becomes_https() {
        let url = BaseUrl::parse("acme.api-us1.com").expect("valid");
        assert_eq!(url.as_str(), "https://acme.api-us1.com");
        assert_eq!(
            url.api("users/me"),
            "https://acme.api-us1.com/api/3/users/me"
        );
    }

    #[test]
    fn a_pasted_https_url_with_api_path_is_normalised() {
        for input in [
            "https://acme.api-us1.com/api/3",
            "https://acme.api-us1.com/api/3/",
            " https://acme.api-us1.com/ ",
        ] {
            assert_eq!(
                BaseUrl::parse(input).expect("valid").as_str(),
                "https://acme.api-us1.com"
            );
        }
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        assert_eq!(
            BaseUrl::parse("http://acme.api-us1.com"),
            Err(HostError::PlainHttp {
                host: "acme.api-us1.com".to_owned()
            })
        );
        assert!(matches!(
            BaseUrl::parse("http://10.0.0.5:8080"),
            Err(HostError::PlainHttp { .. })
        ));
    }

    #[test]
    fn plain_http_is_accepted_on_loopback() {
        for input in [
            "http://127.0.0.1:8080",
            "http://localhost:9",
            "http://[::1]:7",
            "http://127.3.4.5",
        ] {
            assert!(BaseUrl::parse(input).is_ok(), "{input}");
        }
        assert_eq!(
            BaseUrl::parse("http://127.0.0.1:8080").expect("ok").host(),
            "127.0.0.1:8080"
        );
    }

    #[test]
    fn paths_queries_and_credentials_are_refused() {
        for input in [
            "acme.api-us1.com/contacts",
            "https://acme.api-us1.com?x=1",
            "https://u:p@acme.api-us1.com",
            "ftp://acme.com",
            "",
        ] {
            assert!(BaseUrl::parse(input).is_err(), "{input}");
        }
    }
}
