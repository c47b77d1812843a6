//! Runs the walkthrough end to end, as `cargo run --example walkthrough` does.

use walkthrough::Stage;

#[test]
fn walkthrough_tells_every_stage_and_every_claim_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut out = Vec::new();
    let result = walkthrough::run(&mut out, dir.path());
    let text = String::from_utf8_lossy(&out);
    let report = match result {
        Ok(report) => report,
        Err(e) => panic!("walkthrough failed: {e}\n--- output ---\n{text}"),
    };

    let stages: Vec<Stage> = report.stages.iter().map(|s| s.stage).collect();
    assert_eq!(stages, Stage::ALL, "{text}");
    for stage in &report.stages {
        assert!(
            stage.checks > 0,
            "{:?} checked nothing\n{text}",
            stage.stage
        );
        let heading = format!("== {}/7  {}", stage.stage.number(), stage.stage.title());
        assert!(text.contains(&heading), "missing {heading:?}\n{text}");
    }
    assert_eq!(
        report.checks,
        report.stages.iter().map(|s| s.checks).sum::<usize>()
    );
    assert!(!text.contains("FAILED"), "{text}");

    // The story's end state, as reported.
    let last = &report.stages[6].status;
    assert_eq!((last.slv, last.mlv, last.pre_finalized), (4, 4, false));
    assert_eq!(last.keys, report.keys);
    let upgraded = &report.stages[2].status;
    assert_eq!(
        (upgraded.slv, upgraded.mlv, upgraded.pre_finalized),
        (4, 0, true)
    );
    let downgraded = &report.stages[3].status;
    assert_eq!((downgraded.slv, downgraded.mlv), (0, 0));
    assert_eq!(report.prepare_indexes.len(), 3);
    assert!(report.prepare_indexes.windows(2).all(|w| w[0] <= w[1]));
    let figures = &report.index_migration;
    assert!(figures.rows_total > 300, "{figures:?}");
    assert_eq!(figures.rows_done, figures.rows_total);
    assert!(figures.batches > 1, "{figures:?}");
}
