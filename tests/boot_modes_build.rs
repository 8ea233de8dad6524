//! Every shipped template, in every boot mode, built with `mkomi build` (issue #14): the same
//! inputs and `SOURCE_DATE_EPOCH` give the same bundle byte for byte; the disks are valid for the
//! real tools (sgdisk, partx/blkid, fsck.fat, e2fsck) and declare the boot modes the template
//! does; and templates that cannot boot as they say are refused with one line on stderr, leaving
//! nothing behind. No VM is started here (tests/boot.rs boots).
//!
//! Inputs: fixtures/make-boot-rootfs.sh's x86_64 and i386 root trees, each made into an ext4
//! image holding the fixture's /bin/sh (a static busybox of its architecture: the architecture
//! check reads it) and both systemd-boot builds (so that a template of the other
//! architecture finds its loader and reaches the architecture check), and a small data image
//! for uefi-data.toml. debian-outscale.toml needs a Debian tree and is left to
//! tests/debian_boot.rs.

mod common;
use common::disk;
use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The epoch of the reference builds (the one `mkomi()` sets).
const EPOCH: &str = "1700000000";
/// Another epoch: the disk must change with it.
const OTHER_EPOCH: &str = "1710000000";
/// Templates this file does not build, and why.
const SKIPPED: [(&str, &str); 1] = [("debian-outscale", "needs a Debian tree")];
/// Threads building at once (the machine has 2 cores).
const THREADS: usize = 2;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The root file systems and the data image every test builds from.
struct Fixtures {
    /// x86_64 root file system (ext4).
    x86_64: PathBuf,
    /// i386 root file system (ext4).
    i386: PathBuf,
    /// The data volume of uefi-data.toml.
    data: PathBuf,
}

impl Fixtures {
    fn rootfs(&self, arch: &str) -> &Path {
        match arch {
            "x86_64" => &self.x86_64,
            "i386" => &self.i386,
            other => panic!("no fixture for architecture {other}"),
        }
    }
}

/// ELF `e_machine` (at byte 18) of the file: 0x3e x86-64, 0x03 i386 (System V ABI, gABI 4.1).
fn elf_machine(path: &Path) -> u16 {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([b[18], b[19]])
}

/// Made once per test process, under cargo's scratch directory for integration tests: two
/// sparse ext4 images and the data image (~40 MB once the work is removed), replaced each run.
fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("boot_modes_build");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let arches = [("x86_64", 0x3e, "x64"), ("i386", 0x03, "ia32")];
        for (arch, _, _) in arches {
            let mut prep = Command::new("bash");
            prep.args([
                s(&repo().join("fixtures/make-boot-rootfs.sh")),
                s(&common::qemu::boot_cache()),
                s(&dir.join(format!("fx-{arch}"))),
                arch,
            ]);
            let out = run_with_timeout(prep, Duration::from_secs(900));
            assert!(
                out.status.success(),
                "make-boot-rootfs.sh {arch} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let efi_dir = "usr/lib/systemd/boot/efi";
        for (arch, machine, efi) in arches {
            let fx = dir.join(format!("fx-{arch}"));
            let tree = dir.join(format!("tree-{arch}"));
            tool("cp", &["-a", s(&fx.join("rootfs")), s(&tree)]);
            // The fixture's /bin/sh (a static busybox) is what the build's architecture check
            // reads: it must be of the fixture's machine.
            assert_eq!(
                elf_machine(&tree.join("bin/busybox")),
                machine,
                "{arch} busybox"
            );
            // Both systemd-boot builds: the other architecture's template finds its loader.
            for (other, _, other_efi) in arches {
                let name = format!("systemd-boot{other_efi}.efi");
                let src = dir.join(format!("fx-{other}/rootfs/{efi_dir}/{name}"));
                if other != arch {
                    std::fs::copy(&src, tree.join(efi_dir).join(&name)).unwrap();
                }
            }
            assert!(
                tree.join(efi_dir)
                    .join(format!("systemd-boot{efi}.efi"))
                    .is_file()
            );
            let img = dir.join(format!("root-{arch}.ext4"));
            let size = std::fs::metadata(fx.join("root.ext4")).unwrap().len() + 32 * MIB;
            std::fs::File::create(&img).unwrap().set_len(size).unwrap();
            let out = Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-L",
                    "root",
                    "-b",
                    "4096",
                    "-d",
                    s(&tree),
                    s(&img),
                ])
                .env("E2FSPROGS_FAKE_TIME", EPOCH)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "mkfs.ext4: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            disk::assert_ext4_clean(&img, 0);
            // The x86_64 tree stays, for the test of GRUB taken from a tree.
            if arch != "x86_64" {
                std::fs::remove_dir_all(&tree).unwrap();
            }
        }
        for (arch, _, _) in arches {
            std::fs::remove_dir_all(dir.join(format!("fx-{arch}"))).unwrap();
        }
        let data = dir.join("data.img");
        sparse_raw(
            &data,
            8 * MIB,
            &[(0, 64 * 1024, 0x5a), (5 * MIB, 4096, 0xa5)],
        );
        Fixtures {
            x86_64: dir.join("root-x86_64.ext4"),
            i386: dir.join("root-i386.ext4"),
            data,
        }
    })
}

