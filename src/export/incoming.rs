//! Objects as they arrive: the compressed bytes counted and hashed, gunzipped, bounded.
//!
//! A raw disk object becomes a [`RawStream`], a [`Disk`] that the copy engine reads once, in
//! order, while the object downloads: download, gunzip, copy engine and bundle are one pass. A
//! qcow2 object cannot be read that way — its tables come after the data they map — so it is
//! [`spool`]ed into a sparse work file first and read from there.
//!
//! Download and decompression run on their own thread, a few chunks ahead of the engine, so
//! that inflating overlaps the engine's hashing and writing.

use super::{Error, Result};
use crate::copy;
use crate::format::{self, Disk, Extent, ExtentKind};
use crate::util::{IO_CHUNK, hex, is_zero};
use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Granule of the sparse work files: zero runs of this size become holes.
const GRANULE: usize = 4096;
/// Decompressed chunks queued between the download thread and the engine.
const AHEAD: usize = 4;
/// Longest data extent a stream reports (the whole disk is data, as it is not known yet).
const EXTENT: u64 = 64 << 20;

/// Opens an object for reading, on the download thread.
pub type Opener = Box<dyn FnOnce() -> Result<Box<dyn Read + Send>> + Send>;

/// Counts and hashes the compressed bytes as they arrive, refusing more than `max`.
struct Counted<R: Read> {
    inner: R,
    hash: Sha256,
    len: u64,
    max: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        if self.len > self.max {
            return Err(std::io::Error::other(format!(
                "the compressed object passes {} bytes, more than its Size allows",
                self.max
            )));
        }
        Ok(n)
    }
}

/// A bound on an object's compressed size for `max` bytes decompressed: gzip never grows data by
/// more than 5 bytes per 16 KiB stored block plus its header.
pub fn max_compressed(max: u64) -> u64 {
    max.saturating_add(max / 1024).saturating_add(1 << 20)
}

/// Fills `buf` from `gz`; returns how many bytes it holds (fewer only at the end).
fn fill(gz: &mut impl Read, buf: &mut [u8], name: &str) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = gz
            .read(&mut buf[filled..])
            .map_err(|e| Error::Invalid(format!("{name}: cannot decompress: {e}")))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

fn too_large(name: &str, max: u64) -> Error {
    Error::Invalid(format!(
        "{name}: decompresses to more than {max} bytes: a gzip bomb, or a wrong Size"
    ))
}

/// Decompresses the object `open` opens into a sparse file at `path`, refusing more than `max`
/// bytes out; returns the decompressed length and the compressed bytes' SHA-256. The download
/// runs on its own thread, so that a `cancel` set while it waits (a server that stalls) stops
/// the spool at once with [`copy::Error::Interrupted`].
pub fn spool(
    open: Opener,
    name: &str,
    path: &Path,
    max: u64,
    cancel: Option<&AtomicBool>,
) -> Result<(u64, String)> {
    let io = |what| {
        let path = path.to_owned();
        move |source| Error::Io { path, what, source }
    };
    let file = File::create(path).map_err(io("cannot create"))?;
    let rx = download(open, name.to_owned(), max);
    let mut pos = 0u64;
    loop {
        let msg = match receive(&rx, cancel) {
            Ok(m) => m,
            Err(Stop::Cancelled) => return Err(copy::Error::Interrupted.into()),
            Err(Stop::Gone) => {
                return Err(Error::Invalid(format!("{name}: the download stopped")));
            }
        };
        match msg {
            Msg::Data(buf) => {
                for (i, g) in buf.chunks(GRANULE).enumerate() {
                    if !is_zero(g) {
                        file.write_all_at(g, pos + (i * GRANULE) as u64)
                            .map_err(io("cannot write"))?;
                    }
                }
                pos += buf.len() as u64;
            }
            Msg::End(len, sha) => {
                file.set_len(len).map_err(io("cannot write"))?;
                return Ok((len, sha));
            }
            Msg::Failed(m) => return Err(Error::Invalid(m)),
        }
    }
}

