//! ActiveCampaign's JSON, read leniently: ids and totals arrive as strings or numbers, keys
//! change case (`Success`/`success`), and error bodies come in five shapes.

use serde::{Deserialize, Deserializer, Serialize};

use crate::redact::mask_addresses;

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
    /// How the export user is shown: username, else email, else id.
    pub fn display(&self) -> String {
        self.username
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| self.email.clone().filter(|e| !e.is_empty()))
            .unwrap_or_else(|| format!("user {}", self.id))
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
    #[serde(default)]
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
/// handled by the retry classifier before this is reached.
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
            out.push((index as usize, mask_addresses(&text)));
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

/// A short summary of an error body in any of ActiveCampaign's shapes, scrubbed of addresses.
pub fn summarise_error(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return if body.is_empty() {
            String::new()
        } else {
            "non-JSON error body".to_owned()
        };
    };
    if let Some(message) = value.get("message").and_then(|m| m.as_str()) {
        return mask_addresses(message);
    }
    if let Some(errors) = value.get("errors").and_then(|e| e.as_array()) {
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
        return mask_addresses(&parts.join("; "));
    }
    String::new()
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
    fn addresses_in_activecampaign_messages_are_scrubbed() {
        let body =
            br#"{"success":0,"failureReasons":[{"contact":0,"failureReason":"bad a@b.co"}]}"#;
        assert_eq!(
            parse_bulk_rejection(body),
            Some(vec![(0, "bad [address]".to_owned())])
        );
        assert_eq!(
            summarise_error(br#"{"message":"x@y.com exists"}"#),
            "[address] exists"
        );
    }

    #[test]
    fn error_bodies_of_every_shape_are_summarised() {
        assert_eq!(
            summarise_error(br#"{"message":"No Result found for _List with id 7"}"#),
            "No Result found for _List with id 7"
        );
        assert_eq!(
            summarise_error(
                br#"{"errors":[{"status":403,"title":"Forbidden","detail":"No permission"}]}"#
            ),
            "Forbidden: No permission"
        );
        assert_eq!(summarise_error(b"{}"), "");
        assert_eq!(summarise_error(b"<html>oops</html>"), "non-JSON error body");
    }
}
