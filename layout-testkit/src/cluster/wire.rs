//! The line protocol between the kit and its child processes (nodes and the
//! coordinator): the parent writes one command per line on the child's stdin, the child
//! answers with a step line on stdout; fields are percent-encoded.

use std::fmt::Write as _;
use std::io;

use crate::crash::ORPHANED_EXIT_CODE;

/// Percent-encodes `text` as one protocol field.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    out.push('\'');
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"._:/-,+".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes a field made by [`encode`].
pub(crate) fn decode(field: &str) -> Option<String> {
    let body = field.strip_prefix('\'')?;
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = body.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One command from the parent: a line `<id> <command> <encoded argument>...`.
pub(crate) struct ParentCommand {
    /// The id the answer carries.
    pub(crate) id: String,
    /// The command word (`None` on a line with an id only).
    pub(crate) word: Option<String>,
    /// The decoded arguments.
    pub(crate) args: Vec<String>,
    /// The whole line, for an error that quotes it.
    pub(crate) line: String,
}

/// Waits for the parent's next command on stdin, skipping blank lines; exits the process
/// with [`ORPHANED_EXIT_CODE`] when stdin closes (the parent is gone). One line at a
/// time, the lock released in between: a crash point's `block_until_killed` reads stdin
/// too.
pub(crate) fn next_command() -> ParentCommand {
    let mut line = String::new();
    loop {
        line.clear();
        match io::stdin().read_line(&mut line) {
            Ok(0) | Err(_) => std::process::exit(ORPHANED_EXIT_CODE),
            Ok(_) => {}
        }
        let mut words = line.split_whitespace();
        let Some(id) = words.next() else {
            continue;
        };
        return ParentCommand {
            id: id.to_owned(),
            word: words.next().map(ToOwned::to_owned),
            args: words.filter_map(decode).collect(),
            line: line.clone(),
        };
    }
}
