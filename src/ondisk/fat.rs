//! FAT12, FAT16 and FAT32 (Microsoft, "FAT: General Overview of On-Disk Format", version 1.03;
//! "the spec" below, cited by section): the boot sector's BPB, FAT entries, directory entries,
//! long names, and the one cluster-chain walker, which checks every link and finds loops.
//!
//! [`crate::fs::fat`] reads untrusted volumes with the decoders, and [`crate::layout::fat`]
//! writes FAT32 volumes with the encoders (boot sector, FSInfo, short and long directory
//! entries); the reader's tests decode what the encoders make. Nothing here reads or writes a
//! disk: the callers read the bytes and hand them in (FAT entries through a function given to
//! the walker), so each keeps its own I/O and its own errors. Everything decoded from the disk
//! is checked before use; a wrong field or link is an `Err` with a one-line reason, never a
//! panic.

use std::collections::BTreeMap;

/// Bytes of the boot sector that hold the BPB: the BPB lies in the first 90 bytes and no sector
/// is smaller than 512 bytes (spec, "Boot Sector and BPB").
pub const BOOT_SECTOR: usize = 512;
/// Size of a directory entry (spec, "FAT Directory Structure").
pub const DIR_ENTRY: usize = 32;
/// Most 32-byte entries a directory may hold: 65,536 (2 MiB), the FAT limit that Windows and
/// Linux (`FAT_MAX_DIR_ENTRIES` in `msdos_fs.h`) enforce, entries being numbered in 16 bits. A
/// longer directory chain is taken as corruption, which also bounds what reading one directory
/// costs.
pub const MAX_DIR_ENTRIES: u64 = 65_536;
/// The largest cluster count FAT32 can address: cluster numbers run from 2 to count + 1, which
/// must stay below the bad-cluster mark 0x0FFFFFF7 (spec, "FAT Data Structure").
const MAX_FAT32_CLUSTERS: u64 = 0x0FFF_FFF5;

/// Attribute bit of the volume label entry (spec, "FAT Directory Structure").
pub const ATTR_VOLUME_ID: u8 = 0x08;
/// Attribute bit of a directory.
pub const ATTR_DIRECTORY: u8 = 0x10;
/// Attribute value of a long-name entry, under [`ATTR_LONG_NAME_MASK`] (spec, "FAT Long
/// Directory Entries").
pub const ATTR_LONG_NAME: u8 = 0x0F;
/// The attribute bits compared to find a long-name entry.
pub const ATTR_LONG_NAME_MASK: u8 = 0x3F;
/// Flag of `LDIR_Ord` on the last (first stored) entry of a long name.
pub const LAST_LONG_ENTRY: u8 = 0x40;
/// A long name has at most 255 characters, so at most 20 entries of 13.
const MAX_LONG_ENTRIES: u8 = 20;
/// Characters (UCS-2 units) held by one long-name entry.
pub const LONG_UNITS: usize = 13;
/// Offsets of those characters in the entry: `LDIR_Name1`, `LDIR_Name2`, `LDIR_Name3`.
pub const LONG_UNIT_OFFSETS: [usize; LONG_UNITS] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/// `DIR_NTRes` flag: the base name is shown in lower case (Windows NT, not in the spec but
/// written by Windows, mtools and Linux for names such as `readme.txt`).
pub const NT_LOWER_BASE: u8 = 0x08;
/// `DIR_NTRes` flag: the extension is shown in lower case.
pub const NT_LOWER_EXT: u8 = 0x10;
/// First name byte of a free (deleted) entry.
pub const FREE_ENTRY: u8 = 0xE5;
/// First name byte that stands for a real 0xE5 (a KANJI lead byte) in a name.
pub const KANJI_E5: u8 = 0x05;
/// The name bytes of the `.` entry of a subdirectory.
pub const DOT: &[u8; 11] = b".          ";
/// The name bytes of the `..` entry of a subdirectory.
pub const DOT_DOT: &[u8; 11] = b"..         ";

/// Code page 437's characters for bytes 0x80 to 0xFF, the code page Linux assumes for 8.3 names.
pub(crate) const CP437_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»\
░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";

/// The three FAT types, told apart by the cluster count (spec, "FAT Type Determination").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// 12-bit FAT entries, fewer than 4085 clusters.
    Fat12,
    /// 16-bit FAT entries, fewer than 65525 clusters.
    Fat16,
    /// 32-bit FAT entries (28 bits used).
    Fat32,
}

