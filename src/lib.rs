//! mkomi builds Outscale machine images (OMIs) offline.
//!
//! The pipeline, one module per stage:
//! - [`storage`]: where an image's bytes live — local files and block devices (`pread`, FIEMAP),
//!   windows — behind one [`storage::ReadAt`] trait read through `&self`;
//! - [`format`](mod@format): how those bytes are laid out — raw, qcow2 (with backing chains), detection —
//!   behind one [`format::Disk`] trait that reports data and zero extents without reading data,
//!   opened under [`format::OpenOptions`] (input format, backing-file policy);
//! - [`sink`]: where a disk goes — a deterministic qcow2 writer and a sparse raw writer, listed
//!   in one output-format registry ([`sink::format`]);
//! - [`copy`]: the streaming engine that reads, hashes and writes overlapped, in bounded memory;
//! - [`digest`]: the container-independent `ContentDigest` of a disk;
//! - [`manifest`]: the bundle's `manifest.json`, with Outscale's field names and rules;
//! - [`layout`]: new disks — GPT, FAT32 ESPs, templates, disks composed of pieces;
//! - [`ondisk`]: one codec per on-disk format (GPT, FAT) that the layout writers and the
//!   readers of [`inspect`] and [`fs`] share;
//! - [`fs`]: reading files out of file systems inside images (ext4, FAT12/16/32), without
//!   mounting, behind one [`fs::FileSystem`] trait;
//! - [`inspect`]: looking inside disks — partition tables (GPT, MBR, hybrid), file-system
//!   signatures, ELF/PE binaries, os-release — in one walk shared with the audit;
//! - [`audit`]: what must not ship in an image (SSH keys, passwords, host keys, histories…);
//! - [`staging`]: where outputs appear atomically — a temporary directory, renamed into place;
//! - [`bundle`]: the operations on bundles — `register` (as explicit steps), `build` and
//!   `verify`;
//! - [`export`]: Outscale export packages to a directory or a bucket, and `import` back
//!   (gzip, S3 client, export manifest);
//! - [`store`]: the local image store (snapshots, images, their lifecycle, check and gc);
//! - [`publish`]: the Outscale API (OAPI) types that `publish` and `pull` send and receive;
//! - [`glob`], [`progress`], [`util`]: the glob matcher, progress bars or lines passed in by
//!   callers, and small shared helpers.
//!
//! The command-line tool (`src/main.rs`, `src/cli/`) is a thin layer over these modules.

#![warn(missing_docs)]

pub mod audit;
pub mod bundle;
pub mod copy;
pub mod digest;
pub mod export;
pub mod format;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod glob;
pub mod inspect;
pub mod layout;
pub mod manifest;
pub mod ondisk;
pub mod progress;
pub mod publish;
pub mod sink;
pub mod staging;
pub mod storage;
pub mod store;
pub mod tree;
pub mod util;
