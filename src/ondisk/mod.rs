//! On-disk formats, one codec each: the byte layouts that mkomi both writes (in [`crate::layout`])
//! and reads (in [`crate::inspect`] and [`crate::fs`]), decoded and encoded in one place so that
//! the reader and the writer cannot drift apart.
//!
//! A codec holds the format's constants, its structures and their encoding and decoding; the
//! policy (what a writer lays out, what a reader reports or refuses) stays with its user.

pub mod crc32c;
pub mod ext4;
pub mod ext4_dir;
pub mod fat;
pub mod gpt;
pub mod regf;
