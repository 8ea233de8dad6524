//! Formats: how the bytes of a storage are laid out as a virtual disk — raw, qcow2 (with
//! backing chains) — behind one [`Disk`] trait.
//!
//! Each format is one file with one entry point, `open(Arc<dyn ReadAt>, &OpenOptions) ->
//! Result<Arc<dyn Disk>>`: [`raw::open`], [`qcow2::open`], and [`detect::open`], which picks one
//! from the content ([`detect::detect_bytes`]), never from the file name. A [`Disk`] tells the
//! copy engine where the data is before any data is read, so that the cost of a copy follows the
//! allocated data, not the virtual size. [`OpenOptions`] carries what the user allowed — the
//! input format, the directories backing files may come from — so that the safe defaults (detect,
//! follow no backing file) are what a caller gets without asking.

pub mod detect;
pub mod qcow2;
pub mod raw;

pub use crate::storage::{Extent, ExtentKind};

use crate::storage::{self, ReadAt, file::LocalFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A readable virtual disk: a format's view of a storage.
///
/// Every method takes `&self`, so one opened disk is shared (`Arc<dyn Disk>`) by everything that
/// reads it — inspect, the audit, the file systems opened on its partitions, the copy engine's
/// reader thread — instead of being handed from one to the next. A format that keeps state
/// between calls (a cache) keeps it behind a lock of its own.
pub trait Disk: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;

    /// The extent that starts at `offset` (`offset < size()`), at most `max_len` bytes long
    /// (`max_len >= 1`). Must not read data.
    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent>;

    /// Fills `buf` with the virtual disk's bytes at `offset`; `offset + buf.len() <= size()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The format's name as the manifest spells it (`raw`, `qcow2`).
    fn format(&self) -> &'static str;

    /// The file this disk reads, for messages.
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

/// How the format of a source is chosen (`--input-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// Detected from the content of a regular file; anything else (a block device) is raw.
    #[default]
    Auto,
    /// The bytes are the disk, whatever header they start with.
    Raw,
    /// A qcow2 image; anything else is an error.
    Qcow2,
}

/// Which backing files a qcow2 image may lead to.
///
/// None by default: a qcow2 image may name any file on the host (`/etc/shadow`, another user's
/// download), so following one is something the user grants (`--allow-backing DIR`), for
/// directories the user names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BackingPolicy {
    /// No backing file is followed at all.
    #[default]
    Refuse,
    /// Backing files are followed onto regular files inside these directories (never empty).
    Within(Vec<PathBuf>),
}

impl BackingPolicy {
    /// The policy `--allow-backing` gives: inside `dirs`, or none at all when `dirs` is empty.
    pub fn within(dirs: Vec<PathBuf>) -> Self {
        if dirs.is_empty() {
            BackingPolicy::Refuse
        } else {
            BackingPolicy::Within(dirs)
        }
    }

    /// The directories backing files may come from; empty when none may be followed.
    pub fn dirs(&self) -> &[PathBuf] {
        match self {
            BackingPolicy::Refuse => &[],
            BackingPolicy::Within(dirs) => dirs,
        }
    }
}

/// Options for opening a disk: what the user allowed. The default detects the format and
/// follows no backing file.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    input_format: InputFormat,
    backing: BackingPolicy,
}

impl OpenOptions {
    /// Options with the input format and backing-file policy given.
    pub fn new(input_format: InputFormat, backing: BackingPolicy) -> Self {
        OpenOptions {
            input_format,
            backing,
        }
    }

    /// The format of the source (`--input-format`).
    pub fn input_format(&self) -> InputFormat {
        self.input_format
    }

    /// Which backing files may be followed (`--allow-backing`).
    pub fn backing(&self) -> &BackingPolicy {
        &self.backing
    }
}

