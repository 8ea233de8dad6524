//! ext4's on-disk structures, encoded: superblock, group descriptors, inodes, extent trees,
//! extended attributes and the jbd2 journal superblock (the writer in [`crate::layout::ext4`]
//! lays them out). Directory blocks are [`crate::ondisk::ext4_dir`]'s.
