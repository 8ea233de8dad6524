//! ext4's on-disk structures, encoded: superblock, group descriptors, inodes, extent trees,
//! extended attributes and the jbd2 journal superblock (the writer in [`crate::layout::ext4`]
//! lays them out). Directory blocks are [`crate::ondisk::ext4_dir`]'s.
//!
//! Offsets and constants come from the kernel's `Documentation/filesystems/ext4/` ("the docs":
//! `super.rst`, `group_descr.rst`, `inodes.rst`, `ifork.rst`, `attributes.rst`, `journal.rst`,
//! `checksums.rst`) and `fs/ext4/ext4.h`; where e2fsprogs computes something the docs leave
//! vague (checksum coverage, xattr hashes) its file is cited. Everything here is little-endian
//! except the jbd2 superblock, which is big-endian (`journal.rst`).
//!
//! The encoders write fixed-size buffers whose offsets are constants below those sizes, so no
//! input can make them index out of bounds; variable-length inputs (xattrs, extents) are checked
//! and refused with an [`Error`].

use crate::ondisk::crc32c::crc32c_le;

/// Bytes per block: the only block size the writer makes.
pub const BLOCK: usize = 4096;
/// Bytes of the superblock (`super.rst`).
pub const SUPERBLOCK_SIZE: usize = 1024;
/// Where the primary superblock starts on the disk (`super.rst`: "1024 bytes of padding").
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes per inode record: mke2fs's default for ext4 (`mke2fs.conf`, `inode_size = 256`).
pub const INODE_SIZE: usize = 256;
/// `i_extra_isize`: the fields past the 128-byte base inode up to and including `i_projid`
/// (`inodes.rst`), as mke2fs sets it (`sizeof(struct ext2_inode_large) - 128`).
pub const EXTRA_ISIZE: usize = 32;
/// Where in-inode extended attributes start: after the base inode and its extra fields.
pub const IN_INODE_XATTR_OFFSET: usize = 128 + EXTRA_ISIZE;

/// Superblock magic (`super.rst`, `s_magic`).
pub const EXT4_MAGIC: u16 = 0xEF53;
/// Extent header magic (`ifork.rst`).
pub const EXTENT_MAGIC: u16 = 0xF30A;
/// Extended-attribute header magic, in-inode and in blocks (`attributes.rst`).
pub const XATTR_MAGIC: u32 = 0xEA02_0000;
/// jbd2 block header magic (`journal.rst`).
pub const JBD2_MAGIC: u32 = 0xC03B_3998;
/// jbd2 block type of a version-2 superblock (`journal.rst`, `h_blocktype` 4).
pub const JBD2_SUPERBLOCK_V2: u32 = 4;

/// `s_feature_compat` bits (`super.rst`).
pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
/// Extended attributes.
pub const COMPAT_EXT_ATTR: u32 = 0x8;
/// Hashed directories.
pub const COMPAT_DIR_INDEX: u32 = 0x20;
/// `s_feature_incompat`: directory entries record the file type.
pub const INCOMPAT_FILETYPE: u32 = 0x2;
/// Files use extents.
pub const INCOMPAT_EXTENTS: u32 = 0x40;
/// 64-bit block numbers and 64-byte group descriptors.
pub const INCOMPAT_64BIT: u32 = 0x80;
/// Group metadata may live anywhere (`flex_bg`).
pub const INCOMPAT_FLEX_BG: u32 = 0x200;
/// `s_feature_ro_compat`: backups only in groups 0, 1 and powers of 3, 5, 7.
pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
/// Files over 2 GiB.
pub const RO_COMPAT_LARGE_FILE: u32 = 0x2;
/// `i_blocks` is 48 bits.
pub const RO_COMPAT_HUGE_FILE: u32 = 0x8;
/// Directories over 65,000 subdirectories (link count 1).
pub const RO_COMPAT_DIR_NLINK: u32 = 0x20;
/// Inodes have `i_extra_isize` bytes of extra fields.
pub const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
/// crc32c checksums on all metadata.
pub const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// `s_flags`: directory hashes treat name bytes as unsigned (`super.rst`; e2fsprogs
/// `EXT2_FLAGS_UNSIGNED_HASH`).
pub const FLAGS_UNSIGNED_HASH: u32 = 0x2;
/// `s_def_hash_version` half-MD4 (`directory.rst`, hash version 1).
pub const HASH_HALF_MD4: u8 = 1;

/// `bg_flags`: the inode bitmap and table are not initialised (`group_descr.rst`).
pub const BG_INODE_UNINIT: u16 = 0x1;
/// The block bitmap is not initialised.
pub const BG_BLOCK_UNINIT: u16 = 0x2;
/// The inode table is zeroed.
pub const BG_INODE_ZEROED: u16 = 0x4;

