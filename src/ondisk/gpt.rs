//! The GUID Partition Table (UEFI 2.10 §5.3): GUIDs, the partition type table, the header and
//! the partition entries, with the CRC32 both carry.
//!
//! [`crate::layout::gpt`] writes tables with it and [`crate::inspect::table`] reads them; what
//! to lay out and what to accept or report is theirs.

use std::fmt;

/// The 8-byte `Signature` that starts a GPT header (UEFI 2.10 Table 5.5).
pub const SIGNATURE: &[u8; 8] = b"EFI PART";

/// `Revision` 1.0 of the GPT header, the only one so far.
pub const REVISION: u32 = 0x0001_0000;

/// `HeaderSize` of the header as UEFI 2.10 defines it (Table 5.5): 92 bytes, the smallest valid.
pub const HEADER_SIZE: u32 = 92;

/// The size of one partition entry as UEFI 2.10 defines it (§5.3.3): 128 bytes, the smallest
/// valid `SizeOfPartitionEntry`.
pub const ENTRY_SIZE: usize = 128;

/// The longest partition name, in UTF-16 code units (UEFI 2.10 Table 5.6, `PartitionName`:
/// 72 bytes at offset 56).
pub const NAME_UNITS: usize = 36;

/// Offset of `PartitionName` in an entry (UEFI 2.10 Table 5.6).
const NAME_OFFSET: usize = 56;

/// Offset of `HeaderCRC32` in the header (UEFI 2.10 Table 5.5).
const HEADER_CRC_OFFSET: usize = 16;

/// The CRC32 that GPT uses: UEFI 2.10 §5.3.2 names it, and it is the IEEE 802.3/zlib CRC32
/// (reflected polynomial 0xEDB88320, initial value and final XOR 0xFFFFFFFF), which the `crc`
/// catalogue calls `CRC_32_ISO_HDLC`.
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// The CRC32 of `data` as GPT stores it (`HeaderCRC32`, `PartitionEntryArrayCRC32`).
pub fn crc32(data: &[u8]) -> u32 {
    CRC32.checksum(data)
}

/// A GUID as RFC 4122 prints it (`c12a7328-f81f-11d2-ba4b-00a0c93ec93b`), stored in that
/// textual byte order. GPT stores the first three fields little-endian: see [`Guid::to_gpt_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case).
    pub fn parse(s: &str) -> Option<Guid> {
        let hex: String = s.chars().filter(|&c| c != '-').collect();
        let dashes_ok = s.len() == 36
            && s.char_indices()
                .all(|(i, c)| (c == '-') == matches!(i, 8 | 13 | 18 | 23));
        if !dashes_ok || hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid(out))
    }

    /// The 16 bytes as GPT stores them (UEFI spec, "GUID format"): the first three fields
    /// little-endian, the last two as they are.
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }

    /// The inverse of [`Guid::to_gpt_bytes`].
    pub fn from_gpt_bytes(b: [u8; 16]) -> Guid {
        Guid([
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ])
    }

    /// The GUID stored at `at` of `buf` in GPT byte order; all zeros if `buf` is too short
    /// (never, for the callers' fixed offsets inside a header or an entry).
    fn read(buf: &[u8], at: usize) -> Guid {
        let bytes: [u8; 16] = buf
            .get(at..at + 16)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 16]);
        Guid::from_gpt_bytes(bytes)
    }
}

/// GUIDs serialise as their RFC 4122 text, as reports and manifests show them.
impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[0],
            b[1],
            b[2],
            b[3],
            b[4],
            b[5],
            b[6],
            b[7],
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

/// A partition type from the UAPI Discoverable Partitions Specification (and the BIOS boot
/// partition of GRUB), written as the entry's `PartitionTypeGUID` (UEFI 2.10 §5.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartitionType {
    /// EFI System Partition (UEFI 2.10 §13.3), `esp`.
    Esp,
    /// Extended Boot Loader Partition, `xbootldr`.
    Xbootldr,
    /// Root file system for x86-64, `root-x86-64`.
    RootX86_64,
    /// Root file system for x86 (i386), `root-x86`.
    RootX86,
    /// `/usr` file system for x86-64, `usr-x86-64`.
    UsrX86_64,
    /// `/usr` file system for x86 (i386), `usr-x86`.
    UsrX86,
    /// Generic Linux data, `linux-generic`.
    LinuxGeneric,
    /// Linux swap, `swap`.
    Swap,
    /// GRUB's BIOS boot partition, `bios-boot`.
    BiosBoot,
}

