//! Windows registry hives (regf), read-only, for a few values looked up by fixed path: the
//! SYSTEM and SOFTWARE hives of an offline Windows volume.
//!
//! The format is msuhanov's "Windows registry file format specification"
//! (github.com/msuhanov/regf) and libyal's "Windows NT Registry File (REGF) format
//! specification"; section names below are msuhanov's. A hive is hostile input: every cell
//! reference is checked against the hive bins data before use, lists and names are bounded,
//! and lookups go strictly down a given path — the tree is never walked — so a cycle cannot
//! make a lookup loop, and a budget of cells per lookup bounds the work.
//!
//! A dirty hive (the base block's sequence numbers differ, or its checksum is wrong) is an
//! error of its own: Windows would first replay `*.LOG1`/`*.LOG2`, which this reader does not,
//! so the primary file may lack the latest writes ("Dirty state of a hive").

/// The base block: the hive's first 4096 bytes ("Base block").
const BASE_BLOCK: usize = 4096;
/// Cells per lookup: far above the few dozen a real path lookup visits.
const CELL_BUDGET: usize = 1 << 20;
/// Elements of one subkey or value list (`u16` counts in lists; nk counts are `u32`).
const MAX_LIST: usize = 65_536;
/// A value's data, big data included: the values mkomi reads are short strings and DWORDs.
const MAX_VALUE: usize = 64 * 1024;
/// Data over this many bytes is stored as big data (`db`) in hives of version 1.4 and later
/// ("Big data").
const BIG_DATA_THRESHOLD: usize = 16_344;
/// Longest key name [`Hive::subkeys`] returns, in bytes: Windows limits key names to 255
/// characters (510 bytes in UTF-16).
const MAX_NAME: usize = 512;
/// "none" in offset fields.
const NONE: u32 = 0xffff_ffff;

/// What a hive can fail on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not a regf file, or not a primary hive file.
    #[error("not a registry hive: {0}")]
    NotAHive(&'static str),
    /// The base block's sequence numbers differ: a write did not finish in this file.
    #[error(
        "the hive is dirty (sequence numbers {primary} and {secondary} differ): its transaction logs were not applied"
    )]
    Dirty {
        /// The primary sequence number.
        primary: u32,
        /// The secondary sequence number.
        secondary: u32,
    },
    /// The base block's checksum does not match.
    #[error("the hive's base block checksum is wrong (stored {stored:#x}, computed {computed:#x})")]
    BadChecksum {
        /// As stored.
        stored: u32,
        /// As computed.
        computed: u32,
    },
    /// A structure inside the hive is damaged.
    #[error("damaged hive: {what} at offset {offset:#x}")]
    Damaged {
        /// What is wrong.
        what: &'static str,
        /// The cell's offset, relative to the hive bins data.
        offset: u32,
    },
    /// A lookup (or the lookups sharing one [`Budget`]) visited more cells than any real hive
    /// needs.
    #[error("the lookup visited over {CELL_BUDGET} cells")]
    Budget,
}

/// A value's data, as mkomi uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `REG_DWORD`.
    Dword(u32),
    /// `REG_SZ` or `REG_EXPAND_SZ`, up to the first NUL.
    String(String),
    /// Any other type (its number), or a DWORD that is not 4 bytes.
    Other(u32),
}

/// Cells a walk may still visit, shared by several lookups so that a caller that lists a key
/// and then looks into each subkey is bounded as a whole, not per lookup (a fresh budget per
/// subkey would let a hive of many subkeys cost many budgets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget(usize);

impl Budget {
    /// The budget of one lookup ([`Hive::value`], [`Hive::subkeys`]): 2^20 cells.
    pub fn new() -> Budget {
        Budget(CELL_BUDGET)
    }

    /// Cells still to visit.
    pub fn left(&self) -> usize {
        self.0
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new()
    }
}

/// A key of a hive, as found by [`Hive::key_at`] or [`Hive::subkeys_of`]: the offset of its
/// key node, valid for the hive it came from only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef(u32);

/// What [`Hive::each_subkey`] calls with each key of a list: its offset, stored name and
/// whether the name is one byte per character; an offset returned stops the walk.
type Visit<'v> = dyn FnMut(u32, &[u8], bool) -> Result<Option<u32>, Error> + 'v;

