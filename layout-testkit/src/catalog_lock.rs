//! A checked-in lock file of a layout catalog: a test fails, with a precise message, when
//! a feature is removed, renamed, renumbered or reordered, or a new one is not appended.
//!
//! A disk finalized to a feature stores that feature's *name and version*; a release
//! whose catalog lost, renamed or renumbered it can no longer open that disk (Apache
//! Ozone's HDDS-16013). The derive checks a catalog's shape, not its history; the lock
//! file is its history.
//!
//! What the check decides (and why):
//!
//! | change | verdict |
//! |---|---|
//! | a feature removed | **breaking**: disks finalized to it no longer open |
//! | a feature renamed | **breaking**: the stored name no longer matches |
//! | a feature renumbered (any other version) | **breaking** |
//! | features reordered (versions swapped) | **breaking** |
//! | a new feature inserted before the last locked one | **breaking**: not appended |
//! | a new feature appended | allowed, but **not recorded**: the check fails until the lock is regenerated, so the new feature is protected from then on |
//! | a description changed | a **warning**: descriptions are documentation, never stored on disk |
//! | a feature newly deprecated (or no longer) | a **warning** |
//! | the catalog (enum) renamed | a **warning**: the default component name follows it, and a component whose name is stored in its `VERSION` file would no longer open unless it sets its name explicitly |
//!
//! Regenerate the lock deliberately with [`UPDATE_ENV`]` = 1` (for example
//! `LAYOUT_TESTKIT_UPDATE_CATALOG_LOCK=1 cargo test`), then review the diff.
//!
//! ```
//! use layout_core::LayoutFeature;
//! use layout_testkit::{CatalogLock, LockVerdict};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
//! enum OmFeature {
//!     #[layout(version = 0, description = "Initial layout")]
//!     Initial,
//!     #[layout(version = 1, description = "Multi-tenancy tables")]
//!     MultiTenancy,
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("OmFeature.lock");
//! CatalogLock::of::<OmFeature>().write(&path)?;
//! let check = CatalogLock::read(&path)?.compare(&CatalogLock::of::<OmFeature>());
//! assert_eq!(check.verdict(), LockVerdict::Unchanged);
//! // In a test: layout_testkit::assert_catalog_locked::<OmFeature>(&path);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io;
use std::path::{Path, PathBuf};

use layout_core::LayoutFeature;

/// Set it to `1` to (re)write lock files instead of checking them.
pub const UPDATE_ENV: &str = "LAYOUT_TESTKIT_UPDATE_CATALOG_LOCK";

const HEADER: &str = "# Layout catalog lock (layout-testkit). Checked in; do not edit by hand.\n\
# Each line: <version> <name> [deprecated] : <description>\n\
# Regenerate deliberately: LAYOUT_TESTKIT_UPDATE_CATALOG_LOCK=1 cargo test, then review the diff.\n";

/// One feature as locked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockedFeature {
    /// Its layout version.
    pub version: u32,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Whether it is deprecated.
    pub deprecated: bool,
}

/// A catalog as a lock file records it: its name and every feature.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CatalogLock {
    /// The catalog's name.
    pub catalog: String,
    /// The features, by version.
    pub features: Vec<LockedFeature>,
}

/// An error reading or writing a lock file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogLockError {
    /// The file could not be read or written.
    #[error("catalog lock {path}: {operation} failed: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// `read` or `write`.
        operation: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// There is no lock file yet.
    #[error(
        "no catalog lock at {path}: create it with {UPDATE_ENV}=1 (for example \
         `{UPDATE_ENV}=1 cargo test`) and check it in"
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a lock file (edited by hand?).
    #[error("catalog lock {path}, line {line}: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

impl CatalogLock {
    /// The catalog `F` as a lock records it.
    pub fn of<F: LayoutFeature>() -> Self {
        Self {
            catalog: F::CATALOG_NAME.to_owned(),
            features: F::ALL
                .iter()
                .map(|f| LockedFeature {
                    version: f.layout_version(),
                    name: f.name().to_owned(),
                    description: f.description().to_owned(),
                    deprecated: f.is_deprecated(),
                })
                .collect(),
        }
    }

    /// The lock file's text.
    pub fn render(&self) -> String {
        let mut text = String::from(HEADER);
        let _ = writeln!(text, "catalog {}", self.catalog);
        for f in &self.features {
            let deprecated = if f.deprecated { " deprecated" } else { "" };
            let _ = writeln!(
                text,
                "{} {}{deprecated} : {}",
                f.version,
                f.name,
                f.description.replace(['\n', '\r'], " ")
            );
        }
        text
    }

