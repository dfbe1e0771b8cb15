//! What the test KBS checks in an attest request besides the session:
//! evidence format per TEE, report_data binding and the init-data digest.

use kbs_types::Tee;
use serde_json::Value;

/// Claims extracted from evidence that the KBS compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The evidence's runtime report_data field.
    pub report_data: Vec<u8>,
    /// The launch-time field bound to initdata (SNP HOST_DATA, TDX MRCONFIGID). For sample
    /// evidence, the mock's `init_data` member, which nothing checks (Trustee's sample
    /// verifier ignores it).
    pub launch_binding: Vec<u8>,
}

/// Size of the hardware launch binding field for `tee`; `None` for sample evidence, which
/// has no launch field a verifier checks.
pub fn launch_binding_len(tee: Tee) -> Option<usize> {
    match tee {
        Tee::Snp => Some(32),
        Tee::Tdx => Some(48),
        _ => None,
    }
}

/// Extract claims from `evidence` for `tee`, checking its format, with the
/// attester crate's verifier side. SNP reports must carry a VCEK/VLEK (their
/// signature and chain to AMD's roots are then checked); TDX quote signatures
/// are not verified (no DCAP here), which is logged on every attestation.
pub fn claims(tee: Tee, evidence: &Value) -> Result<Claims, String> {
    use vigil_attester::verify::{claims_from_value, TeeClaims};
    let c = claims_from_value(tee, evidence).map_err(|e| e.to_string())?;
    match &c.details {
        TeeClaims::Sample { .. } => {}
        TeeClaims::Snp { signature, .. } => {
            if *signature == vigil_attester::verify::SnpSignature::NoCertificate {
                return Err(
                    "SNP evidence has no VCEK/VLEK, so its signature cannot be checked".into(),
                );
            }
        }
        TeeClaims::Tdx { .. } => {
            tracing::warn!("TDX quote signature NOT verified (test server has no DCAP verifier)");
        }
        #[allow(unreachable_patterns)]
        _ => return Err(format!("no claims check for TEE {tee}")),
    }
    Ok(Claims {
        report_data: c.report_data,
        launch_binding: c.launch_binding,
    })
}

/// Digest of an initdata TOML body per its `algorithm` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitDataDigest {
    /// `sha256`, `sha384` or `sha512`.
    pub algorithm: String,
    /// Hash of the raw body bytes.
    pub digest: Vec<u8>,
}

impl InitDataDigest {
    /// Compute from the body as delivered (no canonicalisation).
    pub fn of(body: &str) -> Result<Self, String> {
        let table: toml::Table =
            toml::from_str(body).map_err(|e| format!("init-data body is not TOML: {e}"))?;
        let algorithm = table
            .get("algorithm")
            .and_then(|v| v.as_str())
            .ok_or("init-data has no string \"algorithm\" key")?;
        // The same hashing the agent applies to the initdata it received.
        let digest = vigil_attester::initdata::HashAlgorithm::parse(algorithm)
            .map_err(|e| e.to_string())?
            .digest(body.as_bytes());
        Ok(InitDataDigest {
            algorithm: algorithm.to_string(),
            digest,
        })
    }

    /// The digest truncated or zero-padded to `len` bytes, as the launch
    /// binding field holds it.
    pub fn binding(&self, len: usize) -> Vec<u8> {
        vigil_attester::binding::expected_field(&self.digest, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256, Sha384};

    #[test]
    fn digest_per_algorithm_and_binding_sizes() {
        let body = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"a\" = \"b\"\n";
        let d = InitDataDigest::of(body).unwrap();
        assert_eq!(d.digest, Sha384::digest(body.as_bytes()).to_vec());
        assert_eq!(d.binding(32), d.digest[..32].to_vec());
        assert_eq!(d.binding(48), d.digest);
        let body = body.replace("sha384", "sha256");
        let d = InitDataDigest::of(&body).unwrap();
        let b = d.binding(48);
        assert_eq!(&b[..32], &Sha256::digest(body.as_bytes())[..]);
        assert!(b[32..].iter().all(|x| *x == 0));
        assert!(InitDataDigest::of("algorithm = \"md5\"")
            .unwrap_err()
            .contains("md5"));
        assert!(InitDataDigest::of("version = 1")
            .unwrap_err()
            .contains("algorithm"));
        assert!(InitDataDigest::of("not toml ==")
            .unwrap_err()
            .contains("TOML"));
    }

    #[test]
    fn sample_format_is_checked() {
        let ok = serde_json::json!({"svn":"1","report_data":"AAEC","init_data":"AAA="});
        let c = claims(Tee::Sample, &ok).unwrap();
        assert_eq!(c.report_data, vec![0, 1, 2]);
        assert_eq!(c.launch_binding, vec![0, 0]);
        for bad in [
            serde_json::json!("x"),
            serde_json::json!({"report_data":"AAEC"}),
            serde_json::json!({"svn":"1"}),
            serde_json::json!({"svn":"1","report_data":"***"}),
            serde_json::json!({"svn":1,"report_data":"AAEC"}),
        ] {
            assert!(claims(Tee::Sample, &bad).is_err(), "{bad}");
        }
        assert!(claims(Tee::Snp, &ok).is_err());
    }
}
