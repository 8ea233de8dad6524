//! Bundles as a whole: determinism, verification of damaged bundles, atomic output, field
//! validation, the manifest against Outscale's own JSON schema, and hostile images.

mod common;
use common::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small bundle with a root and a data volume, in `format`.
fn make_bundle(d: &Path, name: &str, format: &str) -> std::path::PathBuf {
    let root = d.join("root.img");
    let data = d.join("data.img");
    if !root.exists() {
        sparse_raw(
            &root,
            40 * MIB,
            &[(0, 3 * MIB, 0x10), (20 * MIB, 9 * MIB, 0x20)],
        );
        sparse_raw(&data, 8 * MIB, &[(MIB, 64 * 1024, 0x30)]);
    }
    let out = d.join(name);
    ok(&[
        "register",
        s(&root),
        "-o",
        s(&out),
        "--arch",
        "x86_64",
        "--format",
        format,
        "--boot-mode",
        "uefi",
        // The disk is noise, with no ESP: the declared mode cannot be checked.
        "--no-boot-check",
        "--description",
        "test image",
        "--bdm",
        &format!(
            "/dev/sdb={},size=20,type=io1,iops=600,delete-on-vm-deletion=false",
            s(&data)
        ),
        "-q",
    ]);
    out
}

#[test]
fn same_inputs_give_byte_identical_bundles() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["qcow2", "raw"] {
        let a = make_bundle(dir.path(), &format!("a-{format}"), format);
        let b = make_bundle(dir.path(), &format!("b-{format}"), format);
        let names = entries(&a);
        assert_eq!(names, entries(&b));
        assert_eq!(
            names,
            [
                "SHA256SUMS",
                "manifest.json",
                &format!("sda1.{format}"),
                &format!("sdb.{format}")
            ]
        );
        for n in names {
            assert!(
                std::fs::read(a.join(&n)).unwrap() == std::fs::read(b.join(&n)).unwrap(),
                "{n} differs between two runs"
            );
        }
        let m = manifest(&a);
        assert_eq!(m["CreationDate"], "2023-11-14T22:13:20Z");
    }
}

#[test]
fn manifest_validates_against_outscale_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let out = make_bundle(dir.path(), "b", "qcow2");
    let m = manifest(&out);
    let image = &m["Image"];
    assert_eq!(image["BlockDeviceMappings"][1]["Bsu"]["Iops"], 600);
    assert_eq!(
        image["BlockDeviceMappings"][1]["Bsu"]["DeleteOnVmDeletion"],
        false
    );
    assert_eq!(image["BootModes"][0], "uefi");
    // shared/ stands beside the repository for developers and CI alike.
    let schemas = repo().join("../shared/specs/outscale-image-schemas.json");
    assert!(schemas.exists(), "{} is missing", schemas.display());
    let script = r##"
import json, sys, jsonschema
spec = json.load(open(sys.argv[1]))
image = json.load(open(sys.argv[2]))["Image"]
for name in ("CreateImageRequest", "Image"):
    schema = {"$schema": spec["$schema"], "$defs": spec["$defs"], "$ref": "#/$defs/" + name}
    jsonschema.Draft202012Validator(schema).validate(image)
    print(name, "ok")
# The schema rejects what it should: an unknown field fails.
image["Bogus"] = 1
schema = {"$schema": spec["$schema"], "$defs": spec["$defs"], "$ref": "#/$defs/CreateImageRequest"}
try:
    jsonschema.Draft202012Validator(schema).validate(image)
    sys.exit("an unknown field passed")
except jsonschema.ValidationError:
    pass
"##;
    let out = Command::new("python3")
        .args(["-c", script, s(&schemas), s(&out.join("manifest.json"))])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "schema validation failed (pip install jsonschema?): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "CreateImageRequest ok\nImage ok\n"
    );
}

