//! The prepare marker: restoring a controller from it (and validating it against the
//! component), persisting and clearing it, and Apache Ozone's separate marker file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::{fs, io};

use parking_lot::{Mutex, RwLock};

use super::error::{MarkerProblem, PrepareError};
use super::options::PrepareOptions;
use super::record::MarkerRecord;
use super::state::PrepareState;
use crate::durable;
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;
use crate::options::StartIntent;
use crate::{Preparable, PrepareController};

impl PrepareController {
    /// The controller of the component whose layout `lvm` manages, its prepare state
    /// restored from the marker and checked against `component` (see the
    /// [module docs](super)). Call it at start-up, before serving writes.
    ///
    /// With [`StartIntent::Upgrade`] or [`StartIntent::Downgrade`] prepare is cancelled
    /// locally: the marker file (if kept) is removed and the component starts not
    /// prepared. A bad marker is [`PrepareError::Marker`], and nothing is written. A
    /// leftover temporary marker file (`.<marker file>.<pid>.<n>.tmp`, or
    /// `<marker file>.tmp` of earlier releases, from a prepare killed while writing it) is
    /// removed first, and logged at warn.
    pub fn restore<F: LayoutFeature>(
        lvm: Arc<LayoutVersionManager<F>>,
        component: &dyn Preparable,
        options: PrepareOptions,
    ) -> Result<Self, PrepareError> {
        let record: Arc<dyn MarkerRecord> = lvm;
        let controller = Self {
            record,
            timeout: options.timeout,
            clock: options.clock,
            marker_file: options.marker_file,
            gate: AtomicBool::new(false),
            writes: RwLock::new(()),
            state: Mutex::new(PrepareState::NotPrepared),
            generation: AtomicU64::new(0),
            run: Mutex::new(()),
            last_failure: Mutex::new(None),
        };
        if let Some(path) = &controller.marker_file {
            // A prepare killed while it wrote the marker file leaves its temporary file.
            remove_leftover_temps(path)?;
        }
        let index = controller.validate_marker(component)?;
        if let Some(index) = index {
            controller.gate.store(true, Ordering::SeqCst);
            *controller.state.lock() = PrepareState::Prepared { index };
            tracing::info!(
                component = controller.record.component(),
                prepare_index = index,
                "restored prepared state"
            );
        }
        Ok(controller)
    }

    /// Checks the marker against the component; `Ok(Some(index))` when prepared.
    fn validate_marker(&self, component: &dyn Preparable) -> Result<Option<u64>, PrepareError> {
        let problem = |problem| PrepareError::Marker {
            component: self.record.component().to_owned(),
            problem,
        };
        if matches!(
            self.record.intent(),
            StartIntent::Upgrade | StartIntent::Downgrade
        ) {
            // The manager cleared VERSION's marker at open; cancel the rest locally.
            if let Some(path) = &self.marker_file {
                remove_marker_file(path)?;
            }
            return Ok(None);
        }
        let marker = self.record.prepare_index();
        if let Some(path) = &self.marker_file {
            let in_file = read_marker_file(path).map_err(problem)?;
            match (marker, in_file) {
                (Some(index), None) => {
                    return Err(problem(MarkerProblem::Missing {
                        location: path.display().to_string(),
                        expected_by: format!("the VERSION file at {}", self.record.location()),
                        index,
                    }))
                }
                (Some(index), Some(other)) if index != other => {
                    return Err(problem(MarkerProblem::Mismatch {
                        marker: index,
                        other,
                        other_source: format!("the marker file {}", path.display()),
                    }))
                }
                (None, Some(index)) => {
                    return Err(problem(MarkerProblem::Orphaned {
                        path: path.clone(),
                        index,
                        location: self.record.location(),
                    }))
                }
                _ => {}
            }
        }
        match (marker, component.recorded_prepare_index()) {
            (None, Some(index)) => {
                return Err(problem(MarkerProblem::Missing {
                    location: self.record.location(),
                    expected_by: "the component's own record".to_owned(),
                    index,
                }))
            }
            (Some(index), Some(other)) if index != other => {
                return Err(problem(MarkerProblem::Mismatch {
                    marker: index,
                    other,
                    other_source: "the component's own record".to_owned(),
                }))
            }
            _ => {}
        }
        if let Some(index) = marker {
            let last_snapshot_index = component.last_snapshot_index();
            let applied_index = component.applied_index();
            if index > last_snapshot_index || index > applied_index {
                return Err(problem(MarkerProblem::TooHigh {
                    marker: index,
                    last_snapshot_index,
                    applied_index,
                }));
            }
            return Ok(Some(index));
        }
        Ok(None)
    }
}

