//! Signed policy envelope: a JWS (RFC 7515) in compact serialization.
//!
//! * Algorithms: `ES256` (ECDSA P-256 / SHA-256, signature is the 64-byte
//!   `r || s`) and `EdDSA` (Ed25519). `none`, anything else, and an algorithm
//!   that does not match the pinned key are refused.
//! * Protected header: `alg` (required), `typ` (optional, must be
//!   [`ENVELOPE_TYP`] when present), `kid` (optional string, informational).
//!   Any other member, including `crit`, is refused: we never accept a header
//!   whose meaning we do not implement.
//! * Payload: JSON object [`PolicyPayload`], unknown members refused.
//!   `issued_at` is **unix seconds** (u64, UTC).
//!
//! This module has no network dependencies; the agent's SetPolicy path
//! reuses it.

use base64::prelude::{Engine as _, BASE64_URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `typ` header written by [`sign`] and accepted by [`verify`].
pub const ENVELOPE_TYP: &str = "vigil-policy+jws";

/// Why an envelope or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The text is not a well-formed compact JWS of the expected shape.
    #[error("malformed policy envelope: {0}")]
    Malformed(String),
    /// The header asks for something we refuse (alg none, crit, unknown member).
    #[error("policy envelope header refused: {0}")]
    Header(String),
    /// The signature does not verify with the pinned key.
    #[error("policy envelope signature is invalid for the pinned signer ({0})")]
    Signature(String),
    /// The policy version is below the anti-rollback floor.
    #[error("policy version {version} is below the minimum {min_version}")]
    Rollback { version: u64, min_version: u64 },
    /// A key could not be loaded or generated.
    #[error("key error: {0}")]
    Key(String),
}

/// Result alias for this module.
pub type Result<T, E = EnvelopeError> = std::result::Result<T, E>;

/// Signature algorithm of a tenant key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256 (`ES256`).
    Es256,
    /// Ed25519 (`EdDSA`).
    EdDsa,
}

impl Algorithm {
    /// The JWS `alg` name.
    pub fn jws_name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    fn from_jws_name(name: &str) -> Result<Self> {
        match name {
            "ES256" => Ok(Algorithm::Es256),
            "EdDSA" => Ok(Algorithm::EdDsa),
            "none" => Err(EnvelopeError::Header(
                "alg \"none\" is never accepted".into(),
            )),
            other => Err(EnvelopeError::Header(format!("unsupported alg {other:?}"))),
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = EnvelopeError;
    /// Accepts the JWS names and the lower-case aliases `es256`, `ed25519`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ES256" | "es256" | "p256" => Ok(Algorithm::Es256),
            "EdDSA" | "eddsa" | "ed25519" => Ok(Algorithm::EdDsa),
            other => Err(EnvelopeError::Key(format!(
                "unknown key algorithm {other:?} (use es256 or ed25519)"
            ))),
        }
    }
}

/// A tenant signing key.
#[derive(Clone)]
pub enum SigningKey {
    /// P-256 ECDSA key.
    Es256(p256::ecdsa::SigningKey),
    /// Ed25519 key.
    EdDsa(ed25519_dalek::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.algorithm().jws_name())
    }
}

/// A tenant public key, as pinned in the agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyingKey {
    /// P-256 ECDSA public key.
    Es256(p256::ecdsa::VerifyingKey),
    /// Ed25519 public key.
    EdDsa(ed25519_dalek::VerifyingKey),
}

