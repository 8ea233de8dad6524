#![no_main]
//! Fuzz target `table`: see `mkomi_fuzz::table`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::table(data));
