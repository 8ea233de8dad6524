//! Legacy BIOS boot as GRUB's i386-pc images set it up: `boot.img` in the MBR, which loads the
//! first sector of `core.img` (`diskboot.img`), whose block list loads the rest.
//!
//! The facts come from GRUB 2's sources (read, not copied): `include/grub/i386/pc/boot.h` (the
//! offsets in `boot.img`), `grub-core/boot/i386/pc/boot.S` (its code and messages),
//! `grub-core/boot/i386/pc/diskboot.S` (the block list at the end of `diskboot.img`) and
//! `util/setup.c` (what `grub-install` patches, and where it embeds `core.img`: the first
//! sector of a GPT BIOS boot partition, or the sectors after an MBR).
//!
//! The disk is hostile: the sector `boot.img` points at is checked against the disk before it
//! is read, one sector is read, and nothing is allocated from what the disk says. Whatever is
//! wrong is said in [`Grub::problem`], and such a disk does not count as booting in legacy mode
//! (fail closed): see [`assess`].

use serde::Serialize;

use super::table::{Partition, PartitionTable, Scheme};
use crate::format::Disk;

/// GRUB's i386-pc boot code reads 512-byte sectors: `boot.img` loads one sector at the LBA it
/// holds, and `diskboot.S` copies what it reads "presuming 512 byte sectors".
pub const SECTOR: u64 = 512;
/// Bytes of boot code in an MBR (UEFI 2.10 Table 5.1); the rest of LBA 0 is the disk signature
/// and the partition table, which `grub-install` keeps (`util/setup.c`).
const BOOT_CODE_LEN: usize = 440;
/// `boot.img` starts with `jmp after_BPB; nop` (`boot.S`): a short jump over the BIOS parameter
/// block to `after_BPB` at 0x65, just after `boot_drive` (0x64): `0xeb`, 0x65 − 2, `0x90`.
const JUMP: [u8; 3] = [0xeb, 0x63, 0x90];
/// `GRUB_BOOT_MACHINE_BPB_END`: `kernel_address`, a u16 that `boot.S` jumps to once it has
/// loaded the first sector of `core.img`.
const KERNEL_ADDRESS: usize = 0x5a;
/// Its value: `GRUB_BOOT_MACHINE_KERNEL_ADDR`, the segment `GRUB_BOOT_I386_PC_KERNEL_SEG`
/// (0x800, `include/grub/offsets.h`) as an address.
const KERNEL_ADDR: u16 = 0x8000;
/// `GRUB_BOOT_MACHINE_KERNEL_SECTOR`: the little-endian u64 LBA of `core.img`'s first sector.
const KERNEL_SECTOR: usize = 0x5c;
/// The messages `boot.S` prints (`notification_string`, `geometry_error_string`,
/// `hd_probe_error_string`, `read_error_string`, `general_error_string`), NUL-terminated and in
/// this order in every GRUB 2 `boot.img`; the last one's `\r\n` is left out.
const MESSAGES: &[u8] = b"GRUB \0Geom\0Hard Disk\0Read\0 Error";
/// `GRUB_BOOT_MACHINE_LIST_SIZE`: one block list entry of `diskboot.img`, a u64 start sector, a
/// u16 sector count and a u16 load segment.
const LIST_SIZE: usize = 12;
/// `firstlist` in `diskboot.S`: the first entry ends the sector; further entries grow down from
/// it, and one with a count of 0 ends the list.
const FIRST_LIST: usize = 512 - LIST_SIZE;
/// The segment the first entry loads to: `GRUB_BOOT_MACHINE_KERNEL_SEG + 0x20`, just after the
/// 512 bytes of `diskboot.img` itself at 0x8000.
const CORE_SEGMENT: u16 = 0x820;

