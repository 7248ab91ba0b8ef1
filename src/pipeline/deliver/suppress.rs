//! Contacts ActiveCampaign will not subscribe, and members acexport unsubscribed coming back.
//!
//! `import/info` lists the contacts an import did not take by email only, without a reason.
//! Its documented causes are an invalid email (checked before sending), the exclusion or bounce
//! list, an unsubscribe from the list and the account's contact limit. So each contact in
//! `failure` is looked up: its status on the list tells an unsubscribe (2) or a bounce (3)
//! apart; no status there, or no contact at all, leaves the exclusion or bounce list (or, for a
//! new address, the contact limit), which ActiveCampaign's answers do not tell apart. All are
//! `suppressed`, not failures: sending them again changes nothing until their values change or
//! the recheck days pass. A lookup that fails leaves the contact `failed`, to be tried again.
//!
//! A member acexport unsubscribed on leave (`left`) who returns is re-subscribed with
//! `contactLists` status 1 before the import, since bulk imports never re-subscribe anyone.
//! Only when the list says unsubscribed: a bounce is not undone.

use crate::activecampaign::{AcError, Client};
use crate::store::delivery::{OutboxItem, OutboxKind, SuppressReason};

use super::confirm::BatchResult;

/// ActiveCampaign's status codes of a contact on a list (its contact status codes).
const STATUS_UNSUBSCRIBED: u8 = 2;
const STATUS_BOUNCED: u8 = 3;

/// Why a contact in `failure` was not imported, from what the lookup found: `None` when
/// ActiveCampaign holds no such contact, else its status code on the list, if any.
fn suppress_reason(found: Option<Option<u8>>) -> SuppressReason {
    match found {
        Some(Some(STATUS_UNSUBSCRIBED)) => SuppressReason::Unsubscribed,
        Some(Some(STATUS_BOUNCED)) => SuppressReason::Bounced,
        _ => SuppressReason::Excluded,
    }
}

/// The contact's status on the list, `None` inside when it has none; `None` outside when
/// ActiveCampaign holds no such contact.
async fn standing(
    client: &Client,
    email: &str,
    list_id: i64,
) -> Result<Option<(String, Option<u8>)>, AcError> {
    let Some(id) = client.find_contact(email).await? else {
        return Ok(None);
    };
    let status = client.list_status(&id, list_id).await?;
    Ok(Some((id, status)))
}

/// Sorts the contacts an import did not take into suppressed ones and real failures.
/// Leavers are not looked up: an unsubscribe that did not go through is a failure.
pub(super) async fn sort_out(
    client: &Client,
    list_id: i64,
    not_imported: Vec<OutboxItem>,
    failure_reason: &str,
    result: &mut BatchResult,
) {
    for item in not_imported {
        if item.kind == OutboxKind::Leave || result.fatal.is_some() {
            result.failed.push((item, failure_reason.to_owned()));
            continue;
        }
        match standing(client, &item.email, list_id).await {
            Ok(found) => {
                let reason = suppress_reason(found.map(|(_, status)| status));
                result.suppressed.push((item, reason));
            }
            Err(e) => {
                let reason = format!("{failure_reason}; looking it up failed: {e}");
                if e.stops_the_run() {
                    result.fatal = Some(e);
                }
                result.failed.push((item, reason));
            }
        }
    }
}

/// Re-subscribes the returning members of a batch that acexport itself unsubscribed. One
/// whose re-subscribe fails is taken out of the batch as failed (it stays `left`, so the next
/// run tries again); a contact ActiveCampaign no longer holds is imported as new.
pub(super) async fn resubscribe_returning(
    client: &Client,
    list_id: i64,
    items: &mut Vec<OutboxItem>,
    result: &mut BatchResult,
) {
    if !items.iter().any(|i| i.kind == OutboxKind::Return) {
        return;
    }
    let mut kept = Vec::with_capacity(items.len());
    for item in items.drain(..) {
        if item.kind != OutboxKind::Return || result.fatal.is_some() {
            kept.push(item);
            continue;
        }
        let done = match standing(client, &item.email, list_id).await {
            Ok(Some((id, Some(STATUS_UNSUBSCRIBED)))) => client.resubscribe(&id, list_id).await,
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => kept.push(item),
            Err(e) => {
                let reason = format!("could not re-subscribe a returning member: {e}");
                if e.stops_the_run() {
                    result.fatal = Some(e);
                }
                result.failed.push((item, reason));
            }
        }
    }
    *items = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_on_the_list_tells_why_a_contact_was_not_imported() {
        let cases = [
            (Some(Some(2)), SuppressReason::Unsubscribed),
            (Some(Some(3)), SuppressReason::Bounced),
            (Some(Some(1)), SuppressReason::Excluded),
            (Some(Some(0)), SuppressReason::Excluded),
            (Some(None), SuppressReason::Excluded),
            (None, SuppressReason::Excluded),
        ];
        for (found, reason) in cases {
            assert_eq!(suppress_reason(found), reason, "{found:?}");
        }
    }
}
