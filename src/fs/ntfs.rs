//! NTFS file systems, read-only, with the `ntfs` crate (vendored and patched: vendor/ntfs).
//!
//! The file system lives in a window of a [`Disk`]: a bare file system image is the window
//! `0..size`, a partition of a disk is the partition's byte range. Every read is checked against
//! the window, so a corrupt file system that points outside it gives an error, never a read of
//! the neighbouring partition or a panic.
//!
//! The crate parses the boot sector, MFT records, attributes, run lists and the `$I30` B-trees;
//! mkomi adds what it lacks and what a hostile image needs (the research behind this is
//! /work/notes/issue17-ntfs.md, "G1"–"G7" below):
//!
//! - **G1**: the boot sector is checked here before the crate sees it, and the volume must fit
//!   the window (the crate never compares the two).
//! - **G2**: every public call has a read budget, counted by the reader under the crate, so a
//!   loop in the structures that the crate does not catch ends as an error, not a hang.
//! - **G3**: a listing's names must come out of the B-tree in `$UpCase` order, which stops a
//!   cyclic B-tree at its first repeat.
//! - **G4**: index record sizes are checked (in the crate, patch 3).
//! - **G5**: a file's `$DATA` flags and reparse tag are checked before it is read: encrypted
//!   (EFS) and WOF-compressed files are refused rather than read as garbage.
//! - **G6**: LZNT1-compressed files are decompressed here, one compression unit at a time, every
//!   back-reference checked.
//! - **G7**: sizes are compared with the caller's limits before anything is allocated; reparse
//!   data is at most 16 KiB, symlink targets 4096 bytes, and at most 40 links are followed.
//!
//! Paths are looked up without regard to case through the volume's `$UpCase` table, as Windows
//! does. Listings leave out the 8.3 (DOS) twins of long names, `.`, and the metadata files
//! (`$MFT`…`$Extend`) of the root. Only the unnamed data stream is read (alternate data streams
//! are ignored). Windows symlinks and junctions to `C:\…` are followed inside the volume, as are
//! the Interix symlinks that ntfs-3g writes.

use super::{Entry, Kind, Meta};
use crate::format::Disk;
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{
    NtfsAttributeFlags, NtfsAttributeType, NtfsError, NtfsFile, NtfsReadSeek, UpcaseOrd,
    attribute_value::NtfsAttributeValue,
};
use std::cell::RefCell;
use std::cmp::Ordering;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Unix permissions reported for directories and files, NTFS's ACLs having no such bits.
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// The boot sector's size, and the least a window must hold.
const BOOT_SECTOR: usize = 512;
/// The root directory's MFT record number.
const ROOT_RECORD: u64 = 5;
/// Records below this are NTFS's own metadata files (`$MFT`…`$Extend` and reserved ones),
/// which Windows does not list in the root.
const FIRST_USER_RECORD: u64 = 16;

/// The reader under the crate reads and caches blocks of this many bytes…
const CACHE_BLOCK: u64 = 4096;
/// …this many of them (the crate re-reads MFT record 0 for every file it opens).
const CACHE_BLOCKS: usize = 64;
/// Bytes the crate may read for one public call, beyond what the caller asked for: far more than
/// a lookup, a listing of a very large directory or the `$UpCase` table needs.
const READ_BUDGET: u64 = 256 << 20;
/// Read calls the crate may make for one public call.
const CALL_BUDGET: u64 = 2_000_000;

/// Most symlinks followed in one lookup, as Linux (`ELOOP`).
const MAX_SYMLINKS: usize = 40;
/// Longest symlink target, in bytes of UTF-8 (`PATH_MAX`).
const MAX_LINK_TARGET: usize = 4096;
/// Largest reparse point (`MAXIMUM_REPARSE_DATA_BUFFER_SIZE`).
const MAX_REPARSE: u64 = 16 * 1024;
/// Most path components walked in one lookup, symlink targets included.
const MAX_COMPONENTS: usize = 4096;

/// Reparse tags (`IO_REPARSE_TAG_*`, winnt.h).
const TAG_MOUNT_POINT: u32 = 0xA000_0003;
const TAG_SYMLINK: u32 = 0xA000_000C;
const TAG_DEDUP: u32 = 0x8000_0013;
const TAG_WOF: u32 = 0x8000_0017;
/// `SYMLINK_FLAG_RELATIVE` of a symlink's reparse data.
const SYMLINK_RELATIVE: u32 = 1;
/// What starts the data of an Interix symlink, as ntfs-3g writes them.
const INTERIX_LINK: &[u8; 8] = b"IntxLNK\x01";
/// What starts the data of Interix character and block devices.
const INTERIX_DEVICES: [&[u8; 8]; 2] = [b"IntxCHR\0", b"IntxBLK\0"];

/// An LZNT1 chunk's decompressed size.
const LZNT1_CHUNK: usize = 4096;
/// Largest compression unit: 16 clusters of 4 KiB (Windows compresses no larger clusters).
const MAX_COMPRESSION_UNIT: u64 = 64 * 1024;
/// Offset of the compression unit's exponent in a non-resident attribute header.
const COMPRESSION_UNIT_OFFSET: u64 = 0x22;

/// An error about an NTFS file system inside an image; the message names the image and, when
/// there is one, the path inside the file system.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The window given to [`Ntfs::open`] does not fit the source.
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
    /// The boot sector is not a valid NTFS boot sector.
    #[error("{}: no valid NTFS file system at byte {offset}: {reason}", name.display())]
    NotNtfs {
        /// The image.
        name: PathBuf,
        /// Start of the window.
        offset: u64,
        /// Which field is wrong and its value, in one line.
        reason: String,
    },
    /// The boot sector describes a volume larger than its window.
    #[error(
        "{}: the NTFS file system at byte {offset} has {sectors} sectors of {sector_bytes} bytes, \
         more than its {len}-byte window",
        name.display()
    )]
    Truncated {
        /// The image.
        name: PathBuf,
        /// Start of the window.
        offset: u64,
        /// The boot sector's total sector count.
        sectors: u64,
        /// The boot sector's sector size.
        sector_bytes: u64,
        /// Length of the window.
        len: u64,
    },
    /// The file system's structures are inconsistent.
    #[error("{}{}: corrupt NTFS file system: {reason}", name.display(), at(path))]
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
        /// The source's error (boxed: it is large, and [`super::Error`] carries this enum).
        source: Box<crate::format::Error>,
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
    /// The file is stored in a way mkomi does not read (encrypted, WOF-compressed, …).
    #[error("{}: {path}: {reason}, not read", name.display())]
    Unsupported {
        /// The image.
        name: PathBuf,
        /// The path inside the file system.
        path: String,
        /// How the file is stored.
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

/// Why the reader under the crate failed; kept aside, since the crate only passes on an
/// `io::Error`.
enum Fault {
    /// The read budget of the call ran out.
    Budget,
    /// The source failed.
    Source(crate::format::Error),
}

/// `Read + Seek` over the bytes `offset..offset + len` of a source, for the crate: reads are
/// clipped to the window (its end reads as end of file), go through a small block cache, and
/// are counted against the budget of the current public call (G2).
struct Window {
    source: Arc<dyn Disk>,
    offset: u64,
    /// `offset + len <= source.size()`, checked when the window is made.
    len: u64,
    pos: u64,
    /// (block number, bytes), at most [`CACHE_BLOCKS`], replaced round robin.
    cache: Vec<(u64, Vec<u8>)>,
    next_slot: usize,
    /// Bytes and read calls still allowed in the current call.
    bytes_left: u64,
    calls_left: u64,
    /// Why the last failed read failed.
    fault: Option<Fault>,
}

impl Window {
    /// Starts a public call: a fresh budget of [`READ_BUDGET`] plus `extra` bytes.
    fn start_call(&mut self, extra: u64) {
        self.bytes_left = READ_BUDGET.saturating_add(extra);
        self.calls_left = CALL_BUDGET;
        self.fault = None;
    }

    fn fail(&mut self, fault: Fault) -> io::Error {
        let msg = match &fault {
            Fault::Budget => "read budget exhausted",
            Fault::Source(_) => "the image could not be read",
        };
        self.fault = Some(fault);
        io::Error::other(msg)
    }

    /// Counts a read of `n` bytes against the budget.
    fn charge(&mut self, n: u64) -> io::Result<()> {
        if self.calls_left == 0 || self.bytes_left < n {
            self.calls_left = 0;
            self.bytes_left = 0;
            return Err(self.fail(Fault::Budget));
        }
        self.calls_left -= 1;
        self.bytes_left -= n;
        Ok(())
    }

    /// Reads `buf.len()` bytes at `start` of the window, which the caller has checked are
    /// inside it, from the source.
    fn read_source(&mut self, start: u64, buf: &mut [u8]) -> io::Result<()> {
        // No overflow: start + len(buf) <= len and offset + len <= the source's size.
        match self.source.read_at(self.offset + start, buf) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(Fault::Source(e))),
        }
    }

    /// The cached block `block`, read if it is not cached.
    fn block(&mut self, block: u64) -> io::Result<&[u8]> {
        let slot = match self.cache.iter().position(|(b, _)| *b == block) {
            Some(slot) => slot,
            None => {
                let start = block * CACHE_BLOCK;
                let n = CACHE_BLOCK.min(self.len.saturating_sub(start));
                // <= CACHE_BLOCK.
                let mut data = vec![0u8; n as usize];
                self.read_source(start, &mut data)?;
                if self.cache.len() < CACHE_BLOCKS {
                    self.cache.push((block, data));
                    self.cache.len() - 1
                } else {
                    let slot = self.next_slot % CACHE_BLOCKS;
                    self.next_slot = (slot + 1) % CACHE_BLOCKS;
                    if let Some(s) = self.cache.get_mut(slot) {
                        *s = (block, data);
                    }
                    slot
                }
            }
        };
        Ok(self.cache.get(slot).map_or(&[][..], |(_, d)| d.as_slice()))
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let n = (self.len - self.pos).min(buf.len() as u64);
        self.charge(n)?;
        // <= buf.len().
        let n = n as usize;
        let out = &mut buf[..n];
        if n as u64 >= CACHE_BLOCK {
            // File data: read straight into the caller's buffer, not through the cache.
            self.read_source(self.pos, out)?;
        } else {
            let mut done = 0;
            while done < n {
                let at = self.pos + done as u64;
                let block = at / CACHE_BLOCK;
                // < CACHE_BLOCK.
                let within = (at % CACHE_BLOCK) as usize;
                let data = self.block(block)?;
                let avail = data.get(within..).unwrap_or_default();
                if avail.is_empty() {
                    break;
                }
                let take = avail.len().min(n - done);
                out[done..done + take].copy_from_slice(&avail[..take]);
                done += take;
            }
            if done < n {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
}

/// What a path names, once found.
#[derive(Debug, Clone)]
struct Found {
    /// Its MFT record number.
    record: u64,
    /// What it is.
    kind: Kind,
    /// Its target, if it is a symlink.
    link: Option<Link>,
}

/// A symlink's target.
#[derive(Debug, Clone)]
struct Link {
    /// The target as a path of this file system (`/`-separated, relative or absolute), when it
    /// is one.
    target: Option<String>,
    /// The target as stored, for messages and `read_link` when it leaves the volume.
    stored: String,
}

/// The boot sector's fields that G1 checks.
#[derive(Debug)]
struct Boot {
    sector_bytes: u64,
    sectors: u64,
}

/// Reads the boot sector's geometry and checks it (G1); `Err` is the reason, in one line.
fn check_boot(b: &[u8; BOOT_SECTOR]) -> Result<Boot, String> {
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    if &b[3..11] != b"NTFS    " {
        return Err(format!(
            "OEM id {:?}, not \"NTFS    \"",
            String::from_utf8_lossy(&b[3..11])
        ));
    }
    if b[510..512] != [0x55, 0xaa] {
        return Err("no 55 AA boot signature".to_owned());
    }
    let sector_bytes = u64::from(u16_at(0x0b));
    if !(256..=4096).contains(&sector_bytes) || !sector_bytes.is_power_of_two() {
        return Err(format!("{sector_bytes} bytes per sector"));
    }
    let spc = b[0x0d];
    let cluster = match spc {
        1..=0x80 if spc.is_power_of_two() => sector_bytes * u64::from(spc),
        // A negative shift (-12 = 4096 sectors), used for clusters of 128 KiB and more.
        0xf4..=0xff => sector_bytes << (256 - u32::from(spc)),
        _ => return Err(format!("sectors per cluster byte {spc:#04x}")),
    };
    if cluster > 2 << 20 {
        return Err(format!("{cluster}-byte clusters"));
    }
    let sectors = u64_at(0x28);
    let volume = sectors
        .checked_mul(sector_bytes)
        .ok_or_else(|| format!("{sectors} sectors"))?;
    for (what, offset) in [("MFT", 0x30), ("MFT mirror", 0x38)] {
        let lcn = u64_at(offset);
        if lcn.checked_mul(cluster).is_none_or(|start| start >= volume) {
            return Err(format!("the {what} at cluster {lcn}, outside the volume"));
        }
    }
    // Record sizes: a positive count of clusters or a negative power of two in bytes.
    let record_size = |byte: u8| -> u64 {
        let signed = byte as i8;
        if signed > 0 {
            cluster * u64::from(byte)
        } else {
            1u64.checked_shl(u32::from(signed.unsigned_abs()))
                .unwrap_or(0)
        }
    };
    let file_record = record_size(b[0x40]);
    if !(256..=4096).contains(&file_record) || !file_record.is_power_of_two() {
        return Err(format!("{file_record}-byte file records"));
    }
    let index_record = record_size(b[0x44]);
    if !(512..=65536).contains(&index_record) || !index_record.is_power_of_two() {
        return Err(format!("{index_record}-byte index records"));
    }
    Ok(Boot {
        sector_bytes,
        sectors,
    })
}

/// An NTFS file system opened read-only inside an image.
///
/// The reader sits in a `RefCell` since [`super::FileSystem`]'s methods take `&self`; an `Ntfs`
/// is therefore not `Sync`.
pub struct Ntfs {
    name: PathBuf,
    offset: u64,
    ntfs: ntfs::Ntfs,
    io: RefCell<Window>,
    /// The last path resolved (and whether its last symlink was followed) and what it named, so
    /// that reading a file piece by piece resolves its path once.
    last_lookup: RefCell<Option<(String, bool, Found)>>,
}

impl fmt::Debug for Ntfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ntfs")
            .field("name", &self.name)
            .field("offset", &self.offset)
            .field("size", &self.ntfs.size())
            .finish_non_exhaustive()
    }
}

