//! Disk sinks: the files a bundle holds.
//!
//! A sink receives the virtual disk in order, one block at a time, from the copy engine, and
//! decides what to store: both sinks leave zeros out. Writing in order is what makes the output
//! bytes depend only on the input.

pub mod format;
pub mod qcow2;
pub mod raw;
mod writeback;

pub use format::{DiskFormat, OutputFormat};

use crate::format::Extent;
use crate::util::is_zero;
use std::path::PathBuf;

/// An error writing one output file; its message names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be created, written or synced.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The requested output cannot hold the disk.
    #[error("{}: {reason}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Why, in one line.
        reason: String,
    },
    /// The source reported different extents while copying than while planning.
    #[error("{}: the source changed while it was being copied", path.display())]
    SourceChanged {
        /// The output file.
        path: PathBuf,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error about `path`.
    fn io(
        path: &std::path::Path,
        what: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Error + use<> {
        let path = path.to_owned();
        move |source| Error::Io { path, what, source }
    }

    fn changed(path: &std::path::Path) -> Error {
        Error::SourceChanged {
            path: path.to_owned(),
        }
    }
}

/// qemu's sector: the size qemu gives any disk is a whole number of them.
pub const SECTOR: u64 = 512;

/// The size of the disk mkomi writes for a source of `source_size` bytes: rounded up to a
/// whole 512-byte sector, the tail zero-filled, as `qemu-img convert` does. qemu reads a raw
/// file's partial last sector as zeros but drops a qcow2 header's partial last sector, so only
/// a whole number of sectors keeps every byte of the source, in both formats. `None` when the
/// rounded size does not fit in 64 bits.
pub fn virtual_size(source_size: u64) -> Option<u64> {
    source_size.checked_next_multiple_of(SECTOR)
}

/// Zero detection granule: 4 KiB, the page and filesystem block size.
pub const GRANULE: usize = 4096;

/// Which 4 KiB granules of a data block (at most 4 MiB) are all zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroMap([u64; 16]);

impl ZeroMap {
    /// Scans `data` (at most 1024 granules).
    pub fn scan(data: &[u8]) -> Self {
        let mut map = [0u64; 16];
        for (i, granule) in data.chunks(GRANULE).take(1024).enumerate() {
            if is_zero(granule) {
                map[i / 64] |= 1 << (i % 64);
            }
        }
        Self(map)
    }

    /// True when bytes `start..end` of the block are zeros; `start` is granule-aligned and `end`
    /// is granule-aligned or the end of the block.
    pub fn is_zero(&self, start: usize, end: usize) -> bool {
        (start / GRANULE..end.div_ceil(GRANULE)).all(|i| self.0[i / 64] & (1 << (i % 64)) != 0)
    }
}

/// One block of the virtual disk, as the engine hands it to a sink.
#[derive(Clone, Copy)]
pub enum Block<'a> {
    /// Bytes that were read; some granules may be zeros, as `zeros` tells.
    Data {
        /// The bytes.
        buf: &'a [u8],
        /// Its zero granules.
        zeros: ZeroMap,
    },
    /// This many bytes of zeros.
    Zero(u64),
}

impl Block<'_> {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Block::Data { buf, .. } => buf.len() as u64,
            Block::Zero(n) => *n,
        }
    }

    /// True for an empty block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a finished sink wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Size of the file in bytes.
    pub file_size: u64,
    /// SHA-256 of the file as written.
    pub sha256: [u8; 32],
    /// Bytes of the virtual disk stored as data (not holes, not zeros), at the output's
    /// allocation granularity.
    pub allocated_bytes: u64,
}

/// Where the copy engine writes a disk.
pub trait Sink {
    /// Whether [`Sink::plan`] wants every extent of the source before the copy starts.
    fn wants_plan(&self) -> bool {
        false
    }

    /// The size, a power of two, whose multiples every data block starts at and (but for the
    /// disk's last) spans: the sink's allocation unit.
    fn alignment(&self) -> u64 {
        GRANULE as u64
    }

    /// Sees one extent of the source, in order, before any block is written.
    fn plan(&mut self, _extent: &Extent) -> Result<()> {
        Ok(())
    }

    /// Receives the next block; `offset` is where it starts in the virtual disk. Blocks arrive in
    /// order and cover the disk without gaps. A data block starts on a multiple of
    /// [`Sink::alignment`] and is at most 4 MiB; a zero block may span any length.
    fn write(&mut self, offset: u64, block: &Block<'_>) -> Result<()>;

    /// Completes the file (metadata, length, fsync) and returns what was written.
    fn finish(&mut self) -> Result<Written>;
}

/// A sink that keeps nothing: used to compute a disk's `ContentDigest` alone.
#[derive(Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {
    fn write(&mut self, _offset: u64, _block: &Block<'_>) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<Written> {
        Ok(Written {
            file_size: 0,
            sha256: [0; 32],
            allocated_bytes: 0,
        })
    }
}
