//! `SHA256SUMS` in coreutils format: `<64 hex>  <name>` per line, sorted by name.

use super::{Error, Result, is_safe_member_name};
use std::path::Path;

/// Largest `SHA256SUMS` read: 41 disks and a manifest take a few KiB.
const MAX_SUMS_BYTES: u64 = 1 << 20;

/// Renders entries `(name, hex digest)` sorted by name.
pub fn render(entries: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = entries.iter().collect();
    sorted.sort();
    sorted
        .iter()
        .map(|(name, hex)| format!("{hex}  {name}\n"))
        .collect()
}

/// Reads and parses a `SHA256SUMS` file; names must be plain file names.
pub fn read(path: &Path) -> Result<Vec<(String, String)>> {
    let len = std::fs::metadata(path)
        .map_err(super::io_err(path, "cannot read"))?
        .len();
    if len > MAX_SUMS_BYTES {
        return Err(Error::Invalid {
            path: path.to_owned(),
            reason: format!("{len} bytes: too large"),
        });
    }
    let bytes = std::fs::read(path).map_err(super::io_err(path, "cannot read"))?;
    parse(&bytes).map_err(|reason| Error::Invalid {
        path: path.to_owned(),
        reason,
    })
}

/// Parses `SHA256SUMS` bytes from anywhere; names must be plain file names, each listed once.
/// The error is one line.
pub fn parse(bytes: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    if bytes.len() as u64 > MAX_SUMS_BYTES {
        return Err(format!("{} bytes: too large", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let (hex, name) = line
            .split_once("  ")
            .or_else(|| line.split_once(" *"))
            .ok_or_else(|| format!("line {n}: not '<sha256>  <file>'"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("line {n}: {hex:?} is not a SHA-256"));
        }
        if !is_safe_member_name(name) {
            return Err(format!(
                "line {n}: {name:?} is not a plain file name in the bundle"
            ));
        }
        if out.iter().any(|(existing, _)| existing == name) {
            return Err(format!("line {n}: {name:?} listed twice"));
        }
        out.push((name.to_owned(), hex.to_ascii_lowercase()));
    }
    Ok(out)
}
