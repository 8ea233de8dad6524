//! FAT32 file systems for EFI system partitions, built in-process and reproducibly.
//!
//! [`build`] formats an image file with the `fatfs` crate, copies files into it and then
//! corrects, over the raw bytes, the two directory details in which `fatfs` 0.3.6 departs from
//! the FAT specification (both found by `fsck.fat -n` on fatfs's output, and the repair proven
//! by it: README, Design, "Dependencies"):
//!
//! - it writes a long-name (LFN) entry before the `.` and `..` entries of every new directory;
//!   the specification (Microsoft "FAT: General Overview of On-Disk Format", section "FAT
//!   Directory Structure") requires `.` and `..` to be the first two entries, with no long
//!   name;
//! - the `..` entry of a directory whose parent is the root points at the root's cluster (2),
//!   where the specification requires 0 ("the root directory has no cluster number to point
//!   to").
//!
//! `fsck.fat -n` rejects an image with either mistake; with them corrected it exits 0 without a
//! warning. Every identifier and timestamp comes from the caller (volume id, label, `epoch`), and
//! entries are created in sorted order, so two builds from the same inputs give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};

use crate::ondisk::fat::{
    self as codec, BOOT_SECTOR, Chain, DIR_ENTRY, Fault, Geometry, Root, Slot,
};

/// Bytes per sector: the only size `fatfs` formats by default and the one every firmware reads.
const SECTOR: u64 = 512;

/// Host files are copied in pieces of this size, so a kernel of hundreds of MiB never sits in
/// memory whole.
const CHUNK: usize = 1 << 20;

/// The smallest image `fatfs` 0.3.6 lays out as FAT32 with 512-byte sectors: FAT32 needs at least
/// 65525 clusters (FAT spec, "FAT Type Determination") and `fatfs` picks 512-byte clusters below
/// 260 MB, so the data area alone is about 32 MiB; with two FATs, 32 reserved sectors and fatfs's
/// rounding, the first size it formats as FAT32 is 66557 sectors (32.5 MiB; found by formatting
/// every sector count from 60000 up, and no larger count up to 86557 failed).
pub const MIN_SIZE: u64 = 66_557 * SECTOR;

/// The largest image: `fatfs` counts sectors in 32 bits.
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
    /// A regular file on the host, copied in 1 MiB pieces.
    Host(PathBuf),
}

/// What [`build`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FatSummary {
    /// Number of files (directories are not counted).
    pub files: usize,
    /// Total size of the files, in bytes.
    pub bytes: u64,
}

/// A FAT32 image to build: the arguments of [`build`] kept together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatImage {
    /// Size of the image in bytes: a multiple of 512, at least [`MIN_SIZE`].
    pub size: u64,
    /// Volume label: up to 11 characters of the FAT short-name set; lower-case ASCII letters are
    /// upper-cased.
    pub label: String,
    /// Volume serial number (the boot sector's volume id).
    pub volume_id: u32,
    /// Seconds since the Unix epoch (UTC) stamped on every entry, e.g. `SOURCE_DATE_EPOCH`.
    pub epoch: i64,
    /// Files to copy in: `/`-separated paths inside the volume (`EFI/BOOT/BOOTX64.EFI`) and where
    /// their bytes come from. Their order does not matter.
    pub files: Vec<(String, FileSource)>,
}

impl FatImage {
    /// Writes the image to `path`; see [`build`].
    pub fn build(&self, path: &Path) -> Result<FatSummary, Error> {
        build(
            path,
            self.size,
            &self.label,
            self.volume_id,
            self.epoch,
            &self.files,
        )
    }
}

/// Errors of [`build`]. Each names the image, the file inside it or the host file concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested image size cannot hold a FAT32 file system.
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
    /// The files do not fit in the volume.
    #[error(
        "{path:?}: needs {needed} bytes but only {free} bytes of the {size}-byte volume are free"
    )]
    NoSpace {
        /// The first file that does not fit, in sorted order.
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
    /// A host file could not be read, or changed while it was read.
    #[error("{}: {what}: {source}", host.display())]
    Source {
        /// The host path.
        host: PathBuf,
        /// What was being done, naming the file inside the volume.
        what: String,
        /// The system's error.
        source: io::Error,
    },
    /// The image could not be created, formatted or written.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The image.
        path: PathBuf,
        /// What was being done (naming the file inside the volume, if any).
        what: String,
        /// The system's (or `fatfs`'s) error.
        source: io::Error,
    },
    /// The image does not look as `fatfs` should have written it.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The image.
        path: PathBuf,
        /// Why, in one line.
        reason: String,
    },
}

