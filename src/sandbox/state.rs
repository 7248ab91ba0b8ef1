//! In-memory data model of the sandbox: contacts and their list memberships, the exclusion list,
//! bulk import batches, the request log and counters. Everything sits behind one `Mutex` owned by
//! the server; every method here is synchronous and short so the lock is never held for long
//! (and never across an `.await`).
//!
//! With `store_contacts: false` no per-contact data is kept, only counters, so a million-contact
//! benchmark runs in flat memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Deserializer, Serialize};

use super::faults::FaultQueue;
use super::limits::{BULK_WINDOW, GENERAL_WINDOW, PeakWindow};

/// A contact as the sandbox stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct SandboxContact {
    /// Numeric id, as returned (as a string) by the API.
    pub id: u64,
    /// The email as first received; lookups ignore case.
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    /// Custom field values by field id.
    pub fields: BTreeMap<u64, String>,
    /// Tag names.
    pub tags: BTreeSet<String>,
}

// Profile data stays out of Debug output (and so out of logs and panic messages).
impl fmt::Debug for SandboxContact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxContact")
            .field("id", &self.id)
            .field("email", &"<redacted>")
            .field("fields", &self.fields.len())
            .field("tags", &self.tags.len())
            .finish_non_exhaustive()
    }
}

/// What an empty string for a name, the phone or a custom field does in a bulk import. The
/// docs do not say ("Whether empty strings overwrite existing values" is open), so the sandbox
/// does either and tests try both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EmptyValues {
    /// The value is cleared: the contact no longer has one.
    #[default]
    Clear,
    /// The value is left as it was, as if it had not been sent.
    Ignore,
}

/// A contact's status on one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ListStatus {
    Active,
    Unsubscribed,
    /// Mail to the address bounced: ActiveCampaign will not subscribe it again by import.
    Bounced,
}

impl ListStatus {
    /// The `status` code ActiveCampaign gives a contact on a list: 1 active, 2 unsubscribed,
    /// 3 bounced (ActiveCampaign's contact status codes).
    pub fn code(self) -> u8 {
        match self {
            ListStatus::Active => 1,
            ListStatus::Unsubscribed => 2,
            ListStatus::Bounced => 3,
        }
    }
}

/// One request the sandbox received (`/_sandbox` views excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the request arrived (before any injected delay or latency).
    pub at: Instant,
    pub method: String,
    /// Path without the query string, e.g. `/api/3/import/bulk_import`.
    pub path: String,
    /// Status sent back; 0 when a fault dropped the connection.
    pub status: u16,
    /// Number of contacts in a bulk import body (0 for every other request).
    pub contacts: usize,
}

/// Counters over the sandbox's lifetime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SandboxStats {
    /// API requests received (the `/_sandbox` views are not counted).
    pub requests: u64,
    /// Requests answered 403 for a wrong or missing token.
    pub forbidden: u64,
    /// Requests answered 429 by the per-second limit.
    pub too_many_requests: u64,
    /// Bulk imports answered 400 "Rate limit exceeded." by the per-minute limit.
    pub bulk_rate_limited: u64,
    /// Bulk imports rejected as a whole (size, count, malformed JSON or invalid emails).
    pub bulk_rejected: u64,
    /// Bulk imports accepted (queued).
    pub bulk_imports: u64,
    /// Contacts in accepted bulk imports.
    pub contacts_queued: u64,
    /// Contacts a processed bulk import created or updated.
    pub contacts_imported: u64,
    /// Contacts a processed bulk import put in `failure`.
    pub contacts_failed: u64,
    /// Requests answered by an injected fault.
    pub faults_applied: u64,
    /// Distinct contacts stored (always 0 with `store_contacts: false`).
    pub contacts_stored: u64,
    /// Accepted bulk imports not processed yet.
    pub pending_imports: u64,
    /// The most API requests that arrived within one sliding second, whatever their answer:
    /// what all clients of the account sent together, against its per-second limit.
    pub peak_requests_per_second: u64,
    /// The most bulk imports that arrived within one sliding minute, whatever their answer.
    pub peak_bulk_imports_per_minute: u64,
}

