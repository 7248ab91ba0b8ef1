//! Data matching, pure: a source row becomes the contact ActiveCampaign receives, or a
//! rejection with a reason that never quotes the value. Emails follow ActiveCampaign's
//! documented rules (bulk import docs, "Why Bulk Imports Fail"), so a batch is never refused
//! whole because of one address we could have caught.
//!
//! Beyond the documented rules, an address must be ASCII: ActiveCampaign refused a batch over
//! `用户@例子.广告`, and its docs say nothing of internationalised addresses. A non-ASCII domain
//! can be written in punycode (`xn--...`), which is accepted, top-level domain included; a
//! non-ASCII local part has no such form and is rejected.
//!
//! Mapped values must not hold C0 control characters or DEL: a NUL or an escape sequence
//! would reach ActiveCampaign and every screen showing the contact. A tab is allowed
//! everywhere; line breaks (CR, LF) only in custom field values, which may be text areas (a
//! quoted CSV value carries them intact), never in names or phone numbers. C1 characters
//! (U+0080 to U+009F) are sent as they are: they are what Windows-1252 text read as Latin-1
//! holds (`O\u{92}Brien`), and refusing them would drop the whole contact over a typographic
//! apostrophe.
//!
//! An empty value is left out of the contact, so that nothing ActiveCampaign holds from
//! elsewhere is blanked. Each mapped field has a bit ([`Matching::set_field_slots`]) and a
//! member records the bits of the values it was sent non-empty; a value sent before and empty
//! now is then sent as `""` ([`Matching::clearing_payload`]), which clears it.

use std::borrow::Cow;

use serde::Serialize;

use crate::secrets::{FINGERPRINT_LEN, ProfileHasher};
use crate::store::ExportDef;

/// Longest address accepted (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;
/// Characters ActiveCampaign refuses in an address (besides the one `@`).
const FORBIDDEN_EMAIL_CHARS: &[char] =
    &['"', '(', ')', ',', ':', ';', '<', '>', '@', '[', '\\', ']'];
/// How a punycode (IDNA) label starts (RFC 3492, RFC 5890).
const PUNYCODE_PREFIX: &str = "xn--";

/// Checks an address by ActiveCampaign's rules; returns the trimmed address to send and the
/// identity key (lower-cased).
pub fn check_email(raw: &str) -> Result<(String, String), &'static str> {
    let email = raw.trim();
    if email.is_empty() {
        return Err("email is empty");
    }
    if email.len() > MAX_EMAIL_LEN {
        return Err("email is longer than 254 characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("email has no @");
    };
    if local.is_empty() {
        return Err("email has nothing before the @");
    }
    if domain.contains('@') {
        return Err("email has more than one @");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("email contains spaces or control characters");
    }
    if local.contains(FORBIDDEN_EMAIL_CHARS) || domain.contains(FORBIDDEN_EMAIL_CHARS) {
        return Err("email contains a character ActiveCampaign refuses (\" ( ) , : ; < > [ \\ ])");
    }
    if !local.is_ascii() {
        return Err(
            "email has non-ASCII characters before the @, which ActiveCampaign refuses (only \
             ASCII addresses are accepted)",
        );
    }
    if !domain.is_ascii() {
        return Err(
            "email domain has non-ASCII characters, which ActiveCampaign refuses; write the \
             domain in its punycode form (xn--...)",
        );
    }
    let Some((host, tld)) = domain.rsplit_once('.') else {
        return Err("email domain has no dot");
    };
    if host.is_empty() || host.starts_with('.') || host.ends_with('.') || domain.contains("..") {
        return Err("email domain is malformed");
    }
    if !is_top_level_domain(tld) {
        return Err("email domain must end in a dot and at least two letters");
    }
    Ok((email.to_owned(), email.to_lowercase()))
}

/// Whether `tld` can end an address: two letters or more (the documented rule), or a punycode
/// label (`xn--p1ai`), which starts with two letters too and is the ASCII form of a non-ASCII
/// top-level domain.
fn is_top_level_domain(tld: &str) -> bool {
    if let Some(code) = tld.strip_prefix(PUNYCODE_PREFIX) {
        return !code.is_empty() && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    }
    tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
}

