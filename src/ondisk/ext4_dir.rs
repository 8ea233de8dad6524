//! ext4 directories, encoded: entries, leaf blocks with their checksum tails, the directory
//! hash and hashed (`dir_index`, "htree") directories.
//!
//! The layouts are those of the kernel's `Documentation/filesystems/ext4/directory.rst`
//! ("directory.rst" below): `ext4_dir_entry_2`, the 12-byte `ext4_dir_entry_tail` that ends
//! every leaf block under `metadata_csum`, and the hash tree's `dx_root`, `dx_node` and
//! `dx_tail`. The hash is the one of e2fsprogs `lib/ext2fs/dirhash.c` and the kernel's
//! `fs/ext4/hash.c`; the checksums chain [`crc32c_le`] as e2fsprogs `lib/ext2fs/csum.c`
//! (`ext2fs_dirent_csum`, `ext2fs_dx_csum`) and the kernel's `fs/ext4/namei.c`
//! (`ext4_dirblock_csum`, `ext4_dx_csum`) do.
//!
//! Nothing here reads a disk: [`dir_blocks`] turns a directory's names into its logical
//! blocks, which the writer in [`crate::layout::ext4`] places. Every size that comes from the
//! caller (name lengths, the number of names, the block size) is checked before use; a
//! directory that ext4 cannot hold is an `Err`, never a panic.

use crate::ondisk::crc32c::crc32c_le;

/// File type code of an entry whose type is not recorded (`EXT4_FT_UNKNOWN`, directory.rst
/// "Linear (Classic) Directories").
pub const FT_UNKNOWN: u8 = 0;
/// File type code of a regular file (`EXT4_FT_REG_FILE`).
pub const FT_REG_FILE: u8 = 1;
/// File type code of a directory (`EXT4_FT_DIR`).
pub const FT_DIR: u8 = 2;
/// File type code of a character device (`EXT4_FT_CHRDEV`).
pub const FT_CHRDEV: u8 = 3;
/// File type code of a block device (`EXT4_FT_BLKDEV`).
pub const FT_BLKDEV: u8 = 4;
/// File type code of a FIFO (`EXT4_FT_FIFO`).
pub const FT_FIFO: u8 = 5;
/// File type code of a socket (`EXT4_FT_SOCK`).
pub const FT_SOCK: u8 = 6;
/// File type code of a symbolic link (`EXT4_FT_SYMLINK`).
pub const FT_SYMLINK: u8 = 7;

/// Longest name an entry holds: `name_len` is one byte (`EXT4_NAME_LEN`).
pub const MAX_NAME_LEN: usize = 255;
/// Bytes of `ext4_dir_entry_2` before the name: inode (le32), rec_len (le16), name_len (u8),
/// file_type (u8).
pub const DIRENT_HEADER: usize = 8;
/// Size of the `ext4_dir_entry_tail` that ends a leaf block under `metadata_csum`
/// (directory.rst, "Checksums").
pub const DIR_TAIL_LEN: usize = 12;
/// `det_reserved_ft` of that tail: the file type byte that marks the fake entry as a tail.
pub const DIR_TAIL_FT: u8 = 0xDE;
/// Size of the `dx_tail` (`dt_reserved`, `dt_checksum`) that follows the index entries of a
/// `dx_root` or `dx_node` under `metadata_csum`.
pub const DX_TAIL_LEN: usize = 8;
/// Size of one `dx_entry` (hash le32, block le32); the first one of a block holds the
/// `limit`/`count` header in place of its hash.
pub const DX_ENTRY_LEN: usize = 8;
/// Offset of `limit`/`count` in a `dx_root`: after `.` (12 bytes), the 12-byte `..` header and
/// the 8-byte `dx_root_info` (directory.rst, "Hash Tree Directories").
pub const DX_ROOT_COUNT_OFFSET: usize = 32;
/// Offset of `limit`/`count` in a `dx_node`: after its 8-byte fake entry.
pub const DX_NODE_COUNT_OFFSET: usize = 8;
/// `dx_root_info.info_length`: the size of the info itself.
const DX_ROOT_INFO_LEN: u8 = 8;
/// Smallest and largest ext4 block sizes (`EXT4_MIN_BLOCK_SIZE`, `EXT4_MAX_BLOCK_SIZE`).
const MIN_BLOCK_SIZE: usize = 1024;
const MAX_BLOCK_SIZE: usize = 65_536;
/// A directory of this many blocks or more is hashed: e2fsck (`e2fsck/pass1.c`, the
/// `dirs_to_hash` test at the end of `check_blocks`) rehashes ("Pass 3A: Optimizing
/// directories") any unindexed directory of 3 blocks or more on a `dir_index` file system.
pub const HTREE_MIN_BLOCKS: usize = 3;
/// The most blocks [`DirParams::min_blocks`] may ask for: lost+found wants 4 (mke2fs), and a
/// bound keeps a wrong value from allocating without limit.
pub const MAX_MIN_BLOCKS: usize = 1024;
/// The default hash state when the seed is all zero: MD4's initial words (RFC 1320 §3.3),
/// which `ext2fs_dirhash` and `ext4fs_dirhash` start from.
const DEFAULT_SEED: [u32; 4] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476];

/// Why a directory cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name longer than [`MAX_NAME_LEN`] bytes.
    #[error("directory entry name of {0} bytes is over the 255-byte limit")]
    NameTooLong(usize),
    /// An empty name, `.`, `..`, or a name holding `/` or NUL.
    #[error("directory entry name {0:?} is not a valid ext4 name")]
    BadName(String),
    /// The same name twice in one directory (e2fsck reports and rehashes duplicates).
    #[error("directory entry name {0:?} appears twice")]
    DuplicateName(String),
    /// A block size ext4 does not have.
    #[error("block size {0} is not a power of two between 1024 and 65536")]
    BadBlockSize(usize),
    /// `min_blocks` above [`MAX_MIN_BLOCKS`].
    #[error("a directory of at least {0} blocks was asked for, over the limit of 1024")]
    TooManyMinBlocks(usize),
    /// More leaf blocks than a two-level hash tree indexes (without `largedir`).
    #[error(
        "directory needs {leaves} leaf blocks, more than a two-level hash tree indexes ({max})"
    )]
    TooManyEntries {
        /// Leaf blocks needed.
        leaves: usize,
        /// Leaf blocks a root and one level of index nodes can reference.
        max: usize,
    },
    /// An entry or header does not fit where it was asked to go (a caller's mistake with the
    /// low-level encoders).
    #[error("directory record of {len} bytes at offset {offset} does not fit a {block}-byte block")]
    DoesNotFit {
        /// Offset asked for.
        offset: usize,
        /// Record length asked for.
        len: usize,
        /// Size of the block given.
        block: usize,
    },
}

/// One name in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntryRef<'a> {
    /// Inode the name refers to.
    pub inode: u32,
    /// One of the `FT_*` codes.
    pub file_type: u8,
    /// The name's raw bytes (any bytes but `/` and NUL; need not be UTF-8).
    pub name: &'a [u8],
}

/// How to encode a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirParams {
    /// Block size: a power of two from 1024 to 65536.
    pub block_size: usize,
    /// The `metadata_csum` seed, `crc32c_le(!0, s_uuid)` (or `s_checksum_seed`); `None`
    /// without `metadata_csum`: no checksum tails.
    pub csum_seed: Option<u32>,
    /// `s_hash_seed` as 4 le32 words; all zero selects the default MD4 start.
    pub hash_seed: [u32; 4],
    /// Whether `s_flags` has `EXT2_FLAGS_UNSIGNED_HASH` (else the signed hash is used).
    pub hash_unsigned: bool,
    /// This directory's inode number (checksums and `.`).
    pub inode: u32,
    /// This directory's `i_generation` (checksums).
    pub generation: u32,
    /// Inode of the parent directory (`..`).
    pub parent: u32,
    /// At least this many blocks for a linear directory (lost+found: 4); at most
    /// [`MAX_MIN_BLOCKS`].
    pub min_blocks: usize,
}

