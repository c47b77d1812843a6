//! Text for the terminal: what the endpoint sends (error messages, feature names,
//! condition reasons, status messages) is shown, never obeyed. Control characters (ESC
//! and the escape sequences it starts, carriage returns and newlines that would forge
//! lines, C1 controls) and bidirectional overrides are printed as Rust escapes
//! (`\u{1b}`), so the operator sees them. `--json` output is JSON-escaped by serde
//! instead and does not go through here.

use std::borrow::Cow;

/// `text` with every control or bidirectional-formatting character escaped.
pub(crate) fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Control characters (C0, DEL, C1) and the characters that reorder text on display
/// (bidirectional embeddings, overrides and isolates, the directional marks).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `println!` of one line that may hold text from the endpoint: the whole line is
/// cleaned, so no field can be forgotten.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", $crate::terminal::clean(&format!($($arg)*)))
    };
}

/// `eprintln!` of one line that may hold text from the endpoint, cleaned.
macro_rules! warn_line {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::terminal::clean(&format!($($arg)*)))
    };
}

pub(crate) use {say, warn_line};

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn escape_sequences_and_forged_lines_are_shown_not_obeyed() {
        assert_eq!(clean("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(clean("\u{1b}[31mred\u{1b}[0m"), "\\u{1b}[31mred\\u{1b}[0m");
        assert_eq!(clean("a\nforged\rline\u{9b}"), "a\\nforged\\rline\\u{9b}");
        assert_eq!(clean("abc\u{202e}fed"), "abc\\u{202e}fed");
    }
}
