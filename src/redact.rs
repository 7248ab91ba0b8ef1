//! Redaction: what every output path (errors, logs, the run history, listings) shows in place
//! of a secret or a contact's data. All of it is here, as pure functions, so one rule hides a
//! given kind of value wherever it could surface:
//!
//! - [`hint`]: an API key as its last four characters, so a user can tell keys apart.
//! - [`mask_email`]: a contact's address as `j***@example.com` in the history and reports.
//! - [`mask_addresses`]: addresses inside ActiveCampaign's free-text messages.
//! - [`redact_host_input`]: a typed ActiveCampaign host without user info or query.
//! - [`redact_url`]: a database URL (or connection string) with its passwords as `***`.
//! - [`PasswordScrubber`]: the same passwords removed from a database driver's messages.

use std::ops::Range;

use secrecy::{ExposeSecret, SecretString};

/// Secrets shorter than this show no characters at all in a [`hint`]: four characters of a
/// short secret would give away too much of it.
const MIN_HINTED_SECRET_LEN: usize = 12;
/// Passwords shorter than this are not scrubbed from driver messages: replacing one or two
/// characters would garble the message while hiding nothing.
const MIN_SCRUBBED_PASSWORD_LEN: usize = 3;
/// What a hidden password or password parameter is replaced with.
const HIDDEN: &str = "***";

/// Last four characters of a secret, for display ("…a1b2"), so a user can tell which API key a
/// connection holds without the key being shown. Shorter secrets show nothing.
pub fn hint(secret: &SecretString) -> String {
    let s = secret.expose_secret();
    let chars: Vec<char> = s.chars().collect();
    if chars.len() < MIN_HINTED_SECRET_LEN {
        return "…".to_owned();
    }
    format!("…{}", chars[chars.len() - 4..].iter().collect::<String>())
}

/// Masks an email for history and reports: `j***@example.com`. The domain is kept only when
/// it looks like one, so a rejected value that is not an address (a whole misparsed row, say)
/// never lands in the history.
pub fn mask_email(email: &str) -> String {
    let first: String = email
        .chars()
        .take(1)
        .filter(|c| !c.is_whitespace())
        .collect();
    match email.split_once('@') {
        Some((_, domain))
            if !domain.is_empty()
                && domain.len() <= 253
                && domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') =>
        {
            format!("{first}***@{domain}")
        }
        _ => format!("{first}***"),
    }
}

/// Replaces anything that looks like an email address in ActiveCampaign's free text, so a
/// message that echoes a contact never reaches a log line or the run history.
pub fn mask_addresses(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            if word.contains('@') {
                "[address]"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A typed ActiveCampaign host as an error repeats it: without user info, query or fragment,
/// where an API key typed into the wrong option would sit.
pub fn redact_host_input(input: &str) -> String {
    let before_query = input.find(['?', '#']).map_or(input, |i| &input[..i]);
    match before_query.rfind('@') {
        Some(at) => {
            let authority = before_query.find("://").map_or(0, |i| i + 3).min(at);
            format!("{}{}", &before_query[..authority], &before_query[at + 1..])
        }
        None => before_query.to_owned(),
    }
}

/// `url` with any password replaced by `***`, both in the user info
/// (`postgres://user:***@host/db`) and in a `password=` query parameter, so a database can be
/// named in messages and listings. When the URL is ambiguous it errs towards hiding more.
/// Whatever this changes is a password: the CLI uses that to refuse one on its command line.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return redact_password_params(url);
    };
    let (scheme, rest) = url.split_at(scheme_end);
    // The last '@' ends the user info: a password may itself contain '@', '/' or '?'.
    match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
            let host = redact_password_params(host);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}{user}:{HIDDEN}@{host}"),
                None => format!("{scheme}{userinfo}@{host}"),
            }
        }
        None => format!("{scheme}{}", redact_password_params(rest)),
    }
}

/// The passwords of one database URL, to remove from that database driver's messages (which
/// may quote the connection options they failed on). Its `Debug` shows no password.
pub struct PasswordScrubber {
    /// Password spellings (raw and percent-decoded) to remove.
    secrets: Vec<String>,
}

impl std::fmt::Debug for PasswordScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordScrubber").finish_non_exhaustive()
    }
}

impl PasswordScrubber {
    /// Collects the passwords of `url`: in the user info and every `password=` value, as
    /// written and percent-decoded (a driver may quote either).
    pub fn for_url(url: &str) -> Self {
        let secrets = password_of(url)
            .into_iter()
            .chain(password_values(url).into_iter().map(|v| &url[v]))
            .flat_map(|raw| [raw.to_owned(), percent_decode(raw)])
            .filter(|p| p.len() >= MIN_SCRUBBED_PASSWORD_LEN)
            .collect();
        PasswordScrubber { secrets }
    }

    /// A driver message made safe to show: no password in it.
    pub fn scrub(&self, message: &str) -> String {
        let mut message = message.to_owned();
        for secret in &self.secrets {
            message = message.replace(secret.as_str(), HIDDEN);
        }
        message
    }
}

