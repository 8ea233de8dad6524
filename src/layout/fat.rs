//! FAT32 file systems for EFI system partitions, laid out in memory and emitted as a disk.
//!
//! [`FatImage::layout`] plans the whole volume at once — cluster size, FAT size, where every
//! directory and file goes — and returns it as a [`Disk`]: a [`Composite`] of the boot sectors,
//! the two FATs (computed on read from the allocation, never held whole), the directories (bytes
//! in memory) and the files (the host files themselves, read when the disk is copied). Nothing is
//! written to a temporary image and read back, and the copy engine skips the free clusters as
//! holes. The on-disk encodings are [`crate::ondisk::fat`]'s, the same module the reader decodes
//! with.
//!
//! The layout (Microsoft, "FAT: General Overview of On-Disk Format" 1.03, "the spec"):
//! 512-byte sectors; the largest cluster (up to 4 KiB below 8 GiB, as the spec's table for
//! FAT32) that still gives at least [`MIN_CLUSTERS`]; 32 reserved sectors or a few more, so that
//! the data area starts on a cluster boundary; two FATs; the root directory at cluster 2; every
//! directory and file in one contiguous run, directories first, in sorted order; `.` and `..`
//! first in every subdirectory, `..` of a child of the root pointing at cluster 0. Every
//! identifier and timestamp comes from the caller (volume id, label, `epoch`), so the same
//! inputs give the same bytes; `fsck.fat -n` passes the result without a word (tests).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{self, Disk, Extent, ExtentKind};
use crate::layout::composite::{Composite, Content, Region};
use crate::ondisk::fat::{
    self as codec, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_VOLUME_ID, DIR_ENTRY, Fat32Bpb,
    MAX_DIR_ENTRIES,
};

/// Bytes per sector: the size every firmware reads.
const SECTOR: u64 = 512;

/// Reserved sectors before the first FAT, at least: boot sector, FSInfo, their copies at 6
/// and 7, as mkfs.fat and Windows lay them out.
const RESERVED: u64 = 32;

/// The fewest clusters the writer gives a volume. A FAT32 volume has at least 65525 (spec, "FAT
/// Type Determination"); the spec advises staying 16 clear of that boundary, for drivers that
/// get the comparison wrong.
pub const MIN_CLUSTERS: u64 = 65_525 + 16;

/// The smallest image: [`MIN_CLUSTERS`] clusters of one sector, 32 reserved sectors and two FATs
/// of 513 sectors ((65541 + 2) × 4 bytes of entries): 66599 sectors (the test
/// `smallest_size_is_accepted_and_one_sector_less_is_not` checks both sides).
pub const MIN_SIZE: u64 = 66_599 * SECTOR;

/// The largest image: sectors are counted in 32 bits (`BPB_TotSec32`).
pub const MAX_SIZE: u64 = (u32::MAX as u64) * SECTOR;

/// The largest file FAT32 can hold: the size field of a directory entry is 32 bits.
const MAX_FILE: u64 = u32::MAX as u64;

/// Seconds since the Unix epoch of 1980-01-01 00:00:00 UTC, the first instant FAT can record.
const FAT_EPOCH_MIN: i64 = 315_532_800;
/// Seconds since the Unix epoch of 2107-12-31 23:59:59 UTC: FAT stores the year as 7 bits
/// counted from 1980.
const FAT_EPOCH_MAX: i64 = 4_354_819_199;

/// Where a file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSource {
    /// These bytes.
    Bytes(Vec<u8>),
    /// A regular file on the host, opened when the volume is laid out and read when the disk is
    /// copied.
    Host(PathBuf),
    /// All of a storage (a file of a tree being built), read when the disk is copied.
    Storage(SharedStorage),
}

/// A storage shared with the caller; two are equal when they are the same storage.
#[derive(Clone)]
pub struct SharedStorage(pub Arc<dyn crate::storage::ReadAt>);

impl PartialEq for SharedStorage {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedStorage {}

impl std::fmt::Debug for SharedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedStorage({})", self.0.path().display())
    }
}

/// What a volume holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FatSummary {
    /// Number of files (directories are not counted).
    pub files: usize,
    /// Total size of the files, in bytes.
    pub bytes: u64,
    /// Bytes per cluster chosen for the volume.
    pub cluster_bytes: u64,
}

/// A FAT32 volume to lay out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatImage {
    /// Size of the volume in bytes: a multiple of 512, at least [`MIN_SIZE`].
    pub size: u64,
    /// Volume label: up to 11 characters of the FAT short-name set; lower-case ASCII letters are
    /// upper-cased.
    pub label: String,
    /// Volume serial number (the boot sector's volume id).
    pub volume_id: u32,
    /// Sectors before the volume on its disk (`BPB_HiddSec`): its partition's first LBA.
    pub hidden_sectors: u32,
    /// Seconds since the Unix epoch (UTC) stamped on every entry, e.g. `SOURCE_DATE_EPOCH`.
    pub epoch: i64,
    /// Files to copy in: `/`-separated paths inside the volume (`EFI/BOOT/BOOTX64.EFI`) and where
    /// their bytes come from. Their order does not matter.
    pub files: Vec<(String, FileSource)>,
}

/// A laid-out volume: a [`Disk`] of [`FatImage::size`] bytes, and what it holds.
pub struct FatVolume {
    disk: Composite,
    summary: FatSummary,
}

impl FatVolume {
    /// What the volume holds.
    pub fn summary(&self) -> FatSummary {
        self.summary
    }
}

impl Disk for FatVolume {
    fn size(&self) -> u64 {
        self.disk.size()
    }
    fn extent(&self, offset: u64, max_len: u64) -> format::Result<Extent> {
        self.disk.extent(offset, max_len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> format::Result<()> {
        self.disk.read_at(offset, buf)
    }
    fn format(&self) -> &'static str {
        "raw"
    }
    fn path(&self) -> &Path {
        self.disk.path()
    }
}

/// Errors of [`FatImage::layout`]. Each names the volume, the file inside it or the host file
/// concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested size cannot hold a FAT32 file system.
    #[error("FAT image size {size} bytes: {reason}")]
    Size {
        /// The requested size.
        size: u64,
        /// Why, in one line.
        reason: String,
    },
    /// The volume label cannot be stored in a FAT boot sector.
    #[error("FAT volume label {label:?}: {reason}")]
    Label {
        /// The label as given.
        label: String,
        /// Why, in one line.
        reason: &'static str,
    },
    /// A path inside the volume is not acceptable.
    #[error("{path:?}: {reason}")]
    BadPath {
        /// The path inside the volume.
        path: String,
        /// Why, in one line.
        reason: String,
    },
    /// Two files have the same path (FAT compares names without regard to case).
    #[error("{path:?}: given twice (as {other:?} too; FAT names ignore case)")]
    Duplicate {
        /// The path inside the volume.
        path: String,
        /// The other spelling of it.
        other: String,
    },
    /// A file's path is also a directory on another file's path.
    #[error("{path:?}: is a file, but {other:?} needs it to be a directory")]
    FileIsDir {
        /// The file.
        path: String,
        /// The file below it.
        other: String,
    },
    /// A file is larger than FAT32 allows.
    #[error("{path:?}: {size} bytes is more than a FAT32 file can hold ({MAX_FILE} bytes)")]
    FileTooBig {
        /// The path inside the volume.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A directory would have more entries than FAT allows.
    #[error(
        "{path:?}: a directory of {entries} entries (long names count one per 13 characters); \
         FAT allows {MAX_DIR_ENTRIES}"
    )]
    DirTooBig {
        /// The directory inside the volume (`/` for the root).
        path: String,
        /// The 32-byte entries it would need.
        entries: u64,
    },
    /// The files do not fit in the volume.
    #[error(
        "{path:?}: needs {needed} bytes but only {free} bytes of the {size}-byte volume are free"
    )]
    NoSpace {
        /// The first file (or directory) that does not fit, in sorted order.
        path: String,
        /// Bytes it needs, rounded up to whole clusters.
        needed: u64,
        /// Bytes still free.
        free: u64,
        /// Size of the volume.
        size: u64,
    },
    /// A host file is not a regular file.
    #[error("{}: not a regular file (source of {file:?})", host.display())]
    NotAFile {
        /// The host path.
        host: PathBuf,
        /// The path inside the volume.
        file: String,
    },
    /// A host file could not be opened.
    #[error("{source} (source of {file:?})")]
    Source {
        /// The path inside the volume.
        file: String,
        /// What went wrong, naming the host file.
        source: format::Error,
    },
    /// The pieces of the volume could not be assembled (a bug: the plan overlaps itself).
    #[error(transparent)]
    Assemble(format::Error),
}

