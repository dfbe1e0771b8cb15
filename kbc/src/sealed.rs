//! Sealed secrets in the format of CoCo's confidential data hub: the text `sealed.` followed by
//! a compact JWS (ES256) whose payload is a secret description. vigil understands the "vault"
//! type with the `kbs` provider: the payload names a KBS resource (`kbs:///repo/type/tag`)
//! that the guest fetches over its attested session. Sealed values can travel through
//! untrusted hands (pod specs, Kubernetes secrets): they hold no plaintext, and the signature
//! (by a tenant key pinned in the measured config, or published on the KBS) stops anyone else
//! from pointing a workload at a resource of their choosing.
//!
//! ```text
//! sealed.<b64url {"alg":"ES256","kid":...}>.<b64url {"version":"0.1.0","type":"vault",
//!        "provider":"kbs","name":"kbs:///repo/type/tag","provider_settings":{},"annotations":{}}>.<b64url r||s>
//! ```
//!
//! Nothing here touches the network; the agent does the fetching.

use base64::prelude::{Engine as _, BASE64_URL_SAFE_NO_PAD};
use p256::ecdsa::{SigningKey, VerifyingKey};
use serde_json::{json, Map, Value};

/// What every sealed secret starts with.
pub const PREFIX: &str = "sealed.";
/// The only sealed secret format version.
pub const VERSION: &str = "0.1.0";
/// Prefix of a KBS resource URI (no host: the guest's configured KBS).
pub const KBS_URI_PREFIX: &str = "kbs:///";
/// Longest sealed secret accepted; real ones are a few hundred bytes.
pub const MAX_LEN: usize = 64 * 1024;

/// Why a sealed secret cannot be used. Messages never contain secret material (a sealed
/// secret holds none).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealedError {
    /// Not `sealed.` + three base64url parts, or parts that do not decode.
    #[error("malformed sealed secret: {0}")]
    Malformed(String),
    /// The JWS header is not ES256 with a kid.
    #[error("sealed secret header: {0}")]
    Header(String),
    /// The signature does not verify.
    #[error("sealed secret signature: {0}")]
    Signature(String),
    /// The (authenticated) payload is not a vault secret vigil can unseal.
    #[error("sealed secret payload: {0}")]
    Payload(String),
    /// A key that cannot be used to verify sealed secrets.
    #[error("sealed secret key: {0}")]
    Key(String),
}

type Result<T> = std::result::Result<T, SealedError>;

/// A parsed sealed secret whose signature has not been checked yet.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    kid: String,
    /// `header.payload`, the bytes the signature covers.
    signing_input: String,
    payload_b64: String,
    signature: Vec<u8>,
}

/// What an authenticated vault secret asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultSecret {
    /// The KBS resource, `repo/type/tag`.
    pub resource: String,
}

/// Whether `value` is meant as a sealed secret (and must be unsealed, or refused).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
}

fn decode(name: &str, part: &str) -> Result<Vec<u8>> {
    BASE64_URL_SAFE_NO_PAD.decode(part).map_err(|e| {
        SealedError::Malformed(format!("{name} is not base64url without padding: {e}"))
    })
}

