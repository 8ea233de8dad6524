#![no_main]
//! Fuzz target `ntfs`: see `mkomi_fuzz::ntfs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::ntfs(data));