/// A numeric id that clients send either as a JSON number or as a string (`"listid": 1` in the
/// examples, a string in the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Id(pub(crate) u64);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positive integer id, as a number or a string")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom("an id cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                v.trim()
                    .parse()
                    .map(Id)
                    .map_err(|_| E::custom("an id must be a positive integer"))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// One entry of a bulk import's `contacts[]` (snake_case, as ActiveCampaign's bulk API).
#[derive(Debug, Deserialize)]
pub(crate) struct ImportContact {
    #[serde(default)]
    pub(crate) email: Option<String>,
    #[serde(default)]
    pub(crate) first_name: Option<String>,
    #[serde(default)]
    pub(crate) last_name: Option<String>,
    #[serde(default)]
    pub(crate) phone: Option<String>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) fields: Vec<ImportField>,
    #[serde(default)]
    pub(crate) subscribe: Vec<ImportList>,
    #[serde(default)]
    pub(crate) unsubscribe: Vec<ImportList>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ImportField {
    pub(crate) id: Id,
    pub(crate) value: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ImportList {
    pub(crate) listid: Id,
}

/// What a processed batch reports through `import/info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BatchOutcome {
    /// Ids of contacts the batch created (empty with `store_contacts: false`).
    pub(crate) success: Vec<u64>,
    /// Emails of contacts that could not be imported, as sent.
    pub(crate) failure: Vec<String>,
}

/// One accepted bulk import.
#[derive(Debug)]
struct Batch {
    /// Until then the import is queued (`import/info` answers `status: false`).
    ready_at: Instant,
    /// From then on, once processed, the import is `completed`; in between it is `active`.
    completes_at: Instant,
    /// Set by the import worker when the contacts were applied.
    outcome: Option<BatchOutcome>,
}

/// Where a batch stands, as `import/info` reports it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BatchStatus<'a> {
    Queued,
    Active,
    Completed(&'a BatchOutcome),
}

/// A stored contact with its list memberships.
#[derive(Debug)]
struct StoredContact {
    contact: SandboxContact,
    lists: BTreeMap<u64, ListStatus>,
}

/// Per-list counters used when contacts are not stored: subscribe and unsubscribe operations
/// applied, not distinct contacts.
#[derive(Debug, Default, Clone, Copy)]
struct ListCounts {
    active: usize,
    unsubscribed: usize,
}

/// All mutable sandbox state.
#[derive(Debug)]
pub(crate) struct State {
    store_contacts: bool,
    /// Stored contacts; a contact's id is its index + 1.
    contacts: Vec<StoredContact>,
    /// Lower-cased email → index in `contacts`.
    by_email: HashMap<String, usize>,
    /// Lower-cased emails on the exclusion list.
    excluded: HashSet<String>,
    /// `(lower-cased email, list)` pairs marked unsubscribed by `Sandbox::unsubscribe` when
    /// contacts are not stored (few, set by tests).
    unsubscribed_marks: HashSet<(String, u64)>,
    list_counts: HashMap<u64, ListCounts>,
    batches: HashMap<String, Batch>,
    /// Batch ids, oldest first: which finished batch to forget once `history` is reached.
    batch_order: VecDeque<String>,
    /// The latest requests, oldest first, at most `history`.
    pub(crate) requests: VecDeque<RequestRecord>,
    /// How many requests and batches are remembered.
    history: usize,
    pub(crate) stats: SandboxStats,
    /// Every API request's arrival, for `peak_requests_per_second`.
    attempts: PeakWindow,
    /// Every bulk import's arrival, for `peak_bulk_imports_per_minute`.
    bulk_attempts: PeakWindow,
    pub(crate) faults: FaultQueue,
    /// Flips on every accepted bulk import: AC documents both `"Success"` and `"success"`.
    capital_success_next: bool,
    /// What an empty value in a bulk import does.
    pub(crate) empty_values: EmptyValues,
}

