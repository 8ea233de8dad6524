//! Export and import: bundles to and from Outscale export packages (gzip disk objects, the
//! export manifest, mkomi's manifest and `SHA256SUMS`) in a directory or object storage.

pub mod gzip;
pub mod import;
pub mod incoming;
pub mod manifest;
pub mod package;
pub mod s3;

use std::path::PathBuf;

/// An error of export or import; each message is one line naming the file, object or URL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle's manifest is unreadable or invalid.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::Error),
    /// A disk is unreadable or invalid.
    #[error(transparent)]
    Source(#[from] crate::format::Error),
    /// Reading a disk through its format failed.
    #[error(transparent)]
    Copy(#[from] crate::copy::Error),
    /// The bundle names a disk file that cannot be read.
    #[error(transparent)]
    Inspect(#[from] crate::inspect::Error),
    /// Registering the imported disks failed.
    #[error(transparent)]
    Register(#[from] crate::bundle::Error),
    /// The output could not be staged or committed.
    #[error(transparent)]
    Staging(#[from] crate::staging::Error),
    /// Object storage refused or failed.
    #[error(transparent)]
    S3(#[from] s3::Error),
    /// A file could not be made or read.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// Writing a compressed object failed.
    #[error("cannot write the compressed object: {0}")]
    Write(std::io::Error),
    /// A disk of the bundle is not what its manifest says.
    #[error("{}: {reason}", path.display())]
    Bundle {
        /// The disk file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A request that cannot be carried out.
    #[error("{0}")]
    Invalid(String),
    /// Stopped by Ctrl-C (see `package::Request::cancel`).
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// Whether the work (an export or an import) stopped on Ctrl-C.
    pub fn is_interrupted(&self) -> bool {
        match self {
            Error::Interrupted | Error::S3(s3::Error::Interrupted { .. }) => true,
            Error::Copy(e) => matches!(e, crate::copy::Error::Interrupted),
            Error::Register(e) => e.is_interrupted(),
            _ => false,
        }
    }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;
