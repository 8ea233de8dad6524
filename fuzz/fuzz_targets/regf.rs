#![no_main]
//! Fuzz target `regf`: see `mkomi_fuzz::regf`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::regf(data));
