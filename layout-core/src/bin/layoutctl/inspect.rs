//! `layoutctl inspect`: explain a VERSION file offline, damaged or not.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use layout_core::prepare::MARKER_FILE_NAME;
use layout_core::state::LayoutState;
use layout_core::storage::format::{inspect, DecodeError, Inspection, LineKind};
use layout_core::storage::VERSION_FILE_NAME;
use serde_json::{json, Value};

use crate::exit;
use crate::terminal::{say, warn_line};

/// Runs `inspect` on `path` (a directory holding VERSION, or the file); returns the
/// exit code.
pub(crate) fn run(path: &Path, as_json: bool) -> u8 {
    let file = if path.is_dir() {
        path.join(VERSION_FILE_NAME)
    } else {
        path.to_owned()
    };
    let bytes = match read(&file) {
        Ok(bytes) => bytes,
        Err((code, problem)) => {
            if as_json {
                crate::print_json(&json!({
                    "path": file.display().to_string(),
                    "ok": false,
                    "problem": problem,
                    "exit_code": code,
                }));
            } else {
                warn_line!("layoutctl: {}: {problem}", file.display());
            }
            return code;
        }
    };
    let report = inspect(&bytes);
    let marker = file.parent().map(|dir| dir.join(MARKER_FILE_NAME));
    let marker = marker.filter(|m| m.exists()).map(|m| {
        let content = fs::read(&m).map_or_else(
            |e| format!("<unreadable: {e}>"),
            |b| String::from_utf8_lossy(&b).into_owned(),
        );
        (m, content)
    });
    let code = match &report.result {
        Ok(_) => exit::OK,
        Err(_) => exit::DAMAGED,
    };
    if as_json {
        crate::print_json(&to_json(&file, &report, marker.as_ref(), code));
    } else {
        print_text(&file, &report, marker.as_ref());
    }
    code
}

fn read(file: &Path) -> Result<Vec<u8>, (u8, String)> {
    match fs::symlink_metadata(file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err((
                exit::MISSING,
                "no VERSION file here: this is not a component directory, or its layout \
                 state is missing (never taken for a fresh install)"
                    .to_owned(),
            ))
        }
        Err(e) => return Err((exit::DAMAGED, format!("cannot stat: {e}"))),
        Ok(meta) if meta.file_type().is_symlink() && fs::metadata(file).is_err() => {
            let target = fs::read_link(file).unwrap_or_default();
            return Err((
                exit::DAMAGED,
                format!("a symlink to {}, which does not exist", target.display()),
            ));
        }
        Ok(_) => {}
    }
    if !fs::metadata(file).is_ok_and(|m| m.is_file()) {
        return Err((exit::DAMAGED, "not a regular file".to_owned()));
    }
    fs::read(file).map_err(|e| (exit::DAMAGED, format!("cannot read: {e}")))
}

fn verdict(report: &Inspection) -> String {
    match &report.result {
        Ok(_) => "OK: intact, checksum matches".to_owned(),
        Err(DecodeError::Damaged(damage)) => match report.damage_location {
            Some(at) => match at.byte {
                Some(byte) => format!("DAMAGED at line {} (byte {byte}): {damage}", at.line),
                None => format!("DAMAGED at line {}: {damage}", at.line),
            },
            None => format!("DAMAGED: {damage}"),
        },
        Err(other) => format!("UNREADABLE by this release: {other}"),
    }
}

fn print_text(file: &Path, report: &Inspection, marker: Option<&(PathBuf, String)>) {
    say!("VERSION file   {} ({} bytes)", file.display(), report.size);
    say!("verdict        {}", verdict(report));
    let checksum = match report.recorded_checksum {
        Some(recorded) if recorded == report.computed_checksum => {
            format!("crc32:{recorded:08x} (matches the content)")
        }
        Some(recorded) => format!(
            "recorded crc32:{recorded:08x}, content hashes to crc32:{:08x} (MISMATCH)",
            report.computed_checksum
        ),
        None => format!(
            "no well-formed checksum line (content hashes to crc32:{:08x})",
            report.computed_checksum
        ),
    };
    say!("checksum       {checksum}");
    say!("lines:");
    let damaged_line = report.damage_location.map(|l| l.line);
    for line in &report.lines {
        let mark = if Some(line.number) == damaged_line {
            ">>"
        } else {
            "  "
        };
        let note = match &line.kind {
            LineKind::Comment => "comment".to_owned(),
            LineKind::Checksum { .. } => "checksum of every byte above".to_owned(),
            LineKind::Malformed => "MALFORMED: neither a comment nor key=value".to_owned(),
            LineKind::Field { value: None, .. } => "BAD ESCAPE in the value".to_owned(),
            LineKind::Field {
                meaning: Some(m), ..
            } => (*m).to_owned(),
            LineKind::Field { meaning: None, .. } => {
                "unknown to this release (kept: written by a newer release?)".to_owned()
            }
            _ => String::new(),
        };
        say!("{mark}{:>4}  {:<44}  {note}", line.number, line.text);
    }
    if let Ok(state) = &report.result {
        print_state(state);
    }
    if let Some((path, content)) = marker {
        let recorded = report.result.as_ref().ok().and_then(|s| s.prepare_index);
        let agrees = match (content.trim().parse::<u64>().ok(), recorded) {
            (Some(a), Some(b)) if a == b => "agrees with VERSION".to_owned(),
            (Some(a), Some(b)) => format!("DISAGREES with VERSION (marker {a}, VERSION {b})"),
            (Some(_), None) => "but VERSION records no prepare".to_owned(),
            (None, _) => "EMPTY or GARBAGE".to_owned(),
        };
        say!(
            "prepare marker {} holds {:?}: {agrees}",
            path.display(),
            content.chars().take(64).collect::<String>()
        );
    }
}