/// Which characters a mapped value may hold besides printable text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controls {
    /// Names and phone numbers: one line, so a tab only.
    TabOnly,
    /// Custom field values, possibly text areas: tab, CR and LF.
    TabAndLineBreaks,
}

/// The first control character `value` may not hold, if any.
fn forbidden_control(value: &str, allowed: Controls) -> Option<char> {
    value.chars().find(|&c| {
        c.is_ascii_control()
            && !(c == '\t' || (allowed == Controls::TabAndLineBreaks && matches!(c, '\r' | '\n')))
    })
}

/// Where each mapped value sits in a row read with [`Matching::columns`].
#[derive(Debug, Clone)]
pub struct Matching {
    columns: Vec<String>,
    email: usize,
    first_name: Option<usize>,
    last_name: Option<usize>,
    phone: Option<usize>,
    fields: Vec<(i64, usize)>,
    /// The bit of each mapped field (0 for none): first name, last name, phone, then
    /// `fields` in order; see [`Matching::field_targets`].
    bits: Vec<i64>,
    tags: Vec<String>,
    /// The list, as bulk imports name it and as the fingerprint covers it.
    list: [ListRef; 1],
    list_text: String,
}

/// One contact ready to send. Its `Debug` shows no profile data.
#[derive(Clone)]
pub struct Member {
    /// Lower-cased email: the identity key.
    pub key: String,
    pub fingerprint: [u8; FINGERPRINT_LEN],
    /// The contact as bulk-import JSON (one element of `contacts[]`).
    pub payload: String,
    /// The bits of the mapped fields whose value is non-empty, and so in the payload.
    pub sent_fields: i64,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("payload_bytes", &self.payload.len())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct FieldValue<'a> {
    id: i64,
    value: &'a str,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct ListRef {
    listid: i64,
}

/// How [`Matching::field_targets`] names the built-in fields, as bulk imports do.
const FIRST_NAME: &str = "first_name";
const LAST_NAME: &str = "last_name";
const PHONE: &str = "phone";
/// How it names a custom field: `field:` and its ActiveCampaign id.
const CUSTOM_FIELD_PREFIX: &str = "field:";

/// Bytes reserved for a contact's JSON: enough for email, names, phone, list and a few fields.
const PAYLOAD_CAPACITY: usize = 256;

/// A contact in ActiveCampaign's bulk-import shape (snake_case). Absent values are omitted:
/// "" would blank a value ActiveCampaign may hold from elsewhere. Only a value acexport sent
/// before is sent as "" ([`Matching::clearing_payload`]).
#[derive(Serialize)]
struct BulkContact<'a> {
    email: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fields: Vec<FieldValue<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "<[ListRef]>::is_empty")]
    subscribe: &'a [ListRef],
    #[serde(skip_serializing_if = "<[ListRef]>::is_empty")]
    unsubscribe: &'a [ListRef],
}

impl Matching {
    pub fn new(export: &ExportDef) -> Matching {
        let mut columns: Vec<String> = Vec::new();
        let mut index = |name: &str| -> usize {
            match columns.iter().position(|c| c == name) {
                Some(i) => i,
                None => {
                    columns.push(name.to_owned());
                    columns.len() - 1
                }
            }
        };
        let email = index(&export.email_column);
        let first_name = export.first_name_column.as_deref().map(&mut index);
        let last_name = export.last_name_column.as_deref().map(&mut index);
        let phone = export.phone_column.as_deref().map(&mut index);
        let fields: Vec<(i64, usize)> = export
            .fields
            .iter()
            .map(|f| (f.field_id, index(&f.column)))
            .collect();
        Matching {
            columns,
            email,
            first_name,
            last_name,
            phone,
            bits: vec![0; 3 + fields.len()],
            fields,
            tags: export.tags.clone(),
            list: [ListRef {
                listid: export.list_id,
            }],
            list_text: export.list_id.to_string(),
        }
    }

