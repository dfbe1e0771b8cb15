//! The per-handshake TEE key and the runtime-data binding.
//!
//! A fresh EC P-256 key is made for every handshake; its public half travels
//! as a JWK in the attest request and the KBS encrypts resources to it. The
//! evidence's report_data commits to that key and the KBS nonce through
//! SHA-384 of the canonical JSON of the runtime data.

use crate::jcs;
use base64::prelude::{Engine as _, BASE64_URL_SAFE_NO_PAD};
use kbs_types::{HashAlgorithm, Tee, TeePubKey};
use p256::elliptic_curve::sec1::{FromEncodedPoint as _, ToEncodedPoint as _};
use p256::{EncodedPoint, PublicKey, SecretKey};
use serde_json::json;
use sha2::{Digest, Sha384};

/// JWE key-management algorithm the TEE key is advertised for.
pub const TEE_KEY_ALG: &str = "ECDH-ES+A256KW";
/// JWK curve name of the TEE key.
pub const TEE_KEY_CRV: &str = "P-256";

/// An ephemeral EC P-256 key pair owned by the guest for one handshake.
pub struct TeeKey {
    secret: SecretKey,
}

impl std::fmt::Debug for TeeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeKey")
            .field("public", &self.public_jwk())
            .finish_non_exhaustive()
    }
}

impl TeeKey {
    /// A new random key from the OS RNG.
    pub fn generate() -> Self {
        TeeKey {
            secret: SecretKey::random(&mut rand_core::OsRng),
        }
    }

    /// The secret scalar, for decrypting JWE responses.
    pub fn secret(&self) -> &SecretKey {
        &self.secret
    }

    /// The private key as PKCS#8 PEM, the form CoCo's attestation agent hands a workload as
    /// `tee_keypair` beside a KBS token (for decrypting what the KBS encrypts to it).
    pub fn to_pkcs8_pem(&self) -> zeroize::Zeroizing<String> {
        use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
        self.secret
            .to_pkcs8_pem(LineEnding::LF)
            .expect("a P-256 key always has a PKCS#8 encoding")
    }

    /// The public key as the JWK the KBS expects in `tee-pubkey`.
    pub fn public_jwk(&self) -> TeePubKey {
        public_key_to_jwk(&self.secret.public_key())
    }
}

/// `{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x","y"}` for a P-256 key.
pub fn public_key_to_jwk(key: &PublicKey) -> TeePubKey {
    let point = key.to_encoded_point(false);
    // Uncompressed points always carry both coordinates.
    let x = point.x().map(|x| BASE64_URL_SAFE_NO_PAD.encode(x));
    let y = point.y().map(|y| BASE64_URL_SAFE_NO_PAD.encode(y));
    TeePubKey::EC {
        crv: TEE_KEY_CRV.to_string(),
        alg: TEE_KEY_ALG.to_string(),
        x: x.unwrap_or_default(),
        y: y.unwrap_or_default(),
    }
}

/// The P-256 public key in a `tee-pubkey` JWK, checking curve and algorithm.
pub fn jwk_to_public_key(jwk: &TeePubKey) -> Result<PublicKey, String> {
    let TeePubKey::EC { crv, alg, x, y } = jwk else {
        return Err("tee-pubkey is not an EC key".into());
    };
    if crv != TEE_KEY_CRV {
        return Err(format!("tee-pubkey curve {crv:?} is not {TEE_KEY_CRV}"));
    }
    if alg != TEE_KEY_ALG {
        return Err(format!("tee-pubkey alg {alg:?} is not {TEE_KEY_ALG}"));
    }
    let coord = |name: &str, v: &str| -> Result<[u8; 32], String> {
        let raw = BASE64_URL_SAFE_NO_PAD
            .decode(v)
            .map_err(|e| format!("tee-pubkey {name} is not base64url: {e}"))?;
        raw.try_into()
            .map_err(|_| format!("tee-pubkey {name} is not 32 bytes"))
    };
    let (x, y) = (coord("x", x)?, coord("y", y)?);
    let point = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    Option::from(PublicKey::from_encoded_point(&point))
        .ok_or_else(|| "tee-pubkey is not a point on P-256".to_string())
}

/// SHA-384 of the RFC 8785 canonical JSON of
/// `{"additional-evidence": "", "nonce": nonce, "tee-pubkey": jwk}`
/// (the protocol's default hash).
pub fn runtime_data_digest(nonce: &str, tee_pubkey: &TeePubKey) -> Result<[u8; 48], jcs::JcsError> {
    let d = runtime_data_digest_with(HashAlgorithm::Sha384, nonce, tee_pubkey)?;
    Ok(d.try_into().expect("SHA-384 is 48 bytes"))
}

