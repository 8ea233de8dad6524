//! A deterministic, streaming qcow2 writer (compat 1.1).
//!
//! Layout, in file order (qcow2.txt); every cluster is referenced once, so `qemu-img check`
//! finds neither errors nor leaks:
//!
//! | clusters | content |
//! |---|---|
//! | 1 | header, then the end-of-extensions marker |
//! | data | data clusters, in virtual-disk order (zero clusters are not allocated) |
//! | gap | unused room, see below (refcount 0, a hole in the file) |
//! | `l2` | one L2 table per 512 MiB region (at 64 KiB clusters) that the plan saw data in |
//! | `l1` | L1 table |
//! | `rt`, `rb` | refcount table and blocks |
//!
//! The header comes first in the file but names where the metadata is, and the metadata
//! depends on which clusters turn out to hold data. To hash the file in the same pass that
//! writes it, the header is written for room enough for every cluster the plan (the source's
//! extents, read before any data) marked as data. Clusters that turn out to be zeros leave a
//! gap before the metadata. When that gap is small (at most 1/4 of the data), it stays: the
//! file's SHA-256 was computed while writing. Otherwise the metadata moves
//! down to close the gap, the header is rewritten, and the file is hashed once more. Either way
//! the bytes depend only on the input.

use super::writeback::Writeback;
use super::{Block, Error, Result, Sink, Written};
use crate::format::{Extent, ExtentKind};
use crate::util::hash_zeros;
use crate::util::sha256_file;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// qcow2 magic, "QFI\xfb" (qcow2.txt, "Header").
const MAGIC: u32 = 0x5146_49fb;
/// Bit 63 of L1 and L2 entries: refcount is exactly one (qcow2.txt, "Cluster mapping").
const COPIED: u64 = 1 << 63;
/// 16-bit refcounts, qemu's default.
const REFCOUNT_ORDER: u32 = 4;
/// Version 3 header length: 104 bytes plus the compression-type byte, padded to 8.
const HEADER_LENGTH: u32 = 112;
/// qemu caps the L1 table at 32 MiB (block/qcow2.h, QCOW_MAX_L1_SIZE).
const MAX_L1_BYTES: u64 = 32 << 20;
/// The gap may stay when it is at most this fraction of the data. Hashing the gap's zeros costs
/// less than hashing the data again, so any smaller gap would save time; a quarter bounds how
/// much larger than its data the file looks (a hole, not disk space). An ext4 image from
/// `mkfs.ext4 -d` has about a tenth of its data extents in zeros.
const GAP_DIVISOR: u64 = 4;

/// Smallest and largest cluster sizes accepted: 64 KiB as the smallest keeps the planning state
/// small for any OMI-sized disk; 2 MiB is qemu's largest.
pub const MIN_CLUSTER_BITS: u32 = 16;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Writes a qcow2 image.
pub struct Qcow2Sink {
    file: File,
    path: PathBuf,
    size: u64,
    cluster_bits: u32,
    sync: bool,
    plan: Plan,
    /// The layout the header was written for, once writing has begun.
    layout: Option<Layout>,
    /// SHA-256 of the file so far, in file order, once the header is written.
    hasher: Option<Sha256>,
    /// The L2 table being filled, and the index of its slot in `plan.regions`.
    l2: Vec<u64>,
    l2_slot: Option<usize>,
    data_clusters: u64,
    written: u64,
    /// Early writeback of the data clusters, when the file will be synced.
    writeback: Writeback,
}

/// What the extents said before the copy.
#[derive(Default)]
struct Plan {
    /// L1 indices of the regions that hold data, ascending.
    regions: Vec<u64>,
    /// Upper bound of data clusters: clusters touched by data extents.
    max_data_clusters: u64,
    last_cluster: Option<u64>,
}

/// Cluster indices of each part of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// Room for data clusters, from cluster 1.
    data_room: u64,
    l1_entries: u64,
    l2: u64,
    l1: u64,
    l1_clusters: u64,
    rt: u64,
    rt_clusters: u64,
    rb: u64,
    rb_clusters: u64,
    /// Clusters in the file.
    total: u64,
}

