//! What an alert says, the same for every channel: the webhook's JSON body and the command's
//! environment carry exactly these facts. Only facts acexport can vouch for go in: names of
//! definitions, the run id and status, counts, times, the failure's kind, this machine's name,
//! and the run's error with anything that could be a profile value masked. Never a profile
//! value, never a link.

use chrono::Utc;
use serde::Serialize;

use crate::escape::untrusted_capped;
use crate::redact::{mask_addresses, mask_phone_numbers};
use crate::store::alerts::{AlertEvent, FailureKind};
use crate::store::{RunCounts, RunStatus, to_text};

/// Longest error text an alert carries, in characters: as long as the server text the run
/// history keeps; the whole error is in `acexport runs show`.
const MAX_ERROR_CHARS: usize = 300;
/// Longest host name shown (a DNS name is at most 253 characters).
const MAX_HOST_CHARS: usize = 253;
/// What a quoted span of an error shows instead of its content.
const QUOTED: &str = "[value]";

/// One alert. Its JSON form is the webhook's body.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Random, the same over every attempt and channel, so a receiver can drop a repeat.
    pub id: String,
    pub event: AlertEvent,
    /// One line saying what happened, for people.
    pub summary: String,
    pub export: Option<String>,
    pub connection: Option<String>,
    pub run_id: Option<i64>,
    pub status: Option<RunStatus>,
    /// For a failed run: what kind of failure, the unit "the same failure again" is told by.
    pub failure: Option<FailureKind>,
    /// The run's error, with quoted text, addresses and long numbers masked, escaped and cut
    /// ([`scrub_error`]).
    pub error: Option<String>,
    pub counts: Option<RunCounts>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// When the alert was made.
    pub at: String,
    /// The name of the machine acexport runs on.
    pub host: String,
    pub version: &'static str,
}

/// The facts of a finished run an alert is made from.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub export: String,
    pub connection: String,
    pub run_id: Option<i64>,
    pub status: RunStatus,
    pub failure: Option<FailureKind>,
    /// The run's error as recorded; the alert carries it scrubbed.
    pub error: Option<String>,
    pub counts: RunCounts,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Definition names (export, connection, segments) that stay readable where the error
    /// quotes them; any other quoted text is masked.
    pub names: Vec<String>,
}