/// As [`runtime_data_digest`] with the hash the KBS selected in its
/// challenge (`extra-params."selected-hash-algorithm"`).
pub fn runtime_data_digest_with(
    alg: HashAlgorithm,
    nonce: &str,
    tee_pubkey: &TeePubKey,
) -> Result<Vec<u8>, jcs::JcsError> {
    let value = json!({
        "additional-evidence": "",
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    });
    let canonical = jcs::canonicalize(&value)?;
    Ok(match alg {
        HashAlgorithm::Sha384 => Sha384::digest(canonical.as_bytes()).to_vec(),
        other => other.digest(canonical.as_bytes()),
    })
}

/// The bytes that go into the evidence's report_data field for `tee`:
/// the digest zero-padded to 64 for hardware TEEs whose report_data field is
/// 64 bytes (SNP, TDX), unpadded for sample evidence.
pub fn report_data_for(tee: Tee, digest: &[u8]) -> Vec<u8> {
    let mut v = digest.to_vec();
    if report_data_is_padded(tee) && v.len() < 64 {
        v.resize(64, 0);
    }
    v
}

/// Whether `tee`'s report_data field is 64 bytes (digest zero-padded).
pub fn report_data_is_padded(tee: Tee) -> bool {
    matches!(tee, Tee::Snp | Tee::Tdx | Tee::AzSnpVtpm | Tee::AzTdxVtpm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwk_round_trip_and_shape() {
        let k = TeeKey::generate();
        let jwk = k.public_jwk();
        let v = serde_json::to_value(&jwk).unwrap();
        assert_eq!(v["kty"], "EC");
        assert_eq!(v["crv"], "P-256");
        assert_eq!(v["alg"], "ECDH-ES+A256KW");
        assert_eq!(v.as_object().unwrap().len(), 5);
        let back = jwk_to_public_key(&jwk).unwrap();
        assert_eq!(back, k.secret().public_key());
        use p256::pkcs8::DecodePrivateKey as _;
        let pem = k.to_pkcs8_pem();
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{}",
            &pem[..30]
        );
        assert_eq!(SecretKey::from_pkcs8_pem(&pem).unwrap(), *k.secret());
    }

    #[test]
    fn jwk_rejects_wrong_curve_and_off_curve_points() {
        let k = TeeKey::generate();
        let TeePubKey::EC { x, y, alg, .. } = k.public_jwk() else {
            unreachable!()
        };
        let bad_crv = TeePubKey::EC {
            crv: "P-384".into(),
            alg: alg.clone(),
            x: x.clone(),
            y: y.clone(),
        };
        assert!(jwk_to_public_key(&bad_crv).unwrap_err().contains("curve"));
        let off = TeePubKey::EC {
            crv: "P-256".into(),
            alg,
            x,
            y: BASE64_URL_SAFE_NO_PAD.encode([7u8; 32]),
        };
        assert!(jwk_to_public_key(&off).unwrap_err().contains("point"));
    }

    #[test]
    fn digest_depends_on_nonce_and_key_and_padding_per_tee() {
        let a = TeeKey::generate().public_jwk();
        let b = TeeKey::generate().public_jwk();
        let d1 = runtime_data_digest("n1", &a).unwrap();
        assert_ne!(d1, runtime_data_digest("n2", &a).unwrap());
        assert_ne!(d1, runtime_data_digest("n1", &b).unwrap());
        // Independent recomputation from the documented object.
        let text = format!(
            r#"{{"additional-evidence":"","nonce":"n1","tee-pubkey":{}}}"#,
            jcs::canonicalize(&serde_json::to_value(&a).unwrap()).unwrap()
        );
        assert_eq!(d1.as_slice(), &Sha384::digest(text.as_bytes())[..]);
        assert_eq!(report_data_for(Tee::Sample, &d1).len(), 48);
        let snp = report_data_for(Tee::Snp, &d1);
        assert_eq!(snp.len(), 64);
        assert_eq!(&snp[..48], &d1);
        assert!(snp[48..].iter().all(|b| *b == 0));
        assert_eq!(report_data_for(Tee::Tdx, &d1).len(), 64);
        let d512 = runtime_data_digest_with(HashAlgorithm::Sha512, "n1", &a).unwrap();
        assert_eq!(d512.as_slice(), &sha2::Sha512::digest(text.as_bytes())[..]);
        assert_eq!(report_data_for(Tee::Snp, &d512), d512);
        let d256 = runtime_data_digest_with(HashAlgorithm::Sha256, "n1", &a).unwrap();
        assert_eq!(d256.as_slice(), &sha2::Sha256::digest(text.as_bytes())[..]);
        assert_eq!(report_data_for(Tee::Sample, &d256).len(), 32);
    }
}