impl State {
    pub(crate) fn new(store_contacts: bool, history: usize) -> Self {
        Self {
            store_contacts,
            contacts: Vec::new(),
            by_email: HashMap::new(),
            excluded: HashSet::new(),
            unsubscribed_marks: HashSet::new(),
            list_counts: HashMap::new(),
            batches: HashMap::new(),
            batch_order: VecDeque::new(),
            requests: VecDeque::new(),
            history,
            stats: SandboxStats::default(),
            attempts: PeakWindow::new(GENERAL_WINDOW),
            bulk_attempts: PeakWindow::new(BULK_WINDOW),
            faults: FaultQueue::default(),
            capital_success_next: true,
            empty_values: EmptyValues::Clear,
        }
    }

    /// Counts a request's arrival (before faults, admission or the handler) in the peaks.
    pub(crate) fn count_arrival(&mut self, bulk_import: bool) {
        // Taken under the state's lock, so arrivals are counted in order.
        let now = Instant::now();
        self.attempts.hit(now);
        if bulk_import {
            self.bulk_attempts.hit(now);
        }
    }

    /// Counts a request and keeps it in the log, dropping the oldest beyond `history`.
    pub(crate) fn record_request(&mut self, record: RequestRecord) {
        self.stats.requests += 1;
        if self.requests.len() >= self.history {
            self.requests.pop_front();
        }
        if self.history > 0 {
            self.requests.push_back(record);
        }
    }

