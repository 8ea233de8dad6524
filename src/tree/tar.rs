//! Reading a tar stream into a [`Tree`], without extracting anything to the host.
//!
//! The archive is read once, front to back, through a decompressor chosen by the stream's first
//! bytes (gzip, zstd, xz, or none). Headers are parsed here rather than with the `tar` crate:
//! the crate has no PAX sparse formats (what `tar -S --format=pax` writes), and the reader has
//! to own the few things that make hostile archives safe (bounded extended headers, refused
//! `..` and absolute names, refused writes through symlinks). The formats read are POSIX
//! ustar and pax (IEEE Std 1003.1-2017, `pax`, "ustar Interchange Format" and "pax Header
//! Block"), GNU's long names (`L`, `K`), its old sparse members (`S`) and the PAX sparse
//! formats 0.1 and 1.0 (GNU tar manual, "Storing Sparse Files"; tar's src/sparse.c names the
//! keys), and the base-256 numbers GNU writes for large values.
//!
//! File data goes to one spool file, written sequentially: every member's bytes at the next
//! offset (4 KiB-aligned for members of 4 KiB or more, so that their blocks line up with the
//! file system's), all-zero aligned 4 KiB blocks skipped rather than written, so the spool is
//! sparse where the files are and a 5 GiB sparse member costs nothing on disk. Each file is a
//! [`Window`] of the spool, which is opened as a [`LocalFile`] once the stream has ended. When
//! reading fails, the spool file is deleted before the error is returned.
//!
//! Memory grows with the number of members (their paths, metadata and xattrs), never with their
//! sizes: data moves through one 64 KiB buffer, the extended headers (`x`, `L`, `K`) of one
//! member are capped at [`MAX_EXTENDED`] bytes in all, and so are all the global (`g`) ones,
//! of which only uid, gid and mtime are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::{Data, Entry, Kind, Meta, Tree, TreePath};
use crate::storage::file::LocalFile;
use crate::storage::window::Window;
use crate::storage::{Extent, ReadAt};

/// The tar block: every header and every member's padded data is a multiple of it.
const BLOCK: usize = 512;

/// The largest PAX extended header or GNU long name accepted. Linux paths are at most 4,096
/// bytes (`PATH_MAX`) and xattr values 64 KiB (`XATTR_SIZE_MAX`); a few of each fit easily.
pub const MAX_EXTENDED: u64 = 1 << 20;

/// The most segments a sparse member may list (16 bytes of memory each).
pub const MAX_SPARSE_SEGMENTS: usize = 1 << 20;

/// The spool's and the file system's block: zero blocks of this size are skipped.
const SPOOL_BLOCK: u64 = 4096;

/// xz's dictionary memory limit, in KiB: `xz -9` uses 64 MiB, the format allows 1.5 GiB; a
/// stream asking for more than this is refused rather than allowed to allocate it.
const XZ_MEM_LIMIT_KB: u32 = 256 * 1024;

/// Errors of reading a tar stream; each names the archive (or the layer) and, where there is
/// one, the member.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the archive or writing the spool failed.
    #[error("{source_name}: {what}: {source}")]
    Io {
        /// The archive, as named in messages.
        source_name: String,
        /// What was being done.
        what: &'static str,
        /// The system's (or the decompressor's) error.
        source: io::Error,
    },
    /// The stream ends inside a header or a member, or before the end-of-archive blocks.
    #[error("{source_name}: truncated archive: {where_}")]
    Truncated {
        /// The archive.
        source_name: String,
        /// Where it ends.
        where_: String,
    },
    /// A header is not a tar header.
    #[error("{source_name}: byte {offset}: {reason}")]
    BadHeader {
        /// The archive.
        source_name: String,
        /// Offset of the header in the (decompressed) stream.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The tree the archive gives is not consistent (a hard link to nothing).
    #[error("{source_name}: {source}")]
    Tree {
        /// The archive.
        source_name: String,
        /// What is wrong.
        source: super::Error,
    },
    /// A member cannot be read or cannot go into the tree.
    #[error("{source_name}: member {member}: {reason}")]
    Member {
        /// The archive.
        source_name: String,
        /// The member's name, non-UTF-8 bytes escaped.
        member: String,
        /// What is wrong.
        reason: String,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A compression, told by the first bytes of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (RFC 1952: `1f 8b`).
    Gzip,
    /// Zstandard (RFC 8878: frame magic `28 b5 2f fd`).
    Zstd,
    /// xz (the .xz file format 1.1.0, 2.1.1.1: `fd 37 7a 58 5a 00`).
    Xz,
}

/// The compression whose magic `head` starts with.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else {
        Compression::None
    }
}

/// `r` decompressed as its first bytes say, and the compression found.
pub fn decompress<'a, R: Read + 'a>(mut r: R) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let mut head = [0u8; 6];
    let mut got = 0;
    while got < head.len() {
        let n = match r.read(head.get_mut(got..).unwrap_or_default()) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        got += n;
    }
    let head = head.get(..got).unwrap_or_default().to_vec();
    let c = sniff(&head);
    let whole = io::Cursor::new(head).chain(r);
    let out: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(whole),
        // Concatenated members decode as one stream, as `gzip -d` does.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(whole)?),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
            whole,
            true,
            XZ_MEM_LIMIT_KB,
        )),
    };
    Ok((out, c))
}

/// A byte stream a tar is read from, which can skip bytes it need not read.
pub trait Input: Read {
    /// Skips `n` bytes; fewer left is an [`io::ErrorKind::UnexpectedEof`] error, or (for a
    /// seekable file) shows as the end of the stream at the next read.
    fn skip(&mut self, n: u64) -> io::Result<()>;
}