impl Error {
    fn io(path: &Path, what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let path = path.to_owned();
        let what = what.into();
        move |source| Error::Io { path, what, source }
    }

    fn source(host: &Path, what: String) -> impl FnOnce(io::Error) -> Error + use<> {
        let host = host.to_owned();
        move |source| Error::Source { host, what, source }
    }
}

/// Builds a FAT32 image of `size` bytes at `path` (created, or truncated, as a sparse file)
/// holding `files`, with volume label `label`, serial number `volume_id` and every timestamp set
/// to `epoch` (seconds since the Unix epoch, UTC, clamped to what FAT can record: 1980-01-01
/// 00:00:00 to 2107-12-31 23:59:58, rounded down to even seconds).
///
/// Paths inside the volume are `/`-separated and relative (`EFI/BOOT/BOOTX64.EFI`); missing
/// directories are created. All arguments are checked before `path` is touched; if building
/// fails later, the partial image is removed.
pub fn build(
    path: &Path,
    size: u64,
    label: &str,
    volume_id: u32,
    epoch: i64,
    files: &[(String, FileSource)],
) -> Result<FatSummary, Error> {
    check_size(size)?;
    let label_bytes = volume_label(label)?;
    let plan = plan(files)?;
    let stamp = fat_date_time(epoch);

    let result = write_image(path, size, label_bytes, volume_id, stamp, &plan);
    if result.is_err() {
        // Best effort: an incomplete image must not be mistaken for a result.
        let _ = fs::remove_file(path);
    }
    result
}

/// A file to write, after checking.
struct Planned<'a> {
    path: &'a str,
    source: &'a FileSource,
    len: u64,
}

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

/// The 11-byte label field: short-name characters only (FAT spec, "FAT Directory Structure",
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

/// Checks one path component against what FAT long names allow (FAT spec, "FAT Long Directory
/// Entries": not `" * / : < > ? \ |` nor control characters) and what `fatfs` 0.3.6 can encode
/// (at most 255 bytes, characters of the Basic Multilingual Plane only).
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

/// Checks every path and source, sorts the files by path and returns them with their sizes.
/// Keys compare upper-cased because FAT looks names up without regard to case, so `EFI/boot` and
/// `EFI/BOOT` are the same directory.
fn plan(files: &[(String, FileSource)]) -> Result<Vec<Planned<'_>>, Error> {
    let key = |s: &str| -> String { s.chars().flat_map(char::to_uppercase).collect() };
    let mut sorted: Vec<&(String, FileSource)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut dirs: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::with_capacity(sorted.len());
    for (path, source) in sorted {
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
        let len = match source {
            FileSource::Bytes(bytes) => bytes.len() as u64,
            FileSource::Host(host) => {
                let meta = fs::metadata(host)
                    .map_err(Error::source(host, format!("reading it for {path:?}")))?;
                if !meta.is_file() {
                    return Err(Error::NotAFile {
                        host: host.clone(),
                        file: path.clone(),
                    });
                }
                meta.len()
            }
        };
        if len > MAX_FILE {
            return Err(Error::FileTooBig {
                path: path.clone(),
                size: len,
            });
        }
        out.push(Planned { path, source, len });
    }
    for (k, file) in &seen {
        if let Some(other) = dirs.get(k) {
            return Err(Error::FileIsDir {
                path: (*file).to_owned(),
                other: (*other).to_owned(),
            });
        }
    }
    Ok(out)
}

