//! qcow2 images (v2 and v3), with backing chains of raw and qcow2 files.
//!
//! Data is read by imago, but never before this module has checked the image itself: imago
//! accepts several malformed images without a word — L1/L2 entries that point past the end of the
//! file read as zeros, `crypt_method` is ignored, `l1_size` 0 with a non-zero size reads as
//! zeros — which would silently turn a truncated or tampered image into a disk full of zeros.
//! So every layer is first parsed by `validate` (header, header extensions, the whole L1 table
//! and every L2 table it references), following qemu's `docs/interop/qcow2.txt` and qemu's own
//! limits, and only then handed to imago.
//!
//! Backing files are opened by this module too, never by imago (each layer is given to imago with
//! its backing already set), so that a hostile backing name such as `/etc/shadow` is refused
//! before anything is opened: no backing file is followed unless it lies inside a directory of
//! [`OpenOptions::backing`], and then only onto a regular file. Not even the image's own
//! directory is trusted by default: a download directory holds other people's files, and an
//! image may name any of them.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::storage::drivers::CommonStorageHelper;
use imago::{FormatAccess, Mapping};

use super::detect::detect_bytes;
use super::{Disk, Error, Extent, ExtentKind, Format, MAX_VIRTUAL_SIZE, OpenOptions, Result};
use crate::storage::{ReadAt, file::LocalFile};

/// Any mkomi storage as imago's storage: imago reads the layers through it, never a file it
/// opened itself.
struct Storage {
    inner: Arc<dyn ReadAt>,
    helper: CommonStorageHelper,
}

impl Storage {
    fn new(inner: Arc<dyn ReadAt>) -> Self {
        Storage {
            inner,
            helper: CommonStorageHelper::default(),
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.inner.path().display())
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner.path().display())
    }
}

fn read_only() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "mkomi opens images read-only",
    )
}

impl imago::Storage for Storage {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.inner.len())
    }

    // imago's contract (and its own file driver): bytes past the end of the storage read as
    // zeros. `validate` has made sure that only compressed clusters, whose last 512-byte sector
    // may be cut short by the end of the file, ever reach there.
    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> std::io::Result<()> {
        let mut at = offset;
        for mut slice in bufv.into_inner() {
            let buf: &mut [u8] = &mut slice;
            let len = buf.len() as u64;
            let inside = self.inner.len().saturating_sub(at).min(len) as usize;
            let (stored, past) = buf.split_at_mut(inside);
            self.inner.read_at(at, stored)?;
            past.fill(0);
            at = at
                .checked_add(len)
                .ok_or_else(|| std::io::Error::other("read offset overflow"))?;
        }
        Ok(())
    }

    unsafe fn pure_writev(&self, _bufv: IoVector<'_>, _offset: u64) -> std::io::Result<()> {
        Err(read_only())
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }

    unsafe fn invalidate_cache(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        &self.helper
    }
}

/// Most backing files below one image; a longer chain is refused (it is far more likely a
/// mistake or an attack than a real image, and each layer costs open files and memory).
pub const MAX_CHAIN_DEPTH: usize = 64;

/// qcow2.txt "Header": magic `QFI\xfb`.
const MAGIC: [u8; 4] = *b"QFI\xfb";
/// qcow2.txt "Header": version 2 headers end after `snapshots_offset`.
const V2_HEADER_LEN: u64 = 72;
/// qcow2.txt "Header": version 3 headers are at least 104 bytes (`header_length`).
const V3_MIN_HEADER_LEN: u64 = 104;
/// qcow2.txt "Header", byte 104: `compression_type`, present when `header_length` > 104.
const COMPRESSION_TYPE_OFFSET: usize = 104;
/// qcow2.txt: `cluster_bits` must be at least 9 (512-byte clusters).
const MIN_CLUSTER_BITS: u32 = 9;
/// qemu's limit (`MAX_CLUSTER_BITS` in block/qcow2.h): 2 MiB clusters.
const MAX_CLUSTER_BITS: u32 = 21;
/// qemu's cap on the L1 table (`QCOW_MAX_L1_SIZE`, block/qcow2.h).
const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's cap on the refcount table (`QCOW_MAX_REFTABLE_SIZE`, block/qcow2.h).
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// qcow2.txt "Header": a backing file name is at most 1023 bytes.
const MAX_BACKING_NAME: u64 = 1023;
/// qcow2.txt "Header": `refcount_order` at most 6 (64-bit refcounts).
const MAX_REFCOUNT_ORDER: u32 = 6;

/// qcow2.txt "Header", incompatible feature bit 0: refcounts may be stale.
const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: qemu found corruption and marked the image.
const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: `compression_type` is not zlib.
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries (subclusters).
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Every incompatible feature bit qcow2.txt defines; any other bit means "do not open".
const INCOMPAT_KNOWN: u64 = 0x1f;

/// qcow2.txt "Header extensions": end of the extension area.
const EXT_END: u32 = 0;
/// Backing file format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Feature name table: 48-byte entries.
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// External data file name.
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// qcow2.txt "Feature name table": size of one entry.
const FEATURE_NAME_ENTRY: u32 = 48;

/// qcow2.txt "Cluster mapping", L1 entry bits 9-55: offset of the L2 table.
const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1 entry bits 1-8 and 56-62 are reserved.
const L1_RESERVED: u64 = 0x7f00_0000_0000_01fe;
/// L2 entry bit 63: refcount is exactly one ("copied").
const L2_COPIED: u64 = 1 << 63;
/// L2 entry bit 62: compressed cluster.
const L2_COMPRESSED: u64 = 1 << 62;
/// Standard cluster descriptor bits 9-55: host cluster offset.
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Standard cluster descriptor bits 1-8 and 56-61 are reserved.
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Standard cluster descriptor bit 0: the cluster reads as zeros (version 3 only).
const L2_ZERO: u64 = 1;
/// Compressed cluster descriptor: bits 0-61.
const L2_COMPRESSED_DESCRIPTOR: u64 = (1 << 62) - 1;
/// Host offsets are at most 56 bits wide (bits 0-55), compressed ones included.
const HOST_OFFSET_LIMIT: u64 = 1 << 56;
/// Compressed clusters are counted in 512-byte sectors (qcow2.txt "Compressed Clusters
/// Descriptor").
const SECTOR: u64 = 512;

/// A qcow2 image, with its backing chain, as a [`Disk`].
///
/// Opened read-only. Every layer has been validated before any data is read; see the module
/// documentation. imago keeps its L2 cache behind its own locks, so reads take `&self`.
pub struct Qcow2Disk {
    /// The top image, as [`open`] was given it.
    path: PathBuf,
    /// Virtual size of the top image.
    size: u64,
    /// imago's view of the whole chain.
    access: FormatAccess<Storage>,
}

// The engine reads from another thread, file systems share the disk: fail the build, not the
// run, if that ever stops holding.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Qcow2Disk>();
};

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What a layer's header says about its backing file.
#[derive(Debug, Clone)]
struct BackingRef {
    /// The name as stored (qcow2.txt "Header", `backing_file_offset`/`backing_file_size`).
    name: String,
    /// The backing format header extension (0xe2792aca), if present.
    format: Option<String>,
}

/// The fields of a validated qcow2 header that the rest of this module needs.
#[derive(Debug, Clone)]
struct Header {
    /// 2 or 3.
    version: u32,
    /// log2 of the cluster size, 9..=21.
    cluster_bits: u32,
    /// Virtual size in bytes, at most [`MAX_VIRTUAL_SIZE`].
    size: u64,
    /// Number of L1 entries; the table is within the file and at most 32 MiB.
    l1_size: u64,
    /// Offset of the L1 table.
    l1_offset: u64,
    /// The backing file, if the image names one.
    backing: Option<BackingRef>,
}

impl Header {
    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

/// One layer being validated: its name for messages, its storage, its length.
struct Layer<'a> {
    path: &'a Path,
    storage: &'a dyn ReadAt,
    len: u64,
}