/// A stream that skips by reading (a decompressor, a pipe).
pub struct Streamed<R>(pub R);

impl<R: Read> Read for Streamed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Input for Streamed<R> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let got = io::copy(&mut (&mut self.0).take(n), &mut io::sink())?;
        if got < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// An uncompressed archive file, which skips by seeking (indexing a `docker save` archive).
pub struct Seekable(pub File);

impl Read for Seekable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Input for Seekable {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let n = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        io::Seek::seek_relative(&mut self.0, n)
    }
}

/// One member's header, with its extended headers applied.
#[derive(Clone, Debug)]
pub struct Member {
    /// The name, as bytes.
    pub name: Vec<u8>,
    /// The link target (`1`, `2`).
    pub link: Vec<u8>,
    /// The type flag.
    pub typeflag: u8,
    /// Mode bits (`0o7777`), owner, time.
    pub meta: Meta,
    /// The file's size (for sparse members, the size with the holes).
    pub size: u64,
    /// Device numbers (`3`, `4`).
    pub dev: (u32, u32),
    /// `SCHILY.xattr.*` records.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Offset of its data in the (decompressed) stream.
    pub data_offset: u64,
    /// Bytes of data stored in the archive.
    pub stored: u64,
    /// The data segments `(offset in the file, length)` of a sparse member, or `None`.
    sparse: Option<Vec<(u64, u64)>>,
    /// A PAX 1.0 sparse member: the map is at the start of the data.
    sparse_map_in_data: bool,
}

impl Member {
    /// The name with non-UTF-8 bytes escaped, for messages.
    pub fn display_name(&self) -> String {
        self.name.escape_ascii().to_string()
    }
}

/// What PAX extended headers say (local ones and global ones alike).
#[derive(Clone, Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    sparse_major: Option<u64>,
    sparse_minor: Option<u64>,
    sparse_name: Option<Vec<u8>>,
    sparse_realsize: Option<u64>,
    sparse_map: Option<Vec<u8>>,
    /// Format 0.0: `GNU.sparse.offset` / `GNU.sparse.numbytes` records in turn.
    sparse_pairs: Vec<(u64, u64)>,
    sparse_offset: Option<u64>,
}

/// A tar stream read member by member.
pub struct TarReader<'a> {
    input: Box<dyn Input + 'a>,
    name: String,
    /// Bytes consumed from the input.
    pos: u64,
    /// Data bytes of the current member not yet read, and the padding after them.
    left: u64,
    pad: u64,
    /// What global (`g`) headers set that applies to later members: only uid, gid and mtime
    /// are kept (see [`keep_global`]).
    globals: Pax,
    /// Bytes of global headers read so far, at most [`MAX_EXTENDED`] in all.
    global_bytes: u64,
    /// The name of the member being read, for messages.
    current: String,
    done: bool,
}

impl<'a> TarReader<'a> {
    /// A reader of `input`, named `name` in messages.
    pub fn new(input: Box<dyn Input + 'a>, name: &str) -> Self {
        TarReader {
            input,
            name: name.to_owned(),
            pos: 0,
            left: 0,
            pad: 0,
            globals: Pax::default(),
            global_bytes: 0,
            current: String::new(),
            done: false,
        }
    }

    fn truncated(&self, where_: String) -> Error {
        Error::Truncated {
            source_name: self.name.clone(),
            where_,
        }
    }

