//! Booting a disk in the real qemu, under each firmware an Outscale VM may have: SeaBIOS (qemu's
//! default BIOS) or OVMF (UEFI), for x86_64 and i386 guests, with TCG (no KVM needed).

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where fixtures/make-boot-rootfs.sh keeps the packages it downloads between runs
/// (`MKOMI_BOOT_CACHE`, else /var/tmp/mkomi-boot/cache, as .ci/run fills it).
pub fn boot_cache() -> std::path::PathBuf {
    std::env::var_os("MKOMI_BOOT_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/tmp/mkomi-boot/cache"))
}

/// A machine to boot a disk in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// qemu-system-x86_64 with SeaBIOS.
    Bios64,
    /// qemu-system-i386 with SeaBIOS.
    Bios32,
    /// qemu-system-x86_64 (q35) with OVMF.
    Uefi64,
    /// qemu-system-i386 (q35) with OVMF's ia32 build (Debian's ovmf-ia32). It is built with
    /// Secure Boot support, which needs SMM and a secure flash; with the empty variable store
    /// Secure Boot stays off, so unsigned loaders start.
    Uefi32,
}

/// What a boot showed.
pub struct Boot {
    /// The serial console, as bytes decoded lossily.
    pub console: String,
    /// From start to power-off (or the limit).
    pub took: Duration,
    /// qemu exited 0 (the guest powered off) before the limit.
    pub exited_ok: bool,
}

/// Boots the qcow2 `disk` under `fw` with `mem` MiB, in the work directory `dir` (the console
/// log and the UEFI variable store go there), until the guest powers off or `limit` passes.
pub fn boot(disk: &Path, fw: Firmware, dir: &Path, mem: u32, limit: Duration) -> Boot {
    let name = format!("{fw:?}").to_lowercase();
    let log = dir.join(format!("console-{name}.log"));
    let program = match fw {
        Firmware::Bios64 | Firmware::Uefi64 => "qemu-system-x86_64",
        Firmware::Bios32 | Firmware::Uefi32 => "qemu-system-i386",
    };
    let mut qemu = Command::new(program);
    qemu.args(["-m", &mem.to_string(), "-nographic", "-no-reboot"]);
    let pflash = |code: &str, vars: &str, q: &mut Command| {
        let copy = dir.join(format!("vars-{name}.fd"));
        std::fs::copy(vars, &copy)
            .unwrap_or_else(|e| panic!("{vars}: {e} (install ovmf / ovmf-ia32)"));
        q.args([
            "-drive",
            &format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
        ])
        .args([
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", copy.display()),
        ]);
    };
    match fw {
        Firmware::Bios64 | Firmware::Bios32 => {}
        Firmware::Uefi64 => {
            qemu.args(["-machine", "q35"]);
            pflash(
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
                &mut qemu,
            );
        }
        Firmware::Uefi32 => {
            qemu.args(["-machine", "q35,smm=on"])
                .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            pflash(
                "/usr/share/OVMF/OVMF32_CODE_4M.secboot.fd",
                "/usr/share/OVMF/OVMF32_VARS_4M.fd",
                &mut qemu,
            );
        }
    }
    // snapshot=on: the guest's writes go to a temporary overlay, so each boot starts from the
    // disk as built, and two boots of one disk can run at once (no write lock).
    qemu.args([
        "-drive",
        &format!("file={},format=qcow2,if=virtio,snapshot=on", disk.display()),
    ])
    .stdin(Stdio::null())
    // To a file, not a pipe: a pipe nobody reads would stall the guest's console.
    .stdout(File::create(&log).unwrap())
    .stderr(File::create(dir.join(format!("qemu-{name}.stderr"))).unwrap());
    let mut child = qemu
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (package qemu-system-x86)"));
    let start = Instant::now();
    let mut exited_ok = false;
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            exited_ok = status.success();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let took = start.elapsed();
    let mut console = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    if !exited_ok {
        let stderr = std::fs::read(dir.join(format!("qemu-{name}.stderr"))).unwrap_or_default();
        console.push_str(&format!(
            "\n[qemu stderr]\n{}",
            String::from_utf8_lossy(&stderr)
        ));
    }
    eprintln!("{program} {fw:?}: {took:?}");
    Boot {
        console,
        took,
        exited_ok,
    }
}