impl Layer<'_> {
    fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::Invalid {
            path: self.path.to_owned(),
            reason: reason.into(),
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> Error {
        Error::Unsupported {
            path: self.path.to_owned(),
            reason: reason.into(),
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`; callers have checked the range against the
    /// file length, so running short means the file shrank under us.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        self.storage.read_at(offset, buf).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                self.invalid(format!(
                    "{what} at {offset:#x} ({:#x} bytes) is cut off by the end of the file",
                    buf.len()
                ))
            } else {
                Error::Io {
                    path: self.path.to_owned(),
                    what: "cannot read",
                    source,
                }
            }
        })
    }
}

/// Big-endian u32 at `at`, if the buffer holds it.
fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// Big-endian u64 at `at`, if the buffer holds it.
fn be64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The big-endian 64-bit entries of an L1 or L2 table (qcow2.txt "Cluster mapping").
fn table_entries(table: &[u8]) -> impl Iterator<Item = u64> + '_ {
    // chunks_exact yields 8-byte slices only, so the conversion never fails.
    table
        .chunks_exact(8)
        .filter_map(|chunk| chunk.try_into().ok().map(u64::from_be_bytes))
}

/// Names the set bits of `bits`, for messages: "5, 7".
fn bit_list(bits: u64) -> String {
    (0..64)
        .filter(|b| bits & (1u64 << b) != 0)
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validates the qcow2 image in `storage`, named `path`: header, header extensions, L1 table and
/// every L2 table. Returns the header once nothing in it can make imago read outside the file,
/// read garbage as data, or read data as zeros.
fn validate(path: &Path, storage: &dyn ReadAt) -> Result<Header> {
    let layer = Layer {
        path,
        storage,
        len: storage.len(),
    };
    let header = parse_header(&layer)?;
    check_tables(&layer, &header)?;
    Ok(header)
}

/// Parses and checks the header, its extensions and the backing file name (qcow2.txt "Header",
/// "Header extensions").
fn parse_header(layer: &Layer<'_>) -> Result<Header> {
    let file_len = layer.len;
    if file_len < V2_HEADER_LEN {
        return Err(layer.invalid(format!(
            "file is {file_len} bytes, too short for a qcow2 header ({V2_HEADER_LEN} bytes)"
        )));
    }
    // Enough for every fixed field of a v3 header; the file may be shorter only if it is v2.
    let mut fixed = vec![0u8; file_len.min(V3_MIN_HEADER_LEN + 8) as usize];
    layer.read_exact_at(&mut fixed, 0, "header")?;
    let field32 = |at: usize, name: &str| {
        be32(&fixed, at).ok_or_else(|| layer.invalid(format!("header field {name} is cut off")))
    };
    let field64 = |at: usize, name: &str| {
        be64(&fixed, at).ok_or_else(|| layer.invalid(format!("header field {name} is cut off")))
    };

    if fixed.get(..4) != Some(&MAGIC[..]) {
        return Err(layer.invalid("not a qcow2 image (magic is not QFI\\xfb)"));
    }
    let version = field32(4, "version")?;
    if version != 2 && version != 3 {
        return Err(layer.unsupported(format!(
            "qcow2 version {version} (only versions 2 and 3 exist)"
        )));
    }

    let cluster_bits = field32(20, "cluster_bits")?;
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(layer.invalid(format!(
            "cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS} \
             (512 bytes to 2 MiB clusters)"
        )));
    }
    let cluster_size: u64 = 1 << cluster_bits;

    // Version 3 fields (qcow2.txt "Header", bytes 72-103); version 2 implies their defaults.
    let (incompatible, refcount_order, header_len) = if version == 3 {
        let header_len = u64::from(field32(100, "header_length")?);
        if header_len < V3_MIN_HEADER_LEN || header_len % 8 != 0 || header_len > cluster_size {
            return Err(layer.invalid(format!(
                "header_length {header_len} must be at least {V3_MIN_HEADER_LEN}, a multiple \
                 of 8 and at most the cluster size ({cluster_size})"
            )));
        }
        (
            field64(72, "incompatible_features")?,
            field32(96, "refcount_order")?,
            header_len,
        )
    } else {
        (0, 4, V2_HEADER_LEN)
    };

    // Incompatible features (qcow2.txt "Header", bytes 72-79): an implementation must refuse
    // an image with a bit it does not handle.
    let unknown = incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(layer.unsupported(format!(
            "unknown incompatible feature bit(s) {} (incompatible_features {incompatible:#x}); \
             the image needs a newer qemu",
            bit_list(unknown)
        )));
    }
    if incompatible & INCOMPAT_DIRTY != 0 {
        return Err(layer.invalid(format!(
            "the dirty bit is set (incompatible feature bit 0: the image was not closed cleanly \
             and its metadata may be inconsistent); repair it with `qemu-img check -r all {}`",
            layer.path.display()
        )));
    }
    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(layer.invalid(format!(
            "qemu marked the image corrupt (incompatible feature bit 1); inspect it with \
             `qemu-img check {}`",
            layer.path.display()
        )));
    }
    if incompatible & INCOMPAT_DATA_FILE != 0 {
        return Err(layer.unsupported(
            "external data file (incompatible feature bit 2); make a self-contained image with \
             `qemu-img convert -O qcow2`",
        ));
    }
    if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
        return Err(layer.unsupported(
            "extended L2 entries / subclusters (incompatible feature bit 4); convert the image \
             with `qemu-img convert -O qcow2`",
        ));
    }
    // qcow2.txt "Header", byte 104: compression_type exists only in headers longer than 104
    // bytes; anything but zlib must also set incompatible bit 3, and zlib must not.
    let compression_type = if header_len > COMPRESSION_TYPE_OFFSET as u64 {
        fixed.get(COMPRESSION_TYPE_OFFSET).copied().ok_or_else(|| {
            layer.invalid("header field compression_type is cut off by the end of the file")
        })?
    } else {
        0
    };
    match compression_type {
        0 if incompatible & INCOMPAT_COMPRESSION != 0 => {
            return Err(layer.invalid(
                "incompatible feature bit 3 (compression type) is set but compression_type is \
                 0 (zlib)",
            ));
        }
        0 => {}
        1 => {
            return Err(layer.unsupported(
                "zstd-compressed clusters (compression_type 1); recompress with `qemu-img \
                 convert -O qcow2 -c -o compression_type=zlib` or convert without -c",
            ));
        }
        other => {
            return Err(layer.invalid(format!("unknown compression_type {other}")));
        }
    }
    if compression_type != 0 && incompatible & INCOMPAT_COMPRESSION == 0 {
        return Err(layer.invalid(format!(
            "compression_type {compression_type} without incompatible feature bit 3"
        )));
    }

    // Encrypted images would hand back ciphertext as disk data (imago ignores the field).
    let crypt_method = field32(32, "crypt_method")?;
    match crypt_method {
        0 => {}
        1 | 2 => {
            let name = if crypt_method == 1 { "AES" } else { "LUKS" };
            return Err(layer.unsupported(format!(
                "encrypted image (crypt_method {crypt_method}, {name}); decrypt it with \
                 `qemu-img convert` first"
            )));
        }
        other => return Err(layer.invalid(format!("unknown crypt_method {other}"))),
    }

    if refcount_order > MAX_REFCOUNT_ORDER {
        return Err(layer.invalid(format!(
            "refcount_order {refcount_order} is above {MAX_REFCOUNT_ORDER} (64-bit refcounts)"
        )));
    }

    let size = field64(24, "size")?;
    if size > MAX_VIRTUAL_SIZE {
        return Err(layer.invalid(format!(
            "virtual size {size:#x} is above the limit of {MAX_VIRTUAL_SIZE:#x} bytes"
        )));
    }

    // L1 table (qcow2.txt "Cluster mapping"): one entry per L2 table, each L2 table maps
    // cluster_size / 8 clusters. qemu refuses an L1 table too small for the virtual size
    // (qcow2_do_open), and imago would read the uncovered part as zeros.
    let l1_size = u64::from(field32(36, "l1_size")?);
    let l1_offset = field64(40, "l1_table_offset")?;
    let l2_span_bits = 2 * cluster_bits - 3;
    let l1_needed = size.div_ceil(1 << l2_span_bits);
    if l1_size < l1_needed {
        return Err(layer.invalid(format!(
            "l1_size {l1_size} is too small for virtual size {size:#x} (needs {l1_needed} \
             L1 entries with {cluster_size}-byte clusters)"
        )));
    }
    let l1_bytes = l1_size * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(layer.invalid(format!(
            "l1_size {l1_size} makes a {l1_bytes}-byte L1 table, above qemu's limit of \
             {MAX_L1_BYTES} bytes"
        )));
    }
    if l1_offset % cluster_size != 0 {
        return Err(layer.invalid(format!(
            "l1_table_offset {l1_offset:#x} is not aligned to the cluster size ({cluster_size:#x})"
        )));
    }
    // An empty L1 table (size 0, as `qemu-img create ... 0` writes) may have offset 0.
    if l1_size > 0 {
        if l1_offset < cluster_size {
            return Err(layer.invalid(format!(
                "l1_table_offset {l1_offset:#x} is inside the header cluster"
            )));
        }
        if l1_offset
            .checked_add(l1_bytes)
            .is_none_or(|end| end > file_len)
        {
            return Err(layer.invalid(format!(
                "L1 table at l1_table_offset {l1_offset:#x} ({l1_bytes:#x} bytes) extends past \
                 the end of the file ({file_len:#x} bytes)"
            )));
        }
    }

    // Refcount table: not read for reading data, but a header that places it outside the file
    // or beyond qemu's limit is not something qemu wrote (qcow2_do_open refuses it too).
    let rt_offset = field64(48, "refcount_table_offset")?;
    let rt_clusters = u64::from(field32(56, "refcount_table_clusters")?);
    let rt_bytes = rt_clusters * cluster_size;
    if rt_clusters == 0 {
        return Err(layer.invalid("refcount_table_clusters is 0: the image has no refcount table"));
    }
    if rt_bytes > MAX_REFTABLE_BYTES {
        return Err(layer.invalid(format!(
            "refcount_table_clusters {rt_clusters} makes a {rt_bytes}-byte refcount table, \
             above qemu's limit of {MAX_REFTABLE_BYTES} bytes"
        )));
    }
    if rt_offset % cluster_size != 0 {
        return Err(layer.invalid(format!(
            "refcount_table_offset {rt_offset:#x} is not aligned to the cluster size \
             ({cluster_size:#x})"
        )));
    }
    if rt_offset < cluster_size {
        return Err(layer.invalid(format!(
            "refcount_table_offset {rt_offset:#x} is inside the header cluster"
        )));
    }
    if rt_offset
        .checked_add(rt_bytes)
        .is_none_or(|end| end > file_len)
    {
        return Err(layer.invalid(format!(
            "refcount table at refcount_table_offset {rt_offset:#x} ({rt_bytes:#x} bytes) \
             extends past the end of the file ({file_len:#x} bytes)"
        )));
    }

    // The rest of the header lives in the first cluster: extensions and the backing file name.
    let mut cluster0 = vec![0u8; file_len.min(cluster_size) as usize];
    layer.read_exact_at(&mut cluster0, 0, "header cluster")?;

    let backing_offset = field64(8, "backing_file_offset")?;
    let backing_size = u64::from(field32(16, "backing_file_size")?);
    // qemu treats a zero offset or an empty name as "no backing file".
    let backing_range = if backing_offset != 0 && backing_size != 0 {
        if backing_size > MAX_BACKING_NAME {
            return Err(layer.invalid(format!(
                "backing_file_size {backing_size} is above {MAX_BACKING_NAME}"
            )));
        }
        if backing_offset < header_len {
            return Err(layer.invalid(format!(
                "backing_file_offset {backing_offset:#x} overlaps the header ({header_len} bytes)"
            )));
        }
        // imago, like qemu, reads the name from the first cluster only.
        let end = backing_offset.saturating_add(backing_size);
        if end >= cluster_size {
            return Err(layer.invalid(format!(
                "backing file name at backing_file_offset {backing_offset:#x} \
                 ({backing_size} bytes) extends past the first cluster ({cluster_size:#x} bytes)"
            )));
        }
        Some(backing_offset as usize..end as usize)
    } else {
        None
    };

    let backing_format = parse_extensions(
        layer,
        &cluster0,
        version,
        header_len,
        backing_offset,
        backing_range.as_ref().map(|r| r.start as u64),
    )?;

    let backing = match backing_range {
        Some(range) => {
            let name = cluster0.get(range).ok_or_else(|| {
                layer.invalid(format!(
                    "backing file name at backing_file_offset {backing_offset:#x} \
                     ({backing_size} bytes) extends past the end of the file ({file_len:#x} \
                     bytes)"
                ))
            })?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| {
                layer.invalid(format!(
                    "backing file name at backing_file_offset {backing_offset:#x} is not valid \
                     UTF-8"
                ))
            })?;
            Some(BackingRef {
                name,
                format: backing_format,
            })
        }
        None => None,
    };

    Ok(Header {
        version,
        cluster_bits,
        size,
        l1_size,
        l1_offset,
        backing,
    })
}

/// Walks the header extensions (qcow2.txt "Header extensions") and returns the backing format.
///
/// Version 3 extensions are walked the way imago walks them — from `header_length` to an end
/// marker that must lie inside the first cluster — so that imago never parses anything this
/// function has not checked (imago indexes into a feature name table entry without checking its
/// length). For version 2, which imago does not parse, qemu's rule applies: the area ends at the
/// backing file name or at the end of the first cluster, end marker or not. Either way the
/// extensions must end before the backing file name at `backing_name`, if any.
fn parse_extensions(
    layer: &Layer<'_>,
    cluster0: &[u8],
    version: u32,
    header_len: u64,
    backing_offset: u64,
    backing_name: Option<u64>,
) -> Result<Option<String>> {
    let cluster_size = cluster0.len() as u64;
    let v2_limit = if backing_offset != 0 {
        backing_offset.min(cluster_size)
    } else {
        cluster_size
    };
    let mut format: Option<String> = None;
    let mut offset = header_len;
    let end_of_area = loop {
        if version == 2 && offset >= v2_limit {
            break v2_limit; // the last extension's padding may run into the name
        }
        let (Some(kind), Some(len)) = (
            be32(cluster0, offset as usize),
            be32(cluster0, offset as usize + 4),
        ) else {
            return Err(layer.invalid(format!(
                "header extension at {offset:#x} extends past the first cluster or the end of \
                 the file (no end-of-extensions marker)"
            )));
        };
        let data_start = offset + 8;
        let data_end = data_start + u64::from(len);
        let Some(data) = cluster0.get(data_start as usize..data_end as usize) else {
            return Err(layer.invalid(format!(
                "header extension {kind:#010x} at {offset:#x} ({len} bytes) extends past the \
                 first cluster or the end of the file"
            )));
        };
        if version == 2 && data_end > v2_limit {
            return Err(layer.invalid(format!(
                "header extension {kind:#010x} at {offset:#x} ({len} bytes) overlaps the \
                 backing file name at {backing_offset:#x}"
            )));
        }
        match kind {
            EXT_END => break data_start,
            EXT_BACKING_FORMAT => {
                let name = String::from_utf8(data.to_vec()).map_err(|_| {
                    layer.invalid(format!(
                        "backing format header extension at {offset:#x} is not valid UTF-8"
                    ))
                })?;
                if format.as_ref().is_some_and(|f| *f != name) {
                    return Err(layer.invalid(format!(
                        "two backing format header extensions disagree ({:?} and {name:?})",
                        format.unwrap_or_default()
                    )));
                }
                format = Some(name);
            }
            EXT_FEATURE_NAMES if len % FEATURE_NAME_ENTRY != 0 => {
                return Err(layer.invalid(format!(
                    "feature name table header extension at {offset:#x} is {len} bytes, not a \
                     multiple of {FEATURE_NAME_ENTRY}"
                )));
            }
            EXT_DATA_FILE if std::str::from_utf8(data).is_err() => {
                return Err(layer.invalid(format!(
                    "external data file name header extension at {offset:#x} is not valid UTF-8"
                )));
            }
            // Bitmaps, encryption, feature names, unknown extensions: nothing that changes
            // what the guest reads (qcow2.txt: unknown extensions may be ignored).
            _ => {}
        }
        // qcow2.txt: extension data is padded to a multiple of 8 bytes.
        offset = data_start + u64::from(len).next_multiple_of(8);
    };
    if let Some(name_at) = backing_name
        && end_of_area > name_at
    {
        return Err(layer.invalid(format!(
            "header extensions (up to {end_of_area:#x}) overlap the backing file name at \
                 backing_file_offset {name_at:#x}"
        )));
    }
    Ok(format)
}

/// Checks the L1 table and every L2 table it references (qcow2.txt "Cluster mapping"), so that
/// every guest cluster maps to bytes inside the file.
fn check_tables(layer: &Layer<'_>, header: &Header) -> Result<()> {
    if header.l1_size == 0 {
        return Ok(());
    }
    let cluster_size = header.cluster_size();
    let file_len = layer.len;
    // Bounded by parse_header: at most 32 MiB and inside the file.
    let mut l1 = vec![0u8; (header.l1_size * 8) as usize];
    layer.read_exact_at(&mut l1, header.l1_offset, "L1 table")?;
    let l2_span: u64 = 1 << (2 * header.cluster_bits - 3);

    // Several L1 entries may name the same L2 table; checking each table once bounds the work
    // by the file's length, whatever the L1 table says.
    let mut checked = HashSet::new();
    let mut l2 = vec![0u8; cluster_size as usize];
    for (index, entry) in (0u64..).zip(table_entries(&l1)) {
        let guest = index * l2_span;
        if entry & L1_RESERVED != 0 {
            return Err(layer.invalid(format!(
                "L1 entry {index} (guest offset {guest:#x}) is {entry:#018x}: reserved bits \
                 {:#x} are set",
                entry & L1_RESERVED
            )));
        }
        let l2_offset = entry & L1_OFFSET_MASK;
        if l2_offset == 0 {
            continue; // unallocated: the L2 table is all zeros (or the backing file)
        }
        // Non-zero and cluster-aligned also means outside the header cluster.
        if !l2_offset.is_multiple_of(cluster_size) {
            return Err(layer.invalid(format!(
                "L1 entry for guest offset {guest:#x} points to an L2 table at {l2_offset:#x}, \
                 not aligned to the cluster size ({cluster_size:#x})"
            )));
        }
        if l2_offset + cluster_size > file_len {
            return Err(layer.invalid(format!(
                "L1 entry for guest offset {guest:#x} points to an L2 table at {l2_offset:#x}, \
                 past the end of the file ({file_len:#x} bytes)"
            )));
        }
        if !checked.insert(l2_offset) {
            continue;
        }
        layer.read_exact_at(&mut l2, l2_offset, "L2 table")?;
        check_l2(layer, header, &l2, guest)?;
    }
    Ok(())
}

/// Checks one L2 table whose first entry maps guest offset `guest`.
fn check_l2(layer: &Layer<'_>, header: &Header, l2: &[u8], guest: u64) -> Result<()> {
    let cluster_size = header.cluster_size();
    let file_len = layer.len;
    // Compressed data may end anywhere in its last 512-byte sector, and qemu counts whole
    // sectors; the file itself may end just after the data, inside that sector.
    let file_len_sectors = file_len
        .checked_next_multiple_of(SECTOR)
        .unwrap_or(u64::MAX);
    for (index, entry) in (0u64..).zip(table_entries(l2)) {
        let guest = guest + index * cluster_size;
        if entry & L2_COMPRESSED != 0 {
            // qcow2.txt "Compressed Clusters Descriptor": x = 62 - (cluster_bits - 8); bits
            // 0..x-1 hold the host offset (any byte), bits x..61 the number of additional
            // 512-byte sectors. Bit 63 must be clear for compressed clusters.
            if entry & L2_COPIED != 0 {
                return Err(layer.invalid(format!(
                    "compressed L2 entry for guest offset {guest:#x} is {entry:#018x}: bit 63 \
                     (copied) must be clear for compressed clusters"
                )));
            }
            let x = 62 - (header.cluster_bits - 8);
            let descriptor = entry & L2_COMPRESSED_DESCRIPTOR;
            let host = descriptor & ((1 << x) - 1);
            let sectors = descriptor >> x;
            if host >= HOST_OFFSET_LIMIT {
                return Err(layer.invalid(format!(
                    "compressed L2 entry for guest offset {guest:#x} has host offset {host:#x}, \
                     wider than 56 bits"
                )));
            }
            // Upper bound on the compressed bytes, as qemu and imago compute it.
            let end = host + (sectors + 1) * SECTOR - host % SECTOR;
            if host < cluster_size {
                return Err(layer.invalid(format!(
                    "L2 entry for guest offset {guest:#x} points to compressed data at \
                     {host:#x}, inside the header cluster"
                )));
            }
            if host >= file_len || end > file_len_sectors {
                return Err(layer.invalid(format!(
                    "L2 entry for guest offset {guest:#x} points to compressed data at \
                     {host:#x}..{end:#x}, past the end of the file ({file_len:#x} bytes)"
                )));
            }
            continue;
        }
        if entry & L2_RESERVED != 0 {
            return Err(layer.invalid(format!(
                "L2 entry for guest offset {guest:#x} is {entry:#018x}: reserved bits {:#x} are \
                 set",
                entry & L2_RESERVED
            )));
        }
        // qcow2.txt "Standard Cluster Descriptor": bit 0 ("reads as zero") does not exist in
        // version 2, and qemu treats it as corruption there.
        if entry & L2_ZERO != 0 && header.version == 2 {
            return Err(layer.invalid(format!(
                "L2 entry for guest offset {guest:#x} is {entry:#018x}: the zero flag (bit 0) \
                 is not allowed in a version 2 image"
            )));
        }
        let host = entry & L2_OFFSET_MASK;
        if host == 0 {
            // qcow2.txt: offset 0 is unallocated (or, with bit 0, a zero cluster). With the
            // copied bit and no zero flag it would claim data at host offset 0, which only an
            // external data file (refused above) can hold: qemu reads the header cluster's
            // place as zeros, which hides a damaged table, so mkomi refuses it.
            if entry & L2_COPIED != 0 && entry & L2_ZERO == 0 {
                return Err(layer.invalid(format!(
                    "L2 entry for guest offset {guest:#x} is {entry:#018x}: allocated at host \
                     offset 0, inside the header cluster"
                )));
            }
            continue;
        }
        // Non-zero and cluster-aligned also means outside the header cluster.
        if !host.is_multiple_of(cluster_size) {
            return Err(layer.invalid(format!(
                "L2 entry for guest offset {guest:#x} points to {host:#x}, not aligned to the \
                 cluster size ({cluster_size:#x})"
            )));
        }
        // The guest-visible part of the cluster must be in the file. qemu's own check tolerates
        // a cluster that ends less than one cluster past the end of the file (qcow2-refcount.c)
        // and reads the missing tail as zeros, as imago does: for a truncated snapshot that is
        // silent data loss, so mkomi refuses it. Only bytes past the virtual size may be absent.
        let needed = cluster_size.min(header.size.saturating_sub(guest)).max(1);
        if host >= file_len || host + needed > file_len {
            return Err(layer.invalid(format!(
                "L2 entry for guest offset {guest:#x} points to {host:#x}..{:#x}, past the end of the file ({file_len:#x} bytes): the image is truncated",
                host + needed
            )));
        }
    }
    Ok(())
}

/// A validated layer of the chain, waiting to be handed to imago.
struct OpenLayer {
    /// Path as resolved (not canonical): relative backing names resolve against its directory.
    path: PathBuf,
    storage: Arc<dyn ReadAt>,
    /// `Some` for a qcow2 layer, `None` for a raw one.
    header: Option<Header>,
}

impl OpenLayer {
    fn backing(&self) -> Option<&BackingRef> {
        self.header.as_ref().and_then(|h| h.backing.as_ref())
    }
}

/// How a backing file is to be read.
enum BackingFormat {
    Raw,
    Qcow2,
}

/// The directory relative names in `image` resolve against (qemu's `path_combine`).
fn image_dir(image: &Path) -> &Path {
    match image.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Resolves, checks and opens the backing file `backing` named by the image at `image`.
///
/// `chain` holds the canonical paths of every layer so far (loop detection); `allow` holds the
/// canonical `--allow-backing` directories.
fn open_backing(
    image: &Path,
    backing: &BackingRef,
    chain: &mut HashSet<PathBuf>,
    allow: &[PathBuf],
) -> Result<OpenLayer> {
    let refuse = |reason: String| Error::Backing {
        path: image.to_owned(),
        backing: backing.name.clone(),
        reason,
    };
    let name = backing.name.as_str();
    // qemu would treat these as protocols or JSON option strings, not file names.
    if name.starts_with("json:") || name.contains("://") {
        return Err(refuse(
            "protocol and json: backing names are not supported; only local files".into(),
        ));
    }
    if allow.is_empty() {
        return Err(refuse(
            "not followed: mkomi follows backing files only inside a directory given with \
             --allow-backing DIR"
                .into(),
        ));
    }
    // As qemu does: an absolute name is used as is, a relative one is relative to the directory
    // of the image that names it (as that image was reached, before resolving symlinks).
    let resolved = image_dir(image).join(name);
    let canonical = match resolved.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse(format!(
                "not found (looked for {})",
                resolved.display()
            )));
        }
        Err(e) => {
            return Err(refuse(format!(
                "cannot resolve {}: {e}",
                resolved.display()
            )));
        }
    };

    // A hostile image may name any file on the host; follow only what stays in the directories
    // the user handed us.
    let inside = |path: &Path| allow.iter().any(|dir| path.starts_with(dir));
    if !inside(&canonical) {
        let dirs = allow
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(refuse(format!(
            "resolves to {}, outside the directories backing files may be read from ({dirs}); \
             pass --allow-backing DIR to allow another directory",
            canonical.display()
        )));
    }
    if chain.len() > MAX_CHAIN_DEPTH {
        return Err(refuse(format!(
            "the backing chain is deeper than {MAX_CHAIN_DEPTH} files"
        )));
    }
    if !chain.insert(canonical.clone()) {
        return Err(refuse(format!(
            "resolves to {}, which is already in the backing chain (a loop)",
            canonical.display()
        )));
    }

    // Open the canonical path, not following a symlink put in its place since it was resolved,
    // and without blocking on a FIFO; what is checked from here on is the open descriptor.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&canonical)
        .map_err(|e| refuse(format!("cannot open {}: {e}", canonical.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot stat {}: {e}", canonical.display())))?;
    // Only regular files: a device's content belongs to whoever writes the device (a guest's
    // disk, a host partition), and a FIFO or socket is not a disk at all.
    if !meta.is_file() {
        return Err(refuse(format!(
            "{} is {}; mkomi follows backing files only onto regular files",
            canonical.display(),
            file_kind(&meta.file_type())
        )));
    }
    // A directory on the way may have been swapped for a symlink since it was resolved: ask the
    // kernel where the descriptor really leads.
    let opened =
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|e| {
            refuse(format!(
                "cannot tell where {} leads: {e}",
                canonical.display()
            ))
        })?;
    if !inside(&opened) {
        return Err(refuse(format!(
            "{} led to {} while being opened, outside the directories backing files may be \
             read from",
            canonical.display(),
            opened.display()
        )));
    }

    let storage: Arc<dyn ReadAt> = Arc::new(
        LocalFile::from_file(file, &resolved)
            .map_err(|e| refuse(format!("cannot open {}: {e}", canonical.display())))?,
    );
    let format = match backing.format.as_deref() {
        Some("qcow2") => BackingFormat::Qcow2,
        // "file" and "host_device" are qemu's protocol drivers for files and block devices:
        // they read the bytes as they are, like raw.
        Some("raw" | "file" | "host_device") => BackingFormat::Raw,
        Some(other) => {
            return Err(refuse(format!(
                "backing format {other:?} is not supported (only raw and qcow2)"
            )));
        }
        // No backing format extension: detect from the content, as qemu does.
        None => {
            let mut head = [0u8; 512];
            let head = &mut head[..storage.len().min(512) as usize];
            storage.read_at(0, head).map_err(|source| Error::Io {
                path: resolved.clone(),
                what: "cannot read",
                source,
            })?;
            match detect_bytes(head) {
                Ok(Format::Raw) => BackingFormat::Raw,
                Ok(Format::Qcow2) => BackingFormat::Qcow2,
                Err(kind) => {
                    return Err(refuse(format!(
                        "is a {kind} image; mkomi follows only raw and qcow2 backing files"
                    )));
                }
            }
        }
    };
    let header = match format {
        BackingFormat::Raw => None,
        // Each qcow2 layer passes the same validation as the top.
        BackingFormat::Qcow2 => Some(validate(&resolved, storage.as_ref())?),
    };
    Ok(OpenLayer {
        path: resolved,
        storage,
        header,
    })
}

/// A file type in words, for messages.
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    if kind.is_block_device() {
        "a block device"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Turns an imago error about `path` into ours: malformed data is `Invalid`, the rest `Io`.
fn imago_error(path: &Path, what: &'static str, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::InvalidData {
        Error::Invalid {
            path: path.to_owned(),
            reason: format!("{what}: {source}"),
        }
    } else {
        Error::Io {
            path: path.to_owned(),
            what,
            source,
        }
    }
}

/// Opens the qcow2 image in `storage` read-only, with its backing chain.
///
/// Every layer is validated first (see the module documentation). Backing files are followed
/// only as [`OpenOptions::backing`] allows — onto regular files inside its directories, at most
/// [`MAX_CHAIN_DEPTH`] deep, without loops; their format comes from the backing format header
/// extension or, failing that, from their content.
pub fn open(storage: Arc<dyn ReadAt>, options: &OpenOptions) -> Result<Arc<dyn Disk>> {
    Ok(Arc::new(Qcow2Disk::open(storage, options)?))
}

impl Qcow2Disk {
    /// [`open`], as the concrete type.
    fn open(storage: Arc<dyn ReadAt>, options: &OpenOptions) -> Result<Qcow2Disk> {
        let path = storage.path().to_owned();
        let path = path.as_path();
        let allow = options
            .backing()
            .dirs()
            .iter()
            .map(|dir| {
                dir.canonicalize().map_err(|source| Error::Io {
                    path: dir.clone(),
                    what: "cannot resolve the --allow-backing directory",
                    source,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let header = validate(path, storage.as_ref())?;
        let top_size = header.size;
        // The top image's own place, for loop detection, matters only when a backing file may
        // be followed: a storage that is no local file (an object being imported) has none.
        let mut chain = HashSet::new();
        if header.backing.is_some() && !allow.is_empty() {
            chain.insert(path.canonicalize().map_err(|source| Error::Io {
                path: path.to_owned(),
                what: "cannot resolve",
                source,
            })?);
        }
        let mut layers = vec![OpenLayer {
            path: path.to_owned(),
            storage,
            header: Some(header),
        }];
        while let Some(last) = layers.last() {
            let Some(backing) = last.backing() else { break };
            let next = open_backing(&last.path, backing, &mut chain, &allow)?;
            layers.push(next);
        }

        // Hand the chain to imago bottom-up, each qcow2 layer with its backing set explicitly,
        // so imago never opens a file by itself.
        let mut below: Option<FormatAccess<Storage>> = None;
        for layer in layers.into_iter().rev() {
            let storage = Storage::new(layer.storage);
            let access = if layer.header.is_some() {
                let mut qcow2 = Qcow2::<Storage>::open_image(storage, false)
                    .map_err(|e| imago_error(&layer.path, "cannot open as qcow2", e))?;
                qcow2.set_backing(below.take());
                FormatAccess::new(qcow2)
            } else {
                let raw = Raw::open_image(storage, false)
                    .map_err(|e| imago_error(&layer.path, "cannot open", e))?;
                FormatAccess::new(raw)
            };
            below = Some(access);
        }
        let Some(access) = below else {
            // Unreachable: `layers` starts with the top image.
            return Err(Error::Invalid {
                path: path.to_owned(),
                reason: "no layer opened".into(),
            });
        };
        // Both read the same header field; a disagreement would mean the file changed between
        // validation and imago's open.
        let size = access.size();
        if size != top_size {
            return Err(Error::Invalid {
                path: path.to_owned(),
                reason: format!(
                    "virtual size changed while opening ({top_size:#x}, then {size:#x})"
                ),
            });
        }
        Ok(Qcow2Disk {
            path: path.to_owned(),
            size,
            access,
        })
    }

    /// What `offset` maps to, for at most `max_len` (>= 1) bytes: the kind and a length >= 1.
    fn mapping(&self, offset: u64, max_len: u64) -> Result<(ExtentKind, u64)> {
        let (mapping, len) = self
            .access
            .get_mapping(offset, max_len)
            .map_err(|e| imago_error(&self.path, "cannot map", e))?;
        let kind = match mapping {
            // Compressed clusters are Special: stored data, decompressed by imago on read.
            Mapping::Raw { .. } | Mapping::Special { .. } => ExtentKind::Data,
            Mapping::Zero { .. } => ExtentKind::Zero,
            // Only past the top image's size, which callers do not ask for; a backing file that
            // ends early is reported by imago as Zero.
            Mapping::Eof { .. } => return Ok((ExtentKind::Zero, max_len)),
            // Mapping is non-exhaustive: whatever a later imago adds must be read to be known.
            _ => ExtentKind::Data,
        };
        if len == 0 {
            return Err(Error::Invalid {
                path: self.path.clone(),
                reason: format!("empty mapping at guest offset {offset:#x}"),
            });
        }
        Ok((kind, len.min(max_len)))
    }
}

impl Disk for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent> {
        let limit = max_len.min(self.size.saturating_sub(offset));
        if limit == 0 {
            return Err(Error::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "extent of {max_len} bytes requested at {offset:#x}, virtual size is \
                     {:#x}",
                    self.size
                ),
            });
        }
        // imago stops each mapping at an L2 table boundary; runs of the same kind are joined,
        // so that a sparse image is a handful of extents rather than one per L2 table.
        let (kind, mut len) = self.mapping(offset, limit)?;
        while len < limit {
            let (next, more) = self.mapping(offset + len, limit - len)?;
            if next != kind {
                break;
            }
            len += more;
        }
        Ok(Extent { offset, len, kind })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(Error::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "read of {} bytes at {offset:#x} goes past the virtual size {:#x}",
                    buf.len(),
                    self.size
                ),
            });
        }
        self.access
            .read(buf, offset)
            .map_err(|e| imago_error(&self.path, "cannot read", e))
    }

    fn format(&self) -> &'static str {
        "qcow2"
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::noise;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    const K: u64 = 1024;
    const M: u64 = 1024 * 1024;

    fn run(program: &str, args: &[&str]) {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} (qemu-utils installed?): {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    fn qemu_img(args: &[&str]) {
        run("qemu-img", args);
    }

    /// Writes into an image with qemu-io (`write -P 0xab 0 64k`, `write -z 0 64k`).
    fn qemu_io(img: &Path, fmt: &str, cmd: &str) {
        run("qemu-io", &["-f", fmt, "-c", cmd, s(img)]);
    }

    fn create(img: &Path, options: &[&str], size: &str) {
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        args.extend_from_slice(options);
        args.push(s(img));
        args.push(size);
        qemu_img(&args);
    }

    /// Opens `img` allowing backing files in its own directory, as most tests build chains.
    fn open(img: &Path) -> Result<Qcow2Disk> {
        open_file(img, &allow(&[img.parent().unwrap()]))
    }

    /// Opens the local file `img` as qcow2, as `--input-format qcow2` does.
    fn open_file(img: &Path, options: &OpenOptions) -> Result<Qcow2Disk> {
        Qcow2Disk::open(Arc::new(LocalFile::open(img)?), options)
    }

    fn allow(dirs: &[&Path]) -> OpenOptions {
        OpenOptions::new(
            crate::format::InputFormat::Auto,
            crate::format::BackingPolicy::within(dirs.iter().map(|d| d.to_path_buf()).collect()),
        )
    }

    fn read_all(src: &Qcow2Disk) -> Vec<u8> {
        let mut out = vec![0u8; src.size() as usize];
        for (i, chunk) in out.chunks_mut(M as usize).enumerate() {
            src.read_at(i as u64 * M, chunk).unwrap();
        }
        out
    }

    fn extents(src: &Qcow2Disk, max_len: u64) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::new();
        let mut offset = 0;
        while offset < src.size() {
            let e = src.extent(offset, max_len).unwrap();
            assert_eq!(e.offset, offset);
            assert!(e.len >= 1 && e.len <= max_len, "{e:?}");
            offset += e.len;
            // Merge for comparison: callers may split runs anywhere.
            match out.last_mut() {
                Some(last) if last.kind == e.kind => last.len += e.len,
                _ => out.push(e),
            }
        }
        assert_eq!(offset, src.size());
        out
    }

    fn ext(offset: u64, len: u64, kind: ExtentKind) -> Extent {
        Extent { offset, len, kind }
    }

    fn patch(path: &Path, offset: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }

    fn read_u64(path: &Path, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut b, offset)
            .unwrap();
        u64::from_be_bytes(b)
    }

    fn read_u32(path: &Path, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut b, offset)
            .unwrap();
        u32::from_be_bytes(b)
    }

    /// File position of the L2 entry that maps `guest` (the L2 table must exist).
    fn l2_entry_pos(img: &Path, guest: u64) -> u64 {
        let cb = u64::from(read_u32(img, 20));
        let l1_offset = read_u64(img, 40);
        let l1_entry = read_u64(img, l1_offset + 8 * (guest >> (2 * cb - 3)));
        let l2_offset = l1_entry & L1_OFFSET_MASK;
        assert_ne!(l2_offset, 0, "no L2 table for {guest:#x}");
        l2_offset + 8 * ((guest >> cb) & ((1 << (cb - 3)) - 1))
    }

    /// File position of the L1 entry that maps `guest`.
    fn l1_entry_pos(img: &Path, guest: u64) -> u64 {
        let cb = u64::from(read_u32(img, 20));
        read_u64(img, 40) + 8 * (guest >> (2 * cb - 3))
    }

    /// Position of header extension `kind` in the first cluster.
    fn extension_pos(img: &Path, kind: u32) -> u64 {
        let head = std::fs::read(img).unwrap();
        let mut at = if read_u32(img, 4) == 2 {
            72
        } else {
            u64::from(read_u32(img, 100))
        };
        loop {
            let k = read_u32(img, at);
            let len = u64::from(read_u32(img, at + 4));
            assert_ne!(k, 0, "extension {kind:#x} not found");
            if k == kind {
                return at;
            }
            at += 8 + len.next_multiple_of(8);
            assert!((at as usize) < head.len());
        }
    }

    fn pattern(len: u64, byte: u8) -> Vec<u8> {
        vec![byte; len as usize]
    }

    #[track_caller]
    fn assert_invalid(result: Result<Qcow2Disk>, needles: &[&str]) -> String {
        match result {
            Err(Error::Invalid { reason, .. }) => {
                for n in needles {
                    assert!(reason.contains(n), "{reason:?} lacks {n:?}");
                }
                assert!(!reason.contains('\n'), "{reason:?} is not one line");
                reason
            }
            other => panic!("expected Invalid with {needles:?}, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_unsupported(result: Result<Qcow2Disk>, needles: &[&str]) {
        match result {
            Err(Error::Unsupported { reason, .. }) => {
                for n in needles {
                    assert!(reason.contains(n), "{reason:?} lacks {n:?}");
                }
            }
            other => panic!("expected Unsupported with {needles:?}, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_backing(result: Result<Qcow2Disk>, needles: &[&str]) -> String {
        match result {
            Err(e @ Error::Backing { .. }) => {
                let msg = e.to_string();
                for n in needles {
                    assert!(msg.contains(n), "{msg:?} lacks {n:?}");
                }
                msg
            }
            other => panic!("expected Backing with {needles:?}, got {other:?}"),
        }
    }

    #[test]
    fn source_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Qcow2Disk>();
        assert_send::<Arc<dyn Disk>>();
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn v2_and_v3_read_back_with_extents() {
        for compat in ["0.10", "1.1"] {
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("disk.qcow2");
            create(&img, &["-o", &format!("compat={compat}")], "4M");
            qemu_io(&img, "qcow2", "write -P 0xab 0 64k");
            qemu_io(&img, "qcow2", "write -P 0xcd 1M 4k");
            let version = read_u32(&img, 4);
            assert_eq!(version, if compat == "0.10" { 2 } else { 3 });

            let src = open(&img).unwrap();
            assert_eq!(src.size(), 4 * M);
            assert_eq!(src.format(), "qcow2");
            assert_eq!(src.path(), img.as_path());

            let mut want = vec![0u8; 4 * M as usize];
            want[..64 * K as usize].fill(0xab);
            want[M as usize..(M + 4 * K) as usize].fill(0xcd);
            assert!(read_all(&src) == want, "compat={compat}: data differs");

            use ExtentKind::*;
            assert_eq!(
                extents(&src, u64::MAX),
                vec![
                    ext(0, 64 * K, Data),
                    ext(64 * K, M - 64 * K, Zero),
                    ext(M, 64 * K, Data),
                    ext(M + 64 * K, 3 * M - 64 * K, Zero),
                ],
                "compat={compat}"
            );
            // Small max_len: same runs, cut into pieces.
            assert_eq!(extents(&src, 4 * K).len(), 4);
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn v3_zero_clusters_are_zero_extents() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let top = dir.path().join("top.qcow2");
        create(&base, &[], "1M");
        qemu_io(&base, "qcow2", "write -P 0x11 0 1M");
        create(&top, &["-b", "base.qcow2", "-F", "qcow2"], "1M");
        // A v3 zero cluster hides the backing data.
        qemu_io(&top, "qcow2", "write -z 128k 64k");
        let src = open(&top).unwrap();
        let mut want = pattern(M, 0x11);
        want[128 * K as usize..192 * K as usize].fill(0);
        assert!(read_all(&src) == want);
        use ExtentKind::*;
        assert_eq!(
            extents(&src, u64::MAX),
            vec![
                ext(0, 128 * K, Data),
                ext(128 * K, 64 * K, Zero),
                ext(192 * K, M - 192 * K, Data),
            ]
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn compressed_images_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        // Compressible, zero, incompressible, then a tail that does not fill a cluster.
        let mut data: Vec<u8> = (0..M).map(|i| (i * 7 % 251) as u8).collect();
        data.extend(pattern(M, 0));
        data.extend(noise(M as usize, 1));
        data.extend((0..100 * K).map(|i| (i % 13) as u8));
        std::fs::write(&raw, &data).unwrap();
        for compat in ["0.10", "1.1"] {
            let img = dir.path().join(format!("disk-{compat}.qcow2"));
            qemu_img(&[
                "convert",
                "-q",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("compat={compat}"),
                s(&raw),
                s(&img),
            ]);
            let src = open(&img).unwrap();
            assert_eq!(src.size(), data.len() as u64);
            assert!(read_all(&src) == data, "compat={compat}: data differs");
            let ext = extents(&src, u64::MAX);
            assert_eq!(ext[0].kind, ExtentKind::Data);
            assert_eq!(ext[0].len, M, "{ext:?}");
            assert_eq!(ext[1], super::tests::ext(M, M, ExtentKind::Zero), "{ext:?}");
        }
        // A compressed image whose file ends inside its last 512-byte sector.
        let small = dir.path().join("small.raw");
        std::fs::write(&small, pattern(100 * K, b'a')).unwrap();
        let img = dir.path().join("small.qcow2");
        qemu_img(&["convert", "-q", "-c", "-O", "qcow2", s(&small), s(&img)]);
        let len = std::fs::metadata(&img).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(len - 100).unwrap();
        let src = open(&img).unwrap();
        assert!(read_all(&src) == pattern(100 * K, b'a'));
    }

    /// base (raw or qcow2, 1 MiB) ← mid (4 MiB) ← top (4 MiB), each layer writing over the
    /// one below; checked byte for byte.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn three_level_backing_chain() {
        for base_format in ["raw", "qcow2"] {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().join(format!("base.{base_format}"));
            if base_format == "raw" {
                std::fs::write(&base, pattern(M, 0xaa)).unwrap();
            } else {
                create(&base, &[], "1M");
                qemu_io(&base, "qcow2", "write -P 0xaa 0 1M");
            }
            let mid = dir.path().join("mid.qcow2");
            let top = dir.path().join("top.qcow2");
            create(
                &mid,
                &["-b", &format!("base.{base_format}"), "-F", base_format],
                "4M",
            );
            qemu_io(&mid, "qcow2", "write -P 0xbb 512k 512k");
            qemu_io(&mid, "qcow2", "write -P 0xbc 2M 64k");
            create(&top, &["-b", "mid.qcow2", "-F", "qcow2"], "4M");
            qemu_io(&top, "qcow2", "write -P 0xcc 0 64k");
            qemu_io(&top, "qcow2", "write -z 256k 64k");
            qemu_io(&top, "qcow2", "write -P 0xcd 3M 4k");

            let mut want = vec![0u8; 4 * M as usize];
            let mut fill = |from: u64, to: u64, b: u8| want[from as usize..to as usize].fill(b);
            fill(0, M, 0xaa); // base
            fill(512 * K, M, 0xbb); // mid
            fill(2 * M, 2 * M + 64 * K, 0xbc);
            fill(0, 64 * K, 0xcc); // top
            fill(256 * K, 320 * K, 0);
            fill(3 * M, 3 * M + 4 * K, 0xcd);

            let src = open(&top).unwrap();
            assert_eq!(src.size(), 4 * M);
            assert!(read_all(&src) == want, "base {base_format}: data differs");
            // Unaligned reads across layer boundaries.
            let mut buf = vec![0u8; 100_000];
            src.read_at(500_000, &mut buf).unwrap();
            assert!(buf[..] == want[500_000..600_000]);

            use ExtentKind::*;
            let got = extents(&src, u64::MAX);
            // Past the end of the 1 MiB base, mid's unallocated clusters read as zeros.
            assert_eq!(
                got,
                vec![
                    ext(0, 256 * K, Data),
                    ext(256 * K, 64 * K, Zero),
                    ext(320 * K, M - 320 * K, Data),
                    ext(M, M, Zero),
                    ext(2 * M, 64 * K, Data),
                    ext(2 * M + 64 * K, M - 64 * K, Zero),
                    ext(3 * M, 64 * K, Data),
                    ext(3 * M + 64 * K, M - 64 * K, Zero),
                ],
                "base {base_format}"
            );
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn v2_image_with_backing_format_extension() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, noise(192 * K as usize, 2)).unwrap();
        let top = dir.path().join("top.qcow2");
        create(
            &top,
            &["-o", "compat=0.10", "-b", "base.raw", "-F", "raw"],
            "192K",
        );
        qemu_io(&top, "qcow2", "write -P 0x33 64k 64k");
        let mut want = noise(192 * K as usize, 2);
        want[64 * K as usize..128 * K as usize].fill(0x33);
        let src = open(&top).unwrap();
        assert!(read_all(&src) == want);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn backing_format_detected_from_content() {
        for base_format in ["raw", "qcow2"] {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().join("base");
            if base_format == "raw" {
                std::fs::write(&base, pattern(M, 0x5a)).unwrap();
            } else {
                create(&base, &[], "1M");
                qemu_io(&base, "qcow2", "write -P 0x5a 0 1M");
            }
            let top = dir.path().join("top.qcow2");
            create(&top, &["-b", "base", "-F", base_format], "1M");
            qemu_io(&top, "qcow2", "write -P 0x01 0 4k");
            // Turn the backing format extension into an unknown one, which is ignored.
            patch(
                &top,
                extension_pos(&top, EXT_BACKING_FORMAT),
                &0x0bad_beefu32.to_be_bytes(),
            );
            let src = open(&top).unwrap();
            let mut want = pattern(M, 0x5a);
            want[..4 * K as usize].fill(0x01);
            assert!(read_all(&src) == want, "base {base_format}");
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn backing_format_not_supported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.raw"), pattern(M, 1)).unwrap();
        let top = dir.path().join("top.qcow2");
        create(&top, &["-b", "base.raw", "-F", "raw"], "1M");
        let at = extension_pos(&top, EXT_BACKING_FORMAT);
        patch(&top, at + 8, b"vmd");
        assert_backing(open(&top), &["\"vmd\"", "not supported"]);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn backing_outside_directory_needs_allow_backing() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&shared).unwrap();
        let base = shared.join("base.qcow2");
        create(&base, &[], "1M");
        qemu_io(&base, "qcow2", "write -P 0x77 0 64k");
        for name in ["../shared/base.qcow2".to_string(), s(&base).to_string()] {
            let top = images.join("top.qcow2");
            create(&top, &["-b", &name, "-F", "qcow2"], "1M");
            // Allowing the image's own directory does not allow another one.
            let msg = assert_backing(open(&top), &["--allow-backing", "outside"]);
            let canonical_images = images.canonicalize().unwrap();
            assert!(msg.contains(s(&canonical_images)), "{msg}");

            let src = open_file(&top, &allow(&[&shared])).unwrap();
            let mut buf = vec![0u8; 64 * K as usize];
            src.read_at(0, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 0x77));
        }
        // A hostile absolute name is refused before anything is opened.
        let top = images.join("evil.qcow2");
        create(&top, &["-u", "-b", "/etc/hostname", "-F", "raw"], "1M");
        assert_backing(open(&top), &["outside", "/etc/hostname"]);
        // A symlink inside the directory that leads outside is no way around it.
        std::os::unix::fs::symlink(&base, images.join("link.qcow2")).unwrap();
        let top = images.join("via-link.qcow2");
        create(&top, &["-b", "link.qcow2", "-F", "qcow2"], "1M");
        assert_backing(open(&top), &["outside"]);
    }

    /// No backing file is followed by default, not even one beside the image.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn backing_beside_the_image_needs_allow_backing() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        create(&base, &[], "1M");
        qemu_io(&base, "qcow2", "write -P 0x66 0 64k");
        let top = dir.path().join("top.qcow2");
        create(&top, &["-b", "base.qcow2", "-F", "qcow2"], "1M");
        let msg = assert_backing(
            open_file(&top, &OpenOptions::default()),
            &["--allow-backing", "not followed"],
        );
        // One line naming the image and the backing file.
        assert!(
            msg.contains(s(&top)) && msg.contains("\"base.qcow2\""),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        let src = open_file(&top, &allow(&[dir.path()])).unwrap();
        let mut buf = vec![0u8; 64 * K as usize];
        src.read_at(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0x66));
    }

    /// A backing file is followed only onto a regular file, whatever the directory allows: the
    /// type is taken from the open descriptor, so a symlink that passes the path check is no way
    /// around it, and a FIFO does not block the open.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn backing_onto_a_device_fifo_or_socket_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let top = d.join("top.qcow2");
        let name_is = |name: &str| {
            create(&top, &["-u", "-b", name, "-F", "raw"], "1M");
        };
        // A FIFO: opening it for reading would block until a writer came.
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(s(&fifo)).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        name_is("fifo");
        assert_backing(open(&top), &["is a FIFO", "regular files"]);
        // A socket: Linux refuses to open it (ENXIO), which refuses it as well.
        let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        name_is("sock");
        assert_backing(open(&top), &["sock: No such device or address"]);
        // A symlink to a character device, in a directory the options allow (/dev, here): the
        // path checks pass, the descriptor's type does not.
        std::os::unix::fs::symlink("/dev/null", d.join("null")).unwrap();
        name_is("null");
        assert_backing(
            open_file(&top, &allow(&[d, Path::new("/dev")])),
            &["/dev/null is a character device"],
        );
        // A block device node inside the allowed directory, a copy of one of the host's (needs
        // CAP_MKNOD: root, as here and in CI). It is opened, never read.
        let host = ["/dev/loop0", "/dev/loop-control", "/dev/vda", "/dev/sda"]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .find(|m| m.file_type().is_block_device());
        let node = d.join("disk");
        let c = std::ffi::CString::new(s(&node)).unwrap();
        let made = host.map(|m| {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: mknod reads a NUL-terminated path.
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, m.rdev() as libc::dev_t) }
        });
        if made == Some(0) {
            name_is("disk");
            assert_backing(open(&top), &["is a block device", "regular files"]);
        } else {
            eprintln!("no block device node could be made: block device case not run");
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn backing_loop_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c.qcow2");
        let a = dir.path().join("a.qcow2");
        let b = dir.path().join("b.qcow2");
        create(&c, &[], "1M");
        create(&a, &["-b", "c.qcow2", "-F", "qcow2"], "1M");
        create(&b, &["-b", "a.qcow2", "-F", "qcow2"], "1M");
        // a names c.qcow2: make it name b.qcow2, which names a.qcow2.
        let name_at = read_u64(&a, 8);
        assert_eq!(read_u32(&a, 16), 7);
        patch(&a, name_at, b"b.qcow2");
        assert_backing(open(&a), &["loop"]);
        assert_backing(open(&b), &["loop"]);
        // An image that names itself.
        patch(&a, name_at, b"a.qcow2");
        assert_backing(open(&a), &["loop"]);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn backing_missing_refused() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top.qcow2");
        create(&top, &["-u", "-b", "missing.qcow2", "-F", "qcow2"], "1M");
        match open(&top) {
            Err(Error::Backing {
                path,
                backing,
                reason,
            }) => {
                assert_eq!(path, top);
                assert_eq!(backing, "missing.qcow2");
                assert!(reason.contains("not found"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn backing_chain_depth_limited() {
        let dir = tempfile::tempdir().unwrap();
        let name = |i: usize| format!("l{i}.qcow2");
        create(&dir.path().join(name(0)), &[], "1M");
        for i in 1..=MAX_CHAIN_DEPTH + 1 {
            create(
                &dir.path().join(name(i)),
                &["-u", "-b", &name(i - 1), "-F", "qcow2"],
                "1M",
            );
        }
        // 64 backing files: fine.
        open(&dir.path().join(name(MAX_CHAIN_DEPTH))).unwrap();
        // 65: refused.
        assert_backing(
            open(&dir.path().join(name(MAX_CHAIN_DEPTH + 1))),
            &["deeper than 64"],
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn backing_layers_are_validated_too() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        create(&base, &[], "1M");
        let top = dir.path().join("top.qcow2");
        create(&top, &["-b", "base.qcow2", "-F", "qcow2"], "1M");
        patch(&base, 72, &1u64.to_be_bytes()); // dirty
        match open(&top) {
            Err(Error::Invalid { path, reason }) => {
                assert_eq!(path, base);
                assert!(reason.contains("qemu-img check -r all"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn zstd_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("z.qcow2");
        create(&img, &["-o", "compression_type=zstd"], "1M");
        assert_unsupported(open(&img), &["zstd-compressed clusters"]);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn zero_size_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("empty.qcow2");
        create(&img, &[], "0");
        let src = open(&img).unwrap();
        assert_eq!(src.size(), 0);
        assert!(src.extent(0, 1).is_err());
        src.read_at(0, &mut []).unwrap();
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn extent_and_read_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.qcow2");
        create(&img, &[], "1M");
        qemu_io(&img, "qcow2", "write -P 1 0 64k");
        let src = open(&img).unwrap();
        assert_eq!(src.extent(0, 1).unwrap(), ext(0, 1, ExtentKind::Data));
        assert_eq!(
            src.extent(M - 1, 10).unwrap(),
            ext(M - 1, 1, ExtentKind::Zero)
        );
        assert_eq!(
            src.extent(100, u64::MAX).unwrap(),
            ext(100, 64 * K - 100, ExtentKind::Data)
        );
        assert!(src.extent(M, 1).is_err());
        assert!(src.extent(0, 0).is_err());
        assert!(src.read_at(M - 1, &mut [0u8; 2]).is_err());
        assert!(src.read_at(u64::MAX, &mut [0u8; 2]).is_err());
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn sparse_1g_has_one_data_extent() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("sparse.qcow2");
        create(&img, &[], "1G");
        qemu_io(&img, "qcow2", "write -P 0x42 512M 64k");
        let src = open(&img).unwrap();
        use ExtentKind::*;
        assert_eq!(src.extent(0, u64::MAX).unwrap(), ext(0, 512 * M, Zero));
        assert_eq!(
            extents(&src, u64::MAX),
            vec![
                ext(0, 512 * M, Zero),
                ext(512 * M, 64 * K, Data),
                ext(512 * M + 64 * K, 512 * M - 64 * K, Zero),
            ]
        );
        let mut buf = vec![0u8; 64 * K as usize];
        src.read_at(512 * M, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0x42));
    }

    /// What this thread has read so far: (read system calls, bytes), from the kernel's own
    /// accounting (`/proc/thread-self/io`), which sees every read of every layer whoever makes
    /// it (this module's validation or imago), and nothing of other tests' threads.
    fn thread_reads() -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/thread-self/io")
            .expect("/proc/thread-self/io (a kernel with task I/O accounting)");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/thread-self/io: {text}"))
        };
        (field("syscr:"), field("rchar:"))
    }

    /// Opening and walking a sparse 3 TiB image costs its metadata (a 48 KiB L1 table and three
    /// L2 tables), not its virtual size: a walk that went through the 6,144 L2 tables it could
    /// have, or through the data, would read hundreds of times more.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn sparse_3t_walk_reads_only_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("huge.qcow2");
        create(&img, &[], "3T");
        qemu_io(&img, "qcow2", "write -P 1 0 64k");
        qemu_io(&img, "qcow2", "write -P 2 1536G 64k");
        qemu_io(&img, "qcow2", "write -P 3 3298534817792 64k"); // last cluster
        let (calls0, bytes0) = thread_reads();
        let src = open(&img).unwrap();
        let (calls1, bytes1) = thread_reads();
        eprintln!(
            "3 TiB open: {} reads, {} bytes",
            calls1 - calls0,
            bytes1 - bytes0
        );
        // The header, the L1 table and the three L2 tables, by this module and by imago.
        assert!(calls1 - calls0 <= 32, "open: {} reads", calls1 - calls0);
        assert!(
            bytes1 - bytes0 <= 1 << 20,
            "open: {} bytes",
            bytes1 - bytes0
        );
        for max_len in [u64::MAX, 1 << 30] {
            let (calls0, bytes0) = thread_reads();
            let got = extents(&src, max_len);
            let (calls1, bytes1) = thread_reads();
            let (calls, bytes) = (calls1 - calls0, bytes1 - bytes0);
            eprintln!("3 TiB walk, max_len {max_len:#x}: {calls} reads, {bytes} bytes");
            assert_eq!(got.len(), 5, "{got:?}");
            assert_eq!(got.iter().filter(|e| e.kind == ExtentKind::Data).count(), 3);
            // At most the three L2 tables, and no data.
            assert!(calls <= 8, "walk with max_len {max_len:#x}: {calls} reads");
            // (Reading /proc/thread-self/io itself counts a few hundred bytes.)
            assert!(
                bytes <= 3 * 64 * K + 4 * K,
                "walk with max_len {max_len:#x}: {bytes} bytes"
            );
        }
    }

    /// Whatever qemu-img writes must open and read back: cluster sizes, refcount widths,
    /// preallocation modes, lazy refcounts, bitmaps, convert options.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn qemu_img_variants_open() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("data.raw");
        let mut data = noise(300 * K as usize, 3);
        data.extend(pattern(200 * K, 0));
        data.extend((0..524 * K).map(|i| (i % 7) as u8));
        std::fs::write(&raw, &data).unwrap();
        let variants: &[&str] = &[
            "compat=0.10",
            "compat=1.1",
            "cluster_size=512",
            "cluster_size=4096",
            "cluster_size=2M",
            "compat=0.10,cluster_size=512",
            "refcount_bits=1",
            "refcount_bits=64",
            "lazy_refcounts=on",
            "preallocation=metadata",
            "preallocation=falloc",
            "preallocation=full",
            "compat=0.10,preallocation=metadata",
            "cluster_size=512,preallocation=metadata",
        ];
        for (i, options) in variants.iter().enumerate() {
            // As created, then with data written by qemu-img convert and by qemu-io.
            let img = dir.path().join(format!("v{i}.qcow2"));
            create(&img, &["-o", options], "1M");
            let src = open(&img).unwrap_or_else(|e| panic!("{options}: {e}"));
            assert!(read_all(&src) == pattern(M, 0), "{options}");
            qemu_img(&["convert", "-q", "-n", "-O", "qcow2", s(&raw), s(&img)]);
            qemu_io(&img, "qcow2", "write -P 0x99 1000 3000");
            let mut want = data.clone();
            want[1000..4000].fill(0x99);
            let src = open(&img).unwrap_or_else(|e| panic!("{options}: {e}"));
            assert!(read_all(&src) == want, "{options}: data differs");

            let converted = dir.path().join(format!("c{i}.qcow2"));
            qemu_img(&[
                "convert",
                "-q",
                "-O",
                "qcow2",
                "-o",
                options,
                s(&raw),
                s(&converted),
            ]);
            let src = open(&converted).unwrap_or_else(|e| panic!("{options}: {e}"));
            assert!(read_all(&src) == data, "{options}: data differs");
        }
        // convert -S 0 (no sparse detection), -c with 512-byte and 2 MiB clusters, a bitmap.
        for args in [
            &["-S", "0"][..],
            &["-c", "-o", "cluster_size=512"][..],
            &["-c", "-o", "cluster_size=2M"][..],
            &["-c", "-o", "compat=0.10,cluster_size=4096"][..],
        ] {
            let img = dir.path().join("x.qcow2");
            let _ = std::fs::remove_file(&img);
            let mut all = vec!["convert", "-q", "-O", "qcow2"];
            all.extend_from_slice(args);
            all.extend_from_slice(&[s(&raw), s(&img)]);
            qemu_img(&all);
            let src = open(&img).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(read_all(&src) == data, "{args:?}: data differs");
        }
        let img = dir.path().join("bitmap.qcow2");
        create(&img, &[], "1M");
        qemu_img(&["bitmap", "--add", s(&img), "b0"]);
        qemu_io(&img, "qcow2", "write -P 0x12 0 64k");
        open(&img).unwrap();
    }

    /// A backing chain rewritten by qemu-img rebase and commit still reads as qemu reads it.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn rebase_and_commit() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let top = dir.path().join("top.qcow2");
        create(&base, &[], "1M");
        qemu_io(&base, "qcow2", "write -P 0x01 0 1M");
        create(&top, &["-b", "base.qcow2", "-F", "qcow2"], "1M");
        qemu_io(&top, "qcow2", "write -P 0x02 64k 64k");
        let flat = dir.path().join("flat.raw");
        qemu_img(&["convert", "-q", "-O", "raw", s(&top), s(&flat)]);
        let want = std::fs::read(&flat).unwrap();
        // Rebase onto nothing: top becomes self-contained.
        qemu_img(&["rebase", "-q", "-b", "", s(&top)]);
        assert_eq!(read_u64(&top, 8), 0);
        assert!(read_all(&open(&top).unwrap()) == want);
        // Commit a new overlay into it.
        let overlay = dir.path().join("overlay.qcow2");
        create(&overlay, &["-b", "top.qcow2", "-F", "qcow2"], "1M");
        qemu_io(&overlay, "qcow2", "write -P 0x03 0 4k");
        qemu_img(&["commit", "-q", s(&overlay)]);
        let mut want = want;
        want[..4096].fill(0x03);
        assert!(read_all(&open(&top).unwrap()) == want);
    }

    /// Random corruption of the metadata of v2, v3 and compressed images must end in an error
    /// or in an image that reads (as zeros where qemu would too), never in a panic.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn mutated_metadata_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("d.raw");
        let mut data = noise(64 * K as usize, 4);
        data.extend(pattern(64 * K, 0x61));
        std::fs::write(&raw, &data).unwrap();
        let mut images = Vec::new();
        for (name, args) in [
            ("v3", &["-o", "compat=1.1,cluster_size=4096"][..]),
            ("v2", &["-o", "compat=0.10,cluster_size=4096"][..]),
            ("c", &["-c", "-o", "cluster_size=4096"][..]),
        ] {
            let img = dir.path().join(format!("{name}.qcow2"));
            let mut all = vec!["convert", "-q", "-O", "qcow2"];
            all.extend_from_slice(args);
            all.extend_from_slice(&[s(&raw), s(&img)]);
            qemu_img(&all);
            let base = dir.path().join(format!("{name}-base.raw"));
            let top = dir.path().join(format!("{name}-top.qcow2"));
            std::fs::write(&base, &data).unwrap();
            create(
                &top,
                &["-b", &format!("{name}-base.raw"), "-F", "raw"],
                "128K",
            );
            qemu_io(&top, "qcow2", "write -P 0x62 4k 4k");
            images.push(img);
            images.push(top);
        }
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let target = dir.path().join("m.qcow2");
        let (mut opened, mut refused) = (0, 0);
        for img in &images {
            let pristine = std::fs::read(img).unwrap();
            let l1 = read_u64(img, 40) as usize;
            let l2 = (read_u64(img, l1 as u64) & L1_OFFSET_MASK) as usize;
            for _ in 0..400 {
                let mut bytes = pristine.clone();
                for _ in 0..1 + next() % 3 {
                    // Header, L1 table or L2 table; bit flips or random bytes.
                    let at = match next() % 3 {
                        0 => (next() % 256) as usize,
                        1 => l1 + (next() % 16) as usize,
                        _ => l2 + (next() % 256) as usize,
                    };
                    if next() % 2 == 0 {
                        bytes[at] ^= 1 << (next() % 8);
                    } else {
                        bytes[at] = next() as u8;
                    }
                }
                if next() % 8 == 0 {
                    bytes.truncate((next() % bytes.len() as u64) as usize);
                }
                std::fs::write(&target, &bytes).unwrap();
                match open(&target) {
                    Err(_) => refused += 1,
                    Ok(src) => {
                        opened += 1;
                        if src.size() > 64 * M {
                            continue;
                        }
                        let mut offset = 0;
                        while offset < src.size() {
                            match src.extent(offset, u64::MAX) {
                                Ok(e) => offset += e.len,
                                Err(_) => break,
                            }
                        }
                        let mut buf = vec![0u8; src.size() as usize];
                        let _ = src.read_at(0, &mut buf);
                    }
                }
            }
        }
        eprintln!("mutations: {opened} opened, {refused} refused");
        assert!(refused > 0 && opened > 0);
    }

    /// A plain v3 image with data in clusters 0 and 16 (64 KiB clusters).
    fn plain_image(dir: &Path, compat: &str) -> PathBuf {
        let img = dir.join(format!("plain-{compat}.qcow2"));
        create(&img, &["-o", &format!("compat={compat}")], "4M");
        qemu_io(&img, "qcow2", "write -P 0xab 0 64k");
        qemu_io(&img, "qcow2", "write -P 0xcd 1M 64k");
        open(&img).unwrap();
        img
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn corrupt_headers_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pristine = plain_image(dir.path(), "1.1");
        assert_eq!(
            read_u32(&pristine, 100),
            112,
            "header_length of qemu's v3 images"
        );
        let be32 = |v: u32| v.to_be_bytes().to_vec();
        let be64 = |v: u64| v.to_be_bytes().to_vec();
        type Patch = Vec<(u64, Vec<u8>)>;
        let invalid: Vec<(Patch, &[&str])> = vec![
            (vec![(0, b"QFI\0".to_vec())], &["not a qcow2 image"]),
            (vec![(20, be32(8))], &["cluster_bits 8"]),
            (vec![(20, be32(22))], &["cluster_bits 22"]),
            (
                vec![(24, be64(1 << 57))],
                &["virtual size 0x200000000000000"],
            ),
            (
                vec![(24, be64(1 << 40))],
                &["l1_size 1 is too small", "2048 L1 entries"],
            ),
            (vec![(32, be32(7))], &["crypt_method 7"]),
            (vec![(36, be32(0))], &["l1_size 0"]),
            (
                vec![(36, be32(1 << 24))],
                &["l1_size 16777216", "qemu's limit"],
            ),
            (
                vec![(40, be64(0x38000))],
                &["l1_table_offset 0x38000", "not aligned"],
            ),
            (
                vec![(40, be64(0))],
                &["l1_table_offset 0x0", "header cluster"],
            ),
            (
                vec![(40, be64(0x7fff_0000))],
                &["l1_table_offset 0x7fff0000", "end of the file"],
            ),
            (
                vec![(48, be64(0x18000))],
                &["refcount_table_offset 0x18000", "not aligned"],
            ),
            (
                vec![(48, be64(0))],
                &["refcount_table_offset 0x0", "header cluster"],
            ),
            (vec![(56, be32(0))], &["refcount_table_clusters is 0"]),
            (
                vec![(56, be32(1000))],
                &["refcount_table_clusters 1000", "qemu's limit"],
            ),
            (
                vec![(56, be32(100))],
                &["refcount table", "end of the file"],
            ),
            (vec![(72, be64(1))], &["dirty", "qemu-img check -r all"]),
            (vec![(72, be64(2))], &["corrupt"]),
            (vec![(72, be64(8))], &["bit 3", "compression_type is 0"]),
            (vec![(96, be32(7))], &["refcount_order 7"]),
            (vec![(100, be32(96))], &["header_length 96"]),
            (vec![(100, be32(108))], &["header_length 108"]),
            (vec![(104, vec![2])], &["compression_type 2"]),
            (
                vec![(8, be64(16)), (16, be32(5))],
                &["backing_file_offset 0x10", "overlaps"],
            ),
            (
                vec![(8, be64(0x200)), (16, be32(2000))],
                &["backing_file_size 2000"],
            ),
            (vec![(8, be64(0xfffe)), (16, be32(10))], &["first cluster"]),
        ];
        for (patches, needles) in invalid {
            let img = dir.path().join("t.qcow2");
            std::fs::copy(&pristine, &img).unwrap();
            for (at, bytes) in &patches {
                patch(&img, *at, bytes);
            }
            let reason = assert_invalid(open(&img), needles);
            eprintln!("{patches:?}: {reason}");
        }
        let unsupported: Vec<(Patch, &[&str])> = vec![
            (vec![(4, be32(4))], &["version 4"]),
            (vec![(32, be32(1))], &["encrypted", "AES"]),
            (vec![(32, be32(2))], &["encrypted", "LUKS"]),
            (vec![(72, be64(4))], &["external data file"]),
            (vec![(72, be64(16))], &["extended L2"]),
            (vec![(72, be64(1 << 5 | 1 << 40))], &["bit(s) 5, 40"]),
        ];
        for (patches, needles) in unsupported {
            let img = dir.path().join("t.qcow2");
            std::fs::copy(&pristine, &img).unwrap();
            for (at, bytes) in &patches {
                patch(&img, *at, bytes);
            }
            assert_unsupported(open(&img), needles);
        }
        // Shorter than a header.
        let img = dir.path().join("short.qcow2");
        std::fs::write(&img, b"QFI\xfb\0\0\0\x03").unwrap();
        assert_invalid(open(&img), &["too short"]);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn l2_entry_past_end_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = plain_image(dir.path(), "1.1");
        let len = std::fs::metadata(&img).unwrap().len();
        let at = l2_entry_pos(&img, M);
        patch(&img, at, &(L2_COPIED | 0x999_0000).to_be_bytes());
        assert_invalid(
            open(&img),
            &[&format!(
                "L2 entry for guest offset 0x100000 points to 0x9990000..0x99a0000, past the end \
                 of the file ({len:#x} bytes)"
            )],
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn l2_entry_bad_bits_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pristine = plain_image(dir.path(), "1.1");
        let entry = read_u64(&pristine, l2_entry_pos(&pristine, 0));
        let cases: [(u64, &[&str]); 4] = [
            (entry | 0x1000, &["guest offset 0x0", "not aligned"]),
            (entry | 0x2, &["reserved bits 0x2"]),
            (entry | 0x200, &["guest offset 0x0", "not aligned"]),
            (entry | 1 << 56, &["reserved bits 0x100000000000000"]),
        ];
        for (value, needles) in cases {
            let img = dir.path().join("t.qcow2");
            std::fs::copy(&pristine, &img).unwrap();
            patch(&img, l2_entry_pos(&img, 0), &value.to_be_bytes());
            assert_invalid(open(&img), needles);
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn l1_entry_past_end_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = plain_image(dir.path(), "1.1");
        patch(
            &img,
            l1_entry_pos(&img, 0),
            &(L2_COPIED | 0x7fff_0000).to_be_bytes(),
        );
        assert_invalid(
            open(&img),
            &["L2 table at 0x7fff0000", "past the end of the file"],
        );
        patch(
            &img,
            l1_entry_pos(&img, 0),
            &(L2_COPIED | 0x7fff_1000).to_be_bytes(),
        );
        assert_invalid(open(&img), &["not aligned"]);
        patch(
            &img,
            l1_entry_pos(&img, 0),
            &(L2_COPIED | 0x20000 | 1 << 60).to_be_bytes(),
        );
        assert_invalid(open(&img), &["L1 entry 0", "reserved bits"]);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let pristine = plain_image(dir.path(), "1.1");
        let host = read_u64(&pristine, l2_entry_pos(&pristine, M)) & L2_OFFSET_MASK;
        assert_eq!(std::fs::metadata(&pristine).unwrap().len(), host + 64 * K);
        // The whole last data cluster gone: refused.
        let img = dir.path().join("cut.qcow2");
        std::fs::copy(&pristine, &img).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(host)
            .unwrap();
        assert_invalid(
            open(&img),
            &["guest offset 0x100000", "past the end of the file"],
        );
        // Only its tail gone: qemu would read the missing bytes as zeros; mkomi refuses.
        std::fs::copy(&pristine, &img).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(host + 4 * K).unwrap();
        assert_invalid(open(&img), &["guest offset 0x100000", "truncated"]);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn v2_zero_flag_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = plain_image(dir.path(), "0.10");
        let at = l2_entry_pos(&img, 0);
        let entry = read_u64(&img, at);
        patch(&img, at, &(entry | L2_ZERO).to_be_bytes());
        assert_invalid(open(&img), &["zero flag", "version 2"]);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn compressed_entry_past_end_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("d.raw");
        std::fs::write(&raw, pattern(M, b'x')).unwrap();
        let img = dir.path().join("c.qcow2");
        qemu_img(&["convert", "-q", "-c", "-O", "qcow2", s(&raw), s(&img)]);
        let at = l2_entry_pos(&img, 0);
        let entry = read_u64(&img, at);
        assert_ne!(entry & L2_COMPRESSED, 0, "qemu-img -c did not compress");
        let len = std::fs::metadata(&img).unwrap().len();
        // 64 KiB clusters: x = 54; one extra sector.
        let beyond = L2_COMPRESSED | 1 << 54 | (len + 0x10000);
        patch(&img, at, &beyond.to_be_bytes());
        assert_invalid(
            open(&img),
            &["guest offset 0x0", "compressed data", "past the end"],
        );
        // Starting inside the file but running one sector past its end.
        let tail = L2_COMPRESSED | 3 << 54 | (len - 512);
        patch(&img, at, &tail.to_be_bytes());
        assert_invalid(open(&img), &["compressed data", "past the end"]);
        let header = L2_COMPRESSED | 100;
        patch(&img, at, &header.to_be_bytes());
        assert_invalid(open(&img), &["compressed data at 0x64", "header cluster"]);
        patch(&img, at, &(entry | L2_COPIED).to_be_bytes());
        assert_invalid(open(&img), &["bit 63"]);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn malformed_header_extensions_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pristine = plain_image(dir.path(), "1.1");
        // A feature name table entry cut short would make imago index out of bounds.
        let img = dir.path().join("t.qcow2");
        std::fs::copy(&pristine, &img).unwrap();
        let at = extension_pos(&img, EXT_FEATURE_NAMES);
        patch(&img, at + 4, &1u32.to_be_bytes());
        assert_invalid(open(&img), &["feature name table", "multiple of 48"]);
        // An extension longer than the first cluster.
        std::fs::copy(&pristine, &img).unwrap();
        patch(&img, at + 4, &0x0010_0000u32.to_be_bytes());
        assert_invalid(open(&img), &["extends past the first cluster"]);
        // No end marker anywhere in the first cluster.
        std::fs::copy(&pristine, &img).unwrap();
        let first = read_u32(&img, 100);
        let mut fake = Vec::new();
        while fake.len() < 64 * K as usize {
            fake.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            fake.extend_from_slice(&0u32.to_be_bytes());
        }
        patch(
            &img,
            u64::from(first),
            &fake[..64 * K as usize - first as usize],
        );
        assert_invalid(open(&img), &["no end-of-extensions marker"]);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn non_utf8_backing_name_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.raw"), pattern(M, 1)).unwrap();
        let top = dir.path().join("top.qcow2");
        create(&top, &["-b", "base.raw", "-F", "raw"], "1M");
        patch(&top, read_u64(&top, 8), b"\xff");
        assert_invalid(open(&top), &["not valid UTF-8"]);
    }
}
