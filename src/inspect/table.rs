//! Reading the partition table of a disk: GPT (UEFI 2.10 §5.3), MBR (§5.2.1), protective
//! (§5.2.3) and hybrid MBRs.
//!
//! The disk is treated as hostile: every field is checked before it is used, nothing is
//! allocated from a size the disk claims before that size is bounded, and [`read`] never fails as
//! a whole. What it finds goes in a [`PartitionTable`], what is wrong in its `problems`, one line
//! each, so that a report can still print the rest.

use std::fmt::Display;

use serde::Serialize;

use super::legacy::{self, Grub};
use crate::format::Disk;
use crate::ondisk::gpt::{self as codec, Entry, Guid, Header, PartitionType};

/// The logical sector size assumed unless a GPT header is found at 4096 bytes instead.
const SECTOR: u64 = 512;
/// The other logical sector size probed for (4Kn disks).
const SECTOR_4K: u64 = 4096;
/// Bytes of legacy boot code at the start of an MBR (UEFI 2.10 Table 5.1).
const BOOT_CODE_LEN: usize = 440;
/// Offset of the four MBR partition records.
const MBR_RECORDS: usize = 446;
/// The GPT protective partition type (UEFI 2.10 §5.2.3).
const PROTECTIVE_TYPE: u8 = 0xee;
/// `Revision` of every GPT header so far (1.0).
const GPT_REVISION: u32 = codec::REVISION;
/// Smallest `HeaderSize` (UEFI 2.10 §5.3.2).
const MIN_HEADER_SIZE: u32 = codec::HEADER_SIZE;
/// Largest `NumberOfPartitionEntries` accepted.
const MAX_ENTRIES: u32 = 1024;
/// Largest `SizeOfPartitionEntry` accepted.
const MAX_ENTRY_SIZE: u32 = 1024;
/// Largest partition entry array read, in bytes.
const MAX_ARRAY_BYTES: u64 = 128 << 10;
/// At most this many problem lines are kept; the rest are counted.
const MAX_PROBLEMS: usize = 100;

/// The partitioning scheme of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// A GUID partition table (normally behind a protective MBR).
    Gpt,
    /// A legacy MBR partition table without a GPT.
    Mbr,
    /// A GPT whose MBR also lists some partitions next to its 0xEE entry.
    Hybrid,
    /// No partition table found.
    None,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Partition number, from 1: the GPT entry index, or the MBR record (1 to 4).
    pub index: u32,
    /// GPT `PartitionTypeGUID`; all zeros for an MBR partition.
    pub type_guid: Guid,
    /// The type's name: our [`PartitionType`] names for GPT (else `unknown`); for MBR, a short
    /// name of the type byte (`linux-generic`, `esp`, `extended`, …, else `unknown`).
    pub type_name: String,
    /// GPT `UniquePartitionGUID`; `None` for an MBR partition.
    pub unique_guid: Option<Guid>,
    /// The MBR partition type byte: for MBR partitions, and for GPT partitions a hybrid MBR
    /// also lists.
    pub mbr_type: Option<u8>,
    /// First sector (GPT `StartingLBA`, MBR starting LBA).
    pub first_lba: u64,
    /// Last sector, inclusive (GPT `EndingLBA`).
    pub last_lba: u64,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes; 0 when the table's end comes before its start.
    pub size: u64,
    /// GPT `PartitionName` (UTF-16LE up to the first NUL, invalid units replaced); empty for MBR.
    pub name: String,
    /// GPT `Attributes`; 0 for MBR.
    pub attributes: u64,
    /// Legacy-bootable: GPT attribute bit 2, or the MBR boot indicator 0x80.
    pub bootable: bool,
}

/// What [`read`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionTable {
    /// The partitioning scheme.
    pub scheme: Scheme,
    /// The logical sector size the table was read with (512, or 4096 for a 4Kn GPT).
    pub sector_size: u64,
    /// GPT `DiskGUID`.
    pub disk_guid: Option<Guid>,
    /// The partitions, in table order.
    pub partitions: Vec<Partition>,
    /// Whether LBA 0 ends in 0x55AA and its first 440 bytes hold anything but zeros (legacy boot
    /// code).
    pub mbr_boot_code: bool,
    /// GRUB's `boot.img` in the MBR and the `core.img` it loads; `None` when the MBR holds no
    /// `boot.img`.
    pub grub: Option<Grub>,
    /// What is wrong or suspicious, one line each.
    pub problems: Vec<String>,
}

/// Problem lines, capped at [`MAX_PROBLEMS`].
#[derive(Default)]
struct Problems {
    lines: Vec<String>,
    dropped: usize,
}

impl Problems {
    fn push(&mut self, line: impl Into<String>) {
        if self.lines.len() < MAX_PROBLEMS {
            self.lines.push(line.into());
        } else {
            self.dropped += 1;
        }
    }

    fn extend(&mut self, other: Problems) {
        for line in other.lines {
            self.push(line);
        }
        self.dropped += other.dropped;
    }

    fn finish(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.lines
                .push(format!("… and {} more problems not listed", self.dropped));
        }
        self.lines
    }
}

/// Whether LBA 0 is the boot sector of a FAT or NTFS file system (a bare file system image, or a
/// "superfloppy"), whose 0x55AA signature is not an MBR's.
fn volume_boot_record(lba0: &[u8]) -> bool {
    use super::signature::{FsKind, detect_bytes};
    matches!(
        detect_bytes(lba0),
        Some(FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 | FsKind::Ntfs)
    )
}

