//! PostgreSQL values as text, read from the binary form the server sends them in (sqlx asks
//! for binary results). Decoding the few formats here ourselves gives every type one exact
//! rule without a crate per type (sqlx's `uuid`, `json` and `bigdecimal` features would each
//! add one, and render NUMERIC, JSON and arrays in their own way) and without rewriting the
//! user's query with casts (PostgreSQL's text forms are not the documented ones: jsonb has
//! spaces, arrays are `{a,b}`, timestamps depend on the session's DateStyle).
//!
//! Formats: PostgreSQL's `*_send` functions (src/backend/utils/adt): big-endian integers,
//! dates as days and timestamps as microseconds since 2000-01-01, NUMERIC as base-10000 digits.

use std::fmt::Write as _;

use chrono::{Days, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};

use super::text::float_text;
use crate::source::Conversion;

/// The multi-value separator of ActiveCampaign's checkbox and list fields: `||a||b||`.
const MULTI_VALUE_SEPARATOR: &str = "||";

/// `bytes` (a non-NULL value) as text by `conversion`: `Ok(None)` for an array with no value
/// left, `Err(reason)` when the bytes do not hold what the rule expects.
pub(super) fn to_text(conversion: &Conversion, bytes: &[u8]) -> Result<Option<String>, String> {
    let text = match conversion {
        Conversion::Text => utf8(bytes)?.to_owned(),
        Conversion::Integer => integer(bytes)?,
        Conversion::Decimal => numeric(bytes)?,
        Conversion::Float => float(bytes)?,
        Conversion::Boolean => match bytes {
            [0] => "false".to_owned(),
            [1] => "true".to_owned(),
            _ => return Err(malformed("a boolean")),
        },
        Conversion::Uuid => uuid(bytes)?,
        Conversion::Date => date(bytes)?,
        Conversion::Time => time(bytes)?,
        Conversion::TimeWithZone => time_with_zone(bytes)?,
        Conversion::Timestamp => timestamp(bytes, "")?,
        Conversion::TimestampUtc => timestamp(bytes, "Z")?,
        Conversion::Json => json(bytes)?,
        Conversion::MultiValue { element } => return multi_value(element, bytes),
        Conversion::Refused { reason } => return Err(reason.clone()),
        Conversion::SqliteValue | Conversion::SqliteBoolean | Conversion::JsonValue => {
            return Err("internal error: not a PostgreSQL rule".to_owned());
        }
    };
    Ok(Some(text))
}

fn malformed(what: &str) -> String {
    format!("the server sent something that is not {what}")
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "the server sent text that is not UTF-8".to_owned())
}

/// `N` big-endian bytes from the front of `bytes`, and the rest.
fn take<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    Some((*head, rest))
}

fn i16_at(bytes: &[u8]) -> Option<(i16, &[u8])> {
    take::<2>(bytes).map(|(b, rest)| (i16::from_be_bytes(b), rest))
}

fn i32_at(bytes: &[u8]) -> Option<(i32, &[u8])> {
    take::<4>(bytes).map(|(b, rest)| (i32::from_be_bytes(b), rest))
}

fn i64_at(bytes: &[u8]) -> Option<(i64, &[u8])> {
    take::<8>(bytes).map(|(b, rest)| (i64::from_be_bytes(b), rest))
}

fn integer(bytes: &[u8]) -> Result<String, String> {
    match bytes.len() {
        2 => i16_at(bytes).map(|(v, _)| v.to_string()),
        4 => i32_at(bytes).map(|(v, _)| v.to_string()),
        8 => i64_at(bytes).map(|(v, _)| v.to_string()),
        _ => None,
    }
    .ok_or_else(|| malformed("an integer"))
}

fn float(bytes: &[u8]) -> Result<String, String> {
    // Each width at its own precision: a float4 widened to f64 would print its binary noise
    // (0.1 as 0.10000000149011612).
    match bytes.len() {
        4 => take::<4>(bytes).map(|(b, _)| float_text(f32::from_be_bytes(b))),
        8 => take::<8>(bytes).map(|(b, _)| float_text(f64::from_be_bytes(b))),
        _ => None,
    }
    .ok_or_else(|| malformed("a floating-point number"))
}

/// NUMERIC's sign word (numeric.c).
const NUMERIC_POSITIVE: u16 = 0x0000;
const NUMERIC_NEGATIVE: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_INFINITY: u16 = 0xD000;
const NUMERIC_NEGATIVE_INFINITY: u16 = 0xF000;
/// NUMERIC digits are base 10000: four decimal digits each.
const NUMERIC_DIGIT_MAX: i16 = 9999;