impl Ntfs {
    /// Opens the NTFS file system at bytes `offset..offset + len` of `source`; `name` stands for
    /// the image in messages.
    ///
    /// Reads and checks the boot sector, and reads the `$UpCase` table (128 KiB) that
    /// case-insensitive lookups need; directories and data are read when asked for.
    pub fn open(source: Arc<dyn Disk>, offset: u64, len: u64, name: &Path) -> Result<Ntfs, Error> {
        let size = source.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange {
                name: name.to_owned(),
                offset,
                len,
                size,
            });
        }
        let not_ntfs = |reason: String| Error::NotNtfs {
            name: name.to_owned(),
            offset,
            reason,
        };
        if len < BOOT_SECTOR as u64 {
            return Err(not_ntfs(format!("{len} bytes cannot hold a boot sector")));
        }
        let mut boot = [0u8; BOOT_SECTOR];
        source
            .read_at(offset, &mut boot)
            .map_err(|source| Error::Read {
                name: name.to_owned(),
                path: None,
                source: Box::new(source),
            })?;
        let geo = check_boot(&boot).map_err(not_ntfs)?;
        // Every structure the crate reads lies in the volume; with the volume inside the window,
        // the crate's reads stay in the partition.
        if geo
            .sectors
            .checked_mul(geo.sector_bytes)
            .is_none_or(|bytes| bytes > len)
        {
            return Err(Error::Truncated {
                name: name.to_owned(),
                offset,
                sectors: geo.sectors,
                sector_bytes: geo.sector_bytes,
                len,
            });
        }
        let mut window = Window {
            source,
            offset,
            len,
            pos: 0,
            cache: Vec::new(),
            next_slot: 0,
            bytes_left: 0,
            calls_left: 0,
            fault: None,
        };
        window.start_call(0);
        let mut fs = match ntfs::Ntfs::new(&mut window) {
            Ok(fs) => fs,
            Err(e) => {
                return Err(convert(name, None, &mut window, e, |reason| {
                    Error::NotNtfs {
                        name: name.to_owned(),
                        offset,
                        reason,
                    }
                }));
            }
        };
        if let Err(e) = fs.read_upcase_table(&mut window) {
            return Err(convert(name, None, &mut window, e, |reason| {
                Error::Corrupt {
                    name: name.to_owned(),
                    path: None,
                    reason: format!("the $UpCase table: {reason}"),
                }
            }));
        }
        Ok(Ntfs {
            name: name.to_owned(),
            offset,
            ntfs: fs,
            io: RefCell::new(window),
            last_lookup: RefCell::new(None),
        })
    }

    /// The name that stands for the image in messages.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// The volume's label (`$Volume`'s `$VOLUME_NAME`), `None` when it has none.
    pub fn label(&self) -> Option<String> {
        let mut io = self.io.borrow_mut();
        io.start_call(0);
        let name = self.ntfs.volume_name(&mut *io)?.ok()?;
        let label = name.name().to_string_lossy();
        (!label.is_empty()).then_some(label)
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

    fn unsupported(&self, path: &str, reason: &str) -> Error {
        Error::Unsupported {
            name: self.name.clone(),
            path: path.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// The crate's error `e`, met while reading `path`.
    fn err(&self, io: &mut Window, path: &str, e: NtfsError) -> Error {
        convert(&self.name, Some(path), io, e, |reason| {
            self.corrupt(Some(path), reason)
        })
    }

    /// MFT record `record`.
    fn file<'n>(&'n self, io: &mut Window, path: &str, record: u64) -> Result<NtfsFile<'n>, Error> {
        self.ntfs
            .file(io, record)
            .map_err(|e| self.err(io, path, e))
    }

    /// Finds `name` in the directory `dir`: its MFT record number.
    fn find(&self, io: &mut Window, path: &str, dir: u64, name: &str) -> Result<u64, Error> {
        let file = self.file(io, path, dir)?;
        let index = file
            .directory_index(io)
            .map_err(|e| self.err(io, path, e))?;
        let mut finder = index.finder();
        match NtfsFileNameIndex::find(&mut finder, &self.ntfs, io, name) {
            None => Err(Error::NotFound {
                name: self.name.clone(),
                path: path.to_owned(),
            }),
            Some(Err(e)) => Err(self.err(io, path, e)),
            Some(Ok(entry)) => Ok(entry.file_reference().file_record_number()),
        }
    }

    /// The standard attributes (`$STANDARD_INFORMATION`'s `FILE_ATTRIBUTE_*`) of `file`.
    fn attributes(
        &self,
        io: &mut Window,
        path: &str,
        file: &NtfsFile<'_>,
    ) -> Result<NtfsFileAttributeFlags, Error> {
        let info = file.info().map_err(|e| self.err(io, path, e))?;
        Ok(info.file_attributes())
    }

    /// The reparse point of `file`, if it has one: its tag and data (at most [`MAX_REPARSE`]
    /// bytes).
    fn reparse(
        &self,
        io: &mut Window,
        path: &str,
        file: &NtfsFile<'_>,
    ) -> Result<Option<(u32, Vec<u8>)>, Error> {
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(io) {
            let item = item.map_err(|e| self.err(io, path, e))?;
            let attr = item.to_attribute().map_err(|e| self.err(io, path, e))?;
            // An attribute type the crate does not know is none of ours.
            if attr.ty().ok() != Some(NtfsAttributeType::ReparsePoint) {
                continue;
            }
            let len = attr.value_length();
            if len > MAX_REPARSE {
                return Err(self.corrupt(
                    Some(path),
                    format!("a reparse point of {len} bytes, more than {MAX_REPARSE}"),
                ));
            }
            if len < 8 {
                return Err(self.corrupt(Some(path), format!("a reparse point of {len} bytes")));
            }
            let mut value = attr.value(io).map_err(|e| self.err(io, path, e))?;
            // <= MAX_REPARSE.
            let mut data = vec![0u8; len as usize];
            value
                .read_exact(io, &mut data)
                .map_err(|e| self.err(io, path, e))?;
            let tag = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            return Ok(Some((tag, data)));
        }
        Ok(None)
    }

    /// What `file` (named by `path`) is, and its target if it is a symlink.
    fn classify(&self, io: &mut Window, path: &str, file: &NtfsFile<'_>) -> Result<Found, Error> {
        let record = file.file_record_number();
        let plain = |kind| Found {
            record,
            kind,
            link: None,
        };
        let dir = file.is_directory();
        let attrs = self.attributes(io, path, file)?;
        if attrs.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
            if let Some((tag, data)) = self.reparse(io, path, file)?
                && (tag == TAG_SYMLINK || tag == TAG_MOUNT_POINT)
            {
                let link = parse_reparse_link(tag, &data)
                    .map_err(|reason| self.corrupt(Some(path), reason))?;
                return Ok(Found {
                    record,
                    kind: Kind::Symlink,
                    link: Some(link),
                });
            }
        } else if !dir && attrs.contains(NtfsFileAttributeFlags::SYSTEM) {
            // ntfs-3g's Interix special files: SYSTEM files whose data starts with a magic.
            if let Some(head) = self.interix(io, path, file)? {
                if head.starts_with(INTERIX_LINK) {
                    let link = parse_interix_link(&head)
                        .map_err(|reason| self.corrupt(Some(path), reason))?;
                    return Ok(Found {
                        record,
                        kind: Kind::Symlink,
                        link: Some(link),
                    });
                }
                if INTERIX_DEVICES.iter().any(|m| head.starts_with(*m)) {
                    return Ok(plain(Kind::Other));
                }
            }
        }
        Ok(plain(if dir { Kind::Dir } else { Kind::File }))
    }

    /// The data of `file` if it may be an Interix special file: at most the magic and a
    /// [`MAX_LINK_TARGET`]-unit UTF-16 target, not compressed or encrypted.
    fn interix(
        &self,
        io: &mut Window,
        path: &str,
        file: &NtfsFile<'_>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let Some(item) = file.data(io, "") else {
            return Ok(None);
        };
        let item = item.map_err(|e| self.err(io, path, e))?;
        let attr = item.to_attribute().map_err(|e| self.err(io, path, e))?;
        let len = attr.value_length();
        if !(8..=8 + 2 * MAX_LINK_TARGET as u64).contains(&len)
            || attr
                .flags()
                .intersects(NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED)
        {
            return Ok(None);
        }
        let mut value = attr.value(io).map_err(|e| self.err(io, path, e))?;
        // <= 8 + 2 * MAX_LINK_TARGET.
        let mut data = vec![0u8; len as usize];
        value
            .read_exact(io, &mut data)
            .map_err(|e| self.err(io, path, e))?;
        Ok(Some(data))
    }

    /// Finds what `path` names: each component looked up in its directory without regard to
    /// case, symlinks on the way followed (at most [`MAX_SYMLINKS`]), the last one too when
    /// `follow_last` is set.
    fn lookup(&self, io: &mut Window, path: &str, follow_last: bool) -> Result<Found, Error> {
        if let Some((p, f, found)) = self.last_lookup.borrow().as_ref()
            && p == path
            && *f == follow_last
        {
            return Ok(found.clone());
        }
        let found = self.resolve(io, path, follow_last)?;
        *self.last_lookup.borrow_mut() = Some((path.to_owned(), follow_last, found.clone()));
        Ok(found)
    }

    /// [`Ntfs::lookup`]'s work.
    fn resolve(&self, io: &mut Window, path: &str, follow_last: bool) -> Result<Found, Error> {
        if !path.starts_with('/') {
            return Err(self.invalid(path, "not an absolute path"));
        }
        // The components still to walk, the next one last.
        let mut todo: Vec<String> = components(path);
        // The directories from the root to where the walk is, and what was reached last.
        let root = Found {
            record: ROOT_RECORD,
            kind: Kind::Dir,
            link: None,
        };
        let mut stack = vec![root];
        let mut links = 0;
        let mut walked = 0;
        while let Some(name) = todo.pop() {
            walked += 1;
            if walked > MAX_COMPONENTS {
                return Err(self.invalid(path, "too many path components"));
            }
            let here = stack.last().map_or(ROOT_RECORD, |f| f.record);
            if stack.last().is_some_and(|f| f.kind != Kind::Dir) {
                return Err(self.invalid(path, "a component of the path is not a directory"));
            }
            match name.as_str() {
                "." => continue,
                ".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let record = self.find(io, path, here, &name)?;
            let file = self.file(io, path, record)?;
            let found = self.classify(io, path, &file)?;
            let Some(link) = found
                .link
                .as_ref()
                .filter(|_| !todo.is_empty() || follow_last)
            else {
                stack.push(found);
                continue;
            };
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(self.invalid(path, "too many levels of symbolic links"));
            }
            let Some(target) = &link.target else {
                return Err(self.invalid(
                    path,
                    &format!("a symlink to {}, outside this volume", link.stored),
                ));
            };
            if target.starts_with('/') {
                stack.truncate(1);
            }
            todo.extend(components(target));
        }
        // Never empty: it starts with the root and `..` keeps it.
        stack.pop().ok_or_else(|| self.invalid(path, "empty path"))
    }

    /// The entries of the directory `dir` (named `path`), at most `max` (G3 checks their order).
    fn list(&self, io: &mut Window, path: &str, dir: u64, max: usize) -> Result<Vec<Entry>, Error> {
        let file = self.file(io, path, dir)?;
        let index = file
            .directory_index(io)
            .map_err(|e| self.err(io, path, e))?;
        let mut entries = index.entries();
        // Every name comes with at most its DOS twin; the root adds its metadata files and `.`.
        let raw_max = max.saturating_mul(2).saturating_add(64);
        let mut raw = 0usize;
        let mut prev: Option<ntfs::structured_values::NtfsFileName> = None;
        let mut out: Vec<(Entry, u64, NtfsFileAttributeFlags)> = Vec::new();
        while let Some(entry) = entries.next(io) {
            let entry = entry.map_err(|e| self.err(io, path, e))?;
            raw += 1;
            if raw > raw_max {
                return Err(self.too_many(path, max));
            }
            let Some(key) = entry.key() else { continue };
            let key = key.map_err(|e| self.err(io, path, e))?;
            let record = entry.file_reference().file_record_number();
            if let Some(p) = &prev {
                // `$I30` is sorted by upper-cased name; names equal that way (POSIX names that
                // differ in case) are fine, the same name twice is a loop.
                let order = p.name().upcase_cmp(&self.ntfs, &key.name());
                if order == Ordering::Greater
                    || (order == Ordering::Equal && p.name() == key.name())
                {
                    return Err(self.corrupt(
                        Some(path),
                        "the directory index is out of order or loops".to_owned(),
                    ));
                }
            }
            let skip = key.namespace() == NtfsFileNamespace::Dos
                || (dir == ROOT_RECORD && record < FIRST_USER_RECORD)
                || key.name() == ".";
            if !skip {
                if out.len() >= max {
                    return Err(self.too_many(path, max));
                }
                let flags = key.file_attributes();
                let kind = if key.is_directory() {
                    Kind::Dir
                } else {
                    Kind::File
                };
                let name = key.name().to_string_lossy();
                out.push((Entry { name, kind }, record, flags));
            }
            prev = Some(key);
        }
        // Reparse points and SYSTEM files may be symlinks: their records say.
        let mut entries = Vec::with_capacity(out.len());
        for (mut e, record, flags) in out {
            if flags.contains(NtfsFileAttributeFlags::REPARSE_POINT)
                || (e.kind == Kind::File && flags.contains(NtfsFileAttributeFlags::SYSTEM))
            {
                let child = format!("{}/{}", path.trim_end_matches('/'), e.name);
                let file = self.file(io, &child, record)?;
                e.kind = self.classify(io, &child, &file)?.kind;
            }
            entries.push(e);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn too_many(&self, path: &str, max: usize) -> Error {
        self.invalid(path, &format!("a directory of more than {max} entries"))
    }

    /// The metadata of what `found` names.
    fn meta(&self, io: &mut Window, path: &str, found: &Found) -> Result<Meta, Error> {
        let (len, mode) = match found.kind {
            Kind::Symlink => (
                found
                    .link
                    .as_ref()
                    .map_or(0, |l| l.target.as_ref().unwrap_or(&l.stored).len() as u64),
                FILE_MODE,
            ),
            Kind::Dir => (self.dir_len(io, path, found.record)?, DIR_MODE),
            Kind::File | Kind::Other => {
                let file = self.file(io, path, found.record)?;
                let len = match file.data(io, "") {
                    None => 0,
                    Some(item) => {
                        let item = item.map_err(|e| self.err(io, path, e))?;
                        let attr = item.to_attribute().map_err(|e| self.err(io, path, e))?;
                        attr.value_length()
                    }
                };
                (len, FILE_MODE)
            }
        };
        Ok(Meta {
            kind: found.kind,
            len,
            mode,
            uid: 0,
        })
    }

    /// A directory's storage: its `$I30` index allocation, else its index root.
    fn dir_len(&self, io: &mut Window, path: &str, record: u64) -> Result<u64, Error> {
        let file = self.file(io, path, record)?;
        let mut attrs = file.attributes();
        let (mut root, mut alloc) = (0, None);
        while let Some(item) = attrs.next(io) {
            let item = item.map_err(|e| self.err(io, path, e))?;
            let attr = item.to_attribute().map_err(|e| self.err(io, path, e))?;
            let is_i30 = attr.name().is_ok_and(|n| n == "$I30");
            match attr.ty().ok() {
                Some(NtfsAttributeType::IndexRoot) if is_i30 => root = attr.value_length(),
                Some(NtfsAttributeType::IndexAllocation) if is_i30 => {
                    alloc = Some(attr.value_length());
                }
                _ => {}
            }
        }
        Ok(alloc.unwrap_or(root))
    }

    /// The regular file at `path` (symlinks followed), ready to read.
    fn open_data<'n>(&'n self, io: &mut Window, path: &str) -> Result<(NtfsFile<'n>, u64), Error> {
        let found = self.lookup(io, path, true)?;
        match found.kind {
            Kind::File => {}
            Kind::Dir => return Err(self.invalid(path, "is a directory, not a regular file")),
            _ => return Err(self.invalid(path, "not a regular file")),
        }
        let file = self.file(io, path, found.record)?;
        let attrs = self.attributes(io, path, &file)?;
        if attrs.contains(NtfsFileAttributeFlags::REPARSE_POINT)
            && let Some((tag, _)) = self.reparse(io, path, &file)?
        {
            match tag {
                TAG_WOF => return Err(self.unsupported(path, "compressed by Windows (WOF)")),
                TAG_DEDUP => return Err(self.unsupported(path, "deduplicated by Windows")),
                // Other reparse points (cloud files, …) keep their data in $DATA, if anywhere.
                _ => {}
            }
        }
        let len = match file.data(io, "") {
            None => 0,
            Some(item) => {
                let item = item.map_err(|e| self.err(io, path, e))?;
                let attr = item.to_attribute().map_err(|e| self.err(io, path, e))?;
                if attr.flags().contains(NtfsAttributeFlags::ENCRYPTED)
                    || attrs.contains(NtfsFileAttributeFlags::ENCRYPTED)
                {
                    return Err(self.unsupported(path, "encrypted (EFS)"));
                }
                attr.value_length()
            }
        };
        Ok((file, len))
    }

    /// Reads bytes `offset..` of the unnamed data of `file` (of `len` bytes) into `buf`;
    /// returns how many, fewer than `buf.len()` only at the end of the file.
    fn read_data(
        &self,
        io: &mut Window,
        path: &str,
        file: &NtfsFile<'_>,
        len: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        if offset >= len || buf.is_empty() {
            return Ok(0);
        }
        let want = (len - offset).min(buf.len() as u64);
        // <= buf.len().
        let buf = &mut buf[..want as usize];
        let Some(item) = file.data(io, "") else {
            return Err(self.corrupt(Some(path), "its data stream disappeared".to_owned()));
        };
        let item = item.map_err(|e| self.err(io, path, e))?;
        let attr = item.to_attribute().map_err(|e| self.err(io, path, e))?;
        let mut value = attr.value(io).map_err(|e| self.err(io, path, e))?;
        if attr.flags().contains(NtfsAttributeFlags::COMPRESSED) {
            let NtfsAttributeValue::NonResident(nr) = &value else {
                return Err(self.unsupported(
                    path,
                    "compressed, and its data is resident or split over an attribute list",
                ));
            };
            let exp = self.read_byte(io, path, attr.position().value().map(|p| p.get()))?;
            let unit = u64::from(self.ntfs.cluster_size())
                .checked_shl(u32::from(exp))
                .filter(|u| exp > 0 && *u <= MAX_COMPRESSION_UNIT)
                .ok_or_else(|| {
                    self.corrupt(
                        Some(path),
                        format!(
                            "compressed with units of 2^{exp} clusters of {} bytes",
                            self.ntfs.cluster_size()
                        ),
                    )
                })?;
            let mut runs = Vec::new();
            let mut at = 0u64;
            for run in nr.data_runs() {
                let run = run.map_err(|e| self.err(io, path, e))?;
                let size = run.allocated_size();
                runs.push(Run {
                    start: at,
                    len: size,
                    disk: run.data_position().value().map(|p| p.get()),
                });
                at = at.saturating_add(size);
                if at >= offset.saturating_add(want).saturating_add(unit) {
                    break;
                }
            }
            return self.read_compressed(io, path, &runs, unit, offset, buf);
        }
        value
            .seek(io, SeekFrom::Start(offset))
            .map_err(|e| self.err(io, path, e))?;
        let mut done = 0;
        while done < buf.len() {
            let n = value
                .read(io, &mut buf[done..])
                .map_err(|e| self.err(io, path, e))?;
            if n == 0 {
                return Err(self.corrupt(
                    Some(path),
                    format!(
                        "its data ends at byte {}, before its size",
                        offset + done as u64
                    ),
                ));
            }
            done += n;
        }
        Ok(done)
    }

    /// One byte at absolute position `at` of the volume.
    fn read_byte(&self, io: &mut Window, path: &str, at: Option<u64>) -> Result<u8, Error> {
        let at = at
            .and_then(|a| a.checked_add(COMPRESSION_UNIT_OFFSET))
            .ok_or_else(|| self.corrupt(Some(path), "an attribute with no position".to_owned()))?;
        let mut b = [0u8; 1];
        self.window_read(io, path, at, &mut b)?;
        Ok(b[0])
    }

    /// Reads `buf.len()` bytes at byte `at` of the volume.
    fn window_read(
        &self,
        io: &mut Window,
        path: &str,
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        let inside = at
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= io.len);
        if !inside {
            return Err(self.corrupt(
                Some(path),
                format!(
                    "a read of {} bytes at byte {at} passes the end of the {}-byte file system",
                    buf.len(),
                    io.len
                ),
            ));
        }
        let r = io
            .seek(SeekFrom::Start(at))
            .and_then(|_| io.read_exact(buf));
        r.map_err(|e| self.err(io, path, NtfsError::Io(e)))
    }

    /// Reads bytes `offset..offset + buf.len()` of an LZNT1-compressed stream whose runs are
    /// `runs` and compression unit `unit` bytes (G6): only the units the read touches are
    /// decompressed.
    fn read_compressed(
        &self,
        io: &mut Window,
        path: &str,
        runs: &[Run],
        unit: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        let end = offset + buf.len() as u64;
        let mut k = offset / unit;
        let mut raw = Vec::new();
        let mut plain = Vec::new();
        while k * unit < end {
            let (lo, hi) = (k * unit, (k + 1) * unit);
            // The unit's stored bytes, in order, and whether a sparse run is in it: a unit with
            // a hole is compressed, a full one is stored as is, an empty one is zeros.
            raw.clear();
            let mut hole = false;
            for r in runs {
                let (a, b) = (r.start.max(lo), r.start.saturating_add(r.len).min(hi));
                if a >= b {
                    continue;
                }
                match r.disk {
                    None => hole = true,
                    Some(d) => {
                        let from = raw.len();
                        // <= unit <= 64 KiB.
                        raw.resize(from + (b - a) as usize, 0);
                        let at = d.checked_add(a - r.start).ok_or_else(|| {
                            self.corrupt(Some(path), "a data run past 2^64".to_owned())
                        })?;
                        self.window_read(io, path, at, &mut raw[from..])?;
                    }
                }
            }
            plain.clear();
            // <= MAX_COMPRESSION_UNIT.
            plain.resize(unit as usize, 0);
            if hole && !raw.is_empty() {
                lznt1(&raw, &mut plain).map_err(|reason| {
                    self.corrupt(
                        Some(path),
                        format!("compression unit {k}: LZNT1 data {reason}"),
                    )
                })?;
            } else if !hole {
                let n = raw.len().min(plain.len());
                plain[..n].copy_from_slice(&raw[..n]);
            }
            let (a, b) = (lo.max(offset), hi.min(end));
            buf[(a - offset) as usize..(b - offset) as usize]
                .copy_from_slice(&plain[(a - lo) as usize..(b - lo) as usize]);
            k += 1;
        }
        Ok(buf.len())
    }
}

