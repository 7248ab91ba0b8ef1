//! TLS for PostgreSQL sources: the rule acexport applies to ActiveCampaign (https, certificate
//! verified) applied to the user's own database. Off loopback the default is
//! `sslmode=verify-full`: the server's certificate must chain to a trusted root and name the
//! host. On loopback (`localhost`, 127.0.0.0/8, ::1) and over a Unix socket the traffic never
//! leaves the machine and the default stays PostgreSQL's `prefer`. An `sslmode` in the URL is
//! the opt-out, and `segment show` says which mode is in force and why.
//!
//! Only the URL counts: `PGSSLMODE` in the environment is ignored, so the mode shown is the mode
//! a run uses. sqlx verifies with rustls against the Mozilla root certificates compiled into
//! acexport (the `webpki-roots` crate), not the system's store; `sslrootcert=PATH` in the URL
//! adds a private CA to them.

use std::fmt;
use std::path::Path;

use sqlx::postgres::PgSslMode;

use crate::activecampaign::host::is_loopback;

/// PostgreSQL's `sslmode` values, as sqlx implements them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// sqlx treats it as `disable`.
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<SslMode> {
        Some(match text.to_ascii_lowercase().as_str() {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What the mode means for a connection, as sqlx implements it (`allow` is `disable`;
    /// `require` never verifies, even with `sslrootcert`).
    fn meaning(self) -> &'static str {
        match self {
            SslMode::Disable | SslMode::Allow => "no TLS",
            SslMode::Prefer => {
                "TLS if the server offers it, the server certificate is not verified"
            }
            SslMode::Require => "the server certificate is not verified",
            SslMode::VerifyCa => "the server certificate is verified, the host name is not",
            SslMode::VerifyFull => "the server certificate and host name are verified",
        }
    }

    /// Whether a TLS failure may be the certificate check's.
    pub(super) fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl From<SslMode> for PgSslMode {
    fn from(mode: SslMode) -> PgSslMode {
        match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow => PgSslMode::Allow,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// Where the mode in force comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsOrigin {
    /// The URL's `sslmode`.
    Url,
    /// No `sslmode`, a loopback host or a Unix socket.
    LoopbackDefault,
    /// No `sslmode`, any other host.
    RemoteDefault,
}

/// The TLS mode a PostgreSQL source is read with, and why. Its `Display` is what `segment show`
/// prints, e.g. "verify-full (default off loopback)".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostgresTls {
    pub mode: SslMode,
    pub origin: TlsOrigin,
}

impl fmt::Display for PostgresTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = self.mode.name();
        match self.origin {
            TlsOrigin::RemoteDefault => write!(f, "{mode} (default off loopback)"),
            TlsOrigin::LoopbackDefault => write!(f, "{mode} (default on loopback)"),
            TlsOrigin::Url => write!(f, "{mode} (set in the URL: {})", self.mode.meaning()),
        }
    }
}

/// The mode for a server at `host` (or the Unix socket folder `socket`) when the URL's
/// `sslmode` is `in_url`.
pub(super) fn postgres_tls(
    host: &str,
    socket: Option<&Path>,
    in_url: Option<SslMode>,
) -> PostgresTls {
    if let Some(mode) = in_url {
        return PostgresTls {
            mode,
            origin: TlsOrigin::Url,
        };
    }
    // sqlx takes a host starting with '/' for a socket folder, as libpq does.
    if socket.is_some() || host.starts_with('/') || is_loopback(host) {
        PostgresTls {
            mode: SslMode::Prefer,
            origin: TlsOrigin::LoopbackDefault,
        }
    } else {
        PostgresTls {
            mode: SslMode::VerifyFull,
            origin: TlsOrigin::RemoteDefault,
        }
    }
}

/// The URL's own `sslmode` (or `ssl-mode`, the spelling sqlx also reads; the last one counts,
/// as in sqlx). `Err` holds why it cannot be read.
pub(super) fn sslmode_in_url(url: &str) -> Result<Option<SslMode>, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let mut mode = None;
    for (key, value) in parsed.query_pairs() {
        if key == "sslmode" || key == "ssl-mode" {
            mode = Some(SslMode::parse(&value).ok_or_else(|| {
                format!(
                    "sslmode={value} is not one of disable, allow, prefer, require, verify-ca, \
                     verify-full"
                )
            })?);
        }
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mode_depends_on_whether_the_host_is_loopback() {
        let loopback = PostgresTls {
            mode: SslMode::Prefer,
            origin: TlsOrigin::LoopbackDefault,
        };
        let remote = PostgresTls {
            mode: SslMode::VerifyFull,
            origin: TlsOrigin::RemoteDefault,
        };
        let cases = [
            ("127.0.0.1", loopback),
            ("127.8.9.10", loopback),
            ("localhost", loopback),
            ("LocalHost", loopback),
            ("::1", loopback),
            ("[::1]", loopback),
            ("/var/run/postgresql", loopback),
            ("db.example.com", remote),
            ("10.0.0.5", remote),
            ("192.168.1.20", remote),
            ("localhost.example.com", remote),
            ("127.0.0.1.example.com", remote),
            ("::2", remote),
        ];
        for (host, expected) in cases {
            assert_eq!(postgres_tls(host, None, None), expected, "{host}");
        }
    }

    #[test]
    fn a_unix_socket_is_local() {
        let socket = Path::new("/run/postgresql");

        let tls = postgres_tls("db.example.com", Some(socket), None);

        assert_eq!(tls.origin, TlsOrigin::LoopbackDefault);
    }

    #[test]
    fn an_sslmode_in_the_url_wins_on_any_host() {
        for host in ["db.example.com", "127.0.0.1", "/var/run/postgresql"] {
            for mode in [SslMode::Disable, SslMode::Require, SslMode::VerifyFull] {
                let tls = postgres_tls(host, None, Some(mode));

                assert_eq!(
                    tls,
                    PostgresTls {
                        mode,
                        origin: TlsOrigin::Url
                    },
                    "{host}"
                );
            }
        }
    }

    #[test]
    fn the_sslmode_is_read_from_the_url_query_as_sqlx_reads_it() {
        let cases = [
            ("postgres://app@db.example.com/crm", Ok(None)),
            (
                "postgres://app@db/crm?sslmode=require",
                Ok(Some(SslMode::Require)),
            ),
            (
                "postgres://app@db/crm?ssl-mode=VERIFY-CA",
                Ok(Some(SslMode::VerifyCa)),
            ),
            (
                "postgres://app@db/crm?sslmode=disable&sslmode=verify-full",
                Ok(Some(SslMode::VerifyFull)),
            ),
            ("postgres://app:p%3Fss@db/crm?application_name=x", Ok(None)),
        ];
        for (url, expected) in cases {
            assert_eq!(sslmode_in_url(url), expected, "{url}");
        }
        let error = sslmode_in_url("postgres://db/crm?sslmode=sometimes").expect_err("invalid");
        assert!(error.contains("sslmode=sometimes"), "{error}");
    }

    #[test]
    fn the_shown_mode_says_where_it_comes_from_and_what_it_checks() {
        let cases = [
            (
                SslMode::VerifyFull,
                TlsOrigin::RemoteDefault,
                "verify-full (default off loopback)",
            ),
            (
                SslMode::Prefer,
                TlsOrigin::LoopbackDefault,
                "prefer (default on loopback)",
            ),
            (
                SslMode::Require,
                TlsOrigin::Url,
                "require (set in the URL: the server certificate is not verified)",
            ),
            (
                SslMode::Disable,
                TlsOrigin::Url,
                "disable (set in the URL: no TLS)",
            ),
        ];
        for (mode, origin, shown) in cases {
            assert_eq!(PostgresTls { mode, origin }.to_string(), shown);
        }
    }
}
