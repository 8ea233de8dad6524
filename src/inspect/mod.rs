//! Looking inside disks without mounting: partition tables, file systems, the OS, kernels,
//! bootloaders, the architecture and the boot modes.
//!
//! Every disk is hostile. Reading never fails as a whole once the disk is open: what cannot be
//! read becomes a line in the `problems` of the part it is about, and the rest of the report is
//! still made. Each conclusion of the [`Summary`] carries the evidence it came from.
//!
//! The report is the stable JSON document `mkomi inspect --json` prints (schema [`SCHEMA`],
//! described by `schemas/inspect.schema.json` and `schemas/README.md`); its human form is its
//! `Display`.

pub mod binary;
pub mod legacy;
pub mod osrelease;
pub mod signature;
pub mod table;
pub mod windows;

use crate::format::{self, Disk, OpenOptions};
use crate::fs::{self, FileSystem, Kind};
use crate::manifest::{self, Architecture, BootMode, Manifest};
use binary::{Binary, Format, Invalid};
use osrelease::OsRelease;
use serde::Serialize;
use signature::FsKind;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use table::{PartitionTable, Scheme};

/// The `schema` of the JSON report; changes only when a field changes meaning or goes away.
pub const SCHEMA: &str = "mkomi-inspect/1";

/// Most entries read from one directory: more is reported as a problem, never allocated.
const MAX_DIR_ENTRIES: usize = 10_000;
/// Most EFI binaries listed on one ESP.
const MAX_LOADERS: usize = 256;
/// Files whose ELF header tells the architecture of the OS, in the order they are tried: the
/// init the kernel runs, the shell every system has, and systemd's binary when init is a script.
const ARCH_EVIDENCE: [&str; 3] = ["/sbin/init", "/bin/sh", "/usr/lib/systemd/systemd"];

/// An error that stops inspection before any report: the disk or bundle cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A disk image is unreadable or invalid.
    #[error(transparent)]
    Source(#[from] format::Error),
    /// A bundle's manifest is unreadable or invalid.
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    /// A bundle names a disk file that cannot be inspected.
    #[error("{}: {reason}", path.display())]
    Bundle {
        /// The bundle or the disk file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The whole report: one entry per disk (a bundle's disks in manifest order, root first), and
/// the conclusions drawn from the root disk.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// The disks.
    pub disks: Vec<DiskReport>,
    /// What the root disk says about the image.
    pub summary: Summary,
}

/// What one disk holds.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    /// The block device mapping this disk is for, when inspecting a bundle.
    pub device: Option<String>,
    /// The disk file.
    pub file: String,
    /// Its container format (`raw`, `qcow2`).
    pub format: &'static str,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// The partition table (scheme `none` for a bare file system).
    pub partition_table: PartitionTable,
    /// Each partition, or the whole disk when there is no partition table.
    pub volumes: Vec<Volume>,
}

/// One partition (or a whole unpartitioned disk) and what its file system holds.
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    /// Where it lies and what its signature says.
    #[serde(flatten)]
    pub info: VolumeInfo,
    /// `/etc/os-release` (or `/usr/lib/os-release`), when the volume holds an OS.
    pub os_release: Option<OsRelease>,
    /// Kernels: `vmlinuz*`, `vmlinux*`, `bzImage*` in `/boot` or at the top.
    pub kernels: Vec<String>,
    /// Initial RAM disks: `initrd*`, `initramfs*` in `/boot` or at the top.
    pub initrds: Vec<String>,
    /// EFI binaries under `/EFI/*/`.
    pub loaders: Vec<Loader>,
    /// Binaries whose headers tell the OS's architecture.
    pub evidence: Vec<Evidence>,
    /// The Windows installation on an NTFS volume with `Windows/System32/ntoskrnl.exe` and the
    /// SYSTEM hive.
    pub windows: Option<windows::Installation>,
    /// Why whether this NTFS volume holds Windows is not known (it did not open, or looking for
    /// the kernel or the SYSTEM hive failed): never taken for "not Windows". Said in `problems`.
    #[serde(skip)]
    pub windows_unknown: Option<String>,
    /// Whether an NTFS volume holds `/bootmgr` and `/Boot/BCD`: the Windows Boot Manager that
    /// BIOS boot code starts from the active partition.
    pub bootmgr: bool,
    /// What could not be read, one line each.
    pub problems: Vec<String>,
}

/// What an EFI binary on an ESP is, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoaderKind {
    /// `EFI/BOOT/BOOT<arch>.EFI`: what firmware runs when it has no boot entry (UEFI 2.10
    /// §3.5.1.1), so what a new VM boots.
    Fallback,
    /// systemd-boot (`systemd-boot*.efi`).
    SystemdBoot,
    /// GRUB (`grub*.efi`).
    Grub,
    /// shim, the Secure Boot first stage (`shim*.efi`).
    Shim,
    /// Windows Boot Manager (`EFI/Microsoft/Boot/bootmgfw.efi`).
    WindowsBootManager,
    /// Any other `.efi` file.
    Other,
}