/// A directory's logical blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirBlocks {
    /// Block `i` is logical block `i` of the directory; each is `block_size` bytes.
    pub blocks: Vec<Vec<u8>>,
    /// Whether the blocks form a hash tree: the caller then sets `EXT4_INDEX_FL` on the inode.
    pub indexed: bool,
}

/// The directory hash algorithms (`s_def_hash_version`, `dx_root_info.hash_version`;
/// directory.rst "Hash Tree Directories").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashVersion {
    /// `DX_HASH_LEGACY` (0), the original `dx_hack_hash`.
    Legacy,
    /// `DX_HASH_HALF_MD4` (1), the default.
    HalfMd4,
    /// `DX_HASH_TEA` (2).
    Tea,
}

impl HashVersion {
    /// The code stored on disk (the signed variant's; unsignedness is a superblock flag).
    pub fn code(self) -> u8 {
        match self {
            HashVersion::Legacy => 0,
            HashVersion::HalfMd4 => 1,
            HashVersion::Tea => 2,
        }
    }
}

/// Bytes a directory entry with a name of `name_len` bytes needs: the 8-byte header and the
/// name, rounded up to 4 (`EXT4_DIR_REC_LEN`).
pub fn dirent_len(name_len: usize) -> usize {
    (DIRENT_HEADER + name_len + 3) & !3
}

/// `rec_len` as stored: a 64 KiB record (a whole 64 KiB block) does not fit 16 bits and is
/// written as 0xFFFF (`ext4_rec_len_to_disk`, `EXT4_MAX_REC_LEN`).
fn rec_len_to_disk(rec_len: usize) -> u16 {
    u16::try_from(rec_len).unwrap_or(u16::MAX)
}

/// Writes the little-endian `bytes` at `offset` of `block`, or reports the overrun.
fn put(block: &mut [u8], offset: usize, bytes: &[u8]) -> Result<(), Error> {
    let block_len = block.len();
    let dst = offset
        .checked_add(bytes.len())
        .and_then(|end| block.get_mut(offset..end))
        .ok_or(Error::DoesNotFit {
            offset,
            len: bytes.len(),
            block: block_len,
        })?;
    dst.copy_from_slice(bytes);
    Ok(())
}

/// Reads a le16 at `offset` of `block`, if it is there.
fn le16_at(block: &[u8], offset: usize) -> Option<u16> {
    let b = block.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes([*b.first()?, *b.get(1)?]))
}

/// Writes an `ext4_dir_entry_2` at `offset` of `block`: `inode`, a record of `rec_len` bytes
/// (a multiple of 4, at least [`dirent_len`] of the name), `name_len`, `file_type` and the
/// name. The bytes between the name and the end of the record are left as they are (zero in a
/// fresh block).
pub fn put_dirent(
    block: &mut [u8],
    offset: usize,
    inode: u32,
    rec_len: usize,
    file_type: u8,
    name: &[u8],
) -> Result<(), Error> {
    let name_len = u8::try_from(name.len()).map_err(|_| Error::NameTooLong(name.len()))?;
    let fits = rec_len.is_multiple_of(4)
        && rec_len >= dirent_len(name.len())
        && rec_len <= MAX_BLOCK_SIZE
        && offset
            .checked_add(rec_len)
            .is_some_and(|end| end <= block.len());
    if !fits {
        return Err(Error::DoesNotFit {
            offset,
            len: rec_len,
            block: block.len(),
        });
    }
    put(block, offset, &inode.to_le_bytes())?;
    put(block, offset + 4, &rec_len_to_disk(rec_len).to_le_bytes())?;
    put(block, offset + 6, &[name_len, file_type])?;
    put(block, offset + DIRENT_HEADER, name)
}

/// The checksum state after this directory's inode number and generation: the start of every
/// directory checksum (`ext4_dirblock_csum` and `ext4_dx_csum` chain from `ei->i_csum_seed`,
/// which `ext4_iget` sets to this).
fn inode_csum_seed(csum_seed: u32, inode: u32, generation: u32) -> u32 {
    crc32c_le(
        crc32c_le(csum_seed, &inode.to_le_bytes()),
        &generation.to_le_bytes(),
    )
}

/// Writes the 12-byte `ext4_dir_entry_tail` at the end of a leaf `block`: inode 0,
/// `rec_len` 12, `name_len` 0, `det_reserved_ft` 0xDE and `det_checksum`, the crc32c from
/// `csum_seed` over le32 `inode`, le32 `generation` and the block up to the tail
/// (`ext2fs_dirent_csum`).
pub fn put_dir_tail(
    block: &mut [u8],
    csum_seed: u32,
    inode: u32,
    generation: u32,
) -> Result<(), Error> {
    let at = block
        .len()
        .checked_sub(DIR_TAIL_LEN)
        .ok_or(Error::DoesNotFit {
            offset: 0,
            len: DIR_TAIL_LEN,
            block: block.len(),
        })?;
    put(block, at, &[0; 4])?;
    put(block, at + 4, &(DIR_TAIL_LEN as u16).to_le_bytes())?;
    put(block, at + 6, &[0, DIR_TAIL_FT])?;
    let covered = block.get(..at).unwrap_or_default();
    let csum = crc32c_le(inode_csum_seed(csum_seed, inode, generation), covered);
    put(block, at + 8, &csum.to_le_bytes())
}

/// Fills the `dx_tail` of an index `block` whose `limit`/`count` header is at `count_offset`
/// ([`DX_ROOT_COUNT_OFFSET`] or [`DX_NODE_COUNT_OFFSET`]): the tail follows `limit` entries;
/// `dt_reserved` is 0 and `dt_checksum` the crc32c from `csum_seed` over le32 `inode`, le32
/// `generation`, the block up to the end of the `count` entries in use, `dt_reserved`, and a
/// zero checksum word (`ext2fs_dx_csum`, kernel `ext4_dx_csum`).
pub fn put_dx_tail(
    block: &mut [u8],
    count_offset: usize,
    csum_seed: u32,
    inode: u32,
    generation: u32,
) -> Result<(), Error> {
    let misfit = Error::DoesNotFit {
        offset: count_offset,
        len: DX_TAIL_LEN,
        block: block.len(),
    };
    let (Some(limit), Some(count)) = (
        le16_at(block, count_offset),
        le16_at(block, count_offset + 2),
    ) else {
        return Err(misfit);
    };
    let (limit, count) = (usize::from(limit), usize::from(count));
    let tail = count_offset + limit * DX_ENTRY_LEN;
    if count > limit || tail + DX_TAIL_LEN > block.len() {
        return Err(misfit);
    }
    put(block, tail, &[0; 4])?;
    let used = block
        .get(..count_offset + count * DX_ENTRY_LEN)
        .unwrap_or_default();
    let mut csum = crc32c_le(inode_csum_seed(csum_seed, inode, generation), used);
    csum = crc32c_le(csum, &[0; 8]);
    put(block, tail + 4, &csum.to_le_bytes())
}

