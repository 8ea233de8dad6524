//! What every command shares: the output macros, the Ctrl-C flag, exit codes, and the one-line
//! ways a command fails.
//!
//! All output goes through [`outln!`], [`out!`] and [`errln!`] (clippy refuses `println!` and
//! its kin in the binary): a reader that goes away (`mkomi image list | head -1`) ends the
//! output quietly, where `println!` would panic.

use super::Cli;
use clap::CommandFactory;
use mkomi::progress::Mode;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// `println!` that survives a closed pipe: see [`write_stdout`].
macro_rules! outln {
    () => {
        $crate::cli::common::write_stdout("\n")
    };
    ($($arg:tt)*) => {
        $crate::cli::common::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that survives a closed pipe: see [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::common::write_stdout(&format!($($arg)*))
    };
}

/// `eprintln!` that never panics: see [`write_stderr`].
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::common::write_stderr(&format!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {errln, out, outln};

/// Exit code for a verification that found differences.
pub const EXIT_MISMATCH: u8 = 3;
/// Exit code when `--deny` or `--audit deny=` meets an incomplete audit.
pub const EXIT_INCOMPLETE: u8 = 4;
/// Exit code after Ctrl-C, as shells report SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Set by Ctrl-C for the commands that poll it: see [`cancel_on_ctrl_c`].
pub static CANCEL: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C set [`CANCEL`] rather than end the process. Commands that poll the flag stop
/// cleanly (their temporary files removed, exit 130); the others are ended by SIGINT as by a
/// crash, which their outputs survive.
pub fn cancel_on_ctrl_c() {
    let _ = ctrlc::set_handler(|| CANCEL.store(true, Ordering::Relaxed));
}

/// How progress is shown: none under `--quiet`, nor under `--json` unless stderr is a
/// terminal; bars on a terminal, else log lines.
pub fn progress_mode(quiet: bool, json: bool) -> Mode {
    if quiet || json && !std::io::stderr().is_terminal() {
        Mode::Quiet
    } else if std::io::stderr().is_terminal() {
        Mode::Bars
    } else {
        Mode::Lines
    }
}

/// Set once stdout's reader has gone: the rest of the output is dropped.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// The first failure to write stdout other than a reader gone (a full disk, say).
static STDOUT_FAILED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Writes `text` to stdout. When the reader has gone (EPIPE: `mkomi image list | head -1`),
/// the rest of the output is dropped and the command ends as it would have, with its own exit
/// code, quietly, as coreutils do; `println!` would panic instead (exit 101).
///
/// SIGPIPE stays ignored (Rust's default) rather than reset to end the process, as coreutils
/// let it: a command's output is its last step, but stderr is written while it works (progress,
/// warnings), and a SIGPIPE death there (`mkomi register … 2>&1 | head -1`) would end it between
/// two steps of an atomic write, leaving its temporary directory, or a store's work, behind. An
/// ignored SIGPIPE turns every such write into an error the code handles, and lets every
/// cleanup run.
pub fn write_stdout(text: &str) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe
            && let Ok(mut failed) = STDOUT_FAILED.lock()
        {
            failed.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Writes `text` to stderr; a failure is ignored, as there is nowhere left to report it.
pub fn write_stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The command's exit code, unless its output could not be written (other than to a reader
/// that had gone, which is no error): then one line on stderr and exit code 1.
pub fn output_written(code: ExitCode) -> ExitCode {
    match STDOUT_FAILED.lock().ok().and_then(|mut f| f.take()) {
        Some(e) => {
            errln!("mkomi: cannot write to standard output: {e}");
            if code == ExitCode::SUCCESS {
                ExitCode::FAILURE
            } else {
                code
            }
        }
        None => code,
    }
}

/// An error, as one line on stderr; exit code 1.
pub fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    errln!("mkomi: {}", e.to_string().replace('\n', " "));
    ExitCode::FAILURE
}

/// A usage error found after parsing, printed as clap prints its own; exit code 2.
pub fn usage(msg: &str) -> ExitCode {
    let _ = Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, msg)
        .print();
    ExitCode::from(2)
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org) or the clock.
pub fn creation_epoch() -> Result<i64, String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?}: not a number of seconds")),
        Err(_) => Ok(now_epoch()),
    }
}

/// Now, in seconds since the epoch (to judge pre-signed URLs' expiry).
pub fn now_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
