//! The KBS `Response`: a flattened-JSON JWE (RFC 7516) with key management
//! `ECDH-ES+A256KW` (RFC 7518 4.6, Concat KDF with SHA-256) and content
//! encryption `A256GCM`. The additional authenticated data is the ASCII of
//! the `protected` member exactly as received, so it is kept verbatim rather
//! than re-serialised from a parsed header.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::prelude::{Engine as _, BASE64_URL_SAFE_NO_PAD};
use p256::elliptic_curve::sec1::{FromEncodedPoint as _, ToEncodedPoint as _};
use p256::{EncodedPoint, PublicKey, SecretKey};
use rand_core::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Key management algorithm accepted and produced.
pub const ALG: &str = "ECDH-ES+A256KW";
/// Content encryption algorithm accepted and produced.
pub const ENC: &str = "A256GCM";

/// Why a JWE response could not be opened. Every variant means "do not use
/// this response": nothing is returned on a partial success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JweError(String);

fn err(msg: impl Into<String>) -> JweError {
    JweError(msg.into())
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Flattened {
    protected: String,
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize, Serialize)]
struct EphemeralKey {
    kty: String,
    crv: String,
    x: String,
    y: String,
}

/// A parsed but not yet decrypted JWE; exposed for fuzzing the parser.
pub struct ParsedJwe {
    protected_b64: String,
    epk: PublicKey,
    apu: Vec<u8>,
    apv: Vec<u8>,
    encrypted_key: Vec<u8>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

fn b64(field: &str, v: &str) -> Result<Vec<u8>, JweError> {
    BASE64_URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|e| err(format!("JWE {field} is not base64url without padding: {e}")))
}

/// Parse and validate the structure and header of a flattened JWE.
pub fn parse(body: &[u8]) -> Result<ParsedJwe, JweError> {
    let f: Flattened = serde_json::from_slice(body)
        .map_err(|e| err(format!("response is not a flattened JWE JSON object: {e}")))?;
    let header_bytes = b64("protected", &f.protected)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header_bytes)
        .map_err(|e| err(format!("JWE protected header is not a JSON object: {e}")))?;
    let text = |name: &str| -> Result<&str, JweError> {
        header
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| err(format!("JWE protected header has no string {name:?}")))
    };
    let alg = text("alg")?;
    if alg != ALG {
        return Err(err(format!("JWE alg {alg:?} is not {ALG}")));
    }
    let enc = text("enc")?;
    if enc != ENC {
        return Err(err(format!("JWE enc {enc:?} is not {ENC}")));
    }
    // Parameters that change how the plaintext must be processed; we
    // implement none of them, so their presence means we cannot decrypt
    // correctly and must refuse.
    for name in ["crit", "zip", "p2s", "p2c"] {
        if header.contains_key(name) {
            return Err(err(format!(
                "JWE header parameter {name:?} is not supported"
            )));
        }
    }
    let epk_value = header
        .get("epk")
        .ok_or_else(|| err("JWE protected header has no \"epk\""))?;
    let epk: EphemeralKey = serde_json::from_value(epk_value.clone())
        .map_err(|e| err(format!("JWE epk is malformed: {e}")))?;
    if epk.kty != "EC" || epk.crv != "P-256" {
        return Err(err(format!(
            "JWE epk is {}/{}, expected EC/P-256",
            epk.kty, epk.crv
        )));
    }
    let coord = |name: &str, v: &str| -> Result<[u8; 32], JweError> {
        b64(name, v)?
            .try_into()
            .map_err(|_| err(format!("JWE epk {name} is not 32 bytes")))
    };
    let (x, y) = (coord("epk.x", &epk.x)?, coord("epk.y", &epk.y)?);
    let point = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    let epk: PublicKey = Option::from(PublicKey::from_encoded_point(&point))
        .ok_or_else(|| err("JWE epk is not a point on P-256"))?;
    let party = |name: &str| -> Result<Vec<u8>, JweError> {
        match header.get(name) {
            None => Ok(Vec::new()),
            Some(v) => b64(
                name,
                v.as_str()
                    .ok_or_else(|| err(format!("JWE {name} is not a string")))?,
            ),
        }
    };
    let (apu, apv) = (party("apu")?, party("apv")?);
    let encrypted_key = b64("encrypted_key", &f.encrypted_key)?;
    if encrypted_key.len() != 40 {
        return Err(err(format!(
            "JWE encrypted_key is {} bytes, expected 40 (A256KW of a 256-bit key)",
            encrypted_key.len()
        )));
    }
    let iv = b64("iv", &f.iv)?;
    if iv.len() != 12 {
        return Err(err(format!("JWE iv is {} bytes, expected 12", iv.len())));
    }
    let tag = b64("tag", &f.tag)?;
    if tag.len() != 16 {
        return Err(err(format!("JWE tag is {} bytes, expected 16", tag.len())));
    }
    let ciphertext = b64("ciphertext", &f.ciphertext)?;
    Ok(ParsedJwe {
        protected_b64: f.protected,
        epk,
        apu,
        apv,
        encrypted_key,
        iv,
        ciphertext,
        tag,
    })
}

