//! The failpoints a finalization passes, and a crash at every hit of each of them.
//!
//! Each crash runs in a child process: the failpoint is configured there to panic at its
//! n-th hit (`fail::cfg(name, "<n-1>*off->1*panic")`), and a panic hook ends the process
//! on the spot, so nothing runs after the failpoint (no unwinding, no destructor). The
//! parent then restarts the component from the child's directory and finishes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::finalizer::FAILPOINTS;
use layout_core::LayoutFeature;
use layout_testkit::crash::{child_role, report_step, ChildCommand};

use crate::common::{
    child_root, crash_free_state, expected_trace, restart_and_finish, start, stored_state, Service,
    Store, BOUND, CLIENT, ROOT_ENV, WITH_ACTION,
};

/// The failpoint a crash child panics at.
const FAILPOINT_ENV: &str = "LAYOUT_TEST_FAILPOINT";
/// At which hit of it (1 = the first).
const HIT_ENV: &str = "LAYOUT_TEST_FAILPOINT_HIT";
/// The exit code of a child that crashed at its failpoint.
const CRASH_EXIT_CODE: i32 = 77;

/// Every failpoint name in layout-core's source: the literal of each `fail_point!(..)`,
/// or the string constant it names.
fn failpoints_in_layout_core_source() -> BTreeSet<String> {
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../layout-core/src"),
        &mut files,
    );
    let texts: Vec<String> = files
        .iter()
        .map(|f| fs::read_to_string(f).unwrap())
        .collect();
    // `const NAME: &str = "value";`
    let consts: BTreeMap<&str, &str> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|line| {
            let (_, decl) = line.split_once("const ")?;
            let (name, value) = decl.split_once(": &str = \"")?;
            Some((name.trim(), value.strip_suffix("\";")?))
        })
        .collect();
    let mut names = BTreeSet::new();
    // `fail_point!(name)`, or `crash_point::step!(name)`, which passes both.
    let calls = texts.iter().flat_map(|text| {
        ["fail_point!(", "step!("]
            .into_iter()
            .flat_map(move |call| {
                text.match_indices(call)
                    .map(move |(at, _)| (text.as_str(), at, at + call.len()))
            })
    });
    for (text, at, args_at) in calls {
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        if text[line_start..at].trim_start().starts_with("//") {
            continue; // documentation
        }
        let args = text[args_at..].trim_start();
        let first = args.split([',', ')']).next().unwrap().trim();
        if first.starts_with('$') {
            continue; // the `step!` macro's own definition
        }
        let name = if let Some(literal) = first.strip_prefix('"') {
            literal.trim_end_matches('"')
        } else {
            let ident = first.rsplit("::").next().unwrap();
            consts.get(ident).copied().unwrap_or_else(|| {
                panic!("cannot resolve the failpoint name `{first}` in layout-core")
            })
        };
        names.insert(name.to_owned());
    }
    names
}

/// A crash-free finalization of four features (three with an `OnFinalize` action, one
/// without) passes through exactly `FAILPOINTS`, in the documented order: every
/// failpoint in layout-core's source reports its hits in a child process.
#[test]
fn a_crash_free_finalization_passes_exactly_the_failpoints() {
    if child_role().is_some() {
        let root = child_root();
        // The durable-file routine's failpoints (`durable::FAILPOINTS`) are passed by every
        // file write, not steps of the finalizer: shown by the `durable` tests instead.
        for name in failpoints_in_layout_core_source()
            .into_iter()
            .filter(|n| !layout_core::durable::FAILPOINTS.contains(&n.as_str()))
        {
            let hit = format!("hit {name}");
            fail::cfg_callback(name, move || report_step(&hit)).unwrap();
        }
        let finalizer = start(&root);
        let outcome = finalizer
            .finalize(CLIENT, &Service::new(&root, None))
            .unwrap();
        assert_eq!(outcome.finalized().len(), 4);
        return;
    }
    let in_source = failpoints_in_layout_core_source();
    for name in FAILPOINTS {
        assert!(
            in_source.contains(*name),
            "FAILPOINTS lists {name}, which no fail_point! in layout-core uses"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let mut child = ChildCommand::new(layout_testkit::test_name!(), "trace")
        .env(ROOT_ENV, dir.path())
        .spawn()
        .unwrap();
    let output = child.wait(BOUND).unwrap();
    assert!(output.success(), "{output:?}");
    let hits: Vec<&str> = output
        .steps
        .iter()
        .filter_map(|s| s.strip_prefix("hit "))
        .collect();
    assert_eq!(
        hits.iter().copied().collect::<BTreeSet<_>>(),
        FAILPOINTS.iter().copied().collect::<BTreeSet<_>>(),
        "the failpoints hit (of all {} in layout-core) are not exactly FAILPOINTS",
        in_source.len()
    );
    assert_eq!(hits, expected_trace(), "the failpoints in the order passed");
    assert_eq!(
        stored_state(dir.path()),
        crash_free_state(),
        "failpoint callbacks changed what a finalization stores"
    );
}

/// Crashes at the chosen hit of the chosen failpoint (the child's half of the crash
/// tests).
fn crash_child() {
    let root = child_root();
    let failpoint = std::env::var(FAILPOINT_ENV).unwrap();
    let hit: usize = std::env::var(HIT_ENV).unwrap().parse().unwrap();
    let finalizer = start(&root);
    let lvm = Arc::clone(finalizer.layout_manager());
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a non-string panic");
        // The MLV this process published, read when it dies.
        report_step(format!(
            "crashed mlv={}: {message}",
            lvm.metadata_layout_version()
        ));
        eprintln!("{info}");
        std::process::exit(CRASH_EXIT_CODE);
    }));
    let actions = match hit {
        1 => "1*panic".to_owned(),
        n => format!("{}*off->1*panic", n - 1),
    };
    fail::cfg(&failpoint, &actions).unwrap();
    let outcome = finalizer.finalize(CLIENT, &Service::new(&root, None));
    report_step(format!("finished without a crash: {outcome:?}"));
}