impl SigningKey {
    /// A new random key.
    pub fn generate(alg: Algorithm) -> Self {
        match alg {
            Algorithm::Es256 => {
                SigningKey::Es256(p256::ecdsa::SigningKey::random(&mut rand_core::OsRng))
            }
            Algorithm::EdDsa => {
                SigningKey::EdDsa(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
            }
        }
    }

    /// Load a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) P-256 or Ed25519 key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self> {
        use p256::pkcs8::DecodePrivateKey as _;
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::Es256(k));
        }
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(SigningKey::EdDsa)
            .map_err(|e| {
                EnvelopeError::Key(format!(
                    "not a PKCS#8 PEM P-256 or Ed25519 private key: {e}"
                ))
            })
    }

    /// PKCS#8 PEM encoding of the private key.
    pub fn to_pkcs8_pem(&self) -> Result<String> {
        use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
        let pem = match self {
            SigningKey::Es256(k) => k.to_pkcs8_pem(LineEnding::LF),
            SigningKey::EdDsa(k) => k.to_pkcs8_pem(LineEnding::LF),
        };
        pem.map(|p| p.to_string())
            .map_err(|e| EnvelopeError::Key(format!("PKCS#8 encoding failed: {e}")))
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            SigningKey::Es256(k) => VerifyingKey::Es256(*k.verifying_key()),
            SigningKey::EdDsa(k) => VerifyingKey::EdDsa(k.verifying_key()),
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Es256(_) => Algorithm::Es256,
            SigningKey::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Es256(k) => {
                use p256::ecdsa::signature::Signer as _;
                let sig: p256::ecdsa::Signature = k.sign(msg);
                sig.to_bytes().to_vec()
            }
            SigningKey::EdDsa(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(msg).to_bytes().to_vec()
            }
        }
    }
}

impl VerifyingKey {
    /// Load an SPKI PEM (`-----BEGIN PUBLIC KEY-----`) P-256 or Ed25519 key.
    pub fn from_public_key_pem(pem: &str) -> Result<Self> {
        use p256::pkcs8::DecodePublicKey as _;
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(VerifyingKey::Es256(k));
        }
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map(VerifyingKey::EdDsa)
            .map_err(|e| {
                EnvelopeError::Key(format!("not an SPKI PEM P-256 or Ed25519 public key: {e}"))
            })
    }

    /// SPKI PEM encoding.
    pub fn to_public_key_pem(&self) -> Result<String> {
        use p256::pkcs8::{EncodePublicKey as _, LineEnding};
        match self {
            VerifyingKey::Es256(k) => k.to_public_key_pem(LineEnding::LF),
            VerifyingKey::EdDsa(k) => k.to_public_key_pem(LineEnding::LF),
        }
        .map_err(|e| EnvelopeError::Key(format!("SPKI encoding failed: {e}")))
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            VerifyingKey::Es256(_) => Algorithm::Es256,
            VerifyingKey::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    fn verify_bytes(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        match self {
            VerifyingKey::Es256(k) => {
                use p256::ecdsa::signature::Verifier as _;
                let sig = p256::ecdsa::Signature::from_slice(sig).map_err(|_| {
                    EnvelopeError::Signature("ES256 signature is not 64 bytes r||s".into())
                })?;
                k.verify(msg, &sig)
                    .map_err(|_| EnvelopeError::Signature("ES256 verification failed".into()))
            }
            VerifyingKey::EdDsa(k) => {
                let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| {
                    EnvelopeError::Signature("EdDSA signature is not 64 bytes".into())
                })?;
                k.verify_strict(msg, &sig)
                    .map_err(|_| EnvelopeError::Signature("EdDSA verification failed".into()))
            }
        }
    }
}

/// What the tenant signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPayload {
    /// Monotonic policy version, checked against the pinned floor.
    pub version: u64,
    /// Rego policy text.
    pub policy: String,
    /// Issue time, unix seconds (UTC).
    pub issued_at: u64,
    /// Optional tenant-chosen identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A policy whose signature and version were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPolicy {
    /// Policy version (≥ the floor passed to [`verify`]).
    pub version: u64,
    /// Rego policy text.
    pub policy: String,
    /// Optional identifier from the payload.
    pub id: Option<String>,
    /// Issue time, unix seconds.
    pub issued_at: u64,
    /// Lower-case hex SHA-256 of the policy text bytes.
    pub digest: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// Sign `payload` into a compact JWS with `key`.
pub fn sign(key: &SigningKey, payload: &PolicyPayload) -> Result<String> {
    let header = Header {
        alg: key.algorithm().jws_name().to_string(),
        typ: Some(ENVELOPE_TYP.to_string()),
        kid: None,
    };
    let enc = |v: &[u8]| BASE64_URL_SAFE_NO_PAD.encode(v);
    let h = serde_json::to_vec(&header).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let p = serde_json::to_vec(payload).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let signing_input = format!("{}.{}", enc(&h), enc(&p));
    let sig = key.sign_bytes(signing_input.as_bytes());
    Ok(format!("{signing_input}.{}", enc(&sig)))
}

