//! Test kit for `layout-core`: the tools a component's tests (and this workspace's own)
//! use to show that layout upgrades are safe.
//!
//! Crash safety is shown by crashing. [`crash`] re-runs the current test binary as a
//! child process in a chosen role, follows the steps the child reports, SIGKILLs it at a
//! chosen step and kills it on drop, so a test can reopen what a real `kill -9` left on
//! disk:
//!
//! ```no_run
//! use std::time::Duration;
//! use layout_testkit::{block_until_killed, child_role, report_step, ChildCommand};
//!
//! // In a test file, this function carries `#[test]`.
//! fn killed_while_finalizing() {
//!     if child_role().is_some() {
//!         // ... open the component, start finalizing ...
//!         report_step("persisted");
//!         block_until_killed();
//!     }
//!     let mut child = ChildCommand::new(layout_testkit::test_name!(), "finalizer")
//!         .spawn()
//!         .unwrap();
//!     child.wait_for_step("persisted", Duration::from_secs(60)).unwrap();
//!     child.kill().unwrap();
//!     // ... reopen and check the recovered state ...
//! }
//! # fn main() { killed_while_finalizing() }
//! ```
//!
//! # Map
//!
//! | module | holds |
//! |---|---|
//! | [`crash`] | the child-process crash harness: [`ChildCommand`], [`ChildProcess`], [`child_role`], [`report_step`], [`block_until_killed`], [`test_name!`] |

pub mod crash;

pub use crash::{
    block_until_killed, child_role, report_step, ChildCommand, ChildOutput, ChildProcess,
    ChildReport, CrashError, CHILD_ROLE_ENV, ORPHANED_EXIT_CODE, STEP_MARKER,
};
