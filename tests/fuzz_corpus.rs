//! Every committed fuzz input, run through its fuzz target's harness with the stable toolchain:
//! the seed corpora (`fuzz/seeds/TARGET/`) and the inputs that once crashed a target
//! (`fuzz/regressions/TARGET/`). The harnesses are those of the fuzz crate (`fuzz/src/lib.rs`),
//! so a crash that the fuzzer found fails `cargo test` too, without nightly or libFuzzer.
//!
//! Regression inputs run one per child process (this test binary again) with its address space
//! capped, so that an input that makes mkomi allocate gigabytes fails its test with a message
//! instead of taking the machine's memory. Those listed in `fuzz/regressions/OPEN` (found, not
//! fixed yet) run only with `--ignored`.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::os::unix::process::CommandExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Address space of a child that replays one regression input: far above what the harnesses
/// need (a few MiB of input, 1 MiB of reads), far below what a size taken unchecked from the
/// input asks for.
const CHILD_ADDRESS_SPACE: u64 = 4 << 30;

/// The environment variable that makes [`replay_child`] run one input: `TARGET:PATH`.
const CHILD_ENV: &str = "MKOMI_FUZZ_REPLAY";

/// A harness: one input, run to the end (or a panic).
type Harness<'a> = Box<dyn Fn(&[u8]) + 'a>;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn harness<'a>(target: &str, qcow2_dir: &'a Path) -> Harness<'a> {
    match target {
        "qcow2" => Box::new(move |d: &[u8]| harness::qcow2_in(qcow2_dir, d)),
        "table" => Box::new(harness::table),
        "fat" => Box::new(harness::fat),
        "ext4" => Box::new(harness::ext4),
        "ntfs" => Box::new(harness::ntfs),
        "inspect" => Box::new(harness::inspect),
        "binary" => Box::new(harness::binary),
        "os_release" => Box::new(harness::os_release),
        "regf" => Box::new(harness::regf),
        "export_manifest" => Box::new(harness::export_manifest),
        "template" => Box::new(harness::template),
        "store" => Box::new(harness::store),
        "tar" => Box::new(harness::tar),
        other => panic!("no fuzz target {other}"),
    }
}

/// The inputs of `fuzz/DIR/TARGET/*`, as (target, file), sorted.
fn inputs(dir: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for target in std::fs::read_dir(fuzz_dir().join(dir)).unwrap() {
        let target = target.unwrap().path();
        if !target.is_dir() {
            continue;
        }
        let name = target.file_name().unwrap().to_str().unwrap().to_owned();
        for file in std::fs::read_dir(&target).unwrap() {
            out.push((name.clone(), file.unwrap().path()));
        }
    }
    out.sort();
    out
}

/// The regression inputs listed in `fuzz/regressions/OPEN`, as (target, file name).
fn open_findings() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fuzz_dir().join("regressions/OPEN")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// Runs one regression input in a child process with [`CHILD_ADDRESS_SPACE`]; the reason if it
/// failed.
fn replay_in_child(target: &str, file: &Path) -> Result<(), String> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["replay_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{target}:{}", file.display()))
        .env("RUST_BACKTRACE", "1");
    let limit = libc::rlimit {
        rlim_cur: CHILD_ADDRESS_SPACE,
        rlim_max: CHILD_ADDRESS_SPACE,
    };
    // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run the child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("test replay_child ... ok") {
        return Ok(());
    }
    // The panic or allocation failure, and the frames under it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("memory allocation") || l.contains(": "))
        .take(12)
        .collect();
    Err(format!("{}: {}", out.status, why.join(" | ")))
}

/// Replays the regression inputs (the open findings or the others); panics listing failures.
fn replay_regressions(open: bool) -> usize {
    let listed = open_findings();
    let mut ran = 0;
    let mut failed = Vec::new();
    for (target, file) in inputs("regressions") {
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        if listed.contains(&(target.clone(), name)) != open {
            continue;
        }
        ran += 1;
        if let Err(why) = replay_in_child(&target, &file) {
            failed.push(format!("{}: {why}", file.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz regressions failed:\n{}",
        failed.join("\n")
    );
    ran
}

#[test]
fn fuzz_seeds_run_clean() {
    let qcow2_dir = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    let seeds = inputs("seeds");
    for (target, file) in &seeds {
        let run = harness(target, qcow2_dir.path());
        let data = std::fs::read(file).unwrap();
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "harness panicked on: {failed:#?}");
    assert!(seeds.len() > 50, "the seed corpora are missing");
}

#[test]
fn fuzz_regressions_run_clean() {
    replay_regressions(false);
}

/// Passes with no open findings (none listed in `fuzz/regressions/OPEN`), so that it can stay
/// ignored between findings.
#[test]
#[ignore = "open fuzz findings (fuzz/regressions/OPEN): run with --ignored to see them fail"]
fn fuzz_open_findings_run_clean() {
    replay_regressions(true);
}

/// Runs the one input named by [`CHILD_ENV`]; does nothing without it (a normal test run).
#[test]
fn replay_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (target, path) = spec.split_once(':').unwrap();
    let qcow2_dir = tempfile::tempdir().unwrap();
    let data = std::fs::read(path).unwrap();
    harness(target, qcow2_dir.path())(&data);
}
