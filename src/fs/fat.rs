//! FAT12, FAT16 and FAT32 file systems, read-only.
//!
//! Our own reader, written from Microsoft's "FAT: General Overview of On-Disk Format" (version
//! 1.03; "the spec" below, cited by section). The `fatfs` crate is not used for reading: its
//! 0.3.6 release can panic or loop on a corrupt image, and the images read here are untrusted.
//!
//! The file system lives in a window of a [`Disk`]: a bare file system image is the window
//! `0..size`, a partition of a disk is the partition's byte range. Every read is checked against
//! the window, so a corrupt file system that points outside it gives an error, never a read of
//! the neighbouring partition or a panic.
//!
//! Nothing is loaded whole: FAT entries are read on demand through a small cache, a directory
//! when a path goes through it, file data when asked for. A file's cluster chain is followed
//! only as far as a read needs, so the cost of a read follows the bytes it asks for, whatever
//! length a hostile FAT gives the chain. Everything taken from the disk is checked before use:
//! the BPB's fields when the file system is opened, every cluster number against the volume's
//! range, every link followed for loops, every directory chain for its length against FAT's
//! limit of 65,536 entries. A corrupt structure is an error that names the
//! image and the path, never a panic, a hang or an unbounded allocation.
//!
//! Names are read as Windows and Linux show them: the long (VFAT) name when there is a valid
//! one, else the 8.3 name with the lower-case flags Windows NT keeps in byte 12 of the entry, its
//! bytes decoded as code page 437 (Linux's default). Lookups ignore case, as firmware and
//! Windows do, and match the 8.3 alias too.

use super::{Entry, Kind, Meta};
use crate::format::Disk;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes of the boot sector read by [`Fat::open`]: the BPB lies in the first 90 bytes and no
/// sector is smaller than 512 bytes (spec, "Boot Sector and BPB").
const BOOT_SECTOR: usize = 512;
/// Size of a directory entry (spec, "FAT Directory Structure").
const DIR_ENTRY: usize = 32;
/// Most 32-byte entries a directory may hold: 65,536 (2 MiB), the FAT limit that Windows and
/// Linux (`FAT_MAX_DIR_ENTRIES` in `msdos_fs.h`) enforce, entries being numbered in 16 bits. A
/// longer directory chain is taken as corruption, which also bounds what reading one directory
/// costs.
const MAX_DIR_ENTRIES: u64 = 65_536;
/// The largest cluster count FAT32 can address: cluster numbers run from 2 to count + 1, which
/// must stay below the bad-cluster mark 0x0FFFFFF7 (spec, "FAT Data Structure").
const MAX_FAT32_CLUSTERS: u64 = 0x0FFF_FFF5;

/// Attribute bit of the volume label entry (spec, "FAT Directory Structure").
const ATTR_VOLUME_ID: u8 = 0x08;
/// Attribute bit of a directory.
const ATTR_DIRECTORY: u8 = 0x10;
/// Attribute value of a long-name entry, under [`ATTR_LONG_NAME_MASK`] (spec, "FAT Long
/// Directory Entries").
const ATTR_LONG_NAME: u8 = 0x0F;
/// The attribute bits compared to find a long-name entry.
const ATTR_LONG_NAME_MASK: u8 = 0x3F;
/// Flag of `LDIR_Ord` on the last (first stored) entry of a long name.
const LAST_LONG_ENTRY: u8 = 0x40;
/// A long name has at most 255 characters, so at most 20 entries of 13.
const MAX_LONG_ENTRIES: u8 = 20;
/// Characters (UCS-2 units) held by one long-name entry.
const LONG_UNITS: usize = 13;
/// Offsets of those characters in the entry: `LDIR_Name1`, `LDIR_Name2`, `LDIR_Name3`.
const LONG_UNIT_OFFSETS: [usize; LONG_UNITS] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/// `DIR_NTRes` flag: the base name is shown in lower case (Windows NT, not in the spec but
/// written by Windows, mtools and Linux for names such as `readme.txt`).
const NT_LOWER_BASE: u8 = 0x08;
/// `DIR_NTRes` flag: the extension is shown in lower case.
const NT_LOWER_EXT: u8 = 0x10;
/// First name byte of a free (deleted) entry.
const FREE_ENTRY: u8 = 0xE5;
/// First name byte that stands for a real 0xE5 (a KANJI lead byte) in a name.
const KANJI_E5: u8 = 0x05;
/// The name bytes of the `.` and `..` entries of a subdirectory.
const DOT: &[u8; 11] = b".          ";
const DOT_DOT: &[u8; 11] = b"..         ";

/// FAT entries are read in blocks of this many bytes of the FAT…
const FAT_BLOCK: u64 = 32 * 1024;
/// …of which this many are kept, so following a chain reads each part of the FAT once.
const FAT_CACHE_BLOCKS: usize = 8;

/// Unix permissions reported for directories and files, FAT having none.
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// Code page 437's characters for bytes 0x80 to 0xFF, the code page Linux assumes for 8.3 names.
const CP437_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»\
░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";

/// An error about a FAT file system inside an image; the message names the image and, when
/// there is one, the path inside the file system.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The window given to [`Fat::open`] does not fit the source.
    #[error(
        "{}: a file system of {len} bytes at byte {offset} does not fit the {size}-byte image",
        name.display()
    )]
    OutOfRange {
        /// The image.
        name: PathBuf,
        /// Start of the window.
        offset: u64,
        /// Length of the window.
        len: u64,
        /// Size of the image.
        size: u64,
    },
    /// The boot sector is not a valid FAT boot sector.
    #[error("{}: no valid FAT file system at byte {offset}: {reason}", name.display())]
    NotFat {
        /// The image.
        name: PathBuf,
        /// Start of the window.
        offset: u64,
        /// Which field is wrong and its value, in one line.
        reason: String,
    },
    /// The boot sector describes a file system larger than its window.
    #[error(
        "{}: the FAT file system at byte {offset} has {sectors} sectors of {sector_bytes} bytes, \
         more than its {len}-byte window",
        name.display()
    )]
    Truncated {
        /// The image.
        name: PathBuf,
        /// Start of the window.
        offset: u64,
        /// The total sector count of the BPB.
        sectors: u64,
        /// The sector size of the BPB.
        sector_bytes: u64,
        /// Length of the window.
        len: u64,
    },
    /// The file system's structures are inconsistent.
    #[error("{}{}: corrupt FAT file system: {reason}", name.display(), at(path))]
    Corrupt {
        /// The image.
        name: PathBuf,
        /// The path being read, if any.
        path: Option<String>,
        /// What is wrong, in one line.
        reason: String,
    },
    /// The image could not be read.
    #[error("{}{}: cannot read the file system: {source}", name.display(), at(path))]
    Read {
        /// The image.
        name: PathBuf,
        /// The path being read, if any.
        path: Option<String>,
        /// The source's error.
        source: crate::format::Error,
    },
    /// The path does not exist in the file system.
    #[error("{}: {path}: no such file in the file system", name.display())]
    NotFound {
        /// The image.
        name: PathBuf,
        /// The path inside the file system.
        path: String,
    },
    /// The path exists but cannot be read as asked (a directory read as a file, …).
    #[error("{}: {path}: {reason}", name.display())]
    Invalid {
        /// The image.
        name: PathBuf,
        /// The path inside the file system.
        path: String,
        /// What is wrong, in one line.
        reason: String,
    },
    /// The file is larger than the caller allows.
    #[error("{}: {path}: {size} bytes, more than the {max} allowed", name.display())]
    TooLarge {
        /// The image.
        name: PathBuf,
        /// The path inside the file system.
        path: String,
        /// The file's size.
        size: u64,
        /// The limit.
        max: u64,
    },
}

impl Error {
    /// Whether the error says that a path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// `": /path"` when there is a path, for messages.
fn at(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!(": {p}")).unwrap_or_default()
}

/// The three FAT types, told apart by the cluster count (spec, "FAT Type Determination").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    fn name(self) -> &'static str {
        match self {
            FatType::Fat12 => "fat12",
            FatType::Fat16 => "fat16",
            FatType::Fat32 => "fat32",
        }
    }

    /// The lowest end-of-chain mark (spec, "FAT Data Structure": any value from it up ends a
    /// chain).
    fn end_of_chain(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFF8,
            FatType::Fat16 => 0xFFF8,
            FatType::Fat32 => 0x0FFF_FFF8,
        }
    }

    /// The bad-cluster mark, never part of a chain.
    fn bad(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFF7,
            FatType::Fat16 => 0xFFF7,
            FatType::Fat32 => 0x0FFF_FFF7,
        }
    }

    /// Bytes of FAT needed for `entries` entries.
    fn fat_bytes(self, entries: u64) -> u64 {
        match self {
            FatType::Fat12 => (entries * 3).div_ceil(2),
            FatType::Fat16 => entries * 2,
            FatType::Fat32 => entries * 4,
        }
    }
}

/// Where the root directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    /// FAT12/16: a fixed region of `entries` entries at byte `start` of the window.
    Fixed { start: u64, entries: u64 },
    /// FAT32: a cluster chain like any directory (`BPB_RootClus`).
    Cluster(u32),
}

/// The layout of the volume, from a validated BPB. All offsets are bytes within the window.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Geometry {
    fat_type: FatType,
    sector_bytes: u64,
    total_sectors: u64,
    cluster_bytes: u64,
    /// Start of the FAT in use (the first, or the active one when mirroring is off).
    fat_start: u64,
    /// Length of one FAT; holds at least `clusters + 2` entries.
    fat_len: u64,
    /// Start of cluster 2.
    data_start: u64,
    /// Count of data clusters: valid cluster numbers are 2 to `clusters + 1`, and all of them
    /// lie inside the window.
    clusters: u32,
    root: Root,
    /// `BS_VolLab`, if the extended boot signature says it is there and it is not `NO NAME`.
    boot_label: Option<String>,
}

impl Geometry {
    /// The highest valid cluster number.
    fn max_cluster(&self) -> u32 {
        // No overflow: clusters <= MAX_FAT32_CLUSTERS.
        self.clusters.saturating_add(1)
    }