/// `i_flags`: a hashed directory (`inodes.rst`, `EXT4_INDEX_FL`).
pub const INODE_INDEX_FL: u32 = 0x1000;
/// The inode maps its blocks with extents (`EXT4_EXTENTS_FL`).
pub const INODE_EXTENTS_FL: u32 = 0x8_0000;

/// File type bits of `i_mode` (`inodes.rst`).
pub const S_IFIFO: u16 = 0o010000;
/// Character device.
pub const S_IFCHR: u16 = 0o020000;
/// Directory.
pub const S_IFDIR: u16 = 0o040000;
/// Block device.
pub const S_IFBLK: u16 = 0o060000;
/// Regular file.
pub const S_IFREG: u16 = 0o100000;
/// Symbolic link.
pub const S_IFLNK: u16 = 0o120000;
/// Socket.
pub const S_IFSOCK: u16 = 0o140000;

/// Directory entry file types (`directory.rst`, `ext4_dir_entry_2.file_type`).
pub const FT_REG_FILE: u8 = 1;
/// Directory.
pub const FT_DIR: u8 = 2;
/// Character device.
pub const FT_CHRDEV: u8 = 3;
/// Block device.
pub const FT_BLKDEV: u8 = 4;
/// FIFO.
pub const FT_FIFO: u8 = 5;
/// Socket.
pub const FT_SOCK: u8 = 6;
/// Symbolic link.
pub const FT_SYMLINK: u8 = 7;

/// The longest initialised extent: `ee_len` above 32768 marks an unwritten one (`ifork.rst`).
pub const MAX_EXTENT_LEN: u32 = 32_768;
/// Extent entries (or indexes) in `i_block`: 60 bytes less the 12-byte header, 12 bytes each.
pub const EXTENTS_IN_INODE: usize = 4;
/// Entries in an extent block: (4096 − 12) / 12 (`ifork.rst`).
pub const EXTENTS_PER_BLOCK: usize = (BLOCK - 12) / 12;
/// Bytes of `i_block`: 15 32-bit words.
pub const I_BLOCK_SIZE: usize = 60;

/// Errors of the encoders.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// An extended attribute whose name has a prefix ext4 cannot store.
    #[error("xattr {name}: ext4 stores only user., trusted., security. and system. names")]
    XattrPrefix {
        /// The name, escaped.
        name: String,
    },
    /// An extended attribute too long to store.
    #[error("xattr {name}: {reason}")]
    XattrTooBig {
        /// The name, escaped.
        name: String,
        /// What does not fit.
        reason: &'static str,
    },
    /// A POSIX ACL value that is not the kernel's `posix_acl_xattr` format.
    #[error("xattr {name}: not a POSIX ACL (version 2, 8-byte entries)")]
    BadAcl {
        /// The name, escaped.
        name: String,
    },
    /// More extents than `n` entries can reference.
    #[error("{count} extents do not fit in {room} entries")]
    TooManyExtents {
        /// Extents given.
        count: usize,
        /// Entries available.
        room: usize,
    },
}

/// Result of the encoders.
pub type Result<T> = std::result::Result<T, Error>;

fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_be32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

fn put_bytes(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(s) = b.get_mut(at..at + v.len()) {
        s.copy_from_slice(v);
    }
}

/// The metadata checksum seed: crc32c of the UUID from !0 (`checksums.rst`; e2fsprogs
/// `lib/ext2fs/csum.c`, `ext2fs_init_csum_seed`, when `metadata_csum_seed` is off).
pub fn csum_seed(uuid: &[u8; 16]) -> u32 {
    crc32c_le(!0, uuid)
}

/// The per-inode seed that inode, extent-block and directory-block checksums start from:
/// the fs seed chained over the inode number and its generation, both le32 (`checksums.rst`).
pub fn inode_seed(seed: u32, ino: u32, generation: u32) -> u32 {
    let s = crc32c_le(seed, &ino.to_le_bytes());
    crc32c_le(s, &generation.to_le_bytes())
}

/// A time as ext4 stores it: the low 32 bits of the seconds, and the `_extra` word holding
/// two epoch bits (seconds above the signed 32-bit range, in units of 2^32) and the
/// nanoseconds shifted left by 2 (`inodes.rst`, "Inode Timestamps"; kernel
/// `ext4_encode_extra_time`). Valid from 1901 to 2446.
pub fn encode_time(secs: i64, nsec: u32) -> (u32, u32) {
    let lo = secs as i32;
    let epoch = ((secs - i64::from(lo)) >> 32) as u32 & 3;
    (lo as u32, epoch | (nsec.min(999_999_999) << 2))
}