/// Why no message came from a download thread.
enum Stop {
    /// `cancel` was set.
    Cancelled,
    /// The thread ended without its last message.
    Gone,
}

/// How often a wait for the download polls `cancel`.
const POLL: Duration = Duration::from_millis(50);

/// The next message of a download, or why there is none.
fn receive(rx: &Receiver<Msg>, cancel: Option<&AtomicBool>) -> std::result::Result<Msg, Stop> {
    loop {
        match rx.recv_timeout(POLL) {
            Ok(m) => return Ok(m),
            Err(RecvTimeoutError::Disconnected) => return Err(Stop::Gone),
            Err(RecvTimeoutError::Timeout) => {
                if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Err(Stop::Cancelled);
                }
            }
        }
    }
}

/// Starts a thread that opens the object, counts and hashes its compressed bytes, gunzips them
/// and sends the data in chunks, at most [`AHEAD`] of them waiting, refusing more than `max`
/// bytes out; its last message is [`Msg::End`] or [`Msg::Failed`]. It stops when the receiver
/// is dropped.
fn download(open: Opener, name: String, max: u64) -> Receiver<Msg> {
    let (tx, rx) = sync_channel(AHEAD);
    std::thread::spawn(move || {
        let run = || -> Result<(u64, String)> {
            let mut counted = Counted {
                inner: open()?,
                hash: Sha256::new(),
                len: 0,
                max: max_compressed(max),
            };
            let mut gz = MultiGzDecoder::new(&mut counted);
            let mut total = 0u64;
            loop {
                let mut buf = vec![0u8; IO_CHUNK];
                let n = fill(&mut gz, &mut buf, &name)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > max {
                    return Err(too_large(&name, max));
                }
                buf.truncate(n);
                if tx.send(Msg::Data(buf)).is_err() {
                    // The reader stopped: nothing more is wanted.
                    return Ok((total, String::new()));
                }
            }
            drop(gz);
            Ok((total, hex(&counted.hash.finalize())))
        };
        let last = match run() {
            Ok((len, sha)) => Msg::End(len, sha),
            Err(e) => Msg::Failed(e.to_string()),
        };
        let _ = tx.send(last);
    });
    rx
}

/// What the download thread sends.
enum Msg {
    Data(Vec<u8>),
    /// The object ended: its decompressed length and the compressed bytes' SHA-256.
    End(u64, String),
    Failed(String),
}

/// How a raw stream must end. Its data is exactly the disk's size, whoever says it: a gzip
/// object cut at a member boundary is a valid gzip file, and its length is the only sign of
/// the cut.
#[derive(Clone, Debug)]
pub struct Expect {
    /// Who says how large the disk is, for messages (`mkomi-manifest.json`, `manifest.json's
    /// Size`).
    pub size_from: String,
    /// The compressed object's SHA-256 as `SHA256SUMS` lists it.
    pub sha256: Option<String>,
}

/// A raw disk object read once, in order, as it downloads; see the module documentation.
///
/// Reads take `&self` like any [`Disk`]'s; the download's state sits behind a lock, which only
/// the engine's reader thread ever takes.
pub struct RawStream {
    name: PathBuf,
    size: u64,
    stream: Mutex<Stream>,
}

/// The state of a [`RawStream`]'s download.
struct Stream {
    name: PathBuf,
    size: u64,
    expect: Expect,
    open: Option<Opener>,
    rx: Option<Receiver<Msg>>,
    /// The chunk being consumed and how much of it was.
    chunk: Vec<u8>,
    used: usize,
    /// Bytes handed to the engine.
    pos: u64,
    /// Whether the object has ended (and passed its checks).
    ended: bool,
    received: Arc<Mutex<Option<String>>>,
    /// Polled while the engine waits for the download.
    cancel: Option<&'static AtomicBool>,
    /// Zeros the object may hold after the disk: the rest of its volume (see
    /// [`RawStream::with_zero_tail`]).
    tail: u64,
}