    /// Most clusters a directory chain may have: 65,536 entries, rounded up to whole clusters.
    fn dir_cluster_limit(&self) -> u64 {
        (MAX_DIR_ENTRIES * DIR_ENTRY as u64).div_ceil(self.cluster_bytes)
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Validates the BPB of `boot` (spec, "Boot Sector and BPB", "FAT Type Determination") and
/// derives the volume's layout; `Err` names the wrong field and its value.
fn geometry(boot: &[u8; BOOT_SECTOR]) -> Result<Geometry, String> {
    let sector_bytes = le16(boot, 11);
    if !matches!(sector_bytes, 512 | 1024 | 2048 | 4096) {
        return Err(format!(
            "bytes per sector (BPB_BytsPerSec) is {sector_bytes}, not 512, 1024, 2048 or 4096"
        ));
    }
    let per_cluster = boot[13];
    if !per_cluster.is_power_of_two() {
        return Err(format!(
            "sectors per cluster (BPB_SecPerClus) is {per_cluster}, not a power of two from 1 \
             to 128"
        ));
    }
    let reserved = le16(boot, 14);
    if reserved == 0 {
        return Err("reserved sector count (BPB_RsvdSecCnt) is 0, not at least 1".to_owned());
    }
    let fats = boot[16];
    if fats == 0 {
        return Err("number of FATs (BPB_NumFATs) is 0".to_owned());
    }
    let root_entries = le16(boot, 17);
    let total16 = le16(boot, 19);
    let media = boot[21];
    let fat_size16 = le16(boot, 22);
    let total32 = le32(boot, 32);
    let fat_size32 = le32(boot, 36);
    // The media byte is also the low byte of FAT[0]; Linux refuses other values as well.
    if media != 0xF0 && media < 0xF8 {
        return Err(format!(
            "media type (BPB_Media) is {media:#04x}, not 0xf0 or 0xf8 to 0xff"
        ));
    }
    // Sizes in sectors: the 16-bit field when not 0, else the 32-bit one.
    let fat_size = if fat_size16 != 0 {
        u64::from(fat_size16)
    } else {
        u64::from(fat_size32)
    };
    if fat_size == 0 {
        return Err("FAT size (BPB_FATSz16 and BPB_FATSz32) is 0".to_owned());
    }
    let total = if total16 != 0 {
        u64::from(total16)
    } else {
        u64::from(total32)
    };
    if total == 0 {
        return Err("total sector count (BPB_TotSec16 and BPB_TotSec32) is 0".to_owned());
    }
    let sector = u64::from(sector_bytes);
    let per_cluster = u64::from(per_cluster);
    // All in u64 from fields of at most 32 bits: none of this can overflow.
    let root_sectors = (u64::from(root_entries) * DIR_ENTRY as u64).div_ceil(sector);
    let fats_start = u64::from(reserved);
    let root_start = fats_start + u64::from(fats) * fat_size;
    let data_start = root_start + root_sectors;
    if data_start >= total {
        return Err(format!(
            "the reserved sectors, FATs and root directory take {data_start} sectors, leaving \
             no data sectors of the {total} (BPB_TotSec)"
        ));
    }
    let clusters = (total - data_start) / per_cluster;
    if clusters == 0 {
        return Err(format!(
            "the {} data sectors are fewer than one cluster of {per_cluster}",
            total - data_start
        ));
    }
    // Spec, "FAT Type Determination": the cluster count alone decides.
    let fat_type = if clusters < 4085 {
        FatType::Fat12
    } else if clusters < 65525 {
        FatType::Fat16
    } else {
        FatType::Fat32
    };
    let what = format!("a {} volume ({clusters} clusters)", fat_type.name());
    let max_cluster = clusters + 1;
    let mut active = 0;
    let root = if fat_type == FatType::Fat32 {
        if fat_size16 != 0 {
            return Err(format!(
                "{what} must have BPB_FATSz16 = 0, not {fat_size16}"
            ));
        }
        if root_entries != 0 {
            return Err(format!(
                "{what} must have BPB_RootEntCnt = 0, not {root_entries}"
            ));
        }
        if clusters > MAX_FAT32_CLUSTERS {
            return Err(format!(
                "{what} has more clusters than FAT32 can address ({MAX_FAT32_CLUSTERS})"
            ));
        }
        let version = le16(boot, 42);
        if version != 0 {
            return Err(format!(
                "FAT32 version (BPB_FSVer) is {}.{}, not 0.0",
                version >> 8,
                version & 0xFF
            ));
        }
        // BPB_ExtFlags bit 7: mirroring off, only the FAT numbered by bits 0-3 is in use.
        let flags = le16(boot, 40);
        if flags & 0x80 != 0 {
            active = u64::from(flags & 0x0F);
            if active >= u64::from(fats) {
                return Err(format!(
                    "the active FAT (BPB_ExtFlags) is number {active}, but there are {fats}"
                ));
            }
        }
        let root_cluster = le32(boot, 44);
        if !(2..=max_cluster).contains(&u64::from(root_cluster)) {
            return Err(format!(
                "root cluster (BPB_RootClus) is {root_cluster}, outside the clusters 2 to \
                 {max_cluster}"
            ));
        }
        Root::Cluster(root_cluster)
    } else {
        if fat_size16 == 0 {
            return Err(format!("{what} has BPB_FATSz16 = 0, as only FAT32 may"));
        }
        if root_entries == 0 {
            return Err(format!(
                "{what} has no root directory (BPB_RootEntCnt is 0)"
            ));
        }
        Root::Fixed {
            start: root_start * sector,
            entries: u64::from(root_entries),
        }
    };
    let needed = fat_type.fat_bytes(clusters + 2);
    if fat_size * sector < needed {
        return Err(format!(
            "FAT size (BPB_FATSz) of {fat_size} sectors is {} bytes, too small for the \
             {needed} bytes of entries of {clusters} clusters",
            fat_size * sector
        ));
    }
    // BS_BootSig 0x29 says BS_VolID, BS_VolLab and BS_FilSysType follow.
    let (sig, label_at) = match fat_type {
        FatType::Fat32 => (boot[66], 71),
        _ => (boot[38], 43),
    };
    let boot_label = if sig == 0x29 {
        boot.get(label_at..label_at + 11).and_then(label_text)
    } else {
        None
    };
    Ok(Geometry {
        fat_type,
        sector_bytes: sector,
        total_sectors: total,
        cluster_bytes: sector * per_cluster,
        fat_start: (fats_start + active * fat_size) * sector,
        fat_len: fat_size * sector,
        data_start: data_start * sector,
        clusters: u32::try_from(clusters).map_err(|_| format!("{what} is too large"))?,
        root,
        boot_label,
    })
}

/// A volume label's 11 bytes as text, without trailing spaces; `None` for a blank label or
/// mkfs's `NO NAME`.
fn label_text(bytes: &[u8]) -> Option<String> {
    let text: String = trim_spaces(bytes).iter().map(|&b| cp437(b)).collect();
    (!text.is_empty() && text != "NO NAME").then_some(text)
}

fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    bytes.get(..end).unwrap_or_default()
}

/// The character code page 437 gives byte `b`.
fn cp437(b: u8) -> char {
    match b.checked_sub(0x80) {
        None => char::from(b),
        Some(i) => CP437_HIGH
            .chars()
            .nth(usize::from(i))
            .unwrap_or(char::REPLACEMENT_CHARACTER),
    }
}

/// The bytes `offset..offset + len` of a source.
struct Window {
    source: Arc<dyn Disk>,
    offset: u64,
    /// `offset + len <= source.size()`, checked when the window is made.
    len: u64,
}

/// Why a read of the window failed.
enum ReadFail {
    /// It passes the end of the window.
    Outside,
    /// The source failed.
    Source(crate::format::Error),
}

impl Window {
    fn read(&mut self, start: u64, buf: &mut [u8]) -> Result<(), ReadFail> {
        let inside = u64::try_from(buf.len())
            .ok()
            .and_then(|n| start.checked_add(n))
            .is_some_and(|end| end <= self.len);
        if !inside {
            return Err(ReadFail::Outside);
        }
        if buf.is_empty() {
            return Ok(());
        }
        // No overflow: start + len(buf) <= len and offset + len <= the source's size.
        self.source
            .read_at(self.offset + start, buf)
            .map_err(ReadFail::Source)
    }
}

/// Recently read blocks of the FAT in use.
#[derive(Default)]
struct FatCache {
    /// (block number, bytes), at most [`FAT_CACHE_BLOCKS`].
    blocks: Vec<(u64, Vec<u8>)>,
    /// The slot replaced next when the cache is full (round robin).
    next: usize,
}

impl FatCache {
    fn byte(&self, block: u64, within: usize) -> Option<u8> {
        self.blocks
            .iter()
            .find(|(b, _)| *b == block)
            .and_then(|(_, data)| data.get(within).copied())
    }

    fn insert(&mut self, block: u64, data: Vec<u8>) {
        if self.blocks.len() < FAT_CACHE_BLOCKS {
            self.blocks.push((block, data));
        } else if let Some(slot) = self.blocks.get_mut(self.next) {
            *slot = (block, data);
            self.next = (self.next + 1) % FAT_CACHE_BLOCKS;
        }
    }
}

/// A run of consecutive clusters of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: u32,
    count: u32,
}

/// Clusters already met in a chain, as disjoint ranges (first cluster → count), so that a
/// cluster met twice, a loop, is found at once and the memory follows the chain's fragments.
#[derive(Default)]
struct Seen(BTreeMap<u32, u32>);

impl Seen {
    fn contains(&self, c: u32) -> bool {
        self.0
            .range(..=c)
            .next_back()
            .is_some_and(|(&first, &count)| u64::from(c) < u64::from(first) + u64::from(count))
    }

    /// Adds `c`, which [`Seen::contains`] said is not in.
    fn insert(&mut self, c: u32) {
        let after = c.checked_add(1).and_then(|n| self.0.remove_entry(&n));
        let before = self
            .0
            .range_mut(..c)
            .next_back()
            .filter(|(first, count)| u64::from(**first) + u64::from(**count) == u64::from(c));
        match (before, after) {
            (Some((_, count)), Some((_, more))) => *count += 1 + more,
            (Some((_, count)), None) => *count += 1,
            (None, Some((_, more))) => {
                self.0.insert(c, 1 + more);
            }
            (None, None) => {
                self.0.insert(c, 1);
            }
        }
    }
}

/// A file's cluster chain, followed only as far as reads have needed (never past the clusters
/// its size needs), and kept for the next read of the same file.
struct FileChain {
    /// The file's first cluster and size: the key.
    first: u32,
    size: u64,
    /// How many clusters the size needs.
    needed: u64,
    /// The clusters found so far, in chain order.
    runs: Vec<Run>,
    /// How many clusters `runs` hold, at least 1.
    known: u64,
    /// The last cluster found.
    last: u32,
    /// Every cluster of `runs`.
    seen: Seen,
    /// Whether the link out of the `needed`th cluster has been checked.
    checked_end: bool,
}

/// A walked cluster chain.
struct Chain {
    /// The first clusters of the chain (as many as asked for), as runs.
    runs: Vec<Run>,
    /// The length of the whole chain, in clusters.
    clusters: u64,
}

/// A file or directory found by a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// The root directory.
    Root,
    /// A subdirectory and its first cluster (0 if the entry is corrupt).
    Dir(u32),
    /// A file: its first cluster (0 when empty) and size.
    File { cluster: u32, size: u32 },
}

impl Node {
    fn kind(self) -> Kind {
        match self {
            Node::Root | Node::Dir(_) => Kind::Dir,
            Node::File { .. } => Kind::File,
        }
    }
}

/// One entry of a directory, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirEntry {
    /// The long name if there is a valid one, else the 8.3 name.
    name: String,
    /// The 8.3 name (`README.TXT`, or `readme.txt` with the lower-case flags).
    short: String,
    node: Node,
}

/// A parsed directory.
struct Listing {
    entries: Vec<DirEntry>,
    /// The first volume label entry (the root directory's is the volume's label).
    label: Option<String>,
}

/// A long name being assembled from its entries, stored last part first (spec, "FAT Long
/// Directory Entries", "Sequence Of Long Directory Entries").
struct LongName {
    units: Vec<u16>,
    /// `LDIR_Chksum`, the same in every entry and equal to the 8.3 name's checksum.
    checksum: u8,
    /// The `LDIR_Ord` the next entry must have; 0 once complete.
    next: u8,
}