impl FatType {
    /// `fat12`, `fat16` or `fat32`, as reports name the file system.
    pub fn name(self) -> &'static str {
        match self {
            FatType::Fat12 => "fat12",
            FatType::Fat16 => "fat16",
            FatType::Fat32 => "fat32",
        }
    }

    /// The lowest end-of-chain mark (spec, "FAT Data Structure": any value from it up ends a
    /// chain).
    pub fn end_of_chain(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFF8,
            FatType::Fat16 => 0xFFF8,
            FatType::Fat32 => 0x0FFF_FFF8,
        }
    }

    /// The bad-cluster mark, never part of a chain.
    pub fn bad(self) -> u32 {
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

    /// Where the FAT entry of cluster `n` is stored: its first byte's offset in the FAT and
    /// how many bytes to read (spec, "FAT Data Structure"); decode them with
    /// [`FatType::entry_value`].
    pub fn entry_location(self, n: u32) -> (u64, usize) {
        let n64 = u64::from(n);
        match self {
            // 12-bit entries packed in pairs: entry n starts at byte n * 1.5.
            FatType::Fat12 => (n64 + n64 / 2, 2),
            FatType::Fat16 => (n64 * 2, 2),
            FatType::Fat32 => (n64 * 4, 4),
        }
    }

    /// The FAT entry of cluster `n` from the bytes at [`FatType::entry_location`] (little
    /// endian, unused bytes zero), the 4 reserved high bits of a FAT32 entry cleared.
    pub fn entry_value(self, n: u32, bytes: [u8; 4]) -> u32 {
        let value = u32::from_le_bytes(bytes);
        match self {
            FatType::Fat12 if n % 2 == 1 => value >> 4,
            FatType::Fat12 => value & 0xFFF,
            FatType::Fat16 => value,
            FatType::Fat32 => value & 0x0FFF_FFFF,
        }
    }
}

/// Where the root directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// FAT12/16: a fixed region of `entries` entries at byte `start` of the volume.
    Fixed {
        /// Byte offset in the volume.
        start: u64,
        /// Number of 32-byte entries (`BPB_RootEntCnt`).
        entries: u64,
    },
    /// FAT32: a cluster chain like any directory (`BPB_RootClus`).
    Cluster(u32),
}

/// The layout of the volume, from a validated BPB. All offsets are bytes within the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// The FAT type, from the cluster count.
    pub fat_type: FatType,
    /// Bytes per sector.
    pub sector_bytes: u64,
    /// Sectors of the volume.
    pub total_sectors: u64,
    /// Bytes per cluster.
    pub cluster_bytes: u64,
    /// Start of the FAT in use (the first, or the active one when mirroring is off).
    pub fat_start: u64,
    /// Length of one FAT; holds at least `clusters + 2` entries.
    pub fat_len: u64,
    /// Start of cluster 2.
    pub data_start: u64,
    /// Count of data clusters: valid cluster numbers are 2 to `clusters + 1`, and all of them
    /// lie inside the volume's sectors.
    pub clusters: u32,
    /// Where the root directory is.
    pub root: Root,
    /// `BS_VolLab`, if the extended boot signature says it is there and it is not `NO NAME`.
    pub boot_label: Option<String>,
}

impl Geometry {
    /// The highest valid cluster number.
    pub fn max_cluster(&self) -> u32 {
        // No overflow: clusters <= MAX_FAT32_CLUSTERS.
        self.clusters.saturating_add(1)
    }

    /// Most clusters a directory chain may have: 65,536 entries, rounded up to whole clusters.
    pub fn dir_cluster_limit(&self) -> u64 {
        (MAX_DIR_ENTRIES * DIR_ENTRY as u64).div_ceil(self.cluster_bytes)
    }

    /// Byte offset in the volume of cluster `c`; `None` for a number below 2 (callers check
    /// numbers against [`Geometry::max_cluster`] first, which keeps the offset in the volume).
    pub fn cluster_offset(&self, c: u32) -> Option<u64> {
        u64::from(c)
            .checked_sub(2)
            .and_then(|i| i.checked_mul(self.cluster_bytes))
            .and_then(|o| o.checked_add(self.data_start))
    }

    /// Checks that `first`, a first cluster from a directory entry or the BPB, is in the volume.
    fn check_first(&self, first: u32) -> Result<(), String> {
        let max = self.max_cluster();
        if (2..=max).contains(&first) {
            Ok(())
        } else {
            Err(format!(
                "its first cluster {first} is outside the volume's clusters 2 to {max}"
            ))
        }
    }

