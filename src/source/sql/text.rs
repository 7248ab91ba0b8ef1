//! PostgreSQL values read as text by their column's rule (see `types.rs`; SQLite's are read in
//! `sqlite_rows.rs`). A value its rule cannot read (a two-dimensional array) is a row error
//! naming the column, so the export goes on without that row.

use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::{Row as _, ValueRef};

use super::pg_binary;
use crate::source::{Conversion, Row, RowError};

/// Projects a database row onto the requested columns, as text: `projection` holds each
/// column's position in the result, `names` and `conversions` its name and rule.
pub(super) fn to_row<R: TextRow>(
    row: &R,
    number: u64,
    projection: &[usize],
    names: &[String],
    conversions: &[Conversion],
) -> Result<Row, RowError> {
    let mut values = Vec::with_capacity(projection.len());
    for ((&i, name), conversion) in projection.iter().zip(names).zip(conversions) {
        match row.text(i, conversion) {
            Ok(value) => values.push(value),
            Err(reason) => {
                return Err(RowError {
                    number,
                    reason: format!("column {}: {reason}", crate::source::shown_name(name)),
                });
            }
        }
    }
    Ok(Row { number, values })
}

/// A database row whose values can be rendered as text.
pub(super) trait TextRow: Send {
    /// Column `i` as text by `conversion`: `Ok(None)` for NULL, `Err(reason)` when the value
    /// cannot be read that way.
    fn text(&self, i: usize, conversion: &Conversion) -> Result<Option<String>, String>;
}

impl TextRow for PgRow {
    fn text(&self, i: usize, conversion: &Conversion) -> Result<Option<String>, String> {
        let raw = self.try_get_raw(i).map_err(|e| e.to_string())?;
        if raw.is_null() {
            return Ok(None);
        }
        // sqlx asks for every result column in binary; text would mean a changed driver.
        if raw.format() != PgValueFormat::Binary {
            return Err("internal error: the server sent the value as text".to_owned());
        }
        let bytes = raw.as_bytes().map_err(|e| e.to_string())?;
        pg_binary::to_text(conversion, bytes)
    }
}

/// Shortest round-trip decimal: Rust's `Display` for floats never uses an exponent and prints
/// the fewest digits that parse back to the same value. Non-finite values as PostgreSQL
/// spells them.
pub(super) fn float_text<F: Into<f64> + std::fmt::Display + Copy>(value: F) -> String {
    let wide: f64 = value.into();
    if wide.is_nan() {
        "NaN".to_owned()
    } else if wide == f64::INFINITY {
        "Infinity".to_owned()
    } else if wide == f64::NEG_INFINITY {
        "-Infinity".to_owned()
    } else {
        value.to_string()
    }
}
