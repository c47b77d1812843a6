//! Prints the story and checks its claims.

use std::fmt::{Debug, Display};
use std::io::Write;

use super::{CheckFailure, Stage, WalkthroughError};

/// Writes headings, narration and checked claims, and counts the checks.
pub(super) struct Narrator<'a> {
    out: &'a mut dyn Write,
    stage: Stage,
    checks: usize,
}

/// Result of every story step.
pub(super) type Told<T = ()> = Result<T, WalkthroughError>;

impl<'a> Narrator<'a> {
    pub(super) fn new(out: &'a mut dyn Write) -> Self {
        Self {
            out,
            stage: Stage::Install,
            checks: 0,
        }
    }

    pub(super) fn stage(&self) -> Stage {
        self.stage
    }

    /// Checks made in the current stage so far; resets the count.
    pub(super) fn take_checks(&mut self) -> usize {
        std::mem::take(&mut self.checks)
    }

    /// Starts `stage`: its heading and why it matters.
    pub(super) fn heading(&mut self, stage: Stage, why: &str) -> Told {
        self.stage = stage;
        let title = format!("{}/{}  {}", stage.number(), Stage::ALL.len(), stage.title());
        writeln!(self.out)?;
        writeln!(self.out, "== {title}")?;
        for line in wrap(why, 86) {
            writeln!(self.out, "   {line}")?;
        }
        writeln!(self.out)?;
        Ok(())
    }

    /// One line of narration.
    pub(super) fn say(&mut self, line: impl Display) -> Told {
        writeln!(self.out, "   {line}")?;
        Ok(())
    }

    /// A block of text (an error message, a table), indented.
    pub(super) fn quote(&mut self, text: impl Display) -> Told {
        for line in text.to_string().lines() {
            writeln!(self.out, "     | {line}")?;
        }
        Ok(())
    }

    /// A raw line (tables).
    pub(super) fn raw(&mut self, line: impl Display) -> Told {
        writeln!(self.out, "{line}")?;
        Ok(())
    }

    /// Checks that `claim` holds (`holds`); prints `ok  claim`, or the failure.
    pub(super) fn check(
        &mut self,
        claim: impl Display,
        holds: bool,
        expected: impl Display,
        seen: impl Display,
    ) -> Told {
        self.checks += 1;
        if holds {
            writeln!(self.out, "   ok  {claim}")?;
            return Ok(());
        }
        Err(self.failure(claim, expected, seen))
    }

    /// A claim that does not hold: prints it with what was expected and seen, and returns
    /// the error to stop the story with.
    pub(super) fn fail(
        &mut self,
        claim: impl Display,
        expected: impl Display,
        seen: impl Display,
    ) -> WalkthroughError {
        self.checks += 1;
        self.failure(claim, expected, seen)
    }

    fn failure(
        &mut self,
        claim: impl Display,
        expected: impl Display,
        seen: impl Display,
    ) -> WalkthroughError {
        let failure = CheckFailure {
            stage: self.stage,
            claim: claim.to_string(),
            expected: expected.to_string(),
            seen: seen.to_string(),
        };
        let printed = writeln!(self.out, "   FAILED  {}", failure.claim)
            .and_then(|()| writeln!(self.out, "           expected: {}", failure.expected))
            .and_then(|()| writeln!(self.out, "           seen:     {}", failure.seen));
        match printed {
            Ok(()) => WalkthroughError::Check(Box::new(failure)),
            Err(io) => WalkthroughError::Output(io),
        }
    }

    /// Checks that `seen == expected`.
    pub(super) fn check_eq<T: PartialEq + Debug>(
        &mut self,
        claim: impl Display,
        expected: &T,
        seen: &T,
    ) -> Told {
        self.check(
            claim,
            expected == seen,
            format_args!("{expected:?}"),
            format_args!("{seen:?}"),
        )
    }

    /// Wraps a failed operation with the stage and what the story was doing.
    pub(super) fn failed<E>(&self, action: impl Display) -> impl FnOnce(E) -> WalkthroughError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let stage = self.stage;
        let action = action.to_string();
        move |source| WalkthroughError::Step {
            stage,
            action,
            source: Box::new(source),
        }
    }
}

/// Splits `text` into lines of at most `width` characters (at spaces).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_prints_expected_and_seen_and_is_an_error() {
        let mut out = Vec::new();
        let mut narrator = Narrator::new(&mut out);
        narrator.check_eq("keys are kept", &3, &3).expect("holds");
        let err = narrator
            .check_eq("keys are kept", &300, &299)
            .expect_err("does not hold");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("ok  keys are kept"), "{text}");
        assert!(text.contains("FAILED  keys are kept"), "{text}");
        assert!(text.contains("expected: 300"), "{text}");
        assert!(text.contains("seen:     299"), "{text}");
        match err {
            WalkthroughError::Check(failure) => {
                assert_eq!(failure.expected, "300");
                assert_eq!(failure.seen, "299");
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn wraps_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert!(wrap("", 5).is_empty());
    }
}
