//! The text format of the `VERSION` file.
//!
//! ```text
//! # layout-core VERSION file: the on-disk layout of one component.
//! # Do not edit by hand: the checksum line guards every byte above it.
//! format.version=1
//! component=OzoneManager
//! layout.version=2
//! layout.feature=MultiTenancy
//! first.upgrade.version=2
//! checksum=crc32:1c291ca3
//! ```
//!
//! Lines are `key=value`; lines starting with `#` are comments. Values escape `\`,
//! control characters and newlines (`\\`, `\n`, `\r`, `\t`, `\xHH`). Optional keys:
//! `finalization.client`, `finalization.target`, `finalization.started.ms`,
//! `finalization.finished.ms`, `finalization.feature` and `finalization.action` (the
//! `OnFinalize` action running), `finalization.cancelled.client` and
//! `finalization.cancelled.ms` (an operator's cancel), `finalization.resumes` (resumes at
//! start-up; absent when 0), `history.N.{at.ms,client,event,from,to,detail}`,
//! `prepare.index`, `veto.{reason,client,at.ms,expires.ms}`, `data.id` (32 lowercase hex
//! digits: the [`DataId`] of the component's data; absent in files
//! written before it existed, which stay readable). Keys this release does not know are kept, in order, and written
//! back. The last line is `checksum=crc32:XXXXXXXX` (eight lowercase hex digits): the
//! CRC-32 of every byte before that line. The file ends with a newline.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;

use crate::state::{
    CancelRecord, DataId, FinalizationRecord, HistoryEntry, HistoryEvent, LayoutState, VetoRecord,
    FORMAT_VERSION,
};

const CHECKSUM_KEY: &str = "checksum";
const CHECKSUM_PREFIX: &str = "checksum=crc32:";

const HEADER: &str = "# layout-core VERSION file: the on-disk layout of one component.\n\
                      # Do not edit by hand: the checksum line guards every byte above it.\n";

/// What is wrong with a damaged VERSION file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Damage {
    /// The file is empty.
    Empty,
    /// The file is not valid UTF-8.
    NotUtf8,
    /// The file does not end with a newline (it was truncated).
    NoFinalNewline,
    /// No checksum line ends the file (truncated, or a line was appended after it).
    MissingChecksum,
    /// The checksum line is not `checksum=crc32:` and eight lowercase hex digits.
    MalformedChecksum,
    /// The checksum does not match the content (torn write, bit rot, hand edit).
    ChecksumMismatch {
        /// The checksum the file records.
        recorded: u32,
        /// The checksum of its content.
        computed: u32,
    },
    /// A line is neither a comment nor `key=value`.
    MalformedLine {
        /// 1-based line number.
        line: usize,
    },
    /// A key appears twice.
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A required key is absent.
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// A value cannot be parsed or unescaped.
    BadValue {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the file is empty"),
            Self::NotUtf8 => f.write_str("the file is not UTF-8 text"),
            Self::NoFinalNewline => {
                f.write_str("the file does not end with a newline (truncated?)")
            }
            Self::MissingChecksum => {
                f.write_str("the last line is not a checksum line (truncated, or appended to?)")
            }
            Self::MalformedChecksum => f.write_str("the checksum line is malformed"),
            Self::ChecksumMismatch { recorded, computed } => write!(
                f,
                "checksum mismatch: the file records crc32:{recorded:08x} but its content \
                 hashes to crc32:{computed:08x} (torn write, bit rot or a hand edit)"
            ),
            Self::MalformedLine { line } => {
                write!(f, "line {line} is neither a comment nor key=value")
            }
            Self::DuplicateKey { key } => write!(f, "key {key:?} appears twice"),
            Self::MissingKey { key } => write!(f, "required key {key:?} is missing"),
            Self::BadValue { key, reason } => {
                write!(f, "the value of {key:?} is invalid: {reason}")
            }
        }
    }
}

/// Why a VERSION file could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The file is damaged.
    Damaged(Damage),
    /// The file is intact but written in another format version.
    UnsupportedFormat(u32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Damaged(damage) => write!(f, "damaged: {damage}"),
            Self::UnsupportedFormat(found) => write!(
                f,
                "written in file format {found}; this release reads only format {FORMAT_VERSION}"
            ),
        }
    }
}

