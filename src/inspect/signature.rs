//! File systems recognised by their signatures (magic numbers at fixed offsets), from the first
//! 68 KiB of a partition or bare image: enough to say what it is without trusting any size in it.

use crate::format::Disk;
use serde::Serialize;

/// A recognised file system or container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// FAT with 12-bit entries.
    Fat12,
    /// FAT with 16-bit entries.
    Fat16,
    /// FAT32.
    Fat32,
    /// ext2: no journal.
    Ext2,
    /// ext3: a journal, no extents.
    Ext3,
    /// ext4: extents or flex_bg.
    Ext4,
    /// Linux swap (v1, "SWAPSPACE2").
    Swap,
    /// NTFS.
    Ntfs,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
    /// ISO 9660.
    Iso9660,
    /// A LUKS encrypted container.
    Luks,
}

impl FsKind {
    /// The name, as the JSON report spells it (`fat32`, `ext4`, `iso9660`…).
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Fat12 => "fat12",
            FsKind::Fat16 => "fat16",
            FsKind::Fat32 => "fat32",
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Swap => "swap",
            FsKind::Ntfs => "ntfs",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Iso9660 => "iso9660",
            FsKind::Luks => "luks",
        }
    }
}

/// Bytes read: the Btrfs superblock (64 KiB + 0x40) is the farthest signature.
pub const PROBE: u64 = 68 << 10;

/// Identifies the file system in the `len` bytes at `offset` of `source`; `None` when no
/// signature matches or the bytes cannot be read.
pub fn detect(source: &dyn Disk, offset: u64, len: u64) -> Option<FsKind> {
    let n = len.min(PROBE).min(source.size().saturating_sub(offset));
    let mut buf = vec![0u8; usize::try_from(n).ok()?];
    source.read_at(offset, &mut buf).ok()?;
    detect_bytes(&buf)
}

/// Identifies a file system from its first bytes (up to [`PROBE`]).
pub fn detect_bytes(b: &[u8]) -> Option<FsKind> {
    let at = |off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);
    let le16 = |off: usize| {
        b.get(off..off + 2)
            .map(|x| u16::from_le_bytes([x[0], x[1]]))
    };
    let le32 = |off: usize| {
        b.get(off..off + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
    };
    // Containers and file systems whose magic sits at the very start come first.
    if at(0, b"LUKS\xba\xbe") {
        return Some(FsKind::Luks);
    }
    if at(0, b"XFSB") {
        return Some(FsKind::Xfs);
    }
    if at(3, b"NTFS    ") {
        return Some(FsKind::Ntfs);
    }
    // FAT: the boot sector's file system type string (Microsoft FAT spec, "BPB"), with the
    // 0x55AA signature.
    if at(510, &[0x55, 0xaa]) {
        if at(82, b"FAT32   ") {
            return Some(FsKind::Fat32);
        }
        if at(54, b"FAT16   ") {
            return Some(FsKind::Fat16);
        }
        if at(54, b"FAT12   ") {
            return Some(FsKind::Fat12);
        }
    }
    // ext2/3/4: superblock at 1024, s_magic 0xEF53 at +56; features at +92 (compat) and +96
    // (incompat).
    if le16(1024 + 56) == Some(0xef53) {
        let compat = le32(1024 + 92).unwrap_or(0);
        let incompat = le32(1024 + 96).unwrap_or(0);
        // INCOMPAT_EXTENTS 0x40, INCOMPAT_64BIT 0x80, INCOMPAT_FLEX_BG 0x200.
        if incompat & (0x40 | 0x80 | 0x200) != 0 {
            return Some(FsKind::Ext4);
        }
        // COMPAT_HAS_JOURNAL 0x4.
        return Some(if compat & 0x4 != 0 {
            FsKind::Ext3
        } else {
            FsKind::Ext2
        });
    }
    if at(4096 - 10, b"SWAPSPACE2") {
        return Some(FsKind::Swap);
    }
    if at(0x8001, b"CD001") {
        return Some(FsKind::Iso9660);
    }
    if at(0x10040, b"_BHRfS_M") {
        return Some(FsKind::Btrfs);
    }
    None
}

