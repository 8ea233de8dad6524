//! Objects as they arrive: the compressed bytes counted and hashed, gunzipped, bounded.
//!
//! A raw disk object becomes a [`RawStream`], a [`Source`] that the copy engine reads once, in
//! order, while the object downloads: download, gunzip, copy engine and bundle are one pass. A
//! qcow2 object cannot be read that way — its tables come after the data they map — so it is
//! [`spool`]ed into a sparse work file first and read from there.
//!
//! Download and decompression run on their own thread, a few chunks ahead of the engine, so
//! that inflating overlaps the engine's hashing and writing.

use super::{Error, Result};
use crate::source::{self, Extent, ExtentKind, Source};
use crate::util::{IO_CHUNK, hex, is_zero};
use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

/// Granule of the sparse work files: zero runs of this size become holes.
const GRANULE: usize = 4096;
/// Decompressed chunks queued between the download thread and the engine.
const AHEAD: usize = 4;
/// Longest data extent a stream reports. Once the data has ended, the rest of the disk is
/// reported as zeros; the engine asks again at least this often, so at most this much of the
/// zero tail is read as data.
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

/// Decompresses `object` into a sparse file at `path`, refusing more than `max` bytes out;
/// returns the decompressed length and the compressed bytes' SHA-256.
pub fn spool(
    object: Box<dyn Read + Send>,
    name: &str,
    path: &Path,
    max: u64,
) -> Result<(u64, String)> {
    let mut counted = Counted {
        inner: object,
        hash: Sha256::new(),
        len: 0,
        max: max_compressed(max),
    };
    let io = |what| {
        let path = path.to_owned();
        move |source| Error::Io { path, what, source }
    };
    let file = File::create(path).map_err(io("cannot create"))?;
    let mut gz = MultiGzDecoder::new(&mut counted);
    let mut buf = vec![0u8; IO_CHUNK];
    let mut pos = 0u64;
    loop {
        let filled = fill(&mut gz, &mut buf, name)?;
        if filled == 0 {
            break;
        }
        if pos + filled as u64 > max {
            return Err(too_large(name, max));
        }
        for (i, g) in buf[..filled].chunks(GRANULE).enumerate() {
            if !is_zero(g) {
                file.write_all_at(g, pos + (i * GRANULE) as u64)
                    .map_err(io("cannot write"))?;
            }
        }
        pos += filled as u64;
    }
    file.set_len(pos).map_err(io("cannot write"))?;
    drop(gz);
    Ok((pos, hex(&counted.hash.finalize())))
}

/// What the download thread sends.
enum Msg {
    Data(Vec<u8>),
    /// The object ended: its decompressed length and the compressed bytes' SHA-256.
    End(u64, String),
    Failed(String),
}

/// How a raw stream must end.
#[derive(Clone, Debug)]
pub struct Expect {
    /// The data is exactly the disk's size (mkomi's manifest says it); otherwise it may be
    /// shorter, the rest of the volume reading as zeros (Outscale's `Size` is the volume's).
    pub exact: bool,
    /// Who says how large the disk is, for messages.
    pub size_from: String,
    /// The compressed object's SHA-256 as `SHA256SUMS` lists it.
    pub sha256: Option<String>,
}

/// A raw disk object read once, in order, as it downloads; see the module documentation.
pub struct RawStream {
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
    /// Where the data ended, once it has.
    end: Option<u64>,
    received: Arc<Mutex<Option<String>>>,
}