    /// The link out of cluster `current` whose FAT entry is `next`: `None` at the chain's end
    /// mark, else the next cluster, checked: a free or bad cluster or a number outside the
    /// volume is corruption.
    fn check_link(&self, current: u32, next: u32) -> Result<Option<u32>, String> {
        let max = self.max_cluster();
        if next >= self.fat_type.end_of_chain() {
            return Ok(None);
        }
        if next == self.fat_type.bad() {
            return Err(format!(
                "cluster {current} links to the bad-cluster mark {next:#x}"
            ));
        }
        if next == 0 {
            return Err(format!(
                "cluster {current} links to a free cluster (0) before the chain's end"
            ));
        }
        if next == 1 || next > max {
            return Err(format!(
                "cluster {current} links to {next}, outside the volume's clusters 2 to {max}"
            ));
        }
        Ok(Some(next))
    }
}

/// The little-endian u16 at `at` of `b`; 0 past its end.
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

/// The little-endian u32 at `at` of `b`; 0 past its end.
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Validates the BPB of `boot` (spec, "Boot Sector and BPB", "FAT Type Determination") and
/// derives the volume's layout; `Err` names the wrong field and its value.
pub fn geometry(boot: &[u8; BOOT_SECTOR]) -> Result<Geometry, String> {
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
pub fn label_text(bytes: &[u8]) -> Option<String> {
    let text: String = trim_spaces(bytes).iter().map(|&b| cp437(b)).collect();
    (!text.is_empty() && text != "NO NAME").then_some(text)
}

/// `bytes` without its trailing spaces (the padding of 8.3 names and labels).
pub fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    bytes.get(..end).unwrap_or_default()
}

/// The character code page 437 gives byte `b`.
pub fn cp437(b: u8) -> char {
    match b.checked_sub(0x80) {
        None => char::from(b),
        Some(i) => CP437_HIGH
            .chars()
            .nth(usize::from(i))
            .unwrap_or(char::REPLACEMENT_CHARACTER),
    }
}

/// A run of consecutive clusters of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The first cluster.
    pub first: u32,
    /// How many clusters, at least 1.
    pub count: u32,
}

/// Clusters already met in a chain, as disjoint ranges (first cluster → count), so that a
/// cluster met twice, a loop, is found at once and the memory follows the chain's fragments.
#[derive(Default)]
pub struct Seen(pub BTreeMap<u32, u32>);

impl Seen {
    /// Whether `c` was met.
    pub fn contains(&self, c: u32) -> bool {
        self.0
            .range(..=c)
            .next_back()
            .is_some_and(|(&first, &count)| u64::from(c) < u64::from(first) + u64::from(count))
    }

