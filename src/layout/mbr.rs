//! MBR partition tables for legacy-only disks (`[disk] table = "mbr"`), planned like
//! [`crate::layout::gpt::plan`]: partitions on 1 MiB boundaries in order, the last one may take
//! the rest of the disk, and the disk signature derives from the build's seed.
//!
//! An MBR disk keeps GRUB's core image in the gap between the MBR and the first partition
//! (sectors 1 to 2047), as `grub-install` does on such disks. The format: four 16-byte partition
//! records at byte 446 of sector 0, the signature 0x55 0xAA at 510, and the 4-byte disk
//! signature at 440 that Linux turns into `PARTUUID=SSSSSSSS-NN` (the signature in hex, then the
//! partition number: `block/partitions/msdos.c`, `set_info`). Start and size are 32-bit sector
//! counts, which is why an MBR disk ends at 2 TiB.

use crate::ondisk::gpt::PartitionType;
use sha2::{Digest, Sha256};

/// Sector size of every disk mkomi writes.
pub const SECTOR_SIZE: u64 = 512;

/// Partitions start on 1 MiB boundaries, as on GPT disks; the first at sector 2048, which leaves
/// 2047 sectors for GRUB's core image.
pub const ALIGNMENT: u64 = 1 << 20;

/// Primary partitions an MBR holds; mkomi writes no extended partition.
pub const MAX_PARTITIONS: usize = 4;

/// The largest disk an MBR can describe: 32-bit sector numbers of 512 bytes (2 TiB).
pub const MAX_DISK_SIZE: u64 = (1 << 32) * SECTOR_SIZE;

/// Byte offset of the disk signature in sector 0 (Windows NT's, read by Linux for `PARTUUID`).
const DISK_SIGNATURE: usize = 440;

/// Byte offset of the first partition record.
const RECORDS: usize = 446;

/// Bytes of boot code before the disk signature.
pub const BOOT_CODE_LEN: usize = 440;

/// The boot indicator of the active partition, the one a legacy MBR boot code would chain to.
const ACTIVE: u8 = 0x80;

/// CHS address written in every record: "beyond CHS" (cylinder 1023, head 254, sector 63), as
/// `sfdisk` writes for partitions past the first 8 GiB. Nothing mkomi makes boots by CHS: GRUB,
/// SeaBIOS and Linux address sectors by LBA.
const CHS_BEYOND: [u8; 3] = [0xfe, 0xff, 0xff];

/// What to lay out: a partition of a type, a size (`None`: the rest of the disk) and whether it
/// is the active one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRequest {
    /// Its type.
    pub kind: PartitionType,
    /// Its name, for messages only (an MBR has no partition names).
    pub label: String,
    /// Bytes, rounded up to 1 MiB; `None`: what is left of the disk (last partition only).
    pub size: Option<u64>,
    /// Boot indicator 0x80.
    pub active: bool,
}

/// A partition laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Its type.
    pub kind: PartitionType,
    /// The MBR type byte.
    pub mbr_type: u8,
    /// First sector.
    pub first_lba: u64,
    /// Sectors.
    pub sectors: u64,
    /// Boot indicator 0x80.
    pub active: bool,
}

impl Partition {
    /// Byte offset on the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.sectors * SECTOR_SIZE
    }

    /// Whether the partition is empty (never, once planned).
    pub fn is_empty(&self) -> bool {
        self.sectors == 0
    }
}

/// A planned MBR disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Disk size in bytes.
    pub disk_size: u64,
    /// The disk signature (bytes 440..444, little-endian).
    pub disk_signature: u32,
    /// Partitions, in order.
    pub partitions: Vec<Partition>,
}

/// Why an MBR layout cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The disk size is not a whole number of sectors.
    #[error("disk size {size} bytes is not a multiple of the 512-byte sector")]
    DiskSizeUnaligned {
        /// The disk size.
        size: u64,
    },
    /// Past what 32-bit sector numbers reach.
    #[error(
        "an MBR disk holds at most 2 TiB ({MAX_DISK_SIZE} bytes), and this one is {size} bytes: \
         use table = \"gpt\""
    )]
    DiskTooLarge {
        /// The disk size.
        size: u64,
    },
    /// More than four partitions.
    #[error("{count} partitions requested but an MBR holds at most {MAX_PARTITIONS}")]
    TooManyPartitions {
        /// How many.
        count: usize,
    },
    /// A type with no MBR equivalent.
    #[error(
        "partition {index} '{label}' is of type {kind}, which an MBR disk has no use for (GRUB's \
         core goes in the gap after the MBR)"
    )]
    NoMbrType {
        /// 1-based.
        index: usize,
        /// Its label.
        label: String,
        /// The type's name.
        kind: &'static str,
    },
    /// Two active partitions.
    #[error("partitions {first} and {second} are both active: at most one is")]
    TwoActive {
        /// 1-based.
        first: usize,
        /// 1-based.
        second: usize,
    },
    /// A partition of size zero.
    #[error("partition {index} '{label}' has size 0")]
    ZeroSize {
        /// 1-based.
        index: usize,
        /// Its label.
        label: String,
    },
    /// A rest-of-disk partition before the last.
    #[error("partition {index} '{label}' takes the rest of the disk but is not the last")]
    RestNotLast {
        /// 1-based.
        index: usize,
        /// Its label.
        label: String,
    },
    /// Out of room.
    #[error("partition {index} '{label}' needs {needs} bytes but only {remain} remain")]
    DoesNotFit {
        /// 1-based.
        index: usize,
        /// Its label.
        label: String,
        /// Bytes needed (rounded up to 1 MiB).
        needs: u64,
        /// Bytes left.
        remain: u64,
    },
}