/// One round of half MD4 (`halfMD4Transform` in `dirhash.c`): MD4's three rounds (RFC 1320
/// §3.4) cut down to eight words of input.
fn half_md4_transform(buf: &mut [u32; 4], input: &[u32; 8]) {
    // The round constants of MD4 rounds 2 and 3 (RFC 1320 §3.4), as octal in dirhash.c.
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    let [i0, i1, i2, i3, i4, i5, i6, i7] = *input;
    // Each step: a = (a + fn(b, c, d) + x) <<< s, rotating the roles of a, b, c, d.
    macro_rules! step {
        ($fn:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($fn($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s);
        };
    }
    step!(f, a, b, c, d, i0, 3);
    step!(f, d, a, b, c, i1, 7);
    step!(f, c, d, a, b, i2, 11);
    step!(f, b, c, d, a, i3, 19);
    step!(f, a, b, c, d, i4, 3);
    step!(f, d, a, b, c, i5, 7);
    step!(f, c, d, a, b, i6, 11);
    step!(f, b, c, d, a, i7, 19);

    step!(g, a, b, c, d, i1.wrapping_add(K2), 3);
    step!(g, d, a, b, c, i3.wrapping_add(K2), 5);
    step!(g, c, d, a, b, i5.wrapping_add(K2), 9);
    step!(g, b, c, d, a, i7.wrapping_add(K2), 13);
    step!(g, a, b, c, d, i0.wrapping_add(K2), 3);
    step!(g, d, a, b, c, i2.wrapping_add(K2), 5);
    step!(g, c, d, a, b, i4.wrapping_add(K2), 9);
    step!(g, b, c, d, a, i6.wrapping_add(K2), 13);

    step!(h, a, b, c, d, i3.wrapping_add(K3), 3);
    step!(h, d, a, b, c, i7.wrapping_add(K3), 9);
    step!(h, c, d, a, b, i2.wrapping_add(K3), 11);
    step!(h, b, c, d, a, i6.wrapping_add(K3), 15);
    step!(h, a, b, c, d, i1.wrapping_add(K3), 3);
    step!(h, d, a, b, c, i5.wrapping_add(K3), 9);
    step!(h, c, d, a, b, i0.wrapping_add(K3), 11);
    step!(h, b, c, d, a, i4.wrapping_add(K3), 15);

    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// TEA in a Davies-Meyer construction, 16 rounds (`TEA_transform` in `dirhash.c`).
fn tea_transform(buf: &mut [u32; 4], input: &[u32; 4]) {
    // TEA's key schedule constant, 2^32 / golden ratio.
    const DELTA: u32 = 0x9E37_79B9;
    let [a, b, c, d] = *input;
    let (mut b0, mut b1, mut sum) = (buf[0], buf[1], 0u32);
    for _ in 0..16 {
        sum = sum.wrapping_add(DELTA);
        b0 = b0.wrapping_add(
            (b1 << 4).wrapping_add(a) ^ b1.wrapping_add(sum) ^ (b1 >> 5).wrapping_add(b),
        );
        b1 = b1.wrapping_add(
            (b0 << 4).wrapping_add(c) ^ b0.wrapping_add(sum) ^ (b0 >> 5).wrapping_add(d),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

/// A name byte as the hash reads it: `unsigned char`, or `signed char` sign-extended to 32
/// bits, which is what makes the two variants differ for bytes 0x80 and up.
fn hash_char(byte: u8, unsigned: bool) -> u32 {
    if unsigned {
        u32::from(byte)
    } else {
        i32::from(byte as i8) as u32
    }
}

/// Packs up to `out.len() * 4` bytes of `msg` into words (`str2hashbuf`): each byte is
/// added to the word shifted left by 8, starting from a padding word built from the length of
/// what is left of the message (not of this step); words past the message are that padding.
fn str2hashbuf(msg: &[u8], out: &mut [u32], unsigned: bool) {
    // `pad = len | len << 8; pad |= pad << 16`, with dirhash.c's int length as a u32 (names
    // are at most 255 bytes, so this is the length byte four times).
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut val = pad;
    let take = msg.len().min(out.len() * 4);
    let mut words = out.iter_mut();
    for (i, &byte) in msg.iter().take(take).enumerate() {
        val = hash_char(byte, unsigned).wrapping_add(val << 8);
        if i % 4 == 3 {
            if let Some(w) = words.next() {
                *w = val;
            }
            val = pad;
        }
    }
    // The word after the last full one takes the partial word (or the padding), and the
    // rest the padding.
    if let Some(w) = words.next() {
        *w = val;
    }
    for w in words {
        *w = pad;
    }
}

/// The legacy hash (`dx_hack_hash`): major only.
fn dx_hack_hash(name: &[u8], unsigned: bool) -> u32 {
    let (mut hash0, mut hash1) = (0x12A3_FE2Du32, 0x37AB_E8F9u32);
    for &byte in name {
        let c = hash_char(byte, unsigned);
        let mut hash = hash1.wrapping_add(hash0 ^ c.wrapping_mul(7_152_373));
        if hash & 0x8000_0000 != 0 {
            hash = hash.wrapping_sub(0x7FFF_FFFF);
        }
        hash1 = hash0;
        hash0 = hash;
    }
    hash0 << 1
}

/// ext4's directory hash of `name` (`ext2fs_dirhash` in e2fsprogs `lib/ext2fs/dirhash.c`,
/// `ext4fs_dirhash` in the kernel's `fs/ext4/hash.c`): `(major, minor)`, with bit 0 of the
/// major hash cleared (it marks collision continuations in the index). `seed` is
/// `s_hash_seed` as le32 words (all zero: MD4's initial words); `unsigned` selects the
/// `_UNSIGNED` variant, which reads name bytes as `unsigned char`. The legacy hash has no
/// minor hash (0) and ignores the seed.
///
/// One difference with the kernel is kept on purpose: the kernel turns a major hash of
/// 0xFFFFFFFE into 0xFFFFFFFC (`EXT4_HTREE_EOF_32BIT`, reserved for readdir's end of
/// directory), e2fsprogs (1.47) does not; this follows e2fsprogs, whose e2fsck checks every
/// leaf. Both place such a name in the last leaf unless a leaf starts exactly at it.
pub fn dirhash(version: HashVersion, name: &[u8], seed: &[u32; 4], unsigned: bool) -> (u32, u32) {
    let mut buf = if seed.iter().any(|&w| w != 0) {
        *seed
    } else {
        DEFAULT_SEED
    };
    let (major, minor) = match version {
        HashVersion::Legacy => (dx_hack_hash(name, unsigned), 0),
        HashVersion::HalfMd4 => {
            // dirhash.c loops `while (len > 0)` over 32-byte steps, and each step's padding
            // counts what is left of the name, not the step.
            let mut rest = name;
            while !rest.is_empty() {
                let mut input = [0u32; 8];
                str2hashbuf(rest, &mut input, unsigned);
                half_md4_transform(&mut buf, &input);
                rest = rest.get(32..).unwrap_or_default();
            }
            (buf[1], buf[2])
        }
        HashVersion::Tea => {
            let mut rest = name;
            while !rest.is_empty() {
                let mut input = [0u32; 4];
                str2hashbuf(rest, &mut input, unsigned);
                tea_transform(&mut buf, &input);
                rest = rest.get(16..).unwrap_or_default();
            }
            (buf[0], buf[1])
        }
    };
    (major & !1, minor)
}

/// A leaf block being filled: entries one after another, each with its minimal record
/// length until [`Leaf::finish`] stretches the last one to the end of the usable space.
struct Leaf {
    /// The block, `block_size` bytes of zeros to start with.
    block: Vec<u8>,
    /// Bytes in use from the start.
    used: usize,
    /// Offset of the last entry written.
    last: Option<usize>,
    /// Bytes entries may use: the block less the checksum tail.
    usable: usize,
}

impl Leaf {
    /// An empty leaf for `p`'s block size.
    fn new(p: &DirParams) -> Leaf {
        let tail = if p.csum_seed.is_some() {
            DIR_TAIL_LEN
        } else {
            0
        };
        Leaf {
            block: vec![0; p.block_size],
            used: 0,
            last: None,
            usable: p.block_size - tail,
        }
    }

    /// Bytes entries may use in a leaf for `p`: the block less the checksum tail.
    fn new_usable(p: &DirParams) -> usize {
        let tail = if p.csum_seed.is_some() {
            DIR_TAIL_LEN
        } else {
            0
        };
        p.block_size - tail
    }

    /// Whether an entry with a name of `name_len` bytes still fits.
    fn fits(&self, name_len: usize) -> bool {
        self.used + dirent_len(name_len) <= self.usable
    }

    /// Appends an entry (the caller has checked that it [`fits`](Leaf::fits)).
    fn push(&mut self, inode: u32, file_type: u8, name: &[u8]) -> Result<(), Error> {
        let len = dirent_len(name.len());
        put_dirent(&mut self.block, self.used, inode, len, file_type, name)?;
        self.last = Some(self.used);
        self.used += len;
        Ok(())
    }

    /// Stretches the last entry over the free space (a block with no entry gets one empty
    /// entry, inode 0, covering it all, as `ext2fs_new_dir_block` writes) and adds the
    /// checksum tail.
    fn finish(mut self, p: &DirParams) -> Result<Vec<u8>, Error> {
        match self.last {
            Some(off) => put(
                &mut self.block,
                off + 4,
                &rec_len_to_disk(self.usable - off).to_le_bytes(),
            )?,
            None => put_dirent(&mut self.block, 0, 0, self.usable, FT_UNKNOWN, b"")?,
        }
        if let Some(seed) = p.csum_seed {
            put_dir_tail(&mut self.block, seed, p.inode, p.generation)?;
        }
        Ok(self.block)
    }
}

/// Checks what `dir_blocks` is given: the block size, `min_blocks`, and every name (length,
/// no `/` or NUL, not `.` or `..`, no name twice).
fn check_input(entries: &[DirEntryRef], p: &DirParams) -> Result<(), Error> {
    if !p.block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&p.block_size)
    {
        return Err(Error::BadBlockSize(p.block_size));
    }
    if p.min_blocks > MAX_MIN_BLOCKS {
        return Err(Error::TooManyMinBlocks(p.min_blocks));
    }
    let shown = |name: &[u8]| String::from_utf8_lossy(name).into_owned();
    for e in entries {
        if e.name.len() > MAX_NAME_LEN {
            return Err(Error::NameTooLong(e.name.len()));
        }
        if e.name.is_empty()
            || e.name == b"."
            || e.name == b".."
            || e.name.contains(&b'/')
            || e.name.contains(&0)
        {
            return Err(Error::BadName(shown(e.name)));
        }
    }
    let mut names: Vec<&[u8]> = entries.iter().map(|e| e.name).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w.first() == w.get(1)) {
        return Err(Error::DuplicateName(shown(
            w.first().copied().unwrap_or_default(),
        )));
    }
    Ok(())
}

/// Lays out `.`, `..` and `entries` linearly, in order, over as many blocks as they need and
/// at least `p.min_blocks`.
fn linear_blocks(entries: &[DirEntryRef], p: &DirParams) -> Result<Vec<Vec<u8>>, Error> {
    let mut blocks = Vec::new();
    let mut leaf = Leaf::new(p);
    leaf.push(p.inode, FT_DIR, b".")?;
    leaf.push(p.parent, FT_DIR, b"..")?;
    for e in entries {
        if !leaf.fits(e.name.len()) {
            blocks.push(std::mem::replace(&mut leaf, Leaf::new(p)).finish(p)?);
        }
        leaf.push(e.inode, e.file_type, e.name)?;
    }
    blocks.push(leaf.finish(p)?);
    while blocks.len() < p.min_blocks {
        blocks.push(Leaf::new(p).finish(p)?);
    }
    Ok(blocks)
}

/// How many blocks [`linear_blocks`] would fill, counted up to `stop` at most (without
/// writing them, so that a large directory is not laid out twice).
fn linear_block_count(entries: &[DirEntryRef], p: &DirParams, stop: usize) -> usize {
    let usable = Leaf::new_usable(p);
    let (mut blocks, mut used) = (1, dirent_len(1) + dirent_len(2));
    for e in entries {
        let len = dirent_len(e.name.len());
        if used + len > usable {
            blocks += 1;
            used = 0;
            if blocks >= stop {
                break;
            }
        }
        used += len;
    }
    blocks
}

/// One `dx_entry` to write: the lowest hash of the subtree (bit 0 set when it continues a
/// run of equal hashes from the previous one) and its logical block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DxEntry {
    hash: u32,
    block: u32,
}

/// The number of `dx_entry`s an index block holds after its header at `count_offset`, less
/// the room for the `dx_tail` under `metadata_csum`: the `limit` e2fsck expects
/// (`e2fsck/pass2.c`, `parse_int_node`'s `expect_limit`).
fn dx_limit(p: &DirParams, count_offset: usize) -> usize {
    let tail = if p.csum_seed.is_some() {
        DX_TAIL_LEN
    } else {
        0
    };
    (p.block_size - count_offset - tail) / DX_ENTRY_LEN
}

/// Writes the `limit`/`count` header and `entries` at `count_offset` of an index `block`
/// (the first entry's hash is implicit: its place holds the header) and its `dx_tail`.
fn put_dx_entries(
    block: &mut [u8],
    count_offset: usize,
    entries: &[DxEntry],
    p: &DirParams,
) -> Result<(), Error> {
    let limit = dx_limit(p, count_offset);
    let misfit = Error::DoesNotFit {
        offset: count_offset,
        len: entries.len() * DX_ENTRY_LEN,
        block: block.len(),
    };
    let (Ok(limit16), Ok(count16)) = (u16::try_from(limit), u16::try_from(entries.len())) else {
        return Err(misfit);
    };
    if entries.is_empty() || entries.len() > limit {
        return Err(misfit);
    }
    put(block, count_offset, &limit16.to_le_bytes())?;
    put(block, count_offset + 2, &count16.to_le_bytes())?;
    for (i, e) in entries.iter().enumerate() {
        let at = count_offset + i * DX_ENTRY_LEN;
        if i > 0 {
            put(block, at, &e.hash.to_le_bytes())?;
        }
        put(block, at + 4, &e.block.to_le_bytes())?;
    }
    if let Some(seed) = p.csum_seed {
        put_dx_tail(block, count_offset, seed, p.inode, p.generation)?;
    }
    Ok(())
}

/// The `dx_root` (logical block 0): `.`, `..` covering the rest of the block, `dx_root_info`
/// {reserved_zero 0, hash_version half_md4, info_length 8, `levels`, unused_flags 0} and the
/// index (directory.rst, "Hash Tree Directories"). The on-disk hash version stays the signed
/// code: e2fsck adds 3 for the unsigned variant from `s_flags` (`e2fsck/pass2.c`).
fn dx_root(p: &DirParams, levels: u8, entries: &[DxEntry]) -> Result<Vec<u8>, Error> {
    let mut block = vec![0; p.block_size];
    let dot = dirent_len(1);
    put_dirent(&mut block, 0, p.inode, dot, FT_DIR, b".")?;
    put_dirent(&mut block, dot, p.parent, p.block_size - dot, FT_DIR, b"..")?;
    let info = [
        0,
        0,
        0,
        0,
        HashVersion::HalfMd4.code(),
        DX_ROOT_INFO_LEN,
        levels,
        0,
    ];
    put(&mut block, DX_ROOT_COUNT_OFFSET - info.len(), &info)?;
    put_dx_entries(&mut block, DX_ROOT_COUNT_OFFSET, entries, p)?;
    Ok(block)
}

/// A `dx_node`: a fake entry (inode 0, `rec_len` the whole block, no name) that hides the
/// index from linear readers, then the index.
fn dx_node(p: &DirParams, entries: &[DxEntry]) -> Result<Vec<u8>, Error> {
    let mut block = vec![0; p.block_size];
    put_dirent(&mut block, 0, 0, p.block_size, FT_UNKNOWN, b"")?;
    put_dx_entries(&mut block, DX_NODE_COUNT_OFFSET, entries, p)?;
    Ok(block)
}

/// `entries` with their half_md4 hashes, in hash order; the minor hash and then the name
/// break ties, so that the layout does not depend on the input order.
fn hash_sorted<'e, 'a>(
    entries: &'e [DirEntryRef<'a>],
    p: &DirParams,
) -> Vec<(u32, u32, &'e DirEntryRef<'a>)> {
    let mut sorted: Vec<(u32, u32, &DirEntryRef)> = entries
        .iter()
        .map(|e| {
            let (major, minor) =
                dirhash(HashVersion::HalfMd4, e.name, &p.hash_seed, p.hash_unsigned);
            (major, minor, e)
        })
        .collect();
    sorted.sort_unstable_by(|a, b| (a.0, a.1, a.2.name).cmp(&(b.0, b.1, b.2.name)));
    sorted
}

/// Where each leaf starts in the hash-sorted entries, packing leaves full: `(first entry,
/// index hash)` per leaf. A leaf holds the hashes from its index hash up to the next leaf's;
/// when a run of equal hashes spills into the next leaf, that leaf's index hash gets bit 0
/// set, so that a lookup of that hash goes on into it (kernel `ext4_htree_next_block`;
/// directory.rst "Hash Tree Directories"). The first leaf's index hash is implicitly 0.
fn plan_leaves(sorted: &[(u32, u32, &DirEntryRef)], p: &DirParams) -> Vec<(usize, u32)> {
    let usable = Leaf::new_usable(p);
    let mut starts = vec![(0, 0)];
    let (mut used, mut prev) = (0, None);
    for (i, &(hash, _, e)) in sorted.iter().enumerate() {
        let len = dirent_len(e.name.len());
        if used + len > usable {
            let start = if prev == Some(hash) { hash | 1 } else { hash };
            starts.push((i, start));
            used = 0;
        }
        used += len;
        prev = Some(hash);
    }
    starts
}

/// Lays out a hashed directory: the root in block 0, then the level-1 index nodes if one
/// root cannot reference every leaf, then the leaves in hash order. The leaves are planned
/// before any is written, so that a directory too large for two levels is refused without
/// laying it out.
fn htree_blocks(entries: &[DirEntryRef], p: &DirParams) -> Result<Vec<Vec<u8>>, Error> {
    let sorted = hash_sorted(entries, p);
    let starts = plan_leaves(&sorted, p);
    let leaves = starts.len();
    let root_limit = dx_limit(p, DX_ROOT_COUNT_OFFSET);
    let node_limit = dx_limit(p, DX_NODE_COUNT_OFFSET);
    let nodes = if leaves <= root_limit {
        0
    } else {
        leaves.div_ceil(node_limit)
    };
    if nodes > root_limit {
        return Err(Error::TooManyEntries {
            leaves,
            max: root_limit * node_limit,
        });
    }
    // At most 1 + 8187 + 8187 * 8190 blocks (64 KiB blocks), far below the 2^28 the
    // `dx_entry` block field holds (`EXT4_DX_BLOCK_MASK`).
    let block_no = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    let leaf_entries: Vec<DxEntry> = starts
        .iter()
        .enumerate()
        .map(|(i, &(_, hash))| DxEntry {
            hash,
            block: block_no(1 + nodes + i),
        })
        .collect();
    let mut blocks = Vec::with_capacity(1 + nodes + leaves);
    if nodes == 0 {
        blocks.push(dx_root(p, 0, &leaf_entries)?);
    } else {
        let groups: Vec<&[DxEntry]> = leaf_entries.chunks(node_limit).collect();
        let root_entries: Vec<DxEntry> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| DxEntry {
                hash: g.first().map_or(0, |e| e.hash),
                block: block_no(1 + i),
            })
            .collect();
        blocks.push(dx_root(p, 1, &root_entries)?);
        for g in groups {
            blocks.push(dx_node(p, g)?);
        }
    }
    let ends = starts.iter().skip(1).map(|&(i, _)| i).chain([sorted.len()]);
    for (&(first, _), end) in starts.iter().zip(ends) {
        let mut leaf = Leaf::new(p);
        for &(_, _, e) in sorted.get(first..end).unwrap_or_default() {
            leaf.push(e.inode, e.file_type, e.name)?;
        }
        blocks.push(leaf.finish(p)?);
    }
    Ok(blocks)
}