    /// Parses a lock file's text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CatalogLockError> {
        let malformed = |line: usize, problem: String| CatalogLockError::Malformed {
            path: path.to_owned(),
            line,
            problem,
        };
        let mut catalog = None;
        let mut features = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix("catalog ") {
                catalog = Some(name.trim().to_owned());
                continue;
            }
            let (head, description) = line
                .split_once(" : ")
                .or_else(|| line.strip_suffix(" :").map(|h| (h, "")))
                .ok_or_else(|| {
                    malformed(
                        n,
                        format!("expected `<version> <name> : <description>`, found {line:?}"),
                    )
                })?;
            let words: Vec<&str> = head.split_whitespace().collect();
            let (version, name, deprecated) = match words.as_slice() {
                [v, name] => (v, name, false),
                [v, name, "deprecated"] => (v, name, true),
                _ => {
                    return Err(malformed(
                        n,
                        format!("expected `<version> <name> [deprecated]`, found {head:?}"),
                    ))
                }
            };
            let version = version
                .parse()
                .map_err(|_| malformed(n, format!("{version:?} is not a layout version")))?;
            features.push(LockedFeature {
                version,
                name: (*name).to_owned(),
                description: description.to_owned(),
                deprecated,
            });
        }
        let catalog = catalog.ok_or_else(|| malformed(1, "no `catalog <name>` line".to_owned()))?;
        Ok(Self { catalog, features })
    }

    /// Reads a lock file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, CatalogLockError> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CatalogLockError::Missing {
                path: path.to_owned(),
            }),
            Err(source) => Err(CatalogLockError::Io {
                path: path.to_owned(),
                operation: "read",
                source,
            }),
        }
    }

    /// Writes the lock file (creating its directory).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), CatalogLockError> {
        let path = path.as_ref();
        let io_err = |source| CatalogLockError::Io {
            path: path.to_owned(),
            operation: "write",
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        std::fs::write(path, self.render()).map_err(io_err)
    }

    /// Compares this lock (what was released) with `current` (the catalog now).
    #[allow(clippy::too_many_lines)] // one pass per kind of change, kept together
    pub fn compare(&self, current: &CatalogLock) -> LockCheck {
        let mut changes = Vec::new();
        let now_by_name: BTreeMap<&str, &LockedFeature> = current
            .features
            .iter()
            .map(|f| (f.name.as_str(), f))
            .collect();
        let locked_by_name: BTreeMap<&str, &LockedFeature> =
            self.features.iter().map(|f| (f.name.as_str(), f)).collect();
        let now_at = |v: u32| current.features.iter().find(|f| f.version == v);
        if self.catalog != current.catalog {
            changes.push(LockChange::CatalogRenamed {
                locked: self.catalog.clone(),
                now: current.catalog.clone(),
            });
        }
        let last_locked = self.features.iter().map(|f| f.version).max();
        // Renumbered features that swapped places with each other: reordered.
        let moved: Vec<(&LockedFeature, &LockedFeature)> = self
            .features
            .iter()
            .filter_map(|l| now_by_name.get(l.name.as_str()).map(|n| (l, *n)))
            .filter(|(l, n)| l.version != n.version)
            .collect();
        let swapped = |l: &LockedFeature, n: &LockedFeature| {
            moved.iter().any(|(l2, n2)| {
                l2.name != l.name && l2.version == n.version && n2.version == l.version
            })
        };
        for locked in &self.features {
            match now_by_name.get(locked.name.as_str()) {
                Some(now) if now.version != locked.version => {
                    if swapped(locked, now) {
                        changes.push(LockChange::Reordered {
                            name: locked.name.clone(),
                            locked_version: locked.version,
                            version: now.version,
                        });
                    } else {
                        changes.push(LockChange::Renumbered {
                            name: locked.name.clone(),
                            locked_version: locked.version,
                            version: now.version,
                        });
                    }
                }
                Some(now) => {
                    if now.description != locked.description {
                        changes.push(LockChange::DescriptionChanged {
                            name: locked.name.clone(),
                            version: locked.version,
                            locked: locked.description.clone(),
                            now: now.description.clone(),
                        });
                    }
                    if now.deprecated != locked.deprecated {
                        changes.push(LockChange::DeprecationChanged {
                            name: locked.name.clone(),
                            version: locked.version,
                            deprecated: now.deprecated,
                        });
                    }
                }
                None => match now_at(locked.version) {
                    Some(now)
                        if !locked_by_name.contains_key(now.name.as_str())
                            && now.description == locked.description =>
                    {
                        changes.push(LockChange::Renamed {
                            version: locked.version,
                            locked_name: locked.name.clone(),
                            name: now.name.clone(),
                        });
                    }
                    _ => changes.push(LockChange::Removed {
                        name: locked.name.clone(),
                        version: locked.version,
                    }),
                },
            }
        }
        let renamed_to: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                LockChange::Renamed { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        for now in &current.features {
            if locked_by_name.contains_key(now.name.as_str()) || renamed_to.contains(&now.name) {
                continue;
            }
            if last_locked.is_some_and(|last| now.version <= last) {
                changes.push(LockChange::InsertedNotAppended {
                    name: now.name.clone(),
                    version: now.version,
                    last_locked: last_locked.unwrap_or_default(),
                });
            } else {
                changes.push(LockChange::Appended {
                    name: now.name.clone(),
                    version: now.version,
                });
            }
        }
        LockCheck {
            catalog: current.catalog.clone(),
            changes,
        }
    }
}