/// NUMERIC as `numeric_out` prints it: the integer part, then exactly `dscale` fraction
/// digits. Header: digit count, weight (the power of 10000 of the first digit), sign, display
/// scale; then the digits.
fn numeric(bytes: &[u8]) -> Result<String, String> {
    let bad = || malformed("a NUMERIC");
    let (count, rest) = i16_at(bytes).ok_or_else(bad)?;
    let (weight, rest) = i16_at(rest).ok_or_else(bad)?;
    let (sign, rest) = take::<2>(rest).ok_or_else(bad)?;
    let (scale, mut rest) = take::<2>(rest).ok_or_else(bad)?;
    match u16::from_be_bytes(sign) {
        NUMERIC_POSITIVE | NUMERIC_NEGATIVE => {}
        NUMERIC_NAN => return Ok("NaN".to_owned()),
        NUMERIC_INFINITY => return Ok("Infinity".to_owned()),
        NUMERIC_NEGATIVE_INFINITY => return Ok("-Infinity".to_owned()),
        _ => return Err(bad()),
    }
    let count = usize::try_from(count).map_err(|_| bad())?;
    let mut digits = Vec::with_capacity(count);
    for _ in 0..count {
        let (digit, after) = i16_at(rest).ok_or_else(bad)?;
        if !(0..=NUMERIC_DIGIT_MAX).contains(&digit) {
            return Err(bad());
        }
        digits.push(digit);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    let weight = i32::from(weight);
    let scale = usize::from(u16::from_be_bytes(scale));
    // The digit standing for 10000^(weight - k); zero outside the stored digits.
    let digit = |k: i32| -> i16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if u16::from_be_bytes(sign) == NUMERIC_NEGATIVE {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for k in 0..=weight {
            if k == 0 {
                let _ = write!(out, "{}", digit(k));
            } else {
                let _ = write!(out, "{:04}", digit(k));
            }
        }
    }
    if scale > 0 {
        out.push('.');
        let start = out.len();
        let mut k = weight + 1;
        while out.len() - start < scale {
            let _ = write!(out, "{:04}", digit(k));
            k += 1;
        }
        out.truncate(start + scale);
    }
    Ok(out)
}

fn uuid(bytes: &[u8]) -> Result<String, String> {
    let bytes: &[u8; 16] = bytes.try_into().map_err(|_| malformed("a UUID"))?;
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{byte:02x}");
    }
    Ok(out)
}

/// Dates and timestamps count from PostgreSQL's epoch.
fn postgres_epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .unwrap_or_default()
        .and_time(NaiveTime::MIN)
}

/// `infinity` and `-infinity` are stored as the extreme values (datatype/timestamp.h).
fn infinity_text<T: Eq + Copy>(value: T, max: T, min: T) -> Option<String> {
    if value == max {
        Some("infinity".to_owned())
    } else if value == min {
        Some("-infinity".to_owned())
    } else {
        None
    }
}

fn date(bytes: &[u8]) -> Result<String, String> {
    let days = match i32_at(bytes) {
        Some((days, [])) => days,
        _ => return Err(malformed("a date")),
    };
    if let Some(text) = infinity_text(days, i32::MAX, i32::MIN) {
        return Ok(text);
    }
    let epoch = postgres_epoch().date();
    let date = if days >= 0 {
        epoch.checked_add_days(Days::new(u64::from(days.unsigned_abs())))
    } else {
        epoch.checked_sub_days(Days::new(u64::from(days.unsigned_abs())))
    };
    date.map(|d| d.format("%Y-%m-%d").to_string())
        .ok_or_else(|| "the date is outside the years this program can write".to_owned())
}

/// Seconds and fraction as ISO 8601 writes them: the fraction only when not zero, in 3 or 6
/// digits.
const TIME_FORMAT: &str = "%H:%M:%S%.f";

/// Microseconds in a day: PostgreSQL's `time` accepts 24:00:00, which chrono cannot hold.
const MICROS_PER_DAY: i64 = 86_400_000_000;

fn time_text(micros: i64) -> Result<String, String> {
    if micros == MICROS_PER_DAY {
        return Ok("24:00:00".to_owned());
    }
    if !(0..MICROS_PER_DAY).contains(&micros) {
        return Err(malformed("a time of day"));
    }
    let (time, _) = NaiveTime::MIN.overflowing_add_signed(TimeDelta::microseconds(micros));
    Ok(time.format(TIME_FORMAT).to_string())
}

