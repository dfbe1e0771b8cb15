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
