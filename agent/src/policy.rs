//! The agent policy as the gate uses it: a compiled [`PolicyEngine`] plus the per-endpoint
//! constant decisions lifted into bit sets, and the rules for replacing it (SetPolicy).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use vigil_kbc::envelope::{self, VerifyingKey};
use vigil_policy::{Decision, Limits, PolicyEngine};
use vigil_protos::{Endpoint, EndpointId, ENDPOINTS};

use crate::gate::{EndpointSet, Gate, GATED_SERVICE};

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

/// A loaded policy in the form the gate consults.
pub struct CompiledPolicy {
    pub engine: PolicyEngine,
    /// Endpoint id -> index in the engine's endpoint list.
    index: Vec<Option<usize>>,
    /// Endpoints whose policy decision is constant, by outcome (after
    /// AllowRequestsFailingPolicy).
    pub constant_allow: EndpointSet,
    pub constant_deny: EndpointSet,
    /// The constant decisions themselves, for the audit log.
    constant: Vec<Option<Decision>>,
    /// Where this policy came from, for logs: a path, "SetPolicy", the KBS resource.
    pub source: String,
}

impl CompiledPolicy {
    pub fn compile(
        rego: &str,
        version: Option<u64>,
        limits: Limits,
        source: impl Into<String>,
    ) -> Result<CompiledPolicy, vigil_policy::LoadError> {
        let names = vigil_protos::agent_request_names();
        let mut engine = PolicyEngine::load(rego, &names, limits)?;
        engine.set_version(version);
        let mut index = vec![None; ENDPOINTS.len()];
        let mut constant = vec![None; ENDPOINTS.len()];
        let mut constant_allow = EndpointSet::NONE;
        let mut constant_deny = EndpointSet::NONE;
        for e in ENDPOINTS.iter().filter(|e| e.service == GATED_SERVICE) {
            let i = engine
                .index_of(e.request)
                .expect("every gated request type was given to the engine");
            index[e.id.0 as usize] = Some(i);
            if engine.class(i).is_constant() {
                // A constant endpoint's decision never looks at its input.
                let d = engine.decide(i, || Err::<serde_json::Value, &str>("unused"));
                if d.allowed {
                    constant_allow = constant_allow.with(e.id);
                } else {
                    constant_deny = constant_deny.with(e.id);
                }
                constant[e.id.0 as usize] = Some(d);
            }
        }
        if engine.allow_failing() {
            tracing::warn!(
                "policy sets AllowRequestsFailingPolicy: denials are logged and ALLOWED"
            );
        }
        Ok(CompiledPolicy {
            engine,
            index,
            constant_allow,
            constant_deny,
            constant,
            source: source.into(),
        })
    }

    pub fn engine_index(&self, id: EndpointId) -> Option<usize> {
        self.index.get(id.0 as usize).copied().flatten()
    }

    pub fn constant_decision(&self, id: EndpointId) -> Option<&Decision> {
        self.constant.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// The policy input of a request: its Kata JSON, or CopyFile's summary (Kata never shows
    /// the policy the file content).
    pub fn input(endpoint: &Endpoint, payload: &[u8]) -> Result<serde_json::Value, String> {
        if endpoint.request == "CopyFileRequest" {
            use protobuf::Message;
            let req = vigil_protos::agent::CopyFileRequest::parse_from_bytes(payload)
                .map_err(|e| format!("CopyFileRequest does not decode: {e}"))?;
            let is_symlink = vigil_policy::file_type(req.file_mode) == "Symlink";
            let summary = serde_json::json!({
                "path": req.path,
                "file_size": req.file_size,
                "file_mode": req.file_mode,
                "dir_mode": req.dir_mode,
                "uid": req.uid,
                "gid": req.gid,
                "offset": req.offset,
                "data": if is_symlink { serde_json::json!(req.data) } else { serde_json::Value::Null },
            });
            return vigil_policy::copy_file_input(&summary).map_err(|e| e.to_string());
        }
        endpoint
            .request_json_from_bytes(payload)
            .map_err(|e| format!("{} does not decode: {e}", endpoint.request))
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
    /// Serialises replacements so the version check and the swap are one step.
    replacing: Mutex<()>,
}

impl PolicyAdmin {
    pub fn new(section: PolicySection, signer: Option<VerifyingKey>, gate: Arc<Gate>) -> Self {
        PolicyAdmin {
            section,
            signer,
            gate,
            replacing: Mutex::new(()),
        }
    }

    /// Installs the policy carried by a SetPolicy request. The gate has already checked the
    /// request against the current policy (as Kata does). With a signer configured the text
    /// must be an envelope signed by it, with a version at or above the floor and strictly
    /// above the current policy's; otherwise raw Rego is accepted only when configured so.
    /// The new policy starts with fresh state; on any failure nothing changes.
    pub fn set_policy(&self, text: &str) -> Result<(), SetPolicyError> {
        let _guard = self.replacing.lock().unwrap_or_else(|p| p.into_inner());
        let current_version = self.gate.policy_version();
        let (rego, version) = match &self.signer {
            Some(signer) => {
                let floor = match current_version {
                    Some(v) => self.section.min_version.max(v.saturating_add(1)),
                    None => self.section.min_version,
                };
                let verified = envelope::verify(text, signer, floor)
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
        let compiled = CompiledPolicy::compile(&rego, version, self.section.limits(), "SetPolicy")
            .map_err(|e| SetPolicyError::Invalid(e.to_string()))?;
        tracing::info!(
            version = ?version,
            digest = compiled.engine.digest(),
            "SetPolicy: new policy in force"
        );
        self.gate.replace_policy(Some(Arc::new(compiled)));
        Ok(())
    }
}
