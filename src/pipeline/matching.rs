//! Data matching, pure: a source row becomes the contact ActiveCampaign receives, or a
//! rejection with a reason that never quotes the value. Emails follow ActiveCampaign's
//! documented rules (bulk import docs, "Why Bulk Imports Fail"), so a batch is never refused
//! whole because of one address we could have caught.

use serde::Serialize;

use crate::secrets::{FINGERPRINT_LEN, ProfileHasher};
use crate::store::ExportDef;

/// Longest address accepted (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;
/// Characters ActiveCampaign refuses in an address (besides the one `@`).
const FORBIDDEN_EMAIL_CHARS: &[char] =
    &['"', '(', ')', ',', ':', ';', '<', '>', '@', '[', '\\', ']'];

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
    let Some((host, tld)) = domain.rsplit_once('.') else {
        return Err("email domain has no dot");
    };
    if host.is_empty() || host.starts_with('.') || host.ends_with('.') || domain.contains("..") {
        return Err("email domain is malformed");
    }
    if tld.chars().count() < 2 || !tld.chars().all(char::is_alphabetic) {
        return Err("email domain must end in a dot and at least two letters");
    }
    Ok((email.to_owned(), email.to_lowercase()))
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

/// Bytes reserved for a contact's JSON: enough for email, names, phone, list and a few fields.
const PAYLOAD_CAPACITY: usize = 256;

/// A contact in ActiveCampaign's bulk-import shape (snake_case). Absent values are omitted,
/// never sent as "" (that could wipe data in ActiveCampaign).
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
        let fields = export
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

    /// Where the email is among [`Matching::columns`].
    pub fn email_column(&self) -> usize {
        self.email
    }

    /// Maps one row. The fingerprint covers every value sent plus the list and tags, so a
    /// change of data or of mapping re-sends the contact.
    pub fn map(
        &self,
        values: &[Option<String>],
        hasher: &ProfileHasher,
    ) -> Result<Member, &'static str> {
        let get = |i: Option<usize>| -> Option<&str> {
            i.and_then(|i| values.get(i)?.as_deref())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let raw_email = get(Some(self.email)).ok_or("email is empty")?;
        let (email, key) = check_email(raw_email)?;
        let first_name = get(self.first_name);
        let last_name = get(self.last_name);
        let phone = get(self.phone);
        let fields: Vec<FieldValue<'_>> = self
            .fields
            .iter()
            .filter_map(|(id, i)| get(Some(*i)).map(|value| FieldValue { id: *id, value }))
            .collect();
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
        })
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
