//! The mock TEE, for CI and development only.
//!
//! It is never chosen by detection: only `TeeSelection::Mock` (config `tee = "mock"`) makes
//! one. Its evidence uses Trustee's sample format so a Trustee KBS in sample mode accepts it:
//! `svn` and `report_data`, the only members Trustee's sample verifier reads. It also carries
//! `init_data`, the configured launch binding in standard base64, for people reading the
//! evidence: no verifier checks it (Trustee's sample verifier ignores it). On the KBS side the
//! initdata check for sample evidence is the KBS policy over the digest of the `init-data`
//! TOML the client sends in its attest request; in the guest, the agent's launch-binding
//! check compares [`MockAttester::launch_binding`] with the initdata digest before any KBS
//! contact.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{Attester, Error};

/// Trustee's sample evidence document (TEE `sample`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleEvidence {
    /// Always `"1"`: the sample TEE has no real security version.
    pub svn: String,
    /// Standard base64 of the raw, unpadded report data.
    pub report_data: String,
    /// Standard base64 of the launch binding the mock was configured with. Informational:
    /// Trustee's sample verifier does not read it.
    #[serde(default)]
    pub init_data: String,
}

/// A TEE that signs nothing and reports whatever launch binding it was given.
#[derive(Debug, Clone)]
pub struct MockAttester {
    launch_binding: Vec<u8>,
}

impl MockAttester {
    /// `launch_binding` plays the role of SNP `HOST_DATA` / TDX `MRCONFIGID`: set it to the
    /// (padded or truncated) initdata digest to emulate a host that launched the VM with
    /// that initdata, or to anything else to emulate one that did not.
    pub fn new(launch_binding: Vec<u8>) -> Self {
        MockAttester { launch_binding }
    }
}

impl Attester for MockAttester {
    fn tee(&self) -> kbs_types::Tee {
        kbs_types::Tee::Sample
    }

    fn evidence(&self, report_data: &[u8]) -> Result<String, Error> {
        // Same 64-byte bound as the hardware TEEs, but the bytes are kept as given: Trustee
        // compares sample report_data with the unpadded hash.
        if report_data.len() > 64 {
            return Err(Error::ReportDataTooLong {
                len: report_data.len(),
            });
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let evidence = SampleEvidence {
            svn: "1".to_string(),
            report_data: b64.encode(report_data),
            init_data: b64.encode(&self.launch_binding),
        };
        serde_json::to_string(&evidence).map_err(|e| Error::evidence("sample", e.to_string()))
    }

    fn launch_binding(&self) -> Result<Vec<u8>, Error> {
        Ok(self.launch_binding.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_data_is_unpadded_standard_base64() {
        let mock = MockAttester::new(vec![0xAB; 48]);
        // 48 bytes with '+' and '/' producing values, so URL-safe or padded-to-64 encodings
        // would both differ.
        let report_data: Vec<u8> = (0..48u8).map(|i| i.wrapping_mul(37) ^ 0xFB).collect();
        let json = mock.evidence(&report_data).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["svn"], "1");
        let encoded = value["report_data"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, report_data);
        assert_eq!(
            decoded.len(),
            48,
            "sample report_data must not be padded to 64"
        );
    }

    #[test]
    fn binding_round_trips_through_evidence() {
        let binding: Vec<u8> = (0..32u8).collect();
        let mock = MockAttester::new(binding.clone());
        assert_eq!(mock.launch_binding().unwrap(), binding);
        let evidence: SampleEvidence =
            serde_json::from_str(&mock.evidence(b"nonce").unwrap()).unwrap();
        let carried = base64::engine::general_purpose::STANDARD
            .decode(evidence.init_data)
            .unwrap();
        assert_eq!(carried, binding);
        assert_eq!(mock.tee(), kbs_types::Tee::Sample);
    }

    #[test]
    fn oversized_report_data_is_rejected() {
        let mock = MockAttester::new(vec![]);
        assert!(matches!(
            mock.evidence(&[0; 65]),
            Err(Error::ReportDataTooLong { len: 65 })
        ));
    }
}
