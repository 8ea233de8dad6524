//! The copy engine: one pass over a source's allocated data, hashing and writing overlapped.
//!
//! Two threads form a pipeline over chunks of 1 MiB (or the sink's cluster size, if larger),
//! which never straddle a 4 MiB `ContentDigest` block:
//!
//! 1. the reader asks the source where data is ([`crate::format::Disk::extent`]), one extent at a time, skips
//!    holes without reading them (a hole of terabytes is one query and one message), reads data
//!    chunks into buffers from a fixed pool, maps their zero 4 KiB granules and feeds the digest
//!    of the 4 MiB block each chunk belongs to;
//! 2. the caller's thread hands the chunks, in order, to the [`Sink`], which writes them and
//!    hashes its file's bytes as it goes.
//!
//! Each data byte is thus hashed twice, once on each core, by the thread that holds it.
//!
//! The disk copied is the source rounded up to a whole 512-byte sector ([`sink::virtual_size`]):
//! the engine supplies the zeros past the source's end, so the sink, the `ContentDigest` and
//! qemu all see the same disk.
//!
//! Memory is the pool — [`POOL_BUFFERS`] chunks — whatever the disk's size. Chunks are as large
//! as a fast system call ([`crate::util::IO_CHUNK`]). Before the copy, one walk over the extents (metadata only) totals the data for progress and
//! gives sinks that need it (qcow2) their plan.

use crate::digest::{self, BLOCK_SIZE, ContentHasher};
use crate::format::{self, Disk, Extent, ExtentKind};
use crate::progress::Task;
use crate::sink::{self, Block, Sink, Written, ZeroMap};
use crate::util::hash_zeros;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Chunks in flight: one being read, one being written, the rest queued between. Six rather
/// than eight keeps `register`'s peak RSS near 14 MiB instead of 16 MiB (issue #12's limit), for
/// no measured change in throughput (`bench/run.sh` with `MKOMI_BASE` set to an eight-buffer
/// build: durable 1.00× and 0.98×, `--no-sync` 1.01× and 1.04×, in two runs).
pub const POOL_BUFFERS: usize = 6;

/// The engine's chunk size, unless the sink's allocation unit is larger.
pub const CHUNK: u64 = crate::util::IO_CHUNK as u64;

/// Errors of a copy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the source failed.
    #[error(transparent)]
    Source(#[from] format::Error),
    /// Writing the output failed.
    #[error(transparent)]
    Sink(#[from] sink::Error),
    /// The copy was cancelled (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// The source is too large to round up to a whole sector.
    #[error("{}: a {size}-byte disk is too large", path.display())]
    TooLarge {
        /// The source.
        path: std::path::PathBuf,
        /// Its size.
        size: u64,
    },
    /// A bug in mkomi: a thread of the engine panicked or stopped without saying why.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What a copy produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// The size of the disk copied: the source's, rounded up to a whole 512-byte sector.
    pub virtual_size: u64,
    /// The disk's `ContentDigest`.
    pub content_digest: String,
    /// Bytes the source reported as data and the engine read.
    pub data_bytes: u64,
    /// What the sink wrote.
    pub written: Written,
}

/// Hooks into a copy: progress and cancellation. Both optional.
#[derive(Clone, Copy, Default)]
pub struct Options<'a> {
    /// Advanced by the bytes of data read; its length is set to the total data first.
    pub progress: Option<&'a Task>,
    /// Checked between blocks; when set, the copy stops with [`Error::Interrupted`].
    pub cancel: Option<&'a AtomicBool>,
}

/// A chunk as read: zeros, or bytes to look at.
enum Chunk {
    Zero(u64),
    /// The chunk, and how many of its bytes were read (the rest were holes).
    Data(Vec<u8>, u64),
}

/// What the reader hands on to the sink.
enum Out {
    Zero(u64, u64),
    Data(u64, Vec<u8>, ZeroMap),
    Failed(Error),
}

/// Walks every extent of `source` once, metadata only, feeding `each`.
pub fn walk_extents(source: &dyn Disk, mut each: impl FnMut(&Extent) -> Result<()>) -> Result<()> {
    let size = source.size();
    let mut pos = 0;
    while pos < size {
        let e = checked_extent(source, pos, size - pos)?;
        each(&e)?;
        pos += e.len;
    }
    Ok(())
}

