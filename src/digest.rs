//! The `ContentDigest` of a virtual disk, the same whatever container holds it.
//!
//! `"sha256-4m:" + hex(SHA-256(d0 ‖ d1 ‖ …))`, where `di` is the raw 32-byte SHA-256 of the i-th
//! consecutive 4 MiB block of the virtual disk; the last block may be shorter. A disk of size 0
//! has no blocks, so its digest is the SHA-256 of the empty string.
//!
//! The virtual disk is the one qemu sees: the source rounded up to a whole 512-byte sector, the
//! tail zero-filled ([`crate::sink::virtual_size`]), the disk every output of mkomi holds. So the
//! qcow2 and the raw output of one source have the same digest, and a source whose size is not
//! a whole number of sectors has the digest of its bytes followed by zeros to the next sector.
//!
//! All-zero blocks take a digest computed once, so the cost follows the allocated data. Block
//! digests are independent, which lets the copy engine hash blocks on one thread while another
//! reads and a third writes.

use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The block size of the digest: 4 MiB.
pub const BLOCK_SIZE: u64 = 4 << 20;

/// The prefix that names the scheme in a `ContentDigest` string.
pub const PREFIX: &str = "sha256-4m:";

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// SHA-256 of one block.
pub fn block_digest(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// SHA-256 of `len` zero bytes (`len <= BLOCK_SIZE`); the full-size case is computed once.
pub fn zero_block_digest(len: u64) -> Hash {
    static FULL: OnceLock<Hash> = OnceLock::new();
    let compute = |len: u64| {
        let mut h = Sha256::new();
        crate::util::hash_zeros(&mut h, len);
        let out: Hash = h.finalize().into();
        out
    };
    if len == BLOCK_SIZE {
        *FULL.get_or_init(|| compute(BLOCK_SIZE))
    } else {
        compute(len)
    }
}

/// Accumulates block digests, in order, into a `ContentDigest`.
#[derive(Clone, Default)]
pub struct ContentHasher {
    outer: Sha256,
    blocks: u64,
}

impl ContentHasher {
    /// A hasher with no blocks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the digest of the next block.
    pub fn push(&mut self, block: &Hash) {
        self.outer.update(block);
        self.blocks += 1;
    }

    /// Number of blocks pushed so far.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The finished `ContentDigest` string.
    pub fn finish(self) -> String {
        format!("{PREFIX}{}", hex::encode(self.outer.finalize()))
    }
}

/// The `ContentDigest` of an in-memory disk image: the reference the engine is tested against.
pub fn content_digest_of(disk: &[u8]) -> String {
    let mut h = ContentHasher::new();
    for block in disk.chunks(BLOCK_SIZE as usize) {
        h.push(&block_digest(block));
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_digest_matches_plain_hash() {
        let zeros = vec![0u8; BLOCK_SIZE as usize];
        assert_eq!(zero_block_digest(BLOCK_SIZE), block_digest(&zeros));
        assert_eq!(zero_block_digest(4097), block_digest(&zeros[..4097]));
    }

    #[test]
    fn empty_disk() {
        // SHA-256 of the empty string.
        assert_eq!(
            content_digest_of(&[]),
            "sha256-4m:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