/// A data run of a compressed stream: bytes `start..start + len` of the stream, stored at byte
/// `disk` of the volume (`None`: sparse).
struct Run {
    start: u64,
    len: u64,
    disk: Option<u64>,
}

/// Decompresses one LZNT1 compression unit `src` into `out` (its length the unit's size; what
/// the chunks leave is zeros): a sequence of chunks, each a 2-byte header (bits 0–11: stored size − 1, bit 15:
/// compressed) and up to 4096 bytes once decompressed. `Err` says what is wrong.
fn lznt1(src: &[u8], out: &mut [u8]) -> Result<(), String> {
    out.fill(0);
    let mut i = 0;
    let mut chunk_start = 0;
    while i + 2 <= src.len() && chunk_start < out.len() {
        let header = u16::from_le_bytes([src[i], src[i + 1]]);
        i += 2;
        if header == 0 {
            break;
        }
        let size = usize::from(header & 0x0fff) + 1;
        let chunk = src
            .get(i..i + size)
            .ok_or_else(|| format!("chunk of {size} bytes at byte {i} passes the unit's end"))?;
        i += size;
        let chunk_end = (chunk_start + LZNT1_CHUNK).min(out.len());
        let dst = &mut out[chunk_start..chunk_end];
        if header & 0x8000 == 0 {
            let n = chunk.len().min(dst.len());
            dst[..n].copy_from_slice(&chunk[..n]);
        } else {
            lznt1_chunk(chunk, dst)?;
        }
        // A chunk that decompresses to less than 4096 bytes is followed by zeros (ntfs-3g).
        chunk_start += LZNT1_CHUNK;
    }
    Ok(())
}

