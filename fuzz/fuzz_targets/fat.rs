#![no_main]
//! Fuzz target `fat`: see `mkomi_fuzz::fat`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::fat(data));
