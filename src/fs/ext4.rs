//! ext4 (and ext2/ext3) file systems, read-only, with the `ext4-view` crate.
//!
//! The file system lives in a window of a [`Disk`]: a bare file system image is the window
//! `0..size`, a partition of a GPT disk is the partition's byte range. Every read is checked
//! against the window, so a corrupt file system that points outside it gives an error, never a
//! read of the neighbouring partition or a panic.
//!
//! `ext4-view` reads `metadata_csum` and `64bit` file systems, hashed directories and symlinks,
//! and replays the journal in memory. It refuses some features (`inline_data`, `meta_bg`,
//! `large_dir`, `ea_inode`, `mmp`, …); [`Ext4::open`] names them as `e2fsprogs` does.
//!
//! Paths are resolved here, a component at a time, rather than by `ext4-view`, which reads a
//! symlink's target whole at whatever size its inode claims: a target over 4096 bytes
//! (`PATH_MAX`) is an error for the path that meets it, and at most 40 links are followed.

use crate::format::Disk;
use ext4_view::{Ext4Error, Ext4Read, FileType, Metadata};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The error type `ext4-view` expects from a reader.
type BoxedError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where the superblock starts in the file system.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes of the superblock read for the checks made before `ext4-view` loads it.
const SUPERBLOCK_LEN: usize = 1024;
/// Offset of `s_magic` in the superblock.
const MAGIC_OFFSET: usize = 0x38;
/// The ext2/3/4 magic.
const MAGIC: u16 = 0xef53;
/// Offset of `s_feature_incompat` in the superblock.
const INCOMPAT_OFFSET: usize = 0x60;
/// The `64bit` bit of `s_feature_incompat`.
const INCOMPAT_64BIT: u32 = 0x80;
/// Largest `s_log_block_size`: 64 KiB blocks.
const MAX_LOG_BLOCK_SIZE: u32 = 6;
/// Most symlinks followed in one lookup, as Linux (`ELOOP`).
const MAX_SYMLINKS: usize = 40;
/// Longest symlink target read (`PATH_MAX`); ext4-view would allocate a target of any size.
const MAX_LINK_TARGET: u64 = 4096;
/// Size of the buffer that [`Ext4::copy_to`] fills before each write.
const CHUNK: usize = 1 << 20;

/// An error about a file system inside an image; the message names the image and, when there is
/// one, the path inside the file system.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The window given to [`Ext4::open`] does not fit the source.
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
    /// There is no ext2/3/4 superblock in the window.
    #[error("{}: no ext4 file system at byte {offset}: {reason}", name.display())]
    NotExt4 {
        /// The image.
        name: PathBuf,
        /// Start of the window.
        offset: u64,
        /// Why, in one line.
        reason: String,
    },
    /// A valid file system that uses something `ext4-view` cannot read.
    #[error("{}{}: unsupported ext4 feature: {feature}", name.display(), at(path))]
    Unsupported {
        /// The image.
        name: PathBuf,
        /// The path being read, if any.
        path: Option<String>,
        /// The feature(s), named as `mke2fs -O` names them when possible.
        feature: String,
    },
    /// The file system's structures are inconsistent.
    #[error("{}{}: corrupt ext4 file system: {reason}", name.display(), at(path))]
    Corrupt {
        /// The image.
        name: PathBuf,
        /// The path being read, if any.
        path: Option<String>,
        /// What `ext4-view` found wrong.
        reason: String,
    },
    /// The image could not be read, or a read fell outside the file system's window.
    #[error("{}{}: cannot read the file system: {source}", name.display(), at(path))]
    Read {
        /// The image.
        name: PathBuf,
        /// The path being read, if any.
        path: Option<String>,
        /// The source's error.
        source: BoxedError,
    },
    /// The path does not exist in the file system.
    #[error("{}: {path}: no such file in the file system", name.display())]
    NotFound {
        /// The image.
        name: PathBuf,
        /// The path inside the file system.
        path: String,
    },
    /// The path exists but cannot be read as asked (a directory, a device, a symlink loop, …).
    #[error("{}: {path}: {reason}", name.display())]
    Invalid {
        /// The image.
        name: PathBuf,
        /// The path inside the file system.
        path: String,
        /// What is wrong, in one line.
        reason: String,
    },
    /// A pattern given to [`Ext4::resolve`] that is not supported.
    #[error("{}: invalid file pattern {pattern:?}: {reason}", name.display())]
    Pattern {
        /// The image.
        name: PathBuf,
        /// The pattern.
        pattern: String,
        /// What is wrong, in one line.
        reason: String,
    },
    /// No regular file matches the pattern.
    #[error("no file matches {pattern} in {}", name.display())]
    NoMatch {
        /// The image.
        name: PathBuf,
        /// The pattern.
        pattern: String,
    },
    /// Several regular files match the pattern.
    #[error(
        "{pattern} matches {} files in {}: {}",
        matches.len(),
        name.display(),
        matches.join(", ")
    )]
    Ambiguous {
        /// The image.
        name: PathBuf,
        /// The pattern.
        pattern: String,
        /// The matching paths, sorted.
        matches: Vec<String>,
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
    /// The copy's destination refused the bytes.
    #[error("{}: {path}: cannot write the copy: {source}", name.display())]
    Write {
        /// The image.
        name: PathBuf,
        /// The path inside the file system.
        path: String,
        /// The writer's error.
        source: std::io::Error,
    },
}

/// `": /path"` when there is a path, for messages.
fn at(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!(": {p}")).unwrap_or_default()
}

/// A read that `ext4-view` asked for outside the file system's window.
#[derive(Debug, thiserror::Error)]
#[error("a read of {count} bytes at byte {start} passes the end of the {len}-byte file system")]
struct OutsideWindow {
    start: u64,
    count: usize,
    len: u64,
}

