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
//!
//! The gate is the bottom of the agent: it and its parts (`endpoints`, `compiled` policy,
//! `verdict`, `audit` log) use nothing of the agent outside this module, so the config, the
//! policy administration and the handlers build on it and never the other way round
//! (`tests/layers.rs` checks it).

use std::collections::HashMap;
use std::sync::Arc;

use std::borrow::Cow;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use ttrpc::r#async::{MethodHandler, Service, StreamHandler, TtrpcContext};
use ttrpc::{Code, Request, Response, Status};
use vigil_protos::{Endpoint, ENDPOINTS};

use vigil_policy::Outcome;

mod audit;
mod compiled;
mod endpoints;
mod verdict;

pub use audit::{DecisionLog, WorkloadCall, WorkloadCounters, WorkloadEndpoint};
pub use compiled::{CompiledPolicy, PolicyOrigin, PolicySource};
pub use endpoints::{AllowList, EndpointSet, GATED_SERVICE};
use verdict::verdict_reason;
pub use verdict::{DecidedBy, Rules, Verdict};

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
        let rules = self.rules.load();
        if self.log.logs_input() && rules.policy.is_some() && rules.allowed.contains(endpoint.id) {
            self.log_input(endpoint, payload);
        }
        let verdict = decide(&rules, endpoint, payload);
        let status = (!verdict.allowed()).then(|| denial_status(&rules, endpoint, &verdict));
        self.log.record(endpoint, &verdict, &rules);
        match status {
            None => Ok(()),
            Some(st) => Err(st),
        }
    }

    #[cold]
    fn log_input(&self, endpoint: &Endpoint, payload: &[u8]) {
        if vigil_policy::INPUT_LOG_SKIPPED.contains(&endpoint.request) {
            return;
        }
        if let Ok(input) = CompiledPolicy::input(endpoint, payload) {
            self.log.log_input(endpoint, &input);
        }
    }

    /// The gate for a streaming RPC. Its messages arrive after the call opens, so only the
    /// endpoint is known: a policy rule that depends on the request cannot be evaluated, and
    /// the call is refused rather than judged on an empty request. (The Kata API has no
    /// streaming RPC today; this keeps a future one from slipping through.)
    pub fn check_stream(&self, endpoint: &'static Endpoint) -> Result<(), Status> {
        {
            let rules = self.rules.load();
            if let Some(policy) = rules.policy.as_ref() {
                let id = endpoint.id;
                let constant =
                    policy.constant_allow.contains(id) || policy.constant_deny.contains(id);
                if rules.allowed.contains(id) && !constant {
                    // Counted and audited like any other refusal.
                    let verdict = Verdict {
                        outcome: Outcome::Error,
                        by: DecidedBy::PolicyEvaluated,
                        reason: Some(Cow::Borrowed(
                            "streaming call: the rule reads the request, which a stream does not carry when it opens",
                        )),
                    };
                    self.log.record(endpoint, &verdict, &rules);
                    return Err(ttrpc::get_status(
                        Code::INTERNAL,
                        format!("{} is blocked by policy", endpoint.request),
                    ));
                }
            }
        }
        self.check(endpoint, &[])
    }

    /// The decision alone, without recording it (benchmarks, `policy eval`).
    pub fn decide(&self, endpoint: &Endpoint, payload: &[u8]) -> Verdict {
        decide(&self.rules.load(), endpoint, payload)
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

/// Allow-list and constant policy decisions are bit tests; only endpoints whose policy rule
/// depends on the request decode it and reach the engine.
#[inline]
fn decide(rules: &Rules, endpoint: &Endpoint, payload: &[u8]) -> Verdict {
    let id = endpoint.id;
    let constant = |outcome| Verdict {
        outcome,
        by: DecidedBy::PolicyConstant,
        reason: None,
    };
    if !rules.allowed.contains(id) {
        return Verdict {
            outcome: Outcome::Denied,
            by: DecidedBy::AllowList,
            reason: None,
        };
    }
    let Some(policy) = rules.policy.as_ref() else {
        return Verdict {
            outcome: Outcome::Allowed,
            by: DecidedBy::NoPolicy,
            reason: None,
        };
    };
    if policy.constant_allow.contains(id) {
        return constant(Outcome::Allowed);
    }
    if policy.constant_deny.contains(id) {
        let outcome = policy
            .constant_decision(id)
            .map_or(Outcome::Error, |d| d.outcome);
        return constant(outcome);
    }
    let Some(index) = policy.engine_index(id) else {
        // Not a gated endpoint: the service wrapper never asks. Fail closed regardless.
        return Verdict {
            outcome: Outcome::Error,
            by: DecidedBy::PolicyEvaluated,
            reason: Some(Cow::Borrowed("endpoint unknown to the policy")),
        };
    };
    let decision = policy
        .engine
        .decide(index, || CompiledPolicy::input(endpoint, payload));
    for line in &decision.prints {
        tracing::info!(endpoint = endpoint.request, "policy print: {line}");
    }
    Verdict {
        outcome: decision.outcome,
        by: DecidedBy::PolicyEvaluated,
        reason: Some(decision.reason),
    }
}

/// The status the host gets for a request that does not pass: Kata's messages.
fn denial_status(rules: &Rules, endpoint: &Endpoint, v: &Verdict) -> Status {
    if v.by == DecidedBy::AllowList {
        return ttrpc::get_status(
            Code::UNIMPLEMENTED,
            format!("{} is blocked", endpoint.request),
        );
    }
    let reason = verdict_reason(rules.policy.as_deref(), endpoint, v);
    tracing::warn!(endpoint = endpoint.request, reason, "denied by policy");
    let code = match v.outcome {
        Outcome::Error => Code::INTERNAL,
        _ => Code::PERMISSION_DENIED,
    };
    let msg = if rules.host_error_details {
        format!("{} is blocked by policy: {reason}", endpoint.request)
    } else {
        format!("{} is blocked by policy", endpoint.request)
    };
    ttrpc::get_status(code, msg)
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
        match self.gate.check_stream(self.endpoint) {
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

    fn test_source() -> PolicySource {
        PolicySource::new(PolicyOrigin::File, "test")
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
    fn streams_are_never_judged_on_an_empty_request() {
        let rego = "package agent_policy\ndefault GuestDetailsRequest := true\nCreateContainerRequest if { input.container_id == \"\" }\n";
        let policy =
            CompiledPolicy::compile(rego, None, Default::default(), test_source()).unwrap();
        let gate = Gate::new(Rules {
            allowed: EndpointSet::all(),
            policy: Some(Arc::new(policy)),
            host_error_details: false,
        });
        // On an empty unary request this rule would allow; a stream is refused instead.
        assert!(gate.check(ep("CreateContainer"), &[]).is_ok());
        assert_eq!(gate.log.counts(ep("CreateContainer")), (1, 0, 0));
        let st = gate.check_stream(ep("CreateContainer")).unwrap_err();
        assert_eq!(st.code(), Code::INTERNAL);
        // The refusal is counted (as an error: the rule could not be evaluated).
        assert_eq!(gate.log.counts(ep("CreateContainer")), (1, 0, 1));
        // Constant decisions need no request and apply as usual.
        assert!(gate.check_stream(ep("GetGuestDetails")).is_ok());
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
