//! The allow-list, end to end: the real `vigil-agent` binary over a real unix socket.

use std::time::Duration;

use vigil_protos::ENDPOINTS;
use vigil_tests::{call, Agent, AgentSetup, Answer};

const T: Duration = Duration::from_secs(10);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn start(config: Option<&str>) -> Agent {
    Agent::start(AgentSetup {
        config,
        ..Default::default()
    })
    .unwrap_or_else(|f| panic!("agent did not start: {:?}\n{}", f.status, f.stderr))
}

/// What a call to `method` with `{}` answers.
async fn answer(client: &ttrpc::r#async::Client, method: &str) -> Answer {
    call(client, method, serde_json::json!({})).await
}

fn blocked(request: &str) -> Answer {
    Err((ttrpc::Code::UNIMPLEMENTED, format!("{request} is blocked")))
}

/// MemAgentMemcgSet with no setting: allowed, it changes nothing and answers Empty.
fn memcg_nothing_to_set() -> Answer {
    Ok(serde_json::json!({}))
}

#[test]
fn allowed_call_succeeds_and_blocked_call_gets_kata_s_status() {
    let agent = start(Some(
        "[endpoints]\nallowed = [\"GuestDetailsRequest\", \"MemAgentMemcgConfig\"]\n",
    ));
    rt().block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        let details = answer(&c, "GetGuestDetails").await.unwrap();
        assert_eq!(
            details["agent_details"]["version"],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            answer(&c, "CreateContainer").await,
            blocked("CreateContainerRequest")
        );
        assert_eq!(answer(&c, "ReadStdout").await, blocked("ReadStreamRequest"));
        // Allowed: the handler answers.
        assert_eq!(answer(&c, "MemAgentMemcgSet").await, memcg_nothing_to_set());
        // Health is never gated.
        assert_eq!(answer(&c, "Check").await.unwrap()["status"], 1);
    });
}

#[test]
fn no_config_allows_everything() {
    let agent = start(None);
    rt().block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        // OnlineCPUMem {} would online this machine's offline memory blocks: it is called in
        // the QEMU guest instead (hack/qemu/guest-ops.sh).
        for e in ENDPOINTS.iter().filter(|e| e.method != "OnlineCPUMem") {
            let a = answer(&c, e.method).await;
            if let Err((_, msg)) = &a {
                assert!(!msg.ends_with("is blocked"), "{}: {msg}", e.method);
            }
        }
    });
}

#[test]
fn config_without_endpoints_section_blocks_everything() {
    let agent = start(Some("[agent]\nlog_level = \"debug\"\n"));
    rt().block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        for e in ENDPOINTS
            .iter()
            .filter(|e| e.service == "grpc.AgentService")
        {
            assert_eq!(
                answer(&c, e.method).await,
                blocked(e.request),
                "{}",
                e.method
            );
        }
        assert!(answer(&c, "Version").await.is_ok());
    });
}

#[test]
fn star_allows_everything_explicitly() {
    let agent = start(Some("[endpoints]\nallowed = [\"*\"]\n"));
    rt().block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        assert!(answer(&c, "GetGuestDetails").await.is_ok());
        assert_eq!(answer(&c, "MemAgentMemcgSet").await, memcg_nothing_to_set());
    });
}

#[test]
fn config_named_on_the_kernel_command_line_is_used() {
    let agent = Agent::start(AgentSetup {
        config: Some("[endpoints]\nallowed = [\"GuestDetailsRequest\"]\n"),
        config_via_cmdline: true,
        cmdline: "console=ttyS0 quiet agent.log=debug",
        ..Default::default()
    })
    .unwrap_or_else(|f| panic!("{}", f.stderr));
    rt().block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        assert!(answer(&c, "GetGuestDetails").await.is_ok());
        assert_eq!(
            answer(&c, "CreateSandbox").await,
            blocked("CreateSandboxRequest")
        );
    });
}

fn start_fails(setup: AgentSetup) -> String {
    match Agent::start(setup) {
        Ok(mut agent) => {
            let (_, log) = agent.stop();
            panic!("agent started but should have refused to:\n{log}")
        }
        Err(f) => {
            assert!(!f.status.success(), "exit status {:?}", f.status);
            f.stderr
        }
    }
}

#[test]
fn unknown_endpoint_name_stops_start_up_and_is_named() {
    let stderr = start_fails(AgentSetup {
        config: Some("[endpoints]\nallowed = [\"GuestDetailsRequest\", \"ExecProcesRequest\"]\n"),
        ..Default::default()
    });
    assert!(stderr.contains("\"ExecProcesRequest\""), "{stderr}");
    assert!(
        stderr.contains("did you mean \"ExecProcessRequest\""),
        "{stderr}"
    );
}

#[test]
fn malformed_toml_unknown_key_and_missing_file_stop_start_up() {
    let stderr = start_fails(AgentSetup {
        config: Some("[endpoints]\nallowed = [\"GuestDetailsRequest\"\n"),
        ..Default::default()
    });
    assert!(stderr.contains("load config"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");

    let stderr = start_fails(AgentSetup {
        config: Some("[agent]\nlisten = \"unix:///tmp/x\"\n"),
        ..Default::default()
    });
    assert!(stderr.contains("listen"), "{stderr}");

    let stderr = start_fails(AgentSetup {
        cmdline: "agent.config_file=/nonexistent/dir/vigil.toml",
        ..Default::default()
    });
    assert!(stderr.contains("/nonexistent/dir/vigil.toml"), "{stderr}");

    let stderr = start_fails(AgentSetup {
        extra_args: vec!["--config".into(), "/nonexistent/other.toml".into()],
        ..Default::default()
    });
    assert!(stderr.contains("/nonexistent/other.toml"), "{stderr}");
}

#[test]
fn sixteen_clients_get_every_answer_right() {
    let agent = start(Some(
        "[endpoints]\nallowed = [\"GuestDetailsRequest\", \"MemAgentMemcgConfig\"]\n",
    ));
    const CLIENTS: usize = 16;
    const CALLS: usize = 2000;
    let methods = [
        "GetGuestDetails",
        "CreateContainer",
        "MemAgentMemcgSet",
        "Check",
        "ReadStderr",
    ];
    let expected = |m: &str, got: &Answer| match m {
        "GetGuestDetails" => got.as_ref().is_ok_and(|v| v["agent_details"].is_object()),
        "Check" => got.as_ref().is_ok_and(|v| v["status"] == 1),
        "CreateContainer" => *got == blocked("CreateContainerRequest"),
        "ReadStderr" => *got == blocked("ReadStreamRequest"),
        "MemAgentMemcgSet" => *got == memcg_nothing_to_set(),
        _ => unreachable!(),
    };
    let wrong = rt().block_on(async {
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            let addr = agent.addr.clone();
            tasks.push(tokio::spawn(async move {
                let c = vigilctl::connect(&addr, T).await.unwrap();
                let mut wrong = Vec::new();
                for i in 0..CALLS {
                    let m = methods[(i * 7 + client) % methods.len()];
                    let got = answer(&c, m).await;
                    if !expected(m, &got) {
                        wrong.push(format!("client {client} call {i} {m}: {got:?}"));
                    }
                }
                wrong
            }));
        }
        let mut wrong = Vec::new();
        for t in tasks {
            wrong.extend(t.await.unwrap());
        }
        wrong
    });
    assert!(
        wrong.is_empty(),
        "{} wrong answers, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let mut agent = start(None);
    let (status, log) = agent.stop();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("terminating"), "{log}");
    assert!(
        !agent.socket.exists() || std::os::unix::net::UnixStream::connect(&agent.socket).is_err()
    );
}
