//! The agent policy as the gate uses it: a compiled [`PolicyEngine`] plus the per-endpoint
//! constant decisions lifted into bit sets, and the rules for replacing it (SetPolicy).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use vigil_kbc::envelope::{self, VerifyingKey};
use vigil_policy::Limits;

use crate::gate::Gate;
pub use crate::gate::{CompiledPolicy, PolicyOrigin, PolicySource};

/// Kata's default policy location, used when `[policy] kata_default_fallback = true` and no
/// `file` is given.
pub const KATA_DEFAULT_POLICY: &str = "/etc/kata-opa/default-policy.rego";
/// Where the audit log goes unless `[policy] audit_log` says otherwise (`""` turns it off).
pub const DEFAULT_AUDIT_LOG: &str = "/run/vigil/audit.jsonl";

/// `[policy]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Local policy (Rego): unattested mode, or the initial policy.
    pub file: Option<PathBuf>,
    /// Fall back to Kata's default location when `file` is not set.
    #[serde(default)]
    pub kata_default_fallback: bool,
    /// Tenant public key (PEM, SPKI; P-256 for ES256 or Ed25519 for EdDSA). When set, a
    /// SetPolicy must carry a policy envelope signed by it.
    pub signer: Option<String>,
    /// Lowest policy version accepted from a signed envelope (anti-rollback floor).
    #[serde(default)]
    pub min_version: u64,
    /// Accept raw Rego in SetPolicy (Kata's behaviour). Refused when a signer is set.
    #[serde(default)]
    pub allow_unsigned_set_policy: bool,
    /// Largest accepted policy text.
    #[serde(default = "default_max_policy_bytes")]
    pub max_policy_bytes: usize,
    /// Time budget of one evaluation, in milliseconds.
    #[serde(default = "default_eval_budget_ms")]
    pub eval_budget_ms: u64,
    /// Audit log (one JSON line per decision, never request contents); `""` disables it.
    pub audit_log: Option<PathBuf>,
    /// Input log in Kata's format (may hold secrets: off unless a path is given).
    pub input_log: Option<PathBuf>,
    /// Size at which a log file is rotated.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Rotated files kept per log.
    #[serde(default = "default_log_keep")]
    pub log_keep: usize,
    /// Tell the host why the policy denied (the rule's reason). Off: the host gets only
    /// `<Name> is blocked by policy`; the reason stays in the guest log.
    #[serde(default)]
    pub host_error_details: bool,
}

fn default_max_policy_bytes() -> usize {
    Limits::default().max_policy_bytes
}
fn default_eval_budget_ms() -> u64 {
    Limits::default().eval_time_budget.as_millis() as u64
}
fn default_log_max_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_log_keep() -> usize {
    3
}

impl Default for PolicySection {
    fn default() -> Self {
        toml::from_str("").expect("empty [policy] section parses")
    }
}

impl PolicySection {
    pub fn limits(&self) -> Limits {
        Limits {
            max_policy_bytes: self.max_policy_bytes,
            eval_time_budget: Duration::from_millis(self.eval_budget_ms),
        }
    }

    /// The policy file to load at start-up, if any.
    pub fn policy_path(&self) -> Option<&Path> {
        match &self.file {
            Some(p) => Some(p),
            None if self.kata_default_fallback => Some(Path::new(KATA_DEFAULT_POLICY)),
            None => None,
        }
    }

    pub fn audit_log_path(&self) -> Option<&Path> {
        match &self.audit_log {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p),
            None => Some(Path::new(DEFAULT_AUDIT_LOG)),
        }
    }

    /// Checks that the section is coherent; called when the config loads.
    pub fn validate(&self) -> Result<Option<VerifyingKey>, String> {
        let signer = match &self.signer {
            Some(pem) => Some(
                VerifyingKey::from_public_key_pem(pem)
                    .map_err(|e| format!("[policy] signer is not a usable public key: {e}"))?,
            ),
            None => None,
        };
        if signer.is_some() && self.allow_unsigned_set_policy {
            return Err(
                "[policy] allow_unsigned_set_policy = true contradicts a configured signer".into(),
            );
        }
        if self.eval_budget_ms == 0 {
            return Err("[policy] eval_budget_ms must be at least 1".into());
        }
        Ok(signer)
    }
}

/// Why a SetPolicy was refused. The old policy and its state stay in force.
#[derive(Debug, thiserror::Error)]
pub enum SetPolicyError {
    #[error("SetPolicyRequest refused: {0}")]
    Unauthorized(String),
    #[error("SetPolicyRequest refused: new policy does not load: {0}")]
    Invalid(String),
}

/// Replaces the policy on SetPolicy, under the rules of the configuration.
pub struct PolicyAdmin {
    section: PolicySection,
    signer: Option<VerifyingKey>,
    gate: Arc<Gate>,
    /// The lowest version a signed SetPolicy may carry: `min_version`, raised past every
    /// signed version that was in force. It never drops, whatever policy is in force (a
    /// policy_optional fallback has no version, and must not reopen older ones). Behind the
    /// lock that serialises replacements, so the check and the swap are one step.
    floor: Mutex<u64>,
}

