//! Laying out new disks: GPT partition tables and FAT file systems, built in-process and
//! reproducibly (every identifier and timestamp derives from the inputs and a seed).

pub mod composite;
pub mod ext4;
pub mod fat;
pub mod gpt;
pub mod grub;
pub mod mbr;
pub mod template;