/// An EFI binary found on an ESP.
#[derive(Debug, Clone, Serialize)]
pub struct Loader {
    /// Its path, as stored.
    pub path: String,
    /// What it is.
    pub kind: LoaderKind,
    /// Its PE header, when readable.
    pub binary: Option<Binary>,
}

/// A binary whose header says what machine it runs on.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    /// The path looked at.
    pub path: String,
    /// The symlink target when `path` is a symlink.
    pub link: Option<String>,
    /// Its header.
    pub binary: Binary,
}

/// The conclusions about the image, each with where it came from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// The OS's name (`PRETTY_NAME`), or Windows' `ProductName` (`Windows` when unreadable).
    pub os: Option<String>,
    /// Where the OS's name came from.
    pub os_from: Option<String>,
    /// The machine found (`x86_64`, `i386`, `aarch64`, …), when the evidence agrees.
    pub machine: Option<String>,
    /// `machine` as an Outscale `Architecture`; `None` when unknown or not one Outscale runs.
    pub architecture: Option<Architecture>,
    /// The evidence for `machine`, one line each (`partition 2: /sbin/init: ELF 64-bit x86_64`).
    pub architecture_evidence: Vec<String>,
    /// Boot modes the disk supports.
    pub boot_modes: Vec<BootMode>,
    /// Why each boot mode, one line each.
    pub boot_evidence: Vec<String>,
    /// An NTFS volume holds `Windows/System32/ntoskrnl.exe` and the SYSTEM hive: a Windows
    /// image.
    pub windows: bool,
    /// The Windows edition and version, from the SOFTWARE hive.
    pub windows_version: Option<WindowsVersion>,
    /// Whether sysprep generalized the Windows installation, with the evidence.
    pub sysprep: Option<windows::Sysprep>,
    /// NTFS volumes of which it is not known whether they hold Windows, with the reason, one
    /// line each (the volumes' problems say the same in the JSON report), whether or not
    /// Windows was found on another volume.
    #[serde(skip)]
    pub windows_unknown: Vec<String>,
    /// Contradictions between pieces of evidence.
    pub problems: Vec<String>,
    /// Why the disk does not boot in legacy mode although something on it is made for it (a
    /// BIOS boot partition, GRUB's `boot.img`), one line each. Not in the JSON report, where
    /// `partition_table.grub.problem` and `partition_table.problems` say the same.
    #[serde(skip)]
    pub legacy_problems: Vec<String>,
}

/// The Windows edition and version (`SOFTWARE\Microsoft\Windows NT\CurrentVersion`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowsVersion {
    /// `ProductName`.
    pub product_name: Option<String>,
    /// `EditionID`.
    pub edition: Option<String>,
    /// `DisplayVersion` (or `ReleaseId`).
    pub version: Option<String>,
    /// `CurrentBuild`.
    pub build: Option<String>,
}

/// Where a volume is, for messages: `partition 2` or `whole disk`.
pub fn location(partition: Option<u32>) -> String {
    match partition {
        Some(n) => format!("partition {n}"),
        None => "whole disk".to_owned(),
    }
}

/// The volumes of a disk: its partitions that lie inside it, or the whole disk.
fn slots(table: &PartitionTable, disk_size: u64) -> Vec<VolumeInfo> {
    // A table without partitions (a file system's boot sector with 0x55AA, an empty MBR) leaves
    // the whole disk to probe, as blkid and Linux do.
    if table.scheme == Scheme::None || table.partitions.is_empty() {
        return vec![VolumeInfo {
            partition: None,
            partition_type: None,
            offset: 0,
            size: disk_size,
            filesystem: None,
            filesystem_size: None,
        }];
    }
    table
        .partitions
        .iter()
        .filter(|p| p.type_name != "gpt-protective" && p.type_name != "extended")
        .map(|p| VolumeInfo {
            partition: Some(p.index),
            partition_type: Some(p.type_name.clone()),
            offset: p.offset.min(disk_size),
            size: p.size.min(disk_size.saturating_sub(p.offset)),
            filesystem: None,
            filesystem_size: None,
        })
        .collect()
}

