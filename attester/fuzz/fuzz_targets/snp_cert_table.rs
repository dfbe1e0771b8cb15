#![no_main]
//! Host-supplied SEV-SNP certificate table (extended report buffer / configfs auxblob).

use libfuzzer_sys::fuzz_target;
use vigil_attester::snp;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = snp::parse_cert_table(data) {
        // Bounded entry count, and every certificate lies inside the table.
        assert!(entries.len() <= 32);
        assert!(entries.iter().all(|e| e.data().len() < data.len()));
    }
});
