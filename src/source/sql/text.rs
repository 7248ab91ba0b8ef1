//! Database values read as text: every segment value is text, whatever its SQL type. A type
//! with no text rendering here is a row error naming the column, so the export goes on.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, TypeInfo, ValueRef};

use crate::source::{Row, RowError};

/// Projects a database row onto the requested columns, as text. `hints` holds, per projected
/// column, the decoder that worked last (see [`TextRow::text`]).
pub(super) fn to_row<R: TextRow>(
    row: &R,
    number: u64,
    projection: &[usize],
    columns: &[String],
    hints: &mut [usize],
) -> Result<Row, RowError> {
    let mut values = Vec::with_capacity(projection.len());
    for (&i, hint) in projection.iter().zip(hints.iter_mut()) {
        match row.text(i, hint) {
            Ok(value) => values.push(value),
            Err(type_name) => {
                let column = &columns[i];
                return Err(RowError {
                    number,
                    reason: format!(
                        "column `{column}` has type {type_name}, which cannot be read as text; \
                         cast it to text in the query, e.g. CAST({column} AS TEXT)"
                    ),
                });
            }
        }
    }
    Ok(Row { number, values })
}

/// A database row whose values can be rendered as text.
pub(super) trait TextRow: Send {
    /// Column `i` as text: `Ok(None)` for NULL, `Err(type name)` when no decoder reads it.
    /// `hint` is the decoder that worked last for this column; it is tried first and updated.
    fn text(&self, i: usize, hint: &mut usize) -> Result<Option<String>, String>;
}

/// Implements [`TextRow`] by trying String, integers, floats, bool, then chrono types. Each
/// attempt checks type compatibility before decoding, so a wrong guess costs little and never
/// misreads a value.
macro_rules! impl_text_row {
    ($row:ty) => {
        impl TextRow for $row {
            fn text(&self, i: usize, hint: &mut usize) -> Result<Option<String>, String> {
                let raw = self.try_get_raw(i).map_err(|e| e.to_string())?;
                if raw.is_null() {
                    return Ok(None);
                }
                let decoders: [fn(&$row, usize) -> Option<String>; 11] = [
                    |r, i| r.try_get::<String, _>(i).ok(),
                    |r, i| r.try_get::<i64, _>(i).ok().map(|v| v.to_string()),
                    |r, i| r.try_get::<i32, _>(i).ok().map(|v| v.to_string()),
                    |r, i| r.try_get::<i16, _>(i).ok().map(|v| v.to_string()),
                    |r, i| r.try_get::<f64, _>(i).ok().map(|v| v.to_string()),
                    |r, i| r.try_get::<f32, _>(i).ok().map(|v| v.to_string()),
                    |r, i| r.try_get::<bool, _>(i).ok().map(|v| v.to_string()),
                    |r, i| {
                        r.try_get::<DateTime<Utc>, _>(i)
                            .ok()
                            .map(|v| v.to_rfc3339_opts(SecondsFormat::AutoSi, false))
                    },
                    |r, i| {
                        r.try_get::<NaiveDateTime, _>(i)
                            .ok()
                            .map(|v| v.format("%Y-%m-%dT%H:%M:%S%.f").to_string())
                    },
                    |r, i| r.try_get::<NaiveDate, _>(i).ok().map(|v| v.to_string()),
                    |r, i| r.try_get::<NaiveTime, _>(i).ok().map(|v| v.to_string()),
                ];
                if let Some(value) = decoders.get(*hint).and_then(|decode| decode(self, i)) {
                    return Ok(Some(value));
                }
                for (k, decode) in decoders.iter().enumerate() {
                    if k != *hint
                        && let Some(value) = decode(self, i)
                    {
                        *hint = k;
                        return Ok(Some(value));
                    }
                }
                Err(raw.type_info().name().to_owned())
            }
        }
    };
}

impl_text_row!(SqliteRow);
impl_text_row!(PgRow);