/// Opens the file system of `kind` at a slot; `None` for kinds mkomi does not read. The file
/// system holds its own reference to the disk.
fn open_fs(
    disk: &Arc<dyn Disk>,
    kind: FsKind,
    slot: &VolumeInfo,
    name: &Path,
) -> Option<Result<Box<dyn FileSystem>, fs::Error>> {
    let src = Arc::clone(disk);
    Some(match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => {
            fs::ext4::Ext4::open(src, slot.offset, slot.size, name)
                .map(|f| Box::new(f) as Box<dyn FileSystem>)
                .map_err(fs::Error::from)
        }
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => {
            fs::fat::Fat::open(src, slot.offset, slot.size, name)
                .map(|f| Box::new(f) as Box<dyn FileSystem>)
                .map_err(fs::Error::from)
        }
        FsKind::Ntfs => fs::ntfs::Ntfs::open(src, slot.offset, slot.size, name)
            .map(|f| Box::new(f) as Box<dyn FileSystem>)
            .map_err(fs::Error::from),
        _ => return None,
    })
}

/// Visits every readable file system of a disk: partitions in table order, or the whole disk.
///
/// `visit` gets the slot's location, its file system kind and the opened file system (or the
/// error that kept it from opening); each file system is opened once, however many readers the
/// visitor feeds. Returns the partition table.
pub fn walk(
    disk: &Arc<dyn Disk>,
    visit: &mut dyn FnMut(VolumeInfo, Option<Opened<'_>>),
) -> PartitionTable {
    let table = table::read(disk.as_ref());
    let file = disk.path().display().to_string();
    for mut info in slots(&table, disk.size()) {
        if info.size > 0 {
            info.filesystem = signature::detect(disk.as_ref(), info.offset, info.size);
            info.filesystem_size = info
                .filesystem
                .and_then(|k| signature::size_of(disk.as_ref(), info.offset, info.size, k));
        }
        let name = PathBuf::from(match info.partition {
            Some(n) => format!("{file} partition {n}"),
            None => file.clone(),
        });
        match info.filesystem.and_then(|k| open_fs(disk, k, &info, &name)) {
            Some(Ok(fs)) => visit(info, Some(Ok(fs.as_ref()))),
            Some(Err(e)) => visit(info, Some(Err(&e))),
            None => visit(info, None),
        }
    }
    table
}

/// A file system as [`walk`] passes it: opened, or the error that kept it from opening.
pub type Opened<'a> = Result<&'a dyn FileSystem, &'a fs::Error>;

/// Where a volume lies and what its signature says, as [`walk`] passes it.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    /// The partition number, `None` for the whole disk.
    pub partition: Option<u32>,
    /// The partition type's name (`esp`, `root-x86-64`, `linux-generic`, …), if partitioned.
    pub partition_type: Option<String>,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// The file system found by its signature.
    pub filesystem: Option<FsKind>,
    /// The size the file system says it has (ext2/3/4 and FAT), to compare with `size`.
    #[serde(skip)]
    pub filesystem_size: Option<u64>,
}

impl VolumeInfo {
    /// When the file system says it is larger than the room the disk gives it (a disk cut
    /// short: a truncated copy or download), one line saying so; `None` otherwise.
    pub fn short(&self) -> Option<String> {
        let (kind, claimed) = (self.filesystem?, self.filesystem_size?);
        if claimed <= self.size {
            return None;
        }
        let room = match self.partition {
            Some(n) => format!("partition {n} holds"),
            None => "the disk holds".to_owned(),
        };
        Some(format!(
            "the disk is short: the {} file system is {} ({claimed} bytes), but {room} only {} \
             ({} bytes) of it; its last {} are missing (a truncated copy?)",
            kind.name(),
            human_size(claimed),
            human_size(self.size),
            self.size,
            human_size(claimed - self.size)
        ))
    }
}

/// Inspects one disk; `device` names its mapping in a bundle.
pub fn inspect_disk(disk: &Arc<dyn Disk>, device: Option<&str>) -> DiskReport {
    let mut inspection = DiskInspection::new(disk.as_ref(), device);
    let table = walk(disk, &mut |info, fs| inspection.visit(info, fs));
    inspection.finish(table)
}

/// A disk's report as [`walk`] visits its volumes: a visitor that can share a walk with others
/// (the audit), so that each file system is opened once for all of them.
pub struct DiskInspection {
    device: Option<String>,
    file: String,
    format: &'static str,
    virtual_size: u64,
    volumes: Vec<Volume>,
}

impl DiskInspection {
    /// An inspection of `disk`, which `device` maps in a bundle.
    pub fn new(disk: &dyn Disk, device: Option<&str>) -> Self {
        DiskInspection {
            device: device.map(str::to_owned),
            file: disk.path().display().to_string(),
            format: disk.format(),
            virtual_size: disk.size(),
            volumes: Vec::new(),
        }
    }

