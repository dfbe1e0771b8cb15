//! The served API against Kata's RPC list, and the gate's coverage of it, over a real socket.

use std::sync::Arc;
use std::time::Duration;

use vigil_agent::config::AllowList;
use vigil_agent::gate::{self, Gate, Rules, GATED_SERVICE};
use vigil_agent::service::AgentApi;
use vigil_protos::{Endpoint, ENDPOINTS};

const RPCS_TXT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/rpcs.txt");

fn kata_rpcs() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(RPCS_TXT)
        .unwrap_or_else(|e| panic!("{RPCS_TXT} (the shared RPC list) must be readable: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 3, "bad line in rpcs.txt: {l}");
            (cols[0].into(), cols[1].into(), cols[2].into())
        })
        .collect()
}

#[test]
fn endpoint_table_is_exactly_kata_s_rpc_list() {
    let rpcs = kata_rpcs();
    assert_eq!(rpcs.len(), 44);
    for (path, request, response) in &rpcs {
        let (service, method) = path[1..].split_once('/').unwrap();
        let e = Endpoint::find(service, method).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(e.request, request, "{path}");
        assert_eq!(e.response, response, "{path}");
    }
    assert_eq!(
        ENDPOINTS.len(),
        rpcs.len(),
        "the API has RPCs Kata's list lacks"
    );
}

#[test]
fn protect_refuses_a_map_that_disagrees_with_the_table() {
    let gate = Arc::new(Gate::new(Rules::from_allow_list(&AllowList::All)));
    let api = Arc::new(AgentApi::with_gate(gate.clone()));
    let mut map = api.clone().service_map();
    map.get_mut(GATED_SERVICE)
        .unwrap()
        .methods
        .remove("CopyFile");
    let err = gate::protect(map, gate.clone()).err().expect("must refuse");
    assert!(err.to_string().contains("CopyFile"), "{err}");

    let mut map = api.service_map();
    let extra = map
        .get_mut(GATED_SERVICE)
        .unwrap()
        .methods
        .remove("SetPolicy")
        .unwrap();
    map.get_mut(GATED_SERVICE)
        .unwrap()
        .methods
        .insert("Backdoor".into(), extra);
    let err = gate::protect(map, gate).err().expect("must refuse");
    assert!(err.to_string().contains("Backdoor"), "{err}");
}

/// Serves the real service map behind a gate that allows nothing, then calls every RPC of the
/// table: each gated one must come back blocked, which proves its handler is wrapped; Health
/// must answer normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_rpc_is_wrapped_and_health_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix://{}", dir.path().join("a.sock").display());
    let gate = Arc::new(Gate::new(Rules::from_allow_list(&AllowList::Only(vec![]))));
    let api = Arc::new(AgentApi::with_gate(gate.clone()));
    let services = gate::protect(api.service_map(), gate).unwrap();
    let mut server = vigil_agent::server::listen(&addr, services).await.unwrap();

    let t = Duration::from_secs(5);
    let client = vigilctl::connect(&addr, t).await.unwrap();
    for e in ENDPOINTS.iter() {
        let result = vigilctl::call_raw(&client, e, vec![], t).await;
        if e.service == GATED_SERVICE {
            match result {
                Err(vigilctl::ClientError::Status(st)) => {
                    assert_eq!(st.code(), ttrpc::Code::UNIMPLEMENTED, "{}", e.method);
                    assert_eq!(st.message(), format!("{} is blocked", e.request));
                }
                other => panic!("{} was not gated: {other:?}", e.method),
            }
        } else {
            result.unwrap_or_else(|err| panic!("{} failed: {err}", e.method));
        }
    }

    // ttrpc's own answers for names it does not serve.
    let unknown = |service: &str, method: &str| ttrpc::Request {
        service: service.into(),
        method: method.into(),
        timeout_nano: t.as_nanos() as i64,
        ..Default::default()
    };
    match client.request(unknown(GATED_SERVICE, "NoSuchMethod")).await {
        Err(ttrpc::Error::RpcStatus(st)) => assert_eq!(st.code(), ttrpc::Code::UNIMPLEMENTED),
        other => panic!("unknown method: {other:?}"),
    }
    match client.request(unknown("grpc.NoSuchService", "Check")).await {
        Err(ttrpc::Error::RpcStatus(st)) => assert_eq!(st.code(), ttrpc::Code::INVALID_ARGUMENT),
        other => panic!("unknown service: {other:?}"),
    }
    server.shutdown().await.unwrap();
}

/// Every RPC of `grpc.AgentService` has a handler of ours: called with an empty request
/// behind a gate that allows everything, none answers with the generated trait's default
/// (`NOT_FOUND` "... is not supported") or "not implemented". Nothing here can change this
/// machine: the hot-plug tree and the entropy device are fakes, swap is off, the sandbox lives
/// in a temporary directory, the RPCs that would touch the clock, disks or volumes refuse an
/// empty request first, and (as root) the test runs in a network namespace of its own.
#[test]
fn every_agent_rpc_has_a_handler_of_ours() {
    // SAFETY: geteuid has no preconditions; unshare affects this thread (and the threads it
    // creates below) only.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare(CLONE_NEWNET)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for d in ["system/cpu", "system/memory"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    std::fs::write(dir.path().join("random"), b"").unwrap();
    let mut guest = vigil_guest::Guest::new(&vigil_guest::GuestConfig {
        allow_swap: false,
        pod_dirs: vec![dir.path().into()],
    });
    guest.hotplug = vigil_guest::hotplug::Hotplug::at(&dir.path().join("system"));
    guest.random = dir.path().join("random");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = format!("unix://{}", dir.path().join("a.sock").display());
        let gate = Arc::new(Gate::new(Rules::from_allow_list(&AllowList::All)));
        let admin = vigil_agent::policy::PolicyAdmin::new(Default::default(), None, gate.clone());
        let sandbox = vigil_runtime::Sandbox::new(vigil_runtime::SandboxConfig {
            kata_root: dir.path().join("kata"),
            ..Default::default()
        });
        let api = Arc::new(AgentApi::new(guest, gate.clone(), admin).with_sandbox(sandbox));
        let services = gate::protect(api.service_map(), gate).unwrap();
        let mut server = vigil_agent::server::listen(&addr, services).await.unwrap();
        let t = Duration::from_secs(10);
        let client = vigilctl::connect(&addr, t).await.unwrap();
        let mut answered = 0;
        for e in ENDPOINTS.iter().filter(|e| e.service == GATED_SERVICE) {
            match vigilctl::call_raw(&client, e, vec![], t).await {
                Ok(_) => answered += 1,
                Err(vigilctl::ClientError::Status(st)) => {
                    let default = st.code() == ttrpc::Code::NOT_FOUND
                        && st.message().ends_with("is not supported");
                    assert!(
                        !default && !st.message().contains("not implemented"),
                        "{}: {:?} {}",
                        e.method,
                        st.code(),
                        st.message()
                    );
                }
                Err(other) => panic!("{}: {other}", e.method),
            }
        }
        assert!(
            answered > 5,
            "only {answered} RPCs answered an empty request"
        );
        server.shutdown().await.unwrap();
    });
}