    fn io(&self, what: &'static str, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return self.truncated(format!("{what} at byte {}", self.pos));
        }
        Error::Io {
            source_name: self.name.clone(),
            what,
            source: e,
        }
    }

    fn bad(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::BadHeader {
            source_name: self.name.clone(),
            offset,
            reason: reason.into(),
        }
    }

    fn member_err(&self, reason: impl Into<String>) -> Error {
        Error::Member {
            source_name: self.name.clone(),
            member: self.current.clone(),
            reason: reason.into(),
        }
    }

    /// Fills `buf` from the input; `Ok(false)` when the input ended before its first byte.
    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(buf.get_mut(got..).unwrap_or_default()) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(self.truncated(format!("{what} at byte {}", self.pos))),
                Ok(n) => {
                    got += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(what, e)),
            }
        }
        Ok(true)
    }

    /// Skips what is left of the current member's data and padding.
    fn skip_rest(&mut self) -> Result<()> {
        // Sizes are at most `i64::MAX` (both the header's and PAX's), so this cannot overflow;
        // checked all the same, since a wrapped sum would read member data as headers.
        let n = self
            .left
            .checked_add(self.pad)
            .ok_or_else(|| self.member_err("its size overflows"))?;
        if n > 0 {
            self.input
                .skip(n)
                .map_err(|e| self.io("skipping member data", e))?;
            self.pos += n;
            self.left = 0;
            self.pad = 0;
        }
        Ok(())
    }

    /// Reads some of the current member's stored data into `buf`; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let Some(part) = buf.get_mut(..want) else {
            return Ok(0);
        };
        if !self.fill(part, "reading member data")? {
            return Err(self.truncated(format!("inside member {}", self.current)));
        }
        self.left -= want as u64;
        Ok(want)
    }

    /// The whole data of an extended header, at most [`MAX_EXTENDED`] bytes.
    fn read_extended(&mut self, size: u64, offset: u64) -> Result<Vec<u8>> {
        if size > MAX_EXTENDED {
            return Err(self.bad(
                offset,
                format!("an extended header of {size} bytes (at most {MAX_EXTENDED})"),
            ));
        }
        // Bounded just above.
        let mut data = vec![0u8; size as usize];
        self.left = size;
        self.pad = padding(size);
        let mut got = 0;
        while got < data.len() {
            let n = self.read_data(data.get_mut(got..).unwrap_or_default())?;
            got += n;
        }
        self.skip_rest()?;
        Ok(data)
    }

    /// The next member, or `None` after the end-of-archive block. The previous member's
    /// unread data is skipped.
    pub fn next_member(&mut self) -> Result<Option<Member>> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut local = Pax::default();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        // Bytes of the `x`, `L` and `K` headers of this member, at most MAX_EXTENDED in all:
        // one header each is capped, and so must be a run of them.
        let mut extended = 0u64;
        loop {
            let offset = self.pos;
            let mut h = [0u8; BLOCK];
            if !self.fill(&mut h, "reading a header")? {
                return Err(self.truncated(format!(
                    "it ends at byte {offset} without its end-of-archive block"
                )));
            }
            if h.iter().all(|&b| b == 0) {
                // One zero block ends it (GNU tar accepts a lone one, with a warning); the
                // second, and whatever follows, is not read.
                self.done = true;
                return Ok(None);
            }
            check_checksum(&h).map_err(|r| self.bad(offset, r))?;
            let typeflag = h[156];
            // Stored bytes (for an old GNU sparse member too: its real size is elsewhere).
            let size = number(field(&h, 124, 12))
                .ok_or_else(|| self.bad(offset, "the size field is not a number"))?;
            if matches!(typeflag, b'x' | b'L' | b'K') {
                extended = extended.saturating_add(size);
                if extended > MAX_EXTENDED {
                    return Err(self.bad(
                        offset,
                        format!("extended headers of over {MAX_EXTENDED} bytes for one member"),
                    ));
                }
            }
            match typeflag {
                b'x' => {
                    let data = self.read_extended(size, offset)?;
                    parse_pax(&data, &mut local).map_err(|r| self.bad(offset, r))?;
                    continue;
                }
                b'g' => {
                    self.global_bytes = self.global_bytes.saturating_add(size);
                    if self.global_bytes > MAX_EXTENDED {
                        return Err(self.bad(
                            offset,
                            format!("global headers of over {MAX_EXTENDED} bytes in all"),
                        ));
                    }
                    let data = self.read_extended(size, offset)?;
                    let mut g = Pax::default();
                    parse_pax(&data, &mut g).map_err(|r| self.bad(offset, r))?;
                    keep_global(&mut self.globals, g);
                    continue;
                }
                b'L' | b'K' => {
                    let mut data = self.read_extended(size, offset)?;
                    if let Some(end) = data.iter().position(|&b| b == 0) {
                        data.truncate(end);
                    }
                    if typeflag == b'L' {
                        long_name = Some(data);
                    } else {
                        long_link = Some(data);
                    }
                    continue;
                }
                _ => {}
            }
            return self
                .finish_header(&h, offset, size, local, long_name, long_link)
                .map(Some);
        }
    }

    /// Builds the member of header `h` with its extended headers, reading an old GNU sparse
    /// member's extension blocks and a PAX 1.0 sparse map.
    fn finish_header(
        &mut self,
        h: &[u8; BLOCK],
        offset: u64,
        size: u64,
        local: Pax,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Member> {
        let typeflag = h[156];
        let globals = self.globals.clone();
        let magic = field(h, 257, 8);
        let ustar = magic == b"ustar\x0000";
        let mut name = cstr(field(h, 0, 100)).to_vec();
        if ustar {
            let prefix = cstr(field(h, 345, 155));
            if !prefix.is_empty() {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&name);
                name = full;
            }
        }
        if let Some(n) = long_name {
            name = n;
        }
        if let Some(n) = local.path.clone() {
            name = n;
        }
        self.current = name.escape_ascii().to_string();
        let mut link = cstr(field(h, 157, 100)).to_vec();
        if let Some(l) = long_link {
            link = l;
        }
        if let Some(l) = local.linkpath.clone() {
            // A NUL cannot be in a path: a link to "a\0b" would be stored as something other
            // than what the archive says.
            if l.contains(&0) {
                return Err(self.member_err("a link target (PAX linkpath) with a NUL byte"));
            }
            link = l;
        }
        let num = |off: usize, len: usize, what: &str| {
            number(field(h, off, len))
                .ok_or_else(|| self.bad(offset, format!("the {what} field is not a number")))
        };
        let mode = num(100, 8, "mode")?;
        let uid = num(108, 8, "uid")?;
        let gid = num(116, 8, "gid")?;
        let mtime = signed_number(field(h, 136, 12))
            .ok_or_else(|| self.bad(offset, "the mtime field is not a number"))?;
        let (devmajor, devminor) = if matches!(typeflag, b'3' | b'4') {
            (num(329, 8, "devmajor")?, num(337, 8, "devminor")?)
        } else {
            (0, 0)
        };
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| self.bad(offset, format!("{what} {v} is over 32 bits")))
        };
        let mut meta = Meta {
            mode: (mode & 0o7777) as u16,
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            mtime,
            mtime_nsec: 0,
        };
        if let Some(u) = local.uid.or(globals.uid) {
            meta.uid = u;
        }
        if let Some(g) = local.gid.or(globals.gid) {
            meta.gid = g;
        }
        if let Some((s, ns)) = local.mtime.or(globals.mtime) {
            meta.mtime = s;
            meta.mtime_nsec = ns;
        }
        let stored = local.size.unwrap_or(size);
        let xattrs = local.xattrs.clone();
        let mut member = Member {
            name,
            link,
            typeflag,
            meta,
            size: stored,
            dev: (id(devmajor, "devmajor")?, id(devminor, "devminor")?),
            xattrs,
            data_offset: 0,
            stored,
            sparse: None,
            sparse_map_in_data: false,
        };
        if typeflag == b'S' {
            self.old_gnu_sparse(h, offset, &mut member)?;
        }
        let major = local.sparse_major;
        let minor = local.sparse_minor;
        if major.is_some() || local.sparse_map.is_some() || !local.sparse_pairs.is_empty() {
            if let Some(n) = local.sparse_name.clone() {
                member.name = n;
                self.current = member.name.escape_ascii().to_string();
            }
            member.size = local
                .sparse_realsize
                .ok_or_else(|| self.member_err("a PAX sparse member without its real size"))?;
            match (major, minor, &local.sparse_map) {
                (Some(1), Some(0), _) => member.sparse_map_in_data = true,
                (None | Some(0), _, Some(map)) => {
                    member.sparse = Some(parse_sparse_list(map).map_err(|r| self.member_err(r))?);
                }
                (None | Some(0), _, None) if !local.sparse_pairs.is_empty() => {
                    member.sparse = Some(local.sparse_pairs.clone());
                }
                _ => {
                    return Err(self.member_err(
                        "an unsupported PAX sparse format (0.0, 0.1 and 1.0 are read)",
                    ));
                }
            }
        }
        member.data_offset = self.pos;
        self.left = member.stored;
        self.pad = padding(member.stored);
        if member.sparse_map_in_data {
            self.pax_sparse_map(&mut member)?;
        }
        if let Some(map) = &member.sparse {
            check_sparse(map, member.size, self.left).map_err(|r| self.member_err(r))?;
        }
        Ok(member)
    }

    /// Reads the map of an old GNU sparse member (`S`): four entries in the header, more in
    /// extension blocks (GNU tar's `struct sparse_header`, tar.h).
    fn old_gnu_sparse(&mut self, h: &[u8; BLOCK], offset: u64, m: &mut Member) -> Result<()> {
        let mut map = Vec::new();
        let mut push = |entry: &[u8], this: &Self| -> Result<()> {
            let off = field(entry, 0, 12);
            let len = field(entry, 12, 12);
            if off.iter().all(|&b| b == 0) && len.iter().all(|&b| b == 0) {
                return Ok(());
            }
            let o = number(off).ok_or_else(|| this.bad(offset, "a bad sparse offset"))?;
            let l = number(len).ok_or_else(|| this.bad(offset, "a bad sparse length"))?;
            if map.len() >= MAX_SPARSE_SEGMENTS {
                return Err(this.member_err("too many sparse segments"));
            }
            map.push((o, l));
            Ok(())
        };
        for i in 0..4 {
            push(field(h, 386 + 24 * i, 24), self)?;
        }
        m.size = number(field(h, 483, 12)).ok_or_else(|| self.bad(offset, "a bad real size"))?;
        let mut extended = h[482] != 0;
        // Counted apart from the segments: blocks of empty entries add none, and would
        // otherwise be read until the input ends.
        let mut blocks = 0usize;
        while extended {
            blocks += 1;
            if blocks > MAX_SPARSE_SEGMENTS / 21 {
                return Err(self.member_err("too many sparse extension blocks"));
            }
            let mut b = [0u8; BLOCK];
            if !self.fill(&mut b, "reading a sparse header")? {
                return Err(self.truncated(format!("inside member {}", self.current)));
            }
            for i in 0..21 {
                push(field(&b, 24 * i, 24), self)?;
            }
            extended = b[504] != 0;
        }
        m.sparse = Some(map);
        Ok(())
    }

    /// Reads the map at the start of a PAX 1.0 sparse member's data: decimal numbers one a
    /// line, the count then offset/length pairs, padded to a block (GNU tar, sparse.c,
    /// `pax_decode_header`).
    fn pax_sparse_map(&mut self, m: &mut Member) -> Result<()> {
        let mut numbers: Vec<u64> = Vec::new();
        let mut digits: Vec<u8> = Vec::new();
        let mut want: Option<usize> = None;
        loop {
            if want.is_some_and(|w| numbers.len() > 2 * w) {
                break;
            }
            let mut b = [0u8; BLOCK];
            let n = self.read_data(&mut b)?;
            if n < BLOCK {
                return Err(self.member_err("its sparse map runs past its data"));
            }
            for &c in &b {
                if want.is_some_and(|w| numbers.len() > 2 * w) {
                    break;
                }
                if c == b'\n' {
                    let v = std::str::from_utf8(&digits)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| self.member_err("a bad number in its sparse map"))?;
                    digits.clear();
                    if want.is_none() {
                        let w = usize::try_from(v)
                            .ok()
                            .filter(|&w| w <= MAX_SPARSE_SEGMENTS)
                            .ok_or_else(|| self.member_err("too many sparse segments"))?;
                        want = Some(w);
                    }
                    numbers.push(v);
                } else if c.is_ascii_digit() && digits.len() < 20 {
                    digits.push(c);
                } else {
                    return Err(self.member_err("a bad number in its sparse map"));
                }
            }
        }
        let map = numbers
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(2)
            .filter_map(|p| match p {
                [a, b] => Some((*a, *b)),
                _ => None,
            })
            .collect();
        m.sparse = Some(map);
        Ok(())
    }

    /// Bytes of the current member's data not yet read.
    pub fn data_left(&self) -> u64 {
        self.left
    }

    /// Reads the rest of the input (after the end of the archive), so that a digest computed
    /// over it covers the whole blob.
    pub fn drain(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.input.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.pos += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io("reading past the end of the archive", e)),
            }
        }
    }
}

