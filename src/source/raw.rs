//! Raw disk images and block devices: the bytes are the disk.
//!
//! Holes are found with `FIEMAP`, or `SEEK_DATA`/`SEEK_HOLE` where the file system has no
//! FIEMAP, so a sparse 64 GiB file with 1 GiB of data costs what 1 GiB costs. Where neither
//! works (block devices), the whole file is data and the engine's zero detection still keeps
//! zeros out of the output.
//!
//! FIEMAP comes first because its answer depends only on the file: extents allocated but never
//! written (`fallocate`, the journal `mkfs.ext4` reserves) are flagged unwritten and read as
//! zeros. `SEEK_DATA` calls such an extent data when its pages happen to be in the page cache
//! and a hole when not, so the same file would plan a different qcow2 layout from one run to the
//! next.

use super::{Error, Extent, ExtentKind, Result, Source};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A raw image file or block device.
#[derive(Debug)]
pub struct RawSource {
    file: File,
    path: PathBuf,
    size: u64,
    /// False once `SEEK_DATA` has failed with "not supported": everything is data from then on.
    seek_data: bool,
    /// FIEMAP's state: untried, unsupported, or the extents of the last query.
    fiemap: Fiemap,
}

/// What FIEMAP has told so far.
#[derive(Debug)]
enum Fiemap {
    /// Not asked yet: the first query also flushes dirty pages (`FIEMAP_FLAG_SYNC`), so that
    /// delayed allocations are mapped.
    Untried,
    /// The file system does not support it.
    Unsupported,
    /// Extents from `from` up to `covered`, sorted.
    Known {
        from: u64,
        covered: u64,
        extents: Vec<MappedExtent>,
    },
}

/// `(logical offset, length, unwritten)` of one FIEMAP extent.
type MappedExtent = (u64, u64, bool);

/// `FS_IOC_FIEMAP` = `_IOWR('f', 11, struct fiemap)` (linux/fs.h, linux/fiemap.h).
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
/// Extents asked for per query.
const FIEMAP_BATCH: usize = 64;

/// `struct fiemap` followed by its extents (linux/fiemap.h).
#[repr(C)]
struct FiemapRequest {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; FIEMAP_BATCH],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

impl RawSource {
    /// Opens a raw image or block device read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            what: "cannot open",
            source,
        })?;
        Self::from_file(file, path)
    }

    /// Reads `file`, already open as `path`, as a raw disk.
    pub fn from_file(mut file: File, path: &Path) -> Result<Self> {
        let io = |what, source| Error::Io {
            path: path.to_owned(),
            what,
            source,
        };
        let meta = file.metadata().map_err(|e| io("cannot stat", e))?;
        if meta.is_dir() {
            return Err(Error::Invalid {
                path: path.to_owned(),
                reason: "is a directory, not a disk image".into(),
            });
        }
        // Block devices report a zero length in metadata; seeking to the end gives their size.
        let size = if meta.is_file() {
            meta.len()
        } else {
            file.seek(SeekFrom::End(0))
                .map_err(|e| io("cannot find the size of", e))?
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            seek_data: true,
            fiemap: Fiemap::Untried,
        })
    }

    fn lseek(&self, offset: u64, whence: libc::c_int) -> std::io::Result<u64> {
        let off = libc::off_t::try_from(offset).map_err(|_| std::io::Error::other("offset"))?;
        // SAFETY: lseek on a descriptor we own; it does not touch memory.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    }
}