impl SealedSecret {
    /// Parses the structure and the header. The payload stays unread until
    /// [`SealedSecret::verify`] has checked the signature over it.
    pub fn parse(text: &str) -> Result<SealedSecret> {
        if text.len() > MAX_LEN {
            return Err(SealedError::Malformed(format!(
                "{} bytes is over the {MAX_LEN}-byte limit",
                text.len()
            )));
        }
        let jws = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| SealedError::Malformed(format!("does not start with {PREFIX:?}")))?;
        let parts: Vec<&str> = jws.split('.').collect();
        if parts.len() != 3 {
            return Err(SealedError::Malformed(format!(
                "expected {PREFIX}<header>.<payload>.<signature>, found {} dot-separated parts after the prefix",
                parts.len()
            )));
        }
        let header: Map<String, Value> = serde_json::from_slice(&decode("header", parts[0])?)
            .map_err(|e| SealedError::Header(format!("not a JSON object: {e}")))?;
        for name in header.keys() {
            if !["alg", "kid", "typ"].contains(&name.as_str()) {
                return Err(SealedError::Header(format!(
                    "member {name:?} is not supported (only alg, kid, typ)"
                )));
            }
        }
        match header.get("alg").and_then(Value::as_str) {
            Some("ES256") => {}
            Some(other) => {
                return Err(SealedError::Header(format!(
                    "alg {other:?} is not ES256 (the only algorithm sealed secrets use)"
                )))
            }
            None => return Err(SealedError::Header("no string alg".into())),
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| SealedError::Header("no kid naming the verification key".into()))?
            .to_string();
        let signature = decode("signature", parts[2])?;
        Ok(SealedSecret {
            kid,
            signing_input: format!("{}.{}", parts[0], parts[1]),
            payload_b64: parts[1].to_string(),
            signature,
        })
    }

    /// The key id from the header: a KBS resource URI (`kbs:///repo/type/tag`, where the
    /// verification key is published as a JWK) or a name for a pinned key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The KBS resource holding the verification key, when the kid names one.
    pub fn kid_resource(&self) -> Option<String> {
        parse_kbs_uri(&self.kid).ok()
    }

    /// Checks the signature with `key`, then reads the payload.
    pub fn verify(&self, key: &VerifyingKey) -> Result<VaultSecret> {
        use p256::ecdsa::signature::Verifier as _;
        let sig = p256::ecdsa::Signature::from_slice(&self.signature)
            .map_err(|_| SealedError::Signature("ES256 signature is not 64 bytes r||s".into()))?;
        key.verify(self.signing_input.as_bytes(), &sig)
            .map_err(|_| {
                SealedError::Signature(format!(
                    "does not verify with the key for kid {:?}",
                    self.kid
                ))
            })?;
        let payload = decode("payload", &self.payload_b64)?;
        parse_payload(&payload)
    }
}

fn parse_payload(bytes: &[u8]) -> Result<VaultSecret> {
    let bad = |m: String| SealedError::Payload(m);
    let doc: Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let text = |name: &str| -> Result<&str> {
        doc.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("no string {name:?}")))
    };
    let version = text("version")?;
    if version != VERSION {
        return Err(bad(format!("version {version:?} is not {VERSION:?}")));
    }
    match text("type")? {
        "vault" => {}
        "envelope" => {
            return Err(bad(
                "type \"envelope\" (KMS-wrapped keys) is not supported: use a \"vault\" secret naming a KBS resource".into(),
            ))
        }
        other => return Err(bad(format!("type {other:?} is not \"vault\""))),
    }
    let provider = text("provider")?;
    if provider != "kbs" {
        return Err(bad(format!(
            "provider {provider:?} is not \"kbs\" (the only secret provider vigil has)"
        )));
    }
    for name in ["provider_settings", "annotations"] {
        match doc.get(name) {
            None | Some(Value::Object(_)) => {}
            Some(_) => return Err(bad(format!("{name:?} is not an object"))),
        }
    }
    let resource = parse_kbs_uri(text("name")?).map_err(|e| bad(format!("name: {e}")))?;
    Ok(VaultSecret { resource })
}

/// `repo/type/tag` from `kbs:///repo/type/tag`. A URI naming a KBS host is refused: the guest
/// fetches only from the KBS its measured config names.
pub fn parse_kbs_uri(uri: &str) -> std::result::Result<String, String> {
    let Some(rest) = uri.strip_prefix("kbs://") else {
        return Err(format!("{uri:?} is not a kbs:// resource URI"));
    };
    let Some(path) = rest.strip_prefix('/') else {
        let host = rest.split('/').next().unwrap_or_default();
        return Err(format!(
            "{uri:?} names KBS host {host:?}; the guest fetches only from its configured KBS, so write {KBS_URI_PREFIX}repo/type/tag"
        ));
    };
    crate::client::validate_resource_path(path).map_err(|e| format!("{uri:?}: {e}"))?;
    Ok(path.to_string())
}