impl Alert {
    /// The alert `event` about a finished run.
    pub fn for_run(id: String, event: AlertEvent, run: &RunFacts) -> Alert {
        let run_part = run
            .run_id
            .map(|id| format!(" (run {id})"))
            .unwrap_or_default();
        let summary = match event {
            AlertEvent::Failed => format!(
                "Export {} failed{run_part}: {} error",
                run.export,
                run.failure.unwrap_or(FailureKind::Internal)
            ),
            AlertEvent::Partial if run.counts.failed > 0 => format!(
                "Export {} ended partial{run_part}: {} contacts not delivered",
                run.export, run.counts.failed
            ),
            AlertEvent::Partial => format!(
                "Export {} ended partial{run_part}: imports not confirmed yet",
                run.export
            ),
            AlertEvent::Recovered => format!("Export {} succeeded again{run_part}", run.export),
            AlertEvent::KeyRejected => format!(
                "ActiveCampaign rejected the API key of connection {} (export {}{run_part})",
                run.connection, run.export
            ),
            AlertEvent::KeyAccepted => format!(
                "ActiveCampaign accepts the API key of connection {} again (export {}{run_part})",
                run.connection, run.export
            ),
            AlertEvent::Test => format!("Test alert for export {}", run.export),
        };
        Alert {
            id,
            event,
            summary,
            export: Some(run.export.clone()),
            connection: Some(run.connection.clone()),
            run_id: run.run_id,
            status: Some(run.status),
            failure: run.failure,
            error: run.error.as_deref().map(|e| scrub_error(e, &run.names)),
            counts: Some(run.counts),
            started_at: run.started_at.clone(),
            finished_at: run.finished_at.clone(),
            at: to_text(Utc::now()),
            host: host_name(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// The sample `acexport alerts test` sends: marked `test`, about no real export.
    pub fn sample(id: String) -> Alert {
        let host = host_name();
        Alert {
            id,
            event: AlertEvent::Test,
            summary: format!("Test alert from acexport on {host}: alerts reach this channel"),
            export: None,
            connection: None,
            run_id: None,
            status: None,
            failure: None,
            error: None,
            counts: None,
            started_at: None,
            finished_at: None,
            at: to_text(Utc::now()),
            host,
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// The body the webhook sends (and the command gets in `ACEXPORT_ALERT_JSON`).
    pub fn to_json(&self) -> String {
        // Strings, numbers and words only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The command's environment: `ACEXPORT_` and the field's name in capitals, for each fact
    /// the alert has, each count on its own, and the whole body as `ACEXPORT_ALERT_JSON`.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(&str, Option<String>)> = vec![
            ("ALERT_ID", Some(self.id.clone())),
            ("EVENT", Some(self.event.to_string())),
            ("SUMMARY", Some(self.summary.clone())),
            ("EXPORT", self.export.clone()),
            ("CONNECTION", self.connection.clone()),
            ("RUN_ID", self.run_id.map(|id| id.to_string())),
            ("STATUS", self.status.map(|s| s.to_string())),
            ("FAILURE", self.failure.map(|f| f.to_string())),
            ("ERROR", self.error.clone()),
            ("STARTED_AT", self.started_at.clone()),
            ("FINISHED_AT", self.finished_at.clone()),
            ("AT", Some(self.at.clone())),
            ("HOST", Some(self.host.clone())),
        ];
        if let Some(c) = &self.counts {
            for (name, n) in [
                ("ROWS_READ", c.rows_read),
                ("REJECTED", c.rejected),
                ("DUPLICATES", c.duplicates),
                ("UNCHANGED", c.unchanged),
                ("UPSERTED", c.upserted),
                ("UNSUBSCRIBED", c.unsubscribed),
                ("SUPPRESSED", c.suppressed),
                ("FAILED", c.failed),
            ] {
                vars.push((name, Some(n.to_string())));
            }
        }
        vars.push(("ALERT_JSON", Some(self.to_json())));
        vars.into_iter()
            .filter_map(|(name, value)| Some((format!("ACEXPORT_{name}"), value?)))
            .collect()
    }
}

/// A run's error made fit to leave the machine. A run's error can quote what a source or a
/// server said (a database's message may quote a value it could not read), so: addresses and
/// runs of 7 or more digits are masked as in server text, text in double or single quotes is
/// masked unless it is one of `names`, control characters are escaped and the length is cut.
/// Backticks (column names, never values) and unquoted words of acexport's own messages stay.
pub fn scrub_error(text: &str, names: &[String]) -> String {
    let text = mask_quoted(&mask_phone_numbers(&mask_addresses(text)), names);
    untrusted_capped(&text, MAX_ERROR_CHARS).into_owned()
}

/// `text` with each span in `"` or `'` replaced by [`QUOTED`], unless its content is one of
/// `names`. A quote opens only at the start of a word (so the apostrophe of "export's" opens
/// nothing) and closes only at the end of one; an unclosed quote masks the rest.
fn mask_quoted(text: &str, names: &[String]) -> String {
    let chars: Vec<char> = text.chars().collect();
    let word = |i: Option<usize>| {
        i.and_then(|i| chars.get(i))
            .is_some_and(|c| c.is_alphanumeric())
    };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let opens = matches!(c, '"' | '\'') && !word(i.checked_sub(1));
        if !opens {
            out.push(c);
            i += 1;
            continue;
        }
        let close = (i + 1..chars.len()).find(|&j| chars[j] == c && !word(Some(j + 1)));
        let end = close.unwrap_or(chars.len());
        let inner: String = chars[i + 1..end].iter().collect();
        out.push(c);
        if names.contains(&inner) {
            out.push_str(&inner);
        } else {
            out.push_str(QUOTED);
        }
        if close.is_some() {
            out.push(c);
        }
        i = end + 1;
    }
    out
}

/// This machine's name, as `uname -n` gives it, escaped and cut.
fn host_name() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy();
    untrusted_capped(&name, MAX_HOST_CHARS).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["weekly", "crm", "vip"].map(String::from).to_vec()
    }

    #[test]
    fn an_error_keeps_definition_names_and_masks_what_a_source_could_have_quoted() {
        let cases = [
            (
                "segment \"vip\": the segment query failed on postgres://u:***@db/crm: invalid \
                 input syntax for type integer: \"Jane Doe\"",
                "segment \"vip\": the segment query failed on [address] invalid input syntax for \
                 type integer: \"[value]\"",
            ),
            (
                "Key (email)=(jane.doe@example.com) already exists",
                "Key [address] already exists",
            ),
            ("call +1 555-123-4567 now", "call [number] now"),
            (
                "value 'Jane' in column `first_name`",
                "value '[value]' in column `first_name`",
            ),
            (
                "the export's list and the segment's file",
                "the export's list and the segment's file",
            ),
            ("unclosed \"Jane Doe", "unclosed \"[value]"),
            ("line\nFORGED", "line\\nFORGED"),
        ];
        for (error, shown) in cases {
            assert_eq!(scrub_error(error, &names()), shown, "for {error:?}");
        }
    }

    #[test]
    fn a_long_error_is_cut() {
        let shown = scrub_error(&"x".repeat(1000), &[]);
        assert_eq!(shown.chars().count(), MAX_ERROR_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    fn facts() -> RunFacts {
        RunFacts {
            export: "weekly".into(),
            connection: "crm".into(),
            run_id: Some(12),
            status: RunStatus::Failed,
            failure: Some(FailureKind::Source),
            error: Some("segment \"vip\": cannot open /srv/vip.csv: No such file".into()),
            counts: RunCounts {
                rows_read: 3,
                ..RunCounts::default()
            },
            started_at: Some("2026-01-01T06:30:00.000Z".into()),
            finished_at: Some("2026-01-01T06:30:01.000Z".into()),
            names: names(),
        }
    }

    #[test]
    fn the_body_names_the_export_run_status_kind_and_host() {
        let alert = Alert::for_run("ab12".into(), AlertEvent::Failed, &facts());

        let body: serde_json::Value = serde_json::from_str(&alert.to_json()).expect("json");

        assert_eq!(body["id"], "ab12");
        assert_eq!(body["event"], "failed");
        assert_eq!(body["export"], "weekly");
        assert_eq!(body["connection"], "crm");
        assert_eq!(body["run_id"], 12);
        assert_eq!(body["status"], "failed");
        assert_eq!(body["failure"], "source");
        assert_eq!(body["counts"]["rows_read"], 3);
        assert_eq!(
            body["summary"],
            "Export weekly failed (run 12): source error"
        );
        assert_eq!(
            body["error"],
            "segment \"vip\": cannot open /srv/vip.csv: No such file"
        );
        assert!(!body["host"].as_str().unwrap_or_default().is_empty());
    }

    #[test]
    fn the_environment_carries_each_fact_and_the_body() {
        let alert = Alert::for_run("ab12".into(), AlertEvent::Failed, &facts());

        let env: std::collections::BTreeMap<String, String> =
            alert.environment().into_iter().collect();

        assert_eq!(env["ACEXPORT_EVENT"], "failed");
        assert_eq!(env["ACEXPORT_EXPORT"], "weekly");
        assert_eq!(env["ACEXPORT_RUN_ID"], "12");
        assert_eq!(env["ACEXPORT_STATUS"], "failed");
        assert_eq!(env["ACEXPORT_FAILURE"], "source");
        assert_eq!(env["ACEXPORT_ROWS_READ"], "3");
        assert_eq!(env["ACEXPORT_ALERT_JSON"], alert.to_json());
    }
}