/// One difference between a lock and the catalog now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockChange {
    /// A locked feature is gone. Breaking.
    Removed {
        /// Its name.
        name: String,
        /// Its locked version.
        version: u32,
    },
    /// The feature at a locked version has another name (same description). Breaking.
    Renamed {
        /// The version.
        version: u32,
        /// The locked name.
        locked_name: String,
        /// The name now.
        name: String,
    },
    /// A feature has another version. Breaking.
    Renumbered {
        /// Its name.
        name: String,
        /// Its locked version.
        locked_version: u32,
        /// Its version now.
        version: u32,
    },
    /// A feature swapped versions with another one. Breaking.
    Reordered {
        /// Its name.
        name: String,
        /// Its locked version.
        locked_version: u32,
        /// Its version now.
        version: u32,
    },
    /// A new feature sits at or below the last locked version. Breaking.
    InsertedNotAppended {
        /// Its name.
        name: String,
        /// Its version.
        version: u32,
        /// The last locked version.
        last_locked: u32,
    },
    /// A new feature after the last locked one. Allowed; the lock must record it.
    Appended {
        /// Its name.
        name: String,
        /// Its version.
        version: u32,
    },
    /// A description changed. A warning.
    DescriptionChanged {
        /// The feature.
        name: String,
        /// Its version.
        version: u32,
        /// The locked description.
        locked: String,
        /// The description now.
        now: String,
    },
    /// A feature was marked deprecated, or no longer is. A warning.
    DeprecationChanged {
        /// The feature.
        name: String,
        /// Its version.
        version: u32,
        /// Whether it is deprecated now.
        deprecated: bool,
    },
    /// The catalog enum has another name. A warning.
    CatalogRenamed {
        /// The locked name.
        locked: String,
        /// The name now.
        now: String,
    },
}

impl LockChange {
    /// Whether the change breaks disks finalized by a released binary.
    pub fn is_breaking(&self) -> bool {
        matches!(
            self,
            Self::Removed { .. }
                | Self::Renamed { .. }
                | Self::Renumbered { .. }
                | Self::Reordered { .. }
                | Self::InsertedNotAppended { .. }
        )
    }

    /// Whether the change is allowed but must be recorded in the lock.
    pub fn needs_recording(&self) -> bool {
        matches!(self, Self::Appended { .. })
    }
}

impl fmt::Display for LockChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Removed { name, version } => write!(
                f,
                "feature {name} (version {version}) was removed: a disk finalized to it would no \
                 longer open; keep it (mark it deprecated)"
            ),
            Self::Renamed {
                version,
                locked_name,
                name,
            } => write!(
                f,
                "feature {locked_name} (version {version}) was renamed to {name}: the VERSION file \
                 of a disk finalized to it stores {locked_name}; keep the name"
            ),
            Self::Renumbered {
                name,
                locked_version,
                version,
            } => write!(
                f,
                "feature {name} was renumbered from version {locked_version} to {version}: a \
                 released version never changes"
            ),
            Self::Reordered {
                name,
                locked_version,
                version,
            } => write!(
                f,
                "feature {name} was reordered from version {locked_version} to {version} (it \
                 swapped places with another feature): released versions never change"
            ),
            Self::InsertedNotAppended {
                name,
                version,
                last_locked,
            } => write!(
                f,
                "new feature {name} was inserted at version {version}, not appended: new \
                 features go after the last released one (version {last_locked})"
            ),
            Self::Appended { name, version } => write!(
                f,
                "new feature {name} (version {version}) was appended: allowed; record it with \
                 {UPDATE_ENV}=1"
            ),
            Self::DescriptionChanged {
                name,
                version,
                locked,
                now,
            } => write!(
                f,
                "the description of {name} (version {version}) changed from {locked:?} to {now:?} \
                 (a warning: descriptions are not stored on disk)"
            ),
            Self::DeprecationChanged {
                name,
                version,
                deprecated,
            } => write!(
                f,
                "{name} (version {version}) is {} deprecated (a warning)",
                if *deprecated { "now" } else { "no longer" }
            ),
            Self::CatalogRenamed { locked, now } => write!(
                f,
                "the catalog was renamed from {locked} to {now} (a warning: the default \
                 component name follows the catalog's; set it explicitly, or existing disks \
                 refuse to open)"
            ),
        }
    }
}