    /// The columns to read from each segment, in the order `map` expects.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The mapped fields, each as `first_name`, `last_name`, `phone` or `field:ID`, in the
    /// order [`Matching::set_field_slots`] takes their bits.
    pub fn field_targets(&self) -> Vec<String> {
        let builtin = [
            (self.first_name, FIRST_NAME),
            (self.last_name, LAST_NAME),
            (self.phone, PHONE),
        ];
        builtin
            .into_iter()
            .filter(|(column, _)| column.is_some())
            .map(|(_, name)| name.to_owned())
            .chain(
                self.fields
                    .iter()
                    .map(|(id, _)| format!("{CUSTOM_FIELD_PREFIX}{id}")),
            )
            .collect()
    }

    /// Gives the mapped fields their bits (slots 0 to 63), in [`Matching::field_targets`]
    /// order; a field without one is never sent empty.
    pub fn set_field_slots(&mut self, slots: &[Option<u8>]) {
        let mapped = [
            self.first_name.is_some(),
            self.last_name.is_some(),
            self.phone.is_some(),
        ]
        .into_iter()
        .chain(self.fields.iter().map(|_| true));
        let mut slots = slots.iter();
        for (bit, mapped) in self.bits.iter_mut().zip(mapped) {
            let slot = if mapped {
                slots.next().copied().flatten()
            } else {
                None
            };
            *bit = match slot {
                Some(slot) if u32::from(slot) < i64::BITS => 1_i64 << slot,
                _ => 0,
            };
        }
    }

    /// `payload` (a contact [`Matching::map`] made) with the values of the fields in `clear`
    /// (bits) sent as "", which clears them in ActiveCampaign. Bits of fields not mapped are
    /// ignored. `None` if the payload is not a contact.
    pub fn clearing_payload(&self, payload: &str, clear: i64) -> Option<String> {
        let mut contact: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(payload).ok()?;
        let cleared = |bit: i64| bit != 0 && clear & bit != 0;
        for (name, bit) in [FIRST_NAME, LAST_NAME, PHONE].into_iter().zip(&self.bits) {
            if cleared(*bit) {
                contact.insert(name.to_owned(), serde_json::Value::String(String::new()));
            }
        }
        let emptied: Vec<serde_json::Value> = self
            .fields
            .iter()
            .zip(&self.bits[3..])
            .filter(|(_, bit)| cleared(**bit))
            .map(|((id, _), _)| serde_json::json!({"id": id, "value": ""}))
            .collect();
        if !emptied.is_empty() {
            let fields = contact
                .entry("fields")
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            fields.as_array_mut()?.extend(emptied);
        }
        serde_json::to_string(&contact).ok()
    }

    /// Where the email is among [`Matching::columns`].
    pub fn email_column(&self) -> usize {
        self.email
    }

