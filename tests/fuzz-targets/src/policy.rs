//! The gate the targets run: an allow-list that blocks some endpoints, and a policy with
//! constant-allow, constant-deny and evaluated endpoints.

use std::sync::Arc;

use vigil_agent::config::AllowList;
use vigil_agent::gate::{Gate, Rules};
use vigil_agent::policy::{CompiledPolicy, PolicyOrigin, PolicySource};
use vigil_policy::{Limits, Outcome};
use vigil_protos::{Endpoint, AGENT_SERVICE};

pub(crate) const POLICY: &str = include_str!("policy.rego");

/// Request types the allow-list leaves out: a policy rule for them (SetPolicy has one) must
/// never be reached.
pub(crate) const BLOCKED: &[&str] = &[
    "UpdateInterfaceRequest",
    "SetPolicyRequest",
    "ReadStreamRequest",
    "AddSwapRequest",
    "SetGuestDateTimeRequest",
    "ReseedRandomDevRequest",
];

pub(crate) struct TestGate {
    pub gate: Arc<Gate>,
    pub policy: Arc<CompiledPolicy>,
    pub allowed: vigil_agent::gate::EndpointSet,
}

impl TestGate {
    pub(crate) fn new() -> TestGate {
        let names: Vec<String> = vigil_protos::agent_request_names()
            .into_iter()
            .filter(|n| !BLOCKED.contains(n))
            .map(String::from)
            .collect();
        let policy = Arc::new(
            CompiledPolicy::compile(
                POLICY,
                Some(1),
                Limits::default(),
                PolicySource::new(PolicyOrigin::File, "fuzz policy"),
            )
            .expect("the fuzz policy compiles"),
        );
        let mut rules = Rules::from_allow_list(&AllowList::Only(names));
        rules.policy = Some(policy.clone());
        let allowed = rules.allowed;
        TestGate {
            gate: Arc::new(Gate::new(rules)),
            policy,
            allowed,
        }
    }

    /// What full evaluation (Kata's way: the policy as written, queried on one engine, no
    /// precompiled decision) says about a request with these protobuf bytes, or `None` when
    /// the request does not decode (no policy input exists for it).
    pub(crate) fn reference(&self, endpoint: &Endpoint, payload: &[u8]) -> Option<Outcome> {
        if !self.allowed.contains(endpoint.id) {
            return Some(Outcome::Denied);
        }
        let index = self.policy.engine_index(endpoint.id)?;
        let input = CompiledPolicy::input(endpoint, payload).ok()?;
        Some(self.policy.engine.decide_evaluated(index, input).outcome)
    }

    /// Whether the precompiled tables say this endpoint is decided without its request.
    pub(crate) fn constant(&self, endpoint: &Endpoint) -> Option<bool> {
        if self.policy.constant_allow.contains(endpoint.id) {
            Some(true)
        } else if self.policy.constant_deny.contains(endpoint.id) {
            Some(false)
        } else {
            None
        }
    }
}

/// The agent service's endpoints (the gated ones), for selecting one by a fuzz byte.
pub(crate) fn agent_endpoints() -> Vec<&'static Endpoint> {
    vigil_protos::ENDPOINTS
        .iter()
        .filter(|e| e.service == AGENT_SERVICE)
        .collect()
}