impl FatImage {
    /// Lays the volume out; `name` stands for it in messages (a read error of a host file names
    /// the host file). Every argument is checked and every host file opened here, so a volume
    /// that lays out is one the copy can write; a host file that shrinks before the copy reads
    /// it fails the copy, and one that grows is read up to the size it had here.
    pub fn layout(&self, name: &Path) -> Result<FatVolume, Error> {
        let size = self.size;
        check_size(size)?;
        let label = volume_label(&self.label)?;
        let files = plan(&self.files)?;
        let (date, time) = fat_date_time(self.epoch);
        let geo = Layout::choose(size)?;
        let mut tree = Tree::new(&files)?;
        tree.allocate(&geo, &files, size)?;

        let used = tree.next_cluster - 2;
        let free = geo.clusters - used;
        let bpb = Fat32Bpb {
            sectors_per_cluster: geo.sectors_per_cluster,
            reserved_sectors: geo.reserved as u16,
            fat_sectors: geo.fat_sectors as u32,
            total_sectors: (size / SECTOR) as u32,
            hidden_sectors: self.hidden_sectors,
            volume_id: self.volume_id,
            label,
        };
        let boot = codec::encode_fat32_boot(&bpb);
        let next_free = if free > 0 {
            tree.next_cluster as u32
        } else {
            u32::MAX
        };
        let info = codec::encode_fsinfo(free as u32, next_free);
        // Sectors 0 and 1, their copies at 6 and 7, zeros in between and after.
        let at = |sector: u64| (sector * SECTOR) as usize;
        let mut reserved = vec![0u8; at(codec::BACKUP_BOOT_SECTOR + 2)];
        reserved[..at(1)].copy_from_slice(&boot);
        reserved[at(1)..at(2)].copy_from_slice(&info);
        let backup = at(codec::BACKUP_BOOT_SECTOR);
        reserved[backup..backup + at(1)].copy_from_slice(&boot);
        reserved[backup + at(1)..backup + at(2)].copy_from_slice(&info);

        let table: Arc<dyn Disk> = Arc::new(FatTable {
            ends: tree.run_ends.clone(),
            entries: tree.next_cluster,
            name: name.to_owned(),
        });
        let fat_len = geo.fat_sectors * SECTOR;
        let mut regions = vec![
            Region {
                offset: 0,
                len: geo.reserved * SECTOR,
                content: Content::Bytes(reserved),
            },
            Region {
                offset: geo.reserved * SECTOR,
                len: fat_len,
                content: Content::Source(table.clone()),
            },
            Region {
                offset: geo.reserved * SECTOR + fat_len,
                len: fat_len,
                content: Content::Source(table),
            },
        ];
        let cluster_bytes = geo.cluster_bytes();
        let place = |first: u64, clusters: u64, content| Region {
            offset: geo.data_start() + (first - 2) * cluster_bytes,
            len: clusters * cluster_bytes,
            content,
        };
        for (i, dir) in tree.dirs.iter().enumerate() {
            let bytes = tree.render(i, &label, date, time);
            regions.push(place(dir.first, dir.clusters, Content::Bytes(bytes)));
        }
        let mut bytes = 0;
        for (file, slot) in files.into_iter().zip(&tree.file_slots) {
            bytes += file.len;
            if let Some(first) = slot.filter(|_| file.len > 0) {
                let clusters = file.len.div_ceil(cluster_bytes);
                regions.push(place(first, clusters, file.content));
            }
        }
        let disk = Composite::new(name, size, regions).map_err(Error::Assemble)?;
        Ok(FatVolume {
            disk,
            summary: FatSummary {
                files: self.files.len(),
                bytes,
                cluster_bytes,
            },
        })
    }
}

/// The volume's geometry, chosen from its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    sectors_per_cluster: u8,
    reserved: u64,
    fat_sectors: u64,
    /// Data clusters: numbers 2 to `clusters + 1`.
    clusters: u64,
}

impl Layout {
    fn cluster_bytes(&self) -> u64 {
        u64::from(self.sectors_per_cluster) * SECTOR
    }

    fn data_start(&self) -> u64 {
        (self.reserved + 2 * self.fat_sectors) * SECTOR
    }

    /// The largest cluster the spec's FAT32 table gives the size (4 KiB to 8 GiB, 8 KiB to
    /// 16 GiB, 16 KiB to 32 GiB, 32 KiB above; spec, "FAT Type Determination"), halved until
    /// the volume has [`MIN_CLUSTERS`].
    fn choose(size: u64) -> Result<Layout, Error> {
        const GIB: u64 = 1 << 30;
        let total = size / SECTOR;
        let mut spc: u64 = match size {
            s if s <= 8 * GIB => 8,
            s if s <= 16 * GIB => 16,
            s if s <= 32 * GIB => 32,
            _ => 64,
        };
        while spc >= 1 {
            if let Some(l) = Self::with_cluster(total, spc).filter(|l| l.clusters >= MIN_CLUSTERS) {
                return Ok(l);
            }
            spc /= 2;
        }
        Err(Error::Size {
            size,
            reason: format!(
                "too small for FAT32 with 512-byte sectors (at least {MIN_SIZE} bytes)"
            ),
        })
    }

    /// The layout with `spc` sectors per cluster: the smallest FAT that holds an entry for
    /// every cluster left beside it, with the reserved area grown so that data starts on a
    /// cluster boundary. `None` if nothing is left for data.
    fn with_cluster(total: u64, spc: u64) -> Option<Layout> {
        let at = |fat: u64| -> Option<(u64, u64)> {
            let reserved = (RESERVED + 2 * fat).next_multiple_of(spc) - 2 * fat;
            let data = total.checked_sub(reserved + 2 * fat)?;
            Some((reserved, data / spc))
        };
        let need = |clusters: u64| ((clusters + 2) * 4).div_ceil(SECTOR);
        // A FAT for every sector's worth of clusters is an upper bound; the smallest FAT that
        // suffices is at least what that bound's cluster count needs, and the count falls as
        // the FAT grows, so scanning up from there finds it within a few steps.
        let (_, most) = at(0)?;
        let mut fat = need(at(need(most))?.1);
        loop {
            let (reserved, clusters) = at(fat)?;
            if clusters == 0 {
                return None;
            }
            if need(clusters) <= fat {
                return Some(Layout {
                    sectors_per_cluster: spc as u8,
                    reserved,
                    fat_sectors: fat,
                    clusters,
                });
            }
            fat += 1;
        }
    }
}

/// The FAT, computed on read: every directory and file is one run of clusters, so entry `c` is
/// `c + 1` inside a run and the end-of-chain mark at its end; entries 0 and 1 hold the media
/// byte and the clean-shutdown bits (spec, "FAT Data Structure"). The disk covers the entries
/// of allocated clusters; the rest of each FAT region is zeros (free).
struct FatTable {
    /// The last cluster of every run, ascending.
    ends: Vec<u32>,
    /// Entries covered: clusters 0 to `entries - 1`.
    entries: u64,
    name: PathBuf,
}

