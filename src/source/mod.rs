//! Disk sources: raw images and block devices, qcow2 images with backing chains.
//!
//! Every format sits behind [`Source`], which tells the copy engine where the data is before any
//! data is read, so that the cost of a copy follows the allocated data, not the virtual size.
//! The format is detected from the content ([`detect`]), never from the file name.

pub mod qcow2;
pub mod raw;

use std::fs::File;
use std::os::unix::fs::FileExt;
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

/// Options for opening a source.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Directories in which backing files may be followed (`--allow-backing`). Empty: no
    /// backing file is followed at all, since a qcow2 image may name any file on the host.
    pub allow_backing: Vec<PathBuf>,
    /// The format of the source (`--input-format`).
    pub input_format: InputFormat,
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

/// Detects the container format of `path` from its content.
///
/// Known containers that mkomi does not read (VMDK, VHDX, VDI, QED, …) are refused rather than
/// taken as raw disks, which would silently copy the container's bytes as if they were a disk.
pub fn detect(path: &Path) -> Result<Format> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        what: "cannot open",
        source,
    })?;
    detect_file(path, &file)
}

/// [`detect`] on a file already open: reads its first 512 bytes.
fn detect_file(path: &Path, file: &File) -> Result<Format> {
    let mut head = [0u8; 512];
    let mut got = 0;
    while got < head.len() {
        let Some(rest) = head.get_mut(got..) else {
            break;
        };
        match file.read_at(rest, got as u64) {
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
    detect_bytes(head.get(..got).unwrap_or_default()).map_err(|name| Error::Unsupported {
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

/// Opens `path` as a [`Source`] of the format [`choose_format`] picks.
///
/// The file is opened once: the descriptor whose type decided the format is the one read.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Box<dyn Source>> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        what: "cannot open",
        source,
    })?;
    let meta = file.metadata().map_err(|source| Error::Io {
        path: path.to_owned(),
        what: "cannot stat",
        source,
    })?;
    match choose_format(options.input_format, meta.is_file(), || {
        detect_file(path, &file)
    })? {
        Format::Raw => Ok(Box::new(raw::RawSource::from_file(file, path)?)),
        Format::Qcow2 => Ok(Box::new(qcow2::Qcow2Source::from_file(
            file, path, options,
        )?)),
    }
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
        OpenOptions {
            input_format,
            ..OpenOptions::default()
        }
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
    fn input_format_overrides_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.qcow2");
        qemu_img_create(&img, "1M");
        let len = std::fs::metadata(&img).unwrap().len();
        let src = open(&img, &OpenOptions::default()).unwrap();
        assert_eq!((src.format(), src.size()), ("qcow2", 1 << 20));
        // Raw: the qcow2 file's own bytes, header included.
        let mut src = open(&img, &opts(InputFormat::Raw)).unwrap();
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