/// The sparse map checks: segments in order, apart, inside the file, their lengths summing to
/// the stored bytes.
fn check_sparse(map: &[(u64, u64)], size: u64, stored: u64) -> std::result::Result<(), String> {
    let mut end = 0u64;
    let mut total = 0u64;
    for &(o, l) in map {
        let e = o
            .checked_add(l)
            .filter(|&e| o >= end && e <= size)
            .ok_or_else(|| {
                format!("a sparse segment at {o} out of order or past the file's end")
            })?;
        end = e;
        total = total.checked_add(l).ok_or("sparse lengths overflow")?;
    }
    if total != stored {
        return Err(format!(
            "its sparse segments hold {total} bytes but it stores {stored}"
        ));
    }
    Ok(())
}

/// The list `off,len,off,len` of `GNU.sparse.map` (format 0.1).
fn parse_sparse_list(s: &[u8]) -> std::result::Result<Vec<(u64, u64)>, String> {
    let nums: Vec<u64> = s
        .split(|&b| b == b',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| "a bad number in GNU.sparse.map".to_owned())
        })
        .collect::<std::result::Result<_, _>>()?;
    if !nums.len().is_multiple_of(2) || nums.len() / 2 > MAX_SPARSE_SEGMENTS {
        return Err("a bad GNU.sparse.map".into());
    }
    Ok(nums
        .chunks_exact(2)
        .filter_map(|p| match p {
            [a, b] => Some((*a, *b)),
            _ => None,
        })
        .collect())
}

