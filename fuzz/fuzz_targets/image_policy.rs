#![no_main]
//! See `vigil_fuzz_targets::image_policy::image_policy` for what it feeds and asserts.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz_targets::image_policy::image_policy(data));
