//! A progress bar for long runs, drawn on stderr only when stderr is a
//! terminal, so that logs, pipes and `--json` output stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar's message is refreshed.
const REFRESH: Duration = Duration::from_millis(200);

/// A bar that counts elapsed time of one phase; invisible off a terminal.
pub struct Progress {
    /// The bar, or None when there is no terminal to draw on.
    bar: Option<ProgressBar>,
    /// Refreshes the message from the caller's counters.
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts a bar for a phase of `length`, whose message `status` renders
    /// the live counters.
    pub fn start(phase: &str, length: Duration, status: impl Fn() -> String + Send + 'static) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                ticker: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(length.as_millis() as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {elapsed:>4} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(phase.to_owned());
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                loop {
                    bar.set_position(start.elapsed().as_millis() as u64);
                    bar.set_message(status());
                    tokio::time::sleep(REFRESH).await;
                }
            })
        };
        Progress {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
