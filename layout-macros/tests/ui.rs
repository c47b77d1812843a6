//! Compile-time behaviour of the macros: what compiles (`ui/pass`, each run as a program)
//! and the exact errors of what does not (`ui/fail`, checked against `.stderr`).
//!
//! Regenerate the expected errors with
//! `TRYBUILD=overwrite cargo test -p layout-macros --test ui`, then read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
