#![no_main]
//! Host-supplied SEV-SNP certificate table (extended report buffer / configfs auxblob).

use libfuzzer_sys::fuzz_target;
use vigil_attester::snp;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = snp::parse_cert_table(data) {
        // Every entry's data lies inside the table.
        let total: usize = entries.iter().map(|e| e.data().len()).sum();
        assert!(entries.is_empty() || total <= data.len() * entries.len());
    }
});
