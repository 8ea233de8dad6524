#![no_main]
//! Fuzz target `export_manifest`: see `mkomi_fuzz::export_manifest`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::export_manifest(data));
