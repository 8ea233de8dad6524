//! The output-format registry's round trip: every format mkomi writes ([`OutputFormat::ALL`])
//! is written through `mkomi register` and read back by mkomi (`verify`, and `register` of the
//! written disk as a source) and by the real `qemu-img compare` against the source. A format
//! added to the registry is covered without touching this test; one with new parameters fails
//! to compile here until its command-line arguments are added.

mod common;
use common::*;
use mkomi::sink::OutputFormat;
use mkomi::sink::qcow2::{MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};
use std::path::Path;

/// The command-line arguments that select `f`.
fn args(f: OutputFormat) -> Vec<String> {
    let mut a = vec!["--format".to_owned(), f.name().to_owned()];
    match f {
        OutputFormat::Qcow2 { cluster_bits } => {
            a.extend([
                "--cluster-size".to_owned(),
                (1u64 << cluster_bits).to_string(),
            ]);
        }
        OutputFormat::Raw => {}
    }
    a
}

/// Every registered format, and qcow2 also at its smallest and largest clusters.
fn formats() -> Vec<OutputFormat> {
    let mut all = OutputFormat::ALL.to_vec();
    for cluster_bits in [MIN_CLUSTER_BITS, MAX_CLUSTER_BITS] {
        let f = OutputFormat::Qcow2 { cluster_bits };
        if !all.contains(&f) {
            all.push(f);
        }
    }
    all
}

/// `mkomi register SRC -o OUT` in format `f`; returns the manifest's one disk entry.
fn register(src: &Path, out: &Path, f: OutputFormat) -> serde_json::Value {
    let mut a: Vec<String> = [
        "register",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--name",
        "registry test",
        "-q",
        "--no-sync",
    ]
    .map(str::to_owned)
    .to_vec();
    a.extend(args(f));
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    manifest(out)["Disks"][0].clone()
}

#[test]
fn every_output_format_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("source.img");
    // Not a whole number of sectors (the disk written is rounded up), with data at the start,
    // across a 2 MiB boundary and in the partial last sector.
    let size = (40 << 20) + 3 * 512 + 100;
    sparse_raw(
        &src,
        size,
        &[(0, 5000, 0x11), ((2 << 20) - 700, 9000, 0x22)],
    );
    let f = open_rw(&src);
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(1800, 7), size - 1800).unwrap();
    drop(f);

    let mut digests = Vec::new();
    for f in formats() {
        let out = dir.path().join(format!("out-{}", f.name()));
        let disk = register(&src, &out, f);
        let file = out.join(disk["Path"].as_str().unwrap());
        assert_eq!(disk["Format"], f.name(), "{f:?}");
        assert_eq!(file.extension().unwrap(), f.name(), "{f:?}");
        if let OutputFormat::Qcow2 { .. } = f {
            qemu_check(&file);
        }
        qemu_compare(&src, &file);
        sha256sum_check(&out);
        // `verify` also checks that the content is detected as the format's reader expects.
        ok(&["verify", out.to_str().unwrap(), "-q"]);
        // mkomi reads what it wrote as a source, to the same disk.
        let again = dir.path().join(format!("again-{}", f.name()));
        let disk2 = register(&file, &again, OutputFormat::Raw);
        assert_eq!(disk2["ContentDigest"], disk["ContentDigest"], "{f:?}");
        qemu_compare(&file, &again.join(disk2["Path"].as_str().unwrap()));
        digests.push(disk["ContentDigest"].as_str().unwrap().to_owned());
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_dir_all(&again).unwrap();
    }
    digests.dedup();
    assert_eq!(digests.len(), 1, "{digests:?}");
}