impl From<Damage> for DecodeError {
    fn from(damage: Damage) -> Self {
        Self::Damaged(damage)
    }
}

/// Encodes `state` as the text of a VERSION file (checksum line included).
pub fn encode(state: &LayoutState) -> String {
    let mut out = String::from(HEADER);
    let mut put = |key: &str, value: &str| {
        out.push_str(key);
        out.push('=');
        escape_into(value, &mut out);
        out.push('\n');
    };
    put("format.version", &state.format_version.to_string());
    put("component", &state.component);
    put("layout.version", &state.layout_version.to_string());
    put("layout.feature", &state.layout_feature);
    put(
        "first.upgrade.version",
        &state.first_upgrade_version.to_string(),
    );
    if let Some(record) = &state.finalization {
        put("finalization.client", &record.client_id);
        put("finalization.target", &record.target_version.to_string());
        put("finalization.started.ms", &record.started_at_ms.to_string());
        if let Some(finished) = record.finished_at_ms {
            put("finalization.finished.ms", &finished.to_string());
        }
        if let Some(feature) = &record.running_feature {
            put("finalization.feature", feature);
        }
        if let Some(action) = &record.running_action {
            put("finalization.action", action);
        }
        if let Some(cancel) = &record.cancelled {
            put("finalization.cancelled.client", &cancel.client_id);
            put("finalization.cancelled.ms", &cancel.at_ms.to_string());
        }
        if record.resumes > 0 {
            put("finalization.resumes", &record.resumes.to_string());
        }
    }
    for (i, entry) in state.history.iter().enumerate() {
        put(&format!("history.{i}.at.ms"), &entry.at_ms.to_string());
        put(&format!("history.{i}.client"), &entry.client_id);
        put(&format!("history.{i}.event"), entry.event.as_str());
        put(
            &format!("history.{i}.from"),
            &entry.from_version.to_string(),
        );
        put(&format!("history.{i}.to"), &entry.to_version.to_string());
        put(&format!("history.{i}.detail"), &entry.detail);
    }
    if let Some(index) = state.prepare_index {
        put("prepare.index", &index.to_string());
    }
    if let Some(veto) = &state.veto {
        put("veto.reason", &veto.reason);
        put("veto.client", &veto.client_id);
        put("veto.at.ms", &veto.set_at_ms.to_string());
        if let Some(expiry) = veto.expires_at_ms {
            put("veto.expires.ms", &expiry.to_string());
        }
    }
    if let Some(data_id) = state.data_id {
        put("data.id", &data_id.to_string());
    }
    for (key, value) in &state.extra {
        put(key, value);
    }
    let checksum = crc32fast::hash(out.as_bytes());
    let _ = writeln!(out, "{CHECKSUM_PREFIX}{checksum:08x}");
    out
}

/// Decodes the bytes of a VERSION file.
pub fn decode(bytes: &[u8]) -> Result<LayoutState, DecodeError> {
    if bytes.is_empty() {
        return Err(Damage::Empty.into());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Damage::NotUtf8)?;
    let body = text.strip_suffix('\n').ok_or(Damage::NoFinalNewline)?;
    let checksum_start = body.rfind('\n').map_or(0, |i| i + 1);
    let checksum_line = &body[checksum_start..];
    if !checksum_line.starts_with(CHECKSUM_KEY) {
        return Err(Damage::MissingChecksum.into());
    }
    let recorded = parse_checksum(checksum_line).ok_or(Damage::MalformedChecksum)?;
    let covered = &text[..checksum_start];
    let computed = crc32fast::hash(covered.as_bytes());
    if recorded != computed {
        return Err(Damage::ChecksumMismatch { recorded, computed }.into());
    }

    let mut map = BTreeMap::new();
    for (n, line) in covered.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, raw) = line
            .split_once('=')
            .ok_or(Damage::MalformedLine { line: n + 1 })?;
        if !is_valid_key(key) || key == CHECKSUM_KEY {
            return Err(Damage::MalformedLine { line: n + 1 }.into());
        }
        let value = unescape(raw).ok_or_else(|| Damage::BadValue {
            key: key.to_owned(),
            reason: "bad escape sequence",
        })?;
        if map.insert(key.to_owned(), value).is_some() {
            return Err(Damage::DuplicateKey {
                key: key.to_owned(),
            }
            .into());
        }
    }
    Fields { map }.into_state()
}