impl Qcow2Sink {
    /// Creates (truncating) `path` for a source of `size` bytes with `2^cluster_bits` clusters.
    /// The disk written is [`super::virtual_size`] bytes: qemu ignores a partial last sector of
    /// a qcow2 disk, so the header's size is rounded up and the copy engine supplies the zeros.
    pub fn create(path: &Path, size: u64, cluster_bits: u32, sync: bool) -> Result<Self> {
        let unsupported = |reason: String| Error::Unsupported {
            path: path.to_owned(),
            reason,
        };
        let size = super::virtual_size(size)
            .ok_or_else(|| unsupported(format!("a {size}-byte disk is too large")))?;
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(unsupported(format!(
                "cluster size 2^{cluster_bits}: must be a power of two from 64 KiB to 2 MiB"
            )));
        }
        let cs = 1u64 << cluster_bits;
        if size.div_ceil(cs * (cs / 8)) * 8 > MAX_L1_BYTES {
            return Err(unsupported(format!(
                "a {size}-byte disk needs an L1 table larger than qemu's 32 MiB limit; use larger clusters"
            )));
        }
        // Read access too: when the gap is closed, the file is hashed through this descriptor.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(Error::io(path, "cannot create"))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            cluster_bits,
            sync,
            plan: Plan::default(),
            layout: None,
            hasher: None,
            l2: Vec::new(),
            l2_slot: None,
            data_clusters: 0,
            written: 0,
            writeback: Writeback::new(sync),
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_entries(&self) -> u64 {
        self.cs() / 8
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> Error + use<> {
        Error::io(&self.path, what)
    }

    fn changed(&self) -> Error {
        Error::changed(&self.path)
    }

    /// The layout with room for `data_room` data clusters. The refcount blocks cover every
    /// cluster of the file, themselves included, so their count is found by iteration.
    fn layout_for(&self, data_room: u64) -> Layout {
        let cs = self.cs();
        let l1_entries = self.size.div_ceil(cs * self.l2_entries());
        let l1_clusters = (l1_entries * 8).div_ceil(cs);
        let l2_clusters = self.plan.regions.len() as u64;
        let refcounts_per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        let fixed = 1 + data_room + l2_clusters + l1_clusters;
        let (mut rt, mut rb) = (1u64, 1u64);
        loop {
            let need_rb = (fixed + rt + rb).div_ceil(refcounts_per_block);
            let need_rt = (need_rb * 8).div_ceil(cs);
            if need_rb <= rb && need_rt <= rt {
                break;
            }
            rb = rb.max(need_rb);
            rt = rt.max(need_rt);
        }
        let l2 = 1 + data_room;
        let l1 = l2 + l2_clusters;
        let rt_at = l1 + l1_clusters;
        Layout {
            data_room,
            l1_entries,
            l2,
            l1,
            l1_clusters,
            rt: rt_at,
            rt_clusters: rt,
            rb: rt_at + rt,
            rb_clusters: rb,
            total: rt_at + rt + rb,
        }
    }

    /// Writes the header for the planned room and starts hashing the file.
    fn begin(&mut self) -> Result<Layout> {
        if let Some(l) = self.layout {
            return Ok(l);
        }
        let layout = self.layout_for(self.plan.max_data_clusters);
        let header = self.header(&layout);
        crate::util::write_all_at(&self.file, &header, 0)
            .map_err(self.io("cannot write the header of"))?;
        let mut hasher = Sha256::new();
        hasher.update(&header);
        hash_zeros(&mut hasher, self.cs() - header.len() as u64);
        self.hasher = Some(hasher);
        self.layout = Some(layout);
        Ok(layout)
    }

    /// Writes the current L2 table to its slot.
    fn flush_l2(&mut self, layout: &Layout) -> Result<()> {
        if let Some(slot) = self.l2_slot {
            let bytes: Vec<u8> = self.l2.iter().flat_map(|e| e.to_be_bytes()).collect();
            let at = (layout.l2 + slot as u64) * self.cs();
            crate::util::write_all_at(&self.file, &bytes, at)
                .map_err(self.io("cannot write an L2 table to"))?;
        }
        Ok(())
    }

    /// Makes the L2 table of `region` the current one.
    fn select_region(&mut self, layout: &Layout, region: u64) -> Result<()> {
        let current = self.l2_slot.and_then(|s| self.plan.regions.get(s)).copied();
        if current == Some(region) {
            return Ok(());
        }
        self.flush_l2(layout)?;
        // Regions come in ascending order, so the slot is after the current one.
        let from = self.l2_slot.map_or(0, |s| s + 1);
        let slot = self
            .plan
            .regions
            .get(from..)
            .and_then(|rest| rest.iter().position(|&r| r == region))
            .map(|p| p + from)
            .ok_or_else(|| self.changed())?;
        self.l2_slot = Some(slot);
        self.l2.clear();
        self.l2.resize(self.l2_entries() as usize, 0);
        Ok(())
    }

    /// Writes the non-zero clusters `data[start..end]` of a block whose first cluster is
    /// virtual cluster `first`.
    fn write_run(
        &mut self,
        layout: &Layout,
        first: u64,
        buf: &[u8],
        start: usize,
        end: usize,
    ) -> Result<()> {
        let cs = self.cs();
        let count = ((end - start) as u64).div_ceil(cs);
        if self.data_clusters + count > layout.data_room {
            return Err(self.changed());
        }
        let host = (1 + self.data_clusters) * cs;
        crate::util::write_all_at(&self.file, &buf[start..end], host)
            .map_err(self.io("cannot write"))?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[start..end]);
            // Only the disk's last cluster can be partial: its tail reads as zeros in the file.
            hash_zeros(h, count * cs - (end - start) as u64);
        }
        let vc0 = first + (start as u64 >> self.cluster_bits);
        for i in 0..count {
            let vc = vc0 + i;
            self.select_region(layout, vc / self.l2_entries())?;
            let idx = (vc % self.l2_entries()) as usize;
            if let Some(e) = self.l2.get_mut(idx) {
                *e = (host + i * cs) | COPIED;
            }
        }
        self.data_clusters += count;
        self.writeback
            .written(&self.file, (1 + self.data_clusters) * cs)
            .map_err(self.io("cannot write back"))?;
        Ok(())
    }

    fn header(&self, layout: &Layout) -> Vec<u8> {
        let cs = self.cs();
        let mut h = Vec::with_capacity(HEADER_LENGTH as usize + 8);
        h.extend_from_slice(&MAGIC.to_be_bytes());
        h.extend_from_slice(&3u32.to_be_bytes()); // version
        h.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset
        h.extend_from_slice(&0u32.to_be_bytes()); // backing_file_size
        h.extend_from_slice(&self.cluster_bits.to_be_bytes());
        h.extend_from_slice(&self.size.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
        h.extend_from_slice(&(layout.l1_entries as u32).to_be_bytes());
        h.extend_from_slice(&(layout.l1 * cs).to_be_bytes());
        h.extend_from_slice(&(layout.rt * cs).to_be_bytes());
        h.extend_from_slice(&(layout.rt_clusters as u32).to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
        h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
        h.extend_from_slice(&0u64.to_be_bytes()); // incompatible_features
        h.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
        h.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
        h.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
        h.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        h.push(0); // compression_type: zlib (no compressed clusters are written)
        h.resize(HEADER_LENGTH as usize, 0);
        h.extend_from_slice(&[0; 8]); // end of header extensions: type 0, length 0
        h
    }

    /// L1 table, refcount table and refcount blocks of `layout`, each padded to whole clusters.
    fn tables(&self, layout: &Layout) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let cs = self.cs();
        let mut l1 = vec![0u8; (layout.l1_clusters * cs) as usize];
        for (slot, &region) in self.plan.regions.iter().enumerate() {
            let entry = ((layout.l2 + slot as u64) * cs) | COPIED;
            let at = (region * 8) as usize;
            if let Some(dst) = l1.get_mut(at..at + 8) {
                dst.copy_from_slice(&entry.to_be_bytes());
            }
        }
        let mut rt = vec![0u8; (layout.rt_clusters * cs) as usize];
        for (i, dst) in rt
            .chunks_exact_mut(8)
            .take(layout.rb_clusters as usize)
            .enumerate()
        {
            dst.copy_from_slice(&((layout.rb + i as u64) * cs).to_be_bytes());
        }
        // In use: the header, the data clusters, and the metadata after the room; the unused
        // room in between keeps refcount 0.
        let used = |c: u64| c <= self.data_clusters || (c >= layout.l2 && c < layout.total);
        let mut rb = vec![0u8; (layout.rb_clusters * cs) as usize];
        for (c, dst) in (0u64..).zip(rb.chunks_exact_mut(2)) {
            if used(c) {
                dst.copy_from_slice(&1u16.to_be_bytes());
            }
        }
        (l1, rt, rb)
    }

    /// Writes L1 and refcount tables for `layout`.
    fn write_tables(&self, layout: &Layout) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let cs = self.cs();
        let (l1, rt, rb) = self.tables(layout);
        crate::util::write_all_at(&self.file, &l1, layout.l1 * cs)
            .map_err(self.io("cannot write the L1 table to"))?;
        crate::util::write_all_at(&self.file, &rt, layout.rt * cs)
            .map_err(self.io("cannot write the refcount table to"))?;
        crate::util::write_all_at(&self.file, &rb, layout.rb * cs)
            .map_err(self.io("cannot write the refcount blocks to"))?;
        Ok((l1, rt, rb))
    }

    /// Moves the L2 tables from the planned layout to the compact one (a lower offset, so an
    /// ascending copy never overwrites a table it has yet to read).
    fn move_l2_tables(&self, from: &Layout, to: &Layout) -> Result<()> {
        let cs = self.cs();
        let mut table = vec![0u8; cs as usize];
        for slot in 0..self.plan.regions.len() as u64 {
            self.read_l2(from, slot, &mut table)?;
            crate::util::write_all_at(&self.file, &table, (to.l2 + slot) * cs)
                .map_err(self.io("cannot write an L2 table to"))?;
        }
        Ok(())
    }
}

