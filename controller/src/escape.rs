//! Peer-supplied text made safe to log or print.
//!
//! Anything a peer sends (a node name, a token, CSR fields, an agent's error
//! text) may hold newlines that forge log lines, escape sequences that rewrite
//! a terminal, or megabytes. `escape_peer` bounds it and makes every control
//! character visible.

use std::fmt::Write;

/// `s` with every control character escaped and cut to at most `max`
/// characters (escapes count by their escaped length and are never split).
///
/// - `\n`, `\r`, `\t` become `\n`, `\r`, `\t`; other C0 controls and DEL
///   become `\xNN` (ESC is `\x1b`); C1 controls, the Unicode line and paragraph
///   separators and the bidirectional overrides and isolates (which reorder
///   what a terminal shows) become `\u{NNNN}`. Everything else, backslashes
///   included, is kept as is.
/// - When something is cut, `…(+N chars)` follows, N being the number of
///   characters of `s` left out, so the result is at most `max` characters
///   plus that marker.
pub fn escape_peer(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 2);
    let mut shown = 0usize;
    for (taken, c) in s.chars().enumerate() {
        let mut one = [0u8; 4];
        let piece: std::borrow::Cow<'_, str> = match c {
            '\n' => "\\n".into(),
            '\r' => "\\r".into(),
            '\t' => "\\t".into(),
            c if (c as u32) < 0x20 || c == '\x7f' => format!("\\x{:02x}", c as u32).into(),
            c if needs_unicode_escape(c) => format!("\\u{{{:04x}}}", c as u32).into(),
            c => (&*c.encode_utf8(&mut one)).into(),
        };
        let len = piece.chars().count();
        if shown + len > max {
            let left = s.chars().count() - taken;
            let _ = write!(out, "…(+{left} chars)");
            return out;
        }
        shown += len;
        out.push_str(&piece);
    }
    out
}

/// C1 controls, line/paragraph separators, bidi embeddings, overrides and
/// isolates.
fn needs_unicode_escape(c: char) -> bool {
    matches!(c as u32,
        0x80..=0x9f | 0x2028 | 0x2029 | 0x200e | 0x200f | 0x202a..=0x202e | 0x2066..=0x2069)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(escape_peer("dpu-7", 64), "dpu-7");
        assert_eq!(escape_peer("", 64), "");
        assert_eq!(escape_peer("a\\nb \"q\" ü 漢", 64), "a\\nb \"q\" ü 漢");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_peer("a\nb", 64), "a\\nb");
        assert_eq!(escape_peer("\r\t", 64), "\\r\\t");
        assert_eq!(escape_peer("\x1b[2J\x1b[H", 64), "\\x1b[2J\\x1b[H");
        assert_eq!(escape_peer("\0\x07\x7f", 64), "\\x00\\x07\\x7f");
        assert_eq!(escape_peer("\u{9b}31m", 64), "\\u{009b}31m");
        assert_eq!(
            escape_peer("x\u{202e}y\u{2028}", 64),
            "x\\u{202e}y\\u{2028}"
        );
        let forged = escape_peer("bad\n2026-01-01T00:00:00Z  INFO forged line", 200);
        assert!(!forged.contains('\n'), "{forged}");
    }

    #[test]
    fn long_text_is_cut_with_a_marker() {
        assert_eq!(escape_peer("abcdef", 6), "abcdef");
        assert_eq!(escape_peer("abcdef", 3), "abc…(+3 chars)");
        assert_eq!(escape_peer("abc", 0), "…(+3 chars)");
        // An escape is never split: "\n" needs two characters.
        assert_eq!(escape_peer("ab\ncd", 3), "ab…(+3 chars)");
        assert_eq!(escape_peer("ab\ncd", 4), "ab\\n…(+2 chars)");
        // Characters, not bytes.
        assert_eq!(escape_peer("ééé", 2), "éé…(+1 chars)");
        let huge = "x".repeat(100_000);
        let cut = escape_peer(&huge, 64);
        assert!(cut.chars().count() < 64 + 20, "{cut}");
        assert!(cut.ends_with("…(+99936 chars)"), "{cut}");
    }
}