impl FatTable {
    fn entry(&self, c: u64) -> u32 {
        match c {
            0 => 0x0FFF_FF00 | u32::from(codec::MEDIA_FIXED),
            1 => codec::FAT32_EOC,
            // c < entries <= 2^28, so it fits.
            _ if self.ends.binary_search(&(c as u32)).is_ok() => codec::FAT32_EOC,
            _ => (c + 1) as u32,
        }
    }
}

impl Disk for FatTable {
    fn size(&self) -> u64 {
        self.entries * 4
    }
    fn extent(&self, offset: u64, max_len: u64) -> format::Result<Extent> {
        Ok(Extent {
            offset,
            len: max_len.min(self.size() - offset),
            kind: ExtentKind::Data,
        })
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> format::Result<()> {
        for (i, byte) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = self.entry(at / 4).to_le_bytes()[(at % 4) as usize];
        }
        Ok(())
    }
    fn format(&self) -> &'static str {
        "raw"
    }
    fn path(&self) -> &Path {
        &self.name
    }
}

/// A directory of the volume.
struct Dir {
    /// Its path inside the volume, `/` for the root.
    path: String,
    /// The parent's index (the root has none).
    parent: Option<usize>,
    /// Its entries in stored order, each with its stored 8.3 name.
    children: Vec<(Child, [u8; 11])>,
    first: u64,
    clusters: u64,
}

/// An entry of a directory: a subdirectory (index into `Tree::dirs`) or a file (index into the
/// plan), with its name as given.
enum Child {
    Dir(usize, String),
    File(usize, String),
}

impl Child {
    fn name(&self) -> &str {
        match self {
            Child::Dir(_, n) | Child::File(_, n) => n,
        }
    }
}

/// The directory tree of a plan, and where each of its parts goes.
struct Tree {
    dirs: Vec<Dir>,
    /// The first cluster of each planned file (`None` until allocated, or for an empty file).
    file_slots: Vec<Option<u64>>,
    /// The size of each planned file.
    file_lens: Vec<u64>,
    /// The last cluster of every run.
    run_ends: Vec<u32>,
    /// The first cluster not allocated.
    next_cluster: u64,
}

impl Tree {
    /// Builds the tree: directories are created as the sorted paths need them (the first
    /// spelling met names a directory whose other spellings differ only in case), and each
    /// directory keeps its entries in that order.
    fn new(files: &[Planned]) -> Result<Tree, Error> {
        let key = |s: &str| -> String { s.chars().flat_map(char::to_uppercase).collect() };
        let mut dirs = vec![Dir {
            path: "/".into(),
            parent: None,
            children: Vec::new(),
            first: 0,
            clusters: 0,
        }];
        let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
        for (n, file) in files.iter().enumerate() {
            let parts: Vec<&str> = file.path.split('/').collect();
            let mut dir = 0;
            for i in 1..parts.len() {
                let k = key(&parts[..i].join("/"));
                dir = match by_key.get(&k) {
                    Some(&d) => d,
                    None => {
                        let d = dirs.len();
                        dirs.push(Dir {
                            path: parts[..i].join("/"),
                            parent: Some(dir),
                            children: Vec::new(),
                            first: 0,
                            clusters: 0,
                        });
                        dirs[dir]
                            .children
                            .push((Child::Dir(d, parts[i - 1].to_owned()), [0; 11]));
                        by_key.insert(k, d);
                        d
                    }
                };
            }
            let leaf = parts.last().copied().unwrap_or_default();
            dirs[dir]
                .children
                .push((Child::File(n, leaf.to_owned()), [0; 11]));
        }
        for dir in &mut dirs {
            let names: Vec<&str> = dir.children.iter().map(|(c, _)| c.name()).collect();
            let shorts = short_names(&names);
            for ((_, slot), short) in dir.children.iter_mut().zip(shorts) {
                *slot = short;
            }
        }
        Ok(Tree {
            dirs,
            file_slots: vec![None; files.len()],
            file_lens: files.iter().map(|f| f.len).collect(),
            run_ends: Vec::new(),
            next_cluster: 2,
        })
    }

    /// The 32-byte entries directory `i` needs.
    fn entries(&self, i: usize) -> u64 {
        let dir = &self.dirs[i];
        // The root holds the label; a subdirectory `.` and `..`.
        let fixed = if dir.parent.is_none() { 1 } else { 2 };
        fixed
            + dir
                .children
                .iter()
                .map(|(c, short)| 1 + long_entries(c.name(), short).map_or(0, |l| l.len() as u64))
                .sum::<u64>()
    }

    /// Gives every directory, then every non-empty file, its run of clusters in order.
    fn allocate(&mut self, geo: &Layout, files: &[Planned], size: u64) -> Result<(), Error> {
        let cluster_bytes = geo.cluster_bytes();
        let take = |tree: &mut Tree, path: &str, clusters: u64| -> Result<u64, Error> {
            let left = geo.clusters + 2 - tree.next_cluster;
            if clusters > left {
                return Err(Error::NoSpace {
                    path: path.to_owned(),
                    needed: clusters * cluster_bytes,
                    free: left * cluster_bytes,
                    size,
                });
            }
            let first = tree.next_cluster;
            tree.next_cluster += clusters;
            // Below 2^28 clusters (spec maximum, which the volume size bounds).
            tree.run_ends.push((tree.next_cluster - 1) as u32);
            Ok(first)
        };
        for i in 0..self.dirs.len() {
            let entries = self.entries(i);
            if entries > MAX_DIR_ENTRIES {
                return Err(Error::DirTooBig {
                    path: self.dirs[i].path.clone(),
                    entries,
                });
            }
            let clusters = (entries * DIR_ENTRY as u64).div_ceil(cluster_bytes).max(1);
            let path = self.dirs[i].path.clone();
            self.dirs[i].first = take(self, &path, clusters)?;
            self.dirs[i].clusters = clusters;
        }
        for (n, file) in files.iter().enumerate() {
            if file.len > 0 {
                let first = take(self, file.path, file.len.div_ceil(cluster_bytes))?;
                self.file_slots[n] = Some(first);
            }
        }
        Ok(())
    }

    /// The bytes of directory `i`: label or `.` and `..`, then each entry's long name and short
    /// entry; zeros (the end mark) fill the rest of its clusters.
    fn render(&self, i: usize, label: &[u8; 11], date: u16, time: u16) -> Vec<u8> {
        let dir = &self.dirs[i];
        let mut out = Vec::with_capacity((self.entries(i) as usize) * DIR_ENTRY);
        let mut push = |e: [u8; DIR_ENTRY]| out.extend_from_slice(&e);
        match dir.parent {
            None => push(codec::encode_short_entry(
                label,
                ATTR_VOLUME_ID,
                0,
                0,
                date,
                time,
            )),
            Some(parent) => {
                let here = dir.first as u32;
                // A child of the root records 0 as its parent (spec, "FAT Directory
                // Structure").
                let up = match self.dirs[parent].parent {
                    None => 0,
                    Some(_) => self.dirs[parent].first as u32,
                };
                push(codec::encode_short_entry(
                    codec::DOT,
                    ATTR_DIRECTORY,
                    here,
                    0,
                    date,
                    time,
                ));
                push(codec::encode_short_entry(
                    codec::DOT_DOT,
                    ATTR_DIRECTORY,
                    up,
                    0,
                    date,
                    time,
                ));
            }
        }
        for (child, short) in &dir.children {
            for e in long_entries(child.name(), short).unwrap_or_default() {
                push(e);
            }
            // Cluster numbers and sizes are below 2^32: the volume and MAX_FILE bound them.
            let entry = match child {
                Child::Dir(d, _) => codec::encode_short_entry(
                    short,
                    ATTR_DIRECTORY,
                    self.dirs[*d].first as u32,
                    0,
                    date,
                    time,
                ),
                Child::File(n, _) => {
                    let first = self.file_slots[*n].unwrap_or(0) as u32;
                    let len = self.file_len(*n);
                    codec::encode_short_entry(short, ATTR_ARCHIVE, first, len, date, time)
                }
            };
            push(entry);
        }
        out
    }

