//! When exports run: cron schedules read in an IANA time zone ([`Schedule`]) and on-demand
//! requests dropped as signal files into the trigger directory ([`claim_all`],
//! [`TriggerWatcher`]). Everything here is pure computation or file handling; the daemon loop
//! decides what to do with a slot or a request, and no export work happens in this module.
//!
//! Files: `schedule.rs` (cron slots), `triggers.rs` (the trigger-file protocol: writing,
//! claiming, rejecting), `triggers/folder.rs` (every access to the trigger folder, through
//! directory descriptors that never follow a link planted there), `watcher.rs` (waking the
//! daemon when a trigger may have arrived).

mod schedule;
mod triggers;
mod watcher;

pub use schedule::{Schedule, ScheduleError};
pub use triggers::{
    Claimed, Rejection, TriggerError, TriggerFile, TriggerRequest, claim_all, write_trigger,
};
pub use watcher::TriggerWatcher;
