//! Target `ttrpc_server`: a byte stream from the host into the agent's request path, as the
//! real server runs it: ttrpc frame parsing, the gate (`vigil_agent::gate::protect` around
//! the generated service map), protobuf decoding and handler dispatch. The handlers are a
//! test double that records each call, so the target stays in-process and changes nothing.
//!
//! Invariants, checked on every call that reached a handler: its endpoint is on the
//! allow-list; it is not constant-deny; if its rule is evaluated, full evaluation of the
//! request it carried allows it. On the answers: an allow-list-blocked request gets exactly
//! Kata's `UNIMPLEMENTED "<Name> is blocked"`, a constant-deny one `"<Name> is blocked by
//! policy"`.
//!
//! Input: first byte even, the rest is the raw stream; odd, a sequence of frames built from
//! `[selector][u16 length][payload]` (selector picks the endpoint, or an unknown method or
//! service, garbage between frames, a non-request frame type).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use protobuf::well_known_types::empty::Empty;
use protobuf::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use ttrpc::r#async::transport::Listener;
use ttrpc::r#async::{Server, TtrpcContext};
use vigil_protos::{agent, agent_ttrpc, csi, health, health_ttrpc, types, Endpoint};

use crate::policy::{agent_endpoints, TestGate};
use crate::Input;

/// The handler double: records which RPC ran and with what request.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<(&'static Endpoint, Vec<u8>)>>,
}

impl Recorder {
    fn record(&self, method: &str, req: &dyn protobuf::MessageDyn) {
        let endpoint = Endpoint::find(vigil_protos::AGENT_SERVICE, method)
            .expect("the double only serves the agent service's methods");
        let bytes = req.write_to_bytes_dyn().expect("a decoded request encodes");
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((endpoint, bytes));
    }