/// The superblock fields the writer sets; every other field is zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// `s_inodes_count`.
    pub inodes_count: u32,
    /// `s_blocks_count`.
    pub blocks_count: u64,
    /// `s_free_blocks_count`.
    pub free_blocks: u64,
    /// `s_free_inodes_count`.
    pub free_inodes: u32,
    /// `s_inodes_per_group`.
    pub inodes_per_group: u32,
    /// `s_blocks_per_group` and `s_clusters_per_group`.
    pub blocks_per_group: u32,
    /// Whether `64bit` is on (64-byte group descriptors).
    pub is_64bit: bool,
    /// `s_uuid`.
    pub uuid: [u8; 16],
    /// `s_volume_name`, at most 16 bytes.
    pub label: [u8; 16],
    /// `s_hash_seed`.
    pub hash_seed: [u8; 16],
    /// `s_mkfs_time`, `s_wtime`, `s_lastcheck`.
    pub time: i64,
    /// `s_jnl_blocks`: the journal inode's `i_block`, then `i_size_high`, `i_size`.
    pub jnl_blocks: [u32; 17],
    /// `s_log_groups_per_flex`.
    pub log_groups_per_flex: u8,
    /// `s_block_group_nr`: the group this copy lives in.
    pub group_nr: u16,
}

impl Superblock {
    /// The 1024-byte superblock with its checksum (`super.rst` offsets; checksum crc32c from
    /// !0 over the first 1020 bytes, e2fsprogs `ext2fs_superblock_csum`).
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        put32(&mut b, 0x0, self.inodes_count);
        put32(&mut b, 0x4, lo(self.blocks_count));
        put32(&mut b, 0xC, lo(self.free_blocks));
        put32(&mut b, 0x10, self.free_inodes);
        put32(&mut b, 0x14, 0); // s_first_data_block: 0 with blocks over 1 KiB
        put32(&mut b, 0x18, 2); // s_log_block_size: 1024 << 2 = 4096
        put32(&mut b, 0x1C, 2); // s_log_cluster_size: no bigalloc, same as the block
        put32(&mut b, 0x20, self.blocks_per_group);
        put32(&mut b, 0x24, self.blocks_per_group);
        put32(&mut b, 0x28, self.inodes_per_group);
        let (t, t_hi) = (self.time as u32, (self.time >> 32) as u8);
        put32(&mut b, 0x30, t); // s_wtime
        put16(&mut b, 0x36, 0xFFFF); // s_max_mnt_count −1: no mount-count checks, as mke2fs
        put16(&mut b, 0x38, EXT4_MAGIC);
        put16(&mut b, 0x3A, 1); // s_state: cleanly unmounted
        put16(&mut b, 0x3C, 1); // s_errors: continue
        put32(&mut b, 0x40, t); // s_lastcheck
        put32(&mut b, 0x4C, 1); // s_rev_level: dynamic
        put32(&mut b, 0x54, 11); // s_first_ino
        put16(&mut b, 0x58, INODE_SIZE as u16);
        put16(&mut b, 0x5A, self.group_nr);
        put32(
            &mut b,
            0x5C,
            COMPAT_HAS_JOURNAL | COMPAT_EXT_ATTR | COMPAT_DIR_INDEX,
        );
        let mut incompat = INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_FLEX_BG;
        if self.is_64bit {
            incompat |= INCOMPAT_64BIT;
        }
        put32(&mut b, 0x60, incompat);
        put32(
            &mut b,
            0x64,
            RO_COMPAT_SPARSE_SUPER
                | RO_COMPAT_LARGE_FILE
                | RO_COMPAT_HUGE_FILE
                | RO_COMPAT_DIR_NLINK
                | RO_COMPAT_EXTRA_ISIZE
                | RO_COMPAT_METADATA_CSUM,
        );
        put_bytes(&mut b, 0x68, &self.uuid);
        put_bytes(&mut b, 0x78, &self.label);
        put32(&mut b, 0xE0, 8); // s_journal_inum
        put_bytes(&mut b, 0xEC, &self.hash_seed);
        b[0xFC] = HASH_HALF_MD4;
        b[0xFD] = 1; // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
        if self.is_64bit {
            put16(&mut b, 0xFE, 64); // s_desc_size
        }
        // s_default_mount_opts: user_xattr | acl, as mke2fs.conf's default.
        put32(&mut b, 0x100, 0x0004 | 0x0008);
        put32(&mut b, 0x108, t); // s_mkfs_time
        for (i, w) in self.jnl_blocks.iter().enumerate() {
            put32(&mut b, 0x10C + 4 * i, *w);
        }
        put32(&mut b, 0x150, hi(self.blocks_count));
        put32(&mut b, 0x158, hi(self.free_blocks));
        put16(&mut b, 0x15C, EXTRA_ISIZE as u16); // s_min_extra_isize
        put16(&mut b, 0x15E, EXTRA_ISIZE as u16); // s_want_extra_isize
        put32(&mut b, 0x160, FLAGS_UNSIGNED_HASH);
        b[0x174] = self.log_groups_per_flex;
        b[0x175] = 1; // s_checksum_type: crc32c
        // s_wtime_hi, s_mkfs_time_hi, s_lastcheck_hi: the seconds' bits 32..39.
        b[0x274] = t_hi;
        b[0x276] = t_hi;
        b[0x277] = t_hi;
        let csum = crc32c_le(!0, &b[..0x3FC]);
        put32(&mut b, 0x3FC, csum);
        b
    }
}