    /// The size of planned file `n` (at most [`MAX_FILE`], checked by [`plan`]).
    fn file_len(&self, n: usize) -> u32 {
        self.file_lens.get(n).copied().unwrap_or(0) as u32
    }
}

/// The long-name entries that give `name` to the entry stored as `short`; `None` when the 8.3
/// name says it all.
fn long_entries(name: &str, short: &[u8; 11]) -> Option<Vec<[u8; DIR_ENTRY]>> {
    if shown(short) == name {
        return None;
    }
    codec::encode_long_name(name, short)
}

/// An 8.3 name as a reader shows it: `BASE.EXT`, or `BASE` with no extension.
fn shown(short: &[u8; 11]) -> String {
    let base = codec::trim_spaces(&short[..8]);
    let ext = codec::trim_spaces(&short[8..]);
    let mut s = String::from_utf8_lossy(base).into_owned();
    if !ext.is_empty() {
        s.push('.');
        s.push_str(&String::from_utf8_lossy(ext));
    }
    s
}

/// The basis of an 8.3 name for `name` (the Windows "basis-name" rules): upper-cased, spaces and
/// leading or inner dots dropped, other characters no short name may hold turned into `_`, the
/// part before the last dot cut to 8 bytes and the part after it to 3. `lossless` when nothing
/// but case was changed.
fn basis(name: &str) -> (Vec<u8>, Vec<u8>, bool) {
    let mut lossless = true;
    let trimmed = name.trim_start_matches('.');
    if trimmed.len() != name.len() {
        lossless = false;
    }
    let (base, ext) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    let mut convert = |part: &str, max: usize| -> Vec<u8> {
        let mut out = Vec::new();
        for c in part.chars() {
            let b = if c.is_ascii() {
                c.to_ascii_uppercase() as u8
            } else {
                0
            };
            if b == b' ' || b == b'.' {
                lossless = false;
                continue;
            }
            if codec::short_name_byte(b) {
                out.push(b);
            } else {
                lossless = false;
                out.push(b'_');
            }
        }
        if out.len() > max {
            out.truncate(max);
            lossless = false;
        }
        out
    };
    let mut base = convert(base, 8);
    let ext = convert(ext, 3);
    if base.is_empty() {
        base.push(b'_');
        lossless = false;
    }
    (base, ext, lossless)
}

/// The 11 stored bytes of `base` and `ext`, space-padded.
fn stored(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut out = [b' '; 11];
    out[..base.len().min(8)].copy_from_slice(&base[..base.len().min(8)]);
    out[8..8 + ext.len().min(3)].copy_from_slice(&ext[..ext.len().min(3)]);
    out
}

/// Distinct 8.3 names for the entries `names` of one directory, in order. A name that is a
/// valid upper-case 8.3 name keeps it; one that differs only in case gets its upper-cased form
/// if free; any other gets its basis with the lowest free numeric tail (`~1`, `~2`, …, the
/// basis cut short to make room), as Windows does. Names are unique without regard to case
/// ([`plan`]), so at most 65,536 entries need tails and a free one always exists.
fn short_names(names: &[&str]) -> Vec<[u8; 11]> {
    let bases: Vec<_> = names.iter().map(|n| basis(n)).collect();
    let exact = |i: usize| {
        let (b, e, lossless) = &bases[i];
        let s = stored(b, e);
        (*lossless && shown(&s) == names[i]).then_some(s)
    };
    let mut used: BTreeSet<[u8; 11]> = (0..names.len()).filter_map(exact).collect();
    let mut next_tail: BTreeMap<(Vec<u8>, Vec<u8>), u32> = BTreeMap::new();
    let mut out = Vec::with_capacity(names.len());
    for (i, (base, ext, lossless)) in bases.iter().enumerate() {
        if let Some(s) = exact(i) {
            out.push(s);
            continue;
        }
        let plain = stored(base, ext);
        if *lossless && used.insert(plain) {
            out.push(plain);
            continue;
        }
        let mut chosen = plain;
        // Tails below the last one this basis took are all taken: start from there, so a
        // directory of many similar names costs a lookup or two each, not one per earlier name.
        let start = next_tail.entry((base.clone(), ext.clone())).or_insert(1);
        for n in *start..=999_999u32 {
            let tail = format!("~{n}");
            let keep = base.len().min(8 - tail.len());
            let mut b = base[..keep].to_vec();
            b.extend_from_slice(tail.as_bytes());
            let s = stored(&b, ext);
            if used.insert(s) {
                chosen = s;
                *start = n + 1;
                break;
            }
        }
        out.push(chosen);
    }
    out
}

/// Checks the size against what FAT32 with 512-byte sectors can be.
fn check_size(size: u64) -> Result<(), Error> {
    let reason = if !size.is_multiple_of(SECTOR) {
        "not a multiple of 512".to_owned()
    } else if size < MIN_SIZE {
        format!("too small for FAT32 with 512-byte sectors (at least {MIN_SIZE} bytes)")
    } else if size > MAX_SIZE {
        format!("too large (at most {MAX_SIZE} bytes)")
    } else {
        return Ok(());
    };
    Err(Error::Size { size, reason })
}

/// The 11-byte label field: short-name characters only (spec, "FAT Directory Structure",
/// DIR_Name rules), padded with spaces.
fn volume_label(label: &str) -> Result<[u8; 11], Error> {
    let fail = |reason| Error::Label {
        label: label.to_owned(),
        reason,
    };
    if label.is_empty() {
        return Err(fail("empty"));
    }
    if label.len() > 11 {
        return Err(fail("longer than 11 bytes"));
    }
    if label.starts_with(' ') {
        return Err(fail("starts with a space"));
    }
    let mut out = [b' '; 11];
    for (slot, byte) in out.iter_mut().zip(label.bytes()) {
        let ok = byte.is_ascii_alphanumeric() || b" !#$%&'()-@^_`{}~".contains(&byte);
        if !ok {
            return Err(fail(
                "only ASCII letters, digits, spaces and !#$%&'()-@^_`{}~ are allowed",
            ));
        }
        *slot = byte.to_ascii_uppercase();
    }
    Ok(out)
}

/// Checks one path component against what FAT long names allow (spec, "FAT Long Directory
/// Entries": not `" * / : < > ? \ |` nor control characters; at most 255 characters), and
/// keeps to the Basic Multilingual Plane, which UCS-2 long names hold one unit a character.
fn check_component(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("has an empty component".into());
    }
    if name == "." || name == ".." {
        return Err(format!("has a {name:?} component"));
    }
    if name.len() > 255 {
        return Err("has a component longer than 255 bytes".into());
    }
    if name.ends_with('.') || name.ends_with(' ') {
        // Windows and Linux's vfat drop trailing dots and spaces when looking names up, so such
        // a file could not be opened by its own name.
        return Err(format!("component {name:?} ends with a dot or a space"));
    }
    for c in name.chars() {
        let ok = match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '\u{80}'..='\u{FFFF}' => true,
            _ => "$%'-_@~`!(){}. +,;=[]^#&".contains(c),
        };
        if !ok {
            return Err(format!(
                "component {name:?} has {c:?}, which FAT long names do not allow"
            ));
        }
    }
    Ok(())
}

/// A file to place, after checking.
struct Planned<'a> {
    path: &'a str,
    content: Content,
    len: u64,
}