/// Where in a VERSION file something is: a 1-based line and, when known, a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 0-based byte offset into the file, when the problem is at one byte.
    pub byte: Option<usize>,
}

/// What one line of a VERSION file is, as [`inspect`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LineKind {
    /// Empty.
    Blank,
    /// A `#` comment.
    Comment,
    /// `key=value`.
    Field {
        /// The key.
        key: String,
        /// The unescaped value (`None` when its escapes are bad).
        value: Option<String>,
        /// What the key means to this release (`None`: unknown, kept for a newer one).
        meaning: Option<&'static str>,
    },
    /// The checksum line.
    Checksum {
        /// The checksum it records, if well-formed.
        recorded: Option<u32>,
    },
    /// Neither a comment nor `key=value`.
    Malformed,
}

/// One line of a VERSION file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InspectedLine {
    /// 1-based line number.
    pub number: usize,
    /// The line's text (invalid UTF-8 replaced).
    pub text: String,
    /// What it is.
    pub kind: LineKind,
}

/// A VERSION file explained, damaged or not: its lines, its checksum, and what the
/// strict reader makes of it (with where the damage is). For `layoutctl inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inspection {
    /// The file's size in bytes.
    pub size: usize,
    /// Every line.
    pub lines: Vec<InspectedLine>,
    /// The checksum recorded on the last line, if there is a well-formed one.
    pub recorded_checksum: Option<u32>,
    /// The CRC-32 of everything before the last line.
    pub computed_checksum: u32,
    /// What the strict reader makes of the file.
    pub result: Result<LayoutState, DecodeError>,
    /// Where the damage is, when the file is damaged and it can be pinned down.
    pub damage_location: Option<Location>,
}

/// Reads `bytes` as a VERSION file leniently, line by line, and strictly (as the
/// manager does), and explains both. Never fails: a damaged file is what it explains.
///
/// ```
/// use layout_core::storage::format::{encode, inspect};
/// use layout_core::state::LayoutState;
/// use layout_core::storage::format::Damage;
///
/// let mut text = encode(&LayoutState::new("om", 1, "BucketLayoutSupport")).into_bytes();
/// assert!(inspect(&text).result.is_ok());
/// let at = text.iter().position(|&b| b == b'1').unwrap();
/// text[at] = b'2'; // a hand edit
/// let report = inspect(&text);
/// assert!(matches!(report.result, Err(layout_core::storage::format::DecodeError::Damaged(Damage::ChecksumMismatch { .. }))));
/// assert_eq!(report.damage_location.map(|l| l.line), Some(report.lines.len()));
/// ```
pub fn inspect(bytes: &[u8]) -> Inspection {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = Vec::new();
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let line_count = if bytes.is_empty() {
        0
    } else {
        body.split('\n').count()
    };
    let mut recorded_checksum = None;
    for (i, line) in body.split('\n').enumerate().take(line_count) {
        let kind = if line.is_empty() {
            LineKind::Blank
        } else if line.starts_with('#') {
            LineKind::Comment
        } else if i + 1 == line_count && line.starts_with(CHECKSUM_KEY) {
            recorded_checksum = parse_checksum(line);
            LineKind::Checksum {
                recorded: recorded_checksum,
            }
        } else if let Some((key, raw)) = line.split_once('=').filter(|(k, _)| is_valid_key(k)) {
            LineKind::Field {
                key: key.to_owned(),
                value: unescape(raw),
                meaning: key_meaning(key),
            }
        } else {
            LineKind::Malformed
        };
        lines.push(InspectedLine {
            number: i + 1,
            text: line.to_owned(),
            kind,
        });
    }
    let covered = bytes
        .strip_suffix(b"\n")
        .unwrap_or(bytes)
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&bytes[..0], |i| &bytes[..=i]);
    let result = decode(bytes);
    let damage_location = match &result {
        Err(DecodeError::Damaged(damage)) => locate(bytes, &lines, damage),
        _ => None,
    };
    Inspection {
        size: bytes.len(),
        lines,
        recorded_checksum,
        computed_checksum: crc32fast::hash(covered),
        result,
        damage_location,
    }
}

