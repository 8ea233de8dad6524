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
use crate::storage::{Extent, ReadAt};

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

/// A regular host file, read through its tree's [`FdPool`].
#[derive(Debug)]
pub struct HostFile {
    pool: Arc<FdPool>,
    /// Unique within the pool.
    id: u64,
    path: PathBuf,
    size: u64,
}

impl HostFile {
    /// The file at `path`, of `size` bytes as the walk saw it, known to `pool` as `id` (unique
    /// within the pool).
    pub fn new(pool: Arc<FdPool>, id: u64, path: PathBuf, size: u64) -> Self {
        HostFile {
            pool,
            id,
            path,
            size,
        }
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