fn checked_extent(source: &dyn Disk, pos: u64, max: u64) -> Result<Extent> {
    let e = source.extent(pos, max)?;
    if e.offset != pos || e.len == 0 || e.len > max {
        return Err(format::Error::Invalid {
            path: source.path().to_owned(),
            reason: format!(
                "inconsistent block status at offset {pos}: got {} bytes at {}",
                e.len, e.offset
            ),
        }
        .into());
    }
    Ok(e)
}

/// Copies `source` into `sink`, returning the disk's `ContentDigest` and what was written. The
/// sink must have been created for the source's size: it writes [`sink::virtual_size`] bytes.
pub fn copy(source: &dyn Disk, sink: &mut dyn Sink, options: Options<'_>) -> Result<Report> {
    let source_size = source.size();
    let size = sink::virtual_size(source_size).ok_or_else(|| Error::TooLarge {
        path: source.path().to_owned(),
        size: source_size,
    })?;
    let mut total_data = 0u64;
    let plan = sink.wants_plan();
    walk_extents(source, |e| {
        if e.kind == ExtentKind::Data {
            total_data += e.len;
        }
        if plan {
            sink.plan(e)?;
        }
        Ok(())
    })?;
    if plan && size > source_size {
        sink.plan(&padding(source_size, size))?;
    }
    if let Some(p) = options.progress {
        p.set_length(total_data);
    }

    // Chunks hold whole clusters and divide the digest block: both are powers of two.
    let chunk = CHUNK.max(sink.alignment()).min(BLOCK_SIZE);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(POOL_BUFFERS);
    for _ in 0..POOL_BUFFERS {
        // The channel holds exactly the pool: these sends cannot block.
        let _ = free_tx.send(Vec::new());
    }
    let (read_tx, read_rx) = sync_channel::<Out>(2);

    std::thread::scope(|scope| {
        let reader =
            scope.spawn(move || read_chunks(source, size, chunk, options, free_rx, read_tx));

        let mut outcome: Result<()> = Ok(());
        for out in read_rx.iter() {
            let step: Result<()> = match out {
                Out::Zero(offset, len) => sink.write(offset, &Block::Zero(len)).map_err(Into::into),
                Out::Data(offset, buf, zeros) => {
                    let r = sink.write(offset, &Block::Data { buf: &buf, zeros });
                    let _ = free_tx.send(buf);
                    r.map_err(Into::into)
                }
                Out::Failed(e) => Err(e),
            };
            if let Err(e) = step {
                outcome = Err(e);
                break;
            }
        }
        // Dropping the receiver and the pool's only sender stops the reader, whether it waits to
        // send a chunk or for a buffer.
        drop(read_rx);
        drop(free_tx);
        // A panic is a bug, never Ctrl-C: cancellation arrives as `Out::Failed(Interrupted)`.
        let content = reader.join().map_err(|panic| {
            Error::Internal(format!(
                "the reader thread panicked: {}",
                panic_message(panic.as_ref())
            ))
        })?;
        outcome?;
        let (hasher, data_bytes) =
            content.ok_or_else(|| Error::Internal("the reader thread stopped early".into()))?;
        if hasher.blocks() != size.div_ceil(BLOCK_SIZE) {
            return Err(Error::Internal(format!(
                "the reader digested {} blocks of a {size}-byte disk",
                hasher.blocks()
            )));
        }
        let written = sink.finish()?;
        Ok(Report {
            virtual_size: size,
            content_digest: hasher.finish(),
            data_bytes,
            written,
        })
    })
}

/// The zeros that round a source of `source_size` bytes up to a disk of `size` bytes.
fn padding(source_size: u64, size: u64) -> Extent {
    Extent {
        offset: source_size,
        len: size - source_size,
        kind: ExtentKind::Zero,
    }
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_owned()
    }
}