impl PolicyAdmin {
    /// Takes the floor from the configuration and the policy the gate starts with.
    pub fn new(section: PolicySection, signer: Option<VerifyingKey>, gate: Arc<Gate>) -> Self {
        let floor = next_floor(section.min_version, gate.policy_version());
        PolicyAdmin {
            section,
            signer,
            gate,
            floor: Mutex::new(floor),
        }
    }

    /// The lowest version a signed SetPolicy is accepted with now.
    pub fn floor(&self) -> u64 {
        *self.floor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs the policy carried by a SetPolicy request. The gate has already checked the
    /// request against the current policy (as Kata does). With a signer configured the text
    /// must be an envelope signed by it, with a version at or above the floor (above every
    /// signed version in force so far, and at least `min_version`); otherwise raw Rego is
    /// accepted only when configured so. The new policy starts with fresh state; on any
    /// failure nothing changes.
    pub fn set_policy(&self, text: &str) -> Result<(), SetPolicyError> {
        let mut floor = self.floor.lock().unwrap_or_else(|p| p.into_inner());
        let (rego, version) = match &self.signer {
            Some(signer) => {
                let verified = envelope::verify(text, signer, *floor)
                    .map_err(|e| SetPolicyError::Unauthorized(e.to_string()))?;
                (verified.policy, Some(verified.version))
            }
            None if self.section.allow_unsigned_set_policy => (text.to_string(), None),
            None => {
                return Err(SetPolicyError::Unauthorized(
                    "no [policy] signer is configured and allow_unsigned_set_policy is false"
                        .into(),
                ))
            }
        };
        let source = PolicySource::new(PolicyOrigin::SetPolicy, "SetPolicy");
        let compiled = CompiledPolicy::compile(&rego, version, self.section.limits(), source)
            .map_err(|e| SetPolicyError::Invalid(e.to_string()))?;
        tracing::info!(
            version = ?version,
            digest = compiled.engine.digest(),
            "SetPolicy: new policy in force"
        );
        let compiled = Arc::new(compiled);
        self.gate.replace_policy(Some(compiled.clone()));
        self.gate
            .decision_log()
            .policy_event(&compiled, "SetPolicy");
        *floor = next_floor(*floor, version);
        Ok(())
    }
}

/// The floor after a policy with `version` came into force: above it, never lower than before.
fn next_floor(floor: u64, version: Option<u64>) -> u64 {
    match version {
        Some(v) => floor.max(v.saturating_add(1)),
        None => floor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{EndpointSet, Rules};
    use vigil_kbc::envelope::{Algorithm, PolicyPayload, SigningKey};

    const REGO: &str = "package agent_policy\ndefault SetPolicyRequest := true\n";

    fn signed(key: &SigningKey, version: u64) -> String {
        envelope::sign(
            key,
            &PolicyPayload {
                version,
                policy: REGO.into(),
                issued_at: 1_700_000_000,
                id: None,
            },
        )
        .unwrap()
    }

    /// A gate whose policy is `version` (None: a policy_optional fallback, which has none).
    fn admin(min_version: u64, version: Option<u64>, key: &SigningKey) -> PolicyAdmin {
        let origin = match version {
            Some(_) => PolicyOrigin::Kbs,
            None => PolicyOrigin::InitdataFallback,
        };
        let policy = CompiledPolicy::compile(
            REGO,
            version,
            Limits::default(),
            PolicySource::new(origin, "test"),
        )
        .unwrap();
        let gate = Arc::new(Gate::new(Rules {
            allowed: EndpointSet::all(),
            policy: Some(Arc::new(policy)),
            host_error_details: false,
        }));
        let section = PolicySection {
            min_version,
            ..PolicySection::default()
        };
        PolicyAdmin::new(section, Some(key.verifying_key()), gate)
    }

    #[test]
    fn floor_after_a_fallback_is_min_version_and_never_drops() {
        let key = SigningKey::generate(Algorithm::Es256);
        let a = admin(3, None, &key);
        assert_eq!(a.floor(), 3);
        let err = a.set_policy(&signed(&key, 2)).unwrap_err().to_string();
        assert!(err.contains("version"), "{err}");
        a.set_policy(&signed(&key, 3)).unwrap();
        assert_eq!(
            a.gate.policy().unwrap().source.origin,
            PolicyOrigin::SetPolicy
        );
        assert_eq!(a.floor(), 4);
        // Not even the version now in force again.
        assert!(a.set_policy(&signed(&key, 3)).is_err());
        a.set_policy(&signed(&key, 9)).unwrap();
        assert!(a.set_policy(&signed(&key, 5)).is_err());
        assert_eq!(a.floor(), 10);
    }

    #[test]
    fn floor_with_a_kbs_policy_is_above_its_version() {
        let key = SigningKey::generate(Algorithm::Es256);
        let a = admin(3, Some(7), &key);
        assert_eq!(a.floor(), 8);
        assert!(a.set_policy(&signed(&key, 7)).is_err());
        a.set_policy(&signed(&key, 8)).unwrap();
        // A failed SetPolicy (bad Rego) leaves the floor as it was.
        let bad = envelope::sign(
            &key,
            &PolicyPayload {
                version: 20,
                policy: "package agent_policy\nthis is not rego".into(),
                issued_at: 1_700_000_000,
                id: None,
            },
        )
        .unwrap();
        assert!(a.set_policy(&bad).is_err());
        assert_eq!(a.floor(), 9);
    }
}
