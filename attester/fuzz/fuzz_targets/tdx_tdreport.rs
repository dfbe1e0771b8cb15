#![no_main]
//! TDREPORT parser on arbitrary bytes.

use libfuzzer_sys::fuzz_target;
use vigil_attester::tdx;

fuzz_target!(|data: &[u8]| {
    if tdx::parse_tdreport(data).is_ok() {
        assert_eq!(data.len(), tdx::TDREPORT_LEN);
    }
});