/// A partition as the template declares it.
#[derive(Debug)]
struct TplPart {
    kind: String,
    label: String,
    content: String,
    active: bool,
}

/// What a shipped template declares, read from its TOML.
#[derive(Debug)]
struct Tpl {
    /// File stem: `hybrid-mbr`.
    name: String,
    path: PathBuf,
    arch: String,
    boot_modes: Vec<String>,
    /// `gpt` or `mbr`.
    table: String,
    partitions: Vec<TplPart>,
    /// Its volumes take `${data}`.
    needs_data: bool,
}

impl Tpl {
    fn load(path: &Path) -> Tpl {
        let text = std::fs::read_to_string(path).unwrap();
        let t: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let str_at =
            |v: &toml::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let image = &t["image"];
        let partitions = t["partition"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| TplPart {
                kind: str_at(p, "type").unwrap(),
                label: str_at(p, "label").unwrap(),
                content: str_at(p, "content").unwrap(),
                active: p.get("active").and_then(|a| a.as_bool()).unwrap_or(false),
            })
            .collect();
        Tpl {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            path: path.to_owned(),
            arch: str_at(image, "architecture").unwrap(),
            boot_modes: image["boot-modes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_owned())
                .collect(),
            table: t
                .get("disk")
                .and_then(|d| str_at(d, "table"))
                .unwrap_or_else(|| "gpt".into()),
            partitions,
            needs_data: text.contains("${data}"),
        }
    }

    /// The partition (1-based) an MBR disk marks active: the one the template says, else the
    /// first root partition (the build's default).
    fn active(&self) -> u32 {
        let i = self
            .partitions
            .iter()
            .position(|p| p.active)
            .or_else(|| {
                self.partitions
                    .iter()
                    .position(|p| p.kind.starts_with("root-"))
            })
            .expect("an active or root partition");
        i as u32 + 1
    }
}

/// Every template in templates/ but the skipped ones; fails if one cannot be read.
fn templates() -> Vec<Tpl> {
    let mut v: Vec<Tpl> = std::fs::read_dir(repo().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy();
            !SKIPPED.iter().any(|(n, _)| *n == stem)
        })
        .map(|p| Tpl::load(&p))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Runs `f` on every item, `THREADS` at a time; results in the items' order.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, f(item)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// The `mkomi build` command for a template with the fixtures as its variables.
fn build_cmd(tpl: &Path, arch: &str, needs_data: bool, fx: &Fixtures, out: &Path) -> Command {
    let mut c = mkomi();
    c.args(["build", s(tpl), "--set"])
        .arg(format!("rootfs={}", s(fx.rootfs(arch))))
        .args(["-o", s(out)]);
    if needs_data {
        c.arg("--set").arg(format!("data={}", s(&fx.data)));
    }
    c
}

/// Builds `tpl` into `out` with `SOURCE_DATE_EPOCH=epoch`; Err: why it failed.
fn build(tpl: &Tpl, fx: &Fixtures, out: &Path, epoch: &str) -> Result<(), String> {
    let mut c = build_cmd(&tpl.path, &tpl.arch, tpl.needs_data, fx, out);
    c.arg("-q").env("SOURCE_DATE_EPOCH", epoch);
    let o = run_with_timeout(c, Duration::from_secs(180));
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} (epoch {epoch}): {}",
            tpl.name,
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// Builds every template once per epoch in `epochs` (in parallel), into `dir/NAME-K`.
fn build_all(tpls: &[Tpl], epochs: &[&str], dir: &Path) {
    let fx = fixtures();
    let jobs: Vec<(&Tpl, usize, &str)> = tpls
        .iter()
        .flat_map(|t| epochs.iter().enumerate().map(move |(k, e)| (t, k, *e)))
        .collect();
    let failed: Vec<String> = parallel(&jobs, |(t, k, e)| {
        build(t, fx, &dir.join(format!("{}-{k}", t.name)), e)
    })
    .into_iter()
    .filter_map(Result::err)
    .collect();
    assert!(failed.is_empty(), "builds failed:\n{}", failed.join("\n"));
    // Nothing but the bundles: no staging directory left behind.
    let mut want: Vec<String> = jobs
        .iter()
        .map(|(t, k, _)| format!("{}-{k}", t.name))
        .collect();
    want.sort();
    assert_eq!(entries(dir), want);
}

#[test]
fn every_template_is_built_here_or_skipped_for_a_reason() {
    let all: BTreeSet<String> = std::fs::read_dir(repo().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let built: BTreeSet<String> = templates().into_iter().map(|t| t.name).collect();
    for (name, why) in SKIPPED {
        assert!(all.contains(name), "{name} is skipped ({why}) but gone");
    }
    // The boot modes of issue #14, each on a template of each table and architecture.
    for name in [
        "uefi",
        "bios",
        "hybrid",
        "hybrid-mbr",
        "uefi-i386",
        "bios-i386",
        "uefi-data",
    ] {
        assert!(built.contains(name), "templates/{name}.toml is not built");
    }
    assert_eq!(built.len() + SKIPPED.len(), all.len());
}

/// Same inputs and epoch: every file of the bundle the same, byte for byte. Another epoch: a
/// different root disk, by content (`qemu-img compare`), not only by its qcow2 header.
#[test]
fn every_template_builds_reproducibly() {
    let tpls = templates();
    let dir = tempfile::tempdir().unwrap();
    build_all(&tpls, &[EPOCH, EPOCH, OTHER_EPOCH], dir.path());
    let checks = parallel(&tpls, |t| {
        let [a, b, c] = [0, 1, 2].map(|k| dir.path().join(format!("{}-{k}", t.name)));
        let files = entries(&a);
        assert!(files.contains(&"manifest.json".to_owned()), "{files:?}");
        assert_eq!(
            files,
            entries(&b),
            "{}: the bundles hold different files",
            t.name
        );
        for f in &files {
            let same = std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap();
            assert!(
                same,
                "{}: {f} differs between two builds at the same epoch",
                t.name
            );
        }
        let root = |d: &Path| d.join(root_disk(&manifest(d)));
        assert_ne!(
            std::fs::read(root(&a)).unwrap(),
            std::fs::read(root(&c)).unwrap(),
            "{}: SOURCE_DATE_EPOCH does not change the disk",
            t.name
        );
        let cmp = Command::new("qemu-img")
            .args(["compare", "-q", s(&root(&a)), s(&root(&c))])
            .status()
            .unwrap();
        // Exit 1: the images differ (qemu-img(1), compare).
        assert_eq!(
            cmp.code(),
            Some(1),
            "{}: same disk content at two epochs",
            t.name
        );
        files.len()
    });
    assert!(checks.iter().all(|&n| n >= 3), "{checks:?}");
}

/// The root disk's file name in the bundle: the disk of the root device.
fn root_disk(m: &serde_json::Value) -> String {
    let root = m["Image"]["RootDeviceName"].as_str().unwrap();
    let disks = m["Disks"].as_array().unwrap();
    let d = disks
        .iter()
        .find(|d| d["DeviceName"] == root)
        .unwrap_or_else(|| panic!("no disk for {root} in {m}"));
    d["Path"].as_str().unwrap().to_owned()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// The GPT partition type GUID of a template type (UAPI Discoverable Partitions Specification;
/// bios-boot: GRUB's "Hah!IdontNeedEFI").
fn gpt_type(kind: &str) -> &'static str {
    match kind {
        "esp" => "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
        "bios-boot" => "21686148-6449-6e6f-744e-656564454649",
        "root-x86-64" => "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        "root-x86" => "44479540-f297-41b2-9af7-d131d5f0458a",
        other => panic!("no GPT type for {other}: extend gpt_type"),
    }
}

/// The MBR type byte of a template type, as partx prints it.
fn mbr_type(kind: &str) -> &'static str {
    match kind {
        "esp" => "0xef",
        "root-x86-64" | "root-x86" => "0x83",
        other => panic!("no MBR type for {other}: extend mbr_type"),
    }
}

/// Checks the bundle `b` built from `t` with the real tools; `work`: a scratch directory.
fn check_bundle(t: &Tpl, b: &Path, work: &Path) {
    let name = &t.name;
    ok(&["verify", s(b), "-q"]);
    let m = manifest(b);
    assert_eq!(
        strings(&m["Image"]["BootModes"]),
        t.boot_modes,
        "{name}: manifest BootModes"
    );
    assert_eq!(m["Image"]["Architecture"], t.arch.as_str(), "{name}");
    assert_eq!(
        set(&strings(&m["Inspection"]["BootModes"])),
        set(&t.boot_modes),
        "{name}: manifest Inspection.BootModes"
    );
    let out = ok(&["inspect", "--json", s(b)]);
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = &inspect["summary"];
    assert_eq!(
        set(&strings(&summary["boot_modes"])),
        set(&t.boot_modes),
        "{name}: inspect summary.boot_modes ({})",
        summary["boot_evidence"]
    );
    assert_eq!(
        summary["architecture"],
        t.arch.as_str(),
        "{name}: {summary}"
    );

    let raw = work.join(format!("{name}.raw"));
    disk::to_raw(&b.join(root_disk(&m)), &raw);
    let parts = disk::partitions(&raw);
    assert_eq!(parts.len(), t.partitions.len(), "{name}: {parts:?}");
    match t.table.as_str() {
        "gpt" => {
            assert_eq!(disk::pttype(&raw), "gpt", "{name}");
            disk::assert_sgdisk_clean(&raw);
            for (p, tp) in parts.iter().zip(&t.partitions) {
                assert_eq!(p.scheme, "gpt", "{name}: {p:?}");
                assert_eq!(p.kind, gpt_type(&tp.kind), "{name}: {p:?}");
                assert_eq!(p.name, tp.label, "{name}: {p:?}");
            }
        }
        "mbr" => {
            assert_eq!(disk::pttype(&raw), "dos", "{name}");
            disk::assert_sgdisk_mbr_view_clean(&raw, &parts);
            disk::assert_mbr_sane(&raw, &parts, t.active());
            for (p, tp) in parts.iter().zip(&t.partitions) {
                assert_eq!(p.kind, mbr_type(&tp.kind), "{name}: {p:?}");
            }
        }
        other => panic!("{name}: table {other}"),
    }
    let mut esps = 0;
    let mut roots = 0;
    for (p, tp) in parts.iter().zip(&t.partitions) {
        match tp.content.as_str() {
            "esp" => {
                let img =
                    disk::extract(&raw, p.offset(), p.len(), &work.join(format!("{name}-esp")));
                disk::assert_fat_clean(&img);
                std::fs::remove_file(img).unwrap();
                esps += 1;
            }
            "image" => {
                let (label, bytes) = disk::ext4_superblock(&raw, p.offset());
                assert_eq!(label, "root", "{name}: partition {}", p.nr);
                assert!(bytes <= p.len(), "{name}: ext4 of {bytes} bytes past {p:?}");
                disk::assert_ext4_clean(&raw, p.offset());
                roots += 1;
            }
            "empty" => {}
            other => panic!("{name}: content {other}: extend check_bundle"),
        }
    }
    assert_eq!(
        esps,
        t.boot_modes.iter().filter(|m| *m == "uefi").count(),
        "{name}"
    );
    assert_eq!(roots, 1, "{name}");
    std::fs::remove_file(&raw).unwrap();
    if t.needs_data {
        // The data volume is the data image as given.
        qemu_compare(&fixtures().data, &b.join("sdb.qcow2"));
    }
}

/// Each disk: the partition table clean for sgdisk (GPT) or sound as MBR, every ESP clean for
/// fsck.fat, every root file system clean for e2fsck, and the boot modes found by inspect and
/// recorded in the manifest those of the template.
#[test]
fn every_built_disk_is_valid_and_boots_as_declared() {
    let tpls = templates();
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&bundles).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    build_all(&tpls, &[EPOCH], &bundles);
    parallel(&tpls, |t| {
        check_bundle(t, &bundles.join(format!("{}-0", t.name)), &work)
    });
}

