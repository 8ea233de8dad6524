//! `mkomi build`: templates laid out as bootable disks, checked with the real sgdisk, fsck.fat,
//! mtools and qemu-img, built twice for byte identity, and refused when they cannot work.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A root file system image holding what the shipped templates take from it (the kernel and
/// initrd are stand-ins: this test checks the layout; the boot test boots a real one).
fn rootfs(dir: &Path, size: &str) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib/systemd/boot/efi")).unwrap();
    std::fs::write(
        root.join("boot/vmlinuz-6.1.0-28-cloud-amd64"),
        vec![0x4b; 3_000_001],
    )
    .unwrap();
    std::fs::write(
        root.join("boot/initrd.img-6.1.0-28-cloud-amd64"),
        vec![0x49; 1_500_000],
    )
    .unwrap();
    std::fs::write(
        root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        fake_efi(90_000, 0x8664),
    )
    .unwrap();
    let img = dir.join("root.ext4");
    tool("truncate", &["-s", size, s(&img)]);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "root",
            "-U",
            "6d6b6f6d-6900-4000-8000-00000000000a",
        ])
        .args([
            "-E",
            "hash_seed=6d6b6f6d-6900-4000-8000-00000000000b,root_owner=0:0",
        ])
        .args(["-d", s(&root), s(&img)])
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

fn template(name: &str) -> PathBuf {
    repo().join("templates").join(name)
}

fn build(dir: &Path, tpl: &Path, vars: &[&str], out: &str) -> std::process::Output {
    let mut c = mkomi();
    c.current_dir(dir)
        .args(["build", s(tpl), "-o", out, "-q", "--no-sync"]);
    for v in vars {
        c.args(["--set", v]);
    }
    run_with_timeout(c, std::time::Duration::from_secs(120))
}

