#![no_main]
//! SEV-SNP report parser and signature check on arbitrary bytes: errors allowed, panics not.

use libfuzzer_sys::fuzz_target;
use vigil_attester::snp;

const VCEK: &[u8] = include_bytes!("../../../../shared/vectors/snp/test-vcek.der");

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = snp::parse_report(data) {
        // A parsed report exposes fixed-size fields; the signature check must also be total.
        assert_eq!(report.host_data.len(), 32);
        let _ = snp::verify_signature(data, VCEK);
        let _ = snp::SnpEvidence::from_raw(data, None);
    }
});