/// The size in bytes the file system of `kind` says it has, from its first bytes (`b`, up to
/// [`PROBE`]): ext2/3/4 from the superblock's block count and block size, FAT from the boot
/// sector's sector count and sector size. `None` for other kinds, or when the fields are
/// missing or make no sense (they are only compared with the room the volume has).
pub fn declared_size(kind: FsKind, b: &[u8]) -> Option<u64> {
    let le16 = |off: usize| {
        b.get(off..off + 2)
            .map(|x| u64::from(u16::from_le_bytes([x[0], x[1]])))
    };
    let le32 = |off: usize| {
        b.get(off..off + 4)
            .map(|x| u64::from(u32::from_le_bytes([x[0], x[1], x[2], x[3]])))
    };
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => {
            // s_blocks_count_lo at +0x04, s_log_block_size at +0x18, s_feature_incompat at
            // +0x60 (INCOMPAT_64BIT 0x80 adds s_blocks_count_hi at +0x150).
            let sb = 1024;
            let log = le32(sb + 0x18)?;
            if log > 6 {
                return None;
            }
            let mut blocks = le32(sb + 0x04)?;
            if le32(sb + 0x60)? & 0x80 != 0 {
                blocks |= le32(sb + 0x150)? << 32;
            }
            blocks.checked_mul(1024 << log)
        }
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => {
            // BPB_BytsPerSec at 11, BPB_TotSec16 at 19, else BPB_TotSec32 at 32.
            let sector = le16(11)?;
            if !matches!(sector, 512 | 1024 | 2048 | 4096) {
                return None;
            }
            let sectors = match le16(19)? {
                0 => le32(32)?,
                n => n,
            };
            Some(sectors * sector)
        }
        _ => None,
    }
}

/// The size the file system of `kind` at `offset` of `source` says it has; see
/// [`declared_size`]. `None` when unknown or unreadable.
pub fn size_of(source: &dyn Disk, offset: u64, len: u64, kind: FsKind) -> Option<u64> {
    // Both the ext superblock (1024..2048, s_blocks_count_hi at 1024 + 0x150) and the FAT boot
    // sector lie in the first 2 KiB.
    let n = len.min(2048).min(source.size().saturating_sub(offset));
    let mut buf = vec![0u8; usize::try_from(n).ok()?];
    source.read_at(offset, &mut buf).ok()?;
    declared_size(kind, &buf)
}

