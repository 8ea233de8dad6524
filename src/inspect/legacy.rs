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
                let last = g.core_lba.saturating_add(n - 1);
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