/// Converts seconds since the Unix epoch (UTC) to a FAT date and time, clamped to the range FAT
/// can record and rounded down to its 2-second resolution (FAT spec, "Date and Time Formats").
fn fat_date_time(epoch: i64) -> DateTime {
    let t = epoch.clamp(FAT_EPOCH_MIN, FAT_EPOCH_MAX);
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // `t` is clamped, so every value is small and non-negative.
    let (year, month, day) = crate::util::civil_from_days(days);
    // All in range: year 1980..=2107, month 1..=12, day 1..=31, seconds of a day < 86400.
    let small = |v: i64| v as u16;
    DateTime {
        date: Date {
            year: small(year),
            month: small(month),
            day: small(day),
        },
        time: Time {
            hour: small(secs / 3600),
            min: small(secs / 60 % 60),
            sec: small(secs % 60 / 2 * 2),
            millis: 0,
        },
    }
}

/// A clock stopped at one instant, so `fatfs` stamps every entry alike.
#[derive(Debug, PartialEq)]
struct FixedClock(DateTime);

impl TimeProvider for FixedClock {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// `fatfs` 0.3.6 wants a `&'static dyn TimeProvider`. Clocks are leaked once per distinct
/// instant and reused, so repeated builds do not grow memory.
fn clock(at: DateTime) -> &'static FixedClock {
    static CLOCKS: Mutex<Vec<&'static FixedClock>> = Mutex::new(Vec::new());
    let mut clocks = CLOCKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = clocks.iter().find(|c| c.0 == at) {
        return found;
    }
    let new: &'static FixedClock = Box::leak(Box::new(FixedClock(at)));
    clocks.push(new);
    new
}

fn write_image(
    path: &Path,
    size: u64,
    label: [u8; 11],
    volume_id: u32,
    stamp: DateTime,
    plan: &[Planned<'_>],
) -> Result<FatSummary, Error> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(Error::io(path, "creating the image"))?;
    // A sparse file: formatting writes only the boot sectors, the FATs and the root directory.
    file.set_len(size)
        .map_err(Error::io(path, "setting the image size"))?;

    fatfs::format_volume(
        &file,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(label),
    )
    .map_err(Error::io(path, "formatting FAT32"))?;

    let summary = {
        // fatfs seeks from where the handle is; formatting leaves it at 0, and `&File` shares the
        // position with `file`.
        let fs = FileSystem::new(&file, FsOptions::new().time_provider(clock(stamp)))
            .map_err(Error::io(path, "mounting the new file system"))?;
        // `fat_type(Fat32)` only picks the cluster size: fatfs falls back to FAT16 or FAT12 when
        // the size cannot hold FAT32, which MIN_SIZE should rule out. Check rather than trust.
        if fs.fat_type() != FatType::Fat32 {
            return Err(Error::Size {
                size,
                reason: "fatfs would not lay it out as FAT32".into(),
            });
        }
        let summary = copy_files(path, size, &fs, plan)?;
        // The FSInfo free-cluster count stays "unknown" after formatting; stats() computes it and
        // unmount() then writes it, else fsck.fat reports a wrong free count (crates.md).
        fs.stats()
            .map_err(Error::io(path, "counting free clusters"))?;
        fs.unmount()
            .map_err(Error::io(path, "unmounting the file system"))?;
        summary
    };

    fix_directories(path, &file, stamp)?;
    file.sync_all()
        .map_err(Error::io(path, "syncing the image"))?;
    Ok(summary)
}

