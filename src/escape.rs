//! Escaping text that came from outside (file names, server messages, values read from a
//! source) before it reaches a log line, a terminal or a reason file. A newline would forge a
//! log line, an ESC sequence would rewrite the terminal, a bidi override would make a name read
//! differently from what it is. [`untrusted`] shows each such character as a Rust escape
//! (`\n`, `\u{1b}`) and caps the length, so the reader sees what is there, bounded.
//!
//! The text logger applies it to every field (`telemetry.rs`), so a caller that forgets cannot
//! forge a line; call it directly where outside text goes anywhere else.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Longest outside text shown, in characters; a server message or a name longer than this
/// says nothing more of use, and a hostile one could be megabytes.
pub const MAX_SHOWN_CHARS: usize = 512;

/// `text` with control, bidi and other invisible formatting characters escaped, cut to
/// [`MAX_SHOWN_CHARS`] characters (marked with `…` when cut). Borrowed when nothing changes.
pub fn untrusted(text: &str) -> Cow<'_, str> {
    untrusted_capped(text, MAX_SHOWN_CHARS)
}

/// [`untrusted`] with a chosen cap, in characters.
pub fn untrusted_capped(text: &str, max_chars: usize) -> Cow<'_, str> {
    let long = text.chars().nth(max_chars).is_some();
    if !long && !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max_chars * 4) + 8);
    for c in text.chars().take(max_chars) {
        if needs_escape(c) {
            // `escape_debug` writes `\n`, `\t`, `\u{1b}`, `\u{202e}`: readable and unambiguous.
            let _ = write!(out, "{}", c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if long {
        out.push('…');
    }
    Cow::Owned(out)
}

/// Whether `text` shows as it is: nothing in it that [`untrusted`] would escape.
pub fn is_plain(text: &str) -> bool {
    !text.chars().any(needs_escape)
}

/// Whether `c` could change how a line reads or where it ends: control characters (C0, DEL,
/// C1), bidi embeddings, overrides and isolates, zero-width and line/paragraph separators.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' // zero-width space/joiners, LRM, RLM
                | '\u{2028}' | '\u{2029}' // line and paragraph separators
                | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
                | '\u{2066}'..='\u{2069}' // bidi isolates
                | '\u{feff}' // zero-width no-break space (BOM)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_that_change_how_a_line_reads_are_escaped_and_others_kept() {
        let cases = [
            ("plain name.trigger", "plain name.trigger"),
            ("a\nINFO forged", "a\\nINFO forged"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("tab\there", "tab\\there"),
            ("cr\rx", "cr\\rx"),
            ("abc\u{202e}gpj.exe", "abc\\u{202e}gpj.exe"),
            ("nul\0byte", "nul\\0byte"),
            ("c1\u{85}next", "c1\\u{85}next"),
            ("zero\u{200b}width", "zero\\u{200b}width"),
            ("用户@例子.广告", "用户@例子.广告"),
            ("quotes \" and \\ stay", "quotes \" and \\ stay"),
        ];
        for (input, shown) in cases {
            assert_eq!(untrusted(input), shown, "for {input:?}");
        }
    }

    #[test]
    fn clean_text_is_borrowed_not_copied() {
        assert!(matches!(untrusted("weekly.trigger"), Cow::Borrowed(_)));
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        let long = "x".repeat(MAX_SHOWN_CHARS + 10);
        let shown = untrusted(&long);
        assert_eq!(shown.chars().count(), MAX_SHOWN_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(untrusted_capped("abcdef", 3), "abc…");
        assert_eq!(untrusted_capped("abc", 3), "abc");
    }
}
