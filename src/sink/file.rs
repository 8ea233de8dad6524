//! How the sinks write their files: in pieces of at most [`WRITE_PIECE`] bytes, and, when the
//! file will be synced, with early writeback.
//!
//! **Pieces.** On the bench machine (bench/README.md), a 1 MiB `pwrite` into the page cache
//! sometimes cost several times the kernel time of four 256 KiB ones: the copy into freshly
//! allocated page-cache folios (`copy_folio_from_iter_atomic`) took up to 39% of a `register`
//! instead of about 10%, and the run 2.4× the time. Pieces of 64–512 KiB kept the system time of
//! a `register --no-sync` at 0.38–0.41 s in every run, against 0.67–1.2 s for 1 MiB (hyperfine,
//! 7 runs each). Each piece is handed on (for hashing) right after it is written, while it is
//! still in the CPU's cache.
//!
//! **Early writeback.** Without it, the pages a copy dirties sit in the page cache until `fsync`,
//! which then waits for all of them: a third of a durable `register` was that wait. Every
//! [`STEP`] bytes written, the range since the last call is submitted with
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which queues the I/O and returns, and the range
//! submitted two steps ago is waited for (`SYNC_FILE_RANGE_WAIT_BEFORE`), which keeps at most
//! about three steps of the file dirty or in flight, whatever the disk's size.
//!
//! These calls are hints, not the durability point: `fsync` at the end still writes what is left
//! and reports any writeback error (the kernel records it for `fsync` whether or not
//! `sync_file_range` saw it first, see `errseq_t` in the kernel's `filemap.c`). So an error from
//! them only turns early writeback off for the file. Without sync (`--no-sync`) nothing is
//! forced: the kernel writes the pages back when it chooses.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The largest single write a sink makes (see the module's documentation).
pub const WRITE_PIECE: usize = 256 << 10;

/// Writes `buf` at `offset` in pieces of at most [`WRITE_PIECE`] bytes, giving each piece to
/// `each` once it is written.
pub fn write_at(
    file: &File,
    buf: &[u8],
    offset: u64,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut at = offset;
    for piece in buf.chunks(WRITE_PIECE) {
        file.write_all_at(piece, at)?;
        each(piece);
        at += piece.len() as u64;
    }
    Ok(())
}

/// Bytes written between two submissions: large enough for the block layer to merge the writes
/// into long requests, small enough to start the device early and bound the dirty pages.
pub const STEP: u64 = 16 << 20;

/// Tracks which part of a file written front to back has been submitted and waited for.
#[derive(Debug)]
pub struct Writeback {
    enabled: bool,
    /// End of the range already waited for.
    waited: u64,
    /// End of the range submitted at the step before last.
    previous: u64,
    /// End of the range submitted last.
    submitted: u64,
}

impl Writeback {
    /// Early writeback when `enabled` (the sink will fsync); otherwise [`Writeback::written`]
    /// does nothing and the kernel writes the pages back when it chooses.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            waited: 0,
            previous: 0,
            submitted: 0,
        }
    }

    /// The file's bytes before `end` have been written (data is written in ascending order;
    /// anything written elsewhere is left to the final fsync).
    pub fn written(&mut self, file: &File, end: u64) {
        if !self.enabled || end < self.submitted.saturating_add(STEP) {
            return;
        }
        let wait = (self.waited, self.previous);
        let submit = (self.submitted, end);
        self.enabled = sync_range(file, wait, libc::SYNC_FILE_RANGE_WAIT_BEFORE)
            && sync_range(file, submit, libc::SYNC_FILE_RANGE_WRITE);
        (self.waited, self.previous, self.submitted) = (self.previous, self.submitted, end);
    }
}

/// `sync_file_range` over `start..end` (nothing when empty); false when it failed.
fn sync_range(file: &File, (start, end): (u64, u64), flags: libc::c_uint) -> bool {
    use std::os::fd::AsRawFd;
    if end <= start {
        return true;
    }
    let (Ok(offset), Ok(len)) = (i64::try_from(start), i64::try_from(end - start)) else {
        return false;
    };
    // SAFETY: sync_file_range(2) only reads its integer arguments; the descriptor is open for
    // as long as `file` is borrowed. rustix (1.1) has no binding for it.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("f"))
            .unwrap();
        let buf: Vec<u8> = (0..WRITE_PIECE * 2 + 5).map(|i| i as u8).collect();
        let mut seen = Vec::new();
        write_at(&file, &buf, 3, |p| seen.push(p.len())).unwrap();
        assert_eq!(seen, [WRITE_PIECE, WRITE_PIECE, 5]);
        let mut back = vec![0; buf.len()];
        file.read_exact_at(&mut back, 3).unwrap();
        assert_eq!(back, buf);
    }

    #[test]
    fn submits_every_step_and_waits_two_behind() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut wb = Writeback::new(true);
        let chunk = vec![1u8; 1 << 20];
        let mut end = 0;
        for _ in 0..(3 * STEP >> 20) + 1 {
            file.write_all_at(&chunk, end).unwrap();
            end += chunk.len() as u64;
            wb.written(&file, end);
        }
        assert!(wb.enabled);
        assert_eq!(
            (wb.waited, wb.previous, wb.submitted),
            (STEP, 2 * STEP, 3 * STEP)
        );
    }

    #[test]
    fn disabled_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut wb = Writeback::new(false);
        wb.written(&file, 10 * STEP);
        assert_eq!(wb.submitted, 0);
    }

    #[test]
    fn an_error_turns_it_off() {
        // A pipe: sync_file_range fails with ESPIPE.
        let (r, _w) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(r));
        let mut wb = Writeback::new(true);
        wb.written(&file, STEP);
        assert!(!wb.enabled);
    }
}
