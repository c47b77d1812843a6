//! Following a finalization to its end, as `layoutctl finalize --watch` does.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use layout_core::admin::http::AdminClient;
use layout_core::admin::{FinalizationStatusParams, FinalizationStatusResponse};

use super::narrator::{Narrator, Told};
use super::{ProgressMode, WalkthroughError};

/// How often the status is polled.
const POLL: Duration = Duration::from_millis(20);

/// The end of a watched finalization.
pub(super) struct Watched {
    /// The last status (not running).
    pub(super) last: FinalizationStatusResponse,
    /// Every message the finalizer sent this client, in order.
    pub(super) messages: Vec<String>,
}

/// The prefix of the finalizer's message for each feature it finalized.
pub(super) const FINALIZED_PREFIX: &str = "Finalized layout feature ";

/// Polls the finalization status as `client_id` until it stops running (or `timeout`
/// passes), printing the finalizer's messages and showing progress as `mode`: features
/// finalized out of `features` (as each "Finalized layout feature" message arrives), and
/// the running feature and its action's units (when a poll catches it running).
pub(super) fn watch(
    n: &mut Narrator<'_>,
    admin: &AdminClient,
    client_id: &str,
    features: usize,
    mode: ProgressMode,
    timeout: Duration,
) -> Told<Watched> {
    let bar = match mode {
        ProgressMode::Bar => {
            ProgressBar::with_draw_target(Some(features as u64), ProgressDrawTarget::stdout())
        }
        ProgressMode::Lines => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("   {spinner} [{bar:30}] {pos}/{len} features  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let params = FinalizationStatusParams::new(Some(client_id.to_owned()));
    let started = Instant::now();
    let mut messages = Vec::new();
    let mut shown = String::new();
    let mut finalized = 0;
    let last = loop {
        let status = admin
            .finalization_status_as(&params)
            .map_err(n.failed("finalization-status"))?;
        for message in &status.messages {
            bar.suspend(|| n.say(format_args!("finalizer: {message}")))?;
            messages.push(message.clone());
            if let Some(feature) = finalized_feature(message) {
                finalized += 1;
                bar.set_position(finalized as u64);
                bar.set_message(format!("{feature} finalized"));
                if mode == ProgressMode::Lines {
                    n.say(format_args!(
                        "progress: [{}] {finalized}/{features} features finalized ({feature})",
                        meter(finalized, features)
                    ))?;
                }
            }
        }
        if let Some(p) = &status.progress {
            let units = match p.total {
                Some(total) => format!(" {}/{total}", p.done),
                None if p.done > 0 => format!(" {}", p.done),
                None => String::new(),
            };
            let action = p
                .action
                .as_deref()
                .map_or_else(String::new, |a| format!(" ({a})"));
            let line = format!(
                "feature {}/{}: {}{action}{units}",
                p.feature_index, p.feature_count, p.feature
            );
            bar.set_message(format!("{}{units}", p.feature));
            if mode == ProgressMode::Lines && line != shown {
                n.say(format_args!("progress: {line}"))?;
                shown = line;
            }
        }
        if !status.running {
            break status;
        }
        if started.elapsed() > timeout {
            bar.finish_and_clear();
            return Err(WalkthroughError::Timeout {
                stage: n.stage(),
                what: "the finalization to end".to_owned(),
                waited: timeout,
            });
        }
        std::thread::sleep(POLL);
    };
    bar.finish();
    if !bar.is_hidden() {
        // The finished bar stays on screen; the story continues on the next line.
        n.raw("")?;
    }
    Ok(Watched { last, messages })
}

/// The feature a "Finalized layout feature X (layout version N)." message names.
pub(super) fn finalized_feature(message: &str) -> Option<&str> {
    message
        .strip_prefix(FINALIZED_PREFIX)
        .and_then(|rest| rest.split_whitespace().next())
}

/// `##..` for `done` of `all`.
fn meter(done: usize, all: usize) -> String {
    format!(
        "{}{}",
        "#".repeat(done),
        ".".repeat(all.saturating_sub(done))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_feature_from_the_finalizer_message() {
        assert_eq!(
            finalized_feature("Finalized layout feature ValueIndex (layout version 2)."),
            Some("ValueIndex")
        );
        assert_eq!(finalized_feature("Finalization is done."), None);
        assert_eq!(meter(1, 3), "#..");
    }
}