impl RawStream {
    /// A disk of `size` bytes from the object `open` opens (named `name`), checked as `expect`
    /// says. The object is opened on first read. The compressed SHA-256 is put in `received`
    /// once the object has ended and passed every check. A read waiting for the download fails
    /// ("interrupted") once `cancel` is set.
    pub fn new(
        name: &str,
        size: u64,
        expect: Expect,
        open: Opener,
        received: Arc<Mutex<Option<String>>>,
        cancel: Option<&'static AtomicBool>,
    ) -> Self {
        RawStream {
            name: PathBuf::from(name),
            size,
            stream: Mutex::new(Stream {
                name: PathBuf::from(name),
                size,
                expect,
                open: Some(open),
                rx: None,
                chunk: Vec::new(),
                used: 0,
                pos: 0,
                ended: false,
                tail: 0,
                received,
                cancel,
            }),
        }
    }

    /// Lets the object hold `tail` zero bytes after the disk, or none: a raw object is the
    /// disk's whole volume, the disk followed by zeros (mkomi's packages before 0.2 held the
    /// disk alone). The tail is checked to be zeros, and dropped.
    pub fn with_zero_tail(mut self, tail: u64) -> Self {
        self.stream
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .tail = tail;
        self
    }
}

impl Stream {
    /// Checks the chunk's bytes from `from` on, `extra` bytes past the disk in all: zeros,
    /// within the tail.
    fn check_tail(&self, from: usize, extra: u64) -> format::Result<()> {
        if extra > self.tail {
            return Err(self.invalid(format!(
                "decompresses to more than {} bytes: a gzip bomb, or a wrong Size",
                self.size.saturating_add(self.tail)
            )));
        }
        if self.chunk[from..].iter().any(|&b| b != 0) {
            return Err(self.invalid(format!(
                "holds data after the disk's {} bytes, where its volume must read as zeros",
                self.size
            )));
        }
        Ok(())
    }