/// Reads chunks, maps their zero granules and digests them, in order; returns the content
/// hasher, or `None` when the copy stopped early. Hashing on the thread that read the chunk
/// finds it still in that core's cache.
fn read_chunks(
    source: &dyn Disk,
    size: u64,
    chunk: u64,
    options: Options<'_>,
    free: Receiver<Vec<u8>>,
    out: SyncSender<Out>,
) -> Option<(ContentHasher, u64)> {
    let mut digest = BlockDigest::new(size);
    let mut data_bytes = 0u64;
    let mut reader = ChunkReader {
        source_size: source.size(),
        source,
        size,
        chunk,
        current: None,
        pieces: Vec::new(),
        spare: None,
    };
    let mut offset = 0u64;
    while offset < size {
        if options.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            let _ = out.send(Out::Failed(Error::Interrupted));
            return None;
        }
        let out_msg = match reader.next(offset, &free) {
            Ok(Some(Chunk::Zero(len))) => {
                digest.zeros(len);
                Out::Zero(offset, len)
            }
            Ok(Some(Chunk::Data(buf, read))) => {
                data_bytes += read;
                if let Some(p) = options.progress {
                    p.advance(read);
                }
                let zeros = ZeroMap::scan(&buf);
                if zeros.is_zero(0, buf.len()) {
                    let len = buf.len() as u64;
                    digest.zeros(len);
                    reader.spare = Some(buf);
                    Out::Zero(offset, len)
                } else {
                    digest.data(&buf);
                    Out::Data(offset, buf, zeros)
                }
            }
            Err(e) => {
                let _ = out.send(Out::Failed(e));
                return None;
            }
            Ok(None) => return None, // the pool is gone: the consumer stopped
        };
        offset += match &out_msg {
            Out::Zero(_, len) => *len,
            Out::Data(_, buf, _) => buf.len() as u64,
            Out::Failed(_) => size,
        };
        if out.send(out_msg).is_err() {
            return None;
        }
    }
    Some((digest.content, data_bytes))
}

/// Turns a source's extents into chunk messages. One extent is asked for at a time, as long as
/// the source will report it, and consumed across chunks.
struct ChunkReader<'a> {
    source: &'a dyn Disk,
    /// The source's size, and the disk's: the source rounded up to a whole sector.
    source_size: u64,
    size: u64,
    chunk: u64,
    /// The extent that covers the current offset, possibly reaching far past it.
    current: Option<Extent>,
    pieces: Vec<Extent>,
    /// A buffer whose chunk turned out all zeros, kept for the next read.
    spare: Option<Vec<u8>>,
}

impl ChunkReader<'_> {
    /// The extent covering `pos`, from the cache or the source.
    fn extent_at(&mut self, pos: u64) -> Result<Extent> {
        match self.current {
            Some(e) if e.offset <= pos && pos < e.offset + e.len => Ok(e),
            _ => {
                let e = if pos >= self.source_size {
                    padding(pos, self.size)
                } else {
                    checked_extent(self.source, pos, self.source_size - pos)?
                };
                self.current = Some(e);
                Ok(e)
            }
        }
    }

    /// The message for the data starting at `offset`, a chunk boundary: a zero run of whole
    /// chunks (to the end of the disk at most), or one chunk of data.
    fn next(&mut self, offset: u64, free: &Receiver<Vec<u8>>) -> Result<Option<Chunk>> {
        let e = self.extent_at(offset)?;
        let e_end = e.offset + e.len;
        if e.kind == ExtentKind::Zero {
            let run_end = if e_end >= self.size {
                self.size
            } else {
                e_end - e_end % self.chunk
            };
            if run_end > offset {
                return Ok(Some(Chunk::Zero(run_end - offset)));
            }
        }
        let end = (offset + self.chunk).min(self.size);
        self.pieces.clear();
        let mut pos = offset;
        while pos < end {
            let e = self.extent_at(pos)?;
            let piece_end = (e.offset + e.len).min(end);
            self.pieces.push(Extent {
                offset: pos,
                len: piece_end - pos,
                kind: e.kind,
            });
            pos = piece_end;
        }
        if self.pieces.iter().all(|p| p.kind == ExtentKind::Zero) {
            return Ok(Some(Chunk::Zero(end - offset)));
        }
        let Some(mut buf) = self.spare.take().or_else(|| free.recv().ok()) else {
            return Ok(None);
        };
        buf.resize((end - offset) as usize, 0);
        let mut read = 0;
        for p in &self.pieces {
            let at = (p.offset - offset) as usize;
            let dst = &mut buf[at..at + p.len as usize];
            match p.kind {
                ExtentKind::Data => {
                    self.source.read_at(p.offset, dst)?;
                    read += p.len;
                }
                ExtentKind::Zero => dst.fill(0),
            }
        }
        Ok(Some(Chunk::Data(buf, read)))
    }
}