/// The bytes `offset..offset + len` of a source, as `ext4-view` reads them.
struct Window {
    source: Arc<dyn Disk>,
    offset: u64,
    /// `offset + len <= source.size()`, checked when the window is made.
    len: u64,
}

impl Ext4Read for Window {
    fn read(&mut self, start: u64, dst: &mut [u8]) -> Result<(), BoxedError> {
        let count = dst.len();
        let inside = u64::try_from(count)
            .ok()
            .and_then(|n| start.checked_add(n))
            .is_some_and(|end| end <= self.len);
        if !inside {
            return Err(Box::new(OutsideWindow {
                start,
                count,
                len: self.len,
            }));
        }
        // No overflow: start + count <= len and offset + len <= the source's size.
        self.source
            .read_at(self.offset + start, dst)
            .map_err(|e| Box::new(e) as BoxedError)
    }
}

/// An ext4 file system opened read-only inside an image.
///
/// `ext4-view` shares its state through `Rc`, so an `Ext4` stays on the thread that opened it
/// (it is neither `Send` nor `Sync`).
#[derive(Debug)]
pub struct Ext4 {
    fs: ext4_view::Ext4,
    name: PathBuf,
    /// `s_feature_incompat`, to name refused features in messages.
    incompat: u32,
}

impl Ext4 {
    /// Opens the ext4 file system at bytes `offset..offset + len` of `source`; `name` stands for
    /// the image in messages.
    ///
    /// Reads the superblock, the block group descriptors and the journal (replayed in memory,
    /// never written back); file data is read only when asked for. A superblock whose group
    /// descriptors cannot fit in the window, or whose blocks are over 64 KiB, is refused as
    /// corrupt before `ext4-view` allocates anything from it.
    pub fn open(source: Arc<dyn Disk>, offset: u64, len: u64, name: &Path) -> Result<Ext4, Error> {
        let size = source.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange {
                name: name.to_owned(),
                offset,
                len,
                size,
            });
        }
        let not_ext4 = |reason: String| Error::NotExt4 {
            name: name.to_owned(),
            offset,
            reason,
        };
        if len < SUPERBLOCK_OFFSET + SUPERBLOCK_LEN as u64 {
            return Err(not_ext4(format!("{len} bytes cannot hold a superblock")));
        }
        let mut sb = [0u8; SUPERBLOCK_LEN];
        source
            .read_at(offset + SUPERBLOCK_OFFSET, &mut sb)
            .map_err(|e| Error::Read {
                name: name.to_owned(),
                path: None,
                source: Box::new(e),
            })?;
        let magic = u16::from_le_bytes([sb[MAGIC_OFFSET], sb[MAGIC_OFFSET + 1]]);
        if magic != MAGIC {
            return Err(not_ext4(format!(
                "the superblock magic is {magic:#06x}, not {MAGIC:#06x}"
            )));
        }
        let i = INCOMPAT_OFFSET;
        let incompat = u32::from_le_bytes([sb[i], sb[i + 1], sb[i + 2], sb[i + 3]]);
        check_geometry(&sb, incompat, len).map_err(|reason| Error::Corrupt {
            name: name.to_owned(),
            path: None,
            reason,
        })?;
        let window = Window {
            source,
            offset,
            len,
        };
        let fs = ext4_view::Ext4::load(Box::new(window))
            .map_err(|e| convert(name, incompat, None, e))?;
        Ok(Ext4 {
            fs,
            name: name.to_owned(),
            incompat,
        })
    }

    /// The name that stands for the image in messages.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// Finds the one regular file that `pattern` names.
    ///
    /// `pattern` is an absolute path whose last component may hold the glob characters `*` (any
    /// run of characters) and `?` (one character); like a shell, they do not match a leading
    /// `.` unless the pattern starts with one. Symlinks in the directory part are followed as
    /// the kernel would; a symlink matched by the last component counts when it leads to a
    /// regular file, and the path returned is the matched one, not its target. Directories,
    /// devices and dangling symlinks are not matches. Zero or several matches are errors, the
    /// latter listing the matches, sorted.
    pub fn resolve(&self, pattern: &str) -> Result<String, Error> {
        let bad = |reason: &str| Error::Pattern {
            name: self.name.clone(),
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        let no_match = || Error::NoMatch {
            name: self.name.clone(),
            pattern: pattern.to_owned(),
        };
        let Some((dir, last)) = pattern
            .strip_prefix('/')
            .and_then(|_| pattern.rsplit_once('/'))
        else {
            return Err(bad("not an absolute path"));
        };
        if last.is_empty() {
            return Err(bad("ends with /: a file name must follow"));
        }
        if FILE_NAME.is_pattern(dir) {
            return Err(bad(
                "glob characters (* ?) are supported in the last component only",
            ));
        }
        if !FILE_NAME.is_pattern(last) {
            let found = self.lookup(pattern, true).map_err(|e| match e {
                Lookup::Fs(Ext4Error::NotFound) => no_match(),
                e => self.convert_lookup(pattern, e),
            })?;
            self.require_regular(pattern, &found.meta)?;
            return Ok(pattern.to_owned());
        }
        let dir_path = if dir.is_empty() { "/" } else { dir };
        let entries = self
            .lookup(dir_path, true)
            .and_then(|found| Ok(self.fs.read_dir(found.path.as_slice())?))
            .map_err(|e| match e {
                Lookup::Fs(Ext4Error::NotFound) => no_match(),
                e => self.convert_lookup(dir_path, e),
            })?;
        let mut matches = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.convert(dir_path, e))?;
            // A name that is not UTF-8 cannot be returned as a String: it is not a match.
            let Ok(file) = entry.file_name().as_str() else {
                continue;
            };
            if file == "." || file == ".." || !crate::glob::matches(FILE_NAME, last, file) {
                continue;
            }
            let path = format!("{dir}/{file}");
            let file_type = entry.file_type().map_err(|e| self.convert(&path, e))?;
            let regular = if file_type.is_symlink() {
                match self.lookup(&path, true) {
                    Ok(found) => found.meta.file_type().is_regular_file(),
                    // Dangling, looping or through a non-directory: leads to no file.
                    Err(Lookup::Fs(
                        Ext4Error::NotFound | Ext4Error::NotADirectory | Ext4Error::TooManySymlinks,
                    )) => false,
                    Err(e) => return Err(self.convert_lookup(&path, e)),
                }
            } else {
                file_type.is_regular_file()
            };
            if regular {
                matches.push(path);
            }
        }
        matches.sort();
        match matches.len() {
            0 => Err(no_match()),
            1 => Ok(matches.swap_remove(0)),
            _ => Err(Error::Ambiguous {
                name: self.name.clone(),
                pattern: pattern.to_owned(),
                matches,
            }),
        }
    }

    /// The size in bytes of the regular file at `path` (symlinks are followed).
    pub fn len(&self, path: &str) -> Result<u64, Error> {
        let meta = self.found(path, true)?.meta;
        self.require_regular(path, &meta)?;
        Ok(meta.len())
    }

    /// Writes the bytes of the regular file at `path` (symlinks are followed) to `out`, a
    /// megabyte at a time, and returns how many were written.
    pub fn copy_to(&self, path: &str, out: &mut dyn Write) -> Result<u64, Error> {
        let mut file = self.open_file(path)?;
        self.stream(path, &mut file, out)
    }

    /// Reads the whole regular file at `path` (symlinks are followed), refusing a file larger
    /// than `max` bytes before reading any of it.
    pub fn read_to_vec(&self, path: &str, max: u64) -> Result<Vec<u8>, Error> {
        let mut file = self.open_file(path)?;
        let size = file.metadata().len();
        let too_large = || Error::TooLarge {
            name: self.name.clone(),
            path: path.to_owned(),
            size,
            max,
        };
        if size > max {
            return Err(too_large());
        }
        let mut out = Vec::with_capacity(usize::try_from(size).map_err(|_| too_large())?);
        self.stream(path, &mut file, &mut out)?;
        Ok(out)
    }

    fn open_file(&self, path: &str) -> Result<ext4_view::File, Error> {
        let found = self.found(path, true)?;
        self.fs
            .open(found.path.as_slice())
            .map_err(|e| self.convert(path, e))
    }

    /// Looks `path` up as the kernel would, in mkomi rather than in `ext4-view`, whose lookups
    /// read every symlink target on the way whole, whatever its size: here each step asks
    /// `ext4-view` about a path that has no symlink, `.` or `..` left (so that it follows
    /// nothing), a symlink's size is checked before its target is read, and at most
    /// [`MAX_SYMLINKS`] are followed. A final symlink is followed when `follow_last` is set.
    fn lookup(&self, path: &str, follow_last: bool) -> Result<Found, Lookup> {
        if !path.starts_with('/') {
            return Err(Ext4Error::NotAbsolute.into());
        }
        // The components still to walk, the next one last.
        let mut todo = components(path.as_bytes());
        // Where the walk is: the components from the root, and the metadata of each directory
        // on the way (the root's first), of the file reached last.
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut metas = vec![self.fs.symlink_metadata("/")?];
        let mut links = 0;
        while let Some(name) = todo.pop() {
            // Never empty: it starts with the root's and `..` keeps the root's.
            let here = &metas[metas.len() - 1];
            if !here.is_dir() {
                return Err(Ext4Error::NotADirectory.into());
            }
            match name.as_slice() {
                b"." => continue,
                b".." => {
                    if !names.is_empty() {
                        names.pop();
                        metas.pop();
                    }
                    continue;
                }
                _ => {}
            }
            names.push(name);
            let next = joined(&names);
            let meta = self.fs.symlink_metadata(next.as_slice())?;
            if !meta.is_symlink() || (todo.is_empty() && !follow_last) {
                metas.push(meta);
                continue;
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(Ext4Error::TooManySymlinks.into());
            }
            let target = self.link_target(&next, &meta)?;
            names.pop();
            if target.starts_with(b"/") {
                names.clear();
                metas.truncate(1);
            }
            todo.extend(components(&target));
        }
        Ok(Found {
            path: joined(&names),
            // Never empty, as above.
            meta: metas.swap_remove(metas.len() - 1),
        })
    }

    /// The target of the symlink at `path` (which has no symlink on the way), `meta` its
    /// metadata; one longer than [`MAX_LINK_TARGET`] is refused before anything is allocated.
    fn link_target(&self, path: &[u8], meta: &Metadata) -> Result<Vec<u8>, Lookup> {
        if meta.len() > MAX_LINK_TARGET {
            return Err(Lookup::LinkTooLong {
                link: String::from_utf8_lossy(path).into_owned(),
                size: meta.len(),
            });
        }
        Ok(self.fs.read_link(path)?.as_ref().to_vec())
    }

    /// [`Ext4::lookup`], its error converted for `path`.
    fn found(&self, path: &str, follow_last: bool) -> Result<Found, Error> {
        self.lookup(path, follow_last)
            .map_err(|e| self.convert_lookup(path, e))
    }

    fn convert_lookup(&self, path: &str, e: Lookup) -> Error {
        match e {
            Lookup::Fs(e) => self.convert(path, e),
            Lookup::LinkTooLong { link, size } => Error::Invalid {
                name: self.name.clone(),
                path: path.to_owned(),
                reason: format!(
                    "symlink target too long: {link} is a symlink of {size} bytes, \
                     more than {MAX_LINK_TARGET}"
                ),
            },
        }
    }

    fn stream(
        &self,
        path: &str,
        file: &mut ext4_view::File,
        out: &mut dyn Write,
    ) -> Result<u64, Error> {
        let size = file.metadata().len();
        let buf_len = usize::try_from(size).map_or(CHUNK, |s| s.clamp(1, CHUNK));
        let mut buf = vec![0u8; buf_len];
        let mut total = 0u64;
        loop {
            let filled = self.fill(path, file, &mut buf)?;
            if filled == 0 {
                return Ok(total);
            }
            out.write_all(&buf[..filled])
                .map_err(|source| Error::Write {
                    name: self.name.clone(),
                    path: path.to_owned(),
                    source,
                })?;
            total += filled as u64;
        }
    }

    /// Reads from `file` until `buf` is full or the file ends; returns the bytes read.
    /// `read_bytes` stops at block boundaries, so one call seldom fills a buffer.
    fn fill(&self, path: &str, file: &mut ext4_view::File, buf: &mut [u8]) -> Result<usize, Error> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file
                .read_bytes(&mut buf[filled..])
                .map_err(|e| self.convert(path, e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(filled)
    }

    fn require_regular(&self, path: &str, meta: &Metadata) -> Result<(), Error> {
        let file_type = meta.file_type();
        if file_type.is_regular_file() {
            return Ok(());
        }
        Err(Error::Invalid {
            name: self.name.clone(),
            path: path.to_owned(),
            reason: format!("is {}, not a regular file", describe(file_type)),
        })
    }

    fn convert(&self, path: &str, e: Ext4Error) -> Error {
        convert(&self.name, self.incompat, Some(path), e)
    }
}