/// RFC 7518 4.6.2 Concat KDF (NIST SP 800-56A single-step, SHA-256).
pub fn concat_kdf(z: &[u8], alg_id: &str, apu: &[u8], apv: &[u8], key_len: usize) -> Vec<u8> {
    let mut other = Vec::new();
    for part in [alg_id.as_bytes(), apu, apv] {
        other.extend_from_slice(&(part.len() as u32).to_be_bytes());
        other.extend_from_slice(part);
    }
    other.extend_from_slice(&((key_len * 8) as u32).to_be_bytes());
    let mut out = Vec::with_capacity(key_len + 32);
    let mut counter: u32 = 1;
    while out.len() < key_len {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        h.update(&other);
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(key_len);
    out
}

fn derive_kek(
    secret: &SecretKey,
    public: &PublicKey,
    apu: &[u8],
    apv: &[u8],
) -> Zeroizing<Vec<u8>> {
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine());
    Zeroizing::new(concat_kdf(
        &shared.raw_secret_bytes()[..],
        ALG,
        apu,
        apv,
        32,
    ))
}

impl ParsedJwe {
    /// Unwrap the content key with `recipient` and decrypt; fails on any
    /// tampering of header, key, iv, ciphertext or tag.
    pub fn decrypt(&self, recipient: &SecretKey) -> Result<Vec<u8>, JweError> {
        let kek = derive_kek(recipient, &self.epk, &self.apu, &self.apv);
        let kek: [u8; 32] = kek.as_slice().try_into().expect("32-byte KEK");
        let cek = Zeroizing::new(
            aes_kw::KekAes256::new(&kek.into())
                .unwrap_vec(&self.encrypted_key)
                .map_err(|_| {
                    err("JWE key unwrap failed (encrypted to another key, or encrypted_key/epk tampered)")
                })?,
        );
        let cipher =
            Aes256Gcm::new_from_slice(&cek).map_err(|_| err("JWE content key is not 256 bits"))?;
        let mut msg = self.ciphertext.clone();
        msg.extend_from_slice(&self.tag);
        cipher
            .decrypt(
                &Nonce::from(<[u8; 12]>::try_from(self.iv.as_slice()).expect("12-byte iv")),
                Payload {
                    msg: &msg,
                    aad: self.protected_b64.as_bytes(),
                },
            )
            .map_err(|_| {
                err("JWE authentication failed (ciphertext, tag, iv or protected header tampered)")
            })
    }
}

/// Parse and decrypt a KBS response body for `recipient`.
pub fn decrypt(body: &[u8], recipient: &SecretKey) -> Result<Vec<u8>, JweError> {
    parse(body)?.decrypt(recipient)
}