/// Padding after `n` data bytes, to the next block.
fn padding(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

/// Bytes `off..off + len` of `h`, empty when outside it.
fn field(h: &[u8], off: usize, len: usize) -> &[u8] {
    h.get(off..off + len).unwrap_or_default()
}

/// `b` up to its first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    b.iter()
        .position(|&c| c == 0)
        .map_or(b, |n| b.get(..n).unwrap_or_default())
}

/// The header checksum: the sum of its bytes with the checksum field taken as spaces, as
/// unsigned bytes (POSIX) or signed ones (some old tars).
fn check_checksum(h: &[u8; BLOCK]) -> std::result::Result<(), String> {
    let stored = number(field(h, 148, 8)).ok_or("not a tar header (bad checksum field)")?;
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err("not a tar header (checksum mismatch)".into())
    }
}

/// A numeric field: octal digits (leading spaces, ending at a space or NUL), or GNU's base-256
/// (the first byte's high bit set); `None` when it is neither or negative.
fn number(f: &[u8]) -> Option<u64> {
    match signed_number(f)? {
        v if v >= 0 => u64::try_from(v).ok(),
        _ => None,
    }
}

/// A numeric field that may be negative (base-256 with bit 6 of the first byte set; mtime
/// only).
fn signed_number(f: &[u8]) -> Option<i64> {
    let first = *f.first()?;
    if first & 0x80 != 0 {
        // Base-256, big-endian, the first byte's high bit a marker: the rest of the field is
        // a two's complement number whose sign is bit 6 of the first byte, its low 6 bits the
        // top of the value (GNU tar, list.c `from_header`: `signbit = *where & (1 << 6)`,
        // `value = (*where & 0x3f) - signbit`), so `0x80` starts a positive number and `0xff`
        // a negative one.
        let mut v = i128::from(first & 0x3f) - i128::from(first & 0x40);
        for &b in f.get(1..)? {
            v = v.checked_mul(256)?.checked_add(i128::from(b))?;
        }
        return i64::try_from(v).ok();
    }
    let mut v: i64 = 0;
    let mut seen = false;
    for &b in f {
        match b {
            b' ' if !seen => {}
            b'0'..=b'7' => {
                seen = true;
                v = v.checked_mul(8)?.checked_add(i64::from(b - b'0'))?;
            }
            b' ' | 0 => break,
            _ => return None,
        }
    }
    Some(v)
}

/// Merges what global header `g` says into `globals`, keeping only the keys that are harmless
/// for every later member: uid, gid and mtime (atime, ctime, uname and gname are not read at
/// all). A global `path`, `linkpath`, `size`, sparse map or xattr would apply to every member:
/// one 1 MiB header would be copied into each, and Go's archive/tar (docker's, containerd's)
/// ignores such keys in global headers, so honouring them would read the archive differently.
fn keep_global(globals: &mut Pax, g: Pax) {
    if g.uid.is_some() {
        globals.uid = g.uid;
    }
    if g.gid.is_some() {
        globals.gid = g.gid;
    }
    if g.mtime.is_some() {
        globals.mtime = g.mtime;
    }
}