fn segment(name: &str, s: &str) -> Result<Vec<u8>> {
    BASE64_URL_SAFE_NO_PAD.decode(s).map_err(|e| {
        EnvelopeError::Malformed(format!("{name} is not base64url without padding: {e}"))
    })
}

/// Verify a compact JWS against the pinned `signer` and the version floor.
///
/// Order matters: the header is checked, then the signature, and only then
/// is the payload parsed, so unauthenticated payload bytes are never
/// interpreted.
pub fn verify(jws: &str, signer: &VerifyingKey, min_version: u64) -> Result<VerifiedPolicy> {
    let jws = jws.trim_end_matches(['\n', '\r']);
    let parts: Vec<&str> = jws.split('.').collect();
    if parts.len() != 3 {
        return Err(EnvelopeError::Malformed(format!(
            "expected compact serialization with 3 dot-separated parts, found {}",
            parts.len()
        )));
    }
    let header_bytes = segment("header", parts[0])?;
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|e| EnvelopeError::Header(format!("{e}")))?;
    let alg = Algorithm::from_jws_name(&header.alg)?;
    if let Some(typ) = &header.typ {
        if typ != ENVELOPE_TYP {
            return Err(EnvelopeError::Header(format!(
                "typ {typ:?} is not {ENVELOPE_TYP:?}"
            )));
        }
    }
    if alg != signer.algorithm() {
        return Err(EnvelopeError::Header(format!(
            "alg {} does not match the pinned {} key",
            alg.jws_name(),
            signer.algorithm().jws_name()
        )));
    }
    let sig = segment("signature", parts[2])?;
    let signing_input = &jws[..parts[0].len() + 1 + parts[1].len()];
    signer.verify_bytes(signing_input.as_bytes(), &sig)?;
    let payload_bytes = segment("payload", parts[1])?;
    let payload: PolicyPayload = serde_json::from_slice(&payload_bytes)
        .map_err(|e| EnvelopeError::Malformed(format!("payload: {e}")))?;
    if payload.version < min_version {
        return Err(EnvelopeError::Rollback {
            version: payload.version,
            min_version,
        });
    }
    let digest = hex::encode(Sha256::digest(payload.policy.as_bytes()));
    Ok(VerifiedPolicy {
        version: payload.version,
        policy: payload.policy,
        id: payload.id,
        issued_at: payload.issued_at,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(version: u64) -> PolicyPayload {
        PolicyPayload {
            version,
            policy: "package agent_policy\ndefault CreateContainerRequest := true\n".into(),
            issued_at: 1_700_000_000,
            id: Some("p1".into()),
        }
    }

    fn forge(header: &str, payload: &str, sig: &[u8]) -> String {
        let e = |b: &[u8]| BASE64_URL_SAFE_NO_PAD.encode(b);
        format!(
            "{}.{}.{}",
            e(header.as_bytes()),
            e(payload.as_bytes()),
            e(sig)
        )
    }

    #[test]
    fn sign_verify_both_algorithms_via_pem() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa] {
            let key = SigningKey::generate(alg);
            let key = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem().unwrap()).unwrap();
            let pubkey = VerifyingKey::from_public_key_pem(
                &key.verifying_key().to_public_key_pem().unwrap(),
            )
            .unwrap();
            assert_eq!(pubkey.algorithm(), alg);
            let jws = sign(&key, &payload(5)).unwrap();
            let v = verify(&jws, &pubkey, 5).unwrap();
            assert_eq!(v.version, 5);
            assert_eq!(v.id.as_deref(), Some("p1"));
            assert_eq!(v.issued_at, 1_700_000_000);
            assert_eq!(
                v.digest,
                hex::encode(Sha256::digest(payload(5).policy.as_bytes()))
            );
        }
    }

    #[test]
    fn rollback_wrong_signer_and_alg_mismatch() {
        let key = SigningKey::generate(Algorithm::Es256);
        let jws = sign(&key, &payload(2)).unwrap();
        assert_eq!(
            verify(&jws, &key.verifying_key(), 3).unwrap_err(),
            EnvelopeError::Rollback {
                version: 2,
                min_version: 3
            }
        );
        let other = SigningKey::generate(Algorithm::Es256).verifying_key();
        assert!(matches!(
            verify(&jws, &other, 0),
            Err(EnvelopeError::Signature(_))
        ));
        let ed = SigningKey::generate(Algorithm::EdDsa).verifying_key();
        assert!(
            matches!(verify(&jws, &ed, 0), Err(EnvelopeError::Header(m)) if m.contains("does not match"))
        );
    }

    #[test]
    fn tampered_payload_fails_signature() {
        let key = SigningKey::generate(Algorithm::EdDsa);
        let jws = sign(&key, &payload(2)).unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        let evil = BASE64_URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload(99)).unwrap());
        let forged = format!("{}.{}.{}", parts[0], evil, parts[2]);
        assert!(matches!(
            verify(&forged, &key.verifying_key(), 0),
            Err(EnvelopeError::Signature(_))
        ));
    }

    #[test]
    fn refuses_none_crit_unknown_headers_and_bad_forms() {
        let key = SigningKey::generate(Algorithm::Es256);
        let vk = key.verifying_key();
        let p = serde_json::to_string(&payload(1)).unwrap();
        let none = forge(r#"{"alg":"none"}"#, &p, b"");
        assert!(
            matches!(verify(&none, &vk, 0), Err(EnvelopeError::Header(m)) if m.contains("none"))
        );
        let crit = forge(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#, &p, &[0; 64]);
        assert!(
            matches!(verify(&crit, &vk, 0), Err(EnvelopeError::Header(m)) if m.contains("crit"))
        );
        let typ = forge(r#"{"alg":"ES256","typ":"JWT"}"#, &p, &[0; 64]);
        assert!(matches!(
            verify(&typ, &vk, 0),
            Err(EnvelopeError::Header(_))
        ));
        let hs = forge(r#"{"alg":"HS256"}"#, &p, &[0; 32]);
        assert!(matches!(verify(&hs, &vk, 0), Err(EnvelopeError::Header(_))));
        let jws = sign(&key, &payload(1)).unwrap();
        // JSON serialization, detached payload and padding are not the compact form.
        assert!(matches!(
            verify("{\"payload\":\"x\"}", &vk, 0),
            Err(EnvelopeError::Malformed(_))
        ));
        let parts: Vec<&str> = jws.split('.').collect();
        let detached = format!("{}..{}", parts[0], parts[2]);
        assert!(verify(&detached, &vk, 0).is_err());
        let padded = format!("{jws}=");
        assert!(matches!(
            verify(&padded, &vk, 0),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            verify(&format!("{jws}.x"), &vk, 0),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_payload_member_is_refused_after_signature() {
        let key = SigningKey::generate(Algorithm::EdDsa);
        let header = BASE64_URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA"}"#);
        let body = BASE64_URL_SAFE_NO_PAD
            .encode(br#"{"version":1,"policy":"x","issued_at":0,"admin":true}"#);
        let input = format!("{header}.{body}");
        let sig = key.sign_bytes(input.as_bytes());
        let jws = format!("{input}.{}", BASE64_URL_SAFE_NO_PAD.encode(sig));
        assert!(
            matches!(verify(&jws, &key.verifying_key(), 0), Err(EnvelopeError::Malformed(m)) if m.contains("admin"))
        );
    }

    #[test]
    fn key_loaders_name_the_problem() {
        assert!(
            matches!(VerifyingKey::from_public_key_pem("garbage"), Err(EnvelopeError::Key(m)) if m.contains("SPKI"))
        );
        assert!(
            matches!(SigningKey::from_pkcs8_pem("garbage"), Err(EnvelopeError::Key(m)) if m.contains("PKCS#8"))
        );
        // A private key where a public one is expected is refused.
        let pem = SigningKey::generate(Algorithm::Es256)
            .to_pkcs8_pem()
            .unwrap();
        assert!(VerifyingKey::from_public_key_pem(&pem).is_err());
    }
}
