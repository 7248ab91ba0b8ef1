//! ActiveCampaign's JSON, read leniently: ids and totals arrive as strings or numbers, keys
//! change case (`Success`/`success`), and error bodies come in five shapes. Of an error body
//! only the message fields of those shapes are read; the client scrubs them before they go
//! anywhere ([`crate::redact::ServerTextScrubber`]).

use serde::{Deserialize, Deserializer, Serialize};

use crate::escape::untrusted_capped;

/// Longest list name or user name kept from ActiveCampaign, in characters: both are shown in
/// listings and stored with definitions.
const MAX_NAME_CHARS: usize = 100;

/// A name ActiveCampaign gives (a list's, a user's) as it may be shown and stored: escaped
/// and capped, since it is the server's text.
fn shown_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    Ok(untrusted_capped(&name, MAX_NAME_CHARS).into_owned())
}

/// Accepts `"10"` or `10`.
fn id_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected an id, got {other}"
        ))),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct User {
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

impl User {
    /// How the export user is shown: username, else email, else id; escaped and capped.
    pub fn display(&self) -> String {
        let name = self
            .username
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| self.email.clone().filter(|e| !e.is_empty()))
            .unwrap_or_else(|| format!("user {}", self.id));
        untrusted_capped(&name, MAX_NAME_CHARS).into_owned()
    }
}