/// Seals `resource` (`repo/type/tag`) with the tenant's P-256 key, naming the verification key
/// `kid` in the header.
pub fn seal(resource: &str, key: &SigningKey, kid: &str) -> Result<String> {
    use p256::ecdsa::signature::Signer as _;
    crate::client::validate_resource_path(resource)
        .map_err(|e| SealedError::Payload(e.to_string()))?;
    if kid.is_empty() {
        return Err(SealedError::Header("kid must not be empty".into()));
    }
    let header = json!({"alg": "ES256", "kid": kid});
    let payload = json!({
        "version": VERSION,
        "type": "vault",
        "name": format!("{KBS_URI_PREFIX}{resource}"),
        "provider": "kbs",
        "provider_settings": {},
        "annotations": {},
    });
    let enc = |v: &Value| BASE64_URL_SAFE_NO_PAD.encode(v.to_string());
    let signing_input = format!("{}.{}", enc(&header), enc(&payload));
    let sig: p256::ecdsa::Signature = key.sign(signing_input.as_bytes());
    Ok(format!(
        "{PREFIX}{signing_input}.{}",
        BASE64_URL_SAFE_NO_PAD.encode(sig.to_bytes())
    ))
}

/// A P-256 public key from a JWK (`{"kty":"EC","crv":"P-256","x","y",...}`), as CoCo
/// publishes sealed-secret verification keys. A private member (`d`) is refused: a
/// verification key published on a KBS must not carry the signing key.
pub fn verifying_key_from_jwk(bytes: &[u8]) -> Result<VerifyingKey> {
    let bad = |m: String| SealedError::Key(m);
    let jwk: Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JWK JSON object: {e}")))?;
    let text = |name: &str| -> Result<&str> {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("JWK has no string {name:?}")))
    };
    if text("kty")? != "EC" || text("crv")? != "P-256" {
        return Err(bad("JWK is not an EC P-256 key".into()));
    }
    if let Some(alg) = jwk.get("alg") {
        if alg != "ES256" {
            return Err(bad(format!("JWK alg {alg} is not ES256")));
        }
    }
    if jwk.contains_key("d") {
        return Err(bad(
            "JWK holds a private key (\"d\"); publish only the public key".into(),
        ));
    }
    let coord = |name: &str| -> Result<[u8; 32]> {
        BASE64_URL_SAFE_NO_PAD
            .decode(text(name)?)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| bad(format!("JWK {name} is not 32 bytes of base64url")))
    };
    let point = p256::EncodedPoint::from_affine_coordinates(
        &coord("x")?.into(),
        &coord("y")?.into(),
        false,
    );
    VerifyingKey::from_encoded_point(&point).map_err(|_| bad("JWK is not a point on P-256".into()))
}

/// A verification key from text: SPKI PEM (`-----BEGIN PUBLIC KEY-----`) or a JWK.
pub fn verifying_key_from_text(text: &str) -> Result<VerifyingKey> {
    use p256::pkcs8::DecodePublicKey as _;
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        return verifying_key_from_jwk(trimmed.as_bytes());
    }
    VerifyingKey::from_public_key_pem(trimmed)
        .map_err(|e| SealedError::Key(format!("not a P-256 SPKI PEM public key or JWK: {e}")))
}

/// The RFC 7638 thumbprint of `key` (base64url SHA-256 of its canonical JWK): a kid that
/// names exactly this key.
pub fn thumbprint(key: &VerifyingKey) -> String {
    use sha2::Digest as _;
    let jwk = public_jwk(key, "");
    // RFC 7638: the required members only, in lexicographic order, no whitespace.
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap_or_default(),
        jwk["y"].as_str().unwrap_or_default()
    );
    BASE64_URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