impl PartitionType {
    /// Every type, in declaration order.
    pub const ALL: [PartitionType; 9] = [
        PartitionType::Esp,
        PartitionType::Xbootldr,
        PartitionType::RootX86_64,
        PartitionType::RootX86,
        PartitionType::UsrX86_64,
        PartitionType::UsrX86,
        PartitionType::LinuxGeneric,
        PartitionType::Swap,
        PartitionType::BiosBoot,
    ];

    /// The type named `name` (systemd-repart's `Type=` names, plus `bios-boot`), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The type whose GUID is `guid`, if it is one of ours.
    pub fn from_guid(guid: Guid) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.guid() == guid)
    }

    /// The type's name, as [`PartitionType::from_name`] accepts it.
    pub fn name(self) -> &'static str {
        match self {
            PartitionType::Esp => "esp",
            PartitionType::Xbootldr => "xbootldr",
            PartitionType::RootX86_64 => "root-x86-64",
            PartitionType::RootX86 => "root-x86",
            PartitionType::UsrX86_64 => "usr-x86-64",
            PartitionType::UsrX86 => "usr-x86",
            PartitionType::LinuxGeneric => "linux-generic",
            PartitionType::Swap => "swap",
            PartitionType::BiosBoot => "bios-boot",
        }
    }

    /// The partition type GUID (UEFI 2.10 §5.3.3 for the ESP; the Discoverable
    /// Partitions Specification for the others).
    pub fn guid(self) -> Guid {
        // The u128 literals are the textual GUIDs with their dashes turned into underscores.
        let value: u128 = match self {
            PartitionType::Esp => 0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b,
            PartitionType::Xbootldr => 0xbc13c2ff_59e6_4262_a352_b275fd6f7172,
            PartitionType::RootX86_64 => 0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709,
            PartitionType::RootX86 => 0x44479540_f297_41b2_9af7_d131d5f0458a,
            PartitionType::UsrX86_64 => 0x8484680c_9521_48c6_9c11_b0720656f69e,
            PartitionType::UsrX86 => 0x75250d76_8cc6_458e_bd66_bd47cc81a812,
            PartitionType::LinuxGeneric => 0x0fc63daf_8483_4772_8e79_3d69d8477de4,
            PartitionType::Swap => 0x0657fd6d_a4ab_43c4_84e5_0933c84b4f4f,
            PartitionType::BiosBoot => 0x21686148_6449_6e6f_744e_656564454649,
        };
        Guid(value.to_be_bytes())
    }
}