    /// Reads one volume as [`walk`] passes it.
    pub fn visit(&mut self, info: VolumeInfo, fs: Option<Opened<'_>>) {
        let mut v = Volume {
            info,
            os_release: None,
            kernels: Vec::new(),
            initrds: Vec::new(),
            loaders: Vec::new(),
            evidence: Vec::new(),
            windows: None,
            windows_unknown: None,
            bootmgr: false,
            problems: Vec::new(),
        };
        // Said first: a short disk explains the read errors that follow.
        if let Some(line) = v.info.short() {
            v.problems.push(line);
        }
        match fs {
            Some(Ok(fs)) => read_volume(fs, &mut v),
            Some(Err(e)) => {
                if v.info.filesystem == Some(FsKind::Ntfs) {
                    v.windows_unknown = Some(e.to_string());
                }
                v.problems.push(e.to_string());
            }
            None => {}
        }
        self.volumes.push(v);
    }

    /// The report, once the walk has returned `partition_table`.
    pub fn finish(self, partition_table: PartitionTable) -> DiskReport {
        DiskReport {
            device: self.device,
            file: self.file,
            format: self.format,
            virtual_size: self.virtual_size,
            partition_table,
            volumes: self.volumes,
        }
    }
}

/// Fills a volume's OS, kernels, loaders and evidence from its file system.
fn read_volume(fs: &dyn FileSystem, v: &mut Volume) {
    let problems = &mut v.problems;
    let mut note = |e: fs::Error| {
        if !e.is_not_found() {
            problems.push(e.to_string());
        }
    };
    match osrelease::read(fs) {
        Ok(os) => v.os_release = os,
        Err(e) => note(e),
    }
    for dir in ["/boot", "/"] {
        let entries = match fs.read_dir(dir, MAX_DIR_ENTRIES) {
            Ok(entries) => entries,
            Err(e) => {
                note(e);
                continue;
            }
        };
        let join = |name: &str| {
            if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            }
        };
        for e in entries.iter().filter(|e| e.kind == Kind::File) {
            if ["vmlinuz", "vmlinux", "bzImage"]
                .iter()
                .any(|p| e.name.starts_with(p))
            {
                v.kernels.push(join(&e.name));
            } else if e.name.starts_with("initrd") || e.name.starts_with("initramfs") {
                v.initrds.push(join(&e.name));
            }
        }
    }
    if fs.kind().starts_with("fat") {
        read_loaders(fs, &mut v.loaders, &mut note);
    } else if fs.kind() == "ntfs" {
        match windows::read(fs, &mut v.problems) {
            Ok(found) => v.windows = found,
            Err(e) => {
                v.problems.push(e.clone());
                v.windows_unknown = Some(e);
            }
        }
        v.bootmgr = windows::has_bootmgr(fs, &mut v.problems);
    } else {
        for path in ARCH_EVIDENCE {
            match evidence(fs, path) {
                Ok(Some(e)) => v.evidence.push(e),
                Ok(None) => {}
                Err(e) => v.problems.push(e),
            }
        }
    }
}

