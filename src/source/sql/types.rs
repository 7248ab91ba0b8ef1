//! The text rule of each result column, decided from its type when the query is prepared (so
//! before any row is read): PostgreSQL by type (OID, or kind for enums, domains and arrays),
//! SQLite by declared type, since SQLite types values rather than columns.

use sqlx::TypeInfo;
use sqlx::postgres::{PgTypeInfo, PgTypeKind};
use sqlx::sqlite::SqliteTypeInfo;

use crate::source::{ColumnType, Conversion, shown_column};

/// A database's column type, classified.
pub(super) trait ColumnTypeOf {
    fn column_type(&self) -> ColumnType;
}

impl ColumnTypeOf for PgTypeInfo {
    fn column_type(&self) -> ColumnType {
        // sqlx names a type it could not look up `?`, and asking its kind would panic.
        if self.name() == UNRESOLVED_TYPE_NAME {
            let oid = self.oid().map_or(0, |o| o.0);
            return ColumnType {
                name: format!("unknown type (OID {oid})"),
                conversion: refused(
                    "its type could not be looked up; cast it in the query to a type whose rule \
                     is listed in the README, e.g. col::text",
                ),
            };
        }
        ColumnType {
            name: postgres_type_name(self),
            conversion: postgres_conversion(self),
        }
    }
}

impl ColumnTypeOf for SqliteTypeInfo {
    fn column_type(&self) -> ColumnType {
        sqlite_column_type(self.name())
    }
}

/// The type as messages show it: sqlx's name (`NUMERIC`, `TEXT[]`, `citext`), with arrays of
/// user-defined types as `mood[]` rather than PostgreSQL's internal `_mood`.
fn postgres_type_name(ty: &PgTypeInfo) -> String {
    // User-defined types are named by whoever created them: escaped and cut like column names.
    match ty.kind() {
        PgTypeKind::Array(element) => format!("{}[]", shown_column(element.name())),
        _ => shown_column(ty.name()),
    }
}

/// Built-in type OIDs (PostgreSQL's `pg_type.dat`; stable across versions).
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const MONEY: u32 = 790;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// What sqlx names a result type whose OID it could not resolve.
const UNRESOLVED_TYPE_NAME: &str = "?";

fn refused(reason: impl Into<String>) -> Conversion {
    Conversion::Refused {
        reason: reason.into(),
    }
}

/// `ty` must be resolved (not named [`UNRESOLVED_TYPE_NAME`]): only those have a kind.
fn postgres_conversion(ty: &PgTypeInfo) -> Conversion {
    match ty.kind() {
        // An enum value travels as its label.
        PgTypeKind::Enum(_) => Conversion::Text,
        PgTypeKind::Domain(base) => postgres_conversion(base),
        PgTypeKind::Array(element) => multi_value(postgres_conversion(element)),
        PgTypeKind::Composite(_) => refused(
            "a row value has no single text form; select its fields as columns, e.g. (col).field",
        ),
        PgTypeKind::Range(_) => {
            refused("a range has two ends; select lower(col) and upper(col) as columns")
        }
        PgTypeKind::Pseudo => refused("a pseudo-type has no values to export"),
        PgTypeKind::Simple => simple_postgres_conversion(ty),
    }
}

fn simple_postgres_conversion(ty: &PgTypeInfo) -> Conversion {
    simple_conversion(ty.oid().map_or(0, |o| o.0), ty.name())
}