/// Little-endian integers at a fixed offset; `0` if out of range (never, for the fixed offsets
/// inside a header or an entry of checked length).
fn le32(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn le64(buf: &[u8], at: usize) -> u64 {
    buf.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// A GPT header's fields (UEFI 2.10 Table 5.5), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `Revision`.
    pub revision: u32,
    /// `HeaderSize`: the bytes the header CRC covers.
    pub header_size: u32,
    /// `HeaderCRC32`, as stored (ignored by [`Header::encode`], which computes it).
    pub header_crc: u32,
    /// `MyLBA`: where this header is.
    pub my_lba: u64,
    /// `AlternateLBA`: where the other header is.
    pub alternate_lba: u64,
    /// `FirstUsableLBA`.
    pub first_usable: u64,
    /// `LastUsableLBA`, inclusive.
    pub last_usable: u64,
    /// `DiskGUID`.
    pub disk_guid: Guid,
    /// `PartitionEntryLBA`: the first sector of the entry array.
    pub entries_lba: u64,
    /// `NumberOfPartitionEntries`.
    pub entry_count: u32,
    /// `SizeOfPartitionEntry`.
    pub entry_size: u32,
    /// `PartitionEntryArrayCRC32`.
    pub entries_crc: u32,
}

impl Header {
    /// The fields of the header sector `buf`, if it starts with [`SIGNATURE`] and holds the
    /// 92 bytes of fields. Nothing is checked beyond that: see [`Header::computed_crc`].
    pub fn decode(buf: &[u8]) -> Option<Header> {
        if buf.get(..8) != Some(&SIGNATURE[..]) || buf.len() < HEADER_SIZE as usize {
            return None;
        }
        Some(Header {
            revision: le32(buf, 8),
            header_size: le32(buf, 12),
            header_crc: le32(buf, HEADER_CRC_OFFSET),
            my_lba: le64(buf, 24),
            alternate_lba: le64(buf, 32),
            first_usable: le64(buf, 40),
            last_usable: le64(buf, 48),
            disk_guid: Guid::read(buf, 56),
            entries_lba: le64(buf, 72),
            entry_count: le32(buf, 80),
            entry_size: le32(buf, 84),
            entries_crc: le32(buf, 88),
        })
    }

    /// The CRC32 of the first `header_size` bytes of the header sector `buf` with the CRC field
    /// taken as zero (UEFI 2.10 §5.3.2), to compare with `header_crc`; `None` when `header_size`
    /// is below [`HEADER_SIZE`] or past the end of `buf`.
    pub fn computed_crc(&self, buf: &[u8]) -> Option<u32> {
        if self.header_size < HEADER_SIZE {
            return None;
        }
        let mut copy = buf.get(..self.header_size as usize)?.to_vec();
        copy.get_mut(HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4)?
            .fill(0);
        Some(crc32(&copy))
    }

    /// The entry array's length in bytes.
    pub fn array_len(&self) -> u64 {
        u64::from(self.entry_count) * u64::from(self.entry_size)
    }

    /// The header as a sector of `sector_size` bytes: the [`HEADER_SIZE`] bytes of fields with
    /// `HeaderCRC32` computed over them, then zeros. `header_size` is written as
    /// [`HEADER_SIZE`], whatever it holds.
    pub fn encode(&self, sector_size: usize) -> Vec<u8> {
        let mut h = Vec::with_capacity(sector_size.max(HEADER_SIZE as usize));
        h.extend_from_slice(SIGNATURE);
        h.extend_from_slice(&self.revision.to_le_bytes());
        h.extend_from_slice(&HEADER_SIZE.to_le_bytes());
        h.extend_from_slice(&[0; 4]); // HeaderCRC32, filled in below
        h.extend_from_slice(&[0; 4]); // Reserved
        h.extend_from_slice(&self.my_lba.to_le_bytes());
        h.extend_from_slice(&self.alternate_lba.to_le_bytes());
        h.extend_from_slice(&self.first_usable.to_le_bytes());
        h.extend_from_slice(&self.last_usable.to_le_bytes());
        h.extend_from_slice(&self.disk_guid.to_gpt_bytes());
        h.extend_from_slice(&self.entries_lba.to_le_bytes());
        h.extend_from_slice(&self.entry_count.to_le_bytes());
        h.extend_from_slice(&self.entry_size.to_le_bytes());
        h.extend_from_slice(&self.entries_crc.to_le_bytes());
        let crc = crc32(&h);
        if let Some(field) = h.get_mut(HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4) {
            field.copy_from_slice(&crc.to_le_bytes());
        }
        h.resize(sector_size.max(HEADER_SIZE as usize), 0);
        h
    }
}

/// One partition entry (UEFI 2.10 Table 5.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `PartitionTypeGUID`; all zeros marks an unused entry.
    pub type_guid: Guid,
    /// `UniquePartitionGUID`.
    pub unique_guid: Guid,
    /// `StartingLBA`.
    pub first_lba: u64,
    /// `EndingLBA`, inclusive.
    pub last_lba: u64,
    /// `Attributes`.
    pub attributes: u64,
    /// `PartitionName`: UTF-16LE up to the first NUL unit; decoding replaces invalid units,
    /// encoding keeps the first [`NAME_UNITS`] units.
    pub name: String,
}

impl Entry {
    /// Whether the stored entry `raw` is unused: its type GUID is all zeros (UEFI 2.10 §5.3.3).
    pub fn is_unused(raw: &[u8]) -> bool {
        raw.get(..16).unwrap_or_default().iter().all(|&b| b == 0)
    }

