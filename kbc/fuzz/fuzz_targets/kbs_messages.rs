//! KBS protocol bodies: the auth challenge and attest token the client reads,
//! and the auth/attest requests a KBS reads, including the runtime-data hash
//! (RFC 8785 canonical JSON) and the TEE key conversion.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            if let Ok(c) = serde_json::from_slice::<kbs_types::Challenge>(body) {
                let key = vigil_kbc::tee_key::TeeKey::generate().public_jwk();
                let _ = vigil_kbc::tee_key::runtime_data_digest(&c.nonce, &key);
            }
        }
        1 => {
            if let Ok(a) = serde_json::from_slice::<kbs_types::Attestation>(body) {
                let _ = vigil_kbc::tee_key::jwk_to_public_key(&a.runtime_data.tee_pubkey);
                if let Ok(d) = vigil_kbc::tee_key::runtime_data_digest(
                    &a.runtime_data.nonce,
                    &a.runtime_data.tee_pubkey,
                ) {
                    let _ = vigil_kbc::tee_key::report_data_for(kbs_types::Tee::Snp, &d);
                }
            }
        }
        2 => {
            let _ = serde_json::from_slice::<kbs_types::Request>(body);
            let _ = serde_json::from_slice::<kbs_types::ErrorInformation>(body);
        }
        _ => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                if let Ok(c) = vigil_kbc::jcs::canonicalize(&v) {
                    // Canonical output is valid JSON and a fixed point.
                    let again: serde_json::Value =
                        serde_json::from_str(&c).expect("canonical JSON parses");
                    assert_eq!(
                        vigil_kbc::jcs::canonicalize(&again).as_deref(),
                        Ok(c.as_str())
                    );
                }
            }
        }
    }
});