    /// The key spelling for the next bulk import answer: `"Success"`, then `"success"`, ...
    pub(crate) fn next_success_key(&mut self) -> &'static str {
        let capital = self.capital_success_next;
        self.capital_success_next = !capital;
        if capital { "Success" } else { "success" }
    }

    pub(crate) fn stats(&self) -> SandboxStats {
        let pending = self
            .batches
            .values()
            .filter(|b| b.outcome.is_none())
            .count();
        SandboxStats {
            contacts_stored: self.contacts.len() as u64,
            pending_imports: pending as u64,
            peak_requests_per_second: self.attempts.peak(),
            peak_bulk_imports_per_minute: self.bulk_attempts.peak(),
            ..self.stats.clone()
        }
    }

    pub(crate) fn contact(&self, email: &str) -> Option<SandboxContact> {
        self.stored(email).map(|stored| stored.contact.clone())
    }

    pub(crate) fn contacts(&self) -> Vec<SandboxContact> {
        self.contacts.iter().map(|s| s.contact.clone()).collect()
    }

    /// Contacts with a status on `list_id` (all contacts when `None`), with that status.
    pub(crate) fn contacts_on_list(
        &self,
        list_id: Option<u64>,
    ) -> Vec<(SandboxContact, Option<ListStatus>)> {
        self.contacts
            .iter()
            .filter_map(|stored| match list_id {
                None => Some((stored.contact.clone(), None)),
                Some(list) => stored
                    .lists
                    .get(&list)
                    .map(|status| (stored.contact.clone(), Some(*status))),
            })
            .collect()
    }

    pub(crate) fn list_status(&self, email: &str, list_id: u64) -> Option<ListStatus> {
        if !self.store_contacts {
            let marked = self
                .unsubscribed_marks
                .contains(&(email.to_lowercase(), list_id));
            return marked.then_some(ListStatus::Unsubscribed);
        }
        self.stored(email)?.lists.get(&list_id).copied()
    }

    pub(crate) fn members(&self, list_id: u64, status: ListStatus) -> usize {
        if !self.store_contacts {
            let counts = self.list_counts.get(&list_id).copied().unwrap_or_default();
            return match status {
                ListStatus::Active => counts.active,
                ListStatus::Unsubscribed => counts.unsubscribed,
                ListStatus::Bounced => 0,
            };
        }
        self.contacts
            .iter()
            .filter(|stored| stored.lists.get(&list_id) == Some(&status))
            .count()
    }

    pub(crate) fn exclude(&mut self, email: &str) {
        self.excluded.insert(email.to_lowercase());
    }

    /// As if the person unsubscribed from `list_id`; creates the contact if missing.
    pub(crate) fn unsubscribe(&mut self, email: &str, list_id: u64) {
        if !self.store_contacts {
            self.unsubscribed_marks
                .insert((email.to_lowercase(), list_id));
            return;
        }
        let (index, _) = self.upsert(email);
        self.contacts[index]
            .lists
            .insert(list_id, ListStatus::Unsubscribed);
    }

    /// As if mail to the person bounced on `list_id`; creates the contact if missing. Needs
    /// stored contacts.
    pub(crate) fn bounce(&mut self, email: &str, list_id: u64) {
        if self.store_contacts {
            let (index, _) = self.upsert(email);
            self.contacts[index]
                .lists
                .insert(list_id, ListStatus::Bounced);
        }
    }

    /// A contact's email and its lists with their status, by id.
    pub(crate) fn contact_by_id(
        &self,
        id: u64,
    ) -> Option<(SandboxContact, Vec<(u64, ListStatus)>)> {
        let stored = self
            .contacts
            .get(usize::try_from(id).ok()?.checked_sub(1)?)?;
        let lists = stored.lists.iter().map(|(l, s)| (*l, *s)).collect();
        Some((stored.contact.clone(), lists))
    }

    /// Sets a contact's status on a list (`POST /contactLists`): unlike a bulk import, this
    /// re-subscribes someone who unsubscribed. `false` when there is no such contact.
    pub(crate) fn set_list_status(&mut self, id: u64, list_id: u64, status: ListStatus) -> bool {
        let Some(stored) = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.contacts.get_mut(i))
        else {
            return false;
        };
        stored.lists.insert(list_id, status);
        true
    }

    /// Registers an accepted bulk import; it stays queued until `ready_at` and reports
    /// `completed` from `completes_at` on (once processed).
    pub(crate) fn queue_batch(
        &mut self,
        batch_id: String,
        contacts: usize,
        ready_at: Instant,
        completes_at: Instant,
    ) {
        self.stats.bulk_imports += 1;
        self.stats.contacts_queued += contacts as u64;
        let batch = Batch {
            ready_at,
            completes_at,
            outcome: None,
        };
        self.batches.insert(batch_id.clone(), batch);
        self.batch_order.push_back(batch_id);
        self.forget_finished_batches();
    }

    /// Forgets the oldest batches beyond `history`, but only completed ones: a client may still
    /// be waiting for a queued or active batch, however old.
    fn forget_finished_batches(&mut self) {
        let now = Instant::now();
        let completed = |b: &Batch| b.outcome.is_some() && now >= b.completes_at;
        while self.batch_order.len() > self.history {
            let Some(oldest) = self.batch_order.front() else {
                break;
            };
            if self.batches.get(oldest).is_some_and(|b| !completed(b)) {
                break;
            }
            self.batches.remove(oldest);
            self.batch_order.pop_front();
        }
    }

    pub(crate) fn batch_status(&self, batch_id: &str, now: Instant) -> Option<BatchStatus<'_>> {
        let batch = self.batches.get(batch_id)?;
        let status = match &batch.outcome {
            _ if now < batch.ready_at => BatchStatus::Queued,
            Some(outcome) if now >= batch.completes_at => BatchStatus::Completed(outcome),
            _ => BatchStatus::Active,
        };
        Some(status)
    }

    /// Applies a queued bulk import, following ActiveCampaign's rules: excluded emails and
    /// subscriptions to lists the contact unsubscribed from (or to unknown lists) fail the
    /// contact; everything else is an upsert by email where absent values are left untouched
    /// and empty ones are cleared or ignored as [`EmptyValues`] says.
    pub(crate) fn apply_batch(
        &mut self,
        batch_id: &str,
        contacts: Vec<ImportContact>,
        known_lists: &HashSet<u64>,
    ) {
        let mut outcome = BatchOutcome::default();
        for mut contact in contacts {
            // Emails were validated before the batch was queued; a missing one cannot get here.
            let Some(email) = contact.email.take() else {
                continue;
            };
            let email = email.as_str();
            if self.import_fails(email, &contact, known_lists) {
                self.stats.contacts_failed += 1;
                outcome.failure.push(email.to_owned());
                continue;
            }
            self.stats.contacts_imported += 1;
            if self.store_contacts {
                if let Some(created_id) = self.import_stored(email, contact) {
                    outcome.success.push(created_id);
                }
            } else {
                for list in &contact.subscribe {
                    self.count_list_change(list.listid.0, ListStatus::Active);
                }
                for list in &contact.unsubscribe {
                    self.count_list_change(list.listid.0, ListStatus::Unsubscribed);
                }
            }
        }
        if let Some(batch) = self.batches.get_mut(batch_id) {
            batch.outcome = Some(outcome);
        }
    }

    fn import_fails(
        &self,
        email: &str,
        contact: &ImportContact,
        known_lists: &HashSet<u64>,
    ) -> bool {
        let key = email.to_lowercase();
        if self.excluded.contains(&key) {
            return true;
        }
        let all_lists = contact.subscribe.iter().chain(&contact.unsubscribe);
        if all_lists
            .clone()
            .any(|l| !known_lists.contains(&l.listid.0))
        {
            return true;
        }
        // "Contacts may not be subscribed to lists which they have previously unsubscribed
        // from" (ActiveCampaign bulk import docs); nor can a bounced address be.
        contact.subscribe.iter().any(|list| {
            if self.store_contacts {
                self.by_email.get(&key).is_some_and(|&index| {
                    matches!(
                        self.contacts[index].lists.get(&list.listid.0),
                        Some(ListStatus::Unsubscribed | ListStatus::Bounced)
                    )
                })
            } else {
                self.unsubscribed_marks
                    .contains(&(key.clone(), list.listid.0))
            }
        })
    }

    /// Upserts one bulk contact; returns its id when it was created.
    fn import_stored(&mut self, email: &str, import: ImportContact) -> Option<u64> {
        let empty_values = self.empty_values;
        let (index, created) = self.upsert(email);
        let stored = &mut self.contacts[index];
        let contact = &mut stored.contact;
        for (value, sent) in [
            (&mut contact.first_name, import.first_name),
            (&mut contact.last_name, import.last_name),
            (&mut contact.phone, import.phone),
        ] {
            match sent {
                None => {}
                Some(v) if v.is_empty() && empty_values == EmptyValues::Ignore => {}
                Some(v) if v.is_empty() => *value = None,
                Some(v) => *value = Some(v),
            }
        }
        for field in import.fields {
            match field.value {
                v if v.is_empty() && empty_values == EmptyValues::Ignore => {}
                v if v.is_empty() => {
                    contact.fields.remove(&field.id.0);
                }
                v => {
                    contact.fields.insert(field.id.0, v);
                }
            }
        }
        contact.tags.extend(import.tags);
        for list in import.subscribe {
            stored.lists.insert(list.listid.0, ListStatus::Active);
        }
        for list in import.unsubscribe {
            stored.lists.insert(list.listid.0, ListStatus::Unsubscribed);
        }
        created.then_some(stored.contact.id)
    }

    fn count_list_change(&mut self, list_id: u64, status: ListStatus) {
        let counts = self.list_counts.entry(list_id).or_default();
        match status {
            ListStatus::Active => counts.active += 1,
            ListStatus::Unsubscribed => counts.unsubscribed += 1,
            ListStatus::Bounced => {}
        }
    }

    fn stored(&self, email: &str) -> Option<&StoredContact> {
        let index = *self.by_email.get(&email.to_lowercase())?;
        self.contacts.get(index)
    }

    /// Index of the contact with this email, created (with only the email) if missing.
    fn upsert(&mut self, email: &str) -> (usize, bool) {
        let key = email.to_lowercase();
        if let Some(&index) = self.by_email.get(&key) {
            return (index, false);
        }
        let index = self.contacts.len();
        self.contacts.push(StoredContact {
            contact: SandboxContact {
                id: index as u64 + 1,
                email: email.to_owned(),
                first_name: None,
                last_name: None,
                phone: None,
                fields: BTreeMap::new(),
                tags: BTreeSet::new(),
            },
            lists: BTreeMap::new(),
        });
        self.by_email.insert(key, index);
        (index, true)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn import(json: &str) -> Vec<ImportContact> {
        serde_json::from_str(json).expect("test JSON is valid")
    }

    fn lists() -> HashSet<u64> {
        HashSet::from([1, 2])
    }

    fn apply(state: &mut State, json: &str) -> BatchOutcome {
        let now = Instant::now();
        state.queue_batch("b".to_owned(), 1, now, now);
        state.apply_batch("b", import(json), &lists());
        match state.batch_status("b", now) {
            Some(BatchStatus::Completed(outcome)) => outcome.clone(),
            other => panic!("batch not completed: {other:?}"),
        }
    }

    #[test]
    fn ids_are_accepted_as_numbers_or_strings() {
        let parsed: Vec<ImportList> =
            serde_json::from_str(r#"[{"listid":1},{"listid":"2"}]"#).expect("valid");
        assert_eq!(parsed[0].listid, Id(1));
        assert_eq!(parsed[1].listid, Id(2));
    }

    #[test]
    fn an_empty_value_clears_the_stored_one_or_is_ignored_as_configured() {
        let set = r#"[{"email":"a@example.com","first_name":"Ada","last_name":"L","phone":"555",
            "fields":[{"id":1,"value":"x"},{"id":2,"value":"y"}]}]"#;
        let blank = r#"[{"email":"a@example.com","first_name":"","phone":"",
            "fields":[{"id":1,"value":""}]}]"#;
        let cases = [
            (EmptyValues::Clear, None, None, vec![(2, "y")]),
            (
                EmptyValues::Ignore,
                Some("Ada"),
                Some("555"),
                vec![(1, "x"), (2, "y")],
            ),
        ];
        for (mode, first_name, phone, fields) in cases {
            let mut state = State::new(true, 100);
            state.empty_values = mode;
            apply(&mut state, set);
            apply(&mut state, blank);
            let c = state.contact("a@example.com").expect("stored");
            assert_eq!(c.first_name.as_deref(), first_name, "{mode:?}");
            assert_eq!(c.phone.as_deref(), phone, "{mode:?}");
            assert_eq!(
                c.last_name.as_deref(),
                Some("L"),
                "{mode:?}: not sent, kept"
            );
            let kept: Vec<(u64, &str)> = c.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(kept, fields, "{mode:?}");
        }
    }

    #[test]
    fn an_absent_value_leaves_the_stored_one_untouched() {
        let mut state = State::new(true, 100);
        apply(
            &mut state,
            r#"[{"email":"a@example.com","first_name":"Ada","fields":[{"id":1,"value":"x"}]}]"#,
        );
        apply(
            &mut state,
            r#"[{"email":"A@Example.com","last_name":"Lovelace","fields":[{"id":2,"value":"y"}]}]"#,
        );

        let contact = state.contact("a@example.com").expect("stored");
        assert_eq!(contact.first_name.as_deref(), Some("Ada"));
        assert_eq!(contact.last_name.as_deref(), Some("Lovelace"));
        assert_eq!(contact.fields.len(), 2);
    }

    #[test]
    fn only_newly_created_contacts_are_reported_in_success() {
        let mut state = State::new(true, 100);
        apply(&mut state, r#"[{"email":"a@example.com"}]"#);

        let outcome = apply(
            &mut state,
            r#"[{"email":"a@example.com"},{"email":"b@example.com"}]"#,
        );

        assert_eq!(outcome.success, vec![2]);
    }

    #[test]
    fn subscribing_to_an_unknown_list_fails_the_contact() {
        let mut state = State::new(true, 100);

        let outcome = apply(
            &mut state,
            r#"[{"email":"a@example.com","subscribe":[{"listid":9}]}]"#,
        );

        assert_eq!(outcome.failure, vec!["a@example.com".to_owned()]);
        assert_eq!(state.contact("a@example.com"), None);
    }

    #[test]
    fn without_stored_contacts_members_count_subscriptions() {
        let mut state = State::new(false, 100);

        apply(
            &mut state,
            r#"[{"email":"a@example.com","subscribe":[{"listid":1}]},
                {"email":"b@example.com","subscribe":[{"listid":1}]}]"#,
        );

        assert_eq!(state.members(1, ListStatus::Active), 2);
        assert_eq!(state.contacts(), Vec::new());
    }

    #[test]
    fn without_stored_contacts_a_marked_unsubscribe_still_blocks_resubscribing() {
        let mut state = State::new(false, 100);
        state.unsubscribe("a@example.com", 1);

        let outcome = apply(
            &mut state,
            r#"[{"email":"A@example.com","subscribe":[{"listid":1}]}]"#,
        );

        assert_eq!(outcome.failure, vec!["A@example.com".to_owned()]);
    }

    #[test]
    fn the_request_log_keeps_the_latest_history_and_counts_them_all() {
        let mut state = State::new(false, 3);
        let start = Instant::now();
        for contacts in 0..5 {
            state.record_request(RequestRecord {
                at: start,
                method: "POST".to_owned(),
                path: "/api/3/import/bulk_import".to_owned(),
                status: 200,
                contacts,
            });
        }

        let kept: Vec<usize> = state.requests.iter().map(|r| r.contacts).collect();
        assert_eq!(kept, vec![2, 3, 4]);
        assert_eq!(state.stats().requests, 5);
    }

    #[test]
    fn finished_batches_beyond_history_are_forgotten_but_pending_ones_are_kept() {
        let mut state = State::new(false, 2);
        let now = Instant::now();
        let one = r#"[{"email":"a@example.com"}]"#;
        state.queue_batch("pending".to_owned(), 1, now, now);
        for id in ["b1", "b2", "b3"] {
            state.queue_batch(id.to_owned(), 1, now, now);
            state.apply_batch(id, import(one), &lists());
        }

        // The oldest batch is unprocessed, so nothing behind it is forgotten yet.
        assert!(state.batch_status("pending", now).is_some());
        assert!(state.batch_status("b1", now).is_some());

        state.apply_batch("pending", import(one), &lists());
        state.queue_batch("b4".to_owned(), 1, now, now);

        let known: Vec<&str> = ["pending", "b1", "b2", "b3", "b4"]
            .into_iter()
            .filter(|id| state.batch_status(id, now).is_some())
            .collect();
        assert_eq!(known, vec!["b3", "b4"]);
        assert_eq!(state.stats().bulk_imports, 5);
    }

    #[test]
    fn a_processed_batch_still_reporting_active_is_not_forgotten() {
        let mut state = State::new(false, 1);
        let now = Instant::now();
        let one = r#"[{"email":"a@example.com"}]"#;
        state.queue_batch("active".to_owned(), 1, now, now + Duration::from_secs(60));
        state.apply_batch("active", import(one), &lists());

        state.queue_batch("next".to_owned(), 1, now, now);

        assert_eq!(state.batch_status("active", now), Some(BatchStatus::Active));
    }

    #[test]
    fn debug_output_of_a_contact_hides_its_email() {
        let mut state = State::new(true, 100);
        state.unsubscribe("secret@example.com", 1);

        let debug = format!("{:?}", state.contact("secret@example.com"));

        assert!(!debug.contains("secret"), "{debug}");
    }
}
