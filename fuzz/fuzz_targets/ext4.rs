#![no_main]
//! Fuzz target `ext4`: see `mkomi_fuzz::ext4`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::ext4(data));
