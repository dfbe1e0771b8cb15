//! The attested part of start-up: `[attestation]`, the launch binding check (step 2) and the
//! tenant's policy from the KBS (step 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use vigil_attester::{binding, Attester, DetectedTee, TeeSelection};
use vigil_kbc::envelope::{VerifiedPolicy, VerifyingKey};
use vigil_kbc::{EvidenceFn, KbcConfig, KbsClient, KbsSession};

use crate::mode::Mode;

/// Kernel parameter through which a VMM gives the mock TEE its launch binding (hex), as a
/// real VMM would program HOST_DATA or MRCONFIGID. Never read from the guest's own initdata.
pub const CMDLINE_MOCK_BINDING: &str = "agent.mock_launch_binding";

/// `[attestation] tee`, defined with the mode rule it feeds.
pub use crate::mode::TeeMode;

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
    mode: Mode,
    mock_binding_hex: Option<&str>,
    initdata_digest: &[u8],
) -> Result<Arc<dyn Attester>, String> {
    let attester = attester_for(mode, mock_binding_hex)?;
    let field = attester.launch_binding().map_err(|e| e.to_string())?;
    binding::check(initdata_digest, &field).map_err(|e| e.to_string())?;
    Ok(attester)
}

/// Step 2 of unattested operation on TEE hardware: the launch field must be all zeros.
pub fn check_no_launch_binding(tee: DetectedTee) -> Result<(), String> {
    let attester = hardware_attester(tee)?;
    let field = attester.launch_binding().map_err(|e| e.to_string())?;
    crate::mode::check_unbound_field(&field)
}

fn attester_for(mode: Mode, mock_binding_hex: Option<&str>) -> Result<Arc<dyn Attester>, String> {
    match mode {
        Mode::Hardware(tee) => hardware_attester(tee),
        Mode::Mock => {
            let hex_value = mock_binding_hex.ok_or_else(|| {
                format!("mock TEE: kernel parameter {CMDLINE_MOCK_BINDING}=HEX (the launch binding the VMM set) is missing")
            })?;
            let launch_binding = hex::decode(hex_value)
                .map_err(|e| format!("mock TEE: {CMDLINE_MOCK_BINDING} is not hex: {e}"))?;
            select(TeeSelection::Mock { launch_binding })
        }
        Mode::Unattested | Mode::UnattestedOnTee(_) => Err("no TEE in unattested mode".into()),
    }
}

fn hardware_attester(tee: DetectedTee) -> Result<Arc<dyn Attester>, String> {
    select(match tee {
        DetectedTee::Snp => TeeSelection::Snp,
        DetectedTee::Tdx => TeeSelection::Tdx,
    })
}

fn select(selection: TeeSelection) -> Result<Arc<dyn Attester>, String> {
    Ok(Arc::from(
        vigil_attester::select(selection).map_err(|e| e.to_string())?,
    ))
}

/// Why step 3 produced no policy. Only [`PolicyFetchError::Unreachable`] may lead to the
/// `policy_optional` fallback: an answer that fails verification, or a KBS that refuses,
/// never does.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFetchError {
    /// The KBS could not be reached: connection failures and timeouts (not TLS failures),
    /// HTTP 5xx/408/429, or the deadline passed.
    #[error("KBS unreachable: {0}")]
    Unreachable(String),
    /// Anything else: a refusal (401 after re-attesting, 403, 404, evidence refused), a TLS
    /// failure, a bad response, a JWE that does not decrypt, a bad signature or a version
    /// below the floor, or the configuration.
    #[error("{0}")]
    Refused(String),
}

/// The boot's KBS session for step 3 and every later user: attests as `attester` with the
/// initdata, lazily on its first request.
pub fn kbs_session(
    section: &AttestationSection,
    attester: Arc<dyn Attester>,
    initdata_toml: &str,
) -> Result<KbsSession, String> {
    let kbs = section.kbs.clone().ok_or("no [attestation.kbs]")?;
    let tee = attester.tee();
    let evidence: EvidenceFn = Arc::new(move |report_data: &[u8]| {
        attester
            .evidence(report_data)
            .map_err(|e| Box::new(e) as vigil_kbc::EvidenceError)
    });
    let client = KbsClient::new(kbs, tee, evidence)
        .map_err(|e| e.to_string())?
        .with_init_data(initdata_toml.to_string());
    Ok(KbsSession::new(client))
}

/// Step 3: fetch the tenant's signed policy through `session`, verified with the pinned
/// signer and floor. Retries only what retrying can help (unreachable, timeouts, 5xx), with
/// backoff, within the deadline.
pub async fn fetch_tenant_policy(
    section: &AttestationSection,
    session: &KbsSession,
    signer: &VerifyingKey,
    min_version: u64,
) -> Result<VerifiedPolicy, PolicyFetchError> {
    let resource = section
        .policy_resource
        .clone()
        .ok_or_else(|| PolicyFetchError::Refused("no [attestation] policy_resource".into()))?;
    let deadline = Instant::now() + Duration::from_secs(section.deadline_secs);
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result = tokio::time::timeout(
            remaining,
            session.fetch_policy(&resource, signer, min_version),
        )
        .await;
        let err = match result {
            Ok(Ok(policy)) => return Ok(policy),
            Ok(Err(e)) if e.is_retryable() => e.to_string(),
            Ok(Err(e)) => return Err(PolicyFetchError::Refused(e.to_string())),
            Err(_) => {
                return Err(PolicyFetchError::Unreachable(format!(
                    "deadline of {}s passed during attempt {attempt}",
                    section.deadline_secs
                )))
            }
        };
        let now = Instant::now();
        if now + backoff >= deadline {
            return Err(PolicyFetchError::Unreachable(format!(
                "{err} (gave up after {attempt} attempts within the {}s deadline)",
                section.deadline_secs
            )));
        }
        tracing::warn!(attempt, error = %err, retry_in_ms = backoff.as_millis() as u64, "KBS not ready, retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        attempt += 1;
    }
}
