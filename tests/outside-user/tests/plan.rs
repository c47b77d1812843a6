//! Seeded mixed-version plans on the shelf: rolling upgrades, rollbacks, restarts, kills
//! and crashes at random failpoints, with the shelf's data checked throughout.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::{cluster, write};
use layout_testkit::{failpoints_crashed, HookContext, MixedVersionTest};

/// The test, with a model of the keys written in the current plan.
fn plans() -> MixedVersionTest<'static> {
    let model = Arc::new(Mutex::new(BTreeSet::new()));
    let (reset, written, expected) = (Arc::clone(&model), Arc::clone(&model), model);
    MixedVersionTest::new(cluster())
        .setup(move |_| {
            reset.lock().map_err(|e| e.to_string())?.clear();
            Ok(())
        })
        .hook("write everywhere", move |ctx: &mut HookContext<'_>| {
            let key = format!("k{}", ctx.rng().below(1000));
            write(ctx.cluster(), &key)?;
            written
                .lock()
                .map_err(|e| e.to_string())?
                .insert(key.clone());
            ctx.log(format!("wrote {key}"));
            Ok(())
        })
        .invariant("every node reads every record", move |c| {
            let keys = expected.lock().map_err(|e| e.to_string())?.clone();
            for node in c.nodes() {
                if !node.is_running() {
                    continue;
                }
                for key in &keys {
                    let value = node.call("get", key)?;
                    if value != format!("{key} value") {
                        return Err(format!("{}: {key} reads {value:?}", node.name()).into());
                    }
                }
            }
            Ok(())
        })
}

#[test]
fn twenty_seeded_plans_pass_and_crash_inside_finalization() {
    let reports = plans().run_seeds(0..20).expect("every plan passes");
    assert_eq!(reports.len(), 20);
    // The plans crashed the finalizer somewhere (the dev-dependency enables failpoints).
    assert!(!failpoints_crashed(&reports).is_empty());
}

#[test]
fn a_seed_replays_its_plan_exactly() {
    let first = plans().run(7).expect("seed 7 passes");
    let again = plans().run(7).expect("seed 7 passes again");
    assert_eq!(first.log, again.log);
}
