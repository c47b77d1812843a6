//! Benchmarks live under `benches/`. This library holds what they share: the interleaved
//! ratio, which alternates baseline and subject pair by pair so that a burst of load on
//! this shared machine lands on both sides, and reports the median of the per-pair ratios.

/// Whether this run measures (`cargo bench` passes `--bench`; criterion's test mode does
/// not) and its filter, if any, names `group`.
pub fn interleave_wanted(group: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter().any(|arg| arg == "--bench")
        && args
            .iter()
            .filter(|arg| !arg.starts_with('-'))
            .all(|filter| filter.contains(group))
}

/// Runs `baseline` and `subject` (each returns the seconds it measured) in the order pair
/// `i` calls for: baseline first on even pairs, subject first on odd ones. Returns
/// `(baseline, subject)`.
pub fn in_turn(
    i: usize,
    baseline: impl FnOnce() -> f64,
    subject: impl FnOnce() -> f64,
) -> (f64, f64) {
    if i.is_multiple_of(2) {
        let b = baseline();
        (b, subject())
    } else {
        let s = subject();
        (baseline(), s)
    }
}

/// Times `pairs` pairs (`pair(i)` returns `(baseline, subject)` seconds, usually through
/// [`in_turn`]) and prints the median, lowest and highest ratio subject / baseline.
///
/// # Panics
///
/// When `pairs` is 0.
pub fn report_interleaved(label: &str, pairs: usize, mut pair: impl FnMut(usize) -> (f64, f64)) {
    assert!(pairs > 0, "at least one pair");
    let mut ratios: Vec<f64> = (0..pairs)
        .map(|i| {
            let (baseline, subject) = pair(i);
            subject / baseline
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "{label}: interleaved median {:.2}x over {pairs} pairs (lowest {:.2}x, highest {:.2}x)",
        ratios[pairs / 2],
        ratios[0],
        ratios[pairs - 1]
    );
}
