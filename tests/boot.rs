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

/// Makes the boot fixture for `arch` in `d`; returns the root image and the marker.
fn fixture(d: &Path, arch: &str) -> (PathBuf, String) {
    let out_dir = d.join("fixture");
    let mut prep = Command::new("bash");
    prep.args([
        s(&repo().join("fixtures/make-boot-rootfs.sh")),
        s(&qemu::boot_cache()),
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
/// it under each of `firmware`, one after the other; returns each console.
fn row(template: &str, arch: &str, modes: &[&str], firmware: &[Firmware]) -> Vec<String> {
    row_with(template, &[], arch, modes, firmware)
}

/// [`row`], with the template's text edited first (`(from, to)`, each found once).
fn row_with(
    template: &str,
    edits: &[(&str, &str)],
    arch: &str,
    modes: &[&str],
    firmware: &[Firmware],
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (root, marker) = fixture(d, arch);
    let mut text = std::fs::read_to_string(repo().join("templates").join(template)).unwrap();
    for (from, to) in edits {
        assert_eq!(text.matches(from).count(), 1, "{template}: {from:?}");
        text = text.replace(from, to);
    }
    let tpl = d.join(template);
    std::fs::write(&tpl, text).unwrap();
    let bundle = d.join("omi");
    let mut build = mkomi();
    build.args([
        "build",
        s(&tpl),
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
    let mut consoles = Vec::new();
    for &fw in firmware {
        let b = qemu::boot(&disk, fw, d, 512, Duration::from_secs(240));
        let expected = format!("MKOMI-BOOT-OK {marker}");
        assert!(
            b.console.contains(&expected),
            "{template} under {fw:?}: the guest did not print {expected:?} within {:?}; console:\n{}",
            b.took,
            b.console
        );
        consoles.push(b.console);
    }
    consoles
}

/// The kernel command line a boot printed, without what the boot loader adds of its own
/// (GRUB's `BOOT_IMAGE=`, systemd-boot's `initrd=`).
fn command_line(console: &str) -> String {
    let line = console
        .lines()
        .find_map(|l| l.split_once("Command line: ").map(|(_, c)| c.trim_end()))
        .unwrap_or_else(|| panic!("no \"Command line:\" in the console:\n{console}"));
    line.split(' ')
        .filter(|w| !w.starts_with("BOOT_IMAGE=") && !w.starts_with("initrd="))
        .collect::<Vec<_>>()
        .join(" ")
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

/// The MBR variant under both firmwares; and the kernel is given the same command line by
/// GRUB and by systemd-boot, even for an argument the template quotes (GRUB re-quotes it its own
/// way, and the build writes the systemd-boot entry in that form).
#[test]
fn x86_64_hybrid_mbr_boots_under_seabios_and_ovmf_with_one_command_line() {
    let consoles = row_with(
        "hybrid-mbr.toml",
        &[(
            "options = \"root=PARTUUID=${partuuid:root} console=ttyS0\"",
            "options = 'root=PARTUUID=${partuuid:root}  console=ttyS0 mkomi.q=\"a b\"'",
        )],
        "x86_64",
        &["legacy", "uefi"],
        &[Firmware::Bios64, Firmware::Uefi64],
    );
    let bios = command_line(&consoles[0]);
    let uefi = command_line(&consoles[1]);
    assert_eq!(
        bios, uefi,
        "GRUB and systemd-boot gave different command lines"
    );
    assert!(bios.ends_with(" console=ttyS0 \"mkomi.q=a b\""), "{bios}");
    assert!(bios.starts_with("root=PARTUUID="), "{bios}");
}

#[test]
fn i386_bios_boots_under_seabios() {
    row("bios-i386.toml", "i386", &["legacy"], &[Firmware::Bios32]);
}

#[test]
fn i386_uefi_boots_under_ovmf_ia32() {
    row("uefi-i386.toml", "i386", &["uefi"], &[Firmware::Uefi32]);
}
