//! Client side of the agent API: connect over any transport the agent can be reached by, and
//! call any RPC with a JSON request (Kata JSON shape; missing fields take defaults).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ttrpc::r#async::Client;
use vigil_protos::{Endpoint, ENDPOINTS};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("address {0:?}: expected unix:///PATH, vsock://CID:PORT or hvsock://PATH:PORT")]
    BadAddress(String),
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("unknown RPC {0:?} (see `vigilctl list`)")]
    UnknownRpc(String),
    #[error("request for {rpc}: {reason}")]
    BadRequest { rpc: String, reason: String },
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(ttrpc::Status),
    #[error("call failed: {0}")]
    Transport(String),
    #[error("response of {rpc}: {reason}")]
    BadResponse { rpc: String, reason: String },
}

/// The ttrpc code's name as it appears in gRPC docs (`UNIMPLEMENTED`, `PERMISSION_DENIED`).
pub fn code_name(code: ttrpc::Code) -> String {
    format!("{code:?}")
}

/// Connects to `addr`:
/// - `unix:///path/to/socket`
/// - `vsock://CID:PORT`
/// - `hvsock://PATH:PORT`: hybrid vsock, a unix socket where the VMM (Firecracker, Cloud
///   Hypervisor, vhost-device-vsock) forwards to guest vsock PORT after `CONNECT PORT\n`.
pub async fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
    let connect_err = |reason: String| ClientError::Connect {
        addr: addr.into(),
        reason,
    };
    let fut = async {
        if let Some(rest) = addr.strip_prefix("hvsock://") {
            let (path, port) = rest
                .rsplit_once(':')
                .and_then(|(p, port)| port.parse::<u32>().ok().map(|port| (p, port)))
                .ok_or_else(|| ClientError::BadAddress(addr.into()))?;
            let stream = hybrid_vsock_connect(path, port)
                .await
                .map_err(connect_err)?;
            return Ok(Client::new(stream.into()));
        }
        if !(addr.starts_with("unix://") || addr.starts_with("vsock://")) {
            return Err(ClientError::BadAddress(addr.into()));
        }
        Client::connect(addr)
            .await
            .map_err(|e| connect_err(e.to_string()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| connect_err(format!("no connection within {timeout:?}")))?
}

/// The hybrid vsock handshake: `CONNECT <port>\n`, answered by `OK <host port>\n`.
async fn hybrid_vsock_connect(path: &str, port: u32) -> Result<tokio::net::UnixStream, String> {
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    // Read byte by byte up to the newline: anything after it already belongs to ttrpc.
    let mut line = Vec::new();
    loop {
        let b = stream
            .read_u8()
            .await
            .map_err(|e| format!("reading the CONNECT answer: {e}"))?;
        if b == b'\n' {
            break;
        }
        if line.len() >= 128 {
            return Err("CONNECT answer too long".into());
        }
        line.push(b);
    }
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK") {
        return Err(format!("hybrid vsock refused port {port}: {line:?}"));
    }
    Ok(stream)
}

/// Finds an RPC by method name (`CreateContainer`), path (`/grpc.Health/Check`) or
/// `service/method`.
pub fn find_rpc(name: &str) -> Result<&'static Endpoint, ClientError> {
    let trimmed = name.trim_start_matches('/');
    let found = match trimmed.split_once('/') {
        Some((service, method)) => Endpoint::find(service, method),
        None => ENDPOINTS.iter().find(|e| e.method == trimmed),
    };
    found.ok_or_else(|| ClientError::UnknownRpc(name.into()))
}

/// Calls `rpc` with a JSON request and returns the JSON response.
pub async fn call_json(
    client: &Client,
    rpc: &Endpoint,
    request: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let payload = rpc
        .request_bytes_from_json(request)
        .map_err(|e| ClientError::BadRequest {
            rpc: rpc.method.into(),
            reason: e.to_string(),
        })?;
    let bytes = call_raw(client, rpc, payload, timeout).await?;
    rpc.response_json_from_bytes(&bytes)
        .map_err(|e| ClientError::BadResponse {
            rpc: rpc.method.into(),
            reason: e.to_string(),
        })
}

/// Calls `rpc` with an encoded request and returns the encoded response.
pub async fn call_raw(
    client: &Client,
    rpc: &Endpoint,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let req = ttrpc::Request {
        service: rpc.service.into(),
        method: rpc.method.into(),
        timeout_nano: timeout.as_nanos().min(i64::MAX as u128) as i64,
        payload,
        ..Default::default()
    };
    match client.request(req).await {
        Ok(resp) => Ok(resp.payload),
        Err(ttrpc::Error::RpcStatus(status)) => Err(ClientError::Status(status)),
        Err(e) => Err(ClientError::Transport(e.to_string())),
    }
}