/// The header of `path`, if it is an ELF or PE binary; `Ok(None)` when absent or not a binary.
fn evidence(fs: &dyn FileSystem, path: &str) -> Result<Option<Evidence>, String> {
    let meta = match fs.symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let link = if meta.kind == Kind::Symlink {
        Some(fs.read_link(path).map_err(|e| e.to_string())?)
    } else {
        None
    };
    match binary::identify(fs, path) {
        Ok(binary) => Ok(Some(Evidence {
            path: path.to_owned(),
            link,
            binary,
        })),
        // A script, an empty file or a directory says nothing about the machine.
        Err(binary::Error::Invalid {
            reason: Invalid::Unknown | Invalid::Empty | Invalid::NotFile,
            ..
        }) => Ok(None),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Lists the `.efi` files under `/EFI`, down to `/EFI/*/*/*.efi` (where Windows keeps
/// `Microsoft/Boot/bootmgfw.efi`); names compared without case, as firmware does.
fn read_loaders(fs: &dyn FileSystem, loaders: &mut Vec<Loader>, note: &mut dyn FnMut(fs::Error)) {
    // (directory, its path below /EFI lowercased, depth)
    let mut dirs = vec![("/EFI".to_owned(), String::new(), 0u32)];
    while let Some((dir_path, below, depth)) = dirs.pop() {
        let entries = match fs.read_dir(&dir_path, MAX_DIR_ENTRIES) {
            Ok(e) => e,
            Err(e) => {
                note(e);
                continue;
            }
        };
        // Directories are pushed in reverse, so they come out in name order.
        for e in entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
            if depth < 2 {
                let lower = e.name.to_ascii_lowercase();
                let below = if below.is_empty() {
                    lower
                } else {
                    format!("{below}/{lower}")
                };
                dirs.push((format!("{dir_path}/{}", e.name), below, depth + 1));
            }
        }
        for f in entries.iter().filter(|f| f.kind == Kind::File) {
            let lower = f.name.to_ascii_lowercase();
            if !lower.ends_with(".efi") || depth == 0 {
                continue;
            }
            if loaders.len() == MAX_LOADERS {
                return;
            }
            let path = format!("{dir_path}/{}", f.name);
            let kind = loader_kind(&below, &lower);
            let binary = match binary::identify(fs, &path) {
                Ok(b) => Some(b),
                Err(binary::Error::Read(e)) => {
                    note(e);
                    None
                }
                Err(_) => None,
            };
            loaders.push(Loader { path, kind, binary });
        }
    }
}

/// What an EFI binary is from its (lowercased) directory below `/EFI` and file name.
fn loader_kind(dir: &str, file: &str) -> LoaderKind {
    if dir == "boot" && file.starts_with("boot") {
        LoaderKind::Fallback
    } else if file.starts_with("systemd-boot") {
        LoaderKind::SystemdBoot
    } else if file.starts_with("grub") {
        LoaderKind::Grub
    } else if file.starts_with("shim") {
        LoaderKind::Shim
    } else if dir.starts_with("microsoft") || file == "bootmgfw.efi" {
        LoaderKind::WindowsBootManager
    } else {
        LoaderKind::Other
    }
}

/// The removable-media file name firmware looks for on a machine (UEFI 2.10 §3.5.1.1).
fn fallback_name(machine: &str) -> Option<&'static str> {
    Some(match machine {
        "x86_64" => "BOOTX64.EFI",
        "i386" => "BOOTIA32.EFI",
        "aarch64" => "BOOTAA64.EFI",
        "arm" => "BOOTARM.EFI",
        "riscv64" => "BOOTRISCV64.EFI",
        _ => return None,
    })
}

/// The machine a binary is for: its architecture's name, or the raw header value when mkomi
/// does not know it (`ELF machine 0x1234`).
fn machine_name(b: &Binary) -> String {
    match b.arch {
        Some(a) => a.to_owned(),
        None => {
            let format = match b.format {
                Format::Elf => "ELF",
                Format::Pe => "PE",
            };
            format!("{format} machine {:#x}", b.machine)
        }
    }
}

/// Draws the conclusions about an image from its root disk.
pub fn summarize(disk: &DiskReport) -> Summary {
    let mut s = Summary::default();
    let prefix = |v: &Volume| location(v.info.partition);

    // The OS: the first volume with an os-release.
    if let Some((v, os)) = disk
        .volumes
        .iter()
        .find_map(|v| v.os_release.as_ref().map(|os| (v, os)))
    {
        s.os = Some(os.display_name());
        s.os_from = Some(format!("{}: os-release", prefix(v)));
    }

    // Windows: the first volume holding the kernel and the SYSTEM hive.
    let win = disk
        .volumes
        .iter()
        .find_map(|v| v.windows.as_ref().map(|w| (v, w)));
    // Also when Windows was found elsewhere: an unreadable NTFS volume may hold another one.
    for v in &disk.volumes {
        if let Some(why) = &v.windows_unknown {
            s.windows_unknown.push(format!("{}: {why}", prefix(v)));
        }
    }
    if let Some((v, w)) = win {
        s.windows = true;
        if s.os.is_none() {
            s.os = Some(
                w.product_name
                    .clone()
                    .unwrap_or_else(|| "Windows".to_owned()),
            );
            s.os_from = Some(format!(
                "{}: {} and {}",
                prefix(v),
                windows::KERNEL,
                windows::SYSTEM_HIVE
            ));
        }
        s.windows_version = Some(WindowsVersion {
            product_name: w.product_name.clone(),
            edition: w.edition.clone(),
            version: w.version.clone(),
            build: w.build.clone(),
        });
        s.sysprep = Some(windows::Sysprep {
            state: w.sysprep.state,
            evidence: w
                .sysprep
                .evidence
                .iter()
                .map(|e| format!("{}: {e}", prefix(v)))
                .collect(),
        });
    }

    // The machine: ELF evidence from the OS; for Windows, ntoskrnl.exe's PE header checked
    // against the registry; PE evidence from the loaders when there is neither.
    let mut lines = Vec::new();
    let mut machines = Vec::new();
    for v in &disk.volumes {
        for e in &v.evidence {
            let link = e
                .link
                .as_ref()
                .map(|l| format!(" -> {l}"))
                .unwrap_or_default();
            lines.push(format!("{}: {}{link}: {}", prefix(v), e.path, e.binary));
            machines.push(machine_name(&e.binary));
        }
    }
    let mut disagree = false;
    if let (true, Some((v, w))) = (machines.is_empty(), win) {
        if let Some(b) = &w.kernel {
            lines.push(format!("{}: {}: {b}", prefix(v), windows::KERNEL));
            machines.push(machine_name(b));
        }
        if let (Some(a), Some(from)) = (&w.processor_architecture, &w.processor_architecture_from) {
            lines.push(format!("{}: {from}: PROCESSOR_ARCHITECTURE={a}", prefix(v)));
            let kernel = machines.first().map(String::as_str);
            if let Some(k) = kernel
                && windows::registry_machine(a) != Some(k)
            {
                disagree = true;
                s.problems.push(format!(
                    "ntoskrnl.exe is {k}, but the registry's PROCESSOR_ARCHITECTURE is {a}: \
                     the architecture is unknown"
                ));
            }
        }
    } else if machines.is_empty() {
        for v in &disk.volumes {
            for l in &v.loaders {
                let useful = matches!(
                    l.kind,
                    LoaderKind::Fallback | LoaderKind::WindowsBootManager
                );
                if let (true, Some(b)) = (useful, &l.binary) {
                    lines.push(format!("{}: {}: {b}", prefix(v), l.path));
                    machines.push(machine_name(b));
                }
            }
        }
    }
    machines.sort_unstable();
    machines.dedup();
    match machines.as_slice() {
        _ if disagree => {}
        [] => {}
        [one] => {
            s.machine = Some(one.clone());
            s.architecture = match one.as_str() {
                "x86_64" => Some(Architecture::X86_64),
                "i386" => Some(Architecture::I386),
                _ => None,
            };
        }
        many => s.problems.push(format!(
            "the binaries disagree on the machine ({}): {}",
            many.join(", "),
            lines.join("; ")
        )),
    }
    s.architecture_evidence = lines;

    // UEFI: an ESP with the fallback loader for the machine.
    for v in disk
        .volumes
        .iter()
        .filter(|v| v.info.partition_type.as_deref() == Some("esp"))
    {
        for l in v.loaders.iter().filter(|l| l.kind == LoaderKind::Fallback) {
            let Some(b) = &l.binary else { continue };
            let file = l.path.rsplit('/').next().unwrap_or_default();
            let fits = b.format == Format::Pe
                && match s.machine.as_deref() {
                    Some(m) => b.arch == Some(m),
                    None => b.arch.and_then(fallback_name).is_some(),
                }
                && b.arch
                    .and_then(fallback_name)
                    .is_some_and(|n| n.eq_ignore_ascii_case(file));
            if fits {
                s.boot_evidence
                    .push(format!("uefi: {}: {}: {b}", prefix(v), l.path));
                if !s.boot_modes.contains(&BootMode::Uefi) {
                    s.boot_modes.push(BootMode::Uefi);
                }
            }
        }
    }
    // UEFI for Windows: the Windows Boot Manager on an ESP, for the machine found. Only when
    // the disk holds Windows: a stray bootmgfw.efi next to Linux boots nothing.
    if win.is_some() {
        for v in disk
            .volumes
            .iter()
            .filter(|v| v.info.partition_type.as_deref() == Some("esp"))
        {
            for l in v.loaders.iter().filter(|l| {
                l.kind == LoaderKind::WindowsBootManager
                    && l.path.to_ascii_lowercase().ends_with("/bootmgfw.efi")
            }) {
                let Some(b) = &l.binary else { continue };
                let fits = b.format == Format::Pe
                    && b.is_efi()
                    && s.machine.as_deref().is_some_and(|m| b.arch == Some(m));
                if fits {
                    s.boot_evidence
                        .push(format!("uefi: {}: {}: {b}", prefix(v), l.path));
                    if !s.boot_modes.contains(&BootMode::Uefi) {
                        s.boot_modes.push(BootMode::Uefi);
                    }
                }
            }
        }
    }

    // Legacy: boot code in the MBR; GRUB's only when its core image is where it belongs. For
    // Windows, other boot code counts only when the active partition (System Reserved, or the
    // Windows volume) holds bootmgr and Boot/BCD, which that code starts: Windows' own MBR code
    // could not be checked here, so its bytes are not what decides.
    let mut legacy = legacy::assess(&disk.partition_table);
    if win.is_some() && legacy.boots && disk.partition_table.grub.is_none() {
        let active = disk
            .partition_table
            .partitions
            .iter()
            .filter(|p| p.bootable)
            .find_map(|p| {
                disk.volumes
                    .iter()
                    .find(|v| v.info.partition == Some(p.index))
            });
        match active {
            Some(v) if v.bootmgr => legacy.evidence.push(format!(
                "legacy: {} (active) holds {} and {}",
                prefix(v),
                windows::BOOTMGR[0],
                windows::BOOTMGR[1]
            )),
            Some(v) => {
                legacy.boots = false;
                legacy.evidence.clear();
                legacy.problems.push(format!(
                    "the MBR holds boot code, but the active {} holds no {} and {}",
                    prefix(v),
                    windows::BOOTMGR[0],
                    windows::BOOTMGR[1]
                ));
            }
            None => {
                legacy.boots = false;
                legacy.evidence.clear();
                legacy.problems.push(format!(
                    "the MBR holds boot code, but no partition is active to hold {} and {}",
                    windows::BOOTMGR[0],
                    windows::BOOTMGR[1]
                ));
            }
        }
    }
    if legacy.boots {
        s.boot_modes.push(BootMode::Legacy);
    }
    s.boot_evidence.extend(legacy.evidence);
    s.legacy_problems = legacy.problems;
    s
}

/// Inspects a disk image or a bundle directory (every disk of its manifest, root first).
pub fn inspect_path(path: &Path, open: &OpenOptions) -> Result<Report, Error> {
    let mut disks = Vec::new();
    for (device, file) in disk_files(path)? {
        let disk = format::open_path(&file, open)?;
        disks.push(inspect_disk(&disk, device.as_deref()));
    }
    let summary = disks.first().map(summarize).unwrap_or_default();
    Ok(Report {
        schema: SCHEMA,
        disks,
        summary,
    })
}

/// The disk files to read: `path` itself, or the disks a bundle's manifest lists, each checked
/// to be a plain file name inside the bundle.
pub fn disk_files(path: &Path) -> Result<Vec<(Option<String>, PathBuf)>, Error> {
    if !path.is_dir() {
        return Ok(vec![(None, path.to_owned())]);
    }
    let manifest = Manifest::read(&path.join(manifest::FILE_NAME))?;
    let mut out = Vec::new();
    for d in &manifest.disks {
        let plain = !d.path.is_empty()
            && !d.path.contains('/')
            && d.path != "."
            && d.path != ".."
            && !d.path.contains('\0');
        if !plain {
            return Err(Error::Bundle {
                path: path.to_owned(),
                reason: format!("disk file name {:?} is not a plain file name", d.path),
            });
        }
        let file = path.join(&d.path);
        match file.symlink_metadata() {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(Error::Bundle {
                    path: file,
                    reason: "not a regular file".into(),
                });
            }
            Err(e) => {
                return Err(Error::Bundle {
                    path: file,
                    reason: format!("cannot read: {e}"),
                });
            }
        }
        out.push((Some(d.device_name.clone()), file));
    }
    Ok(out)
}

