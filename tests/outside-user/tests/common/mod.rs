//! The shelf as the kit runs it: its own start-up, adapted. The shelf lives in the
//! library crate and these tests in another crate, so `impl TestComponent for Shelf`
//! would be refused here (E0117): `TheShelf` is a marker of this crate instead.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use layout_core::startup::ComponentStartup;
use layout_outside_user::{startup, Shelf, ShelfFeature};
use layout_testkit::{
    Adapted, ClusterNode, HookResult, Kind, MiniCluster, MiniClusterBuilder, NodeInfo, Service,
};

/// The shelf, as a service the kit runs.
pub(crate) struct TheShelf;

impl Service for TheShelf {
    type Feature = ShelfFeature;
    type Component = Shelf;

    fn startup(node: &NodeInfo) -> HookResult<ComponentStartup<ShelfFeature, Shelf>> {
        Ok(startup(node.dir()))
    }

    fn call(shelf: &Shelf, operation: &str, argument: &str) -> HookResult<String> {
        match operation {
            "put" => {
                let (key, value) = argument.split_once('=').ok_or("put wants key=value")?;
                shelf.put(key, value)?;
                Ok("ok".to_owned())
            }
            "get" => Ok(shelf
                .get(argument)?
                .ok_or_else(|| format!("no record {argument}"))?),
            "count" => Ok(shelf.list()?.len().to_string()),
            "v2" => Ok(shelf.v2_records()?.to_string()),
            other => Err(format!("unknown operation {other}").into()),
        }
    }
}

/// The kit's component type for the shelf.
pub(crate) type Node = Adapted<TheShelf>;

/// Three nodes installed by release 1 (SLV 0), upgraded to release 2.
pub(crate) fn cluster() -> MiniClusterBuilder {
    MiniCluster::builder().kind(
        Kind::<Node>::new("shelf")
            .nodes(3)
            .software_layout_version(0),
    )
}

/// Writes `<prefix>` = `<prefix> value` on every node.
pub(crate) fn write(cluster: &MiniCluster, prefix: &str) -> HookResult {
    for node in cluster.nodes() {
        node.call("put", &format!("{prefix}={prefix} value"))?;
    }
    Ok(())
}

/// Every node reads every key in `keys`.
pub(crate) fn read(cluster: &MiniCluster, keys: &[&str]) -> HookResult {
    for node in cluster.nodes() {
        for key in keys {
            let value = node.call("get", key)?;
            if value != format!("{key} value") {
                return Err(format!("{}: {key} reads {value:?}", node.name()).into());
            }
        }
    }
    Ok(())
}

/// How many records of `node` are v2.
pub(crate) fn v2_records(node: &dyn ClusterNode) -> HookResult<usize> {
    Ok(node.call("v2", "")?.parse()?)
}
