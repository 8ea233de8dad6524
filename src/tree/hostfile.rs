//! Host files of a directory input, opened only while they are read.
//!
//! [`LocalFile`] keeps its descriptor open for as long as it lives. A tree read from a directory
//! of 100,000 files would then hold 100,000 descriptors from the walk until the image is
//! written, past the usual `RLIMIT_NOFILE` of 1,024 (soft) to 524,288 (hard). A [`HostFile`]
//! holds only the path and the size seen during the walk; the first read opens the file through
//! a [`FdPool`] shared by the whole tree, which keeps the few most recently used files open (the
//! writer reads one file after the other) and closes the oldest when it is full.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::storage::file::LocalFile;
use crate::storage::{Extent, ExtentKind, ReadAt};

/// How many host files a pool keeps open at once: a handful for the writer's reader thread and
/// the copy engine, far below any descriptor limit.
pub const POOL_SIZE: usize = 16;

/// The open files of one tree, most recently used last.
#[derive(Debug, Default)]
pub struct FdPool {
    open: Mutex<VecDeque<(u64, Arc<LocalFile>)>>,
}

impl FdPool {
    /// An empty pool.
    pub fn new() -> Arc<Self> {
        Arc::new(FdPool::default())
    }

    /// The open file for `file`, opening it (and closing the oldest) when it is not open.
    fn get(&self, file: &HostFile) -> io::Result<Arc<LocalFile>> {
        {
            // A poisoned lock only means a reader panicked; the list is still consistent.
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = open.iter().position(|(id, _)| *id == file.id)
                && let Some(hit) = open.remove(i)
            {
                let f = hit.1.clone();
                open.push_back(hit);
                return Ok(f);
            }
        }
        // Opened outside the lock: other readers go on meanwhile.
        let local = LocalFile::open(&file.path).map_err(io::Error::other)?;
        if local.len() != file.size {
            // The writer planned the file at the size the walk saw; anything else would give a
            // file system whose inode disagrees with its blocks.
            return Err(io::Error::other(format!(
                "{}: changed while the image was built ({} bytes, now {})",
                file.path.display(),
                file.size,
                local.len()
            )));
        }
        let local = Arc::new(local);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= POOL_SIZE {
            open.pop_front();
        }
        open.push_back((file.id, local.clone()));
        Ok(local)
    }

