//! Every committed fuzz input, run through its fuzz target's harness with the stable toolchain:
//! the seed corpora (`fuzz/seeds/TARGET/`) and the inputs that once crashed a target
//! (`fuzz/regressions/TARGET/`). The harnesses are those of the fuzz crate (`fuzz/src/lib.rs`),
//! so a crash that the fuzzer found fails `cargo test` too, without nightly or libFuzzer.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// A harness: one input, run to the end (or a panic).
type Harness<'a> = Box<dyn Fn(&[u8]) + 'a>;

/// Runs each file of `dir/TARGET/` through TARGET's harness; returns how many ran.
fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let qcow2_dir = tempfile::tempdir().unwrap();
    let mut ran = 0;
    let mut failed = Vec::new();
    let mut targets: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    targets.sort();
    for target in targets {
        let name = target.file_name().unwrap().to_str().unwrap().to_owned();
        let run: Harness = match name.as_str() {
            "qcow2" => Box::new(|d: &[u8]| harness::qcow2_in(qcow2_dir.path(), d)),
            "table" => Box::new(harness::table),
            "fat" => Box::new(harness::fat),
            "ext4" => Box::new(harness::ext4),
            "inspect" => Box::new(harness::inspect),
            "binary" => Box::new(harness::binary),
            "os_release" => Box::new(harness::os_release),
            "export_manifest" => Box::new(harness::export_manifest),
            "template" => Box::new(harness::template),
            "store" => Box::new(harness::store),
            other => panic!("{}: no fuzz target {other}", target.display()),
        };
        let mut files: Vec<_> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && !p.ends_with("README.md"))
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            ran += 1;
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "harness panicked on: {failed:#?}");
    ran
}

#[test]
fn fuzz_seeds_run_clean() {
    assert!(replay("seeds") > 50, "the seed corpora are missing");
}

#[test]
fn fuzz_regressions_run_clean() {
    replay("regressions");
}