    /// Maps one row. The fingerprint covers every value sent plus the list and tags, so a
    /// change of data or of mapping re-sends the contact. A rejection's reason names the
    /// mapped role and column, never the value.
    pub fn map(
        &self,
        values: &[Option<String>],
        hasher: &ProfileHasher,
    ) -> Result<Member, Cow<'static, str>> {
        let get = |i: Option<usize>| value_at(values, i);
        let raw_email = get(Some(self.email)).ok_or("email is empty")?;
        let (email, key) = check_email(raw_email)?;
        let first_name = self.checked(values, self.first_name, Controls::TabOnly, || {
            "first name".into()
        })?;
        let last_name = self.checked(values, self.last_name, Controls::TabOnly, || {
            "last name".into()
        })?;
        let phone = self.checked(values, self.phone, Controls::TabOnly, || "phone".into())?;
        let mut sent_fields = [first_name, last_name, phone]
            .iter()
            .zip(&self.bits)
            .filter(|(value, _)| value.is_some())
            .fold(0, |sent, (_, bit)| sent | bit);
        let mut fields: Vec<FieldValue<'_>> = Vec::with_capacity(self.fields.len());
        for (&(id, i), bit) in self.fields.iter().zip(&self.bits[3..]) {
            let role = || format!("custom field {id}");
            if let Some(value) = self.checked(values, Some(i), Controls::TabAndLineBreaks, role)? {
                fields.push(FieldValue { id, value });
                sent_fields |= bit;
            }
        }
        let field_texts: Vec<String> = fields
            .iter()
            .map(|f| format!("{}={}", f.id, f.value))
            .collect();
        let fingerprint = hasher.fingerprint(
            [
                Some(email.as_str()),
                first_name,
                last_name,
                phone,
                Some(self.list_text.as_str()),
            ]
            .into_iter()
            .chain(field_texts.iter().map(|f| Some(f.as_str())))
            .chain(std::iter::once(None))
            .chain(self.tags.iter().map(|t| Some(t.as_str()))),
        );
        let contact = BulkContact {
            email: &email,
            first_name,
            last_name,
            phone,
            fields,
            tags: &self.tags,
            subscribe: &self.list,
            unsubscribe: &[],
        };
        let payload = to_json(&contact).ok_or("value cannot be encoded")?;
        Ok(Member {
            key,
            fingerprint,
            payload,
            sent_fields,
        })
    }

    /// The value at `i`, rejected when it holds a control character `allowed` does not cover;
    /// the reason names `role` (built only then) and the column.
    fn checked<'v>(
        &self,
        values: &'v [Option<String>],
        i: Option<usize>,
        allowed: Controls,
        role: impl FnOnce() -> String,
    ) -> Result<Option<&'v str>, Cow<'static, str>> {
        let value = value_at(values, i);
        let Some(c) = value.and_then(|v| forbidden_control(v, allowed)) else {
            return Ok(value);
        };
        let column = i
            .and_then(|i| self.columns.get(i))
            .map_or("", String::as_str);
        Err(Cow::Owned(format!(
            "{} (column {}) contains a control character (U+{:04X}); remove it",
            role(),
            crate::source::shown_name(column),
            u32::from(c)
        )))
    }

    /// The bulk-import contact that unsubscribes a leaver from the list.
    pub fn unsubscribe_payload(&self, email: &str) -> String {
        let contact = BulkContact {
            email,
            first_name: None,
            last_name: None,
            phone: None,
            fields: Vec::new(),
            tags: &[],
            subscribe: &[],
            unsubscribe: &self.list,
        };
        to_json(&contact).unwrap_or_default()
    }
}