/// Runs verify and returns its exit code and stdout.
fn verify(dir: &Path) -> (i32, String) {
    let out = run(&["verify", s(dir), "-q"]);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn verify_catches_every_kind_of_damage() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_bundle(dir.path(), "orig", "qcow2");
    let raw_base = make_bundle(dir.path(), "orig-raw", "raw");
    assert_eq!(verify(&base).0, 0);
    assert_eq!(verify(&raw_base).0, 0);
    let copy = |name: &str, from: &Path| {
        let to = dir.path().join(name);
        tool("cp", &["-a", "--sparse=always", s(from), s(&to)]);
        to
    };
    let cases: Vec<(&str, &Path, Damage, &str)> = vec![
        (
            "flip-data",
            &base,
            flip("sda1.qcow2", 1_000_000),
            "sda1.qcow2: SHA-256",
        ),
        ("flip-header", &base, flip("sda1.qcow2", 30), "sda1.qcow2"),
        (
            "flip-last-byte",
            &base,
            Box::new(|b: &Path| {
                let len = std::fs::metadata(b.join("sdb.qcow2")).unwrap().len();
                flip("sdb.qcow2", len - 1)(b)
            }),
            "sdb.qcow2: SHA-256",
        ),
        (
            "flip-raw",
            &raw_base,
            flip("sda1.raw", 20 * MIB + 7),
            "sda1.raw: SHA-256",
        ),
        (
            "flip-raw-hole",
            &raw_base,
            flip("sda1.raw", 35 * MIB),
            "sda1.raw: SHA-256",
        ),
        (
            "truncated",
            &base,
            Box::new(|b: &Path| {
                let f = open_rw(&b.join("sda1.qcow2"));
                let len = f.metadata().unwrap().len();
                f.set_len(len - 65_536).unwrap();
            }),
            "sda1.qcow2: size",
        ),
        (
            "missing",
            &base,
            Box::new(|b: &Path| std::fs::remove_file(b.join("sdb.qcow2")).unwrap()),
            "sdb.qcow2: missing",
        ),
        (
            "edited-manifest",
            &base,
            Box::new(|b: &Path| {
                let p = b.join("manifest.json");
                let t = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("\"VolumeSize\": 20", "\"VolumeSize\": 21");
                std::fs::write(p, t).unwrap();
            }),
            "manifest.json: SHA-256",
        ),
        (
            "edited-digest",
            &base,
            Box::new(|b: &Path| {
                let p = b.join("manifest.json");
                let m = manifest(b);
                let old = m["Disks"][0]["ContentDigest"].as_str().unwrap().to_owned();
                let new = format!("{}0", &old[..old.len() - 1]);
                let new = if new == old {
                    format!("{}1", &old[..old.len() - 1])
                } else {
                    new
                };
                std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace(&old, &new))
                    .unwrap();
            }),
            "ContentDigest",
        ),
        (
            "edited-sums",
            &base,
            Box::new(|b: &Path| {
                let p = b.join("SHA256SUMS");
                let t = std::fs::read_to_string(&p).unwrap();
                let t = t.replacen(&t[..1], if &t[..1] == "0" { "1" } else { "0" }, 1);
                std::fs::write(p, t).unwrap();
            }),
            "SHA256SUMS",
        ),
        (
            "missing-sums",
            &base,
            Box::new(|b: &Path| std::fs::remove_file(b.join("SHA256SUMS")).unwrap()),
            "SHA256SUMS",
        ),
        (
            "stray-file",
            &base,
            Box::new(|b: &Path| std::fs::write(b.join("evil.sh"), "x").unwrap()),
            "evil.sh: not part of the bundle",
        ),
    ];
    for (name, from, damage, expect) in cases {
        let b = copy(name, from);
        damage(&b);
        let (code, stdout) = verify(&b);
        assert_eq!(code, 3, "{name}: verify exit {code}: {stdout}");
        assert!(
            stdout.contains(expect),
            "{name}: expected {expect:?} in: {stdout}"
        );
        assert!(!stdout.contains("panicked"), "{name}: {stdout}");
    }
    // A manifest that is not one at all: an error, exit 1.
    let b = copy("garbage-manifest", &base);
    std::fs::write(b.join("manifest.json"), "{\"schema\": 1, \"Disks\": 5}").unwrap();
    let out = run(&["verify", s(&b)]);
    assert_eq!(out.status.code(), Some(1));
    // A manifest whose disk path leaves the bundle.
    let b = copy("escape", &base);
    let p = b.join("manifest.json");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"sdb.qcow2\"", "\"../orig/sdb.qcow2\""),
    )
    .unwrap();
    let (code, stdout) = verify(&b);
    assert_eq!(code, 3);
    assert!(stdout.contains("not a plain file name"), "{stdout}");
}

