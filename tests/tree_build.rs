//! `mkomi build` of `content = "tree"` partitions, end to end: the same tree as a directory, a
//! tarball (plain, gzip, zstd, xz), an OCI layout, an OCI archive and a `docker save` archive
//! gives the same disk; the hard cases (100,000 files, a directory of 50,000 entries, a 5 GiB
//! sparse file, 255-byte names, a 4,000-byte path, non-UTF-8 names, hard links across
//! directories, whiteouts) come out file by file as they went in; bad inputs get one line and
//! leave nothing; the sanitize step removes what `mkomi audit` would find.
//!
//! The file systems are read back only through e2fsprogs (`e2fsck -fn`, `debugfs`), never through
//! mkomi's own reader: `tests/tree/treetool.py compare` walks the image with `debugfs ls -p`,
//! reads every inode's `stat`, `rdump`s the content, reads xattr values with `ea_get` and the
//! extents of sparse files with `dump_extents`, and compares with `os.lstat` of the source.
//! The trees are made as root (owners, device nodes, `security.capability`), as CI runs tests.
//! Tools: python3, GNU tar, gzip, zstd, xz, qemu-img, sgdisk, e2fsprogs, ssh-keygen; no
//! container tool (the OCI and `docker save` images are written by treetool.py).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The helper script: trees, images, bad archives, the debugfs comparison.
fn treetool(args: &[&str]) -> String {
    let script = repo().join("tests/tree/treetool.py");
    let mut all = vec![s(&script)];
    all.extend_from_slice(args);
    tool("python3", &all)
}

/// One root partition holding the tree, sized to it; no ESP, no bootloader.
const TEMPLATE: &str = r#"[image]
name = "tree-test"
architecture = "x86_64"

[disk]

[[partition]]
type = "root-x86-64"
label = "root"
content = "tree"
source = "${tree}"
size = "auto"
"#;

/// Writes `TEMPLATE` with `extra` lines appended to the partition (and any sections after).
fn template(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{TEMPLATE}{extra}")).unwrap();
    p
}

/// `mkomi build TPL --set tree=TREE -o OUT` in `dir` (no boot check: the disk has no ESP).
fn build_with(dir: &Path, tpl: &Path, tree: &Path, out: &Path, epoch: &str, limit: u64) -> Output {
    let mut c = mkomi();
    c.current_dir(dir)
        .env("SOURCE_DATE_EPOCH", epoch)
        .args([
            "build",
            s(tpl),
            "-o",
            s(out),
            "-q",
            "--no-sync",
            "--no-boot-check",
        ])
        .args(["--set", &format!("tree={}", s(tree))]);
    run_with_timeout(c, Duration::from_secs(limit))
}

