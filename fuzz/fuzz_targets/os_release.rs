#![no_main]
//! Fuzz target `os_release`: see `mkomi_fuzz::os_release`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::os_release(data));
