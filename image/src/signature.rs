//! Cosign signatures with public keys, as cosign stores them and image-rs verifies them: the
//! signature "image" at tag `<algo>-<hex of the signed manifest digest>.sig` in the same
//! repository, one layer per signature, each layer a simple-signing payload
//! (`application/vnd.dev.cosign.simplesigning.v1+json`) with its base64 ECDSA P-256
//! signature in the annotation `dev.cosignproject.cosign/signature`.
//!
//! An image passes when at least one layer's signature verifies with a trusted key, its
//! payload is a cosign container image signature for the pulled manifest (the index digest or
//! the platform manifest digest), and its `docker-reference` satisfies the rule's identity.

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::policy::SignedIdentity;
use crate::reference::Reference;
use crate::registry::{Credentials, RegistryClient};

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const COSIGN_PAYLOAD_TYPE: &str = "cosign container image signature";
/// The most signature layers looked at (a repository could pile up thousands).
const MAX_SIGNATURES: usize = 32;
const MAX_PAYLOAD: u64 = 64 << 10;

/// A trusted cosign public key (ECDSA P-256).
#[derive(Clone)]
pub struct CosignKey {
    key: p256::ecdsa::VerifyingKey,
    /// Where it came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for CosignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosignKey")
            .field("source", &self.source)
            .finish()
    }
}

impl CosignKey {
    /// Parses a PEM `PUBLIC KEY` (what `cosign generate-key-pair` writes as cosign.pub).
    pub fn from_pem(pem: &[u8], source: &str) -> std::result::Result<CosignKey, String> {
        let text = std::str::from_utf8(pem).map_err(|_| format!("key {source}: not PEM text"))?;
        let key = p256::ecdsa::VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| {
            format!(
                "key {source}: not an ECDSA P-256 public key in PEM (the only kind supported): {e}"
            )
        })?;
        Ok(CosignKey {
            key,
            source: source.to_string(),
        })
    }

    fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        let sig = p256::ecdsa::Signature::from_der(signature)
            .or_else(|_| p256::ecdsa::Signature::from_slice(signature));
        sig.is_ok_and(|s| self.key.verify(payload, &s).is_ok())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<SignatureLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignatureLayer {
    #[serde(default)]
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: PayloadImage,
    identity: PayloadIdentity,
}

#[derive(Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

#[derive(Deserialize)]
struct PayloadIdentity {
    #[serde(rename = "docker-reference")]
    reference: String,
}

/// The cosign tag for a manifest digest.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm(), digest.hex())
}

/// Verifies that `image` (resolved to `signed`, the digests a signature may name) carries a
/// valid cosign signature by one of `keys`. Returns which key verified, for the audit log.
pub(crate) async fn verify(
    client: &RegistryClient,
    creds: Option<&Credentials>,
    image: &Reference,
    signed: &[&Digest],
    keys: &[CosignKey],
    identity: &SignedIdentity,
) -> Result<String> {
    let denied = |reason: String| Error::Denied {
        image: image.to_string(),
        reason,
    };
    let top = signed
        .first()
        .ok_or_else(|| denied("no manifest digest".into()))?;
    let tag = signature_tag(top);
    let doc = match client.manifest(image, &tag, creds).await {
        Ok(d) => d,
        Err(Error::NotFound { .. }) => {
            return Err(denied(format!(
                "sigstoreSigned: the image has no cosign signature (no tag {tag})"
            )))
        }
        Err(e) => return Err(e),
    };
    let manifest: SignatureManifest = serde_json::from_slice(&doc.body).map_err(|e| {
        Error::invalid(
            image,
            format!("signature manifest {tag}"),
            format!("malformed: {e}"),
        )
    })?;
    let mut why = Vec::new();
    let candidates = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        .take(MAX_SIGNATURES);
    for (i, layer) in candidates.enumerate() {
        let Some(sig_b64) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
            why.push(format!(
                "signature {i}: no {SIGNATURE_ANNOTATION} annotation"
            ));
            continue;
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig_b64.trim()) else {
            why.push(format!("signature {i}: annotation is not base64"));
            continue;
        };
        if layer.size > MAX_PAYLOAD {
            why.push(format!(
                "signature {i}: payload of {} bytes is too large",
                layer.size
            ));
            continue;
        }
        let payload = client
            .small_blob(image, &layer.digest, layer.size, "signature payload", creds)
            .await?;
        let Some(key) = keys.iter().find(|k| k.verifies(&payload, &sig)) else {
            why.push(format!("signature {i}: not made by a trusted key"));
            continue;
        };
        match check_payload(&payload, image, signed, identity) {
            Ok(()) => return Ok(key.source.clone()),
            Err(e) => why.push(format!("signature {i} (key {}): {e}", key.source)),
        }
    }
    if why.is_empty() {
        why.push(format!(
            "the signature manifest {tag} has no simple-signing layer"
        ));
    }
    Err(denied(format!(
        "sigstoreSigned: no valid signature: {}",
        why.join("; ")
    )))
}

