//! The boot matrix: every boot mode Outscale offers, proven by booting what `mkomi build` makes.
//! A root file system built at test time from Debian packages (fixtures/make-boot-rootfs.sh, an
//! x86_64 or i386 kernel and a busybox initramfs) goes through each shipped template, and the
//! qcow2 output boots in the real qemu (TCG) under the firmware the template is for: SeaBIOS,
//! OVMF, or both for a hybrid disk. A row passes only when the guest prints the marker it read
//! from the root partition; a timeout fails it and prints the console.
//!
//! | template | firmware | qemu |
//! |---|---|---|
//! | bios.toml | SeaBIOS | qemu-system-x86_64 |
//! | uefi.toml | OVMF | qemu-system-x86_64 |
//! | hybrid.toml | SeaBIOS and OVMF | qemu-system-x86_64 |
//! | hybrid-mbr.toml | SeaBIOS and OVMF | qemu-system-x86_64 |
//! | bios-i386.toml | SeaBIOS | qemu-system-i386 |
//! | uefi-i386.toml | OVMF ia32 | qemu-system-i386 |
//!
//! Each row is its own test, so the harness runs two at a time on two cores.

mod common;
use common::qemu::{self, Firmware};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Where the downloaded packages are kept between runs.
fn cache() -> PathBuf {
    std::env::var_os("MKOMI_BOOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/mkomi-boot/cache"))
}

/// Makes the boot fixture for `arch` in `d`; returns the root image and the marker.
fn fixture(d: &Path, arch: &str) -> (PathBuf, String) {
    let out_dir = d.join("fixture");
    let mut prep = Command::new("bash");
    prep.args([
        s(&repo().join("fixtures/make-boot-rootfs.sh")),
        s(&cache()),
        s(&out_dir),
        arch,
    ]);
    let out = run_with_timeout(prep, Duration::from_secs(900));
    assert!(
        out.status.success(),
        "make-boot-rootfs.sh {arch} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let marker = std::fs::read_to_string(out_dir.join("rootfs/etc/mkomi-boot-marker")).unwrap();
    (out_dir.join("root.ext4"), marker.trim().to_string())
}

/// Builds `template` (in templates/) over the fixture of `arch`, checks the bundle, and boots
/// it under each of `firmware`, one after the other.
fn row(template: &str, arch: &str, modes: &[&str], firmware: &[Firmware]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (root, marker) = fixture(d, arch);
    let bundle = d.join("omi");
    let mut build = mkomi();
    build.args([
        "build",
        s(&repo().join("templates").join(template)),
        "--set",
        &format!("rootfs={}", s(&root)),
        "-o",
        s(&bundle),
        "-q",
    ]);
    let out = run_with_timeout(build, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "build {template}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&["verify", s(&bundle), "-q"]);
    let m = manifest(&bundle);
    assert_eq!(m["Image"]["Architecture"], arch, "{template}");
    assert_eq!(
        m["Image"]["BootModes"],
        serde_json::json!(modes),
        "{template}"
    );
    let disk = bundle.join("sda1.qcow2");
    for &fw in firmware {
        let b = qemu::boot(&disk, fw, d, 512, Duration::from_secs(240));
        let expected = format!("MKOMI-BOOT-OK {marker}");
        assert!(
            b.console.contains(&expected),
            "{template} under {fw:?}: the guest did not print {expected:?} within {:?}; console:\n{}",
            b.took,
            b.console
        );
    }
}

#[test]
fn x86_64_bios_boots_under_seabios() {
    row("bios.toml", "x86_64", &["legacy"], &[Firmware::Bios64]);
}

#[test]
fn x86_64_uefi_boots_under_ovmf() {
    row("uefi.toml", "x86_64", &["uefi"], &[Firmware::Uefi64]);
}

#[test]
fn x86_64_hybrid_boots_under_seabios() {
    row(
        "hybrid.toml",
        "x86_64",
        &["legacy", "uefi"],
        &[Firmware::Bios64],
    );
}

#[test]
fn x86_64_hybrid_boots_under_ovmf() {
    row(
        "hybrid.toml",
        "x86_64",
        &["legacy", "uefi"],
        &[Firmware::Uefi64],
    );
}

#[test]
fn x86_64_hybrid_mbr_boots_under_seabios_and_ovmf() {
    row(
        "hybrid-mbr.toml",
        "x86_64",
        &["legacy", "uefi"],
        &[Firmware::Bios64, Firmware::Uefi64],
    );
}

#[test]
fn i386_bios_boots_under_seabios() {
    row("bios-i386.toml", "i386", &["legacy"], &[Firmware::Bios32]);
}

#[test]
fn i386_uefi_boots_under_ovmf_ia32() {
    row("uefi-i386.toml", "i386", &["uefi"], &[Firmware::Uefi32]);
}
