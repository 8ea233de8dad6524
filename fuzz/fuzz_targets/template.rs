#![no_main]
//! Fuzz target `template`: see `mkomi_fuzz::template`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::template(data));
