//! Verifier side: read an evidence document and return what a KBS checks.
//!
//! Used by the KBS test server and by users' own checks. It extracts the runtime
//! `report_data` and the launch binding (SNP `HOST_DATA`, TDX `MRCONFIGID`; for sample
//! evidence the mock's informational `init_data`, which Trustee's sample verifier ignores and
//! a KBS must not rely on); comparing them with the expected nonce hash and initdata digest is
//! the caller's job ([`crate::binding::check`] for the latter).
//!
//! Hardware signatures: an SNP report whose document carries a VCEK/VLEK is checked against
//! it, and that certificate against AMD's built-in roots; a failure is an error. Without a
//! certificate the claims say so ([`SnpSignature::NoCertificate`]) and the caller must fetch
//! the VCEK itself or refuse. TDX quote signatures (DCAP) are not verified here.

use base64::Engine as _;
use serde_json::Value;

use crate::mock::SampleEvidence;
use crate::Error;

/// What a KBS checks, taken from one evidence document.
#[derive(Debug, Clone)]
pub struct EvidenceClaims {
    /// The runtime report data: 64 bytes for SNP and TDX (zero-padded), raw for sample.
    pub report_data: Vec<u8>,
    /// The launch-time binding field: SNP `HOST_DATA` (32), TDX `MRCONFIGID` (48), sample
    /// `init_data` (as configured, empty if absent; unsigned and ignored by Trustee, so not a
    /// binding a KBS can rely on).
    pub launch_binding: Vec<u8>,
    /// TEE-specific details.
    pub details: TeeClaims,
}

impl EvidenceClaims {
    /// Checks the runtime binding: `expected` (e.g. the 48-byte SHA-384 of the KBS runtime
    /// data) must equal the report data exactly for sample evidence, and zero-padded to 64
    /// bytes for SNP and TDX, as the attesters put it there.
    pub fn check_report_data(&self, expected: &[u8]) -> Result<(), Error> {
        let wanted = match self.details {
            TeeClaims::Sample { .. } => expected.to_vec(),
            #[allow(unreachable_patterns)]
            _ => crate::binding::expected_field(expected, 64),
        };
        if expected.len() > 64 || wanted != self.report_data {
            return Err(Error::ReportMismatch {
                what: "evidence report_data",
                expected: hex::encode(&wanted),
                found: hex::encode(&self.report_data),
            });
        }
        Ok(())
    }

    /// Checks the launch binding against an initdata digest ([`crate::binding::check`]).
    pub fn check_launch_binding(&self, initdata_digest: &[u8]) -> Result<(), Error> {
        crate::binding::check(initdata_digest, &self.launch_binding)
    }
}

/// TEE-specific claims.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TeeClaims {
    /// Trustee's sample TEE (our mock): nothing is signed.
    Sample { svn: String },
    /// SEV-SNP: the parsed report and what was established about its signature.
    #[cfg(feature = "snp")]
    Snp {
        report: Box<crate::snp::SnpReport>,
        signature: SnpSignature,
    },
    /// TDX: the parsed quote (signature not verified) and the CCEL event log if present.
    #[cfg(feature = "tdx")]
    Tdx {
        quote: Box<crate::tdx::TdxQuote>,
        cc_eventlog: Option<Vec<u8>>,
    },
}

/// How far an SNP report's signature was checked.
#[cfg(feature = "snp")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnpSignature {
    /// Signed by the VCEK/VLEK in the document, which chains to AMD's roots for this line
    /// and whose chip ID and TCB extensions match the report.
    Verified(crate::snp::ProductLine),
    /// The document has no VCEK/VLEK: nothing was checked.
    NoCertificate,
}

/// Parses `evidence_json` of TEE `tee` and returns its claims.
pub fn claims(tee: kbs_types::Tee, evidence_json: &str) -> Result<EvidenceClaims, Error> {
    let value: Value = serde_json::from_str(evidence_json)
        .map_err(|e| Error::evidence(tee_name(&tee), format!("not JSON: {e}")))?;
    claims_from_value(tee, &value)
}

/// As [`claims`], for evidence already parsed as JSON (e.g. a KBS request's
/// `primary_evidence`).
pub fn claims_from_value(tee: kbs_types::Tee, evidence: &Value) -> Result<EvidenceClaims, Error> {
    match tee {
        kbs_types::Tee::Sample => sample_claims(evidence),
        #[cfg(feature = "snp")]
        kbs_types::Tee::Snp => snp_claims(evidence),
        #[cfg(not(feature = "snp"))]
        kbs_types::Tee::Snp => Err(Error::NotCompiled("SEV-SNP")),
        #[cfg(feature = "tdx")]
        kbs_types::Tee::Tdx => tdx_claims(evidence),
        #[cfg(not(feature = "tdx"))]
        kbs_types::Tee::Tdx => Err(Error::NotCompiled("TDX")),
        other => Err(Error::UnsupportedTee(format!("{other:?}"))),
    }
}