impl RawStream {
    /// A disk of `size` bytes from the object `open` opens (named `name`), checked as `expect`
    /// says. The object is opened on first read. The compressed SHA-256 is put in `received`
    /// once the object has ended and passed every check.
    pub fn new(
        name: &str,
        size: u64,
        expect: Expect,
        open: Opener,
        received: Arc<Mutex<Option<String>>>,
    ) -> Self {
        RawStream {
            name: PathBuf::from(name),
            size,
            expect,
            open: Some(open),
            rx: None,
            chunk: Vec::new(),
            used: 0,
            pos: 0,
            end: None,
            received,
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> source::Error {
        source::Error::Invalid {
            path: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Starts the download thread.
    fn start(&mut self) -> Receiver<Msg> {
        let (tx, rx) = sync_channel(AHEAD);
        let open = self.open.take();
        let (name, max) = (self.name.display().to_string(), self.size);
        std::thread::spawn(move || {
            let run = || -> Result<(u64, String)> {
                let open = open.ok_or_else(|| Error::Invalid(format!("{name}: read twice")))?;
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
                        // The engine stopped: nothing more is wanted.
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

    /// The next message from the download thread.
    fn next(&mut self) -> source::Result<Msg> {
        if self.rx.is_none() {
            self.rx = Some(self.start());
        }
        match self.rx.as_ref().map(|rx| rx.recv()) {
            Some(Ok(m)) => Ok(m),
            _ => Err(self.invalid("the download stopped")),
        }
    }

    /// Checks the object once it has ended at `len` bytes with compressed SHA-256 `sha`.
    fn ended(&mut self, len: u64, sha: String) -> source::Result<()> {
        if len < self.size {
            if self.expect.exact {
                return Err(self.invalid(format!(
                    "decompresses to {len} bytes, but {} says the disk has {}",
                    self.expect.size_from, self.size
                )));
            }
            if len == 0 || !len.is_multiple_of(512) {
                return Err(self.invalid(format!(
                    "decompresses to {len} bytes: not a whole number of 512-byte sectors"
                )));
            }
        }
        if let Some(listed) = &self.expect.sha256
            && *listed != sha
        {
            return Err(self.invalid(format!(
                "SHA-256 {sha} differs from {}'s {listed}",
                crate::bundle::SUMS_FILE
            )));
        }
        self.end = Some(len);
        if let Ok(mut r) = self.received.lock() {
            *r = Some(sha);
        }
        Ok(())
    }
}

impl Source for RawStream {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent(&mut self, offset: u64, max_len: u64) -> source::Result<Extent> {
        let kind = match self.end {
            Some(end) if offset >= end => ExtentKind::Zero,
            _ => ExtentKind::Data,
        };
        let len = match kind {
            ExtentKind::Zero => max_len,
            ExtentKind::Data => max_len.min(EXTENT),
        };
        Ok(Extent { offset, len, kind })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> source::Result<()> {
        if offset != self.pos {
            return Err(self.invalid(format!(
                "read at {offset} out of order (at {}): a download is read once, in order",
                self.pos
            )));
        }
        let mut at = 0;
        while at < buf.len() {
            if self.end.is_some() {
                buf[at..].fill(0);
                break;
            }
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
        // The last byte of the disk: the object must end here, and match its checksums.
        if self.pos == self.size && self.end.is_none() {
            if self.used < self.chunk.len() {
                return Err(self.invalid(format!(
                    "decompresses to more than {} bytes: a gzip bomb, or a wrong Size",
                    self.size
                )));
            }
            match self.next()? {
                Msg::End(len, sha) => self.ended(len, sha)?,
                Msg::Data(_) => {
                    return Err(self.invalid(format!(
                        "decompresses to more than {} bytes: a gzip bomb, or a wrong Size",
                        self.size
                    )));
                }
                Msg::Failed(m) => return Err(self.invalid(strip_name(&m, &self.name))),
            }
        }
        Ok(())
    }

    fn format(&self) -> &'static str {
        "raw"
    }

    fn path(&self) -> &Path {
        &self.name
    }
}

/// A raw object must not be a container: that would copy the container's bytes as a disk.
fn check_head(head: &[u8]) -> std::result::Result<(), String> {
    match source::detect_bytes(head) {
        Ok(source::Format::Raw) => Ok(()),
        Ok(source::Format::Qcow2) => Err("declared raw, but the data is a qcow2 image".into()),
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

    fn stream(object: Vec<u8>, size: u64, exact: bool, sha: Option<String>) -> RawStream {
        RawStream::new(
            "obj.raw.gz",
            size,
            Expect {
                exact,
                size_from: "the manifest".into(),
                sha256: sha,
            },
            Box::new(move || Ok(Box::new(std::io::Cursor::new(object)) as Box<dyn Read + Send>)),
            Arc::new(Mutex::new(None)),
        )
    }

    /// Reads the whole stream as the engine would, in chunks of `step`.
    fn read_all(s: &mut RawStream, step: usize) -> source::Result<Vec<u8>> {
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
            let mut s = stream(object.clone(), d.len() as u64, true, Some(sha.clone()));
            let received = s.received.clone();
            assert_eq!(read_all(&mut s, step).unwrap(), d);
            assert_eq!(received.lock().unwrap().as_deref(), Some(sha.as_str()));
        }
    }

    #[test]
    fn a_short_object_reads_as_zeros_to_the_volume_size_unless_exact() {
        let d = data(8192);
        let mut s = stream(gz(&d), 1 << 20, false, None);
        let got = read_all(&mut s, 4096).unwrap();
        assert_eq!(&got[..8192], &d[..]);
        assert!(got[8192..].iter().all(|&b| b == 0));
        assert_eq!(got.len(), 1 << 20);

        let mut s = stream(gz(&d), 1 << 20, true, None);
        let e = read_all(&mut s, 4096).unwrap_err().to_string();
        assert!(
            e.contains("decompresses to 8192 bytes, but the manifest says the disk has 1048576"),
            "{e}"
        );

        let mut s = stream(gz(&d[..1000]), 1 << 20, false, None);
        let e = read_all(&mut s, 4096).unwrap_err().to_string();
        assert!(e.contains("512-byte sectors"), "{e}");
    }

    #[test]
    fn long_objects_wrong_checksums_and_containers_are_refused() {
        let d = data(8192);
        for step in [4096, 8192] {
            let mut s = stream(gz(&d), 4096, false, None);
            let e = read_all(&mut s, step).unwrap_err().to_string();
            assert!(e.contains("decompresses to more than 4096 bytes"), "{e}");
        }
        let mut s = stream(gz(&d), 8192, true, Some("00".repeat(32)));
        let e = read_all(&mut s, 4096).unwrap_err().to_string();
        assert!(e.starts_with("obj.raw.gz: SHA-256 "), "{e}");
        assert!(e.contains("differs from SHA256SUMS's 0000"), "{e}");

        let mut q = data(8192);
        q[..4].copy_from_slice(b"QFI\xfb");
        let mut s = stream(gz(&q), 8192, true, None);
        let e = read_all(&mut s, 4096).unwrap_err().to_string();
        assert!(
            e.contains("declared raw, but the data is a qcow2 image"),
            "{e}"
        );

        let mut s = stream(b"plain bytes".to_vec(), 8192, true, None);
        let e = read_all(&mut s, 4096).unwrap_err().to_string();
        assert!(e.starts_with("obj.raw.gz: cannot decompress"), "{e}");
    }

    #[test]
    fn reads_out_of_order_are_refused() {
        let d = data(8192);
        let mut s = stream(gz(&d), 8192, true, None);
        let mut buf = [0u8; 512];
        let e = s.read_at(512, &mut buf).unwrap_err().to_string();
        assert!(e.contains("out of order"), "{e}");
    }
}
