//! Uploads of any size from a reader: a single PUT, or parts in flight at once within a memory
//! bound, each recorded (for resuming) as its upload completes.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::client::{CANCEL_POLL, Client};
use super::failure::{Failure, StoreError, classify};
use super::http::observe;
use super::location::object_path;
use super::resume::{DonePart, STATE_FORMAT, State, remove_state};
use super::{Error, Result};

/// S3's smallest part size (all parts but the last must be at least this big).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// S3's largest part size.
pub const MAX_PART_SIZE: usize = 5 << 30;
/// The part size used when the caller has no better idea: 32 MiB, so 10,000 parts hold 312 GiB.
pub const DEFAULT_PART_SIZE: usize = 32 << 20;
/// Parts in flight at once by default.
pub const DEFAULT_PARALLEL_PARTS: usize = 4;
/// The most part data a multipart upload holds in memory (parts in flight and the one being
/// read), whatever the part size, unless one part is larger: see [`buffered_parts`].
pub const MAX_BUFFERED: usize = 256 << 20;
/// S3's largest part number.
pub const MAX_PARTS: usize = 10_000;

/// How [`Client::put_stream_with`] uploads.
#[derive(Debug, Clone, Copy)]
pub struct PutOptions<'a> {
    /// Bytes per part ([`MIN_PART_SIZE`] to [`MAX_PART_SIZE`]); data shorter than a part goes
    /// up in a single PUT.
    pub part_size: usize,
    /// Parts in flight at most.
    pub parallel_parts: usize,
    /// The file recording the multipart upload and its finished parts.
    pub state: Option<&'a Path>,
    /// On an error or interruption, leave the upload open and its state file in place, to be
    /// resumed, instead of aborting it.
    pub keep_on_error: bool,
}

/// What [`Client::put_stream`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReport {
    /// Parts in the object (1 for a single PUT).
    pub parts: usize,
    /// Parts sent by this call (fewer than `parts` when resuming).
    pub parts_sent: usize,
    /// The object's size.
    pub bytes: u64,
    /// Bytes sent by this call.
    pub bytes_sent: u64,
    /// Whether it went up as a multipart upload.
    pub multipart: bool,
    /// The object's ETag, as the server gave it.
    pub etag: Option<String>,
}

impl Client {
    /// Uploads `data` to `key` (a single PUT below [`DEFAULT_PART_SIZE`], multipart above).
    pub fn put_bytes(&self, key: &str, data: &[u8]) -> Result<PutReport> {
        self.put_stream(key, data, DEFAULT_PART_SIZE, DEFAULT_PARALLEL_PARTS, None)
    }

    /// Uploads everything `reader` gives to `key`, with a resume state file when `resume` is
    /// given; see [`Client::put_stream_with`] (`keep_on_error` is `resume.is_some()`).
    pub fn put_stream(
        &self,
        key: &str,
        reader: impl Read,
        part_size: usize,
        parallel_parts: usize,
        resume: Option<&Path>,
    ) -> Result<PutReport> {
        self.put_stream_with(
            key,
            reader,
            &PutOptions {
                part_size,
                parallel_parts,
                state: resume,
                keep_on_error: resume.is_some(),
            },
        )
    }