/// Checks a simple-signing payload (already verified by a key) against the pulled image: the
/// cosign type, one of the `signed` manifest digests, the repository the policy wants.
pub fn check_payload(
    payload: &[u8],
    image: &Reference,
    signed: &[&Digest],
    identity: &SignedIdentity,
) -> std::result::Result<(), String> {
    let p: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not simple signing: {e}"))?;
    if p.critical.kind != COSIGN_PAYLOAD_TYPE {
        return Err(format!(
            "payload type {:?} is not {COSIGN_PAYLOAD_TYPE:?}",
            p.critical.kind
        ));
    }
    if !signed
        .iter()
        .any(|d| d.to_string() == p.critical.image.digest)
    {
        return Err(format!(
            "it signs manifest {}, not the one pulled ({})",
            p.critical.image.digest,
            signed
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    let signed_name = Reference::parse(&p.critical.identity.reference)
        .map_err(|e| format!("docker-reference: {e}"))?
        .name();
    let wanted = match identity {
        SignedIdentity::MatchRepository => image.name(),
        SignedIdentity::ExactRepository(r) => r.clone(),
    };
    if signed_name != wanted {
        return Err(format!(
            "it names repository {signed_name}, the policy wants {wanted}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    fn key_pair(seed: u8) -> (p256::ecdsa::SigningKey, CosignKey) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        (sk, CosignKey::from_pem(pem.as_bytes(), "test").unwrap())
    }

    #[test]
    fn der_signatures_verify_only_with_their_key() {
        let (sk, pk) = key_pair(7);
        let (_, other) = key_pair(9);
        let sig: p256::ecdsa::Signature = sk.sign(b"payload");
        let der = sig.to_der();
        assert!(pk.verifies(b"payload", der.as_bytes()));
        assert!(!pk.verifies(b"payloaD", der.as_bytes()));
        assert!(!other.verifies(b"payload", der.as_bytes()));
        assert!(pk.verifies(b"payload", &sig.to_bytes()));
        let e = CosignKey::from_pem(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            "k",
        )
        .unwrap_err();
        assert!(e.contains("P-256"), "{e}");
    }

    #[test]
    fn payload_must_name_the_digest_and_repository() {
        let image = Reference::parse("127.0.0.1:5000/app:v1").unwrap();
        let d = Digest::sha256_of(b"m");
        let other = Digest::sha256_of(b"x");
        let payload = |digest: &Digest, name: &str, kind: &str| {
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"{name}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"{kind}"}},"optional":null}}"#
            )
        };
        let ok = payload(&d, "127.0.0.1:5000/app", COSIGN_PAYLOAD_TYPE);
        check_payload(
            ok.as_bytes(),
            &image,
            &[&other, &d],
            &SignedIdentity::MatchRepository,
        )
        .unwrap();
        let e = check_payload(
            ok.as_bytes(),
            &image,
            &[&other],
            &SignedIdentity::MatchRepository,
        )
        .unwrap_err();
        assert!(e.contains("not the one pulled"), "{e}");
        let wrong_repo = payload(&d, "127.0.0.1:5000/evil", COSIGN_PAYLOAD_TYPE);
        let e = check_payload(
            wrong_repo.as_bytes(),
            &image,
            &[&d],
            &SignedIdentity::MatchRepository,
        )
        .unwrap_err();
        assert!(e.contains("127.0.0.1:5000/evil"), "{e}");
        check_payload(
            wrong_repo.as_bytes(),
            &image,
            &[&d],
            &SignedIdentity::ExactRepository("127.0.0.1:5000/evil".into()),
        )
        .unwrap();
        let wrong_type = payload(&d, "127.0.0.1:5000/app", "atomic container signature");
        assert!(check_payload(
            wrong_type.as_bytes(),
            &image,
            &[&d],
            &SignedIdentity::MatchRepository
        )
        .is_err());
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", d.hex()));
    }
}