fn locate(bytes: &[u8], lines: &[InspectedLine], damage: &Damage) -> Option<Location> {
    let at_line = |line: usize| Some(Location { line, byte: None });
    let line_of_key = |key: &str, nth: usize| {
        lines
            .iter()
            .filter(|l| matches!(&l.kind, LineKind::Field { key: k, .. } if k == key))
            .nth(nth)
            .map(|l| Location {
                line: l.number,
                byte: None,
            })
    };
    match damage {
        Damage::Empty | Damage::MissingKey { .. } => None,
        Damage::NotUtf8 => {
            let valid = std::str::from_utf8(bytes).err()?.valid_up_to();
            // A few hundred bytes at most: no need for a faster count.
            #[allow(clippy::naive_bytecount)]
            let line = bytes[..valid].iter().filter(|&&b| b == b'\n').count() + 1;
            Some(Location {
                line,
                byte: Some(valid),
            })
        }
        Damage::NoFinalNewline
        | Damage::MissingChecksum
        | Damage::MalformedChecksum
        | Damage::ChecksumMismatch { .. } => at_line(lines.len().max(1)),
        Damage::MalformedLine { line } => at_line(*line),
        Damage::DuplicateKey { key } => line_of_key(key, 1),
        Damage::BadValue { key, .. } => line_of_key(key, 0).or_else(|| {
            // Generic history keys (`history.N.at.ms`) name the field, not the entry.
            let field = key.strip_prefix("history.N.")?;
            lines.iter().find_map(|l| match &l.kind {
                LineKind::Field { key: k, value, .. }
                    if k.starts_with("history.") && k.ends_with(field) && {
                        let v = value.as_deref().unwrap_or("");
                        parse_num::<u64>(k, v).is_err()
                    } =>
                {
                    at_line(l.number)
                }
                _ => None,
            })
        }),
    }
}

/// What a key means, for [`inspect`]; `None` for keys this release does not know.
fn key_meaning(key: &str) -> Option<&'static str> {
    Some(match key {
        "format.version" => "version of this file's format",
        "component" => "the component this state belongs to",
        "layout.version" => "metadata layout version (MLV): the highest finalized layout feature",
        "layout.feature" => "the name of the layout feature at the MLV",
        "first.upgrade.version" => {
            "first-upgrade actions have run for every feature up to this version"
        }
        "finalization.client" => "the client the last finalization is bound to",
        "finalization.target" => "the layout version the last finalization moves towards",
        "finalization.started.ms" => "when the last finalization started (ms since the epoch)",
        "finalization.finished.ms" => "when the last finalization finished (ms since the epoch)",
        "finalization.feature" => {
            "the feature whose onFinalize action was running (resumed at start-up unless cancelled)"
        }
        "finalization.action" => "the name of that onFinalize action",
        "finalization.cancelled.client" => {
            "who cancelled the finalization (it is not resumed at start-up)"
        }
        "finalization.cancelled.ms" => "when the finalization was cancelled (ms since the epoch)",
        "finalization.resumes" => "how many times the finalization was resumed at start-up",
        "prepare.index" => {
            "prepared at this log index: writes and finalize are refused until prepare is cancelled"
        }
        "veto.reason" => "why automatic finalization is vetoed",
        "veto.client" => "who vetoed automatic finalization",
        "veto.at.ms" => "when the veto was set (ms since the epoch)",
        "veto.expires.ms" => "when the veto lapses (ms since the epoch)",
        "data.id" => "the identity of the component's data: its store records the same id",
        _ => {
            let (_, field) = key
                .strip_prefix("history.")?
                .split_once('.')
                .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))?;
            match field {
                "at.ms" => "history: when (ms since the epoch)",
                "client" => "history: who",
                "event" => "history: what happened",
                "from" => "history: the MLV before",
                "to" => "history: the MLV after",
                "detail" => "history: details (features, override reasons)",
                _ => return None,
            }
        }
    })
}

struct Fields {
    map: BTreeMap<String, String>,
}

impl Fields {
    fn take(&mut self, key: &'static str) -> Result<String, Damage> {
        self.map.remove(key).ok_or(Damage::MissingKey { key })
    }

    fn take_num<T: std::str::FromStr>(&mut self, key: &'static str) -> Result<T, Damage> {
        let value = self.take(key)?;
        parse_num(key, &value)
    }