/// A hive held in memory (the caller reads the file with a cap).
pub struct Hive<'a> {
    /// The hive bins data: the file after the base block, as long as the base block says.
    bins: &'a [u8],
    root: u32,
    /// Minor version: big data exists from 4 on.
    minor: u32,
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at.checked_add(2)?)?
        .try_into()
        .ok()
        .map(u16::from_le_bytes)
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)?
        .try_into()
        .ok()
        .map(u32::from_le_bytes)
}

impl<'a> Hive<'a> {
    /// Checks the base block ("Base block") and keeps the hive bins data.
    pub fn parse(file: &'a [u8]) -> Result<Hive<'a>, Error> {
        let base = file
            .get(..BASE_BLOCK)
            .ok_or(Error::NotAHive("shorter than its base block"))?;
        if &base[..4] != b"regf" {
            return Err(Error::NotAHive("no regf signature"));
        }
        let field = |at| le32(base, at).unwrap_or(0);
        if field(20) != 1 {
            return Err(Error::NotAHive("major version is not 1"));
        }
        let minor = field(24);
        if !(3..=6).contains(&minor) {
            return Err(Error::NotAHive("minor version is not 3 to 6"));
        }
        if field(28) != 0 {
            return Err(Error::NotAHive("a transaction log, not a primary file"));
        }
        // XOR of the first 127 dwords; 0 is stored as 1 and 0xffffffff as 0xfffffffe.
        let mut sum = (0..127).fold(0u32, |x, i| x ^ field(i * 4));
        sum = match sum {
            0 => 1,
            NONE => 0xffff_fffe,
            s => s,
        };
        if sum != field(508) {
            return Err(Error::BadChecksum {
                stored: field(508),
                computed: sum,
            });
        }
        let (primary, secondary) = (field(4), field(8));
        if primary != secondary {
            return Err(Error::Dirty { primary, secondary });
        }
        let size = field(40) as usize;
        let bins = BASE_BLOCK
            .checked_add(size)
            .and_then(|end| file.get(BASE_BLOCK..end))
            .ok_or(Error::NotAHive("hive bins data longer than the file"))?;
        Ok(Hive {
            bins,
            root: field(36),
            minor,
        })
    }

    /// The payload of the allocated cell at `offset` (after its size field), checked: aligned,
    /// inside the hive bins data, allocated (a negative size).
    fn cell(&self, offset: u32, budget: &mut usize) -> Result<&'a [u8], Error> {
        *budget = budget.checked_sub(1).ok_or(Error::Budget)?;
        let damaged = |what| Error::Damaged { what, offset };
        if !offset.is_multiple_of(8) {
            return Err(damaged("unaligned cell"));
        }
        let at = offset as usize;
        let size = le32(self.bins, at).ok_or_else(|| damaged("cell outside the hive"))? as i32;
        if size >= 0 {
            return Err(damaged("reference to a free cell"));
        }
        let len = size.unsigned_abs() as usize;
        if len < 8 {
            return Err(damaged("cell too small"));
        }
        at.checked_add(len)
            .and_then(|end| self.bins.get(at + 4..end))
            .ok_or_else(|| damaged("cell past the end of the hive"))
    }

    /// The value `name` of the key at `path` (names compared without regard to case), or
    /// `None` when the key or the value does not exist.
    pub fn value(&self, path: &[&str], name: &str) -> Result<Option<Value>, Error> {
        let mut budget = CELL_BUDGET;
        let Some(key) = self.key(path, &mut budget)? else {
            return Ok(None);
        };
        let nk = self.cell(key, &mut budget)?;
        let count = le32(nk, 36).unwrap_or(0) as usize;
        let list = le32(nk, 40).unwrap_or(NONE);
        if count == 0 || list == NONE {
            return Ok(None);
        }
        if count > MAX_LIST {
            return Err(Error::Damaged {
                what: "value list too long",
                offset: list,
            });
        }
        let offsets = self.cell(list, &mut budget)?;
        for i in 0..count {
            let vk_at = le32(offsets, i * 4).ok_or(Error::Damaged {
                what: "value list shorter than its count",
                offset: list,
            })?;
            let vk = self.cell(vk_at, &mut budget)?;
            if vk.get(..2) != Some(b"vk") {
                return Err(Error::Damaged {
                    what: "not a value (vk) cell",
                    offset: vk_at,
                });
            }
            let name_len = le16(vk, 2).unwrap_or(0) as usize;
            let ascii = le16(vk, 16).unwrap_or(0) & 1 != 0;
            let raw = vk.get(20..20 + name_len).ok_or(Error::Damaged {
                what: "value name past its cell",
                offset: vk_at,
            })?;
            if !same_name(raw, ascii, name) {
                continue;
            }
            return self.data(vk, vk_at, &mut budget).map(Some);
        }
        Ok(None)
    }