/// Builds and requires success; returns the time it took.
fn build_ok(dir: &Path, tpl: &Path, tree: &Path, out: &Path) -> Duration {
    let start = Instant::now();
    let r = build_with(dir, tpl, tree, out, "1700000000", 600);
    assert!(
        r.status.success(),
        "build of {}: {}",
        tree.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    start.elapsed()
}

/// GNU tar of a directory's content, as the issue packs trees.
fn pack(src: &Path, out: &Path, extra: &[&str]) {
    let mut c = Command::new("tar");
    c.args([
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--sort=name",
        "--format=posix",
        // PAX headers that hold no time of their own, so the archive does not depend on when it
        // was made (the tree model keeps mtimes only).
        "--pax-option=delete=atime,delete=ctime",
        "-S",
    ])
    .args(extra)
    .args(["-C", s(src), "-cf", s(out), "."]);
    let r = c.output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// Compresses `file` with `cmd -c` into `out`.
fn compress(cmd: &str, flags: &[&str], file: &Path, out: &Path) {
    let r = Command::new(cmd)
        .args(flags)
        .arg("-c")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::write(out, r.stdout).unwrap();
}

/// The bundle's one disk, as a raw image of its root partition (GPT entry 1, found with
/// `sgdisk -i 1`), which `e2fsck -fn` must find clean.
fn root_partition(bundle: &Path, work: &Path) -> PathBuf {
    let m = manifest(bundle);
    let disk = bundle.join(m["Disks"][0]["Path"].as_str().unwrap());
    let raw = work.join("disk.raw");
    tool("qemu-img", &["convert", "-O", "raw", s(&disk), s(&raw)]);
    let info = tool("sgdisk", &["-i", "1", s(&raw)]);
    let sector = |what: &str| -> u64 {
        let line = info
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} in {info}"));
        line[what.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (first, last) = (sector("First sector:"), sector("Last sector:"));
    let part = work.join("root.ext4");
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            "--image-opts",
            &format!(
                "driver=raw,offset={},size={},file.filename={}",
                first * 512,
                (last + 1 - first) * 512,
                s(&raw)
            ),
            s(&part),
        ],
    );
    std::fs::remove_file(&raw).unwrap();
    let fsck = Command::new("e2fsck")
        .args(["-fn", s(&part)])
        .output()
        .unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "e2fsck -fn: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    part
}

/// `treetool.py compare SRC FS WORK ARGS`: the file system holds the source, file by file.
fn compare(src: &Path, fs: &Path, work: &Path, args: &[&str]) -> String {
    let mut all = vec!["compare", s(src), s(fs), s(work)];
    all.extend_from_slice(args);
    let script = repo().join("tests/tree/treetool.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(&all)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the file system differs from {}:\n{text}{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(work);
    text
}

/// Every file of a bundle, by name, with its bytes' SHA-256.
fn bundle_files(dir: &Path) -> Vec<(String, String)> {
    entries(dir)
        .into_iter()
        .map(|n| {
            let sum = tool("sha256sum", &[s(&dir.join(&n))]);
            (n, sum.split_whitespace().next().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn the_same_tree_through_every_source_gives_the_same_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = d.join("src");
    treetool(&["rich", s(&src)]);
    let tar = d.join("tree.tar");
    pack(&src, &tar, &[]);
    compress("gzip", &["-n", "-6"], &tar, &d.join("tree.tar.gz"));
    compress("zstd", &["-q", "-3"], &tar, &d.join("tree.tar.zst"));
    compress("xz", &["-6"], &tar, &d.join("tree.tar.xz"));
    treetool(&["oci", s(&d.join("layout")), s(&tar)]);
    treetool(&["oci", s(&d.join("image.oci.tar")), s(&tar), "--archive"]);
    treetool(&["docker", s(&d.join("image.docker.tar")), s(&tar)]);
    let tpl = template(d, "t.toml", "");

    let sources = [
        "src",
        "tree.tar",
        "tree.tar.gz",
        "tree.tar.zst",
        "tree.tar.xz",
        "layout",
        "image.oci.tar",
        "image.docker.tar",
    ];
    let mut first: Option<Vec<(String, String)>> = None;
    for name in sources {
        let out = d.join(format!("out-{name}"));
        let took = build_ok(d, &tpl, &d.join(name), &out);
        eprintln!("build from {name}: {took:?}");
        sha256sum_check(&out);
        ok(&["verify", s(&out), "-q"]);
        // The whole bundle, byte for byte: disk, manifest.json, SHA256SUMS.
        let files = bundle_files(&out);
        assert_eq!(files.len(), 3, "{files:?}");
        match &first {
            None => first = Some(files),
            Some(files0) => assert_eq!(
                &files, files0,
                "{name}: the bundle differs from the directory's"
            ),
        }
        if name == "src" {
            // The directory's build, file by file (mtimes clamped to SOURCE_DATE_EPOCH).
            let fs = root_partition(&out, d);
            let report = compare(&src, &fs, &d.join("cmp"), &[]);
            eprintln!("{report}");
            assert!(
                report.contains("3 devices, 1 fifos, 4 xattrs, 1 sparse"),
                "{report}"
            );
            std::fs::remove_file(&fs).unwrap();
        }
    }
}

#[test]
fn two_builds_are_identical_and_times_are_clamped() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = d.join("src");
    treetool(&["rich", s(&src)]);
    let tpl = template(d, "t.toml", "");
    build_ok(d, &tpl, &src, &d.join("a"));
    build_ok(d, &tpl, &src, &d.join("b"));
    assert_eq!(bundle_files(&d.join("a")), bundle_files(&d.join("b")));
    // Another SOURCE_DATE_EPOCH, between the tree's times and the one in the future: another
    // disk, and that time clamped to the new epoch.
    let r = build_with(d, &tpl, &src, &d.join("c"), "1800000000", 120);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_ne!(
        manifest(&d.join("a"))["Disks"][0]["ContentDigest"],
        manifest(&d.join("c"))["Disks"][0]["ContentDigest"]
    );
    let fs = root_partition(&d.join("c"), d);
    compare(&src, &fs, &d.join("cmp"), &["--epoch", "1800000000"]);
}

#[test]
fn owner_replaces_every_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = d.join("src");
    treetool(&["rich", s(&src)]);
    // Owned by uid 1000 throughout (chown clears set-user-ID bits: the source says so too).
    tool("chown", &["-h", "-R", "1000:1000", s(&src)]);
    let tpl = template(d, "t.toml", "owner = \"0:0\"\n");
    build_ok(d, &tpl, &src, &d.join("out"));
    let fs = root_partition(&d.join("out"), d);
    let report = compare(&src, &fs, &d.join("cmp"), &["--owner", "0:0"]);
    eprintln!("{report}");
}

/// A scratch directory in /dev/shm when that tmpfs has `need` bytes free, else in the usual
/// temporary directory. Removing 100,000 files from a disk file system mounted with `discard`
/// (as this machine's root is) takes minutes; from tmpfs, a second.
fn scratch(need: u64) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let free = Command::new("df")
        .args(["--output=avail", "-B1", s(shm)])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    if free >= need {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

#[test]
fn hard_cases_come_out_file_by_file() {
    let tmp = scratch(6 << 30);
    let d = tmp.path();
    let src = d.join("hard");
    let t = Instant::now();
    treetool(&["hard", s(&src)]);
    eprintln!("tree made in {:?}", t.elapsed());
    let tpl = template(d, "t.toml", "");
    let took = build_ok(d, &tpl, &src, &d.join("out"));
    eprintln!("build from the directory: {took:?}");
    let m = manifest(&d.join("out"));
    let tree = &m["Build"]["Trees"][0];
    assert!(tree["Entries"].as_u64().unwrap() > 100_500, "{tree}");
    assert!(tree["ContentBytes"].as_u64().unwrap() > 5 << 30, "{tree}");
    // The disk holds the data, not the holes.
    assert!(
        m["Disks"][0]["FileSize"].as_u64().unwrap() < 1 << 30,
        "{}",
        m["Disks"][0]
    );
    let t = Instant::now();
    let fs = root_partition(&d.join("out"), d);
    eprintln!("partition taken out and e2fsck'd in {:?}", t.elapsed());
    let t = Instant::now();
    // The 5 GiB file is checked through its extents, not dumped whole.
    let report = compare(&src, &fs, &d.join("cmp"), &["--no-dump", "sparse"]);
    eprintln!("{report}compared in {:?}", t.elapsed());
    assert!(report.contains("; 2 hard-link groups"), "{report}");
    std::fs::remove_file(&fs).unwrap();

    // The same tree as a zstd tarball gives the same disk.
    let tar = d.join("hard.tar");
    let t = Instant::now();
    pack(&src, &tar, &[]);
    compress("zstd", &["-q", "-1", "-T0"], &tar, &d.join("hard.tar.zst"));
    std::fs::remove_file(&tar).unwrap();
    eprintln!("packed in {:?}", t.elapsed());
    let took = build_ok(d, &tpl, &d.join("hard.tar.zst"), &d.join("out-tar"));
    eprintln!("build from the tarball: {took:?}");
    assert_eq!(
        bundle_files(&d.join("out-tar")),
        bundle_files(&d.join("out")),
        "the tarball's bundle differs from the directory's"
    );
}

#[test]
fn whiteouts_delete_what_lower_layers_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    treetool(&["layers", s(d)]);
    pack(&d.join("lower"), &d.join("lower.tar"), &[]);
    pack(&d.join("upper"), &d.join("upper.tar"), &[]);
    treetool(&[
        "oci",
        s(&d.join("image")),
        s(&d.join("lower.tar")),
        s(&d.join("upper.tar")),
    ]);
    let tpl = template(d, "t.toml", "");
    build_ok(d, &tpl, &d.join("image"), &d.join("out"));
    let fs = root_partition(&d.join("out"), d);
    // `expected` is lower with upper applied by hand: gone/ deleted (.wh.gone), opq/ holding
    // only upper's entries (.wh..wh..opq), a/keep2 deleted, `replaced` upper's.
    let report = compare(&d.join("expected"), &fs, &d.join("cmp"), &[]);
    eprintln!("{report}");
    assert!(report.starts_with("compared 9 paths"), "{report}");
    let ls = |p: &str| tool("debugfs", &["-R", &format!("ls -p {p}"), s(&fs)]);
    assert!(!ls("/").contains("/gone/"), "{}", ls("/"));
    assert!(!ls("/").contains(".wh."), "{}", ls("/"));
    let opq = ls("/opq");
    assert!(
        opq.contains("/new/") && !opq.contains("old1") && !opq.contains("/sub/"),
        "{opq}"
    );
    // The same two layers as a `docker save` archive: the same bundle.
    treetool(&[
        "docker",
        s(&d.join("image.docker.tar")),
        s(&d.join("lower.tar")),
        s(&d.join("upper.tar")),
    ]);
    build_ok(d, &tpl, &d.join("image.docker.tar"), &d.join("out-docker"));
    assert_eq!(
        bundle_files(&d.join("out-docker")),
        bundle_files(&d.join("out"))
    );
}

/// Each bad input must fail with exit code 1 and one line on stderr that names the file once
/// and the problem, with no output and nothing else left in the output's parent directory.
#[test]
fn bad_inputs_get_one_line_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for kind in ["dotdot", "absolute", "through-symlink", "truncated"] {
        treetool(&["badtar", kind, s(&d.join(format!("{kind}.tar")))]);
    }
    let layer = d.join("layer");
    std::fs::create_dir(&layer).unwrap();
    std::fs::write(layer.join("f"), "f\n").unwrap();
    pack(&layer, &d.join("layer.tar"), &[]);
    treetool(&[
        "oci",
        s(&d.join("bad-digest")),
        s(&d.join("layer.tar")),
        "--bad-digest",
    ]);
    treetool(&[
        "oci",
        s(&d.join("arm64")),
        s(&d.join("layer.tar")),
        "--arch",
        "arm64",
    ]);
    // Compressed archives cut in the middle of their stream.
    let cut = d.join("cut");
    std::fs::create_dir(&cut).unwrap();
    std::fs::write(cut.join("noise"), noise(1 << 20, 2)).unwrap();
    pack(&cut, &d.join("cut.tar"), &[]);
    for (cmd, ext) in [("gzip", "gz"), ("zstd", "zst"), ("xz", "xz")] {
        let whole = d.join(format!("whole.tar.{ext}"));
        compress(cmd, &[], &d.join("cut.tar"), &whole);
        let bytes = std::fs::read(&whole).unwrap();
        std::fs::write(d.join(format!("cut.tar.{ext}")), &bytes[..bytes.len() / 2]).unwrap();
    }
    let big = d.join("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(big.join("noise"), noise(40 << 20, 1)).unwrap();
    let tpl = template(d, "t.toml", "");
    let fixed = std::fs::read_to_string(&tpl)
        .unwrap()
        .replace("size = \"auto\"", "size = \"16M\"");
    let fixed_tpl = d.join("fixed.toml");
    std::fs::write(&fixed_tpl, fixed).unwrap();

    let outs = d.join("outs");
    std::fs::create_dir(&outs).unwrap();
    // Every case is tried; the failures are listed together.
    let mut failures = Vec::new();
    // (source, template, the file the line names, what it says)
    for (source, tpl, named, expect) in [
        ("dotdot.tar", &tpl, "dotdot.tar", "`..`"),
        ("absolute.tar", &tpl, "absolute.tar", "absolute"),
        (
            "through-symlink.tar",
            &tpl,
            "through-symlink.tar",
            "not a directory",
        ),
        ("truncated.tar", &tpl, "truncated.tar", "truncated"),
        ("cut.tar.gz", &tpl, "cut.tar.gz", "truncated"),
        ("cut.tar.zst", &tpl, "cut.tar.zst", "truncated"),
        ("cut.tar.xz", &tpl, "cut.tar.xz", "truncated"),
        ("bad-digest", &tpl, "bad-digest", "its content has digest"),
        ("arm64", &tpl, "arm64", "amd64"),
        // The size is the template's: the line names it and the partition.
        (
            "big",
            &fixed_tpl,
            "fixed.toml",
            "partition 'root': an ext4 file system of 16777216 bytes is too small",
        ),
    ] {
        let before = entries(&outs);
        let r = build_with(
            d,
            tpl,
            &d.join(source),
            &outs.join("out"),
            "1700000000",
            120,
        );
        let err = String::from_utf8_lossy(&r.stderr);
        eprintln!("{source}: {}", err.trim());
        let named = s(&d.join(named)).to_owned();
        let mut fail = |what: String| failures.push(format!("{source}: {what}: {}", err.trim()));
        if r.status.code() != Some(1) {
            fail(format!("exit {:?}", r.status));
        }
        if err.trim().lines().count() != 1 {
            fail("not one line".into());
        }
        if err.matches(&named).count() != 1 {
            fail(format!("{named} not named exactly once"));
        }
        if !err.contains(expect) {
            fail(format!("no {expect:?}"));
        }
        if outs.join("out").exists() {
            fail("the output exists".into());
        }
        if entries(&outs) != before {
            fail(format!("left behind: {:?}", entries(&outs)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The audit's codes for what `[sanitize]` removes.
const SANITIZED_CODES: [&str; 5] = [
    "machine-id",
    "ssh-host-key",
    "ssh-authorized-key",
    "cloud-init-instance",
    "history",
];

/// The (severity, code) of every finding of `mkomi audit BUNDLE --json`, which must be complete.
fn audit_findings(bundle: &Path) -> Vec<(String, String)> {
    let out = mkomi()
        .args(["audit", s(bundle), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["complete"], true, "{v}");
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn sanitize_removes_what_the_audit_finds() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = d.join("src");
    let w = |p: &str, data: &[u8]| {
        let p = src.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("etc/machine-id", b"0123456789abcdef0123456789abcdef\n");
    w("etc/hostname", b"planted\n");
    w("var/lib/cloud/instance/obj.pkl", b"pickle");
    w("var/lib/cloud/instances/i-1234/boot-finished", b"done");
    w("root/.bash_history", b"mysql -p hunter2\n");
    std::fs::create_dir_all(src.join("etc/ssh")).unwrap();
    std::fs::create_dir_all(src.join("root/.ssh")).unwrap();
    keygen("ed25519", &src.join("etc/ssh/ssh_host_ed25519_key"), "");
    let user = d.join("user");
    keygen("ed25519", &user, "alice");
    std::fs::copy(d.join("user.pub"), src.join("root/.ssh/authorized_keys")).unwrap();

    let tpl = template(d, "t.toml", "");
    build_ok(d, &tpl, &src, &d.join("clean"));
    let found = audit_findings(&d.join("clean"));
    for code in SANITIZED_CODES {
        assert!(!found.iter().any(|(_, c)| c == code), "{code} in {found:?}");
    }
    // Nothing else planted: no high or medium finding at all.
    assert!(
        !found
            .iter()
            .any(|(sev, _)| sev == "high" || sev == "medium"),
        "{found:?}"
    );
    let m = manifest(&d.join("clean"));
    let sanitized: Vec<(String, String, String)> = m["Build"]["Sanitized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["Item"].as_str().unwrap().to_owned(),
                e["Path"].as_str().unwrap().to_owned(),
                e["Action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    eprintln!("{sanitized:?}");
    for (item, path, action) in [
        ("machine-id", "/etc/machine-id", "emptied"),
        ("ssh-host-keys", "/etc/ssh/ssh_host_ed25519_key", "removed"),
        (
            "ssh-host-keys",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "removed",
        ),
        ("authorized-keys", "/root/.ssh/authorized_keys", "removed"),
        ("shell-history", "/root/.bash_history", "removed"),
    ] {
        assert!(
            sanitized
                .iter()
                .any(|(i, p, a)| (i.as_str(), p.as_str(), a.as_str()) == (item, path, action)),
            "{item} {path} {action} not in {sanitized:?}"
        );
    }
    assert!(
        sanitized
            .iter()
            .any(|(i, p, _)| i == "cloud-init" && p.starts_with("/var/lib/cloud/instance")),
        "{sanitized:?}"
    );
    // And through debugfs: the files are gone, /etc/machine-id is empty, the rest is there.
    let fs = root_partition(&d.join("clean"), d);
    let ls = |p: &str| tool("debugfs", &["-R", &format!("ls -p {p}"), s(&fs)]);
    assert!(!ls("/etc/ssh").contains("ssh_host_"), "{}", ls("/etc/ssh"));
    assert!(!ls("/root").contains(".bash_history"));
    assert!(!ls("/root/.ssh").contains("authorized_keys"));
    assert!(!ls("/var/lib/cloud").contains("instance"));
    assert!(ls("/etc").contains("/machine-id/0/"), "{}", ls("/etc"));
    assert!(ls("/etc").contains("/hostname/8/"), "{}", ls("/etc"));

    // Every item off: all kept, and the audit finds each.
    let keep = template(
        d,
        "keep.toml",
        "\n[sanitize]\nmachine-id = false\nssh-host-keys = false\ncloud-init = false\n\
         dhcp-leases = false\nrandom-seed = false\nshell-history = false\nlogs = false\n\
         authorized-keys = false\n",
    );
    build_ok(d, &keep, &src, &d.join("kept"));
    let found = audit_findings(&d.join("kept"));
    eprintln!("{found:?}");
    for code in SANITIZED_CODES {
        assert!(
            found.iter().any(|(_, c)| c == code),
            "{code} not in {found:?}"
        );
    }
    assert!(
        manifest(&d.join("kept"))["Build"]["Sanitized"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    );

    // A key the template adds on purpose is not sanitized away: [[file]] comes after.
    let deploy = template(
        d,
        "deploy.toml",
        "\n[[file]]\npath = \"/root/.ssh/authorized_keys\"\ncontent = \"ssh-ed25519 AAAA deploy\"\nmode = \"0600\"\n",
    );
    build_ok(d, &deploy, &src, &d.join("deploy"));
    let m = manifest(&d.join("deploy"));
    assert_eq!(m["Build"]["Files"][0]["Path"], "/root/.ssh/authorized_keys");
    assert_eq!(m["Build"]["Files"][0]["Replaced"], false);
    let fs = root_partition(&d.join("deploy"), d);
    let cat = tool("debugfs", &["-R", "cat /root/.ssh/authorized_keys", s(&fs)]);
    assert_eq!(cat, "ssh-ed25519 AAAA deploy");
}