/// Encrypt `plaintext` to `recipient` as a flattened JWE (the KBS side; used
/// by the test server). Returns the JSON text.
pub fn encrypt(plaintext: &[u8], recipient: &PublicKey) -> Result<String, JweError> {
    let ephemeral = SecretKey::random(&mut rand_core::OsRng);
    let epk = ephemeral.public_key().to_encoded_point(false);
    let (Some(x), Some(y)) = (epk.x(), epk.y()) else {
        return Err(err("ephemeral key has no affine coordinates"));
    };
    let header = serde_json::json!({
        "alg": ALG,
        "enc": ENC,
        "epk": EphemeralKey {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: BASE64_URL_SAFE_NO_PAD.encode(x),
            y: BASE64_URL_SAFE_NO_PAD.encode(y),
        },
    });
    let protected = BASE64_URL_SAFE_NO_PAD.encode(header.to_string());
    let kek = derive_kek(&ephemeral, recipient, &[], &[]);
    let kek: [u8; 32] = kek.as_slice().try_into().expect("32-byte KEK");
    let mut cek = Zeroizing::new([0u8; 32]);
    rand_core::OsRng.fill_bytes(cek.as_mut());
    let encrypted_key = aes_kw::KekAes256::new(&kek.into())
        .wrap_vec(cek.as_ref())
        .map_err(|e| err(format!("key wrap failed: {e}")))?;
    let mut iv = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut iv);
    let cipher = Aes256Gcm::new_from_slice(cek.as_ref()).expect("32-byte key");
    let mut sealed = cipher
        .encrypt(
            &Nonce::from(iv),
            Payload {
                msg: plaintext,
                aad: protected.as_bytes(),
            },
        )
        .map_err(|_| err("AES-GCM encryption failed"))?;
    let tag = sealed.split_off(sealed.len() - 16);
    let out = Flattened {
        protected,
        encrypted_key: BASE64_URL_SAFE_NO_PAD.encode(encrypted_key),
        iv: BASE64_URL_SAFE_NO_PAD.encode(iv),
        ciphertext: BASE64_URL_SAFE_NO_PAD.encode(sealed),
        tag: BASE64_URL_SAFE_NO_PAD.encode(tag),
    };
    serde_json::to_string(&out).map_err(|e| err(format!("JWE serialisation failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn concat_kdf_rfc7518_appendix_c() {
        // RFC 7518 Appendix C: ECDH-ES direct with A128GCM, apu "Alice", apv "Bob".
        let d = |s: &str| BASE64_URL_SAFE_NO_PAD.decode(s).unwrap();
        let bob_d = d("VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw");
        let alice_x = d("gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0");
        let alice_y = d("SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps");
        let bob = SecretKey::from_slice(&bob_d).unwrap();
        let point = EncodedPoint::from_affine_coordinates(
            alice_x.as_slice().into(),
            alice_y.as_slice().into(),
            false,
        );
        let alice = PublicKey::from_encoded_point(&point).unwrap();
        let z = p256::ecdh::diffie_hellman(bob.to_nonzero_scalar(), alice.as_affine());
        let key = concat_kdf(&z.raw_secret_bytes()[..], "A128GCM", b"Alice", b"Bob", 16);
        assert_eq!(BASE64_URL_SAFE_NO_PAD.encode(key), "VqqN6vgjbSBcIijNcacQGg");
    }

    #[test]
    fn decrypts_an_independent_implementations_jwe() {
        // ECDH-ES+A256KW / A256GCM token from a public JOSE interop test
        // suite (also used by Perl's Crypt::JWT), re-laid as flattened JSON.
        let compact = "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyIsImVuYyI6IkEyNTZHQ00iLCJlcGsiOnsia3R5IjoiRUMiLCJ4IjoiQU5UZy1LOFlBVXVPazBtUW1aTERQVWlPcVZFUFBrLVBmNmtSdG42Y0IycyIsInkiOiJsSmk3UExFRGU2WndxSjQ2alpyLUZtUHp5c3dGa3BkSVU3WlUzNHQ4RURzIiwiY3J2IjoiUC0yNTYifX0.Iqp3w3xo12wCqyNV_8wNk3m2tHKpBmv66XARscHeLtZS-2FslAbfDQ.UClH3759Eeo3V8xi.Y4UQpFk-MF5Xkec035WVmMI7O_eXw5V2gF3Ov4CnnV2cac6pul598NytO_rFI-hff4dOLwz2jgD_H6nQ_fL70STi0Wrsar2s7F8TMvolcaOhOfIbzX4O0vTdrNENiM9ug7044M-lvsOX8rK3Q3usfxSfOa4g9I_7r6b6SRMbjGqz3mtp8slMZhPZraBAxsxU97qfutBNA8ohCPGHasu7INHQnE_Cf0bZtE8mSpijq4AK3FGp91ekpoowH4627l7fBnupVg.hdEFZ6RBabaq7Xzb1SOaCg";
        let p: Vec<&str> = compact.split('.').collect();
        let flattened = serde_json::json!({
            "protected": p[0], "encrypted_key": p[1], "iv": p[2], "ciphertext": p[3], "tag": p[4],
        });
        let d: [u8; 32] = [
            42, 148, 231, 48, 225, 196, 166, 201, 23, 190, 229, 199, 20, 39, 226, 70, 209, 148, 29,
            70, 125, 14, 174, 66, 9, 198, 80, 251, 95, 107, 98, 206,
        ];
        let key = SecretKey::from_slice(&d).unwrap();
        let plain = decrypt(flattened.to_string().as_bytes(), &key).unwrap();
        assert_eq!(
            String::from_utf8(plain).unwrap(),
            r#"{"exp":1392553211,"sub":"alice","nbf":1392552611,"aud":["https:\/\/app-one.com","https:\/\/app-two.com"],"iss":"https:\/\/openid.net","jti":"586dd129-a29f-49c8-9de7-454af1155e27","iat":1392552611}"#
        );
    }

    fn fresh() -> (SecretKey, String) {
        let k = SecretKey::random(&mut rand_core::OsRng);
        let jwe = encrypt(b"top secret", &k.public_key()).unwrap();
        (k, jwe)
    }

    fn mutate(jwe: &str, field: &str, f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v: Value = serde_json::from_str(jwe).unwrap();
        let mut raw = BASE64_URL_SAFE_NO_PAD
            .decode(v[field].as_str().unwrap())
            .unwrap();
        f(&mut raw);
        v[field] = Value::String(BASE64_URL_SAFE_NO_PAD.encode(raw));
        v.to_string()
    }

    #[test]
    fn round_trip() {
        let (k, jwe) = fresh();
        assert_eq!(decrypt(jwe.as_bytes(), &k).unwrap(), b"top secret");
        let v: Value = serde_json::from_str(&jwe).unwrap();
        let hdr: Value = serde_json::from_slice(
            &BASE64_URL_SAFE_NO_PAD
                .decode(v["protected"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(hdr["alg"], ALG);
        assert_eq!(hdr["enc"], ENC);
        assert_eq!(hdr["epk"]["crv"], "P-256");
    }

    #[test]
    fn tampering_is_detected() {
        let (k, jwe) = fresh();
        for field in ["ciphertext", "tag", "iv", "encrypted_key"] {
            let bad = mutate(&jwe, field, |b| b[0] ^= 1);
            let e = decrypt(bad.as_bytes(), &k).unwrap_err();
            assert!(e.0.contains("failed"), "{field}: {e}");
        }
        // Re-encoding the header with different (still valid) JSON changes the AAD.
        let bad = mutate(&jwe, "protected", |b| {
            let mut h: Value = serde_json::from_slice(b).unwrap();
            h["kid"] = Value::String("x".into());
            *b = serde_json::to_vec(&h).unwrap();
        });
        assert!(decrypt(bad.as_bytes(), &k)
            .unwrap_err()
            .0
            .contains("authentication failed"));
        let bad = mutate(&jwe, "protected", |b| {
            let mut h: Value = serde_json::from_slice(b).unwrap();
            h["alg"] = Value::String("dir".into());
            *b = serde_json::to_vec(&h).unwrap();
        });
        assert!(decrypt(bad.as_bytes(), &k).unwrap_err().0.contains("alg"));
    }

    #[test]
    fn other_recipient_cannot_decrypt() {
        let (_, jwe) = fresh();
        let other = SecretKey::random(&mut rand_core::OsRng);
        assert!(decrypt(jwe.as_bytes(), &other)
            .unwrap_err()
            .0
            .contains("unwrap failed"));
    }

    #[test]
    fn structural_errors_are_named() {
        let k = SecretKey::random(&mut rand_core::OsRng);
        assert!(decrypt(b"not json", &k)
            .unwrap_err()
            .0
            .contains("flattened JWE"));
        let (_, jwe) = fresh();
        let mut v: Value = serde_json::from_str(&jwe).unwrap();
        v["aad"] = Value::String("x".into());
        assert!(decrypt(v.to_string().as_bytes(), &k)
            .unwrap_err()
            .0
            .contains("aad"));
        let short_tag = mutate(&jwe, "tag", |b| b.truncate(8));
        assert!(decrypt(short_tag.as_bytes(), &k)
            .unwrap_err()
            .0
            .contains("tag"));
    }
}