/// Checks every path, opens every host file and sorts the files by path. Keys compare
/// upper-cased because FAT looks names up without regard to case, so `EFI/boot` and `EFI/BOOT`
/// are the same directory.
fn plan(files: &[(String, FileSource)]) -> Result<Vec<Planned<'_>>, Error> {
    let key = |s: &str| -> String { s.chars().flat_map(char::to_uppercase).collect() };
    let mut sorted: Vec<&(String, FileSource)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut dirs: BTreeMap<String, &str> = BTreeMap::new();
    for (path, _) in &sorted {
        let bad = |reason: String| Error::BadPath {
            path: path.clone(),
            reason,
        };
        if path.starts_with('/') || path.starts_with('\\') {
            return Err(bad("is absolute".into()));
        }
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts {
            check_component(part).map_err(bad)?;
        }
        if let Some(other) = seen.insert(key(path), path) {
            return Err(Error::Duplicate {
                path: path.clone(),
                other: other.to_owned(),
            });
        }
        for i in 1..parts.len() {
            dirs.entry(key(&parts[..i].join("/"))).or_insert(path);
        }
    }
    for (k, file) in &seen {
        if let Some(other) = dirs.get(k) {
            return Err(Error::FileIsDir {
                path: (*file).to_owned(),
                other: (*other).to_owned(),
            });
        }
    }
    let mut out = Vec::with_capacity(sorted.len());
    for (path, source) in sorted {
        let (content, len) = match source {
            FileSource::Bytes(bytes) => (Content::Bytes(bytes.clone()), bytes.len() as u64),
            FileSource::Host(host) => {
                let failed = |source| Error::Source {
                    file: path.clone(),
                    source,
                };
                let meta = fs::metadata(host).map_err(|e| {
                    failed(format::Error::Io {
                        path: host.clone(),
                        what: "cannot read",
                        source: e,
                    })
                })?;
                if !meta.is_file() {
                    return Err(Error::NotAFile {
                        host: host.clone(),
                        file: path.clone(),
                    });
                }
                let disk = format::raw::open_path(host).map_err(failed)?;
                let len = disk.size();
                (Content::Source(disk), len)
            }
            FileSource::Storage(storage) => {
                let disk = format::raw::open(storage.0.clone(), &format::OpenOptions::default())
                    .map_err(|source| Error::Source {
                        file: path.clone(),
                        source,
                    })?;
                let len = disk.size();
                (Content::Source(disk), len)
            }
        };
        if len > MAX_FILE {
            return Err(Error::FileTooBig {
                path: path.clone(),
                size: len,
            });
        }
        out.push(Planned { path, content, len });
    }
    Ok(out)
}

/// Seconds since the Unix epoch (UTC) as a FAT date and time (spec, "Date and Time Formats"),
/// clamped to the range FAT can record and rounded down to its 2-second resolution.
fn fat_date_time(epoch: i64) -> (u16, u16) {
    let t = epoch.clamp(FAT_EPOCH_MIN, FAT_EPOCH_MAX);
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (year, month, day) = crate::util::civil_from_days(days);
    // `t` is clamped: year 1980..=2107, month 1..=12, day 1..=31, seconds of a day < 86400.
    let date = (((year - 1980) << 9) | (month << 5) | day) as u16;
    let time = (((secs / 3600) << 11) | ((secs / 60 % 60) << 5) | (secs % 60 / 2)) as u16;
    (date, time)
}