impl PrepareController {
    pub(super) fn persist_marker(&self, index: u64) -> Result<(), PrepareError> {
        self.record.store_prepare_index(Some(index))?;
        if let Some(path) = &self.marker_file {
            write_marker_file(path, index)?;
        }
        Ok(())
    }

    pub(super) fn clear_marker(&self) -> Result<(), PrepareError> {
        if let Some(path) = &self.marker_file {
            remove_marker_file(path)?;
        }
        if self.record.prepare_index().is_some() {
            self.record.store_prepare_index(None)?;
        }
        Ok(())
    }
}

/// Reads Ozone's marker file: `Ok(None)` when absent.
fn read_marker_file(path: &Path) -> Result<Option<u64>, MarkerProblem> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MarkerProblem::Unreadable {
                path: path.to_owned(),
                source,
            })
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(MarkerProblem::Empty {
            path: path.to_owned(),
        });
    }
    let canonical = trimmed.bytes().all(|b| b.is_ascii_digit());
    match trimmed.parse::<u64>() {
        Ok(index) if canonical => Ok(Some(index)),
        _ => Err(MarkerProblem::Garbage {
            path: path.to_owned(),
            content: trimmed.chars().take(64).collect(),
        }),
    }
}

/// Writes the marker file atomically and durably ([`durable::replace`]: a temporary file
/// created exclusively in the same directory, fsynced, renamed over, directory fsynced).
fn write_marker_file(path: &Path, index: u64) -> Result<(), PrepareError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|source| PrepareError::MarkerFile {
        path: path.to_owned(),
        operation: "create directory",
        source,
    })?;
    remove_leftover_temps(path)?;
    durable::replace(path, index.to_string().as_bytes())
        .map(drop)
        .map_err(marker_file_error)
}

fn marker_file_error(e: durable::Error) -> PrepareError {
    PrepareError::MarkerFile {
        path: e.path().to_owned(),
        operation: e.step().as_str(),
        source: e.into_io_error(),
    }
}

/// Removes the temporary marker files a prepare killed while writing left behind: those
/// of [`durable::replace`] and `<marker file>.tmp` of earlier releases. Unlinked, never
/// followed; each logged at warn. Prepare runs are serialized, so none is in use.
fn remove_leftover_temps(path: &Path) -> Result<(), PrepareError> {
    remove_leftover_temp(&marker_temp_path(path))?;
    for temp in durable::remove_leftover_temp_files(path).map_err(marker_file_error)? {
        tracing::warn!(
            path = %temp.display(),
            "removed a leftover temporary prepare marker file (from an interrupted prepare)"
        );
    }
    Ok(())
}

/// The temporary marker file of earlier releases: `<marker file>.tmp`, next to it.
fn marker_temp_path(path: &Path) -> PathBuf {
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(".tmp");
    path.with_file_name(temp_name)
}

/// Removes a leftover temporary file of the marker (a prepare killed while writing it),
/// logged at warn. Unlinked, never followed: a symlink there is removed, not its target.
fn remove_leftover_temp(temp: &Path) -> Result<(), PrepareError> {
    match fs::symlink_metadata(temp) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PrepareError::MarkerFile {
                path: temp.to_owned(),
                operation: "stat leftover temporary file",
                source,
            })
        }
        Ok(_) => {}
    }
    tracing::warn!(
        path = %temp.display(),
        "removing a leftover temporary prepare marker file (from an interrupted prepare)"
    );
    match fs::remove_file(temp) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PrepareError::MarkerFile {
            path: temp.to_owned(),
            operation: "remove leftover temporary file",
            source,
        }),
    }
}

fn remove_marker_file(path: &Path) -> Result<(), PrepareError> {
    durable::remove(path).map_err(marker_file_error)
}