    fn take(&self) -> Vec<(&'static Endpoint, Vec<u8>)> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

macro_rules! recording_service {
    ($($method:ident $kata:literal : $req:ty => $resp:ty,)*) => {
        #[async_trait]
        impl agent_ttrpc::AgentService for Recorder {
            $(
                async fn $method(&self, _ctx: &TtrpcContext, req: $req) -> ttrpc::Result<$resp> {
                    self.record($kata, &req);
                    Ok(<$resp>::default())
                }
            )*
        }
    };
}

recording_service! {
    create_container "CreateContainer": agent::CreateContainerRequest => Empty,
    start_container "StartContainer": agent::StartContainerRequest => Empty,
    remove_container "RemoveContainer": agent::RemoveContainerRequest => Empty,
    exec_process "ExecProcess": agent::ExecProcessRequest => Empty,
    signal_process "SignalProcess": agent::SignalProcessRequest => Empty,
    wait_process "WaitProcess": agent::WaitProcessRequest => agent::WaitProcessResponse,
    update_container "UpdateContainer": agent::UpdateContainerRequest => Empty,
    update_ephemeral_mounts "UpdateEphemeralMounts": agent::UpdateEphemeralMountsRequest => Empty,
    stats_container "StatsContainer": agent::StatsContainerRequest => agent::StatsContainerResponse,
    pause_container "PauseContainer": agent::PauseContainerRequest => Empty,
    resume_container "ResumeContainer": agent::ResumeContainerRequest => Empty,
    remove_stale_virtiofs_share_mounts "RemoveStaleVirtiofsShareMounts": agent::RemoveStaleVirtiofsShareMountsRequest => Empty,
    get_diagnostic_data "GetDiagnosticData": agent::GetDiagnosticDataRequest => agent::GetDiagnosticDataResponse,
    write_stdin "WriteStdin": agent::WriteStreamRequest => agent::WriteStreamResponse,
    read_stdout "ReadStdout": agent::ReadStreamRequest => agent::ReadStreamResponse,
    read_stderr "ReadStderr": agent::ReadStreamRequest => agent::ReadStreamResponse,
    close_stdin "CloseStdin": agent::CloseStdinRequest => Empty,
    tty_win_resize "TtyWinResize": agent::TtyWinResizeRequest => Empty,
    update_interface "UpdateInterface": agent::UpdateInterfaceRequest => types::Interface,
    update_routes "UpdateRoutes": agent::UpdateRoutesRequest => agent::Routes,
    list_interfaces "ListInterfaces": agent::ListInterfacesRequest => agent::Interfaces,
    list_routes "ListRoutes": agent::ListRoutesRequest => agent::Routes,
    add_arp_neighbors "AddArpNeighbors": agent::AddARPNeighborsRequest => Empty,
    get_ip_tables "GetIpTables": agent::GetIPTablesRequest => agent::GetIPTablesResponse,
    set_ip_tables "SetIpTables": agent::SetIPTablesRequest => agent::SetIPTablesResponse,
    get_metrics "GetMetrics": agent::GetMetricsRequest => agent::Metrics,
    mem_agent_memcg_set "MemAgentMemcgSet": agent::MemAgentMemcgConfig => Empty,
    mem_agent_compact_set "MemAgentCompactSet": agent::MemAgentCompactConfig => Empty,
    create_sandbox "CreateSandbox": agent::CreateSandboxRequest => Empty,
    destroy_sandbox "DestroySandbox": agent::DestroySandboxRequest => Empty,
    online_cpu_mem "OnlineCpuMem": agent::OnlineCPUMemRequest => Empty,
    reseed_random_dev "ReseedRandomDev": agent::ReseedRandomDevRequest => Empty,
    get_guest_details "GetGuestDetails": agent::GuestDetailsRequest => agent::GuestDetailsResponse,
    mem_hotplug_by_probe "MemHotplugByProbe": agent::MemHotplugByProbeRequest => Empty,
    set_guest_date_time "SetGuestDateTime": agent::SetGuestDateTimeRequest => Empty,
    copy_file "CopyFile": agent::CopyFileRequest => Empty,
    get_oom_event "GetOomEvent": agent::GetOOMEventRequest => agent::OOMEvent,
    add_swap "AddSwap": agent::AddSwapRequest => Empty,
    add_swap_path "AddSwapPath": agent::AddSwapPathRequest => Empty,
    get_volume_stats "GetVolumeStats": agent::VolumeStatsRequest => csi::VolumeStatsResponse,
    resize_volume "ResizeVolume": agent::ResizeVolumeRequest => Empty,
    set_policy "SetPolicy": agent::SetPolicyRequest => Empty,
}

#[async_trait]
impl health_ttrpc::Health for Recorder {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        Ok(health::HealthCheckResponse::default())
    }
    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::VersionCheckResponse> {
        Ok(health::VersionCheckResponse::default())
    }
}

/// One server for the whole fuzzing process; each input is one new connection to it.
struct Harness {
    rt: tokio::runtime::Runtime,
    connections: mpsc::UnboundedSender<DuplexStream>,
    recorder: Arc<Recorder>,
    gate: TestGate,
    endpoints: Vec<&'static Endpoint>,
    _server: Server,
}

impl Harness {
    fn new() -> Harness {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let recorder = Arc::new(Recorder::default());
        let gate = TestGate::new();
        let mut services: HashMap<String, ttrpc::r#async::Service> =
            agent_ttrpc::create_agent_service(recorder.clone());
        services.extend(health_ttrpc::create_health(recorder.clone()));
        let services = vigil_agent::gate::protect(services, gate.gate.clone())
            .expect("the gate wraps every endpoint");
        let (connections, rx) = mpsc::unbounded_channel::<DuplexStream>();
        let accepted = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
        });
        let server = rt.block_on(async {
            let mut server = Server::new()
                .add_listener(Listener::new(accepted))
                .register_service(services);
            server.start().await.expect("the server starts");
            server
        });
        Harness {
            rt,
            connections,
            recorder,
            gate,
            endpoints: agent_endpoints(),
            _server: server,
        }
    }
}

thread_local! {
    /// Leaked on purpose: dropping a running server at process exit (libFuzzer ends with
    /// `exit`) would wait on its connections.
    static HARNESS: RefCell<Option<&'static Harness>> = const { RefCell::new(None) };
}

/// What a structured input asked for on one stream id: the endpoint, if it named one.
type Sent = HashMap<u32, &'static Endpoint>;

fn frame(out: &mut Vec<u8>, stream_id: u32, kind: u8, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(body);
}

fn request(service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    let mut req = ttrpc::Request::new();
    req.service = service.into();
    req.method = method.into();
    req.payload = payload.to_vec();
    req.write_to_bytes().expect("a ttrpc request encodes")
}

