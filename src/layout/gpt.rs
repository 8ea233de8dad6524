//! GPT partition tables, written from scratch and reproducibly (UEFI 2.10 §5.2.3 and §5.3),
//! for 512-byte logical sectors.
//!
//! [`plan`] turns a list of [`PartitionRequest`]s into a [`Table`]: every partition starts on a
//! 1 MiB boundary (the first at LBA 2048) and every GUID derives from a seed the way
//! systemd-repart derives them, so the same inputs always give the same bytes.
//! [`Table::primary`] and [`Table::backup`] are those bytes: the protective MBR, the primary
//! header and entry array at the start of the disk, the backup entry array and header at its end.
//! Nothing else of the disk is written here; the rest of the disk is expected to read as zeros
//! wherever no partition content is written.
//!
//! With a 16-byte seed equal to systemd-repart's `--seed=` (its 128-bit machine or seed ID),
//! the disk GUID and the partition GUIDs are those that systemd-repart gives the same partitions
//! in the same order (checked against systemd 252 in the tests).

use crate::ondisk::gpt::{self as codec, Entry, Guid, Header, PartitionType};
use hmac::{KeyInit, Mac};

/// The logical sector size this module writes for: 512 bytes (UEFI 2.10 §5.3.1 allows others;
/// we do not).
pub const SECTOR_SIZE: u64 = 512;

/// Partition alignment and size granularity: 1 MiB (2048 sectors). The first partition starts
/// at LBA 2048, as `sgdisk`, `fdisk` and systemd-repart place it.
pub const ALIGNMENT: u64 = 1 << 20;

/// The number of entries in the partition entry array, and so the most partitions a table holds
/// (UEFI 2.10 §5.3.2 requires room for at least 128; we write exactly 128).
pub const MAX_PARTITIONS: usize = 128;

/// The longest partition name, in UTF-16 code units (UEFI 2.10 §5.3.3, `PartitionName`: 72 bytes).
pub const MAX_LABEL_UNITS: usize = codec::NAME_UNITS;

/// The smallest disk [`plan`] accepts: 1 MiB ahead of the first partition (protective MBR,
/// primary header and entries, then padding to LBA 2048), 1 MiB for one partition, and the
/// backup entries and header (33 sectors).
pub const MIN_DISK_SIZE: u64 = 2 * ALIGNMENT + TAIL_SECTORS * SECTOR_SIZE;

/// Sectors in the partition entry array: 128 entries of 128 bytes.
const ENTRY_ARRAY_SECTORS: u64 = 32;
/// Sectors at the start of the disk: protective MBR, primary header, primary entry array.
const HEAD_SECTORS: u64 = 2 + ENTRY_ARRAY_SECTORS;
/// Sectors at the end of the disk: backup entry array, backup header.
const TAIL_SECTORS: u64 = ENTRY_ARRAY_SECTORS + 1;
/// Partition alignment in sectors.
const ALIGN_SECTORS: u64 = ALIGNMENT / SECTOR_SIZE;
/// The size of one partition entry we write (UEFI 2.10 §5.3.3).
const ENTRY_SIZE: usize = codec::ENTRY_SIZE;
/// Attribute bits 3 to 47, reserved by UEFI 2.10 §5.3.3: they must be zero.
const RESERVED_ATTRIBUTES: u64 = ((1 << 48) - 1) & !0b111;
/// The message whose HMAC gives the disk GUID, as systemd-repart's `derive_uuid(seed, "disk-uuid")`.
const DISK_GUID_MESSAGE: &[u8] = b"disk-uuid";

/// One partition to lay out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRequest {
    /// The partition type.
    pub kind: PartitionType,
    /// The partition name (`PartitionName`, UEFI 2.10 §5.3.3): at most 36 UTF-16 code units.
    pub label: String,
    /// The size in bytes, rounded up to a multiple of 1 MiB; `None` takes the rest of the disk
    /// (only the last partition may), rounded down to a multiple of 1 MiB.
    pub size: Option<u64>,
    /// The `Attributes` field (UEFI 2.10 §5.3.3): bit 0 required, bit 1 no block I/O
    /// protocol, bit 2 legacy BIOS bootable, bits 48–63 type-specific (for the discoverable
    /// partitions: 63 no-auto, 60 read-only, 59 grow-file-system). Bits 3–47 must be zero.
    pub attributes: u64,
}

impl PartitionRequest {
    /// A partition of `kind` named `label`, `size` bytes (`None`: the rest of the disk), with no
    /// attribute bits set.
    pub fn new(kind: PartitionType, label: &str, size: Option<u64>) -> Self {
        PartitionRequest {
            kind,
            label: label.to_owned(),
            size,
            attributes: 0,
        }
    }
}

/// A partition as laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The partition type.
    pub kind: PartitionType,
    /// The partition name.
    pub label: String,
    /// `UniquePartitionGUID` (UEFI 2.10 §5.3.3), derived from the seed (see [`plan`]).
    pub unique_guid: Guid,
    /// `StartingLBA`.
    pub first_lba: u64,
    /// `EndingLBA`, inclusive.
    pub last_lba: u64,
    /// `Attributes`.
    pub attributes: u64,
}

impl Partition {
    /// The partition's byte offset on the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba.saturating_mul(SECTOR_SIZE)
    }

    /// The partition's length in bytes.
    pub fn len(&self) -> u64 {
        self.last_lba
            .saturating_sub(self.first_lba)
            .saturating_add(1)
            .saturating_mul(SECTOR_SIZE)
    }

    /// Whether the partition is empty; never true for a partition from [`plan`].
    pub fn is_empty(&self) -> bool {
        self.last_lba < self.first_lba
    }
}

/// A complete GPT layout: what [`plan`] returns and [`Table::primary`]/[`Table::backup`] write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// The disk size in bytes, a multiple of 512.
    pub disk_size: u64,
    /// `DiskGUID` of the GPT header (UEFI 2.10 §5.3.2), derived from the seed (see [`plan`]).
    pub disk_guid: Guid,
    /// The partitions, in table order (entry `i` is partition number `i + 1`). [`plan`] gives at
    /// most 128; the writers ignore any beyond that.
    pub partitions: Vec<Partition>,
}