#[derive(Debug, Deserialize)]
pub struct UserEnvelope {
    pub user: User,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct List {
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    #[serde(default, deserialize_with = "shown_name")]
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct ListEnvelope {
    pub list: List,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Field {
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    #[serde(default)]
    pub title: String,
}

#[derive(Debug, Deserialize)]
pub struct Meta {
    #[serde(default)]
    total: Option<serde_json::Value>,
}

impl Meta {
    /// `meta.total` is a string in ActiveCampaign's examples; accept numbers too.
    pub fn total(&self) -> Option<usize> {
        match self.total.as_ref()? {
            serde_json::Value::String(s) => s.trim().parse().ok(),
            serde_json::Value::Number(n) => n.as_u64().map(|n| n as usize),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct FieldsPage {
    #[serde(default)]
    pub fields: Vec<Field>,
    #[serde(default)]
    pub meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
pub struct BulkAccepted {
    #[serde(rename = "batchId", default)]
    pub batch_id: Option<String>,
}

/// What became of a bulk-import request.
#[derive(Debug, Clone, PartialEq)]
pub enum BulkOutcome {
    Queued {
        batch_id: String,
    },
    /// The whole request was refused because of these contacts (0-based index into
    /// `contacts[]`, ActiveCampaign's reason); nothing was queued.
    Rejected(Vec<(usize, String)>),
}

/// Reads a validation 400 (`failureReasons` with objects). Rate-limit 400s (strings) are
/// handled by the retry classifier before this is reached. The reasons are as the server
/// wrote them: the caller scrubs them.
pub fn parse_bulk_rejection(body: &[u8]) -> Option<Vec<(usize, String)>> {
    #[derive(Deserialize)]
    struct Reason {
        contact: serde_json::Value,
        #[serde(rename = "failureReason", default)]
        failure_reason: Option<String>,
    }
    #[derive(Deserialize)]
    struct Body {
        #[serde(rename = "failureReasons", default)]
        failure_reasons: Vec<serde_json::Value>,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    let mut out = Vec::new();
    for reason in body.failure_reasons {
        let Ok(reason) = serde_json::from_value::<Reason>(reason) else {
            continue;
        };
        let index = match &reason.contact {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if let Some(index) = index {
            let text = reason
                .failure_reason
                .unwrap_or_else(|| "rejected".to_owned());
            out.push((index as usize, text));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `import/info`: `status` is `false` (a boolean) until the import is picked up.
#[derive(Debug, Clone, Deserialize)]
pub struct ImportInfo {
    #[serde(default)]
    pub status: serde_json::Value,
    #[serde(default)]
    pub success: Vec<serde_json::Value>,
    #[serde(default)]
    pub failure: Vec<serde_json::Value>,
}

/// Where a bulk import stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportState {
    Pending,
    Completed,
    /// `failed` or `interrupted`: "will not be retried" by ActiveCampaign.
    Failed,
}

impl ImportInfo {
    pub fn state(&self) -> ImportState {
        match self.status.as_str() {
            Some("completed") => ImportState::Completed,
            Some("failed") | Some("interrupted") => ImportState::Failed,
            _ => ImportState::Pending,
        }
    }

    /// Emails ActiveCampaign did not import (excluded, bounced, unsubscribed from the list...).
    pub fn failed_emails(&self) -> impl Iterator<Item = String> + '_ {
        self.failure
            .iter()
            .filter_map(|v| v.as_str().map(str::to_ascii_lowercase))
    }
}

/// `GET /contacts?email=`: the contacts found. Its `Debug` shows no email.
#[derive(Deserialize)]
pub struct ContactsPage {
    #[serde(default)]
    pub contacts: Vec<ContactRef>,
}

/// A contact as far as acexport reads it: its id and, to check the match, its email.
#[derive(Deserialize)]
pub struct ContactRef {
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    #[serde(default)]
    pub email: String,
}

/// `GET /contacts/{id}/contactLists`.
#[derive(Debug, Deserialize)]
pub struct ContactListsPage {
    #[serde(rename = "contactLists", default)]
    pub contact_lists: Vec<ContactListEntry>,
}

/// A contact's membership of one list. `status` is a string here and a number in the answer
/// to `POST /contactLists` (ActiveCampaign's examples): either is read.
#[derive(Debug, Deserialize)]
pub struct ContactListEntry {
    #[serde(deserialize_with = "id_text")]
    pub list: String,
    #[serde(deserialize_with = "id_text")]
    pub status: String,
}

impl ContactListsPage {
    /// The status code on `list_id`, if the contact has one there that reads as a number.
    pub fn status_on(&self, list_id: i64) -> Option<u8> {
        let list = list_id.to_string();
        self.contact_lists
            .iter()
            .find(|e| e.list.trim() == list)
            .and_then(|e| e.status.trim().parse().ok())
    }
}

/// `POST /contactLists` subscribing a contact: status 1, and `sourceid` 4, which
/// ActiveCampaign asks for "when re-subscribing a contact to a list".
pub fn resubscribe_body(contact_id: &str, list_id: i64) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "contactList")]
        contact_list: ContactList<'a>,
    }
    #[derive(Serialize)]
    struct ContactList<'a> {
        list: i64,
        contact: &'a str,
        status: u8,
        sourceid: u8,
    }
    serde_json::to_vec(&Body {
        contact_list: ContactList {
            list: list_id,
            contact: contact_id,
            status: 1,
            sourceid: 4,
        },
    })
}

/// Every string value of every contact in a bulk-import request body (emails, names,
/// phones, field values, tags): what an answer to it must not repeat.
pub fn bulk_contact_values(body: &[u8]) -> Vec<String> {
    fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) {
        strings(&body["contacts"], &mut out);
    }
    out
}

/// What an error body says, read from ActiveCampaign's shapes only: nothing else of the body
/// is kept, since a server may echo anything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorText {
    /// The message fields, as written: the caller scrubs them.
    Message(String),
    /// Empty, or JSON without a message field.
    NoMessage,
    /// Not JSON.
    Unreadable,
}

/// The message of an error body in any of ActiveCampaign's shapes: `{"message": ...}`, or
/// `{"errors": [{"title": ..., "detail": ...}]}` (titles and details, or plain strings).
pub fn error_text(body: &[u8]) -> ErrorText {
    if body.iter().all(u8::is_ascii_whitespace) {
        return ErrorText::NoMessage;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ErrorText::Unreadable;
    };
    let text = if let Some(message) = value.get("message").and_then(|m| m.as_str()) {
        message.to_owned()
    } else if let Some(errors) = value.get("errors").and_then(|e| e.as_array()) {
        let parts: Vec<String> = errors
            .iter()
            .filter_map(|e| {
                let title = e.get("title").and_then(|t| t.as_str());
                let detail = e
                    .get("detail")
                    .and_then(|t| t.as_str())
                    .filter(|d| !d.is_empty());
                match (title, detail) {
                    (Some(t), Some(d)) => Some(format!("{t}: {d}")),
                    (Some(t), None) => Some(t.to_owned()),
                    (None, Some(d)) => Some(d.to_owned()),
                    (None, None) => e.as_str().map(str::to_owned),
                }
            })
            .collect();
        parts.join("; ")
    } else {
        String::new()
    };
    if text.trim().is_empty() {
        ErrorText::NoMessage
    } else {
        ErrorText::Message(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_arrive_as_strings_or_numbers() {
        let page: FieldsPage =
            serde_json::from_str(r#"{"fields":[{"id":"1","title":"A"}],"meta":{"total":"25"}}"#)
                .expect("parse");
        assert_eq!(page.meta.and_then(|m| m.total()), Some(25));
        let page: FieldsPage =
            serde_json::from_str(r#"{"fields":[{"id":2,"title":"B"}],"meta":{"total":3}}"#)
                .expect("parse");
        assert_eq!(page.fields[0].id, "2");
        assert_eq!(page.meta.and_then(|m| m.total()), Some(3));
    }

    #[test]
    fn bulk_acceptance_reads_either_spelling() {
        for body in [
            r#"{"Success":1,"queued_contacts":1,"batchId":"abc","message":"Contact import queued"}"#,
            r#"{"success":1,"queued_contacts":1,"batchId":"abc","message":"Contact import queued"}"#,
        ] {
            let parsed: BulkAccepted = serde_json::from_str(body).expect("parse");
            assert_eq!(parsed.batch_id.as_deref(), Some("abc"));
        }
    }

    #[test]
    fn a_validation_rejection_names_the_contacts() {
        let body = br#"{"success":0,"message":"JSON payload did not pass validation.","failureReasons":[{"contact":230,"failureReason":"Field 'email' incorrect format"}]}"#;
        assert_eq!(
            parse_bulk_rejection(body),
            Some(vec![(230, "Field 'email' incorrect format".to_owned())])
        );
        let rate =
            br#"{"success":0,"message":"Rate limit exceeded.","failureReasons":["Up to 100"]}"#;
        assert_eq!(parse_bulk_rejection(rate), None);
    }

    #[test]
    fn import_info_status_false_means_pending() {
        let info: ImportInfo = serde_json::from_str(r#"{"status":false}"#).expect("parse");
        assert_eq!(info.state(), ImportState::Pending);
        let info: ImportInfo = serde_json::from_str(
            r#"{"status":"completed","success":["1"],"failure":["X@Example.com"]}"#,
        )
        .expect("parse");
        assert_eq!(info.state(), ImportState::Completed);
        assert_eq!(
            info.failed_emails().collect::<Vec<_>>(),
            vec!["x@example.com"]
        );
    }

    #[test]
    fn a_list_status_reads_as_a_string_or_a_number_and_only_for_that_list() {
        let page: ContactListsPage = serde_json::from_str(
            r#"{"contactLists":[{"list":"1","status":"2","contact":"7"},{"list":3,"status":3}]}"#,
        )
        .expect("parse");
        assert_eq!(
            (page.status_on(1), page.status_on(3), page.status_on(2)),
            (Some(2), Some(3), None)
        );
    }

    #[test]
    fn a_resubscribe_asks_for_status_1_with_the_resubscribe_source() {
        let body = resubscribe_body("42", 7).expect("serialise");
        assert_eq!(
            String::from_utf8(body).expect("utf-8"),
            r#"{"contactList":{"list":7,"contact":"42","status":1,"sourceid":4}}"#
        );
    }

    #[test]
    fn only_the_message_fields_of_an_error_body_are_read() {
        let message = |m: &str| ErrorText::Message(m.to_owned());
        let cases: [(&[u8], ErrorText); 9] = [
            (
                br#"{"message":"No Result found for _List with id 7"}"#,
                message("No Result found for _List with id 7"),
            ),
            (
                br#"{"errors":[{"status":403,"title":"Forbidden","detail":"No permission"}]}"#,
                message("Forbidden: No permission"),
            ),
            (
                br#"{"errors":[{"title":"Email address already exists in the system","detail":""}]}"#,
                message("Email address already exists in the system"),
            ),
            (br#"{"errors":["one","two"]}"#, message("one; two")),
            (
                br#"{"message":"Forbidden","owner":{"name":"Zelda","key":"k"}}"#,
                message("Forbidden"),
            ),
            (br#"{"owner":{"name":"Zelda"}}"#, ErrorText::NoMessage),
            (b"{}", ErrorText::NoMessage),
            (b" \n", ErrorText::NoMessage),
            (b"<html>oops</html>", ErrorText::Unreadable),
        ];
        for (body, read) in cases {
            assert_eq!(error_text(body), read, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn every_value_of_every_contact_in_a_bulk_import_is_collected() {
        let body = br#"{"contacts":[{"email":"a@x.com","first_name":"Augusta","phone":"+44 20",
            "fields":[{"id":3,"value":"gold"}],"tags":["vip"],"subscribe":[{"listid":1}]}]}"#;

        let mut values = bulk_contact_values(body);
        values.sort();

        assert_eq!(values, ["+44 20", "Augusta", "a@x.com", "gold", "vip"]);
    }

    #[test]
    fn names_from_activecampaign_are_escaped_and_capped() {
        let list: ListEnvelope =
            serde_json::from_str(r#"{"list":{"id":"1","name":"News\u001b[2Jletter"}}"#)
                .expect("parse");
        assert_eq!(list.list.name, "News\\u{1b}[2Jletter");
        let user: UserEnvelope = serde_json::from_value(
            serde_json::json!({"user": {"id": 1, "username": "x".repeat(500)}}),
        )
        .expect("parse");
        assert_eq!(user.user.display().chars().count(), MAX_NAME_CHARS + 1);
    }
}