/// Chooses the format to read a source as.
///
/// Only a regular file's content is probed (`probe`). A block device is raw unless the caller
/// says otherwise: its content belongs to whoever used the disk, and a guest can write a qcow2
/// header on its own disk, which, taken as a container, would make the host read the backing
/// file the guest names (qemu's documentation warns about exactly this).
pub fn choose_format(
    requested: InputFormat,
    regular_file: bool,
    probe: impl FnOnce() -> Result<Format>,
) -> Result<Format> {
    match requested {
        InputFormat::Raw => Ok(Format::Raw),
        InputFormat::Qcow2 => Ok(Format::Qcow2),
        InputFormat::Auto if regular_file => probe(),
        InputFormat::Auto => Ok(Format::Raw),
    }
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        match e {
            storage::Error::Io { path, what, source } => Error::Io { path, what, source },
            storage::Error::NotADisk { path, reason } => Error::Invalid {
                path,
                reason: reason.to_owned(),
            },
        }
    }
}

/// Opens the local file or block device at `path` as a [`Disk`] of the format
/// [`choose_format`] picks.
///
/// The file is opened once: the descriptor whose type decided the format is the one read.
pub fn open_path(path: &Path, options: &OpenOptions) -> Result<Arc<dyn Disk>> {
    let file: Arc<dyn ReadAt> = Arc::new(LocalFile::open(path)?);
    detect::open(file, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img_create(img: &Path, size: &str) {
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(img)
            .arg(size)
            .output()
            .expect("qemu-img (qemu-utils installed?)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn opts(input_format: InputFormat) -> OpenOptions {
        OpenOptions::new(input_format, BackingPolicy::Refuse)
    }

    fn open(path: &Path, options: &OpenOptions) -> Result<Arc<dyn Disk>> {
        open_path(path, options)
    }

    #[test]
    fn only_regular_files_are_probed() {
        let never = || -> Result<Format> { panic!("a device's content was probed") };
        let qcow2 = || Ok(Format::Qcow2);
        assert_eq!(
            choose_format(InputFormat::Auto, false, never).unwrap(),
            Format::Raw
        );
        assert_eq!(
            choose_format(InputFormat::Auto, true, qcow2).unwrap(),
            Format::Qcow2
        );
        assert_eq!(
            choose_format(InputFormat::Raw, true, never).unwrap(),
            Format::Raw
        );
        assert_eq!(
            choose_format(InputFormat::Qcow2, false, never).unwrap(),
            Format::Qcow2
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn input_format_overrides_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.qcow2");
        qemu_img_create(&img, "1M");
        let len = std::fs::metadata(&img).unwrap().len();
        let src = open(&img, &OpenOptions::default()).unwrap();
        assert_eq!((src.format(), src.size()), ("qcow2", 1 << 20));
        // Raw: the qcow2 file's own bytes, header included.
        let src = open(&img, &opts(InputFormat::Raw)).unwrap();
        assert_eq!((src.format(), src.size()), ("raw", len));
        let mut magic = [0u8; 4];
        src.read_at(0, &mut magic).unwrap();
        assert_eq!(&magic, b"QFI\xfb");
        // Qcow2 on something else is an error naming the file.
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, vec![0u8; 65536]).unwrap();
        let err = match open(&raw, &opts(InputFormat::Qcow2)) {
            Ok(_) => panic!("a raw file opened as qcow2"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("disk.raw") && err.contains("not a qcow2 image"),
            "{err}"
        );
    }

    /// Detaches a loop device when dropped.
    struct Loop(String);

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }

    /// A block device whose content starts with a qcow2 header (a guest could have written it) is
    /// read as the raw device unless --input-format qcow2 says otherwise.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn block_device_is_raw_whatever_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("guest.qcow2");
        qemu_img_create(&img, "8M");
        // Whole sectors, as a disk has: the qcow2 file ends with its L1 table's 8 bytes.
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(f.metadata().unwrap().len().next_multiple_of(65536))
            .unwrap();
        drop(f);
        let len = std::fs::metadata(&img).unwrap().len();
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(&img)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => Loop(String::from_utf8_lossy(&o.stdout).trim().into()),
            other => {
                // No loop devices (an unprivileged container): choose_format's unit test above
                // covers the decision.
                eprintln!("no loop device ({other:?}): block device case not run");
                return;
            }
        };
        let path = Path::new(&dev.0);
        let src = open(path, &OpenOptions::default()).unwrap();
        assert_eq!((src.format(), src.size()), ("raw", len));
        let src = open(path, &opts(InputFormat::Qcow2)).unwrap();
        assert_eq!((src.format(), src.size()), ("qcow2", 8 << 20));
    }
}