/// Where `core.img` lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoreLocation {
    /// Inside a GPT BIOS boot partition, which exists to hold it.
    BiosBoot,
    /// In the sectors after the MBR of an MBR-partitioned disk, before its first partition.
    MbrGap,
    /// Over (part of) a partition that is not a BIOS boot partition: what that partition holds
    /// overwrites it, or it overwrites that.
    Partition,
    /// In sectors no partition holds, outside the gap after an MBR: nothing reserves them.
    Unpartitioned,
}

/// GRUB's `boot.img` found in the MBR, and the `core.img` it loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grub {
    /// The sector `boot.img` loads `core.img`'s first sector from.
    pub core_lba: u64,
    /// `core.img`'s length in sectors, from the block list of its first sector; `None` when
    /// that sector is not GRUB's `diskboot.img` (or cannot be read).
    pub core_sectors: Option<u64>,
    /// Where `core.img` lies; `None` when it was not found.
    pub core_location: Option<CoreLocation>,
    /// The BIOS boot partition holding it, the partition the MBR gap ends at, or the partition
    /// it lies over; `None` otherwise.
    pub core_partition: Option<u32>,
    /// Why BIOS firmware cannot boot it, one line; `None` when it can (`core.img` whole, in a
    /// BIOS boot partition or the MBR gap).
    pub problem: Option<String>,
}

impl Grub {
    /// Whether BIOS firmware boots through it: `core.img` was found, in one piece, where
    /// nothing else owns its sectors.
    pub fn boots(&self) -> bool {
        self.problem.is_none()
            && matches!(
                self.core_location,
                Some(CoreLocation::BiosBoot | CoreLocation::MbrGap)
            )
    }
}

/// Whether the boot code of `lba0` is GRUB 2's `boot.img`: its jump over the BIOS parameter
/// block, its `kernel_address`, and its messages. (`grub-install` overwrites bytes 3 to 0x5a
/// with the disk's own, the LBA at 0x5c, the drive at 0x64 and the drive check at 0x66: none
/// of these is looked at.)
pub fn is_boot_img(lba0: &[u8]) -> bool {
    let Some(code) = lba0.get(..BOOT_CODE_LEN) else {
        return false;
    };
    code.starts_with(&JUMP)
        && le16(code, KERNEL_ADDRESS) == Some(KERNEL_ADDR)
        && code.windows(MESSAGES.len()).any(|w| w == MESSAGES)
}

/// Little-endian integers at `at` in `buf`; `None` past its end.
fn le16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(b.try_into().ok()?))
}