    /// The names of the subkeys of the key at `path`, in the order the hive lists them (an
    /// empty list when the key does not exist or has none).
    ///
    /// Bounded like [`Hive::value`]: the lookup and the listing share one cell budget, at most
    /// 65,536 names are returned (more is an error, not a cut list, so that a caller never
    /// takes a partial list for the whole), and a name over 512 bytes is damage (Windows
    /// limits key names to 255 characters).
    pub fn subkeys(&self, path: &[&str]) -> Result<Vec<String>, Error> {
        let mut budget = Budget::new();
        let Some(key) = self.key_at(path, &mut budget)? else {
            return Ok(Vec::new());
        };
        let keys = self.subkeys_of(key, &mut budget)?;
        Ok(keys.into_iter().map(|(name, _)| name).collect())
    }

    /// The key at `path` from the root, or `None` when it does not exist; the cells visited
    /// are taken from `budget`.
    pub fn key_at(&self, path: &[&str], budget: &mut Budget) -> Result<Option<KeyRef>, Error> {
        Ok(self.key(path, &mut budget.0)?.map(KeyRef))
    }

    /// The subkey `name` of `key` (compared without regard to case), or `None`; the cells
    /// visited are taken from `budget`.
    pub fn subkey(
        &self,
        key: KeyRef,
        name: &str,
        budget: &mut Budget,
    ) -> Result<Option<KeyRef>, Error> {
        let nk = self.nk(key.0, &mut budget.0)?;
        let count = le32(nk, 20).unwrap_or(0) as usize;
        let list = le32(nk, 28).unwrap_or(NONE);
        if count == 0 || list == NONE {
            return Ok(None);
        }
        Ok(self.find_subkey(list, name, &mut budget.0)?.map(KeyRef))
    }