/// Why a layout cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The disk size is not a whole number of sectors.
    #[error("disk size {size} bytes is not a multiple of the {SECTOR_SIZE}-byte sector")]
    DiskSizeUnaligned {
        /// The disk size in bytes.
        size: u64,
    },
    /// The disk cannot hold the GPT structures and one 1 MiB partition.
    #[error("disk size {size} bytes is below the GPT minimum of {min} bytes (2 MiB + 33 sectors)")]
    DiskTooSmall {
        /// The disk size in bytes.
        size: u64,
        /// [`MIN_DISK_SIZE`].
        min: u64,
    },
    /// More partitions than entries in the table.
    #[error("{count} partitions requested but a GPT holds at most {MAX_PARTITIONS}")]
    TooManyPartitions {
        /// The number of partitions requested.
        count: usize,
    },
    /// A name longer than the entry's 36 UTF-16 code units.
    #[error(
        "partition {index} label '{label}' is {units} UTF-16 code units long, at most {MAX_LABEL_UNITS} fit"
    )]
    LabelTooLong {
        /// The partition number (1-based).
        index: usize,
        /// The label.
        label: String,
        /// Its length in UTF-16 code units.
        units: usize,
    },
    /// A name with a NUL character, which would end it early on disk.
    #[error("partition {index} label {label:?} contains a NUL character")]
    LabelHasNul {
        /// The partition number (1-based).
        index: usize,
        /// The label.
        label: String,
    },
    /// Attribute bits that UEFI reserves.
    #[error(
        "partition {index} '{label}' sets attributes {attributes:#018x}: bits 3 to 47 are reserved and must be zero"
    )]
    ReservedAttributes {
        /// The partition number (1-based).
        index: usize,
        /// The label.
        label: String,
        /// The requested attributes.
        attributes: u64,
    },
    /// A partition of size zero.
    #[error("partition {index} '{label}' has size 0")]
    ZeroSize {
        /// The partition number (1-based).
        index: usize,
        /// The label.
        label: String,
    },
    /// A rest-of-disk partition that is not the last one.
    #[error(
        "partition {index} '{label}' takes the rest of the disk but is not the last of {count} partitions"
    )]
    RestNotLast {
        /// The partition number (1-based).
        index: usize,
        /// The label.
        label: String,
        /// The number of partitions requested.
        count: usize,
    },
    /// A partition that does not fit in the space left on the disk.
    #[error(
        "partition {index} '{label}' needs {} but only {} remain",
        human_size(.needs),
        human_size(.remain)
    )]
    DoesNotFit {
        /// The partition number (1-based).
        index: usize,
        /// The label.
        label: String,
        /// Bytes needed: the size rounded up to 1 MiB (1 MiB for a rest-of-disk partition).
        needs: u64,
        /// Bytes left between the partition's start and the end of the usable area.
        remain: u64,
    },
}

/// Sizes for messages: `5 GiB` when exact, else `4.66 GiB (5000658944 bytes)`.
fn human_size(bytes: &u64) -> String {
    let bytes = *bytes;
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    match UNITS.iter().find(|(_, unit)| bytes >= *unit) {
        Some((name, unit)) if bytes.is_multiple_of(*unit) => format!("{} {name}", bytes / unit),
        Some((name, unit)) => format!("{:.2} {name} ({bytes} bytes)", bytes as f64 / *unit as f64),
        None if bytes == 1 => "1 byte".to_string(),
        None => format!("{bytes} bytes"),
    }
}

/// The smallest disk [`plan`] lays partitions of these sizes out on: 1 MiB before the first
/// (the primary table, then alignment), each size rounded up to 1 MiB, and 1 MiB after the last,
/// which holds the backup table and keeps the disk a whole number of MiB. `None` on overflow.
pub fn fit_disk_size(sizes: &[u64]) -> Option<u64> {
    let mut total = ALIGNMENT;
    for &s in sizes {
        total = total.checked_add(s.checked_next_multiple_of(ALIGNMENT)?)?;
    }
    total.checked_add(ALIGNMENT).map(|t| t.max(MIN_DISK_SIZE))
}