fn print_state(state: &LayoutState) {
    say!("state:");
    say!("  component        {}", state.component);
    say!(
        "  MLV              {} ({})",
        state.layout_version,
        state.layout_feature
    );
    say!("  first-upgrade    {}", state.first_upgrade_version);
    match &state.finalization {
        Some(f) => say!(
            "  finalization     client {}, target {}, started {} ms, {}",
            f.client_id,
            f.target_version,
            f.started_at_ms,
            f.finished_at_ms
                .map_or_else(|| "UNFINISHED".to_owned(), |t| format!("finished {t} ms"))
        ),
        None => say!("  finalization     none recorded"),
    }
    match state.prepare_index {
        Some(index) => {
            say!("  prepare          PREPARED at log index {index} (writes and finalize refused)");
        }
        None => say!("  prepare          not prepared"),
    }
    if let Some(v) = &state.veto {
        say!("  veto             {} (by {})", v.reason, v.client_id);
    }
    say!("  history          {} entries", state.history.len());
    for h in &state.history {
        say!(
            "    {} ms  {:<12} {} -> {}  by {}  {}",
            h.at_ms,
            h.event,
            h.from_version,
            h.to_version,
            h.client_id,
            h.detail
        );
    }
    for (key, value) in &state.extra {
        say!("  unknown key      {key}={value}");
    }
}

fn to_json(
    file: &Path,
    report: &Inspection,
    marker: Option<&(PathBuf, String)>,
    code: u8,
) -> Value {
    let lines: Vec<Value> = report
        .lines
        .iter()
        .map(|l| {
            let (kind, key, value, meaning) = match &l.kind {
                LineKind::Blank => ("blank", None, None, None),
                LineKind::Comment => ("comment", None, None, None),
                LineKind::Checksum { .. } => ("checksum", None, None, None),
                LineKind::Field {
                    key,
                    value,
                    meaning,
                } => ("field", Some(key.clone()), value.clone(), *meaning),
                _ => ("malformed", None, None, None),
            };
            json!({"line": l.number, "text": l.text, "kind": kind, "key": key,
                   "value": value, "meaning": meaning})
        })
        .collect();
    let (damage, unsupported_format) = match &report.result {
        Err(DecodeError::Damaged(d)) => (Some(d.to_string()), None),
        Err(DecodeError::UnsupportedFormat(v)) => (None, Some(*v)),
        _ => (None, None),
    };
    let state = report.result.as_ref().ok().map(|s| {
        json!({
            "component": s.component,
            "metadata_layout_version": s.layout_version,
            "metadata_layout_feature": s.layout_feature,
            "first_upgrade_version": s.first_upgrade_version,
            "finalization": s.finalization.as_ref().map(|f| json!({
                "client_id": f.client_id, "target_version": f.target_version,
                "started_at_ms": f.started_at_ms, "finished_at_ms": f.finished_at_ms})),
            "prepare_index": s.prepare_index,
            "veto": s.veto.as_ref().map(|v| json!({"reason": v.reason, "client_id": v.client_id,
                "set_at_ms": v.set_at_ms, "expires_at_ms": v.expires_at_ms})),
            "history": s.history.iter().map(|h| json!({"at_ms": h.at_ms, "client_id": h.client_id,
                "event": h.event.as_str(), "from_version": h.from_version, "to_version": h.to_version,
                "detail": h.detail})).collect::<Vec<_>>(),
            "unknown_keys": s.extra,
        })
    });
    json!({
        "path": file.display().to_string(),
        "ok": report.result.is_ok(),
        "exit_code": code,
        "verdict": verdict(report),
        "size": report.size,
        "damage": damage,
        "damage_line": report.damage_location.map(|l| l.line),
        "damage_byte": report.damage_location.and_then(|l| l.byte),
        "unsupported_format": unsupported_format,
        "checksum": {"recorded": report.recorded_checksum.map(|c| format!("{c:08x}")),
                     "computed": format!("{:08x}", report.computed_checksum)},
        "lines": lines,
        "state": state,
        "prepare_marker": marker.map(|(p, c)| json!({"path": p.display().to_string(), "content": c})),
    })
}
