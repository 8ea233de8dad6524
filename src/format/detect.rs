//! Which format a storage holds, from its content (never from its name), and opening it as that.

use super::{Disk, Error, Format, OpenOptions, Result, choose_format, qcow2, raw};
use crate::storage::{ReadAt, file::LocalFile};
use std::path::Path;
use std::sync::Arc;

/// Bytes read to recognise a container: every magic below lies in the first sector.
const HEAD: u64 = 512;

/// Opens `storage` as a [`Disk`] of the format [`choose_format`] picks from the options and, for
/// a regular file, its content.
pub fn open(storage: Arc<dyn ReadAt>, options: &OpenOptions) -> Result<Arc<dyn Disk>> {
    match choose_format(options.input_format(), !storage.is_device(), || {
        detect(storage.as_ref())
    })? {
        Format::Raw => raw::open(storage, options),
        Format::Qcow2 => qcow2::open(storage, options),
    }
}

/// Detects the container format of the file at `path` from its content.
pub fn detect_path(path: &Path) -> Result<Format> {
    detect(&LocalFile::open(path)?)
}

/// Detects the container format of `storage` from its first bytes.
///
/// Known containers that mkomi does not read (VMDK, VHDX, VDI, QED, …) are refused rather than
/// taken as raw disks, which would silently copy the container's bytes as if they were a disk.
pub fn detect(storage: &dyn ReadAt) -> Result<Format> {
    let mut head = [0u8; HEAD as usize];
    let got = &mut head[..storage.len().min(HEAD) as usize];
    storage.read_at(0, got).map_err(|source| Error::Io {
        path: storage.path().to_owned(),
        what: "cannot read",
        source,
    })?;
    detect_bytes(got).map_err(|name| Error::Unsupported {
        path: storage.path().to_owned(),
        reason: format!(
            "{name} image; convert it to raw or qcow2 first (qemu-img convert -O qcow2)"
        ),
    })
}

/// Detects a format from the first bytes of an image; `Err` names a container mkomi refuses.
pub fn detect_bytes(head: &[u8]) -> std::result::Result<Format, &'static str> {
    let starts = |magic: &[u8]| head.starts_with(magic);
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
    if head.get(0x40..0x44) == Some(&[0x7f, 0x10, 0xda, 0xbe][..]) {
        return Err("VDI");
    }
    Ok(Format::Raw)
}
