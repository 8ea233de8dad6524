//! Raw output: the virtual disk byte for byte, with zeros left as holes.
//!
//! The file's SHA-256 covers the whole virtual size, holes included, because that is what
//! `sha256sum` reads; zero runs are hashed from a static buffer without being written.

use super::{Block, Error, Result, Sink, Written};
use crate::util::is_zero;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Holes are made at this granularity: the page and filesystem block size on Linux.
const HOLE_GRANULE: usize = 4096;

/// Writes a sparse raw image.
pub struct RawSink {
    file: File,
    path: PathBuf,
    size: u64,
    hasher: Sha256,
    hashed: u64,
    allocated: u64,
    sync: bool,
}

impl RawSink {
    /// Creates (truncating) the file at `path` for a disk of `size` bytes. With `sync`, the data
    /// reaches the disk before [`Sink::finish`] returns.
    pub fn create(path: &Path, size: u64, sync: bool) -> Result<Self> {
        let file = File::create(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            what: "cannot create",
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            hasher: Sha256::new(),
            hashed: 0,
            allocated: 0,
            sync,
        })
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }

    fn hash_zeros(&mut self, mut len: u64) {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            self.hasher.update(&ZEROS[..n]);
            len -= n as u64;
        }
    }
}

impl Sink for RawSink {
    fn write(&mut self, offset: u64, block: Block<'_>) -> Result<()> {
        match block {
            Block::Zero(len) => self.hash_zeros(len),
            Block::Data(data) => {
                self.hasher.update(data);
                // Coalesce consecutive non-zero granules into one write.
                let mut run_start: Option<usize> = None;
                let mut pos = 0;
                while pos <= data.len() {
                    let end = (pos + HOLE_GRANULE).min(data.len());
                    let nonzero = pos < data.len() && !is_zero(&data[pos..end]);
                    match (nonzero, run_start) {
                        (true, None) => run_start = Some(pos),
                        (false, Some(start)) => {
                            self.file
                                .write_all_at(&data[start..pos], offset + start as u64)
                                .map_err(self.io("cannot write"))?;
                            self.allocated += (pos - start) as u64;
                            run_start = None;
                        }
                        _ => {}
                    }
                    if pos == data.len() {
                        break;
                    }
                    pos = end;
                }
            }
        }
        self.hashed += block.len();
        Ok(())
    }

    fn finish(&mut self) -> Result<Written> {
        if self.hashed != self.size {
            return Err(Error::SourceChanged {
                path: self.path.clone(),
            });
        }
        self.file
            .set_len(self.size)
            .map_err(self.io("cannot set the length of"))?;
        if self.sync {
            self.file.sync_all().map_err(self.io("cannot sync"))?;
        }
        let hasher = std::mem::take(&mut self.hasher);
        Ok(Written {
            file_size: self.size,
            sha256: hasher.finalize().into(),
            allocated_bytes: self.allocated,
        })
    }
}
