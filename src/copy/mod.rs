//! The copy engine: one pass over a source's allocated data, hashing and writing overlapped.
//!
//! Three threads form a pipeline over 4 MiB blocks (the `ContentDigest` block):
//!
//! 1. the reader asks the source where data is ([`Source::extent`]), skips holes without reading
//!    them, and reads data blocks into buffers from a fixed pool;
//! 2. the hasher turns blocks that read as all zeros into zero blocks and digests the others;
//! 3. the caller's thread hands blocks, in order, to the [`Sink`].
//!
//! Memory is the pool — [`POOL_BUFFERS`] blocks — whatever the disk's size. Before the copy, one
//! walk over the extents (metadata only) totals the data for progress and gives sinks that need
//! it (qcow2) their plan.

use crate::digest::{self, BLOCK_SIZE, ContentHasher};
use crate::progress::Task;
use crate::sink::{self, Block, SharedBuf, Sink, Written, ZeroMap};
use crate::source::{self, Extent, ExtentKind, Source};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Buffers in flight: two being read or hashed, two queued, one being written, one spare.
pub const POOL_BUFFERS: usize = 6;

/// Errors of a copy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the source failed.
    #[error(transparent)]
    Source(#[from] source::Error),
    /// Writing the output failed.
    #[error(transparent)]
    Sink(#[from] sink::Error),
    /// The copy was cancelled (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What a copy produced.
#[derive(Clone, Debug)]
pub struct Report {
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

enum Msg {
    Zero { offset: u64, len: u64 },
    Data { offset: u64, buf: Vec<u8> },
    Failed(Error),
}

/// What the hasher hands on to the sink.
enum Out {
    Block(u64, Block),
    Failed(Error),
}

/// Walks every extent of `source` once, metadata only, feeding `each`.
pub fn walk_extents(
    source: &mut dyn Source,
    mut each: impl FnMut(&Extent) -> Result<()>,
) -> Result<()> {
    let size = source.size();
    let mut pos = 0;
    while pos < size {
        let e = checked_extent(source, pos, size - pos)?;
        each(&e)?;
        pos += e.len;
    }
    Ok(())
}

fn checked_extent(source: &mut dyn Source, pos: u64, max: u64) -> Result<Extent> {
    let e = source.extent(pos, max)?;
    if e.offset != pos || e.len == 0 || e.len > max {
        return Err(source::Error::Invalid {
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

/// Copies `source` into `sink`, returning the disk's `ContentDigest` and what was written.
pub fn copy(source: &mut dyn Source, sink: &mut dyn Sink, options: Options<'_>) -> Result<Report> {
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
    if let Some(p) = options.progress {
        p.set_length(total_data);
    }

    let size = source.size();
    let cancel = options.cancel;
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(POOL_BUFFERS);
    for _ in 0..POOL_BUFFERS {
        // The channel holds exactly the pool: these sends cannot block.
        let _ = free_tx.send(Vec::new());
    }
    let (read_tx, read_rx) = sync_channel::<Msg>(2);
    let (hashed_tx, hashed_rx) = sync_channel::<Out>(2);

    std::thread::scope(|scope| {
        scope.spawn(move || read_blocks(source, size, cancel, free_rx, read_tx));
        let hasher_free = free_tx.clone();
        let hasher = scope.spawn(move || hash_blocks(read_rx, hashed_tx, hasher_free));

        let mut data_bytes = 0u64;
        let mut outcome: Result<()> = Ok(());
        for out in hashed_rx.iter() {
            let step: Result<()> = match out {
                Out::Block(offset, block) => {
                    if let Block::Data { buf, .. } = &block {
                        data_bytes += buf.len() as u64;
                        if let Some(p) = options.progress {
                            p.advance(buf.len() as u64);
                        }
                    }
                    sink.write(offset, &block).map_err(Into::into)
                }
                Out::Failed(e) => Err(e),
            };
            if let Err(e) = step {
                outcome = Err(e);
                break;
            }
        }
        // Dropping the receiver stops the hasher, which stops the reader.
        drop(hashed_rx);
        let content = hasher.join().unwrap_or_default();
        outcome?;
        let (hasher, blocks) = content.ok_or(Error::Interrupted)?;
        if blocks != size.div_ceil(BLOCK_SIZE) {
            return Err(Error::Interrupted);
        }
        let written = sink.finish()?;
        Ok(Report {
            content_digest: hasher.finish(),
            data_bytes,
            written,
        })
    })
}

fn read_blocks(
    source: &mut dyn Source,
    size: u64,
    cancel: Option<&AtomicBool>,
    free: Receiver<Vec<u8>>,
    out: SyncSender<Msg>,
) {
    let mut reader = BlockReader {
        source,
        size,
        current: None,
        pieces: Vec::new(),
    };
    let mut offset = 0u64;
    while offset < size {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            let _ = out.send(Msg::Failed(Error::Interrupted));
            return;
        }
        let msg = match reader.next(offset, &free) {
            Ok(Some(m)) => m,
            Ok(None) => return, // the pool is gone: the consumer stopped
            Err(e) => Msg::Failed(e),
        };
        let next = match &msg {
            Msg::Zero { offset, len } => offset + len,
            Msg::Data { offset, buf } => offset + buf.len() as u64,
            Msg::Failed(_) => size,
        };
        let failed = matches!(msg, Msg::Failed(_));
        if out.send(msg).is_err() || failed {
            return;
        }
        offset = next;
    }
}

/// Turns a source's extents into block messages. One extent is asked for at a time, as long as
/// the source will report it, and consumed across blocks: a hole of terabytes costs one query
/// and one message, not one per block.
struct BlockReader<'a> {
    source: &'a mut dyn Source,
    size: u64,
    /// The extent that covers the current offset, possibly reaching far past it.
    current: Option<Extent>,
    pieces: Vec<Extent>,
}

impl BlockReader<'_> {
    /// The extent covering `pos`, from the cache or the source.
    fn extent_at(&mut self, pos: u64) -> Result<Extent> {
        match self.current {
            Some(e) if e.offset <= pos && pos < e.offset + e.len => Ok(e),
            _ => {
                let e = checked_extent(self.source, pos, self.size - pos)?;
                self.current = Some(e);
                Ok(e)
            }
        }
    }

    /// The message for the data starting at `offset`, a block boundary: a zero run of whole
    /// blocks (to the end of the disk at most), or one block of data.
    fn next(&mut self, offset: u64, free: &Receiver<Vec<u8>>) -> Result<Option<Msg>> {
        let e = self.extent_at(offset)?;
        let e_end = e.offset + e.len;
        if e.kind == ExtentKind::Zero {
            let run_end = if e_end >= self.size {
                self.size
            } else {
                e_end - e_end % BLOCK_SIZE
            };
            if run_end > offset {
                return Ok(Some(Msg::Zero {
                    offset,
                    len: run_end - offset,
                }));
            }
        }
        let end = (offset + BLOCK_SIZE).min(self.size);
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
            return Ok(Some(Msg::Zero {
                offset,
                len: end - offset,
            }));
        }
        let Ok(mut buf) = free.recv() else {
            return Ok(None);
        };
        buf.resize((end - offset) as usize, 0);
        for p in &self.pieces {
            let at = (p.offset - offset) as usize;
            let dst = &mut buf[at..at + p.len as usize];
            match p.kind {
                ExtentKind::Data => self.source.read_at(p.offset, dst)?,
                ExtentKind::Zero => dst.fill(0),
            }
        }
        Ok(Some(Msg::Data { offset, buf }))
    }
}

/// Digests blocks in order and maps their zero granules; returns the content hasher and its
/// block count, or `None` when the copy stopped early.
fn hash_blocks(
    input: Receiver<Msg>,
    out: SyncSender<Out>,
    free: SyncSender<Vec<u8>>,
) -> Option<(ContentHasher, u64)> {
    let mut content = ContentHasher::new();
    for msg in input.iter() {
        let (offset, block) = match msg {
            Msg::Zero { offset, len } => {
                // A run of whole blocks, the last possibly short (at the end of the disk).
                let mut left = len;
                while left > 0 {
                    let n = left.min(BLOCK_SIZE);
                    content.push(&digest::zero_block_digest(n));
                    left -= n;
                }
                (offset, Block::Zero(len))
            }
            Msg::Data { offset, buf } => {
                let zeros = ZeroMap::scan(&buf);
                if zeros.is_zero(0, buf.len()) {
                    let len = buf.len() as u64;
                    content.push(&digest::zero_block_digest(len));
                    let _ = free.send(buf);
                    (offset, Block::Zero(len))
                } else {
                    content.push(&digest::block_digest(&buf));
                    let buf = SharedBuf::new(buf, Some(free.clone()));
                    (offset, Block::Data { buf, zeros })
                }
            }
            Msg::Failed(e) => {
                let _ = out.send(Out::Failed(e));
                return None;
            }
        };
        if out.send(Out::Block(offset, block)).is_err() {
            return None;
        }
    }
    let blocks = content.blocks();
    Some((content, blocks))
}