/// Rewrites a disk's manifest fields and SHA256SUMS around a hand-edited disk file, as a bundle
/// written that way would have them: only what the edit itself breaks is left to find.
fn reseal(b: &Path, disk: &str, virtual_size: u64) {
    let file = b.join(disk);
    let sha = tool("sha256sum", &[s(&file)]);
    let mut m = manifest(b);
    m["Disks"][0]["VirtualSize"] = virtual_size.into();
    m["Disks"][0]["FileSize"] = std::fs::metadata(&file).unwrap().len().into();
    m["Disks"][0]["Sha256"] = sha.split_whitespace().next().unwrap().into();
    let mut bytes = serde_json::to_vec_pretty(&m).unwrap();
    bytes.push(b'\n');
    std::fs::write(b.join("manifest.json"), bytes).unwrap();
    let sums = Command::new("sha256sum")
        .args(["manifest.json", disk])
        .current_dir(b)
        .output()
        .unwrap();
    assert!(sums.status.success());
    std::fs::write(b.join("SHA256SUMS"), sums.stdout).unwrap();
}

#[test]
fn verify_finds_a_tail_that_qemu_does_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 57 bytes past a whole sector, holding data.
    let size = 3_158_073u64;
    let src = d.join("odd.img");
    sparse_raw(&src, size, &[(0, 100_000, 0x51), (size - 57, 57, 0x52)]);
    let register = |out: &Path, format: &str| {
        ok(&[
            "register",
            s(&src),
            "-o",
            s(out),
            "--arch",
            "x86_64",
            "--format",
            format,
            "--no-boot-check",
            "-q",
            "--no-sync",
        ]);
    };

    // A qcow2 disk whose header says the source's odd size, as mkomi once wrote it: qemu reads
    // 3,158,016 bytes of it, and the last 57 are lost.
    let q = d.join("q");
    register(&q, "qcow2");
    assert_eq!(verify(&q).0, 0);
    open_rw(&q.join("sda1.qcow2"))
        .write_all_at(&size.to_be_bytes(), 24)
        .unwrap();
    reseal(&q, "sda1.qcow2", size);
    sha256sum_check(&q);
    let (code, stdout) = verify(&q);
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(
        stdout.trim(),
        format!(
            "{}: sda1.qcow2: qemu reads 3158016 bytes (the qcow2 size 3158073 rounded down to whole \
         512-byte sectors), less than the manifest's VirtualSize 3158073: the last 57 bytes are lost",
            s(&q)
        )
    );
    // inspect says so too, as a problem of the disk.
    let shown = ok(&["inspect", s(&q.join("sda1.qcow2"))]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(
            "problem: the qcow2 virtual size 3158073 is not a multiple of 512 bytes: qemu reads \
             only the first 3158016 bytes, and the last 57 bytes are lost to every qemu-based reader"
        ),
        "{shown}"
    );

    // A raw disk of the odd size: qemu reads all of it, but its VirtualSize is not the disk
    // mkomi writes and its ContentDigest covers.
    let r = d.join("r");
    register(&r, "raw");
    assert_eq!(verify(&r).0, 0);
    open_rw(&r.join("sda1.raw")).set_len(size).unwrap();
    reseal(&r, "sda1.raw", size);
    let (code, stdout) = verify(&r);
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(
        stdout.trim(),
        format!(
            "{}: sda1.raw: manifest VirtualSize 3158073 is not a whole number of 512-byte sectors, as \
         mkomi writes every disk: register the source again",
            s(&r)
        )
    );
}

type Damage = Box<dyn Fn(&Path)>;

