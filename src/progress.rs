//! Progress reporting, passed into the library by the caller (as coldsnap does).
//!
//! On a terminal each disk gets an indicatif bar over its allocated bytes, with rate and ETA; in
//! logs (not a terminal) a plain line every few seconds; nothing at all when quiet.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// indicatif bars on stderr.
    Bars,
    /// A plain line on stderr every [`LINE_INTERVAL`].
    Lines,
    /// Nothing.
    Quiet,
}

/// How often [`Mode::Lines`] prints.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// The progress display of one command.
pub struct Progress {
    mode: Mode,
    multi: MultiProgress,
}

impl Progress {
    /// A display in `mode`.
    pub fn new(mode: Mode) -> Self {
        let multi = MultiProgress::with_draw_target(match mode {
            Mode::Bars => ProgressDrawTarget::stderr(),
            _ => ProgressDrawTarget::hidden(),
        });
        Self { mode, multi }
    }

    /// A display that shows nothing.
    pub fn quiet() -> Self {
        Self::new(Mode::Quiet)
    }

    /// Starts a task named `name` (a disk file, say).
    pub fn task(&self, name: &str) -> Task {
        let bar = (self.mode == Mode::Bars).then(|| {
            let bar = self.multi.add(ProgressBar::new(0));
            let style = ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(name.to_owned());
            bar
        });
        Task {
            name: name.to_owned(),
            lines: self.mode == Mode::Lines,
            bar,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            last_line: Mutex::new(Instant::now()),
        }
    }
}

/// Progress of one task; shared by reference between threads.
pub struct Task {
    name: String,
    lines: bool,
    bar: Option<ProgressBar>,
    total: AtomicU64,
    done: AtomicU64,
    last_line: Mutex<Instant>,
}

impl Task {
    /// Sets the total, in bytes.
    pub fn set_length(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Records `n` more bytes done.
    pub fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        if self.lines
            && let Ok(mut last) = self.last_line.try_lock()
            && last.elapsed() >= LINE_INTERVAL
        {
            *last = Instant::now();
            let total = self.total.load(Ordering::Relaxed).max(1);
            // A progress line must never end the copy: with stderr's reader gone (`2>&1 | head`),
            // eprintln! would panic mid-write, so a failed write is dropped.
            let _ = writeln!(
                std::io::stderr(),
                "{}: {} of {} MiB ({}%)",
                self.name,
                done >> 20,
                total >> 20,
                done.saturating_mul(100) / total
            );
        }
    }

    /// Ends the task's display.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