/// The text of templates/NAME.toml with each `(from, to)` replaced; each `from` must occur
/// exactly once (so a changed template fails here instead of testing nothing).
fn variant(name: &str, edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(repo().join(format!("templates/{name}.toml"))).unwrap();
    for (from, to) in edits {
        assert_eq!(text.matches(from).count(), 1, "{name}.toml: {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// GRUB's BIOS boot partition as the shipped templates declare it.
const BIOS_BOOT_PART: &str =
    "[[partition]]\ntype = \"bios-boot\"\nlabel = \"bios\"\nsize = \"1M\"\ncontent = \"empty\"\n\n";

/// Builds the template `text` (written as `file`) with the `arch` root file system, where the
/// output's parent directory is empty: the build must fail with exactly one line on stderr and
/// leave that directory empty. Returns the line.
fn refused(file: &str, text: &str, arch: &str) -> String {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let tpl = dir.path().join(file);
    std::fs::write(&tpl, text).unwrap();
    let parent = dir.path().join("out");
    std::fs::create_dir(&parent).unwrap();
    // No -q: whatever the build prints before failing counts.
    let c = build_cmd(&tpl, arch, false, fx, &parent.join("omi"));
    let o = run_with_timeout(c, Duration::from_secs(180));
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{file} was built:\n{stderr}");
    assert!(
        o.status.code().is_some_and(|c| c != 0),
        "{file}: {:?}",
        o.status
    );
    assert_eq!(stderr.lines().count(), 1, "{file}: not one line:\n{stderr}");
    assert!(stderr.ends_with('\n'), "{file}: {stderr:?}");
    let line = stderr.trim_end().to_owned();
    assert!(line.starts_with("mkomi: "), "{file}: {line}");
    assert!(
        line.contains(file),
        "{file}: the message names no template: {line}"
    );
    assert_eq!(
        entries(&parent),
        Vec::<String>::new(),
        "{file}: left behind"
    );
    line
}

fn has_all(line: &str, parts: &[&str]) {
    for p in parts {
        assert!(line.contains(p), "{p:?} missing from: {line}");
    }
}

/// a. Legacy boot with no GRUB to be had: the host directory missing (the message says which
/// package to install), or a `root:` directory the root file system lacks (the message names it).
#[test]
fn bios_templates_without_grub_are_refused() {
    let from = "grub = \"host:/usr/lib/grub/i386-pc\"";
    let line = refused(
        "grub-host-missing.toml",
        &variant("bios", &[(from, "grub = \"host:/nonexistent\"")]),
        "x86_64",
    );
    has_all(
        &line,
        &[
            "legacy boot",
            "/nonexistent/",
            "apt-get install grub-pc-bin",
        ],
    );
    let line = refused(
        "grub-root-missing.toml",
        &variant("hybrid", &[(from, "grub = \"root:/usr/lib/grub/nope\"")]),
        "x86_64",
    );
    has_all(
        &line,
        &["legacy boot", "root:/usr/lib/grub/nope", "root file system"],
    );
}

/// b. An MBR addresses 2^32 sectors of 512 bytes: 3 TiB is refused, naming the key and GPT.
#[test]
fn mbr_disk_over_2_tib_is_refused() {
    let line = refused(
        "mbr-3t.toml",
        &variant("hybrid-mbr", &[("size = \"2G\"", "size = \"3T\"")]),
        "x86_64",
    );
    has_all(&line, &["disk.size", "3T", "2 TiB", "table = \"gpt\""]);
}

/// c. A BIOS boot partition declared smaller than core.img is refused, naming the partition,
/// both sizes and the fix, although the GPT planner would round it up to 1 MiB: the declared
/// size is the template's mistake.
#[test]
fn bios_boot_partition_smaller_than_core_img_is_refused() {
    let line = refused(
        "bios-64k.toml",
        &variant("bios", &[("size = \"1M\"", "size = \"64K\"")]),
        "x86_64",
    );
    has_all(
        &line,
        &[
            "partition 1 'bios'",
            "65536 bytes",
            "too small for GRUB's core.img",
            "size = \"1M\"",
        ],
    );
}

/// d. Boot modes that contradict the boot loaders or the partitions.
#[test]
fn boot_modes_contradicting_the_partitions_are_refused() {
    let grub_line = "grub = \"host:/usr/lib/grub/i386-pc\"\n";
    let both = "boot-modes = [\"legacy\", \"uefi\"]";
    // ["uefi"] declared, but grub = ... installs GRUB as well.
    let line = refused(
        "uefi-with-grub.toml",
        &variant("hybrid", &[(both, "boot-modes = [\"uefi\"]")]),
        "x86_64",
    );
    has_all(
        &line,
        &[
            "image.boot-modes",
            "installs [legacy, uefi]",
            "declared [uefi]",
        ],
    );
    // ["legacy", "uefi"] declared, but no grub key: only systemd-boot is installed.
    let line = refused(
        "hybrid-without-grub.toml",
        &variant("hybrid", &[(grub_line, "")]),
        "x86_64",
    );
    has_all(
        &line,
        &[
            "image.boot-modes",
            "installs [uefi]",
            "declared [legacy, uefi]",
        ],
    );
    // ["legacy"] with a bios-boot partition but no grub key: no boot loader at all.
    let line = refused(
        "legacy-without-grub.toml",
        &variant("bios", &[(grub_line, "")]),
        "x86_64",
    );
    has_all(&line, &["bootloader", "grub = ", "legacy BIOS"]);
    // A bios-boot partition with only efi = ... (UEFI).
    let line = refused(
        "bios-boot-with-efi-only.toml",
        &variant(
            "hybrid",
            &[(grub_line, ""), (both, "boot-modes = [\"uefi\"]")],
        ),
        "x86_64",
    );
    has_all(
        &line,
        &["partition.type", "bios-boot", "legacy boot", "grub = "],
    );
    // Legacy on GPT with no bios-boot partition for core.img.
    let line = refused(
        "legacy-gpt-no-bios-boot.toml",
        &variant("bios", &[(BIOS_BOOT_PART, "")]),
        "x86_64",
    );
    has_all(&line, &["bootloader.grub", "GPT", "bios-boot"]);
}

/// e. A template given a root file system of the other architecture: refused by the
/// architecture check, which names the binary it read. Every template of each architecture.
#[test]
fn root_fs_of_the_other_architecture_is_refused() {
    let mut seen = 0;
    for t in templates().into_iter().filter(|t| !t.needs_data) {
        let (other, its, theirs) = match t.arch.as_str() {
            "i386" => ("x86_64", "i386", "x86_64"),
            _ => ("i386", "x86_64", "i386"),
        };
        let text = std::fs::read_to_string(&t.path).unwrap();
        let line = refused(&format!("{}.toml", t.name), &text, other);
        has_all(&line, &["contradicts", "/bin/sh", its, theirs]);
        seen += 1;
    }
    assert!(seen >= 6, "{seen} templates");
}

/// A disk that boots in more modes than the template declares is refused too: bios.toml plus an
/// ESP holding systemd-boot as the fallback loader (an `[[esp-file]]`, not a bootloader key)
/// boots under UEFI as well, and BootModes = ["legacy"] would under-declare it.
#[test]
fn a_disk_that_boots_in_an_undeclared_mode_is_refused() {
    let esp = "[[partition]]\ntype = \"esp\"\nlabel = \"ESP\"\nsize = \"64M\"\ncontent = \"esp\"\n\n\
               [[partition]]\ntype = \"root-x86-64\"";
    let mut text = variant("bios", &[("[[partition]]\ntype = \"root-x86-64\"", esp)]);
    text.push_str(
        "\n[[esp-file]]\nsource = \"root:/usr/lib/systemd/boot/efi/systemd-bootx64.efi\"\n\
         target = \"EFI/BOOT/BOOTX64.EFI\"\n",
    );
    let line = refused("bios-with-uefi-loader.toml", &text, "x86_64");
    has_all(
        &line,
        &[
            "the disk also boots in uefi",
            "EFI/BOOT/BOOTX64.EFI",
            "which the template does not declare",
        ],
    );
}

/// GRUB taken from the root file system (`grub = "root:/usr/lib/grub/i386-pc"`) of a tree: the
/// build uses the tree's own modules; and a hostile tree cannot reach outside the work
/// directory through moddep.lst's module names, nor make the build copy a huge file.
#[test]
fn grub_from_the_tree_and_hostile_grub_directories() {
    let fx = fixtures();
    // The x86_64 root tree, which fixtures() keeps.
    let base = fx.x86_64.parent().unwrap().join("tree-x86_64");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = variant(
        "bios",
        &[
            (
                "content = \"image\"\nimage = \"${rootfs}\"",
                "content = \"tree\"\nsource = \"${tree}\"\nsize = \"auto\"",
            ),
            (
                "grub = \"host:/usr/lib/grub/i386-pc\"",
                "grub = \"root:/usr/lib/grub/i386-pc\"",
            ),
            ("size = \"2G\"\n", ""),
        ],
    );
    let tpl = d.join("bios-tree.toml");
    std::fs::write(&tpl, &text).unwrap();
    let build = |tree: &Path, out: &Path| {
        let mut c = mkomi();
        c.args(["build", s(&tpl), "--set"])
            .arg(format!("tree={}", s(tree)))
            .args(["-o", s(out), "-q"]);
        run_with_timeout(c, Duration::from_secs(180))
    };

    // The tree as the fixture made it: GRUB comes from it, and the disk is legacy.
    let out = d.join("good");
    let o = build(&base, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let inspect: serde_json::Value =
        serde_json::from_slice(&ok(&["inspect", "--json", s(&out)]).stdout).unwrap();
    assert_eq!(strings(&inspect["summary"]["boot_modes"]), ["legacy"]);
    assert_eq!(
        inspect["disks"][0]["partition_table"]["grub"]["core_location"],
        "bios-boot"
    );

    // A module name that climbs out of the work directory.
    let evil = d.join("evil-tree");
    tool("cp", &["-a", s(&base), s(&evil)]);
    let lst = evil.join("usr/lib/grub/i386-pc/moddep.lst");
    let mut moddep = std::fs::read_to_string(&lst).unwrap();
    moddep = moddep.replacen(
        "\nboot:",
        "\nboot: ../../../../tmp/mkomi-evil\nboot-old:",
        1,
    );
    std::fs::write(&lst, moddep).unwrap();
    let parent = d.join("out-evil");
    std::fs::create_dir(&parent).unwrap();
    let o = build(&evil, &parent.join("omi"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("is not a GRUB module name"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!Path::new("/tmp/mkomi-evil.mod").exists());
    assert_eq!(entries(&parent), Vec::<String>::new());

    // A boot.img of 1 TiB (sparse): refused by its size, before anything is copied.
    let huge = d.join("huge-tree");
    tool("cp", &["-a", s(&base), s(&huge)]);
    let img = huge.join("usr/lib/grub/i386-pc/boot.img");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let parent = d.join("out-huge");
    std::fs::create_dir(&parent).unwrap();
    let started = std::time::Instant::now();
    let o = build(&huge, &parent.join("omi"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("boot.img: 1099511627776 bytes, more than the"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(entries(&parent), Vec::<String>::new());
}