/// Replaces every `password=` value (`sslpassword=` too): query parameters, and the
/// keyword form `host=db password=s3cret` of PostgreSQL connection strings, quoted or not.
fn redact_password_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for value in password_values(text) {
        out.push_str(&text[from..value.start]);
        out.push_str(HIDDEN);
        from = value.end;
    }
    out.push_str(&text[from..]);
    out
}

/// Where the values of `password=` (and `sslpassword=`) sit in `text`, quotes included. The one
/// password scanner: redaction and scrubbing both use it, so they hide the same values.
fn password_values(text: &str) -> Vec<Range<usize>> {
    const KEY: &str = "password=";
    // ASCII lower-casing keeps byte offsets, so positions found here index `text`.
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find(KEY) {
        let start = from + found + KEY.len();
        let value = &text[start..];
        let len = match value.strip_prefix('\'') {
            Some(quoted) => quoted.find('\'').map_or(value.len(), |q| q + 2),
            None => value
                .find(|c: char| c == '&' || c.is_whitespace())
                .unwrap_or(value.len()),
        };
        out.push(start..start + len);
        from = start + len;
    }
    out
}

/// The password in a URL's user info, as written.
fn password_of(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let userinfo = &rest[..rest.rfind('@')?];
    userinfo.split_once(':').map(|(_, password)| password)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_show_the_last_four_characters_only() {
        assert_eq!(hint(&SecretString::from("0123456789abcdef")), "…cdef");
        assert_eq!(hint(&SecretString::from("short")), "…");
    }

    #[test]
    fn emails_are_masked_to_first_letter_and_domain() {
        assert_eq!(mask_email("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask_email("nodomain"), "n***");
        assert_eq!(mask_email("a@b,John Smith,555-1234"), "a***");
        assert_eq!(mask_email(""), "***");
    }

    #[test]
    fn addresses_in_activecampaign_messages_are_masked() {
        assert_eq!(
            mask_addresses("Contact jane@example.com is excluded"),
            "Contact [address] is excluded"
        );
    }

    #[test]
    fn a_typed_host_loses_its_user_info_query_and_fragment() {
        for (input, shown) in [
            (
                "https://user:s3cret-key@acme.api-us1.com",
                "https://acme.api-us1.com",
            ),
            ("acme.api-us1.com?api_key=s3cret-key", "acme.api-us1.com"),
            (
                "user:s3cret-key@acme.api-us1.com/x#s3cret-key",
                "acme.api-us1.com/x",
            ),
            ("acme.api-us1.com/contacts", "acme.api-us1.com/contacts"),
        ] {
            assert_eq!(redact_host_input(input), shown, "{input}");
        }
    }

    #[test]
    fn redact_url_hides_the_password_in_the_user_info() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.internal:5432/crm"),
            "postgres://app:***@db.internal:5432/crm"
        );
    }

    #[test]
    fn redact_url_hides_a_password_holding_at_signs_and_slashes() {
        let redacted = redact_url("postgresql://app:p@ss/w?rd@db/crm");

        assert_eq!(redacted, "postgresql://app:***@db/crm");
    }

    #[test]
    fn redact_url_hides_passwords_in_a_keyword_connection_string() {
        assert_eq!(
            redact_url("host=db user=app password=s3cret sslpassword='a b' dbname=crm"),
            "host=db user=app password=*** sslpassword=*** dbname=crm"
        );
    }

    #[test]
    fn redact_url_hides_a_password_query_parameter() {
        assert_eq!(
            redact_url("postgres://db/crm?user=app&password=s3cret&sslmode=require"),
            "postgres://db/crm?user=app&password=***&sslmode=require"
        );
    }

    #[test]
    fn redact_url_leaves_urls_without_a_password_alone() {
        assert_eq!(
            redact_url("sqlite:/var/lib/crm.db"),
            "sqlite:/var/lib/crm.db"
        );
        assert_eq!(redact_url("postgres://app@db/crm"), "postgres://app@db/crm");
    }

    #[test]
    fn driver_messages_lose_passwords_given_in_the_user_info_or_as_parameters() {
        let scrubber =
            PasswordScrubber::for_url("postgres://app:us3r-pw@db/crm?sslpassword=c3rt-pw");
        let error = sqlx::Error::Configuration(
            "bad options us3r-pw and sslpassword c3rt-pw"
                .to_owned()
                .into(),
        );

        let shown = scrubber.scrub(&error.to_string());

        assert!(
            !shown.contains("us3r-pw") && !shown.contains("c3rt-pw"),
            "{shown}"
        );
    }

    #[test]
    fn percent_encoded_passwords_are_scrubbed_as_written_and_decoded() {
        let scrubber = PasswordScrubber::for_url("postgres://app:p%40ss-word@db/crm");

        let shown = scrubber.scrub("auth failed for p%40ss-word (p@ss-word)");

        assert_eq!(shown, "auth failed for *** (***)");
    }

    #[test]
    fn a_scrubber_debug_shows_no_password() {
        let scrubber = PasswordScrubber::for_url("postgres://app:hunter2secret@db/crm");

        assert!(!format!("{scrubber:?}").contains("hunter2secret"));
    }
}