/// One group descriptor's fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupDesc {
    /// `bg_block_bitmap`.
    pub block_bitmap: u64,
    /// `bg_inode_bitmap`.
    pub inode_bitmap: u64,
    /// `bg_inode_table`.
    pub inode_table: u64,
    /// `bg_free_blocks_count`.
    pub free_blocks: u32,
    /// `bg_free_inodes_count`.
    pub free_inodes: u32,
    /// `bg_used_dirs_count`.
    pub used_dirs: u32,
    /// `bg_flags`.
    pub flags: u16,
    /// `bg_itable_unused`.
    pub itable_unused: u32,
    /// crc32c of the block bitmap (`bg_block_bitmap_csum`).
    pub block_bitmap_csum: u32,
    /// crc32c of the inode bitmap (`bg_inode_bitmap_csum`).
    pub inode_bitmap_csum: u32,
}

impl GroupDesc {
    /// The descriptor of group `group`, `size` bytes (32, or 64 with `64bit`), with its
    /// checksum: crc32c(seed, le32 group ‖ descriptor with `bg_checksum` 0), low 16 bits
    /// (`group_descr.rst`; e2fsprogs `ext2fs_group_desc_csum`, metadata_csum branch). The high halves of the bitmap
    /// checksums are stored only in 64-byte descriptors.
    pub fn encode(&self, seed: u32, group: u32, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        let wide = size >= 64;
        put32(&mut b, 0x0, self.block_bitmap as u32);
        put32(&mut b, 0x4, self.inode_bitmap as u32);
        put32(&mut b, 0x8, self.inode_table as u32);
        put16(&mut b, 0xC, self.free_blocks as u16);
        put16(&mut b, 0xE, self.free_inodes as u16);
        put16(&mut b, 0x10, self.used_dirs as u16);
        put16(&mut b, 0x12, self.flags);
        put16(&mut b, 0x18, self.block_bitmap_csum as u16);
        put16(&mut b, 0x1A, self.inode_bitmap_csum as u16);
        put16(&mut b, 0x1C, self.itable_unused as u16);
        if wide {
            put32(&mut b, 0x20, (self.block_bitmap >> 32) as u32);
            put32(&mut b, 0x24, (self.inode_bitmap >> 32) as u32);
            put32(&mut b, 0x28, (self.inode_table >> 32) as u32);
            put16(&mut b, 0x2C, (self.free_blocks >> 16) as u16);
            put16(&mut b, 0x2E, (self.free_inodes >> 16) as u16);
            put16(&mut b, 0x30, (self.used_dirs >> 16) as u16);
            put16(&mut b, 0x32, (self.itable_unused >> 16) as u16);
            put16(&mut b, 0x38, (self.block_bitmap_csum >> 16) as u16);
            put16(&mut b, 0x3A, (self.inode_bitmap_csum >> 16) as u16);
        }
        let c = crc32c_le(crc32c_le(seed, &group.to_le_bytes()), &b);
        put16(&mut b, 0x1E, c as u16);
        b
    }
}

/// An inode's fields; [`Inode::encode`] adds the checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// `i_mode`: type and permissions.
    pub mode: u16,
    /// Owner (32 bits: the high half goes to `osd2.l_i_uid_high`).
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `i_size`.
    pub size: u64,
    /// atime = ctime = mtime = crtime, seconds.
    pub time: i64,
    /// Their nanoseconds.
    pub time_nsec: u32,
    /// `i_links_count`.
    pub links: u16,
    /// `i_blocks` in 512-byte units (48 bits with `huge_file`).
    pub blocks_512: u64,
    /// `i_flags`.
    pub flags: u32,
    /// `i_block`: extent root, fast symlink target or device number.
    pub i_block: [u8; I_BLOCK_SIZE],
    /// `i_generation`.
    pub generation: u32,
    /// `i_file_acl`: the xattr block, 0 for none.
    pub xattr_block: u64,
    /// In-inode xattr area (magic first), at most 256 − 160 bytes; empty for none.
    pub in_inode_xattrs: Vec<u8>,
}

