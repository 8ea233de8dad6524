//! A deterministic, streaming qcow2 writer (compat 1.1).
//!
//! Layout, in file order (every cluster is referenced once, so `qemu-img check` finds no leaks):
//!
//! | clusters | content |
//! |---|---|
//! | 1 | header (qcow2.txt "Header"), then the end-of-extensions marker |
//! | `l1` | L1 table |
//! | `rt` | refcount table |
//! | `rb` | refcount blocks, enough for the largest file the plan allows |
//! | `l2` | one L2 table per 512 MiB region (at 64 KiB clusters) that the plan saw data in |
//! | data | data clusters, in virtual-disk order |
//!
//! The plan (the source's extents, read before any data) fixes every metadata size, so data
//! clusters can be written in order straight after the metadata as the engine delivers them.
//! Clusters that turn out to be all zeros are not allocated; an L2 table whose region held only
//! zeros stays allocated and empty. Metadata is written last, then the whole file is hashed:
//! its header depends on the data, so no single in-order pass could hash it.

use super::{Block, Error, Result, Sink, Written};
use crate::source::{Extent, ExtentKind};
use crate::util::{is_zero, sha256_file};
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
    layout: Option<Layout>,
    /// The L2 table being filled, and the index of its slot in `plan.regions`.
    l2: Vec<u64>,
    l2_slot: Option<usize>,
    data_clusters: u64,
    written: u64,
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

#[derive(Clone, Copy, Debug)]
struct Layout {
    l1_entries: u64,
    l1_offset: u64,
    rt_offset: u64,
    rt_clusters: u64,
    rb_offset: u64,
    rb_clusters: u64,
    l2_offset: u64,
    data_offset: u64,
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

impl Qcow2Sink {
    /// Creates (truncating) `path` for a disk of `size` bytes with `2^cluster_bits` clusters.
    pub fn create(path: &Path, size: u64, cluster_bits: u32, sync: bool) -> Result<Self> {
        let unsupported = |reason: String| Error::Unsupported {
            path: path.to_owned(),
            reason,
        };
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(unsupported(format!(
                "cluster size 2^{cluster_bits}: must be a power of two from 64 KiB to 2 MiB"
            )));
        }
        let cs = 1u64 << cluster_bits;
        let l1_entries = div_ceil(size, cs * (cs / 8));
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(unsupported(format!(
                "a {size}-byte disk needs an L1 table larger than qemu's 32 MiB limit; use larger clusters"
            )));
        }
        // Read access too: the finished file is hashed through the same descriptor.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| Error::Io {
                path: path.to_owned(),
                what: "cannot create",
                source,
            })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            cluster_bits,
            sync,
            plan: Plan::default(),
            layout: None,
            l2: Vec::new(),
            l2_slot: None,
            data_clusters: 0,
            written: 0,
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_entries(&self) -> u64 {
        self.cs() / 8
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }

    fn changed(&self) -> Error {
        Error::SourceChanged {
            path: self.path.clone(),
        }
    }

    /// Fixes the metadata sizes from the plan. The refcount blocks must cover every cluster of
    /// the largest possible file, themselves included, so their count is found by iteration.
    fn layout(&mut self) -> Layout {
        if let Some(l) = self.layout {
            return l;
        }
        let cs = self.cs();
        let l1_entries = div_ceil(self.size, cs * self.l2_entries());
        let l1_clusters = div_ceil(l1_entries * 8, cs);
        let l2_clusters = self.plan.regions.len() as u64;
        let refcounts_per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        let (mut rt, mut rb) = (1u64, 1u64);
        loop {
            let total = 1 + l1_clusters + rt + rb + l2_clusters + self.plan.max_data_clusters;
            let need_rb = div_ceil(total, refcounts_per_block);
            let need_rt = div_ceil(need_rb * 8, cs);
            if need_rb <= rb && need_rt <= rt {
                break;
            }
            rb = rb.max(need_rb);
            rt = rt.max(need_rt);
        }
        let l1_offset = cs;
        let rt_offset = l1_offset + l1_clusters * cs;
        let rb_offset = rt_offset + rt * cs;
        let l2_offset = rb_offset + rb * cs;
        let data_offset = l2_offset + l2_clusters * cs;
        let l = Layout {
            l1_entries,
            l1_offset,
            rt_offset,
            rt_clusters: rt,
            rb_offset,
            rb_clusters: rb,
            l2_offset,
            data_offset,
        };
        self.layout = Some(l);
        l
    }

    /// Writes the current L2 table to its slot.
    fn flush_l2(&mut self) -> Result<()> {
        if let (Some(slot), Some(layout)) = (self.l2_slot, self.layout) {
            let bytes: Vec<u8> = self.l2.iter().flat_map(|e| e.to_be_bytes()).collect();
            let at = layout.l2_offset + slot as u64 * self.cs();
            self.file
                .write_all_at(&bytes, at)
                .map_err(self.io("cannot write an L2 table to"))?;
        }
        Ok(())
    }

    /// Makes the L2 table of `region` the current one.
    fn select_region(&mut self, region: u64) -> Result<()> {
        let current = self.l2_slot.and_then(|s| self.plan.regions.get(s)).copied();
        if current == Some(region) {
            return Ok(());
        }
        self.flush_l2()?;
        // Regions come in ascending order, so the slot is after the current one.
        let from = self.l2_slot.map_or(0, |s| s + 1);
        let slot = self.plan.regions[from.min(self.plan.regions.len())..]
            .iter()
            .position(|&r| r == region)
            .map(|p| p + from)
            .ok_or_else(|| self.changed())?;
        self.l2_slot = Some(slot);
        self.l2.clear();
        self.l2.resize(self.l2_entries() as usize, 0);
        Ok(())
    }

    /// Writes `count` consecutive non-zero clusters starting at virtual cluster `first`.
    fn write_run(&mut self, first: u64, data: &[u8]) -> Result<()> {
        let layout = self.layout();
        let cs = self.cs();
        let count = div_ceil(data.len() as u64, cs);
        if self.data_clusters + count > self.plan.max_data_clusters {
            return Err(self.changed());
        }
        let host = layout.data_offset + self.data_clusters * cs;
        self.file
            .write_all_at(data, host)
            .map_err(self.io("cannot write"))?;
        for i in 0..count {
            let vc = first + i;
            self.select_region(vc / self.l2_entries())?;
            let idx = (vc % self.l2_entries()) as usize;
            self.l2[idx] = (host + i * cs) | COPIED;
        }
        self.data_clusters += count;
        Ok(())
    }

    fn header(&self, layout: &Layout) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LENGTH as usize + 8);
        h.extend_from_slice(&MAGIC.to_be_bytes());
        h.extend_from_slice(&3u32.to_be_bytes()); // version
        h.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset
        h.extend_from_slice(&0u32.to_be_bytes()); // backing_file_size
        h.extend_from_slice(&self.cluster_bits.to_be_bytes());
        h.extend_from_slice(&self.size.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
        h.extend_from_slice(&(layout.l1_entries as u32).to_be_bytes());
        h.extend_from_slice(&layout.l1_offset.to_be_bytes());
        h.extend_from_slice(&layout.rt_offset.to_be_bytes());
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
}