/// Decompresses one compressed LZNT1 chunk into `dst` (at most 4096 bytes): groups of a flag
/// byte and 8 items, each a literal byte or a 2-byte back-reference whose split between
/// displacement and length depends on how much of the chunk is already out.
fn lznt1_chunk(src: &[u8], dst: &mut [u8]) -> Result<(), String> {
    let mut i = 0;
    let mut pos = 0;
    while i < src.len() {
        let flags = src[i];
        i += 1;
        for bit in 0..8 {
            if i >= src.len() {
                break;
            }
            if flags & (1 << bit) == 0 {
                let slot = dst
                    .get_mut(pos)
                    .ok_or_else(|| "decompress to more than a chunk".to_owned())?;
                *slot = src[i];
                i += 1;
                pos += 1;
                continue;
            }
            let token = src
                .get(i..i + 2)
                .map(|t| u16::from_le_bytes([t[0], t[1]]))
                .ok_or_else(|| "end in the middle of a back-reference".to_owned())?;
            i += 2;
            if pos == 0 {
                return Err("start a chunk with a back-reference".to_owned());
            }
            let mut shift = 0u32;
            let mut p = pos - 1;
            while p >= 0x10 {
                p >>= 1;
                shift += 1;
            }
            let back = usize::from(token >> (12 - shift)) + 1;
            let length = usize::from(token & (0x0fff >> shift)) + 3;
            if back > pos {
                return Err(format!("refer {back} bytes back at byte {pos} of a chunk"));
            }
            if pos + length > dst.len() {
                return Err("decompress to more than a chunk".to_owned());
            }
            // Byte by byte: the source may overlap what is being written.
            for j in 0..length {
                dst[pos + j] = dst[pos + j - back];
            }
            pos += length;
        }
    }
    Ok(())
}

/// The target of a symlink or junction from its reparse data (`REPARSE_DATA_BUFFER`).
fn parse_reparse_link(tag: u32, data: &[u8]) -> Result<Link, String> {
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(|| "a reparse point cut short".to_owned())
    };
    // Header: tag, data length, reserved; then the name offsets and lengths, and for a
    // symlink its flags, then the names.
    let (subst_off, subst_len) = (u16_at(8)?, u16_at(10)?);
    let (flags, names) = if tag == TAG_SYMLINK {
        let f = data
            .get(16..20)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "a symlink reparse point cut short".to_owned())?;
        (f, 20)
    } else {
        (0, 16)
    };
    let raw = data
        .get(names + subst_off..names + subst_off + subst_len)
        .ok_or_else(|| "a reparse point whose target passes its end".to_owned())?;
    let stored = utf16(raw);
    if stored.len() > MAX_LINK_TARGET {
        return Err(format!("a symlink target of {} bytes", stored.len()));
    }
    let target = if tag == TAG_SYMLINK && flags & SYMLINK_RELATIVE != 0 {
        Some(stored.replace('\\', "/"))
    } else {
        drive_c_path(&stored)
    };
    Ok(Link { target, stored })
}

/// `\??\C:\X\Y` (or `C:\X\Y`) as a path of this volume, `/X/Y`; `None` for another drive or a
/// volume GUID path, which this volume cannot resolve.
fn drive_c_path(stored: &str) -> Option<String> {
    let rest = stored.strip_prefix("\\??\\").unwrap_or(stored);
    let mut chars = rest.chars();
    let (drive, colon) = (chars.next()?, chars.next()?);
    if !drive.eq_ignore_ascii_case(&'c') || colon != ':' {
        return None;
    }
    let tail = chars.as_str();
    if !(tail.is_empty() || tail.starts_with('\\')) {
        return None;
    }
    let tail = tail.replace('\\', "/");
    Some(if tail.is_empty() {
        "/".to_owned()
    } else {
        tail
    })
}

/// The target of an Interix symlink (ntfs-3g): the magic, then the target in UTF-16.
fn parse_interix_link(data: &[u8]) -> Result<Link, String> {
    let raw = data.get(INTERIX_LINK.len()..).unwrap_or_default();
    if raw.len() % 2 != 0 {
        return Err("an Interix symlink of an odd length".to_owned());
    }
    let stored = utf16(raw);
    if stored.is_empty() || stored.len() > MAX_LINK_TARGET {
        return Err(format!(
            "an Interix symlink target of {} bytes",
            stored.len()
        ));
    }
    Ok(Link {
        target: Some(stored.clone()),
        stored,
    })
}

/// UTF-16LE bytes as a string, unpaired surrogates replaced by U+FFFD.
fn utf16(raw: &[u8]) -> String {
    let units = raw
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]));
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// The components of `path`, the first last (a stack), empty ones dropped.
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_owned)
        .collect()
}