/// A simple (not enum, domain, array...) type's rule from its OID, or its name for an
/// extension's type, whose OID is not fixed.
fn simple_conversion(id: u32, name: &str) -> Conversion {
    match id {
        oid::BOOL => Conversion::Boolean,
        oid::INT2 | oid::INT4 | oid::INT8 => Conversion::Integer,
        oid::FLOAT4 | oid::FLOAT8 => Conversion::Float,
        oid::NUMERIC => Conversion::Decimal,
        oid::TEXT
        | oid::VARCHAR
        | oid::BPCHAR
        | oid::NAME
        | oid::CHAR
        | oid::UNKNOWN
        | oid::XML => Conversion::Text,
        oid::UUID => Conversion::Uuid,
        oid::JSON | oid::JSONB => Conversion::Json,
        oid::DATE => Conversion::Date,
        oid::TIME => Conversion::Time,
        oid::TIMETZ => Conversion::TimeWithZone,
        oid::TIMESTAMP => Conversion::Timestamp,
        oid::TIMESTAMPTZ => Conversion::TimestampUtc,
        oid::BYTEA => refused(
            "binary data has no text form for ActiveCampaign; convert it in the query, e.g. \
             encode(col, 'hex')",
        ),
        oid::MONEY => refused(
            "money is written in the server's locale; cast it in the query, e.g. col::numeric",
        ),
        oid::INTERVAL => refused(
            "a duration has no ActiveCampaign field type; convert it in the query, e.g. \
             extract(epoch from col)",
        ),
        // An extension's type has no fixed OID; citext travels as text.
        _ if name.eq_ignore_ascii_case("citext") => Conversion::Text,
        _ => refused(format!(
            "acexport has no text rule for type {name}; cast it in the query, e.g. col::text"
        )),
    }
}

/// An array's rule from its element's: the multi-value form holds plain values only.
fn multi_value(element: Conversion) -> Conversion {
    match element {
        Conversion::Refused { reason } => refused(format!("an array of values that {reason}")),
        Conversion::Json => refused(
            "an array of JSON has no multi-value form (its values may hold `||`); cast it in \
             the query, e.g. to_jsonb(col)",
        ),
        Conversion::MultiValue { .. } => refused("an array of arrays has no multi-value form"),
        element => Conversion::MultiValue {
            element: Box::new(element),
        },
    }
}

