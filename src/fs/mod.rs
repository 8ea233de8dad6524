//! Reading file systems inside disk images, without mounting.
//!
//! The file systems are read through a [`crate::source::Source`], so the same code reads a bare
//! file system image, a partition of a raw disk and a partition of a qcow2 disk, as a user with
//! no privileges and without touching the host's kernel.

pub mod ext4;
