//! Raw output: the virtual disk byte for byte, with zeros left as holes. The virtual disk is the
//! source rounded up to a whole 512-byte sector (see [`super::virtual_size`]).
//!
//! The file's SHA-256 covers the whole virtual size, holes included, because that is what
//! `sha256sum` reads: it is computed as the blocks are written, zero runs from a static buffer.

use super::writeback::Writeback;
use super::{Block, Error, GRANULE, Result, Sink, Written};
use crate::util::hash_zeros;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Writes a sparse raw image.
pub struct RawSink {
    file: File,
    path: PathBuf,
    size: u64,
    hasher: Sha256,
    written: u64,
    allocated: u64,
    sync: bool,
    writeback: Writeback,
}

impl RawSink {
    /// Creates (truncating) the file at `path` for a source of `size` bytes. With `sync`, the
    /// data reaches the disk before [`Sink::finish`] returns. The file is [`super::virtual_size`]
    /// bytes, the disk as qemu reads the source and as `qemu-img convert -O raw` writes it, so a
    /// raw and a qcow2 output of one source hold the same disk.
    pub fn create(path: &Path, size: u64, sync: bool) -> Result<Self> {
        let size = super::virtual_size(size).ok_or_else(|| Error::Unsupported {
            path: path.to_owned(),
            reason: format!("a {size}-byte disk is too large"),
        })?;
        let file = File::create(path).map_err(Error::io(path, "cannot create"))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            hasher: Sha256::new(),
            written: 0,
            allocated: 0,
            sync,
            writeback: Writeback::new(sync),
        })
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> Error + use<> {
        Error::io(&self.path, what)
    }

    fn changed(&self) -> Error {
        Error::changed(&self.path)
    }
}

impl Sink for RawSink {
    fn write(&mut self, offset: u64, block: &Block<'_>) -> Result<()> {
        if offset != self.written {
            return Err(self.changed());
        }
        match block {
            Block::Zero(len) => hash_zeros(&mut self.hasher, *len),
            Block::Data { buf, zeros } => {
                self.hasher.update(buf);
                // Write runs of non-zero granules; zero granules stay holes.
                let mut run: Option<usize> = None;
                let mut pos = 0;
                loop {
                    let end = (pos + GRANULE).min(buf.len());
                    let nonzero = pos < buf.len() && !zeros.is_zero(pos, end);
                    match (nonzero, run) {
                        (true, None) => run = Some(pos),
                        (false, Some(start)) => {
                            crate::util::write_all_at(
                                &self.file,
                                &buf[start..pos],
                                offset + start as u64,
                            )
                            .map_err(self.io("cannot write"))?;
                            self.allocated += (pos - start) as u64;
                            run = None;
                        }
                        _ => {}
                    }
                    if pos >= buf.len() {
                        break;
                    }
                    pos = end;
                }
                self.writeback
                    .written(&self.file, offset + buf.len() as u64)
                    .map_err(self.io("cannot write back"))?;
            }
        }
        self.written += block.len();
        Ok(())
    }

    fn finish(&mut self) -> Result<Written> {
        if self.written != self.size {
            return Err(self.changed());
        }
        self.file
            .set_len(self.size)
            .map_err(self.io("cannot set the length of"))?;
        if self.sync {
            self.file.sync_all().map_err(self.io("cannot sync"))?;
        }
        let sha256 = std::mem::take(&mut self.hasher).finalize().into();
        Ok(Written {
            file_size: self.size,
            sha256,
            allocated_bytes: self.allocated,
        })
    }
}