/// The MBR type byte of `kind`: 0xEF for an EFI system partition (UEFI 2.10 §5.2.2), 0xEA for
/// XBOOTLDR (Boot Loader Specification), 0x83 for Linux file systems, 0x82 for swap; `None` for GRUB's BIOS boot partition, a GPT-only idea.
pub fn mbr_type(kind: PartitionType) -> Option<u8> {
    match kind {
        PartitionType::Esp => Some(0xef),
        PartitionType::Swap => Some(0x82),
        PartitionType::BiosBoot => None,
        // The Boot Loader Specification's type for an extended boot loader partition on MBR.
        PartitionType::Xbootldr => Some(0xea),
        PartitionType::RootX86_64
        | PartitionType::RootX86
        | PartitionType::UsrX86_64
        | PartitionType::UsrX86
        | PartitionType::LinuxGeneric => Some(0x83),
    }
}

/// The smallest disk [`plan`] lays partitions of these sizes out on: 1 MiB before the first
/// (the MBR and GRUB's core), each size rounded up to 1 MiB. `None` on overflow.
pub fn fit_disk_size(sizes: &[u64]) -> Option<u64> {
    let mut total = ALIGNMENT;
    for &s in sizes {
        total = total.checked_add(s.checked_next_multiple_of(ALIGNMENT)?)?;
    }
    Some(total)
}

/// Lays out `requests` in order on a disk of `disk_size` bytes; the disk signature derives from
/// `seed` (the first four bytes of SHA-256 of the seed and a fixed label, never zero, which some
/// tools read as "no signature").
pub fn plan(disk_size: u64, requests: &[PartitionRequest], seed: &[u8]) -> Result<Table, Error> {
    if !disk_size.is_multiple_of(SECTOR_SIZE) {
        return Err(Error::DiskSizeUnaligned { size: disk_size });
    }
    if disk_size > MAX_DISK_SIZE {
        return Err(Error::DiskTooLarge { size: disk_size });
    }
    if requests.len() > MAX_PARTITIONS {
        return Err(Error::TooManyPartitions {
            count: requests.len(),
        });
    }
    let align = ALIGNMENT / SECTOR_SIZE;
    let end = disk_size / SECTOR_SIZE;
    let mut next = align;
    let mut partitions = Vec::with_capacity(requests.len());
    let mut active: Option<usize> = None;
    for (i, req) in requests.iter().enumerate() {
        let index = i + 1;
        let label = || req.label.clone();
        let mbr_type = mbr_type(req.kind).ok_or_else(|| Error::NoMbrType {
            index,
            label: label(),
            kind: req.kind.name(),
        })?;
        if req.active {
            if let Some(first) = active {
                return Err(Error::TwoActive {
                    first,
                    second: index,
                });
            }
            active = Some(index);
        }
        let remain = end.saturating_sub(next);
        let does_not_fit = |needs: u64| Error::DoesNotFit {
            index,
            label: label(),
            needs,
            remain: remain * SECTOR_SIZE,
        };
        let sectors = match req.size {
            Some(0) => {
                return Err(Error::ZeroSize {
                    index,
                    label: label(),
                });
            }
            Some(size) => match size.checked_next_multiple_of(ALIGNMENT) {
                Some(bytes) if bytes / SECTOR_SIZE <= remain => bytes / SECTOR_SIZE,
                Some(bytes) => return Err(does_not_fit(bytes)),
                None => return Err(does_not_fit(size)),
            },
            None => {
                if index != requests.len() {
                    return Err(Error::RestNotLast {
                        index,
                        label: label(),
                    });
                }
                let sectors = remain - remain % align;
                if sectors == 0 {
                    return Err(does_not_fit(ALIGNMENT));
                }
                sectors
            }
        };
        partitions.push(Partition {
            kind: req.kind,
            mbr_type,
            first_lba: next,
            sectors,
            active: req.active,
        });
        next += sectors;
    }
    let digest = Sha256::digest([seed, b"mbr disk signature"].concat());
    let mut signature = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    if signature == 0 {
        signature = 1;
    }
    Ok(Table {
        disk_size,
        disk_signature: signature,
        partitions,
    })
}

