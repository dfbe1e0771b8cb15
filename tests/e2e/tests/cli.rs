//! vigilctl against a running agent, over each transport that can be tested here.

use vigil_tests::{vigilctl, Agent, AgentSetup, HybridVsock};

fn agent() -> Agent {
    Agent::start(AgentSetup {
        config: Some("[endpoints]\nallowed = [\"GuestDetailsRequest\"]\n"),
        ..Default::default()
    })
    .unwrap_or_else(|f| panic!("{}", f.stderr))
}

#[test]
fn calls_over_unix_socket_with_inline_and_file_requests() {
    let agent = agent();
    let (ok, out, err) = vigilctl(&[
        "--addr",
        &agent.addr,
        "call",
        "GetGuestDetails",
        r#"{"mem_hotplug_probe": true}"#,
    ]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["agent_details"]["version"], env!("CARGO_PKG_VERSION"));

    let req = agent.dir.path().join("req.json");
    std::fs::write(&req, r#"{"container_id": "c1"}"#).unwrap();
    let (ok, out, err) = vigilctl(&[
        "--addr",
        &agent.addr,
        "call",
        "/grpc.AgentService/StartContainer",
        &format!("@{}", req.display()),
    ]);
    assert!(!ok, "blocked call must fail: {out}");
    assert!(
        err.contains("UNIMPLEMENTED: StartContainerRequest is blocked"),
        "{err}"
    );

    let (ok, _, err) = vigilctl(&[
        "--addr",
        &agent.addr,
        "call",
        "GetGuestDetails",
        "{not json",
    ]);
    assert!(!ok);
    assert!(err.contains("not valid JSON"), "{err}");

    let (ok, _, err) = vigilctl(&["--addr", &agent.addr, "call", "GetGuestDetail"]);
    assert!(!ok);
    assert!(err.contains("unknown RPC"), "{err}");
}

#[test]
fn calls_over_hybrid_vsock() {
    let agent = agent();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let path = agent.dir.path().join("hvsock.sock");
    let _front = HybridVsock::start(path.clone(), 1024, agent.socket.clone());
    let addr = format!("hvsock://{}:1024", path.display());
    let (ok, out, err) = vigilctl(&["--addr", &addr, "--timeout", "5", "call", "Check"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"status\": 1"), "{out}");

    // The front refuses other ports; the CLI reports it instead of hanging.
    let addr = format!("hvsock://{}:2000", path.display());
    let (ok, _, err) = vigilctl(&["--addr", &addr, "--timeout", "5", "call", "Check"]);
    assert!(!ok);
    assert!(err.contains("connecting to"), "{err}");
}

#[test]
fn list_shows_every_rpc() {
    let (ok, out, _) = vigilctl(&["list"]);
    assert!(ok);
    assert_eq!(out.lines().count(), vigil_protos::ENDPOINTS.len());
    assert!(out.contains("/grpc.AgentService/SetPolicy\tSetPolicyRequest\tgoogle.protobuf.Empty"));
}