    fn invalid(&self, reason: impl Into<String>) -> format::Error {
        format::Error::Invalid {
            path: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The next message from the download thread.
    fn next(&mut self) -> format::Result<Msg> {
        let rx = match &self.rx {
            Some(rx) => rx,
            None => {
                let open = self.open.take().ok_or_else(|| self.invalid("read twice"))?;
                let name = self.name.display().to_string();
                self.rx
                    .insert(download(open, name, self.size.saturating_add(self.tail)))
            }
        };
        match receive(rx, self.cancel) {
            Ok(m) => Ok(m),
            Err(Stop::Cancelled) => Err(self.invalid("interrupted")),
            Err(Stop::Gone) => Err(self.invalid("the download stopped")),
        }
    }

    /// Checks the object once it has ended at `len` bytes with compressed SHA-256 `sha`.
    fn ended(&mut self, len: u64, sha: String) -> format::Result<()> {
        if len != self.size && len != self.size.saturating_add(self.tail) {
            let volume = if self.tail > 0 {
                format!(" (its volume {})", self.size.saturating_add(self.tail))
            } else {
                String::new()
            };
            return Err(self.invalid(format!(
                "decompresses to {len} bytes, but {} says the disk has {}{volume}: the object \
                 is cut short",
                self.expect.size_from, self.size
            )));
        }
        if let Some(listed) = &self.expect.sha256
            && *listed != sha
        {
            return Err(self.invalid(format!(
                "SHA-256 {sha} differs from {}'s {listed}",
                crate::bundle::SUMS_FILE
            )));
        }
        self.ended = true;
        if let Ok(mut r) = self.received.lock() {
            *r = Some(sha);
        }
        Ok(())
    }
}

impl Disk for RawStream {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent(&self, offset: u64, max_len: u64) -> format::Result<Extent> {
        Ok(Extent {
            offset,
            len: max_len.min(EXTENT),
            kind: ExtentKind::Data,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> format::Result<()> {
        // A poisoned lock means a read panicked midway: the stream's position is lost.
        match self.stream.lock() {
            Ok(mut stream) => stream.read_at(offset, buf),
            Err(_) => Err(format::Error::Invalid {
                path: self.name.clone(),
                reason: "an earlier read failed midway".into(),
            }),
        }
    }

    fn format(&self) -> &'static str {
        "raw"
    }

    fn path(&self) -> &Path {
        &self.name
    }
}

impl Stream {
    /// Hands the next `buf.len()` bytes of the disk, which must start at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> format::Result<()> {
        if offset != self.pos {
            return Err(self.invalid(format!(
                "read at {offset} out of order (at {}): a download is read once, in order",
                self.pos
            )));
        }
        if self.ended || buf.len() as u64 > self.size - offset.min(self.size) {
            return Err(self.invalid(format!("read past the end of the disk at {offset}")));
        }
        let mut at = 0;
        while at < buf.len() {
            if self.used == self.chunk.len() {
                match self.next()? {
                    Msg::Data(d) => {
                        if self.pos == 0 && at == 0 {
                            check_head(&d).map_err(|r| self.invalid(r))?;
                        }
                        self.chunk = d;
                        self.used = 0;
                    }
                    Msg::End(len, sha) => self.ended(len, sha)?,
                    Msg::Failed(m) => return Err(self.invalid(strip_name(&m, &self.name))),
                }
                continue;
            }
            let n = (self.chunk.len() - self.used).min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&self.chunk[self.used..self.used + n]);
            self.used += n;
            at += n;
        }
        self.pos += buf.len() as u64;
        // The last byte of the disk: the object must end here, or after its volume's zeros,
        // and match its checksums.
        if self.pos == self.size {
            let mut extra = (self.chunk.len() - self.used) as u64;
            self.check_tail(self.used, extra)?;
            loop {
                match self.next()? {
                    Msg::End(len, sha) => break self.ended(len, sha)?,
                    Msg::Data(d) => {
                        self.chunk = d;
                        self.used = 0;
                        extra += self.chunk.len() as u64;
                        self.check_tail(0, extra)?;
                    }
                    Msg::Failed(m) => return Err(self.invalid(strip_name(&m, &self.name))),
                }
            }
        }
        Ok(())
    }
}

/// A raw object must not be a container: that would copy the container's bytes as a disk.
fn check_head(head: &[u8]) -> std::result::Result<(), String> {
    match format::detect::detect_bytes(head) {
        Ok(format::Format::Raw) => Ok(()),
        Ok(format::Format::Qcow2) => Err("declared raw, but the data is a qcow2 image".into()),
        Err(name) => Err(format!("declared raw, but the data is a {name} image")),
    }
}

/// A message without its leading `NAME: `, to be prefixed with the name again.
fn strip_name(m: &str, name: &Path) -> String {
    let prefix = format!("{}: ", name.display());
    m.strip_prefix(&prefix).unwrap_or(m).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn stream(object: Vec<u8>, size: u64, sha: Option<String>) -> RawStream {
        RawStream::new(
            "obj.raw.gz",
            size,
            Expect {
                size_from: "the manifest".into(),
                sha256: sha,
            },
            Box::new(move || Ok(Box::new(std::io::Cursor::new(object)) as Box<dyn Read + Send>)),
            Arc::new(Mutex::new(None)),
            None,
        )
    }

    /// Reads the whole stream as the engine would, in chunks of `step`.
    fn read_all(s: &RawStream, step: usize) -> format::Result<Vec<u8>> {
        let mut out = Vec::new();
        let size = s.size();
        let mut pos = 0;
        while pos < size {
            let e = s.extent(pos, size - pos)?;
            let n = (e.len.min(step as u64)) as usize;
            let mut buf = vec![0xAAu8; n];
            match e.kind {
                ExtentKind::Data => s.read_at(pos, &mut buf)?,
                ExtentKind::Zero => buf.fill(0),
            }
            out.extend_from_slice(&buf);
            pos += n as u64;
        }
        Ok(out)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8 + 1).collect()
    }

    #[test]
    fn a_stream_gives_back_the_data_and_its_digest() {
        let d = data(3 * IO_CHUNK + 4096);
        let object = gz(&d);
        let sha = hex(&Sha256::digest(&object));
        for step in [4096, IO_CHUNK, 3 * IO_CHUNK] {
            let s = stream(object.clone(), d.len() as u64, Some(sha.clone()));
            let received = s.stream.lock().unwrap().received.clone();
            assert_eq!(read_all(&s, step).unwrap(), d);
            assert_eq!(received.lock().unwrap().as_deref(), Some(sha.as_str()));
        }
    }

    #[test]
    fn an_object_shorter_than_its_disk_is_refused() {
        let d = data(8192);
        // Two gzip members, cut after the first: still valid gzip, one member short.
        let whole = [gz(&d[..4096]), gz(&d[4096..])].concat();
        let s = stream(whole, 8192, None);
        assert_eq!(read_all(&s, 4096).unwrap(), d);
        for step in [512, 4096] {
            let s = stream(gz(&d[..4096]), 8192, None);
            let e = read_all(&s, step).unwrap_err().to_string();
            assert!(
                e.contains("decompresses to 4096 bytes, but the manifest says the disk has 8192"),
                "{e}"
            );
        }
        let s = stream(gz(&d), 1 << 20, None);
        let e = read_all(&s, 4096).unwrap_err().to_string();
        assert!(e.contains("decompresses to 8192 bytes"), "{e}");
    }

    #[test]
    fn long_objects_wrong_checksums_and_containers_are_refused() {
        let d = data(8192);
        for step in [4096, 8192] {
            let s = stream(gz(&d), 4096, None);
            let e = read_all(&s, step).unwrap_err().to_string();
            assert!(e.contains("decompresses to more than 4096 bytes"), "{e}");
        }
        let s = stream(gz(&d), 8192, Some("00".repeat(32)));
        let e = read_all(&s, 4096).unwrap_err().to_string();
        assert!(e.starts_with("obj.raw.gz: SHA-256 "), "{e}");
        assert!(e.contains("differs from SHA256SUMS's 0000"), "{e}");

        let mut q = data(8192);
        q[..4].copy_from_slice(b"QFI\xfb");
        let s = stream(gz(&q), 8192, None);
        let e = read_all(&s, 4096).unwrap_err().to_string();
        assert!(
            e.contains("declared raw, but the data is a qcow2 image"),
            "{e}"
        );

        let s = stream(b"plain bytes".to_vec(), 8192, None);
        let e = read_all(&s, 4096).unwrap_err().to_string();
        assert!(e.starts_with("obj.raw.gz: cannot decompress"), "{e}");
    }

    /// A server that never answers.
    struct Stalled(std::sync::mpsc::Receiver<()>);

    impl Read for Stalled {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(0)
        }
    }