const MESSAGE_TYPE_REQUEST: u8 = 1;
const MESSAGE_TYPE_RESPONSE: u8 = 2;

/// The bytes to send, the endpoint of each well-formed request by stream id, and how many
/// answers to wait for (`None`: the stream holds more than well-formed requests).
fn build_stream(h: &Harness, data: &[u8]) -> (Vec<u8>, Sent, Option<usize>) {
    let mut sent = Sent::new();
    let Some((&mode, rest)) = data.split_first() else {
        return (Vec::new(), sent, None);
    };
    if mode & 1 == 0 {
        return (rest.to_vec(), sent, None);
    }
    let mut well_formed = true;
    let mut requests = 0;
    let mut input = Input::new(rest);
    let mut out = Vec::new();
    let mut stream_id = 1u32;
    while !input.is_empty() {
        let sel = input.u8();
        let payload = input.chunk();
        match sel {
            0xf0 => frame(
                &mut out,
                stream_id,
                MESSAGE_TYPE_REQUEST,
                &request(vigil_protos::AGENT_SERVICE, "NoSuchMethod", payload),
            ),
            0xf1 => frame(
                &mut out,
                stream_id,
                MESSAGE_TYPE_REQUEST,
                &request("grpc.NoSuchService", "CreateContainer", payload),
            ),
            0xf2 => {
                well_formed = false;
                out.extend_from_slice(payload)
            }
            0xf3..=0xff => {
                well_formed = false;
                frame(&mut out, stream_id, sel - 0xf0, payload)
            }
            _ => {
                let e = h.endpoints[sel as usize % h.endpoints.len()];
                frame(
                    &mut out,
                    stream_id,
                    MESSAGE_TYPE_REQUEST,
                    &request(e.service, e.method, payload),
                );
                sent.insert(stream_id, e);
            }
        }
        if sel < 0xf2 {
            requests += 1;
        }
        stream_id += 2;
    }
    (out, sent, well_formed.then_some(requests))
}

/// Parses the server's answers and checks the refusals against Kata's statuses.
fn check_answers(h: &Harness, mut answers: &[u8], sent: &Sent) {
    while answers.len() >= 10 {
        let len = u32::from_be_bytes(answers[0..4].try_into().unwrap()) as usize;
        let stream_id = u32::from_be_bytes(answers[4..8].try_into().unwrap());
        let kind = answers[8];
        let Some(body) = answers.get(10..10 + len) else {
            return; // the connection closed mid-answer
        };
        answers = &answers[10 + len..];
        assert_eq!(
            kind, MESSAGE_TYPE_RESPONSE,
            "the server sends only responses"
        );
        let Some(endpoint) = sent.get(&stream_id) else {
            continue;
        };
        let res = ttrpc::Response::parse_from_bytes(body).expect("the server's answer decodes");
        let status = res.status.as_ref();
        let code = status.map_or(ttrpc::Code::OK, |s| s.code());
        let message = status.map_or("", |s| s.message.as_str());
        if !h.gate.allowed.contains(endpoint.id) {
            assert_eq!(code, ttrpc::Code::UNIMPLEMENTED, "{}", endpoint.request);
            assert_eq!(message, format!("{} is blocked", endpoint.request));
        } else if h.gate.constant(endpoint) == Some(false) {
            assert_ne!(code, ttrpc::Code::OK, "{}", endpoint.request);
            assert_eq!(
                message,
                format!("{} is blocked by policy", endpoint.request)
            );
        }
    }
}

/// Every call that reached a handler must be one the gate may let through.
fn check_calls(h: &Harness) {
    for (endpoint, payload) in h.recorder.take() {
        assert!(
            h.gate.allowed.contains(endpoint.id),
            "{} is not on the allow-list but reached its handler",
            endpoint.request
        );
        match h.gate.constant(endpoint) {
            Some(true) => {}
            Some(false) => panic!(
                "{} is constant-deny but reached its handler",
                endpoint.request
            ),
            None => {
                let reference = h.gate.reference(endpoint, &payload);
                assert_eq!(
                    reference,
                    Some(vigil_policy::Outcome::Allowed),
                    "{} reached its handler but full evaluation does not allow it",
                    endpoint.request
                );
            }
        }
    }
}

