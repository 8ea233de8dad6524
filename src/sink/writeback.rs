//! Early writeback: a sink that will fsync its file starts the kernel writing the data while the
//! copy goes on, so that the final fsync finds little left to write.
//!
//! Without it, the pages a copy dirties sit in the page cache until `fsync`, which then waits
//! for all of them: on the bench machine a third of a durable `register` was that wait
//! (bench/README.md). Every [`STEP`] bytes written, the range since the last call is submitted
//! with `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which queues the I/O and returns, and the range
//! submitted two steps ago is waited for (`SYNC_FILE_RANGE_WAIT_BEFORE`), which keeps at most
//! about three steps of the file dirty or in flight, whatever the disk's size.
//!
//! These calls are hints, not the durability point, with one exception: an error. The wait
//! (`SYNC_FILE_RANGE_WAIT_BEFORE`) reports a writeback error and advances the file's error
//! cursor (`file_check_and_advance_wb_err` in the kernel's `filemap.c`), so the final `fsync`
//! on the same descriptor would no longer see it. An I/O error (EIO, ENOSPC, EDQUOT…) is
//! therefore returned to the sink, which fails the copy, never dropped. Only the errors that say
//! the call does not apply to this file (EINVAL, ESPIPE, ENOSYS) turn early writeback off and
//! leave everything to `fsync`. Without sync (`--no-sync`) nothing is forced: the kernel writes
//! the pages back when it chooses, as before.

use std::fs::File;

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
    /// anything written elsewhere is left to the final fsync). An error is a writeback error
    /// of the file, which the final fsync would not report again: the copy must fail.
    pub fn written(&mut self, file: &File, end: u64) -> std::io::Result<()> {
        if !self.enabled || end < self.submitted.saturating_add(STEP) {
            return Ok(());
        }
        let wait = (self.waited, self.previous);
        let submit = (self.submitted, end);
        let done = sync_range(file, wait, libc::SYNC_FILE_RANGE_WAIT_BEFORE)
            .and_then(|()| sync_range(file, submit, libc::SYNC_FILE_RANGE_WRITE));
        match done {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ESPIPE | libc::ENOSYS)
                ) =>
            {
                self.enabled = false;
            }
            Err(e) => return Err(e),
        }
        (self.waited, self.previous, self.submitted) = (self.previous, self.submitted, end);
        Ok(())
    }
}

/// `sync_file_range` over `start..end` (nothing when empty).
fn sync_range(file: &File, (start, end): (u64, u64), flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if end <= start {
        return Ok(());
    }
    let (Ok(offset), Ok(len)) = (i64::try_from(start), i64::try_from(end - start)) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: sync_file_range(2) only reads its integer arguments; the descriptor is open for
    // as long as `file` is borrowed. rustix (1.1) has no binding for it.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn submits_every_step_and_waits_two_behind() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut wb = Writeback::new(true);
        let chunk = vec![1u8; 1 << 20];
        let mut end = 0;
        for _ in 0..((3 * STEP) >> 20) + 1 {
            file.write_all_at(&chunk, end).unwrap();
            end += chunk.len() as u64;
            wb.written(&file, end).unwrap();
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
        wb.written(&file, 10 * STEP).unwrap();
        assert_eq!(wb.submitted, 0);
    }

    #[test]
    fn an_error_turns_it_off() {
        // A pipe: sync_file_range fails with ESPIPE.
        let (r, _w) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(r));
        let mut wb = Writeback::new(true);
        // Not applicable to a pipe: turned off, no error.
        wb.written(&file, STEP).unwrap();
        assert!(!wb.enabled);
    }
}