/// Flips the lowest bit of one byte of a bundle file.
fn flip(file: &'static str, offset: u64) -> Damage {
    Box::new(move |b: &Path| {
        let f = open_rw(&b.join(file));
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, offset).unwrap();
        f.write_all_at(&[byte[0] ^ 0x01], offset).unwrap();
    })
}

fn leftovers(parent: &Path) -> Vec<String> {
    entries(parent)
        .into_iter()
        .filter(|n| n.contains("mkomi"))
        .collect()
}

#[test]
fn failed_and_refused_registers_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.img");
    sparse_raw(&src, 8 * MIB, &[(0, MIB, 1)]);
    let out = d.join("out");
    // Each error names the problem; nothing appears.
    for (args, expect) in [
        (
            vec!["--bdm", "/dev/sdb=/nonexistent.img"],
            "/nonexistent.img: cannot open",
        ),
        (vec!["--bdm", "/dev/sda=x"], "DeviceName \"/dev/sda\""),
        (
            vec!["--volume-size", "20000"],
            "VolumeSize \"20000\": at most 14901 GiB",
        ),
        (
            vec!["--volume-type", "gp2", "--iops", "100"],
            "only io1 volumes take Iops",
        ),
        (
            vec!["--volume-type", "io1", "--iops", "400"],
            "Iops \"400\"",
        ),
        (vec!["--name", "a*b"], "ImageName \"a*b\""),
        (vec!["--root-device", "/dev/xvda"], "RootDeviceName"),
    ] {
        let mut a = vec!["register", s(&src), "-o", s(&out), "--arch", "x86_64"];
        a.extend(args);
        let r = run(&a);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{a:?}: {err}");
        assert!(err.contains(expect), "{a:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists());
        assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
    }
    // Usage errors exit 2.
    assert_eq!(
        run(&["register", s(&src), "-o", s(&out), "--arch", "arm64"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&[
            "register",
            s(&src),
            "-o",
            s(&out),
            "--arch",
            "x86_64",
            "--cluster-size",
            "3K"
        ])
        .status
        .code(),
        Some(2)
    );
    // An existing destination is refused without --force and replaced with it.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), "x").unwrap();
    let r = run(&["register", s(&src), "-o", s(&out), "--arch", "x86_64"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("already exists"));
    assert!(out.join("keep").exists());
    ok(&[
        "register",
        s(&src),
        "-o",
        s(&out),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--force",
        "-q",
    ]);
    assert!(!out.join("keep").exists());
    assert_eq!(verify(&out).0, 0);
    assert!(leftovers(d).is_empty());
}

#[test]
fn interrupted_register_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("big.img");
    // Enough data that the copy is still running when the signal comes.
    sparse_raw(&src, 3 * GIB, &[(0, GIB, 0x5c), (2 * GIB, GIB, 0x5d)]);
    let out = d.join("out");
    let child = mkomi()
        .args([
            "register",
            s(&src),
            "-o",
            s(&out),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "-q",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sending SIGINT to our own child.
    unsafe { libc_kill(child.id() as i32, 2) };
    let r = child.wait_with_output().unwrap();
    assert_eq!(
        r.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!out.exists());
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn hostile_images_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    tool(
        "python3",
        &[s(&repo().join("fixtures/make-hostile.py")), s(&corpus)],
    );
    let expected = std::fs::read_to_string(corpus.join("expected.tsv")).unwrap();
    let mut n = 0;
    for line in expected.lines() {
        let (file, expect) = line.split_once('\t').unwrap();
        let out = dir.path().join("out");
        let mut cmd = mkomi();
        cmd.current_dir(&corpus).args([
            "register",
            file,
            "-o",
            s(&out),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "-q",
            "--no-sync",
        ]);
        let r = run_with_timeout(cmd, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!err.contains("panicked"), "{file}: {err}");
        match expect {
            "reject" => {
                assert_eq!(r.status.code(), Some(1), "{file} was not rejected: {err}");
                assert_eq!(err.trim().lines().count(), 1, "{file}: {err}");
                assert!(
                    err.contains(file),
                    "{file}: the error does not name the file: {err}"
                );
                assert!(!out.exists());
            }
            _ => assert!(matches!(r.status.code(), Some(0 | 1)), "{file}: {err}"),
        }
        if out.exists() {
            std::fs::remove_dir_all(&out).unwrap();
        }
        assert!(leftovers(dir.path()).is_empty());
        n += 1;
    }
    assert!(n >= 50, "only {n} hostile cases");
}

#[test]
fn backing_files_outside_the_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("base")).unwrap();
    std::fs::create_dir(d.join("img")).unwrap();
    let base = d.join("base/base.qcow2");
    tool("qemu-img", &["create", "-q", "-f", "qcow2", s(&base), "8M"]);
    let top = d.join("img/top.qcow2");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "../base/base.qcow2",
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    let out = d.join("out");
    let r = run(&["register", s(&top), "-o", s(&out), "--arch", "x86_64"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("--allow-backing"), "{err}");
    ok(&[
        "register",
        s(&top),
        "-o",
        s(&out),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--allow-backing",
        s(&d.join("base")),
        "-q",
    ]);
}

/// No backing file is followed unless --allow-backing names its directory, not even one beside
/// the image; every command that opens a source takes the option.
#[test]
fn backing_files_beside_the_image_need_allow_backing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    tool("qemu-img", &["create", "-q", "-f", "qcow2", s(&base), "8M"]);
    let top = d.join("top.qcow2");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    let store = d.join("store");
    let out = d.join("out");
    let commands: [Vec<&str>; 5] = [
        vec![
            "register",
            s(&top),
            "-o",
            s(&out),
            "--arch",
            "x86_64",
            "--no-boot-check",
        ],
        vec!["inspect", s(&top)],
        vec!["audit", s(&top)],
        vec!["--store", s(&store), "snapshot", "create", s(&top)],
        vec![
            "--store",
            s(&store),
            "image",
            "create",
            "--root",
            s(&top),
            "--arch",
            "x86_64",
            "--no-boot-check",
        ],
    ];
    for args in commands {
        let r = run(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        for needle in [s(&top), "\"base.qcow2\"", "--allow-backing"] {
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        let mut allowed = args.clone();
        allowed.extend(["--allow-backing", s(d)]);
        ok(&allowed);
    }
}

/// --input-format raw reads a qcow2 file as its bytes; --input-format qcow2 refuses anything else.
#[test]
fn input_format_overrides_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("disk.qcow2");
    tool("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "64M"]);
    let len = std::fs::metadata(&img).unwrap().len();
    let out = d.join("out");
    ok(&[
        "register",
        s(&img),
        "-o",
        s(&out),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--format",
        "raw",
        "--input-format",
        "raw",
        "-q",
    ]);
    let m = manifest(&out);
    // Read as raw bytes, the qcow2 file is a disk of its length rounded up to a whole sector.
    let padded = len.div_ceil(512) * 512;
    assert_eq!(m["Disks"][0]["VirtualSize"], padded);
    let disk = out.join(m["Disks"][0]["Path"].as_str().unwrap());
    let mut want = std::fs::read(&img).unwrap();
    want.resize(padded as usize, 0);
    assert_eq!(std::fs::read(&disk).unwrap(), want);

    let raw = d.join("disk.raw");
    sparse_raw(&raw, MIB, &[]);
    let r = run(&["inspect", s(&raw), "--input-format", "qcow2"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("disk.raw") && err.contains("not a qcow2 image"),
        "{err}"
    );
}

#[test]
fn json_summary_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("small-disk.img");
    sparse_raw(&src, MIB, &[(0, 4096, 9)]);
    let out = dir.path().join("b");
    let r = ok(&[
        "register",
        s(&src),
        "-o",
        s(&out),
        "--arch",
        "i386",
        "--no-boot-check",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["Disks"][0]["Path"], "sda1.qcow2");
    assert!(v["Seconds"].as_f64().is_some());
    let r = ok(&["verify", s(&out), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["Ok"], true);
    let r = ok(&["completions", "bash"]);
    assert!(String::from_utf8_lossy(&r.stdout).contains("register"));
}