/// The `ContentDigest` block being assembled from chunks. Zeros before a block's first data are
/// only counted, so a block that stays all zeros takes the precomputed digest.
struct BlockDigest {
    content: ContentHasher,
    size: u64,
    /// Start of the block being assembled, and how many of its bytes were seen.
    start: u64,
    filled: u64,
    /// The block's hasher, once data has been seen in it.
    hasher: Option<Sha256>,
}

impl BlockDigest {
    fn new(size: u64) -> Self {
        Self {
            content: ContentHasher::new(),
            size,
            start: 0,
            filled: 0,
            hasher: None,
        }
    }

    fn block_len(&self) -> u64 {
        (self.size - self.start).min(BLOCK_SIZE)
    }

    /// Counts `n` more bytes of the block, closing it when full.
    fn advance(&mut self, n: u64) {
        self.filled += n;
        if self.filled == self.block_len() {
            let d = match self.hasher.take() {
                Some(h) => h.finalize().into(),
                None => digest::zero_block_digest(self.filled),
            };
            self.content.push(&d);
            self.start += self.filled;
            self.filled = 0;
        }
    }

    /// `len` zero bytes next.
    fn zeros(&mut self, mut len: u64) {
        while len > 0 && self.start < self.size {
            let n = len.min(self.block_len() - self.filled);
            if let Some(h) = &mut self.hasher {
                hash_zeros(h, n);
            }
            self.advance(n);
            len -= n;
        }
    }

    /// Data bytes next; chunks never cross a block boundary.
    fn data(&mut self, data: &[u8]) {
        let leading = self.filled;
        let h = self.hasher.get_or_insert_with(|| {
            let mut h = Sha256::new();
            hash_zeros(&mut h, leading);
            h
        });
        h.update(data);
        self.advance(data.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::NullSink;
    use std::path::{Path, PathBuf};

    /// An in-memory disk whose extents are given: data where `data` says, zeros elsewhere.
    struct MemSource {
        disk: Vec<u8>,
        data: Vec<(u64, u64)>,
        path: PathBuf,
    }

    impl Disk for MemSource {
        fn size(&self) -> u64 {
            self.disk.len() as u64
        }
        fn extent(&self, offset: u64, max_len: u64) -> format::Result<Extent> {
            let end = offset + max_len;
            for &(a, b) in &self.data {
                if offset >= a && offset < b {
                    let len = b.min(end) - offset;
                    return Ok(Extent {
                        offset,
                        len,
                        kind: ExtentKind::Data,
                    });
                }
                if offset < a {
                    let len = a.min(end) - offset;
                    return Ok(Extent {
                        offset,
                        len,
                        kind: ExtentKind::Zero,
                    });
                }
            }
            Ok(Extent {
                offset,
                len: max_len,
                kind: ExtentKind::Zero,
            })
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> format::Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.disk[o..o + buf.len()]);
            Ok(())
        }
        fn format(&self) -> &'static str {
            "raw"
        }
        fn path(&self) -> &Path {
            &self.path
        }
    }

    /// A sink that only checks the blocks it gets and records their bytes.
    struct Recorder {
        align: u64,
        got: Vec<u8>,
    }

    impl Sink for Recorder {
        fn alignment(&self) -> u64 {
            self.align
        }
        fn write(&mut self, offset: u64, block: &Block<'_>) -> sink::Result<()> {
            assert_eq!(offset, self.got.len() as u64);
            match block {
                Block::Zero(n) => self.got.resize(self.got.len() + *n as usize, 0),
                Block::Data { buf, .. } => {
                    assert_eq!(offset % self.align, 0);
                    assert!(buf.len() as u64 <= BLOCK_SIZE);
                    self.got.extend_from_slice(buf);
                }
            }
            Ok(())
        }
        fn finish(&mut self) -> sink::Result<Written> {
            NullSink.finish()
        }
    }