/// SQLite's declared type as sqlx reads it: `BLOB` and `BOOLEAN` have rules of their own;
/// every other column is converted value by value. `NULL` means no type sqlx recognises
/// (an expression, or a declared type such as NUMERIC): any value, hence "any".
fn sqlite_column_type(declared: &str) -> ColumnType {
    let (name, conversion) = match declared {
        "BLOB" => (
            declared,
            refused(
                "binary data has no text form for ActiveCampaign; convert it in the query, \
                 e.g. hex(col)",
            ),
        ),
        "BOOLEAN" => (declared, Conversion::SqliteBoolean),
        "NULL" => ("any", Conversion::SqliteValue),
        _ => (declared, Conversion::SqliteValue),
    };
    ColumnType {
        name: name.to_owned(),
        conversion,
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::types::{PgInterval, PgMoney, PgRange, PgTimeTz};

    use super::*;

    #[test]
    fn postgres_built_in_types_have_the_documented_rules() {
        let cases = [
            (oid::BOOL, "BOOL", Conversion::Boolean),
            (oid::INT2, "INT2", Conversion::Integer),
            (oid::INT8, "INT8", Conversion::Integer),
            (oid::FLOAT4, "FLOAT4", Conversion::Float),
            (oid::NUMERIC, "NUMERIC", Conversion::Decimal),
            (oid::VARCHAR, "VARCHAR", Conversion::Text),
            (oid::BPCHAR, "CHAR", Conversion::Text),
            (oid::NAME, "NAME", Conversion::Text),
            (oid::UUID, "UUID", Conversion::Uuid),
            (oid::JSON, "JSON", Conversion::Json),
            (oid::JSONB, "JSONB", Conversion::Json),
            (oid::DATE, "DATE", Conversion::Date),
            (oid::TIME, "TIME", Conversion::Time),
            (oid::TIMETZ, "TIMETZ", Conversion::TimeWithZone),
            (oid::TIMESTAMP, "TIMESTAMP", Conversion::Timestamp),
            (oid::TIMESTAMPTZ, "TIMESTAMPTZ", Conversion::TimestampUtc),
            (0, "citext", Conversion::Text),
        ];
        for (id, name, conversion) in cases {
            assert_eq!(simple_conversion(id, name), conversion, "{name}");
        }
    }

    #[test]
    fn postgres_types_without_a_rule_are_refused_saying_what_to_do() {
        let cases = [
            (oid::BYTEA, "BYTEA", "encode(col, 'hex')"),
            (oid::MONEY, "MONEY", "col::numeric"),
            (oid::INTERVAL, "INTERVAL", "extract(epoch from col)"),
            (
                869,
                "INET",
                "no text rule for type INET; cast it in the query, e.g. col::text",
            ),
        ];
        for (id, name, advice) in cases {
            let conversion = simple_conversion(id, name);

            assert!(
                matches!(&conversion, Conversion::Refused { reason } if reason.contains(advice)),
                "{name}: {conversion:?}"
            );
        }
    }

    #[test]
    fn an_array_of_plain_values_is_multi_value_and_others_are_refused() {
        let cases = [
            (
                Conversion::Decimal,
                Ok(Conversion::MultiValue {
                    element: Box::new(Conversion::Decimal),
                }),
            ),
            (
                Conversion::Json,
                Err("an array of JSON has no multi-value form"),
            ),
            (
                Conversion::MultiValue {
                    element: Box::new(Conversion::Text),
                },
                Err("an array of arrays"),
            ),
            (
                Conversion::Refused {
                    reason: "binary data has no text form".to_owned(),
                },
                Err("an array of values that binary data has no text form"),
            ),
        ];
        for (element, expected) in cases {
            let array = multi_value(element.clone());

            match (expected, array) {
                (Ok(expected), array) => assert_eq!(array, expected),
                (Err(needle), Conversion::Refused { reason }) => {
                    assert!(reason.contains(needle), "{element:?}: {reason}")
                }
                (Err(_), array) => panic!("{element:?} gave {array:?}"),
            }
        }
    }

    #[test]
    fn postgres_types_are_classified_by_kind_and_named_as_sqlx_names_them() {
        use sqlx::Type;
        use sqlx::postgres::Postgres;
        let cases = [
            (<i32 as Type<Postgres>>::type_info(), "INT4", "decimal"),
            (
                <Vec<String> as Type<Postgres>>::type_info(),
                "TEXT[]",
                "multi-value",
            ),
            (
                <Vec<u8> as Type<Postgres>>::type_info(),
                "BYTEA",
                "cannot be exported",
            ),
            (
                <Vec<Vec<u8>> as Type<Postgres>>::type_info(),
                "BYTEA[]",
                "cannot be exported",
            ),
            (
                <PgMoney as Type<Postgres>>::type_info(),
                "MONEY",
                "cannot be exported",
            ),
            (
                <PgInterval as Type<Postgres>>::type_info(),
                "INTERVAL",
                "cannot be exported",
            ),
            (
                <PgRange<i32> as Type<Postgres>>::type_info(),
                "INT4RANGE",
                "lower(col)",
            ),
            (
                <PgTimeTz as Type<Postgres>>::type_info(),
                "TIMETZ",
                "HH:MM:SS[.fff]+HH:MM",
            ),
            (
                PgTypeInfo::with_oid(sqlx::postgres::types::Oid(99_999)),
                "unknown type (OID 99999)",
                "cannot be exported",
            ),
        ];
        for (ty, name, rule) in cases {
            let column = ty.column_type();

            assert_eq!(column.name, name);
            assert!(
                column.conversion.describe().contains(rule),
                "{name}: {column:?}"
            );
        }
    }

    #[test]
    fn sqlite_columns_convert_by_value_except_blob_and_boolean() {
        let cases = [
            ("INTEGER", "INTEGER", Conversion::SqliteValue),
            ("TEXT", "TEXT", Conversion::SqliteValue),
            ("DATE", "DATE", Conversion::SqliteValue),
            ("NULL", "any", Conversion::SqliteValue),
            ("BOOLEAN", "BOOLEAN", Conversion::SqliteBoolean),
        ];
        for (declared, name, conversion) in cases {
            assert_eq!(
                sqlite_column_type(declared),
                ColumnType {
                    name: name.to_owned(),
                    conversion
                }
            );
        }
        assert!(sqlite_column_type("BLOB").refusal().is_some());
    }
}
