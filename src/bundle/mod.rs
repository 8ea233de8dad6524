//! Operations on bundles: a directory with `manifest.json`, one disk file per mapping and
//! `SHA256SUMS`.
//!
//! - [`register`] makes a bundle from disk images, atomically (through [`crate::staging`]);
//! - [`verify`] re-reads a bundle and reports every difference from its manifest.

pub mod build;
pub mod checks;
pub mod register;
pub mod sums;
pub mod verify;

use std::path::{Path, PathBuf};

/// The checksum file's name in a bundle.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// Errors of bundle operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source image is unreadable or invalid.
    #[error(transparent)]
    Source(#[from] crate::format::Error),
    /// The copy failed.
    #[error(transparent)]
    Copy(#[from] crate::copy::Error),
    /// An image field breaks Outscale's rules, or a manifest is unreadable.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::Error),
    /// A file or directory of the bundle could not be made or read.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// A template is invalid.
    #[error(transparent)]
    Template(#[from] crate::layout::template::Error),
    /// A tree source could not be read (the message names the source and the member).
    #[error(transparent)]
    Tree(#[from] crate::tree::source::Error),
    /// The output could not be staged or committed.
    #[error(transparent)]
    Staging(#[from] crate::staging::Error),
    /// What was declared contradicts what the disk holds.
    #[error("{}: {reason}", path.display())]
    Check {
        /// The disk.
        path: PathBuf,
        /// The contradiction and its evidence.
        reason: String,
    },
    /// The audit found something at or above the severity the policy denies.
    #[error("{}: audit: {reason}", path.display())]
    AuditDenied {
        /// The image's root disk.
        path: PathBuf,
        /// The findings, summed up in one line.
        reason: String,
    },
    /// The audit could not read everything that holds data, and the policy denies findings
    /// without `--allow-incomplete`.
    #[error("{}: audit: {reason}", path.display())]
    AuditIncomplete {
        /// The image's root disk.
        path: PathBuf,
        /// What was not audited, in one line.
        reason: String,
    },
    /// Something about the bundle itself is wrong.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The bundle or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// True when the image was refused by the audit policy.
    pub fn is_audit_denied(&self) -> bool {
        matches!(self, Error::AuditDenied { .. })
    }

    /// True when the image was refused because its audit was incomplete.
    pub fn is_audit_incomplete(&self) -> bool {
        matches!(self, Error::AuditIncomplete { .. })
    }

    /// True when the operation stopped because it was interrupted.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, Error::Copy(crate::copy::Error::Interrupted))
    }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { path, what, source }
}

/// True for a bundle member name that is one plain file name: no directory parts, no `..`, no
/// hidden files, no control characters. Manifests and SHA256SUMS are input: their names must not
/// reach outside the bundle.
pub fn is_safe_member_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}
