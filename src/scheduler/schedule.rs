//! Cron schedules read in an IANA time zone, and the slot arithmetic the daemon loop needs:
//! the next slot after an instant, and the one slot to catch up after downtime.
//!
//! Slots are computed by croner 4 on the zone's wall clock (via chrono-tz), so a daily job keeps
//! its local time across DST changes. croner's DST rules, which this module relies on and its
//! tests pin down:
//!
//! - **Spring forward (a wall-clock hour does not exist).** A job whose wall-clock slot falls
//!   in the gap runs once, at the first real instant after the jump (03:00 local), as Vixie
//!   cron does: never skipped silently. croner does this itself for fixed-time jobs (`30 2 * * *`);
//!   for lists and ranges (`30 2,14 * * *`), which croner treats as interval jobs with no slot in
//!   the gap, [`Schedule::next_after`] adds it. Interval jobs (`*/15 * * * *`) have their gap
//!   slots collapse into that one run, which is also their first regular slot after the jump.
//! - **Fall back (a wall-clock hour happens twice).** A fixed-time job runs once, at the first
//!   occurrence. An interval job runs in both occurrences: `0 * * * *` fires at 01:00 daylight
//!   time and again one real hour later at 01:00 standard time, i.e. once per real hour, with
//!   strictly increasing UTC instants.
//!
//! Catch-up follows systemd's `Persistent=`: slots missed while the daemon was down collapse into
//! one run (see [`Schedule::due`]).

use std::fmt;
use std::str::FromStr;

use chrono::offset::LocalResult;
use chrono::{DateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// How far before the newest slot [`Schedule::due`] starts its forward walk. It must exceed
/// the largest UTC offset change (2 h, Antarctica/Troll) so the walk starts on a slot the
/// forward search agrees with, and it bounds the work after a long outage to this window.
const CATCH_UP_REWIND: TimeDelta = TimeDelta::hours(3);

/// A cron schedule parsed for one time zone.
#[derive(Clone)]
pub struct Schedule {
    /// The expression as written, for messages and `Debug`.
    expr: String,
    /// The zone whose wall clock the expression is read in.
    tz: chrono_tz::Tz,
    /// The parsed pattern.
    cron: Cron,
}

/// Why an expression or a time zone name cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "cron expression {expr:?} is invalid: {message} (expected 5 fields \
         `minute hour day-of-month month day-of-week`, 6 with leading seconds, or @hourly, \
         @daily, @weekly, @monthly, @yearly)"
    )]
    Cron { expr: String, message: String },
    #[error("cron expression {expr:?} never matches a real date (e.g. 30 February)")]
    NeverFires { expr: String },
    #[error("time zone {zone:?} is not an IANA time zone name (e.g. Europe/Berlin, UTC)")]
    TimeZone { zone: String },
}

impl Schedule {
    /// Standard 5-field cron, or 6 fields with leading seconds. Also `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly`/`@annually`. Day-of-month and day-of-week combine with
    /// Vixie OR semantics (a day matches if either field does, when both are restricted).
    pub fn parse(expr: &str, tz: chrono_tz::Tz) -> Result<Schedule, ScheduleError> {
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            // A year field is a croner extension; settings promise 5 or 6 fields.
            .year(Year::Disallowed)
            .dom_and_dow(false)
            .build();
        let cron = parser.parse(expr).map_err(|e| ScheduleError::Cron {
            expr: expr.to_owned(),
            message: e.to_string(),
        })?;
        // Without a year field every valid pattern recurs within 28 years, so a pattern with no
        // slot after a fixed reference point never fires (croner gives up at year 5000).
        let reference = DateTime::<Utc>::UNIX_EPOCH.with_timezone(&tz);
        if cron.find_next_occurrence(&reference, false).is_err() {
            return Err(ScheduleError::NeverFires {
                expr: expr.to_owned(),
            });
        }
        Ok(Schedule {
            expr: expr.to_owned(),
            tz,
            cron,
        })
    }

    /// Parses an IANA time zone name such as `Europe/Berlin` or `UTC`.
    pub fn parse_tz(tz: &str) -> Result<chrono_tz::Tz, ScheduleError> {
        chrono_tz::Tz::from_str(tz).map_err(|_| ScheduleError::TimeZone {
            zone: tz.to_owned(),
        })
    }