fn copy_files(
    path: &Path,
    size: u64,
    fs: &FileSystem<&fs::File>,
    plan: &[Planned<'_>],
) -> Result<FatSummary, Error> {
    let root = fs.root_dir();
    let mut made: BTreeSet<String> = BTreeSet::new();
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    for item in plan {
        let parts: Vec<&str> = item.path.split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            if made.insert(dir.clone()) {
                root.create_dir(&dir).map_err(Error::io(
                    path,
                    format!("creating directory {dir:?} for {:?}", item.path),
                ))?;
            }
        }

        // Check the space first so the error names the file that does not fit. Only whole
        // clusters count; a directory growing by a cluster is left to fatfs's own error.
        let stats = fs
            .stats()
            .map_err(Error::io(path, "counting free clusters"))?;
        let cluster = u64::from(stats.cluster_size());
        let needed = item.len.div_ceil(cluster) * cluster;
        let free = u64::from(stats.free_clusters()) * cluster;
        if needed > free {
            return Err(Error::NoSpace {
                path: item.path.to_owned(),
                needed,
                free,
                size,
            });
        }

        let what = || format!("writing {:?}", item.path);
        let mut out = root
            .create_file(item.path)
            .map_err(Error::io(path, what()))?;
        match item.source {
            FileSource::Bytes(data) => out.write_all(data).map_err(Error::io(path, what()))?,
            FileSource::Host(host) => {
                if buf.is_empty() {
                    buf = vec![0u8; CHUNK];
                }
                let reading = || format!("reading it for {:?}", item.path);
                let mut src = fs::File::open(host).map_err(Error::source(host, reading()))?;
                let mut copied = 0u64;
                loop {
                    let n = match src.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Error::source(host, reading())(e)),
                    };
                    copied += n as u64;
                    if copied > item.len {
                        break;
                    }
                    out.write_all(&buf[..n]).map_err(Error::io(path, what()))?;
                }
                if copied != item.len {
                    let changed = io::Error::other(format!(
                        "its size changed from {} bytes while it was copied",
                        item.len
                    ));
                    return Err(Error::source(host, reading())(changed));
                }
            }
        }
        // Dropping a fatfs File flushes too, but would swallow the error.
        out.flush().map_err(Error::io(path, what()))?;
        bytes += item.len;
    }
    Ok(FatSummary {
        files: plan.len(),
        bytes,
    })
}

/// Walks the directory tree of the unmounted image and corrects what fatfs 0.3.6 gets wrong
/// (module docs, crates.md): in every directory the long-name slots just before `.` and `..` are
/// dropped (the following entries move up, the freed tail is zeroed), `.` points at the
/// directory itself and `..` at its parent, or 0 when the parent is the root (FAT spec, "FAT
/// Directory Structure"). fatfs also leaves the volume label entry's date fields at zero (month
/// 0, an invalid date); they get `stamp` like every other entry.
fn fix_directories(path: &Path, file: &fs::File, stamp: DateTime) -> Result<(), Error> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let mut boot = [0u8; BOOT_SECTOR];
    file.read_exact_at(&mut boot, 0)
        .map_err(Error::io(path, "reading the boot sector"))?;
    let geo = codec::geometry(&boot).map_err(|r| corrupt(format!("boot sector: {r}")))?;
    let (codec::FatType::Fat32, Root::Cluster(root)) = (geo.fat_type, geo.root) else {
        return Err(corrupt(format!(
            "boot sector: a {} volume, not FAT32",
            geo.fat_type.name()
        )));
    };
    let (date, time) = fat_stamp(stamp);
    // (directory's first cluster, what its `..` must hold: 0 for a child of the root)
    let mut todo: Vec<(u32, Option<u32>)> = vec![(root, None)];
    let mut visited: BTreeSet<u32> = BTreeSet::new();
    while let Some((dir, dotdot)) = todo.pop() {
        if !visited.insert(dir) {
            return Err(corrupt(format!("directory cluster {dir} is reached twice")));
        }
        let is_root = dotdot.is_none();
        let chain = directory_chain(path, file, &geo, dir)?;
        let cluster_bytes = geo.cluster_bytes as usize;
        let offset = |c: u32| {
            geo.cluster_offset(c)
                .ok_or_else(|| corrupt(format!("cluster {c} has no offset")))
        };
        let mut bytes = vec![0u8; chain.len() * cluster_bytes];
        for (i, &c) in chain.iter().enumerate() {
            file.read_exact_at(&mut bytes[i * cluster_bytes..][..cluster_bytes], offset(c)?)
                .map_err(Error::io(path, "reading a directory"))?;
        }

        let mut kept: Vec<u8> = Vec::with_capacity(bytes.len());
        // Long-name slots seen since the last short entry; they belong to the next one.
        let mut pending: Vec<u8> = Vec::new();
        for raw in bytes.chunks_exact(DIR_ENTRY) {
            let mut entry = [0u8; DIR_ENTRY];
            entry.copy_from_slice(raw);
            match codec::slot(&entry, codec::FatType::Fat32) {
                // "This and all following entries are free" (FAT spec).
                Slot::End => break,
                Slot::LongName => {
                    pending.extend_from_slice(raw);
                    continue;
                }
                Slot::Dot | Slot::DotDot => {
                    // The long name fatfs wrote for `.` or `..` goes away.
                    pending.clear();
                    let target = if entry[..11] == *codec::DOT_DOT {
                        dotdot.unwrap_or(0)
                    } else {
                        dir
                    };
                    codec::set_entry_cluster(&mut entry, target);
                }
                Slot::Label if is_root => {
                    kept.append(&mut pending);
                    codec::set_timestamps(&mut entry, date, time);
                }
                Slot::Dir(child) => {
                    kept.append(&mut pending);
                    // A child of the root records 0 as its parent (FAT spec).
                    todo.push((child, Some(if is_root { 0 } else { dir })));
                }
                Slot::Free | Slot::Label | Slot::File { .. } => kept.append(&mut pending),
            }
            kept.extend_from_slice(&entry);
        }
        kept.append(&mut pending);
        kept.resize(bytes.len(), 0);

        if kept != bytes {
            for (i, &c) in chain.iter().enumerate() {
                let new = &kept[i * cluster_bytes..][..cluster_bytes];
                if new != &bytes[i * cluster_bytes..][..cluster_bytes] {
                    file.write_all_at(new, offset(c)?)
                        .map_err(Error::io(path, "rewriting a directory"))?;
                }
            }
        }
    }
    Ok(())
}

