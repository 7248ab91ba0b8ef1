//! What a column holds and how its values become the text sent to ActiveCampaign: one rule per
//! type, decided from the column's type before any row is read. `segment add` and `segment
//! show` list it, `export add`/`export update` refuse to map a column whose type has no rule,
//! and a run refuses such a mapped column before sending anything.
//!
//! The rules are stored with a segment (as JSON), so the variant names are stored words.

use serde::{Deserialize, Serialize};

/// A source column's type as the source names it, and how its values convert to text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnType {
    /// The type as the source names it (`NUMERIC`, `TEXT[]`, `BOOLEAN`), so the user can find
    /// it in their schema.
    pub name: String,
    /// How values become text, or why they cannot.
    pub conversion: Conversion,
}

impl ColumnType {
    /// A CSV column: every value is text.
    pub fn csv() -> ColumnType {
        ColumnType {
            name: "text".to_owned(),
            conversion: Conversion::Text,
        }
    }

    /// A JSONL key: each line's value, whatever its JSON type.
    pub fn jsonl() -> ColumnType {
        ColumnType {
            name: "JSON value".to_owned(),
            conversion: Conversion::JsonValue,
        }
    }

    /// Why values of this column cannot be exported, if they cannot.
    pub fn refusal(&self) -> Option<&str> {
        match &self.conversion {
            Conversion::Refused { reason } => Some(reason),
            _ => None,
        }
    }
}

/// How a value of one type becomes text. NULL is always "no value" (nothing sent), whatever
/// the type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum Conversion {
    /// Text as it is (text, varchar, char, name, citext, enum labels, XML).
    Text,
    /// Integers in decimal.
    Integer,
    /// NUMERIC/DECIMAL in plain decimal with the value's own scale, as PostgreSQL prints it:
    /// never an exponent, trailing zeros neither added nor removed (NUMERIC(10,2) 1.5 is
    /// `1.50`). `NaN`, `Infinity` and `-Infinity` as spelt by PostgreSQL.
    Decimal,
    /// Floating point: the shortest decimal that reads back as the same number, never an
    /// exponent; `NaN`, `Infinity`, `-Infinity`.
    Float,
    /// `true` or `false`.
    Boolean,
    /// Lowercase hyphenated, `a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11`.
    Uuid,
    /// `YYYY-MM-DD`.
    Date,
    /// `HH:MM:SS`, with `.fff` or `.ffffff` when the fraction is not zero.
    Time,
    /// [`Conversion::Time`] followed by the offset, `+02:00`.
    TimeWithZone,
    /// `YYYY-MM-DDTHH:MM:SS`, fraction as for [`Conversion::Time`].
    Timestamp,
    /// A point in time, in UTC: [`Conversion::Timestamp`] followed by `Z`.
    TimestampUtc,
    /// JSON as compact text: no whitespace outside strings.
    Json,
    /// A one-dimensional array as ActiveCampaign's multi-value form `||a||b||` (its value
    /// for checkbox and list fields), each element by `element`. NULL and empty elements are
    /// left out; an array with none left is no value.
    MultiValue { element: Box<Conversion> },
    /// SQLite, which types values, not columns: each value by what it holds (an integer in
    /// decimal, a real as [`Conversion::Float`], text as it is; a BLOB value is a row error).
    SqliteValue,
    /// A SQLite column declared BOOLEAN: integers `0` as `false` and others as `true`, other
    /// values as [`Conversion::SqliteValue`].
    SqliteBoolean,
    /// A JSONL value: a string as it is, anything else as its JSON text.
    JsonValue,
    /// No text rule: the column cannot be exported, for `reason`.
    Refused { reason: String },
}

impl Conversion {
    /// The rule in a few words, for `segment add`/`segment show`.
    pub fn describe(&self) -> String {
        match self {
            Conversion::Text => "as is".to_owned(),
            Conversion::Integer => "decimal".to_owned(),
            Conversion::Decimal => "decimal with its own scale (1.50), no exponent".to_owned(),
            Conversion::Float => "shortest decimal that reads back the same (0.1)".to_owned(),
            Conversion::Boolean => "true or false".to_owned(),
            Conversion::Uuid => "lowercase with hyphens".to_owned(),
            Conversion::Date => "YYYY-MM-DD".to_owned(),
            Conversion::Time => "HH:MM:SS[.fff]".to_owned(),
            Conversion::TimeWithZone => "HH:MM:SS[.fff]+HH:MM".to_owned(),
            Conversion::Timestamp => "YYYY-MM-DDTHH:MM:SS[.fff]".to_owned(),
            Conversion::TimestampUtc => "YYYY-MM-DDTHH:MM:SS[.fff]Z, in UTC".to_owned(),
            Conversion::Json => "compact JSON".to_owned(),
            Conversion::MultiValue { element } => {
                format!("multi-value ||a||b||, each {}", element.describe())
            }
            Conversion::SqliteValue => {
                "by value: integer as decimal, real as shortest decimal, text as is".to_owned()
            }
            Conversion::SqliteBoolean => {
                "0 as false, other integers as true, text as is".to_owned()
            }
            Conversion::JsonValue => "strings as is, other values as JSON".to_owned(),
            Conversion::Refused { reason } => format!("cannot be exported: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversion_is_stored_as_a_tagged_word_and_read_back() {
        let cases = [
            (Conversion::Decimal, r#"{"rule":"decimal"}"#),
            (
                Conversion::MultiValue {
                    element: Box::new(Conversion::Integer),
                },
                r#"{"rule":"multi_value","element":{"rule":"integer"}}"#,
            ),
            (
                Conversion::Refused {
                    reason: "binary".to_owned(),
                },
                r#"{"rule":"refused","reason":"binary"}"#,
            ),
        ];
        for (conversion, stored) in cases {
            assert_eq!(
                serde_json::to_string(&conversion).expect("serialize"),
                stored
            );
            assert_eq!(
                serde_json::from_str::<Conversion>(stored).expect("deserialize"),
                conversion
            );
        }
    }

    #[test]
    fn a_refused_column_says_why_it_cannot_be_exported() {
        let column = ColumnType {
            name: "BYTEA".to_owned(),
            conversion: Conversion::Refused {
                reason: "binary data".to_owned(),
            },
        };

        assert_eq!(column.refusal(), Some("binary data"));
        assert_eq!(
            column.conversion.describe(),
            "cannot be exported: binary data"
        );
        assert_eq!(ColumnType::csv().refusal(), None);
    }
}