impl Table {
    /// Sector 0: `boot_code` (at most 440 bytes, GRUB's boot.img once patched) or zeros, the
    /// disk signature, two zero bytes, the four partition records and 0x55 0xAA.
    pub fn sector0(&self, boot_code: Option<&[u8]>) -> Vec<u8> {
        let mut out = vec![0u8; SECTOR_SIZE as usize];
        if let Some(code) = boot_code {
            let n = code.len().min(BOOT_CODE_LEN);
            out[..n].copy_from_slice(&code[..n]);
        }
        out[DISK_SIGNATURE..DISK_SIGNATURE + 4].copy_from_slice(&self.disk_signature.to_le_bytes());
        for (i, p) in self.partitions.iter().enumerate() {
            let at = RECORDS + 16 * i;
            let rec = &mut out[at..at + 16];
            rec[0] = if p.active { ACTIVE } else { 0 };
            rec[1..4].copy_from_slice(&CHS_BEYOND);
            rec[4] = p.mbr_type;
            rec[5..8].copy_from_slice(&CHS_BEYOND);
            // plan() keeps every sector number below 2^32 (MAX_DISK_SIZE).
            rec[8..12].copy_from_slice(&(p.first_lba as u32).to_le_bytes());
            rec[12..16].copy_from_slice(&(p.sectors as u32).to_le_bytes());
        }
        out[510] = 0x55;
        out[511] = 0xaa;
        out
    }

    /// What Linux calls partition `index` (0-based here) in `root=PARTUUID=`: the disk signature
    /// in 8 lowercase hex digits, a dash, and the 1-based partition number in 2.
    pub fn partuuid(&self, index: usize) -> String {
        format!("{:08x}-{:02x}", self.disk_signature, index + 1)
    }

    /// The first sector of the first partition: GRUB's core must end before it.
    pub fn first_partition_lba(&self) -> u64 {
        self.partitions
            .first()
            .map_or(self.disk_size / SECTOR_SIZE, |p| p.first_lba)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: PartitionType, size: Option<u64>, active: bool) -> PartitionRequest {
        PartitionRequest {
            kind,
            label: kind.name().into(),
            size,
            active,
        }
    }

    #[test]
    fn lays_out_and_encodes() {
        let t = plan(
            64 << 20,
            &[
                req(PartitionType::Esp, Some(8 << 20), false),
                req(PartitionType::RootX86_64, None, true),
            ],
            b"seed",
        )
        .unwrap();
        assert_eq!(t.partitions[0].first_lba, 2048);
        assert_eq!(t.partitions[0].sectors, 16384);
        assert_eq!(t.partitions[1].first_lba, 2048 + 16384);
        assert_eq!(t.partitions[1].sectors, (64 << 11) - 2048 - 16384);
        let s = t.sector0(Some(&[0xeb; 440]));
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        assert_eq!(s[439], 0xeb);
        assert_eq!(s[446], 0);
        assert_eq!(s[446 + 4], 0xef);
        assert_eq!(s[462], 0x80);
        assert_eq!(s[462 + 4], 0x83);
        assert_eq!(u32::from_le_bytes(s[470..474].try_into().unwrap()), 18432);
        assert_eq!(
            t.partuuid(1),
            format!(
                "{:08x}-02",
                u32::from_le_bytes(s[440..444].try_into().unwrap())
            )
        );
        // The same seed, the same signature; another seed, another.
        let again = plan(64 << 20, &[req(PartitionType::Esp, None, false)], b"seed").unwrap();
        assert_eq!(again.disk_signature, t.disk_signature);
        let other = plan(64 << 20, &[req(PartitionType::Esp, None, false)], b"x").unwrap();
        assert_ne!(other.disk_signature, t.disk_signature);
    }

    #[test]
    fn refuses_what_an_mbr_cannot_hold() {
        let root = |size| req(PartitionType::RootX86_64, size, false);
        let e = plan(MAX_DISK_SIZE + 512, &[root(None)], b"s").unwrap_err();
        assert!(matches!(e, Error::DiskTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("2 TiB"));
        assert!(plan(MAX_DISK_SIZE, &[root(None)], b"s").is_ok());
        let five: Vec<_> = (0..5).map(|_| root(Some(1 << 20))).collect();
        let e = plan(64 << 20, &five, b"s").unwrap_err();
        assert!(matches!(e, Error::TooManyPartitions { count: 5 }));
        let e = plan(
            64 << 20,
            &[req(PartitionType::BiosBoot, Some(1 << 20), false)],
            b"s",
        )
        .unwrap_err();
        assert!(matches!(e, Error::NoMbrType { .. }));
        let e = plan(
            64 << 20,
            &[
                req(PartitionType::Esp, Some(1 << 20), true),
                req(PartitionType::RootX86_64, None, true),
            ],
            b"s",
        )
        .unwrap_err();
        assert!(matches!(
            e,
            Error::TwoActive {
                first: 1,
                second: 2
            }
        ));
        let e = plan(8 << 20, &[root(Some(8 << 20))], b"s").unwrap_err();
        assert!(matches!(e, Error::DoesNotFit { .. }));
        assert_eq!(fit_disk_size(&[1, 1 << 20]), Some(3 << 20));
    }
}
