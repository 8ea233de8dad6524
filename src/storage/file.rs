//! Local files and block devices, read with `pread`.
//!
//! Holes are found with `FIEMAP`, or `SEEK_DATA`/`SEEK_HOLE` where the file system has no
//! FIEMAP, so a sparse 64 GiB file with 1 GiB of data costs what 1 GiB costs. Where neither
//! works (block devices), the storage knows no extents and the engine's zero detection still
//! keeps zeros out of the output.
//!
//! FIEMAP comes first because its answer depends only on the file: extents allocated but never
//! written (`fallocate`, the journal `mkfs.ext4` reserves) are flagged unwritten and read as
//! zeros. `SEEK_DATA` calls such an extent data when its pages happen to be in the page cache
//! and a hole when not, so the same file would plan a different qcow2 layout from one run to the
//! next.

use super::{Error, Extent, ExtentKind, ReadAt, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// A local file or block device, opened read-only.
#[derive(Debug)]
pub struct LocalFile {
    file: File,
    path: PathBuf,
    size: u64,
    /// Not a regular file: a block or character device.
    device: bool,
    /// False once `SEEK_DATA` has failed with "not supported": everything is data from then on.
    seek_data: AtomicBool,
    /// FIEMAP's state: untried, unsupported, or the extents of the last query. Locked only for
    /// the lookup, never across a read of data.
    fiemap: Mutex<Fiemap>,
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

impl LocalFile {
    /// Opens a file or block device read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            what: "cannot open",
            source,
        })?;
        Self::from_file(file, path)
    }

    /// Reads `file`, already open as `path`.
    pub fn from_file(mut file: File, path: &Path) -> Result<Self> {
        let io = |what, source| Error::Io {
            path: path.to_owned(),
            what,
            source,
        };
        let meta = file.metadata().map_err(|e| io("cannot stat", e))?;
        if meta.is_dir() {
            return Err(Error::NotADisk {
                path: path.to_owned(),
                reason: "is a directory, not a disk image",
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
            device: !meta.is_file(),
            seek_data: AtomicBool::new(true),
            fiemap: Mutex::new(Fiemap::Untried),
        })
    }

    /// `lseek` with `SEEK_DATA` (`hole: false`) or `SEEK_HOLE` (`hole: true`).
    fn seek(&self, offset: u64, hole: bool) -> rustix::io::Result<u64> {
        let whence = if hole {
            rustix::fs::SeekFrom::Hole(offset)
        } else {
            rustix::fs::SeekFrom::Data(offset)
        };
        rustix::fs::seek(&self.file, whence)
    }
}

impl LocalFile {
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
    fn fiemap_extent(&self, offset: u64, end: u64) -> Option<Extent> {
        // A poisoned lock only means another reader panicked; the cache is still consistent.
        let mut fiemap = self.fiemap.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = match &*fiemap {
            Fiemap::Unsupported => return None,
            Fiemap::Known { from, covered, .. } => !(*from <= offset && offset < *covered),
            Fiemap::Untried => true,
        };
        if fresh {
            let sync = matches!(*fiemap, Fiemap::Untried);
            *fiemap = match self.query_fiemap(offset, sync) {
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
        } = &*fiemap
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

impl ReadAt for LocalFile {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn extent(&self, offset: u64, max_len: u64) -> Option<Extent> {
        let e = self.extent_as_mapped(offset, max_len)?;
        // A file that shrank since it was opened maps its lost tail as a hole (FIEMAP lists no
        // extent there, SEEK_DATA says ENXIO): call that range data instead, so that its read
        // fails ("file shrank while being read") rather than giving zeros for bytes that were
        // there. Seen on tmpfs, which has no FIEMAP; possible with FIEMAP too.
        if e.kind == ExtentKind::Zero && !self.device {
            let now = self.file.metadata().map_or(0, |m| m.len());
            if now < e.offset.saturating_add(e.len) {
                return Some(Extent {
                    kind: ExtentKind::Data,
                    ..e
                });
            }
        }
        Some(e)
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn is_device(&self) -> bool {
        self.device
    }
}

impl LocalFile {
    /// The extent at `offset` as FIEMAP or `SEEK_DATA` map it now.
    fn extent_as_mapped(&self, offset: u64, max_len: u64) -> Option<Extent> {
        let end = self.size.min(offset.saturating_add(max_len));
        if let Some(e) = self.fiemap_extent(offset, end) {
            return Some(e);
        }
        if !self.seek_data.load(Ordering::Relaxed) {
            return None;
        }
        let data = |len: u64| Extent {
            offset,
            len,
            kind: ExtentKind::Data,
        };
        match self.seek(offset, false) {
            Ok(next_data) if next_data > offset => Some(Extent {
                offset,
                len: next_data.min(end) - offset,
                kind: ExtentKind::Zero,
            }),
            Ok(_) => {
                let hole = self.seek(offset, true).unwrap_or(end);
                Some(data(hole.clamp(offset + 1, end) - offset))
            }
            // ENXIO: no data at or after `offset` — the rest of the file is a hole.
            Err(rustix::io::Errno::NXIO) => Some(Extent {
                offset,
                len: end - offset,
                kind: ExtentKind::Zero,
            }),
            Err(_) => {
                self.seek_data.store(false, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file cut short after it was opened: its lost tail is data to read (and fail on), never
    /// a hole of zeros, whether FIEMAP or SEEK_DATA maps it.
    #[test]
    fn a_shrunk_file_has_no_hole_where_its_data_was() {
        // Both mappings: FIEMAP where the test's TMPDIR is (ext4 here), SEEK_DATA on tmpfs.
        shrunk_file_read_fails(tempfile::tempdir().unwrap());
        if Path::new("/dev/shm").is_dir() {
            shrunk_file_read_fails(tempfile::tempdir_in("/dev/shm").unwrap());
        }
    }

    fn shrunk_file_read_fails(dir: tempfile::TempDir) {
        let p = dir.path().join("k");
        std::fs::write(&p, vec![9u8; 100_000]).unwrap();
        let s = LocalFile::open(&p).unwrap();
        std::fs::write(&p, b"short").unwrap();
        let mut offset = 0;
        let mut failed = false;
        while offset < s.len() {
            let e = s.extent(offset, s.len() - offset).unwrap_or(Extent {
                offset,
                len: s.len() - offset,
                kind: ExtentKind::Data,
            });
            if e.kind == ExtentKind::Data {
                let mut buf = vec![0; e.len as usize];
                if let Err(err) = s.read_at(offset, &mut buf) {
                    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
                    failed = true;
                    break;
                }
            }
            offset += e.len;
        }
        assert!(failed, "the shrunk file read as complete");
    }

    #[test]
    fn sparse_file_extents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[7u8; 1 << 20]).unwrap();
        drop(f);
        let s = LocalFile::open(&p).unwrap();
        assert_eq!(s.len(), 64 << 20);
        let mut off = 0;
        let mut data = 0;
        while off < s.len() {
            let e = s.extent(off, u64::MAX).unwrap_or(Extent {
                offset: off,
                len: s.len() - off,
                kind: ExtentKind::Data,
            });
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
            let s = LocalFile::open(&p).unwrap();
            let mut out = Vec::new();
            let mut off = 0;
            while off < s.len() {
                let e = s.extent(off, u64::MAX).unwrap_or(Extent {
                    offset: off,
                    len: s.len() - off,
                    kind: ExtentKind::Data,
                });
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