impl Sink for Qcow2Sink {
    fn wants_plan(&self) -> bool {
        true
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

    fn write(&mut self, offset: u64, block: Block<'_>) -> Result<()> {
        if offset != self.written {
            return Err(self.changed());
        }
        self.written += block.len();
        let Block::Data(data) = block else {
            return Ok(());
        };
        let cs = self.cs() as usize;
        // Blocks start on cluster boundaries: 4 MiB is a multiple of every allowed cluster size.
        let first = offset >> self.cluster_bits;
        let mut run: Option<usize> = None;
        let mut pos = 0;
        loop {
            let end = (pos + cs).min(data.len());
            let nonzero = pos < data.len() && !is_zero(&data[pos..end]);
            match (nonzero, run) {
                (true, None) => run = Some(pos),
                (false, Some(start)) => {
                    self.write_run(first + (start / cs) as u64, &data[start..pos])?;
                    run = None;
                }
                _ => {}
            }
            if pos >= data.len() {
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
        let layout = self.layout();
        self.flush_l2()?;
        let cs = self.cs();

        let mut l1 = vec![0u8; (layout.l1_entries * 8) as usize];
        for (slot, &region) in self.plan.regions.iter().enumerate() {
            let entry = (layout.l2_offset + slot as u64 * cs) | COPIED;
            let at = (region * 8) as usize;
            if let Some(dst) = l1.get_mut(at..at + 8) {
                dst.copy_from_slice(&entry.to_be_bytes());
            }
        }
        self.file
            .write_all_at(&l1, layout.l1_offset)
            .map_err(self.io("cannot write the L1 table to"))?;

        let rt: Vec<u8> = (0..layout.rb_clusters)
            .flat_map(|i| (layout.rb_offset + i * cs).to_be_bytes())
            .collect();
        self.file
            .write_all_at(&rt, layout.rt_offset)
            .map_err(self.io("cannot write the refcount table to"))?;

        // Every cluster of the file is in use exactly once.
        let total_clusters = layout.data_offset / cs + self.data_clusters;
        let per_block = cs / 2;
        for i in 0..layout.rb_clusters {
            let start = i * per_block;
            let used = total_clusters.saturating_sub(start).min(per_block);
            if used == 0 {
                continue;
            }
            let mut block = vec![0u8; cs as usize];
            for entry in block.chunks_exact_mut(2).take(used as usize) {
                entry.copy_from_slice(&1u16.to_be_bytes());
            }
            self.file
                .write_all_at(&block, layout.rb_offset + i * cs)
                .map_err(self.io("cannot write a refcount block to"))?;
        }

        self.file
            .write_all_at(&self.header(&layout), 0)
            .map_err(self.io("cannot write the header of"))?;
        let file_size = total_clusters * cs;
        self.file
            .set_len(file_size)
            .map_err(self.io("cannot set the length of"))?;
        if self.sync {
            self.file.sync_all().map_err(self.io("cannot sync"))?;
        }
        let sha256 = sha256_file(&self.file, file_size).map_err(self.io("cannot hash"))?;
        Ok(Written {
            file_size,
            sha256,
            allocated_bytes: (self.data_clusters * cs).min(self.size),
        })
    }
}
