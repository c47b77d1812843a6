//! Options of [`LayoutVersionManager::open`](crate::LayoutVersionManager::open).

/// Why the component is being started; decides what happens when no state is stored and
/// whether a prepare marker is cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartIntent {
    /// An ordinary start: the layout state must exist.
    #[default]
    Normal,
    /// The first start of a new installation: create the layout state if none exists
    /// (at the SLV, or at the pinned initial layout version). An existing state is opened
    /// as usual, never replaced.
    Init,
    /// The first start after the binary was upgraded: clears a prepare marker locally.
    Upgrade,
    /// The first start after the binary was downgraded: clears a prepare marker locally.
    Downgrade,
}

/// Options of [`LayoutVersionManager::open`](crate::LayoutVersionManager::open).
///
/// ```
/// use layout_core::{ManagerOptions, StartIntent};
///
/// let opts = ManagerOptions::default()
///     .with_start_intent(StartIntent::Init)
///     .with_initial_layout_version(0)
///     .with_component_name("om");
/// assert_eq!(opts.start_intent(), StartIntent::Init);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManagerOptions {
    pub(crate) component_name: Option<String>,
    pub(crate) initial_layout_version: Option<u32>,
    pub(crate) software_layout_version: Option<u32>,
    pub(crate) start_intent: StartIntent,
    pub(crate) minimum_supported_version: Option<u32>,
}

impl ManagerOptions {
    /// The component's name, recorded in and checked against the stored state.
    /// Default: the catalog enum's name.
    #[must_use]
    pub fn with_component_name(mut self, name: impl Into<String>) -> Self {
        self.component_name = Some(name.into());
        self
    }

    /// The layout version a fresh installation starts at (with [`StartIntent::Init`]).
    /// Default: the SLV. Pinning it lower makes the first start behave like the first start
    /// of a new release on an old layout (tests use this).
    #[must_use]
    pub fn with_initial_layout_version(mut self, version: u32) -> Self {
        self.initial_layout_version = Some(version);
        self
    }

    /// Caps the software layout version below the catalog's latest feature (tests use
    /// this to play an older binary). Must not exceed the catalog's latest version.
    #[must_use]
    pub fn with_software_layout_version(mut self, version: u32) -> Self {
        self.software_layout_version = Some(version);
        self
    }

    /// Why the component is being started. Default: [`StartIntent::Normal`].
    #[must_use]
    pub fn with_start_intent(mut self, intent: StartIntent) -> Self {
        self.start_intent = intent;
        self
    }

    /// The oldest metadata layout version this release can upgrade from; older disks are
    /// refused ("upgrade through an intermediate release first"). Default: 0.
    #[must_use]
    pub fn with_minimum_supported_version(mut self, version: u32) -> Self {
        self.minimum_supported_version = Some(version);
        self
    }

    /// The configured component name, if any.
    pub fn component_name(&self) -> Option<&str> {
        self.component_name.as_deref()
    }

    /// The configured initial layout version, if any.
    pub fn initial_layout_version(&self) -> Option<u32> {
        self.initial_layout_version
    }

    /// The configured SLV cap, if any.
    pub fn software_layout_version(&self) -> Option<u32> {
        self.software_layout_version
    }

    /// The start intent.
    pub fn start_intent(&self) -> StartIntent {
        self.start_intent
    }

    /// The configured minimum supported version, if any.
    pub fn minimum_supported_version(&self) -> Option<u32> {
        self.minimum_supported_version
    }
}
