//! The signed policy envelope verifier with a fixed pinned key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_kbc::envelope::{verify, SigningKey, VerifyingKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let es = VerifyingKey::Es256(
        *p256::ecdsa::SigningKey::from_slice(&[7; 32])
            .expect("key")
            .verifying_key(),
    );
    // Nothing unsigned can verify: any Ok here would be a forgery.
    assert!(verify(text, &es, 0).is_err());
    let _ = SigningKey::from_pkcs8_pem(text);
    let _ = VerifyingKey::from_public_key_pem(text);
});
