#![no_main]
//! Fuzz target `inspect`: see `mkomi_fuzz::inspect`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::inspect(data));
