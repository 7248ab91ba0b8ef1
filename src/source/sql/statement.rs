//! What a segment query may be: one read statement, `SELECT`, `WITH ... SELECT` or `VALUES`
//! (PostgreSQL's `TABLE name` too). The connection is read-only as well (SQLite `mode=ro` and
//! `query_only`, PostgreSQL a read-only transaction), but that is not enough on its own: on a
//! read-only SQLite connection `VACUUM INTO 'file'` still writes a copy of the database (with
//! `query_only` an empty file), and in a read-only PostgreSQL transaction `COPY ... TO 'file'`
//! still writes a file on the server. Neither starts with one of the allowed words.
//!
//! SQLite runs every statement of a query text in turn, so `SELECT 1; VACUUM INTO 'x'` or
//! `PRAGMA query_only = OFF; ...` must be caught too: the SQLite text is split into statements
//! with SQLite's own token rules (tokenize.c: strings, quoted names, comments and variables are
//! where a `;` does not end a statement). PostgreSQL needs no split: sqlx sends the query as one
//! prepared statement, which the server refuses to hold several commands.

use std::ops::Range;

/// Whose SQL the query is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

/// Why a query is not a single read statement; the text completes "the segment query ...".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Nothing but spaces and comments.
    Empty,
    /// SQLite stops reading at a NUL byte, so what follows it cannot be checked.
    Nul,
    /// The first word, as written (at most [`SHOWN_WORD_CHARS`] characters).
    NotARead(String),
    /// More SQL after a `;`, starting on this 1-based line.
    SecondStatement { line: usize },
    /// `?`, `:name`, `@name`, `$name` or `$1`: a segment query is run as written.
    Parameters,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Empty => f.write_str("is empty"),
            Refusal::Nul => f.write_str("contains a NUL character"),
            Refusal::NotARead(word) => write!(f, "starts with `{word}`"),
            Refusal::SecondStatement { line } => write!(
                f,
                "holds a second statement (line {line}) after a `;`; remove it"
            ),
            Refusal::Parameters => f.write_str(
                "has parameters (such as ?, :name or $1); write the values into the query",
            ),
        }
    }
}

/// Words a read statement starts with, per dialect.
const SQLITE_READS: &[&str] = &["SELECT", "WITH", "VALUES"];
const POSTGRES_READS: &[&str] = &["SELECT", "WITH", "VALUES", "TABLE"];
/// How much of a refused first word an error quotes: enough to recognise it, never a whole
/// pasted query.
const SHOWN_WORD_CHARS: usize = 32;

/// Checks that `query` is a single read statement in `dialect`. A first word that is not a
/// read is named before a second statement is.
pub(super) fn check_read_query(query: &str, dialect: Dialect) -> Result<(), Refusal> {
    let sql = query.as_bytes();
    if sql.contains(&0) {
        return Err(Refusal::Nul);
    }
    let (reads, Shape { first, second_line }) = match dialect {
        Dialect::Sqlite => (SQLITE_READS, sqlite_shape(sql)),
        Dialect::Postgres => (POSTGRES_READS, postgres_shape(sql)),
    };
    let Some(first) = first else {
        return Err(Refusal::Empty);
    };
    let word = &query[first];
    if !reads.iter().any(|read| read.eq_ignore_ascii_case(word)) {
        return Err(Refusal::NotARead(
            word.chars().take(SHOWN_WORD_CHARS).collect(),
        ));
    }
    match second_line {
        Some(line) => Err(Refusal::SecondStatement { line }),
        None => Ok(()),
    }
}

/// Where a query's statement starts and whether another follows.
struct Shape {
    /// The first token: a whole word, or the first character of anything else (a string, a
    /// `(`), which is never a read word. `None` when there are only spaces and comments.
    first: Option<Range<usize>>,
    /// The 1-based line where a second statement starts, if one does.
    second_line: Option<usize>,
}

/// A token of SQLite's tokenizer, as far as statement boundaries are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// Spaces and comments: they neither start nor end a statement.
    Blank,
    Semicolon,
    /// A keyword or a bare name.
    Word,
    /// Anything else: strings, quoted names, numbers, variables, operators.
    Other,
}

/// The shape of SQLite text: its statements end at `;` tokens.
fn sqlite_shape(sql: &[u8]) -> Shape {
    let mut first: Option<Range<usize>> = None;
    let mut ended = false;
    let mut i = 0;
    while i < sql.len() {
        let (token, end) = sqlite_token(sql, i);
        match token {
            Token::Blank => {}
            Token::Semicolon => ended = first.is_some(),
            Token::Word | Token::Other if ended => {
                let line = 1 + sql[..i].iter().filter(|&&b| b == b'\n').count();
                return Shape {
                    first,
                    second_line: Some(line),
                };
            }
            Token::Word => {
                first.get_or_insert(i..end);
            }
            Token::Other => {
                first.get_or_insert(i..i + 1);
            }
        }
        i = end;
    }
    Shape {
        first,
        second_line: None,
    }
}