impl Default for Inode {
    fn default() -> Self {
        Inode {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            time: 0,
            time_nsec: 0,
            links: 0,
            blocks_512: 0,
            flags: 0,
            i_block: [0; I_BLOCK_SIZE],
            generation: 0,
            xattr_block: 0,
            in_inode_xattrs: Vec::new(),
        }
    }
}

impl Inode {
    /// The 256-byte inode of number `ino` with its checksum: crc32c(seed, le32 ino ‖ le32
    /// generation ‖ inode with `l_i_checksum_lo` and `i_checksum_hi` zero), low 16 bits at 0x7C,
    /// high 16 at 0x82 (`inodes.rst`; e2fsprogs `ext2fs_inode_csum`).
    pub fn encode(&self, seed: u32, ino: u32) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        put16(&mut b, 0x0, self.mode);
        put16(&mut b, 0x2, self.uid as u16);
        put32(&mut b, 0x4, self.size as u32);
        let (t, extra) = encode_time(self.time, self.time_nsec);
        put32(&mut b, 0x8, t); // atime
        put32(&mut b, 0xC, t); // ctime
        put32(&mut b, 0x10, t); // mtime
        put16(&mut b, 0x18, self.gid as u16);
        put16(&mut b, 0x1A, self.links);
        put32(&mut b, 0x1C, self.blocks_512 as u32);
        put32(&mut b, 0x20, self.flags);
        put_bytes(&mut b, 0x28, &self.i_block);
        put32(&mut b, 0x64, self.generation);
        put32(&mut b, 0x68, self.xattr_block as u32);
        put32(&mut b, 0x6C, (self.size >> 32) as u32);
        put16(&mut b, 0x74, (self.blocks_512 >> 32) as u16);
        put16(&mut b, 0x76, (self.xattr_block >> 32) as u16);
        put16(&mut b, 0x78, (self.uid >> 16) as u16);
        put16(&mut b, 0x7A, (self.gid >> 16) as u16);
        put16(&mut b, 0x80, EXTRA_ISIZE as u16);
        put32(&mut b, 0x84, extra); // ctime_extra
        put32(&mut b, 0x88, extra); // mtime_extra
        put32(&mut b, 0x8C, extra); // atime_extra
        put32(&mut b, 0x90, t); // crtime
        put32(&mut b, 0x94, extra); // crtime_extra
        let room = INODE_SIZE - IN_INODE_XATTR_OFFSET;
        let n = self.in_inode_xattrs.len().min(room);
        if let Some(x) = self.in_inode_xattrs.get(..n) {
            put_bytes(&mut b, IN_INODE_XATTR_OFFSET, x);
        }
        let c = crc32c_le(inode_seed(seed, ino, self.generation), &b);
        put16(&mut b, 0x7C, c as u16);
        put16(&mut b, 0x82, (c >> 16) as u16);
        b
    }
}

/// A device number in `i_block` as the kernel stores it (`fs/ext4/inode.c`,
/// `ext4_write_inode`/`ext4_do_update_inode`): the old 16-bit encoding in word 0 when major and
/// minor both fit a byte, else 0 in word 0 and the new encoding (`new_encode_dev`: minor's low
/// byte, major from bit 8, minor's high bits from bit 20) in word 1.
pub fn device_i_block(major: u32, minor: u32) -> [u8; I_BLOCK_SIZE] {
    let mut b = [0u8; I_BLOCK_SIZE];
    if major < 256 && minor < 256 {
        put32(&mut b, 0, (major << 8) | minor);
    } else {
        let new = (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12);
        put32(&mut b, 4, new);
    }
    b
}

/// One extent: `len` blocks (1 to [`MAX_EXTENT_LEN`]) of the file from logical block `logical`,
/// stored from physical block `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub logical: u32,
    /// Number of blocks.
    pub len: u16,
    /// First physical block (48 bits).
    pub start: u64,
}

/// An index entry: the node at physical block `leaf` covers logical blocks from `logical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentIndex {
    /// First logical block under the node.
    pub logical: u32,
    /// Physical block of the node.
    pub leaf: u64,
}

fn extent_header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(b, 0, EXTENT_MAGIC);
    put16(b, 2, entries as u16);
    put16(b, 4, max as u16);
    put16(b, 6, depth);
    // eh_generation stays 0, as the kernel leaves it.
}

