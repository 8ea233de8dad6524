//! FAT12, FAT16 and FAT32 file systems, read-only.
//!
//! Our own reader, written from Microsoft's "FAT: General Overview of On-Disk Format" (version
//! 1.03; "the spec" below, cited by section). mkomi does not use the `fatfs` crate: its
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
use crate::ondisk::fat::{
    BOOT_SECTOR, Chain, DIR_ENTRY, Fault, Geometry, Listing, Node, Root, geometry, parse_dir,
};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// FAT entries are read in blocks of this many bytes of the FAT…
const FAT_BLOCK: u64 = 32 * 1024;
/// …of which this many are kept, so following a chain reads each part of the FAT once.
const FAT_CACHE_BLOCKS: usize = 8;

/// Unix permissions reported for directories and files, FAT having none.
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

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

/// A file's cluster chain, followed only as far as reads have needed (never past the clusters
/// its size needs), and kept for the next read of the same file.
struct FileChain {
    /// The file's first cluster and size: the key.
    first: u32,
    size: u64,
    /// How many clusters the size needs.
    needed: u64,
    /// The clusters found so far.
    chain: Chain,
    /// Whether the link out of the `needed`th cluster has been checked.
    checked_end: bool,
}

/// Whether a node is a directory or a file, as [`super::FileSystem`] reports it.
fn kind(node: Node) -> Kind {
    match node {
        Node::Root | Node::Dir(_) => Kind::Dir,
        Node::File { .. } => Kind::File,
    }
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
        let (offset, width) = self.geo.fat_type.entry_location(n);
        let mut bytes = [0u8; 4];
        for (i, slot) in bytes.iter_mut().take(width).enumerate() {
            *slot = self.fat_byte(offset + i as u64, path)?;
        }
        Ok(self.geo.fat_type.entry_value(n, bytes))
    }

    /// The error for a chain `fault` met while reading `path`.
    fn fault(&self, fault: Fault<Error>, path: &str) -> Error {
        match fault {
            Fault::Corrupt(reason) => self.corrupt(Some(path), reason),
            Fault::Read(e) => e,
        }
    }

    /// Follows the directory chain that starts at cluster `first` to its end-of-chain mark
    /// ([`Chain::directory`]: every link checked, loops found, at most a directory's length).
    fn walk(&self, first: u32, path: &str) -> Result<Chain, Error> {
        Chain::directory(&self.geo, first, |c| self.fat_entry(c, path))
            .map_err(|f| self.fault(f, path))
    }

    /// Byte offset in the window of cluster `c` (2 to `max_cluster`).
    fn cluster_offset(&self, c: u32, path: &str) -> Result<u64, Error> {
        self.geo
            .cluster_offset(c)
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
        let chain = self.walk(first, path)?;
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
            if kind(node) != Kind::Dir {
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
        let chain = self.walk(first, path)?;
        // At most dir_cluster_limit() clusters: no overflow.
        Ok(chain.known * self.geo.cluster_bytes)
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
        while chain.chain.known < upto || (upto == chain.needed && !chain.checked_end) {
            let next = chain
                .chain
                .next(&self.geo, |c| self.fat_entry(c, path))
                .map_err(|f| self.fault(f, path))?;
            let Some(next) = next else {
                if chain.chain.known < chain.needed {
                    return Err(corrupt(format!(
                        "its {} bytes need {} clusters of {} bytes, but its cluster chain has {}",
                        chain.size, chain.needed, self.geo.cluster_bytes, chain.chain.known
                    )));
                }
                chain.checked_end = true;
                break;
            };
            if chain.chain.known == chain.needed {
                // A chain longer than the size: its extra clusters are not the file's.
                chain.checked_end = true;
                break;
            }
            chain.chain.push(next);
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
        let cluster_bytes = self.geo.cluster_bytes;
        let needed = size.div_ceil(cluster_bytes);
        let want = (size - offset).min(buf.len() as u64);
        // <= buf.len(), so it fits a usize.
        let want_usize = want as usize;
        let end = offset + want;

        let mut slot = self.last_file.borrow_mut();
        let chain = match slot.take() {
            Some(c) if c.first == first && c.size == size => slot.insert(c),
            _ => slot.insert(FileChain {
                first,
                size,
                needed,
                chain: Chain::start(&self.geo, first)
                    .map_err(|reason| self.corrupt(Some(path), reason))?,
                checked_end: false,
            }),
        };
        self.extend(chain, end.div_ceil(cluster_bytes), path)?;

        let short = || self.corrupt(Some(path), "the cluster chain ends early".to_owned());
        let mut pos = 0u64;
        for run in &chain.chain.runs {
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
                kind: kind(e.node),
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
    use crate::ondisk::fat::*;
    use crate::util::noise;
    use std::ffi::OsStr;
    use std::process::Command;

    const M: usize = 1 << 20;
    const EFI: &str = "/EFI/BOOT/BOOTX64.EFI";
    const LONG: &str = "/A Long File Name, with spaces.txt";
    /// Files in `/many`: enough long names to fill several clusters of directory entries.
    const MANY: usize = 60;

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
        assert!(fs.walk(cluster, "/big.bin").unwrap().runs.len() > 1);
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
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn reads_fat12() {
        let fx = build(12, 8192, &[]);
        check_tree(&open(&fx), &fx, "fat12");
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn reads_fat16_with_4096_byte_sectors() {
        let fx = build(16, 32768, &["-S", "4096", "-s", "1"]);
        let fs = open(&fx);
        assert_eq!(fs.geo.sector_bytes, 4096);
        check_tree(&fs, &fx, "fat16");
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn reads_fat32() {
        let fx = build(32, 65536, &[]);
        check_tree(&open(&fx), &fx, "fat32");
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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
        fs.walk(first, path).unwrap().clusters().collect()
    }

    /// `"{image}: {path}: corrupt FAT file system: "`, how corruption messages start.
    fn corrupt_at(fx: &Fixture, path: &str) -> String {
        format!("{}: {path}: corrupt FAT file system: ", fx.name())
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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

    /// A read costs the FAT lookups of the clusters it reads, however long the chain: a hostile
    /// chain through every cluster of the volume costs nothing to a read of the first bytes.
    /// And a file read piece by piece resolves its path once.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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
        use crate::layout::fat::{FatImage, FileSource, write_image};
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
        let volume = FatImage {
            size: 64 * M as u64,
            label: "ESP".into(),
            volume_id: 0x1234_abcd,
            hidden_sectors: 0,
            epoch: 1_709_213_863,
            files: inputs,
        }
        .layout(&img)
        .unwrap();
        write_image(&volume, &img);
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

    /// The long-name entries that precede `short` for `name`, stored last part first: the
    /// codec's encoder, which the writer uses too.
    fn long_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
        crate::ondisk::fat::encode_long_name(name, short).unwrap()
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
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
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