/// Where an ext2/3/4 backup superblock lies in the `len` bytes at `offset` of `source`: the
/// byte offset (from `offset`) and the block number `e2fsck -b` takes, when the primary one is
/// gone. Looks where `mke2fs` puts the first backup (block group 1) for 1, 2 and 4 KiB blocks.
pub fn ext_backup_superblock(source: &dyn Disk, offset: u64, len: u64) -> Option<(u64, u64)> {
    for log in 0..3u32 {
        let block = 1024u64 << log;
        // Group 1 starts after 8 × block size blocks; with 1 KiB blocks block 0 is the boot
        // block, so the first group starts at block 1.
        let number = 8 * block + u64::from(log == 0);
        let at = number * block;
        if at + 1024 > len || offset + at + 1024 > source.size() {
            continue;
        }
        let mut sb = [0u8; 1024];
        if source.read_at(offset + at, &mut sb).is_err() {
            continue;
        }
        let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
        // s_log_block_size must agree with where the copy was found.
        let log_found = u32::from_le_bytes([sb[0x18], sb[0x19], sb[0x1a], sb[0x1b]]);
        if magic == 0xef53 && log_found == log {
            return Some((at, number));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_match_the_json() {
        use super::FsKind::*;
        for k in [
            Fat12, Fat16, Fat32, Ext2, Ext3, Ext4, Swap, Ntfs, Xfs, Btrfs, Iso9660, Luks,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }

    use super::*;
    use crate::format::raw;
    use std::path::Path;
    use std::process::Command;

    fn make(dir: &Path, name: &str, size: &str, cmd: &[&str]) -> Option<FsKind> {
        let p = dir.join(name);
        let out = Command::new("truncate")
            .args(["-s", size, p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        let mut args: Vec<&str> = cmd[1..].to_vec();
        args.push(p.to_str().unwrap());
        let out = Command::new(cmd[0]).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let src = raw::open_path(&p).unwrap();
        let size = src.size();
        detect(src.as_ref(), 0, size)
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn real_file_systems() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(
            make(d, "e4", "64M", &["mkfs.ext4", "-q"]),
            Some(FsKind::Ext4)
        );
        assert_eq!(
            make(d, "e3", "64M", &["mkfs.ext3", "-q"]),
            Some(FsKind::Ext3)
        );
        assert_eq!(
            make(d, "e2", "64M", &["mkfs.ext2", "-q"]),
            Some(FsKind::Ext2)
        );
        assert_eq!(
            make(d, "f32", "64M", &["mkfs.vfat", "-F", "32"]),
            Some(FsKind::Fat32)
        );
        assert_eq!(
            make(d, "f16", "64M", &["mkfs.vfat", "-F", "16"]),
            Some(FsKind::Fat16)
        );
        assert_eq!(
            make(d, "f12", "4M", &["mkfs.vfat", "-F", "12"]),
            Some(FsKind::Fat12)
        );
        assert_eq!(make(d, "sw", "64M", &["mkswap"]), Some(FsKind::Swap));
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn declared_sizes_are_the_sizes_mkfs_made() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, size, cmd, kind) in [
            ("e4", 64u64 << 20, &["mkfs.ext4", "-q"][..], FsKind::Ext4),
            (
                "e4k",
                24 << 20,
                &["mkfs.ext4", "-q", "-b", "1024"],
                FsKind::Ext4,
            ),
            ("e2", 16 << 20, &["mkfs.ext2", "-q"], FsKind::Ext2),
            ("f32", 64 << 20, &["mkfs.vfat", "-F", "32"], FsKind::Fat32),
            ("f16", 32 << 20, &["mkfs.vfat", "-F", "16"], FsKind::Fat16),
            ("f12", 4 << 20, &["mkfs.vfat", "-F", "12"], FsKind::Fat12),
        ] {
            assert_eq!(make(d, name, &size.to_string(), cmd), Some(kind));
            let src = raw::open_path(&d.join(name)).unwrap();
            assert_eq!(size_of(src.as_ref(), 0, size, kind), Some(size), "{name}");
        }
        // Swap has no size mkomi compares; short buffers never panic.
        assert_eq!(declared_size(FsKind::Swap, &[0u8; 4096]), None);
        assert_eq!(declared_size(FsKind::Ext4, &[0u8; 1100]), None);
        assert_eq!(declared_size(FsKind::Fat32, &[0u8; 20]), None);
    }

    #[test]
    fn magics_at_their_offsets() {
        let with = |off: usize, magic: &[u8]| {
            let mut b = vec![0u8; PROBE as usize];
            b[off..off + magic.len()].copy_from_slice(magic);
            detect_bytes(&b)
        };
        assert_eq!(with(3, b"NTFS    "), Some(FsKind::Ntfs));
        assert_eq!(with(0, b"XFSB"), Some(FsKind::Xfs));
        assert_eq!(with(0x10040, b"_BHRfS_M"), Some(FsKind::Btrfs));
        assert_eq!(with(0x8001, b"CD001"), Some(FsKind::Iso9660));
        assert_eq!(with(0, b"LUKS\xba\xbe"), Some(FsKind::Luks));
        assert_eq!(detect_bytes(&[0u8; PROBE as usize]), None);
        // Short buffers never panic.
        assert_eq!(detect_bytes(&[]), None);
        assert_eq!(detect_bytes(b"XFS"), None);
    }
}