fn put_extent(b: &mut [u8], at: usize, e: &Extent) {
    put32(b, at, e.logical);
    put16(b, at + 4, e.len);
    put16(b, at + 6, (e.start >> 32) as u16);
    put32(b, at + 8, e.start as u32);
}

fn put_index(b: &mut [u8], at: usize, i: &ExtentIndex) {
    put32(b, at, i.logical);
    put32(b, at + 4, i.leaf as u32);
    put16(b, at + 8, (i.leaf >> 32) as u16);
}

/// Entries of an extent node: leaves or indexes.
#[derive(Clone, Copy, Debug)]
pub enum Node<'a> {
    /// A leaf (depth 0).
    Leaf(&'a [Extent]),
    /// An index node at this depth (1 or more).
    Index(&'a [ExtentIndex], u16),
}

impl Node<'_> {
    fn write(&self, b: &mut [u8], max: usize) -> Result<()> {
        let count = match self {
            Node::Leaf(e) => e.len(),
            Node::Index(i, _) => i.len(),
        };
        if count > max {
            return Err(Error::TooManyExtents { count, room: max });
        }
        match self {
            Node::Leaf(es) => {
                extent_header(b, es.len(), max, 0);
                for (k, e) in es.iter().enumerate() {
                    put_extent(b, 12 + 12 * k, e);
                }
            }
            Node::Index(is, depth) => {
                extent_header(b, is.len(), max, *depth);
                for (k, i) in is.iter().enumerate() {
                    put_index(b, 12 + 12 * k, i);
                }
            }
        }
        Ok(())
    }
}

/// `i_block` holding the root of an extent tree (header with `eh_max` 4, `ifork.rst`).
pub fn extent_root(node: Node<'_>) -> Result<[u8; I_BLOCK_SIZE]> {
    let mut b = [0u8; I_BLOCK_SIZE];
    node.write(&mut b, EXTENTS_IN_INODE)?;
    Ok(b)
}

/// An extent tree block (leaf or index) of inode `ino`, with its tail: crc32c(inode seed, the
/// header and all `eh_max` entries) right after the last possible entry (`ifork.rst`,
/// `ext4_extent_tail`; e2fsprogs `ext2fs_extent_block_csum`).
pub fn extent_block(node: Node<'_>, seed: u32, ino: u32, generation: u32) -> Result<Vec<u8>> {
    let mut b = vec![0u8; BLOCK];
    node.write(&mut b, EXTENTS_PER_BLOCK)?;
    let tail = 12 + 12 * EXTENTS_PER_BLOCK;
    let c = crc32c_le(inode_seed(seed, ino, generation), &b[..tail]);
    put32(&mut b, tail, c);
    Ok(b)
}

/// An extended attribute ready to store: name index, name suffix, value in ext4's format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    /// `e_name_index` (`attributes.rst`).
    pub index: u8,
    /// The name after the prefix.
    pub name: Vec<u8>,
    /// The value as stored.
    pub value: Vec<u8>,
}

/// Bytes an entry takes in the entry table: 16 bytes of header and the name, padded to 4
/// (`EXT4_XATTR_LEN`).
pub fn xattr_entry_len(x: &Xattr) -> usize {
    (16 + x.name.len()).next_multiple_of(4)
}

/// Bytes a value takes, padded to 4 (`EXT4_XATTR_SIZE`).
pub fn xattr_value_len(x: &Xattr) -> usize {
    x.value.len().next_multiple_of(4)
}

impl Xattr {
    /// Splits a full name into ext4's prefix index and suffix (`attributes.rst`, "Attribute
    /// Name Indices"), converting POSIX ACL values from the VFS's `posix_acl_xattr` format to
    /// ext4's (`fs/ext4/acl.c`, `ext4_acl_to_disk`), which is what the kernel reads back.
    pub fn from_full(full: &[u8], value: &[u8]) -> Result<Xattr> {
        let name = || full.escape_ascii().to_string();
        let (index, suffix): (u8, &[u8]) = if full == b"system.posix_acl_access" {
            (2, b"")
        } else if full == b"system.posix_acl_default" {
            (3, b"")
        } else if let Some(s) = full.strip_prefix(b"user.") {
            (1, s)
        } else if let Some(s) = full.strip_prefix(b"trusted.") {
            (4, s)
        } else if let Some(s) = full.strip_prefix(b"security.") {
            (6, s)
        } else if let Some(s) = full.strip_prefix(b"system.") {
            (7, s)
        } else {
            return Err(Error::XattrPrefix { name: name() });
        };
        if suffix.len() > 255 {
            return Err(Error::XattrTooBig {
                name: name(),
                reason: "the name is over 255 bytes",
            });
        }
        let value = if index == 2 || index == 3 {
            acl_to_disk(value).ok_or_else(|| Error::BadAcl { name: name() })?
        } else {
            value.to_vec()
        };
        Ok(Xattr {
            index,
            name: suffix.to_vec(),
            value,
        })
    }