/// The public JWK of `key` (with `kid`, `alg` and `use`), to publish on the KBS.
pub fn public_jwk(key: &VerifyingKey, kid: &str) -> Value {
    let point = key.to_encoded_point(false);
    let b64 = |c: Option<&p256::FieldBytes>| c.map(|c| BASE64_URL_SAFE_NO_PAD.encode(c));
    json!({
        "kty": "EC",
        "crv": "P-256",
        "alg": "ES256",
        "use": "sig",
        "kid": kid,
        "x": b64(point.x()),
        "y": b64(point.y()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::random(&mut rand_core::OsRng)
    }

    fn parts(s: &str) -> Vec<String> {
        s.strip_prefix(PREFIX)
            .unwrap()
            .split('.')
            .map(String::from)
            .collect()
    }

    fn reseal(header: &Value, payload: &Value, k: &SigningKey) -> String {
        use p256::ecdsa::signature::Signer as _;
        let enc = |v: &Value| BASE64_URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", enc(header), enc(payload));
        let sig: p256::ecdsa::Signature = k.sign(input.as_bytes());
        format!(
            "{PREFIX}{input}.{}",
            BASE64_URL_SAFE_NO_PAD.encode(sig.to_bytes())
        )
    }

    #[test]
    fn seal_verify_round_trip_and_coco_shape() {
        let k = key();
        let s = seal("default/app/db-password", &k, "kbs:///default/keys/sealing").unwrap();
        assert!(is_sealed(&s));
        let p = parts(&s);
        let header: Value = serde_json::from_slice(&decode("h", &p[0]).unwrap()).unwrap();
        assert_eq!(
            header,
            json!({"alg": "ES256", "kid": "kbs:///default/keys/sealing"})
        );
        let payload: Value = serde_json::from_slice(&decode("p", &p[1]).unwrap()).unwrap();
        // The shape of CoCo's vault secret (confidential-data-hub's SEALED_SECRET.md).
        assert_eq!(
            payload,
            json!({"version": "0.1.0", "type": "vault", "name": "kbs:///default/app/db-password",
                   "provider": "kbs", "provider_settings": {}, "annotations": {}})
        );
        let parsed = SealedSecret::parse(&s).unwrap();
        assert_eq!(parsed.kid(), "kbs:///default/keys/sealing");
        assert_eq!(
            parsed.kid_resource().as_deref(),
            Some("default/keys/sealing")
        );
        let v = parsed.verify(k.verifying_key()).unwrap();
        assert_eq!(v.resource, "default/app/db-password");
        assert_eq!(
            SealedSecret::parse(&seal("a/b/c", &k, "tenant").unwrap())
                .unwrap()
                .kid_resource(),
            None
        );
    }

    #[test]
    fn wrong_key_and_tampering_fail_before_the_payload_is_read() {
        let k = key();
        let s = seal("default/app/x", &k, "t").unwrap();
        let other = key();
        let e = SealedSecret::parse(&s)
            .unwrap()
            .verify(other.verifying_key())
            .unwrap_err();
        assert!(matches!(e, SealedError::Signature(_)), "{e}");
        // Re-point the payload at another resource, keeping the signature.
        let p = parts(&s);
        let forged_payload = BASE64_URL_SAFE_NO_PAD.encode(
            json!({"version":"0.1.0","type":"vault","provider":"kbs","name":"kbs:///default/app/other"}).to_string(),
        );
        let forged = format!("{PREFIX}{}.{forged_payload}.{}", p[0], p[2]);
        let e = SealedSecret::parse(&forged)
            .unwrap()
            .verify(k.verifying_key())
            .unwrap_err();
        assert!(matches!(e, SealedError::Signature(_)), "{e}");
        // A flipped signature bit.
        let mut sig = decode("s", &p[2]).unwrap();
        sig[5] ^= 1;
        let flipped = format!(
            "{PREFIX}{}.{}.{}",
            p[0],
            p[1],
            BASE64_URL_SAFE_NO_PAD.encode(sig)
        );
        assert!(SealedSecret::parse(&flipped)
            .unwrap()
            .verify(k.verifying_key())
            .is_err());
    }

    #[test]
    fn malformed_and_unsupported_inputs_are_named() {
        let k = key();
        let h = json!({"alg": "ES256", "kid": "t"});
        let good = json!({"version":"0.1.0","type":"vault","provider":"kbs","name":"kbs:///a/b/c",
                          "provider_settings":{},"annotations":{}});
        assert!(SealedSecret::parse(&reseal(&h, &good, &k))
            .unwrap()
            .verify(k.verifying_key())
            .is_ok());
        for (text, want) in [
            ("plain".to_string(), "does not start"),
            ("sealed.a.b".to_string(), "parts"),
            ("sealed.a.b.c.d".to_string(), "parts"),
            ("sealed.***.b.c".to_string(), "base64url"),
            (format!("sealed.{}", "A".repeat(MAX_LEN)), "limit"),
        ] {
            let e = SealedSecret::parse(&text).unwrap_err();
            assert!(e.to_string().contains(want), "{text:.40}: {e}");
        }
        for (header, want) in [
            (json!({"alg": "RS256", "kid": "t"}), "ES256"),
            (json!({"alg": "none", "kid": "t"}), "ES256"),
            (json!({"alg": "ES256"}), "kid"),
            (json!({"alg": "ES256", "kid": "t", "crit": ["x"]}), "crit"),
        ] {
            let e = SealedSecret::parse(&reseal(&header, &good, &k)).unwrap_err();
            assert!(
                matches!(&e, SealedError::Header(m) if m.contains(want)),
                "{header}: {e}"
            );
        }
        let mut cases = Vec::new();
        for (field, value, want) in [
            ("version", json!("0.2.0"), "version"),
            ("type", json!("envelope"), "not supported"),
            ("type", json!("other"), "vault"),
            ("provider", json!("aliyun"), "provider"),
            ("name", json!("kbs://kbs.example/a/b/c"), "configured KBS"),
            ("name", json!("kbs:///a/b"), "repo/type/tag"),
            ("name", json!("kbs:///a/../c"), "repo/type/tag"),
            ("name", json!("https://x/a/b/c"), "kbs://"),
            ("annotations", json!("x"), "object"),
        ] {
            let mut p = good.clone();
            p[field] = value;
            cases.push((p, want));
        }
        for (payload, want) in cases {
            let e = SealedSecret::parse(&reseal(&h, &payload, &k))
                .unwrap()
                .verify(k.verifying_key())
                .unwrap_err();
            assert!(
                matches!(&e, SealedError::Payload(m) if m.contains(want)),
                "{payload}: {e}"
            );
        }
    }

    #[test]
    fn keys_from_jwk_and_pem() {
        use p256::pkcs8::EncodePublicKey as _;
        let k = key();
        let jwk = public_jwk(k.verifying_key(), "kid-1");
        assert_eq!(jwk["kid"], "kid-1");
        let back = verifying_key_from_jwk(jwk.to_string().as_bytes()).unwrap();
        assert_eq!(&back, k.verifying_key());
        let pem = k
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        assert_eq!(&verifying_key_from_text(&pem).unwrap(), k.verifying_key());
        assert_eq!(
            &verifying_key_from_text(&jwk.to_string()).unwrap(),
            k.verifying_key()
        );
        let mut private = jwk.clone();
        private["d"] = json!("AAAA");
        assert!(verifying_key_from_jwk(private.to_string().as_bytes())
            .unwrap_err()
            .to_string()
            .contains("private"));
        let mut off = jwk.clone();
        off["y"] = json!(BASE64_URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert!(verifying_key_from_jwk(off.to_string().as_bytes()).is_err());
        let mut rsa = jwk;
        rsa["kty"] = json!("RSA");
        assert!(verifying_key_from_jwk(rsa.to_string().as_bytes()).is_err());
        assert!(verifying_key_from_text("nonsense").is_err());
    }

    #[test]
    fn coco_test_key_jwk_loads() {
        // The public half of the test key in CoCo's confidential-data-hub sources (a JWK with
        // "use" and "kid" members, as their `secret keygen` writes it), minus its "d".
        let jwk = r#"{"kty":"EC","use":"sig","crv":"P-256","kid":"test-key",
            "x":"QT3_slJmispaOwnAo6hxebXGLRuiveFuRCLpS4j4S4k",
            "y":"jcDn4N4nRBQ-a7_D3qjqtb6hwOAXh_ve1wvibPSi1G0","alg":"ES256"}"#;
        let k = verifying_key_from_jwk(jwk.as_bytes()).unwrap();
        // RFC 7638 thumbprint, computed independently (Python hashlib over the canonical
        // {"crv","kty","x","y"} text).
        assert_eq!(
            thumbprint(&k),
            "7_WChKH-19cY9YrEOBTyT_w7d1ed86Tf26ov_5HE4GI"
        );
    }
}
