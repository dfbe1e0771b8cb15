//! The attested part of start-up: `[attestation]`, the launch binding check (step 2) and the
//! tenant's policy from the KBS (step 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use vigil_attester::{binding, Attester, TeeSelection};
use vigil_kbc::envelope::{VerifiedPolicy, VerifyingKey};
use vigil_kbc::{EvidenceFn, KbcConfig, KbsClient};

/// Kernel parameter through which a VMM gives the mock TEE its launch binding (hex), as a
/// real VMM would program HOST_DATA or MRCONFIGID. Never read from the guest's own initdata.
pub const CMDLINE_MOCK_BINDING: &str = "agent.mock_launch_binding";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeMode {
    /// Unattested, Kata-compatible: local config and policy only.
    #[default]
    None,
    /// The mock TEE (development and CI only); accepted only when named.
    Mock,
    Snp,
    Tdx,
    /// SNP or TDX, whichever the devices show; never the mock.
    Auto,
}

impl TeeMode {
    pub fn is_attested(self) -> bool {
        self != TeeMode::None
    }
}

/// `[attestation]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationSection {
    #[serde(default)]
    pub tee: TeeMode,
    /// KBS resource `repo/type/tag` holding the tenant's signed policy envelope.
    pub policy_resource: Option<String>,
    /// Fall back to initdata's `policy.rego` when the KBS policy cannot be had (staged
    /// roll-outs). Off: no KBS policy, no API.
    #[serde(default)]
    pub policy_optional: bool,
    /// Total time for attestation (step 3, retries included) before giving up.
    #[serde(default = "default_deadline_secs")]
    pub deadline_secs: u64,
    /// The KBS client: `kbs_url`, `kbs_cert` (pinned CA), `insecure_http`, timeouts.
    pub kbs: Option<KbcConfig>,
}

fn default_deadline_secs() -> u64 {
    60
}

impl AttestationSection {
    /// What attested modes require of the (measured) config.
    pub fn validate(&self) -> Result<(), String> {
        if !self.tee.is_attested() {
            return Ok(());
        }
        let kbs = self
            .kbs
            .as_ref()
            .ok_or("[attestation.kbs] is required in attested modes")?;
        kbs.validate()
            .map_err(|e| format!("[attestation.kbs]: {e}"))?;
        match &self.policy_resource {
            Some(p) => vigil_kbc::client::validate_resource_path(p)
                .map_err(|e| format!("[attestation] policy_resource: {e}"))?,
            None => {
                return Err("[attestation] policy_resource is required in attested modes".into())
            }
        }
        if self.deadline_secs == 0 {
            return Err("[attestation] deadline_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// Step 2: the TEE's launch-time field must equal the initdata digest (truncated or
/// zero-padded to the field). Any read error stops start-up.
pub fn check_launch_binding(
    mode: TeeMode,
    mock_binding_hex: Option<&str>,
    initdata_digest: &[u8],
) -> Result<Arc<dyn Attester>, String> {
    let selection = match mode {
        TeeMode::None => return Err("no TEE in unattested mode".into()),
        TeeMode::Mock => {
            let hex_value = mock_binding_hex.ok_or_else(|| {
                format!("mock TEE: kernel parameter {CMDLINE_MOCK_BINDING}=HEX (the launch binding the VMM set) is missing")
            })?;
            let launch_binding = hex::decode(hex_value)
                .map_err(|e| format!("mock TEE: {CMDLINE_MOCK_BINDING} is not hex: {e}"))?;
            TeeSelection::Mock { launch_binding }
        }
        TeeMode::Snp => TeeSelection::Snp,
        TeeMode::Tdx => TeeSelection::Tdx,
        TeeMode::Auto => TeeSelection::Auto,
    };
    let attester: Arc<dyn Attester> =
        Arc::from(vigil_attester::select(selection).map_err(|e| e.to_string())?);
    let field = attester.launch_binding().map_err(|e| e.to_string())?;
    binding::check(initdata_digest, &field).map_err(|e| e.to_string())?;
    Ok(attester)
}

/// Step 3: attest to the KBS with the initdata and fetch the tenant's signed policy, verified
/// with the pinned signer and floor. Retries only what retrying can help (unreachable,
/// timeouts, 5xx), with backoff, within the deadline.
pub async fn fetch_tenant_policy(
    section: &AttestationSection,
    attester: Arc<dyn Attester>,
    initdata_toml: &str,
    signer: &VerifyingKey,
    min_version: u64,
) -> Result<VerifiedPolicy, String> {
    let kbs = section.kbs.clone().ok_or("no [attestation.kbs]")?;
    let resource = section
        .policy_resource
        .clone()
        .ok_or("no [attestation] policy_resource")?;
    let evidence_source = attester.clone();
    let evidence: EvidenceFn = Arc::new(move |report_data: &[u8]| {
        evidence_source
            .evidence(report_data)
            .map_err(|e| Box::new(e) as vigil_kbc::EvidenceError)
    });
    let deadline = Instant::now() + Duration::from_secs(section.deadline_secs);
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        let mut client = KbsClient::new(kbs.clone(), attester.tee(), evidence.clone())
            .map_err(|e| e.to_string())?
            .with_init_data(initdata_toml.to_string());
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result = tokio::time::timeout(
            remaining,
            client.fetch_policy(&resource, signer, min_version),
        )
        .await;
        let err = match result {
            Ok(Ok(policy)) => return Ok(policy),
            Ok(Err(e)) if e.is_retryable() => e.to_string(),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "deadline of {}s passed during attempt {attempt}",
                    section.deadline_secs
                ))
            }
        };
        let now = Instant::now();
        if now + backoff >= deadline {
            return Err(format!(
                "{err} (gave up after {attempt} attempts within the {}s deadline)",
                section.deadline_secs
            ));
        }
        tracing::warn!(attempt, error = %err, retry_in_ms = backoff.as_millis() as u64, "KBS not ready, retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        attempt += 1;
    }
}