    /// The fields of the stored entry `raw` (at least 128 bytes; missing bytes read as zeros).
    pub fn decode(raw: &[u8]) -> Entry {
        let units: Vec<u16> = raw
            .get(NAME_OFFSET..NAME_OFFSET + 2 * NAME_UNITS)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|c| {
                u16::from_le_bytes([
                    c.first().copied().unwrap_or(0),
                    c.get(1).copied().unwrap_or(0),
                ])
            })
            .take_while(|&u| u != 0)
            .collect();
        Entry {
            type_guid: Guid::read(raw, 0),
            unique_guid: Guid::read(raw, 16),
            first_lba: le64(raw, 32),
            last_lba: le64(raw, 40),
            attributes: le64(raw, 48),
            name: String::from_utf16_lossy(&units),
        }
    }

    /// Writes the entry into `out` (an entry slot of at least 128 bytes, expected zeroed: the
    /// name's unused units are left as they are).
    pub fn encode(&self, out: &mut [u8]) {
        let put = |out: &mut [u8], at: usize, bytes: &[u8]| {
            if let Some(dst) = out.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        put(out, 0, &self.type_guid.to_gpt_bytes());
        put(out, 16, &self.unique_guid.to_gpt_bytes());
        put(out, 32, &self.first_lba.to_le_bytes());
        put(out, 40, &self.last_lba.to_le_bytes());
        put(out, 48, &self.attributes.to_le_bytes());
        let name = out
            .get_mut(NAME_OFFSET..NAME_OFFSET + 2 * NAME_UNITS)
            .unwrap_or_default();
        for (slot, unit) in name.chunks_exact_mut(2).zip(self.name.encode_utf16()) {
            slot.copy_from_slice(&unit.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trips() {
        let s = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
        let g = Guid::parse(s).unwrap();
        assert_eq!(g.to_string(), s);
        assert_eq!(Guid::from_gpt_bytes(g.to_gpt_bytes()), g);
        // The ESP type GUID as it appears on disk.
        assert_eq!(g.to_gpt_bytes()[..4], [0x28, 0x73, 0x2a, 0xc1]);
        assert!(Guid::parse("c12a7328f81f11d2ba4b00a0c93ec93b").is_none());
        assert!(Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93").is_none());
        assert_eq!(PartitionType::from_guid(g), Some(PartitionType::Esp));
        assert_eq!(PartitionType::from_guid(Guid::default()), None);
    }

    /// The IEEE CRC32 check value (the CRC of "123456789") and an empty input.
    #[test]
    fn crc32_is_ieee() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn header_and_entry_round_trip() {
        let h = Header {
            revision: REVISION,
            header_size: HEADER_SIZE,
            header_crc: 0,
            my_lba: 1,
            alternate_lba: 999,
            first_usable: 34,
            last_usable: 966,
            disk_guid: Guid::parse("01234567-89ab-cdef-0123-456789abcdef").unwrap(),
            entries_lba: 2,
            entry_count: 128,
            entry_size: ENTRY_SIZE as u32,
            entries_crc: 0xdead_beef,
        };
        let sector = h.encode(512);
        assert_eq!(sector.len(), 512);
        let back = Header::decode(&sector).unwrap();
        assert_eq!(back.computed_crc(&sector), Some(back.header_crc));
        assert_eq!(
            Header {
                header_crc: 0,
                ..back
            },
            h
        );
        assert!(Header::decode(&sector[..91]).is_none());
        assert!(Header::decode(&[0; 512]).is_none());

        let e = Entry {
            type_guid: PartitionType::RootX86_64.guid(),
            unique_guid: h.disk_guid,
            first_lba: 2048,
            last_lba: 4095,
            attributes: 1 << 63 | 0b100,
            name: "\u{1d11e}root".into(),
        };
        let mut raw = [0u8; ENTRY_SIZE];
        assert!(Entry::is_unused(&raw));
        e.encode(&mut raw);
        assert!(!Entry::is_unused(&raw));
        assert_eq!(Entry::decode(&raw), e);
    }
}
