//! Database errors in the user's terms: where in *their* query the problem is (line and
//! column, when the driver gives a position) and the driver's message, nothing else. sqlx's
//! own text for a PostgreSQL error ends with the server's source line ("at line 1188" of
//! scan.l), which reads as a line of the query; SQLite's starts with a result code.

use sqlx::postgres::{PgDatabaseError, PgErrorPosition};

use crate::escape::untrusted;

/// What to tell the user about `error`, raised while connecting (`query` empty), preparing or
/// running `query`.
pub(super) fn database_message(error: &sqlx::Error, query: &str) -> String {
    let sqlx::Error::Database(database) = error else {
        // Protocol and TLS errors can quote what the server sent.
        return untrusted(&error.to_string()).into_owned();
    };
    let Some(postgres) = database.try_downcast_ref::<PgDatabaseError>() else {
        return untrusted(database.message()).into_owned();
    };
    let mut text = String::new();
    // An `Internal` position points into a query PostgreSQL generated, not the user's.
    if let Some(PgErrorPosition::Original(position)) = postgres.position()
        && let Some((line, column)) = line_and_column(query, position)
    {
        text.push_str(&format!("line {line}, column {column}: "));
    }
    text.push_str(&untrusted(postgres.message()));
    if let Some(hint) = postgres.hint() {
        text.push_str(" (hint: ");
        text.push_str(&untrusted(hint));
        text.push(')');
    }
    text
}

/// The 1-based line and column of the `position`-th character (1-based, as PostgreSQL counts
/// them: characters, not bytes) of `query`. A line ends at `\n`; a `\r` before it is part of
/// the line break, not a column. `None` when `position` is not in the query.
fn line_and_column(query: &str, position: usize) -> Option<(usize, usize)> {
    let mut line = 1;
    let mut column = 1;
    for (index, c) in query.chars().enumerate() {
        if index + 1 == position {
            return Some((line, column));
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else if c != '\r' {
            column += 1;
        }
    }
    // Just past the end: "the query ended too soon".
    (position == query.chars().count() + 1).then_some((line, column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_position_becomes_the_line_and_column_of_the_query() {
        let cases = [
            ("SELECT )", 8, Some((1, 8))),
            ("SELECT email\nFROM nowhere WHERE )", 33, Some((2, 20))),
            ("SELECT email\r\nFROM t WHERE )", 28, Some((2, 14))),
            // Characters, not bytes: `é` is two bytes and one column.
            ("SELECT 'é',\n 'ü' )", 18, Some((2, 6))),
            ("SELECT 1 +", 11, Some((1, 11))),
            ("SELECT 1", 0, None),
            ("SELECT 1", 20, None),
        ];
        for (query, position, expected) in cases {
            assert_eq!(
                line_and_column(query, position),
                expected,
                "{query:?} {position}"
            );
        }
    }
}
