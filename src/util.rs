//! Small shared pieces: zero detection, whole-file hashing, durable writes, UTC dates.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::sync_channel;

/// True when every byte of `buf` is zero.
///
/// Compares 4 KiB strides against a static zero page: `memcmp` is vectorised by libc and stops at
/// the first difference, so data is usually rejected within its first bytes.
pub fn is_zero(buf: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    buf.chunks(ZEROS.len())
        .all(|chunk| chunk == &ZEROS[..chunk.len()])
}

/// Largest single read or write system call. Measured on this project's machines (page cache
/// warm, 700 MiB with `pread`/`pwrite` from one thread): 4 MiB calls read at 2.5 GB/s and wrote
/// at 0.64 GB/s, 1 MiB calls read at 11 GB/s and wrote at 3.6 GB/s; 2 MiB and 256 KiB were like
/// 1 MiB. So every larger transfer is split.
pub const IO_CHUNK: usize = 1 << 20;

/// `write_all_at` in [`IO_CHUNK`] pieces.
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut at = offset;
    for piece in buf.chunks(IO_CHUNK) {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}

/// Feeds `n` zero bytes to `h`, from a static buffer.
pub fn hash_zeros(h: &mut Sha256, mut n: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Chunk size for whole-file hashing (see [`IO_CHUNK`]).
const FILE_HASH_CHUNK: usize = IO_CHUNK;

/// SHA-256 of the first `len` bytes of `file`, read sequentially.
///
/// Reading and hashing overlap on two threads: a reader fills chunks while the hasher consumes
/// the previous ones, so the pass runs at hashing speed.
pub fn sha256_file(file: &File, len: u64) -> io::Result<[u8; 32]> {
    let (full_tx, full_rx) = sync_channel::<io::Result<Vec<u8>>>(3);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(4);
    for _ in 0..4 {
        // The channel has room for all four buffers: this cannot block.
        let _ = free_tx.send(Vec::with_capacity(FILE_HASH_CHUNK));
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut offset = 0u64;
            while offset < len {
                let Ok(mut buf) = free_rx.recv() else { return };
                let n = (len - offset).min(FILE_HASH_CHUNK as u64) as usize;
                buf.resize(n, 0);
                let res = file.read_exact_at(&mut buf, offset).map(|()| buf);
                let failed = res.is_err();
                if full_tx.send(res).is_err() || failed {
                    return;
                }
                offset += n as u64;
            }
        });
        let mut hasher = Sha256::new();
        let mut seen = 0u64;
        while seen < len {
            let buf = full_rx
                .recv()
                .map_err(|_| io::Error::other("file reader stopped"))??;
            hasher.update(&buf);
            seen += buf.len() as u64;
            let _ = free_tx.send(buf);
        }
        Ok(hasher.finalize().into())
    })
}

/// Flushes a directory entry to disk, so that a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The proleptic Gregorian (year, month 1–12, day 1–31) of `days` since 1970-01-01, after
/// Howard Hinnant's public-domain algorithm `civil_from_days` ("chrono-Compatible Low-Level
/// Date Algorithms").
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Formats seconds since the Unix epoch as an ISO 8601 UTC timestamp (`2026-11-27T03:47:22Z`),
/// the form of Outscale's `CreationDate`.
pub fn utc_timestamp(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `len` deterministic, incompressible bytes (xorshift64*) for the unit tests: data that no
/// compressor shrinks and whose misplaced pieces show.
#[cfg(test)]
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_795_751_242), "2026-11-27T03:47:22Z");
        assert_eq!(utc_timestamp(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn zero_detection() {
        let mut buf = vec![0u8; 10_000];
        assert!(is_zero(&buf));
        assert!(is_zero(&[]));
        buf[9_999] = 1;
        assert!(!is_zero(&buf));
    }
}