fn time(bytes: &[u8]) -> Result<String, String> {
    match i64_at(bytes) {
        Some((micros, [])) => time_text(micros),
        _ => Err(malformed("a time of day")),
    }
}

/// `timetz`: the time, then the zone in seconds *west* of UTC (so `+02:00` is stored -7200).
fn time_with_zone(bytes: &[u8]) -> Result<String, String> {
    let bad = || malformed("a time with zone");
    let (micros, rest) = i64_at(bytes).ok_or_else(bad)?;
    let (west, rest) = i32_at(rest).ok_or_else(bad)?;
    if !rest.is_empty() {
        return Err(bad());
    }
    let mut out = time_text(micros)?;
    let east = -i64::from(west);
    let (sign, east) = if east < 0 { ('-', -east) } else { ('+', east) };
    let _ = write!(out, "{sign}{:02}:{:02}", east / 3600, east / 60 % 60);
    if east % 60 != 0 {
        let _ = write!(out, ":{:02}", east % 60);
    }
    Ok(out)
}

/// A timestamp followed by `zone` (`Z` for TIMESTAMPTZ, which the server sends in UTC);
/// `infinity` is not a time, so it takes no zone.
fn timestamp(bytes: &[u8], zone: &str) -> Result<String, String> {
    let micros = match i64_at(bytes) {
        Some((micros, [])) => micros,
        _ => return Err(malformed("a timestamp")),
    };
    if let Some(text) = infinity_text(micros, i64::MAX, i64::MIN) {
        return Ok(text);
    }
    postgres_epoch()
        .checked_add_signed(TimeDelta::microseconds(micros))
        .map(|t| format!("{}{zone}", t.format("%Y-%m-%dT%H:%M:%S%.f")))
        .ok_or_else(|| "the timestamp is outside the years this program can write".to_owned())
}

/// `jsonb`'s binary form is a version byte (1) and the text; `json`'s is the text as stored.
/// JSON text never starts with byte 1 (a control character), so one function reads both.
const JSONB_VERSION: u8 = 1;

fn json(bytes: &[u8]) -> Result<String, String> {
    let text = match bytes.split_first() {
        Some((&JSONB_VERSION, text)) => text,
        _ => bytes,
    };
    Ok(compact_json(utf8(text)?))
}