    /// The zone the expression is read in.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.tz
    }

    /// First slot strictly after `after`. `None` only if croner's search fails, which a
    /// schedule accepted by [`Schedule::parse`] does not do before the year 5000.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let zoned = match self
            .cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
        {
            Ok(slot) => Some(slot.with_timezone(&Utc)),
            Err(error) => {
                tracing::warn!(
                    expression = %self.expr,
                    zone = %self.tz,
                    %error,
                    "Cron search found no next slot"
                );
                None
            }
        };
        match (zoned, self.slot_in_gap(after)) {
            (Some(z), Some(g)) => Some(z.min(g)),
            (z, g) => z.or(g),
        }
    }

    /// The next wall-clock slot after `after` when that time does not exist (it falls in a
    /// spring-forward gap): it runs at the first instant after the gap.
    fn slot_in_gap(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local_after = after.with_timezone(&self.tz);
        let naive = self
            .cron
            .find_next_occurrence(&local_after.naive_local(), false)
            .ok()?;
        if !matches!(self.tz.from_local_datetime(&naive), LocalResult::None) {
            return None;
        }
        // Read with the offset in force before the gap, the wall-clock time lies past the jump;
        // the jump itself is where the offset changes between `after` and that instant.
        let before = local_after.offset().fix();
        let mut low = after;
        let mut high = (naive - before).and_utc();
        if self.tz.offset_from_utc_datetime(&high.naive_utc()).fix() == before {
            return None; // not a gap this schedule's search can explain
        }
        while high - low > TimeDelta::seconds(1) {
            let mid = low + (high - low) / 2;
            if self.tz.offset_from_utc_datetime(&mid.naive_utc()).fix() == before {
                low = mid;
            } else {
                high = mid;
            }
        }
        // The jump happens on a whole second; `high` is its first instant.
        let jump = high.with_nanosecond(0).unwrap_or(high);
        (jump > after).then_some(jump)
    }

    /// Catch-up (systemd `Persistent=`): the latest slot `s` with `last < s <= now`, if any,
    /// where `last` is the slot last fired (or the time the schedule was created). Slots missed
    /// while the daemon was down therefore run once, not once each.
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let first = self.next_after(last).filter(|slot| *slot <= now)?;
        // After a long outage a per-second job has millions of missed slots; start the walk
        // just before the newest one instead of at `last`. The backward search only picks the
        // starting point: the answer always comes from the forward search, so `due` and
        // `next_after` agree on every slot, including the DST edge cases.
        let newest_backward = self
            .cron
            .find_previous_occurrence(&now.with_timezone(&self.tz), true)
            .ok()
            .map(|slot| slot.with_timezone(&Utc));
        let start = match newest_backward {
            Some(slot) if slot - CATCH_UP_REWIND > first => slot - CATCH_UP_REWIND,
            _ => last,
        };
        self.latest_slot_up_to(start, now)
            // Unreachable with real zones (the rewind covers every offset change); walking
            // from `last` is slow but always right.
            .or_else(|| self.latest_slot_up_to(last, now))
    }

    /// The latest forward slot in `(start, now]`, walking slot by slot.
    fn latest_slot_up_to(&self, start: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut latest = None;
        let mut cursor = start;
        while let Some(slot) = self.next_after(cursor).filter(|slot| *slot <= now) {
            latest = Some(slot);
            cursor = slot;
        }
        latest
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("expression", &self.expr)
            .field("zone", &self.tz.name())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};
    use chrono_tz::America::New_York;
    use chrono_tz::Europe::Berlin;
    use chrono_tz::Tz;

    // 2026 transitions. New York: 8 March 02:00 EST -> 03:00 EDT, 1 November 02:00 EDT ->
    // 01:00 EST. Berlin: 29 March 02:00 CET -> 03:00 CEST, 25 October 03:00 CEST -> 02:00 CET.
    const NY_SPRING: (i32, u32, u32) = (2026, 3, 8);
    const NY_FALL: (i32, u32, u32) = (2026, 11, 1);
    const BERLIN_SPRING: (i32, u32, u32) = (2026, 3, 29);
    const BERLIN_FALL: (i32, u32, u32) = (2026, 10, 25);

    fn schedule(expr: &str, tz: Tz) -> Schedule {
        Schedule::parse(expr, tz).expect("test expression parses")
    }

    fn date((y, m, d): (i32, u32, u32)) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid test date")
    }

    /// A wall-clock time that exists once in `tz`.
    fn local(tz: Tz, day: NaiveDate, h: u32, m: u32) -> DateTime<Utc> {
        tz.from_local_datetime(&day.and_hms_opt(h, m, 0).expect("valid time"))
            .single()
            .expect("unambiguous local time")
            .with_timezone(&Utc)
    }

    /// All slots in `[from, until)`.
    fn slots(schedule: &Schedule, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cursor = from - TimeDelta::seconds(1);
        while let Some(slot) = schedule.next_after(cursor).filter(|s| *s < until) {
            out.push(slot);
            cursor = slot;
        }
        out
    }

    fn slots_on(schedule: &Schedule, tz: Tz, day: NaiveDate) -> Vec<DateTime<Utc>> {
        let next_day = day.succ_opt().expect("valid date");
        slots(schedule, local(tz, day, 0, 0), local(tz, next_day, 0, 0))
    }

    fn assert_daily_0930_keeps_local_time(tz: Tz, transition: (i32, u32, u32)) {
        let s = schedule("30 9 * * *", tz);
        let day = date(transition);
        let before = day.pred_opt().expect("valid date");
        let after = day.succ_opt().expect("valid date");
        let got = slots(&s, local(tz, before, 0, 0), local(tz, after, 23, 0));
        let want = [before, day, after].map(|d| local(tz, d, 9, 30));
        assert_eq!(got, want, "{tz}");
        let utc_shift = (got[2] - got[0]) - TimeDelta::days(2);
        assert_eq!(
            utc_shift.num_minutes().abs(),
            60,
            "{tz}: UTC instant shifts by 1 h"
        );
    }

    #[test]
    fn a_daily_0930_job_stays_at_0930_local_across_spring_forward_in_new_york() {
        assert_daily_0930_keeps_local_time(New_York, NY_SPRING);
    }

    #[test]
    fn a_daily_0930_job_stays_at_0930_local_across_spring_forward_in_berlin() {
        assert_daily_0930_keeps_local_time(Berlin, BERLIN_SPRING);
    }

    #[test]
    fn a_daily_0930_job_stays_at_0930_local_across_fall_back_in_new_york() {
        assert_daily_0930_keeps_local_time(New_York, NY_FALL);
    }

    #[test]
    fn a_daily_0930_job_stays_at_0930_local_across_fall_back_in_berlin() {
        assert_daily_0930_keeps_local_time(Berlin, BERLIN_FALL);
    }

    fn assert_gap_job_runs_once_right_after_the_jump(tz: Tz, transition: (i32, u32, u32)) {
        let s = schedule("30 2 * * *", tz);
        let day = date(transition);
        let got = slots_on(&s, tz, day);
        assert_eq!(got, [local(tz, day, 3, 0)], "{tz}: once, at 03:00 local");
        let before = day.pred_opt().expect("valid date");
        let after = day.succ_opt().expect("valid date");
        assert_eq!(slots_on(&s, tz, before), [local(tz, before, 2, 30)], "{tz}");
        assert_eq!(slots_on(&s, tz, after), [local(tz, after, 2, 30)], "{tz}");
    }

    #[test]
    fn a_0230_job_runs_once_at_0300_on_the_spring_forward_day_in_new_york() {
        assert_gap_job_runs_once_right_after_the_jump(New_York, NY_SPRING);
    }

    #[test]
    fn a_0230_job_runs_once_at_0300_on_the_spring_forward_day_in_berlin() {
        assert_gap_job_runs_once_right_after_the_jump(Berlin, BERLIN_SPRING);
    }

    #[test]
    fn a_listed_hour_inside_the_spring_forward_gap_runs_once_right_after_the_jump() {
        // croner alone skips it (it treats lists as interval jobs); never skip silently.
        for (tz, transition) in [(Berlin, BERLIN_SPRING), (New_York, NY_SPRING)] {
            let s = schedule("30 2,14 * * *", tz);
            let day = date(transition);
            assert_eq!(
                slots_on(&s, tz, day),
                [local(tz, day, 3, 0), local(tz, day, 14, 30)],
                "{tz}"
            );
        }
    }

    #[test]
    fn an_interval_job_runs_once_at_the_jump_not_once_per_missing_slot() {
        let s = schedule("*/15 * * * *", New_York);
        let day = date(NY_SPRING);
        let got: Vec<_> = slots_on(&s, New_York, day)
            .into_iter()
            .filter(|t| *t >= local(New_York, day, 1, 30) && *t <= local(New_York, day, 3, 30))
            .collect();
        let expected: Vec<_> = [(1, 30), (1, 45), (3, 0), (3, 15), (3, 30)]
            .iter()
            .map(|(h, m)| local(New_York, day, *h, *m))
            .collect();
        assert_eq!(got, expected);
    }

    fn assert_repeated_hour_job_runs_once_at_first_occurrence(
        tz: Tz,
        transition: (i32, u32, u32),
        hour: u32,
    ) {
        let s = schedule(&format!("30 {hour} * * *"), tz);
        let day = date(transition);
        let first = tz
            .from_local_datetime(&day.and_hms_opt(hour, 30, 0).expect("valid time"))
            .earliest()
            .expect("time exists")
            .with_timezone(&Utc);
        assert_eq!(slots_on(&s, tz, day), [first], "{tz}");
    }

    #[test]
    fn a_0130_job_runs_once_at_the_first_occurrence_on_the_fall_back_day_in_new_york() {
        // New York repeats 01:00-02:00.
        assert_repeated_hour_job_runs_once_at_first_occurrence(New_York, NY_FALL, 1);
    }

    #[test]
    fn a_0230_job_runs_once_at_the_first_occurrence_on_the_fall_back_day_in_berlin() {
        // Berlin repeats 02:00-03:00.
        assert_repeated_hour_job_runs_once_at_first_occurrence(Berlin, BERLIN_FALL, 2);
    }

    fn assert_hourly_job_fires_once_per_real_hour(tz: Tz, transition: (i32, u32, u32)) {
        let s = schedule("0 * * * *", tz);
        let day = date(transition);
        let got = slots(&s, local(tz, day, 0, 0), local(tz, day, 5, 0));
        // 00:00 to 05:00 local with a repeated hour is six real hours: the repeated hour fires
        // twice, once in each occurrence, one real hour apart.
        assert_eq!(got.len(), 6, "{tz}: {got:?}");
        for pair in got.windows(2) {
            assert_eq!(pair[1] - pair[0], TimeDelta::hours(1), "{tz}: {got:?}");
        }
    }

    #[test]
    fn an_hourly_job_over_the_fall_back_night_fires_once_per_real_hour_in_new_york() {
        assert_hourly_job_fires_once_per_real_hour(New_York, NY_FALL);
    }

    #[test]
    fn an_hourly_job_over_the_fall_back_night_fires_once_per_real_hour_in_berlin() {
        assert_hourly_job_fires_once_per_real_hour(Berlin, BERLIN_FALL);
    }

    #[test]
    fn due_is_none_just_after_the_slot_that_fired() {
        let s = schedule("30 9 * * *", Berlin);
        let fired = local(Berlin, date((2026, 5, 4)), 9, 30);
        assert_eq!(s.due(fired, fired + TimeDelta::seconds(1)), None);
    }

    #[test]
    fn due_after_three_missed_slots_is_only_the_latest_one() {
        let s = schedule("30 9 * * *", New_York);
        let fired = local(New_York, date((2026, 5, 4)), 9, 30);
        let now = local(New_York, date((2026, 5, 7)), 10, 0);
        assert_eq!(
            s.due(fired, now),
            Some(local(New_York, date((2026, 5, 7)), 9, 30))
        );
    }

    #[test]
    fn due_is_none_before_the_first_slot_after_creation() {
        let s = schedule("30 9 * * *", Berlin);
        let created = local(Berlin, date((2026, 5, 4)), 9, 31);
        assert_eq!(
            s.due(created, local(Berlin, date((2026, 5, 5)), 9, 29)),
            None
        );
    }

    #[test]
    fn due_includes_a_slot_exactly_at_now() {
        let s = schedule("30 9 * * *", Berlin);
        let slot = local(Berlin, date((2026, 5, 5)), 9, 30);
        assert_eq!(s.due(slot - TimeDelta::days(1), slot), Some(slot));
    }

    #[test]
    fn due_after_a_month_down_with_a_per_minute_job_is_the_latest_minute() {
        let s = schedule("* * * * *", Berlin);
        let now = local(Berlin, date((2026, 6, 30)), 12, 0) + TimeDelta::seconds(42);
        let last = now - TimeDelta::days(30);
        assert_eq!(
            s.due(last, now),
            Some(local(Berlin, date((2026, 6, 30)), 12, 0))
        );
    }

    #[test]
    fn due_over_the_spring_forward_night_returns_the_0300_slot_once() {
        let s = schedule("30 2 * * *", Berlin);
        let day = date(BERLIN_SPRING);
        let fired = local(Berlin, day.pred_opt().expect("valid date"), 2, 30);
        let jump = local(Berlin, day, 3, 0);
        assert_eq!(s.due(fired, jump + TimeDelta::minutes(5)), Some(jump));
        assert_eq!(s.due(jump, local(Berlin, day, 23, 0)), None);
    }

    #[test]
    fn due_over_the_fall_back_night_returns_the_first_occurrence_once() {
        let s = schedule("30 1 * * *", New_York);
        let day = date(NY_FALL);
        let fired = local(New_York, day.pred_opt().expect("valid date"), 1, 30);
        let first = New_York
            .from_local_datetime(&day.and_hms_opt(1, 30, 0).expect("valid time"))
            .earliest()
            .expect("time exists")
            .with_timezone(&Utc);
        // `now` is 01:45 standard time, after the second 01:30.
        let now = first + TimeDelta::minutes(75);
        assert_eq!(s.due(fired, now), Some(first));
        assert_eq!(s.due(first, now), None);
    }

    #[test]
    fn parses_six_fields_with_leading_seconds() {
        let s = schedule("15 30 9 * * *", Berlin);
        let day = date((2026, 5, 4));
        let slot = s.next_after(local(Berlin, day, 0, 0));
        assert_eq!(
            slot,
            Some(local(Berlin, day, 9, 30) + TimeDelta::seconds(15))
        );
    }

    #[test]
    fn parses_the_daily_nickname_as_local_midnight() {
        let s = schedule("@daily", Berlin);
        let day = date((2026, 5, 4));
        let slot = s.next_after(local(Berlin, day, 12, 0));
        assert_eq!(
            slot,
            Some(local(Berlin, day.succ_opt().expect("valid"), 0, 0))
        );
    }

    #[test]
    fn restricted_day_of_month_and_day_of_week_match_either_one() {
        // Midnight on the 13th OR on Fridays. 2026-05-01 is a Friday, not the 13th.
        let s = schedule("0 0 13 * 5", chrono_tz::UTC);
        let slot = s.next_after(Utc.with_ymd_and_hms(2026, 4, 30, 12, 0, 0).unwrap());
        assert_eq!(
            slot,
            Some(Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap())
        );
    }

    #[test]
    fn rejects_a_seven_field_expression_naming_it() {
        let err = Schedule::parse("0 0 12 * * * 2030", Berlin).expect_err("must be refused");
        assert!(matches!(err, ScheduleError::Cron { .. }), "{err:?}");
        assert!(err.to_string().contains("\"0 0 12 * * * 2030\""), "{err}");
    }

    #[test]
    fn rejects_an_out_of_range_minute_naming_the_expression() {
        let err = Schedule::parse("61 * * * *", Berlin).expect_err("must be refused");
        assert!(err.to_string().contains("\"61 * * * *\""), "{err}");
    }

    #[test]
    fn rejects_an_expression_that_never_fires() {
        let err = Schedule::parse("0 0 30 2 *", Berlin).expect_err("must be refused");
        assert!(matches!(err, ScheduleError::NeverFires { .. }), "{err:?}");
        assert!(err.to_string().contains("\"0 0 30 2 *\""), "{err}");
    }

    #[test]
    fn rejects_an_unknown_time_zone_naming_it() {
        let err = Schedule::parse_tz("Europe/Atlantis").expect_err("must be refused");
        assert!(err.to_string().contains("\"Europe/Atlantis\""), "{err}");
    }

    #[test]
    fn debug_shows_the_expression_and_the_zone() {
        let shown = format!("{:?}", schedule("30 9 * * *", Berlin));
        assert_eq!(
            shown,
            r#"Schedule { expression: "30 9 * * *", zone: "Europe/Berlin" }"#
        );
    }
}