    /// The subkeys of `key` with their names, in the order the hive lists them, bounded as
    /// [`Hive::subkeys`] (at most 65,536, names of at most 512 bytes); the cells visited are
    /// taken from `budget`. Looking into each subkey through its [`KeyRef`] costs the cells of
    /// that subkey only, where [`Hive::subkeys`] on its path would walk from the root again.
    pub fn subkeys_of(
        &self,
        key: KeyRef,
        budget: &mut Budget,
    ) -> Result<Vec<(String, KeyRef)>, Error> {
        let nk = self.nk(key.0, &mut budget.0)?;
        let count = le32(nk, 20).unwrap_or(0) as usize;
        let list = le32(nk, 28).unwrap_or(NONE);
        if count == 0 || list == NONE {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        self.each_subkey(
            list,
            &mut budget.0,
            true,
            &mut |element, raw, compressed| {
                if keys.len() >= MAX_LIST {
                    return Err(Error::Damaged {
                        what: "more subkeys than a listing returns",
                        offset: list,
                    });
                }
                if raw.len() > MAX_NAME {
                    return Err(Error::Damaged {
                        what: "key name too long",
                        offset: element,
                    });
                }
                keys.push((decode_name(raw, compressed), KeyRef(element)));
                Ok(None)
            },
        )?;
        Ok(keys)
    }

    /// The key at `path` from the root, or `None`.
    fn key(&self, path: &[&str], budget: &mut usize) -> Result<Option<u32>, Error> {
        let mut at = self.root;
        for part in path {
            let nk = self.nk(at, budget)?;
            let count = le32(nk, 20).unwrap_or(0) as usize;
            let list = le32(nk, 28).unwrap_or(NONE);
            if count == 0 || list == NONE {
                return Ok(None);
            }
            match self.find_subkey(list, part, budget)? {
                Some(child) => at = child,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// A key node (`nk`) cell.
    fn nk(&self, offset: u32, budget: &mut usize) -> Result<&'a [u8], Error> {
        let nk = self.cell(offset, budget)?;
        if nk.get(..2) != Some(b"nk") {
            return Err(Error::Damaged {
                what: "not a key (nk) cell",
                offset,
            });
        }
        Ok(nk)
    }

    /// The subkey `name` in the subkey list at `list`.
    fn find_subkey(&self, list: u32, name: &str, budget: &mut usize) -> Result<Option<u32>, Error> {
        self.each_subkey(list, budget, true, &mut |element, raw, compressed| {
            Ok(same_name(raw, compressed, name).then_some(element))
        })
    }

    /// Calls `visit` with each key of the subkey list at `list` ("Subkeys list": `li`, `lf` and
    /// `lh` are leaves; `ri` holds leaves only, "Index root can't point to another Index root"):
    /// the key's offset, its stored name and whether that name is stored one byte per character
    /// (KEY_COMP_NAME, 0x20). Stops at the first offset `visit` returns, and returns it.
    fn each_subkey(
        &self,
        list: u32,
        budget: &mut usize,
        may_be_root: bool,
        visit: &mut Visit<'_>,
    ) -> Result<Option<u32>, Error> {
        let cell = self.cell(list, budget)?;
        let damaged = |what| Error::Damaged { what, offset: list };
        let sig = cell.get(..2).ok_or_else(|| damaged("empty subkey list"))?;
        let count = le16(cell, 2).unwrap_or(0) as usize;
        let stride = match sig {
            b"li" | b"ri" => 4,
            b"lf" | b"lh" => 8,
            _ => return Err(damaged("not a subkey list")),
        };
        if 4 + count * stride > cell.len() {
            return Err(damaged("subkey list shorter than its count"));
        }
        for i in 0..count {
            let element = le32(cell, 4 + i * stride).unwrap_or(NONE);
            if sig == b"ri" {
                if !may_be_root {
                    return Err(damaged("index root inside an index root"));
                }
                if let Some(found) = self.each_subkey(element, budget, false, visit)? {
                    return Ok(Some(found));
                }
                continue;
            }
            let nk = self.nk(element, budget)?;
            let flags = le16(nk, 2).unwrap_or(0);
            let len = le16(nk, 72).unwrap_or(0) as usize;
            let raw = nk.get(76..76 + len).ok_or(Error::Damaged {
                what: "key name past its cell",
                offset: element,
            })?;
            if let Some(found) = visit(element, raw, flags & 0x20 != 0)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// A value's data ("Key value", "Big data").
    fn data(&self, vk: &[u8], vk_at: u32, budget: &mut usize) -> Result<Value, Error> {
        let damaged = |what| Error::Damaged {
            what,
            offset: vk_at,
        };
        let size = le32(vk, 4).unwrap_or(0);
        let kind = le32(vk, 12).unwrap_or(0);
        let inline;
        let bytes: Vec<u8>;
        let data: &[u8] = if size & 0x8000_0000 != 0 {
            // Up to 4 bytes kept in the data offset field itself.
            let len = (size & 0x7fff_ffff) as usize;
            inline = vk
                .get(8..12)
                .ok_or_else(|| damaged("value past its cell"))?;
            inline
                .get(..len)
                .ok_or_else(|| damaged("inline data over 4 bytes"))?
        } else {
            let len = size as usize;
            if len > MAX_VALUE {
                return Err(damaged("value data too large"));
            }
            let at = le32(vk, 8).unwrap_or(NONE);
            let cell = self.cell(at, budget)?;
            if len > BIG_DATA_THRESHOLD && self.minor >= 4 && cell.get(..2) == Some(b"db") {
                bytes = self.big_data(cell, at, len, budget)?;
                &bytes
            } else {
                cell.get(..len)
                    .ok_or_else(|| damaged("value data past its cell"))?
            }
        };
        Ok(match kind {
            4 if data.len() == 4 => {
                Value::Dword(u32::from_le_bytes([data[0], data[1], data[2], data[3]]))
            }
            1 | 2 => Value::String(utf16_until_nul(data)),
            other => Value::Other(other),
        })
    }

    /// Big data: a `db` cell's segments, concatenated and cut to `len`.
    fn big_data(
        &self,
        db: &[u8],
        at: u32,
        len: usize,
        budget: &mut usize,
    ) -> Result<Vec<u8>, Error> {
        let damaged = |what| Error::Damaged { what, offset: at };
        let count = le16(db, 2).unwrap_or(0) as usize;
        let list_at = le32(db, 4).unwrap_or(NONE);
        let list = self.cell(list_at, budget)?;
        let mut out = Vec::with_capacity(len);
        for i in 0..count {
            let seg_at = le32(list, i * 4).ok_or_else(|| damaged("segment list too short"))?;
            let seg = self.cell(seg_at, budget)?;
            let take = seg.len().min(BIG_DATA_THRESHOLD).min(len - out.len());
            out.extend_from_slice(&seg[..take]);
            if out.len() == len {
                return Ok(out);
            }
        }
        Err(damaged("big data shorter than its value"))
    }
}

/// Whether a stored name (`ascii`: one byte per character, else UTF-16LE) is `want`, without
/// regard to case.
fn same_name(raw: &[u8], ascii: bool, want: &str) -> bool {
    decode_name(raw, ascii).to_uppercase() == want.to_uppercase()
}

/// A stored name: one byte per character (Latin-1) when `ascii`, else UTF-16LE (bad units
/// replaced).
fn decode_name(raw: &[u8], ascii: bool) -> String {
    if ascii {
        raw.iter().map(|&b| char::from(b)).collect()
    } else {
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    }
}

/// A REG_SZ's UTF-16LE text up to its first NUL (an odd last byte dropped, bad units replaced).
fn utf16_until_nul(data: &[u8]) -> String {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// Hives written byte by byte in tests, for shapes hivex cannot make (shared cells, values
/// pointing outside the hive).
#[cfg(test)]
pub(crate) mod test_hive {
    /// A hive laid out by hand (msuhanov's "Windows registry file format
    /// specification"): hostile shapes hivex would take minutes to write.
    pub(crate) struct HiveBytes {
        /// The hive bins data: one hbin header, then cells.
        bins: Vec<u8>,
    }

    impl HiveBytes {
        pub(crate) fn new() -> HiveBytes {
            HiveBytes {
                bins: vec![0u8; 32],
            }
        }

        /// An allocated cell holding `payload`; its offset.
        pub(crate) fn cell(&mut self, payload: &[u8]) -> u32 {
            let at = self.bins.len() as u32;
            let size = (4 + payload.len() + 7) & !7;
            self.bins.extend((-(size as i32)).to_le_bytes());
            self.bins.extend(payload);
            self.bins.resize(at as usize + size, 0);
            at
        }

        /// An `li` subkey list of `keys`.
        pub(crate) fn li(&mut self, keys: &[u32]) -> u32 {
            let mut p = b"li".to_vec();
            p.extend((keys.len() as u16).to_le_bytes());
            for k in keys {
                p.extend(k.to_le_bytes());
            }
            self.cell(&p)
        }

        /// A key `name` (stored one byte per character) with `count` subkeys listed at `list`.
        pub(crate) fn nk_list(&mut self, name: &str, count: usize, list: u32) -> u32 {
            let mut p = vec![0u8; 76];
            p[..2].copy_from_slice(b"nk");
            p[2..4].copy_from_slice(&0x20u16.to_le_bytes());
            p[20..24].copy_from_slice(&(count as u32).to_le_bytes());
            p[28..32].copy_from_slice(&list.to_le_bytes());
            p[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
            p[72..74].copy_from_slice(&(name.len() as u16).to_le_bytes());
            p.extend(name.as_bytes());
            self.cell(&p)
        }

        /// A key `name` without subkeys whose value list, of `count` values, is at `values`.
        pub(crate) fn nk_values(&mut self, name: &str, count: u32, values: u32) -> u32 {
            let mut p = vec![0u8; 76];
            p[..2].copy_from_slice(b"nk");
            p[2..4].copy_from_slice(&0x20u16.to_le_bytes());
            p[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
            p[36..40].copy_from_slice(&count.to_le_bytes());
            p[40..44].copy_from_slice(&values.to_le_bytes());
            p[72..74].copy_from_slice(&(name.len() as u16).to_le_bytes());
            p.extend(name.as_bytes());
            self.cell(&p)
        }

        /// A key `name` with the subkeys `keys`.
        pub(crate) fn nk(&mut self, name: &str, keys: &[u32]) -> u32 {
            let list = if keys.is_empty() {
                u32::MAX
            } else {
                self.li(keys)
            };
            self.nk_list(name, keys.len(), list)
        }

        /// The hive file, its root key at `root`.
        pub(crate) fn finish(mut self, root: u32) -> Vec<u8> {
            let len = self.bins.len().div_ceil(4096) * 4096;
            self.bins.resize(len, 0);
            self.bins[..4].copy_from_slice(b"hbin");
            self.bins[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            let mut base = vec![0u8; 4096];
            for (at, v) in [
                (0, u32::from_le_bytes(*b"regf")),
                (4, 1),
                (8, 1),
                (20, 1),
                (24, 5),
                (32, 1),
                (36, root),
                (40, len as u32),
                (44, 1),
            ] {
                base[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            let sum = (0..127).fold(0u32, |x, i| {
                x ^ u32::from_le_bytes(base[i * 4..i * 4 + 4].try_into().unwrap())
            });
            base[508..512].copy_from_slice(&sum.to_le_bytes());
            base.extend(self.bins);
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// SYSTEM and SOFTWARE hives made by hivex (fixtures/make-hives.py) in `dir`.
    fn hives(dir: &Path, state: &str) {
        hives_with(dir, state, &[]);
    }

    /// As [`hives`], with `extra` arguments (`--cloudbase-init ID`…).
    fn hives_with(dir: &Path, state: &str, extra: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/make-hives.py");
        // python3-hivex is a Debian package: Debian's python3, whatever python3 is on PATH.
        let out = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(dir)
            .arg(state)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn reads_what_hivex_wrote() {
        let dir = tempfile::tempdir().unwrap();
        hives(dir.path(), "generalized");
        let system = std::fs::read(dir.path().join("SYSTEM")).unwrap();
        let h = Hive::parse(&system).unwrap();
        assert_eq!(
            h.value(&["Select"], "Current").unwrap(),
            Some(Value::Dword(1))
        );
        // Names without regard to case, as Windows looks them up.
        assert_eq!(
            h.value(&["setup"], "systemsetupinprogress").unwrap(),
            Some(Value::Dword(1))
        );
        assert_eq!(
            h.value(
                &["ControlSet001", "Control", "Session Manager", "Environment"],
                "PROCESSOR_ARCHITECTURE"
            )
            .unwrap(),
            Some(Value::String("AMD64".into()))
        );
        assert_eq!(h.value(&["Setup"], "NoSuchValue").unwrap(), None);
        assert_eq!(h.value(&["NoSuchKey", "Deeper"], "X").unwrap(), None);
        let software = std::fs::read(dir.path().join("SOFTWARE")).unwrap();
        let h = Hive::parse(&software).unwrap();
        assert_eq!(
            h.value(
                &["Microsoft", "Windows", "CurrentVersion", "Setup", "State"],
                "ImageState"
            )
            .unwrap(),
            Some(Value::String(
                "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE".into()
            ))
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn lists_subkeys() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ["i-0123456789abcdef0", "Ä-unicode-ID", "b"];
        let mut extra = Vec::new();
        for id in ids {
            extra.extend(["--cloudbase-init", id]);
        }
        hives_with(dir.path(), "generalized", &extra);
        let software = std::fs::read(dir.path().join("SOFTWARE")).unwrap();
        let h = Hive::parse(&software).unwrap();
        let mut listed = h
            .subkeys(&["cloudbase solutions", "CLOUDBASE-INIT"])
            .unwrap();
        listed.sort();
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(
            h.subkeys(&["Cloudbase Solutions", "Cloudbase-Init", ids[1]])
                .unwrap(),
            ["Plugins"]
        );
        assert_eq!(
            h.value(
                &["Cloudbase Solutions", "Cloudbase-Init", ids[0], "Plugins"],
                "CreateUserPlugin"
            )
            .unwrap(),
            Some(Value::Dword(1))
        );
        // The root's subkeys, a key without subkeys, a key that does not exist.
        let mut top = h.subkeys(&[]).unwrap();
        top.sort();
        assert_eq!(top, ["Cloudbase Solutions", "Microsoft"]);
        assert!(
            h.subkeys(&["Microsoft", "Windows NT", "CurrentVersion"])
                .unwrap()
                .is_empty()
        );
        assert!(h.subkeys(&["Nope", "Deeper"]).unwrap().is_empty());
        // Flipped bytes: an error or an answer, never a panic.
        for at in BASE_BLOCK..software.len().min(BASE_BLOCK + 8192) {
            let mut m = software.clone();
            m[at] ^= 0x5a;
            let h = Hive::parse(&m).unwrap();
            let _ = h.subkeys(&["Cloudbase Solutions", "Cloudbase-Init"]);
            let _ = h.subkeys(&[]);
        }
    }

    /// Keys found by [`Hive::key_at`] and listed by [`Hive::subkeys_of`] are those
    /// [`Hive::subkeys`] names; [`Hive::subkey`] looks into one from its [`KeyRef`]; every call
    /// takes its cells from the one budget given, and an exhausted budget is an error.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn walks_share_one_budget() {
        let dir = tempfile::tempdir().unwrap();
        hives_with(
            dir.path(),
            "generalized",
            &["--cloudbase-init", "i-1", "--cloudbase-init", "i-2"],
        );
        let software = std::fs::read(dir.path().join("SOFTWARE")).unwrap();
        let h = Hive::parse(&software).unwrap();
        let base = ["Cloudbase Solutions", "Cloudbase-Init"];
        let mut budget = Budget::new();
        let key = h.key_at(&base, &mut budget).unwrap().unwrap();
        let after_lookup = budget.left();
        assert!(after_lookup < Budget::new().left());
        let ids = h.subkeys_of(key, &mut budget).unwrap();
        assert!(budget.left() < after_lookup);
        let names: Vec<&str> = ids.iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, ["i-1", "i-2"]);
        assert_eq!(names, h.subkeys(&base).unwrap());
        for (_, id) in &ids {
            let plugins = h.subkey(*id, "PLUGINS", &mut budget).unwrap();
            assert!(plugins.is_some());
            assert!(h.subkey(*id, "Other", &mut budget).unwrap().is_none());
            assert!(
                h.subkeys_of(plugins.unwrap(), &mut budget)
                    .unwrap()
                    .is_empty()
            );
        }
        assert!(h.key_at(&["Nope"], &mut budget).unwrap().is_none());
        // A budget that runs out is an error, not a shorter answer.
        let mut small = Budget(3);
        assert_eq!(h.key_at(&base, &mut small), Err(Error::Budget));
        let mut small = Budget(2);
        assert_eq!(h.subkeys_of(key, &mut small), Err(Error::Budget));
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn dirty_and_damaged_hives_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        hives(dir.path(), "not-generalized");
        let clean = std::fs::read(dir.path().join("SYSTEM")).unwrap();
        // A write begun and not finished: primary sequence number bumped, checksum redone.
        let mut dirty = clean.clone();
        let seq = u32::from_le_bytes(dirty[4..8].try_into().unwrap()) + 1;
        dirty[4..8].copy_from_slice(&seq.to_le_bytes());
        let sum = (0..127).fold(0u32, |x, i| {
            x ^ u32::from_le_bytes(dirty[i * 4..i * 4 + 4].try_into().unwrap())
        });
        dirty[508..512].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(Hive::parse(&dirty), Err(Error::Dirty { .. })));
        let mut bad = clean.clone();
        bad[100] ^= 1;
        assert!(matches!(Hive::parse(&bad), Err(Error::BadChecksum { .. })));
        assert!(Hive::parse(&clean[..4000]).is_err());
        // Every truncation and every flipped byte of the bins: an error or an answer, never a
        // panic or a hang.
        for cut in (BASE_BLOCK..clean.len()).step_by(512) {
            if let Ok(h) = Hive::parse(&clean[..cut]) {
                let _ = h.value(&["Setup", "Status", "SysprepStatus"], "CleanupState");
            }
        }
        for at in BASE_BLOCK..clean.len().min(BASE_BLOCK + 8192) {
            let mut m = clean.clone();
            m[at] ^= 0xa5;
            let h = Hive::parse(&m).unwrap();
            let _ = h.value(&["Setup"], "CmdLine");
            let _ = h.value(
                &["ControlSet001", "Control", "Session Manager", "Environment"],
                "windir",
            );
        }
    }
}