/// The verdict of a [`LockCheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockVerdict {
    /// Nothing changed.
    Unchanged,
    /// Only warnings (descriptions, deprecations, the catalog's name).
    Warnings,
    /// Allowed changes the lock does not record yet (appended features).
    NotRecorded,
    /// A change that breaks released disks.
    Breaking,
}

/// The differences between a lock and the catalog now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockCheck {
    /// The catalog's name now.
    pub catalog: String,
    /// Every difference.
    pub changes: Vec<LockChange>,
}

impl LockCheck {
    /// The verdict: the worst change.
    pub fn verdict(&self) -> LockVerdict {
        if self.changes.iter().any(LockChange::is_breaking) {
            LockVerdict::Breaking
        } else if self.changes.iter().any(LockChange::needs_recording) {
            LockVerdict::NotRecorded
        } else if self.changes.is_empty() {
            LockVerdict::Unchanged
        } else {
            LockVerdict::Warnings
        }
    }

    /// Whether the check passes: no breaking change and nothing unrecorded.
    pub fn passes(&self) -> bool {
        matches!(
            self.verdict(),
            LockVerdict::Unchanged | LockVerdict::Warnings
        )
    }

    /// The breaking changes.
    pub fn breaking(&self) -> impl Iterator<Item = &LockChange> + '_ {
        self.changes.iter().filter(|c| c.is_breaking())
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &LockChange> + '_ {
        self.changes
            .iter()
            .filter(|c| !c.is_breaking() && !c.needs_recording())
    }
}

impl fmt::Display for LockCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.verdict() {
            LockVerdict::Unchanged => return write!(f, "catalog {} matches its lock", self.catalog),
            LockVerdict::Warnings => write!(f, "catalog {} matches its lock, with warnings:", self.catalog)?,
            LockVerdict::NotRecorded => write!(
                f,
                "catalog {} has changes its lock does not record (regenerate it with {UPDATE_ENV}=1):",
                self.catalog
            )?,
            LockVerdict::Breaking => write!(
                f,
                "catalog {} breaks its lock: released disks would no longer open:",
                self.catalog
            )?,
        }
        for change in &self.changes {
            let tag = if change.is_breaking() {
                "BREAKING"
            } else if change.needs_recording() {
                "not recorded"
            } else {
                "warning"
            };
            write!(f, "\n  - [{tag}] {change}")?;
        }
        Ok(())
    }
}

/// Checks catalog `F` against the lock file at `path`, or (re)writes the file when
/// [`UPDATE_ENV`] is `1`. The check passes with warnings only; see the
/// [module documentation](self) for what is breaking.
pub fn check_catalog_lock<F: LayoutFeature>(
    path: impl AsRef<Path>,
) -> Result<LockCheck, CatalogLockError> {
    let path = path.as_ref();
    let current = CatalogLock::of::<F>();
    if std::env::var(UPDATE_ENV).is_ok_and(|v| v.trim() == "1") {
        let check = match CatalogLock::read(path) {
            Ok(locked) => locked.compare(&current),
            Err(_) => LockCheck {
                catalog: current.catalog.clone(),
                changes: Vec::new(),
            },
        };
        current.write(path)?;
        if !check.changes.is_empty() {
            eprintln!("{check}\nrecorded in {} ({UPDATE_ENV}=1)", path.display());
        }
        return Ok(LockCheck {
            catalog: check.catalog,
            changes: Vec::new(),
        });
    }
    Ok(CatalogLock::read(path)?.compare(&current))
}

/// Panics, with a precise message, unless catalog `F` matches the lock file at `path`
/// (warnings are printed to stderr). With [`UPDATE_ENV`]` = 1`, (re)writes the file.
///
/// # Panics
///
/// When a feature was removed, renamed, renumbered or reordered, a new one was not
/// appended, an appended one is not recorded yet, or the file is missing or malformed.
#[track_caller]
pub fn assert_catalog_locked<F: LayoutFeature>(path: impl AsRef<Path>) {
    let path = path.as_ref();
    match check_catalog_lock::<F>(path) {
        Ok(check) if check.passes() => {
            if check.verdict() == LockVerdict::Warnings {
                eprintln!("{check}\n(lock file: {})", path.display());
            }
        }
        Ok(check) => panic!("{check}\n(lock file: {})", path.display()),
        Err(e) => panic!("{e}"),
    }
}