    /// Adds `c`, which [`Seen::contains`] said is not in.
    pub fn insert(&mut self, c: u32) {
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

/// Why a chain could not be followed.
#[derive(Debug)]
pub enum Fault<E> {
    /// The chain is corrupt: the reason, in one line.
    Corrupt(String),
    /// Reading a FAT entry failed with the caller's error.
    Read(E),
}

/// A cluster chain followed link by link: the one walker of FAT chains, for files and
/// directories, readers and the writer's repair.
///
/// Every link is checked before it is followed (the end mark, the bad-cluster mark, a free
/// cluster, a number outside the volume), and every cluster met is remembered as ranges
/// ([`Seen`]), so a loop is found the moment a cluster comes back, in memory that follows the
/// chain's fragments. FAT entries come from the caller, so each keeps its own reads and cache.
pub struct Chain {
    /// The clusters followed so far, in chain order, as runs.
    pub runs: Vec<Run>,
    /// How many clusters `runs` hold, at least 1.
    pub known: u64,
    /// The last cluster followed.
    pub last: u32,
    /// Every cluster of `runs`.
    seen: Seen,
}

impl Chain {
    /// The chain that starts at `first`, checked to be a cluster of the volume.
    pub fn start(geo: &Geometry, first: u32) -> Result<Chain, String> {
        geo.check_first(first)?;
        let mut seen = Seen::default();
        seen.insert(first);
        Ok(Chain {
            runs: vec![Run { first, count: 1 }],
            known: 1,
            last: first,
            seen,
        })
    }

    /// The link out of the last cluster, from `entry` (the FAT entry of a cluster), checked
    /// but not followed: `None` at the end mark, else a cluster of the volume that the chain
    /// has not met yet.
    pub fn next<E>(
        &self,
        geo: &Geometry,
        entry: impl FnOnce(u32) -> Result<u32, E>,
    ) -> Result<Option<u32>, Fault<E>> {
        let value = entry(self.last).map_err(Fault::Read)?;
        let next = geo.check_link(self.last, value).map_err(Fault::Corrupt)?;
        match next {
            Some(c) if self.seen.contains(c) => Err(Fault::Corrupt(format!(
                "the cluster chain loops back to cluster {c}"
            ))),
            other => Ok(other),
        }
    }

    /// Follows the link to `next`, which [`Chain::next`] returned.
    pub fn push(&mut self, next: u32) {
        self.seen.insert(next);
        match self.runs.last_mut() {
            Some(run) if run.first.checked_add(run.count) == Some(next) => run.count += 1,
            _ => self.runs.push(Run {
                first: next,
                count: 1,
            }),
        }
        self.known += 1;
        self.last = next;
    }

    /// The whole chain of the directory that starts at `first`, to its end mark. A chain
    /// longer than a directory may be ([`Geometry::dir_cluster_limit`]) is corruption, which
    /// bounds the work.
    pub fn directory<E>(
        geo: &Geometry,
        first: u32,
        mut entry: impl FnMut(u32) -> Result<u32, E>,
    ) -> Result<Chain, Fault<E>> {
        let mut chain = Chain::start(geo, first).map_err(Fault::Corrupt)?;
        let limit = geo.dir_cluster_limit();
        while let Some(next) = chain.next(geo, &mut entry)? {
            if chain.known >= limit {
                return Err(Fault::Corrupt(format!(
                    "the directory is longer than {limit} clusters, more than the \
                     {MAX_DIR_ENTRIES} entries a FAT directory may hold"
                )));
            }
            chain.push(next);
        }
        Ok(chain)
    }

    /// The clusters of the chain, in order.
    pub fn clusters(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs
            .iter()
            .flat_map(|r| (0..r.count).map(move |i| r.first.saturating_add(i)))
    }
}

/// A file or directory found by a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The root directory.
    Root,
    /// A subdirectory and its first cluster (0 if the entry is corrupt).
    Dir(u32),
    /// A file: its first cluster (0 when empty) and size.
    File {
        /// `DIR_FstClusHI`/`DIR_FstClusLO`.
        cluster: u32,
        /// `DIR_FileSize`.
        size: u32,
    },
}

/// One entry of a directory, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The long name if there is a valid one, else the 8.3 name.
    pub name: String,
    /// The 8.3 name (`README.TXT`, or `readme.txt` with the lower-case flags).
    pub short: String,
    /// What the entry is.
    pub node: Node,
}

/// A parsed directory.
pub struct Listing {
    /// The entries, in stored order, without `.`, `..`, free entries and the label.
    pub entries: Vec<DirEntry>,
    /// The first volume label entry (the root directory's is the volume's label).
    pub label: Option<String>,
}

/// A long name being assembled from its entries, stored last part first (spec, "FAT Long
/// Directory Entries", "Sequence Of Long Directory Entries").
pub struct LongName {
    units: Vec<u16>,
    /// `LDIR_Chksum`, the same in every entry and equal to the 8.3 name's checksum.
    checksum: u8,
    /// The `LDIR_Ord` the next entry must have; 0 once complete.
    next: u8,
}