impl Error {
    /// Whether the error says that a path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. } | Error::NoMatch { .. })
    }
}

fn kind_of(file_type: FileType) -> super::Kind {
    if file_type.is_regular_file() {
        super::Kind::File
    } else if file_type.is_dir() {
        super::Kind::Dir
    } else if file_type.is_symlink() {
        super::Kind::Symlink
    } else {
        super::Kind::Other
    }
}

fn meta_of(meta: &Metadata) -> super::Meta {
    super::Meta {
        kind: kind_of(meta.file_type()),
        len: meta.len(),
        mode: u32::from(meta.mode()) & 0o7777,
        uid: meta.uid(),
    }
}

impl super::FileSystem for Ext4 {
    fn name(&self) -> &Path {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "ext4"
    }

    fn read_dir(&self, path: &str, max: usize) -> Result<Vec<super::Entry>, super::Error> {
        let found = self.found(path, true)?;
        let entries = self
            .fs
            .read_dir(found.path.as_slice())
            .map_err(|e| self.convert(path, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.convert(path, e))?;
            let name = String::from_utf8_lossy(entry.file_name().as_ref()).into_owned();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() == max {
                return Err(Error::Invalid {
                    name: self.name.clone(),
                    path: path.to_owned(),
                    reason: format!("a directory of more than {max} entries"),
                }
                .into());
            }
            let kind = kind_of(entry.file_type().map_err(|e| self.convert(path, e))?);
            out.push(super::Entry { name, kind });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn metadata(&self, path: &str) -> Result<super::Meta, super::Error> {
        Ok(meta_of(&self.found(path, true)?.meta))
    }

    fn symlink_metadata(&self, path: &str) -> Result<super::Meta, super::Error> {
        Ok(meta_of(&self.found(path, false)?.meta))
    }

    fn read_link(&self, path: &str) -> Result<String, super::Error> {
        let found = self.found(path, false)?;
        if !found.meta.is_symlink() {
            return Err(self.convert(path, Ext4Error::NotASymlink).into());
        }
        let target = self
            .link_target(&found.path, &found.meta)
            .map_err(|e| self.convert_lookup(path, e))?;
        Ok(String::from_utf8_lossy(&target).into_owned())
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, super::Error> {
        let mut file = self.open_file(path)?;
        if offset >= file.metadata().len() {
            return Ok(0);
        }
        // Not `File::seek_to`: ext4-view 1.0 skips blocks there ignoring their errors, which
        // leaves its block iterator ended, and the next `read_bytes` panics on a corrupt file
        // (found by fuzzing). Reading up to `offset` reports the error instead. The offsets
        // asked for are small (headers of binaries), so the bytes read past cost little.
        let mut skip = vec![0u8; usize::try_from(offset).map_or(CHUNK, |o| o.clamp(1, CHUNK))];
        let mut at = 0u64;
        while at < offset {
            let want = usize::try_from(offset - at).map_or(skip.len(), |n| n.min(skip.len()));
            let n = self.fill(path, &mut file, &mut skip[..want])?;
            if n == 0 {
                return Ok(0);
            }
            at += n as u64;
        }
        Ok(self.fill(path, &mut file, buf)?)
    }

    fn read_to_vec(&self, path: &str, max: u64) -> Result<Vec<u8>, super::Error> {
        Ok(Ext4::read_to_vec(self, path, max)?)
    }
}

/// Refuses a superblock whose counts would make `ext4-view` allocate more than the file system
/// could hold: it sizes its block cache from the block size and its table of block group
/// descriptors from the group count before reading anything else, so a few corrupt bytes could
/// ask for gigabytes. `len` is the window's length; the reason is for [`Error::Corrupt`].
fn check_geometry(sb: &[u8; SUPERBLOCK_LEN], incompat: u32, len: u64) -> Result<(), String> {
    let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    // ext4 blocks are 1 KiB to 64 KiB (the kernel's EXT4_MAX_BLOCK_LOG_SIZE); ext4-view accepts
    // up to 2 GiB and caches nine blocks of that size.
    let log_block_size = le32(0x18);
    if log_block_size > MAX_LOG_BLOCK_SIZE {
        return Err(format!(
            "s_log_block_size {log_block_size} makes blocks of 2^{} bytes, more than 64 KiB",
            u64::from(log_block_size) + 10
        ));
    }
    let block_size = 1024u64 << log_block_size;
    // The group count as ext4-view computes it: it adds the high word of the block count even
    // without the 64bit feature.
    let blocks = u64::from(le32(0x04)) | u64::from(le32(0x150)) << 32;
    let per_group = u64::from(le32(0x20)).max(1);
    let groups = blocks
        .saturating_sub(u64::from(le32(0x14)))
        .div_ceil(per_group);
    let desc_size = if incompat & INCOMPAT_64BIT != 0 {
        u64::from(u16::from_le_bytes([sb[0xfe], sb[0xff]])).max(64)
    } else {
        32
    };
    // The table starts in the block after the superblock's.
    let start = if block_size == 1024 { 2048 } else { block_size };
    let end = groups.saturating_mul(desc_size).saturating_add(start);
    if end > len {
        return Err(format!(
            "{groups} block groups need {} bytes of group descriptors, \
             more than the {len}-byte file system holds",
            groups.saturating_mul(desc_size)
        ));
    }
    Ok(())
}

/// A path looked up by [`Ext4::lookup`].
struct Found {
    /// The same file named without symlinks, `.` or `..`: `ext4-view` follows nothing on it.
    path: Vec<u8>,
    /// Its metadata (of the symlink itself when a final one was not followed).
    meta: Metadata,
}

/// Why [`Ext4::lookup`] failed.
enum Lookup {
    /// `ext4-view`'s error.
    Fs(Ext4Error),
    /// A symlink on the way has a target longer than [`MAX_LINK_TARGET`]: the symlink, and the
    /// target's size.
    LinkTooLong { link: String, size: u64 },
}

impl From<Ext4Error> for Lookup {
    fn from(e: Ext4Error) -> Lookup {
        Lookup::Fs(e)
    }
}

/// The components of a path, the last first (a stack to pop); a trailing `/` counts as a final
/// `.`, so that what precedes it must be a directory and a symlink there is followed, as the
/// kernel does.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if path.len() > 1 && path.ends_with(b"/") && !out.is_empty() {
        out.push(b".".to_vec());
    }
    out.reverse();
    out
}

/// The absolute path of `names` from the root.
fn joined(names: &[Vec<u8>]) -> Vec<u8> {
    if names.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::new();
    for name in names {
        out.push(b'/');
        out.extend_from_slice(name);
    }
    out
}

/// The globs of [`Ext4::resolve`]: `*` and `?`, hidden files matched only by a leading `.`.
const FILE_NAME: crate::glob::Syntax = crate::glob::Syntax::FileName;

fn describe(file_type: FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_block_dev() || file_type.is_char_dev() {
        "a device"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// `s_feature_incompat` bits as `mke2fs -O` names them, and whether ext4-view 1.0 reads them.
const INCOMPAT_FEATURES: &[(u32, &str, bool)] = &[
    (0x1, "compression", false),
    (0x2, "filetype", true),
    (0x4, "needs_recovery", true),
    (0x8, "journal_dev", false),
    (0x10, "meta_bg", false),
    (0x40, "extent", true),
    (0x80, "64bit", true),
    (0x100, "mmp", false),
    (0x200, "flex_bg", true),
    (0x400, "ea_inode", false),
    (0x1000, "dirdata", false),
    (0x2000, "metadata_csum_seed", true),
    (0x4000, "large_dir", false),
    (0x8000, "inline_data", false),
    (0x10000, "encrypt", true),
    (0x20000, "casefold", false),
    (0x40000, "fname_encoding", false),
];

/// The incompatible features of `incompat` that ext4-view refuses, by their `mke2fs` names;
/// empty if none is known to be refused.
fn refused_features(incompat: u32) -> String {
    let mut names = Vec::new();
    let mut known = 0;
    for &(bit, name, readable) in INCOMPAT_FEATURES {
        known |= bit;
        if incompat & bit != 0 && !readable {
            names.push(name.to_owned());
        }
    }
    let unknown = incompat & !known;
    if unknown != 0 {
        names.push(format!("unknown incompat bits {unknown:#x}"));
    }
    if incompat & 0x2 == 0 {
        names.push("filetype is missing".to_owned());
    }
    names.join(", ")
}

fn convert(name: &Path, incompat: u32, path: Option<&str>, e: Ext4Error) -> Error {
    let name = name.to_owned();
    let owned_path = path.map(str::to_owned);
    let invalid = |reason: &str| match path {
        Some(p) => Error::Invalid {
            name: name.clone(),
            path: p.to_owned(),
            reason: reason.to_owned(),
        },
        None => Error::Corrupt {
            name: name.clone(),
            path: None,
            reason: reason.to_owned(),
        },
    };
    match e {
        Ext4Error::Io(source) => Error::Read {
            name,
            path: owned_path,
            source,
        },
        Ext4Error::Incompatible(i) => {
            let detail = i.to_string();
            let named = refused_features(incompat);
            let feature = if !named.is_empty()
                && (detail.starts_with("unsupported features")
                    || detail.starts_with("missing required features"))
            {
                named
            } else {
                detail
            };
            Error::Unsupported {
                name,
                path: owned_path,
                feature,
            }
        }
        Ext4Error::Encrypted => Error::Unsupported {
            name,
            path: owned_path,
            feature: "encrypt (the file is encrypted)".to_owned(),
        },
        Ext4Error::Corrupt(c) => Error::Corrupt {
            name,
            path: owned_path,
            reason: c.to_string(),
        },
        Ext4Error::NotFound => match path {
            Some(p) => Error::NotFound {
                name,
                path: p.to_owned(),
            },
            None => invalid("file not found"),
        },
        Ext4Error::NotAbsolute => invalid("not an absolute path"),
        Ext4Error::IsADirectory => invalid("is a directory, not a regular file"),
        Ext4Error::NotADirectory => invalid("a component of the path is not a directory"),
        Ext4Error::IsASpecialFile => invalid("is a special file, not a regular file"),
        Ext4Error::TooManySymlinks => invalid("too many levels of symbolic links"),
        Ext4Error::MalformedPath => invalid("not a valid path (NUL byte?)"),
        Ext4Error::PathTooLong => invalid("path too long (over 4096 bytes once resolved)"),
        other => invalid(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{self, OpenOptions};
    use crate::util::noise;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    const M: u64 = 1 << 20;
    const KERNEL: &str = "/boot/vmlinuz-6.1.0-28-cloud-amd64";
    const INITRD: &str = "/boot/initrd.img-6.1.0-28-cloud-amd64";
    const EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    const OS_RELEASE: &[u8] = b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";

    struct Fixture {
        dir: tempfile::TempDir,
        image: PathBuf,
        kernel: Vec<u8>,
        initrd: Vec<u8>,
        efi: Vec<u8>,
    }

    /// A 64 MiB ext4 image built by `mkfs.ext4 -d` from a small Debian-like tree, with `extra`
    /// files (absolute paths) and extra `mkfs.ext4` arguments.
    fn build(extra: &[(&str, &[u8])], mkfs_args: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let put = |path: &str, data: &[u8]| {
            let p = tree.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        let kernel = noise(3 * M as usize + 17, 1);
        let initrd = noise(5 * M as usize + 4093, 2);
        let efi = noise(100_000, 3);
        put(KERNEL, &kernel);
        put(INITRD, &initrd);
        put(EFI, &efi);
        put("/etc/os-release", OS_RELEASE);
        for (path, data) in extra {
            put(path, data);
        }
        symlink("boot/vmlinuz-6.1.0-28-cloud-amd64", tree.join("vmlinuz")).unwrap();
        symlink("boot/nowhere", tree.join("dangling")).unwrap();
        let image = dir.path().join("root.ext4");
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root"])
            .args(mkfs_args)
            .arg("-d")
            .arg(&tree)
            .arg(&image)
            .arg("64M")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Fixture {
            dir,
            image,
            kernel,
            initrd,
            efi,
        }
    }

    fn open_at(image: &Path, offset: u64, len: Option<u64>) -> Result<Ext4, Error> {
        let src = format::open_path(image, &OpenOptions::default()).unwrap();
        let len = len.unwrap_or(src.size() - offset);
        Ext4::open(src, offset, len, Path::new("root.ext4"))
    }

    fn copy(fs: &Ext4, path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let n = fs.copy_to(path, &mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    fn check_tree(fs: &Ext4, fx: &Fixture) {
        assert_eq!(fs.resolve("/boot/vmlinuz-*").unwrap(), KERNEL);
        assert_eq!(
            fs.resolve("/boot/initrd.img-*-cloud-amd64").unwrap(),
            INITRD
        );
        assert_eq!(fs.resolve(KERNEL).unwrap(), KERNEL);
        assert_eq!(fs.resolve("/vmlinuz").unwrap(), "/vmlinuz");
        assert_eq!(fs.resolve("/vmlinu?").unwrap(), "/vmlinuz");
        assert_eq!(fs.resolve("/usr/lib/systemd/boot/efi/*.efi").unwrap(), EFI);
        assert_eq!(fs.len(KERNEL).unwrap(), fx.kernel.len() as u64);
        assert_eq!(fs.len("/vmlinuz").unwrap(), fx.kernel.len() as u64);
        assert!(copy(fs, KERNEL) == fx.kernel);
        assert!(copy(fs, "/vmlinuz") == fx.kernel);
        assert!(copy(fs, INITRD) == fx.initrd);
        assert!(copy(fs, EFI) == fx.efi);
        assert_eq!(fs.read_to_vec("/etc/os-release", 4096).unwrap(), OS_RELEASE);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn reads_a_bare_raw_image() {
        let fx = build(&[], &[]);
        let fs = open_at(&fx.image, 0, None).unwrap();
        check_tree(&fs, &fx);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn reads_a_file_system_inside_a_larger_disk() {
        let fx = build(&[], &["-b", "4096"]);
        let fs_bytes = std::fs::read(&fx.image).unwrap();
        let disk = fx.dir.path().join("disk.raw");
        // Non-zero bytes around the file system: a read that strays shows up.
        let mut bytes = vec![0x5a; M as usize];
        bytes.extend_from_slice(&fs_bytes);
        bytes.extend(vec![0xa5; 3 * M as usize]);
        std::fs::write(&disk, &bytes).unwrap();
        let len = fs_bytes.len() as u64;
        let fs = open_at(&disk, M, Some(len)).unwrap();
        check_tree(&fs, &fx);

        let e = open_at(&disk, M, Some(len + 4 * M)).unwrap_err();
        assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
        let e = open_at(&disk, 0, None).unwrap_err().to_string();
        assert_eq!(
            e,
            "root.ext4: no ext4 file system at byte 0: the superblock magic is 0x5a5a, not 0xef53"
        );
        let e = open_at(&disk, M, Some(2047)).unwrap_err().to_string();
        assert!(e.contains("2047 bytes cannot hold a superblock"), "{e}");
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn reads_through_qcow2() {
        let fx = build(&[], &[]);
        let qcow2 = fx.dir.path().join("root.qcow2");
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
        let fs = open_at(&qcow2, 0, None).unwrap();
        check_tree(&fs, &fx);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn resolve_errors_are_one_line_and_name_the_image() {
        let fx = build(&[], &[]);
        let fs = open_at(&fx.image, 0, None).unwrap();
        let err = |p: &str| fs.resolve(p).unwrap_err().to_string();
        assert_eq!(
            err("/boot/vmlinuz-5.*"),
            "no file matches /boot/vmlinuz-5.* in root.ext4"
        );
        assert_eq!(
            err("/boot/nothing"),
            "no file matches /boot/nothing in root.ext4"
        );
        assert_eq!(err("/nodir/x*"), "no file matches /nodir/x* in root.ext4");
        // A dangling symlink and a directory are not matches.
        assert_eq!(err("/dangl*"), "no file matches /dangl* in root.ext4");
        assert_eq!(err("/bo*"), "no file matches /bo* in root.ext4");
        assert_eq!(
            err("boot/vmlinuz-*"),
            "root.ext4: invalid file pattern \"boot/vmlinuz-*\": not an absolute path"
        );
        assert!(err("/b*/vmlinuz").contains("in the last component only"));
        assert!(err("/boot/").contains("a file name must follow"));
        assert_eq!(
            err("/boot/vmlinuz-6.1.0-28-cloud-amd64/x"),
            "root.ext4: /boot/vmlinuz-6.1.0-28-cloud-amd64/x: \
             a component of the path is not a directory"
        );
        assert_eq!(
            err("/usr/lib"),
            "root.ext4: /usr/lib: is a directory, not a regular file"
        );
        // The two files of /boot built for the same kernel.
        assert_eq!(
            err("/boot/*-6.1.0-28-cloud-amd64"),
            format!(
                "/boot/*-6.1.0-28-cloud-amd64 matches 2 files in root.ext4: {INITRD}, {KERNEL}"
            )
        );

        let e = fs.len("/etc/missing").unwrap_err().to_string();
        assert_eq!(
            e,
            "root.ext4: /etc/missing: no such file in the file system"
        );
        let e = fs
            .copy_to("/boot", &mut std::io::sink())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "root.ext4: /boot: is a directory, not a regular file");
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn several_matches_are_listed_sorted() {
        let older = b"old kernel".as_slice();
        let fx = build(&[("/boot/vmlinuz-6.1.0-27-cloud-amd64", older)], &[]);
        let fs = open_at(&fx.image, 0, None).unwrap();
        let e = fs.resolve("/boot/vmlinuz-*").unwrap_err();
        match &e {
            Error::Ambiguous { matches, .. } => assert_eq!(
                matches,
                &[
                    "/boot/vmlinuz-6.1.0-27-cloud-amd64".to_owned(),
                    KERNEL.to_owned()
                ]
            ),
            other => panic!("{other}"),
        }
        assert_eq!(
            e.to_string(),
            "/boot/vmlinuz-* matches 2 files in root.ext4: \
             /boot/vmlinuz-6.1.0-27-cloud-amd64, /boot/vmlinuz-6.1.0-28-cloud-amd64"
        );
        assert_eq!(fs.resolve("/boot/vmlinuz-*-28-*").unwrap(), KERNEL);
        assert_eq!(
            fs.read_to_vec("/boot/vmlinuz-6.1.0-27-cloud-amd64", 10)
                .unwrap(),
            older
        );
    }

    /// Runs `debugfs -w` commands on an image.
    fn debugfs(image: &Path, commands: &str) {
        let out = Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg("-")
            .arg(image)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(commands.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn symlinks_are_followed_within_bounds() {
        use crate::fs::{FileSystem, Kind};
        let fx = build(&[], &[]);
        // A slow symlink (its target over 60 bytes, in a block) to the kernel, and a copy of it
        // whose size says 5,000 bytes (ext4-view read e2fsprogs' f_badsymlinks' 4 GiB one
        // whole); a link to a directory; a loop; a chain of 41 links to os-release.
        let slow = format!("{}boot/vmlinuz-6.1.0-28-cloud-amd64", "./".repeat(20));
        let mut cmds = format!("symlink /slow {slow}\nsymlink /huge {slow}\n");
        cmds += "sif /huge size 5000\nsymlink /lib usr/lib\nsymlink /loop loop\n";
        cmds += "symlink /c1 etc/os-release\n";
        for i in 2..=41 {
            cmds += &format!("symlink /c{i} c{}\n", i - 1);
        }
        debugfs(&fx.image, &cmds);
        let fs = open_at(&fx.image, 0, None).unwrap();
        fn err<T>(r: Result<T, crate::fs::Error>) -> String {
            r.map(|_| ()).unwrap_err().to_string()
        }

        assert_eq!(
            FileSystem::metadata(&fs, "/slow").unwrap().len,
            fx.kernel.len() as u64
        );
        assert!(copy(&fs, "/slow") == fx.kernel);
        let too_long = |path: &str| {
            format!(
                "root.ext4: {path}: symlink target too long: \
                 /huge is a symlink of 5000 bytes, more than 4096"
            )
        };
        assert_eq!(err(FileSystem::metadata(&fs, "/huge")), too_long("/huge"));
        assert_eq!(err(fs.read_link("/huge")), too_long("/huge"));
        assert_eq!(
            err(FileSystem::read_to_vec(&fs, "/huge", 10)),
            too_long("/huge")
        );
        assert_eq!(err(fs.read_dir("/huge/x", 10)), too_long("/huge/x"));
        assert_eq!(
            fs.resolve("/hug*").unwrap_err().to_string(),
            too_long("/huge")
        );
        let meta = fs.symlink_metadata("/huge").unwrap();
        assert_eq!((meta.kind, meta.len), (Kind::Symlink, 5000));

        // `..` after a symlink to a directory is the target's parent, as in the kernel.
        assert_eq!(fs.read_link("/lib").unwrap(), "usr/lib");
        let efi = "/lib/systemd/boot/efi/systemd-bootx64.efi";
        assert!(FileSystem::read_to_vec(&fs, efi, u64::MAX).unwrap() == fx.efi);
        let os = FileSystem::read_to_vec(&fs, "/lib/../../etc/./os-release", 4096).unwrap();
        assert_eq!(os, OS_RELEASE);
        assert_eq!(FileSystem::metadata(&fs, "/lib/").unwrap().kind, Kind::Dir);
        assert_eq!(fs.symlink_metadata("/lib/").unwrap().kind, Kind::Dir);
        assert_eq!(fs.symlink_metadata("/lib").unwrap().kind, Kind::Symlink);
        assert_eq!(
            err(FileSystem::metadata(&fs, "/vmlinuz/")),
            "root.ext4: /vmlinuz/: a component of the path is not a directory"
        );
        assert_eq!(
            err(fs.read_link(KERNEL)),
            format!("root.ext4: {KERNEL}: path is not a symlink")
        );

        // Forty links are followed, not forty-one.
        assert_eq!(
            FileSystem::read_to_vec(&fs, "/c40", 4096).unwrap(),
            OS_RELEASE
        );
        let loop_error =
            |path: &str| format!("root.ext4: {path}: too many levels of symbolic links");
        assert_eq!(
            err(FileSystem::read_to_vec(&fs, "/c41", 4096)),
            loop_error("/c41")
        );
        assert_eq!(err(FileSystem::metadata(&fs, "/loop")), loop_error("/loop"));
        assert_eq!(fs.read_link("/loop").unwrap(), "loop");
        assert_eq!(
            fs.resolve("/loo*").unwrap_err().to_string(),
            "no file matches /loo* in root.ext4"
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn read_to_vec_refuses_files_over_max() {
        let fx = build(&[], &[]);
        let fs = open_at(&fx.image, 0, None).unwrap();
        let size = fx.kernel.len() as u64;
        let e = fs.read_to_vec("/vmlinuz", size - 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "root.ext4: /vmlinuz: {size} bytes, more than the {} allowed",
                size - 1
            )
        );
        assert!(fs.read_to_vec("/vmlinuz", size).unwrap() == fx.kernel);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn corrupted_superblock_is_a_clean_error() {
        let fx = build(&[], &[]);
        let mut bytes = std::fs::read(&fx.image).unwrap();
        bytes[1024 + 56] ^= 0xff;
        std::fs::write(&fx.image, &bytes).unwrap();
        let e = open_at(&fx.image, 0, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "root.ext4: no ext4 file system at byte 0: the superblock magic is 0xefac, not 0xef53"
        );

        // A valid magic but a broken checksum: ext4-view's own refusal.
        bytes[1024 + 56] ^= 0xff;
        bytes[1024 + 0x78] ^= 0xff; // the volume name
        std::fs::write(&fx.image, &bytes).unwrap();
        let e = open_at(&fx.image, 0, None).unwrap_err().to_string();
        assert_eq!(
            e,
            "root.ext4: corrupt ext4 file system: invalid superblock checksum"
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn counts_beyond_the_volume_are_refused_before_allocating() {
        let fx = build(&[], &[]);
        let good = std::fs::read(&fx.image).unwrap();
        let len = good.len() as u64;
        let sb = 1024;
        let patched = |at: usize, value: u32| {
            let mut bytes = good.clone();
            bytes[sb + at..sb + at + 4].copy_from_slice(&value.to_le_bytes());
            std::fs::write(&fx.image, &bytes).unwrap();
            open_at(&fx.image, 0, None).unwrap_err().to_string()
        };
        // s_blocks_count_hi: 2^40 more blocks, a descriptor table of gigabytes (ext4-view asked
        // for it whole before reading it).
        let e = patched(0x150, 0x100);
        assert!(
            e.starts_with("root.ext4: corrupt ext4 file system: ")
                && e.contains("bytes of group descriptors, more than the ")
                && e.ends_with(&format!("{len}-byte file system holds")),
            "{e}"
        );
        // s_log_block_size 21: 2 GiB blocks, of which ext4-view cached nine.
        let e = patched(0x18, 21);
        assert_eq!(
            e,
            "root.ext4: corrupt ext4 file system: \
             s_log_block_size 21 makes blocks of 2^31 bytes, more than 64 KiB"
        );
        // The volume cut short of its own descriptor table.
        std::fs::write(&fx.image, &good).unwrap();
        let e = open_at(&fx.image, 0, Some(2048)).unwrap_err().to_string();
        assert!(e.contains("bytes of group descriptors"), "{e}");
        assert!(open_at(&fx.image, 0, None).is_ok());
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn refused_features_are_named() {
        let fx = build(&[], &["-O", "inline_data"]);
        let e = open_at(&fx.image, 0, None).unwrap_err().to_string();
        assert_eq!(e, "root.ext4: unsupported ext4 feature: inline_data");
        let fx = build(&[], &["-O", "meta_bg,^resize_inode"]);
        let e = open_at(&fx.image, 0, None).unwrap_err().to_string();
        assert_eq!(e, "root.ext4: unsupported ext4 feature: meta_bg");
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn reads_outside_the_window_are_errors() {
        let fx = build(&[], &[]);
        let src = format::open_path(&fx.image, &OpenOptions::default()).unwrap();
        let mut w = Window {
            source: src,
            offset: M,
            len: 4096,
        };
        let mut buf = [0u8; 16];
        assert!(w.read(4080, &mut buf).is_ok());
        let e = w.read(4081, &mut buf).unwrap_err().to_string();
        assert_eq!(
            e,
            "a read of 16 bytes at byte 4081 passes the end of the 4096-byte file system"
        );
        assert!(w.read(u64::MAX - 3, &mut buf).is_err());
    }
}
