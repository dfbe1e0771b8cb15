//! The endpoint table: one entry per RPC, ids dense from 0 (agent service first, then health).

use protobuf::Message;
use serde::{de::DeserializeOwned, Serialize};

/// Index of an RPC in [`ENDPOINTS`]. Small and dense so the gate can keep one bit per RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u16);

/// One RPC of the agent API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub id: EndpointId,
    /// ttrpc service name, e.g. `grpc.AgentService`.
    pub service: &'static str,
    /// ttrpc method name, e.g. `CreateContainer`.
    pub method: &'static str,
    /// Request message name, e.g. `CreateContainerRequest`: the name used by the allow-list
    /// and by agent policies. Two RPCs can share it (ReadStdout, ReadStderr).
    pub request: &'static str,
    /// Response message name, qualified when outside package `grpc` (`types.Interface`).
    pub response: &'static str,
}

/// Failure to move a message between protobuf bytes and JSON.
#[derive(Debug)]
pub enum CodecError {
    UnknownEndpoint(EndpointId),
    Protobuf(protobuf::Error),
    Json(serde_json::Error),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::UnknownEndpoint(id) => write!(f, "no endpoint with id {}", id.0),
            CodecError::Protobuf(e) => write!(f, "invalid protobuf message: {e}"),
            CodecError::Json(e) => write!(f, "invalid JSON message: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

impl Endpoint {
    /// The RPC called `method` on `service`, if the API has it.
    pub fn find(service: &str, method: &str) -> Option<&'static Endpoint> {
        ENDPOINTS
            .iter()
            .find(|e| e.method == method && e.service == service)
    }

    /// `/service/method`, the form ttrpc and rpcs.txt use.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }

    /// Decodes a request of this RPC from protobuf and renders it in the Kata JSON shape.
    pub fn request_json_from_bytes(&self, bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
        request_json_from_bytes(self.id, bytes)
    }

    /// Builds a request of this RPC from (possibly partial) Kata-shaped JSON.
    pub fn request_bytes_from_json(&self, json: &serde_json::Value) -> Result<Vec<u8>, CodecError> {
        request_bytes_from_json(self.id, json)
    }

    /// Decodes a response of this RPC from protobuf and renders it as JSON.
    pub fn response_json_from_bytes(&self, bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
        response_json_from_bytes(self.id, bytes)
    }
}

/// The service whose RPCs the host may call (and the gate guards): `grpc.AgentService`.
pub const AGENT_SERVICE: &str = "grpc.AgentService";

/// The distinct request message names of the agent service, in table order: the names the
/// allow-list and agent policies use (ReadStdout and ReadStderr share `ReadStreamRequest`).
pub fn agent_request_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for e in ENDPOINTS.iter().filter(|e| e.service == AGENT_SERVICE) {
        if !names.contains(&e.request) {
            names.push(e.request);
        }
    }
    names
}

fn json_from_bytes<M: Message + Serialize>(bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
    let msg = M::parse_from_bytes(bytes).map_err(CodecError::Protobuf)?;
    serde_json::to_value(&msg).map_err(CodecError::Json)
}

fn bytes_from_json<M: Message + DeserializeOwned>(
    json: &serde_json::Value,
) -> Result<Vec<u8>, CodecError> {
    let msg = M::deserialize(json).map_err(CodecError::Json)?;
    msg.write_to_bytes().map_err(CodecError::Protobuf)
}

fn empty_json_from_bytes(bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
    protobuf::well_known_types::empty::Empty::parse_from_bytes(bytes)
        .map_err(CodecError::Protobuf)?;
    Ok(serde_json::Value::Object(Default::default()))
}

include!(concat!(env!("OUT_DIR"), "/endpoints.rs"));
