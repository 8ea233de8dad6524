//! FAT12/16/32 file systems, read-only. (Being written.)

use std::path::PathBuf;

/// An error about a FAT file system inside an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path does not exist in the file system.
    #[error("{}: {path}: no such file in the file system", name.display())]
    NotFound {
        /// The image.
        name: PathBuf,
        /// The path inside the file system.
        path: String,
    },
}

impl Error {
    /// Whether the error says that a path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}