/// The clusters of the directory that starts at `first`, followed through the first FAT of
/// the image by the codec's walker.
fn directory_chain(
    path: &Path,
    file: &fs::File,
    geo: &Geometry,
    first: u32,
) -> Result<Vec<u32>, Error> {
    let entry = |n: u32| {
        let (offset, width) = geo.fat_type.entry_location(n);
        let mut bytes = [0u8; 4];
        file.read_exact_at(&mut bytes[..width], geo.fat_start + offset)
            .map_err(Error::io(path, "reading the FAT"))?;
        Ok(geo.fat_type.entry_value(n, bytes))
    };
    match Chain::directory(geo, first, entry) {
        Ok(chain) => Ok(chain.clusters().collect()),
        Err(Fault::Read(e)) => Err(e),
        Err(Fault::Corrupt(reason)) => Err(Error::Corrupt {
            path: path.to_owned(),
            reason: format!("the directory at cluster {first}: {reason}"),
        }),
    }
}

/// `at` as a FAT date and time (FAT spec, "Date and Time Formats").
fn fat_stamp(at: DateTime) -> (u16, u16) {
    let date = ((at.date.year - 1980) << 9) | (at.date.month << 5) | at.date.day;
    let time = (at.time.hour << 11) | (at.time.min << 5) | (at.time.sec / 2);
    (date, time)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// Bytes that are not all alike, so misplaced clusters show.
    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    struct Esp {
        dir: tempfile::TempDir,
        files: Vec<(String, FileSource)>,
        expected: Vec<(String, Vec<u8>)>,
    }

    fn esp_inputs() -> Esp {
        let dir = tempfile::tempdir().unwrap();
        let kernel = pattern(3 * MIB as usize + 12_345, 7);
        let host = dir.path().join("vmlinuz");
        fs::write(&host, &kernel).unwrap();
        let efi = pattern(150_000, 1);
        let loader = b"default debian.conf\ntimeout 0\n".to_vec();
        let entry = b"title Debian\nlinux /vmlinuz\noptions console=ttyS0\n".to_vec();
        let files = vec![
            (
                "EFI/BOOT/BOOTX64.EFI".to_owned(),
                FileSource::Bytes(efi.clone()),
            ),
            (
                "loader/loader.conf".to_owned(),
                FileSource::Bytes(loader.clone()),
            ),
            (
                "loader/entries/debian.conf".to_owned(),
                FileSource::Bytes(entry.clone()),
            ),
            ("vmlinuz".to_owned(), FileSource::Host(host)),
            ("empty".to_owned(), FileSource::Bytes(Vec::new())),
        ];
        let expected = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_owned(), efi),
            ("loader/loader.conf".to_owned(), loader),
            ("loader/entries/debian.conf".to_owned(), entry),
            ("vmlinuz".to_owned(), kernel),
            ("empty".to_owned(), Vec::new()),
        ];
        Esp {
            dir,
            files,
            expected,
        }
    }

    fn build_esp(esp: &Esp, name: &str, files: &[(String, FileSource)], epoch: i64) -> PathBuf {
        let img = esp.dir.path().join(name);
        let summary = build(&img, 64 * MIB, "ESP", 0x1234_abcd, epoch, files).unwrap();
        assert_eq!(summary.files, files.len());
        assert_eq!(
            summary.bytes,
            esp.expected
                .iter()
                .map(|(_, b)| b.len() as u64)
                .sum::<u64>()
        );
        img
    }

    #[test]
    fn esp_passes_fsck_and_mtools_reads_it_back() {
        let esp = esp_inputs();
        let img = build_esp(&esp, "esp.img", &esp.files, EPOCH);
        let img_s = img.to_str().unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), 64 * MIB);

        let fsck = run("fsck.fat", &["-n", img_s]);
        let out = text(&fsck);
        assert!(fsck.status.success(), "fsck.fat -n failed:\n{out}");
        // A clean run prints the version line and the summary line, nothing else.
        for word in [
            "warning",
            "Warning",
            "differ",
            "Wrong",
            "Free cluster",
            "Correct",
            "Dirty",
        ] {
            assert!(!out.contains(word), "fsck.fat -n said {word:?}:\n{out}");
        }
        assert_eq!(out.lines().count(), 2, "unexpected fsck.fat output:\n{out}");

        // fsck.fat 4.2 -v prints the geometry but neither the volume id nor the label, so those
        // are read with fatlabel (dosfstools) and mdir, and from the boot sector itself.
        let verbose = run("fsck.fat", &["-v", "-n", img_s]);
        let v = text(&verbose);
        assert!(verbose.status.success(), "{v}");
        assert!(v.contains("32 bit entries"), "not FAT32:\n{v}");
        assert!(v.contains("512 bytes per logical sector"), "{v}");
        let id = run("fatlabel", &["-i", img_s]);
        assert_eq!(
            String::from_utf8_lossy(&id.stdout).trim(),
            "1234abcd",
            "{}",
            text(&id)
        );
        let label = run("fatlabel", &[img_s]);
        assert_eq!(
            String::from_utf8_lossy(&label.stdout).trim(),
            "ESP",
            "{}",
            text(&label)
        );
        let boot = fs::read(&img).unwrap();
        // FAT32 BPB: BS_VolID at 67, BS_VolLab at 71, BS_FilSysType at 82.
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
        // mdir ends each line with the long name.
        for (inside, want) in &esp.expected {
            let name = inside.rsplit('/').next().unwrap_or(inside);
            let line = listing.lines().find(|l| l.ends_with(&format!("  {name}")));
            let line = line.unwrap_or_else(|| panic!("{inside} missing:\n{listing}"));
            assert!(line.contains(&format!(" {} ", want.len())), "{line}");
        }
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
        let conf = run("mtype", &["-i", img_s, "::loader/loader.conf"]);
        assert_eq!(
            String::from_utf8_lossy(&conf.stdout),
            "default debian.conf\ntimeout 0\n"
        );

        // Timestamps as mtools shows them: 13:37:43 is rounded down to 13:37:42.
        let mdir = text(&run("mdir", &["-i", img_s, "::loader"]));
        assert!(mdir.contains("2024-02-29  13:37"), "{mdir}");
    }

    /// Every short entry in every directory carries the epoch's date and time, and no
    /// directory has a long-name slot before `.` or `..`.
    #[test]
    fn every_entry_is_stamped_and_dot_entries_are_clean() {
        let esp = esp_inputs();
        let img = build_esp(&esp, "esp.img", &esp.files, EPOCH);
        let file = fs::File::open(&img).unwrap();
        let mut boot = [0u8; BOOT_SECTOR];
        file.read_exact_at(&mut boot, 0).unwrap();
        let geo = codec::geometry(&boot).unwrap();
        let Root::Cluster(root) = geo.root else {
            panic!("not FAT32: {geo:?}")
        };
        let (date, time) = fat_stamp(fat_date_time(EPOCH));
        let mut expect = [0u8; DIR_ENTRY];
        codec::set_timestamps(&mut expect, date, time);
        let mut todo = vec![(root, true)];
        let (mut dirs, mut shorts) = (0, 0);
        while let Some((dir, is_root)) = todo.pop() {
            dirs += 1;
            let mut bytes = Vec::new();
            for c in directory_chain(&img, &file, &geo, dir).unwrap() {
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
            if !is_root {
                assert_eq!(&entries[0][..11], b".          ");
                assert_eq!(&entries[1][..11], b"..         ");
                assert_eq!(codec::entry_cluster(entries[0], codec::FatType::Fat32), dir);
            }
            for e in entries {
                if e[11] == codec::ATTR_LONG_NAME {
                    continue;
                }
                shorts += 1;
                assert_eq!(e[13..20], expect[13..20], "{:?}", &e[..11]);
                assert_eq!(e[22..26], expect[22..26], "{:?}", &e[..11]);
                if e[11] & codec::ATTR_DIRECTORY != 0 && e[0] != b'.' {
                    todo.push((codec::entry_cluster(e, codec::FatType::Fat32), false));
                }
            }
        }
        // root, EFI, EFI/BOOT, loader, loader/entries
        assert_eq!(dirs, 5);
        // label + 5 files + 4 directories named in parents + 4 × (. and ..)
        assert_eq!(shorts, 1 + 5 + 4 + 8);
    }

    /// fatfs alone writes an image fsck.fat rejects; `fix_directories` is what makes it pass.
    /// If a fatfs upgrade stops needing the fix, this test says so.
    #[test]
    fn fatfs_alone_fails_fsck_and_the_fix_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("raw.img");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&img)
            .unwrap();
        file.set_len(64 * MIB).unwrap();
        let opts = FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .volume_label(*b"ESP        ");
        fatfs::format_volume(&file, opts).unwrap();
        let stamp = fat_date_time(EPOCH);
        {
            let fs = FileSystem::new(&file, FsOptions::new().time_provider(clock(stamp))).unwrap();
            fs.root_dir().create_dir("EFI/").unwrap();
            fs.root_dir().create_dir("EFI/BOOT").unwrap();
            let mut f = fs.root_dir().create_file("EFI/BOOT/BOOTX64.EFI").unwrap();
            f.write_all(b"MZ").unwrap();
            drop(f);
            fs.stats().unwrap();
            fs.unmount().unwrap();
        }
        let before = run("fsck.fat", &["-n", img.to_str().unwrap()]);
        let said = text(&before);
        assert!(
            !before.status.success(),
            "fatfs output now passes fsck.fat:\n{said}"
        );
        assert!(said.contains("Expected a valid '.' entry"), "{said}");
        fix_directories(&img, &file, stamp).unwrap();
        let after = run("fsck.fat", &["-n", img.to_str().unwrap()]);
        assert!(after.status.success(), "{}", text(&after));
        assert_eq!(text(&after).lines().count(), 2, "{}", text(&after));
    }

    #[test]
    fn builds_are_reproducible_and_follow_the_epoch() {
        let esp = esp_inputs();
        let a = build_esp(&esp, "a.img", &esp.files, EPOCH);
        let mut shuffled = esp.files.clone();
        shuffled.reverse();
        shuffled.swap(0, 2);
        let b = build_esp(&esp, "b.img", &shuffled, EPOCH);
        assert!(
            fs::read(&a).unwrap() == fs::read(&b).unwrap(),
            "input order changed the bytes"
        );

        // Same 2-second slot: same bytes.
        let c = build_esp(&esp, "c.img", &esp.files, EPOCH - 1);
        assert!(fs::read(&a).unwrap() == fs::read(&c).unwrap());

        let d = build_esp(&esp, "d.img", &esp.files, EPOCH + 86_400);
        assert!(
            fs::read(&a).unwrap() != fs::read(&d).unwrap(),
            "epoch ignored"
        );
        let fsck = run("fsck.fat", &["-n", d.to_str().unwrap()]);
        assert!(fsck.status.success(), "{}", text(&fsck));

        // Rebuilding over an existing image gives the same bytes too.
        let again = build_esp(&esp, "a.img", &esp.files, EPOCH);
        assert!(fs::read(&again).unwrap() == fs::read(&b).unwrap());
    }

    #[test]
    fn epochs_map_to_fat_dates() {
        let dt = |e| {
            let d = fat_date_time(e);
            (
                d.date.year,
                d.date.month,
                d.date.day,
                d.time.hour,
                d.time.min,
                d.time.sec,
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
    fn smallest_fat32_size_is_accepted_and_one_sector_less_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("min.img");
        let files = [("a.txt".to_owned(), FileSource::Bytes(b"a".to_vec()))];
        build(&img, MIN_SIZE, "MIN", 1, EPOCH, &files).unwrap();
        let fsck = run("fsck.fat", &["-n", img.to_str().unwrap()]);
        assert!(fsck.status.success(), "{}", text(&fsck));
        let err = build(&img, MIN_SIZE - 512, "MIN", 1, EPOCH, &files).unwrap_err();
        assert!(matches!(err, Error::Size { .. }), "{err}");
        // fatfs itself refuses FAT32 there: the constant is not stricter than needed.
        let probe = dir.path().join("probe.img");
        let f = fs::File::create(&probe).unwrap();
        f.set_len(MIN_SIZE - 512).unwrap();
        let opts = FormatVolumeOptions::new().fat_type(FatType::Fat32);
        let fat32 = fatfs::format_volume(&f, opts).is_ok()
            && FileSystem::new(&f, FsOptions::new()).unwrap().fat_type() == FatType::Fat32;
        assert!(!fat32);
    }

    #[test]
    fn errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("bad.img");
        let one = |p: &str| vec![(p.to_owned(), FileSource::Bytes(vec![1]))];
        let msg = |r: Result<FatSummary, Error>| r.unwrap_err().to_string();

        let m = msg(build(&img, 16 * MIB, "ESP", 1, EPOCH, &one("a")));
        assert!(m.contains("too small for FAT32"), "{m}");
        let m = msg(build(&img, 64 * MIB + 1, "ESP", 1, EPOCH, &one("a")));
        assert!(m.contains("multiple of 512"), "{m}");
        assert!(!img.exists(), "checks must come before creating the image");

        for label in ["", "TWELVE CHARS", "a.b", " LEAD", "é"] {
            let r = build(&img, 64 * MIB, label, 1, EPOCH, &one("a"));
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
            let m = msg(build(&img, 64 * MIB, "ESP", 1, EPOCH, &one(path)));
            assert!(m.starts_with(&format!("{path:?}: ")), "{m}");
            assert!(m.contains(why), "{path:?}: {m}");
        }

        let dup = vec![
            ("EFI/BOOT/x".to_owned(), FileSource::Bytes(vec![1])),
            ("efi/boot/X".to_owned(), FileSource::Bytes(vec![2])),
        ];
        let m = msg(build(&img, 64 * MIB, "ESP", 1, EPOCH, &dup));
        assert!(m.contains("given twice"), "{m}");
        let clash = vec![
            ("EFI".to_owned(), FileSource::Bytes(vec![1])),
            ("EFI/BOOT/x".to_owned(), FileSource::Bytes(vec![2])),
        ];
        let m = msg(build(&img, 64 * MIB, "ESP", 1, EPOCH, &clash));
        assert!(m.contains("\"EFI\": is a file, but \"EFI/BOOT/x\""), "{m}");

        let missing = vec![("k".to_owned(), FileSource::Host(dir.path().join("nope")))];
        let m = msg(build(&img, 64 * MIB, "ESP", 1, EPOCH, &missing));
        assert!(m.contains("nope") && m.contains("\"k\""), "{m}");
        let not_file = vec![("k".to_owned(), FileSource::Host(dir.path().to_owned()))];
        let m = msg(build(&img, 64 * MIB, "ESP", 1, EPOCH, &not_file));
        assert!(m.contains("not a regular file"), "{m}");
        assert!(!img.exists());

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
        let err = build(&img, 40 * MIB, "ESP", 1, EPOCH, &big).unwrap_err();
        let m = err.to_string();
        assert!(matches!(err, Error::NoSpace { .. }), "{m}");
        assert!(
            m.starts_with("\"b/second.bin\": needs 20971520 bytes"),
            "{m}"
        );
        assert!(!img.exists(), "a failed build must not leave an image");
    }
}
