//! The genpolicy-style test policy (testdata/genpolicy-like) on realistic requests.

mod common;

use std::path::PathBuf;

use common::ENDPOINTS;
use serde_json::{json, Value};
use vigil_policy::{copy_file_input, DecisionClass, Limits, Outcome, PolicyEngine};

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/genpolicy-like")
        .join(rel)
}

fn request(name: &str) -> Value {
    let text = std::fs::read_to_string(testdata(&format!("requests/{name}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn engine() -> PolicyEngine {
    let rego = std::fs::read_to_string(testdata("policy.rego")).unwrap();
    assert!(
        rego.lines().count() >= 1500,
        "benchmark policy must stay realistic in size"
    );
    PolicyEngine::load(&rego, &ENDPOINTS, Limits::default()).expect("policy loads")
}

fn decide(e: &PolicyEngine, kind: &str, input: Value) -> vigil_policy::Decision {
    let d = e.decide(e.index_of(kind).unwrap(), || Ok::<_, String>(input));
    if d.outcome == Outcome::Error {
        eprintln!("{kind}: {}\n{}", d.reason, d.prints.join("\n"));
    }
    d
}

#[test]
fn endpoint_table_matches_the_policy_structure() {
    let e = engine();
    let class = |n: &str| e.class(e.index_of(n).unwrap());
    // Defaults and rules over policy_data only: constant.
    for n in [
        "StartContainerRequest",
        "WaitProcessRequest",
        "ReadStreamRequest",
        "GuestDetailsRequest",
        "RemoveContainerRequest",
    ] {
        assert_eq!(class(n), DecisionClass::ConstAllow, "{n}");
    }
    for n in [
        "WriteStreamRequest",
        "SetPolicyRequest",
        "GetIPTablesRequest",
        "SetGuestDateTimeRequest",
        "AddSwapPathRequest",
    ] {
        assert_eq!(class(n), DecisionClass::ConstDeny, "{n}");
    }
    for n in [
        "CreateContainerRequest",
        "CreateSandboxRequest",
        "ExecProcessRequest",
        "CopyFileRequest",
        "UpdateInterfaceRequest",
        "UpdateRoutesRequest",
        // Refused for every input in practice (its first condition is false), but the
        // analysis is syntactic: a rule that mentions input is evaluated.
        "AddSwapRequest",
    ] {
        assert_eq!(class(n), DecisionClass::Evaluate, "{n}");
    }
    let table = e.table();
    let stateful: Vec<&str> = table
        .iter()
        .filter(|r| r.stateful)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(stateful, vec!["CreateContainerRequest"]);
    assert!(e.precomputed_rules().iter().any(|r| r == "policy_data"));
    let constant = table.iter().filter(|r| r.class.is_constant()).count();
    assert!(constant >= 30, "only {constant} constant endpoints");
}

#[test]
fn pod_lifecycle_with_sandbox_state() {
    let e = engine();
    let d = decide(
        &e,
        "CreateContainerRequest",
        request("create_container_pause.json"),
    );
    assert_eq!(d.outcome, Outcome::Allowed, "{}", d.prints.join("\n"));
    assert_eq!(
        e.state(),
        json!({"sandbox_name": "shop-frontend-7d9f8c6b5-x2k4q", "sandbox_namespace": "retail"})
    );
    for r in ["create_container_web.json", "create_container_worker.json"] {
        let d = decide(&e, "CreateContainerRequest", request(r));
        assert_eq!(d.outcome, Outcome::Allowed, "{r}: {}", d.prints.join("\n"));
    }
    // Same pod description, different sandbox: refused by the state set by the pause container.
    let d = decide(
        &e,
        "CreateContainerRequest",
        request("create_container_other_sandbox.json"),
    );
    assert_eq!(d.outcome, Outcome::Denied);
    assert_eq!(e.state()["sandbox_name"], "shop-frontend-7d9f8c6b5-x2k4q");

    assert_eq!(
        decide(
            &e,
            "ExecProcessRequest",
            request("exec_process_allowed.json")
        )
        .outcome,
        Outcome::Allowed
    );
    assert_eq!(
        decide(
            &e,
            "ExecProcessRequest",
            request("exec_process_denied.json")
        )
        .outcome,
        Outcome::Denied
    );

    let cf = e.index_of("CopyFileRequest").unwrap();
    let ok = request("copy_file_regular.json");
    let escape = request("copy_file_symlink_escape.json");
    assert_eq!(
        e.decide(cf, || copy_file_input(&ok)).outcome,
        Outcome::Allowed
    );
    assert_eq!(
        e.decide(cf, || copy_file_input(&escape)).outcome,
        Outcome::Denied
    );

    assert!(decide(&e, "StartContainerRequest", request("start_container.json")).allowed);
    assert!(decide(&e, "ReadStreamRequest", request("read_stream.json")).allowed);
}

#[test]
fn tampered_container_requests_are_denied() {
    let e = engine();
    assert!(
        decide(
            &e,
            "CreateContainerRequest",
            request("create_container_pause.json")
        )
        .allowed
    );
    let base = request("create_container_web.json");
    type Tamper = Box<dyn Fn(&mut Value)>;
    let tamper: Vec<(&str, Tamper)> = vec![
        (
            "extra arg",
            Box::new(|r| {
                r["OCI"]["Process"]["Args"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("-x"))
            }),
        ),
        (
            "env injection",
            Box::new(|r| {
                r["OCI"]["Process"]["Env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("LD_PRELOAD=/tmp/x.so"))
            }),
        ),
        (
            "added capability",
            Box::new(|r| {
                r["OCI"]["Process"]["Capabilities"]["Bounding"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("CAP_SYS_ADMIN"))
            }),
        ),
        (
            "host mount",
            Box::new(|r| {
                r["OCI"]["Mounts"].as_array_mut().unwrap().push(json!({"destination": "/host", "source": "/", "type_": "bind", "options": ["rbind"]}))
            }),
        ),
        (
            "root uid",
            Box::new(|r| r["OCI"]["Process"]["User"]["UID"] = json!(0)),
        ),
        (
            "unknown annotation",
            Box::new(|r| {
                r["OCI"]["Annotations"]["evil.io/x"] = json!("1");
            }),
        ),
        (
            "unmasked /proc/kcore",
            Box::new(|r| {
                r["OCI"]["Linux"]["MaskedPaths"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|p| p != "/proc/kcore")
            }),
        ),
        (
            "readonly /proc/sys made writable",
            Box::new(|r| {
                r["OCI"]["Linux"]["ReadonlyPaths"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|p| p != "/proc/sys")
            }),
        ),
        (
            "other image",
            Box::new(|r| r["storages"][0]["source"] = json!("docker.io/evil/miner:latest")),
        ),
        (
            "sandbox pidns",
            Box::new(|r| r["sandbox_pidns"] = json!(true)),
        ),
        (
            "storage marked shared",
            Box::new(|r| r["storages"][1]["shared"] = json!(true)),
        ),
    ];
    for (what, f) in &tamper {
        let mut r = base.clone();
        f(&mut r);
        let d = decide(&e, "CreateContainerRequest", r);
        assert_eq!(d.outcome, Outcome::Denied, "{what} was not refused");
    }
    assert!(decide(&e, "CreateContainerRequest", base).allowed);
}

/// The request files are exactly what the agent hands the policy for the current protos:
/// decoding them into the typed request and encoding that back as policy input changes
/// nothing (so a field added to the protos must be added here too, as Kata's agent would
/// send it). CopyFile's files are the summary input, not a request.
#[test]
fn requests_are_in_the_kata_json_shape_of_the_protos() {
    let kinds = [
        ("create_container_", "CreateContainerRequest"),
        ("exec_process_", "ExecProcessRequest"),
        ("read_stream", "ReadStreamRequest"),
        ("start_container", "StartContainerRequest"),
    ];
    let mut checked = 0;
    for entry in std::fs::read_dir(testdata("requests")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with("copy_file_") {
            continue;
        }
        let (_, kind) = kinds
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .unwrap_or_else(|| panic!("{name}: which request is it?"));
        let e = vigil_protos::ENDPOINTS
            .iter()
            .find(|e| e.request == *kind)
            .unwrap();
        let json = request(&name);
        let bytes = e.request_bytes_from_json(&json).unwrap();
        let back = e.request_json_from_bytes(&bytes).unwrap();
        assert_eq!(back, json, "{name} is not the Kata JSON shape of {kind}");
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn fast_path_equals_full_evaluation_on_the_realistic_requests() {
    let gate = engine();
    let full = engine();
    let dir = testdata("requests");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let inputs: Vec<Value> = names.iter().map(|n| request(n)).collect();
    for (i, name) in ENDPOINTS.iter().enumerate() {
        for (input, file) in inputs.iter().zip(&names) {
            let g = gate.decide(i, || Ok::<_, String>(input.clone()));
            let f = full.decide_evaluated(i, input.clone());
            assert_eq!(
                (g.allowed, g.outcome, &g.reason),
                (f.allowed, f.outcome, &f.reason),
                "{name} on {file}"
            );
        }
    }
    assert_eq!(gate.state(), full.reference_state());
}