/// Lays out `requests` in order on a disk of `disk_size` bytes, with GUIDs derived from `seed`.
///
/// Layout: partition 1 starts at LBA 2048 and each next one right after the previous, so every
/// partition starts on a 1 MiB boundary; sizes are rounded up to 1 MiB. A `None` size (only the
/// last partition may have one) takes what is left up to `LastUsableLBA`, rounded down to a
/// multiple of 1 MiB (at least 1 MiB), so every partition also ends on a 1 MiB boundary and
/// `sgdisk -v` has nothing to say; up to 1 MiB − 33 sectors stay unused at the end of the disk.
/// (systemd-repart rounds to 4 KiB there instead, and libfdisk sets `FirstUsableLBA` to 2048,
/// which `sgdisk -v` warns about; we write the usual 34.) `LastUsableLBA` is the sector before
/// the backup entry array (UEFI 2.10 §5.3.2).
///
/// GUIDs, exactly as systemd-repart derives them (`partition_acquire_uuid` and `derive_uuid` in
/// systemd's `repart.c`), with `HMAC-SHA256` per RFC 2104 and `v4(x)` = the first 16 bytes of
/// `x` with the version nibble (high half of byte 6) set to 4 and the variant bits (top two of
/// byte 8) set to `10` (RFC 4122 §4.4), read in RFC 4122 byte order:
/// - partition unique GUID = `v4(HMAC-SHA256(key = seed, message = T ‖ LE64(k)))`, where `T` is
///   the 16 bytes of the type GUID in RFC 4122 (textual) order and `k` is the number of earlier
///   partitions of the same type; `LE64(k)` is left out when `k = 0`, so the first partition of a
///   type hashes 16 bytes and the second `T ‖ 01 00 00 00 00 00 00 00`;
/// - disk GUID = `v4(HMAC-SHA256(key = seed, message = "disk-uuid"))`, the 9 ASCII bytes without
///   a terminator. Partition messages are 16 or 24 bytes long, so no partition shares it.
///
/// systemd-repart's seed is a 128-bit machine or seed ID (`--seed=`), used as the 16-byte key;
/// ours is any byte string (the build passes a digest of the template and its inputs). A 16-byte
/// seed equal to repart's gives repart's GUIDs. systemd-repart replaces a derived partition GUID
/// that collides with another by a random one; for HMAC-SHA256 outputs that never happens, and
/// this function does not check.
pub fn plan(disk_size: u64, requests: &[PartitionRequest], seed: &[u8]) -> Result<Table, Error> {
    if !disk_size.is_multiple_of(SECTOR_SIZE) {
        return Err(Error::DiskSizeUnaligned { size: disk_size });
    }
    if disk_size < MIN_DISK_SIZE {
        return Err(Error::DiskTooSmall {
            size: disk_size,
            min: MIN_DISK_SIZE,
        });
    }
    if requests.len() > MAX_PARTITIONS {
        return Err(Error::TooManyPartitions {
            count: requests.len(),
        });
    }
    let end = last_usable_lba(disk_size).saturating_add(1);
    let mut next = ALIGN_SECTORS;
    let mut partitions: Vec<Partition> = Vec::with_capacity(requests.len());
    for (i, req) in requests.iter().enumerate() {
        let index = i + 1;
        let label = || req.label.clone();
        let units = req.label.encode_utf16().count();
        if units > MAX_LABEL_UNITS {
            return Err(Error::LabelTooLong {
                index,
                label: label(),
                units,
            });
        }
        if req.label.contains('\0') {
            return Err(Error::LabelHasNul {
                index,
                label: label(),
            });
        }
        if req.attributes & RESERVED_ATTRIBUTES != 0 {
            return Err(Error::ReservedAttributes {
                index,
                label: label(),
                attributes: req.attributes,
            });
        }
        let remain_sectors = end.saturating_sub(next);
        let does_not_fit = |needs: u64| Error::DoesNotFit {
            index,
            label: label(),
            needs,
            remain: remain_sectors.saturating_mul(SECTOR_SIZE),
        };
        let sectors = match req.size {
            Some(0) => {
                return Err(Error::ZeroSize {
                    index,
                    label: label(),
                });
            }
            Some(size) => {
                let rounded = size.div_ceil(ALIGNMENT).checked_mul(ALIGNMENT);
                match rounded {
                    Some(bytes) if bytes / SECTOR_SIZE <= remain_sectors => bytes / SECTOR_SIZE,
                    Some(bytes) => return Err(does_not_fit(bytes)),
                    None => return Err(does_not_fit(size)),
                }
            }
            None => {
                if index != requests.len() {
                    return Err(Error::RestNotLast {
                        index,
                        label: label(),
                        count: requests.len(),
                    });
                }
                let sectors = remain_sectors - remain_sectors % ALIGN_SECTORS;
                if sectors < ALIGN_SECTORS {
                    return Err(does_not_fit(ALIGNMENT));
                }
                sectors
            }
        };
        let instance = partitions.iter().filter(|p| p.kind == req.kind).count() as u64;
        partitions.push(Partition {
            kind: req.kind,
            label: req.label.clone(),
            unique_guid: partition_guid(seed, req.kind, instance),
            first_lba: next,
            last_lba: next + sectors - 1,
            attributes: req.attributes,
        });
        next += sectors;
    }
    Ok(Table {
        disk_size,
        disk_guid: disk_guid(seed),
        partitions,
    })
}

/// `LastUsableLBA` for a disk of `disk_size` bytes: the sector before the backup entry array.
fn last_usable_lba(disk_size: u64) -> u64 {
    (disk_size / SECTOR_SIZE).saturating_sub(TAIL_SECTORS + 1)
}

/// The unique GUID of the partition of type `kind` preceded by `instance` others of that type.
fn partition_guid(seed: &[u8], kind: PartitionType, instance: u64) -> Guid {
    let type_bytes = kind.guid().0;
    let counter = instance.to_le_bytes();
    let message: &[&[u8]] = if instance == 0 {
        &[&type_bytes]
    } else {
        &[&type_bytes, &counter]
    };
    v4_guid(hmac_sha256(seed, message))
}

/// The disk GUID.
fn disk_guid(seed: &[u8]) -> Guid {
    v4_guid(hmac_sha256(seed, &[DISK_GUID_MESSAGE]))
}

/// The first 16 bytes of `digest` marked as a version 4, RFC 4122 variant UUID, as systemd's
/// `id128_make_v4_uuid` does.
fn v4_guid(digest: [u8; 32]) -> Guid {
    let mut bytes = [0u8; 16];
    for (out, byte) in bytes.iter_mut().zip(digest) {
        *out = byte;
    }
    if let Some(b) = bytes.get_mut(6) {
        *b = (*b & 0x0f) | 0x40;
    }
    if let Some(b) = bytes.get_mut(8) {
        *b = (*b & 0x3f) | 0x80;
    }
    Guid(bytes)
}