    #[test]
    fn a_set_cancel_ends_a_wait_for_a_stalled_download() {
        static CANCEL: AtomicBool = AtomicBool::new(true);
        let (keep, rx) = std::sync::mpsc::channel::<()>();
        let s = RawStream::new(
            "obj.raw.gz",
            8192,
            Expect {
                size_from: "the manifest".into(),
                sha256: None,
            },
            Box::new(move || Ok(Box::new(Stalled(rx)) as Box<dyn Read + Send>)),
            Arc::new(Mutex::new(None)),
            Some(&CANCEL),
        );
        let mut buf = [0u8; 512];
        let e = s.read_at(0, &mut buf).unwrap_err().to_string();
        assert_eq!(e, "obj.raw.gz: interrupted");

        let (keep2, rx) = std::sync::mpsc::channel::<()>();
        let path = tempfile::tempdir().unwrap();
        let e = spool(
            Box::new(move || Ok(Box::new(Stalled(rx)) as Box<dyn Read + Send>)),
            "obj.qcow2.gz",
            &path.path().join("obj.qcow2"),
            8192,
            Some(&CANCEL),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Copy(copy::Error::Interrupted)), "{e}");
        drop((keep, keep2));
    }

    #[test]
    fn reads_out_of_order_are_refused() {
        let d = data(8192);
        let s = stream(gz(&d), 8192, None);
        let mut buf = [0u8; 512];
        let e = s.read_at(512, &mut buf).unwrap_err().to_string();
        assert!(e.contains("out of order"), "{e}");
    }
}
