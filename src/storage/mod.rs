//! Storage: where the bytes of an image live, apart from how they are laid out.
//!
//! A [`ReadAt`] is a flat run of bytes read at offsets through `&self`, so that one storage can
//! be shared (`Arc<dyn ReadAt>`) by every reader of it: a local file or block device
//! ([`file::LocalFile`], which also serves the sparse work file an import spools a download
//! into), or a window into another storage ([`window::Window`]). What the bytes mean — raw disk,
//! qcow2 — is the [`format`](crate::format) layer's business, which opens any storage.

pub mod file;
pub mod window;

use std::path::{Path, PathBuf};

/// What a region of a disk (or storage) holds, as far as its metadata tells without reading data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Stored data: must be read (it may still turn out to be zeros).
    Data,
    /// Reads as zeros: a hole, an unallocated or zero cluster.
    Zero,
}

/// A run of one [`ExtentKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset of the run.
    pub offset: u64,
    /// Length in bytes, at least 1.
    pub len: u64,
    /// What the run holds.
    pub kind: ExtentKind,
}

/// Bytes read at offsets, shared between threads.
///
/// Reads through `&self`, so a storage is opened once and borrowed (or shared in an `Arc`) by
/// whatever reads it: the format above it, file systems opened on its partitions, the copy
/// engine's reader thread.
pub trait ReadAt: Send + Sync {
    /// Length in bytes.
    fn len(&self) -> u64;

    /// Whether the storage holds no byte at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset`. A read that the storage ends before filling is
    /// an [`std::io::ErrorKind::UnexpectedEof`] error (the storage shrank, or the caller did
    /// not check its range).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;

    /// Where data and holes are from `offset` (`< len()`), for at most `max_len` (`>= 1`) bytes,
    /// when the storage knows without reading data (FIEMAP, `SEEK_DATA`); `None` when it does
    /// not, and everything must be taken as data.
    fn extent(&self, offset: u64, max_len: u64) -> Option<Extent> {
        let _ = (offset, max_len);
        None
    }

    /// The name of the storage in messages (a file's path, an object's name).
    fn path(&self) -> &Path;

    /// Whether the storage is a device, whose content belongs to whoever wrote the disk: its
    /// format is never guessed from its content (see [`crate::format::choose_format`]).
    fn is_device(&self) -> bool {
        false
    }
}

/// An error opening a storage; its message names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or examined.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The path names something that holds no disk (a directory).
    #[error("{}: {reason}", path.display())]
    NotADisk {
        /// The path.
        path: PathBuf,
        /// What it is, in one line.
        reason: &'static str,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;