/// Sizes for people: `512 B`, `64.0 MiB`, `2.0 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.disks {
            write!(f, "{d}")?;
        }
        let s = &self.summary;
        writeln!(f, "summary")?;
        let none = "unknown".to_owned();
        match (&s.os, &s.os_from) {
            (Some(os), Some(from)) => writeln!(f, "  os            {os}  ({from})")?,
            _ => writeln!(f, "  os            unknown")?,
        }
        let arch = match (&s.architecture, &s.machine) {
            (Some(_), Some(m)) => m.clone(),
            (None, Some(m)) => format!("{m} (not an Outscale architecture)"),
            _ => none.clone(),
        };
        writeln!(f, "  architecture  {arch}")?;
        for e in &s.architecture_evidence {
            writeln!(f, "                  {e}")?;
        }
        let modes: Vec<&str> = s
            .boot_modes
            .iter()
            .map(|m| match m {
                BootMode::Uefi => "uefi",
                BootMode::Legacy => "legacy",
            })
            .collect();
        let modes = if modes.is_empty() {
            "none found".to_owned()
        } else {
            modes.join(", ")
        };
        writeln!(f, "  boot modes    {modes}")?;
        for e in &s.boot_evidence {
            writeln!(f, "                  {e}")?;
        }
        for p in &s.legacy_problems {
            writeln!(f, "                  not legacy: {p}")?;
        }
        if !s.windows_unknown.is_empty() {
            writeln!(
                f,
                "  windows       unknown: an NTFS volume could not be read far enough"
            )?;
            for w in &s.windows_unknown {
                writeln!(f, "                  {w}")?;
            }
        }
        if s.windows {
            let mut what = Vec::new();
            if let Some(v) = &s.windows_version {
                what.extend(v.product_name.clone());
                what.extend(v.edition.as_ref().map(|e| format!("edition {e}")));
                what.extend(v.version.as_ref().map(|e| format!("version {e}")));
                what.extend(v.build.as_ref().map(|e| format!("build {e}")));
            }
            if what.is_empty() {
                what.push("edition and version unknown".to_owned());
            }
            writeln!(f, "  windows       yes: {}", what.join(", "))?;
            writeln!(
                f,
                "                  needs 2 vCores, 4 GiB and Intel v3 processors"
            )?;
        }
        if let Some(p) = &s.sysprep {
            writeln!(f, "  sysprep       {}", p.state.name())?;
            for e in &p.evidence {
                writeln!(f, "                  {e}")?;
            }
        }
        for p in &s.problems {
            writeln!(f, "  problem       {p}")?;
        }
        Ok(())
    }
}