#[test]
fn shipped_templates_build_valid_disks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    rootfs(d, "256M");
    tool("truncate", &["-s", "64M", s(&d.join("data.img"))]);
    for (tpl, vars, disks) in [
        ("uefi.toml", vec!["rootfs=root.ext4"], 1),
        (
            "uefi-data.toml",
            vec!["rootfs=root.ext4", "data=data.img"],
            2,
        ),
    ] {
        let out = d.join(format!("out-{tpl}"));
        let r = build(d, &template(tpl), &vars, s(&out));
        assert!(
            r.status.success(),
            "{tpl}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let m = manifest(&out);
        assert_eq!(m["Disks"].as_array().unwrap().len(), disks);
        assert_eq!(m["Image"]["BootModes"][0], "uefi");
        ok(&["verify", s(&out), "-q"]);
        sha256sum_check(&out);
        let disk = out.join("sda1.qcow2");
        qemu_check(&disk);
        let raw = d.join("disk.raw");
        tool("qemu-img", &["convert", "-O", "raw", s(&disk), s(&raw)]);
        let v = tool("sgdisk", &["-v", s(&raw)]);
        assert!(v.contains("No problems found"), "{v}");
        let p = tool("sgdisk", &["-p", s(&raw)]);
        assert!(p.contains("   1            2048"), "{p}");
        let root_guid = tool("sgdisk", &["-i", "2", s(&raw)]);
        // The root partition holds the root image byte for byte.
        tool(
            "qemu-img",
            &[
                "compare",
                "--image-opts",
                &format!(
                    "driver=raw,offset={},size={},file.filename={}",
                    264_192 * 512,
                    256 << 20,
                    s(&raw)
                ),
                "--image-opts",
                &format!("driver=raw,file.filename={}", s(&d.join("root.ext4"))),
            ],
        );
        // The ESP passes fsck.fat and holds the bootloader, kernel, initrd and entry.
        let esp = d.join("esp.img");
        tool(
            "dd",
            &[
                &format!("if={}", s(&raw)),
                &format!("of={}", s(&esp)),
                "bs=1M",
                "skip=1",
                "count=128",
                "status=none",
            ],
        );
        tool("fsck.fat", &["-n", s(&esp)]);
        let mtype = |path: &str| {
            let out = Command::new("mtype")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-i", s(&esp), path])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        assert!(mtype("::EFI/BOOT/BOOTX64.EFI") == fake_efi(90_000, 0x8664));
        assert_eq!(mtype("::vmlinuz").len(), 3_000_001);
        assert_eq!(mtype("::initrd.img").len(), 1_500_000);
        assert_eq!(
            mtype("::loader/loader.conf"),
            b"default mkomi.conf\ntimeout 0\n"
        );
        let entry = String::from_utf8(mtype("::loader/entries/mkomi.conf")).unwrap();
        let guid = root_guid
            .lines()
            .find(|l| l.contains("unique GUID"))
            .unwrap();
        let guid = guid.rsplit(' ').next().unwrap().to_lowercase();
        assert!(
            entry.contains(&format!("options root=PARTUUID={guid} console=ttyS0")),
            "{entry}"
        );
        std::fs::remove_file(&raw).unwrap();
    }
}

#[test]
fn the_same_inputs_build_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    rootfs(d, "128M");
    let mut firsts = Vec::new();
    for out in ["a", "b"] {
        let r = build(d, &template("uefi.toml"), &["rootfs=root.ext4"], out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        firsts.push(d.join(out));
    }
    for name in entries(&firsts[0]) {
        assert!(
            std::fs::read(firsts[0].join(&name)).unwrap()
                == std::fs::read(firsts[1].join(&name)).unwrap(),
            "{name} differs between two builds"
        );
    }
    // Another epoch gives other timestamps: the ESP changes, so the disk does.
    let mut c = mkomi();
    c.env("SOURCE_DATE_EPOCH", "1700086400")
        .current_dir(d)
        .args([
            "build",
            s(&template("uefi.toml")),
            "-o",
            "c",
            "-q",
            "--no-sync",
            "--set",
            "rootfs=root.ext4",
        ]);
    let r = run_with_timeout(c, std::time::Duration::from_secs(120));
    assert!(r.status.success());
    assert_ne!(
        manifest(&d.join("a"))["Disks"][0]["ContentDigest"],
        manifest(&d.join("c"))["Disks"][0]["ContentDigest"]
    );
}

#[test]
fn impossible_templates_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    rootfs(d, "128M");
    let big = d.join("big.ext4");
    tool("truncate", &["-s", "3G", s(&big)]);
    let tpl = std::fs::read_to_string(template("uefi.toml")).unwrap();
    let write = |name: &str, text: String| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    for (name, text, vars, expect) in [
        (
            "t1.toml",
            tpl.clone(),
            vec!["rootfs=big.ext4"],
            "do not fit partition 'root'",
        ),
        (
            "t2.toml",
            tpl.replace("vmlinuz-*", "vmlinuz-9*"),
            vec!["rootfs=root.ext4"],
            "no file matches /boot/vmlinuz-9*",
        ),
        (
            "t3.toml",
            tpl.replace("size = \"2G\"", "size = \"100M\""),
            vec!["rootfs=root.ext4"],
            "remain",
        ),
        ("t4.toml", tpl.clone(), vec![], "${rootfs} is not set"),
        (
            "t5.toml",
            tpl.replace("type = \"esp\"", "type = \"efi\""),
            vec!["rootfs=root.ext4"],
            "t5.toml:19: partition[1].type",
        ),
    ] {
        let p = write(name, text);
        let r = build(d, &p, &vars, "out");
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(expect), "{name}: expected {expect:?} in {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!d.join("out").exists());
        assert!(
            entries(d).iter().all(|e| !e.contains("mkomi")),
            "{:?}",
            entries(d)
        );
    }
}

/// A killed build leaves its hidden directories (and, for trees, their spool) beside the
/// output: the next build of the same output removes those whose process is gone, and only
/// those.
#[test]
fn leftovers_of_killed_runs_are_removed_by_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = rootfs(d, "64M");
    // PIDs above the kernel's limit (2^22) never run; our own PID does.
    let dead = d.join(".omi.mkomi-4194305.tmp");
    let dead_work = d.join(".omi.mkomi-4194306.work");
    let alive = d.join(format!(".omi.mkomi-{}.work", std::process::id()));
    let other = d.join(".other.mkomi-4194305.tmp");
    for p in [&dead, &dead_work, &alive, &other] {
        std::fs::create_dir_all(p.join("spool-2")).unwrap();
        std::fs::write(p.join("spool-2/spool"), b"spooled").unwrap();
    }
    let out = build(
        d,
        &template("uefi.toml"),
        &[&format!("rootfs={}", s(&img))],
        "omi",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dead.exists() && !dead_work.exists(),
        "stale directories were left"
    );
    assert!(alive.exists(), "a live process's directory was removed");
    assert!(other.exists(), "another output's directory was removed");
}
