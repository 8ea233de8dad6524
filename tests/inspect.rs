//! `mkomi inspect` and the checks `register` makes with it, on disks made at test time with the
//! real mkfs.ext4, mkfs.fat + mtools, mkntfs, sgdisk and qemu-img: bare file systems, GPT disks
//! with an ESP, MBR disks with boot code, hybrid disks, a Windows-like layout, x86_64 and i386
//! roots, and damaged ones; the audit on planted secrets; the JSON reports against the schemas in
//! `schemas/`.

mod common;
use common::*;
use serde_json::Value;
use std::os::unix::fs::{FileExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A minimal ELF32 i386 executable header (52 bytes) followed by filler: what `/bin/busybox` of
/// an i386 system starts with, as far as the architecture goes.
fn elf32_i386(len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(52)];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 1; // ELFCLASS32
    b[5] = 1; // little-endian
    b[6] = 1; // EV_CURRENT
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[40..42].copy_from_slice(&52u16.to_le_bytes()); // e_ehsize
    b
}

/// The architecture of a root tree.
#[derive(Clone, Copy, PartialEq)]
enum Arch {
    X86_64,
    I386,
}

/// A small Linux root: busybox (the host's x86_64 one, or an i386 ELF header) behind
/// `/sbin/init` and `/bin/sh`, os-release, a kernel and initrd, a locked root.
fn root_tree(dir: &Path, arch: Arch) -> PathBuf {
    let t = dir.join(match arch {
        Arch::X86_64 => "tree64",
        Arch::I386 => "tree32",
    });
    let _ = std::fs::remove_dir_all(&t);
    for d in ["bin", "sbin", "etc", "boot", "root", "usr/lib"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    let busybox = match arch {
        Arch::X86_64 => std::fs::read("/bin/busybox").expect("busybox-static is installed"),
        Arch::I386 => elf32_i386(4096),
    };
    std::fs::write(t.join("bin/busybox"), busybox).unwrap();
    symlink("busybox", t.join("bin/sh")).unwrap();
    symlink("../bin/busybox", t.join("sbin/init")).unwrap();
    std::fs::write(
        t.join("usr/lib/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    )
    .unwrap();
    symlink("../usr/lib/os-release", t.join("etc/os-release")).unwrap();
    std::fs::write(t.join("boot/vmlinuz-6.1.0-test"), vec![0x4b; 70_000]).unwrap();
    std::fs::write(t.join("boot/initrd.img-6.1.0-test"), vec![0x49; 30_000]).unwrap();
    std::fs::write(t.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    std::fs::write(t.join("etc/machine-id"), "").unwrap();
    t
}

/// An ext4 image of `tree`.
fn ext4(tree: &Path, out: &Path, size: &str) -> PathBuf {
    // Enough inodes for the huge-directory case.
    let o = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-N",
            "12000",
            "-L",
            "root",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .args([s(tree), s(out), size])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.to_owned()
}

/// A FAT image of `size_mib` MiB (FAT32 from 33 MiB up, else FAT16) holding `files`.
fn fat(out: &Path, size_mib: u64, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let _ = std::fs::remove_file(out);
    let bits = if size_mib >= 33 { "32" } else { "16" };
    tool(
        "mkfs.fat",
        &[
            "-F",
            bits,
            "-n",
            "ESP",
            "-C",
            s(out),
            &(size_mib * 1024).to_string(),
        ],
    );
    let scratch = out.with_extension("files");
    std::fs::create_dir_all(&scratch).unwrap();
    for (i, (path, data)) in files.iter().enumerate() {
        let mut dir = String::new();
        for part in path
            .split('/')
            .filter(|p| !p.is_empty())
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            dir = format!("{dir}/{part}");
            let _ = Command::new("mmd")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-i", s(out), &format!("::{dir}")])
                .output();
        }
        let local = scratch.join(i.to_string());
        std::fs::write(&local, data).unwrap();
        let o = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", s(out), s(&local), &format!("::{path}")])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    out.to_owned()
}

/// Copies `image` into `disk` at `offset`.
fn put(disk: &Path, offset: u64, image: &Path) {
    let bytes = std::fs::read(image).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&bytes, offset).unwrap();
}

/// A GPT disk: each partition (sgdisk type code, name, image or size in MiB) 1 MiB aligned, in
/// order, the images copied in.
fn gpt_disk(out: &Path, parts: &[(&str, &str, Result<&Path, u64>)]) -> PathBuf {
    let mut sizes = Vec::new();
    for (_, _, p) in parts {
        sizes.push(match p {
            Ok(img) => std::fs::metadata(img).unwrap().len().div_ceil(MIB),
            Err(mib) => *mib,
        });
    }
    let total = (sizes.iter().sum::<u64>() + 2) * MIB;
    let f = std::fs::File::create(out).unwrap();
    f.set_len(total).unwrap();
    drop(f);
    let mut args = vec!["-o".to_owned()];
    let mut start = MIB / 512;
    for (i, ((code, name, _), mib)) in parts.iter().zip(&sizes).enumerate() {
        let n = i + 1;
        let end = start + mib * MIB / 512 - 1;
        args.push(format!("-n{n}:{start}:{end}"));
        args.push(format!("-t{n}:{code}"));
        args.push(format!("-c{n}:{name}"));
        start = end + 1;
    }
    args.push(s(out).to_owned());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("sgdisk", &a);
    let mut offset = MIB;
    for ((_, _, p), mib) in parts.iter().zip(&sizes) {
        if let Ok(img) = p {
            put(out, offset, img);
        }
        offset += mib * MIB;
    }
    out.to_owned()
}

/// An MBR disk with one bootable Linux partition at 1 MiB holding `image`, and `boot_code` in
/// the first 440 bytes.
fn mbr_disk(out: &Path, image: &Path, boot_code: bool) -> PathBuf {
    let len = std::fs::metadata(image).unwrap().len().div_ceil(MIB) * MIB;
    let f = std::fs::File::create(out).unwrap();
    f.set_len(MIB + len).unwrap();
    let mut mbr = [0u8; 512];
    if boot_code {
        // Bytes like GRUB's boot.img: a jump, then code.
        mbr[0] = 0xeb;
        mbr[1] = 0x63;
        mbr[2] = 0x90;
        for (i, b) in mbr[3..440].iter_mut().enumerate() {
            *b = (i * 7 + 1) as u8;
        }
    }
    let rec = &mut mbr[446..462];
    rec[0] = 0x80;
    rec[4] = 0x83;
    rec[8..12].copy_from_slice(&((MIB / 512) as u32).to_le_bytes());
    rec[12..16].copy_from_slice(&((len / 512) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.write_all_at(&mbr, 0).unwrap();
    drop(f);
    put(out, MIB, image);
    out.to_owned()
}

fn inspect(path: &Path) -> Value {
    let out = ok(&["inspect", s(path), "--json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn inspect_text(path: &Path) -> String {
    String::from_utf8(ok(&["inspect", s(path)]).stdout).unwrap()
}

/// An ESP image holding the x86_64 fallback loader (and `extra` files).
fn esp(dir: &Path, extra: &[(&str, Vec<u8>)]) -> PathBuf {
    let mut files = vec![("/EFI/BOOT/BOOTX64.EFI", fake_efi(20_000, 0x8664))];
    files.extend(extra.iter().cloned());
    fat(&dir.join("esp.img"), 34, &files)
}

/// A GPT disk with an ESP (x86_64 loader) and an x86_64 root.
fn uefi_disk(dir: &Path) -> PathBuf {
    let root = ext4(&root_tree(dir, Arch::X86_64), &dir.join("root.ext4"), "24M");
    let esp = esp(dir, &[]);
    gpt_disk(
        &dir.join("uefi.raw"),
        &[("ef00", "ESP", Ok(&esp)), ("8304", "root", Ok(&root))],
    )
}

#[test]
fn bare_ext4_roots_of_both_architectures() {
    let d = tempfile::tempdir().unwrap();
    for (arch, name, bits) in [(Arch::X86_64, "x86_64", 64), (Arch::I386, "i386", 32)] {
        let img = ext4(
            &root_tree(d.path(), arch),
            &d.path().join(format!("{name}.ext4")),
            "16M",
        );
        let r = inspect(&img);
        assert_eq!(r["schema"], "mkomi-inspect/1");
        let disk = &r["disks"][0];
        assert_eq!(disk["partition_table"]["scheme"], "none");
        let v = &disk["volumes"][0];
        assert_eq!(v["filesystem"], "ext4");
        assert_eq!(v["os_release"]["id"], "debian");
        assert_eq!(v["kernels"][0], "/boot/vmlinuz-6.1.0-test");
        assert_eq!(v["initrds"][0], "/boot/initrd.img-6.1.0-test");
        let sum = &r["summary"];
        assert_eq!(sum["machine"], name, "{r:#}");
        assert_eq!(sum["architecture"], name);
        assert_eq!(sum["os"], "Debian GNU/Linux 12 (bookworm)");
        let ev = sum["architecture_evidence"][0].as_str().unwrap();
        assert!(
            ev.starts_with("whole disk: /sbin/init -> ../bin/busybox: "),
            "{ev}"
        );
        assert!(ev.contains(&format!("{bits}-bit")), "{ev}");
        assert_eq!(sum["boot_modes"], serde_json::json!([]));
        // The human report says the same.
        let text = inspect_text(&img);
        assert!(text.contains(&format!("architecture  {name}")), "{text}");
        assert!(text.contains("/sbin/init -> ../bin/busybox"), "{text}");
    }
}

#[test]
fn gpt_disk_with_an_esp_boots_uefi_also_through_qcow2() {
    let d = tempfile::tempdir().unwrap();
    let raw = uefi_disk(d.path());
    let qcow2 = d.path().join("uefi.qcow2");
    tool("qemu-img", &["convert", "-O", "qcow2", s(&raw), s(&qcow2)]);
    for disk in [&raw, &qcow2] {
        let r = inspect(disk);
        let t = &r["disks"][0]["partition_table"];
        assert_eq!(t["scheme"], "gpt");
        assert_eq!(t["problems"], serde_json::json!([]));
        let vols = r["disks"][0]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        assert_eq!(vols[0]["partition_type"], "esp");
        assert_eq!(vols[0]["filesystem"], "fat32");
        assert_eq!(vols[0]["loaders"][0]["path"], "/EFI/BOOT/BOOTX64.EFI");
        assert_eq!(vols[0]["loaders"][0]["kind"], "fallback");
        assert_eq!(vols[0]["loaders"][0]["binary"]["arch"], "x86_64");
        assert_eq!(vols[1]["partition_type"], "root-x86-64");
        assert_eq!(vols[1]["offset"], 35 * MIB);
        let sum = &r["summary"];
        assert_eq!(sum["architecture"], "x86_64");
        assert_eq!(sum["boot_modes"], serde_json::json!(["uefi"]), "{sum:#}");
        let why = sum["boot_evidence"][0].as_str().unwrap();
        assert!(
            why.starts_with("uefi: partition 1: /EFI/BOOT/BOOTX64.EFI"),
            "{why}"
        );
        assert_eq!(sum["windows"], false);
    }
}

#[test]
fn mbr_boot_code_means_legacy_and_a_hybrid_disk_boots_both_ways() {
    let d = tempfile::tempdir().unwrap();
    let root = ext4(
        &root_tree(d.path(), Arch::X86_64),
        &d.path().join("root.ext4"),
        "16M",
    );
    let with_code = mbr_disk(&d.path().join("mbr.raw"), &root, true);
    let r = inspect(&with_code);
    assert_eq!(r["disks"][0]["partition_table"]["scheme"], "mbr");
    assert_eq!(r["disks"][0]["partition_table"]["mbr_boot_code"], true);
    assert_eq!(r["disks"][0]["volumes"][0]["filesystem"], "ext4");
    assert_eq!(r["summary"]["architecture"], "x86_64");
    assert_eq!(r["summary"]["boot_modes"], serde_json::json!(["legacy"]));
    let without = mbr_disk(&d.path().join("mbr0.raw"), &root, false);
    let r = inspect(&without);
    assert_eq!(r["summary"]["boot_modes"], serde_json::json!([]));

    // Hybrid: the GPT disk, its ESP also in the MBR, and boot code.
    let disk = uefi_disk(d.path());
    tool("sgdisk", &["-h", "1", s(&disk)]);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&[0xeb, 0x63, 0x90, 0x10, 0x8e, 0xd0], 0)
        .unwrap();
    drop(f);
    let r = inspect(&disk);
    assert_eq!(r["disks"][0]["partition_table"]["scheme"], "hybrid");
    assert_eq!(
        r["summary"]["boot_modes"],
        serde_json::json!(["uefi", "legacy"]),
        "{:#}",
        r["summary"]
    );
}

/// GRUB i386-pc on `disk` as mkomi build writes it (formats.md, "Legacy BIOS boot without
/// grub-install"): the real boot.img's code in the MBR pointing at `lba`, and a real core.img
/// from grub-mkimage at `lba`, its block list pointing at `lba + 1`. Returns core.img's sectors.
fn install_grub(dir: &Path, disk: &Path, lba: u64) -> u64 {
    let boot = std::fs::read("/usr/lib/grub/i386-pc/boot.img")
        .expect("/usr/lib/grub/i386-pc/boot.img: install grub-pc-bin");
    let core_path = dir.join("core.img");
    let o = Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-o", s(&core_path), "-p", "/boot/grub"])
        .args([
            "biosdisk",
            "part_gpt",
            "part_msdos",
            "ext2",
            "linux",
            "boot",
        ])
        .output()
        .expect("grub-mkimage: install grub-pc-bin");
    assert!(o.status.success(), "grub-mkimage: {o:?}");
    let mut core = std::fs::read(&core_path).unwrap();
    core.resize(core.len().div_ceil(512) * 512, 0);
    core[0x1f4..0x1fc].copy_from_slice(&(lba + 1).to_le_bytes());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0).unwrap();
    mbr[..440].copy_from_slice(&boot[..440]);
    mbr[0x5c..0x64].copy_from_slice(&lba.to_le_bytes());
    mbr[0x64] = 0xff;
    mbr[0x66..0x68].copy_from_slice(&[0x90, 0x90]);
    f.write_all_at(&mbr, 0).unwrap();
    f.write_all_at(&core, lba * 512).unwrap();
    core.len() as u64 / 512
}

#[test]
fn grub_boot_img_and_core_img_make_a_disk_legacy_a_bios_boot_partition_alone_does_not() {
    let d = tempfile::tempdir().unwrap();
    let root = ext4(
        &root_tree(d.path(), Arch::X86_64),
        &d.path().join("root.ext4"),
        "24M",
    );
    let esp = esp(d.path(), &[]);
    let disk = gpt_disk(
        &d.path().join("both.raw"),
        &[
            ("ef02", "bios", Err(1)),
            ("ef00", "ESP", Ok(&esp)),
            ("8304", "root", Ok(&root)),
        ],
    );
    let n = install_grub(d.path(), &disk, 2048);
    let r = inspect(&disk);
    let t = &r["disks"][0]["partition_table"];
    assert_eq!(
        t["grub"],
        serde_json::json!({"core_lba": 2048, "core_sectors": n, "core_location": "bios-boot",
            "core_partition": 1, "problem": null}),
        "{t:#}"
    );
    assert_eq!(t["problems"], serde_json::json!([]), "{t:#}");
    let sum = &r["summary"];
    assert_eq!(
        sum["boot_modes"],
        serde_json::json!(["uefi", "legacy"]),
        "{sum:#}"
    );
    let ev = &sum["boot_evidence"];
    assert_eq!(
        ev[1],
        "legacy: the MBR holds GRUB's boot.img, which loads core.img at sector 2048"
    );
    assert_eq!(
        ev[2],
        format!("legacy: GRUB core.img ({n} sectors) in BIOS boot partition 1").as_str()
    );
    let text = inspect_text(&disk);
    assert!(
        text.contains(&format!(
            "MBR boot code: GRUB boot.img, core.img at sector 2048 ({n} sectors, in BIOS boot \
             partition 1)"
        )),
        "{text}"
    );
    validate(d.path(), "inspect.schema.json", &[("grub-inspect", &r)]);
    // register takes both modes from it.
    let out = d.path().join("omi");
    ok(&["register", s(&disk), "-o", s(&out), "-q"]);
    assert_eq!(
        manifest(&out)["Image"]["BootModes"],
        serde_json::json!(["uefi", "legacy"])
    );

    // boot.img pointing past the disk: a problem, and not legacy.
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&u64::MAX.to_le_bytes(), 0x5c).unwrap();
    let r = inspect(&disk);
    let g = &r["disks"][0]["partition_table"]["grub"];
    assert_eq!(g["core_sectors"], Value::Null);
    assert!(
        g["problem"]
            .as_str()
            .unwrap()
            .contains("past the end of the disk"),
        "{g:#}"
    );
    assert_eq!(r["summary"]["boot_modes"], serde_json::json!(["uefi"]));
    validate(d.path(), "inspect.schema.json", &[("bad-grub-inspect", &r)]);
    assert!(inspect_text(&disk).contains("not legacy: GRUB's boot.img in the MBR loads core.img"));

    // The MBR's code wiped: the BIOS boot partition alone is not legacy, and declaring legacy
    // is refused, saying why.
    f.write_all_at(&[0u8; 440], 0).unwrap();
    drop(f);
    let r = inspect(&disk);
    let line = "partition 1 is a BIOS boot partition, but the MBR holds no boot code: BIOS \
                firmware has nothing to run";
    assert_eq!(r["disks"][0]["partition_table"]["grub"], Value::Null);
    assert_eq!(
        r["disks"][0]["partition_table"]["problems"],
        serde_json::json!([line])
    );
    assert_eq!(r["summary"]["boot_modes"], serde_json::json!(["uefi"]));
    let bad = d.path().join("bad");
    let o = run(&[
        "register",
        s(&disk),
        "-o",
        s(&bad),
        "--boot-mode",
        "legacy",
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "boot mode legacy declared, but BIOS firmware cannot boot it: {line} \
             (--no-boot-check registers it anyway)"
        )),
        "{err}"
    );
    assert!(!bad.exists());
}

/// The layout of a Windows disk (ESP with the Windows Boot Manager, MSR, NTFS) whose NTFS volume
/// holds no Windows: not Windows (issue #17: only ntoskrnl.exe and the SYSTEM hive on NTFS make
/// one; tests/windows.rs has the real cases).
#[test]
fn windows_layout_without_windows_is_not_windows() {
    let d = tempfile::tempdir().unwrap();
    let esp = esp(
        d.path(),
        &[("/EFI/Microsoft/Boot/bootmgfw.efi", fake_efi(30_000, 0x8664))],
    );
    let ntfs = d.path().join("ntfs.img");
    std::fs::File::create(&ntfs)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    tool("mkntfs", &["-q", "-F", "-Q", "-L", "Windows", s(&ntfs)]);
    let disk = gpt_disk(
        &d.path().join("windows.raw"),
        &[
            ("ef00", "EFI system partition", Ok(&esp)),
            ("0c01", "Microsoft reserved partition", Err(16)),
            ("0700", "Basic data partition", Ok(&ntfs)),
        ],
    );
    let r = inspect(&disk);
    let vols = r["disks"][0]["volumes"].as_array().unwrap();
    assert_eq!(vols[2]["filesystem"], "ntfs");
    assert_eq!(vols[2]["windows"], Value::Null);
    let kinds: Vec<&str> = vols[0]["loaders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["fallback", "windows-boot-manager"]);
    let sum = &r["summary"];
    assert_eq!(sum["windows"], false);
    assert_eq!(sum["os"], Value::Null);
    assert_eq!(sum["sysprep"], Value::Null);
    assert_eq!(sum["architecture"], "x86_64");
    assert_eq!(sum["boot_modes"], serde_json::json!(["uefi"]));
    assert!(!inspect_text(&disk).contains("sysprep"));

    // register records no launch requirements and says nothing of Windows.
    let out = d.path().join("win-omi");
    let o = ok(&["register", s(&disk), "-o", s(&out), "--name", "win", "-q"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("Windows"), "{err}");
    let m = manifest(&out);
    assert_eq!(m["Image"]["Architecture"], "x86_64");
    assert!(m.get("LaunchRequirements").is_none(), "{m:#}");
    assert!(m["Inspection"].get("Windows").is_none(), "{m:#}");
}

#[test]
fn register_takes_the_architecture_and_boot_modes_from_the_disk() {
    let d = tempfile::tempdir().unwrap();
    let disk = uefi_disk(d.path());
    let out = d.path().join("omi");
    ok(&["register", s(&disk), "-o", s(&out), "-q"]);
    let m = manifest(&out);
    assert_eq!(m["Image"]["Architecture"], "x86_64");
    assert_eq!(m["Image"]["BootModes"], serde_json::json!(["uefi"]));
    assert_eq!(m["Inspection"]["Os"], "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(m["Inspection"]["Machine"], "x86_64");
    assert!(m.get("LaunchRequirements").is_none());
    let ev = m["Inspection"]["ArchitectureEvidence"][0].as_str().unwrap();
    assert!(ev.starts_with("partition 2: /sbin/init"), "{ev}");

    // A contradicting --arch is refused with the evidence, and nothing is written.
    let bad = d.path().join("bad");
    let o = run(&["register", s(&disk), "-o", s(&bad), "--arch", "i386", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--arch i386 contradicts the image")
            && err.contains("/sbin/init -> ../bin/busybox: ELF 64-bit x86_64")
            && err.contains("--no-arch-check"),
        "{err}"
    );
    assert!(!bad.exists());
    // … unless the check is turned off, which the manifest records.
    ok(&[
        "register",
        s(&disk),
        "-o",
        s(&bad),
        "--arch",
        "i386",
        "--no-arch-check",
        "-q",
    ]);
    let m = manifest(&bad);
    assert_eq!(m["Image"]["Architecture"], "i386");
    assert_eq!(
        m["Inspection"]["ChecksSkipped"],
        serde_json::json!(["arch"])
    );

    // uefi declared on a disk without an ESP loader: refused.
    let bare = ext4(
        &root_tree(d.path(), Arch::I386),
        &d.path().join("r32.ext4"),
        "16M",
    );
    let o = run(&[
        "register",
        s(&bare),
        "-o",
        s(&bad),
        "--force",
        "--boot-mode",
        "uefi",
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("boot mode uefi declared, but no EFI system partition holds a UEFI loader for i386 (EFI/BOOT/BOOTIA32.EFI)"),
        "{err}"
    );
    // Detected i386 without --arch; no boot modes found, none declared: the image could not
    // boot, so it is refused, naming what was looked for, and nothing is written.
    std::fs::remove_dir_all(&bad).unwrap();
    let o = run(&["register", s(&bare), "-o", s(&bad), "-q"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "r32.ext4: no boot loader found on the root disk: looked for EFI/BOOT/BOOTIA32.EFI \
             on an ESP and for boot code in the MBR; pass --no-boot-check to \
             register it anyway"
        ),
        "{err}"
    );
    assert!(!bad.exists());
    assert!(
        std::fs::read_dir(d.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".bad")),
        "a temporary directory was left"
    );
    // `image create` refuses it the same way, and makes no image.
    let store = d.path().join("store");
    let o = run(&[
        "--store",
        s(&store),
        "image",
        "create",
        "--root",
        s(&bare),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no boot loader found on the root disk"),
        "{err}"
    );
    let list = run(&["--store", s(&store), "image", "list", "--json"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains("ami-"));
    // --no-boot-check registers it anyway, with no BootModes, and the manifest says so.
    ok(&["register", s(&bare), "-o", s(&bad), "--no-boot-check", "-q"]);
    let m = manifest(&bad);
    assert_eq!(m["Image"]["Architecture"], "i386");
    assert!(m["Image"].get("BootModes").is_none());
    assert_eq!(
        m["Inspection"]["ChecksSkipped"],
        serde_json::json!(["boot-mode"])
    );

    // No evidence at all: --arch is needed.
    let noise = d.path().join("noise.raw");
    sparse_raw(&noise, 8 * MIB, &[(0, MIB, 0x42)]);
    let o = run(&["register", s(&noise), "-o", s(&bad), "--force", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot tell the architecture") && err.contains("give --arch"),
        "{err}"
    );
}

#[test]
fn damage_is_reported_with_the_rest_of_the_report() {
    let d = tempfile::tempdir().unwrap();
    // A GPT whose primary header CRC is wrong: the backup is used and the problem reported.
    let disk = uefi_disk(d.path());
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&[0xff, 0xff], 512 + 16).unwrap();
    drop(f);
    let r = inspect(&disk);
    let problems = r["disks"][0]["partition_table"]["problems"].to_string();
    assert!(problems.contains("CRC"), "{problems}");
    assert_eq!(r["summary"]["architecture"], "x86_64");
    assert_eq!(r["summary"]["boot_modes"], serde_json::json!(["uefi"]));

    // A root file system whose superblock is broken: that volume's problem, the ESP still read.
    let disk = uefi_disk(d.path());
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    // The root partition starts at 35 MiB; its superblock at +1024; s_volume_name at +0x78.
    f.write_all_at(b"XXXX", 35 * MIB + 1024 + 0x78).unwrap();
    drop(f);
    let r = inspect(&disk);
    let v = &r["disks"][0]["volumes"][1];
    assert_eq!(v["filesystem"], "ext4");
    let p = v["problems"][0].as_str().unwrap();
    assert!(p.contains("partition 2: corrupt ext4 file system"), "{p}");
    assert_eq!(
        r["disks"][0]["volumes"][0]["loaders"][0]["kind"],
        "fallback"
    );
    assert!(inspect_text(&disk).contains("problem: "));

    // A symlink loop at /sbin/init and a huge /boot: problems, no hang; /bin/sh still tells.
    let t = root_tree(d.path(), Arch::X86_64);
    std::fs::remove_file(t.join("sbin/init")).unwrap();
    symlink("init2", t.join("sbin/init")).unwrap();
    symlink("init", t.join("sbin/init2")).unwrap();
    for i in 0..10_050 {
        std::fs::write(t.join(format!("boot/f{i:05}")), "").unwrap();
    }
    let img = ext4(&t, &d.path().join("loop.ext4"), "32M");
    let r = inspect(&img);
    let v = &r["disks"][0]["volumes"][0];
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("/sbin/init: too many levels of symbolic links"),
        "{problems}"
    );
    assert!(
        problems.contains("/boot: a directory of more than 10000 entries"),
        "{problems}"
    );
    assert_eq!(r["summary"]["architecture"], "x86_64");
    assert!(
        r["summary"]["architecture_evidence"][0]
            .as_str()
            .unwrap()
            .contains("/bin/sh -> busybox")
    );
}

#[test]
fn inspect_reads_every_disk_of_a_bundle_and_refuses_what_it_cannot_open() {
    let d = tempfile::tempdir().unwrap();
    let disk = uefi_disk(d.path());
    let data = ext4(
        &root_tree(d.path(), Arch::I386),
        &d.path().join("data.ext4"),
        "16M",
    );
    let out = d.path().join("omi");
    ok(&[
        "register",
        s(&disk),
        "-o",
        s(&out),
        "--bdm",
        &format!("/dev/sdb={}", s(&data)),
        "-q",
    ]);
    let r = inspect(&out);
    let disks = r["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0]["device"], "/dev/sda1");
    assert_eq!(disks[0]["format"], "qcow2");
    assert_eq!(disks[1]["device"], "/dev/sdb");
    // The summary is the root disk's.
    assert_eq!(r["summary"]["architecture"], "x86_64");

    let o = run(&["inspect", s(&d.path().join("missing.raw"))]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing.raw"), "{err}");
}

/// `ssh-keygen -l -f FILE`'s fingerprint (`SHA256:…`) of a public key file.
fn fingerprint(pubkey: &Path) -> String {
    let out = tool("ssh-keygen", &["-l", "-f", s(pubkey)]);
    out.split_whitespace().nth(1).unwrap().to_owned()
}

/// Plants, in a root tree, what an image made from a used instance carries; returns the
/// fingerprints of the authorized keys and the secrets that must never be printed.
fn plant(t: &Path, keys: &Path) -> (Vec<String>, Vec<String>) {
    std::fs::create_dir_all(keys).unwrap();
    let mut fps = Vec::new();
    let mut secrets = Vec::new();
    let mut lines = Vec::new();
    for (kind, name) in [("ed25519", "k1"), ("rsa", "k2"), ("ecdsa", "k3")] {
        let k = keys.join(name);
        keygen(kind, &k, &format!("{name}@build host"));
        let pubkey = std::fs::read_to_string(k.with_extension("pub")).unwrap();
        fps.push(fingerprint(&k.with_extension("pub")));
        // The key material (base64) and the private key must never show.
        secrets.push(pubkey.split_whitespace().nth(1).unwrap().to_owned());
        let private = std::fs::read_to_string(&k).unwrap();
        secrets.push(private.lines().nth(1).unwrap().to_owned());
        lines.push(pubkey);
    }
    let ssh = t.join("root/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(
        ssh.join("authorized_keys"),
        format!(
            "# keys\n{}no-pty,command=\"echo a, b\" {}",
            lines[0], lines[1]
        ),
    )
    .unwrap();
    let alice = t.join("home/alice/.ssh");
    std::fs::create_dir_all(&alice).unwrap();
    std::fs::write(alice.join("authorized_keys"), &lines[2]).unwrap();
    let root_hash = "$6$Zq0sAltY$0b5JsZ3cIvN8d9aNqbhCwQxT1NqD6y4Yx0vMiY1uTtH9F3nH2yqHhXU1dQp3cG1oQvKX6l0cTqk0dH7R1yq.0";
    let alice_hash = "$y$j9T$abcdefghijklmnopqrstu.$SecretHashPartThatMustNotLeak1234567890ab";
    secrets.push(root_hash.to_owned());
    secrets.push(alice_hash.to_owned());
    secrets.push("SecretHashPart".to_owned());
    std::fs::write(
        t.join("etc/shadow"),
        format!("root:{root_hash}:19000:0:99999:7:::\nalice:{alice_hash}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"),
    )
    .unwrap();
    std::fs::create_dir_all(t.join("etc/ssh")).unwrap();
    let host = t.join("etc/ssh/ssh_host_ed25519_key");
    keygen("ed25519", &host, "");
    secrets.push(
        std::fs::read_to_string(&host)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_owned(),
    );
    std::fs::write(
        t.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(
        t.join("root/.bash_history"),
        "mysql -u root -pHunter2Secret\n",
    )
    .unwrap();
    secrets.push("Hunter2Secret".to_owned());
    std::fs::create_dir_all(t.join("var/lib/cloud/instances/i-0123abcd")).unwrap();
    (fps, secrets)
}

fn audit(path: &Path, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["audit", s(path), "--json"];
    args.extend_from_slice(extra);
    let o = run(&args);
    let json = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.code().unwrap(), json, text)
}

#[test]
fn audit_finds_every_planted_item_and_never_prints_a_secret() {
    let d = tempfile::tempdir().unwrap();
    let t = root_tree(d.path(), Arch::X86_64);
    let (fps, secrets) = plant(&t, &d.path().join("keys"));
    let root = ext4(&t, &d.path().join("root.ext4"), "24M");
    let esp = esp(d.path(), &[]);
    let disk = gpt_disk(
        &d.path().join("used.raw"),
        &[("ef00", "ESP", Ok(&esp)), ("8304", "root", Ok(&root))],
    );
    let qcow2 = d.path().join("used.qcow2");
    tool("qemu-img", &["convert", "-O", "qcow2", s(&disk), s(&qcow2)]);
    for image in [&disk, &qcow2] {
        let (code, r, text) = audit(image, &[]);
        assert_eq!(code, 0, "{text}");
        assert_eq!(r["schema"], "mkomi-audit/1");
        assert_eq!(r["problems"], serde_json::json!([]), "{r:#}");
        let f = r["findings"].as_array().unwrap();
        let has = |code: &str, path: &str| {
            f.iter()
                .filter(|x| x["code"] == code && x["path"] == path)
                .map(|x| {
                    assert_eq!(x["location"], "partition 2", "{x}");
                    x.clone()
                })
                .collect::<Vec<_>>()
        };
        let root_keys = has("ssh-authorized-key", "/root/.ssh/authorized_keys");
        assert_eq!(root_keys.len(), 2, "{r:#}");
        let alice_keys = has("ssh-authorized-key", "/home/alice/.ssh/authorized_keys");
        assert_eq!(alice_keys.len(), 1);
        for (k, fp) in root_keys.iter().chain(&alice_keys).zip(&fps) {
            assert_eq!(k["severity"], "high");
            let m = k["message"].as_str().unwrap();
            assert!(m.contains(fp.as_str()), "{m} lacks {fp}");
        }
        assert!(
            alice_keys[0]["message"]
                .as_str()
                .unwrap()
                .contains("k3@build host")
        );
        let second = root_keys[1]["message"].as_str().unwrap();
        assert!(
            second.starts_with("line 3: key 2 of 2, can log in: RSA SHA256:"),
            "{second}"
        );
        let root_pw = has("shadow-root-password", "/etc/shadow");
        assert_eq!(root_pw.len(), 1, "{r:#}");
        assert_eq!(root_pw[0]["severity"], "high");
        assert!(
            root_pw[0]["message"]
                .as_str()
                .unwrap()
                .contains("sha512crypt")
        );
        let alice_pw = has("shadow-password", "/etc/shadow");
        assert_eq!(alice_pw.len(), 1, "{r:#}");
        assert_eq!(alice_pw[0]["severity"], "medium");
        assert_eq!(
            has("ssh-host-key", "/etc/ssh/ssh_host_ed25519_key").len(),
            1
        );
        assert_eq!(has("machine-id", "/etc/machine-id").len(), 1);
        assert_eq!(has("history", "/root/.bash_history").len(), 1);
        assert!(
            f.iter().any(|x| x["code"] == "cloud-init-instance"),
            "{r:#}"
        );
        assert_eq!(r["highest"], "high");
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "secret printed: {secret}");
        }
        // --deny: exit 3 at or above the severity found, 0 above it.
        assert_eq!(audit(image, &["--deny", "high"]).0, 3);
        let human = run(&["audit", s(image), "--deny", "medium"]);
        assert_eq!(human.status.code(), Some(3));
        let human = String::from_utf8_lossy(&human.stdout);
        assert!(human.contains("fix: "), "{human}");
        assert!(
            human.contains(
                "audit: findings (4 high, 4 medium, 1 low, 0 info); 2 file system(s) audited"
            ),
            "{human}"
        );
    }

    // register records the audit; --audit deny=high refuses the image and writes nothing.
    let out = d.path().join("omi");
    ok(&["register", s(&disk), "-o", s(&out), "-q"]);
    let m = manifest(&out);
    assert_eq!(m["Audit"]["Policy"], "report");
    assert!(
        m["Audit"]["Counts"]["high"].as_u64().unwrap() >= 4,
        "{:#}",
        m["Audit"]
    );
    assert_eq!(
        m["Audit"]["Findings"][0]["Location"],
        "/dev/sda1 partition 2"
    );
    let manifest_text = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    for secret in &secrets {
        assert!(
            !manifest_text.contains(secret.as_str()),
            "secret in manifest: {secret}"
        );
    }
    let denied = d.path().join("denied");
    let o = run(&[
        "register",
        s(&disk),
        "-o",
        s(&denied),
        "--audit",
        "deny=high",
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("audit: ") && err.contains("at or above high"),
        "{err}"
    );
    assert!(!denied.exists());
    ok(&[
        "register",
        s(&disk),
        "-o",
        s(&denied),
        "--audit",
        "off",
        "-q",
    ]);
    assert!(manifest(&denied).get("Audit").is_none());
    let o = run(&[
        "register",
        s(&disk),
        "-o",
        s(&denied),
        "--audit",
        "deny=severe",
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn audit_of_a_clean_image_finds_nothing_and_says_what_it_could_not_read() {
    let d = tempfile::tempdir().unwrap();
    let disk = uefi_disk(d.path());
    let (code, r, text) = audit(&disk, &["--deny", "info"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["findings"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["problems"], serde_json::json!([]));
    assert_eq!(r["audited"].as_array().unwrap().len(), 2);
    assert!(String::from_utf8_lossy(&ok(&["audit", s(&disk)]).stdout).contains("audit: clean"));
    let out = d.path().join("omi");
    ok(&[
        "register",
        s(&disk),
        "-o",
        s(&out),
        "--audit",
        "deny=info",
        "-q",
    ]);
    assert_eq!(manifest(&out)["Audit"]["Counts"]["high"], 0);

    // An empty NTFS volume is read (issue #17), and holds nothing: clean and complete.
    let ntfs = d.path().join("ntfs.img");
    std::fs::File::create(&ntfs)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    tool("mkntfs", &["-q", "-F", "-Q", s(&ntfs)]);
    let (code, r, _) = audit(&ntfs, &["--deny", "info"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["problems"], serde_json::json!([]), "{r:#}");
    assert_eq!(
        r["audited"],
        serde_json::json!(["whole disk (ntfs)"]),
        "{r:#}"
    );
    assert!(String::from_utf8_lossy(&ok(&["audit", s(&ntfs)]).stdout).contains("audit: clean"));

    // A file system mkomi does not read (an XFS superblock's magic is enough for the
    // signature): the audit is incomplete, not clean.
    let xfs = d.path().join("xfs.img");
    let mut head = b"XFSB".to_vec();
    head.resize(4096, 0);
    std::fs::write(&xfs, &head).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&xfs)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let (code, r, _) = audit(&xfs, &[]);
    assert_eq!(code, 0);
    assert_eq!(
        r["problems"][0],
        "whole disk: xfs: not audited (mkomi reads ext2/3/4, FAT and NTFS contents)"
    );
    let text = String::from_utf8_lossy(&ok(&["audit", s(&xfs)]).stdout).into_owned();
    assert!(
        text.contains("audit: incomplete: 1 part(s) not audited"),
        "{text}"
    );
}

/// An ext4 image of `tree` with 1 KiB blocks: even a small one has backup superblocks (the
/// first at block 8193, where block group 1 starts).
fn ext4_1k(tree: &Path, out: &Path, size: &str) -> PathBuf {
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "1024",
            "-E",
            "root_owner=0:0",
            "-d",
            s(tree),
            s(out),
            size,
        ],
    );
    out.to_owned()
}

/// Temporary directories left beside `dir`'s entries (`.NAME.mkomi-PID.tmp`).
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".mkomi-"))
        .collect()
}

#[test]
fn an_audit_that_cannot_read_what_holds_data_is_incomplete_and_deny_fails_closed() {
    let d = tempfile::tempdir().unwrap();
    let t = root_tree(d.path(), Arch::X86_64);
    let (_, secrets) = plant(&t, &d.path().join("keys"));
    let root = ext4_1k(&t, &d.path().join("root.ext4"), "24M");
    // The primary superblock overwritten: no ext4 signature is left at its place.
    let f = std::fs::OpenOptions::new().write(true).open(&root).unwrap();
    f.write_all_at(&[0x5a; 1024], 1024).unwrap();
    drop(f);
    // The secrets are still in the image: e2fsck finds the file system through the backup.
    let fixed = d.path().join("fixed.ext4");
    std::fs::copy(&root, &fixed).unwrap();
    let o = Command::new("e2fsck")
        .args(["-fy", "-b", "8193", "-B", "1024", s(&fixed)])
        .output()
        .unwrap();
    assert!(matches!(o.status.code(), Some(0..=1)), "{o:?}");
    let shadow = tool("debugfs", &["-R", "cat /etc/shadow", s(&fixed)]);
    assert!(shadow.contains(secrets[6].as_str()), "{shadow}");

    let esp = esp(d.path(), &[]);
    let disk = gpt_disk(
        &d.path().join("damaged.raw"),
        &[("ef00", "ESP", Ok(&esp)), ("8304", "root", Ok(&root))],
    );
    for (image, at) in [(&root, "whole disk"), (&disk, "partition 2")] {
        // --deny fails closed: exit 4 and one line naming the disk and why…
        let o = run(&["audit", s(image), "--deny", "high"]);
        assert_eq!(o.status.code(), Some(4), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(s(image))
                && err.contains("incomplete")
                && err.contains(at)
                && err.contains("--allow-incomplete"),
            "{err}"
        );
        // … unless an incomplete audit is accepted.
        assert_eq!(audit(image, &["--deny", "high", "--allow-incomplete"]).0, 0);
        // The report says what was not audited, and why, and is never clean.
        let (code, r, text) = audit(image, &[]);
        assert_eq!(code, 0, "{text}");
        assert_eq!(r["complete"], false, "{r:#}");
        let p = r["problems"][0].as_str().unwrap();
        assert!(
            p.starts_with(&format!("{at}: holds data"))
                && p.contains("but no file system mkomi recognises")
                && p.contains("backup superblock")
                && p.contains("e2fsck -b 8193"),
            "{p}"
        );
        let human = String::from_utf8_lossy(&ok(&["audit", s(image)]).stdout).into_owned();
        assert!(
            human.contains("audit: incomplete: 1 part(s) not audited") && !human.contains("clean"),
            "{human}"
        );
    }

    // register --audit deny=: refused with exit 4, nothing written; accepted with
    // --allow-incomplete, the manifest saying what was not audited.
    let out = d.path().join("omi");
    let o = run(&[
        "register",
        s(&disk),
        "-o",
        s(&out),
        "--audit",
        "deny=high",
        "-q",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("audit: incomplete")
            && err.contains("partition 2: holds data")
            && err.contains("--allow-incomplete"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(
        temporaries(d.path()).is_empty(),
        "{:?}",
        temporaries(d.path())
    );
    ok(&[
        "register",
        s(&disk),
        "-o",
        s(&out),
        "--audit",
        "deny=high",
        "--allow-incomplete",
        "-q",
    ]);
    let m = manifest(&out);
    assert_eq!(m["Audit"]["Policy"], "deny=high");
    assert_eq!(m["Audit"]["Complete"], false, "{:#}", m["Audit"]);
    let p = m["Audit"]["Problems"][0].as_str().unwrap();
    assert!(p.starts_with("/dev/sda1 partition 2: holds data"), "{p}");
    // `image create` refuses it the same way, and makes no image.
    let store = d.path().join("store");
    let o = run(&[
        "--store",
        s(&store),
        "image",
        "create",
        "--root",
        s(&disk),
        "--audit",
        "deny=high",
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let list = run(&["--store", s(&store), "image", "list", "--json"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains("ami-"));
}

#[test]
fn a_partition_holding_data_in_no_file_system_is_not_clean_one_of_zeros_is() {
    let d = tempfile::tempdir().unwrap();
    // An ESP that holds data but no file system: incomplete, naming the ESP.
    let good = ext4(
        &root_tree(d.path(), Arch::X86_64),
        &d.path().join("good.ext4"),
        "24M",
    );
    let junk = d.path().join("junk.img");
    let bytes: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&junk, bytes).unwrap();
    let no_fs = gpt_disk(
        &d.path().join("no-fs-esp.raw"),
        &[("ef00", "ESP", Ok(&junk)), ("8304", "root", Ok(&good))],
    );
    let (code, r, text) = audit(&no_fs, &["--deny", "high"]);
    assert_eq!(code, 4, "{text}");
    assert_eq!(r["complete"], false);
    assert_eq!(
        r["problems"],
        serde_json::json!([
            "partition 1: holds data (from byte 0) but no file system mkomi recognises; not audited"
        ])
    );
    assert_eq!(r["audited"], serde_json::json!(["partition 2 (ext4)"]));
    // An ESP of zeros holds nothing: the audit is complete.
    let zeros = gpt_disk(
        &d.path().join("zero-esp.raw"),
        &[("ef00", "ESP", Err(8)), ("8304", "root", Ok(&good))],
    );
    let (code, r, text) = audit(&zeros, &["--deny", "high"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["complete"], true);
    assert_eq!(r["problems"], serde_json::json!([]));

    // A fresh swap area is only its header; one that holds paged-out memory is not audited.
    let swap = d.path().join("swap.img");
    std::fs::File::create(&swap).unwrap().set_len(MIB).unwrap();
    tool("mkswap", &[s(&swap)]);
    let (code, r, text) = audit(&swap, &["--deny", "high"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["complete"], true);
    let f = std::fs::OpenOptions::new().write(true).open(&swap).unwrap();
    f.write_all_at(b"password=Hunter2", MIB / 2).unwrap();
    drop(f);
    let (code, r, text) = audit(&swap, &["--deny", "high"]);
    assert_eq!(code, 4, "{text}");
    let p = r["problems"][0].as_str().unwrap();
    assert!(
        p.starts_with("whole disk: swap: holds data past its header (at byte 524288)"),
        "{p}"
    );
}

#[test]
fn a_file_system_larger_than_its_disk_or_partition_is_a_problem() {
    let d = tempfile::tempdir().unwrap();
    let t = root_tree(d.path(), Arch::X86_64);
    // An ext4 of 64 MiB on a disk cut to 40 MiB.
    let cut = ext4(&t, &d.path().join("cut.ext4"), "64M");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(40 * MIB)
        .unwrap();
    let r = inspect(&cut);
    let p = r["disks"][0]["volumes"][0]["problems"][0].as_str().unwrap();
    assert_eq!(
        p,
        "the disk is short: the ext4 file system is 64.0 MiB (67108864 bytes), but the disk \
         holds only 40.0 MiB (41943040 bytes) of it; its last 24.0 MiB are missing (a truncated \
         copy?)"
    );
    assert!(
        inspect_text(&cut).contains("    problem: the disk is short"),
        "{}",
        inspect_text(&cut)
    );
    // The audit says the disk is short, not that the file system is damaged, and is
    // incomplete.
    let (code, r, text) = audit(&cut, &["--deny", "high"]);
    assert_eq!(code, 4, "{text}");
    let problems = r["problems"].as_array().unwrap();
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .starts_with("whole disk: the disk is short: the ext4 file system is 64.0 MiB"),
        "{problems:?}"
    );
    assert!(!text.contains("corrupt"), "{text}");

    // FAT, from its boot sector: 34 MiB cut to 20 MiB.
    let fat = fat(
        &d.path().join("cut.fat"),
        34,
        &[("/hello.txt", b"hello".to_vec())],
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fat)
        .unwrap()
        .set_len(20 * MIB)
        .unwrap();
    let r = inspect(&fat);
    let p = r["disks"][0]["volumes"][0]["problems"][0].as_str().unwrap();
    assert!(
        p.starts_with(
            "the disk is short: the fat32 file system is 34.0 MiB (35651584 bytes), but the \
             disk holds only 20.0 MiB (20971520 bytes) of it"
        ),
        "{p}"
    );
    let (code, r, text) = audit(&fat, &["--deny", "high"]);
    assert_eq!(code, 4, "{text}");
    assert!(
        r["problems"][0]
            .as_str()
            .unwrap()
            .contains("the disk is short: the fat32 file system is 34.0 MiB"),
        "{r:#}"
    );
    assert!(!text.contains("corrupt"), "{text}");

    // A file system larger than its partition: a 24 MiB ext4 in a 16 MiB partition.
    let big = ext4(&t, &d.path().join("big.ext4"), "24M");
    let disk = gpt_disk(
        &d.path().join("small-partition.raw"),
        &[("8304", "root", Err(16)), ("8300", "data", Err(16))],
    );
    put(&disk, MIB, &big);
    let r = inspect(&disk);
    let p = r["disks"][0]["volumes"][0]["problems"][0].as_str().unwrap();
    assert!(
        p.starts_with(
            "the disk is short: the ext4 file system is 24.0 MiB (25165824 bytes), but \
             partition 1 holds only 16.0 MiB (16777216 bytes) of it"
        ),
        "{p}"
    );
    // A partitioned disk cut short: the GPT is still read, the root's file system is larger
    // than what is left of its partition, and the audit says the disk is short.
    let root = ext4(&t, &d.path().join("root64.ext4"), "64M");
    let esp = esp(d.path(), &[]);
    let disk = gpt_disk(
        &d.path().join("cut.raw"),
        &[("ef00", "ESP", Ok(&esp)), ("8304", "root", Ok(&root))],
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(70 * MIB)
        .unwrap();
    let r = inspect(&disk);
    let table = r["disks"][0]["partition_table"]["problems"].to_string();
    assert!(
        table.contains("the disk is short: the primary GPT header describes a disk of 100.0 MiB"),
        "{table}"
    );
    let p = r["disks"][0]["volumes"][1]["problems"][0].as_str().unwrap();
    assert!(
        p.starts_with(
            "the disk is short: the ext4 file system is 64.0 MiB (67108864 bytes), but \
             partition 2 holds only 35.0 MiB (36700160 bytes) of it"
        ),
        "{p}"
    );
    assert_eq!(r["summary"]["boot_modes"], serde_json::json!(["uefi"]));
    let (code, r, text) = audit(&disk, &["--deny", "high"]);
    assert_eq!(code, 4, "{text}");
    assert!(
        r["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("partition 2: the disk is short: the ext4 file system is 64.0 MiB"),
        "{r:#}"
    );
    assert!(!text.contains("corrupt"), "{text}");

    // A file system that fits is no problem.
    let whole = ext4(&t, &d.path().join("whole.ext4"), "24M");
    assert_eq!(
        inspect(&whole)["disks"][0]["volumes"][0]["problems"],
        serde_json::json!([])
    );
}

/// Validates each document against the schema: each must pass; and each must fail with a bogus
/// property added to any of its objects, with its `schema` changed, or with an enumeration
/// value that is not one.
const SCRIPT: &str = r##"
import copy, json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)

def objects(node, path=()):
    if isinstance(node, dict):
        yield path
        for k, v in node.items():
            yield from objects(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from objects(v, path + (i,))

def at(doc, path):
    for p in path:
        doc = doc[p]
    return doc

def must_fail(doc, what):
    if validator.is_valid(doc):
        sys.exit(f"{name}: passed with {what}")

for file in sys.argv[2:]:
    doc = json.load(open(file))
    name = file.rsplit("/", 1)[-1]
    validator.validate(doc)
    n = 0
    for path in objects(doc):
        bad = copy.deepcopy(doc)
        at(bad, path)["bogus"] = 1
        must_fail(bad, f"a bogus property at {list(path)}")
        n += 1
    bad = copy.deepcopy(doc)
    bad["schema"] = bad["schema"][:-1] + "2"
    must_fail(bad, "another schema")
    bad = copy.deepcopy(doc)
    if "disks" in doc:
        bad["disks"][0]["partition_table"]["scheme"] = "apm"
        must_fail(bad, "scheme apm")
        bad = copy.deepcopy(doc)
        del bad["summary"]["architecture"]
        must_fail(bad, "no summary.architecture")
    else:
        bad["findings"][0]["severity"] = "critical"
        must_fail(bad, "severity critical")
        bad = copy.deepcopy(doc)
        del bad["findings"][0]["device"]
        must_fail(bad, "a finding without device")
    if n < 4:
        sys.exit(f"{name}: only {n} objects")
    print(name, "ok")
"##;

/// Runs [`SCRIPT`] on `docs` (written as `NAME.json` in `dir`) with `schema`.
fn validate(dir: &Path, schema: &str, docs: &[(&str, &Value)]) {
    let mut args = vec![s(&repo().join("schemas").join(schema)).to_owned()];
    let mut expect = String::new();
    for (name, doc) in docs {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
        args.push(s(&file).to_owned());
        expect.push_str(&format!("{name}.json ok\n"));
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{schema}: validation failed (pip install jsonschema?): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expect);
}

#[test]
fn inspect_and_audit_json_validate_against_their_schemas() {
    let d = tempfile::tempdir().unwrap();
    let t = root_tree(d.path(), Arch::X86_64);
    plant(&t, &d.path().join("keys"));
    let root = ext4(&t, &d.path().join("root.ext4"), "24M");
    let esp = esp(d.path(), &[]);
    let disk = gpt_disk(
        &d.path().join("disk.raw"),
        &[("ef00", "ESP", Ok(&esp)), ("8304", "root", Ok(&root))],
    );
    let bundle = d.path().join("omi");
    ok(&["register", s(&disk), "-o", s(&bundle), "-q"]);
    let disk_inspect = inspect(&disk);
    let bundle_inspect = inspect(&bundle);
    let disk_audit = audit(&disk, &[]).1;
    let bundle_audit = audit(&bundle, &[]).1;

    // The documents hold what the schemas describe: both volumes, a loader and its PE header,
    // ELF evidence, os-release, the device in a bundle, and findings.
    for r in [&disk_inspect, &bundle_inspect] {
        let vols = &r["disks"][0]["volumes"];
        assert_eq!(vols[0]["loaders"][0]["binary"]["format"], "pe", "{r:#}");
        assert_eq!(vols[1]["evidence"][0]["link"], "../bin/busybox");
        assert_eq!(vols[1]["os_release"]["id"], "debian");
    }
    assert_eq!(disk_inspect["disks"][0]["device"], Value::Null);
    assert_eq!(bundle_inspect["disks"][0]["device"], "/dev/sda1");
    for r in [&disk_audit, &bundle_audit] {
        assert!(r["findings"].as_array().unwrap().len() >= 9, "{r:#}");
    }
    assert_eq!(disk_audit["findings"][0]["device"], Value::Null);
    assert_eq!(bundle_audit["findings"][0]["device"], "/dev/sda1");

    validate(
        d.path(),
        "inspect.schema.json",
        &[
            ("disk-inspect", &disk_inspect),
            ("bundle-inspect", &bundle_inspect),
        ],
    );
    validate(
        d.path(),
        "audit.schema.json",
        &[("disk-audit", &disk_audit), ("bundle-audit", &bundle_audit)],
    );
}
