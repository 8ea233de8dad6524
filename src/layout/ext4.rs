//! ext4 root file systems, laid out in memory from a [`crate::tree::Tree`] and emitted as a disk.
