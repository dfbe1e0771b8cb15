#![no_main]
//! See `vigil_fuzz_targets::image_layer::image_layer` for what it feeds and asserts.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz_targets::image_layer::image_layer(data));