/// Crashes (in a child) at every hit of `failpoint` in a finalization of the whole
/// catalog, each time in a fresh directory, restarts and finishes (see
/// [`restart_and_finish`]). A crash after an action and before its persist runs that
/// action again, exactly once; a crash anywhere else re-runs nothing.
fn crash_at_every_hit_of(test: &str, failpoint: &str) {
    if child_role().is_some() {
        crash_child();
        return;
    }
    let reference = crash_free_state();
    let hits = expected_trace().iter().filter(|n| **n == failpoint).count();
    assert!(hits > 0, "{failpoint} is not on the finalization path");
    let reruns_its_action = matches!(
        failpoint,
        "finalize::after_action" | "finalize::before_persist"
    );
    for hit in 1..=hits {
        let context = format!("crash at hit {hit} of {failpoint}");
        let dir = tempfile::tempdir().unwrap();
        let mut child = ChildCommand::new(test, "crash")
            .env(ROOT_ENV, dir.path())
            .env(FAILPOINT_ENV, failpoint)
            .env(HIT_ENV, hit.to_string())
            .spawn()
            .unwrap();
        let output = child.wait(BOUND).unwrap();
        assert_eq!(
            output.code(),
            Some(CRASH_EXIT_CODE),
            "{context}: the child did not crash there: {output:?}"
        );
        let crash = output
            .steps
            .iter()
            .find_map(|s| s.strip_prefix("crashed mlv="))
            .unwrap_or_else(|| panic!("{context}: no crash report: {output:?}"));
        let (published, message) = crash.split_once(": ").unwrap();
        assert_eq!(
            message,
            format!("failpoint {failpoint} panic"),
            "{context}: crashed elsewhere"
        );
        let published: u32 = published.parse().unwrap();

        let rerun = restart_and_finish(dir.path(), published, &context, &reference);
        // Per-feature failpoints: hit n is feature n.
        let feature =
            (hits > 1).then(|| Store::from_layout_version(u32::try_from(hit).unwrap()).unwrap());
        let expected: Vec<Store> = feature
            .filter(|f| reruns_its_action && WITH_ACTION.contains(f))
            .into_iter()
            .collect();
        assert_eq!(
            rerun, expected,
            "{context}: actions run again after the restart"
        );
    }
}

macro_rules! crash_tests {
    ($($test:ident: $failpoint:literal;)*) => {
        $(
            #[doc = concat!(
                "A crash at every hit of `", $failpoint, "`, then a restart, recovers to the \
                 state of a crash-free run."
            )]
            #[test]
            fn $test() {
                crash_at_every_hit_of(&layout_testkit::test_name!(), $failpoint);
            }
        )*

        /// The failpoints the tests above crash at.
        const CRASH_TESTED: &[&str] = &[$($failpoint),*];
    };
}

crash_tests! {
    a_crash_when_finalization_started_recovers: "finalize::started";
    a_crash_before_each_action_recovers: "finalize::before_action";
    a_crash_after_each_action_reruns_it_once_and_recovers: "finalize::after_action";
    a_crash_before_each_persist_reruns_the_action_once_and_recovers: "finalize::before_persist";
    a_crash_after_each_persist_keeps_the_stored_version: "finalize::after_persist";
    a_crash_after_each_publish_recovers: "finalize::after_publish";
    a_crash_when_finalization_is_done_recovers: "finalize::done";
}

#[test]
fn every_failpoint_has_a_crash_test() {
    let tested: BTreeSet<&str> = CRASH_TESTED.iter().copied().collect();
    let all: BTreeSet<&str> = FAILPOINTS.iter().copied().collect();
    assert_eq!(
        tested, all,
        "each failpoint in FAILPOINTS needs a crash test"
    );
}
