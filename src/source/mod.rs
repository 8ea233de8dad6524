//! Disk sources: raw images and block devices, qcow2 images with backing chains.
//!
//! Every format sits behind [`Source`], which tells the copy engine where the data is before any
//! data is read, so that the cost of a copy follows the allocated data, not the virtual size.
//! The format is detected from the content ([`detect`]), never from the file name.

pub mod qcow2;
pub mod raw;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest virtual size a source may claim: 2^56 bytes (64 PiB). Far above any OMI volume
/// (14,901 GiB) and qemu's own limits, yet small enough that offset arithmetic cannot overflow.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 56;

/// An error about one source file; its message names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or examined.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The content is not a valid image of the detected format.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, in one line.
        reason: String,
    },
    /// A valid image that uses something mkomi does not handle.
    #[error("{}: unsupported: {reason}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported, in one line.
        reason: String,
    },
    /// A backing file that may not or cannot be followed.
    #[error("{}: backing file {backing:?}: {reason}", path.display())]
    Backing {
        /// The image that names the backing file.
        path: PathBuf,
        /// The backing file name as stored in the image.
        backing: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What a region of the virtual disk holds, as far as the container tells without reading data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Stored data: must be read (it may still turn out to be zeros).
    Data,
    /// Reads as zeros: a hole, an unallocated or zero cluster.
    Zero,
}

/// A run of the virtual disk of one [`ExtentKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the virtual disk.
    pub offset: u64,
    /// Length in bytes, at least 1.
    pub len: u64,
    /// What the run holds.
    pub kind: ExtentKind,
}

/// A readable virtual disk.
///
/// Calls come from one thread at a time (the engine's reader), but that thread is not the one
/// that opened the source, hence `Send`.
pub trait Source: Send {
    /// Virtual size in bytes.
    fn size(&self) -> u64;

    /// The extent that starts at `offset` (`offset < size()`), at most `max_len` bytes long
    /// (`max_len >= 1`). Must not read data.
    fn extent(&mut self, offset: u64, max_len: u64) -> Result<Extent>;

    /// Fills `buf` with the virtual disk's bytes at `offset`; `offset + buf.len() <= size()`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The format's name as the manifest spells it (`raw`, `qcow2`).
    fn format(&self) -> &'static str;

    /// The file this source reads, for messages.
    fn path(&self) -> &Path;
}

/// Container formats recognised from the first bytes of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Anything that is not a recognised container: the bytes are the disk.
    Raw,
    /// QEMU copy-on-write v2 or v3.
    Qcow2,
}

/// Options for opening a source.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// A directory, besides the image's own, in which backing files may be followed.
    pub allow_backing: Option<PathBuf>,
}

/// Detects the container format of `path` from its content.
///
/// Known containers that mkomi does not read (VMDK, VHDX, VDI, QED, …) are refused rather than
/// taken as raw disks, which would silently copy the container's bytes as if they were a disk.
pub fn detect(path: &Path) -> Result<Format> {
    let mut file = File::open(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        what: "cannot open",
        source,
    })?;
    let mut head = [0u8; 512];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    what: "cannot read",
                    source,
                });
            }
        }
    }
    detect_bytes(&head[..got]).map_err(|name| Error::Unsupported {
        path: path.to_owned(),
        reason: format!(
            "{name} image; convert it to raw or qcow2 first (qemu-img convert -O qcow2)"
        ),
    })
}

/// Detects a format from the first bytes of an image; `Err` names a container mkomi refuses.
pub fn detect_bytes(head: &[u8]) -> std::result::Result<Format, &'static str> {
    let starts = |magic: &[u8]| head.len() >= magic.len() && &head[..magic.len()] == magic;
    if starts(b"QFI\xfb") {
        return Ok(Format::Qcow2);
    }
    // Magics from qemu's block drivers (vmdk.c, vhdx.h, vdi.c, qed.h, vpc.c, parallels.c).
    if starts(b"KDMV") || starts(b"COWD") || starts(b"# Disk DescriptorFile") {
        return Err("VMDK");
    }
    if starts(b"vhdxfile") {
        return Err("VHDX");
    }
    if starts(b"QED\0") {
        return Err("QED");
    }
    if starts(b"conectix") {
        return Err("VHD (dynamic)");
    }
    if starts(b"WithoutFreeSpace") || starts(b"WithouFreSpacExt") {
        return Err("Parallels");
    }
    if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        return Err("VDI");
    }
    Ok(Format::Raw)
}

/// Opens `path` as a [`Source`] of the format its content shows.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Box<dyn Source>> {
    match detect(path)? {
        Format::Raw => Ok(Box::new(raw::RawSource::open(path)?)),
        Format::Qcow2 => Ok(Box::new(qcow2::Qcow2Source::open(path, options)?)),
    }
}
