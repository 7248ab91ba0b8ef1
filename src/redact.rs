//! Redaction: what every output path (errors, logs, the run history, listings) shows in place
//! of a secret or a contact's data. All of it is here, as pure functions, so one rule hides a
//! given kind of value wherever it could surface:
//!
//! - [`hint`]: an API key as its last four characters, so a user can tell keys apart.
//! - [`mask_email`]: a contact's address as `j***@example.com` in the history and reports.
//! - [`mask_addresses`]: addresses inside ActiveCampaign's free-text messages.
//! - [`mask_phone_numbers`]: phone-like digit runs inside the same messages.
//! - [`ServerTextScrubber`]: what a server said, made fit to keep: without the connection's
//!   key or the values of the contacts sent, addresses and phone numbers masked, escaped and
//!   capped.
//! - [`redact_host_input`]: a typed ActiveCampaign host without user info or query.
//! - [`redact_url`]: a database URL (or connection string) with its passwords as `***`.
//! - [`PasswordScrubber`]: the same passwords removed from a database driver's messages.

use std::ops::Range;

use secrecy::{ExposeSecret, SecretString};

use crate::escape::untrusted_capped;

/// Secrets shorter than this show no characters at all in a [`hint`]: four characters of a
/// short secret would give away too much of it.
const MIN_HINTED_SECRET_LEN: usize = 12;
/// Passwords shorter than this are not scrubbed from driver messages: replacing one or two
/// characters would garble the message while hiding nothing.
const MIN_SCRUBBED_PASSWORD_LEN: usize = 3;
/// What a hidden password or password parameter is replaced with.
const HIDDEN: &str = "***";
/// Longest server message kept, in characters. ActiveCampaign's longest documented message
/// ("JSON payload did not pass validation. Please fix failure Reasons and retry. The import
/// was not queued for processing.") is 116; a longer one is not its wording or says nothing
/// more of use.
pub const MAX_SERVER_MESSAGE_CHARS: usize = 300;
/// Fewest digits masked as a phone number: seven is a local number without its area code;
/// shorter runs are ids, counts and positions that make a message useful.
const MIN_PHONE_DIGITS: usize = 7;
/// Contact values shorter than this are not removed from messages: one letter (an initial)
/// would garble every word holding it while hiding nothing.
const MIN_SCRUBBED_VALUE_CHARS: usize = 2;
/// What masked server text shows in place of a contact's value, an address or a number.
const VALUE: &str = "[value]";
const ADDRESS: &str = "[address]";
const NUMBER: &str = "[number]";

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
        // The first character of whatever a source held: kept only when it cannot be a
        // control, bidi or other invisible character.
        .filter(|c| c.is_alphanumeric())
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
        .map(|word| if word.contains('@') { ADDRESS } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces phone-like runs in a server's free text with `[number]`: at least
/// [`MIN_PHONE_DIGITS`] digits, which may be grouped by spaces, dots, dashes, slashes or
/// parentheses and start with `+`. It errs towards masking: a long id or a date goes too.
pub fn mask_phone_numbers(text: &str) -> String {
    let is_separator = |c: char| matches!(c, ' ' | '-' | '.' | '/' | '(' | ')');
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        if !(c.is_ascii_digit() || c == '+' || c == '(') {
            i += 1;
            continue;
        }
        // Walk over digits and separators; the run ends at its last digit.
        let (mut digits, mut last_digit, mut j) = (0, None, i);
        while j < chars.len() {
            let (_, d) = chars[j];
            if d.is_ascii_digit() {
                digits += 1;
                last_digit = Some(j);
            } else if !(is_separator(d) || (j == i && d == '+')) {
                break;
            }
            j += 1;
        }
        match last_digit {
            Some(end) if digits >= MIN_PHONE_DIGITS => {
                let after = chars.get(end + 1).map_or(text.len(), |(at, _)| *at);
                out.push_str(&text[copied..start]);
                out.push_str(NUMBER);
                copied = after;
                i = end + 1;
            }
            _ => i = j.max(i + 1),
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Makes what a server said fit to keep in the run history, a connection's status and the
/// logs. A server may echo the key it was sent and the contacts it was given, so [`scrub`]
/// removes the connection's own key wherever it appears and, for a bulk import, every value of
/// the contacts in that request; masks addresses and phone-like numbers; escapes control
/// characters; and caps the length. Names cannot be told from other words: they go only as
/// values of the contacts sent. Its `Debug` shows none of what it hides.
///
/// [`scrub`]: ServerTextScrubber::scrub
#[derive(Clone)]
pub struct ServerTextScrubber {
    /// The key (and any other secret), lower-cased: removed wherever found.
    secrets: Vec<String>,
    /// Contact values, lower-cased: removed where they stand as words of their own.
    values: Vec<String>,
}

impl std::fmt::Debug for ServerTextScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTextScrubber")
            .field("values", &self.values.len())
            .finish_non_exhaustive()
    }
}

impl ServerTextScrubber {
    /// A scrubber removing `secret` (an API key) from what a server says.
    pub fn new(secret: &SecretString) -> Self {
        let secret = secret.expose_secret().trim();
        ServerTextScrubber {
            secrets: (secret.chars().count() >= MIN_SCRUBBED_PASSWORD_LEN)
                .then(|| secret.to_ascii_lowercase())
                .into_iter()
                .collect(),
            values: Vec::new(),
        }
    }

    /// This scrubber, also removing `values` (the contacts' emails, names, phones and fields
    /// sent in the request the server answers).
    pub fn with_values(&self, values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| v.chars().count() >= MIN_SCRUBBED_VALUE_CHARS)
            .chain(self.values.iter().cloned())
            .collect();
        values.sort();
        values.dedup();
        ServerTextScrubber {
            secrets: self.secrets.clone(),
            values,
        }
    }

    /// `text` without the secrets, and nothing else changed: for text that must stay readable
    /// as it is, such as a host name.
    pub fn hide_secrets(&self, text: &str) -> String {
        replace_all(text, &self.secrets, HIDDEN, false)
    }

    /// A server's message made fit to keep (see the type's documentation).
    pub fn scrub(&self, text: &str) -> String {
        let text = self.hide_secrets(text);
        let text = replace_all(&text, &self.values, VALUE, true);
        let text = mask_phone_numbers(&mask_addresses(&text));
        untrusted_capped(&text, MAX_SERVER_MESSAGE_CHARS).into_owned()
    }
}