    /// Uploads everything `reader` gives to `key`.
    ///
    /// Less than `part_size` bytes go up in a single PUT; more as a multipart upload with parts
    /// of `part_size` bytes ([`MIN_PART_SIZE`] to [`MAX_PART_SIZE`]), up to `parallel_parts` of
    /// them in flight. Part data held in memory (the parts in flight and the one being read)
    /// stays within [`MAX_BUFFERED`] bytes, or one part when a part is larger: see
    /// [`buffered_parts`].
    ///
    /// With a `state` file, the upload is recorded in it when it starts and each part when its
    /// upload completes (rewritten atomically each time), so that a process killed at any point
    /// leaves a record of what the server holds. On an error or an interruption (see
    /// [`Client::set_cancel`]) the multipart upload is aborted and the file removed, unless
    /// `keep_on_error`: then both are left for a later call with the same file (and the same
    /// data), which goes on with the upload: the recorded part size is used, each finished part
    /// is re-read and its SHA-256 compared with the record instead of being sent again. Without
    /// `keep_on_error`, an upload recorded in the file by an earlier call is aborted first. The
    /// file is removed once the object is complete.
    pub fn put_stream_with(
        &self,
        key: &str,
        mut reader: impl Read,
        options: &PutOptions<'_>,
    ) -> Result<PutReport> {
        let path = object_path(key)?;
        let part_size = options.part_size;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return Err(Error::Setting(format!(
                "part size {part_size}: S3 parts have 5 MiB to 5 GiB"
            )));
        }
        let parallel = options.parallel_parts.clamp(1, 64);
        let state = match options.state {
            Some(file) => State::load(file, Some(&self.bucket), Some(key))?,
            None => None,
        };
        let state = match state {
            Some(old) if !options.keep_on_error => {
                // Left by a call that was killed: not ours to go on with.
                self.abort(&path, &old.upload_id);
                None
            }
            s => s,
        };
        let part_size = state.as_ref().map_or(part_size, |s| s.part_size);
        let first = read_part(&mut reader, part_size).map_err(|e| self.read_error(key, e))?;
        self.check_cancel(key)?;

        if state.is_none() && first.len() < part_size {
            let bytes = first.len() as u64;
            let result = self
                .cancellable(key, observe(self.store.put(&path, first.into())))?
                .map_err(|e| self.error(key, "PUT", &e))?;
            if let Some(file) = options.state {
                remove_state(file)?;
            }
            return Ok(PutReport {
                parts: 1,
                parts_sent: 1,
                bytes,
                bytes_sent: bytes,
                multipart: false,
                etag: result.e_tag,
            });
        }

        let resumed = state.is_some();
        let state = match state {
            Some(s) => s,
            None => {
                let upload_id = self
                    .cancellable(key, observe(self.store.create_multipart(&path)))?
                    .map_err(|e| self.error(key, "create multipart upload", &e))?;
                let s = State {
                    format: STATE_FORMAT.to_string(),
                    bucket: self.bucket.clone(),
                    key: key.to_string(),
                    upload_id,
                    part_size,
                    parts: BTreeMap::new(),
                };
                if let Some(file) = options.state
                    && let Err(e) = s.save(file)
                {
                    self.abort(&path, &s.upload_id);
                    return Err(e);
                }
                s
            }
        };
        let upload_id = state.upload_id.clone();
        let record = Arc::new(Record {
            state: Mutex::new(state),
            file: options.state.map(Path::to_path_buf),
        });

        let mut upload = Upload {
            client: self,
            key,
            path: &path,
            record: record.clone(),
            state_file: options.state,
            resumed,
            sent: 0,
            bytes_sent: 0,
            buffers: buffered_parts(part_size, parallel),
        };
        let result = upload.run(first, reader, parallel);
        let (parts_sent, bytes_sent) = (upload.sent, upload.bytes_sent);
        match result {
            Ok((bytes, etag)) => {
                if let Some(file) = options.state {
                    remove_state(file)?;
                }
                Ok(PutReport {
                    parts: record.lock().parts.len(),
                    parts_sent,
                    bytes,
                    bytes_sent,
                    multipart: true,
                    etag,
                })
            }
            Err(e) => {
                if !options.keep_on_error {
                    self.abort(&path, &upload_id);
                    if let Some(file) = options.state {
                        let _ = remove_state(file);
                    }
                }
                Err(e)
            }
        }
    }
}

