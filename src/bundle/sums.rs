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
    let invalid = |reason: String| Error::Invalid {
        path: path.to_owned(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(super::io_err(path, "cannot read"))?
        .len();
    if len > MAX_SUMS_BYTES {
        return Err(invalid(format!("{len} bytes: too large")));
    }
    let text = std::fs::read_to_string(path).map_err(super::io_err(path, "cannot read"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let (hex, name) = line
            .split_once("  ")
            .or_else(|| line.split_once(" *"))
            .ok_or_else(|| invalid(format!("line {n}: not '<sha256>  <file>'")))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!("line {n}: {hex:?} is not a SHA-256")));
        }
        if !is_safe_member_name(name) {
            return Err(invalid(format!(
                "line {n}: {name:?} is not a plain file name in the bundle"
            )));
        }
        if out.iter().any(|(existing, _)| existing == name) {
            return Err(invalid(format!("line {n}: {name:?} listed twice")));
        }
        out.push((name.to_owned(), hex.to_ascii_lowercase()));
    }
    Ok(out)
}