/// Parses PAX records (`"%d %s=%s\n"`, the length counting the whole record) into `pax`. An
/// empty value unsets the key, as POSIX says.
fn parse_pax(data: &[u8], pax: &mut Pax) -> std::result::Result<(), String> {
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a PAX record without a length")?;
        let len: usize = std::str::from_utf8(rest.get(..sp).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record with a bad length")?;
        let record = rest
            .get(..len)
            .filter(|r| len > sp + 1 && r.last() == Some(&b'\n'))
            .ok_or("a PAX record overruns its header")?;
        rest = rest.get(len..).unwrap_or_default();
        let kv = record.get(sp + 1..len - 1).unwrap_or_default();
        let eq = kv
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a PAX record without `=`")?;
        let key = kv.get(..eq).unwrap_or_default();
        let value = kv.get(eq + 1..).unwrap_or_default();
        let text = || std::str::from_utf8(value).ok();
        let dec = |what: &str| -> std::result::Result<Option<u64>, String> {
            if value.is_empty() {
                return Ok(None);
            }
            text()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| format!("PAX {what} is not a number"))
        };
        let opt = || (!value.is_empty()).then(|| value.to_vec());
        match key {
            b"path" => pax.path = opt(),
            b"linkpath" => pax.linkpath = opt(),
            b"size" => {
                // As for the header's size field: a stream position is an `i64` (and the
                // padding added to a size must not overflow).
                pax.size = dec("size")?;
                if pax.size.is_some_and(|v| i64::try_from(v).is_err()) {
                    return Err("PAX size is over 2^63 - 1".into());
                }
            }
            b"uid" | b"gid" => {
                let v = dec("uid/gid")?
                    .map(u32::try_from)
                    .transpose()
                    .map_err(|_| "PAX uid/gid over 32 bits")?;
                if key == b"uid" {
                    pax.uid = v;
                } else {
                    pax.gid = v;
                }
            }
            b"mtime" => {
                pax.mtime = if value.is_empty() {
                    None
                } else {
                    Some(pax_time(value).ok_or("PAX mtime is not a time")?)
                }
            }
            b"GNU.sparse.major" => pax.sparse_major = dec("GNU.sparse.major")?,
            b"GNU.sparse.minor" => pax.sparse_minor = dec("GNU.sparse.minor")?,
            b"GNU.sparse.name" => pax.sparse_name = opt(),
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                pax.sparse_realsize = dec("GNU.sparse.realsize")?
            }
            b"GNU.sparse.map" => pax.sparse_map = opt(),
            b"GNU.sparse.numblocks" => {}
            b"GNU.sparse.offset" => pax.sparse_offset = dec("GNU.sparse.offset")?,
            b"GNU.sparse.numbytes" => {
                let n = dec("GNU.sparse.numbytes")?.unwrap_or(0);
                let o = pax
                    .sparse_offset
                    .take()
                    .ok_or("GNU.sparse.numbytes without its offset")?;
                if pax.sparse_pairs.len() >= MAX_SPARSE_SEGMENTS {
                    return Err("too many sparse segments".into());
                }
                pax.sparse_pairs.push((o, n));
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if name.is_empty() {
                        return Err("an xattr without a name".into());
                    }
                    pax.xattrs.insert(name.to_vec(), value.to_vec());
                }
                // Other keys (atime, ctime, uname, gname, charset, comment, vendor ones)
                // carry nothing the tree keeps.
            }
        }
    }
    Ok(())
}

/// A PAX time, `[-]seconds[.fraction]`, as seconds and nanoseconds (floor, so that `-1.5` is
/// `(-2, 500000000)`).
fn pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some((secs, nsec));
    }
    if nsec == 0 {
        Some((secs.checked_neg()?, 0))
    } else {
        Some((secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nsec))
    }
}

/// The spool, as a storage: its length grows while the stream is written, and reads work once
/// [`Spool::finish`] has opened it.
struct SpoolStorage {
    path: PathBuf,
    written: AtomicU64,
    file: OnceLock<LocalFile>,
}