impl RawSource {
    /// One FIEMAP query from `offset` to the end of the file; `None` when unsupported.
    fn query_fiemap(&self, offset: u64, sync: bool) -> Option<(u64, Vec<MappedExtent>)> {
        let empty = FiemapExtent {
            logical: 0,
            physical: 0,
            length: 0,
            reserved64: [0; 2],
            flags: 0,
            reserved: [0; 3],
        };
        let mut req = FiemapRequest {
            start: offset,
            length: self.size - offset,
            flags: if sync { FIEMAP_FLAG_SYNC } else { 0 },
            mapped_extents: 0,
            extent_count: FIEMAP_BATCH as u32,
            reserved: 0,
            extents: [empty; FIEMAP_BATCH],
        };
        // SAFETY: FS_IOC_FIEMAP reads and writes a `struct fiemap` with room for
        // `extent_count` extents, which `req` is, laid out as the kernel's (repr(C)).
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), FS_IOC_FIEMAP, &mut req) };
        if r < 0 {
            return None;
        }
        let n = (req.mapped_extents as usize).min(FIEMAP_BATCH);
        let got = req.extents.get(..n).unwrap_or_default();
        let last = got.last().is_none_or(|e| e.flags & FIEMAP_EXTENT_LAST != 0);
        let covered = if last || n < FIEMAP_BATCH {
            self.size
        } else {
            got.last()
                .map_or(self.size, |e| e.logical.saturating_add(e.length))
        };
        let extents = got
            .iter()
            .map(|e| (e.logical, e.length, e.flags & FIEMAP_EXTENT_UNWRITTEN != 0))
            .collect();
        Some((covered, extents))
    }

    /// The extent at `offset` from FIEMAP, or `None` to fall back on `SEEK_DATA`.
    fn fiemap_extent(&mut self, offset: u64, end: u64) -> Option<Extent> {
        let fresh = match &self.fiemap {
            Fiemap::Unsupported => return None,
            Fiemap::Known { from, covered, .. } => !(*from <= offset && offset < *covered),
            Fiemap::Untried => true,
        };
        if fresh {
            let sync = matches!(self.fiemap, Fiemap::Untried);
            self.fiemap = match self.query_fiemap(offset, sync) {
                Some((covered, extents)) => Fiemap::Known {
                    from: offset,
                    covered: covered.max(offset + 1),
                    extents,
                },
                None => Fiemap::Unsupported,
            };
        }
        let Fiemap::Known {
            covered, extents, ..
        } = &self.fiemap
        else {
            return None;
        };
        let end = end.min(*covered);
        let next = extents
            .iter()
            .find(|(l, len, _)| l.saturating_add(*len) > offset);
        Some(match next {
            Some(&(logical, len, unwritten)) if logical <= offset => Extent {
                offset,
                len: logical.saturating_add(len).min(end) - offset,
                kind: if unwritten {
                    ExtentKind::Zero
                } else {
                    ExtentKind::Data
                },
            },
            Some(&(logical, _, _)) => Extent {
                offset,
                len: logical.min(end) - offset,
                kind: ExtentKind::Zero,
            },
            None => Extent {
                offset,
                len: end - offset,
                kind: ExtentKind::Zero,
            },
        })
    }
}

impl Source for RawSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        let end = self.size.min(offset.saturating_add(max_len));
        if let Some(e) = self.fiemap_extent(offset, end) {
            return Ok(e);
        }
        let data = |len: u64| Extent {
            offset,
            len,
            kind: ExtentKind::Data,
        };
        if !self.seek_data {
            return Ok(data(end - offset));
        }
        match self.lseek(offset, libc::SEEK_DATA) {
            Ok(next_data) if next_data > offset => Ok(Extent {
                offset,
                len: next_data.min(end) - offset,
                kind: ExtentKind::Zero,
            }),
            Ok(_) => {
                let hole = self.lseek(offset, libc::SEEK_HOLE).unwrap_or(end);
                Ok(data(hole.clamp(offset + 1, end) - offset))
            }
            // ENXIO: no data at or after `offset` — the rest of the file is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(Extent {
                offset,
                len: end - offset,
                kind: ExtentKind::Zero,
            }),
            Err(_) => {
                self.seek_data = false;
                Ok(data(end - offset))
            }
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                what: if source.kind() == std::io::ErrorKind::UnexpectedEof {
                    "file shrank while being read"
                } else {
                    "cannot read"
                },
                source,
            })
    }

    fn format(&self) -> &'static str {
        "raw"
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sparse_file_extents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[7u8; 1 << 20]).unwrap();
        drop(f);
        let mut s = RawSource::open(&p).unwrap();
        assert_eq!(s.size(), 64 << 20);
        let mut off = 0;
        let mut data = 0;
        while off < s.size() {
            let e = s.extent(off, u64::MAX).unwrap();
            assert!(e.len > 0);
            if e.kind == ExtentKind::Data {
                data += e.len;
            }
            off += e.len;
        }
        assert_eq!(off, 64 << 20);
        // tmpfs and ext4 report exactly the written MiB; some filesystems round to their blocks.
        assert!((1 << 20..=2 << 20).contains(&data), "data {data}");
        let mut b = [0u8; 2];
        s.read_at((32 << 20) - 1, &mut b).unwrap();
        assert_eq!(b, [0, 7]);
    }

    #[test]
    fn allocated_but_unwritten_reads_as_zero_whatever_is_cached() {
        use std::os::unix::io::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prealloc.raw");
        let mut f = File::create(&p).unwrap();
        f.set_len(16 << 20).unwrap();
        // SAFETY: fallocate on our own descriptor.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 8 << 20) };
        if r != 0 {
            // tmpfs and some file systems have no unwritten extents: nothing to test there.
            return;
        }
        f.seek(SeekFrom::Start(12 << 20)).unwrap();
        f.write_all(&[5u8; 65536]).unwrap();
        drop(f);
        let walk = || {
            let mut s = RawSource::open(&p).unwrap();
            let mut out = Vec::new();
            let mut off = 0;
            while off < s.size() {
                let e = s.extent(off, u64::MAX).unwrap();
                out.push((e.offset, e.len, e.kind));
                off += e.len;
            }
            out
        };
        let before = walk();
        // Bring the preallocated pages into the page cache, as `cat` would.
        std::fs::read(&p).unwrap();
        assert_eq!(walk(), before);
        let data: u64 = before
            .iter()
            .filter(|e| e.2 == ExtentKind::Data)
            .map(|e| e.1)
            .sum();
        assert_eq!(data, 65536, "{before:?}");
    }
}