/// HMAC-SHA256 (RFC 2104, FIPS 198-1) of the concatenation of `message`.
fn hmac_sha256(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length (a longer one is hashed first, RFC 2104 §2): the crate's
    // `new_from_slice` has no error to return, and its own `new` relies on that the same way.
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC accepts keys of every length");
    for part in message {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Copies `bytes` into `buf` at `at`; the callers' offsets are constants inside `buf`.
fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

impl Table {
    /// The disk size in sectors.
    fn sectors(&self) -> u64 {
        self.disk_size / SECTOR_SIZE
    }

    /// `FirstUsableLBA`: 34, the sector after the primary partition entry array.
    pub fn first_usable_lba(&self) -> u64 {
        HEAD_SECTORS
    }

    /// `LastUsableLBA`: the sector before the backup partition entry array.
    pub fn last_usable_lba(&self) -> u64 {
        last_usable_lba(self.disk_size)
    }

    /// The first 34 sectors of the disk (LBA 0 to 33), 17408 bytes: the protective MBR
    /// (UEFI 2.10 §5.2.3), the primary GPT header at LBA 1 (§5.3.2) and the primary partition
    /// entry array at LBA 2 to 33 (§5.3.3).
    ///
    /// The protective MBR is zero but for one partition record (§5.2.3): boot indicator 0,
    /// starting CHS 0x000200, OS type 0xEE, ending CHS 0xFFFFFF, starting LBA 1, size
    /// min(disk sectors − 1, 0xFFFFFFFF); and the signature 0x55 0xAA at bytes 510–511. The CHS
    /// values are the ones the spec gives and libfdisk writes.
    pub fn primary(&self) -> Vec<u8> {
        let entries = self.entry_array();
        let last = self.sectors().saturating_sub(1);
        let mut out = Vec::with_capacity((HEAD_SECTORS * SECTOR_SIZE) as usize);
        out.extend_from_slice(&self.protective_mbr());
        out.extend_from_slice(&self.header(1, last, 2, codec::crc32(&entries)));
        out.extend_from_slice(&entries);
        out
    }

    /// The backup partition entry array and the backup GPT header (UEFI 2.10 §5.3.2: the
    /// header in the last LBA, the entries right before it): the byte offset at which to write
    /// them and the 33 sectors (16896 bytes) to write.
    pub fn backup(&self) -> (u64, Vec<u8>) {
        let entries = self.entry_array();
        let last = self.sectors().saturating_sub(1);
        let entries_lba = last.saturating_sub(ENTRY_ARRAY_SECTORS);
        let header = self.header(last, 1, entries_lba, codec::crc32(&entries));
        let mut out = entries;
        out.extend_from_slice(&header);
        (entries_lba.saturating_mul(SECTOR_SIZE), out)
    }

    /// LBA 0: the protective MBR (UEFI 2.10 §5.2.3).
    fn protective_mbr(&self) -> Vec<u8> {
        let mut mbr = vec![0u8; SECTOR_SIZE as usize];
        let size = u32::try_from(self.sectors().saturating_sub(1)).unwrap_or(u32::MAX);
        let mut record = [0u8; 16];
        // BootIndicator 0; StartingCHS 0x000200 (head 0, sector 2, cylinder 0).
        put(&mut record, 1, &[0x00, 0x02, 0x00]);
        // OSType: GPT protective.
        put(&mut record, 4, &[0xee]);
        // EndingCHS: not representable, 0xFFFFFF.
        put(&mut record, 5, &[0xff, 0xff, 0xff]);
        put(&mut record, 8, &1u32.to_le_bytes());
        put(&mut record, 12, &size.to_le_bytes());
        put(&mut mbr, 446, &record);
        put(&mut mbr, 510, &[0x55, 0xaa]);
        mbr
    }

    /// A GPT header sector (UEFI 2.10 §5.3.2) with its `HeaderCRC32`.
    fn header(
        &self,
        my_lba: u64,
        alternate_lba: u64,
        entries_lba: u64,
        entries_crc: u32,
    ) -> Vec<u8> {
        Header {
            revision: codec::REVISION,
            header_size: codec::HEADER_SIZE,
            header_crc: 0,
            my_lba,
            alternate_lba,
            first_usable: self.first_usable_lba(),
            last_usable: self.last_usable_lba(),
            disk_guid: self.disk_guid,
            entries_lba,
            entry_count: MAX_PARTITIONS as u32,
            entry_size: ENTRY_SIZE as u32,
            entries_crc,
        }
        .encode(SECTOR_SIZE as usize)
    }

    /// The partition entry array (UEFI 2.10 §5.3.3): 128 entries of 128 bytes,
    /// unused ones all zero.
    fn entry_array(&self) -> Vec<u8> {
        let mut array = vec![0u8; MAX_PARTITIONS * ENTRY_SIZE];
        for (entry, p) in array.chunks_exact_mut(ENTRY_SIZE).zip(&self.partitions) {
            Entry {
                type_guid: p.kind.guid(),
                unique_guid: p.unique_guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                attributes: p.attributes,
                name: p.label.clone(),
            }
            .encode(entry);
        }
        array
    }
}

#[cfg(test)]
mod fit_tests {
    use super::*;

    #[test]
    fn a_fitted_disk_holds_its_partitions_and_one_mib_less_does_not() {
        let sizes = [128 << 20, (300 << 20) + 5];
        let size = fit_disk_size(&sizes).unwrap();
        assert_eq!(size, (1 + 128 + 301 + 1) << 20);
        let reqs: Vec<PartitionRequest> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| PartitionRequest {
                kind: crate::ondisk::gpt::PartitionType::LinuxGeneric,
                label: format!("p{i}"),
                size: Some(s),
                attributes: 0,
            })
            .collect();
        assert!(plan(size, &reqs, b"seed").is_ok());
        assert!(plan(size - ALIGNMENT, &reqs, b"seed").is_err());
        assert_eq!(fit_disk_size(&[u64::MAX]), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ondisk::gpt::crc32;
    use std::fs::File;
    use std::io::{Seek, SeekFrom, Write};
    use std::path::Path;
    use std::process::Command;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn req(kind: PartitionType, label: &str, size: Option<u64>) -> PartitionRequest {
        PartitionRequest::new(kind, label, size)
    }

    fn guid(s: &str) -> Guid {
        Guid::parse(s).unwrap()
    }

    /// ESP, two roots of the same type and a rest-of-disk data partition.
    fn sample() -> Vec<PartitionRequest> {
        vec![
            req(PartitionType::Esp, "esp", Some(100 * MIB)),
            req(PartitionType::RootX86_64, "root", Some(200 * MIB)),
            req(PartitionType::RootX86_64, "root-b", Some(200 * MIB)),
            req(PartitionType::LinuxGeneric, "data", None),
        ]
    }

    /// The seed `systemd-repart --seed=0123456789abcdef0123456789abcdef` uses as HMAC key.
    fn repart_seed() -> Vec<u8> {
        guid("01234567-89ab-cdef-0123-456789abcdef").0.to_vec()
    }

    fn write_disk(path: &Path, table: &Table) {
        let mut f = File::create(path).unwrap();
        f.set_len(table.disk_size).unwrap();
        f.write_all(&table.primary()).unwrap();
        let (offset, bytes) = table.backup();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&bytes).unwrap();
    }

    fn sgdisk(args: &[&str], path: &Path) -> String {
        let out = Command::new("sgdisk")
            .args(args)
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run sgdisk (gdisk installed?): {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "sgdisk {args:?} failed:\n{text}");
        text
    }

    /// `sgdisk -v`, `-p` and `-i N` agree with `table` in every field we set.
    fn check_with_sgdisk(table: &Table) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        write_disk(&path, table);

        let verify = sgdisk(&["-v"], &path);
        assert!(verify.contains("No problems found"), "sgdisk -v:\n{verify}");
        for bad in ["Problem", "Warning", "Caution", "corrupt", "Invalid"] {
            assert!(!verify.contains(bad), "sgdisk -v:\n{verify}");
        }

        let print = sgdisk(&["-p"], &path);
        let sectors = table.disk_size / SECTOR_SIZE;
        assert!(print.contains(&format!(": {sectors} sectors,")), "{print}");
        let disk_id = format!(
            "Disk identifier (GUID): {}",
            table.disk_guid.to_string().to_uppercase()
        );
        assert!(print.contains(&disk_id), "{print}");
        assert!(
            print.contains("Partition table holds up to 128 entries"),
            "{print}"
        );
        let usable = format!(
            "First usable sector is 34, last usable sector is {}",
            sectors - 34
        );
        assert!(print.contains(&usable), "{print}");
        let rows: Vec<Vec<&str>> = print
            .lines()
            .skip_while(|l| !l.starts_with("Number"))
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .filter(|w: &Vec<&str>| !w.is_empty())
            .collect();
        assert_eq!(rows.len(), table.partitions.len(), "{print}");
        for (i, (row, p)) in rows.iter().zip(&table.partitions).enumerate() {
            assert_eq!(row[0], (i + 1).to_string(), "{print}");
            assert_eq!(row[1], p.first_lba.to_string(), "{print}");
            assert_eq!(row[2], p.last_lba.to_string(), "{print}");
            assert_eq!(row[6..].join(" "), p.label, "{print}");
        }

        for (i, p) in table.partitions.iter().enumerate() {
            let info = sgdisk(&["-i", &(i + 1).to_string()], &path);
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in:\n{info}"))
                    .trim()
                    .to_string()
            };
            let type_code = field("Partition GUID code:");
            assert!(
                type_code.starts_with(&p.kind.guid().to_string().to_uppercase()),
                "{info}"
            );
            assert_eq!(
                field("Partition unique GUID:"),
                p.unique_guid.to_string().to_uppercase()
            );
            assert!(field("First sector:").starts_with(&format!("{} ", p.first_lba)));
            assert!(field("Last sector:").starts_with(&format!("{} ", p.last_lba)));
            assert!(
                field("Partition size:")
                    .starts_with(&format!("{} sectors ", p.len() / SECTOR_SIZE)),
                "{info}"
            );
            assert_eq!(field("Attribute flags:"), format!("{:016X}", p.attributes));
            assert_eq!(field("Partition name:"), format!("'{}'", p.label));
        }
    }

    #[test]
    fn hmac_sha256_rfc4231() {
        // Test case 1.
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], &[b"Hi There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2, with the message split in two.
        assert_eq!(
            hex::encode(hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn partition_types() {
        for t in PartitionType::ALL {
            assert_eq!(PartitionType::from_name(t.name()), Some(t));
        }
        assert_eq!(PartitionType::from_name("root"), None);
        assert_eq!(PartitionType::from_name("ESP"), None);
        let expect = [
            (PartitionType::Esp, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            (
                PartitionType::Xbootldr,
                "bc13c2ff-59e6-4262-a352-b275fd6f7172",
            ),
            (
                PartitionType::RootX86_64,
                "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            ),
            (
                PartitionType::RootX86,
                "44479540-f297-41b2-9af7-d131d5f0458a",
            ),
            (
                PartitionType::UsrX86_64,
                "8484680c-9521-48c6-9c11-b0720656f69e",
            ),
            (
                PartitionType::UsrX86,
                "75250d76-8cc6-458e-bd66-bd47cc81a812",
            ),
            (
                PartitionType::LinuxGeneric,
                "0fc63daf-8483-4772-8e79-3d69d8477de4",
            ),
            (PartitionType::Swap, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
            (
                PartitionType::BiosBoot,
                "21686148-6449-6e6f-744e-656564454649",
            ),
        ];
        assert_eq!(expect.len(), PartitionType::ALL.len());
        for (t, g) in expect {
            assert_eq!(t.guid().to_string(), g);
        }
    }

    /// The GUIDs and the layout systemd-repart 252 wrote for `sample()` on a 1 GiB image with
    /// `--empty=create --size=1G --seed=0123456789abcdef0123456789abcdef` (definitions with
    /// `Type=`, `Label=` and equal `SizeMinBytes=`/`SizeMaxBytes=` for the sized ones); read
    /// back with `sgdisk`. repart ended the last partition at LBA 2097111 (4 KiB grain), we end
    /// it at 2095103 (1 MiB grain).
    #[test]
    fn guids_and_layout_match_systemd_repart() {
        let table = plan(GIB, &sample(), &repart_seed()).unwrap();
        assert_eq!(
            table.disk_guid,
            guid("6913f4b6-6690-4a57-a202-f1b53c56dbdf")
        );
        let expect = [
            ("b2d552b0-45db-4678-b34f-066168609d1a", 2048, 206847),
            ("9e90c9c3-c7e8-44f2-bf19-9ae2689de795", 206848, 616447),
            ("7f48db1a-b817-4c23-a5d2-cde068eb2163", 616448, 1026047),
            ("3ed50935-b785-4a2a-879d-dd4c00395d47", 1026048, 2095103),
        ];
        assert_eq!(table.partitions.len(), expect.len());
        for (p, (g, first, last)) in table.partitions.iter().zip(expect) {
            assert_eq!(p.unique_guid, guid(g), "{}", p.label);
            assert_eq!((p.first_lba, p.last_lba), (first, last), "{}", p.label);
        }
    }

    /// The same derivation spelled out with the primitives, for the record.
    #[test]
    fn guid_derivation_spelled_out() {
        let seed = b"any byte string, not only 16 bytes";
        let table = plan(GIB, &sample(), seed).unwrap();
        let mark = |d: [u8; 32]| {
            let mut g = [0u8; 16];
            g.copy_from_slice(&d[..16]);
            g[6] = (g[6] & 0x0f) | 0x40;
            g[8] = (g[8] & 0x3f) | 0x80;
            Guid(g)
        };
        let root = PartitionType::RootX86_64.guid().0;
        let mut root_1 = root.to_vec();
        root_1.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(table.disk_guid, mark(hmac_sha256(seed, &[b"disk-uuid"])));
        assert_eq!(
            table.partitions[0].unique_guid,
            mark(hmac_sha256(seed, &[&PartitionType::Esp.guid().0]))
        );
        assert_eq!(
            table.partitions[1].unique_guid,
            mark(hmac_sha256(seed, &[&root]))
        );
        assert_eq!(
            table.partitions[2].unique_guid,
            mark(hmac_sha256(seed, &[&root_1]))
        );
        for g in
            std::iter::once(table.disk_guid).chain(table.partitions.iter().map(|p| p.unique_guid))
        {
            assert_eq!(g.0[6] >> 4, 4, "{g}");
            assert_eq!(g.0[8] >> 6, 0b10, "{g}");
        }
    }

    /// GUIDs pinned from the hand-written HMAC-SHA256 this module had before it used the `hmac`
    /// crate: seeds shorter than, equal to and longer than SHA-256's 64-byte block (a longer key
    /// is hashed first, RFC 2104 §2), and the empty seed.
    #[test]
    fn guids_pinned() {
        let requests = [
            req(PartitionType::Esp, "esp", Some(MIB)),
            req(PartitionType::Esp, "esp2", None),
        ];
        let cases: [(&[u8], [&str; 3]); 4] = [
            (
                b"any byte string, not only 16 bytes",
                [
                    "212f2ba2-e4c9-48de-a9c7-b5ae37c81f1e",
                    "e7d92d36-0205-4178-a0ba-2ef37f7cf760",
                    "e1e80300-8d00-413e-b85a-aca428f4e769",
                ],
            ),
            (
                &[0xa5; 100],
                [
                    "c960a7d2-8807-4c62-b7d0-75ac49c93f9f",
                    "20bdc650-f92c-46a7-a8b4-e912f431a94b",
                    "c5362b08-e05e-489f-8f7c-1fd67581ac70",
                ],
            ),
            (
                &[7; 64],
                [
                    "02e6f507-f1b2-4aa6-890e-e9f7c4e8b684",
                    "7e1e7cee-e7e8-4892-8f39-df33e920f2b7",
                    "a922ce35-0c33-47da-bc93-d71b33fa3bff",
                ],
            ),
            (
                b"",
                [
                    "a8dbca6f-77a6-485c-8c67-b653758a8928",
                    "da584991-3b7c-4868-a2f6-f82b79dc70db",
                    "ce6598bf-3bce-4d57-8fc3-380f96999bd3",
                ],
            ),
        ];
        for (seed, [disk, first, second]) in cases {
            let t = plan(GIB, &requests, seed).unwrap();
            assert_eq!(t.disk_guid, guid(disk), "seed {seed:?}");
            assert_eq!(t.partitions[0].unique_guid, guid(first), "seed {seed:?}");
            assert_eq!(t.partitions[1].unique_guid, guid(second), "seed {seed:?}");
        }
    }

    #[test]
    fn same_seed_same_bytes() {
        let a = plan(GIB, &sample(), b"seed").unwrap();
        let b = plan(GIB, &sample(), b"seed").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.primary(), b.primary());
        assert_eq!(a.backup(), b.backup());
    }

    #[test]
    fn different_seed_different_guids() {
        let a = plan(GIB, &sample(), b"seed").unwrap();
        let b = plan(GIB, &sample(), b"seed2").unwrap();
        assert_ne!(a.disk_guid, b.disk_guid);
        for (p, q) in a.partitions.iter().zip(&b.partitions) {
            assert_ne!(p.unique_guid, q.unique_guid);
            assert_eq!((p.first_lba, p.last_lba), (q.first_lba, q.last_lba));
        }
        assert_ne!(a.primary(), b.primary());
    }

    #[test]
    fn same_type_partitions_get_distinct_guids() {
        let requests = vec![
            req(PartitionType::RootX86_64, "a", Some(MIB)),
            req(PartitionType::RootX86_64, "b", Some(MIB)),
            req(PartitionType::RootX86_64, "c", Some(MIB)),
            req(PartitionType::UsrX86_64, "d", Some(MIB)),
        ];
        let t = plan(GIB, &requests, b"seed").unwrap();
        let mut guids: Vec<Guid> = t.partitions.iter().map(|p| p.unique_guid).collect();
        guids.push(t.disk_guid);
        let mut unique = guids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), guids.len());
        // The first of a type keeps its GUID whatever follows; a label does not enter it.
        let alone = plan(
            GIB,
            &[req(PartitionType::RootX86_64, "other", None)],
            b"seed",
        )
        .unwrap();
        assert_eq!(alone.partitions[0].unique_guid, t.partitions[0].unique_guid);
        // The instance counts partitions of the same type only.
        let mixed = plan(
            GIB,
            &[
                req(PartitionType::UsrX86_64, "d", Some(MIB)),
                req(PartitionType::RootX86_64, "a", Some(MIB)),
                req(PartitionType::RootX86_64, "b", Some(MIB)),
            ],
            b"seed",
        )
        .unwrap();
        assert_eq!(mixed.partitions[0].unique_guid, t.partitions[3].unique_guid);
        assert_eq!(mixed.partitions[2].unique_guid, t.partitions[1].unique_guid);
    }

    #[test]
    fn layout_rounds_and_aligns() {
        let requests = vec![
            req(PartitionType::BiosBoot, "bios", Some(1)),
            req(PartitionType::Esp, "esp", Some(MIB + 1)),
            req(PartitionType::Swap, "swap", Some(3 * MIB)),
            req(PartitionType::RootX86_64, "root", None),
        ];
        let disk = GIB + 7 * 512;
        let t = plan(disk, &requests, b"s").unwrap();
        let spans: Vec<(u64, u64)> = t.partitions.iter().map(|p| (p.offset(), p.len())).collect();
        let rest_start = 7 * MIB;
        let usable_end = disk - 33 * 512;
        let rest_len = (usable_end - rest_start) / MIB * MIB;
        assert_eq!(
            spans,
            [
                (MIB, MIB),
                (2 * MIB, 2 * MIB),
                (4 * MIB, 3 * MIB),
                (rest_start, rest_len)
            ]
        );
        assert_eq!(t.last_usable_lba(), disk / 512 - 34);
        assert!(t.partitions.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn smallest_disk_and_fully_used_disk() {
        let t = plan(MIN_DISK_SIZE, &[req(PartitionType::Esp, "esp", None)], b"").unwrap();
        assert_eq!(
            (t.partitions[0].first_lba, t.partitions[0].last_lba),
            (2048, 4095)
        );
        let t = plan(
            MIN_DISK_SIZE,
            &[req(PartitionType::Esp, "esp", Some(MIB))],
            b"",
        )
        .unwrap();
        assert_eq!(t.partitions[0].last_lba, t.last_usable_lba());
        let t = plan(MIN_DISK_SIZE, &[], b"").unwrap();
        assert!(t.partitions.is_empty());
    }

    #[test]
    fn primary_and_backup_structures() {
        let mut requests = sample();
        requests[1].attributes = 1 << 59 | 1 << 63 | 0b101;
        let disk = GIB + 7 * 512;
        let t = plan(disk, &requests, b"structures").unwrap();
        let sectors = disk / 512;
        let primary = t.primary();
        assert_eq!(primary.len(), 34 * 512);

        // Protective MBR.
        let mbr = &primary[..512];
        assert!(mbr[..446].iter().all(|&b| b == 0));
        assert_eq!(
            mbr[446..462],
            [
                0, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0x06, 0, 0x20, 0
            ]
        );
        assert_eq!(
            u32::from_le_bytes(mbr[458..462].try_into().unwrap()) as u64,
            sectors - 1
        );
        assert!(mbr[462..510].iter().all(|&b| b == 0));
        assert_eq!(mbr[510..], [0x55, 0xaa]);

        let (offset, backup) = t.backup();
        assert_eq!(offset, (sectors - 33) * 512);
        assert_eq!(backup.len(), 33 * 512);
        assert_eq!(primary[1024..], backup[..16384], "same entry arrays");

        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let entries = &primary[1024..];
        for (header, my, alt, entries_lba) in [
            (&primary[512..1024], 1, sectors - 1, 2),
            (&backup[16384..], sectors - 1, 1, sectors - 33),
        ] {
            assert_eq!(&header[..8], b"EFI PART");
            assert_eq!(u32_at(header, 8), 0x0001_0000);
            assert_eq!(u32_at(header, 12), 92);
            let mut zeroed = header[..92].to_vec();
            zeroed[16..20].fill(0);
            assert_eq!(u32_at(header, 16), crc32(&zeroed));
            assert_eq!(u32_at(header, 20), 0);
            assert_eq!(u64_at(header, 24), my);
            assert_eq!(u64_at(header, 32), alt);
            assert_eq!(u64_at(header, 40), 34);
            assert_eq!(u64_at(header, 48), sectors - 34);
            assert_eq!(header[56..72], t.disk_guid.to_gpt_bytes());
            assert_eq!(u64_at(header, 72), entries_lba);
            assert_eq!(u32_at(header, 80), 128);
            assert_eq!(u32_at(header, 84), 128);
            assert_eq!(u32_at(header, 88), crc32(entries));
            assert!(header[92..].iter().all(|&b| b == 0));
        }

        for (i, p) in t.partitions.iter().enumerate() {
            let e = &entries[i * 128..(i + 1) * 128];
            assert_eq!(
                Guid::from_gpt_bytes(e[..16].try_into().unwrap()),
                p.kind.guid()
            );
            assert_eq!(
                Guid::from_gpt_bytes(e[16..32].try_into().unwrap()),
                p.unique_guid
            );
            assert_eq!(u64_at(e, 32), p.first_lba);
            assert_eq!(u64_at(e, 40), p.last_lba);
            assert_eq!(u64_at(e, 48), p.attributes);
            let name: Vec<u16> = e[56..]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            assert_eq!(String::from_utf16(&name).unwrap(), p.label);
        }
        assert!(entries[t.partitions.len() * 128..].iter().all(|&b| b == 0));
    }

    #[test]
    fn protective_mbr_size_saturates() {
        let disk = 3 << 40; // 3 TiB: more sectors than 32 bits count.
        let t = plan(disk, &sample(), b"big").unwrap();
        assert_eq!(t.primary()[458..462], [0xff; 4]);
        let t = plan((1 << 32) * 512, &sample(), b"edge").unwrap();
        assert_eq!(t.primary()[458..462], [0xff; 4]);
        let t = plan((1 << 32) * 512 - 512, &sample(), b"edge").unwrap();
        assert_eq!(t.primary()[458..462], [0xfe, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn label_limits() {
        // 18 characters outside the BMP are 36 UTF-16 code units: the most that fits.
        let clef = "\u{1d11e}".repeat(18);
        assert_eq!(clef.encode_utf16().count(), 36);
        let t = plan(GIB, &[req(PartitionType::LinuxGeneric, &clef, None)], b"").unwrap();
        let entry = &t.primary()[1024..1152];
        let units: Vec<u16> = entry[56..]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(units, clef.encode_utf16().collect::<Vec<_>>());
        assert!(
            plan(
                GIB,
                &[req(PartitionType::LinuxGeneric, &"x".repeat(36), None)],
                b""
            )
            .is_ok()
        );
        assert!(plan(GIB, &[req(PartitionType::LinuxGeneric, "", None)], b"").is_ok());
    }

    #[test]
    fn errors() {
        let e = |disk: u64, requests: &[PartitionRequest]| plan(disk, requests, b"").unwrap_err();
        let one = [req(PartitionType::Esp, "esp", Some(MIB))];

        assert_eq!(e(GIB + 1, &one), Error::DiskSizeUnaligned { size: GIB + 1 });
        assert_eq!(
            e(GIB + 1, &one).to_string(),
            "disk size 1073741825 bytes is not a multiple of the 512-byte sector"
        );
        assert_eq!(
            e(MIN_DISK_SIZE - 512, &one),
            Error::DiskTooSmall {
                size: MIN_DISK_SIZE - 512,
                min: MIN_DISK_SIZE
            }
        );
        assert_eq!(
            e(0, &[]).to_string(),
            "disk size 0 bytes is below the GPT minimum of 2114048 bytes (2 MiB + 33 sectors)"
        );

        let many: Vec<PartitionRequest> = (0..129)
            .map(|i| req(PartitionType::LinuxGeneric, &format!("p{i}"), Some(MIB)))
            .collect();
        assert_eq!(e(GIB, &many), Error::TooManyPartitions { count: 129 });
        assert_eq!(
            e(GIB, &many).to_string(),
            "129 partitions requested but a GPT holds at most 128"
        );

        let long = "\u{1d11e}".repeat(18) + "x";
        let err = e(
            GIB,
            &[
                one[0].clone(),
                req(PartitionType::LinuxGeneric, &long, None),
            ],
        );
        assert!(
            matches!(
                err,
                Error::LabelTooLong {
                    index: 2,
                    units: 37,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            e(
                GIB,
                &[req(PartitionType::LinuxGeneric, &"y".repeat(37), None)]
            )
            .to_string(),
            format!(
                "partition 1 label '{}' is 37 UTF-16 code units long, at most 36 fit",
                "y".repeat(37)
            )
        );
        let err = e(GIB, &[req(PartitionType::LinuxGeneric, "a\0b", None)]);
        assert_eq!(
            err.to_string(),
            "partition 1 label \"a\\0b\" contains a NUL character"
        );

        let mut reserved = req(PartitionType::RootX86_64, "root", None);
        reserved.attributes = 1 << 3;
        assert_eq!(
            e(GIB, &[reserved.clone()]).to_string(),
            "partition 1 'root' sets attributes 0x0000000000000008: bits 3 to 47 are reserved and must be zero"
        );
        reserved.attributes = 1 << 47;
        assert!(matches!(
            e(GIB, &[reserved]),
            Error::ReservedAttributes { index: 1, .. }
        ));

        assert_eq!(
            e(
                GIB,
                &[one[0].clone(), req(PartitionType::Swap, "swap", Some(0))]
            )
            .to_string(),
            "partition 2 'swap' has size 0"
        );

        let err = e(
            GIB,
            &[
                req(PartitionType::RootX86_64, "root", None),
                req(PartitionType::Swap, "swap", Some(MIB)),
            ],
        );
        assert_eq!(
            err.to_string(),
            "partition 1 'root' takes the rest of the disk but is not the last of 2 partitions"
        );

        // 3 GiB used ahead of a 5 GiB root on a 5 GiB + 1 MiB + 33-sector disk leave exactly
        // 2 GiB.
        let disk = 5 * GIB + MIB + 33 * 512;
        let err = e(
            disk,
            &[
                req(PartitionType::Esp, "esp", Some(GIB)),
                req(PartitionType::Swap, "swap", Some(2 * GIB)),
                req(PartitionType::RootX86_64, "root", Some(5 * GIB)),
            ],
        );
        assert_eq!(
            err,
            Error::DoesNotFit {
                index: 3,
                label: "root".into(),
                needs: 5 * GIB,
                remain: 2 * GIB
            }
        );
        assert_eq!(
            err.to_string(),
            "partition 3 'root' needs 5 GiB but only 2 GiB remain"
        );

        // Sizes are rounded up before they are compared: 1 byte more than fits is refused.
        let err = e(
            GIB,
            &[req(
                PartitionType::RootX86_64,
                "root",
                Some(GIB - 2 * MIB + 1),
            )],
        );
        assert_eq!(
            err.to_string(),
            "partition 1 'root' needs 1023 MiB but only 1022.98 MiB (1072676352 bytes) remain"
        );
        assert!(
            plan(
                GIB,
                &[req(PartitionType::RootX86_64, "root", Some(GIB - 2 * MIB))],
                b""
            )
            .is_ok()
        );

        // A size so large that rounding it would overflow.
        let err = e(
            GIB,
            &[req(PartitionType::RootX86_64, "root", Some(u64::MAX))],
        );
        assert!(
            matches!(
                err,
                Error::DoesNotFit {
                    needs: u64::MAX,
                    ..
                }
            ),
            "{err:?}"
        );

        // A rest-of-disk partition with less than 1 MiB left.
        let err = e(
            MIN_DISK_SIZE,
            &[
                one[0].clone(),
                req(PartitionType::LinuxGeneric, "data", None),
            ],
        );
        assert_eq!(
            err.to_string(),
            "partition 2 'data' needs 1 MiB but only 0 bytes remain"
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn sgdisk_accepts_1_gib() {
        let mut requests = sample();
        requests[1].attributes = 1 << 59;
        requests[2].attributes = 1 << 63 | 1 << 60;
        requests[0].attributes = 0b1;
        check_with_sgdisk(&plan(GIB, &requests, b"1 GiB").unwrap());
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn sgdisk_accepts_odd_size_and_every_type() {
        let mut requests: Vec<PartitionRequest> = PartitionType::ALL
            .iter()
            .map(|&t| req(t, t.name(), Some(3 * MIB + 5)))
            .collect();
        requests.push(req(PartitionType::RootX86_64, "root-b", None));
        check_with_sgdisk(&plan(GIB + 512 * 7, &requests, b"odd").unwrap());
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn sgdisk_accepts_128_partitions() {
        let requests: Vec<PartitionRequest> = (0..128)
            .map(|i| req(PartitionType::LinuxGeneric, &format!("part-{i}"), Some(MIB)))
            .collect();
        check_with_sgdisk(&plan(130 * MIB + 33 * 512, &requests, b"128").unwrap());
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn sgdisk_accepts_disk_beyond_mbr_range() {
        check_with_sgdisk(&plan(3 << 40, &sample(), b"3 TiB").unwrap());
    }
}