/// `text` with every occurrence of the `needles` (lower-cased) replaced by `marker`, ignoring
/// ASCII case. With `whole_words`, a needle starting or ending with a letter or digit counts
/// only where no letter or digit is glued to it ("Ada" goes, "Adams" stays).
fn replace_all(text: &str, needles: &[String], marker: &str, whole_words: bool) -> String {
    if needles.is_empty() {
        return text.to_owned();
    }
    // ASCII lower-casing keeps byte offsets, so positions found here index `text`; a match of
    // valid UTF-8 in valid UTF-8 starts and ends on character boundaries.
    let lower = text.to_ascii_lowercase();
    let glued = |at: Option<char>| at.is_some_and(char::is_alphanumeric);
    let mut found: Vec<Range<usize>> = Vec::new();
    for needle in needles.iter().filter(|n| !n.is_empty()) {
        let starts_word = needle.starts_with(char::is_alphanumeric);
        let ends_word = needle.ends_with(char::is_alphanumeric);
        for (at, _) in lower.match_indices(needle.as_str()) {
            let end = at + needle.len();
            if whole_words
                && ((starts_word && glued(lower[..at].chars().next_back()))
                    || (ends_word && glued(lower[end..].chars().next())))
            {
                continue;
            }
            found.push(at..end);
        }
    }
    found.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for range in found {
        if range.end <= copied {
            continue;
        }
        if range.start >= copied {
            out.push_str(&text[copied..range.start]);
            out.push_str(marker);
        }
        // An overlapping match widens the hidden part under the marker already written.
        copied = range.end;
    }
    out.push_str(&text[copied..]);
    out
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
        assert_eq!(mask_email("\u{1b}[2J@example.com"), "***@example.com");
        assert_eq!(mask_email("\u{202e}x@example.com"), "***@example.com");
    }

    #[test]
    fn addresses_in_activecampaign_messages_are_masked() {
        assert_eq!(
            mask_addresses("Contact jane@example.com is excluded"),
            "Contact [address] is excluded"
        );
    }

    #[test]
    fn phone_like_runs_are_masked_and_short_numbers_kept() {
        let cases = [
            ("call +1 (202) 555-0143 now", "call [number] now"),
            ("tel. +44 20 7946 0958)", "tel. [number])"),
            ("020-7946-0321", "[number]"),
            ("5550143", "[number]"),
            ("a.b 202.555.0143, ok", "a.b [number], ok"),
            (
                "No Result found for _List with id 7",
                "No Result found for _List with id 7",
            ),
            ("contact 230 of 250", "contact 230 of 250"),
            ("555-01 x", "555-01 x"),
            ("(ids 12 34)", "(ids 12 34)"),
            ("+", "+"),
            ("ends with 1234567", "ends with [number]"),
            ("é 1234567 ü", "é [number] ü"),
        ];
        for (input, shown) in cases {
            assert_eq!(mask_phone_numbers(input), shown, "{input:?}");
        }
    }

    fn scrubber() -> ServerTextScrubber {
        ServerTextScrubber::new(&SecretString::from("k3y-0123456789abcdef"))
    }

    #[test]
    fn server_text_loses_the_key_in_any_case_addresses_numbers_and_control_characters() {
        let cases = [
            ("bad token k3y-0123456789abcdef", "bad token ***"),
            ("BAD TOKEN K3Y-0123456789ABCDEF!", "BAD TOKEN ***!"),
            ("xk3y-0123456789abcdefx", "x***x"),
            ("owner jane@example.com", "owner [address]"),
            ("tel +1 202 555 0143", "tel [number]"),
            ("line\nforged \u{1b}[2J", "line\\nforged \\u{1b}[2J"),
            ("Forbidden", "Forbidden"),
        ];
        for (input, shown) in cases {
            assert_eq!(scrubber().scrub(input), shown, "{input:?}");
        }
    }

    #[test]
    fn server_text_loses_the_values_of_the_contacts_sent_where_they_stand_as_words() {
        let scrub = scrubber().with_values([
            "Augusta".to_owned(),
            "Byron-King".to_owned(),
            "Ada Lovelace".to_owned(),
            "A".to_owned(),
        ]);

        let shown = scrub.scrub("Augusta Byron-King (augusta) is Ada Lovelace, not Augustan");

        assert_eq!(shown, "[value] [value] ([value]) is [value], not Augustan");
        assert_eq!(
            scrub.scrub("A contact"),
            "A contact",
            "one letter is not removed"
        );
    }

    #[test]
    fn server_text_is_capped() {
        let shown = scrubber().scrub(&"word ".repeat(500));

        assert_eq!(shown.chars().count(), MAX_SERVER_MESSAGE_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn a_key_glued_across_the_cap_is_removed_before_cutting() {
        let text = format!(
            "{}k3y-0123456789abcdef",
            "x".repeat(MAX_SERVER_MESSAGE_CHARS - 5)
        );

        let shown = scrubber().scrub(&text);

        assert!(!shown.contains("k3y-0"), "{shown}");
    }

    #[test]
    fn a_scrubber_debug_shows_neither_the_key_nor_the_values() {
        let scrub = scrubber().with_values(["Augusta".to_owned()]);

        let debug = format!("{scrub:?}");

        assert!(
            !debug.contains("k3y") && !debug.to_lowercase().contains("augusta"),
            "{debug}"
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
