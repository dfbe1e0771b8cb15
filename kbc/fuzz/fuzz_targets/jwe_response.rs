//! The KBS resource response (flattened JWE) as the client parses and opens it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A fixed recipient key: decryption must fail cleanly (never panic) on
    // anything not made for it.
    let key = p256::SecretKey::from_slice(&[0x42; 32]).expect("valid scalar");
    if let Ok(parsed) = vigil_kbc::jwe::parse(data) {
        let _ = parsed.decrypt(&key);
    }
});
