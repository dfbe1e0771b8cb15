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

use arc_swap::ArcSwap;
use async_trait::async_trait;
use ttrpc::r#async::{MethodHandler, Service, StreamHandler, TtrpcContext};
use ttrpc::{Code, Request, Response, Status};
use vigil_protos::{Endpoint, EndpointId, ENDPOINTS};

use crate::config::AllowList;

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
#[derive(Debug)]
pub struct Rules {
    /// Endpoints the allow-list lets through.
    pub allowed: EndpointSet,
}

impl Rules {
    pub fn from_allow_list(list: &AllowList) -> Rules {
        Rules {
            allowed: EndpointSet::from_allow_list(list),
        }
    }
}

/// Decides, for each request, whether its handler may run.
pub struct Gate {
    rules: ArcSwap<Rules>,
}

impl Gate {
    pub fn new(rules: Rules) -> Gate {
        Gate {
            rules: ArcSwap::from_pointee(rules),
        }
    }

    /// The gate's one decision: `Ok` lets the request through, `Err` is the status the host
    /// gets instead of the handler's answer.
    #[inline]
    pub fn check(&self, endpoint: &Endpoint, _payload: &[u8]) -> Result<(), Status> {
        let rules = self.rules.load();
        if !rules.allowed.contains(endpoint.id) {
            return Err(blocked(endpoint));
        }
        Ok(())
    }

    /// Replaces the rules as a whole.
    pub fn replace(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }
}

/// Kata's answer for an endpoint the allow-list does not name.
fn blocked(endpoint: &Endpoint) -> Status {
    ttrpc::get_status(
        Code::UNIMPLEMENTED,
        format!("{} is blocked", endpoint.request),
    )
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
