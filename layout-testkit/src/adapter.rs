//! Testing a component that lives in another crate: [`Service`] and [`Adapted`].
//!
//! A service's component type is defined in its library crate, and its tests live in
//! `tests/`, which is another crate: `impl TestComponent for my_service::Store` there is
//! refused (E0117, the orphan rule: neither the trait nor the type is local). A newtype
//! in the test crate would compile, but its action registry would have to be rewritten
//! for the newtype, and the test would then run a copy of the service's start-up instead
//! of the real one.
//!
//! Instead, the test crate implements [`Service`] on a marker type of its own (legal:
//! the marker is local) and returns the service's **own** [`ComponentStartup`], the one
//! its `main` starts with. The kit runs [`Adapted<S>`](Adapted) as the node's
//! component: the service's start-up, its real action registry (mapped with
//! [`ActionRegistry::map_component`](layout_core::ActionRegistry::map_component)), its
//! conditions and prepare controller, with only the node's start intent, SLV cap,
//! initial version and storage set by the kit.
//!
//! ```
//! use layout_core::startup::ComponentStartup;
//! use layout_core::{ActionRegistry, LayoutFeature};
//! use layout_testkit::{Adapted, HookResult, Kind, MiniCluster, NodeInfo, Service, UpgradeTest};
//!
//! // --- the service's library crate -------------------------------------------------
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
//! pub enum Feature {
//!     #[layout(version = 0, description = "Initial layout")]
//!     Initial,
//!     #[layout(version = 1, description = "An index file")]
//!     Index,
//! }
//!
//! pub struct Store {
//!     dir: std::path::PathBuf,
//! }
//!
//! /// The service's one start-up (its `main` adds options and storage).
//! pub fn startup(data_dir: std::path::PathBuf) -> ComponentStartup<Feature, Store> {
//!     ComponentStartup::new("store")
//!         .open(move |_manager| Ok::<_, std::io::Error>(Store { dir: data_dir }))
//!         .actions(|_manager| {
//!             ActionRegistry::builder()
//!                 .on_finalize(Feature::Index, |s: &Store, _ctx| {
//!                     Ok(std::fs::write(s.dir.join("index"), b"")?)
//!                 })
//!                 .build()
//!         })
//! }
//!
//! // --- the test crate ---------------------------------------------------------------
//! struct TheStore; // local: implementing the kit's trait on it is allowed
//!
//! impl Service for TheStore {
//!     type Feature = Feature;
//!     type Component = Store;
//!     fn startup(node: &NodeInfo) -> HookResult<ComponentStartup<Feature, Store>> {
//!         Ok(startup(node.data_dir().to_owned()))
//!     }
//! }
//!
//! let report = UpgradeTest::new(
//!     MiniCluster::builder().kind(Kind::<Adapted<TheStore>>::new("store").nodes(2).software_layout_version(0)),
//! )
//! .with_this_version_finalized(|cluster| {
//!     for node in cluster.nodes_of::<Adapted<TheStore>>() {
//!         assert!(node.data_dir().join("index").exists());
//!         assert_eq!(node.manager()?.component_name(), "store");
//!     }
//!     Ok(())
//! })
//! .run()?;
//! # let _ = report;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use layout_core::startup::ComponentStartup;
use layout_core::LayoutFeature;

use crate::component::{HookResult, NodeContext, NodeInfo, PrepareOutcome, TestComponent};

/// A service under test, implemented on a marker type of the test crate: its own
/// start-up, and how the kit prepares it and calls it. See the [module docs](self).
pub trait Service: Send + Sync + 'static {
    /// The service's layout catalog.
    type Feature: LayoutFeature;
    /// The service's component type (from its library crate).
    type Component: Send + Sync + 'static;

    /// The service's own start-up for `node`, as its `main` builds it (component name,
    /// options, constructor, registry, conditions, prepare controller). The kit then
    /// sets the node's start intent, SLV cap, initial version and storage on it: leave
    /// the storage unset or set it, the kit's replaces it.
    fn startup(node: &NodeInfo) -> HookResult<ComponentStartup<Self::Feature, Self::Component>>;

    /// Prepares the component for a change of binary; see [`TestComponent::prepare`].
    /// Default: [`PrepareOutcome::Unsupported`].
    fn prepare(component: &Self::Component) -> HookResult<PrepareOutcome> {
        let _ = component;
        Ok(PrepareOutcome::Unsupported)
    }

    /// Cancels a prepare; see [`TestComponent::cancel_prepare`]. Default: nothing to
    /// cancel.
    fn cancel_prepare(component: &Self::Component) -> HookResult {
        let _ = component;
        Ok(())
    }

    /// Serves a test operation; see [`TestComponent::call`]. Default: every operation
    /// is unknown.
    fn call(component: &Self::Component, operation: &str, argument: &str) -> HookResult<String> {
        let _ = (component, argument);
        Err(format!(
            "operation `{operation}` is not supported by {}",
            std::any::type_name::<Self>()
        )
        .into())
    }
}

/// The kit's component for a [`Service`] `S`: the service's component, started with
/// the service's own start-up. It dereferences to the component, so
/// `node.component()?.some_method()` reaches the service's API.
pub struct Adapted<S: Service> {
    component: S::Component,
    service: PhantomData<fn() -> S>,
}

impl<S: Service> Adapted<S> {
    /// The service's component.
    pub fn inner(&self) -> &S::Component {
        &self.component
    }

    fn wrap(component: S::Component) -> Self {
        Self {
            component,
            service: PhantomData,
        }
    }

    fn project(adapted: &Self) -> &S::Component {
        &adapted.component
    }
}

impl<S: Service> Deref for Adapted<S> {
    type Target = S::Component;
    fn deref(&self) -> &S::Component {
        &self.component
    }
}

impl<S: Service> fmt::Debug for Adapted<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adapted")
            .field("service", &std::any::type_name::<S>())
            .finish_non_exhaustive()
    }
}

impl<S: Service> TestComponent for Adapted<S> {
    type Feature = S::Feature;

    /// Never called: an adapted service opens through its own start-up
    /// ([`startup`](TestComponent::startup)). Refuses, naming that.
    fn open(ctx: &NodeContext<S::Feature>) -> HookResult<Self> {
        Err(format!(
            "node {}: {} opens through {}::startup, not TestComponent::open",
            ctx.name(),
            std::any::type_name::<Self>(),
            std::any::type_name::<S>()
        )
        .into())
    }

    fn startup(node: &NodeInfo) -> HookResult<ComponentStartup<S::Feature, Self>> {
        Ok(S::startup(node)?.map_component(Self::wrap, Self::project)?)
    }

    fn prepare(&self) -> HookResult<PrepareOutcome> {
        S::prepare(&self.component)
    }

    fn cancel_prepare(&self) -> HookResult {
        S::cancel_prepare(&self.component)
    }

    fn call(&self, operation: &str, argument: &str) -> HookResult<String> {
        S::call(&self.component, operation, argument)
    }
}