fn le64(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Follows GRUB's `boot.img` in `lba0` (LBA 0 of `source`, read already) to its `core.img`,
/// given the partition `table` read from the same disk; `None` when the MBR does not hold
/// `boot.img`.
pub fn read(source: &dyn Disk, lba0: &[u8], table: &PartitionTable) -> Option<Grub> {
    if !table.mbr_boot_code || !is_boot_img(lba0) {
        return None;
    }
    let core_lba = le64(lba0, KERNEL_SECTOR)?;
    let mut grub = Grub {
        core_lba,
        core_sectors: None,
        core_location: None,
        core_partition: None,
        problem: None,
    };
    let loads = format!("GRUB's boot.img in the MBR loads core.img from sector {core_lba}");
    let sectors = source.size() / SECTOR;
    if table.sector_size != SECTOR {
        grub.problem = Some(format!(
            "{loads}, but GRUB's BIOS boot code reads 512-byte sectors and this disk's are {} \
             bytes",
            table.sector_size
        ));
        return Some(grub);
    }
    if core_lba == 0 {
        grub.problem = Some(format!("{loads}, the MBR itself"));
        return Some(grub);
    }
    if core_lba >= sectors {
        grub.problem = Some(format!(
            "{loads}, past the end of the disk ({sectors} sectors)"
        ));
        return Some(grub);
    }
    // core_lba < sectors = size / 512, so neither overflows and the sector lies in the disk.
    let mut first = [0u8; SECTOR as usize];
    if let Err(e) = source.read_at(core_lba * SECTOR, &mut first) {
        grub.problem = Some(format!("{loads}, which cannot be read: {e}"));
        return Some(grub);
    }
    let core_sectors = match check_blocklist(&first, core_lba, sectors) {
        Ok(n) => n,
        Err(why) => {
            grub.problem = Some(format!(
                "{loads}, which is not GRUB's diskboot.img: its block list {why}"
            ));
            return Some(grub);
        }
    };
    grub.core_sectors = Some(core_sectors);
    // The block list was checked to end inside the disk.
    let last = core_lba + core_sectors - 1;
    let (location, partition, problem) = locate(table, core_lba, last, sectors);
    grub.core_location = Some(location);
    grub.core_partition = partition;
    grub.problem = problem;
    Some(grub)
}

/// Checks the first block list entry of `diskboot.img` read from `lba` against what
/// `grub-install` writes for a `core.img` in consecutive sectors: it loads the sectors after
/// `lba`, to segment 0x820, at least one, inside the disk of `sectors`; and the next entry ends
/// the list. Returns `core.img`'s length in sectors (the count, plus `diskboot.img` itself).
fn check_blocklist(first: &[u8], lba: u64, sectors: u64) -> Result<u64, String> {
    let start = le64(first, FIRST_LIST).unwrap_or(0);
    let count = le16(first, FIRST_LIST + 8).unwrap_or(0);
    let segment = le16(first, FIRST_LIST + 10).unwrap_or(0);
    let next = lba.saturating_add(1);
    if start != next {
        return Err(format!("starts at sector {start}, not at {next}"));
    }
    if segment != CORE_SEGMENT {
        return Err(format!(
            "loads to segment {segment:#06x}, not {CORE_SEGMENT:#06x}"
        ));
    }
    if count == 0 {
        return Err("reads no sectors".to_owned());
    }
    let end = start.saturating_add(u64::from(count));
    if end > sectors {
        return Err(format!(
            "reads {count} sectors from sector {start}, past the end of the disk ({sectors} \
             sectors)"
        ));
    }
    // A second entry: core.img lies in pieces (installed with block lists into a file, which
    // the file system may move), not in the consecutive sectors GRUB embeds it in.
    let more = le16(first, FIRST_LIST - LIST_SIZE + 8).unwrap_or(0);
    if more != 0 {
        return Err(format!(
            "goes on in a second entry ({more} more sectors): core.img lies in pieces, as a \
             block-list install into a file system leaves it"
        ));
    }
    Ok(u64::from(count) + 1)
}

/// The bytes a partition covers, as `[start, end)`.
fn span(p: &Partition) -> (u64, u64) {
    (p.offset, p.offset.saturating_add(p.size))
}

/// Where `core.img`, in sectors `first..=last` of a disk of `sectors`, lies: its location, the
/// partition that goes with it, and the problem when BIOS firmware cannot count on it.
fn locate(
    table: &PartitionTable,
    first: u64,
    last: u64,
    sectors: u64,
) -> (CoreLocation, Option<u32>, Option<String>) {
    let (start, end) = (first * SECTOR, (last + 1) * SECTOR);
    let core = format!("GRUB's core.img (sectors {first}..={last})");
    let overlapping = || {
        table
            .partitions
            .iter()
            .filter(|p| p.size > 0 && p.type_name != "gpt-protective")
            .filter(move |p| {
                let (a, b) = span(p);
                a < end && start < b
            })
    };
    if let Some(p) = overlapping().find(|p| {
        let (a, b) = span(p);
        p.type_name == "bios-boot" && a <= start && end <= b
    }) {
        return (CoreLocation::BiosBoot, Some(p.index), None);
    }
    if let Some(p) = overlapping().next() {
        let why = if p.type_name == "bios-boot" {
            format!(
                "{core} runs past BIOS boot partition {} (sectors {}..={})",
                p.index, p.first_lba, p.last_lba
            )
        } else {
            format!(
                "{core} lies over partition {} ({}, sectors {}..={}), whose content overwrites it",
                p.index, p.type_name, p.first_lba, p.last_lba
            )
        };
        return (CoreLocation::Partition, Some(p.index), Some(why));
    }
    if table.scheme == Scheme::Mbr {
        // The gap GRUB embeds in on an MBR disk (`grub_partition_msdos_embed`): after LBA 0, up
        // to the first partition.
        let next = table
            .partitions
            .iter()
            .filter(|p| p.size > 0)
            .min_by_key(|p| p.first_lba);
        if next.is_none_or(|p| last < p.first_lba) {
            return (CoreLocation::MbrGap, next.map(|p| p.index), None);
        }
    }
    let why = match table.scheme {
        Scheme::Gpt | Scheme::Hybrid => format!(
            "{core} lies outside every partition: on a GPT disk, nothing reserves those sectors \
             but a BIOS boot partition"
        ),
        _ => format!(
            "{core} lies outside every partition and past the gap after the MBR: nothing \
             reserves those sectors (a disk of {sectors} sectors)"
        ),
    };
    (CoreLocation::Unpartitioned, None, Some(why))
}

/// The line for a BIOS boot partition on a disk whose MBR holds no boot code.
pub fn no_boot_code(partition: u32) -> String {
    format!(
        "partition {partition} is a BIOS boot partition, but the MBR holds no boot code: BIOS \
         firmware has nothing to run"
    )
}

/// What the partition table says about legacy BIOS boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// Whether BIOS firmware boots the disk.
    pub boots: bool,
    /// Why it does, one line each, `legacy: ` first.
    pub evidence: Vec<String>,
    /// Why it does not though something on the disk is made for it, one line each.
    pub problems: Vec<String>,
}