/// SQLite's `IdChar`: letters, digits, `_`, `$` and every byte of a multi-byte character.
fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// SQLite's `sqlite3Isspace`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The token starting at `i` and where it ends, following sqlite3GetToken wherever a token
/// can hold a `;` or a quote. Tokens it leaves whole elsewhere (numbers, operators) may come out
/// split, which moves no statement boundary.
fn sqlite_token(z: &[u8], i: usize) -> (Token, usize) {
    let at = |k: usize| z.get(k).copied().unwrap_or(0);
    let c = z[i];
    match c {
        _ if is_space(c) => {
            let end = (i..z.len()).find(|&k| !is_space(z[k])).unwrap_or(z.len());
            (Token::Blank, end)
        }
        b'-' if at(i + 1) == b'-' => {
            let end = (i..z.len()).find(|&k| z[k] == b'\n').unwrap_or(z.len());
            (Token::Blank, end)
        }
        b'/' if at(i + 1) == b'*' && i + 2 < z.len() => {
            // Unterminated, the comment runs to the end.
            let end = z[i + 2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(z.len(), |p| i + 2 + p + 2);
            (Token::Blank, end)
        }
        b';' => (Token::Semicolon, i + 1),
        b'\'' | b'"' | b'`' => {
            // A doubled delimiter is one character of the string; here it simply ends one
            // string and starts the next, which ends in the same place.
            let end = z[i + 1..]
                .iter()
                .position(|&b| b == c)
                .map_or(z.len(), |p| i + 1 + p + 1);
            (Token::Other, end)
        }
        b'[' => {
            let end = z[i + 1..]
                .iter()
                .position(|&b| b == b']')
                .map_or(z.len(), |p| i + 1 + p + 1);
            (Token::Other, end)
        }
        b'?' => {
            let end = (i + 1..z.len())
                .find(|&k| !z[k].is_ascii_digit())
                .unwrap_or(z.len());
            (Token::Other, end)
        }
        b'$' | b'@' | b':' | b'#' => (Token::Other, sqlite_variable_end(z, i)),
        _ if is_id_char(c) => {
            let end = (i..z.len()).find(|&k| !is_id_char(z[k])).unwrap_or(z.len());
            // A word starting with a digit is a number.
            let token = if c.is_ascii_digit() {
                Token::Other
            } else {
                Token::Word
            };
            (token, end)
        }
        _ => (Token::Other, i + 1),
    }
}

/// Where the variable starting at `i` ends: a name, then (Tcl style) either `::` parts or one
/// `(...)` suffix that runs to the first space or `)` and may hold a `;` or a quote.
fn sqlite_variable_end(z: &[u8], i: usize) -> usize {
    let mut k = i + 1;
    let mut named = false;
    while k < z.len() {
        let c = z[k];
        if is_id_char(c) {
            named = true;
            k += 1;
        } else if c == b'(' && named {
            k += 1;
            while k < z.len() && !is_space(z[k]) && z[k] != b')' {
                k += 1;
            }
            if k < z.len() && z[k] == b')' {
                k += 1;
            }
            return k;
        } else if c == b':' && z.get(k + 1) == Some(&b':') {
            k += 2;
        } else {
            break;
        }
    }
    k
}

/// The shape of PostgreSQL text: its first word after spaces, comments (which nest) and opening
/// parentheses. The server refuses a second statement itself.
fn postgres_shape(z: &[u8]) -> Shape {
    Shape {
        first: postgres_first_word(z),
        second_line: None,
    }
}

fn postgres_first_word(z: &[u8]) -> Option<Range<usize>> {
    let mut i = 0;
    while i < z.len() {
        let c = z[i];
        if c.is_ascii_whitespace() || c == b'(' {
            i += 1;
        } else if c == b'-' && z.get(i + 1) == Some(&b'-') {
            i = (i..z.len()).find(|&k| z[k] == b'\n').unwrap_or(z.len());
        } else if c == b'/' && z.get(i + 1) == Some(&b'*') {
            i = postgres_comment_end(z, i);
        } else {
            let end = (i..z.len())
                .find(|&k| !(z[k].is_ascii_alphanumeric() || z[k] == b'_' || z[k] >= 0x80))
                .unwrap_or(z.len());
            // Something that is not a word (a string, an operator) shows as itself.
            return Some(i..end.max(i + 1));
        }
    }
    None
}

/// Where the comment starting at `i` (`/*`) ends; PostgreSQL comments nest.
fn postgres_comment_end(z: &[u8], i: usize) -> usize {
    let mut depth = 0usize;
    let mut k = i;
    while k + 1 < z.len() {
        match (z[k], z[k + 1]) {
            (b'/', b'*') => {
                depth += 1;
                k += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                k += 2;
                if depth == 0 {
                    return k;
                }
            }
            _ => k += 1,
        }
    }
    z.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(query: &str) -> Result<(), Refusal> {
        check_read_query(query, Dialect::Sqlite)
    }

    fn postgres(query: &str) -> Result<(), Refusal> {
        check_read_query(query, Dialect::Postgres)
    }

    fn not_a_read(word: &str) -> Result<(), Refusal> {
        Err(Refusal::NotARead(word.to_owned()))
    }

    #[test]
    fn sqlite_queries_are_classified_by_sqlite_token_rules() {
        let second = |line| Err(Refusal::SecondStatement { line });
        let cases: &[(&str, Result<(), Refusal>)] = &[
            ("SELECT email FROM people", Ok(())),
            ("  select email from people;  ", Ok(())),
            ("WITH t AS (SELECT 1) SELECT * FROM t;;", Ok(())),
            ("VALUES (1, 'a@example.com')", Ok(())),
            ("-- who\n/* why; */ SELECT 1; -- done", Ok(())),
            ("SELECT ';' AS semi, \"a;b\", `c;d`, [e;f] FROM t", Ok(())),
            ("SELECT 'it''s; fine' AS x", Ok(())),
            ("SELECT x'3b' AS blob, a$b FROM t", Ok(())),
            ("SELECT 1 /* unterminated; VACUUM", Ok(())),
            ("SELECT 1; VACUUM INTO 'x.db'", second(1)),
            ("SELECT 1;\n\nVACUUM INTO 'x.db'", second(3)),
            ("SELECT 1; -- c\n; ATTACH 'y.db' AS y", second(2)),
            ("SELECT ';' ; PRAGMA query_only = OFF", second(1)),
            // SQLite reads `$a('x)` as one variable: the quote inside opens no string.
            (
                "SELECT $a('x); VACUUM INTO '/tmp/x.db'; SELECT '",
                second(1),
            ),
            ("SELECT :a::b('x); VACUUM INTO 'x'", second(1)),
            ("VACUUM INTO '/tmp/x.db'", not_a_read("VACUUM")),
            ("vacuum", not_a_read("vacuum")),
            ("ATTACH DATABASE 'y.db' AS y", not_a_read("ATTACH")),
            (
                "PRAGMA query_only = OFF; VACUUM INTO 'x'",
                not_a_read("PRAGMA"),
            ),
            ("EXPLAIN SELECT 1", not_a_read("EXPLAIN")),
            ("UPDATE t SET a = 1", not_a_read("UPDATE")),
            ("SELECTX 1", not_a_read("SELECTX")),
            ("(SELECT 1)", not_a_read("(")),
            ("'SELECT'", not_a_read("'")),
            ("", Err(Refusal::Empty)),
            (" -- nothing\n /* here */ ;", Err(Refusal::Empty)),
            ("SELECT 1\0; VACUUM", Err(Refusal::Nul)),
        ];
        for (query, expected) in cases {
            assert_eq!(&sqlite(query), expected, "{query:?}");
        }
    }

    #[test]
    fn postgres_queries_are_classified_by_their_first_word() {
        let cases: &[(&str, Result<(), Refusal>)] = &[
            ("SELECT email FROM people", Ok(())),
            ("(SELECT 1) UNION (SELECT 2)", Ok(())),
            ("/* a /* nested */ comment */ TABLE people", Ok(())),
            ("-- c\nwith t as (select 1) select * from t", Ok(())),
            (
                "COPY (SELECT email FROM people) TO '/tmp/x'",
                not_a_read("COPY"),
            ),
            ("/* /* */ COPY x TO 'f' */ SELECT 1", Ok(())),
            ("/* /* */ COPY x TO 'f'", Err(Refusal::Empty)),
            ("DELETE FROM people", not_a_read("DELETE")),
            ("'SELECT'", not_a_read("'")),
            ("  ", Err(Refusal::Empty)),
        ];
        for (query, expected) in cases {
            assert_eq!(&postgres(query), expected, "{query:?}");
        }
    }

    #[test]
    fn a_refused_first_word_is_quoted_short() {
        let long = "X".repeat(500);

        let refusal = sqlite(&long).expect_err("not a read");

        assert_eq!(refusal, Refusal::NotARead("X".repeat(SHOWN_WORD_CHARS)));
    }
}
