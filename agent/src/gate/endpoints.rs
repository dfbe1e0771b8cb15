//! Endpoints as the gate counts them: one bit per RPC, and the allow-list they come from.

use vigil_protos::{EndpointId, ENDPOINTS};

/// The service whose requests are gated.
pub const GATED_SERVICE: &str = vigil_protos::AGENT_SERVICE;

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

/// Which request types the host may send at all (`[endpoints] allowed`, Kata 2.3 semantics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowList {
    /// No config file, or `allowed = ["*"]`.
    All,
    /// Request message names; empty when the file has no `[endpoints]` section.
    Only(Vec<String>),
}
