//! Writes the seed inputs each target starts from into `fuzz/corpus/<target>/` (then
//! minimised with `cargo fuzz cmin`; see docs/FUZZING.md):
//! `cargo run -p vigil-fuzz-targets --example make_seeds [TARGET]` (only TARGET's seeds when
//! named, so the other targets' minimised corpora stay as they are).

use std::path::{Path, PathBuf};

use serde_json::json;
use vigil_protos::{Endpoint, AGENT_SERVICE, ENDPOINTS};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn write(target: &str, name: &str, data: &[u8]) {
    if std::env::args().nth(1).is_some_and(|only| only != target) {
        return;
    }
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

    image_seeds();
}

fn image_seeds() {
    let d = |n: u8| {
        format!(
            "sha256:{}",
            "0123456789abcdef"
                .repeat(4)
                .replace('0', &format!("{}", n % 10))
        )
    };
    let layer = "application/vnd.oci.image.layer.v1.tar+gzip";
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7}},"layers":[{{"mediaType":"{layer}","digest":"{}","size":9}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{}","size":1}}]}}"#,
        d(1),
        d(2),
        d(3)
    );
    let docker = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":7}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":9}}]}}"#,
        d(4),
        d(5)
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":9,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":9,"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":9,"platform":{{"architecture":"unknown","os":"unknown"}},"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#,
        d(6),
        d(7),
        d(8)
    );
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"User":"1000","Env":["PATH=/bin"],"Entrypoint":["/bin/sh"],"Cmd":["-c","true"],"WorkingDir":"/","Labels":{{"a":"b"}},"StopSignal":"SIGTERM"}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
        d(1),
        d(2)
    );
    for (name, ct, body) in [
        ("oci-manifest", 0u8, manifest.as_str()),
        ("docker-manifest", 3, docker.as_str()),
        ("oci-index", 2, index.as_str()),
        ("config", 0, config.as_str()),
        ("reference", 0, "quay.io/org/app:v1@sha256:9b2a28eb47540823042a2ba401386845089bb7b62a9637d55816132c4c3c36eb"),
        ("reference-short", 0, "busybox"),
        ("reference-port", 0, "127.0.0.1:5000/a/b__c/d---e:1.0"),
    ] {
        let mut data = vec![ct, 2];
        data.extend_from_slice(body.as_bytes());
        write("image_manifest", name, &data);
    }

    // image_layer: [mode][limits] then entries [kind][name][link][perm u16][owner][size][extra].
    // Piece indexes: see PIECES in src/image_layer.rs.
    let entry = |kind: u8, name: &[u8], link: &[u8], perm: u16, size: u8, extra: &[u8]| {
        let mut e = vec![kind, name[0]];
        e.extend_from_slice(&name[1..]);
        e.push(link[0]);
        e.extend_from_slice(&link[1..]);
        e.extend_from_slice(&perm.to_le_bytes());
        e.push(0);
        e.push(size);
        e.extend_from_slice(extra);
        e
    };
    // A name is [count-1 | 0x40 for the outside directory's absolute path][piece...].
    let basic = [
        entry(0, &[0, 0], &[0, 0], 0o755, 0, &[]),
        entry(1, &[1, 0, 1], &[0, 0], 0o644, 2, &[]),
        entry(3, &[0, 6], &[0, 11], 0o777, 0, &[]),
        entry(7, &[1, 0, 5], &[0, 0], 0o644, 0, &[]),
    ]
    .concat();
    let through_link = [
        entry(3, &[0, 6], &[0x40, 3], 0o777, 0, &[]),
        entry(1, &[1, 6, 14], &[0, 0], 0o644, 1, &[]),
    ]
    .concat();
    let layer_seeds: [(&str, u8, u8, Vec<u8>); 11] = [
        ("basic", 0, 0, basic.clone()),
        ("through-symlink", 0, 0, through_link),
        ("basic-gzip", 1, 0, basic.clone()),
        ("basic-zstd", 2, 0, basic.clone()),
        (
            "hardlinks-out",
            0,
            0,
            [
                entry(4, &[0, 5], &[1, 2, 12], 0o644, 0, &[]),
                entry(4, &[0, 1], &[0x40, 14], 0o644, 0, &[]),
                entry(1, &[0, 0], &[0, 0], 0o644, 1, &[]),
                entry(4, &[0, 1], &[0, 0], 0o644, 0, &[]),
            ]
            .concat(),
        ),
        (
            "whiteouts",
            0,
            0,
            [
                entry(0, &[0, 0], &[0, 0], 0o755, 0, &[]),
                entry(1, &[1, 0, 7], &[0, 0], 0o644, 0, &[]),
                entry(1, &[1, 0, 8], &[0, 0], 0o644, 0, &[]),
                entry(1, &[0, 9], &[0, 0], 0o644, 0, &[]),
            ]
            .concat(),
        ),
        (
            "devices",
            0,
            0,
            [
                entry(5, &[0, 0], &[0, 0], 0o666, 0, &[1, 3]),
                entry(6, &[0, 1], &[0, 0], 0o660, 0, &[8, 0]),
                entry(7, &[0, 5], &[0, 0], 0o600, 0, &[]),
            ]
            .concat(),
        ),
        (
            "xattrs",
            0,
            0,
            [
                entry(8, &[0, 0], &[0, 0], 0o755, 0, &[]),
                entry(20, &[0, 1], &[0, 0], 0o644, 1, &[]),
            ]
            .concat(),
        ),
        (
            "sparse-large",
            0,
            0,
            entry(9, &[0, 5], &[0, 0], 0o644, 0, &[255]),
        ),
        (
            "truncated",
            0,
            1,
            entry(35, &[0, 0], &[0, 0], 0o644, 4, &[]),
        ),
        (
            "dotdot-absolute",
            0,
            2,
            [
                entry(1, &[1, 2, 0], &[0, 0], 0o644, 1, &[]),
                entry(1, &[1, 10, 13], &[0, 0], 0o644, 1, &[]),
                entry(3, &[0, 1], &[0, 10], 0o777, 0, &[]),
                entry(1, &[2, 1, 13, 0], &[0, 0], 0o644, 1, &[]),
            ]
            .concat(),
        ),
    ];
    for (name, mode, limits, entries) in layer_seeds {
        let mut data = vec![mode, limits];
        data.extend_from_slice(&entries);
        write("image_layer", name, &data);
    }
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    let mut raw = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 0o644, 5);
    raw.append_data(&mut h, "etc/hostname", &b"vigil"[..])
        .unwrap();
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    raw.append_link(&mut h, "etc/mtab", "/proc/mounts").unwrap();
    let mut data = vec![0x80, 0];
    data.extend_from_slice(&raw.into_inner().unwrap());
    write("image_layer", "raw-tar", &data);

    // image_policy: [u16 len][policy][payload]
    let key = "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0K";
    let policies = [
        ("reject-default", r#"{"default":[{"type":"reject"}]}"#.to_string()),
        (
            "scoped",
            format!(
                r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"quay.io/org":[{{"type":"insecureAcceptAnything"}}],"*.example.com":[{{"type":"sigstoreSigned","keyData":"{key}","signedIdentity":{{"type":"matchRepository"}}}}],"127.0.0.1:5000/apps/web":[{{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/1","keyPaths":["a","b"]}}],"docker.io/library/busybox:latest":[{{"type":"reject"}}]}},"oci":{{"":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#
            ),
        ),
        (
            "transport-default",
            r#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{"":[{"type":"reject"}],"localhost/x":[{"type":"sigstoreSigned","keyPath":"k","signedIdentity":{"type":"exactRepository","dockerRepository":"busybox"}}]}}}"#.to_string(),
        ),
    ];
    let manifest_digest = vigil_image::Digest::sha256_of(b"manifest");
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5000/app"}},"image":{{"docker-manifest-digest":"{manifest_digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    );
    for (name, policy) in policies {
        let mut data = (policy.len() as u16).to_le_bytes().to_vec();
        data.extend_from_slice(policy.as_bytes());
        data.extend_from_slice(payload.as_bytes());
        write("image_policy", name, &data);
    }
}