/// Decides whether the disk of `table` boots in legacy mode: boot code in the MBR is needed;
/// GRUB's `boot.img` counts only when its `core.img` is found where it is safe, and a BIOS boot
/// partition alone is not enough.
pub fn assess(table: &PartitionTable) -> Assessment {
    let mut a = Assessment::default();
    match &table.grub {
        Some(g) => match (g.boots(), g.core_sectors, &g.problem) {
            (true, Some(n), _) => {
                a.boots = true;
                a.evidence.push(format!(
                    "legacy: the MBR holds GRUB's boot.img, which loads core.img at sector {}",
                    g.core_lba
                ));
                let last = g.core_lba.saturating_add(n.saturating_sub(1));
                let place = match (g.core_location, g.core_partition) {
                    (Some(CoreLocation::BiosBoot), Some(p)) => {
                        format!("in BIOS boot partition {p}")
                    }
                    (_, Some(p)) => format!(
                        "in the gap after the MBR (sectors {}..={last}, before partition {p})",
                        g.core_lba
                    ),
                    (_, None) => {
                        format!("in the gap after the MBR (sectors {}..={last})", g.core_lba)
                    }
                };
                a.evidence
                    .push(format!("legacy: GRUB core.img ({n} sectors) {place}"));
            }
            (_, _, problem) => a.problems.push(
                problem
                    .clone()
                    .unwrap_or_else(|| "GRUB's core.img was not found".to_owned()),
            ),
        },
        None if table.mbr_boot_code => {
            a.boots = true;
            a.evidence
                .push("legacy: the MBR holds boot code".to_owned());
        }
        None => {
            for p in table
                .partitions
                .iter()
                .filter(|p| p.type_name == "bios-boot")
            {
                a.problems.push(no_boot_code(p.index));
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::raw;
    use crate::inspect::{inspect_disk, summarize, table};
    use crate::layout::gpt::{self, PartitionRequest};
    use crate::manifest::BootMode;
    use crate::ondisk::gpt::PartitionType;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    const MIB: u64 = 1 << 20;
    const BOOT_IMG: &str = "/usr/lib/grub/i386-pc/boot.img";

    /// GRUB's real boot.img (package grub-pc-bin, which CI installs).
    fn boot_img() -> Vec<u8> {
        let b = std::fs::read(BOOT_IMG)
            .unwrap_or_else(|e| panic!("{BOOT_IMG}: {e}: install grub-pc-bin"));
        assert_eq!(b.len(), 512, "{BOOT_IMG}");
        b
    }

    /// A real core.img made by grub-mkimage, as mkomi build makes it, padded to whole sectors.
    fn core_img() -> &'static [u8] {
        static CORE: OnceLock<Vec<u8>> = OnceLock::new();
        CORE.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("core.img");
            let o = std::process::Command::new("grub-mkimage")
                .args(["-O", "i386-pc", "-o"])
                .arg(&out)
                .args(["-p", "/boot/grub", "biosdisk", "part_gpt", "part_msdos"])
                .args(["ext2", "linux", "boot"])
                .output()
                .unwrap_or_else(|e| panic!("grub-mkimage: {e}: install grub-pc-bin"));
            assert!(o.status.success(), "grub-mkimage: {o:?}");
            let mut core = std::fs::read(&out).unwrap();
            core.resize(core.len().div_ceil(512) * 512, 0);
            core
        })
    }

    fn core_sectors() -> u64 {
        core_img().len() as u64 / 512
    }

    fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }

    fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        std::fs::File::open(path)
            .unwrap()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    }

    /// A GPT disk of 40 MiB: `bios` makes partition 1 a 1 MiB BIOS boot partition, then an ESP
    /// and a root.
    fn gpt_disk(dir: &Path, bios: bool) -> PathBuf {
        let mut reqs = Vec::new();
        if bios {
            reqs.push(PartitionRequest::new(
                PartitionType::BiosBoot,
                "bios",
                Some(MIB),
            ));
        }
        reqs.push(PartitionRequest::new(
            PartitionType::Esp,
            "esp",
            Some(8 * MIB),
        ));
        reqs.push(PartitionRequest::new(
            PartitionType::RootX86_64,
            "root",
            None,
        ));
        let t = gpt::plan(40 * MIB, &reqs, b"legacy-test").unwrap();
        let path = dir.join("gpt.raw");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(t.disk_size)
            .unwrap();
        write_at(&path, 0, &t.primary());
        let (offset, bytes) = t.backup();
        write_at(&path, offset, &bytes);
        path
    }

    /// An MBR disk of 16 MiB with one Linux partition from `first` to the end.
    fn mbr_disk(dir: &Path, first: u32) -> PathBuf {
        let path = dir.join("mbr.raw");
        let size = 16 * MIB;
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let mut s = [0u8; 512];
        s[446] = 0x80;
        s[450] = 0x83;
        s[454..458].copy_from_slice(&first.to_le_bytes());
        s[458..462].copy_from_slice(&((size / 512) as u32 - first).to_le_bytes());
        s[510..512].copy_from_slice(&[0x55, 0xaa]);
        write_at(&path, 0, &s);
        path
    }

    /// What mkomi build does for GRUB i386-pc (docs: formats.md, "Legacy BIOS boot without
    /// grub-install"): boot.img's code into the MBR, pointing at `lba`, and core.img at `lba`
    /// with its block list pointing at `lba + 1`.
    fn install(path: &Path, lba: u64) {
        let mut mbr = read_at(path, 0, 512);
        mbr[..440].copy_from_slice(&boot_img()[..440]);
        mbr[0x5c..0x64].copy_from_slice(&lba.to_le_bytes());
        mbr[0x64] = 0xff;
        mbr[0x66..0x68].copy_from_slice(&[0x90, 0x90]);
        write_at(path, 0, &mbr);
        let mut core = core_img().to_vec();
        core[0x1f4..0x1fc].copy_from_slice(&(lba + 1).to_le_bytes());
        write_at(path, lba * 512, &core);
    }

    /// Patches the MBR's boot.img pointer.
    fn point(path: &Path, lba: u64) {
        write_at(path, 0x5c, &lba.to_le_bytes());
    }

    fn table(path: &Path) -> table::PartitionTable {
        let t = table::read(raw::open_path(path).unwrap().as_ref());
        serde_json::to_string(&t).unwrap();
        t
    }

    fn summary(path: &Path) -> crate::inspect::Summary {
        summarize(&inspect_disk(&raw::open_path(path).unwrap(), None))
    }

    fn legacy(path: &Path) -> bool {
        summary(path).boot_modes.contains(&BootMode::Legacy)
    }

    /// The problem of the GRUB found on `path`, which does not boot.
    fn grub_problem(path: &Path) -> String {
        let t = table(path);
        let g = t.grub.as_ref().expect("boot.img recognised");
        assert!(!g.boots(), "{g:?}");
        let s = summary(path);
        assert!(!s.boot_modes.contains(&BootMode::Legacy), "{s:?}");
        assert!(s.boot_evidence.is_empty(), "{s:?}");
        let p = g.problem.clone().expect("a problem");
        assert_eq!(s.legacy_problems, vec![p.clone()]);
        p
    }

    #[test]
    fn the_real_boot_img_is_recognised_and_other_code_is_not() {
        let b = boot_img();
        assert!(is_boot_img(&b));
        // As grub-install leaves it: the disk's BPB bytes, a pointer, the drive check nop'ed.
        let mut patched = b.clone();
        patched[3..0x5a].fill(0x42);
        patched[0x5c..0x64].copy_from_slice(&u64::MAX.to_le_bytes());
        patched[0x66..0x68].copy_from_slice(&[0x90, 0x90]);
        assert!(is_boot_img(&patched));
        for (at, byte) in [(0, 0xe9), (1, 0x48), (0x5b, 0x7c), (0x180, b'g')] {
            let mut other = b.clone();
            other[at] = byte;
            assert!(!is_boot_img(&other), "byte {at:#x}");
        }
        assert!(!is_boot_img(&b[..439]));
        assert!(!is_boot_img(&[0u8; 512]));
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn gpt_with_a_bios_boot_partition_and_boot_img_boots_legacy() {
        let dir = tempfile::tempdir().unwrap();
        let path = gpt_disk(dir.path(), true);
        install(&path, 2048);
        let t = table(&path);
        assert!(t.mbr_boot_code);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let n = core_sectors();
        assert!(n > 50, "{n}");
        assert_eq!(
            t.grub,
            Some(Grub {
                core_lba: 2048,
                core_sectors: Some(n),
                core_location: Some(CoreLocation::BiosBoot),
                core_partition: Some(1),
                problem: None,
            })
        );
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json["grub"],
            serde_json::json!({"core_lba": 2048, "core_sectors": n,
                "core_location": "bios-boot", "core_partition": 1, "problem": null})
        );
        let s = summary(&path);
        assert_eq!(s.boot_modes, vec![BootMode::Legacy]);
        assert_eq!(
            s.boot_evidence,
            vec![
                "legacy: the MBR holds GRUB's boot.img, which loads core.img at sector 2048"
                    .to_owned(),
                format!("legacy: GRUB core.img ({n} sectors) in BIOS boot partition 1"),
            ]
        );
        assert!(
            s.legacy_problems.is_empty() && s.problems.is_empty(),
            "{s:?}"
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn core_img_in_the_gap_after_an_mbr_boots_legacy() {
        let dir = tempfile::tempdir().unwrap();
        let path = mbr_disk(dir.path(), 2048);
        install(&path, 1);
        let n = core_sectors();
        let t = table(&path);
        let g = t.grub.clone().unwrap();
        assert_eq!(
            (g.core_location, g.core_partition, g.core_sectors),
            (Some(CoreLocation::MbrGap), Some(1), Some(n))
        );
        let s = summary(&path);
        assert_eq!(s.boot_modes, vec![BootMode::Legacy]);
        assert_eq!(
            s.boot_evidence,
            vec![
                "legacy: the MBR holds GRUB's boot.img, which loads core.img at sector 1"
                    .to_owned(),
                format!(
                    "legacy: GRUB core.img ({n} sectors) in the gap after the MBR (sectors \
                     1..={n}, before partition 1)"
                ),
            ]
        );
        // The old DOS layout, a partition at sector 63: core.img runs into it.
        let path = mbr_disk(dir.path(), 63);
        install(&path, 1);
        let p = grub_problem(&path);
        assert!(
            p.contains(&format!("core.img (sectors 1..={n}) lies over partition 1"))
                && p.contains("linux-generic, sectors 63..="),
            "{p}"
        );
        assert_eq!(
            table(&path).grub.unwrap().core_location,
            Some(CoreLocation::Partition)
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn a_pointer_out_of_the_disk_is_a_problem_not_legacy() {
        let dir = tempfile::tempdir().unwrap();
        let path = gpt_disk(dir.path(), true);
        install(&path, 2048);
        let sectors = 40 * MIB / 512;
        for (lba, words) in [
            (sectors, "past the end of the disk (81920 sectors)"),
            (u64::MAX, "past the end of the disk"),
            (0, "the MBR itself"),
        ] {
            point(&path, lba);
            let p = grub_problem(&path);
            assert!(
                p.starts_with(&format!(
                    "GRUB's boot.img in the MBR loads core.img from sector {lba}, "
                )) && p.contains(words),
                "{lba}: {p}"
            );
            let g = table(&path).grub.unwrap();
            assert_eq!(
                (g.core_lba, g.core_sectors, g.core_location),
                (lba, None, None)
            );
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn a_wrong_block_list_is_a_problem_not_legacy() {
        let dir = tempfile::tempdir().unwrap();
        let path = gpt_disk(dir.path(), true);
        type Patch = fn(&mut [u8]);
        let cases: [(Patch, &str); 5] = [
            (
                |s| s[0x1f4..0x1fc].copy_from_slice(&2u64.to_le_bytes()),
                "its block list starts at sector 2, not at 2049",
            ),
            (
                |s| s[0x1fe..0x200].copy_from_slice(&0x800u16.to_le_bytes()),
                "loads to segment 0x0800, not 0x0820",
            ),
            (|s| s[0x1fc..0x1fe].fill(0), "reads no sectors"),
            (
                |s| s[0x1f0..0x1f2].copy_from_slice(&7u16.to_le_bytes()),
                "goes on in a second entry (7 more sectors)",
            ),
            (|s| s.fill(0), "starts at sector 0, not at 2049"),
        ];
        for (patch, words) in cases {
            install(&path, 2048);
            let mut first = read_at(&path, 2048 * 512, 512);
            patch(&mut first);
            write_at(&path, 2048 * 512, &first);
            let p = grub_problem(&path);
            assert!(
                p.starts_with(
                    "GRUB's boot.img in the MBR loads core.img from sector 2048, which is not \
                     GRUB's diskboot.img: "
                ) && p.contains(words),
                "{words}: {p}"
            );
        }
        // A block list that ends exactly at the end of the disk is fine (an MBR disk without
        // partitions, the core at its end).
        let path = dir.path().join("bare.raw");
        std::fs::File::create(&path).unwrap().set_len(MIB).unwrap();
        let mut mbr = [0u8; 512];
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        write_at(&path, 0, &mbr);
        let at = 2048 - core_sectors();
        install(&path, at);
        let g = table(&path).grub.unwrap();
        assert_eq!(g.core_location, Some(CoreLocation::MbrGap), "{g:?}");
        assert!(legacy(&path));
        let s = summary(&path);
        assert_eq!(
            s.boot_evidence[1],
            format!(
                "legacy: GRUB core.img ({} sectors) in the gap after the MBR (sectors {at}..=2047)",
                core_sectors()
            )
        );
        // One sector more, and it runs past the end.
        let count = u16::try_from(core_sectors()).unwrap();
        write_at(&path, at * 512 + 0x1fc, &count.to_le_bytes());
        let p = grub_problem(&path);
        assert!(
            p.contains(&format!(
                "its block list reads {count} sectors from sector {}, past the end of the disk \
                 (2048 sectors)",
                at + 1
            )),
            "{p}"
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn core_img_over_a_file_system_or_outside_every_partition_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = gpt_disk(dir.path(), true);
        // Partition 2, the ESP, starts at 4096.
        install(&path, 4096);
        let p = grub_problem(&path);
        assert!(
            p.contains("lies over partition 2 (esp, sectors 4096..="),
            "{p}"
        );
        let g = table(&path).grub.unwrap();
        assert_eq!(
            (g.core_location, g.core_partition),
            (Some(CoreLocation::Partition), Some(2))
        );
        // Running past the end of the BIOS boot partition (2048..=4095) into the ESP.
        install(&path, 4090);
        let p = grub_problem(&path);
        assert!(
            p.contains("runs past BIOS boot partition 1 (sectors 2048..=4095)"),
            "{p}"
        );
        // Between the GPT's entries and the first partition.
        install(&path, 100);
        let p = grub_problem(&path);
        assert!(
            p.contains("lies outside every partition: on a GPT disk"),
            "{p}"
        );
        assert_eq!(
            table(&path).grub.unwrap().core_location,
            Some(CoreLocation::Unpartitioned)
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn a_bios_boot_partition_without_mbr_boot_code_is_not_legacy() {
        let dir = tempfile::tempdir().unwrap();
        let path = gpt_disk(dir.path(), true);
        install(&path, 2048);
        // The protective MBR again, without boot code.
        write_at(&path, 0, &[0u8; 440]);
        let t = table(&path);
        assert!(!t.mbr_boot_code && t.grub.is_none());
        let line = "partition 1 is a BIOS boot partition, but the MBR holds no boot code: BIOS \
                    firmware has nothing to run";
        assert_eq!(t.problems, vec![line.to_owned()]);
        let s = summary(&path);
        assert!(
            s.boot_modes.is_empty() && s.boot_evidence.is_empty(),
            "{s:?}"
        );
        assert_eq!(s.legacy_problems, vec![line.to_owned()]);
        // Summary problems are about the architecture: untouched.
        assert!(s.problems.is_empty(), "{s:?}");
        // Without a BIOS boot partition, nothing is said.
        let path = gpt_disk(dir.path(), false);
        assert!(table(&path).problems.is_empty());
        assert!(summary(&path).legacy_problems.is_empty());
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn other_boot_code_is_legacy_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = mbr_disk(dir.path(), 2048);
        // A jump like boot.img's, then other code (syslinux, Windows, anything).
        let mut code = [0u8; 440];
        code[..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
        for (i, b) in code[3..].iter_mut().enumerate() {
            *b = (i * 7 + 1) as u8;
        }
        write_at(&path, 0, &code);
        let t = table(&path);
        assert!(t.mbr_boot_code && t.grub.is_none());
        let s = summary(&path);
        assert_eq!(s.boot_modes, vec![BootMode::Legacy]);
        assert_eq!(s.boot_evidence, vec!["legacy: the MBR holds boot code"]);
        // boot.img without its messages is not GRUB's as far as mkomi can tell: other code.
        install(&path, 1);
        let mut mbr = read_at(&path, 0, 512);
        let at = mbr.windows(5).position(|w| w == b"GRUB ").unwrap();
        mbr[at] = b'L';
        write_at(&path, 0, &mbr);
        assert!(table(&path).grub.is_none());
        assert_eq!(
            summary(&path).boot_evidence,
            vec!["legacy: the MBR holds boot code"]
        );
    }
}