/// Valid JSON text without the whitespace outside strings: the same value, byte for byte
/// within strings and numbers (no re-parse, so no number loses precision).
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// An array: dimensions, a has-NULL flag, the element type, (length, lower bound) per
/// dimension, then each element as a length (-1 for NULL) and its bytes.
fn multi_value(element: &Conversion, bytes: &[u8]) -> Result<Option<String>, String> {
    let bad = || malformed("an array");
    let (dimensions, rest) = i32_at(bytes).ok_or_else(bad)?;
    let (_has_null, rest) = i32_at(rest).ok_or_else(bad)?;
    let (_element_type, rest) = i32_at(rest).ok_or_else(bad)?;
    match dimensions {
        0 => return Ok(None),
        1 => {}
        n => {
            return Err(format!(
                "holds a {n}-dimensional array; only a one-dimensional array has a \
                 multi-value form"
            ));
        }
    }
    let (length, rest) = i32_at(rest).ok_or_else(bad)?;
    let (_lower_bound, mut rest) = i32_at(rest).ok_or_else(bad)?;
    let mut out = String::new();
    for _ in 0..length {
        let (size, after) = i32_at(rest).ok_or_else(bad)?;
        rest = after;
        // A negative length is NULL: left out.
        let Ok(size) = usize::try_from(size) else {
            continue;
        };
        let (value, after) = rest.split_at_checked(size).ok_or_else(bad)?;
        rest = after;
        let Some(text) = to_text(element, value)? else {
            continue;
        };
        if text.is_empty() {
            continue;
        }
        if text.contains(MULTI_VALUE_SEPARATOR) {
            return Err(format!(
                "an array element contains `{MULTI_VALUE_SEPARATOR}`, which separates the values \
                 of a multi-value field"
            ));
        }
        out.push_str(MULTI_VALUE_SEPARATOR);
        out.push_str(&text);
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    if out.is_empty() {
        return Ok(None);
    }
    out.push_str(MULTI_VALUE_SEPARATOR);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NUMERIC's binary form from its header and base-10000 digits.
    fn numeric_bytes(weight: i16, sign: u16, scale: u16, digits: &[i16]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend((digits.len() as i16).to_be_bytes());
        bytes.extend(weight.to_be_bytes());
        bytes.extend(sign.to_be_bytes());
        bytes.extend(scale.to_be_bytes());
        for d in digits {
            bytes.extend(d.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn numeric_is_plain_decimal_with_its_own_scale() {
        let cases = [
            (numeric_bytes(0, NUMERIC_POSITIVE, 0, &[]), "0"),
            (numeric_bytes(0, NUMERIC_POSITIVE, 2, &[1, 5000]), "1.50"),
            (numeric_bytes(-1, NUMERIC_NEGATIVE, 2, &[5000]), "-0.50"),
            (numeric_bytes(1, NUMERIC_POSITIVE, 0, &[12, 3456]), "123456"),
            (numeric_bytes(2, NUMERIC_POSITIVE, 0, &[1]), "100000000"),
            (
                numeric_bytes(-2, NUMERIC_POSITIVE, 8, &[1234]),
                "0.00001234",
            ),
            (numeric_bytes(-2, NUMERIC_POSITIVE, 6, &[1234]), "0.000012"),
            (
                numeric_bytes(
                    4,
                    NUMERIC_POSITIVE,
                    6,
                    &[1234, 5678, 9012, 3456, 7890, 1, 2300],
                ),
                "12345678901234567890.000123",
            ),
            (numeric_bytes(0, NUMERIC_NAN, 0, &[]), "NaN"),
            (numeric_bytes(0, NUMERIC_INFINITY, 0, &[]), "Infinity"),
            (
                numeric_bytes(0, NUMERIC_NEGATIVE_INFINITY, 0, &[]),
                "-Infinity",
            ),
        ];
        for (bytes, text) in cases {
            assert_eq!(numeric(&bytes), Ok(text.to_owned()), "{bytes:?}");
        }
    }

    #[test]
    fn a_malformed_numeric_is_an_error_not_a_wrong_number() {
        for bytes in [
            vec![0, 1],
            numeric_bytes(0, NUMERIC_POSITIVE, 0, &[10_000]),
            numeric_bytes(0, 0x1234, 0, &[1]),
            [numeric_bytes(0, NUMERIC_POSITIVE, 0, &[1]), vec![0]].concat(),
        ] {
            assert!(numeric(&bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn floats_are_the_shortest_decimal_that_reads_back_and_never_an_exponent() {
        let cases: [(f64, &str); 7] = [
            (0.1, "0.1"),
            (1e20, "100000000000000000000"),
            (1.5e-7, "0.00000015"),
            (-0.0, "-0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (value, text) in cases {
            assert_eq!(float(&value.to_be_bytes()), Ok(text.to_owned()));
        }
        assert_eq!(float(&0.1f32.to_be_bytes()), Ok("0.1".to_owned()));
    }

    #[test]
    fn integers_of_each_width_are_decimal() {
        assert_eq!(integer(&(-7i16).to_be_bytes()), Ok("-7".to_owned()));
        assert_eq!(integer(&7i32.to_be_bytes()), Ok("7".to_owned()));
        assert_eq!(integer(&i64::MAX.to_be_bytes()), Ok(i64::MAX.to_string()));
        assert!(integer(&[1, 2, 3]).is_err());
    }

    #[test]
    fn a_uuid_is_lowercase_and_hyphenated() {
        let bytes = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];

        assert_eq!(
            uuid(&bytes),
            Ok("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_owned())
        );
        assert!(uuid(&bytes[..15]).is_err());
    }

    #[test]
    fn dates_and_times_are_iso_8601() {
        let timestamp_micros = |s: &str| {
            let t = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").expect("time");
            (t - postgres_epoch())
                .num_microseconds()
                .expect("micros")
                .to_be_bytes()
        };
        let cases: [(Conversion, Vec<u8>, &str); 12] = [
            (Conversion::Date, 0i32.to_be_bytes().to_vec(), "2000-01-01"),
            (
                Conversion::Date,
                1520i32.to_be_bytes().to_vec(),
                "2004-02-29",
            ),
            (
                Conversion::Date,
                (-1i32).to_be_bytes().to_vec(),
                "1999-12-31",
            ),
            (
                Conversion::Date,
                i32::MAX.to_be_bytes().to_vec(),
                "infinity",
            ),
            (
                Conversion::Timestamp,
                timestamp_micros("2024-03-01 12:30:00").to_vec(),
                "2024-03-01T12:30:00",
            ),
            (
                Conversion::TimestampUtc,
                timestamp_micros("2024-03-01 12:30:00.25").to_vec(),
                "2024-03-01T12:30:00.250Z",
            ),
            (
                Conversion::TimestampUtc,
                timestamp_micros("1999-12-31 23:59:59.000001").to_vec(),
                "1999-12-31T23:59:59.000001Z",
            ),
            (
                Conversion::TimestampUtc,
                i64::MIN.to_be_bytes().to_vec(),
                "-infinity",
            ),
            (
                Conversion::Time,
                45_000_000_000i64.to_be_bytes().to_vec(),
                "12:30:00",
            ),
            (
                Conversion::Time,
                MICROS_PER_DAY.to_be_bytes().to_vec(),
                "24:00:00",
            ),
            (
                Conversion::TimeWithZone,
                [
                    45_000_000_000i64.to_be_bytes().to_vec(),
                    (-7200i32).to_be_bytes().to_vec(),
                ]
                .concat(),
                "12:30:00+02:00",
            ),
            (
                Conversion::TimeWithZone,
                [
                    0i64.to_be_bytes().to_vec(),
                    16_200i32.to_be_bytes().to_vec(),
                ]
                .concat(),
                "00:00:00-04:30",
            ),
        ];
        for (conversion, bytes, text) in cases {
            assert_eq!(
                to_text(&conversion, &bytes),
                Ok(Some(text.to_owned())),
                "{conversion:?}"
            );
        }
        assert!(time(&(MICROS_PER_DAY + 1).to_be_bytes()).is_err());
    }

    #[test]
    fn json_and_jsonb_are_compacted_outside_strings_only() {
        let cases = [
            (
                r#"{ "a" : [1,  2.50], "b": "x  y" }"#,
                r#"{"a":[1,2.50],"b":"x  y"}"#,
            ),
            (
                r#"{"q": "say \"hi \" ", "n": 123456789012345678901}"#,
                r#"{"q":"say \"hi \" ","n":123456789012345678901}"#,
            ),
            (r#""\\" "#, r#""\\""#),
        ];
        for (stored, compact) in cases {
            assert_eq!(json(stored.as_bytes()), Ok(compact.to_owned()));
            let jsonb = [&[JSONB_VERSION], stored.as_bytes()].concat();
            assert_eq!(json(&jsonb), Ok(compact.to_owned()));
        }
    }

    /// A one-dimensional array's binary form; `None` elements are NULL.
    fn array_bytes(elements: &[Option<&[u8]>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(1i32.to_be_bytes());
        bytes.extend(0i32.to_be_bytes());
        bytes.extend(25i32.to_be_bytes());
        bytes.extend((elements.len() as i32).to_be_bytes());
        bytes.extend(1i32.to_be_bytes());
        for element in elements {
            match element {
                Some(value) => {
                    bytes.extend((value.len() as i32).to_be_bytes());
                    bytes.extend(*value);
                }
                None => bytes.extend((-1i32).to_be_bytes()),
            }
        }
        bytes
    }

    #[test]
    fn an_array_is_multi_value_without_nulls_or_empty_values() {
        let text = Conversion::MultiValue {
            element: Box::new(Conversion::Text),
        };
        let cases: [(Vec<u8>, Option<&str>); 4] = [
            (
                array_bytes(&[Some(b"gold"), None, Some(b""), Some(b"vip")]),
                Some("||gold||vip||"),
            ),
            (array_bytes(&[None]), None),
            (array_bytes(&[]), None),
            // An empty array has no dimensions at all.
            (
                [0i32, 0, 25].iter().flat_map(|v| v.to_be_bytes()).collect(),
                None,
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                to_text(&text, &bytes),
                Ok(expected.map(str::to_owned)),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn an_array_value_without_a_multi_value_form_is_an_error_saying_why() {
        let text = Conversion::MultiValue {
            element: Box::new(Conversion::Text),
        };
        let mut two_dimensions = Vec::new();
        for v in [2i32, 0, 25, 1, 1, 1, 1, 1, b'a'.into()] {
            two_dimensions.extend(v.to_be_bytes());
        }
        let cases = [
            (array_bytes(&[Some(b"a||b")]), "contains `||`"),
            (two_dimensions, "2-dimensional array"),
            (array_bytes(&[Some(b"a")])[..22].to_vec(), "not an array"),
        ];
        for (bytes, needle) in cases {
            let error = to_text(&text, &bytes).expect_err("refused");
            assert!(error.contains(needle), "{error}");
        }
    }

    #[test]
    fn an_integer_array_is_multi_value_of_decimals() {
        let integers = Conversion::MultiValue {
            element: Box::new(Conversion::Integer),
        };
        let bytes = array_bytes(&[Some(&3i32.to_be_bytes()), Some(&(-7i32).to_be_bytes())]);

        assert_eq!(to_text(&integers, &bytes), Ok(Some("||3||-7||".to_owned())));
    }
}