fn tee_name(tee: &kbs_types::Tee) -> &'static str {
    match tee {
        kbs_types::Tee::Sample => "sample",
        kbs_types::Tee::Snp => "snp",
        kbs_types::Tee::Tdx => "tdx",
        _ => "unsupported",
    }
}

fn decode_b64(tee: &'static str, field: &str, text: &str) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| Error::evidence(tee, format!("{field} is not standard base64: {e}")))
}

fn sample_claims(evidence: &Value) -> Result<EvidenceClaims, Error> {
    let doc: SampleEvidence = serde_json::from_value(evidence.clone())
        .map_err(|e| Error::evidence("sample", e.to_string()))?;
    Ok(EvidenceClaims {
        report_data: decode_b64("sample", "report_data", &doc.report_data)?,
        launch_binding: decode_b64("sample", "init_data", &doc.init_data)?,
        details: TeeClaims::Sample { svn: doc.svn },
    })
}

#[cfg(feature = "snp")]
fn snp_claims(evidence: &Value) -> Result<EvidenceClaims, Error> {
    use crate::snp::{
        check_vek_matches_report, parse_report, verify_signature, verify_vek_chain, SnpEvidence,
    };

    let doc: SnpEvidence = serde_json::from_value(evidence.clone())
        .map_err(|e| Error::evidence("snp", e.to_string()))?;
    let raw = doc.raw_report()?;
    let report = parse_report(&raw)?;
    let signature = match doc.endorsement_key_cert() {
        Some(vek) => {
            verify_signature(&raw, vek)?;
            let line = verify_vek_chain(vek)?;
            check_vek_matches_report(vek, &report, line)?;
            SnpSignature::Verified(line)
        }
        None => SnpSignature::NoCertificate,
    };
    Ok(EvidenceClaims {
        report_data: report.report_data.to_vec(),
        launch_binding: report.host_data.to_vec(),
        details: TeeClaims::Snp {
            report: Box::new(report),
            signature,
        },
    })
}

