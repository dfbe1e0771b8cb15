//! The vigil agent API: Kata-compatible `grpc.AgentService` and `grpc.Health`.
//!
//! Everything here is generated at build time from `proto/` (see `build.rs`):
//! - protobuf messages (modules [`agent`], [`health`], [`oci`], [`types`], [`csi`]) that also
//!   serialise to and from the Kata JSON shape ([`kata_json`] explains it);
//! - async ttrpc services and clients ([`agent_ttrpc`], [`health_ttrpc`]);
//! - [`ENDPOINTS`], every RPC with a small integer [`EndpointId`], and per-endpoint codecs
//!   between protobuf bytes and JSON, used by the gate (policy input), the CLI and tests.

#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/modules.rs"));

mod endpoint;
mod kata_json;

pub use endpoint::{
    agent_request_names, CodecError, Endpoint, EndpointId, AGENT_SERVICE, ENDPOINTS,
};
