//! The agent policy in the form the gate consults: a compiled [`PolicyEngine`] plus the
//! per-endpoint constant decisions lifted into bit sets.

use vigil_policy::{Decision, Limits, PolicyEngine};
use vigil_protos::{Endpoint, EndpointId, ENDPOINTS};

use super::endpoints::{EndpointSet, GATED_SERVICE};

/// Where a policy came from: the audit log's `policy_source` and GetMetrics'
/// `vigil_policy_source{source=...}` name the kind; logs show the detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOrigin {
    /// The tenant's signed policy, fetched from the KBS at start-up.
    Kbs,
    /// initdata's `policy.rego`, because the KBS could not be reached and the measured config
    /// sets `policy_optional = true`.
    InitdataFallback,
    /// initdata's `policy.rego` in unattested mode.
    Initdata,
    /// A local policy file (unattested mode).
    File,
    /// Installed by SetPolicy.
    SetPolicy,
}

impl PolicyOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyOrigin::Kbs => "kbs",
            PolicyOrigin::InitdataFallback => "initdata-fallback",
            PolicyOrigin::Initdata => "initdata",
            PolicyOrigin::File => "file",
            PolicyOrigin::SetPolicy => "set-policy",
        }
    }
}

/// A policy's origin and, for logs, the detail: a path, the KBS resource, why the fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    pub origin: PolicyOrigin,
    pub detail: String,
}

impl PolicySource {
    pub fn new(origin: PolicyOrigin, detail: impl Into<String>) -> PolicySource {
        PolicySource {
            origin,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
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
    /// Where this policy came from.
    pub source: PolicySource,
}

impl CompiledPolicy {
    pub fn compile(
        rego: &str,
        version: Option<u64>,
        limits: Limits,
        source: PolicySource,
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
            source,
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
