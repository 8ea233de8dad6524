#![no_main]
//! Fuzz target `binary`: see `mkomi_fuzz::binary`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::binary(data));