impl Sink for Qcow2Sink {
    fn wants_plan(&self) -> bool {
        true
    }

    fn alignment(&self) -> u64 {
        self.cs()
    }

    fn plan(&mut self, extent: &Extent) -> Result<()> {
        if extent.kind != ExtentKind::Data || extent.len == 0 {
            return Ok(());
        }
        let first = extent.offset >> self.cluster_bits;
        let last = (extent.offset + extent.len - 1) >> self.cluster_bits;
        // Extents finer than a cluster share clusters: count each cluster once.
        let from = match self.plan.last_cluster {
            Some(l) if l >= first => l + 1,
            _ => first,
        };
        if from <= last {
            self.plan.max_data_clusters += last - from + 1;
            self.plan.last_cluster = Some(last);
        }
        let l2 = self.l2_entries();
        for region in first / l2..=last / l2 {
            if self.plan.regions.last().is_none_or(|&r| r < region) {
                self.plan.regions.push(region);
            }
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, block: &Block<'_>) -> Result<()> {
        if offset != self.written {
            return Err(self.changed());
        }
        self.written += block.len();
        let Block::Data { buf, zeros } = block else {
            return Ok(());
        };
        let layout = self.begin()?;
        let cs = self.cs() as usize;
        // Data blocks start on cluster boundaries: see `alignment`.
        let first = offset >> self.cluster_bits;
        let mut run: Option<usize> = None;
        let mut pos = 0;
        loop {
            let end = (pos + cs).min(buf.len());
            let nonzero = pos < buf.len() && !zeros.is_zero(pos, end);
            match (nonzero, run) {
                (true, None) => run = Some(pos),
                (false, Some(start)) => {
                    self.write_run(&layout, first, buf, start, pos)?;
                    run = None;
                }
                _ => {}
            }
            if pos >= buf.len() {
                break;
            }
            pos = end;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Written> {
        if self.written != self.size {
            return Err(self.changed());
        }
        let planned = self.begin()?;
        self.flush_l2(&planned)?;
        let cs = self.cs();
        let gap = planned.data_room - self.data_clusters;
        let mut hasher = self.hasher.take().ok_or_else(|| self.changed())?;
        let (layout, sha256) = if gap <= self.data_clusters / GAP_DIVISOR {
            // Keep the gap: finish the stream hash with it and the metadata.
            let (l1, rt, rb) = self.write_tables(&planned)?;
            hash_zeros(&mut hasher, gap * cs);
            let mut table = vec![0u8; cs as usize];
            for slot in 0..self.plan.regions.len() as u64 {
                self.read_l2(&planned, slot, &mut table)?;
                hasher.update(&table);
            }
            hasher.update(&l1);
            hasher.update(&rt);
            hasher.update(&rb);
            self.set_len_and_sync(&planned)?;
            let sha = hasher.finalize().into();
            (planned, sha)
        } else {
            // Close the gap: the header changes, so the stream hash is void.
            drop(hasher);
            let compact = self.layout_for(self.data_clusters);
            self.move_l2_tables(&planned, &compact)?;
            self.write_tables(&compact)?;
            crate::util::write_all_at(&self.file, &self.header(&compact), 0)
                .map_err(self.io("cannot write the header of"))?;
            self.set_len_and_sync(&compact)?;
            let sha =
                sha256_file(&self.file, compact.total * cs).map_err(self.io("cannot hash"))?;
            (compact, sha)
        };
        Ok(Written {
            file_size: layout.total * cs,
            sha256,
            allocated_bytes: (self.data_clusters * cs).min(self.size),
        })
    }
}

impl Qcow2Sink {
    /// Reads back the L2 table in `slot`. A table never flushed (its region held only zeros)
    /// is a hole, possibly past the end of the file so far: zeros.
    fn read_l2(&self, layout: &Layout, slot: u64, table: &mut [u8]) -> Result<()> {
        let at = (layout.l2 + slot) * self.cs();
        match self.file.read_exact_at(table, at) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // A short read leaves a partial table: the file ends inside it, the rest is zeros.
                let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                let have = len.saturating_sub(at).min(table.len() as u64) as usize;
                table[have..].fill(0);
                if have > 0 {
                    self.file
                        .read_exact_at(&mut table[..have], at)
                        .map_err(self.io("cannot read back an L2 table of"))?;
                }
                Ok(())
            }
            Err(e) => Err(self.io("cannot read back an L2 table of")(e)),
        }
    }

    fn set_len_and_sync(&self, layout: &Layout) -> Result<()> {
        self.file
            .set_len(layout.total * self.cs())
            .map_err(self.io("cannot set the length of"))?;
        if self.sync {
            self.file.sync_all().map_err(self.io("cannot sync"))?;
        }
        Ok(())
    }
}
