//! Raw disk images and block devices: the bytes are the disk.
//!
//! Holes are found with `SEEK_DATA`/`SEEK_HOLE`, so a sparse 64 GiB file with 1 GiB of data
//! costs what 1 GiB costs. Where the filesystem or device does not support them, the whole
//! file is data and the engine's zero detection still keeps zeros out of the output.

use super::{Error, Extent, ExtentKind, Result, Source};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A raw image file or block device.
#[derive(Debug)]
pub struct RawSource {
    file: File,
    path: PathBuf,
    size: u64,
    /// False once `SEEK_DATA` has failed with "not supported": everything is data from then on.
    seek_data: bool,
}

impl RawSource {
    /// Opens a raw image or block device read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |what, source| Error::Io {
            path: path.to_owned(),
            what,
            source,
        };
        let mut file = File::open(path).map_err(|e| io("cannot open", e))?;
        let meta = file.metadata().map_err(|e| io("cannot stat", e))?;
        if meta.is_dir() {
            return Err(Error::Invalid {
                path: path.to_owned(),
                reason: "is a directory, not a disk image".into(),
            });
        }
        // Block devices report a zero length in metadata; seeking to the end gives their size.
        let size = if meta.is_file() {
            meta.len()
        } else {
            file.seek(SeekFrom::End(0))
                .map_err(|e| io("cannot find the size of", e))?
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            seek_data: true,
        })
    }

    fn lseek(&self, offset: u64, whence: libc::c_int) -> std::io::Result<u64> {
        let off = libc::off_t::try_from(offset).map_err(|_| std::io::Error::other("offset"))?;
        // SAFETY: lseek on a descriptor we own; it does not touch memory.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    }
}

impl Source for RawSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        let end = self.size.min(offset.saturating_add(max_len));
        let data = |len: u64| Extent {
            offset,
            len,
            kind: ExtentKind::Data,
        };
        if !self.seek_data {
            return Ok(data(end - offset));
        }
        match self.lseek(offset, libc::SEEK_DATA) {
            Ok(next_data) if next_data > offset => Ok(Extent {
                offset,
                len: next_data.min(end) - offset,
                kind: ExtentKind::Zero,
            }),
            Ok(_) => {
                let hole = self.lseek(offset, libc::SEEK_HOLE).unwrap_or(end);
                Ok(data(hole.clamp(offset + 1, end) - offset))
            }
            // ENXIO: no data at or after `offset` — the rest of the file is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(Extent {
                offset,
                len: end - offset,
                kind: ExtentKind::Zero,
            }),
            Err(_) => {
                self.seek_data = false;
                Ok(data(end - offset))
            }
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
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
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sparse_file_extents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[7u8; 1 << 20]).unwrap();
        drop(f);
        let mut s = RawSource::open(&p).unwrap();
        assert_eq!(s.size(), 64 << 20);
        let mut off = 0;
        let mut data = 0;
        while off < s.size() {
            let e = s.extent(off, u64::MAX).unwrap();
            assert!(e.len > 0);
            if e.kind == ExtentKind::Data {
                data += e.len;
            }
            off += e.len;
        }
        assert_eq!(off, 64 << 20);
        // tmpfs and ext4 report exactly the written MiB; some filesystems round to their blocks.
        assert!((1 << 20..=2 << 20).contains(&data), "data {data}");
        let mut b = [0u8; 2];
        s.read_at((32 << 20) - 1, &mut b).unwrap();
        assert_eq!(b, [0, 7]);
    }
}
