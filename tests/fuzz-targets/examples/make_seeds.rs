//! Writes the seed inputs each target starts from into `fuzz/corpus/<target>/` (then
//! minimised with `cargo fuzz cmin`; see docs/FUZZING.md):
//! `cargo run -p vigil-fuzz-targets --example make_seeds`.

use std::path::{Path, PathBuf};

use serde_json::json;
use vigil_protos::{Endpoint, AGENT_SERVICE, ENDPOINTS};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn by_request(request: &str) -> &'static Endpoint {
    ENDPOINTS.iter().find(|e| e.request == request).unwrap()
}

/// Requests worth starting from: each endpoint's empty request, the genpolicy-like test
/// requests, and the ones the fuzz policy's evaluated rules allow.
fn requests() -> Vec<(String, &'static Endpoint, Vec<u8>)> {
    let mut out = Vec::new();
    for e in ENDPOINTS.iter() {
        out.push((
            e.method.to_string(),
            e,
            e.request_bytes_from_json(&json!({})).unwrap(),
        ));
    }
    let dir = root().join("policy/testdata/genpolicy-like/requests");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let request = match stem
            .split('_')
            .take(2)
            .collect::<Vec<_>>()
            .join("_")
            .as_str()
        {
            "copy_file" => "CopyFileRequest",
            "create_container" => "CreateContainerRequest",
            "exec_process" => "ExecProcessRequest",
            "read_stream" => "ReadStreamRequest",
            "start_container" => "StartContainerRequest",
            other => panic!("no request type for {other}"),
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let e = by_request(request);
        out.push((stem, e, e.request_bytes_from_json(&value).unwrap()));
    }
    let allowed = [
        (
            "exec_true",
            "ExecProcessRequest",
            json!({"container_id": "c1", "process": {"Args": ["/bin/true"]}}),
        ),
        (
            "signal_term",
            "SignalProcessRequest",
            json!({"container_id": "c1", "signal": 15}),
        ),
        (
            "copy_ok",
            "CopyFileRequest",
            json!({"path": "/run/kata-containers/shared/containers/c1-hosts", "file_mode": 0o100644, "file_size": 3, "data": [1, 2, 3]}),
        ),
        (
            "create_pause",
            "CreateContainerRequest",
            json!({"container_id": "c1", "OCI": {"Process": {"Args": ["/pause"]}, "Mounts": [{"destination": "/proc", "type_": "proc", "source": "proc"}]}}),
        ),
        (
            "routes_eth0",
            "UpdateRoutesRequest",
            json!({"routes": {"Routes": [{"dest": "10.0.0.0/24", "device": "eth0"}]}}),
        ),
    ];
    for (name, request, value) in allowed {
        let e = by_request(request);
        out.push((name.into(), e, e.request_bytes_from_json(&value).unwrap()));
    }
    out
}

fn chunk(out: &mut Vec<u8>, sel: u8, payload: &[u8]) {
    out.push(sel);
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
}

fn main() {
    let agent: Vec<&Endpoint> = ENDPOINTS
        .iter()
        .filter(|e| e.service == AGENT_SERVICE)
        .collect();
    let sel = |e: &Endpoint| agent.iter().position(|a| a.id == e.id).map(|i| i as u8);
    let reqs = requests();

    // request_codec: [endpoint index][protobuf]
    for (name, e, bytes) in &reqs {
        let mut data = vec![e.id.0 as u8];
        data.extend_from_slice(bytes);
        write("request_codec", name, &data);
    }

    // gate_decision and ttrpc_server (structured mode): one request per input, and one input
    // with every endpoint's empty request.
    let mut all = Vec::new();
    for (name, e, bytes) in &reqs {
        let Some(s) = sel(e) else { continue };
        let mut one = Vec::new();
        chunk(&mut one, s, bytes);
        write("gate_decision", name, &one);
        let mut framed = vec![1u8];
        framed.extend_from_slice(&one);
        write("ttrpc_server", name, &framed);
        if bytes.len() < 8 {
            chunk(&mut all, s, bytes);
        }
    }
    write("gate_decision", "every-endpoint", &all);
    let mut framed = vec![1u8];
    framed.extend_from_slice(&all);
    chunk(&mut framed, 0xf0, b"");
    chunk(&mut framed, 0xf1, b"");
    write("ttrpc_server", "every-endpoint", &framed);
    // A raw stream: one well-formed CreateContainer request frame, by hand.
    let mut req = Vec::new();
    req.extend_from_slice(b"\x0a\x11grpc.AgentService\x12\x0fCreateContainer");
    let mut raw = vec![0u8];
    raw.extend_from_slice(&(req.len() as u32).to_be_bytes());
    raw.extend_from_slice(&1u32.to_be_bytes());
    raw.extend_from_slice(&[1, 0]);
    raw.extend_from_slice(&req);
    write("ttrpc_server", "raw-frame", &raw);

    // copy_file: [pieces][piece...][not 0xff][type][perm u16][uid][gid][size u16][offset u16][chunk/target][dir_mode]
    let regular = [
        2u8, 0, 8, 0, 0, 0xa4, 0x01, 1, 1, 3, 0, 0, 0, 3, 0, b'a', b'b', b'c', 0,
    ];
    write("copy_file", "regular", &regular);
    let dir_then_file = [
        1u8, 8, 0, 2, 0xed, 0x01, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 8, 0, 0, 0, 0xa4, 0x01, 1, 1, 1,
        0, 0, 0, 1, 0, b'x', 0,
    ];
    write("copy_file", "dir-then-file", &dir_then_file);
    let symlink = [1u8, 1, 0, 3, 0xff, 0x01, 1, 1, 0, 0, 0, 0, 0, 0];
    write("copy_file", "symlink", &symlink);
    let through_evil = [2u8, 2, 0, 0, 0, 0xa4, 0x01, 1, 1, 1, 0, 0, 0, 1, 0, b'x', 0];
    write("copy_file", "through-planted-link", &through_evil);

    // config_toml: the sample configs and the README's example.
    for entry in std::fs::read_dir(root().join("hack/sample-configs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        write("config_toml", &name, &std::fs::read(&path).unwrap());
    }
    write(
        "config_toml",
        "sections",
        b"[agent]\nserver_addr = \"unix:///run/vigil/agent.sock\"\nlog_level = \"debug\"\n\
          [endpoints]\nallowed = [\"CreateContainerRequest\", \"ReadStreamRequest\"]\n\
          [sandbox]\nrun_root = \"/run/vigil/sandbox\"\noutput_limit_bytes = 65536\n\
          [policy]\neval_budget_ms = 10\naudit_log = \"\"\n[attestation]\ntee = \"none\"\n",
    );

    // initdata: TOML and Kata's block layout of it.
    let toml = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"vigil.toml\" = '''\n[endpoints]\nallowed = [\"*\"]\n'''\n\"policy.rego\" = '''\npackage agent_policy\ndefault CreateContainerRequest := true\n'''\n";
    write("initdata", "toml", toml.as_bytes());
    write(
        "initdata",
        "block",
        &vigil_attester::initdata::pack_block(toml),
    );
}