    fn take_opt_num<T: std::str::FromStr>(
        &mut self,
        key: &'static str,
    ) -> Result<Option<T>, Damage> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(value) => parse_num(key, &value).map(Some),
        }
    }

    fn into_state(mut self) -> Result<LayoutState, DecodeError> {
        let format_version: u32 = self.take_num("format.version")?;
        if format_version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedFormat(format_version));
        }
        let component = self.take("component")?;
        let layout_version = self.take_num("layout.version")?;
        let layout_feature = self.take("layout.feature")?;
        let first_upgrade_version = self.take_num("first.upgrade.version")?;
        let finalization = match self.map.remove("finalization.client") {
            None => None,
            Some(client_id) => Some(FinalizationRecord {
                client_id,
                target_version: self.take_num("finalization.target")?,
                started_at_ms: self.take_num("finalization.started.ms")?,
                finished_at_ms: self.take_opt_num("finalization.finished.ms")?,
                running_feature: self.map.remove("finalization.feature"),
                running_action: self.map.remove("finalization.action"),
                cancelled: match self.map.remove("finalization.cancelled.client") {
                    None => None,
                    Some(client_id) => Some(CancelRecord {
                        client_id,
                        at_ms: self.take_num("finalization.cancelled.ms")?,
                    }),
                },
                resumes: self.take_opt_num("finalization.resumes")?.unwrap_or(0),
            }),
        };
        let mut history = Vec::new();
        loop {
            let i = history.len();
            let Some(at) = self.map.remove(&format!("history.{i}.at.ms")) else {
                break;
            };
            let mut field = |name: &str| {
                let key = format!("history.{i}.{name}");
                self.map
                    .remove(&key)
                    .ok_or(Damage::MissingKey { key: "history.N.*" })
            };
            let client_id = field("client")?;
            let event = field("event")?;
            let from = field("from")?;
            let to = field("to")?;
            let detail = field("detail")?;
            history.push(HistoryEntry {
                at_ms: parse_num("history.N.at.ms", &at)?,
                client_id,
                event: HistoryEvent::from_word(&event),
                from_version: parse_num("history.N.from", &from)?,
                to_version: parse_num("history.N.to", &to)?,
                detail,
            });
        }
        let prepare_index = self.take_opt_num("prepare.index")?;
        let veto = match self.map.remove("veto.reason") {
            None => None,
            Some(reason) => Some(VetoRecord {
                reason,
                client_id: self.take("veto.client")?,
                set_at_ms: self.take_num("veto.at.ms")?,
                expires_at_ms: self.take_opt_num("veto.expires.ms")?,
            }),
        };
        let data_id = match self.map.remove("data.id") {
            None => None,
            Some(text) => Some(text.parse::<DataId>().map_err(|_| Damage::BadValue {
                key: "data.id".to_owned(),
                reason: "not 32 lowercase hex digits",
            })?),
        };
        // A known field left over from an incomplete record (history.3 without
        // history.2, a finalization field without its client) is damage; a key this
        // release does not know at all was written by a newer release and is kept.
        if let Some(key) = self.map.keys().find(|k| is_orphaned_known_key(k)) {
            return Err(Damage::BadValue {
                key: key.clone(),
                reason: "belongs to an incomplete record",
            }
            .into());
        }
        Ok(LayoutState {
            format_version,
            component,
            layout_version,
            layout_feature,
            first_upgrade_version,
            finalization,
            history,
            prepare_index,
            veto,
            data_id,
            extra: self.map,
        })
    }
}

fn is_orphaned_known_key(key: &str) -> bool {
    const FINALIZATION: [&str; 11] = [
        "finalization.target",
        "finalization.started.ms",
        "finalization.finished.ms",
        "finalization.feature",
        "finalization.action",
        "finalization.cancelled.client",
        "finalization.cancelled.ms",
        "finalization.resumes",
        "veto.client",
        "veto.at.ms",
        "veto.expires.ms",
    ];
    const HISTORY: [&str; 6] = ["at.ms", "client", "event", "from", "to", "detail"];
    if FINALIZATION.contains(&key) {
        return true;
    }
    key.strip_prefix("history.")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(n, field)| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && HISTORY.contains(&field)
        })
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, Damage> {
    // Only canonical decimal: no sign, no leading zeros, so one state has one encoding.
    let canonical = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    if !canonical {
        return Err(Damage::BadValue {
            key: key.to_owned(),
            reason: "not a canonical decimal number",
        });
    }
    value.parse().map_err(|_| Damage::BadValue {
        key: key.to_owned(),
        reason: "number out of range",
    })
}

