//! The gate: every agent API request passes here before its handler runs.
//!
//! [`protect`] wraps each handler of the generated ttrpc service map so that [`Gate::check`]
//! sees the request (endpoint and raw payload) before it is decoded. The rules are compiled
//! ahead of time into a bit per endpoint ([`EndpointSet`]), so a request that is simply
//! allowed or blocked costs one bit test; the rules are swapped atomically as a whole (a
//! reader never sees half of an update) and read without a lock.
//!
//! `grpc.Health` is not gated: the runtime polls it to see whether the agent is alive, and it
//! reveals nothing but the agent's version.

use std::collections::HashMap;
use std::sync::Arc;

use std::borrow::Cow;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use ttrpc::r#async::{MethodHandler, Service, StreamHandler, TtrpcContext};
use ttrpc::{Code, Request, Response, Status};
use vigil_protos::{Endpoint, EndpointId, ENDPOINTS};

use vigil_policy::Outcome;

use crate::audit::DecisionLog;
use crate::config::AllowList;
use crate::policy::CompiledPolicy;

/// The service whose requests are gated.
pub const GATED_SERVICE: &str = "grpc.AgentService";

const _: () = assert!(
    ENDPOINTS.len() <= 64,
    "EndpointSet holds one bit per endpoint in a u64"
);

/// A set of endpoints, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet(u64);

impl EndpointSet {
    pub const NONE: EndpointSet = EndpointSet(0);

    pub fn all() -> EndpointSet {
        ENDPOINTS
            .iter()
            .fold(EndpointSet::NONE, |s, e| s.with(e.id))
    }

    /// Every endpoint whose request message is one of `names` (ReadStreamRequest covers both
    /// ReadStdout and ReadStderr, as in Kata).
    pub fn by_request_names<S: AsRef<str>>(names: &[S]) -> EndpointSet {
        ENDPOINTS
            .iter()
            .filter(|e| names.iter().any(|n| n.as_ref() == e.request))
            .fold(EndpointSet::NONE, |s, e| s.with(e.id))
    }

    pub fn from_allow_list(list: &AllowList) -> EndpointSet {
        match list {
            AllowList::All => EndpointSet::all(),
            AllowList::Only(names) => EndpointSet::by_request_names(names),
        }
    }

    #[must_use]
    pub fn with(self, id: EndpointId) -> EndpointSet {
        EndpointSet(self.0 | (1 << id.0))
    }

    #[inline]
    pub fn contains(self, id: EndpointId) -> bool {
        self.0 & (1 << id.0) != 0
    }
}

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

/// What the gate decided about one request, and why.
pub struct Verdict {
    pub outcome: Outcome,
    /// What decided: "allow-list", "no-policy", or the policy's decision class.
    pub by: &'static str,
    pub reason: Cow<'static, str>,
    /// Status for the host when the request does not pass.
    pub status: Option<Status>,
    /// The policy that decided, for the audit record.
    pub policy: Option<Arc<CompiledPolicy>>,
}

impl Verdict {
    fn allowed(by: &'static str) -> Verdict {
        Verdict {
            outcome: Outcome::Allowed,
            by,
            reason: Cow::Borrowed(""),
            status: None,
            policy: None,
        }
    }
}

/// Decides, for each request, whether its handler may run, and records each decision.
pub struct Gate {
    rules: ArcSwap<Rules>,
    log: DecisionLog,
}

impl Gate {
    pub fn new(rules: Rules) -> Gate {
        Gate::with_log(rules, DecisionLog::counters_only())
    }

    pub fn with_log(rules: Rules, log: DecisionLog) -> Gate {
        Gate {
            rules: ArcSwap::from_pointee(rules),
            log,
        }
    }

    /// The gate's entry point: decides and records. `Ok` lets the request through; `Err` is
    /// the status the host gets instead of the handler's answer.
    #[inline]
    pub fn check(&self, endpoint: &'static Endpoint, payload: &[u8]) -> Result<(), Status> {
        let verdict = self.decide(endpoint, payload);
        let status = verdict.status.clone();
        self.log.record(endpoint, verdict);
        match status {
            None => Ok(()),
            Some(st) => Err(st),
        }
    }

