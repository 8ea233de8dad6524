#![no_main]
//! Fuzz target `store`: see `mkomi_fuzz::store`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::store(data));
