#![no_main]
//! TDX quote (v4/v5) parser on arbitrary bytes.

use libfuzzer_sys::fuzz_target;
use vigil_attester::tdx;

fuzz_target!(|data: &[u8]| {
    if let Ok(quote) = tdx::parse_quote(data) {
        assert!(quote.signature_data.len() <= data.len());
        assert!(quote.version == 4 || quote.version == 5);
    }
});
