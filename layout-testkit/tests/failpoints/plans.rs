//! Seeded mixed-version plans with crashes: one seed replays the same event log; 50
//! seeds together crash at every failpoint; a failing seed is printed and replays.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use layout_core::finalizer::FAILPOINTS;
use layout_testkit::{
    failpoints_crashed, HookContext, HookResult, MiniCluster, MiniClusterBuilder, MixedVersionTest,
    PlanStep, StorageKind, SEED_ENV,
};
use parking_lot::Mutex;

use layout_testkit_fixture::{every_node_checks, kv_kind, parse_scan, KvFeature};

/// What each node should hold: `node -> key -> value`.
type Model = Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>;

fn builder(storage: StorageKind) -> MiniClusterBuilder {
    MiniCluster::builder()
        .kind(kv_kind(3, KvFeature::Initial))
        .storage(storage)
}

/// Plans over 3 stores, starting anywhere from version 0 to 2: a `write` hook (a
/// random key on a random node, recorded in the model), a `read` hook (a random node
/// holds exactly its model), the stores' own checks and the model as invariants.
fn plans(builder: MiniClusterBuilder) -> MixedVersionTest<'static> {
    let model: Model = Arc::default();
    let writes = Arc::clone(&model);
    let reads = Arc::clone(&model);
    let checks = Arc::clone(&model);
    MixedVersionTest::new(builder)
        .setup(move |_cluster| {
            model.lock().clear();
            Ok(())
        })
        .hook("write", move |ctx: &mut HookContext<'_>| {
            let key = format!("k{}", ctx.rng().below(8));
            let value = format!("v{}", ctx.step());
            let Some(node) = ctx.random_running_node() else {
                return Ok(());
            };
            let name = node.name().to_owned();
            node.call("put", &format!("{key}={value}"))?;
            writes
                .lock()
                .entry(name.clone())
                .or_default()
                .insert(key.clone(), value.clone());
            ctx.log(format!("put {key}={value} on {name}"));
            Ok(())
        })
        .hook("read", move |ctx: &mut HookContext<'_>| {
            let Some(node) = ctx.random_running_node() else {
                return Ok(());
            };
            let name = node.name().to_owned();
            let found = parse_scan(&node.call("scan", "")?);
            let expected = reads.lock().get(&name).cloned().unwrap_or_default();
            if found != expected {
                return Err(format!("{name} holds {found:?}, expected {expected:?}").into());
            }
            ctx.log(format!("read {} records on {name}", found.len()));
            Ok(())
        })
        .invariant("the stores are consistent", every_node_checks)
        .invariant("every node holds what was written to it", move |cluster| {
            matches_model(cluster, &checks)
        })
}

fn matches_model(cluster: &MiniCluster, model: &Model) -> HookResult {
    for node in cluster.nodes() {
        let found = parse_scan(&node.call("scan", "")?);
        let expected = model.lock().get(node.name()).cloned().unwrap_or_default();
        if found != expected {
            return Err(format!("{} holds {found:?}, expected {expected:?}", node.name()).into());
        }
    }
    Ok(())
}

#[test]
fn one_seed_replays_the_same_plan_and_event_log() {
    if std::env::var_os(SEED_ENV).is_some() {
        return; // a replay of another seed is running
    }
    let seed = 42;
    let first = plans(builder(StorageKind::File)).run(seed).unwrap();
    let second = plans(builder(StorageKind::File)).run(seed).unwrap();
    println!("{}", first.plan);
    println!("{}", first.log.join("\n"));
    assert_eq!(first.plan, second.plan);
    assert_eq!(first.log, second.log);
    assert_eq!(first.crashes, second.crashes);
    // The plan did something worth replaying.
    assert!(
        first.log.iter().any(|l| l.contains("put ")),
        "{:#?}",
        first.log
    );
    assert!(first
        .plan
        .steps
        .iter()
        .any(|s| matches!(s, PlanStep::Upgrade { .. })));
    // Another seed is another plan.
    let other = plans(builder(StorageKind::File)).run(seed + 1).unwrap();
    assert_ne!(first.log, other.log);
}

#[test]
fn fifty_seeds_together_crash_at_every_failpoint() {
    let reports = plans(builder(StorageKind::File))
        .run_seeds(0..50)
        .unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os(SEED_ENV).is_some() {
        return; // a replay of one seed
    }
    let crashed = failpoints_crashed(&reports);
    let starts: BTreeSet<u32> = reports.iter().map(|r| r.plan.versions[0].1).collect();
    let downgrades = reports
        .iter()
        .filter(|r| {
            r.plan
                .steps
                .iter()
                .any(|s| matches!(s, PlanStep::Downgrade { .. }))
        })
        .count();
    let crash_count: usize = reports.iter().map(|r| r.crashes.len()).sum();
    println!(
        "50 seeds: {crash_count} crashes at {} failpoints, start versions {starts:?}, {downgrades} \
         plans with a downgrade",
        crashed.len()
    );
    assert_eq!(crashed, FAILPOINTS.iter().copied().collect::<BTreeSet<_>>());
    assert_eq!(starts, BTreeSet::from([0, 1, 2]));
    assert!(downgrades > 0 && downgrades < 50);
}

/// A plan over stores whose storage acknowledges writes before they are durable fails,
/// names its seed, and the same seed fails the same way again.
#[test]
fn a_failing_seed_is_printed_and_replays_exactly() {
    if std::env::var_os(SEED_ENV).is_some() {
        return;
    }
    let failure = plans(builder(StorageKind::Unsynced))
        .run_seeds(0..50)
        .unwrap_err();
    let message = failure.to_string();
    println!("{message}");
    assert!(
        message.contains(&format!("{SEED_ENV}={}", failure.seed)),
        "{message}"
    );
    assert!(
        failure.cause.contains("the MLV went backwards"),
        "{message}"
    );
    assert!(
        failure.step_text.contains("crashing at finalize::"),
        "{message}"
    );
    let again = plans(builder(StorageKind::Unsynced))
        .run(failure.seed)
        .unwrap_err();
    assert_eq!((again.step, &again.log), (failure.step, &failure.log));
}
