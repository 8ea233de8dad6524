//! Round trips through `mkomi register`, checked by the real qemu-img, sha256sum and
//! `mkomi verify`: raw→qcow2, raw→raw, qcow2→qcow2, qcow2→raw.

mod common;
use common::*;
use std::path::Path;

/// Registers `src` in each format (and each qcow2 cluster size), checks every output with the
/// real tools and returns the ContentDigest, which must be the same for all of them.
fn roundtrip(src: &Path, work: &Path, formats: &[&str], clusters: &[&str]) -> String {
    let mut digests = Vec::new();
    for format in formats {
        let sizes: Vec<&str> = if *format == "qcow2" {
            clusters.to_vec()
        } else {
            vec!["64K"]
        };
        for cs in sizes {
            let out = work.join(format!(
                "{}-{format}-{cs}",
                src.file_name().unwrap().to_str().unwrap()
            ));
            ok(&[
                "register",
                src.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--arch",
                "x86_64",
                "--no-boot-check",
                "--format",
                format,
                "--cluster-size",
                cs,
                "--name",
                "roundtrip test",
                "-q",
                "--no-sync",
                // The backing chains of these tests sit beside the image.
                "--allow-backing",
                src.parent().unwrap().to_str().unwrap(),
            ]);
            let m = manifest(&out);
            let disk = &m["Disks"][0];
            let file = out.join(disk["Path"].as_str().unwrap());
            assert_eq!(disk["Format"], *format);
            if *format == "qcow2" {
                qemu_check(&file);
                let info = tool(
                    "qemu-img",
                    &["info", "--output=json", file.to_str().unwrap()],
                );
                let info: serde_json::Value = serde_json::from_str(&info).unwrap();
                assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
                assert_eq!(info["cluster-size"].as_u64().unwrap(), parse_size(cs));
            }
            qemu_compare(src, &file);
            // The disk qemu reads from the output is the one the manifest describes.
            assert_eq!(
                qemu_virtual_size(&file),
                disk["VirtualSize"].as_u64().unwrap(),
                "{}",
                file.display()
            );
            sha256sum_check(&out);
            ok(&["verify", out.to_str().unwrap(), "-q"]);
            assert_eq!(
                disk["VirtualSize"].as_u64().unwrap(),
                qemu_virtual_size(src),
                "{}",
                file.display()
            );
            assert_eq!(
                disk["FileSize"].as_u64().unwrap(),
                std::fs::metadata(&file).unwrap().len()
            );
            digests.push(disk["ContentDigest"].as_str().unwrap().to_owned());
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    digests.remove(0)
}

fn parse_size(s: &str) -> u64 {
    let (n, m) = s.split_at(s.len() - 1);
    n.parse::<u64>().unwrap() * if m == "K" { 1024 } else { MIB }
}

fn qemu_virtual_size(p: &Path) -> u64 {
    let info = tool("qemu-img", &["info", "--output=json", p.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// The ContentDigest recipe from the README, run by Python on a raw image.
fn readme_digest(raw: &Path) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("```python\n")
        .expect("README has a python block")
        + 10;
    let len = readme[start..].find("```").unwrap();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&readme[start..start + len])
        .arg(raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn qemu_img(args: &[&str]) {
    tool("qemu-img", args);
}

fn qemu_io(file: &Path, cmd: &str) {
    tool("qemu-io", &["-c", cmd, file.to_str().unwrap()]);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const ALL_CLUSTERS: [&str; 3] = ["64K", "256K", "2M"];

#[test]
fn raw_sources_of_awkward_sizes() {
    let dir = tempfile::tempdir().unwrap();
    type Runs = Vec<(u64, u64, u8)>;
    let cases: Vec<(&str, u64, Runs)> = vec![
        ("empty.img", 0, vec![]),
        ("one-sector.img", 512, vec![(0, 512, 0xaa)]),
        // Not a multiple of any cluster size; data at the start and in the very last bytes.
        (
            "odd.img",
            5 * MIB + 1536,
            vec![(0, 70_000, 0x11), (5 * MIB + 536, 1000, 0x22)],
        ),
        // Data straddling a 4 MiB digest block and a 2 MiB cluster boundary.
        (
            "straddle.img",
            16 * MIB,
            vec![(4 * MIB - 100, 200, 0x33), (12 * MIB, 4 * MIB, 0x44)],
        ),
    ];
    for (name, size, runs) in cases {
        let src = dir.path().join(name);
        sparse_raw(&src, size, &runs);
        let digest = roundtrip(&src, dir.path(), &["qcow2", "raw"], &ALL_CLUSTERS);
        assert_eq!(digest, readme_digest(&src), "{name}");
    }
}

#[test]
fn a_source_of_odd_size_keeps_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 57 bytes past a whole sector, and those bytes hold data: qemu drops a qcow2 disk's
    // partial last sector, so the output must be rounded up to 3,158,528 bytes.
    let size = 3_158_073;
    let padded = 3_158_528;
    let src = d.join("odd.img");
    sparse_raw(&src, size, &[(0, 100_000, 0x51), (size - 57, 57, 0x52)]);
    assert_eq!(qemu_virtual_size(&src), padded);
    // Both formats: qemu-img compare against the source, qemu-img info's size, verify.
    let digest = roundtrip(&src, d, &["qcow2", "raw"], &ALL_CLUSTERS);
    // The digest is that of the disk qemu makes of the source.
    assert_eq!(digest, readme_digest(&src));
    let converted = d.join("converted.raw");
    qemu_img(&["convert", "-O", "raw", s(&src), s(&converted)]);
    assert_eq!(std::fs::metadata(&converted).unwrap().len(), padded);
    assert_eq!(digest, readme_digest(&converted));
    // The raw output is the source, then zeros to the end of the sector.
    let out = d.join("raw");
    ok(&[
        "register",
        s(&src),
        "-o",
        s(&out),
        "--arch",
        "x86_64",
        "--format",
        "raw",
        "--no-boot-check",
        "-q",
        "--no-sync",
    ]);
    let written = std::fs::read(out.join("sda1.raw")).unwrap();
    let mut expect = std::fs::read(&src).unwrap();
    expect.resize(padded as usize, 0);
    assert!(written == expect, "the raw output is not the padded source");
    assert_eq!(manifest(&out)["Disks"][0]["FileSize"], padded);
}

#[test]
fn written_zeros_are_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("zeros.img");
    // Fully allocated: 12 MiB of explicit zeros, one 64 KiB cluster of data in the middle.
    sparse_raw(&src, 12 * MIB, &[(0, 12 * MIB, 0)]);
    std::fs::write(&src, {
        let mut v = vec![0u8; 12 * MIB as usize];
        v[6 * MIB as usize..6 * MIB as usize + 65_536].fill(0x5a);
        v
    })
    .unwrap();
    let out = dir.path().join("b");
    ok(&[
        "register",
        s(&src),
        "-o",
        s(&out),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "-q",
        "--no-sync",
    ]);
    let m = manifest(&out);
    assert_eq!(m["Disks"][0]["AllocatedBytes"], 65_536);
    // Header, L1, refcount table and block, one L2 table, one data cluster.
    assert_eq!(m["Disks"][0]["FileSize"], 6 * 65_536);
    qemu_check(&out.join("sda1.qcow2"));
    qemu_compare(&src, &out.join("sda1.qcow2"));

    let raw = dir.path().join("r");
    ok(&[
        "register",
        s(&src),
        "-o",
        s(&raw),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--format",
        "raw",
        "-q",
    ]);
    let meta = std::fs::metadata(raw.join("sda1.raw")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.len(), 12 * MIB);
    assert!(
        meta.blocks() * 512 <= 2 * 65_536,
        "raw output not sparse: {} blocks",
        meta.blocks()
    );
}

#[test]
fn qcow2_sources_made_by_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("base.img");
    sparse_raw(
        &raw,
        9 * MIB + 4096,
        &[(0, 300_000, 0x61), (7 * MIB, 2 * MIB + 4096, 0x62)],
    );
    let expected = readme_digest(&raw);
    for (name, opts) in [
        ("v3-64k.qcow2", vec!["-o", "cluster_size=65536"]),
        ("v3-4k.qcow2", vec!["-o", "cluster_size=4096"]),
        ("v3-2m.qcow2", vec!["-o", "cluster_size=2097152"]),
        ("v2.qcow2", vec!["-o", "compat=0.10"]),
        ("compressed.qcow2", vec!["-c"]),
        (
            "compressed-v2.qcow2",
            vec!["-c", "-o", "compat=0.10,cluster_size=4096"],
        ),
    ] {
        let q = d.join(name);
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend(opts);
        args.extend([s(&raw), s(&q)]);
        qemu_img(&args);
        let digest = roundtrip(&q, d, &["qcow2", "raw"], &ALL_CLUSTERS);
        assert_eq!(digest, expected, "{name}");
    }
}

#[test]
fn three_level_backing_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    let mid = d.join("mid.qcow2");
    let top = d.join("top.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "24M"]);
    qemu_io(&base, "write -P 0x41 0 8M");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&mid),
    ]);
    qemu_io(&mid, "write -P 0x42 1M 1M");
    qemu_io(&mid, "write -c -P 0x43 16M 64k");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    qemu_io(&top, "write -P 0x44 3M 512k");
    // Explicit zeros over data of the base: must read as zeros, not as the base's bytes.
    qemu_io(&top, "write -z 5M 1M");
    let flat = d.join("flat.raw");
    qemu_img(&["convert", "-O", "raw", s(&top), s(&flat)]);
    let digest = roundtrip(&top, d, &["qcow2", "raw"], &["64K"]);
    assert_eq!(digest, readme_digest(&flat));
}

#[test]
fn raw_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    sparse_raw(&base, 4 * MIB, &[(0, 2 * MIB, 0x71)]);
    let top = d.join("top.qcow2");
    // The overlay is larger than its backing file: past the base's end it reads zeros.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&top),
        "8M",
    ]);
    qemu_io(&top, "write -P 0x72 1M 64k");
    roundtrip(&top, d, &["qcow2", "raw"], &["64K"]);
}

#[test]
fn sparse_disk_larger_than_2_tib() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 3 * 1024 * GIB + 4096;
    let raw = d.join("huge.img");
    sparse_raw(
        &raw,
        size,
        &[
            (0, MIB, 0x01),
            (2048 * GIB + 5 * MIB, 65_536, 0x02),
            (size - 4096, 4096, 0x03),
        ],
    );
    // Raw outputs would hash 3 TiB of zeros (SHA-256 of the whole file): qcow2 only.
    let d1 = roundtrip(&raw, d, &["qcow2"], &["64K", "2M"]);
    let q = d.join("huge.qcow2");
    qemu_img(&["convert", "-O", "qcow2", s(&raw), s(&q)]);
    let d2 = roundtrip(&q, d, &["qcow2"], &["64K"]);
    assert_eq!(d1, d2);
}