/// The directory's logical blocks: `.`, `..` and `entries` (in the order given, which the
/// caller sorts); linear when they fit in fewer than [`HTREE_MIN_BLOCKS`] blocks (then padded
/// to `p.min_blocks`), hashed (htree, half_md4, `indirect_levels` 0 or 1; the caller sets
/// `EXT4_INDEX_FL` on the inode) from 3 blocks up, with the entries in hash order.
pub fn dir_blocks(entries: &[DirEntryRef], p: &DirParams) -> Result<DirBlocks, Error> {
    check_input(entries, p)?;
    if linear_block_count(entries, p, HTREE_MIN_BLOCKS) < HTREE_MIN_BLOCKS {
        return Ok(DirBlocks {
            blocks: linear_blocks(entries, p)?,
            indexed: false,
        });
    }
    Ok(DirBlocks {
        blocks: htree_blocks(entries, p)?,
        indexed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-s 66666666-7777-8888-9999-aaaaaaaaaaaa` as `s_hash_seed` words: the UUID's bytes read
    /// as le32 (debugfs `uuid_parse`s into the `__u32[4]` seed).
    const SEED: [u32; 4] = [0x6666_6666, 0x8888_7777, 0xAAAA_9999, 0xAAAA_AAAA];

    /// A hash test vector: (name, seeded?, [(major, minor)] for hash versions 0 to 5).
    type Vector = (Vec<u8>, bool, [(u32, u32); 6]);

    /// Hashes of e2fsprogs 1.47.0, from
    /// `debugfs -R "dx_hash -h V [-s 66666666-7777-8888-9999-aaaaaaaaaaaa] NAME" /dev/null`,
    /// for V = 0..=5 (legacy, half_md4, tea, then the unsigned variants): (name, seeded?,
    /// [(major, minor); 6]).
    #[rustfmt::skip]
    fn vectors() -> Vec<Vector> {
        let long = [b"x".repeat(37), b"QQQ".to_vec()].concat();
        let high255: Vec<u8> = (0..255u32).map(|i| 0x80 + (i % 127) as u8).collect();
        vec![
            (b"a".to_vec(), true, [(0xe74b53e2, 0), (0xca261f94, 0x617481f5), (0x9865b816, 0x09ed6f6e), (0xe74b53e2, 0), (0xca261f94, 0x617481f5), (0x9865b816, 0x09ed6f6e)]),
            (b"a".to_vec(), false, [(0xe74b53e2, 0), (0xd5fa7d7a, 0xacb48187), (0x6d0ea4c0, 0xc18922df), (0xe74b53e2, 0), (0xd5fa7d7a, 0xacb48187), (0x6d0ea4c0, 0xc18922df)]),
            (b"hello".to_vec(), true, [(0x32252546, 0), (0xffd0ed2e, 0x1dfcde86), (0x5ee052e8, 0x2bd283b2), (0x32252546, 0), (0xffd0ed2e, 0x1dfcde86), (0x5ee052e8, 0x2bd283b2)]),
            (b"hello".to_vec(), false, [(0x32252546, 0), (0x1746da32, 0x420013b5), (0x6f5bb1a8, 0x231917c2), (0x32252546, 0), (0x1746da32, 0x420013b5), (0x6f5bb1a8, 0x231917c2)]),
            (long.clone(), true, [(0x7aab0e76, 0), (0xea6a54e4, 0x17f1db12), (0x24cbe80c, 0x64ba3570), (0x7aab0e76, 0), (0xea6a54e4, 0x17f1db12), (0x24cbe80c, 0x64ba3570)]),
            (long, false, [(0x7aab0e76, 0), (0xd358a162, 0xdc9f95a9), (0xab3605ea, 0x900de9b4), (0x7aab0e76, 0), (0xd358a162, 0xdc9f95a9), (0xab3605ea, 0x900de9b4)]),
            (b"caf\xe9\xff\x80z".to_vec(), true, [(0xb9195d86, 0), (0x0eda31e2, 0x47876813), (0x6a62f8c0, 0x38b8129e), (0x95ee6d68, 0), (0x05dedee0, 0xa0d46006), (0x396607b4, 0x4bebbae3)]),
            (b"caf\xe9\xff\x80z".to_vec(), false, [(0xb9195d86, 0), (0x75844494, 0x69fcb881), (0xf59536a2, 0x0049ff08), (0x95ee6d68, 0), (0x259c2dde, 0x27f4c158), (0x226bee00, 0x92ec7e89)]),
            (b"\xc3\xa9t\xc3\xa9-\x80\x81\x82\xfe\xfd-0123456789abcdef".to_vec(), true, [(0x7234e82c, 0), (0xc3d6e0fc, 0x11219483), (0xebb031e8, 0x0c3fe770), (0x8f9695f2, 0), (0x65fc7924, 0x6fe73a69), (0x1668f3c6, 0x0f01c5b6)]),
            (b"\xc3\xa9t\xc3\xa9-\x80\x81\x82\xfe\xfd-0123456789abcdef".to_vec(), false, [(0x7234e82c, 0), (0xe98066f6, 0x299ad7f4), (0x0705a0e6, 0x2844849c), (0x8f9695f2, 0), (0x39ce9930, 0xb15d09a7), (0xcf28a62e, 0xf7514bb0)]),
            (high255, true, [(0xaac77f78, 0), (0x78633d68, 0x658ca8f3), (0xcf69f978, 0x4dfd2a75), (0xb597456c, 0), (0x278f32cc, 0x1c833655), (0x2e11176a, 0xcbfe661a)]),
        ]
    }

    #[test]
    fn hashes_match_e2fsprogs() {
        let versions = [HashVersion::Legacy, HashVersion::HalfMd4, HashVersion::Tea];
        for (name, seeded, want) in vectors() {
            let seed = if seeded { SEED } else { [0; 4] };
            for (i, &(major, minor)) in want.iter().enumerate() {
                let unsigned = i >= 3;
                let version = versions[i % 3];
                assert_eq!(
                    dirhash(version, &name, &seed, unsigned),
                    (major, minor),
                    "{version:?} unsigned={unsigned} seeded={seeded} name={name:x?}"
                );
            }
        }
    }

    #[test]
    fn signedness_matters_only_for_high_bytes() {
        for version in [HashVersion::Legacy, HashVersion::HalfMd4, HashVersion::Tea] {
            assert_eq!(
                dirhash(version, b"plain-ascii", &SEED, false),
                dirhash(version, b"plain-ascii", &SEED, true)
            );
            assert_ne!(
                dirhash(version, b"\xe9t\xe9", &SEED, false),
                dirhash(version, b"\xe9t\xe9", &SEED, true)
            );
        }
    }

    /// The file system UUID and hash seed the oracle images are made with.
    const UUID: &str = "11111111-2222-3333-4444-555555555555";
    const UUID_BYTES: [u8; 16] = [
        0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55,
        0x55,
    ];
    const SEED_UUID: &str = "66666666-7777-8888-9999-aaaaaaaaaaaa";
    /// The generation the oracle gives the test directory.
    const GEN: u32 = 0x0BAD_CAFE;

    /// Runs `cmd`, returning (exit code, stdout bytes, stderr text).
    fn run(cmd: &mut std::process::Command) -> (i32, Vec<u8>, String) {
        let out = cmd.output().expect("run an e2fsprogs tool");
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `debugfs -w` on `img` with `cmds`, one per line.
    fn debugfs_w(img: &std::path::Path, cmds: &str) {
        let script = img.with_extension("cmds");
        std::fs::write(&script, cmds).unwrap();
        let (code, _, err) = run(std::process::Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(img));
        assert_eq!(code, 0, "debugfs: {err}");
    }

    /// `debugfs -R cmd` on `img`: its stdout.
    fn debugfs_r(img: &std::path::Path, cmd: &str) -> Vec<u8> {
        let (code, out, err) = run(std::process::Command::new("debugfs")
            .arg("-R")
            .arg(cmd)
            .arg(img));
        assert_eq!(code, 0, "debugfs: {err}");
        out
    }

    /// The number after `key` in debugfs output.
    fn field(out: &[u8], key: &str) -> u32 {
        let text = String::from_utf8_lossy(out);
        let at = text.find(key).unwrap_or_else(|| panic!("{key} in {text}")) + key.len();
        text[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// How a test directory is put into a real file system.
    struct Oracle {
        csum: bool,
        unsigned: bool,
        min_blocks: usize,
        /// Run `e2fsck -fy` too and require it to change nothing (not for a linear directory
        /// of 3 blocks or more, which e2fsck optimizes by design).
        stable: bool,
        /// Damage our blocks before they go in, and require `e2fsck -fn` to object.
        tamper: Option<fn(&mut Vec<Vec<u8>>)>,
    }

    const ORACLE: Oracle = Oracle {
        csum: true,
        unsigned: true,
        min_blocks: 0,
        stable: true,
        tamper: None,
    };

    /// Makes an ext4 image with mke2fs, a regular file `target` and a directory `d` whose
    /// blocks are ours for `names` (all hard links to `target`), then checks it with e2fsck
    /// (which verifies every checksum, every leaf's hash range and, through `target`'s link
    /// count, that each name is there once) and lists `d` with debugfs. Returns our blocks.
    fn oracle(names: &[Vec<u8>], o: &Oracle) -> DirBlocks {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        let features = if o.csum {
            "metadata_csum,dir_index"
        } else {
            "^metadata_csum,dir_index"
        };
        let (code, _, err) = run(std::process::Command::new("mke2fs")
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-O", features, "-U", UUID,
            ])
            .arg("-E")
            .arg(format!("hash_seed={SEED_UUID}"))
            .arg(&img)
            .arg("128M"));
        assert_eq!(code, 0, "mke2fs: {err}");
        debugfs_w(
            &img,
            &format!(
                "write /dev/null target\nmkdir d\nsif d generation {GEN}\nssv flags {}\n",
                if o.unsigned { 2 } else { 1 }
            ),
        );
        let target = field(&debugfs_r(&img, "stat target"), "Inode:");
        let dir = field(&debugfs_r(&img, "stat d"), "Inode:");
        let entries: Vec<DirEntryRef> = names
            .iter()
            .map(|n| DirEntryRef {
                inode: target,
                file_type: FT_REG_FILE,
                name: n,
            })
            .collect();
        let p = DirParams {
            block_size: 4096,
            csum_seed: o.csum.then(|| crc32c_le(!0, &UUID_BYTES)),
            hash_seed: SEED,
            hash_unsigned: o.unsigned,
            inode: dir,
            generation: GEN,
            parent: 2,
            min_blocks: o.min_blocks,
        };
        let ours = dir_blocks(&entries, &p).unwrap();
        let mut written = ours.blocks.clone();
        if let Some(tamper) = o.tamper {
            tamper(&mut written);
        }
        let n = ours.blocks.len();
        debugfs_w(&img, &"expand_dir d\n".repeat(n - 1));
        let listed = debugfs_r(&img, "blocks d");
        let phys: Vec<u64> = String::from_utf8_lossy(&listed)
            .split_whitespace()
            .map(|b| b.parse().unwrap())
            .collect();
        assert_eq!(phys.len(), n, "debugfs made the directory {n} blocks long");
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            for (b, block) in phys.iter().zip(&written) {
                f.write_all_at(block, b * 4096).unwrap();
            }
        }
        let flags = if ours.indexed { 0x81000 } else { 0x80000 };
        debugfs_w(
            &img,
            &format!(
                "sif d flags {flags:#x}\nsif d size {}\nsif target links_count {}\n",
                n * 4096,
                names.len() + 1
            ),
        );
        let (code, out, _) = run(std::process::Command::new("e2fsck").arg("-fn").arg(&img));
        if o.tamper.is_some() {
            assert_ne!(code, 0, "e2fsck -fn: {}", String::from_utf8_lossy(&out));
            return ours;
        }
        assert_eq!(code, 0, "e2fsck -fn: {}", String::from_utf8_lossy(&out));
        // ls -p: one `/inode/mode/uid/gid/name/size/` line per entry; names hold no `/`.
        let ls = debugfs_r(&img, "ls -p d");
        let mut got: Vec<&[u8]> = ls
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                // Empty records (inode 0: free space, index nodes) are listed too.
                let f: Vec<&[u8]> = line.split(|&b| b == b'/').collect();
                (f.len() > 5 && f[1] != b"0").then(|| f[5])
            })
            .collect();
        got.sort_unstable();
        let mut want: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
        want.extend([b".".as_slice(), b"..".as_slice()]);
        want.sort_unstable();
        assert!(
            got == want,
            "debugfs ls -p lists {} names, want {}",
            got.len(),
            want.len()
        );
        if ours.indexed {
            let (code, out, err) = run(std::process::Command::new("debugfs")
                .arg("-R")
                .arg("htree d")
                .arg(&img));
            let text = String::from_utf8_lossy(&out);
            assert_eq!(code, 0);
            assert!(text.contains("Root node dump:"), "{text}");
            assert!(!text.contains("Corrupted"), "{text}");
            // Without metadata_csum, debugfs 1.47.0 still tries each index block's checksum
            // and says there is no room for one; with it, any complaint is a failure.
            assert!(!o.csum || !err.contains("while"), "{err}");
        }
        if o.stable {
            let (code, out, _) = run(std::process::Command::new("e2fsck").arg("-fy").arg(&img));
            let out = String::from_utf8_lossy(&out);
            assert_eq!(code, 0, "e2fsck -fy: {out}");
            assert!(
                !out.contains("Pass 3A") && !out.contains("MODIFIED"),
                "{out}"
            );
        }
        ours
    }

    /// `count` names of `len` bytes, distinct, made of `prefix` bytes then a decimal counter.
    fn names(count: usize, len: usize, fill: u8) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let digits = format!("{i:08}");
                let mut n = vec![fill; len.saturating_sub(digits.len())];
                n.extend_from_slice(digits.as_bytes());
                n
            })
            .collect()
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn two_entries_linear_one_block() {
        let d = oracle(&[b"a".to_vec(), b"bb".to_vec()], &ORACLE);
        assert_eq!(d.blocks.len(), 1);
        assert!(!d.indexed);
    }

    /// `indirect_levels` of a `dx_root`.
    fn levels(root: &[u8]) -> u8 {
        root[30]
    }

    /// The (hash, block) index entries of an index block whose header is at `count_offset`
    /// (the first entry's hash reads as 0).
    fn index(block: &[u8], count_offset: usize) -> Vec<(u32, u32)> {
        let le32 = |o: usize| u32::from_le_bytes(block[o..o + 4].try_into().unwrap());
        let count = usize::from(le16_at(block, count_offset + 2).unwrap());
        (0..count)
            .map(|i| {
                let at = count_offset + i * DX_ENTRY_LEN;
                (if i == 0 { 0 } else { le32(at) }, le32(at + 4))
            })
            .collect()
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn one_full_block_then_two() {
        // 12-byte names take 20 bytes: `.` and `..` (24) and 203 of them fill the 4084 bytes
        // before the checksum tail exactly.
        let d = oracle(&names(203, 12, b'n'), &ORACLE);
        assert_eq!((d.blocks.len(), d.indexed), (1, false));
        // The last entry's rec_len runs to the tail.
        let last = 24 + 202 * 20;
        assert_eq!(le16_at(&d.blocks[0], last + 4), Some(20));
        let d = oracle(&names(204, 12, b'n'), &ORACLE);
        assert_eq!((d.blocks.len(), d.indexed), (2, false));
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn three_blocks_are_hashed() {
        // 203 + 204 names fill two blocks: still linear, and e2fsck -fy leaves it alone.
        let d = oracle(&names(407, 12, b'n'), &ORACLE);
        assert_eq!((d.blocks.len(), d.indexed), (2, false));
        // One more needs a third block: a root and two leaves.
        let d = oracle(&names(408, 12, b'n'), &ORACLE);
        assert_eq!((d.blocks.len(), d.indexed), (3, true));
        assert_eq!(levels(&d.blocks[0]), 0);
        let idx = index(&d.blocks[0], DX_ROOT_COUNT_OFFSET);
        assert_eq!(idx.iter().map(|e| e.1).collect::<Vec<_>>(), vec![1, 2]);
        // limit: (4096 - 32 - 8) / 8 with the dx_tail.
        assert_eq!(le16_at(&d.blocks[0], DX_ROOT_COUNT_OFFSET), Some(507));
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn min_blocks_pads_a_linear_directory() {
        // lost+found's shape: e2fsck -fy would optimize it for any other directory, so -fn.
        let o = Oracle {
            min_blocks: 4,
            stable: false,
            ..ORACLE
        };
        let d = oracle(&[], &o);
        assert_eq!((d.blocks.len(), d.indexed), (4, false));
        let d = oracle(&names(5, 30, b'l'), &o);
        assert_eq!((d.blocks.len(), d.indexed), (4, false));
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn fifty_thousand_short_names_one_level() {
        let d = oracle(&names(50_000, 10, b's'), &ORACLE);
        assert!(d.indexed);
        assert_eq!(levels(&d.blocks[0]), 0);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn fifty_thousand_long_high_byte_names_two_levels_unsigned() {
        // 255-byte names with bytes >= 0x80: 15 to a leaf, 3334 leaves, so index nodes.
        let d = oracle(&names(50_000, 255, 0xE9), &ORACLE);
        assert!(d.indexed);
        assert_eq!(levels(&d.blocks[0]), 1);
        let root = index(&d.blocks[0], DX_ROOT_COUNT_OFFSET);
        assert_eq!(root.len(), 3334usize.div_ceil(510));
        assert_eq!(le16_at(&d.blocks[1], DX_NODE_COUNT_OFFSET), Some(510));
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn high_byte_names_signed_hash() {
        let o = Oracle {
            unsigned: false,
            ..ORACLE
        };
        let d = oracle(&names(3000, 100, 0xFF), &o);
        assert!(d.indexed);
        // The same names hashed unsigned land in another order, which this file system's
        // e2fsck would reject: the signedness is not a no-op.
        let p = |unsigned| DirParams {
            block_size: 4096,
            csum_seed: None,
            hash_seed: SEED,
            hash_unsigned: unsigned,
            inode: 12,
            generation: 0,
            parent: 2,
            min_blocks: 0,
        };
        let n = names(3000, 100, 0xFF);
        let e: Vec<DirEntryRef> = n
            .iter()
            .map(|n| DirEntryRef {
                inode: 11,
                file_type: FT_REG_FILE,
                name: n,
            })
            .collect();
        assert_ne!(
            dir_blocks(&e, &p(false)).unwrap(),
            dir_blocks(&e, &p(true)).unwrap()
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn without_metadata_csum() {
        let o = Oracle {
            csum: false,
            ..ORACLE
        };
        let d = oracle(&names(20_000, 200, b'q'), &o);
        assert!(d.indexed);
        assert_eq!(levels(&d.blocks[0]), 1);
        // No tails: limit (4096 - 32) / 8, and a leaf's last entry runs to the block's end.
        assert_eq!(le16_at(&d.blocks[0], DX_ROOT_COUNT_OFFSET), Some(508));
        let d = oracle(&names(2, 8, b'q'), &o);
        assert_eq!(le16_at(&d.blocks[0], 40 + 4), Some(4096 - 40));
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn e2fsck_rejects_a_broken_checksum() {
        let o = Oracle {
            tamper: Some(|b| b[2][20] ^= 1),
            ..ORACLE
        };
        oracle(&names(1000, 40, b't'), &o);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn e2fsck_rejects_leaves_out_of_hash_order() {
        // Without checksums only the hash ranges can tell: swapping two leaves breaks them.
        let o = Oracle {
            csum: false,
            tamper: Some(|b| b.swap(1, 2)),
            ..ORACLE
        };
        oracle(&names(1000, 40, b't'), &o);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn equal_hashes_across_leaves_set_the_continuation_bit() {
        // Two 255-byte names with the same major hash (a birthday search over 31 bits).
        let long = |tag: u8, i: u32| {
            let mut n = vec![tag; 247];
            n.extend_from_slice(format!("{i:08x}").as_bytes());
            n
        };
        let hash = |n: &[u8]| dirhash(HashVersion::HalfMd4, n, &SEED, true).0;
        let mut seen = std::collections::HashMap::new();
        let (a, b) = (0..)
            .find_map(|i| {
                let n = long(b'c', i);
                seen.insert(hash(&n), n.clone()).map(|other| (other, n))
            })
            .unwrap();
        let h = hash(&a);
        // 15 such names fill a leaf: put 29 names below `h` so that the pair falls on the
        // last slot of the second leaf and the first of the third, and 20 above.
        let below: Vec<Vec<u8>> = (0..)
            .map(|i| long(b'f', i))
            .filter(|n| hash(n) < h)
            .take(29)
            .collect();
        let above: Vec<Vec<u8>> = (0..)
            .map(|i| long(b'g', i))
            .filter(|n| hash(n) > h)
            .take(20)
            .collect();
        let all: Vec<Vec<u8>> = [below, vec![a, b], above].concat();
        let d = oracle(&all, &ORACLE);
        assert!(d.indexed);
        let idx = index(&d.blocks[0], DX_ROOT_COUNT_OFFSET);
        assert_eq!(idx.len(), 4);
        assert_eq!(idx[2].0, h | 1, "the third leaf continues hash {h:#x}");
        assert_eq!(idx.iter().filter(|e| e.0 & 1 == 1).count(), 1);
    }

    #[test]
    fn input_order_does_not_change_a_hashed_directory() {
        let n = names(5000, 20, b'o');
        let p = DirParams {
            block_size: 4096,
            csum_seed: Some(0x1234_5678),
            hash_seed: SEED,
            hash_unsigned: true,
            inode: 12,
            generation: 1,
            parent: 2,
            min_blocks: 0,
        };
        let fwd: Vec<DirEntryRef> = n
            .iter()
            .map(|n| DirEntryRef {
                inode: 11,
                file_type: FT_REG_FILE,
                name: n,
            })
            .collect();
        let rev: Vec<DirEntryRef> = fwd.iter().rev().copied().collect();
        assert_eq!(dir_blocks(&fwd, &p).unwrap(), dir_blocks(&rev, &p).unwrap());
    }

    #[test]
    fn bad_input_is_an_error() {
        let p = DirParams {
            block_size: 4096,
            csum_seed: None,
            hash_seed: [0; 4],
            hash_unsigned: true,
            inode: 12,
            generation: 0,
            parent: 2,
            min_blocks: 0,
        };
        let one = |name: &[u8]| {
            dir_blocks(
                &[DirEntryRef {
                    inode: 11,
                    file_type: FT_REG_FILE,
                    name,
                }],
                &p,
            )
        };
        assert!(matches!(one(&[b'x'; 256]), Err(Error::NameTooLong(256))));
        assert!(one(&[b'x'; 255]).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(matches!(one(bad), Err(Error::BadName(_))), "{bad:?}");
        }
        let e = DirEntryRef {
            inode: 11,
            file_type: FT_REG_FILE,
            name: b"twice",
        };
        assert!(matches!(
            dir_blocks(&[e, e], &p),
            Err(Error::DuplicateName(_))
        ));
        for bs in [512, 3000, 131_072] {
            let q = DirParams {
                block_size: bs,
                ..p.clone()
            };
            assert!(matches!(dir_blocks(&[], &q), Err(Error::BadBlockSize(_))));
        }
        let q = DirParams {
            min_blocks: MAX_MIN_BLOCKS + 1,
            ..p.clone()
        };
        assert!(matches!(
            dir_blocks(&[], &q),
            Err(Error::TooManyMinBlocks(_))
        ));
        // 1 KiB blocks: a root indexes 123 nodes of 126 leaves of three 255-byte names.
        let q = DirParams {
            block_size: 1024,
            csum_seed: Some(0),
            ..p.clone()
        };
        let n = names(123 * 126 * 3 + 1, 255, b'b');
        let e: Vec<DirEntryRef> = n
            .iter()
            .map(|n| DirEntryRef {
                inode: 11,
                file_type: FT_REG_FILE,
                name: n,
            })
            .collect();
        assert!(matches!(
            dir_blocks(&e, &q),
            Err(Error::TooManyEntries { max: 15_498, .. })
        ));
        assert!(dir_blocks(&e[1..], &q).is_ok());
    }

    #[test]
    fn low_level_encoders() {
        let mut b = vec![0u8; 65_536];
        // A record over the block, not a multiple of 4, or shorter than its name: refused.
        assert!(put_dirent(&mut b, 65_528, 1, 8, 0, b"").is_ok());
        assert!(put_dirent(&mut b, 65_532, 1, 8, 0, b"").is_err());
        assert!(put_dirent(&mut b, 65_536, 1, 8, 0, b"").is_err());
        assert!(put_dirent(&mut b, 0, 1, 10, 0, b"").is_err());
        assert!(put_dirent(&mut b, 0, 1, 8, 0, b"x").is_err());
        // A whole 64 KiB block in one record is stored as 0xFFFF (EXT4_MAX_REC_LEN).
        put_dirent(&mut b, 0, 0, 65_536, 0, b"").unwrap();
        assert_eq!(le16_at(&b, 4), Some(0xFFFF));
        assert_eq!(dirent_len(1), 12);
        assert_eq!(dirent_len(4), 12);
        assert_eq!(dirent_len(5), 16);
        assert_eq!(dirent_len(255), 264);
        assert!(put_dir_tail(&mut [0u8; 8], 0, 1, 1).is_err());
        // A dx header whose limit runs past the block is refused, not indexed.
        let mut node = vec![0u8; 1024];
        node[8..10].copy_from_slice(&200u16.to_le_bytes());
        assert!(put_dx_tail(&mut node, DX_NODE_COUNT_OFFSET, 0, 1, 1).is_err());
    }
}
