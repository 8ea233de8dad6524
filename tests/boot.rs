//! The proof that `mkomi build` makes bootable images: a root file system built at test time from
//! Debian packages (fixtures/make-boot-rootfs.sh) goes through the shipped UEFI template, and the
//! qcow2 output boots in the real qemu-system-x86_64 with OVMF. The test passes only when the
//! guest prints the marker it read from the root partition.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Where the downloaded kernel package is kept between runs.
fn cache() -> PathBuf {
    std::env::var_os("MKOMI_BOOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/mkomi-boot/cache"))
}

#[test]
fn the_uefi_template_boots_under_ovmf() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixture = d.join("fixture");
    let mut prep = Command::new("bash");
    prep.args([
        s(&repo().join("fixtures/make-boot-rootfs.sh")),
        s(&cache()),
        s(&fixture),
    ]);
    let out = run_with_timeout(prep, Duration::from_secs(900));
    assert!(
        out.status.success(),
        "make-boot-rootfs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let marker = std::fs::read_to_string(fixture.join("rootfs/etc/mkomi-boot-marker")).unwrap();
    let marker = marker.trim();

    let bundle = d.join("omi");
    let mut build = mkomi();
    build.args([
        "build",
        s(&repo().join("templates/uefi.toml")),
        "--set",
        &format!("rootfs={}", s(&fixture.join("root.ext4"))),
        "-o",
        s(&bundle),
        "-q",
    ]);
    let out = run_with_timeout(build, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&["verify", s(&bundle), "-q"]);

    let vars = d.join("OVMF_VARS.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-machine", "q35", "-m", "512", "-nographic", "-no-reboot"])
        .args([
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        ])
        .args(["-drive", &format!("if=pflash,format=raw,file={}", s(&vars))])
        .args([
            "-drive",
            &format!(
                "file={},format=qcow2,if=virtio",
                s(&bundle.join("sda1.qcow2"))
            ),
        ])
        .stdin(std::process::Stdio::null());
    // The guest powers off after printing; a hang is cut off and reported with the console.
    let mut child = qemu
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (package qemu-system-x86) must be installed");
    let start = std::time::Instant::now();
    let limit = Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let expected = format!("MKOMI-BOOT-OK {marker}");
    assert!(
        console.contains(&expected),
        "the guest did not print {expected:?} within {:?}; console:\n{console}\n{}",
        start.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
}
