#![no_main]
//! Fuzz target `qcow2`: see `mkomi_fuzz::qcow2`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mkomi_fuzz::qcow2(data));
