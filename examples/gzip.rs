//! Gzips stdin to stdout with `mkomi::export::gzip::GzWriter`, for measuring it:
//! `cargo run --release --example gzip -- [THREADS [LEVEL]] < disk > disk.gz`.

use mkomi::export::gzip::{DEFAULT_LEVEL, GzWriter};
use std::io::{self, Read, Write};

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let threads = match args.next() {
        Some(t) => t.parse().map_err(io::Error::other)?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let level = match args.next() {
        Some(l) => l.parse().map_err(io::Error::other)?,
        None => DEFAULT_LEVEL,
    };
    let mut input = io::stdin().lock();
    let mut gz = GzWriter::new(io::stdout(), threads, level)?;
    // The bundle's disk file is read in 1 MiB chunks; do the same.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        gz.write_all(&buf[..n])?;
    }
    let read = gz.uncompressed_len();
    gz.finish()?;
    eprintln!("{read} bytes in, {threads} threads, level {level}");
    Ok(())
}