impl ReadAt for SpoolStorage {
    fn len(&self) -> u64 {
        match self.file.get() {
            Some(f) => f.len(),
            None => self.written.load(Ordering::Acquire),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.file.get() {
            Some(f) => f.read_at(offset, buf),
            None => Err(io::Error::other(format!(
                "{}: read before the stream was spooled",
                self.path.display()
            ))),
        }
    }

    fn extent(&self, offset: u64, max_len: u64) -> Option<Extent> {
        self.file.get()?.extent(offset, max_len)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// The file the data of a tar stream (or of every layer of an image) is spooled into. Dropped
/// before [`Spool::finish`], it deletes its file.
pub struct Spool {
    file: File,
    storage: Arc<SpoolStorage>,
    pos: u64,
    finished: bool,
}

impl Spool {
    /// A new, empty spool file in `dir` (named `spool-N`, the first `N` free).
    pub fn create(dir: &Path) -> io::Result<Spool> {
        let mut n = 0u32;
        loop {
            let path = dir.join(format!("spool-{n}"));
            match File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Spool {
                        file,
                        storage: Arc::new(SpoolStorage {
                            path,
                            written: AtomicU64::new(0),
                            file: OnceLock::new(),
                        }),
                        pos: 0,
                        finished: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The spool file's path.
    pub fn path(&self) -> &Path {
        &self.storage.path
    }

    /// Room for a file of `len` bytes: its offset. Files of a block or more start on a block.
    fn alloc(&mut self, len: u64) -> io::Result<u64> {
        let too_big = || io::Error::other("the spool would pass 2^64 bytes");
        let start = if len >= SPOOL_BLOCK {
            self.pos
                .checked_next_multiple_of(SPOOL_BLOCK)
                .ok_or_else(too_big)?
        } else {
            self.pos
        };
        self.pos = start.checked_add(len).ok_or_else(too_big)?;
        Ok(start)
    }

    /// Writes `data` at `at`, skipping whole aligned blocks of zeros (they stay holes).
    fn write_at(&self, at: u64, data: &[u8]) -> io::Result<()> {
        let mut off = 0usize;
        while off < data.len() {
            let abs = at + off as u64;
            // Up to the next block boundary of the spool.
            let to_boundary = (SPOOL_BLOCK - abs % SPOOL_BLOCK) as usize;
            let end = (off + to_boundary).min(data.len());
            let chunk = data.get(off..end).unwrap_or_default();
            let whole = chunk.len() as u64 == SPOOL_BLOCK;
            if !(whole && chunk.iter().all(|&b| b == 0)) {
                self.file.write_all_at(chunk, abs)?;
            }
            off = end;
        }
        Ok(())
    }

    /// A window of `len` bytes at `at`, once written.
    fn window(&self, at: u64, len: u64) -> io::Result<Data> {
        self.storage.written.fetch_max(self.pos, Ordering::AcqRel);
        let w = Window::new(self.storage.clone(), at, len)
            .ok_or_else(|| io::Error::other("a spool window past the spool's end"))?;
        Ok(Data::Storage(Arc::new(w)))
    }

    /// Ends the spool: sets its length (trailing holes included) and opens it for reading.
    pub fn finish(mut self) -> io::Result<()> {
        self.file.set_len(self.pos)?;
        let local = LocalFile::open(&self.storage.path).map_err(io::Error::other)?;
        // Set once: `finish` takes the spool by value.
        let _ = self.storage.file.set(local);
        self.finished = true;
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.finished {
            // Nothing left behind on failure; a file that cannot be removed is the caller's
            // work directory's to clean up.
            let _ = std::fs::remove_file(&self.storage.path);
        }
    }
}

/// How members go into the tree: a plain archive, or an image layer (whiteouts apply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every member is an entry.
    Plain,
    /// OCI layer: `.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq` empties its
    /// directory of them (OCI image spec, layer.md, "Whiteouts").
    Layer,
}

/// The OCI whiteout prefix and opaque marker (image-spec layer.md).
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Reads every member of `reader` into `tree`, file data into `spool`.
pub fn apply(
    reader: &mut TarReader<'_>,
    tree: &mut Tree,
    spool: &mut Spool,
    mode: Mode,
) -> Result<()> {
    // Paths this layer put in the tree: a whiteout or opaque marker removes only lower ones.
    let mut this_layer: BTreeSet<TreePath> = BTreeSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    let implied = Meta::implied_dir(0);
    let source_name = reader.name.clone();
    while let Some(m) = reader.next_member()? {
        let fail = |reason: String| Error::Member {
            source_name: source_name.clone(),
            member: m.display_name(),
            reason,
        };
        let path = member_path(&m.name).map_err(&fail)?;
        if mode == Mode::Layer
            && let Some(name) = path.name()
            && name.starts_with(WHITEOUT)
        {
            let parent = path.parent().unwrap_or_default();
            if name == OPAQUE {
                opaque(tree, &parent, &this_layer);
            } else {
                let gone = name.get(WHITEOUT.len()..).unwrap_or_default();
                let target = TreePath::parse(gone)
                    .ok()
                    .filter(|t| t.depth() == 1)
                    .ok_or_else(|| fail("a whiteout of no valid name".into()))?;
                let target = parent.join(target.name().unwrap_or_default());
                if !this_layer.contains(&target) {
                    tree.remove(&target);
                }
            }
            continue;
        }
        let kind = match m.typeflag {
            b'5' | b'D' => Kind::Dir,
            // A v7 archive marks directories with a trailing slash only.
            b'0' | 0 if m.name.ends_with(b"/") => Kind::Dir,
            b'0' | 0 | b'7' | b'S' => {
                let at = spool
                    .alloc(m.size)
                    .map_err(|e| fail(format!("cannot spool: {e}")))?;
                copy_data(reader, &m, spool, at, &mut buf)?;
                Kind::File(
                    spool
                        .window(at, m.size)
                        .map_err(|e| fail(format!("cannot spool: {e}")))?,
                )
            }
            b'1' => {
                let target = member_path(&m.link).map_err(|r| fail(format!("hard link: {r}")))?;
                let target = match tree.get(&target).map(|e| &e.kind) {
                    Some(Kind::File(_)) => target,
                    Some(Kind::HardLink(t)) => t.clone(),
                    _ => {
                        return Err(fail(format!(
                            "hard link to {target}, which is not a regular file before it"
                        )));
                    }
                };
                if target == path {
                    return Err(fail("a hard link to itself".into()));
                }
                Kind::HardLink(target)
            }
            b'2' => Kind::Symlink(m.link.clone()),
            b'3' => Kind::CharDevice {
                major: m.dev.0,
                minor: m.dev.1,
            },
            b'4' => Kind::BlockDevice {
                major: m.dev.0,
                minor: m.dev.1,
            },
            b'6' => Kind::Fifo,
            // A volume label names the archive, not a file.
            b'V' => continue,
            t => {
                return Err(fail(format!(
                    "unsupported member type {}",
                    [t].escape_ascii()
                )));
            }
        };
        if path.is_root() && !matches!(kind, Kind::Dir) {
            return Err(fail("the root can only be a directory".into()));
        }
        let mut entry = Entry::new(kind, m.meta);
        entry.xattrs = m.xattrs.clone();
        if mode == Mode::Layer {
            this_layer.insert(path.clone());
        }
        tree.insert(path, entry, implied).map_err(|e| match e {
            super::Error::NotADirectory { parent, .. } => fail(format!(
                "{parent} is not a directory (a symlink or file cannot be written through)"
            )),
            other => fail(other.to_string()),
        })?;
    }
    Ok(())
}

/// A member name as a tree path: absolute names and `..` are refused (an archive cannot write
/// outside its own tree).
fn member_path(name: &[u8]) -> std::result::Result<TreePath, String> {
    if name.starts_with(b"/") {
        return Err("an absolute name (an archive cannot write outside its tree)".into());
    }
    TreePath::parse(name).map_err(|e| match e {
        super::Error::BadPath { reason, .. } => reason.to_owned(),
        other => other.to_string(),
    })
}

/// Opaque marker in `dir`: removes everything under it that a lower layer put there, keeping
/// what this layer already added (and the directories leading to it).
fn opaque(tree: &mut Tree, dir: &TreePath, this_layer: &BTreeSet<TreePath>) {
    let keep: BTreeSet<TreePath> = this_layer
        .range(dir.clone()..)
        .take_while(|p| p.starts_with(dir))
        .flat_map(|p| {
            let mut chain = Vec::new();
            let mut cur = Some(p.clone());
            while let Some(c) = cur {
                if c == *dir {
                    break;
                }
                cur = c.parent();
                chain.push(c);
            }
            chain
        })
        .collect();
    let doomed: Vec<TreePath> = tree
        .subtree(dir)
        .map(|(p, _)| p.clone())
        .filter(|p| !keep.contains(p))
        .collect();
    for p in doomed {
        // Removing a parent first removes its children too; the later calls find nothing.
        tree.remove(&p);
    }
}

/// Copies a member's data to the spool at `at`, placing a sparse member's segments at their
/// offsets (the holes between them are never written).
fn copy_data(
    reader: &mut TarReader<'_>,
    m: &Member,
    spool: &Spool,
    at: u64,
    buf: &mut [u8],
) -> Result<()> {
    let segments: Vec<(u64, u64)> = match &m.sparse {
        Some(map) => map.clone(),
        None => vec![(0, m.size)],
    };
    let spool_err = |e: io::Error| Error::Io {
        source_name: spool.path().display().to_string(),
        what: "writing the spool",
        source: e,
    };
    for (off, len) in segments {
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let part = buf.get_mut(..want).unwrap_or_default();
            let n = reader.read_data(part)?;
            if n == 0 {
                return Err(reader.truncated(format!("inside member {}", m.display_name())));
            }
            spool
                .write_at(at + off + done, part.get(..n).unwrap_or_default())
                .map_err(spool_err)?;
            done += n as u64;
        }
    }
    Ok(())
}

/// Reads the tar archive at `path` (plain, gzip, zstd or xz) into a tree, its file data spooled
/// into a new file in `spool_dir`, which the tree's files read from.
pub fn read_tar_tree(path: &Path, spool_dir: &Path) -> Result<Tree> {
    let name = path.display().to_string();
    let io = |what| {
        let name = name.clone();
        move |source| Error::Io {
            source_name: name,
            what,
            source,
        }
    };
    let file = File::open(path).map_err(io("cannot open"))?;
    let (stream, _) = decompress(io::BufReader::with_capacity(256 * 1024, file))
        .map_err(io("cannot decompress"))?;
    read_tar_stream(stream, &name, spool_dir, Mode::Plain)
}

/// Reads an uncompressed tar stream into a tree, as [`read_tar_tree`] does after
/// decompression; `name` names it in messages.
pub fn read_tar_stream<R: Read>(r: R, name: &str, spool_dir: &Path, mode: Mode) -> Result<Tree> {
    let mut reader = TarReader::new(Box::new(Streamed(r)), name);
    let mut spool = Spool::create(spool_dir).map_err(|source| Error::Io {
        source_name: spool_dir.display().to_string(),
        what: "cannot create a spool file in",
        source,
    })?;
    let mut tree = Tree::new(Meta::implied_dir(0));
    apply(&mut reader, &mut tree, &mut spool, mode)?;
    tree.check_links().map_err(|source| Error::Tree {
        source_name: name.to_owned(),
        source,
    })?;
    spool.finish().map_err(|source| Error::Io {
        source_name: name.to_owned(),
        what: "cannot finish the spool of",
        source,
    })?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"  644 \0"), Some(0o644));
        assert_eq!(number(b"\0\0\0\0"), Some(0));
        assert_eq!(number(b"12x"), None);
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 1;
        f[10] = 2;
        assert_eq!(number(&f), Some(0x201));
        let neg = [0xffu8; 12];
        assert_eq!(signed_number(&neg), Some(-1));
        assert_eq!(number(&neg), None);
        // Bit 6 is the sign, as GNU tar reads it: 0xc0 starts a negative number, which a
        // size or an id cannot be.
        let mut f = [0u8; 8];
        f[0] = 0xc0;
        f[7] = 1;
        assert_eq!(signed_number(&f), Some(-(1i64 << 62) + 1));
        assert_eq!(number(&f), None);
        f[0] = 0xbf;
        assert_eq!(signed_number(&f), Some((0x3f << 56) + 1));
        f = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe];
        assert_eq!(signed_number(&f), Some(-2));
    }

    #[test]
    fn pax_times_floor() {
        assert_eq!(pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(pax_time(b"1.x"), None);
    }

    #[test]
    fn pax_records_bounded_and_checked() {
        let mut p = Pax::default();
        parse_pax(b"30 SCHILY.xattr.user.a=\x00\x01\n", &mut p).unwrap_err();
        let rec = b"26 SCHILY.xattr.user.a=xy\n";
        parse_pax(rec, &mut p).unwrap();
        assert_eq!(p.xattrs.get(&b"user.a"[..]).unwrap(), b"xy");
        assert!(parse_pax(b"99 path=a\n", &mut p).is_err());
        assert!(parse_pax(b"2 ", &mut p).is_err());
    }

    #[test]
    fn sparse_maps_must_be_ordered_and_sum_up() {
        assert!(check_sparse(&[(0, 10), (20, 5)], 30, 15).is_ok());
        assert!(check_sparse(&[(20, 5), (0, 10)], 30, 15).is_err());
        assert!(check_sparse(&[(0, 10), (25, 10)], 30, 20).is_err());
        assert!(check_sparse(&[(0, 10)], 30, 11).is_err());
    }
}
