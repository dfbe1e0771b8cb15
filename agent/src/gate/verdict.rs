//! The rules in force and what they decide about one request.

use std::borrow::Cow;
use std::sync::Arc;

use vigil_policy::Outcome;
use vigil_protos::Endpoint;

use super::compiled::CompiledPolicy;
use super::endpoints::{AllowList, EndpointSet};

/// The compiled rules in force at one moment.
pub struct Rules {
    /// Endpoints the allow-list lets through.
    pub allowed: EndpointSet,
    /// The agent policy; `None` means the allow-list alone decides (Kata without policy).
    pub policy: Option<Arc<CompiledPolicy>>,
    /// Give the host the policy's reason for a denial (otherwise it stays in the guest log).
    pub host_error_details: bool,
}

impl Rules {
    pub fn from_allow_list(list: &AllowList) -> Rules {
        Rules {
            allowed: EndpointSet::from_allow_list(list),
            policy: None,
            host_error_details: false,
        }
    }
}

/// Who decided a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    AllowList,
    /// No policy is configured: the allow-list alone decides.
    NoPolicy,
    /// The policy's precompiled decision for the endpoint.
    PolicyConstant,
    /// The policy engine, on this request.
    PolicyEvaluated,
}

impl DecidedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::AllowList => "allow-list",
            DecidedBy::NoPolicy => "no-policy",
            DecidedBy::PolicyConstant => "constant",
            DecidedBy::PolicyEvaluated => "evaluated",
        }
    }
}

/// What the gate decided about one request. Building it allocates nothing unless the policy
/// engine ran: a constant decision's reason stays in the compiled policy.
#[derive(Debug)]
pub struct Verdict {
    pub outcome: Outcome,
    pub by: DecidedBy,
    /// The engine's reason, for evaluated decisions only.
    pub reason: Option<Cow<'static, str>>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.outcome == Outcome::Allowed
    }
}

/// The reason behind a verdict: the engine's, or the constant decision's.
pub(crate) fn verdict_reason<'a>(
    policy: Option<&'a CompiledPolicy>,
    endpoint: &Endpoint,
    v: &'a Verdict,
) -> &'a str {
    match (&v.reason, v.by) {
        (Some(r), _) => r,
        (None, DecidedBy::AllowList) => "not in [endpoints] allowed",
        (None, DecidedBy::PolicyConstant) => policy
            .and_then(|p| p.constant_decision(endpoint.id))
            .map_or("", |d| &d.reason),
        (None, _) => "",
    }
}