    #[test]
    fn chunked_digest_matches_the_definition() {
        const M: u64 = 1 << 20;
        // Sizes around block and chunk edges; data extents that start mid-chunk, hold zeros,
        // cross block boundaries and reach the very end.
        for size in [0, 1, 4095, 4 * M, 4 * M + 1, 13 * M + 777] {
            let mut disk = vec![0u8; size as usize];
            for (i, b) in disk.iter_mut().enumerate() {
                if (i / 3000) % 5 != 0 {
                    *b = (i % 251) as u8 | 1;
                }
            }
            let data: Vec<(u64, u64)> = [(4096, 3 * M), (4 * M - 10, 4 * M + 20), (9 * M, size)]
                .into_iter()
                .map(|(a, b)| (a.min(size), b.min(size)))
                .filter(|(a, b)| a < b)
                .collect();
            // Bytes outside the data extents read as zeros, and so do those that round the
            // disk up to a whole sector.
            let padded = size.next_multiple_of(512);
            let mut expect = vec![0u8; padded as usize];
            for &(a, b) in &data {
                expect[a as usize..b as usize].copy_from_slice(&disk[a as usize..b as usize]);
            }
            for align in [4096, 2 * M] {
                let src = MemSource {
                    disk: disk.clone(),
                    data: data.clone(),
                    path: "mem".into(),
                };
                let mut sink = Recorder {
                    align,
                    got: Vec::new(),
                };
                let r = copy(&src, &mut sink, Options::default()).unwrap();
                assert_eq!(sink.got, expect, "size {size} align {align}");
                assert_eq!(r.virtual_size, padded, "size {size}");
                assert_eq!(
                    r.content_digest,
                    digest::content_digest_of(&expect),
                    "size {size}"
                );
                // Progress and the report count each data byte once, zeros among them too.
                let data_len: u64 = data.iter().map(|(a, b)| b - a).sum();
                assert_eq!(r.data_bytes, data_len, "size {size}");
            }
        }
    }

    /// A sink that fails on its third data block.
    struct Failing(u32);

    impl Sink for Failing {
        fn write(&mut self, _offset: u64, block: &Block<'_>) -> sink::Result<()> {
            if let Block::Data { .. } = block {
                self.0 += 1;
                if self.0 == 3 {
                    return Err(sink::Error::SourceChanged { path: "x".into() });
                }
            }
            Ok(())
        }
        fn finish(&mut self) -> sink::Result<Written> {
            NullSink.finish()
        }
    }

    #[test]
    fn a_failing_sink_stops_the_reader() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let disk = vec![7u8; 64 << 20];
            let src = MemSource {
                disk,
                data: vec![(0, 64 << 20)],
                path: "mem".into(),
            };
            let r = copy(&src, &mut Failing(0), Options::default());
            let _ = tx.send(r.is_err());
        });
        let failed = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(failed, Ok(true), "the copy hung or did not fail");
    }

    /// A source whose reads panic: a bug in a reader, not an input mkomi meets.
    struct Panicking(MemSource);

    impl Disk for Panicking {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn extent(&self, offset: u64, max_len: u64) -> format::Result<Extent> {
            self.0.extent(offset, max_len)
        }
        fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> format::Result<()> {
            panic!("read_at exploded")
        }
        fn format(&self) -> &'static str {
            "raw"
        }
        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    #[test]
    fn a_panicking_reader_is_an_internal_error_not_an_interrupt() {
        let src = Panicking(MemSource {
            disk: vec![7u8; 8 << 20],
            data: vec![(0, 8 << 20)],
            path: "mem".into(),
        });
        let err = copy(&src, &mut NullSink, Options::default()).unwrap_err();
        assert!(!matches!(err, Error::Interrupted), "{err:?}");
        assert_eq!(
            err.to_string(),
            "internal error: the reader thread panicked: read_at exploded"
        );
    }

    #[test]
    fn a_panicking_sink_is_not_an_interrupt() {
        // The sink runs on the caller's thread: its panic stays a panic, never exit 130.
        struct Boom;
        impl Sink for Boom {
            fn write(&mut self, _offset: u64, _block: &Block<'_>) -> sink::Result<()> {
                panic!("write exploded")
            }
            fn finish(&mut self) -> sink::Result<Written> {
                NullSink.finish()
            }
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let src = MemSource {
                disk: vec![7u8; 8 << 20],
                data: vec![(0, 8 << 20)],
                path: "mem".into(),
            };
            copy(&src, &mut Boom, Options::default()).map(|_| ())
        }));
        assert!(r.is_err(), "the sink's panic was turned into {r:?}");
    }
}