/// Complete frames at the start of `buf`.
fn frames_in(mut buf: &[u8]) -> usize {
    let mut n = 0;
    while buf.len() >= 10 {
        let len = u32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize;
        let Some(rest) = buf.get(10 + len..) else {
            break;
        };
        buf = rest;
        n += 1;
    }
    n
}

/// Runs one stream through a new connection and returns the server's answers. With
/// `expected` answers known (only well-formed requests were sent), the connection stays open
/// until they have all arrived, as a real client's would; otherwise it is closed after the
/// stream (answers still in flight may then be dropped by the server).
fn exchange(h: &Harness, stream: Vec<u8>, expected: Option<usize>) -> Vec<u8> {
    h.rt.block_on(async {
        let (client, server_end) = tokio::io::duplex(1 << 16);
        h.connections
            .send(server_end)
            .expect("the server accepts connections");
        let (mut rd, mut wr) = tokio::io::split(client);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let write = async move {
            // The server may close early (a bad frame): a failed write is part of the game.
            let _ = wr.write_all(&stream).await;
            if expected.is_some() {
                let _ = done_rx.await;
            }
            let _ = wr.shutdown().await;
            wr
        };
        let read = async move {
            let mut answers = Vec::new();
            let mut done = Some(done_tx);
            let mut buf = [0u8; 8192];
            loop {
                if expected.is_some_and(|n| frames_in(&answers) >= n) {
                    if let Some(tx) = done.take() {
                        let _ = tx.send(());
                    }
                }
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answers.extend_from_slice(&buf[..n]),
                }
            }
            drop(done);
            answers
        };
        let both = async { futures::join!(write, read) };
        match tokio::time::timeout(Duration::from_secs(10), both).await {
            Ok((_, answers)) => answers,
            Err(_) => panic!("the server neither answered nor closed the connection in 10 s"),
        }
    })
}

pub fn ttrpc_server(data: &[u8]) {
    HARNESS.with(|cell| {
        let h = *cell
            .borrow_mut()
            .get_or_insert_with(|| Box::leak(Box::new(Harness::new())));
        let (stream, sent, expected) = build_stream(h, data);
        let answers = exchange(h, stream, expected);
        check_answers(h, &answers, &sent);
        check_calls(h);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn structured(requests: &[(&str, serde_json::Value)], h: &Harness) -> Vec<u8> {
        let mut data = vec![1u8];
        for (method, json) in requests {
            let e = Endpoint::find(vigil_protos::AGENT_SERVICE, method).unwrap();
            let sel = h.endpoints.iter().position(|a| a.id == e.id).unwrap() as u8;
            let payload = e.request_bytes_from_json(json).unwrap();
            data.push(sel);
            data.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            data.extend_from_slice(&payload);
        }
        data
    }

    /// The harness really sees what passes: allowed calls are recorded, blocked ones are not,
    /// and the answers carry Kata's statuses.
    #[test]
    fn only_what_the_gate_allows_reaches_the_double() {
        let h = Harness::new();
        let data = structured(
            &[
                (
                    "ExecProcess",
                    serde_json::json!({"container_id": "c", "process": {"Args": ["/bin/true"]}}),
                ),
                (
                    "ExecProcess",
                    serde_json::json!({"container_id": "c", "process": {"Args": ["/bin/sh"]}}),
                ),
                ("UpdateInterface", serde_json::json!({})),
                ("RemoveContainer", serde_json::json!({})),
                ("StartContainer", serde_json::json!({})),
            ],
            &h,
        );
        let (stream, sent, expected) = build_stream(&h, &data);
        assert_eq!(expected, Some(5));
        let answers = exchange(&h, stream, expected);
        check_answers(&h, &answers, &sent);
        let calls: Vec<&str> = h.recorder.take().iter().map(|(e, _)| e.method).collect();
        let mut sorted = calls.clone();
        sorted.sort();
        assert_eq!(sorted, ["ExecProcess", "StartContainer"], "{calls:?}");
        assert_eq!(frames_in(&answers), 5, "one answer per request");
    }

    /// The invariant check itself fails on a call the gate would not have let through.
    #[test]
    #[should_panic(expected = "is not on the allow-list but reached its handler")]
    fn a_blocked_call_at_the_handler_is_caught() {
        let h = Harness::new();
        h.recorder
            .record("UpdateInterface", &agent::UpdateInterfaceRequest::new());
        check_calls(&h);
    }
}
