//! A window into another storage: bytes `offset..offset + len` of it, as a storage of their own.

use super::{Extent, ReadAt};
use std::path::Path;
use std::sync::Arc;

/// Bytes `offset..offset + len` of another storage.
pub struct Window {
    inner: Arc<dyn ReadAt>,
    offset: u64,
    len: u64,
}

impl Window {
    /// The window `offset..offset + len` of `inner`; `None` when it does not lie inside it.
    pub fn new(inner: Arc<dyn ReadAt>, offset: u64, len: u64) -> Option<Self> {
        let end = offset.checked_add(len)?;
        (end <= inner.len()).then_some(Window { inner, offset, len })
    }
}

impl ReadAt for Window {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let inside = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.len);
        if !inside {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "a read of {} bytes at byte {offset} passes the end of the {}-byte window",
                    buf.len(),
                    self.len
                ),
            ));
        }
        // No overflow: offset + buf.len() <= len, and offset + len lies inside the storage.
        self.inner.read_at(self.offset + offset, buf)
    }

    fn extent(&self, offset: u64, max_len: u64) -> Option<Extent> {
        let max_len = max_len.min(self.len.checked_sub(offset)?);
        let e = self.inner.extent(self.offset + offset, max_len)?;
        Some(Extent {
            offset,
            len: e.len.min(max_len),
            kind: e.kind,
        })
    }

    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn is_device(&self) -> bool {
        self.inner.is_device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::file::LocalFile;

    #[test]
    fn reads_stay_inside_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.raw");
        std::fs::write(&p, (0..=255u8).collect::<Vec<_>>()).unwrap();
        let file: Arc<dyn ReadAt> = Arc::new(LocalFile::open(&p).unwrap());
        assert!(Window::new(file.clone(), 200, 57).is_none());
        let w = Window::new(file, 16, 32).unwrap();
        let mut b = [0u8; 4];
        w.read_at(28, &mut b).unwrap();
        assert_eq!(b, [44, 45, 46, 47]);
        let e = w.read_at(29, &mut b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