/// The crate's error `e` as ours: a failed source read or an exhausted budget as the reader
/// under the crate recorded it, anything else through `corrupt`.
fn convert(
    name: &Path,
    path: Option<&str>,
    io: &mut Window,
    e: NtfsError,
    corrupt: impl FnOnce(String) -> Error,
) -> Error {
    match io.fault.take() {
        Some(Fault::Source(source)) => Error::Read {
            name: name.to_owned(),
            path: path.map(str::to_owned),
            source: Box::new(source),
        },
        Some(Fault::Budget) => corrupt(format!(
            "more than {} MiB or {CALL_BUDGET} reads for one request: a loop in the file \
             system's structures",
            READ_BUDGET >> 20
        )),
        None => match e {
            NtfsError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                corrupt("a structure passes the end of the file system".to_owned())
            }
            e => corrupt(e.to_string()),
        },
    }
}

impl super::FileSystem for Ntfs {
    fn name(&self) -> &Path {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "ntfs"
    }

    fn read_dir(&self, path: &str, max: usize) -> Result<Vec<Entry>, super::Error> {
        let mut io = self.io.borrow_mut();
        io.start_call(0);
        let found = self.lookup(&mut io, path, true)?;
        if found.kind != Kind::Dir {
            return Err(self.invalid(path, "not a directory").into());
        }
        Ok(self.list(&mut io, path, found.record, max)?)
    }

    fn metadata(&self, path: &str) -> Result<Meta, super::Error> {
        let mut io = self.io.borrow_mut();
        io.start_call(0);
        let found = self.lookup(&mut io, path, true)?;
        Ok(self.meta(&mut io, path, &found)?)
    }

    fn symlink_metadata(&self, path: &str) -> Result<Meta, super::Error> {
        let mut io = self.io.borrow_mut();
        io.start_call(0);
        let found = self.lookup(&mut io, path, false)?;
        Ok(self.meta(&mut io, path, &found)?)
    }