impl fmt::Display for DiskReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.partition_table;
        let device = self
            .device
            .as_ref()
            .map(|d| format!("{d}: "))
            .unwrap_or_default();
        let scheme = match t.scheme {
            Scheme::Gpt => "GPT",
            Scheme::Mbr => "MBR",
            Scheme::Hybrid => "hybrid GPT+MBR",
            Scheme::None => "no partition table",
        };
        writeln!(
            f,
            "{device}{}: {}, {} ({} bytes), {scheme}",
            self.file,
            self.format,
            human_size(self.virtual_size),
            self.virtual_size
        )?;
        if let Some(g) = &t.disk_guid {
            writeln!(f, "  disk GUID {g}")?;
        }
        match &t.grub {
            Some(g) => {
                let core = match (g.core_sectors, g.core_location, g.core_partition) {
                    (Some(n), Some(at), p) => {
                        let p = p.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
                        let at = match at {
                            legacy::CoreLocation::BiosBoot => format!("in BIOS boot partition {p}"),
                            legacy::CoreLocation::MbrGap => {
                                format!("in the gap after the MBR, before partition {p}")
                            }
                            legacy::CoreLocation::Partition => format!("over partition {p}"),
                            legacy::CoreLocation::Unpartitioned => "outside every partition".into(),
                        };
                        format!(" ({n} sectors, {at})")
                    }
                    _ => " (not found)".to_owned(),
                };
                writeln!(
                    f,
                    "  MBR boot code: GRUB boot.img, core.img at sector {}{core}",
                    g.core_lba
                )?;
                if let Some(p) = &g.problem {
                    writeln!(f, "  problem: {p}")?;
                }
            }
            None if t.mbr_boot_code => writeln!(f, "  MBR boot code present")?,
            None => {}
        }
        for p in &t.problems {
            writeln!(f, "  problem: {p}")?;
        }
        for v in &self.volumes {
            let fs = v
                .info
                .filesystem
                .map_or("no known file system", FsKind::name);
            let part = t
                .partitions
                .iter()
                .find(|p| Some(p.index) == v.info.partition);
            match part {
                Some(p) => {
                    let label = if p.name.is_empty() {
                        String::new()
                    } else {
                        format!(" {:?}", p.name)
                    };
                    let guid = p.unique_guid.map(|g| format!(" {g}")).unwrap_or_default();
                    writeln!(
                        f,
                        "  partition {}: {} at {} ({}), {}{label}{guid}: {fs}",
                        p.index,
                        human_size(v.info.size),
                        human_size(v.info.offset),
                        v.info.offset,
                        p.type_name
                    )?;
                }
                None => writeln!(f, "  whole disk: {fs}")?,
            }
            if let Some(os) = &v.os_release {
                writeln!(f, "    os: {}", os.display_name())?;
            }
            if !v.kernels.is_empty() {
                writeln!(f, "    kernels: {}", v.kernels.join(", "))?;
            }
            if !v.initrds.is_empty() {
                writeln!(f, "    initrds: {}", v.initrds.join(", "))?;
            }
            for l in &v.loaders {
                let kind = serde_json::to_value(l.kind)
                    .ok()
                    .and_then(|j| j.as_str().map(str::to_owned))
                    .unwrap_or_default();
                match &l.binary {
                    Some(b) => writeln!(f, "    loader: {} ({kind}, {b})", l.path)?,
                    None => writeln!(f, "    loader: {} ({kind}, not a PE file)", l.path)?,
                }
            }
            if let Some(w) = &v.windows {
                let name = w.product_name.as_deref().unwrap_or("Windows");
                let build = w
                    .build
                    .as_ref()
                    .map(|b| format!(", build {b}"))
                    .unwrap_or_default();
                writeln!(f, "    windows: {name}{build}")?;
                if let Some(b) = &w.kernel {
                    writeln!(f, "    binary: {}: {b}", windows::KERNEL)?;
                }
            }
            if v.bootmgr {
                writeln!(
                    f,
                    "    bios boot manager: {} and {}",
                    windows::BOOTMGR[0],
                    windows::BOOTMGR[1]
                )?;
            }
            for e in &v.evidence {
                let link = e
                    .link
                    .as_ref()
                    .map(|l| format!(" -> {l}"))
                    .unwrap_or_default();
                writeln!(f, "    binary: {}{link}: {}", e.path, e.binary)?;
            }
            for p in &v.problems {
                writeln!(f, "    problem: {p}")?;
            }
        }
        Ok(())
    }
}
