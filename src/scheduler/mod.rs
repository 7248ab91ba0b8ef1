//! Schedules (cron in an IANA time zone) and on-demand trigger files. Placeholder until the
//! scheduler branch lands: parsing only.

use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron expression {expr:?} is invalid: {message}")]
    Cron { expr: String, message: String },
    #[error("time zone {zone:?} is not an IANA time zone name (e.g. Europe/Berlin, UTC)")]
    TimeZone { zone: String },
}

#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    #[allow(dead_code)]
    tz: chrono_tz::Tz,
}

impl Schedule {
    pub fn parse(expr: &str, tz: chrono_tz::Tz) -> Result<Schedule, ScheduleError> {
        croner::Cron::from_str(expr).map_err(|e| ScheduleError::Cron {
            expr: expr.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Schedule {
            expr: expr.to_owned(),
            tz,
        })
    }
    pub fn parse_tz(tz: &str) -> Result<chrono_tz::Tz, ScheduleError> {
        chrono_tz::Tz::from_str(tz).map_err(|_| ScheduleError::TimeZone {
            zone: tz.to_owned(),
        })
    }
    pub fn expression(&self) -> &str {
        &self.expr
    }
}
