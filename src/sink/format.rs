//! The output-format registry: every disk format mkomi writes, and all it takes to write one and
//! to read it back.
//!
//! A format is listed here once, and everything else asks this module: its name (the manifest's
//! `Format` and the file extension), its sink, and the reader format a bundle's disk must be
//! detected as. [`OutputFormat::ALL`] lists every format with its default parameters; the
//! registry round-trip test (`tests/registry.rs`) writes each of them through `mkomi register`
//! and reads it back with `mkomi verify` and `qemu-img compare`, so nothing is written that
//! mkomi cannot read.

use super::{Result, Sink, qcow2::Qcow2Sink, raw::RawSink};
use crate::format::Format;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A disk file format as a bundle's manifest names it (`Format`) and the command line takes it
/// (`--format`): the kind of an [`OutputFormat`], without its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// qcow2, compat 1.1.
    Qcow2,
    /// Raw, sparse.
    Raw,
}

impl DiskFormat {
    /// Every disk format, in the order the command line lists them.
    pub const ALL: [DiskFormat; 2] = [DiskFormat::Qcow2, DiskFormat::Raw];

    /// The file extension and manifest name.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }

    /// The format named `name` (as [`DiskFormat::name`] spells it).
    pub fn from_name(name: &str) -> Option<DiskFormat> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The reader format that a file written in this format is detected as: `verify` refuses a
    /// disk whose content is anything else.
    pub fn reader(self) -> Format {
        match self {
            DiskFormat::Qcow2 => Format::Qcow2,
            DiskFormat::Raw => Format::Raw,
        }
    }

    /// Whether qemu drops a partial last 512-byte sector of a disk in this format (it does for a
    /// qcow2 header's size, and reads a raw file's as zeros).
    pub fn drops_partial_sector(self) -> bool {
        self == DiskFormat::Qcow2
    }

    /// The file name of the disk of `device` in a bundle: `sda1.qcow2`.
    pub fn file_name(self, device: &str) -> String {
        crate::manifest::rules::disk_file_name(device, self.name())
    }
}

/// An output format with its parameters: what a sink is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// qcow2 with `2^cluster_bits`-byte clusters.
    Qcow2 {
        /// The cluster size, log2 ([`super::qcow2::MIN_CLUSTER_BITS`] to
        /// [`super::qcow2::MAX_CLUSTER_BITS`]).
        cluster_bits: u32,
    },
    /// Raw, sparse.
    Raw,
}

/// The default qcow2 cluster size, log2: 64 KiB, qemu's default (`--cluster-size 64K`), and the
/// store's.
pub const DEFAULT_CLUSTER_BITS: u32 = 16;

impl OutputFormat {
    /// The default output: qcow2 at 64 KiB clusters, which `register`, `import` and the store
    /// write unless told otherwise.
    pub const DEFAULT: OutputFormat = OutputFormat::Qcow2 {
        cluster_bits: DEFAULT_CLUSTER_BITS,
    };

    /// The registry: every output format, with its default parameters.
    pub const ALL: [OutputFormat; 2] = [OutputFormat::DEFAULT, OutputFormat::Raw];

    /// The format of kind `kind`; `cluster_bits` applies to qcow2 only.
    pub fn new(kind: DiskFormat, cluster_bits: u32) -> Self {
        match kind {
            DiskFormat::Qcow2 => OutputFormat::Qcow2 { cluster_bits },
            DiskFormat::Raw => OutputFormat::Raw,
        }
    }

    /// The format of kind `kind` with its default parameters.
    pub fn of(kind: DiskFormat) -> Self {
        Self::new(kind, DEFAULT_CLUSTER_BITS)
    }

    /// The kind, as the manifest records it.
    pub fn kind(self) -> DiskFormat {
        match self {
            OutputFormat::Qcow2 { .. } => DiskFormat::Qcow2,
            OutputFormat::Raw => DiskFormat::Raw,
        }
    }

    /// The file extension and manifest name.
    pub fn name(self) -> &'static str {
        self.kind().name()
    }

    /// Creates (truncating) the sink writing a `size`-byte source to `path` in this format; with
    /// `sync`, the data reaches the disk before [`Sink::finish`] returns.
    pub fn create(self, path: &Path, size: u64, sync: bool) -> Result<Box<dyn Sink>> {
        Ok(match self {
            OutputFormat::Qcow2 { cluster_bits } => {
                Box::new(Qcow2Sink::create(path, size, cluster_bits, sync)?)
            }
            OutputFormat::Raw => Box::new(RawSink::create(path, size, sync)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_consistent() {
        // Every kind has one registry entry, and its names round-trip.
        for kind in DiskFormat::ALL {
            assert_eq!(
                OutputFormat::ALL
                    .iter()
                    .filter(|f| f.kind() == kind)
                    .count(),
                1
            );
            assert_eq!(DiskFormat::from_name(kind.name()), Some(kind));
            assert_eq!(OutputFormat::of(kind).kind(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
        }
        assert_eq!(DiskFormat::from_name("vmdk"), None);
    }

    #[test]
    fn writes_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        for f in OutputFormat::ALL {
            let path = dir.path().join(f.kind().file_name("/dev/sda1"));
            let mut sink = f.create(&path, 1 << 20, false).unwrap();
            let zeros = crate::format::Extent {
                offset: 0,
                len: 1 << 20,
                kind: crate::format::ExtentKind::Zero,
            };
            if sink.wants_plan() {
                sink.plan(&zeros).unwrap();
            }
            sink.write(0, &super::super::Block::Zero(1 << 20)).unwrap();
            sink.finish().unwrap();
            assert_eq!(
                crate::format::detect::detect_path(&path).unwrap(),
                f.kind().reader()
            );
            assert!(path.to_string_lossy().ends_with(f.name()));
        }
    }
}