impl LongName {
    /// Adds the long-name entry `e` to the name being assembled (`prev`); `None` when `e` does
    /// not continue it nor start a new one, an orphan the spec says to ignore.
    pub fn push(prev: Option<LongName>, e: &[u8; DIR_ENTRY]) -> Option<LongName> {
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
    pub fn finish(self, short: &[u8]) -> Option<String> {
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
pub fn short_checksum(name: &[u8]) -> u8 {
    name.iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Whether a stored name can be a path component.
fn usable(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// The 8.3 name of entry `e`, with the NT lower-case flags applied.
pub fn short_name(e: &[u8; DIR_ENTRY]) -> String {
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
pub fn parse_dir(bytes: &[u8], fat_type: FatType) -> Listing {
    let mut entries = Vec::new();
    let mut label = None;
    let mut long: Option<LongName> = None;
    for raw in bytes.chunks_exact(DIR_ENTRY) {
        let Ok(e) = <&[u8; DIR_ENTRY]>::try_from(raw) else {
            break;
        };
        let node = match slot(e, fat_type) {
            Slot::End => break,
            Slot::Free => {
                long = None;
                continue;
            }
            Slot::LongName => {
                long = LongName::push(long.take(), e);
                continue;
            }
            Slot::Label => {
                long = None;
                if label.is_none() {
                    label = label_text(&e[..11]);
                }
                continue;
            }
            Slot::Dot | Slot::DotDot => {
                long = None;
                continue;
            }
            Slot::Dir(cluster) => Node::Dir(cluster),
            Slot::File { cluster, size } => Node::File { cluster, size },
        };
        let long = long.take();
        let name11 = &e[..11];
        let short = short_name(e);
        let name = long
            .and_then(|l| l.finish(name11))
            .unwrap_or_else(|| short.clone());
        entries.push(DirEntry { name, short, node });
    }
    Listing { entries, label }
}

/// What a stored 32-byte directory entry is (spec, "FAT Directory Structure"), in the order
/// the spec has readers tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// First byte 0x00: this and every following entry are free.
    End,
    /// First byte 0xE5: a free (deleted) entry.
    Free,
    /// A part of a long name (`LDIR_Attr` under [`ATTR_LONG_NAME_MASK`] is [`ATTR_LONG_NAME`]).
    LongName,
    /// A volume label entry (`ATTR_VOLUME_ID`).
    Label,
    /// The `.` entry of a subdirectory.
    Dot,
    /// The `..` entry of a subdirectory.
    DotDot,
    /// A subdirectory and its first cluster.
    Dir(u32),
    /// A file: its first cluster and size.
    File {
        /// The first cluster (0 for an empty file).
        cluster: u32,
        /// `DIR_FileSize`.
        size: u32,
    },
}

/// Tells what the stored entry `e` is; `fat_type` decides whether `DIR_FstClusHI` counts.
pub fn slot(e: &[u8; DIR_ENTRY], fat_type: FatType) -> Slot {
    match e[0] {
        0x00 => return Slot::End,
        FREE_ENTRY => return Slot::Free,
        _ => {}
    }
    let attr = e[11];
    if attr & ATTR_LONG_NAME_MASK == ATTR_LONG_NAME {
        return Slot::LongName;
    }
    if attr & ATTR_VOLUME_ID != 0 {
        return Slot::Label;
    }
    let name11 = &e[..11];
    if name11 == DOT {
        return Slot::Dot;
    }
    if name11 == DOT_DOT {
        return Slot::DotDot;
    }
    let cluster = entry_cluster(e, fat_type);
    if attr & ATTR_DIRECTORY != 0 {
        Slot::Dir(cluster)
    } else {
        Slot::File {
            cluster,
            size: le32(e, 28),
        }
    }
}

/// The first cluster of entry `e`: `DIR_FstClusLO` at offset 26 and, on FAT32 only,
/// `DIR_FstClusHI` at offset 20 (spec, "FAT Directory Structure").
pub fn entry_cluster(e: &[u8; DIR_ENTRY], fat_type: FatType) -> u32 {
    let low = u32::from(le16(e, 26));
    match fat_type {
        FatType::Fat32 => low | (u32::from(le16(e, 20)) << 16),
        _ => low,
    }
}

/// Sets the first cluster of the FAT32 entry `e` (the inverse of [`entry_cluster`]).
pub fn set_entry_cluster(e: &mut [u8; DIR_ENTRY], cluster: u32) {
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
}

/// Writes `date` and `time` (spec, "Date and Time Formats") into every date and time field of
/// the entry `e` ("FAT Directory Structure": creation tenths at 13, creation time 14, creation
/// date 16, access date 18, write time 22, write date 24).
pub fn set_timestamps(e: &mut [u8; DIR_ENTRY], date: u16, time: u16) {
    e[13] = 0;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
}

/// Attribute bit of a file changed since the last backup; set on every file written, as FAT
/// drivers do (spec, "FAT Directory Structure").
pub const ATTR_ARCHIVE: u8 = 0x20;
/// The sector of a FAT32 volume that holds FSInfo (`BPB_FSInfo`).
pub const FSINFO_SECTOR: u64 = 1;
/// The sector of a FAT32 volume that holds the copy of the boot sector (`BPB_BkBootSec`); the
/// spec recommends 6, and the FSInfo copy follows it.
pub const BACKUP_BOOT_SECTOR: u64 = 6;
/// The end-of-chain value a FAT32 writer stores (spec, "FAT Data Structure").
pub const FAT32_EOC: u32 = 0x0FFF_FFFF;
/// The FAT32 media descriptor for fixed disks, also the low byte of FAT entry 0.
pub const MEDIA_FIXED: u8 = 0xF8;

/// What a FAT32 writer chooses for the boot sector's BPB (spec, "Boot Sector and BPB"); the
/// other fields are fixed: 512-byte sectors, two FATs, root directory at cluster 2, FSInfo in
/// sector 1, the boot sector's copy in sector 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fat32Bpb {
    /// `BPB_SecPerClus`: a power of two from 1 to 64.
    pub sectors_per_cluster: u8,
    /// `BPB_RsvdSecCnt`: at least 8 (boot sector, FSInfo and their copies).
    pub reserved_sectors: u16,
    /// `BPB_FATSz32`: sectors of each of the two FATs.
    pub fat_sectors: u32,
    /// `BPB_TotSec32`.
    pub total_sectors: u32,
    /// `BPB_HiddSec`: sectors before the volume on its disk (its partition's first LBA).
    pub hidden_sectors: u32,
    /// `BS_VolID`.
    pub volume_id: u32,
    /// `BS_VolLab`, space-padded.
    pub label: [u8; 11],
}

/// The boot sector of a FAT32 volume (spec, "Boot Sector and BPB", "FAT32 Structure Starting at
/// Offset 36"). Its boot code only asks the BIOS to try the next device (`int 18h`): an EFI
/// system partition is read by firmware, never run.
pub fn encode_fat32_boot(bpb: &Fat32Bpb) -> [u8; BOOT_SECTOR] {
    let mut b = [0u8; BOOT_SECTOR];
    // BS_jmpBoot: a short jump over the BPB to offset 90, then NOP.
    b[..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    // BS_OEMName: "MSWIN4.1" is what the spec recommends for compatibility.
    b[3..11].copy_from_slice(b"MSWIN4.1");
    b[11..13].copy_from_slice(&512u16.to_le_bytes());
    b[13] = bpb.sectors_per_cluster;
    b[14..16].copy_from_slice(&bpb.reserved_sectors.to_le_bytes());
    b[16] = 2; // BPB_NumFATs
    // BPB_RootEntCnt, BPB_TotSec16 and BPB_FATSz16 stay 0 on FAT32.
    b[21] = MEDIA_FIXED;
    // BPB_SecPerTrk and BPB_NumHeads: the usual translated geometry; nothing reads it here.
    b[24..26].copy_from_slice(&63u16.to_le_bytes());
    b[26..28].copy_from_slice(&255u16.to_le_bytes());
    b[28..32].copy_from_slice(&bpb.hidden_sectors.to_le_bytes());
    b[32..36].copy_from_slice(&bpb.total_sectors.to_le_bytes());
    b[36..40].copy_from_slice(&bpb.fat_sectors.to_le_bytes());
    // BPB_ExtFlags 0 (both FATs mirrored), BPB_FSVer 0.0.
    b[44..48].copy_from_slice(&2u32.to_le_bytes()); // BPB_RootClus
    b[48..50].copy_from_slice(&(FSINFO_SECTOR as u16).to_le_bytes());
    b[50..52].copy_from_slice(&(BACKUP_BOOT_SECTOR as u16).to_le_bytes());
    b[64] = 0x80; // BS_DrvNum: a hard disk
    b[66] = 0x29; // BS_BootSig: the three fields below are present
    b[67..71].copy_from_slice(&bpb.volume_id.to_le_bytes());
    b[71..82].copy_from_slice(&bpb.label);
    b[82..90].copy_from_slice(b"FAT32   ");
    // int 18h; then cli, hlt and loop should the BIOS return.
    b[90..95].copy_from_slice(&[0xCD, 0x18, 0xFA, 0xF4, 0xEB]);
    b[95] = 0xFD;
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// The FSInfo sector (spec, "FAT32 FSInfo Sector Structure"): `free` clusters and the hint
/// `next_free` (0xFFFFFFFF for "unknown").
pub fn encode_fsinfo(free: u32, next_free: u32) -> [u8; BOOT_SECTOR] {
    let mut b = [0u8; BOOT_SECTOR];
    b[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes()); // FSI_LeadSig
    b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes()); // FSI_StrucSig
    b[488..492].copy_from_slice(&free.to_le_bytes());
    b[492..496].copy_from_slice(&next_free.to_le_bytes());
    b[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes()); // FSI_TrailSig
    b
}

/// A short (8.3) directory entry of a FAT32 volume: `name` as stored, `attr`, the first
/// cluster, the size and one date and time for every timestamp field.
pub fn encode_short_entry(
    name: &[u8; 11],
    attr: u8,
    cluster: u32,
    size: u32,
    date: u16,
    time: u16,
) -> [u8; DIR_ENTRY] {
    let mut e = [0u8; DIR_ENTRY];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    set_timestamps(&mut e, date, time);
    set_entry_cluster(&mut e, cluster);
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// The long-name entries for `name` that precede the short entry `short`, in the order they
/// are stored (last part first; spec, "FAT Long Directory Entries"). `None` if `name` is empty
/// or longer than 255 UTF-16 units.
pub fn encode_long_name(name: &str, short: &[u8; 11]) -> Option<Vec<[u8; DIR_ENTRY]>> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    if units.is_empty() || units.len() > 255 {
        return None;
    }
    // The name ends with 0x0000 unless it fills its last entry, then 0xFFFF pads it.
    if !units.len().is_multiple_of(LONG_UNITS) {
        units.push(0);
    }
    while !units.len().is_multiple_of(LONG_UNITS) {
        units.push(0xFFFF);
    }
    let count = units.len() / LONG_UNITS;
    let sum = short_checksum(short);
    let entries = (1..=count)
        .rev()
        .map(|ord| {
            let mut e = [0u8; DIR_ENTRY];
            // count <= 20, so ord fits a byte.
            e[0] = ord as u8 | if ord == count { LAST_LONG_ENTRY } else { 0 };
            e[11] = ATTR_LONG_NAME;
            e[13] = sum;
            for (k, &at) in LONG_UNIT_OFFSETS.iter().enumerate() {
                let u = units[(ord - 1) * LONG_UNITS + k];
                e[at..at + 2].copy_from_slice(&u.to_le_bytes());
            }
            e
        })
        .collect();
    Some(entries)
}

/// Whether `b` may stand in an 8.3 name as written by a careful writer: upper-case letters,
/// digits and the spec's special characters (spec, "FAT Directory Structure", DIR_Name).
pub fn short_name_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b"$%'-_@~`!(){}^#&".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The boot sector the encoder writes decodes, field by field, to the layout it describes.
    #[test]
    fn encoded_boot_sector_decodes_to_its_layout() {
        let bpb = Fat32Bpb {
            sectors_per_cluster: 2,
            reserved_sectors: 34,
            fat_sectors: 1200,
            total_sectors: 300_000,
            hidden_sectors: 2048,
            volume_id: 0xDEAD_BEEF,
            label: *b"ESP        ",
        };
        let geo = geometry(&encode_fat32_boot(&bpb)).unwrap();
        assert_eq!(geo.fat_type, FatType::Fat32);
        assert_eq!(geo.cluster_bytes, 1024);
        assert_eq!(geo.fat_start, 34 * 512);
        assert_eq!(geo.fat_len, 1200 * 512);
        assert_eq!(geo.data_start, (34 + 2400) * 512);
        assert_eq!(geo.clusters, (300_000 - 34 - 2400) / 2);
        assert_eq!(geo.root, Root::Cluster(2));
        assert_eq!(geo.boot_label.as_deref(), Some("ESP"));
    }

    /// Long names round-trip through the decoder, whatever their length against the 13-unit
    /// entries, and a name of 256 units is refused.
    #[test]
    fn long_names_round_trip() {
        let short = *b"LONGNA~1TXT";
        for name in [
            "a",
            "exactly13char",
            "exactly13charX",
            "vmlinuz-6.1.0-13-amd64",
            "é✓",
        ] {
            let entries = encode_long_name(name, &short).unwrap();
            let mut long = None;
            for e in &entries {
                long = LongName::push(long, e);
            }
            assert_eq!(long.unwrap().finish(&short).as_deref(), Some(name));
        }
        assert!(encode_long_name(&"x".repeat(256), &short).is_none());
        assert!(encode_long_name("", &short).is_none());
        assert_eq!(
            encode_long_name(&"x".repeat(255), &short).unwrap().len(),
            20
        );
    }
}