/// Reads the partition table of `source`. Never fails: problems, including read errors, are
/// listed in the result.
pub fn read(source: &dyn Disk) -> PartitionTable {
    let mut problems = Problems::default();
    let size = source.size();
    let mut table = PartitionTable {
        scheme: Scheme::None,
        sector_size: SECTOR,
        disk_guid: None,
        partitions: Vec::new(),
        mbr_boot_code: false,
        grub: None,
        problems: Vec::new(),
    };
    if size < SECTOR {
        problems.push(format!(
            "the disk is {size} bytes, smaller than one 512-byte sector: no partition table"
        ));
        table.problems = problems.finish();
        return table;
    }
    let Some(lba0) = read_bytes(source, 0, SECTOR, "LBA 0", &mut problems) else {
        table.problems = problems.finish();
        return table;
    };
    // BIOS firmware runs LBA 0 only when it ends in 0x55AA: without it, bytes there are no boot
    // code (a disk of noise, or a file system that keeps its first sector free).
    table.mbr_boot_code = lba0.get(510..512) == Some(&[0x55, 0xaa][..])
        && lba0.iter().take(BOOT_CODE_LEN).any(|&b| b != 0);

    let ss = sector_size(source, size);
    table.sector_size = ss;
    let sectors = size / ss;
    if source.format() == "qcow2" && !size.is_multiple_of(SECTOR) {
        // qemu drops a qcow2 disk's partial last sector: what a raw file would read as zeros is
        // data no VM sees (mkomi's own outputs are whole sectors).
        problems.push(format!(
            "the qcow2 virtual size {size} is not a multiple of 512 bytes: qemu reads only the \
             first {} bytes, and the last {} bytes are lost to every qemu-based reader",
            size - size % SECTOR,
            size % SECTOR
        ));
    } else if !size.is_multiple_of(ss) {
        problems.push(format!(
            "the disk size {size} is not a multiple of the {ss}-byte sector; the last {} bytes are ignored",
            size % ss
        ));
    }

    let mbr = parse_mbr(&lba0);
    let has_protective = mbr
        .as_ref()
        .is_some_and(|m| m.records.iter().any(|r| r.kind == PROTECTIVE_TYPE));
    let mut gpt_problems = Problems::default();
    let gpt = read_gpt(source, size, ss, &mut gpt_problems);

    match (gpt, mbr) {
        (GptResult::Found(gpt), mbr) => {
            let (real, protective): (Vec<&Record>, Vec<&Record>) = mbr
                .as_ref()
                .map(|m| m.records.iter().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .partition(|r| r.kind != PROTECTIVE_TYPE);
            problems.extend(gpt_problems);
            table.disk_guid = Some(gpt.disk_guid);
            table.partitions = gpt.partitions;
            match mbr {
                None => {
                    problems.push(
                        "a GPT is present but LBA 0 has no MBR signature 0x55AA (no protective MBR)",
                    );
                    table.scheme = Scheme::Gpt;
                }
                Some(_) if protective.is_empty() && !real.is_empty() => {
                    problems.push(
                        "a valid GPT is present but the MBR has no protective 0xEE entry: \
                         firmware and Linux will use the MBR (stale GPT?)",
                    );
                    table.scheme = Scheme::Mbr;
                    table.disk_guid = None;
                    table.partitions = real.iter().map(|r| r.partition(ss)).collect();
                    check_mbr(&table.partitions, &real, sectors, &mut problems);
                }
                Some(_) if protective.is_empty() => {
                    problems.push("a GPT is present but the MBR has no protective 0xEE entry");
                    table.scheme = Scheme::Gpt;
                }
                Some(_) => {
                    for p in &protective {
                        check_protective(p, sectors, real.is_empty(), &mut problems);
                    }
                    if real.is_empty() {
                        table.scheme = Scheme::Gpt;
                    } else {
                        table.scheme = Scheme::Hybrid;
                        merge_hybrid(&mut table.partitions, &real, ss, &mut problems);
                    }
                }
            }
        }
        (GptResult::Broken, mbr) | (GptResult::Absent, mbr @ Some(_)) if has_protective => {
            problems.extend(gpt_problems);
            problems.push(
                "the MBR announces a GPT (type 0xEE entry) but no valid GPT header was found",
            );
            let real: Vec<Record> = mbr
                .map(|m| m.records)
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.kind != PROTECTIVE_TYPE)
                .collect();
            if real.is_empty() {
                table.scheme = Scheme::Gpt;
            } else {
                table.scheme = Scheme::Hybrid;
                let refs: Vec<&Record> = real.iter().collect();
                table.partitions = real.iter().map(|r| r.partition(ss)).collect();
                check_mbr(&table.partitions, &refs, sectors, &mut problems);
            }
        }
        (GptResult::Absent, Some(_)) if volume_boot_record(&lba0) => {
            // A file system on the whole disk: its boot sector also ends in 0x55AA, and what
            // would be partition records is its boot code. Neither is a partition table, and
            // that boot code is the file system's, not a disk's.
            table.mbr_boot_code = false;
        }
        (gpt, Some(mbr)) => {
            if matches!(gpt, GptResult::Broken) {
                problems.extend(gpt_problems);
            }
            if let Some(flag) = mbr.bad_flag {
                problems.push(format!(
                    "LBA 0 ends with 0x55AA but a partition record has boot indicator 0x{flag:02x} \
                     (not 0x00 or 0x80): not an MBR (a file system boot sector?)"
                ));
            } else {
                table.scheme = Scheme::Mbr;
                let refs: Vec<&Record> = mbr.records.iter().collect();
                table.partitions = mbr.records.iter().map(|r| r.partition(ss)).collect();
                check_mbr(&table.partitions, &refs, sectors, &mut problems);
            }
        }
        (gpt, None) => {
            if matches!(gpt, GptResult::Broken) {
                problems.extend(gpt_problems);
            }
        }
    }
    table.grub = legacy::read(source, &lba0, &table);
    if !table.mbr_boot_code {
        // GRUB's core image there is only ever run by boot code in the MBR.
        for p in table
            .partitions
            .iter()
            .filter(|p| p.type_name == "bios-boot")
        {
            problems.push(legacy::no_boot_code(p.index));
        }
    }
    table.problems = problems.finish();
    table
}

/// Reads `len` bytes at `offset` if they lie inside the disk; otherwise, or on a read error,
/// records a problem about `what` and returns `None`.
fn read_bytes(
    source: &dyn Disk,
    offset: u64,
    len: u64,
    what: &str,
    problems: &mut Problems,
) -> Option<Vec<u8>> {
    let size = source.size();
    match offset.checked_add(len) {
        Some(end) if end <= size => {}
        _ => {
            problems.push(format!(
                "{what} (bytes {offset}..+{len}) lies past the end of the disk ({size} bytes)"
            ));
            return None;
        }
    }
    let n = usize::try_from(len).ok()?;
    let mut buf = vec![0u8; n];
    match source.read_at(offset, &mut buf) {
        Ok(()) => Some(buf),
        Err(e) => {
            problems.push(format!("cannot read {what}: {e}"));
            None
        }
    }
}

/// Whether the 8 bytes at `offset` are the GPT signature; read errors count as no.
fn has_signature(source: &dyn Disk, offset: u64) -> bool {
    let mut sig = [0u8; 8];
    offset
        .checked_add(8)
        .is_some_and(|end| end <= source.size())
        && source.read_at(offset, &mut sig).is_ok()
        && &sig == b"EFI PART"
}

/// 512, unless the GPT signature is found in LBA 1 or the last LBA of 4096-byte sectors only.
fn sector_size(source: &dyn Disk, size: u64) -> u64 {
    let at = |ss: u64| [ss, (size / ss).saturating_sub(1).saturating_mul(ss)];
    if at(SECTOR).into_iter().any(|o| has_signature(source, o)) {
        return SECTOR;
    }
    if size >= 2 * SECTOR_4K && at(SECTOR_4K).into_iter().any(|o| has_signature(source, o)) {
        return SECTOR_4K;
    }
    SECTOR
}

