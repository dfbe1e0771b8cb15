#![no_main]
//! Verifier side: evidence JSON of each TEE, as a KBS receives it from the network.

use libfuzzer_sys::fuzz_target;
use vigil_attester::kbs_types::Tee;
use vigil_attester::verify;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let tee = match selector % 3 {
        0 => Tee::Sample,
        1 => Tee::Snp,
        _ => Tee::Tdx,
    };
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = verify::claims(tee, text);
    }
});
