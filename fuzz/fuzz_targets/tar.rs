#![no_main]
//! Fuzz target `tar`: see `mkomi_fuzz::tar`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::tar(data));