impl LongName {
    /// Adds the long-name entry `e` to the name being assembled (`prev`); `None` when `e` does
    /// not continue it nor start a new one, an orphan the spec says to ignore.
    fn push(prev: Option<LongName>, e: &[u8; DIR_ENTRY]) -> Option<LongName> {
        let ord = e[0];
        let mut name = if ord & LAST_LONG_ENTRY != 0 {
            let count = ord & !LAST_LONG_ENTRY;
            if count == 0 || count > MAX_LONG_ENTRIES {
                return None;
            }
            LongName {
                units: vec![0xFFFF; usize::from(count) * LONG_UNITS],
                checksum: e[13],
                next: count,
            }
        } else {
            prev.filter(|p| p.checksum == e[13])?
        };
        if ord & !LAST_LONG_ENTRY != name.next || name.next == 0 {
            return None;
        }
        let start = usize::from(name.next - 1) * LONG_UNITS;
        for (k, &at) in LONG_UNIT_OFFSETS.iter().enumerate() {
            if let Some(unit) = name.units.get_mut(start + k) {
                *unit = le16(e, at);
            }
        }
        name.next -= 1;
        Some(name)
    }

    /// The name, if complete and made for the 8.3 entry `short`.
    fn finish(self, short: &[u8]) -> Option<String> {
        if self.next != 0 || self.checksum != short_checksum(short) {
            return None;
        }
        // A name ends at a 0x0000 unit, padded with 0xFFFF; a full last entry has neither.
        let units: Vec<u16> = self
            .units
            .into_iter()
            .take_while(|&u| u != 0 && u != 0xFFFF)
            .collect();
        let name = String::from_utf16_lossy(&units);
        usable(&name).then_some(name)
    }
}