/// Little-endian integers at a fixed offset; `0` if out of range (never, for the callers'
/// constant offsets inside buffers of known length).
fn le32(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

// ---------------------------------------------------------------------------------------------
// MBR

/// One non-empty MBR partition record.
#[derive(Debug, Clone)]
struct Record {
    /// 1 to 4.
    index: u32,
    boot: u8,
    kind: u8,
    start: u64,
    sectors: u64,
}

impl Record {
    fn partition(&self, ss: u64) -> Partition {
        Partition {
            index: self.index,
            type_guid: Guid::default(),
            type_name: mbr_type_name(self.kind).to_string(),
            unique_guid: None,
            mbr_type: Some(self.kind),
            first_lba: self.start,
            last_lba: (self.start + self.sectors).saturating_sub(1),
            offset: self.start.saturating_mul(ss),
            size: self.sectors.saturating_mul(ss),
            name: String::new(),
            attributes: 0,
            bootable: self.boot == 0x80,
        }
    }
}

/// An MBR: LBA 0 with the 0x55AA signature.
struct Mbr {
    /// The non-empty records (type byte not 0).
    records: Vec<Record>,
    /// A boot indicator other than 0x00 and 0x80, if any: then this is no MBR.
    bad_flag: Option<u8>,
}

fn parse_mbr(lba0: &[u8]) -> Option<Mbr> {
    if lba0.get(510..512) != Some(&[0x55, 0xaa][..]) {
        return None;
    }
    let mut records = Vec::new();
    let mut bad_flag = None;
    for i in 0..4u32 {
        let Some(r) = lba0.get(MBR_RECORDS + 16 * i as usize..MBR_RECORDS + 16 * (i as usize + 1))
        else {
            continue;
        };
        let boot = r.first().copied().unwrap_or(0);
        let kind = r.get(4).copied().unwrap_or(0);
        if boot != 0 && boot != 0x80 {
            bad_flag.get_or_insert(boot);
        }
        if kind == 0 {
            continue;
        }
        records.push(Record {
            index: i + 1,
            boot,
            kind,
            start: u64::from(le32(r, 8)),
            sectors: u64::from(le32(r, 12)),
        });
    }
    Some(Mbr { records, bad_flag })
}

/// Partition types that inspect names but templates never write: Microsoft's, as Windows
/// lays out a disk ("Windows and GPT FAQ" and the UEFI/GPT-based hard drive partitions page of
/// Microsoft's documentation; the LDM pair from the same table), textual GUID order.
const MICROSOFT_GPT_TYPES: [(u128, &str); 5] = [
    (0xe3c9e316_0b5c_4db8_817d_f92df00215ae, "microsoft-reserved"),
    (
        0xebd0a0a2_b9e5_4433_87c0_68b6b72699c7,
        "microsoft-basic-data",
    ),
    (0xde94bba4_06d1_4d40_a16a_bfd50179d6ac, "windows-recovery"),
    (
        0x5808c8aa_7e8f_42e0_85d2_e1e90434cfb3,
        "windows-ldm-metadata",
    ),
    (0xaf9b60a0_1431_4f62_bc68_3311714a69ad, "windows-ldm-data"),
];

/// A short name for a GPT partition type: ours (the names templates use), then Microsoft's,
/// else `unknown`.
fn gpt_type_name(guid: Guid) -> &'static str {
    if let Some(t) = PartitionType::from_guid(guid) {
        return t.name();
    }
    MICROSOFT_GPT_TYPES
        .iter()
        .find(|(g, _)| Guid(g.to_be_bytes()) == guid)
        .map_or("unknown", |(_, name)| name)
}

/// A short name for an MBR partition type byte; our GPT type names where they mean the same.
fn mbr_type_name(kind: u8) -> &'static str {
    match kind {
        // A hidden NTFS partition holding Windows RE (WinRE), as Windows Setup makes on MBR
        // disks; 0x42 marks a dynamic (LDM) disk's partitions.
        0x27 => "windows-recovery",
        0x42 => "windows-ldm",
        0x01 => "fat12",
        0x04 | 0x06 | 0x0e => "fat16",
        0x05 | 0x0f | 0x85 => "extended",
        0x07 => "ntfs-exfat",
        0x0b | 0x0c => "fat32",
        0x82 => "swap",
        0x83 => "linux-generic",
        0x8e => "linux-lvm",
        0xa5 | 0xa6 | 0xa9 => "bsd",
        0xee => "gpt-protective",
        0xef => "esp",
        0xfd => "linux-raid",
        _ => "unknown",
    }
}

/// Checks MBR partitions (`parts[i]` made from `records[i]`): extended containers, extents,
/// overlaps.
fn check_mbr(parts: &[Partition], records: &[&Record], sectors: u64, problems: &mut Problems) {
    for r in records {
        if mbr_type_name(r.kind) == "extended" {
            problems.push(format!(
                "MBR partition {} is an extended partition (type 0x{:02x}): logical partitions not listed",
                r.index, r.kind
            ));
        }
        if r.sectors == 0 {
            problems.push(format!("MBR partition {} has a size of 0 sectors", r.index));
        }
        if r.start == 0 {
            problems.push(format!(
                "MBR partition {} starts at LBA 0, over the MBR itself",
                r.index
            ));
        }
        let end = r.start + r.sectors;
        if end > sectors {
            problems.push(format!(
                "MBR partition {} ends at LBA {}, past the end of the disk (last LBA {})",
                r.index,
                end.saturating_sub(1),
                sectors.saturating_sub(1)
            ));
        }
    }
    check_overlaps(parts, "MBR partition", problems);
}

/// Checks a protective 0xEE record against the disk (UEFI 2.10 §5.2.3).
/// A hybrid MBR's 0xEE entry covers only part of the disk, so `whole` says whether to check
/// that it covers it all.
fn check_protective(r: &Record, sectors: u64, whole: bool, problems: &mut Problems) {
    if r.start != 1 {
        problems.push(format!(
            "the protective MBR entry starts at LBA {}, not 1",
            r.start
        ));
    }
    let expected = sectors.saturating_sub(1).min(u64::from(u32::MAX));
    if whole && r.sectors != expected {
        problems.push(format!(
            "the protective MBR entry covers {} sectors, expected {expected} (the whole disk after LBA 0)",
            r.sectors
        ));
    }
}

/// Marks the GPT partitions a hybrid MBR also lists; reports MBR entries that match none.
fn merge_hybrid(parts: &mut [Partition], real: &[&Record], ss: u64, problems: &mut Problems) {
    for r in real {
        let last = (r.start + r.sectors).saturating_sub(1);
        match parts
            .iter_mut()
            .find(|p| p.first_lba == r.start && p.last_lba == last)
        {
            Some(p) => {
                p.mbr_type = Some(r.kind);
                p.bootable |= r.boot == 0x80;
            }
            None => problems.push(format!(
                "hybrid MBR partition {} (type 0x{:02x}, LBA {}..={last}, {} bytes) matches no GPT partition",
                r.index,
                r.kind,
                r.start,
                r.sectors.saturating_mul(ss)
            )),
        }
    }
}

