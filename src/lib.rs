//! mkomi builds Outscale machine images (OMIs) offline.
//!
//! The pipeline, one module per stage:
//! - [`storage`]: where an image's bytes live — local files and block devices (`pread`, FIEMAP),
//!   windows — behind one [`storage::ReadAt`] trait read through `&self`;
//! - [`format`]: how those bytes are laid out — raw, qcow2 (with backing chains), detection —
//!   behind one [`format::Disk`] trait that reports data and zero extents without reading data,
//!   opened under [`format::OpenOptions`] (input format, backing-file policy);
//! - [`sink`]: where a disk goes — a deterministic qcow2 writer and a sparse raw writer;
//! - [`copy`]: the streaming engine that reads, hashes and writes overlapped, in bounded memory;
//! - [`digest`]: the container-independent `ContentDigest` of a disk;
//! - [`manifest`]: the bundle's `manifest.json`, with Outscale's field names and rules;
//! - [`layout`]: new disks — GPT, FAT32 ESPs, templates, disks composed of pieces;
//! - [`fs`]: reading files out of file systems inside images (ext4), without mounting;
//! - [`inspect`]: looking inside disks (partition tables so far);
//! - [`audit`]: what must not ship in an image (SSH keys, passwords, host keys, histories…);
//! - [`bundle`]: the operations on bundles — `register`, `build` and `verify`.

pub mod audit;
pub mod bundle;
pub mod copy;
pub mod digest;
pub mod export;
pub mod format;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod layout;
pub mod manifest;
pub mod progress;
pub mod sink;
pub mod storage;
pub mod store;
pub mod util;