    /// The decision alone. Allow-list and constant policy decisions are bit tests; only
    /// endpoints whose policy rule depends on the request decode it and reach the engine.
    pub fn decide(&self, endpoint: &Endpoint, payload: &[u8]) -> Verdict {
        let rules = self.rules.load();
        let id = endpoint.id;
        if !rules.allowed.contains(id) {
            return Verdict {
                outcome: Outcome::Denied,
                by: "allow-list",
                reason: Cow::Borrowed("not in [endpoints] allowed"),
                status: Some(blocked(endpoint)),
                policy: None,
            };
        }
        let Some(policy) = rules.policy.as_ref() else {
            return Verdict::allowed("no-policy");
        };
        if policy.constant_allow.contains(id) {
            let mut v = Verdict::allowed("constant-allow");
            v.policy = Some(policy.clone());
            return v;
        }
        let decision = match (policy.constant_deny.contains(id), policy.engine_index(id)) {
            (true, _) => policy
                .constant_decision(id)
                .cloned()
                .expect("constant-deny endpoints keep their decision"),
            (false, Some(index)) => policy
                .engine
                .decide(index, || CompiledPolicy::input(endpoint, payload)),
            // Not a gated endpoint: the service wrapper never asks. Fail closed regardless.
            (false, None) => return denied_without_policy(endpoint),
        };
        for line in &decision.prints {
            tracing::info!(endpoint = endpoint.request, "policy print: {line}");
        }
        let status = match decision.outcome {
            Outcome::Allowed => None,
            Outcome::Denied => Some(policy_status(
                Code::PERMISSION_DENIED,
                endpoint,
                &decision.reason,
                rules.host_error_details,
            )),
            Outcome::Error => Some(policy_status(
                Code::INTERNAL,
                endpoint,
                &decision.reason,
                rules.host_error_details,
            )),
        };
        if decision.outcome != Outcome::Allowed {
            tracing::warn!(endpoint = endpoint.request, reason = %decision.reason, "denied by policy");
        }
        Verdict {
            outcome: decision.outcome,
            by: decision.class.as_str(),
            reason: decision.reason,
            status,
            policy: Some(policy.clone()),
        }
    }