/// The checksum of an 8.3 name that its long-name entries carry (spec, "FAT Long Directory
/// Entries", `ChkSum`).
fn short_checksum(name: &[u8]) -> u8 {
    name.iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Whether a stored name can be a path component.
fn usable(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// The 8.3 name of entry `e`, with the NT lower-case flags applied.
fn short_name(e: &[u8; DIR_ENTRY]) -> String {
    let nt = e[12];
    let part = |bytes: &[u8], lower: bool| -> String {
        let chars = trim_spaces(bytes).iter().map(|&b| cp437(b));
        if lower {
            chars.flat_map(char::to_lowercase).collect()
        } else {
            chars.collect()
        }
    };
    let mut base = [0u8; 8];
    base.copy_from_slice(&e[..8]);
    if base[0] == KANJI_E5 {
        base[0] = FREE_ENTRY;
    }
    let mut name = part(&base, nt & NT_LOWER_BASE != 0);
    let ext = part(&e[8..11], nt & NT_LOWER_EXT != 0);
    if !ext.is_empty() {
        name.push('.');
        name.push_str(&ext);
    }
    // Only a corrupt entry holds these; keep the entry visible but harmless as a component.
    let name = name.replace(['/', '\0'], "\u{FFFD}");
    if usable(&name) {
        name
    } else {
        "\u{FFFD}".to_owned()
    }
}

/// Parses the entries of a directory (spec, "FAT Directory Structure"): stops at the first
/// entry that starts with 0x00, skips free entries, `.` and `..`, and takes the volume label
/// apart.
fn parse_dir(bytes: &[u8], fat_type: FatType) -> Listing {
    let mut entries = Vec::new();
    let mut label = None;
    let mut long: Option<LongName> = None;
    for raw in bytes.chunks_exact(DIR_ENTRY) {
        let Ok(e) = <&[u8; DIR_ENTRY]>::try_from(raw) else {
            break;
        };
        match e[0] {
            0x00 => break,
            FREE_ENTRY => {
                long = None;
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & ATTR_LONG_NAME_MASK == ATTR_LONG_NAME {
            long = LongName::push(long.take(), e);
            continue;
        }
        let long = long.take();
        if attr & ATTR_VOLUME_ID != 0 {
            if label.is_none() {
                label = label_text(&e[..11]);
            }
            continue;
        }
        let name11 = &e[..11];
        if name11 == DOT || name11 == DOT_DOT {
            continue;
        }
        let low = u32::from(le16(e, 26));
        // DIR_FstClusHI is meaningful on FAT32 only (spec, "FAT Directory Structure").
        let cluster = match fat_type {
            FatType::Fat32 => low | (u32::from(le16(e, 20)) << 16),
            _ => low,
        };
        let node = if attr & ATTR_DIRECTORY != 0 {
            Node::Dir(cluster)
        } else {
            Node::File {
                cluster,
                size: le32(e, 28),
            }
        };
        let short = short_name(e);
        let name = long
            .and_then(|l| l.finish(name11))
            .unwrap_or_else(|| short.clone());
        entries.push(DirEntry { name, short, node });
    }
    Listing { entries, label }
}

/// Whether two names are equal without regard to case, as FAT lookups are.
fn same_name(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// What a [`Fat`] has done so far: the work its reads cost, for tests and diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// FAT entries looked up (each cluster link followed or checked).
    pub fat_entries: u64,
    /// Directories read and parsed (each path component resolved).
    pub directories: u64,
}

/// A FAT12, FAT16 or FAT32 file system opened read-only inside an image.
///
/// The source sits in a `RefCell` since [`super::FileSystem`]'s methods take `&self`; a `Fat`
/// is therefore not `Sync`.
pub struct Fat {
    name: PathBuf,
    geo: Geometry,
    window: RefCell<Window>,
    fat_cache: RefCell<FatCache>,
    /// The chain of the last file read, so that reading a file piece by piece walks its chain
    /// once.
    last_file: RefCell<Option<FileChain>>,
    /// The last path resolved and what it named, so that reading a file piece by piece
    /// resolves its path once (the file system does not change under a reader).
    last_lookup: RefCell<Option<(String, Node)>>,
    /// What was done so far.
    work: Cell<Work>,
}

impl fmt::Debug for Fat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fat")
            .field("name", &self.name)
            .field("geometry", &self.geo)
            .finish_non_exhaustive()
    }
}

impl Fat {
    /// Opens the FAT file system at bytes `offset..offset + len` of `source`; `name` stands for
    /// the image in messages.
    ///
    /// Reads and checks the boot sector only; FAT entries, directories and data are read when
    /// asked for.
    pub fn open(source: Arc<dyn Disk>, offset: u64, len: u64, name: &Path) -> Result<Fat, Error> {
        let size = source.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange {
                name: name.to_owned(),
                offset,
                len,
                size,
            });
        }
        let not_fat = |reason: String| Error::NotFat {
            name: name.to_owned(),
            offset,
            reason,
        };
        if len < BOOT_SECTOR as u64 {
            return Err(not_fat(format!("{len} bytes cannot hold a boot sector")));
        }
        let mut boot = [0u8; BOOT_SECTOR];
        source
            .read_at(offset, &mut boot)
            .map_err(|source| Error::Read {
                name: name.to_owned(),
                path: None,
                source,
            })?;
        let geo = geometry(&boot).map_err(not_fat)?;
        // Every cluster, FAT and root directory lies inside the volume's sectors; with the
        // volume inside the window, no valid cluster number can lead a read out of it.
        if geo
            .total_sectors
            .checked_mul(geo.sector_bytes)
            .is_none_or(|bytes| bytes > len)
        {
            return Err(Error::Truncated {
                name: name.to_owned(),
                offset,
                sectors: geo.total_sectors,
                sector_bytes: geo.sector_bytes,
                len,
            });
        }
        Ok(Fat {
            name: name.to_owned(),
            geo,
            window: RefCell::new(Window {
                source,
                offset,
                len,
            }),
            fat_cache: RefCell::new(FatCache::default()),
            last_file: RefCell::new(None),
            last_lookup: RefCell::new(None),
            work: Cell::new(Work::default()),
        })
    }

    /// The name that stands for the image in messages.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// The work done so far by this reader.
    pub fn work(&self) -> Work {
        self.work.get()
    }

    fn count(&self, add: impl FnOnce(&mut Work)) {
        let mut w = self.work.get();
        add(&mut w);
        self.work.set(w);
    }

    /// The volume label: the root directory's label entry, which Windows shows and sets, else
    /// the boot sector's copy (`BS_VolLab`); `None` when neither holds one (or holds `NO NAME`).
    pub fn label(&self) -> Option<String> {
        self.listing(Node::Root, "/")
            .ok()
            .and_then(|l| l.label)
            .or_else(|| self.geo.boot_label.clone())
    }

    fn corrupt(&self, path: Option<&str>, reason: String) -> Error {
        Error::Corrupt {
            name: self.name.clone(),
            path: path.map(str::to_owned),
            reason,
        }
    }

    fn invalid(&self, path: &str, reason: &str) -> Error {
        Error::Invalid {
            name: self.name.clone(),
            path: path.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// Reads `buf.len()` bytes at byte `start` of the window.
    fn read(&self, path: Option<&str>, start: u64, buf: &mut [u8]) -> Result<(), Error> {
        let result = self.window.borrow_mut().read(start, buf);
        result.map_err(|e| match e {
            ReadFail::Outside => {
                let len = self.window.borrow().len;
                self.corrupt(
                    path,
                    format!(
                        "a read of {} bytes at byte {start} passes the end of the {len}-byte \
                         file system",
                        buf.len()
                    ),
                )
            }
            ReadFail::Source(source) => Error::Read {
                name: self.name.clone(),
                path: path.map(str::to_owned),
                source,
            },
        })
    }

    /// The byte at `offset` of the FAT in use, through the cache.
    fn fat_byte(&self, offset: u64, path: &str) -> Result<u8, Error> {
        let block = offset / FAT_BLOCK;
        // < FAT_BLOCK, so fits any usize.
        let within = (offset % FAT_BLOCK) as usize;
        let cached = self.fat_cache.borrow().byte(block, within);
        if let Some(b) = cached {
            return Ok(b);
        }
        let start = block * FAT_BLOCK;
        let outside = || {
            self.corrupt(
                Some(path),
                format!(
                    "FAT byte {offset} is past the FAT's {} bytes",
                    self.geo.fat_len
                ),
            )
        };
        let len = FAT_BLOCK.min(self.geo.fat_len.checked_sub(start).ok_or_else(outside)?);
        let mut data = vec![0u8; len as usize];
        let at = self.geo.fat_start.checked_add(start).ok_or_else(outside)?;
        self.read(Some(path), at, &mut data)?;
        let b = data.get(within).copied().ok_or_else(outside)?;
        self.fat_cache.borrow_mut().insert(block, data);
        Ok(b)
    }

    /// The FAT entry of cluster `n` (spec, "FAT Data Structure"), the 4 reserved high bits of
    /// a FAT32 entry cleared.
    fn fat_entry(&self, n: u32, path: &str) -> Result<u32, Error> {
        self.count(|w| w.fat_entries += 1);
        let n64 = u64::from(n);
        let mut bytes = [0u8; 4];
        let (offset, width) = match self.geo.fat_type {
            // 12-bit entries packed in pairs: entry n starts at byte n * 1.5.
            FatType::Fat12 => (n64 + n64 / 2, 2),
            FatType::Fat16 => (n64 * 2, 2),
            FatType::Fat32 => (n64 * 4, 4),
        };
        for (i, slot) in bytes.iter_mut().take(width).enumerate() {
            *slot = self.fat_byte(offset + i as u64, path)?;
        }
        let value = u32::from_le_bytes(bytes);
        Ok(match self.geo.fat_type {
            FatType::Fat12 if n % 2 == 1 => value >> 4,
            FatType::Fat12 => value & 0xFFF,
            FatType::Fat16 => value,
            FatType::Fat32 => value & 0x0FFF_FFFF,
        })
    }

    /// The link out of cluster `current`: `None` at the chain's end mark, else the next
    /// cluster, checked: a free or bad cluster or a number outside the volume is corruption.
    fn link(&self, current: u32, path: &str) -> Result<Option<u32>, Error> {
        let next = self.fat_entry(current, path)?;
        let max = self.geo.max_cluster();
        let corrupt = |reason: String| self.corrupt(Some(path), reason);
        if next >= self.geo.fat_type.end_of_chain() {
            return Ok(None);
        }
        if next == self.geo.fat_type.bad() {
            return Err(corrupt(format!(
                "cluster {current} links to the bad-cluster mark {next:#x}"
            )));
        }
        if next == 0 {
            return Err(corrupt(format!(
                "cluster {current} links to a free cluster (0) before the chain's end"
            )));
        }
        if next == 1 || next > max {
            return Err(corrupt(format!(
                "cluster {current} links to {next}, outside the volume's clusters 2 to {max}"
            )));
        }
        Ok(Some(next))
    }

    /// Checks that `first`, a first cluster from a directory entry, is in the volume.
    fn first_cluster(&self, first: u32, path: &str) -> Result<(), Error> {
        let max = self.geo.max_cluster();
        if (2..=max).contains(&first) {
            Ok(())
        } else {
            Err(self.corrupt(
                Some(path),
                format!("its first cluster {first} is outside the volume's clusters 2 to {max}"),
            ))
        }
    }

    /// Follows the directory chain that starts at cluster `first` to its end-of-chain mark,
    /// keeping its first `keep` clusters as runs.
    ///
    /// Every link is checked ([`Fat::link`]); a loop is corruption, found by Brent's algorithm
    /// in time proportional to the chain's length with no memory, and so is a chain longer than
    /// a directory may be, which bounds the work.
    fn walk(&self, first: u32, keep: u64, path: &str) -> Result<Chain, Error> {
        let corrupt = |reason: String| self.corrupt(Some(path), reason);
        self.first_cluster(first, path)?;
        let limit = self.geo.dir_cluster_limit();
        let mut runs: Vec<Run> = Vec::new();
        let add = |runs: &mut Vec<Run>, c: u32| {
            if let Some(last) = runs.last_mut()
                && last.first.checked_add(last.count) == Some(c)
            {
                last.count += 1;
            } else {
                runs.push(Run { first: c, count: 1 });
            }
        };
        if keep > 0 {
            add(&mut runs, first);
        }
        let mut current = first;
        let mut length: u64 = 1;
        // Brent: `saved` is compared with every later cluster and moved forward after 1, 2, 4…
        // steps; once it is inside a loop and the step count reaches the loop's length, the
        // chain comes back to it.
        let (mut saved, mut power, mut steps) = (first, 1u64, 0u64);
        while let Some(next) = self.link(current, path)? {
            if next == saved {
                return Err(corrupt(format!(
                    "the cluster chain loops back to cluster {next}"
                )));
            }
            length += 1;
            if length > limit {
                return Err(corrupt(format!(
                    "the directory is longer than {limit} clusters, more than the \
                     {MAX_DIR_ENTRIES} entries a FAT directory may hold"
                )));
            }
            if length <= keep {
                add(&mut runs, next);
            }
            current = next;
            steps += 1;
            if steps == power {
                saved = current;
                power = power.saturating_mul(2);
                steps = 0;
            }
        }
        Ok(Chain {
            runs,
            clusters: length,
        })
    }

    /// Byte offset in the window of cluster `c` (2 to `max_cluster`).
    fn cluster_offset(&self, c: u32, path: &str) -> Result<u64, Error> {
        u64::from(c)
            .checked_sub(2)
            .and_then(|i| i.checked_mul(self.geo.cluster_bytes))
            .and_then(|o| o.checked_add(self.geo.data_start))
            .ok_or_else(|| self.corrupt(Some(path), format!("cluster {c} has no offset")))
    }

    /// The bytes of the directory whose chain starts at `first`, up to the cluster holding its
    /// end mark.
    fn dir_bytes(&self, first: u32, path: &str) -> Result<Vec<u8>, Error> {
        if first == 0 {
            return Err(self.corrupt(
                Some(path),
                "a directory entry with no first cluster".to_owned(),
            ));
        }
        let chain = self.walk(first, u64::MAX, path)?;
        let cluster_bytes = usize::try_from(self.geo.cluster_bytes)
            .map_err(|_| self.corrupt(Some(path), "clusters too large".to_owned()))?;
        let mut out = Vec::new();
        for run in &chain.runs {
            for i in 0..run.count {
                let c = run.first.saturating_add(i);
                let mut buf = vec![0u8; cluster_bytes];
                self.read(Some(path), self.cluster_offset(c, path)?, &mut buf)?;
                let ends = buf.chunks_exact(DIR_ENTRY).any(|e| e.first() == Some(&0));
                out.extend_from_slice(&buf);
                if ends {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// The parsed directory `dir`, which `path` names.
    fn listing(&self, dir: Node, path: &str) -> Result<Listing, Error> {
        self.count(|w| w.directories += 1);
        let bytes = match (dir, self.geo.root) {
            (Node::Root, Root::Fixed { start, entries }) => {
                // At most 65,535 entries of 32 bytes: 2 MiB.
                let mut buf = vec![0u8; (entries * DIR_ENTRY as u64) as usize];
                self.read(Some(path), start, &mut buf)?;
                buf
            }
            (Node::Root, Root::Cluster(c)) | (Node::Dir(c), _) => self.dir_bytes(c, path)?,
            (Node::File { .. }, _) => return Err(self.invalid(path, "not a directory")),
        };
        Ok(parse_dir(&bytes, self.geo.fat_type))
    }

    /// Finds what `path` names. Components are matched without regard to case against the long
    /// and the 8.3 names; empty components and `.` are skipped, `..` goes up (FAT has no
    /// symlinks, so this is exact).
    fn lookup(&self, path: &str) -> Result<Node, Error> {
        if let Some((p, node)) = self.last_lookup.borrow().as_ref()
            && p == path
        {
            return Ok(*node);
        }
        let node = self.resolve(path)?;
        *self.last_lookup.borrow_mut() = Some((path.to_owned(), node));
        Ok(node)
    }

    /// [`Fat::lookup`]'s work, directory by directory.
    fn resolve(&self, path: &str) -> Result<Node, Error> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(self.invalid(path, "not an absolute path"));
        };
        let mut parents = Vec::new();
        let mut node = Node::Root;
        for component in rest.split('/') {
            if node.kind() != Kind::Dir {
                return Err(self.invalid(path, "a component of the path is not a directory"));
            }
            match component {
                "" | "." => {}
                ".." => node = parents.pop().unwrap_or(Node::Root),
                name => {
                    let listing = self.listing(node, path)?;
                    let found = listing
                        .entries
                        .into_iter()
                        .find(|e| same_name(&e.name, name) || same_name(&e.short, name))
                        .ok_or_else(|| Error::NotFound {
                            name: self.name.clone(),
                            path: path.to_owned(),
                        })?;
                    parents.push(node);
                    node = found.node;
                }
            }
        }
        Ok(node)
    }

    /// The size in bytes of the storage of the directory whose chain starts at `first`.
    fn dir_len(&self, first: u32, path: &str) -> Result<u64, Error> {
        if first == 0 {
            return Err(self.corrupt(
                Some(path),
                "a directory entry with no first cluster".to_owned(),
            ));
        }
        let chain = self.walk(first, 0, path)?;
        // At most dir_cluster_limit() clusters: no overflow.
        Ok(chain.clusters * self.geo.cluster_bytes)
    }

    /// The file at `path`: its first cluster and size.
    fn file(&self, path: &str) -> Result<(u32, u32), Error> {
        match self.lookup(path)? {
            Node::File { cluster, size } => Ok((cluster, size)),
            _ => Err(self.invalid(path, "is a directory, not a regular file")),
        }
    }

    /// Follows `chain` until it holds `upto` clusters (at most the `needed` its size needs).
    ///
    /// Only the links the read needs are followed, so reading the start of a file costs the
    /// same whatever its chain's length, which a corrupt or hostile FAT may make as long as the
    /// volume. Every link followed is checked as [`Fat::walk`] checks them, a loop found the
    /// moment a cluster comes back. Once the last needed cluster is reached, the link out of it
    /// is checked too: an end mark, or a longer chain, read as Linux does (the size wins).
    fn extend(&self, chain: &mut FileChain, upto: u64, path: &str) -> Result<(), Error> {
        let upto = upto.min(chain.needed);
        let corrupt = |reason: String| self.corrupt(Some(path), reason);
        // The link out of the last needed cluster is checked by the reads that reach it only,
        // so that a corrupt tail does not fail a read of the file's start.
        while chain.known < upto || (upto == chain.needed && !chain.checked_end) {
            let Some(next) = self.link(chain.last, path)? else {
                if chain.known < chain.needed {
                    return Err(corrupt(format!(
                        "its {} bytes need {} clusters of {} bytes, but its cluster chain has {}",
                        chain.size, chain.needed, self.geo.cluster_bytes, chain.known
                    )));
                }
                chain.checked_end = true;
                break;
            };
            if chain.seen.contains(next) {
                return Err(corrupt(format!(
                    "the cluster chain loops back to cluster {next}"
                )));
            }
            if chain.known == chain.needed {
                // A chain longer than the size: its extra clusters are not the file's.
                chain.checked_end = true;
                break;
            }
            chain.seen.insert(next);
            match chain.runs.last_mut() {
                Some(run) if run.first.checked_add(run.count) == Some(next) => run.count += 1,
                _ => chain.runs.push(Run {
                    first: next,
                    count: 1,
                }),
            }
            chain.known += 1;
            chain.last = next;
        }
        Ok(())
    }

    /// Reads bytes `offset..` of the file of `size` bytes whose chain starts at `first` into
    /// `buf`; returns how many, fewer than `buf.len()` only at the end of the file.
    fn read_file(
        &self,
        path: &str,
        first: u32,
        size: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        let size = u64::from(size);
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        if first == 0 {
            return Err(self.corrupt(
                Some(path),
                format!("a file of {size} bytes with no first cluster"),
            ));
        }
        self.first_cluster(first, path)?;
        let cluster_bytes = self.geo.cluster_bytes;
        let needed = size.div_ceil(cluster_bytes);
        let want = (size - offset).min(buf.len() as u64);
        // <= buf.len(), so it fits a usize.
        let want_usize = want as usize;
        let end = offset + want;

        let mut slot = self.last_file.borrow_mut();
        let chain = match slot.take() {
            Some(c) if c.first == first && c.size == size => slot.insert(c),
            _ => {
                let mut seen = Seen::default();
                seen.insert(first);
                slot.insert(FileChain {
                    first,
                    size,
                    needed,
                    runs: vec![Run { first, count: 1 }],
                    known: 1,
                    last: first,
                    seen,
                    checked_end: false,
                })
            }
        };
        self.extend(chain, end.div_ceil(cluster_bytes), path)?;

        let short = || self.corrupt(Some(path), "the cluster chain ends early".to_owned());
        let mut pos = 0u64;
        for run in &chain.runs {
            if pos >= end {
                break;
            }
            // The runs cover at most the clusters of a 4 GiB file: no overflow.
            let run_end = pos + u64::from(run.count) * cluster_bytes;
            let (lo, hi) = (pos.max(offset), run_end.min(end));
            if lo < hi {
                let disk = self.cluster_offset(run.first, path)? + (lo - pos);
                let dst = buf
                    .get_mut((lo - offset) as usize..(hi - offset) as usize)
                    .ok_or_else(short)?;
                self.read(Some(path), disk, dst)?;
            }
            pos = run_end;
        }
        if pos < end {
            return Err(short());
        }
        Ok(want_usize)
    }
}

impl super::FileSystem for Fat {
    fn name(&self) -> &Path {
        &self.name
    }

    fn kind(&self) -> &'static str {
        self.geo.fat_type.name()
    }

    fn read_dir(&self, path: &str, max: usize) -> Result<Vec<Entry>, super::Error> {
        let node = self.lookup(path)?;
        let listing = self.listing(node, path)?;
        if listing.entries.len() > max {
            return Err(Error::Invalid {
                name: self.name.clone(),
                path: path.to_owned(),
                reason: format!("a directory of more than {max} entries"),
            }
            .into());
        }
        let mut out: Vec<Entry> = listing
            .entries
            .into_iter()
            .map(|e| Entry {
                name: e.name,
                kind: e.node.kind(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn metadata(&self, path: &str) -> Result<Meta, super::Error> {
        let node = self.lookup(path)?;
        let dir = |len| Meta {
            kind: Kind::Dir,
            len,
            mode: DIR_MODE,
            uid: 0,
        };
        Ok(match (node, self.geo.root) {
            (Node::File { size, .. }, _) => Meta {
                kind: Kind::File,
                len: u64::from(size),
                mode: FILE_MODE,
                uid: 0,
            },
            (Node::Root, Root::Fixed { entries, .. }) => dir(entries * DIR_ENTRY as u64),
            (Node::Root, Root::Cluster(c)) | (Node::Dir(c), _) => dir(self.dir_len(c, path)?),
        })
    }

    fn symlink_metadata(&self, path: &str) -> Result<Meta, super::Error> {
        // FAT has no symbolic links.
        self.metadata(path)
    }

    fn read_link(&self, path: &str) -> Result<String, super::Error> {
        self.lookup(path)?;
        Err(self.invalid(path, "not a symbolic link").into())
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, super::Error> {
        let (first, size) = self.file(path)?;
        Ok(self.read_file(path, first, size, offset, buf)?)
    }

    fn read_to_vec(&self, path: &str, max: u64) -> Result<Vec<u8>, super::Error> {
        let (first, size) = self.file(path)?;
        let too_large = || Error::TooLarge {
            name: self.name.clone(),
            path: path.to_owned(),
            size: u64::from(size),
            max,
        };
        if u64::from(size) > max {
            return Err(too_large().into());
        }
        let mut out = vec![0u8; usize::try_from(size).map_err(|_| too_large())?];
        let n = self.read_file(path, first, size, 0, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{self, OpenOptions};
    use crate::fs::FileSystem;
    use std::ffi::OsStr;
    use std::process::Command;

    const M: usize = 1 << 20;
    const EFI: &str = "/EFI/BOOT/BOOTX64.EFI";
    const LONG: &str = "/A Long File Name, with spaces.txt";
    /// Files in `/many`: enough long names to fill several clusters of directory entries.
    const MANY: usize = 60;

    /// Deterministic bytes (xorshift64*).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    fn run<S: AsRef<OsStr>>(cmd: &str, args: &[S]) {
        let out = Command::new(cmd)
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1")
            // UTF-8 so that mtools takes `café.txt` as written.
            .env("LC_ALL", "C.UTF-8")
            .output()
            .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
        assert!(
            out.status.success(),
            "{cmd}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    struct Fixture {
        dir: tempfile::TempDir,
        image: PathBuf,
        /// Every file of the image and its bytes.
        files: Vec<(String, Vec<u8>)>,
    }

    impl Fixture {
        fn data(&self, path: &str) -> &[u8] {
            &self.files.iter().find(|(p, _)| p == path).unwrap().1
        }

        /// The image's file name, which stands for it in messages.
        fn name(&self) -> &str {
            self.image.file_name().unwrap().to_str().unwrap()
        }
    }

    /// A `kib`-KiB image made by `mkfs.fat -F fat` (and `mkfs_args`) and filled by mtools.
    fn build(fat: u8, kib: u32, mkfs_args: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join(format!("fat{fat}.img"));
        let img = image.to_str().unwrap().to_owned();
        let mut args: Vec<String> = ["-F", &fat.to_string(), "-C", "-n", "MKOMI"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(mkfs_args.iter().map(|s| s.to_string()));
        args.extend([img.clone(), kib.to_string()]);
        run("mkfs.fat", &args);

        let tree = dir.path().join("tree");
        let mut files = Vec::new();
        let mut put = |path: &str, data: Vec<u8>| {
            let p = tree.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &data).unwrap();
            files.push((path.to_owned(), data));
            p
        };
        put(EFI, noise(70_000, 1));
        put(
            "/loader/loader.conf",
            b"default debian.conf\ntimeout 0\n".to_vec(),
        );
        put(
            "/loader/entries/debian.conf",
            b"title Debian\nlinux /vmlinuz\n".to_vec(),
        );
        // Fits 8.3 in lower case: stored as README.TXT with the NT lower-case flags.
        put("/readme.txt", b"lower case 8.3\n".to_vec());
        put(LONG, noise(5000, 2));
        // Stored as the 8.3 name CAF\x90.TXT, lower-cased: code page 437 and the flags.
        put("/café.txt", b"code page 437\n".to_vec());
        put("/empty", Vec::new());
        for i in 0..MANY {
            put(
                &format!("/many/File Number {i:02}.bin"),
                format!("file {i}\n").into_bytes(),
            );
        }
        let mut args = vec!["-s".to_owned(), "-i".to_owned(), img.clone()];
        for top in [
            "EFI",
            "loader",
            "readme.txt",
            &LONG[1..],
            "café.txt",
            "empty",
            "many",
        ] {
            args.push(tree.join(top).to_str().unwrap().to_owned());
        }
        args.push("::/".to_owned());
        run("mcopy", &args);

        // A fragmented file: it fills the hole gap2.bin leaves, then goes on after gap3.bin.
        let mut gaps = vec!["-i".to_owned(), img.clone()];
        for (i, seed) in [(1, 11), (2, 12), (3, 13)] {
            let p = put(&format!("/gap{i}.bin"), noise(6000, seed));
            gaps.push(p.to_str().unwrap().to_owned());
        }
        gaps.push("::/".to_owned());
        run("mcopy", &gaps);
        run("mdel", &["-i", &img, "::/gap2.bin"]);
        if fat == 32 {
            // mtools allocates after FSI_Nxt_Free (FAT spec, "FAT32 FSInfo Sector Structure");
            // "unknown" makes it search from the start and fill the hole.
            let mut bytes = std::fs::read(&image).unwrap();
            let at = usize::from(le16(&bytes, 48)) * usize::from(le16(&bytes, 11)) + 492;
            bytes[at..at + 4].copy_from_slice(&[0xFF; 4]);
            std::fs::write(&image, &bytes).unwrap();
        }
        let big = put("/big.bin", noise(300_000, 4));
        run("mcopy", &["-i", &img, big.to_str().unwrap(), "::/big.bin"]);
        // Deleted entries, a long name's included, stay in the directory as 0xE5 entries.
        let gone = put("/Gone With A Long Name.txt", b"x".to_vec());
        run("mcopy", &["-i", &img, gone.to_str().unwrap(), "::/"]);
        run("mdel", &["-i", &img, "::/Gone With A Long Name.txt"]);
        files.retain(|(p, _)| p != "/gap2.bin" && !p.starts_with("/Gone"));
        Fixture { dir, image, files }
    }

    fn open_at(image: &Path, offset: u64, len: Option<u64>) -> Result<Fat, Error> {
        let src = format::open_path(image, &OpenOptions::default()).unwrap();
        let len = len.unwrap_or(src.size() - offset);
        Fat::open(src, offset, len, Path::new(image.file_name().unwrap()))
    }

    fn open(fx: &Fixture) -> Fat {
        open_at(&fx.image, 0, None).unwrap()
    }

    fn names(entries: &[Entry]) -> Vec<(&str, Kind)> {
        entries.iter().map(|e| (e.name.as_str(), e.kind)).collect()
    }

    fn check_tree(fs: &Fat, fx: &Fixture, kind: &str) {
        assert_eq!(fs.kind(), kind);
        assert_eq!(fs.label().as_deref(), Some("MKOMI"));
        for (path, data) in &fx.files {
            let len = data.len() as u64;
            assert!(fs.read_to_vec(path, len).unwrap() == *data, "{path}");
            let meta = fs.metadata(path).unwrap();
            let want = Meta {
                kind: Kind::File,
                len,
                mode: 0o644,
                uid: 0,
            };
            assert_eq!(meta, want, "{path}");
            assert_eq!(fs.symlink_metadata(path).unwrap(), want);
        }

        // Pieces of the fragmented file, across cluster and run boundaries and past its end.
        let big = fx.data("/big.bin");
        let Node::File { cluster, .. } = fs.lookup("/big.bin").unwrap() else {
            panic!("/big.bin is not a file");
        };
        assert!(fs.walk(cluster, u64::MAX, "/big.bin").unwrap().runs.len() > 1);
        let cb = fs.geo.cluster_bytes as usize;
        let n = big.len();
        for (offset, len) in [
            (0, 10),
            (cb - 3, 7),
            (2 * cb - 1, 3 * cb + 5),
            (7000, 20_000),
            (n - 10, 100),
            (n, 5),
            (n + 1, 5),
            (0, n + 1),
        ] {
            let mut buf = vec![0u8; len];
            let got = fs.read_at("/big.bin", offset as u64, &mut buf).unwrap();
            let want = big.get(offset..).unwrap_or_default();
            let want = &want[..len.min(want.len())];
            assert!(&buf[..got] == want, "read_at({offset}, {len})");
        }

        let root = fs.read_dir("/", 100).unwrap();
        assert_eq!(
            names(&root),
            [
                (&LONG[1..], Kind::File),
                ("EFI", Kind::Dir),
                ("big.bin", Kind::File),
                ("café.txt", Kind::File),
                ("empty", Kind::File),
                ("gap1.bin", Kind::File),
                ("gap3.bin", Kind::File),
                ("loader", Kind::Dir),
                ("many", Kind::Dir),
                ("readme.txt", Kind::File),
            ]
        );
        assert_eq!(
            names(&fs.read_dir("/EFI/BOOT", 10).unwrap()),
            [("BOOTX64.EFI", Kind::File)]
        );
        assert_eq!(
            names(&fs.read_dir("/loader", 10).unwrap()),
            [("entries", Kind::Dir), ("loader.conf", Kind::File)]
        );
        let many = fs.read_dir("/many", MANY).unwrap();
        let want: Vec<String> = (0..MANY)
            .map(|i| format!("File Number {i:02}.bin"))
            .collect();
        assert_eq!(
            many.iter().map(|e| &e.name).collect::<Vec<_>>(),
            want.iter().collect::<Vec<_>>()
        );
        let e = fs.read_dir("/many", MANY - 1).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: /many: a directory of more than {} entries",
                fs.name().display(),
                MANY - 1
            )
        );
        // /many's entries take more than one cluster.
        let meta = fs.metadata("/many").unwrap();
        assert_eq!((meta.kind, meta.mode, meta.uid), (Kind::Dir, 0o755, 0));
        assert!(meta.len > fs.geo.cluster_bytes, "{meta:?}");
        assert_eq!(fs.metadata("/").unwrap().kind, Kind::Dir);

        // Lookups ignore case and take 8.3 aliases, as firmware does.
        let efi = fx.data(EFI);
        for path in [
            "/efi/boot/bootx64.efi",
            "/Efi/Boot/BootX64.Efi",
            "//EFI/./BOOT/../BOOT/BOOTX64.EFI/",
        ] {
            if path.ends_with('/') {
                assert!(fs.read_to_vec(path, M as u64).is_err(), "{path}");
            } else {
                assert!(fs.read_to_vec(path, M as u64).unwrap() == efi, "{path}");
            }
        }
        let conf = fx.data("/loader/loader.conf");
        for path in [
            "/LOADER/LOADER.CONF",
            "/loader/LOADER~1.CON",
            "/../loader/loader.conf",
        ] {
            assert_eq!(fs.read_to_vec(path, 100).unwrap(), conf, "{path}");
        }
        assert_eq!(
            fs.read_to_vec("/README.TXT", 100).unwrap(),
            fx.data("/readme.txt")
        );
        assert_eq!(
            fs.read_to_vec("/CAFÉ.TXT", 100).unwrap(),
            fx.data("/café.txt")
        );
        assert_eq!(
            fs.read_to_vec("/a long file name, WITH spaces.TXT", 10_000)
                .unwrap(),
            fx.data(LONG)
        );
    }

    #[test]
    fn reads_fat12() {
        let fx = build(12, 8192, &[]);
        check_tree(&open(&fx), &fx, "fat12");
    }

    #[test]
    fn reads_fat16_with_4096_byte_sectors() {
        let fx = build(16, 32768, &["-S", "4096", "-s", "1"]);
        let fs = open(&fx);
        assert_eq!(fs.geo.sector_bytes, 4096);
        check_tree(&fs, &fx, "fat16");
    }

    #[test]
    fn reads_fat32() {
        let fx = build(32, 65536, &[]);
        check_tree(&open(&fx), &fx, "fat32");
    }

    #[test]
    fn reads_a_file_system_inside_a_larger_disk() {
        let fx = build(16, 32768, &[]);
        let fs_bytes = std::fs::read(&fx.image).unwrap();
        let disk = fx.dir.path().join("disk.raw");
        // Non-zero bytes around the file system: a read that strays shows up.
        let mut bytes = vec![0x5a; M];
        bytes.extend_from_slice(&fs_bytes);
        bytes.extend(vec![0xa5; 3 * M]);
        std::fs::write(&disk, &bytes).unwrap();
        let len = fs_bytes.len() as u64;
        let m = M as u64;
        check_tree(&open_at(&disk, m, Some(len)).unwrap(), &fx, "fat16");

        let e = open_at(&disk, m, Some(len + 4 * m))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "disk.raw: a file system of {} bytes at byte {m} does not fit the {}-byte image",
                len + 4 * m,
                bytes.len()
            )
        );
        let e = open_at(&disk, m, Some(len - 512)).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "disk.raw: the FAT file system at byte {m} has {} sectors of 512 bytes, more \
                 than its {}-byte window",
                len / 512,
                len - 512
            )
        );
        let e = open_at(&disk, m, Some(100)).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "disk.raw: no valid FAT file system at byte {m}: 100 bytes cannot hold a boot \
                 sector"
            )
        );
        let e = open_at(&disk, 0, None).unwrap_err().to_string();
        assert_eq!(
            e,
            "disk.raw: no valid FAT file system at byte 0: bytes per sector (BPB_BytsPerSec) is \
             23130, not 512, 1024, 2048 or 4096"
        );
    }

    #[test]
    fn reads_through_qcow2() {
        let fx = build(32, 65536, &[]);
        let qcow2 = fx.dir.path().join("fat32.qcow2");
        let out = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&fx.image)
            .arg(&qcow2)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let src = format::open_path(&qcow2, &OpenOptions::default()).unwrap();
        assert_eq!(src.format(), "qcow2");
        let fs = Fat::open(src, 0, 64 * M as u64, Path::new("fat32.qcow2")).unwrap();
        check_tree(&fs, &fx, "fat32");
    }

    #[test]
    fn errors_are_one_line_and_name_the_image_and_path() {
        let fx = build(12, 8192, &[]);
        let fs = open(&fx);
        let err = |e: crate::fs::Error| e.to_string();
        let e = fs.read_to_vec("/missing", 10).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(
            err(e),
            "fat12.img: /missing: no such file in the file system"
        );
        assert!(fs.metadata("/EFI/nope/x").unwrap_err().is_not_found());
        assert!(fs.read_link("/nope").unwrap_err().is_not_found());
        assert_eq!(
            err(fs.metadata("/EFI/BOOT/BOOTX64.EFI/x").unwrap_err()),
            "fat12.img: /EFI/BOOT/BOOTX64.EFI/x: a component of the path is not a directory"
        );
        assert_eq!(
            err(fs.read_to_vec("/EFI", 10).unwrap_err()),
            "fat12.img: /EFI: is a directory, not a regular file"
        );
        assert_eq!(
            err(fs.read_at("/efi/boot", 0, &mut [0; 4]).unwrap_err()),
            "fat12.img: /efi/boot: is a directory, not a regular file"
        );
        assert_eq!(
            err(fs.read_dir("/readme.txt", 10).unwrap_err()),
            "fat12.img: /readme.txt: not a directory"
        );
        assert_eq!(
            err(fs.read_link("/readme.txt").unwrap_err()),
            "fat12.img: /readme.txt: not a symbolic link"
        );
        assert_eq!(
            err(fs.read_dir("EFI", 10).unwrap_err()),
            "fat12.img: EFI: not an absolute path"
        );
        let e = fs.read_to_vec("/big.bin", 299_999).unwrap_err();
        assert!(matches!(e, crate::fs::Error::Fat(Error::TooLarge { .. })));
        assert_eq!(
            err(e),
            "fat12.img: /big.bin: 300000 bytes, more than the 299999 allowed"
        );
        assert_eq!(fs.read_to_vec("/empty", 0).unwrap(), b"");
        assert_eq!(fs.read_at("/empty", 0, &mut [0; 4]).unwrap(), 0);
    }

    /// A copy of the image with `patch` applied to its bytes; `patch` also gets the file system
    /// as opened from the original, to find what to patch.
    fn patched(fx: &Fixture, patch: impl FnOnce(&mut Vec<u8>, &Fat)) -> Fat {
        let fs = open(fx);
        let mut bytes = std::fs::read(&fx.image).unwrap();
        patch(&mut bytes, &fs);
        let copy = fx.dir.path().join("patched").join(fx.name());
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::write(&copy, &bytes).unwrap();
        open_at(&copy, 0, None).unwrap()
    }

    /// Sets FAT entry `n` of the FAT in use to `value`.
    fn set_fat(bytes: &mut [u8], geo: &Geometry, n: u32, value: u32) {
        let n64 = u64::from(n);
        match geo.fat_type {
            FatType::Fat12 => {
                let at = (geo.fat_start + n64 + n64 / 2) as usize;
                let old = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
                let v = value as u16 & 0xFFF;
                let new = if n % 2 == 1 {
                    (old & 0x000F) | (v << 4)
                } else {
                    (old & 0xF000) | v
                };
                bytes[at..at + 2].copy_from_slice(&new.to_le_bytes());
            }
            FatType::Fat16 => {
                let at = (geo.fat_start + n64 * 2) as usize;
                bytes[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes());
            }
            FatType::Fat32 => {
                let at = (geo.fat_start + n64 * 4) as usize;
                bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
    }

    /// The clusters of the chain of the file or directory at `path`.
    fn clusters(fs: &Fat, path: &str) -> Vec<u32> {
        let first = match (fs.lookup(path).unwrap(), fs.geo.root) {
            (Node::File { cluster, .. }, _) => cluster,
            (Node::Dir(c), _) | (Node::Root, Root::Cluster(c)) => c,
            other => panic!("{other:?}"),
        };
        // Walked as a directory: the test files are shorter than a directory's limit.
        let chain = fs.walk(first, u64::MAX, path).unwrap();
        chain
            .runs
            .iter()
            .flat_map(|r| (0..r.count).map(move |i| r.first + i))
            .collect()
    }

    /// `"{image}: {path}: corrupt FAT file system: "`, how corruption messages start.
    fn corrupt_at(fx: &Fixture, path: &str) -> String {
        format!("{}: {path}: corrupt FAT file system: ", fx.name())
    }

    #[test]
    fn cluster_chain_loops_are_errors_not_hangs() {
        for (fat, kib) in [(12, 8192), (32, 65536)] {
            let fx = build(fat, kib, &[]);
            let chain = clusters(&open(&fx), EFI);
            assert!(chain.len() > 10);
            let (first, mid, last) = (chain[0], chain[5], chain[chain.len() - 1]);
            for (from, to) in [(last, first), (mid, mid), (last, mid)] {
                let fs = patched(&fx, |b, fs| set_fat(b, &fs.geo, from, to));
                let e = fs.read_to_vec(EFI, M as u64).unwrap_err().to_string();
                assert!(e.starts_with(&corrupt_at(&fx, EFI)), "{e}");
                assert!(e.contains("the cluster chain loops back to cluster"), "{e}");
                // A read follows the chain only as far as it needs: the first bytes come before
                // the loop, the last ones after it.
                assert_eq!(fs.read_at(EFI, 0, &mut [0; 10]).unwrap(), 10);
                let e = fs
                    .read_at(EFI, 69_999, &mut [0; 10])
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("loops back"), "{e}");
                // The file's entry is still there.
                assert_eq!(fs.metadata(EFI).unwrap().len, 70_000);
            }

            // A loop in a directory's chain.
            let dir = clusters(&open(&fx), "/many");
            assert!(dir.len() > 1, "{dir:?}");
            let fs = patched(&fx, |b, fs| set_fat(b, &fs.geo, dir[dir.len() - 1], dir[0]));
            for e in [
                fs.read_dir("/many", 1000).unwrap_err(),
                fs.metadata("/many").unwrap_err(),
                fs.read_to_vec("/many/File Number 59.bin", 100).unwrap_err(),
            ] {
                let e = e.to_string();
                assert!(
                    e.contains(": corrupt FAT file system: the cluster chain loops back"),
                    "{e}"
                );
            }
        }
    }

    /// The clusters a chain has met: ranges merge as they touch, and membership is exact.
    #[test]
    fn seen_clusters_merge_into_ranges() {
        let mut seen = Seen::default();
        for c in [10, 12, 11, 20, 9, 19, u32::MAX] {
            assert!(!seen.contains(c), "{c}");
            seen.insert(c);
            assert!(seen.contains(c), "{c}");
        }
        let ranges: Vec<(u32, u32)> = seen.0.iter().map(|(&f, &n)| (f, n)).collect();
        assert_eq!(ranges, [(9, 4), (19, 2), (u32::MAX, 1)]);
        for c in [0, 8, 13, 18, 21, u32::MAX - 1] {
            assert!(!seen.contains(c), "{c}");
        }
    }

    /// A read costs the FAT lookups of the clusters it reads, however long the chain: a hostile
    /// chain through every cluster of the volume costs nothing to a read of the first bytes.
    /// And a file read piece by piece resolves its path once.
    #[test]
    fn reads_follow_the_chain_only_as_far_as_they_need() {
        let fx = build(32, 65536, &[]);
        let fs = open(&fx);
        let chain = clusters(&fs, EFI);
        let cb = fs.geo.cluster_bytes;
        // Every free cluster from the last one down, linked after the file's last cluster.
        let last = chain[chain.len() - 1];
        let spare: Vec<u32> = (2..=fs.geo.max_cluster())
            .rev()
            .filter(|&c| fs.fat_entry(c, "/").unwrap() == 0)
            .collect();
        assert!(spare.len() > 60_000, "{} free clusters", spare.len());
        let huge = chain.len() as u64 + spare.len() as u64;
        let entry = |b: &[u8]| b.windows(11).position(|w| w == b"BOOTX64 EFI").unwrap();
        for size in [70_000, (huge * cb) as u32] {
            let fs = patched(&fx, |b, fs| {
                let mut prev = last;
                for &c in &spare {
                    set_fat(b, &fs.geo, prev, c);
                    prev = c;
                }
                set_fat(b, &fs.geo, prev, 0x0FFF_FFFF);
                let at = entry(b);
                b[at + 28..at + 32].copy_from_slice(&size.to_le_bytes());
            });
            assert_eq!(fs.metadata(EFI).unwrap().len, u64::from(size));
            let before = fs.work();
            let mut head = [0u8; 64];
            assert_eq!(fs.read_at(EFI, 0, &mut head).unwrap(), 64);
            assert!(head[..] == fx.data(EFI)[..64]);
            // The first cluster comes from the directory entry: no FAT entry is needed.
            assert_eq!(fs.work(), before, "size {size}");
            // The third cluster: two links.
            let mut buf = [0u8; 10];
            fs.read_at(EFI, 2 * cb, &mut buf).unwrap();
            assert!(buf[..] == fx.data(EFI)[2 * cb as usize..2 * cb as usize + 10]);
            assert_eq!(fs.work().fat_entries - before.fat_entries, 2, "size {size}");
            assert_eq!(fs.work().directories, before.directories, "size {size}");
        }
        // Reading the whole file (its size unchanged) costs its own clusters' links and the
        // check of the link after its last cluster, not the tens of thousands after.
        let fs = patched(&fx, |b, fs| {
            let mut prev = last;
            for &c in &spare {
                set_fat(b, &fs.geo, prev, c);
                prev = c;
            }
            set_fat(b, &fs.geo, prev, 0x0FFF_FFFF);
        });
        fs.metadata(EFI).unwrap();
        let before = fs.work();
        assert!(fs.read_to_vec(EFI, M as u64).unwrap() == fx.data(EFI));
        let needed = 70_000u64.div_ceil(cb);
        assert_eq!(fs.work().fat_entries - before.fat_entries, needed);
        // Piece by piece: the path is resolved once, the chain followed once.
        let fs = open(&fx);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        let mut per_read = Vec::new();
        loop {
            let n = fs.read_at(EFI, got.len() as u64, &mut buf).unwrap();
            per_read.push(fs.work());
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == fx.data(EFI));
        let first = per_read[0];
        let end = per_read[per_read.len() - 1];
        assert_eq!(end.directories, first.directories, "{per_read:?}");
        // The first read followed the links to its own last cluster; the others, the rest.
        let first_upto = 4096u64.div_ceil(cb).min(needed);
        let first_links = first_upto - 1 + u64::from(first_upto == needed);
        assert_eq!(
            end.fat_entries - first.fat_entries,
            needed - first_links,
            "{per_read:?}"
        );
    }

    #[test]
    fn directories_longer_than_fat_allows_are_errors() {
        let fx = build(12, 8192, &[]);
        let fs = open(&fx);
        let limit = fs.geo.dir_cluster_limit();
        assert_eq!(limit, 1024);
        let dir = clusters(&fs, "/many");
        // Free clusters, linked one to the next after /many's last: its chain passes the limit.
        let spare: Vec<u32> = (2500..2500 + limit as u32).collect();
        for &c in &spare {
            assert_eq!(fs.fat_entry(c, "/").unwrap(), 0, "cluster {c} is not free");
        }
        let fs = patched(&fx, |b, fs| {
            let mut prev = dir[dir.len() - 1];
            for &c in &spare {
                set_fat(b, &fs.geo, prev, c);
                prev = c;
            }
            set_fat(b, &fs.geo, prev, 0xFFF);
        });
        let want = format!(
            "{}the directory is longer than 1024 clusters, more than the 65536 entries a FAT \
             directory may hold",
            corrupt_at(&fx, "/many")
        );
        assert_eq!(fs.read_dir("/many", 1000).unwrap_err().to_string(), want);
        assert_eq!(fs.metadata("/many").unwrap_err().to_string(), want);
        // One cluster less is within the limit; the spare clusters read as zeros, which end
        // the directory.
        let fs = patched(&fx, |b, fs| {
            let mut prev = dir[dir.len() - 1];
            for &c in &spare[..spare.len() - dir.len() - 1] {
                set_fat(b, &fs.geo, prev, c);
                prev = c;
            }
            set_fat(b, &fs.geo, prev, 0xFFF);
        });
        assert_eq!(fs.read_dir("/many", 1000).unwrap().len(), MANY);
        assert_eq!(fs.metadata("/many").unwrap().len, (limit - 1) * 2048);
    }

    #[test]
    fn bad_links_in_a_chain_are_errors() {
        let fx = build(32, 65536, &[]);
        let fs = open(&fx);
        let chain = clusters(&fs, EFI);
        let max = fs.geo.max_cluster();
        let first = chain[0];
        let prefix = corrupt_at(&fx, EFI);
        for (value, reason) in [
            (
                max + 1,
                format!(
                    "cluster {first} links to {}, outside the volume's clusters 2 to {max}",
                    max + 1
                ),
            ),
            (
                0x0FFF_FFF0,
                format!(
                    "cluster {first} links to 268435440, outside the volume's clusters 2 to {max}"
                ),
            ),
            (
                1,
                format!("cluster {first} links to 1, outside the volume's clusters 2 to {max}"),
            ),
            (
                0,
                format!("cluster {first} links to a free cluster (0) before the chain's end"),
            ),
            (
                0x0FFF_FFF7,
                format!("cluster {first} links to the bad-cluster mark 0xffffff7"),
            ),
        ] {
            let fs = patched(&fx, |b, fs| set_fat(b, &fs.geo, first, value));
            let e = fs.read_to_vec(EFI, M as u64).unwrap_err().to_string();
            assert_eq!(e, format!("{prefix}{reason}"));
        }
        // The high 4 bits of a FAT32 entry are reserved and ignored.
        let fs = patched(&fx, |b, fs| {
            set_fat(b, &fs.geo, first, 0xF000_0000 | chain[1])
        });
        assert!(fs.read_to_vec(EFI, M as u64).unwrap() == fx.data(EFI));
    }

    #[test]
    fn entries_that_point_outside_the_volume_or_past_their_chain_are_errors() {
        let fx = build(12, 8192, &[]);
        let fs = open(&fx);
        let max = fs.geo.max_cluster();
        let cb = fs.geo.cluster_bytes;
        let entry = |b: &[u8]| b.windows(11).position(|w| w == b"BOOTX64 EFI").unwrap();

        let fs = patched(&fx, |b, _| {
            let at = entry(b);
            b[at + 26..at + 28].copy_from_slice(&(max as u16 + 1).to_le_bytes());
        });
        let e = fs.read_to_vec(EFI, M as u64).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}its first cluster {} is outside the volume's clusters 2 to {max}",
                corrupt_at(&fx, EFI),
                max + 1
            )
        );

        // A size that needs more clusters than the chain has.
        let size = 70_000 + 3 * cb as u32;
        let fs = patched(&fx, |b, _| {
            let at = entry(b);
            b[at + 28..at + 32].copy_from_slice(&size.to_le_bytes());
        });
        let chain = 70_000u64.div_ceil(cb);
        let e = fs.read_to_vec(EFI, M as u64).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}its {size} bytes need {} clusters of {cb} bytes, but its cluster chain has \
                 {chain}",
                corrupt_at(&fx, EFI),
                chain + 3
            )
        );
        // Only a read that needs the missing clusters finds them missing.
        assert_eq!(fs.read_at(EFI, 0, &mut [0; 1]).unwrap(), 1);
        let e = fs
            .read_at(EFI, u64::from(size) - 1, &mut [0; 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster chain has"), "{e}");

        // A smaller size is read as Linux reads it: the size wins.
        let fs = patched(&fx, |b, _| {
            let at = entry(b);
            b[at + 28..at + 32].copy_from_slice(&1000u32.to_le_bytes());
        });
        assert!(fs.read_to_vec(EFI, M as u64).unwrap() == fx.data(EFI)[..1000]);

        // A size with no cluster.
        let fs = patched(&fx, |b, _| {
            let at = entry(b);
            b[at + 26..at + 28].copy_from_slice(&[0, 0]);
        });
        let e = fs.read_to_vec(EFI, M as u64).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}a file of 70000 bytes with no first cluster",
                corrupt_at(&fx, EFI)
            )
        );
    }

    #[test]
    fn bad_boot_sectors_are_refused_naming_the_field() {
        let fx = build(12, 8192, &[]);
        let prefix = "fat12.img: no valid FAT file system at byte 0: ";
        for (at, value, reason) in [
            (
                11,
                &[0xE8, 0x03][..],
                "bytes per sector (BPB_BytsPerSec) is 1000, not 512, 1024, 2048 or 4096",
            ),
            (
                13,
                &[0],
                "sectors per cluster (BPB_SecPerClus) is 0, not a power of two from 1 to 128",
            ),
            (
                13,
                &[3],
                "sectors per cluster (BPB_SecPerClus) is 3, not a power of two from 1 to 128",
            ),
            (
                14,
                &[0, 0],
                "reserved sector count (BPB_RsvdSecCnt) is 0, not at least 1",
            ),
            (16, &[0], "number of FATs (BPB_NumFATs) is 0"),
            (
                17,
                &[0, 0],
                "a fat16 volume (4089 clusters) has no root directory (BPB_RootEntCnt is 0)",
            ),
            (
                21,
                &[0x12],
                "media type (BPB_Media) is 0x12, not 0xf0 or 0xf8 to 0xff",
            ),
            (
                22,
                &[1, 0],
                "FAT size (BPB_FATSz) of 1 sectors is 512 bytes, too small for the 8176 bytes \
                 of entries of 4086 clusters",
            ),
            (
                19,
                &[0, 0],
                "total sector count (BPB_TotSec16 and BPB_TotSec32) is 0",
            ),
            (
                19,
                &[30, 0],
                "the reserved sectors, FATs and root directory take 60 sectors, leaving no data \
                 sectors of the 30 (BPB_TotSec)",
            ),
        ] {
            let mut bytes = std::fs::read(&fx.image).unwrap();
            bytes[at..at + value.len()].copy_from_slice(value);
            let copy = fx.dir.path().join("fat12.img.bad");
            std::fs::write(&copy, &bytes).unwrap();
            let src = format::open_path(&copy, &OpenOptions::default()).unwrap();
            let size = src.size();
            let e = Fat::open(src, 0, size, Path::new("fat12.img"))
                .unwrap_err()
                .to_string();
            assert_eq!(e, format!("{prefix}{reason}"), "byte {at}");
        }

        let fx = build(32, 65536, &[]);
        let fs = open(&fx);
        let max = fs.geo.max_cluster();
        for (at, value, reason) in [
            (
                44,
                &0x0FFF_FFFFu32.to_le_bytes()[..],
                format!(
                    "root cluster (BPB_RootClus) is 268435455, outside the clusters 2 to {max}"
                ),
            ),
            (
                44,
                &[1, 0, 0, 0],
                format!("root cluster (BPB_RootClus) is 1, outside the clusters 2 to {max}"),
            ),
            (
                42,
                &[1, 0],
                "FAT32 version (BPB_FSVer) is 0.1, not 0.0".to_owned(),
            ),
            (
                40,
                &[0x82, 0],
                "the active FAT (BPB_ExtFlags) is number 2, but there are 2".to_owned(),
            ),
            (
                17,
                &[0, 2],
                format!(
                    "a fat32 volume ({} clusters) must have BPB_RootEntCnt = 0, not 512",
                    max - 1
                ),
            ),
        ] {
            let mut bytes = std::fs::read(&fx.image).unwrap();
            bytes[at..at + value.len()].copy_from_slice(value);
            let copy = fx.dir.path().join("fat32.img.bad");
            std::fs::write(&copy, &bytes).unwrap();
            let src = format::open_path(&copy, &OpenOptions::default()).unwrap();
            let size = src.size();
            let e = Fat::open(src, 0, size, Path::new("fat32.img"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("fat32.img: no valid FAT file system at byte 0: "),
                "{e}"
            );
            if at != 17 {
                assert!(e.ends_with(&reason), "{e}");
            } else {
                // 512 root entries also move the data area: only the field is checked.
                assert!(e.contains("must have BPB_RootEntCnt = 0, not 512"), "{e}");
            }
        }
        // The active FAT, mirroring off: the second FAT is the one read.
        let fs = patched(&fx, |b, _| b[40..42].copy_from_slice(&[0x81, 0]));
        assert_eq!(
            fs.geo.fat_start,
            open(&fx).geo.fat_start + open(&fx).geo.fat_len
        );
        assert!(fs.read_to_vec(EFI, M as u64).unwrap() == fx.data(EFI));
    }

    #[test]
    fn a_long_name_with_a_wrong_checksum_gives_way_to_the_short_name() {
        let fx = build(12, 8192, &[]);
        let fs = patched(&fx, |b, _| {
            let at = b.windows(11).position(|w| w == b"ALONGF~1TXT").unwrap();
            // The long-name entry just before the short one.
            b[at - 32 + 13] ^= 0xFF;
        });
        let root = fs.read_dir("/", 100).unwrap();
        assert!(root.iter().any(|e| e.name == "ALONGF~1.TXT"), "{root:?}");
        assert!(!root.iter().any(|e| e.name == LONG[1..]), "{root:?}");
        assert_eq!(
            fs.read_to_vec("/alongf~1.txt", 10_000).unwrap(),
            fx.data(LONG)
        );
        assert!(fs.metadata(LONG).unwrap_err().is_not_found());
    }

    #[test]
    fn reads_the_esp_our_builder_writes() {
        use crate::layout::fat::{FileSource, build};
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("esp.img");
        let files = [
            ("EFI/BOOT/BOOTX64.EFI", noise(150_000, 1)),
            (
                "loader/loader.conf",
                b"default debian.conf\ntimeout 0\n".to_vec(),
            ),
            (
                "loader/entries/debian.conf",
                b"title Debian\nlinux /vmlinuz\n".to_vec(),
            ),
            ("vmlinuz", noise(3 * M + 12_345, 7)),
            ("empty", Vec::new()),
        ];
        let inputs: Vec<(String, FileSource)> = files
            .iter()
            .map(|(p, d)| (p.to_string(), FileSource::Bytes(d.clone())))
            .collect();
        build(
            &img,
            64 * M as u64,
            "ESP",
            0x1234_abcd,
            1_709_213_863,
            &inputs,
        )
        .unwrap();
        let fs = open_at(&img, 0, None).unwrap();
        assert_eq!(fs.kind(), "fat32");
        assert_eq!(fs.label().as_deref(), Some("ESP"));
        for (path, data) in &files {
            let path = format!("/{path}");
            assert!(
                fs.read_to_vec(&path, 4 * M as u64).unwrap() == *data,
                "{path}"
            );
            assert_eq!(fs.metadata(&path).unwrap().len, data.len() as u64);
        }
        assert_eq!(
            names(&fs.read_dir("/", 10).unwrap()),
            [
                ("EFI", Kind::Dir),
                ("empty", Kind::File),
                ("loader", Kind::Dir),
                ("vmlinuz", Kind::File),
            ]
        );
        assert_eq!(
            names(&fs.read_dir("/loader", 10).unwrap()),
            [("entries", Kind::Dir), ("loader.conf", Kind::File)]
        );
        assert_eq!(
            names(&fs.read_dir("/EFI/BOOT", 10).unwrap()),
            [("BOOTX64.EFI", Kind::File)]
        );
    }

    /// The long-name entries that precede `short` for `name`, stored last part first.
    fn long_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
        let mut units: Vec<u16> = name.encode_utf16().collect();
        if !units.len().is_multiple_of(LONG_UNITS) {
            units.push(0);
        }
        while !units.len().is_multiple_of(LONG_UNITS) {
            units.push(0xFFFF);
        }
        let count = units.len() / LONG_UNITS;
        let sum = short_checksum(short);
        (1..=count)
            .rev()
            .map(|ord| {
                let mut e = [0u8; 32];
                e[0] = ord as u8 | if ord == count { LAST_LONG_ENTRY } else { 0 };
                e[11] = ATTR_LONG_NAME;
                e[13] = sum;
                for (k, &at) in LONG_UNIT_OFFSETS.iter().enumerate() {
                    let u = units[(ord - 1) * LONG_UNITS + k];
                    e[at..at + 2].copy_from_slice(&u.to_le_bytes());
                }
                e
            })
            .collect()
    }

    fn short_entry(name: &[u8; 11], attr: u8, nt: u8, cluster: u16, size: u32) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(name);
        e[11] = attr;
        e[12] = nt;
        e[26..28].copy_from_slice(&cluster.to_le_bytes());
        e[28..32].copy_from_slice(&size.to_le_bytes());
        e
    }

    #[test]
    fn directory_entries_are_parsed_as_the_spec_says() {
        let mut dir: Vec<[u8; 32]> = vec![
            short_entry(DOT, ATTR_DIRECTORY, 0, 5, 0),
            short_entry(DOT_DOT, ATTR_DIRECTORY, 0, 0, 0),
            short_entry(b"MYVOL      ", ATTR_VOLUME_ID, 0, 0, 0),
        ];
        let hello = b"HELLOW~1TXT";
        dir.extend(long_entries("Hello, World: a name of 30.txt", hello));
        dir.push(short_entry(hello, 0x20, 0, 6, 12));
        // Deleted: its long name and short entry start with 0xE5.
        let mut gone = long_entries("deleted file.txt", b"DELETE~1TXT");
        for e in &mut gone {
            e[0] = FREE_ENTRY;
        }
        dir.extend(gone);
        dir.push(short_entry(b"\xe5ELETE~1TXT", 0x20, 0, 7, 1));
        dir.push(short_entry(
            b"README  TXT",
            0x20,
            NT_LOWER_BASE | NT_LOWER_EXT,
            8,
            3,
        ));
        dir.push(short_entry(b"MAKEFILE   ", 0x20, NT_LOWER_BASE, 9, 3));
        dir.push(short_entry(b"X       C  ", 0x20, NT_LOWER_EXT, 10, 3));
        // 0x05 stands for a leading 0xE5 (σ in code page 437).
        dir.push(short_entry(b"\x05ABC    TXT", 0x20, 0, 11, 3));
        // A long name whose checksum matches another entry: an orphan, ignored.
        dir.extend(long_entries("orphan name.txt", b"SOMETHINGEL"));
        dir.push(short_entry(b"PLAIN   TXT", 0x20, 0, 12, 3));
        // A long name that breaks off midway (its last part missing).
        let mut broken = long_entries("a name of more than thirteen units.txt", b"ANAMEO~1TXT");
        broken.remove(0);
        dir.extend(broken);
        dir.push(short_entry(b"ANAMEO~1TXT", 0x20, 0, 13, 3));
        // A long name that cannot be a path component.
        dir.extend(long_entries("a/b", b"AB         "));
        dir.push(short_entry(b"AB         ", ATTR_DIRECTORY, 0, 14, 0));
        dir.push([0u8; 32]);
        // After the end mark, nothing counts.
        dir.push(short_entry(b"AFTER   TXT", 0x20, 0, 15, 3));
        let bytes: Vec<u8> = dir.concat();

        let listing = parse_dir(&bytes, FatType::Fat16);
        assert_eq!(listing.label.as_deref(), Some("MYVOL"));
        let got: Vec<(&str, &str, Node)> = listing
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.short.as_str(), e.node))
            .collect();
        let file = |cluster, size| Node::File { cluster, size };
        assert_eq!(
            got,
            [
                (
                    "Hello, World: a name of 30.txt",
                    "HELLOW~1.TXT",
                    file(6, 12)
                ),
                ("readme.txt", "readme.txt", file(8, 3)),
                ("makefile", "makefile", file(9, 3)),
                ("X.c", "X.c", file(10, 3)),
                ("σABC.TXT", "σABC.TXT", file(11, 3)),
                ("PLAIN.TXT", "PLAIN.TXT", file(12, 3)),
                ("ANAMEO~1.TXT", "ANAMEO~1.TXT", file(13, 3)),
                ("AB", "AB", Node::Dir(14)),
            ]
        );

        // FAT32 takes the high 16 bits of the first cluster too; FAT16 ignores them.
        let mut e = short_entry(b"BIG     BIN", 0x20, 0, 2, 3);
        e[20..22].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            parse_dir(&e, FatType::Fat32).entries[0].node,
            file(0x1_0002, 3)
        );
        assert_eq!(parse_dir(&e, FatType::Fat16).entries[0].node, file(2, 3));
    }

    #[test]
    fn checksums_and_code_page_437() {
        // The spec's ChkSum over "README  TXT", computed by hand with its rotate-and-add.
        let mut sum = 0u8;
        for &b in b"README  TXT" {
            sum = (if sum & 1 == 1 { 0x80u8 } else { 0 })
                .wrapping_add(sum >> 1)
                .wrapping_add(b);
        }
        assert_eq!(short_checksum(b"README  TXT"), sum);
        assert_eq!(CP437_HIGH.chars().count(), 128);
        assert_eq!(cp437(b'A'), 'A');
        assert_eq!(cp437(0x80), 'Ç');
        assert_eq!(cp437(0x90), 'É');
        assert_eq!(cp437(0xE1), 'ß');
        assert_eq!(cp437(0xFF), '\u{a0}');
        assert_eq!(label_text(b"NO NAME    "), None);
        assert_eq!(label_text(b"           "), None);
        assert_eq!(label_text(b"ESP        ").as_deref(), Some("ESP"));
        assert!(same_name("BOOTX64.EFI", "bootx64.efi"));
        assert!(same_name("CAFÉ", "café"));
        assert!(!same_name("a", "ab"));
    }

    #[test]
    fn reads_outside_the_window_are_errors() {
        let fx = build(12, 8192, &[]);
        let src = format::open_path(&fx.image, &OpenOptions::default()).unwrap();
        let mut w = Window {
            source: src,
            offset: M as u64,
            len: 4096,
        };
        let mut buf = [0u8; 16];
        assert!(w.read(4080, &mut buf).is_ok());
        assert!(matches!(w.read(4081, &mut buf), Err(ReadFail::Outside)));
        assert!(matches!(
            w.read(u64::MAX - 3, &mut buf),
            Err(ReadFail::Outside)
        ));
    }
}
