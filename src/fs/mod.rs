//! Reading file systems inside disk images, without mounting.
//!
//! The file systems are read through a [`crate::format::Disk`], so the same code reads a bare
//! file system image, a partition of a raw disk and a partition of a qcow2 disk, as a user with
//! no privileges and without touching the host's kernel.
//!
//! [`FileSystem`] is what inspection and the audit need of any of them: listing a directory,
//! metadata, symlink targets and bounded reads. Paths are absolute, `/`-separated and UTF-8.

pub mod ext4;
pub mod fat;
pub mod ntfs;

use std::path::Path;

/// What a directory entry or a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// One entry of a directory (never `.` or `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name; a name that is not UTF-8 has its invalid bytes replaced by U+FFFD.
    pub name: String,
    /// What the entry is, without following a symlink.
    pub kind: Kind,
}

/// What [`FileSystem::metadata`] reports of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// What the path is.
    pub kind: Kind,
    /// Size in bytes (of the file, or of the directory's storage).
    pub len: u64,
    /// Unix permission bits (`0o7777`); FAT reports `0o755` for directories, `0o644` otherwise.
    pub mode: u32,
    /// Owner; 0 on FAT.
    pub uid: u32,
}

/// An error from a file system reader: the module's own error, each naming the image and the
/// path inside it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the ext2/3/4 reader.
    #[error(transparent)]
    Ext4(#[from] ext4::Error),
    /// From the FAT reader.
    #[error(transparent)]
    Fat(#[from] fat::Error),
    /// From the NTFS reader.
    #[error(transparent)]
    Ntfs(#[from] ntfs::Error),
}

impl Error {
    /// Whether the path (or a directory on the way to it) does not exist: the ordinary case when
    /// probing for optional files, as opposed to a corrupt or unreadable file system.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Ext4(e) => e.is_not_found(),
            Error::Fat(e) => e.is_not_found(),
            Error::Ntfs(e) => e.is_not_found(),
        }
    }
}

/// A read-only view of a file system.
///
/// Every method treats the file system as hostile: sizes are bounded by the caller's `max`
/// arguments before anything is allocated, symlink chains are bounded, and a corrupt structure
/// is an error about that path, never a panic or a hang.
pub trait FileSystem {
    /// The name that stands for the image (and partition) in messages.
    fn name(&self) -> &Path;

    /// The file system's type, as [`crate::inspect::signature::FsKind`] names it (`ext4`, `fat32`, `ntfs`…).
    fn kind(&self) -> &'static str;

    /// The entries of the directory at `path` (symlinks on the way followed), sorted by name,
    /// without `.` and `..`. More than `max` entries is an error, not a truncated list.
    fn read_dir(&self, path: &str, max: usize) -> Result<Vec<Entry>, Error>;

    /// Metadata of `path`, following a final symlink.
    fn metadata(&self, path: &str) -> Result<Meta, Error>;

    /// Metadata of `path` itself, a final symlink not followed.
    fn symlink_metadata(&self, path: &str) -> Result<Meta, Error>;

    /// The target of the symlink at `path`, as stored (relative or absolute).
    fn read_link(&self, path: &str) -> Result<String, Error>;

    /// Reads up to `buf.len()` bytes of the regular file at `path` (symlinks followed) from byte
    /// `offset`; returns how many were read, fewer only at the end of the file.
    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Error>;

    /// The whole regular file at `path` (symlinks followed); a file over `max` bytes is an error
    /// given before anything is read.
    fn read_to_vec(&self, path: &str, max: u64) -> Result<Vec<u8>, Error>;
}
