//! [`ObjectReader`]: an object's content in ranged GETs pinned to its ETag.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::runtime::Runtime;

use super::credentials::Scrubber;
use super::failure::{StoreError, map_error};
use super::http::observe;

/// The content of an object, read in ranged GETs; see
/// [`Client::get_stream`](super::Client::get_stream).
pub struct ObjectReader {
    pub(super) runtime: Arc<Runtime>,
    pub(super) store: Arc<AmazonS3>,
    pub(super) scrubber: Arc<Scrubber>,
    pub(super) bucket: String,
    pub(super) key: String,
    pub(super) path: ObjectPath,
    pub(super) size: u64,
    pub(super) etag: Option<String>,
    /// Bytes handed out so far.
    pub(super) pos: u64,
    /// Bytes per ranged GET.
    pub(super) range: u64,
    /// The end of the range being streamed.
    pub(super) range_end: u64,
    pub(super) stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    pub(super) buf: Bytes,
}

impl fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .field("size", &self.size)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// The object's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn fail(&self, op: &str, e: &StoreError) -> io::Error {
        io::Error::other(map_error(&self.scrubber, &self.bucket, &self.key, op, e))
    }
}

/// Copies what `out` can take of `buf`, and counts it in `pos`: the bytes of a body received and
/// not yet read.
pub(super) fn hand_out(buf: &mut Bytes, out: &mut [u8], pos: &mut u64) -> usize {
    let n = out.len().min(buf.len());
    out[..n].copy_from_slice(&buf.split_to(n));
    *pos += n as u64;
    n
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.buf.is_empty() || out.is_empty() {
                return Ok(hand_out(&mut self.buf, out, &mut self.pos));
            }
            if let Some(stream) = &mut self.stream {
                match self.runtime.block_on(stream.next()) {
                    Some(Ok(bytes)) => {
                        if bytes.len() as u64 > self.range_end - self.pos {
                            return Err(io::Error::other(format!(
                                "s3://{}/{}: GET returned more than the range asked for",
                                self.bucket, self.key
                            )));
                        }
                        self.buf = bytes;
                    }
                    Some(Err(e)) => {
                        self.stream = None;
                        return Err(self.fail("GET", &e.into()));
                    }
                    None => {
                        self.stream = None;
                        if self.pos != self.range_end {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "s3://{}/{}: GET ended at byte {} of {}",
                                    self.bucket, self.key, self.pos, self.range_end
                                ),
                            ));
                        }
                    }
                }
                continue;
            }
            if self.pos >= self.size {
                return Ok(0);
            }
            let end = self.size.min(self.pos + self.range);
            let options = GetOptions {
                range: Some(GetRange::Bounded(self.pos..end)),
                if_match: self.etag.clone(),
                ..GetOptions::default()
            };
            let result = self
                .runtime
                .block_on(observe(self.store.get_opts(&self.path, options)))
                .map_err(|e| self.fail("GET", &e))?;
            self.range_end = end;
            self.stream = Some(result.into_stream());
        }
    }
}
