#![no_main]
//! See `vigil_fuzz_targets::image_manifest::image_manifest` for what it feeds and asserts.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz_targets::image_manifest::image_manifest(data));