fn parse_checksum(line: &str) -> Option<u32> {
    let hex = line.strip_prefix(CHECKSUM_PREFIX)?;
    let lower_hex = hex.len() == 8 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lower_hex {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Whether `key` may appear in a VERSION file: ASCII letters, digits, `.`, `_`, `-`.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if (c as u32) < 0x20 || c as u32 == 0x7f {
            return None; // raw control characters are never written
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'x' => {
                let hi = chars.next()?;
                let lo = chars.next()?;
                let hex: String = [hi, lo].iter().collect();
                if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return None;
                }
                let code = u8::from_str_radix(&hex, 16).ok()?;
                if code >= 0x20 && code != 0x7f {
                    return None; // only control characters are written as \xHH
                }
                out.push(char::from(code));
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_state() -> LayoutState {
        let mut state = LayoutState::new("Om\nManager=x\\y", 2, "MultiTenancy");
        state.first_upgrade_version = 3;
        state.finalization = Some(FinalizationRecord {
            client_id: "admin\t1".into(),
            target_version: 3,
            started_at_ms: 1_700_000_000_000,
            finished_at_ms: Some(1_700_000_000_500),
            running_feature: Some("MultiTenancy".into()),
            running_action: Some("create tables".into()),
            cancelled: Some(CancelRecord::new("ops", 1_700_000_000_400)),
            resumes: 2,
        });
        state.history.push(HistoryEntry::new(
            1,
            "a",
            HistoryEvent::Finalized,
            0,
            1,
            "x\u{1}y",
        ));
        state.history.push(HistoryEntry::new(
            2,
            "b",
            HistoryEvent::Override,
            1,
            1,
            "reason: ünïcode",
        ));
        state.prepare_index = Some(42);
        state.veto = Some(VetoRecord::new(
            "keep downgrade\npossible",
            "ops",
            7,
            Some(9),
        ));
        state.extra.insert("newer.release.key".into(), "v=1".into());
        state.data_id = Some(DataId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677));
        state
    }

    #[test]
    fn a_file_without_a_data_id_stays_readable() {
        let mut state = full_state();
        state.data_id = None;
        let text = encode(&state);
        assert!(!text.contains("data.id"));
        assert_eq!(decode(text.as_bytes()), Ok(state));
    }

    /// A file written before the running feature, the cancel and the resume count
    /// existed (as a release before them wrote it, byte for byte): it reads, with none of
    /// them, so the finalization it records is not taken for an interrupted one.
    #[test]
    fn a_finalization_record_written_before_resume_at_start_up_stays_readable() {
        let body = "# layout-core VERSION file: the on-disk layout of one component.\n\
                    # Do not edit by hand: the checksum line guards every byte above it.\n\
                    format.version=1\n\
                    component=om\n\
                    layout.version=1\n\
                    layout.feature=A\n\
                    first.upgrade.version=2\n\
                    finalization.client=ops\n\
                    finalization.target=2\n\
                    finalization.started.ms=1767225600000\n";
        let text = format!(
            "{body}checksum=crc32:{:08x}\n",
            crc32fast::hash(body.as_bytes())
        );
        let state = decode(text.as_bytes()).expect("an old file reads");
        let record = state.finalization.expect("its finalization record");
        assert_eq!(record.client_id, "ops");
        assert_eq!(record.running_feature, None);
        assert_eq!(record.cancelled, None);
        assert_eq!(record.resumes, 0);
        assert!(!record.is_interrupted());
        assert!(state.extra.is_empty());
        // Written back unchanged: nothing new appears for a record without the new fields.
        assert_eq!(encode(&decode(text.as_bytes()).expect("reads")), text);
    }

    /// A history written by a release that stored the event as a free word (byte for
    /// byte): every word this release knows reads as its event, and the file is written
    /// back unchanged.
    #[test]
    fn history_events_keep_their_words_in_the_file() {
        let words = ["finalized", "override", "takeover", "veto", "veto-lifted"];
        let mut body = "# layout-core VERSION file: the on-disk layout of one component.\n\
                        # Do not edit by hand: the checksum line guards every byte above it.\n\
                        format.version=1\n\
                        component=om\n\
                        layout.version=1\n\
                        layout.feature=A\n\
                        first.upgrade.version=1\n"
            .to_owned();
        for (i, word) in words.iter().enumerate() {
            let _ = write!(
                body,
                "history.{i}.at.ms={i}\nhistory.{i}.client=ops\nhistory.{i}.event={word}\n\
                 history.{i}.from=0\nhistory.{i}.to=1\nhistory.{i}.detail=\n"
            );
        }
        let text = format!(
            "{body}checksum=crc32:{:08x}\n",
            crc32fast::hash(body.as_bytes())
        );
        let state = decode(text.as_bytes()).expect("an old file reads");
        let events: Vec<HistoryEvent> = state.history.iter().map(|h| h.event.clone()).collect();
        assert_eq!(
            events,
            [
                HistoryEvent::Finalized,
                HistoryEvent::Override,
                HistoryEvent::Takeover,
                HistoryEvent::Veto,
                HistoryEvent::VetoLifted,
            ]
        );
        assert_eq!(encode(&state), text);
    }

    /// A newer release wrote an event this release does not know; a downgraded binary
    /// reads it as `Other` and writes the same word back.
    #[test]
    fn an_unknown_history_event_survives_a_round_trip() {
        let mut state = LayoutState::new("om", 1, "B");
        state.history.push(HistoryEntry::new(
            5,
            "ops",
            HistoryEvent::from_word("rolled-back"),
            1,
            0,
            "newer",
        ));
        let text = encode(&state);
        assert!(text.contains("history.0.event=rolled-back\n"), "{text}");
        let read = decode(text.as_bytes()).expect("reads");
        assert_eq!(
            read.history[0].event,
            HistoryEvent::Other("rolled-back".to_owned())
        );
        assert_eq!(encode(&read), text);
    }

    #[test]
    fn a_cancel_without_its_client_is_damage() {
        let mut text = encode(&LayoutState::new("om", 1, "B"));
        let body_end = text.rfind("checksum=").expect("checksum line");
        text.truncate(body_end);
        text.push_str("finalization.cancelled.ms=5\n");
        let checksum = crc32fast::hash(text.as_bytes());
        let _ = writeln!(text, "{CHECKSUM_PREFIX}{checksum:08x}");
        assert!(matches!(
            decode(text.as_bytes()),
            Err(DecodeError::Damaged(Damage::BadValue { key, .. })) if key == "finalization.cancelled.ms"
        ));
    }

    #[test]
    fn a_bad_data_id_is_damage() {
        let mut text = encode(&LayoutState::new("om", 1, "B"));
        let body_end = text.rfind("checksum=").expect("checksum line");
        text.truncate(body_end);
        text.push_str("data.id=0123\n");
        let checksum = crc32fast::hash(text.as_bytes());
        let _ = writeln!(text, "{CHECKSUM_PREFIX}{checksum:08x}");
        assert!(matches!(
            decode(text.as_bytes()),
            Err(DecodeError::Damaged(Damage::BadValue { key, .. })) if key == "data.id"
        ));
    }

    #[test]
    fn round_trips_every_field() {
        let state = full_state();
        let text = encode(&state);
        assert_eq!(decode(text.as_bytes()), Ok(state));
    }

    #[test]
    fn one_state_has_one_encoding() {
        let text = encode(&full_state());
        let again = encode(&decode(text.as_bytes()).expect("decodes"));
        assert_eq!(text, again);
    }

    #[test]
    fn rejects_non_canonical_numbers_and_escapes() {
        assert!(parse_num::<u32>("k", "01").is_err());
        assert!(parse_num::<u32>("k", "+1").is_err());
        assert!(parse_num::<u32>("k", "").is_err());
        assert!(parse_num::<u32>("k", "4294967296").is_err());
        assert_eq!(unescape("\\x41"), None);
        assert_eq!(unescape("\\q"), None);
        assert_eq!(unescape("a\\"), None);
        assert_eq!(unescape("\\x0a").as_deref(), Some("\n"));
    }

    #[test]
    fn another_format_version_is_not_damage() {
        let mut state = full_state();
        state.format_version = 2;
        let text = encode(&state);
        assert_eq!(
            decode(text.as_bytes()),
            Err(DecodeError::UnsupportedFormat(2))
        );
    }
}