    /// How many files are open now (for tests).
    pub fn open_count(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The block zeros are found in: the file system's, and the tar spool's (`tree::tar`), so that
/// a file read from a directory and the same file read from an archive have the same holes.
pub const ZERO_BLOCK: u64 = 4096;

/// A regular host file, read through its tree's [`FdPool`].
#[derive(Debug)]
pub struct HostFile {
    pool: Arc<FdPool>,
    /// Unique within the pool.
    id: u64,
    path: PathBuf,
    size: u64,
    /// After [`HostFile::scan`], the runs that read as zeros, sorted and apart: aligned whole
    /// [`ZERO_BLOCK`]s that are holes or all zero bytes, and a last partial block that is a hole
    /// (empty for most files). `None`: not scanned, the file system's holes are the zeros.
    zeros: Option<Vec<(u64, u64)>>,
}

impl HostFile {
    /// The file at `path`, of `size` bytes as the walk saw it, known to `pool` as `id` (unique
    /// within the pool). Nothing is read: everything is data except the holes the file system
    /// reports.
    pub fn new(pool: Arc<FdPool>, id: u64, path: PathBuf, size: u64) -> Self {
        HostFile {
            pool,
            id,
            path,
            size,
            zeros: None,
        }
    }

    /// As [`HostFile::new`], and reads the file once to find its zeros, as the tar spool finds
    /// them: an aligned whole 4 KiB block of zeros becomes a hole of the written file system
    /// whether the file system holding the file made it a hole or not (as `mke2fs -d` does too).
    /// Holes are skipped without reading, so a sparse file of terabytes costs its data.
    pub fn scan(pool: Arc<FdPool>, id: u64, path: PathBuf, size: u64) -> io::Result<Self> {
        let local = LocalFile::open(&path).map_err(io::Error::other)?;
        if local.len() != size {
            return Err(io::Error::other(format!(
                "{}: changed while it was read ({} bytes, now {})",
                path.display(),
                size,
                local.len()
            )));
        }
        let mut zeros: Vec<(u64, u64)> = Vec::new();
        let mut push = |off: u64, len: u64| match zeros.last_mut() {
            Some((o, l)) if *o + *l == off => *l += len,
            _ => zeros.push((off, len)),
        };
        let whole_end = size - size % ZERO_BLOCK;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < size {
            let ext = local.extent(at, size - at);
            let (len, hole) = match ext {
                Some(e) if e.offset == at && e.len > 0 => {
                    (e.len.min(size - at), e.kind == ExtentKind::Zero)
                }
                _ => (size - at, false),
            };
            let end = at + len;
            if hole {
                // Whole blocks inside the hole, and the last partial block when the hole
                // reaches the end of the file.
                let first = at.next_multiple_of(ZERO_BLOCK);
                let last = if end == size {
                    size
                } else {
                    end - end % ZERO_BLOCK
                };
                if last > first {
                    push(first, last - first);
                }
            } else {
                // Whole blocks only: a block this run shares with the one before holds data.
                let mut b = at.next_multiple_of(ZERO_BLOCK);
                let stop = end.min(whole_end) - end.min(whole_end) % ZERO_BLOCK;
                while b < stop {
                    let n = ((stop - b) as usize).min(buf.len());
                    let chunk = buf.get_mut(..n).unwrap_or_default();
                    local.read_at(b, chunk)?;
                    for (i, block) in chunk.chunks(ZERO_BLOCK as usize).enumerate() {
                        if block.iter().all(|&x| x == 0) {
                            push(b + i as u64 * ZERO_BLOCK, ZERO_BLOCK);
                        }
                    }
                    b += n as u64;
                }
            }
            at = end;
        }
        zeros.shrink_to_fit();
        Ok(HostFile {
            pool,
            id,
            path,
            size,
            zeros: Some(zeros),
        })
    }
}

impl ReadAt for HostFile {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.pool.get(self)?.read_at(offset, buf)
    }

    fn extent(&self, offset: u64, max_len: u64) -> Option<Extent> {
        if let Some(zeros) = &self.zeros {
            // The zero runs of the scan: the first run ending after `offset`.
            let i = zeros.partition_point(|&(o, l)| o + l <= offset);
            let (len, kind) = match zeros.get(i) {
                Some(&(o, l)) if o <= offset => (o + l - offset, ExtentKind::Zero),
                Some(&(o, _)) => (o - offset, ExtentKind::Data),
                None => (self.size.saturating_sub(offset), ExtentKind::Data),
            };
            return Some(Extent {
                offset,
                len: len.min(max_len).max(1),
                kind,
            });
        }
        // Unknown extents are data: a file that cannot be opened fails at its read instead.
        self.pool.get(self).ok()?.extent(offset, max_len)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The extents a storage reports, merged, as (offset, len, zero).
    fn runs(f: &HostFile) -> Vec<(u64, u64, bool)> {
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        let mut at = 0;
        while at < f.len() {
            let e = f.extent(at, f.len() - at).unwrap();
            let zero = e.kind == ExtentKind::Zero;
            match out.last_mut() {
                Some((_, l, z)) if *z == zero => *l += e.len,
                _ => out.push((at, e.len, zero)),
            }
            at += e.len;
        }
        out
    }

    #[test]
    fn a_scan_finds_whole_zero_blocks_and_holes_as_the_spool_does() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::File::create(&p).unwrap();
        // Block 0: data; block 1: written zeros; blocks 2-3: a hole; block 4: data, with a zero
        // byte run that is not a whole block; then 100 bytes of a hole at the end.
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[0u8; 4096], 4096).unwrap();
        let mut b4 = vec![0u8; 4096];
        b4[4000] = 7;
        f.write_all_at(&b4, 4 * 4096).unwrap();
        f.set_len(5 * 4096 + 100).unwrap();
        drop(f);
        let size = 5 * 4096 + 100;
        let scanned = HostFile::scan(FdPool::new(), 1, p.clone(), size).unwrap();
        assert_eq!(
            runs(&scanned),
            [
                (0, 4096, false),
                (4096, 3 * 4096, true),
                (4 * 4096, 4096, false),
                (5 * 4096, 100, true)
            ]
        );
        let mut buf = vec![9u8; size as usize];
        scanned.read_at(0, &mut buf).unwrap();
        assert_eq!(buf[4 * 4096 + 4000], 7);
        // A file that changed since the walk is refused.
        assert!(HostFile::scan(FdPool::new(), 1, p, size + 1).is_err());
    }

    #[test]
    fn the_pool_keeps_at_most_its_size_open() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FdPool::new();
        let files: Vec<HostFile> = (0..POOL_SIZE as u64 + 5)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, i.to_le_bytes()).unwrap();
                HostFile::new(pool.clone(), i, p, 8)
            })
            .collect();
        for (i, f) in files.iter().enumerate() {
            let mut b = [0u8; 8];
            f.read_at(0, &mut b).unwrap();
            assert_eq!(u64::from_le_bytes(b), i as u64);
        }
        assert_eq!(pool.open_count(), POOL_SIZE);
        std::fs::write(files[0].path(), b"longer than eight").unwrap();
        let e = files[0].read_at(0, &mut [0u8; 8]).unwrap_err();
        assert!(e.to_string().contains("changed while"), "{e}");
    }
}