#[cfg(feature = "tdx")]
fn tdx_claims(evidence: &Value) -> Result<EvidenceClaims, Error> {
    use crate::tdx::{parse_quote, TdxEvidence};

    let doc: TdxEvidence = serde_json::from_value(evidence.clone())
        .map_err(|e| Error::evidence("tdx", e.to_string()))?;
    let quote = parse_quote(&decode_b64("tdx", "quote", &doc.quote)?)?;
    let cc_eventlog = doc
        .cc_eventlog
        .as_deref()
        .map(|log| decode_b64("tdx", "cc_eventlog", log))
        .transpose()?;
    Ok(EvidenceClaims {
        report_data: quote.td.report_data.to_vec(),
        launch_binding: quote.td.mr_config_id.to_vec(),
        details: TeeClaims::Tdx {
            quote: Box::new(quote),
            cc_eventlog,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockAttester;
    use crate::Attester;
    use kbs_types::Tee;

    #[test]
    fn mock_evidence_claims_round_trip() {
        let binding = vec![9u8; 32];
        let mock = MockAttester::new(binding.clone());
        let report_data: Vec<u8> = (0..48).collect();
        let claims = claims(Tee::Sample, &mock.evidence(&report_data).unwrap()).unwrap();
        assert_eq!(claims.report_data, report_data);
        assert_eq!(claims.launch_binding, binding);
        assert!(matches!(claims.details, TeeClaims::Sample { ref svn } if svn == "1"));
    }

    #[test]
    fn report_data_and_binding_checks_follow_each_tee_rule() {
        let hash = [0x5Au8; 48];
        let digest = [0x11u8; 32];
        let mock = MockAttester::new(digest.to_vec());
        let sample = claims(Tee::Sample, &mock.evidence(&hash).unwrap()).unwrap();
        sample.check_report_data(&hash).unwrap();
        sample.check_launch_binding(&digest).unwrap();
        assert!(sample.check_report_data(&hash[..47]).is_err());
        let err = sample.check_launch_binding(&[0x22; 32]).unwrap_err();
        assert!(matches!(err, Error::BindingMismatch { .. }), "{err}");

        #[cfg(feature = "tdx")]
        {
            // A quote whose report data is the hash zero-padded to 64 bytes.
            let mut quote = include_bytes!("../../../shared/vectors/tdx/tdx_quote_4.dat").to_vec();
            quote[48 + 520..48 + 584].copy_from_slice(&crate::binding::expected_field(&hash, 64));
            let b64 = base64::engine::general_purpose::STANDARD;
            let json = serde_json::json!({"cc_eventlog": null, "quote": b64.encode(&quote)});
            let tdx = claims_from_value(Tee::Tdx, &json).unwrap();
            tdx.check_report_data(&hash).unwrap();
            assert!(tdx.check_report_data(&[0x5A; 64]).is_err());
            assert!(tdx.check_report_data(&[0; 65]).is_err());
        }
    }

    #[test]
    fn plain_trustee_sample_evidence_without_init_data_is_accepted() {
        // What guest-components' sample attester sends: no init_data field.
        let json = r#"{"svn":"1","report_data":"AAEC"}"#;
        let claims = claims(Tee::Sample, json).unwrap();
        assert_eq!(claims.report_data, [0, 1, 2]);
        assert!(claims.launch_binding.is_empty());
        // And an empty binding never passes a binding check.
        assert!(crate::binding::check(&[1; 32], &claims.launch_binding).is_err());
    }

    #[test]
    fn malformed_sample_evidence_is_an_error() {
        for bad in [
            "not json",
            r#"{"report_data":"AAEC"}"#,
            r#"{"svn":"1","report_data":"***"}"#,
            r#"{"svn":"1","report_data":"AAEC","init_data":"%%"}"#,
        ] {
            let err = claims(Tee::Sample, bad).unwrap_err();
            assert!(err.to_string().contains("sample"), "{bad}: {err}");
        }
    }

    #[cfg(feature = "snp")]
    #[test]
    fn snp_vector_evidence_claims() {
        let json = include_str!("../../../shared/vectors/snp/evidence.json");
        let value: Value = serde_json::from_str(json).unwrap();
        let report_data: Vec<u8> = value["attestation_report"]["report_data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        let claims = claims(Tee::Snp, json).unwrap();
        assert_eq!(claims.report_data, report_data);
        assert_eq!(claims.launch_binding.len(), 32);
        match claims.details {
            TeeClaims::Snp { signature, .. } => assert!(
                signature == SnpSignature::Verified(crate::snp::ProductLine::Genoa),
                "{signature:?}"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[cfg(feature = "snp")]
    #[test]
    fn snp_evidence_with_tampered_report_is_rejected() {
        let json = include_str!("../../../shared/vectors/snp/evidence.json");
        let mut value: Value = serde_json::from_str(json).unwrap();
        value["attestation_report"]["host_data"][0] = 1.into();
        let err = claims_from_value(Tee::Snp, &value).unwrap_err();
        assert!(matches!(err, Error::Verification { .. }), "{err}");
    }

    #[cfg(feature = "snp")]
    #[test]
    fn snp_evidence_without_certificates_says_so() {
        let json = include_str!("../../../shared/vectors/snp/evidence.json");
        let mut value: Value = serde_json::from_str(json).unwrap();
        value["cert_chain"] = Value::Null;
        let claims = claims_from_value(Tee::Snp, &value).unwrap();
        assert!(matches!(
            claims.details,
            TeeClaims::Snp {
                signature: SnpSignature::NoCertificate,
                ..
            }
        ));
    }

    #[cfg(feature = "tdx")]
    #[test]
    fn tdx_evidence_claims() {
        let quote = include_bytes!("../../../shared/vectors/tdx/tdx_quote_4.dat");
        let b64 = base64::engine::general_purpose::STANDARD;
        let json =
            serde_json::json!({"cc_eventlog": b64.encode(b"log"), "quote": b64.encode(quote)});
        let claims = claims(Tee::Tdx, &json.to_string()).unwrap();
        assert_eq!(claims.report_data, quote[48 + 520..48 + 584]);
        assert_eq!(claims.launch_binding, quote[48 + 184..48 + 232]);
        match claims.details {
            TeeClaims::Tdx { cc_eventlog, .. } => {
                assert_eq!(cc_eventlog.as_deref(), Some(&b"log"[..]))
            }
            other => panic!("unexpected {other:?}"),
        }
        let null_log = serde_json::json!({"cc_eventlog": null, "quote": b64.encode(quote)});
        assert!(claims_from_value(Tee::Tdx, &null_log).is_ok());
        let bad = serde_json::json!({"cc_eventlog": null, "quote": b64.encode(&quote[..200])});
        assert!(claims_from_value(Tee::Tdx, &bad).is_err());
    }

    #[test]
    fn other_tees_are_unsupported() {
        assert!(matches!(
            claims(Tee::Sgx, "{}"),
            Err(Error::UnsupportedTee(_))
        ));
    }
}