    /// Replaces the rules as a whole.
    pub fn replace(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    /// Replaces the policy, keeping the allow-list: one atomic swap, so a request sees either
    /// the old policy with its state or the new one with fresh state.
    pub fn replace_policy(&self, policy: Option<Arc<CompiledPolicy>>) {
        self.rules.rcu(|old| Rules {
            allowed: old.allowed,
            policy: policy.clone(),
            host_error_details: old.host_error_details,
        });
    }

    /// Version of the policy in force (from its signed envelope), if any.
    pub fn policy_version(&self) -> Option<u64> {
        self.rules
            .load()
            .policy
            .as_ref()
            .and_then(|p| p.engine.version())
    }

    /// The policy in force, if any.
    pub fn policy(&self) -> Option<Arc<CompiledPolicy>> {
        self.rules.load().policy.clone()
    }

    pub fn decision_log(&self) -> &DecisionLog {
        &self.log
    }
}

/// Kata's answer for an endpoint the allow-list does not name.
fn blocked(endpoint: &Endpoint) -> Status {
    ttrpc::get_status(
        Code::UNIMPLEMENTED,
        format!("{} is blocked", endpoint.request),
    )
}

fn policy_status(code: Code, endpoint: &Endpoint, reason: &str, details: bool) -> Status {
    let msg = if details {
        format!("{} is blocked by policy: {reason}", endpoint.request)
    } else {
        format!("{} is blocked by policy", endpoint.request)
    };
    ttrpc::get_status(code, msg)
}

fn denied_without_policy(endpoint: &Endpoint) -> Verdict {
    Verdict {
        outcome: Outcome::Error,
        by: "policy",
        reason: Cow::Borrowed("endpoint unknown to the policy"),
        status: Some(policy_status(Code::INTERNAL, endpoint, "", false)),
        policy: None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    #[error("service map has {service}/{method}, which the endpoint table does not know")]
    UnknownMethod { service: String, method: String },
    #[error("endpoint {0} has no handler in the service map")]
    MissingHandler(String),
}

/// Wraps every handler of the gated service so that [`Gate::check`] runs first. Fails if the
/// service map and the endpoint table disagree in either direction, so an RPC can never be
/// served without passing the gate.
pub fn protect(
    mut services: HashMap<String, Service>,
    gate: Arc<Gate>,
) -> Result<HashMap<String, Service>, ProtectError> {
    if let Some(service) = services.get_mut(GATED_SERVICE) {
        let methods = std::mem::take(&mut service.methods);
        for (method, inner) in methods {
            let endpoint = lookup(&method)?;
            let gated = GatedMethod {
                endpoint,
                gate: gate.clone(),
                inner,
            };
            service.methods.insert(method, Box::new(gated));
        }
        let streams = std::mem::take(&mut service.streams);
        for (method, inner) in streams {
            let endpoint = lookup(&method)?;
            let gated = GatedStream {
                endpoint,
                gate: gate.clone(),
                inner,
            };
            service.streams.insert(method, Arc::new(gated));
        }
    }
    for endpoint in ENDPOINTS.iter() {
        let served = services.get(endpoint.service).is_some_and(|s| {
            s.methods.contains_key(endpoint.method) || s.streams.contains_key(endpoint.method)
        });
        if !served {
            return Err(ProtectError::MissingHandler(endpoint.path()));
        }
    }
    Ok(services)
}

fn lookup(method: &str) -> Result<&'static Endpoint, ProtectError> {
    Endpoint::find(GATED_SERVICE, method).ok_or_else(|| ProtectError::UnknownMethod {
        service: GATED_SERVICE.into(),
        method: method.into(),
    })
}

struct GatedMethod {
    endpoint: &'static Endpoint,
    gate: Arc<Gate>,
    inner: Box<dyn MethodHandler + Send + Sync>,
}

#[async_trait]
impl MethodHandler for GatedMethod {
    async fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<Response> {
        match self.gate.check(self.endpoint, &req.payload) {
            Ok(()) => self.inner.handler(ctx, req).await,
            // A denial is a normal response carrying a status; an Err here would reach the
            // host as UNKNOWN.
            Err(status) => {
                let mut res = Response::new();
                res.set_status(status);
                Ok(res)
            }
        }
    }
}

struct GatedStream {
    endpoint: &'static Endpoint,
    gate: Arc<Gate>,
    inner: Arc<dyn StreamHandler + Send + Sync>,
}

#[async_trait]
impl StreamHandler for GatedStream {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        stream: ttrpc::r#async::StreamInner,
    ) -> ttrpc::Result<Option<Response>> {
        // A stream's messages arrive after the call opens, so only the endpoint is known here.
        match self.gate.check(self.endpoint, &[]) {
            Ok(()) => self.inner.handler(ctx, stream).await,
            Err(status) => {
                let mut res = Response::new();
                res.set_status(status);
                Ok(Some(res))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(method: &str) -> &'static Endpoint {
        Endpoint::find(GATED_SERVICE, method).unwrap()
    }

    #[test]
    fn endpoint_set_follows_request_names() {
        let set = EndpointSet::by_request_names(&["ReadStreamRequest", "GuestDetailsRequest"]);
        assert!(set.contains(ep("ReadStdout").id));
        assert!(set.contains(ep("ReadStderr").id));
        assert!(set.contains(ep("GetGuestDetails").id));
        assert!(!set.contains(ep("CreateContainer").id));
        assert!(!set.contains(ep("WriteStdin").id));
        assert_eq!(
            EndpointSet::all(),
            ENDPOINTS
                .iter()
                .fold(EndpointSet::NONE, |s, e| s.with(e.id))
        );
    }

    #[test]
    fn blocked_status_is_kata_s() {
        let gate = Gate::new(Rules::from_allow_list(&AllowList::Only(vec![
            "GuestDetailsRequest".into(),
        ])));
        assert!(gate.check(ep("GetGuestDetails"), &[]).is_ok());
        let st = gate.check(ep("CreateContainer"), &[]).unwrap_err();
        assert_eq!(st.code(), Code::UNIMPLEMENTED);
        assert_eq!(st.message(), "CreateContainerRequest is blocked");
        gate.replace(Rules::from_allow_list(&AllowList::All));
        assert!(gate.check(ep("CreateContainer"), &[]).is_ok());
    }
}