/// The mapped value at `i`, trimmed; `None` when unmapped, absent or blank.
fn value_at(values: &[Option<String>], i: Option<usize>) -> Option<&str> {
    i.and_then(|i| values.get(i)?.as_deref())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Serialises into a buffer sized for a typical contact up front: growing from empty
/// reallocates several times, once per member of a million-profile segment.
fn to_json(contact: &BulkContact<'_>) -> Option<String> {
    let mut out = Vec::with_capacity(PAYLOAD_CAPACITY);
    serde_json::to_writer(&mut out, contact).ok()?;
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::exports::{FieldMapping, OnLeave};

    fn export() -> ExportDef {
        ExportDef {
            id: 1,
            name: "e".into(),
            connection_id: 1,
            connection: "c".into(),
            list_id: 7,
            list_name: "L".into(),
            email_column: "mail".into(),
            first_name_column: Some("first".into()),
            last_name_column: None,
            phone_column: Some("phone".into()),
            fields: vec![FieldMapping {
                field_id: 3,
                column: "tier".into(),
            }],
            tags: vec!["vip".into()],
            segments: vec![],
            on_leave: OnLeave::Keep,
            schedule: None,
            timezone: None,
            enabled: true,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn hasher() -> ProfileHasher {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::secrets::SecretKey::create(&dir.path().join("k"))
            .expect("key")
            .profile_hasher()
    }

    #[test]
    fn valid_addresses_pass_and_are_keyed_in_lower_case() {
        assert_eq!(
            check_email("  Jane.Doe+tag@Example.COM "),
            Ok((
                "Jane.Doe+tag@Example.COM".to_owned(),
                "jane.doe+tag@example.com".to_owned()
            ))
        );
        assert!(check_email("o'brien@example.co.uk").is_ok());
    }

    #[test]
    fn addresses_breaking_activecampaign_rules_are_rejected_with_a_reason() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@b@example.com",
            "a(b)@example.com",
            "a@example",
            "a@example.c",
            "a b@example.com",
            "a@example.1x",
            "a@.example.com",
            "a;b@example.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn addresses_activecampaign_refuses_for_their_characters_are_rejected_with_the_fix() {
        let cases = [
            ("用户@例子.广告", "before the @"),
            ("jürgen@example.com", "before the @"),
            ("ada@bücher.de", "punycode"),
            ("ada@例子.广告", "punycode"),
            ("ada@example.рф", "punycode"),
        ];
        for (email, reason) in cases {
            let rejected = check_email(email).expect_err(email);
            assert!(rejected.contains(reason), "{email}: {rejected}");
        }
    }

    #[test]
    fn punycode_domains_are_accepted_including_a_punycode_top_level_domain() {
        for email in [
            "ada@xn--bcher-kva.de",
            "ada@xn--fsqu00a.xn--r4q843a",
            "ada@example.xn--p1ai",
        ] {
            assert!(check_email(email).is_ok(), "{email}");
        }
    }

    /// A row of the test export's columns (mail, first, phone, tier) with `first`, `phone` and
    /// `tier` set as given.
    fn row(first: &str, phone: &str, tier: &str) -> Vec<Option<String>> {
        vec![
            Some("a@example.com".into()),
            Some(first.into()),
            Some(phone.into()),
            Some(tier.into()),
        ]
    }

    #[test]
    fn control_characters_in_mapped_values_reject_the_row_naming_the_column_not_the_value() {
        let m = Matching::new(&export());
        let cases = [
            (row("Nu\0ll", "", ""), "first name (column `first`)"),
            (row("Ann\u{1b}[2J", "", ""), "first name (column `first`)"),
            (row("Ann\nBob", "", ""), "first name (column `first`)"),
            (row("Ann", "555\r1234", ""), "phone (column `phone`)"),
            (row("Ann", "", "gold\0"), "custom field 3 (column `tier`)"),
            (
                row("Ann", "", "gold\u{7f}"),
                "custom field 3 (column `tier`)",
            ),
        ];
        for (values, named) in cases {
            let reason = m.map(&values, &hasher()).expect_err(named);
            assert!(reason.contains(named), "{reason}");
            assert!(reason.contains("control character"), "{reason}");
            assert!(
                !reason.contains("Ann") && !reason.contains("gold"),
                "{reason}"
            );
        }
    }

    #[test]
    fn c1_characters_of_misread_windows_1252_text_are_sent_as_they_are() {
        let m = Matching::new(&export());

        let member = m
            .map(&row("O\u{92}Brien", "", "caf\u{85}"), &hasher())
            .expect("valid");

        assert!(
            member.payload.contains("O\u{92}Brien"),
            "{}",
            member.payload
        );
    }

    #[test]
    fn tabs_anywhere_and_line_breaks_in_custom_field_values_are_kept() {
        let m = Matching::new(&export());

        let member = m
            .map(&row("Ann\tMarie", "", "line one\r\nline two"), &hasher())
            .expect("valid");

        assert!(
            member.payload.contains(r#""first_name":"Ann\tMarie""#),
            "{}",
            member.payload
        );
        assert!(
            member.payload.contains(r#"line one\r\nline two"#),
            "{}",
            member.payload
        );
    }

    #[test]
    fn empty_mapped_values_are_omitted_not_sent_empty() {
        let m = Matching::new(&export());
        assert_eq!(m.columns(), ["mail", "first", "phone", "tier"]);
        let member = m
            .map(
                &[
                    Some("a@example.com".into()),
                    Some("  ".into()),
                    None,
                    Some("gold".into()),
                ],
                &hasher(),
            )
            .expect("valid");
        assert_eq!(
            member.payload,
            r#"{"email":"a@example.com","fields":[{"id":3,"value":"gold"}],"tags":["vip"],"subscribe":[{"listid":7}]}"#
        );
    }

    #[test]
    fn mapped_fields_are_named_as_bulk_imports_name_them_and_bits_mark_non_empty_values() {
        let mut m = Matching::new(&export());
        m.set_field_slots(&[Some(0), Some(5), Some(2)]);

        let member = m.map(&row("Ann", "", "gold"), &hasher()).expect("valid");

        assert_eq!(m.field_targets(), ["first_name", "phone", "field:3"]);
        assert_eq!(
            member.sent_fields, 0b101,
            "first name and field 3, not the phone"
        );
    }

    #[test]
    fn values_to_clear_are_added_as_empty_strings_and_other_bits_are_ignored() {
        let mut m = Matching::new(&export());
        m.set_field_slots(&[Some(0), Some(5), Some(2)]);
        let member = m.map(&row("Ann", "", ""), &hasher()).expect("valid");
        let json = |text: &str| -> serde_json::Value { serde_json::from_str(text).expect("JSON") };
        let base = r#""email":"a@example.com","first_name":"Ann","tags":["vip"],"subscribe":[{"listid":7}]"#;
        let cases = [
            (0b10_0000, format!(r#"{{{base},"phone":""}}"#)),
            (
                0b100,
                format!(r#"{{{base},"fields":[{{"id":3,"value":""}}]}}"#),
            ),
            (
                0b10_0100,
                format!(r#"{{{base},"phone":"","fields":[{{"id":3,"value":""}}]}}"#),
            ),
            (0b10, format!("{{{base}}}")),
        ];
        for (clear, expected) in cases {
            let cleared = m
                .clearing_payload(&member.payload, clear)
                .expect("a contact");
            assert_eq!(json(&cleared), json(&expected), "{clear:#b}");
        }
    }

    #[test]
    fn a_value_to_clear_joins_the_fields_already_sent() {
        let mut export = export();
        export.fields.push(FieldMapping {
            field_id: 4,
            column: "phone".into(),
        });
        let mut m = Matching::new(&export);
        m.set_field_slots(&[Some(0), Some(1), Some(2), Some(3)]);
        let member = m.map(&row("Ann", "555", ""), &hasher()).expect("valid");

        let cleared = m
            .clearing_payload(&member.payload, 0b100)
            .expect("a contact");

        let fields: serde_json::Value =
            serde_json::from_str::<serde_json::Value>(&cleared).expect("JSON")["fields"].clone();
        assert_eq!(
            fields,
            serde_json::json!([{"id": 4, "value": "555"}, {"id": 3, "value": ""}])
        );
    }

    #[test]
    fn a_changed_value_changes_the_fingerprint() {
        let m = Matching::new(&export());
        let h = hasher();
        let row = |first: &str| vec![Some("a@example.com".into()), Some(first.into()), None, None];
        let a = m.map(&row("Ann"), &h).expect("valid");
        let b = m.map(&row("Anne"), &h).expect("valid");
        let c = m.map(&row("Ann"), &h).expect("valid");
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn debug_output_shows_no_profile_data() {
        let m = Matching::new(&export());
        let member = m
            .map(
                &[
                    Some("ann@example.com".into()),
                    Some("Ann".into()),
                    None,
                    None,
                ],
                &hasher(),
            )
            .expect("valid");
        let shown = format!("{member:?}");
        assert!(!shown.contains("ann") && !shown.contains("Ann"), "{shown}");
    }

    #[test]
    fn leavers_get_an_unsubscribe_only_payload() {
        let m = Matching::new(&export());
        assert_eq!(
            m.unsubscribe_payload("a@example.com"),
            r#"{"email":"a@example.com","unsubscribe":[{"listid":7}]}"#
        );
    }
}
