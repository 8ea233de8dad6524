//! A virtual disk assembled from pieces: byte buffers (partition tables) and other sources
//! (file system images) placed at offsets, zeros everywhere else.
//!
//! It is a [`Disk`] like any image, so a disk laid out from a template streams through the
//! same copy engine, sinks and digests as `register`, and holes inside a placed image stay
//! holes.

use crate::format::{Disk, Error, Extent, ExtentKind, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a region holds.
pub enum Content {
    /// Bytes built in memory (a partition table, a small file).
    Bytes(Vec<u8>),
    /// Another source, read from its start; it must not be longer than the region.
    Source(Arc<dyn Disk>),
}

/// A piece of the disk.
pub struct Region {
    /// Where it starts on the disk.
    pub offset: u64,
    /// What it holds; zeros follow up to `len`.
    pub content: Content,
    /// Bytes it covers on the disk.
    pub len: u64,
}

impl Region {
    fn end(&self) -> u64 {
        self.offset + self.len
    }

    fn content_len(&self) -> u64 {
        match &self.content {
            Content::Bytes(b) => b.len() as u64,
            Content::Source(s) => s.size(),
        }
    }
}

/// A disk made of [`Region`]s.
pub struct Composite {
    size: u64,
    regions: Vec<Region>,
    name: PathBuf,
}

impl Composite {
    /// Assembles a disk of `size` bytes; `name` stands for it in messages. Regions may come in
    /// any order but must not overlap, must fit the disk and must hold their content.
    pub fn new(name: &Path, size: u64, mut regions: Vec<Region>) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid {
            path: name.to_owned(),
            reason,
        };
        regions.sort_by_key(|r| r.offset);
        let mut end = 0;
        for r in &regions {
            if r.offset < end {
                return Err(invalid(format!(
                    "regions overlap at byte {} (the previous one ends at {end})",
                    r.offset
                )));
            }
            let r_end = r.offset.saturating_add(r.len);
            if r_end > size {
                return Err(invalid(format!(
                    "a region at byte {} of {} bytes passes the end of the {size}-byte disk",
                    r.offset, r.len
                )));
            }
            if r.content_len() > r.len {
                return Err(invalid(format!(
                    "{} bytes of content do not fit the {}-byte region at byte {}",
                    r.content_len(),
                    r.len,
                    r.offset
                )));
            }
            end = r_end;
        }
        Ok(Self {
            size,
            regions,
            name: name.to_owned(),
        })
    }

    /// The region containing `pos`, or the start of the next one.
    fn locate(&self, pos: u64) -> std::result::Result<usize, usize> {
        let i = self.regions.partition_point(|r| r.end() <= pos);
        match self.regions.get(i) {
            Some(r) if r.offset <= pos => Ok(i),
            _ => Err(i),
        }
    }
}

impl Disk for Composite {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent> {
        let end = self.size.min(offset.saturating_add(max_len));
        let zero = |until: u64| Extent {
            offset,
            len: until.min(end) - offset,
            kind: ExtentKind::Zero,
        };
        match self.locate(offset) {
            Err(next) => Ok(zero(self.regions.get(next).map_or(end, |r| r.offset))),
            Ok(i) => {
                let r = &self.regions[i];
                let within = offset - r.offset;
                let content_end = r.offset + r.content_len();
                if offset >= content_end {
                    return Ok(zero(r.end()));
                }
                let limit = end.min(content_end);
                match &r.content {
                    Content::Bytes(_) => Ok(Extent {
                        offset,
                        len: limit - offset,
                        kind: ExtentKind::Data,
                    }),
                    Content::Source(s) => {
                        let e = s.extent(within, limit - offset)?;
                        Ok(Extent {
                            offset,
                            len: e.len.min(limit - offset),
                            kind: e.kind,
                        })
                    }
                }
            }
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut pos = offset;
        let mut done = 0usize;
        while done < buf.len() {
            let left = (buf.len() - done) as u64;
            let e = self.extent(pos, left)?;
            let n = e.len as usize;
            let dst = &mut buf[done..done + n];
            match self.locate(pos) {
                Ok(i) if e.kind == ExtentKind::Data => {
                    let r = &self.regions[i];
                    let within = pos - r.offset;
                    match &r.content {
                        Content::Bytes(b) => {
                            let from = within as usize;
                            dst.copy_from_slice(&b[from..from + n]);
                        }
                        Content::Source(s) => s.read_at(within, dst)?,
                    }
                }
                _ => dst.fill(0),
            }
            pos += e.len;
            done += n;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::{Options, copy};
    use crate::digest::content_digest_of;
    use crate::format::raw;
    use crate::sink::NullSink;
    use std::io::{Seek, SeekFrom, Write};

    const M: u64 = 1 << 20;

    #[test]
    fn pieces_land_where_placed_and_holes_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        // A sparse 8 MiB image with data at 5 MiB only.
        let img = dir.path().join("fs.img");
        let mut f = std::fs::File::create(&img).unwrap();
        f.set_len(8 * M).unwrap();
        f.seek(SeekFrom::Start(5 * M)).unwrap();
        f.write_all(&[0xab; 4096]).unwrap();
        drop(f);
        let regions = vec![
            Region {
                offset: 16 * M,
                len: 10 * M,
                content: Content::Source(raw::open_path(&img).unwrap()),
            },
            Region {
                offset: 0,
                len: 17 * 1024,
                content: Content::Bytes(vec![0x11; 17 * 1024]),
            },
        ];
        let disk = Composite::new(Path::new("disk"), 32 * M, regions).unwrap();
        let mut expect = vec![0u8; 32 * M as usize];
        expect[..17 * 1024].fill(0x11);
        expect[(21 * M) as usize..(21 * M) as usize + 4096].fill(0xab);
        let mut got = vec![0u8; expect.len()];
        disk.read_at(0, &mut got).unwrap();
        assert!(got == expect);
        // Only the bytes and the image's data are data.
        let mut data = 0;
        let mut pos = 0;
        while pos < disk.size() {
            let e = disk.extent(pos, u64::MAX).unwrap();
            if e.kind == ExtentKind::Data {
                data += e.len;
            }
            pos += e.len;
        }
        assert!(
            (17 * 1024 + 4096..=17 * 1024 + 64 * 1024).contains(&data),
            "{data}"
        );
        let r = copy(&disk, &mut NullSink, Options::default()).unwrap();
        assert_eq!(r.content_digest, content_digest_of(&expect));
    }

    #[test]
    fn overlaps_and_overflows_are_refused() {
        let bytes = |offset, len| Region {
            offset,
            len,
            content: Content::Bytes(vec![1; len as usize]),
        };
        let e = |r| {
            Composite::new(Path::new("d"), 4 * M, r)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(e(vec![bytes(0, M), bytes(M - 1, 2)]).contains("overlap"));
        assert!(e(vec![bytes(4 * M - 1, 2)]).contains("passes the end"));
        let big = Region {
            offset: 0,
            len: 10,
            content: Content::Bytes(vec![0; 11]),
        };
        assert!(e(vec![big]).contains("do not fit"));
    }
}