    /// `e_hash` of the entry (e2fsprogs `lib/ext2fs/ext_attr.c`, `ext2fs_ext_attr_hash_entry`:
    /// the name bytes as signed chars, then the value as le32 words, zero-padded).
    pub fn hash(&self) -> u32 {
        let mut h: u32 = 0;
        for &c in &self.name {
            h = (h << 5) ^ (h >> 27) ^ (c as i8 as i32 as u32);
        }
        for w in self.value.chunks(4) {
            let mut word = [0u8; 4];
            word[..w.len()].copy_from_slice(w);
            h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(word);
        }
        h
    }
}

/// ACL tags (`include/uapi/linux/posix_acl.h`).
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// Converts a VFS ACL (le32 version 2, then 8-byte entries tag/perm/id) to ext4's (le32 version
/// 1, then 4-byte entries, 8-byte for named users and groups). A value already in ext4's
/// format passes through. `None` if it is neither.
fn acl_to_disk(v: &[u8]) -> Option<Vec<u8>> {
    let (head, body) = v.split_at_checked(4)?;
    match u32::from_le_bytes(head.try_into().ok()?) {
        1 => Some(v.to_vec()),
        2 if body.len() % 8 == 0 => {
            let mut out = 1u32.to_le_bytes().to_vec();
            for e in body.chunks_exact(8) {
                let tag = u16::from_le_bytes([e[0], e[1]]);
                out.extend_from_slice(&e[..4]);
                if tag == ACL_USER || tag == ACL_GROUP {
                    out.extend_from_slice(&e[4..8]);
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// Writes entries and values into an xattr area of `area.len()` bytes. Entries start at
/// `entries_at`; values are packed from the end down, their offsets counted from `base`.
/// Returns false when they do not fit (with the 4-byte terminator).
fn write_xattrs(area: &mut [u8], entries_at: usize, base: usize, xs: &[&Xattr]) -> bool {
    let mut e = entries_at;
    let mut v = area.len();
    for x in xs {
        let el = xattr_entry_len(x);
        let vl = xattr_value_len(x);
        let Some(nv) = v.checked_sub(vl) else {
            return false;
        };
        if e + el + 4 > nv {
            return false;
        }
        v = nv;
        area[e] = x.name.len() as u8;
        area[e + 1] = x.index;
        put16(area, e + 2, (v - base) as u16);
        put32(area, e + 4, 0); // e_value_inum: no ea_inode
        put32(area, e + 8, x.value.len() as u32);
        put32(area, e + 12, x.hash());
        put_bytes(area, e + 16, &x.name);
        put_bytes(area, v, &x.value);
        e += el;
    }
    true
}

/// The in-inode xattr area (magic, entries, values; `attributes.rst`: value offsets count from
/// the first entry), or `None` when `xs` do not fit in the 92 bytes after `i_extra_isize`.
pub fn in_inode_xattrs(xs: &[&Xattr]) -> Option<Vec<u8>> {
    if xs.is_empty() {
        return Some(Vec::new());
    }
    let mut area = vec![0u8; INODE_SIZE - IN_INODE_XATTR_OFFSET];
    put32(&mut area, 0, XATTR_MAGIC);
    write_xattrs(&mut area, 4, 4, xs).then_some(area)
}

/// An xattr block at physical block `block` (`attributes.rst`): the 32-byte header (magic,
/// refcount 1, one block, the block hash, the checksum crc32c(seed, le64 block ‖ block with
/// `h_checksum` 0), e2fsprogs `ext2fs_ext_attr_block_csum`), entries sorted as the kernel
/// searches them (index, name length, name: `fs/ext4/xattr.c`, `ext4_xattr_find_entry`), and
/// values from the end. `None` when they do not fit.
pub fn xattr_block(xs: &[&Xattr], seed: u32, block: u64) -> Option<Vec<u8>> {
    let mut sorted = xs.to_vec();
    sorted.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    let mut b = vec![0u8; BLOCK];
    put32(&mut b, 0, XATTR_MAGIC);
    put32(&mut b, 4, 1); // h_refcount
    put32(&mut b, 8, 1); // h_blocks
    if !write_xattrs(&mut b, 32, 0, &sorted) {
        return None;
    }
    // h_hash: the entries' hashes folded (ext2fs_ext_attr_block_rehash).
    let mut h: u32 = 0;
    for x in &sorted {
        h = (h << 16) ^ (h >> 16) ^ x.hash();
    }
    put32(&mut b, 12, h);
    let c = crc32c_le(seed, &block.to_le_bytes());
    let c = crc32c_le(c, &b);
    put32(&mut b, 16, c);
    Some(b)
}

/// The journal's first block: a version-2 jbd2 superblock, big-endian, for a clean empty
/// journal of `blocks` blocks (`journal.rst`; e2fsprogs `ext2fs_create_journal_superblock2`:
/// `s_first` 1, `s_sequence` 1, `s_start` 0, one user, the file system's UUID).
pub fn journal_superblock(blocks: u32, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; SUPERBLOCK_SIZE];
    put_be32(&mut b, 0x0, JBD2_MAGIC);
    put_be32(&mut b, 0x4, JBD2_SUPERBLOCK_V2);
    put_be32(&mut b, 0xC, BLOCK as u32);
    put_be32(&mut b, 0x10, blocks);
    put_be32(&mut b, 0x14, 1); // s_first
    put_be32(&mut b, 0x18, 1); // s_sequence
    put_bytes(&mut b, 0x30, uuid);
    put_be32(&mut b, 0x40, 1); // s_nr_users
    b
}

/// The number of journal blocks mke2fs gives a file system of `blocks` blocks (e2fsprogs
/// `lib/ext2fs/mkjournal.c`, `ext2fs_default_journal_size`); `None` below 2048 blocks.
pub fn default_journal_blocks(blocks: u64) -> Option<u32> {
    Some(match blocks {
        b if b < 2048 => return None,
        b if b < 32_768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16_384,
        b if b < 8192 * 1024 => 32_768,
        b if b < 16_384 * 1024 => 65_536,
        b if b < 32_768 * 1024 => 131_072,
        _ => 262_144,
    })
}

/// Whether group `g` holds a superblock backup with `sparse_super`: 0, 1 and powers of 3, 5
/// and 7 (`super.rst`).
pub fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&p| {
        let mut x = p;
        while x < g {
            x *= p;
        }
        x == g
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_groups() {
        let got: Vec<u64> = (0..100).filter(|&g| has_super(g)).collect();
        assert_eq!(got, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn times_carry_the_epoch_bits() {
        // 2038-01-19T03:14:08Z, one second past i32: epoch 1, low word wraps negative.
        assert_eq!(encode_time(1 << 31, 0), (0x8000_0000, 1));
        assert_eq!(encode_time(-1, 5), (u32::MAX, 5 << 2));
        assert_eq!(encode_time(0x1_0000_0000, 0), (0, 1));
        assert_eq!(encode_time(1_700_000_000, 1), (1_700_000_000, 4));
    }

    #[test]
    fn devices_old_and_new() {
        let b = device_i_block(8, 1);
        assert_eq!(&b[..8], &[1, 8, 0, 0, 0, 0, 0, 0]);
        let b = device_i_block(259, 0x12345);
        assert_eq!(u32::from_le_bytes(b[..4].try_into().unwrap()), 0);
        let w = u32::from_le_bytes(b[4..8].try_into().unwrap());
        assert_eq!(w, 0x45 | (259 << 8) | (0x12300 << 12));
    }

    #[test]
    fn xattr_prefixes() {
        let x = Xattr::from_full(b"security.capability", b"v").unwrap();
        assert_eq!((x.index, x.name.as_slice()), (6, &b"capability"[..]));
        assert!(Xattr::from_full(b"os2.x", b"").is_err());
        let acl = [2u32.to_le_bytes(), [1, 0, 6, 0], [0xff; 4]].concat();
        let x = Xattr::from_full(b"system.posix_acl_access", &acl).unwrap();
        assert_eq!(x.value, [1, 0, 0, 0, 1, 0, 6, 0]);
    }

    #[test]
    fn superblock_checksum_covers_the_block() {
        let sb = Superblock {
            inodes_count: 16,
            blocks_count: 4096,
            free_blocks: 1,
            free_inodes: 1,
            inodes_per_group: 16,
            blocks_per_group: 32768,
            is_64bit: false,
            uuid: [1; 16],
            label: [0; 16],
            hash_seed: [2; 16],
            time: 0,
            jnl_blocks: [0; 17],
            log_groups_per_flex: 4,
            group_nr: 0,
        };
        let b = sb.encode();
        let c = u32::from_le_bytes(b[0x3FC..].try_into().unwrap());
        assert_eq!(c, crc32c_le(!0, &b[..0x3FC]));
        assert_eq!(&b[0x38..0x3A], &[0x53, 0xEF]);
    }
}