/// Reports every overlapping pair of non-empty partitions, naming both.
fn check_overlaps(parts: &[Partition], what: &str, problems: &mut Problems) {
    let mut spans: Vec<&Partition> = parts.iter().filter(|p| p.first_lba <= p.last_lba).collect();
    spans.sort_by_key(|p| (p.first_lba, p.last_lba));
    for (i, a) in spans.iter().enumerate() {
        for b in spans.iter().skip(i + 1) {
            if b.first_lba > a.last_lba {
                break;
            }
            problems.push(format!(
                "{what}s {} (LBA {}..={}) and {} (LBA {}..={}) overlap",
                a.index, a.first_lba, a.last_lba, b.index, b.first_lba, b.last_lba
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GPT

/// A usable GPT.
struct Gpt {
    disk_guid: Guid,
    partitions: Vec<Partition>,
}

enum GptResult {
    /// A GPT whose partitions could be listed.
    Found(Gpt),
    /// A GPT signature was seen but no copy could be used.
    Broken,
    /// No GPT signature where one would be.
    Absent,
}

/// The largest backup header LBA taken as the end of a disk that was cut short: 2^40 sectors
/// (512 TiB of 512-byte sectors), beyond any disk mkomi registers.
const MAX_CUT_LBA: u64 = 1 << 40;

/// Reads and checks the header in `lba`; `Err` with the first fatal problem.
fn read_header(
    source: &dyn Disk,
    size: u64,
    ss: u64,
    lba: u64,
    which: &str,
    problems: &mut Problems,
) -> Result<Header, String> {
    let sectors = size / ss;
    if lba >= sectors {
        return Err(format!(
            "{which} GPT header: LBA {lba} is past the end of the disk (last LBA {})",
            sectors.saturating_sub(1)
        ));
    }
    let mut local = Problems::default();
    let Some(buf) = read_bytes(source, lba * ss, ss, "GPT header", &mut local) else {
        let line = local.lines.into_iter().next().unwrap_or_default();
        return Err(format!("{which} GPT header at LBA {lba}: {line}"));
    };
    let Some(h) = Header::decode(&buf) else {
        return Err(format!(
            "{which} GPT header at LBA {lba}: bad signature (expected \"EFI PART\")"
        ));
    };
    let revision = h.revision;
    if revision != GPT_REVISION {
        problems.push(format!(
            "{which} GPT header: revision 0x{revision:08x}, expected 0x{GPT_REVISION:08x}"
        ));
    }
    let header_size = h.header_size;
    let max_header = u32::try_from(ss).unwrap_or(u32::MAX);
    // `computed_crc` is `None` for a size outside the header's 92 bytes and the sector read.
    let computed = h
        .computed_crc(&buf)
        .filter(|_| (MIN_HEADER_SIZE..=max_header).contains(&header_size));
    let Some(computed) = computed else {
        return Err(format!(
            "{which} GPT header: header size {header_size} outside {MIN_HEADER_SIZE}..={max_header}"
        ));
    };
    let stored = h.header_crc;
    if stored != computed {
        return Err(format!(
            "{which} GPT header: bad header CRC32 (stored 0x{stored:08x}, computed 0x{computed:08x})"
        ));
    }
    if h.my_lba != lba {
        return Err(format!(
            "{which} GPT header: my_lba is {}, but the header is at LBA {lba}",
            h.my_lba
        ));
    }
    let last = sectors.saturating_sub(1);
    // A primary header that describes a larger disk, consistently (its backup in the last LBA
    // of that disk, past the usable range): this disk was cut short, a truncated copy. Its
    // partitions are still listed, so what lies in the part that is left is still read.
    let cut_short = lba == 1
        && h.first_usable <= h.last_usable
        && h.last_usable > last
        && h.last_usable < h.alternate_lba
        && h.alternate_lba <= MAX_CUT_LBA;
    if cut_short {
        let claimed = h.alternate_lba.saturating_add(1).saturating_mul(ss);
        problems.push(format!(
            "the disk is short: the primary GPT header describes a disk of {} ({claimed} bytes, \
             backup header at LBA {}), but this one has {} ({size} bytes); its last {} are \
             missing (a truncated copy?)",
            super::human_size(claimed),
            h.alternate_lba,
            super::human_size(size),
            super::human_size(claimed.saturating_sub(size))
        ));
    } else if h.first_usable > h.last_usable || h.last_usable > last {
        return Err(format!(
            "{which} GPT header: usable range LBA {}..={} is not inside the disk (last LBA {last})",
            h.first_usable, h.last_usable
        ));
    }
    if h.entry_count > MAX_ENTRIES {
        return Err(format!(
            "{which} GPT header: {} partition entries, more than the {MAX_ENTRIES} accepted",
            h.entry_count
        ));
    }
    if !(128..=MAX_ENTRY_SIZE).contains(&h.entry_size) || !h.entry_size.is_multiple_of(8) {
        return Err(format!(
            "{which} GPT header: partition entry size {} is not a multiple of 8 in 128..={MAX_ENTRY_SIZE}",
            h.entry_size
        ));
    }
    if h.array_len() > MAX_ARRAY_BYTES {
        return Err(format!(
            "{which} GPT header: partition entry array of {} bytes, more than the {MAX_ARRAY_BYTES} accepted",
            h.array_len()
        ));
    }
    let array_sectors = h.array_len().div_ceil(ss);
    let array_end = h.entries_lba.saturating_add(array_sectors);
    if h.entries_lba > last || array_end > sectors {
        return Err(format!(
            "{which} GPT header: partition entry array at LBA {} ({} sectors) lies past the end of the disk (last LBA {last})",
            h.entries_lba, array_sectors
        ));
    }
    if h.entries_lba <= lba && array_end > lba {
        return Err(format!(
            "{which} GPT header: partition entry array at LBA {} overlaps the header",
            h.entries_lba
        ));
    }
    if h.entries_lba <= h.last_usable && array_end > h.first_usable {
        problems.push(format!(
            "{which} GPT header: partition entry array LBA {}..{} overlaps the usable range LBA {}..={}",
            h.entries_lba, array_end, h.first_usable, h.last_usable
        ));
    }
    if h.first_usable <= 1 || (h.last_usable >= last && last > 0 && !cut_short) {
        problems.push(format!(
            "{which} GPT header: usable range LBA {}..={} covers a GPT header",
            h.first_usable, h.last_usable
        ));
    }
    Ok(h)
}

/// Reads the entry array of `h` and checks its CRC32: `Ok` when it matches, `Err((bytes,
/// problem))` when it does not (the bytes still usable for a listing), `Err((empty, problem))`
/// when it cannot be read.
fn read_entries(
    source: &dyn Disk,
    ss: u64,
    h: &Header,
    which: &str,
) -> Result<Vec<u8>, (Vec<u8>, String)> {
    let mut local = Problems::default();
    let what = format!("{which} GPT partition entry array");
    let Some(buf) = read_bytes(
        source,
        h.entries_lba.saturating_mul(ss),
        h.array_len(),
        &what,
        &mut local,
    ) else {
        return Err((
            Vec::new(),
            local.lines.into_iter().next().unwrap_or_default(),
        ));
    };
    let computed = codec::crc32(&buf);
    if computed != h.entries_crc {
        return Err((
            buf,
            format!(
                "{what}: bad CRC32 (header says 0x{:08x}, computed 0x{computed:08x})",
                h.entries_crc
            ),
        ));
    }
    Ok(buf)
}

/// One GPT copy: its header and, when readable, its entry array and whether its CRC matched.
struct GptCopy {
    header: Header,
    entries: Vec<u8>,
    entries_ok: bool,
}

fn read_copy(
    source: &dyn Disk,
    size: u64,
    ss: u64,
    lba: u64,
    which: &str,
    problems: &mut Problems,
) -> Result<GptCopy, String> {
    let header = read_header(source, size, ss, lba, which, problems)?;
    match read_entries(source, ss, &header, which) {
        Ok(entries) => Ok(GptCopy {
            header,
            entries,
            entries_ok: true,
        }),
        Err((entries, problem)) => {
            problems.push(problem);
            Ok(GptCopy {
                header,
                entries,
                entries_ok: false,
            })
        }
    }
}

fn read_gpt(source: &dyn Disk, size: u64, ss: u64, problems: &mut Problems) -> GptResult {
    let sectors = size / ss;
    let last = sectors.saturating_sub(1);
    let mut seen = false;
    let primary = if sectors >= 2 {
        seen |= has_signature(source, ss);
        read_copy(source, size, ss, 1, "primary", problems)
    } else {
        Err("primary GPT header: the disk is too small to hold one".to_string())
    };

    // The backup: where the primary says, else in the last LBA.
    let mut candidates = Vec::new();
    if let Ok(p) = &primary {
        if p.header.alternate_lba != last {
            problems.push(format!(
                "primary GPT header: alternate_lba is {}, not the last LBA {last} (disk resized?)",
                p.header.alternate_lba
            ));
        }
        if p.header.alternate_lba > 1 && p.header.alternate_lba < sectors {
            candidates.push(p.header.alternate_lba);
        }
    }
    if last > 1 && !candidates.contains(&last) {
        candidates.push(last);
    }
    let mut backup = Err("backup GPT header: the disk is too small to hold one".to_string());
    for lba in candidates {
        seen |= has_signature(source, lba.saturating_mul(ss));
        backup = read_copy(source, size, ss, lba, "backup", problems);
        if backup.is_ok() {
            break;
        }
    }

    if !seen {
        return GptResult::Absent;
    }
    if let Err(e) = &primary {
        problems.push(e.clone());
    }
    if let Err(e) = &backup {
        problems.push(e.clone());
    }
    let chosen = match (&primary, &backup) {
        (Ok(p), Ok(b)) => {
            compare(&p.header, &b.header, problems);
            if p.entries_ok {
                if b.entries_ok && p.entries != b.entries {
                    problems
                        .push("the primary and backup partition entry arrays differ".to_string());
                }
                p
            } else if b.entries_ok {
                problems.push(format!(
                    "using the backup GPT at LBA {} (its entries are intact)",
                    b.header.my_lba
                ));
                b
            } else {
                problems.push(
                    "no GPT copy has intact entries: listing the primary's entries anyway"
                        .to_string(),
                );
                p
            }
        }
        (Ok(p), Err(_)) => {
            if !p.entries_ok {
                problems.push(
                    "no GPT copy has intact entries: listing the primary's entries anyway"
                        .to_string(),
                );
            }
            p
        }
        (Err(_), Ok(b)) => {
            problems.push(format!(
                "using the backup GPT header at LBA {}",
                b.header.my_lba
            ));
            if !b.entries_ok {
                problems.push(
                    "no GPT copy has intact entries: listing the backup's entries anyway"
                        .to_string(),
                );
            }
            b
        }
        (Err(_), Err(_)) => return GptResult::Broken,
    };
    let partitions = parse_entries(chosen, ss, sectors, problems);
    GptResult::Found(Gpt {
        disk_guid: chosen.header.disk_guid,
        partitions,
    })
}

/// Reports where a valid primary and backup header disagree.
fn compare(p: &Header, b: &Header, problems: &mut Problems) {
    let mut differ = |what: &str, a: &dyn Display, c: &dyn Display| {
        problems.push(format!(
            "primary and backup GPT headers disagree on {what}: {a} vs {c}"
        ));
    };
    if p.disk_guid != b.disk_guid {
        differ("the disk GUID", &p.disk_guid, &b.disk_guid);
    }
    if p.first_usable != b.first_usable {
        differ("the first usable LBA", &p.first_usable, &b.first_usable);
    }
    if p.last_usable != b.last_usable {
        differ("the last usable LBA", &p.last_usable, &b.last_usable);
    }
    if p.entry_count != b.entry_count {
        differ("the number of entries", &p.entry_count, &b.entry_count);
    }
    if p.entry_size != b.entry_size {
        differ("the entry size", &p.entry_size, &b.entry_size);
    }
    if p.entries_crc != b.entries_crc {
        differ(
            "the entry array CRC32",
            &format_args!("0x{:08x}", p.entries_crc),
            &format_args!("0x{:08x}", b.entries_crc),
        );
    }
    if b.alternate_lba != p.my_lba {
        problems.push(format!(
            "backup GPT header: alternate_lba is {}, not the primary's LBA {}",
            b.alternate_lba, p.my_lba
        ));
    }
}

/// Lists the used entries of a GPT copy and checks them.
fn parse_entries(copy: &GptCopy, ss: u64, sectors: u64, problems: &mut Problems) -> Vec<Partition> {
    let h = &copy.header;
    let mut parts = Vec::new();
    let step = h.entry_size as usize;
    for (i, entry) in copy.entries.chunks_exact(step).enumerate() {
        if Entry::is_unused(entry) {
            continue;
        }
        let index = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let Entry {
            type_guid,
            unique_guid,
            first_lba: first,
            last_lba: last,
            attributes,
            name,
        } = Entry::decode(entry);
        let type_name = gpt_type_name(type_guid).to_string();
        let size = if first <= last {
            (last - first).saturating_add(1).saturating_mul(ss)
        } else {
            problems.push(format!(
                "GPT partition {index}: first LBA {first} is after last LBA {last}"
            ));
            0
        };
        let disk_last = sectors.saturating_sub(1);
        if last > disk_last || first > disk_last {
            problems.push(format!(
                "GPT partition {index} (LBA {first}..={last}) goes past the end of the disk (last LBA {disk_last})"
            ));
        } else if first < h.first_usable || last > h.last_usable {
            problems.push(format!(
                "GPT partition {index} (LBA {first}..={last}) lies outside the usable range LBA {}..={}",
                h.first_usable, h.last_usable
            ));
        }
        if unique_guid == Guid::default() {
            problems.push(format!("GPT partition {index} has a zero unique GUID"));
        }
        if let Some(other) = parts
            .iter()
            .find(|p: &&Partition| p.unique_guid == Some(unique_guid))
        {
            problems.push(format!(
                "GPT partitions {} and {index} have the same unique GUID {unique_guid}",
                other.index
            ));
        }
        parts.push(Partition {
            index,
            type_guid,
            type_name,
            unique_guid: Some(unique_guid),
            mbr_type: None,
            first_lba: first,
            last_lba: last,
            offset: first.saturating_mul(ss),
            size,
            name,
            attributes,
            bootable: attributes & (1 << 2) != 0,
        });
    }
    check_overlaps(&parts, "GPT partition", problems);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::raw;
    use crate::layout::gpt::{self, PartitionRequest, Table};
    use std::fs::{File, OpenOptions};
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    fn req(kind: PartitionType, label: &str, size: Option<u64>) -> PartitionRequest {
        PartitionRequest::new(kind, label, size)
    }

    fn planned() -> Table {
        let mut reqs = vec![
            req(PartitionType::Esp, "esp", Some(8 * MIB)),
            req(PartitionType::RootX86_64, "root ünïcode", Some(16 * MIB)),
            req(PartitionType::LinuxGeneric, "data", None),
        ];
        reqs[0].attributes = (1 << 63) | (1 << 2);
        gpt::plan(64 * MIB, &reqs, b"inspect-test").unwrap()
    }

    fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
        let mut f = File::open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    fn blank(dir: &tempfile::TempDir, size: u64) -> PathBuf {
        let path = dir.path().join("disk.raw");
        File::create(&path).unwrap().set_len(size).unwrap();
        path
    }

    fn write_table(dir: &tempfile::TempDir, table: &Table) -> PathBuf {
        let path = blank(dir, table.disk_size);
        write_at(&path, 0, &table.primary());
        let (offset, bytes) = table.backup();
        write_at(&path, offset, &bytes);
        path
    }

    fn inspect(path: &Path) -> PartitionTable {
        let source = raw::open_path(path).unwrap();
        let t = read(source.as_ref());
        // Whatever was found serializes.
        serde_json::to_string(&t).unwrap();
        t
    }

    fn has(t: &PartitionTable, words: &[&str]) -> bool {
        t.problems
            .iter()
            .any(|p| words.iter().all(|w| p.contains(w)))
    }

    /// Changes a header sector (512 bytes) with `f` and recomputes its CRC.
    fn patch_header(path: &Path, lba: u64, f: impl Fn(&mut [u8])) {
        let mut h = read_at(path, lba * 512, 512);
        f(&mut h);
        h[16..20].fill(0);
        let crc = codec::crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        write_at(path, lba * 512, &h);
    }

    fn check_planned(t: &PartitionTable, table: &Table) {
        assert_eq!(t.disk_guid, Some(table.disk_guid));
        assert_eq!(t.partitions.len(), table.partitions.len());
        for (i, (got, want)) in t.partitions.iter().zip(&table.partitions).enumerate() {
            assert_eq!(got.index as usize, i + 1);
            assert_eq!(got.type_guid, want.kind.guid());
            assert_eq!(got.type_name, want.kind.name());
            assert_eq!(got.unique_guid, Some(want.unique_guid));
            if t.scheme != Scheme::Hybrid {
                assert_eq!(got.mbr_type, None);
                assert_eq!(got.bootable, want.attributes & 4 != 0);
            }
            assert_eq!(got.first_lba, want.first_lba);
            assert_eq!(got.last_lba, want.last_lba);
            assert_eq!(got.offset, want.offset());
            assert_eq!(got.size, want.len());
            assert_eq!(got.name, want.label);
            assert_eq!(got.attributes, want.attributes);
        }
    }

    #[test]
    fn our_gpt_writer_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let table = planned();
        let t = inspect(&write_table(&dir, &table));
        assert_eq!(t.scheme, Scheme::Gpt);
        assert_eq!(t.sector_size, 512);
        assert!(!t.mbr_boot_code);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        check_planned(&t, &table);
        assert!(t.partitions[0].bootable);
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["scheme"], "gpt");
        assert_eq!(
            json["partitions"][0]["type_guid"],
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
    }

    fn sgdisk(args: &[&str], path: &Path) {
        let out = Command::new("sgdisk")
            .args(args)
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sgdisk {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    const DISK: &str = "11111111-2222-3333-4444-555555555555";
    const U1: &str = "aaaaaaaa-bbbb-cccc-dddd-000000000001";
    const U2: &str = "aaaaaaaa-bbbb-cccc-dddd-000000000002";

    fn sgdisk_disk(dir: &tempfile::TempDir) -> PathBuf {
        let path = blank(dir, 32 * MIB);
        sgdisk(
            &[
                "-o",
                "-U",
                DISK,
                "-n",
                "1:2048:+4M",
                "-t",
                "1:ef00",
                "-c",
                "1:EFI system",
                "-u",
                &format!("1:{U1}"),
                "-A",
                "1:set:2",
                "-n",
                "2:0:0",
                "-t",
                "2:8300",
                "-c",
                "2:root",
                "-u",
                &format!("2:{U2}"),
            ],
            &path,
        );
        path
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn sgdisk_disk_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let t = inspect(&sgdisk_disk(&dir));
        assert_eq!(t.scheme, Scheme::Gpt);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.disk_guid, Guid::parse(DISK));
        let [p1, p2] = &t.partitions[..] else {
            panic!("{t:?}")
        };
        assert_eq!((p1.index, p2.index), (1, 2));
        assert_eq!(p1.type_name, "esp");
        assert_eq!(p1.unique_guid, Guid::parse(U1));
        assert_eq!(p1.name, "EFI system");
        assert_eq!((p1.offset, p1.size), (MIB, 4 * MIB));
        assert!(p1.bootable);
        assert_eq!(p1.attributes, 4);
        assert_eq!(p2.type_name, "linux-generic");
        assert_eq!(p2.unique_guid, Guid::parse(U2));
        assert_eq!(p2.name, "root");
        assert_eq!(p2.offset, 5 * MIB);
        // sgdisk ends the last partition at the last usable LBA.
        assert_eq!(p2.last_lba, 32 * MIB / 512 - 34);
        assert!(!p2.bootable);
    }

    /// Windows' own partition types, as sgdisk's codes name them, get Microsoft's names rather
    /// than `unknown`.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn microsoft_types_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(&dir, 64 * MIB);
        let codes = ["ef00", "0c01", "0700", "2700", "4201", "4200"];
        let mut args = vec!["-o".to_string()];
        for (i, code) in codes.iter().enumerate() {
            args.push(format!("-n{}:0:+4M", i + 1));
            args.push(format!("-t{}:{code}", i + 1));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sgdisk(&args, &path);
        let t = inspect(&path);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let names: Vec<&str> = t.partitions.iter().map(|p| p.type_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "esp",
                "microsoft-reserved",
                "microsoft-basic-data",
                "windows-recovery",
                "windows-ldm-metadata",
                "windows-ldm-data"
            ]
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn hybrid_from_sgdisk() {
        let dir = tempfile::tempdir().unwrap();
        let path = sgdisk_disk(&dir);
        sgdisk(&["-h", "2"], &path);
        let t = inspect(&path);
        assert_eq!(t.scheme, Scheme::Hybrid, "{t:?}");
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.partitions[0].mbr_type, None);
        assert_eq!(t.partitions[1].mbr_type, Some(0x83));
        assert_eq!(t.partitions[1].unique_guid, Guid::parse(U2));
    }

    fn mbr_record(boot: u8, kind: u8, start: u32, sectors: u32) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[0] = boot;
        r[4] = kind;
        r[8..12].copy_from_slice(&start.to_le_bytes());
        r[12..16].copy_from_slice(&sectors.to_le_bytes());
        r
    }

    fn mbr(records: &[[u8; 16]], boot_code: bool) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        if boot_code {
            s[..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
        }
        s[440..444].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        for (i, r) in records.iter().enumerate() {
            s[446 + 16 * i..446 + 16 * (i + 1)].copy_from_slice(r);
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    #[test]
    fn mbr_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(&dir, 32 * MIB);
        write_at(
            &path,
            0,
            &mbr(
                &[
                    mbr_record(0x80, 0x83, 2048, 20480),
                    mbr_record(0, 0x05, 22528, 4096),
                    [0; 16],
                    mbr_record(0, 0xef, 40960, 2048),
                ],
                true,
            ),
        );
        let t = inspect(&path);
        assert_eq!(t.scheme, Scheme::Mbr);
        assert!(t.mbr_boot_code);
        assert_eq!(t.disk_guid, None);
        let [a, b, c] = &t.partitions[..] else {
            panic!("{t:?}")
        };
        assert_eq!((a.index, b.index, c.index), (1, 2, 4));
        assert_eq!(a.mbr_type, Some(0x83));
        assert_eq!(a.type_name, "linux-generic");
        assert!(a.bootable && !b.bootable && !c.bootable);
        assert_eq!((a.offset, a.size), (MIB, 10 * MIB));
        assert_eq!(a.unique_guid, None);
        assert_eq!(b.type_name, "extended");
        assert_eq!(c.type_name, "esp");
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
        assert!(has(&t, &["logical partitions not listed", "2"]));
    }

    #[test]
    fn mbr_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(&dir, 8 * MIB);
        write_at(
            &path,
            0,
            &mbr(
                &[
                    mbr_record(0, 0x83, 2048, 8192),
                    mbr_record(0, 0x83, 8192, u32::MAX),
                ],
                false,
            ),
        );
        let t = inspect(&path);
        assert_eq!(t.scheme, Scheme::Mbr);
        assert!(!t.mbr_boot_code);
        assert!(
            has(&t, &["MBR partition 2", "past the end"]),
            "{:?}",
            t.problems
        );
        assert!(
            has(&t, &["1 (LBA", "2 (LBA", "overlap"]),
            "{:?}",
            t.problems
        );
    }

    #[test]
    fn hand_made_hybrid() {
        let dir = tempfile::tempdir().unwrap();
        let table = planned();
        let path = write_table(&dir, &table);
        let esp = &table.partitions[0];
        let sectors = u32::try_from(esp.last_lba - esp.first_lba + 1).unwrap();
        let first = u32::try_from(esp.first_lba).unwrap();
        write_at(
            &path,
            0,
            &mbr(
                &[
                    mbr_record(0x80, 0xef, first, sectors),
                    mbr_record(0, 0xee, 1, first - 1),
                    mbr_record(0, 0x0c, 1_000_000, 10),
                ],
                true,
            ),
        );
        let t = inspect(&path);
        assert_eq!(t.scheme, Scheme::Hybrid);
        assert!(t.mbr_boot_code);
        check_planned(&t, &table);
        assert_eq!(t.partitions[0].mbr_type, Some(0xef));
        assert!(t.partitions[0].bootable);
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
        assert!(has(
            &t,
            &["hybrid MBR partition 3", "matches no GPT partition"]
        ));
    }

    #[test]
    fn no_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(&dir, 4 * MIB);
        let t = inspect(&path);
        assert_eq!(t.scheme, Scheme::None);
        assert!(t.partitions.is_empty() && t.problems.is_empty() && !t.mbr_boot_code);
        // Bytes without the signature are not boot code.
        write_at(&path, 0, &[0x10u8; 512]);
        assert!(!inspect(&path).mbr_boot_code);
        // A file system boot sector ends with 0x55AA too, but is no MBR.
        let mut vbr = vec![0x11u8; 512];
        vbr[510] = 0x55;
        vbr[511] = 0xaa;
        write_at(&path, 0, &vbr);
        let t = inspect(&path);
        assert_eq!(t.scheme, Scheme::None);
        assert!(t.mbr_boot_code);
        assert!(has(&t, &["not an MBR"]), "{:?}", t.problems);
    }

    #[test]
    fn tiny_disks() {
        for size in [0, 1, 100, 511, 512, 700, 1023, 1024, 1536] {
            let dir = tempfile::tempdir().unwrap();
            let path = blank(&dir, size);
            if size >= 512 {
                write_at(&path, 0, &mbr(&[mbr_record(0, 0xee, 1, 1)], false));
            }
            if size >= 1024 {
                write_at(&path, 512, b"EFI PART");
            }
            let t = inspect(&path);
            assert!(t.partitions.is_empty(), "{size}: {t:?}");
            assert!(!t.problems.is_empty(), "{size}: {t:?}");
            if size < 512 {
                assert_eq!(t.scheme, Scheme::None);
            } else {
                assert_eq!(t.scheme, Scheme::Gpt, "{size}: {t:?}");
            }
        }
    }

    #[test]
    fn bad_primary_header_crc_uses_backup() {
        let dir = tempfile::tempdir().unwrap();
        let table = planned();
        let path = write_table(&dir, &table);
        write_at(&path, 512 + 60, &[0x42]); // inside the disk GUID
        let t = inspect(&path);
        assert_eq!(t.scheme, Scheme::Gpt);
        check_planned(&t, &table);
        assert!(has(
            &t,
            &["primary GPT header", "CRC32", "stored 0x", "computed 0x"]
        ));
        assert!(has(&t, &["using the backup"]), "{:?}", t.problems);
    }

    #[test]
    fn bad_primary_signature_uses_backup() {
        let dir = tempfile::tempdir().unwrap();
        let table = planned();
        let path = write_table(&dir, &table);
        write_at(&path, 512, b"NOT PART");
        let t = inspect(&path);
        check_planned(&t, &table);
        assert!(
            has(&t, &["primary GPT header", "bad signature"]),
            "{:?}",
            t.problems
        );
    }

    #[test]
    fn bad_entries_crc() {
        let dir = tempfile::tempdir().unwrap();
        let table = planned();
        let path = write_table(&dir, &table);
        // The name of partition 1 in the primary array (LBA 2).
        write_at(&path, 1024 + 56, &[b'X', 0]);
        let t = inspect(&path);
        check_planned(&t, &table);
        assert!(has(&t, &["primary GPT partition entry array", "bad CRC32"]));
        assert!(has(&t, &["using the backup"]));
        // Both arrays corrupted: listed anyway, with the problems.
        let (offset, _) = table.backup();
        write_at(&path, offset + 56, &[b'X', 0]);
        let t = inspect(&path);
        assert_eq!(t.partitions.len(), 3);
        assert_eq!(t.partitions[0].name, "Xsp");
        assert!(has(&t, &["backup GPT partition entry array", "bad CRC32"]));
        assert!(has(&t, &["no GPT copy has intact entries"]));
    }

    #[test]
    fn entry_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = planned();
        table.partitions[2].last_lba = 1 << 40;
        let t = inspect(&write_table(&dir, &table));
        assert_eq!(t.partitions.len(), 3);
        assert_eq!(t.partitions[2].last_lba, 1 << 40);
        assert!(
            has(&t, &["GPT partition 3", "past the end of the disk"]),
            "{:?}",
            t.problems
        );
    }

    #[test]
    fn entry_outside_usable_and_reversed() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = planned();
        table.partitions[0].first_lba = 10;
        table.partitions[1].first_lba = table.partitions[1].last_lba + 5;
        let t = inspect(&write_table(&dir, &table));
        assert!(
            has(&t, &["GPT partition 1", "outside the usable range"]),
            "{:?}",
            t.problems
        );
        assert!(
            has(&t, &["GPT partition 2", "is after last LBA"]),
            "{:?}",
            t.problems
        );
        assert_eq!(t.partitions[1].size, 0);
    }

    #[test]
    fn overlapping_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = planned();
        table.partitions[1].first_lba = table.partitions[0].last_lba - 10;
        let t = inspect(&write_table(&dir, &table));
        assert_eq!(t.partitions.len(), 3);
        assert!(
            has(&t, &["GPT partitions 1 (LBA", "2 (LBA", "overlap"]),
            "{:?}",
            t.problems
        );
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
    }

    #[test]
    fn many_overlaps_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = planned();
        let p = table.partitions[2].clone();
        table.partitions = vec![p; 128];
        let t = inspect(&write_table(&dir, &table));
        assert_eq!(t.partitions.len(), 128);
        assert_eq!(t.problems.len(), MAX_PROBLEMS + 1);
        assert!(
            t.problems
                .last()
                .unwrap()
                .contains("more problems not listed")
        );
    }

    #[test]
    fn absurd_headers() {
        type Patch = fn(&mut [u8]);
        let patches: [(Patch, &str); 6] = [
            (
                |h| h[80..84].copy_from_slice(&u32::MAX.to_le_bytes()),
                "partition entries",
            ),
            (
                |h| h[84..88].copy_from_slice(&u32::MAX.to_le_bytes()),
                "entry size",
            ),
            (
                |h| h[84..88].copy_from_slice(&130u32.to_le_bytes()),
                "entry size",
            ),
            (
                |h| h[72..80].copy_from_slice(&u64::MAX.to_le_bytes()),
                "past the end",
            ),
            (
                |h| h[12..16].copy_from_slice(&u32::MAX.to_le_bytes()),
                "header size",
            ),
            (
                |h| h[48..56].copy_from_slice(&u64::MAX.to_le_bytes()),
                "usable range",
            ),
        ];
        for (patch, words) in patches {
            let dir = tempfile::tempdir().unwrap();
            let table = planned();
            let path = write_table(&dir, &table);
            let last = table.disk_size / 512 - 1;
            patch_header(&path, 1, patch);
            patch_header(&path, last, patch);
            let t = inspect(&path);
            assert_eq!(t.scheme, Scheme::Gpt, "{words}");
            assert!(t.partitions.is_empty(), "{words}: {t:?}");
            assert!(
                has(&t, &["primary GPT header", words]),
                "{words}: {:?}",
                t.problems
            );
            assert!(
                has(&t, &["backup GPT header", words]),
                "{words}: {:?}",
                t.problems
            );
            assert!(
                has(&t, &["no valid GPT header"]),
                "{words}: {:?}",
                t.problems
            );
        }
    }

    #[test]
    fn headers_disagree() {
        let dir = tempfile::tempdir().unwrap();
        let table = planned();
        let path = write_table(&dir, &table);
        let last = table.disk_size / 512 - 1;
        patch_header(&path, last, |h| h[56] ^= 1);
        let t = inspect(&path);
        check_planned(&t, &table);
        assert!(has(&t, &["disagree on the disk GUID"]), "{:?}", t.problems);
    }

    #[test]
    fn gpt_without_protective_mbr() {
        let dir = tempfile::tempdir().unwrap();
        let table = planned();
        let path = write_table(&dir, &table);
        write_at(&path, 0, &[0; 512]);
        let t = inspect(&path);
        assert_eq!(t.scheme, Scheme::Gpt);
        check_planned(&t, &table);
        assert!(has(&t, &["no protective MBR"]), "{:?}", t.problems);
        // A real MBR next to a GPT: the MBR wins, the GPT is reported.
        write_at(&path, 0, &mbr(&[mbr_record(0, 0x83, 2048, 2048)], false));
        let t = inspect(&path);
        assert_eq!(t.scheme, Scheme::Mbr);
        assert_eq!(t.partitions.len(), 1);
        assert!(has(&t, &["stale GPT"]), "{:?}", t.problems);
    }

    #[test]
    fn disk_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let table = planned();
        let path = write_table(&dir, &table);
        let cut = table.disk_size - 3 * MIB;
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let t = inspect(&path);
        // The primary GPT is still used: the partitions are listed, and the disk said short.
        assert_eq!(t.scheme, Scheme::Gpt);
        assert_eq!(
            t.partitions.len(),
            table.partitions.len(),
            "{:?}",
            t.problems
        );
        assert!(
            has(
                &t,
                &[
                    "the disk is short: the primary GPT header describes a disk of",
                    &format!("but this one has {}", crate::inspect::human_size(cut)),
                    "its last 3.0 MiB are missing"
                ]
            ),
            "{:?}",
            t.problems
        );
        assert!(!has(&t, &["covers a GPT header"]), "{:?}", t.problems);
        // A usable range past the end that no larger disk explains is still refused.
        let path = write_table(&dir, &table);
        patch_header(&path, 1, |h| {
            h[48..56].copy_from_slice(&(1u64 << 50).to_le_bytes())
        });
        let t = inspect(&path);
        assert!(
            has(&t, &["primary GPT header", "usable range"]),
            "{:?}",
            t.problems
        );
        assert!(!has(&t, &["the disk is short"]), "{:?}", t.problems);
    }

    #[test]
    fn resized_disk() {
        let dir = tempfile::tempdir().unwrap();
        let table = planned();
        let path = write_table(&dir, &table);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(table.disk_size + MIB)
            .unwrap();
        let t = inspect(&path);
        assert_eq!(t.scheme, Scheme::Gpt);
        check_planned(&t, &table);
        assert!(
            has(&t, &["alternate_lba", "disk resized"]),
            "{:?}",
            t.problems
        );
        assert!(
            has(&t, &["protective MBR entry covers"]),
            "{:?}",
            t.problems
        );
    }
}