/// Writes `volume` to a sparse file at `path`, as the copy engine would write a raw disk: for
/// tests that hand the bytes to `fsck.fat`, mtools and the reader.
#[cfg(test)]
pub(crate) fn write_image(volume: &dyn Disk, path: &Path) {
    use std::os::unix::fs::FileExt;
    let file = fs::File::create(path).unwrap();
    file.set_len(volume.size()).unwrap();
    let mut pos = 0;
    let mut buf = vec![0u8; 1 << 20];
    while pos < volume.size() {
        let e = volume.extent(pos, buf.len() as u64).unwrap();
        if e.kind == ExtentKind::Data {
            let chunk = &mut buf[..e.len as usize];
            volume.read_at(pos, chunk).unwrap();
            file.write_all_at(chunk, pos).unwrap();
        }
        pos += e.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FileSystem;
    use crate::ondisk::fat::{BOOT_SECTOR, Chain, Fault, Geometry, Root};
    use crate::util::noise;
    use std::os::unix::fs::FileExt;
    use std::process::{Command, Output};

    const MIB: u64 = 1 << 20;
    /// 2024-02-29 13:37:43 UTC (odd seconds, to check the rounding).
    const EPOCH: i64 = 1_709_213_863;

    fn run(cmd: &str, args: &[&str]) -> Output {
        Command::new(cmd)
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
    }

    fn text(o: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// `fsck.fat -n` passes the image without a word: the version line and the summary line.
    fn assert_fsck_clean(img: &Path) {
        let fsck = run("fsck.fat", &["-n", img.to_str().unwrap()]);
        let out = text(&fsck);
        assert!(fsck.status.success(), "fsck.fat -n failed:\n{out}");
        assert_eq!(out.lines().count(), 2, "fsck.fat -n said more:\n{out}");
    }

    /// Whether a line of `mdir` lists `name`: after the size and date for a long name, or as
    /// the 8.3 name it starts with (`README   TXT`).
    fn lists(line: &str, name: &str) -> bool {
        let short = match name.rsplit_once('.') {
            Some((base, ext)) => format!("{base:<8} {ext}"),
            None => name.to_owned(),
        };
        line.ends_with(&format!("  {name}")) || line.starts_with(&format!("{short} "))
    }

    fn image(size: u64, files: &[(String, FileSource)], epoch: i64) -> FatImage {
        FatImage {
            size,
            label: "ESP".into(),
            volume_id: 0x1234_abcd,
            hidden_sectors: 2048,
            epoch,
            files: files.to_vec(),
        }
    }

    /// Lays out and writes an image; returns the file.
    fn build(
        dir: &Path,
        name: &str,
        size: u64,
        files: &[(String, FileSource)],
        epoch: i64,
    ) -> PathBuf {
        let img = dir.join(name);
        let vol = image(size, files, epoch).layout(&img).unwrap();
        write_image(&vol, &img);
        img
    }

    struct Esp {
        dir: tempfile::TempDir,
        files: Vec<(String, FileSource)>,
        expected: Vec<(String, Vec<u8>)>,
    }

    fn esp_inputs() -> Esp {
        let dir = tempfile::tempdir().unwrap();
        let kernel = noise(3 * MIB as usize + 12_345, 7);
        let host = dir.path().join("vmlinuz");
        fs::write(&host, &kernel).unwrap();
        let efi = noise(150_000, 1);
        let loader = b"default debian.conf\ntimeout 0\n".to_vec();
        let entry = b"title Debian\nlinux /vmlinuz\noptions console=ttyS0\n".to_vec();
        let expected = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_owned(), efi),
            ("loader/loader.conf".to_owned(), loader),
            ("loader/entries/debian.conf".to_owned(), entry),
            ("vmlinuz".to_owned(), kernel),
            ("empty".to_owned(), Vec::new()),
        ];
        let files = expected
            .iter()
            .map(|(p, b)| {
                let src = if p == "vmlinuz" {
                    FileSource::Host(host.clone())
                } else {
                    FileSource::Bytes(b.clone())
                };
                (p.clone(), src)
            })
            .collect();
        Esp {
            dir,
            files,
            expected,
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn esp_passes_fsck_and_mtools_reads_it_back() {
        let esp = esp_inputs();
        let img = esp.dir.path().join("esp.img");
        let vol = image(64 * MIB, &esp.files, EPOCH).layout(&img).unwrap();
        let summary = vol.summary();
        assert_eq!(summary.files, 5);
        let total: u64 = esp.expected.iter().map(|(_, b)| b.len() as u64).sum();
        assert_eq!(summary.bytes, total);
        write_image(&vol, &img);
        let img_s = img.to_str().unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), 64 * MIB);
        assert_fsck_clean(&img);

        // fsck.fat 4.2 -v prints the geometry but neither the volume id nor the label, so those
        // are read with fatlabel (dosfstools) and mdir, and from the boot sector itself.
        let verbose = run("fsck.fat", &["-v", "-n", img_s]);
        let v = text(&verbose);
        assert!(verbose.status.success(), "{v}");
        assert!(v.contains("32 bit entries"), "not FAT32:\n{v}");
        assert!(v.contains("512 bytes per logical sector"), "{v}");
        let id = run("fatlabel", &["-i", img_s]);
        assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), "1234abcd");
        let label = run("fatlabel", &[img_s]);
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "ESP");
        let boot = fs::read(&img).unwrap();
        // FAT32 BPB: BPB_HiddSec at 28, BS_VolID at 67, BS_VolLab at 71, BS_FilSysType at 82.
        assert_eq!(boot[28..32], 2048u32.to_le_bytes());
        assert_eq!(boot[67..71], 0x1234_abcd_u32.to_le_bytes());
        assert_eq!(&boot[71..82], b"ESP        ");
        assert_eq!(&boot[82..90], b"FAT32   ");

        let mdir = run("mdir", &["-/", "-i", img_s, "::"]);
        let listing = text(&mdir);
        assert!(mdir.status.success(), "{listing}");
        assert!(listing.contains("Volume in drive : is ESP"), "{listing}");
        assert!(
            listing.contains("Volume Serial Number is 1234-ABCD"),
            "{listing}"
        );
        for dir in [
            "::/",
            "::/EFI",
            "::/EFI/BOOT",
            "::/loader",
            "::/loader/entries",
        ] {
            let heading = format!("Directory for {dir}");
            assert!(
                listing.lines().any(|l| l == heading),
                "{dir} missing:\n{listing}"
            );
        }
        for (inside, want) in &esp.expected {
            let name = inside.rsplit('/').next().unwrap_or(inside);
            let line = listing.lines().find(|l| lists(l, name));
            let line = line.unwrap_or_else(|| panic!("{inside} missing:\n{listing}"));
            assert!(line.contains(&format!(" {} ", want.len())), "{line}");
        }
        // 5 files, 4 directories and their 8 `.` and `..` entries.
        assert!(listing.contains("17 files"), "{listing}");

        for (inside, want) in &esp.expected {
            let out = esp.dir.path().join("out");
            let _ = fs::remove_file(&out);
            let cp = run(
                "mcopy",
                &[
                    "-n",
                    "-i",
                    img_s,
                    &format!("::{inside}"),
                    out.to_str().unwrap(),
                ],
            );
            assert!(cp.status.success(), "mcopy {inside}: {}", text(&cp));
            assert!(fs::read(&out).unwrap() == *want, "{inside} differs");
        }
        // Timestamps as mtools shows them: 13:37:43 is rounded down to 13:37:42.
        let mdir = text(&run("mdir", &["-i", img_s, "::loader"]));
        assert!(mdir.contains("2024-02-29  13:37"), "{mdir}");
    }

    /// The clusters of the directory at `first`, through the image's first FAT.
    fn chain(file: &fs::File, geo: &Geometry, first: u32) -> Vec<u32> {
        let entry = |n: u32| -> Result<u32, std::io::Error> {
            let (offset, width) = geo.fat_type.entry_location(n);
            let mut bytes = [0u8; 4];
            file.read_exact_at(&mut bytes[..width], geo.fat_start + offset)?;
            Ok(geo.fat_type.entry_value(n, bytes))
        };
        match Chain::directory(geo, first, entry) {
            Ok(c) => c.clusters().collect(),
            Err(Fault::Read(e)) => panic!("{e}"),
            Err(Fault::Corrupt(r)) => panic!("{r}"),
        }
    }

    /// Every short entry in every directory carries the epoch's date and time, and every
    /// subdirectory starts with `.` (itself) and `..` (its parent, 0 for the root).
    #[test]
    fn every_entry_is_stamped_and_dot_entries_point_right() {
        let esp = esp_inputs();
        let img = build(esp.dir.path(), "esp.img", 64 * MIB, &esp.files, EPOCH);
        let file = fs::File::open(&img).unwrap();
        let mut boot = [0u8; BOOT_SECTOR];
        file.read_exact_at(&mut boot, 0).unwrap();
        let geo = codec::geometry(&boot).unwrap();
        let Root::Cluster(root) = geo.root else {
            panic!("not FAT32: {geo:?}")
        };
        let (date, time) = fat_date_time(EPOCH);
        let mut expect = [0u8; DIR_ENTRY];
        codec::set_timestamps(&mut expect, date, time);
        let mut todo = vec![(root, None)];
        let (mut dirs, mut shorts) = (0, 0);
        while let Some((dir, parent)) = todo.pop() {
            dirs += 1;
            let mut bytes = Vec::new();
            for c in chain(&file, &geo, dir) {
                let mut b = vec![0u8; geo.cluster_bytes as usize];
                file.read_exact_at(&mut b, geo.cluster_offset(c).unwrap())
                    .unwrap();
                bytes.extend(b);
            }
            let entries: Vec<&[u8; DIR_ENTRY]> = bytes
                .chunks_exact(DIR_ENTRY)
                .map(|e| e.try_into().unwrap())
                .take_while(|e: &&[u8; DIR_ENTRY]| e[0] != 0)
                .collect();
            if let Some(parent) = parent {
                assert_eq!(&entries[0][..11], codec::DOT);
                assert_eq!(&entries[1][..11], codec::DOT_DOT);
                assert_eq!(codec::entry_cluster(entries[0], codec::FatType::Fat32), dir);
                let up = if parent == root { 0 } else { parent };
                assert_eq!(codec::entry_cluster(entries[1], codec::FatType::Fat32), up);
            }
            for e in entries {
                if e[11] == codec::ATTR_LONG_NAME {
                    continue;
                }
                shorts += 1;
                assert_eq!(e[13..20], expect[13..20], "{:?}", &e[..11]);
                assert_eq!(e[22..26], expect[22..26], "{:?}", &e[..11]);
                if e[11] & ATTR_DIRECTORY != 0 && e[0] != b'.' {
                    todo.push((codec::entry_cluster(e, codec::FatType::Fat32), Some(dir)));
                }
            }
        }
        // root, EFI, EFI/BOOT, loader, loader/entries
        assert_eq!(dirs, 5);
        // label + 5 files + 4 directories named in parents + 4 × (. and ..)
        assert_eq!(shorts, 1 + 5 + 4 + 8);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn builds_are_reproducible_and_follow_the_epoch() {
        let esp = esp_inputs();
        let d = esp.dir.path();
        let a = build(d, "a.img", 64 * MIB, &esp.files, EPOCH);
        let mut shuffled = esp.files.clone();
        shuffled.reverse();
        shuffled.swap(0, 2);
        let b = build(d, "b.img", 64 * MIB, &shuffled, EPOCH);
        assert!(
            fs::read(&a).unwrap() == fs::read(&b).unwrap(),
            "input order changed the bytes"
        );
        // Same 2-second slot: same bytes.
        let c = build(d, "c.img", 64 * MIB, &esp.files, EPOCH - 1);
        assert!(fs::read(&a).unwrap() == fs::read(&c).unwrap());
        let e = build(d, "e.img", 64 * MIB, &esp.files, EPOCH + 86_400);
        assert!(
            fs::read(&a).unwrap() != fs::read(&e).unwrap(),
            "epoch ignored"
        );
        assert_fsck_clean(&e);
    }

    #[test]
    fn epochs_map_to_fat_dates() {
        let dt = |e| {
            let (d, t) = fat_date_time(e);
            (
                (d >> 9) + 1980,
                (d >> 5) & 15,
                d & 31,
                t >> 11,
                (t >> 5) & 63,
                (t & 31) * 2,
            )
        };
        assert_eq!(dt(EPOCH), (2024, 2, 29, 13, 37, 42));
        assert_eq!(dt(0), (1980, 1, 1, 0, 0, 0));
        assert_eq!(dt(i64::MIN), (1980, 1, 1, 0, 0, 0));
        assert_eq!(dt(FAT_EPOCH_MIN), (1980, 1, 1, 0, 0, 0));
        assert_eq!(dt(FAT_EPOCH_MIN + 59), (1980, 1, 1, 0, 0, 58));
        assert_eq!(dt(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(dt(1_735_689_599), (2024, 12, 31, 23, 59, 58));
        assert_eq!(dt(i64::MAX), (2107, 12, 31, 23, 59, 58));
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn smallest_size_is_accepted_and_one_sector_less_is_not() {
        let l = Layout::choose(MIN_SIZE).unwrap();
        assert_eq!((l.sectors_per_cluster, l.clusters), (1, MIN_CLUSTERS));
        assert!(matches!(
            Layout::choose(MIN_SIZE - SECTOR),
            Err(Error::Size { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let files = [("a.txt".to_owned(), FileSource::Bytes(b"a".to_vec()))];
        let img = build(dir.path(), "min.img", MIN_SIZE, &files, EPOCH);
        assert_fsck_clean(&img);
        let err = image(MIN_SIZE - SECTOR, &files, EPOCH)
            .layout(&img)
            .err()
            .unwrap();
        assert!(matches!(err, Error::Size { .. }), "{err}");
    }

    /// Cluster sizes follow the spec's table as far as the cluster count allows, the data area
    /// starts on a cluster boundary, the FAT is as small as it can be, and a volume of any size
    /// lays out without holding its FAT in memory.
    #[test]
    fn geometry_follows_the_size() {
        const GIB: u64 = 1 << 30;
        for (size, cluster) in [
            (64 * MIB, 512),
            (128 * MIB, 1024),
            (256 * MIB, 2048),
            (260 * MIB, 4096),
            (8 * GIB, 4096),
            (8 * GIB + MIB, 8192),
            (MAX_SIZE, 32768),
        ] {
            let l = Layout::choose(size).unwrap();
            assert_eq!(l.cluster_bytes(), cluster, "{size}");
            assert!(l.clusters >= MIN_CLUSTERS);
            assert_eq!(l.data_start() % l.cluster_bytes(), 0, "{size}");
            let need = |c: u64| ((c + 2) * 4).div_ceil(SECTOR);
            assert!(need(l.clusters) <= l.fat_sectors, "{size}");
            // One sector less of FAT would leave too few entries.
            let smaller = Layout::with_cluster(size / SECTOR, l.cluster_bytes() / SECTOR)
                .map(|s| s.fat_sectors);
            assert_eq!(smaller, Some(l.fat_sectors));
            let total = l.reserved + 2 * l.fat_sectors + l.clusters * (cluster / SECTOR);
            assert!(total <= size / SECTOR && size / SECTOR - total < cluster / SECTOR);
        }
        // The largest volume: the boot sector decodes to the same layout.
        let files = [("a".to_owned(), FileSource::Bytes(vec![1; 70_000]))];
        let vol = image(MAX_SIZE, &files, EPOCH)
            .layout(Path::new("big"))
            .unwrap();
        let mut boot = [0u8; BOOT_SECTOR];
        vol.read_at(0, &mut boot).unwrap();
        let geo = codec::geometry(&boot).unwrap();
        let l = Layout::choose(MAX_SIZE).unwrap();
        assert_eq!(u64::from(geo.clusters), l.clusters);
        assert_eq!(geo.data_start, l.data_start());
        // The FAT's allocated entries, then free ones: 0x0FFFFFF8, EOC (1), EOC (root), 4, 5, EOC.
        let mut fat = [0u8; 32];
        vol.read_at(geo.fat_start, &mut fat).unwrap();
        let entries: Vec<u32> = fat
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            entries,
            [
                0x0FFF_FFF8,
                0x0FFF_FFFF,
                0x0FFF_FFFF,
                4,
                5,
                0x0FFF_FFFF,
                0,
                0
            ]
        );
        // Free clusters are holes, not data.
        let e = vol.extent(geo.data_start + 16 * MIB, u64::MAX).unwrap();
        assert_eq!(e.kind, ExtentKind::Zero);
    }

    /// Names that need long names and numeric tails, colliding bases, non-ASCII characters,
    /// leading dots, spaces, a directory over several clusters: fsck.fat passes it, and the
    /// reader and mtools give every name and every byte back.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn awkward_names_and_large_directories_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut want: Vec<(String, Vec<u8>)> = vec![
            ("README.TXT".into(), b"exact 8.3".to_vec()),
            ("readme.md".into(), b"case only".to_vec()),
            ("Long File Name.conf".into(), b"spaces".to_vec()),
            (".hidden".into(), b"leading dot".to_vec()),
            ("ma\u{f1}ana.txt".into(), b"non-ascii".to_vec()),
            ("a.b.c.d".into(), b"dots".to_vec()),
            ("x+y=z[1].txt".into(), b"specials".to_vec()),
            ("FOOBAR~1".into(), b"looks like a tail".to_vec()),
            ("foo bar".into(), b"would take FOOBAR~1".to_vec()),
            ("kernel-6.1.0-28-amd64.efi".into(), noise(5000, 3)),
        ];
        // 600 names with the same basis: tails run past ~9, ~99 into ~100.
        for i in 0..600 {
            want.push((
                format!("deep/entries/configuration-{i:04}.conf"),
                noise(i, i as u64),
            ));
        }
        let files: Vec<(String, FileSource)> = want
            .iter()
            .map(|(p, b)| (p.clone(), FileSource::Bytes(b.clone())))
            .collect();
        let img = build(dir.path(), "names.img", 128 * MIB, &files, EPOCH);
        assert_fsck_clean(&img);

        let disk = crate::format::raw::open_path(&img).unwrap();
        let fs = crate::fs::fat::Fat::open(disk, 0, 128 * MIB, &img).unwrap();
        for (path, data) in &want {
            let got = fs.read_to_vec(&format!("/{path}"), 1 << 20).unwrap();
            assert!(got == *data, "{path}");
        }
        let listed = fs.read_dir("/deep/entries", 1000).unwrap();
        assert_eq!(listed.len(), 600);
        // The short names are distinct, and mtools lists every long name.
        let mdir = text(&run(
            "mdir",
            &["-i", img.to_str().unwrap(), "::deep/entries"],
        ));
        let shorts: BTreeSet<&str> = mdir
            .lines()
            .filter(|l| l.contains("configuration-"))
            .map(|l| &l[..12])
            .collect();
        assert_eq!(shorts.len(), 600, "{mdir}");
        let root = text(&run("mdir", &["-i", img.to_str().unwrap(), "::"]));
        // mdir under LC_ALL=C cannot show non-ASCII names; the reader checked those.
        for (path, _) in want
            .iter()
            .filter(|(p, _)| !p.contains('/') && p.is_ascii())
        {
            assert!(
                root.lines().any(|l| lists(l, path)),
                "{path} missing:\n{root}"
            );
        }
    }

    /// Random trees of random names and sizes, read back through the reader straight from the
    /// laid-out disk: every file's bytes, every directory's names, nothing more; every eighth
    /// also through `fsck.fat -n`.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn random_trees_read_back() {
        let pieces = [
            "a",
            "B",
            "readme",
            "READ ME",
            "x.y",
            ".dot",
            "long-component-name",
            "\u{e9}t\u{e9}",
            "Kernel.EFI",
            "c~1",
            "z.tar.gz",
            "UPPER.TXT",
            "MiXeD.CoNf",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for round in 0..40 {
            let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut keys: BTreeSet<String> = BTreeSet::new();
            for _ in 0..1 + next(40) {
                let depth = 1 + next(3);
                let parts: Vec<String> = (0..depth)
                    .map(|_| format!("{}{}", pieces[next(pieces.len())], next(3)))
                    .collect();
                let path = parts.join("/");
                let upper = |s: &str| s.chars().flat_map(char::to_uppercase).collect::<String>();
                // Skip paths that clash with another file or directory (plan() refuses those).
                let clash = keys.iter().any(|k| {
                    let p = upper(&path);
                    *k == p || k.starts_with(&format!("{p}/")) || p.starts_with(&format!("{k}/"))
                });
                if clash {
                    continue;
                }
                keys.insert(upper(&path));
                let len = [0, 1, 511, 512, 513, 4096, 70_000][next(7)];
                files.insert(path, noise(len, round * 1000 + files.len() as u64));
            }
            let inputs: Vec<(String, FileSource)> = files
                .iter()
                .map(|(p, b)| (p.clone(), FileSource::Bytes(b.clone())))
                .collect();
            let vol = image(64 * MIB, &inputs, EPOCH)
                .layout(Path::new("random"))
                .unwrap();
            let disk: Arc<dyn Disk> = Arc::new(vol);
            if round % 8 == 0 {
                let dir = tempfile::tempdir().unwrap();
                let img = dir.path().join("random.img");
                write_image(disk.as_ref(), &img);
                assert_fsck_clean(&img);
            }
            let fs = crate::fs::fat::Fat::open(disk, 0, 64 * MIB, Path::new("random")).unwrap();
            let mut dirs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (path, data) in &files {
                let got = fs.read_to_vec(&format!("/{path}"), 1 << 20).unwrap();
                assert!(got == *data, "round {round}: {path}");
                let parts: Vec<&str> = path.split('/').collect();
                for i in 0..parts.len() {
                    let parent = format!("/{}", parts[..i].join("/"));
                    dirs.entry(parent).or_default().insert(parts[i].to_owned());
                }
            }
            for (dir, want) in dirs {
                let got: BTreeSet<String> = fs
                    .read_dir(&dir, 10_000)
                    .unwrap()
                    .into_iter()
                    .map(|e| e.name)
                    .collect();
                assert_eq!(got, want, "round {round}: {dir}");
            }
        }
    }

    #[test]
    fn short_names_follow_the_basis_rules() {
        let got = short_names(&[
            "README.TXT",
            "vmlinuz",
            "Long Name.conf",
            "long-name.conf",
            ".bashrc",
            "a.b.c",
        ]);
        let want: [&[u8; 11]; 6] = [
            b"README  TXT",
            b"VMLINUZ    ",
            b"LONGNA~1CON",
            b"LONG-N~1CON",
            b"BASHRC~1   ",
            b"AB~1    C  ",
        ];
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w, "{:?}", String::from_utf8_lossy(g));
        }
        // An exact name is kept even when a generated one would have taken it first.
        let got = short_names(&["foo bar", "FOOBAR~1"]);
        assert_eq!(&got[0], b"FOOBAR~2   ");
        assert_eq!(&got[1], b"FOOBAR~1   ");
    }

    /// A host file is read when the disk is copied; one that shrank by then fails the read
    /// with its name, rather than giving a volume with the wrong bytes.
    #[test]
    fn host_files_are_read_at_copy_time() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("kernel");
        fs::write(&host, noise(100_000, 9)).unwrap();
        let files = [("vmlinuz".to_owned(), FileSource::Host(host.clone()))];
        let vol = image(64 * MIB, &files, EPOCH)
            .layout(Path::new("esp"))
            .unwrap();
        fs::write(&host, b"short").unwrap();
        let mut buf = vec![0u8; 64 * MIB as usize];
        let err = vol.read_at(0, &mut buf).unwrap_err().to_string();
        assert!(err.contains("kernel") && err.contains("shrank"), "{err}");
    }

    #[test]
    fn errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let one = |p: &str| vec![(p.to_owned(), FileSource::Bytes(vec![1]))];
        let msg = |size, files: &[(String, FileSource)]| {
            let r = image(size, files, EPOCH).layout(Path::new("esp"));
            r.err().unwrap().to_string()
        };
        let m = msg(16 * MIB, &one("a"));
        assert!(m.contains("too small for FAT32"), "{m}");
        let m = msg(64 * MIB + 1, &one("a"));
        assert!(m.contains("multiple of 512"), "{m}");

        for label in ["", "TWELVE CHARS", "a.b", " LEAD", "é"] {
            let mut img = image(64 * MIB, &one("a"), EPOCH);
            img.label = label.into();
            let r = img.layout(Path::new("esp"));
            assert!(matches!(r, Err(Error::Label { .. })), "{label:?}");
        }

        for (path, why) in [
            ("/EFI/BOOT/BOOTX64.EFI", "absolute"),
            ("EFI/../x", "\"..\""),
            ("EFI//x", "empty component"),
            ("EFI/", "empty component"),
            ("", "empty component"),
            ("./x", "\".\""),
            ("EFI/a:b", "':'"),
            ("EFI/a*b", "'*'"),
            ("a\\b", "'\\\\'"),
            ("tab\there", "'\\t'"),
            ("trailing.", "ends with a dot"),
            ("emoji🦀", "'🦀'"),
        ] {
            let m = msg(64 * MIB, &one(path));
            assert!(m.starts_with(&format!("{path:?}: ")), "{m}");
            assert!(m.contains(why), "{path:?}: {m}");
        }

        let dup = vec![
            ("EFI/BOOT/x".to_owned(), FileSource::Bytes(vec![1])),
            ("efi/boot/X".to_owned(), FileSource::Bytes(vec![2])),
        ];
        assert!(msg(64 * MIB, &dup).contains("given twice"));
        let clash = vec![
            ("EFI".to_owned(), FileSource::Bytes(vec![1])),
            ("EFI/BOOT/x".to_owned(), FileSource::Bytes(vec![2])),
        ];
        let m = msg(64 * MIB, &clash);
        assert!(m.contains("\"EFI\": is a file, but \"EFI/BOOT/x\""), "{m}");

        let missing = vec![("k".to_owned(), FileSource::Host(dir.path().join("nope")))];
        let m = msg(64 * MIB, &missing);
        assert!(m.contains("nope") && m.contains("\"k\""), "{m}");
        let not_file = vec![("k".to_owned(), FileSource::Host(dir.path().to_owned()))];
        assert!(msg(64 * MIB, &not_file).contains("not a regular file"));

        // Two 20 MiB files in a 40 MiB volume: the second (in sorted order) does not fit.
        let big = vec![
            (
                "b/second.bin".to_owned(),
                FileSource::Bytes(vec![0; 20 * MIB as usize]),
            ),
            (
                "a/first.bin".to_owned(),
                FileSource::Bytes(vec![0; 20 * MIB as usize]),
            ),
        ];
        let err = image(40 * MIB, &big, EPOCH)
            .layout(Path::new("esp"))
            .err()
            .unwrap();
        let m = err.to_string();
        assert!(matches!(err, Error::NoSpace { .. }), "{m}");
        assert!(
            m.starts_with("\"b/second.bin\": needs 20971520 bytes"),
            "{m}"
        );

        // More entries than a FAT directory may hold.
        let many: Vec<(String, FileSource)> = (0..22_000)
            .map(|i| (format!("d/a-long-name-{i}"), FileSource::Bytes(Vec::new())))
            .collect();
        let m = msg(64 * MIB, &many);
        assert!(m.starts_with("\"d\": a directory of 65992 entries"), "{m}");
    }
}
