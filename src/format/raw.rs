//! Raw disks: the bytes of the storage are the disk. Holes are whatever the storage knows of
//! ([`ReadAt::extent`]: FIEMAP or `SEEK_DATA` for local files); the rest is data.

use super::{Disk, Error, Extent, ExtentKind, OpenOptions, Result};
use crate::storage::ReadAt;
use std::path::Path;
use std::sync::Arc;

/// A storage read as a raw disk.
pub struct RawDisk {
    storage: Arc<dyn ReadAt>,
}

/// Opens `storage` as a raw disk; a raw disk has no header to check, and no backing file.
pub fn open(storage: Arc<dyn ReadAt>, _options: &OpenOptions) -> Result<Arc<dyn Disk>> {
    Ok(Arc::new(RawDisk { storage }))
}

impl Disk for RawDisk {
    fn size(&self) -> u64 {
        self.storage.len()
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent> {
        let end = self.size().min(offset.saturating_add(max_len));
        Ok(self.storage.extent(offset, max_len).unwrap_or(Extent {
            offset,
            len: end - offset,
            kind: ExtentKind::Data,
        }))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.storage
            .read_at(offset, buf)
            .map_err(|source| Error::Io {
                path: self.storage.path().to_owned(),
                what: if source.kind() == std::io::ErrorKind::UnexpectedEof {
                    "file shrank while being read"
                } else {
                    "cannot read"
                },
                source,
            })
    }

    fn format(&self) -> &'static str {
        "raw"
    }

    fn path(&self) -> &Path {
        self.storage.path()
    }
}

/// Opens the local file or block device at `path` as a raw disk, whatever its content (an image
/// mkomi wrote itself, such as an ESP).
pub fn open_path(path: &Path) -> Result<Arc<dyn Disk>> {
    open(
        Arc::new(crate::storage::file::LocalFile::open(path)?),
        &OpenOptions::default(),
    )
}
