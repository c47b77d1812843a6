//! Runs the `quickstart` example as a newcomer does and checks what it prints: the
//! examples are documentation, so a broken one is a failed test. Cargo builds the
//! examples with the tests (`target/<profile>/examples/`).

use std::path::PathBuf;
use std::process::Command;

/// The built example `name`, beside the test binary's `deps/` directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let path = profile.join(format!("examples/{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not found: cargo builds the examples with the tests \
         (or: cargo build -p layout-examples --examples)",
        path.display()
    );
    path
}

#[test]
fn the_quickstart_refuses_then_finalizes_then_serves_the_new_api_and_refuses_the_old_release() {
    let output = Command::new(example("quickstart"))
        .output()
        .expect("run the quickstart");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{stderr}",
        output.status
    );

    let lines: Vec<&str> = stdout.lines().collect();
    let position = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stdout}"))
    };
    // In order: installed at 0, started pre-finalized, refused, finalized, served, refused.
    let steps = [
        position("started: MLV 0, SLV 0, pre-finalized: false"),
        position("started: MLV 0, SLV 1, pre-finalized: true"),
        position("list refused:"),
        position("FinalizationDone { finalized: [NoteIndex], metadata_layout_version: 1 }"),
        position("the new API is open: apples cheese dates"),
        position("5. the old release"),
    ];
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{stdout}");
    let refusal = lines[position("list refused:")];
    assert!(
        refusal.contains("operation list") && refusal.contains("feature NoteIndex"),
        "{stdout}"
    );
    let last = lines.last().expect("output");
    assert!(
        last.contains("metadata layout version 1 (feature NoteIndex)")
            && last.contains("newer than this software's layout version 0"),
        "the old release's refusal: {stdout}"
    );
}