    fn read_link(&self, path: &str) -> Result<String, super::Error> {
        let mut io = self.io.borrow_mut();
        io.start_call(0);
        let found = self.lookup(&mut io, path, false)?;
        match found.link {
            Some(link) => Ok(link.target.unwrap_or(link.stored)),
            None => Err(self.invalid(path, "not a symbolic link").into()),
        }
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, super::Error> {
        let mut io = self.io.borrow_mut();
        io.start_call(buf.len() as u64);
        let (file, len) = self.open_data(&mut io, path)?;
        Ok(self.read_data(&mut io, path, &file, len, offset, buf)?)
    }

    fn read_to_vec(&self, path: &str, max: u64) -> Result<Vec<u8>, super::Error> {
        let mut io = self.io.borrow_mut();
        io.start_call(0);
        let (file, len) = self.open_data(&mut io, path)?;
        if len > max {
            return Err(Error::TooLarge {
                name: self.name.clone(),
                path: path.to_owned(),
                size: len,
                max,
            }
            .into());
        }
        io.start_call(len);
        let size = usize::try_from(len).map_err(|_| Error::TooLarge {
            name: self.name.clone(),
            path: path.to_owned(),
            size: len,
            max: usize::MAX as u64,
        })?;
        let mut out = vec![0u8; size];
        let n = self.read_data(&mut io, path, &file, len, 0, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}

/// `script` with `fixtures/ntfs-3g.sh` sourced first, for the tests that write NTFS volumes
/// through ntfs-3g (`ntfs3g_mount`, and `ntfs3g_unmount`, which waits for ntfs-3g to finish).
#[cfg(test)]
pub(crate) fn with_ntfs3g(script: &str) -> String {
    format!(
        ". '{}/fixtures/ntfs-3g.sh'\n{script}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{self, OpenOptions};
    use crate::fs::FileSystem;
    use crate::layout::composite::{Composite, Content, Region};
    use sha2::{Digest, Sha256};
    use std::process::Command;
    use std::time::{Duration, Instant};

    const M: u64 = 1 << 20;
    const LONG_DIR: &str = "A very long directory name with spaces and ünïcödé that goes on and on";
    /// What a hostile image may cost before its error.
    const QUICK: Duration = Duration::from_secs(5);

    /// Makes the test volume (16 MiB): `mkntfs`, then files written through an ntfs-3g FUSE
    /// mount (LZNT1 compression on `/comp`, an ADS, Interix symlinks, a junction and Windows
    /// symlinks planted as reparse data through `system.ntfs_reparse_data`), then the sha256 of
    /// every regular file as the mount showed it. Arguments: image, mount point, manifest.
    const MAKE: &str = r#"set -euo pipefail
img=$1; mnt=$2; manifest=$3
truncate -s 16M "$img"
mkntfs -F -Q -q -L MKOMI "$img"
ntfs3g_mount "$img" "$mnt" -o compression,streams_interface=xattr
trap 'ntfs3g_unmount "$img" "$mnt"' EXIT
cd "$mnt"
long="A very long directory name with spaces and ünïcödé that goes on and on"
mkdir -p Windows/System32/config ProgramData/ssh comp "$long" many
echo hello ntfs > Windows/System32/ntoskrnl.exe
echo key > ProgramData/ssh/administrators_authorized_keys
seq 1 200000 > big.txt
setfattr -n user.Zone.Identifier -v "[ZoneTransfer]" big.txt
truncate -s 5M sparse.bin
printf x | dd of=sparse.bin bs=1 seek=1000000 conv=notrunc status=none
echo tail >> sparse.bin
setfattr -n system.ntfs_attrib_be -v 0x00000810 comp
seq 1 100000 > comp/c.txt
head -c 70000 /dev/urandom > comp/random.bin
ln -s Windows/System32 link
ln -s /ProgramData/ssh abslink
ln -s loop loop
for i in $(seq 1 300); do echo "$i" > "many/f$i.dll"; done
echo LONG > "$long/file.txt"
mkdir -p Users/Public
# A junction and a Windows symlink planted as reparse data (IO_REPARSE_TAG_MOUNT_POINT / SYMLINK).
python3 - <<'PY'
import struct, subprocess, os
def enc(s): return s.encode('utf-16-le')
def mount_point(sub, prt):
    s, p = enc(sub), enc(prt)
    buf = struct.pack('<HHHH', 0, len(s), len(s)+2, len(p)) + s + b'\0\0' + p + b'\0\0'
    return struct.pack('<IHH', 0xA0000003, len(buf), 0) + buf
def symlink(sub, prt, rel):
    s, p = enc(sub), enc(prt)
    buf = struct.pack('<HHHHI', 0, len(s), len(s), len(p), 1 if rel else 0) + s + p
    return struct.pack('<IHH', 0xA000000C, len(buf), 0) + buf
os.mkdir('junction')
subprocess.run(['setfattr','-n','system.ntfs_reparse_data','-v','0x'+mount_point(r'\??\C:\Users\Public', r'C:\Users\Public').hex(),'junction'],check=True)
open('winlink','w').close()
subprocess.run(['setfattr','-n','system.ntfs_reparse_data','-v','0x'+symlink(r'Windows\System32\ntoskrnl.exe', r'Windows\System32\ntoskrnl.exe', True).hex(),'winlink'],check=True)
open('wof.exe','w').write('stub')
wof = struct.pack('<IIII', 1, 1, 2, 1)
subprocess.run(['setfattr','-n','system.ntfs_reparse_data','-v','0x'+(struct.pack('<IHH', 0x80000017, len(wof), 0) + wof).hex(),'wof.exe'],check=True)
open('dlink','w').close()
subprocess.run(['setfattr','-n','system.ntfs_reparse_data','-v','0x'+symlink(r'\??\D:\data', r'D:\data', False).hex(),'dlink'],check=True)
PY
echo public > Users/Public/readme.txt
# What the mount shows: every regular file's size and sha256 (links not followed).
(cd "$mnt" && find . -type f -print0 2>/dev/null | sort -z | xargs -0 sha256sum) > "$manifest" || true
cd /
trap - EXIT
ntfs3g_unmount "$img" "$mnt"
"#;

    /// Makes a small volume (2 MiB, 512-byte clusters) for the mutation loop and the fuzz seeds.
    /// Arguments: image, mount point.
    const MAKE_SMALL: &str = r#"set -euo pipefail
img=$1; mnt=$2
truncate -s 2M "$img"
mkntfs -F -Q -q -c 512 -L SMALL "$img" 2>/dev/null
ntfs3g_mount "$img" "$mnt" -o compression,streams_interface=xattr
trap 'ntfs3g_unmount "$img" "$mnt"' EXIT
cd "$mnt"
mkdir -p d/e c
echo hi > d/e/f.txt
for i in $(seq 1 40); do echo "$i" > "d/n$i.txt"; done
seq 1 3000 > d/big.txt
setfattr -n user.Zone.Identifier -v x d/big.txt
setfattr -n system.ntfs_attrib_be -v 0x00000810 c
seq 1 5000 > c/z.txt
ln -s d/e l
truncate -s 100000 s.bin
echo end >> s.bin
cd /
trap - EXIT
ntfs3g_unmount "$img" "$mnt"
"#;

    fn run(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd)
            .args(args)
            .env("LC_ALL", "C.UTF-8")
            .output()
            .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        image: PathBuf,
        /// Each regular file the mount showed: path and sha256 (hex).
        files: Vec<(String, String)>,
    }

    fn build() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("ntfs.img");
        let mnt = dir.path().join("mnt");
        let manifest = dir.path().join("manifest");
        let args = [&image, &mnt, &manifest].map(|p| p.to_str().unwrap().to_owned());
        let script = with_ntfs3g(MAKE);
        run(
            "bash",
            &["-c", &script, "make", &args[0], &args[1], &args[2]],
        );
        let files = std::fs::read_to_string(&manifest)
            .unwrap()
            .lines()
            .map(|l| {
                let (sum, path) = l.split_once("  ").unwrap();
                (path.trim_start_matches('.').to_owned(), sum.to_owned())
            })
            .collect();
        Fixture { dir, image, files }
    }

    fn build_small(dir: &Path) -> Vec<u8> {
        let image = dir.join("small.img");
        let mnt = dir.join("mnt-small");
        run(
            "bash",
            &[
                "-c",
                &with_ntfs3g(MAKE_SMALL),
                "make",
                image.to_str().unwrap(),
                mnt.to_str().unwrap(),
            ],
        );
        std::fs::read(image).unwrap()
    }

    /// A disk in memory, as the layout code assembles them.
    fn mem_disk(data: Vec<u8>) -> Arc<dyn Disk> {
        let len = data.len() as u64;
        let region = Region {
            offset: 0,
            content: Content::Bytes(data),
            len,
        };
        Arc::new(Composite::new(Path::new("ntfs.img"), len, vec![region]).unwrap())
    }

    fn mem(data: Vec<u8>) -> Result<Ntfs, Error> {
        let len = data.len() as u64;
        Ntfs::open(mem_disk(data), 0, len, Path::new("ntfs.img"))
    }

    fn open_image(image: &Path) -> Ntfs {
        let src = format::open_path(image, &OpenOptions::default()).unwrap();
        let len = src.size();
        Ntfs::open(src, 0, len, Path::new("ntfs.img")).unwrap()
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn names(fs: &dyn FileSystem, path: &str) -> Vec<String> {
        fs.read_dir(path, 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    /// Every check of the reader against what the ntfs-3g mount showed.
    fn check_tree(fs: &dyn FileSystem, fx: &Fixture) {
        assert_eq!(fs.kind(), "ntfs");
        // The mount's files (300 in /many), read whole, with their metadata.
        assert!(fx.files.len() > 300, "{}", fx.files.len());
        for (path, sum) in &fx.files {
            let data = fs.read_to_vec(path, 64 * M).unwrap();
            assert_eq!(&sha(&data), sum, "{path}");
            let meta = fs.metadata(path).unwrap();
            assert_eq!(meta.kind, Kind::File, "{path}");
            assert_eq!(meta.len, data.len() as u64, "{path}");
            assert_eq!((meta.mode, meta.uid), (FILE_MODE, 0));
        }
        // Reads at odd offsets: contiguous, sparse, LZNT1-compressed (text and incompressible).
        for path in ["/big.txt", "/sparse.bin", "/comp/c.txt", "/comp/random.bin"] {
            let whole = fs.read_to_vec(path, 64 * M).unwrap();
            for (offset, n) in [
                (0u64, 1usize),
                (1, 4095),
                (4097, 70_001),
                (65_535, 3),
                (65_536 * 3 - 7, 20),
                (999_999, 5),
            ] {
                let mut buf = vec![0xeeu8; n];
                let got = fs.read_at(path, offset, &mut buf).unwrap();
                let lo = (offset as usize).min(whole.len());
                let hi = (lo + n).min(whole.len());
                assert_eq!(got, hi - lo, "{path} {offset}");
                assert_eq!(&buf[..got], &whole[lo..hi], "{path} {offset}");
            }
            let mut buf = [0u8; 8];
            assert_eq!(
                fs.read_at(path, whole.len() as u64 + 10, &mut buf).unwrap(),
                0
            );
        }
        let sparse = fs.read_to_vec("/sparse.bin", 64 * M).unwrap();
        assert_eq!(sparse.len(), 5 * M as usize + 5);
        assert_eq!(sparse[1_000_000], b'x');
        assert!(sparse[..1_000_000].iter().all(|&b| b == 0));
        let c = fs.read_to_vec("/comp/c.txt", 64 * M).unwrap();
        assert!(c.starts_with(b"1\n2\n3\n"), "{:?}", &c[..16]);
        assert!(c.ends_with(b"99999\n100000\n"));

        // Listings: sorted, no `.`, no metadata files, no DOS twins; the ADS is not listed.
        assert_eq!(
            names(fs, "/"),
            [
                LONG_DIR,
                "ProgramData",
                "Users",
                "Windows",
                "abslink",
                "big.txt",
                "comp",
                "dlink",
                "junction",
                "link",
                "loop",
                "many",
                "sparse.bin",
                "winlink",
                "wof.exe",
            ]
        );
        let root = fs.read_dir("/", 100).unwrap();
        let kind = |n: &str| root.iter().find(|e| e.name == n).unwrap().kind;
        assert_eq!(kind("Windows"), Kind::Dir);
        assert_eq!(kind("big.txt"), Kind::File);
        for l in ["link", "abslink", "junction", "winlink", "dlink"] {
            assert_eq!(kind(l), Kind::Symlink, "{l}");
        }
        // 300 names: a B-tree of several index records.
        let many = fs.read_dir("/many", 1000).unwrap();
        let mut want: Vec<String> = (1..=300).map(|i| format!("f{i}.dll")).collect();
        want.sort();
        assert_eq!(
            many.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
            want
        );
        assert!(many.iter().all(|e| e.kind == Kind::File));
        let e = fs.read_dir("/many", 299).unwrap_err().to_string();
        assert_eq!(e, "ntfs.img: /many: a directory of more than 299 entries");
        assert_eq!(names(fs, "/Windows/System32"), ["config", "ntoskrnl.exe"]);

        // Case-insensitive lookups, through $UpCase (ü to Ü too).
        assert_eq!(
            fs.read_to_vec("/WINDOWS/system32/NTOSKRNL.EXE", 100)
                .unwrap(),
            b"hello ntfs\n"
        );
        let long = format!("/{}/FILE.TXT", LONG_DIR.to_uppercase());
        assert_eq!(fs.read_to_vec(&long, 100).unwrap(), b"LONG\n");
        assert_eq!(fs.read_to_vec("/MANY/F77.DLL", 100).unwrap(), b"77\n");

        // Symlinks: Interix (ntfs-3g), a junction to C:\, a relative Windows symlink, a
        // Windows symlink to another drive.
        assert_eq!(fs.read_link("/link").unwrap(), "Windows/System32");
        assert_eq!(fs.read_link("/abslink").unwrap(), "/ProgramData/ssh");
        assert_eq!(fs.read_link("/junction").unwrap(), "/Users/Public");
        assert_eq!(
            fs.read_link("/winlink").unwrap(),
            "Windows/System32/ntoskrnl.exe"
        );
        assert_eq!(fs.read_link("/dlink").unwrap(), "\\??\\D:\\data");
        assert_eq!(
            fs.read_to_vec("/link/ntoskrnl.exe", 100).unwrap(),
            b"hello ntfs\n"
        );
        assert_eq!(
            fs.read_to_vec("/abslink/administrators_authorized_keys", 100)
                .unwrap(),
            b"key\n"
        );
        assert_eq!(
            fs.read_to_vec("/junction/readme.txt", 100).unwrap(),
            b"public\n"
        );
        assert_eq!(fs.read_to_vec("/winlink", 100).unwrap(), b"hello ntfs\n");
        assert_eq!(fs.metadata("/link").unwrap().kind, Kind::Dir);
        assert_eq!(fs.metadata("/junction").unwrap().kind, Kind::Dir);
        assert_eq!(fs.metadata("/winlink").unwrap().len, 11);
        let l = fs.symlink_metadata("/junction").unwrap();
        assert_eq!(
            (l.kind, l.len),
            (Kind::Symlink, "/Users/Public".len() as u64)
        );
        let e = fs.read_to_vec("/loop", 100).unwrap_err().to_string();
        assert_eq!(e, "ntfs.img: /loop: too many levels of symbolic links");
        assert_eq!(fs.symlink_metadata("/loop").unwrap().kind, Kind::Symlink);
        // A file compressed by Windows (WOF): listed and described, not read.
        assert_eq!(kind("wof.exe"), Kind::File);
        assert_eq!(fs.metadata("/wof.exe").unwrap().kind, Kind::File);
        let e = fs.read_to_vec("/wof.exe", 100).unwrap_err().to_string();
        assert_eq!(
            e,
            "ntfs.img: /wof.exe: compressed by Windows (WOF), not read"
        );
        let mut buf = [0u8; 4];
        let e = fs.read_at("/wof.exe", 0, &mut buf).unwrap_err().to_string();
        assert_eq!(
            e,
            "ntfs.img: /wof.exe: compressed by Windows (WOF), not read"
        );
        let e = fs.read_to_vec("/dlink", 100).unwrap_err().to_string();
        assert_eq!(
            e,
            "ntfs.img: /dlink: a symlink to \\??\\D:\\data, outside this volume"
        );
        assert_eq!(names(fs, "/link"), ["config", "ntoskrnl.exe"]);
        // `..` after a symlink goes up from its target, as on Linux.
        assert_eq!(names(fs, "/link/config/../.."), ["System32"]);

        // Errors: one line, naming the image and the path.
        let e = fs.read_to_vec("/big.txt", 1000).unwrap_err().to_string();
        assert_eq!(
            e,
            "ntfs.img: /big.txt: 1288895 bytes, more than the 1000 allowed"
        );
        let e = fs.read_to_vec("/missing", 10).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "ntfs.img: /missing: no such file in the file system"
        );
        assert!(fs.metadata("/Windows/nope/x").unwrap_err().is_not_found());
        assert!(fs.read_link("/nope").unwrap_err().is_not_found());
        let e = fs.read_to_vec("/Windows", 10).unwrap_err().to_string();
        assert_eq!(e, "ntfs.img: /Windows: is a directory, not a regular file");
        let e = fs.read_dir("/big.txt/x", 10).unwrap_err().to_string();
        assert_eq!(
            e,
            "ntfs.img: /big.txt/x: a component of the path is not a directory"
        );
        let e = fs.read_link("/big.txt").unwrap_err().to_string();
        assert_eq!(e, "ntfs.img: /big.txt: not a symbolic link");
        let e = fs.read_dir("relative", 10).unwrap_err().to_string();
        assert_eq!(e, "ntfs.img: relative: not an absolute path");
        let d = fs.metadata("/many").unwrap();
        assert_eq!((d.kind, d.mode, d.uid), (Kind::Dir, DIR_MODE, 0));
        assert!(d.len >= 4096, "{}", d.len);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn reads_what_ntfs_3g_wrote() {
        let fx = build();
        let fs = open_image(&fx.image);
        check_tree(&fs, &fx);
        assert_eq!(fs.label().as_deref(), Some("MKOMI"));
        // Reading a file piece by piece costs no new path lookup each time, and a read is not
        // bounded by the budget of the previous call.
        let mut buf = vec![0u8; 100_000];
        let mut at = 0;
        while fs.read_at("/comp/c.txt", at, &mut buf).unwrap() > 0 {
            at += 100_000;
        }
        assert!(at > 588_000);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn reads_a_gpt_partition_raw_and_through_qcow2() {
        let fx = build();
        let raw = fx.dir.path().join("disk.raw");
        let raw_s = raw.to_str().unwrap();
        run("truncate", &["-s", "20M", raw_s]);
        run("sgdisk", &["-n", "1:2048:+16M", "-t", "1:0700", raw_s]);
        run(
            "dd",
            &[
                &format!("if={}", fx.image.display()),
                &format!("of={raw_s}"),
                "bs=1M",
                "seek=1",
                "conv=notrunc",
                "status=none",
            ],
        );
        let qcow2 = fx.dir.path().join("disk.qcow2");
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                raw_s,
                qcow2.to_str().unwrap(),
            ],
        );
        for (disk, format) in [(&raw, "raw"), (&qcow2, "qcow2")] {
            let src = format::open_path(disk, &OpenOptions::default()).unwrap();
            assert_eq!(src.format(), format);
            let table = crate::inspect::table::read(src.as_ref());
            let p = &table.partitions[0];
            assert_eq!((p.offset, p.size), (M, 16 * M));
            let fs = Ntfs::open(src, p.offset, p.size, Path::new("ntfs.img")).unwrap();
            check_tree(&fs, &fx);
            // The same volume in a window one sector too short is refused.
            let src = format::open_path(disk, &OpenOptions::default()).unwrap();
            let e = Ntfs::open(src, M, 8 * M, Path::new("disk"))
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!(
                    "disk: the NTFS file system at byte {M} has 32767 sectors of 512 bytes, more \
                     than its {}-byte window",
                    8 * M
                )
            );
        }
    }

    /// Byte patches of NTFS structures, each record's update sequence undone and redone around
    /// the change, so that the change reaches the parsers.
    mod patch {
        pub fn u16_at(b: &[u8], o: usize) -> usize {
            usize::from(u16::from_le_bytes([b[o], b[o + 1]]))
        }

        pub fn u32_at(b: &[u8], o: usize) -> u32 {
            u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
        }

        pub fn u64_at(b: &[u8], o: usize) -> u64 {
            u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
        }

        /// Undoes the update sequence of the record at `o`; false if it has none that fits.
        pub fn unfix(b: &mut [u8], o: usize, size: usize) -> bool {
            let (usa, count) = (u16_at(b, o + 4), u16_at(b, o + 6));
            if count == 0 || usa + 2 * count > size || (count - 1) * 512 > size {
                return false;
            }
            for k in 1..count {
                let end = o + k * 512 - 2;
                b.copy_within(o + usa + 2 * k..o + usa + 2 * k + 2, end);
            }
            true
        }

        /// Redoes the update sequence of the record at `o` (after [`unfix`]).
        pub fn refix(b: &mut [u8], o: usize, size: usize) {
            let (usa, count) = (u16_at(b, o + 4), u16_at(b, o + 6));
            if count == 0 || usa + 2 * count > size || (count - 1) * 512 > size {
                return;
            }
            let usn = [b[o + usa], b[o + usa + 1]];
            for k in 1..count {
                let end = o + k * 512 - 2;
                b.copy_within(end..end + 2, o + usa + 2 * k);
                b[end..end + 2].copy_from_slice(&usn);
            }
        }

        /// Where the MFT starts (a fresh volume's MFT is contiguous).
        pub fn mft(b: &[u8]) -> usize {
            let cluster = u16_at(b, 0x0b) * usize::from(b[0x0d]);
            u64_at(b, 0x30) as usize * cluster
        }

        /// The value of the first resident attribute of type `ty` in the (unfixed) record at
        /// `o`.
        pub fn attr_value(b: &[u8], o: usize, ty: u32) -> Option<usize> {
            let mut a = o + u16_at(b, o + 0x14);
            while a + 8 < o + 1024 {
                let (t, len) = (u32_at(b, a), u32_at(b, a + 4) as usize);
                if t == 0xffff_ffff || len == 0 {
                    break;
                }
                if t == ty && b[a + 8] == 0 {
                    return Some(a + u16_at(b, a + 0x14));
                }
                a += len;
            }
            None
        }

        /// The MFT record (1 KiB) whose `$FILE_NAME` is `name`.
        pub fn record_named(b: &mut [u8], name: &str) -> usize {
            let mft = mft(b);
            for n in 16..1024 {
                let o = mft + n * 1024;
                if &b[o..o + 4] != b"FILE" || !unfix(b, o, 1024) {
                    continue;
                }
                let found = attr_value(b, o, 0x30).is_some_and(|v| {
                    let len = usize::from(b[v + 0x40]);
                    let units: Vec<u16> = b[v + 0x42..v + 0x42 + 2 * len]
                        .chunks(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect();
                    String::from_utf16_lossy(&units) == name
                });
                refix(b, o, 1024);
                if found {
                    return o;
                }
            }
            panic!("no MFT record named {name}");
        }

        /// The index records (4 KiB, cluster-aligned) whose keys hold the UTF-16 of `needle`.
        pub fn indx_with(b: &mut [u8], needle: &str) -> Vec<usize> {
            let needle: Vec<u8> = needle.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let mut out = Vec::new();
            for o in (0..b.len() - 4096).step_by(4096) {
                if &b[o..o + 4] != b"INDX" || !unfix(b, o, 4096) {
                    continue;
                }
                if b[o..o + 4096].windows(needle.len()).any(|w| w == needle) {
                    out.push(o);
                }
                refix(b, o, 4096);
            }
            out
        }

        /// The entry that ends the index node whose header is at `h`.
        pub fn last_entry(b: &[u8], h: usize) -> usize {
            let mut e = h + u32_at(b, h) as usize;
            while u16_at(b, e + 12) & 2 == 0 {
                e += u16_at(b, e + 8);
            }
            e
        }
    }

    /// `/many`'s MFT record, its update sequence undone, and its `$INDEX_ROOT` value.
    fn many_root(b: &mut [u8]) -> (usize, usize) {
        let rec = patch::record_named(b, "many");
        assert!(patch::unfix(b, rec, 1024));
        let v = patch::attr_value(b, rec, 0x90).unwrap();
        (rec, v)
    }

    /// The hostile images, each built from the fixture's bytes by `make`.
    /// Each case: what it is, the image, and what its errors must say.
    fn hostile(base: &[u8]) -> Vec<(&'static str, Vec<u8>, &'static str)> {
        let mut cases = Vec::new();
        cases.push((
            "truncated to 100 bytes",
            base[..100].to_vec(),
            "100 bytes cannot hold a boot sector",
        ));
        cases.push((
            "truncated to 8 MiB",
            base[..8 * M as usize].to_vec(),
            "more than its 8388608-byte window",
        ));
        // The B-tree cycle: the last index record of /many gets a subnode that is itself.
        let mut b = base.to_vec();
        let (rec, v) = many_root(&mut b);
        let end = patch::last_entry(&b, v + 16);
        let len = patch::u16_at(&b, end + 8);
        let vcn = patch::u64_at(&b, end + len - 8);
        patch::refix(&mut b, rec, 1024);
        let o = patch::indx_with(&mut b, ".dll")
            .into_iter()
            .find(|&o| patch::u64_at(&b, o + 0x10) == vcn)
            .unwrap();
        assert!(patch::unfix(&mut b, o, 4096));
        let h = o + 0x18;
        let e = patch::last_entry(&b, h);
        let (used, alloc) = (patch::u32_at(&b, h + 4), patch::u32_at(&b, h + 8));
        let elen = patch::u16_at(&b, e + 8);
        if patch::u16_at(&b, e + 12) & 1 == 1 {
            // A node with subnodes: its end entry's subnode becomes itself.
            b[e + elen - 8..e + elen].copy_from_slice(&vcn.to_le_bytes());
        } else {
            assert!(elen == 16 && used + 8 <= alloc, "{elen} {used} {alloc}");
            b[e + 8..e + 14].copy_from_slice(&[24, 0, 0, 0, 3, 0]);
            b[e + 16..e + 24].copy_from_slice(&vcn.to_le_bytes());
            b[h + 4..h + 8].copy_from_slice(&(used + 8).to_le_bytes());
            b[h + 12] |= 1;
        }
        patch::refix(&mut b, o, 4096);
        cases.push(("cycle", b, "corrupt NTFS file system"));
        // A 4 GiB index record size in /many's $INDEX_ROOT (defect 4).
        let mut b = base.to_vec();
        let (rec, v) = many_root(&mut b);
        b[v + 8..v + 12].copy_from_slice(&0xf000_0000u32.to_le_bytes());
        patch::refix(&mut b, rec, 1024);
        cases.push((
            "huge index record",
            b,
            "index record size of 4026531840 bytes",
        ));
        // $INDEX_ROOT entries that end before they start (defect 5).
        let mut b = base.to_vec();
        let (rec, v) = many_root(&mut b);
        b[v + 20..v + 24].copy_from_slice(&0u32.to_le_bytes());
        patch::refix(&mut b, rec, 1024);
        cases.push((
            "index root entries end before they start",
            b,
            "corrupt NTFS file system: The NTFS index root",
        ));
        // An index entry of 8 bytes, shorter than its header (defect 1), in every index record
        // of /many.
        let mut b = base.to_vec();
        for o in patch::indx_with(&mut b, ".dll") {
            assert!(patch::unfix(&mut b, o, 4096));
            let e = o + 0x18 + patch::u32_at(&b, o + 0x18) as usize;
            b[e + 8..e + 10].copy_from_slice(&8u16.to_le_bytes());
            patch::refix(&mut b, o, 4096);
        }
        cases.push((
            "short index entry",
            b,
            "has a length of 8 bytes, not a multiple of 8 of at least 16",
        ));
        cases
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn hostile_images_give_quick_one_line_errors() {
        let fx = build();
        let base = std::fs::read(&fx.image).unwrap();
        for (what, bytes, says) in hostile(&base) {
            let t = Instant::now();
            let mut errors = Vec::new();
            match mem(bytes) {
                Err(e) => errors.push(e.to_string()),
                Ok(fs) => {
                    errors.push(fs.read_dir("/many", 1000).unwrap_err().to_string());
                    errors.push(
                        fs.read_to_vec("/many/zzz.dll", 100)
                            .unwrap_err()
                            .to_string(),
                    );
                    if what == "cycle" {
                        // The first error is G3's, the second the crate's depth bound (patch 2).
                        assert!(
                            errors[0].ends_with("the directory index is out of order or loops")
                        );
                        assert!(errors[1].contains("more than 32 levels deep"));
                    }
                    // The rest of the volume still reads.
                    assert_eq!(
                        fs.read_to_vec("/Windows/System32/ntoskrnl.exe", 100)
                            .unwrap(),
                        b"hello ntfs\n"
                    );
                }
            }
            assert!(t.elapsed() < QUICK, "{what}: {:?}", t.elapsed());
            for e in &errors {
                assert!(e.starts_with("ntfs.img"), "{what}: {e}");
                assert!(!e.contains('\n'), "{what}: {e}");
                assert!(e.contains(says), "{what}: {e}");
            }
            eprintln!("{what}: {errors:?} in {:?}", t.elapsed());
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn encrypted_files_are_refused() {
        // ntfs-3g does not set FILE_ATTRIBUTE_ENCRYPTED: it is patched into the file's
        // $STANDARD_INFORMATION (offset 0x20 of its value) here.
        let fx = build();
        let mut b = std::fs::read(&fx.image).unwrap();
        let rec = patch::record_named(&mut b, "ntoskrnl.exe");
        assert!(patch::unfix(&mut b, rec, 1024));
        let v = patch::attr_value(&b, rec, 0x10).unwrap();
        b[v + 0x21] |= 0x40;
        patch::refix(&mut b, rec, 1024);
        let fs = mem(b).unwrap();
        let path = "/Windows/System32/ntoskrnl.exe";
        assert_eq!(fs.metadata(path).unwrap().len, 11);
        let e = fs.read_to_vec(path, 100).unwrap_err().to_string();
        assert_eq!(e, format!("ntfs.img: {path}: encrypted (EFS), not read"));
    }

    /// A tiny deterministic generator (xorshift64*), so that a failing case can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Walks a file system as the fuzz harness does, within bounds; errors are fine.
    fn walk(fs: &dyn FileSystem) {
        let mut dirs = vec![("/".to_owned(), 0)];
        let mut seen = 0;
        let mut buf = [0u8; 100];
        while let Some((dir, depth)) = dirs.pop() {
            let Ok(entries) = fs.read_dir(&dir, 1000) else {
                continue;
            };
            for e in entries {
                seen += 1;
                if seen > 200 {
                    return;
                }
                let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
                let _ = fs.metadata(&path);
                let _ = fs.symlink_metadata(&path);
                let _ = fs.read_link(&path);
                let _ = fs.read_to_vec(&path, M);
                let _ = fs.read_at(&path, 4097, &mut buf);
                if e.kind == Kind::Dir && depth < 4 {
                    dirs.push((path, depth + 1));
                }
            }
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn two_thousand_mutations_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let base = build_small(dir.path());
        let fs = mem(base.clone()).unwrap();
        assert_eq!(fs.read_to_vec("/d/e/f.txt", 10).unwrap(), b"hi\n");
        let z = fs.read_to_vec("/c/z.txt", M).unwrap();
        assert!(z.ends_with(b"4999\n5000\n"));
        assert_eq!(fs.read_dir("/d", 100).unwrap().len(), 42);
        // The records a walk reads: the MFT's first 64 and the index records.
        let mft = patch::mft(&base);
        let mut records: Vec<(usize, usize)> = (0..64)
            .map(|n| (mft + n * 1024, 1024))
            .filter(|&(o, _)| &base[o..o + 4] == b"FILE")
            .collect();
        records.extend(
            (0..base.len() - 4096)
                .step_by(512)
                .filter(|&o| &base[o..o + 4] == b"INDX")
                .map(|o| (o, 4096)),
        );
        assert!(records.len() > 30, "{}", records.len());
        let mut rng = Rng(0x6d6b_6f6d_6e74_6673);
        let (mut opened, mut listed) = (0, 0);
        let t = Instant::now();
        for case in 0..2000 {
            let mut b = base.clone();
            let (o, size) = records[rng.below(records.len())];
            let fields = [1, 1, 2, 4, 8, 16][rng.below(6)];
            if case % 4 == 0 {
                // Raw bytes, the update sequence left as it falls.
                for _ in 0..fields {
                    let p = if rng.below(10) < 7 {
                        o + rng.below(size)
                    } else {
                        rng.below(b.len())
                    };
                    b[p] =
                        [rng.next() as u8, b[p] ^ (1 << rng.below(8)), 0, 0xff, 0x80][rng.below(5)];
                }
            } else if patch::unfix(&mut b, o, size) {
                // Fields inside the record, which then still passes its fixup check.
                for _ in 0..fields {
                    let w = [1, 1, 2, 4, 8][rng.below(5)];
                    let p = o + 8 + rng.below(size - 8 - w);
                    let old = b[p..p + w].to_vec();
                    let mut v = rng.next().to_le_bytes();
                    match rng.below(5) {
                        0 => v = [0; 8],
                        1 => v = [0xff; 8],
                        2 => {
                            v[..w].copy_from_slice(&old);
                            v[rng.below(w)] ^= 1 << rng.below(8);
                        }
                        3 => {
                            v[..w].copy_from_slice(&old);
                            v[0] = v[0].wrapping_add(8);
                        }
                        _ => {}
                    }
                    b[p..p + w].copy_from_slice(&v[..w]);
                }
                patch::refix(&mut b, o, size);
            }
            if let Ok(fs) = mem(b) {
                opened += 1;
                if fs.read_dir("/", 1000).is_ok() {
                    listed += 1;
                }
                walk(&fs);
            }
        }
        eprintln!(
            "2000 cases in {:?}: {opened} opened, {listed} listed /",
            t.elapsed()
        );
        assert!(opened > 1000 && listed > 500, "{opened} {listed}");
    }

    #[test]
    fn the_read_budget_ends_a_call() {
        let src = mem_disk(vec![7u8; 64 * 1024]);
        let mut w = Window {
            source: src,
            offset: 0,
            len: 64 * 1024,
            pos: 0,
            cache: Vec::new(),
            next_slot: 0,
            bytes_left: 0,
            calls_left: 0,
            fault: None,
        };
        w.start_call(0);
        w.bytes_left = 10_000;
        let mut buf = [0u8; 4096];
        assert_eq!(w.read(&mut buf).unwrap(), 4096);
        assert_eq!(w.read(&mut buf[..100]).unwrap(), 100);
        assert_eq!(w.read(&mut buf).unwrap(), 4096);
        assert!(w.read(&mut buf).is_err());
        let e = convert(
            Path::new("ntfs.img"),
            Some("/x"),
            &mut w,
            NtfsError::Io(io::Error::other("x")),
            |reason| Error::Corrupt {
                name: PathBuf::from("ntfs.img"),
                path: Some("/x".to_owned()),
                reason,
            },
        );
        assert_eq!(
            e.to_string(),
            "ntfs.img: /x: corrupt NTFS file system: more than 256 MiB or 2000000 reads for one \
             request: a loop in the file system's structures"
        );
        // The next call has a fresh budget; the end of the window reads as the end of file.
        w.start_call(0);
        w.pos = 64 * 1024 - 10;
        assert_eq!(w.read(&mut buf).unwrap(), 10);
        assert_eq!(w.read(&mut buf).unwrap(), 0);
        w.calls_left = 0;
        w.pos = 0;
        assert!(w.read(&mut buf[..1]).is_err());
    }

    #[test]
    fn lznt1_decompresses_literals_and_back_references() {
        // "abc", then 6 bytes from 3 back: a chunk of 9 bytes, then the unit's end mark.
        let src = [0x05, 0xb0, 0x08, b'a', b'b', b'c', 0x03, 0x20, 0, 0];
        let mut out = vec![0xee; 8192];
        lznt1(&src, &mut out).unwrap();
        assert_eq!(&out[..9], b"abcabcabc");
        assert!(out[9..].iter().all(|&b| b == 0));
        // An uncompressed chunk (bit 15 clear) of 4096 bytes, then a compressed one.
        let mut src = vec![0xff, 0x3f];
        src.extend(std::iter::repeat_n(7u8, 4096));
        src.extend([0x01, 0xb0, 0x00, b'z']);
        lznt1(&src, &mut out).unwrap();
        assert!(out[..4096].iter().all(|&b| b == 7));
        assert_eq!(out[4096], b'z');
        assert!(out[4097..].iter().all(|&b| b == 0));
    }

    #[test]
    fn lznt1_refuses_what_leaves_its_bounds() {
        let mut out = vec![0u8; 4096];
        let err = |src: &[u8], out: &mut [u8]| lznt1(src, out).unwrap_err();
        // A back-reference first.
        assert_eq!(
            err(&[0x02, 0xb0, 0x01, 0x00, 0x00], &mut out),
            "start a chunk with a back-reference"
        );
        // 4 bytes back after 1.
        assert_eq!(
            err(&[0x03, 0xb0, 0x02, b'a', 0x00, 0x30], &mut out),
            "refer 4 bytes back at byte 1 of a chunk"
        );
        // A length past the chunk's 4096 bytes: 1 byte then 4098 copied (shift 0 at pos 1).
        assert_eq!(
            err(&[0x03, 0xb0, 0x02, b'a', 0xff, 0x0f], &mut out),
            "decompress to more than a chunk"
        );
        // A chunk whose size passes the unit's end, and a cut back-reference.
        assert_eq!(
            err(&[0x10, 0xb0, 0x00], &mut out),
            "chunk of 17 bytes at byte 2 passes the unit's end"
        );
        assert_eq!(
            err(&[0x02, 0xb0, 0x02, b'a', 0x00], &mut out),
            "end in the middle of a back-reference"
        );
        // Output is capped at the unit: a 4096-byte unit takes one chunk and ignores the rest.
        let mut small = vec![0u8; 4096];
        let mut src = vec![0x01, 0xb0, 0x00, b'x'];
        src.extend([0x01, 0xb0, 0x00, b'y']);
        lznt1(&src, &mut small).unwrap();
        assert_eq!(small[0], b'x');
    }

    #[test]
    fn junction_and_symlink_targets() {
        assert_eq!(
            drive_c_path("\\??\\C:\\Users\\Public").as_deref(),
            Some("/Users/Public")
        );
        assert_eq!(drive_c_path("c:\\").as_deref(), Some("/"));
        assert_eq!(drive_c_path("\\??\\C:").as_deref(), Some("/"));
        assert_eq!(drive_c_path("\\??\\D:\\x"), None);
        assert_eq!(drive_c_path("\\??\\Volume{1234}\\x"), None);
        assert_eq!(drive_c_path("\\??\\C:x"), None);
        let e = parse_reparse_link(TAG_SYMLINK, &[0x0c, 0, 0, 0xa0, 8, 0, 0, 0, 0, 0, 0xff, 0]);
        assert_eq!(e.unwrap_err(), "a symlink reparse point cut short");
        let e = parse_reparse_link(
            TAG_MOUNT_POINT,
            &[3, 0, 0, 0xa0, 8, 0, 0, 0, 0, 0, 0xff, 0, 0, 0, 0, 0],
        );
        assert_eq!(
            e.unwrap_err(),
            "a reparse point whose target passes its end"
        );
        assert_eq!(
            parse_interix_link(b"IntxLNK\x01").unwrap_err(),
            "an Interix symlink target of 0 bytes"
        );
    }

    #[test]
    fn boot_sector_checks() {
        let mut b = [0u8; BOOT_SECTOR];
        b[3..11].copy_from_slice(b"NTFS    ");
        b[510..512].copy_from_slice(&[0x55, 0xaa]);
        b[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        b[0x0d] = 8;
        b[0x28..0x30].copy_from_slice(&32767u64.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
        b[0x38..0x40].copy_from_slice(&2047u64.to_le_bytes());
        b[0x40] = 0xf6; // 2^10: 1 KiB records
        b[0x44] = 1; // one 4 KiB cluster
        let g = check_boot(&b).unwrap();
        assert_eq!((g.sector_bytes, g.sectors), (512, 32767));
        let bad = |at: usize, v: &[u8]| {
            let mut c = b;
            c[at..at + v.len()].copy_from_slice(v);
            check_boot(&c).unwrap_err()
        };
        assert_eq!(bad(3, b"EXFAT   "), "OEM id \"EXFAT   \", not \"NTFS    \"");
        assert_eq!(bad(0x0b, &[0x00, 0x03]), "768 bytes per sector");
        assert_eq!(bad(0x0d, &[3]), "sectors per cluster byte 0x03");
        assert_eq!(
            bad(0x30, &[0x00, 0x10]),
            "the MFT at cluster 4096, outside the volume"
        );
        assert_eq!(
            bad(0x38, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            "the MFT mirror at cluster 18446744073709551615, outside the volume"
        );
        assert_eq!(bad(0x40, &[0xe0]), "4294967296-byte file records");
        assert_eq!(bad(0x44, &[0x40]), "262144-byte index records");
        assert_eq!(bad(510, &[0, 0]), "no 55 AA boot signature");
    }
}