/// Reads up to `size` bytes: less only at the end of the data.
fn read_part(reader: &mut impl Read, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size);
    reader.take(size as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// How many parts' data a multipart upload holds in memory at once (the parts in flight and the
/// one being read): as many as fit in [`MAX_BUFFERED`], at most `parallel_parts + 1`, at least
/// one. With one, the next part is read only once the previous one is sent.
pub fn buffered_parts(part_size: usize, parallel_parts: usize) -> usize {
    (MAX_BUFFERED / part_size.max(1)).clamp(1, parallel_parts.clamp(1, 64) + 1)
}

/// A part's data as the payload of its request: slices of 1 MiB of the same buffer. The HTTP
/// client may copy each slice of a body into its own buffer as it sends it (it does on plain
/// `http://` connections): one slice the size of the part would double the part's memory.
fn payload(data: Vec<u8>) -> PutPayload {
    const SLICE: usize = 1 << 20;
    let data = Bytes::from(data);
    (0..data.len())
        .step_by(SLICE)
        .map(|start| data.slice(start..data.len().min(start + SLICE)))
        .collect()
}

/// The state of an upload, shared with the part tasks, which record each part as soon as its
/// upload completes.
struct Record {
    state: Mutex<State>,
    file: Option<PathBuf>,
}

impl Record {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a finished part, and saves the state (under the lock, so that saves are whole
    /// and in order).
    fn done(&self, number: usize, part: DonePart) -> Result<()> {
        let mut state = self.lock();
        state.parts.insert(number, part);
        match &self.file {
            Some(file) => state.save(file),
            None => Ok(()),
        }
    }
}

/// Why one part's task failed.
enum PartFailure {
    Store(StoreError),
    State(Error),
}

/// What one part's task gives back: part index (from 0), size, and how it went (the part is
/// already recorded when it succeeded).
type PartResult = (usize, u64, std::result::Result<(), PartFailure>);

/// One multipart upload in progress.
struct Upload<'a> {
    client: &'a Client,
    key: &'a str,
    path: &'a ObjectPath,
    record: Arc<Record>,
    state_file: Option<&'a Path>,
    resumed: bool,
    sent: usize,
    bytes_sent: u64,
    /// Parts' data held at most (see [`buffered_parts`]).
    buffers: usize,
}

impl Upload<'_> {
    /// Sends the parts not yet finished and completes the upload: (object size, ETag).
    fn run(
        &mut self,
        first: Vec<u8>,
        mut reader: impl Read,
        parallel: usize,
    ) -> Result<(u64, Option<String>)> {
        let mut tasks: JoinSet<PartResult> = JoinSet::new();
        let result = self.send_parts(&mut tasks, first, &mut reader, parallel);
        drop(reader);
        // Whatever happened, the parts already in flight are waited for (each records itself),
        // unless the upload is interrupted: then they are cancelled.
        let mut first_error = result.err();
        loop {
            if self.client.cancelled() {
                tasks.abort_all();
            }
            let joined = match self
                .client
                .runtime
                .block_on(async { tokio::time::timeout(CANCEL_POLL, tasks.join_next()).await })
            {
                Ok(Some(joined)) => joined,
                Ok(None) => break,
                Err(_) => continue,
            };
            if let Err(e) = self.finish(joined)
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        self.client.check_cancel(self.key)?;
        if let Some(e) = first_error {
            return Err(e);
        }
        let total = self.check_complete()?;
        let (parts, id) = {
            let state = self.record.lock();
            let parts = state
                .parts
                .values()
                .map(|p| PartId {
                    content_id: p.etag.clone(),
                })
                .collect();
            (parts, state.upload_id.clone())
        };
        let result = self
            .client
            .cancellable(
                self.key,
                observe(self.client.store.complete_multipart(self.path, &id, parts)),
            )?
            .map_err(|e| self.error("complete multipart upload", &e))?;
        Ok((total, result.e_tag))
    }

    /// Waits until fewer than `limit` parts are in flight, recording those that finish.
    fn wait_below(&mut self, tasks: &mut JoinSet<PartResult>, limit: usize) -> Result<()> {
        while tasks.len() >= limit.max(1) {
            self.client.check_cancel(self.key)?;
            let joined = self
                .client
                .runtime
                .block_on(async { tokio::time::timeout(CANCEL_POLL, tasks.join_next()).await });
            match joined {
                Ok(Some(joined)) => self.finish(joined)?,
                Ok(None) => break,
                Err(_) => {}
            }
        }
        Ok(())
    }

    fn send_parts(
        &mut self,
        tasks: &mut JoinSet<PartResult>,
        first: Vec<u8>,
        reader: &mut impl Read,
        parallel: usize,
    ) -> Result<()> {
        let (part_size, upload_id) = {
            let state = self.record.lock();
            (state.part_size, state.upload_id.clone())
        };
        let mut next = Some(first);
        for index in 0.. {
            let data = match next.take() {
                Some(d) => d,
                None => {
                    // The part about to be read counts against the memory bound too.
                    self.wait_below(tasks, self.buffers)?;
                    self.client.check_cancel(self.key)?;
                    read_part(reader, part_size).map_err(|e| self.client.read_error(self.key, e))?
                }
            };
            if data.is_empty() && index > 0 {
                // The data ended on a part boundary.
                return self.check_no_more(index);
            }
            if index >= MAX_PARTS {
                return Err(Error::TooManyParts {
                    bucket: self.client.bucket.clone(),
                    key: self.key.to_string(),
                    part_size,
                });
            }
            let last = data.len() < part_size;
            let size = data.len() as u64;
            let sha256 = hex::encode(Sha256::digest(&data));
            let done = self.record.lock().parts.get(&(index + 1)).cloned();
            if let Some(done) = done {
                if done.size != size || done.sha256 != sha256 {
                    return Err(self.changed(
                        index + 1,
                        format!(
                            "{} bytes with SHA-256 {sha256}, not {} bytes with SHA-256 {}",
                            size, done.size, done.sha256
                        ),
                    ));
                }
            } else {
                self.wait_below(tasks, parallel)?;
                let store = self.client.store.clone();
                let path = self.path.clone();
                let id = upload_id.clone();
                let record = self.record.clone();
                let data = payload(data);
                tasks.spawn_on(
                    async move {
                        let outcome = match observe(store.put_part(&path, &id, index, data)).await {
                            // Recorded now, not when the loop gets to it: a process killed
                            // meanwhile must not send this part again.
                            Ok(part) => record
                                .done(
                                    index + 1,
                                    DonePart {
                                        size,
                                        sha256,
                                        etag: part.content_id,
                                    },
                                )
                                .map_err(PartFailure::State),
                            Err(e) => Err(PartFailure::Store(e)),
                        };
                        (index, size, outcome)
                    },
                    self.client.runtime.handle(),
                );
            }
            if last {
                return self.check_no_more(index + 1);
            }
        }
        unreachable!("the loop returns")
    }

    /// Resuming with data shorter than before: parts after `count` were recorded.
    fn check_no_more(&self, count: usize) -> Result<()> {
        let later = self
            .record
            .lock()
            .parts
            .keys()
            .find(|&&n| n > count)
            .copied();
        match later {
            Some(n) => Err(self.changed(n, format!("the data now ends after {count} parts"))),
            None => Ok(()),
        }
    }

    /// All parts from 1 to the last are recorded: the object's size.
    fn check_complete(&self) -> Result<u64> {
        let state = self.record.lock();
        for (i, &n) in state.parts.keys().enumerate() {
            if n != i + 1 {
                return Err(self.changed(i + 1, "missing from the record".to_string()));
            }
        }
        Ok(state.parts.values().map(|p| p.size).sum())
    }

    fn changed(&self, part: usize, reason: String) -> Error {
        Error::Changed {
            bucket: self.client.bucket.clone(),
            key: self.key.to_string(),
            part,
            reason,
            state: self.state_file.map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    fn error(&self, op: &str, e: &StoreError) -> Error {
        if self.resumed
            && let Failure::Status { status, code } = classify(e)
            && (status == 404 || code.as_deref() == Some("NoSuchUpload"))
            && let Some(file) = self.state_file
        {
            return Error::UploadGone {
                bucket: self.client.bucket.clone(),
                key: self.key.to_string(),
                status,
                state: file.to_path_buf(),
            };
        }
        self.client.error(self.key, op, e)
    }

    /// Counts a finished part, or turns its failure into an error.
    fn finish(&mut self, joined: Result<PartResult, tokio::task::JoinError>) -> Result<()> {
        let (index, size, outcome) = match joined {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                // Cancelled: only an interruption does that.
                self.client.check_cancel(self.key)?;
                return Err(Error::Setting("an upload task was cancelled".to_string()));
            }
        };
        match outcome {
            Ok(()) => {
                self.sent += 1;
                self.bytes_sent += size;
                Ok(())
            }
            Err(PartFailure::Store(e)) => {
                Err(self.error(&format!("upload part {}", index + 1), &e))
            }
            Err(PartFailure::State(e)) => Err(e),
        }
    }
}
