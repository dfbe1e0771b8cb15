//! The Kata agent-policy contract, point by point.

mod common;

use std::time::Duration;

use common::ENDPOINTS;
use serde_json::{json, Value};
use vigil_policy::{copy_file_input, DecisionClass, Limits, LoadError, Outcome, PolicyEngine};

fn load(rego: &str) -> PolicyEngine {
    PolicyEngine::load(rego, &ENDPOINTS, Limits::default()).expect("policy loads")
}

fn idx(e: &PolicyEngine, name: &str) -> usize {
    e.index_of(name)
        .unwrap_or_else(|| panic!("{name} is an endpoint"))
}

fn decide(e: &PolicyEngine, name: &str, input: Value) -> vigil_policy::Decision {
    e.decide(idx(e, name), || Ok::<_, String>(input))
}

const BOOLEAN: &str = r#"
package agent_policy

default CreateSandboxRequest := true
default DestroySandboxRequest := false
default ExecProcessRequest := false

ExecProcessRequest if {
    input.process.Args == ["/bin/ls"]
}
"#;

#[test]
fn boolean_results_allow_and_deny() {
    let e = load(BOOLEAN);
    let d = decide(&e, "CreateSandboxRequest", json!({}));
    assert_eq!((d.allowed, d.outcome), (true, Outcome::Allowed));
    let d = decide(&e, "DestroySandboxRequest", json!({}));
    assert_eq!((d.allowed, d.outcome), (false, Outcome::Denied));
    assert_eq!(d.reason, "rule is false");

    let ok = decide(
        &e,
        "ExecProcessRequest",
        json!({"process": {"Args": ["/bin/ls"]}}),
    );
    assert_eq!(ok.outcome, Outcome::Allowed);
    assert_eq!(ok.class, DecisionClass::Evaluate);
    let no = decide(
        &e,
        "ExecProcessRequest",
        json!({"process": {"Args": ["/bin/sh"]}}),
    );
    assert_eq!(no.outcome, Outcome::Denied);
    assert!(!no.allowed);
}

#[test]
fn undefined_rule_is_an_error_not_a_deny_and_never_allows() {
    // ListRoutesRequest has no rule at all; StartContainerRequest has a rule with no default
    // that is undefined for this input.
    let e = load(
        r#"
package agent_policy
StartContainerRequest if input.container_id == "ok"
"#,
    );
    let d = decide(&e, "ListRoutesRequest", json!({}));
    assert_eq!((d.allowed, d.outcome), (false, Outcome::Error));
    assert!(d.reason.contains("undefined"), "{}", d.reason);
    assert_eq!(
        e.class(idx(&e, "ListRoutesRequest")),
        DecisionClass::ConstDeny
    );

    let d = decide(&e, "StartContainerRequest", json!({"container_id": "nope"}));
    assert_eq!((d.allowed, d.outcome), (false, Outcome::Error));
    let d = decide(&e, "StartContainerRequest", json!({"container_id": "ok"}));
    assert_eq!(d.outcome, Outcome::Allowed);
}

#[test]
fn non_decision_results_are_errors() {
    let e = load(
        r#"
package agent_policy
GetMetricsRequest := "yes"
ListInterfacesRequest := {"allowed": "maybe"}
ListRoutesRequest := {"ops": []}
"#,
    );
    for name in [
        "GetMetricsRequest",
        "ListInterfacesRequest",
        "ListRoutesRequest",
    ] {
        let d = decide(&e, name, json!({}));
        assert_eq!(
            (d.allowed, d.outcome),
            (false, Outcome::Error),
            "{name}: {d:?}"
        );
    }
    let d = decide(&e, "GetMetricsRequest", json!({}));
    assert!(d.reason.contains("string"), "{}", d.reason);
}

const STATEFUL: &str = r#"
package agent_policy

default CreateContainerRequest := {"allowed": false}
default ExecProcessRequest := false

# First container fixes the sandbox name; later ones must match it.
CreateContainerRequest := {"allowed": true, "ops": ops} if {
    name := input.sandbox
    not data.pstate.sandbox_name
    ops := [{"op": "add", "path": "/pstate/sandbox_name", "value": name}]
}

CreateContainerRequest := {"allowed": true, "ops": []} if {
    data.pstate.sandbox_name == input.sandbox
}

ExecProcessRequest if {
    data.pstate.sandbox_name == input.sandbox
}
"#;

#[test]
fn object_results_apply_ops_to_pstate_across_requests() {
    let e = load(STATEFUL);
    assert_eq!(e.state(), json!({}));
    // Before any container, exec is refused (no state yet).
    assert_eq!(
        decide(&e, "ExecProcessRequest", json!({"sandbox": "a"})).outcome,
        Outcome::Denied
    );

    let d = decide(&e, "CreateContainerRequest", json!({"sandbox": "a"}));
    assert_eq!(d.outcome, Outcome::Allowed, "{d:?}");
    assert_eq!(e.state(), json!({"sandbox_name": "a"}));

    let d = decide(&e, "CreateContainerRequest", json!({"sandbox": "b"}));
    assert_eq!(d.outcome, Outcome::Denied);
    assert_eq!(d.reason, "rule object has allowed=false");
    assert_eq!(e.state(), json!({"sandbox_name": "a"}));

    assert_eq!(
        decide(&e, "CreateContainerRequest", json!({"sandbox": "a"})).outcome,
        Outcome::Allowed
    );
    assert_eq!(
        decide(&e, "ExecProcessRequest", json!({"sandbox": "a"})).outcome,
        Outcome::Allowed
    );
    assert_eq!(
        decide(&e, "ExecProcessRequest", json!({"sandbox": "b"})).outcome,
        Outcome::Denied
    );

    let t = e.table();
    let row = t.iter().find(|r| r.name == "ExecProcessRequest").unwrap();
    assert!(row.stateful && row.class == DecisionClass::Evaluate);
}

#[test]
fn denied_object_ops_are_not_applied() {
    let e = load(
        r#"
package agent_policy
CreateContainerRequest := {"allowed": false, "ops": [{"op": "add", "path": "/pstate/x", "value": input.v}]}
"#,
    );
    let d = decide(&e, "CreateContainerRequest", json!({"v": 1}));
    assert_eq!(d.outcome, Outcome::Denied);
    assert_eq!(e.state(), json!({}));
}

#[test]
fn ops_outside_pstate_or_failing_are_errors_and_leave_state_alone() {
    let e = load(
        r#"
package agent_policy
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/agent_policy/x", "value": 1}]}
StartContainerRequest := {"allowed": true, "ops": [
    {"op": "add", "path": "/pstate/a", "value": input.v},
    {"op": "remove", "path": "/pstate/missing"}
]}
"#,
    );
    let d = decide(&e, "CreateContainerRequest", json!({}));
    assert_eq!((d.allowed, d.outcome), (false, Outcome::Error));
    assert!(d.reason.contains("outside /pstate"), "{}", d.reason);

    // The second op fails, so the first must not stick either.
    let d = decide(&e, "StartContainerRequest", json!({"v": 7}));
    assert_eq!((d.allowed, d.outcome), (false, Outcome::Error), "{d:?}");
    assert_eq!(e.state(), json!({}));
}

#[test]
fn allow_requests_failing_policy_turns_denials_and_undefined_into_allows() {
    let e = load(
        r#"
package agent_policy
default AllowRequestsFailingPolicy := true
default DestroySandboxRequest := false
ExecProcessRequest if input.ok
GetMetricsRequest := 12
"#,
    );
    assert!(e.allow_failing());
    let d = decide(&e, "DestroySandboxRequest", json!({}));
    assert_eq!(d.outcome, Outcome::Allowed);
    assert!(d.reason.contains("AllowRequestsFailingPolicy"));
    assert_eq!(
        e.class(idx(&e, "DestroySandboxRequest")),
        DecisionClass::ConstAllow
    );
    // Undefined (no such rule, or rule undefined for this input): allowed.
    assert_eq!(
        decide(&e, "ListRoutesRequest", json!({})).outcome,
        Outcome::Allowed
    );
    assert_eq!(
        decide(&e, "ExecProcessRequest", json!({"ok": false})).outcome,
        Outcome::Allowed
    );
    // A result that is not a decision stays an error, as in Kata.
    assert_eq!(
        decide(&e, "GetMetricsRequest", json!({})).outcome,
        Outcome::Error
    );
}

#[test]
fn allow_requests_failing_policy_off_when_false_absent_or_erroring() {
    for rego in [
        "package agent_policy\ndefault AllowRequestsFailingPolicy := false\n",
        "package agent_policy\ndefault X := 1\n",
        "package agent_policy\nAllowRequestsFailingPolicy := \"yes\"\n",
        "package agent_policy\nAllowRequestsFailingPolicy if input.debug\n",
    ] {
        let e = load(rego);
        assert!(!e.allow_failing(), "{rego}");
        assert_eq!(
            decide(&e, "ListRoutesRequest", json!({})).outcome,
            Outcome::Error
        );
    }
}

const COPY_FILE: &str = r#"
package agent_policy
default CopyFileRequest := false
CopyFileRequest if {
    startswith(input.path, "/run/kata-containers/shared/containers/")
    input.file_type != "Unknown"
    not symlink_escapes
}
symlink_escapes if {
    input.file_type == "Symlink"
    some part in split(input.symlink_target, "/")
    part == ".."
}
"#;

fn copy_request(path: &str, mode: u32, data: &[u8]) -> Value {
    json!({
        "path": path, "file_size": data.len(), "file_mode": mode, "dir_mode": 0o750,
        "uid": 0, "gid": 0, "offset": 0, "data": data,
    })
}

#[test]
fn copy_file_symlink_with_dotdot_target_is_denied() {
    let e = load(COPY_FILE);
    let cf = idx(&e, "CopyFileRequest");
    let dir = "/run/kata-containers/shared/containers/abc/";
    let ok = copy_request(&format!("{dir}link"), 0o120777, b"..data/config");
    let bad = copy_request(&format!("{dir}link"), 0o120777, b"../../../etc/shadow");
    let file = copy_request(&format!("{dir}file"), 0o100644, b"secret bytes");
    let fifo = copy_request(&format!("{dir}fifo"), 0o010644, b"");

    let input = copy_file_input(&ok).unwrap();
    assert_eq!(input["file_type"], "Symlink");
    assert_eq!(input["symlink_target"], "..data/config");
    assert_eq!(
        e.decide(cf, || copy_file_input(&ok)).outcome,
        Outcome::Allowed
    );
    let d = e.decide(cf, || copy_file_input(&bad));
    assert_eq!(d.outcome, Outcome::Denied);

    let input = copy_file_input(&file).unwrap();
    assert_eq!(input["file_type"], "Regular");
    assert_eq!(input["symlink_target"], Value::Null);
    assert!(
        input.get("data").is_none(),
        "file content never reaches the policy"
    );
    assert_eq!(
        e.decide(cf, || copy_file_input(&file)).outcome,
        Outcome::Allowed
    );
    assert_eq!(
        e.decide(cf, || copy_file_input(&fifo)).outcome,
        Outcome::Denied
    );
}

#[test]
fn copy_file_input_fields_and_errors() {
    let req = copy_request("/p", 0o040755, b"");
    let v = copy_file_input(&req).unwrap();
    assert_eq!(
        v,
        json!({"path": "/p", "file_type": "Directory", "symlink_target": null, "file_size": 0,
               "file_mode": 0o040755, "dir_mode": 0o750, "uid": 0, "gid": 0, "offset": 0})
    );
    // Both S_IFDIR and S_IFREG bits: not a known type.
    assert_eq!(vigil_policy::file_type(0o040000 | 0o100000), "Unknown");
    assert_eq!(vigil_policy::file_type(0), "Unknown");
    // Symlink target given as base64 (protobuf JSON) is accepted too.
    let mut b64 = copy_request("/l", 0o120777, b"");
    b64["data"] = json!("Li4vZXRj"); // "../etc"
    assert_eq!(copy_file_input(&b64).unwrap()["symlink_target"], "../etc");
    // Invalid UTF-8 symlink target is refused, naming the problem.
    let bad = copy_request("/l", 0o120777, &[0x00, 0xff, 0xfe]);
    assert_eq!(
        copy_file_input(&bad).unwrap_err(),
        vigil_policy::CopyFileInputError::SymlinkNotUtf8
    );
    let mut missing = copy_request("/l", 0o100644, b"");
    missing.as_object_mut().unwrap().remove("uid");
    let err = copy_file_input(&missing).unwrap_err().to_string();
    assert!(err.contains("\"uid\""), "{err}");
    // A failing input builder is an error decision, not an allow.
    let e = load(COPY_FILE);
    let d = e.decide(idx(&e, "CopyFileRequest"), || copy_file_input(&bad));
    assert_eq!((d.allowed, d.outcome), (false, Outcome::Error));
}

#[test]
fn time_budget_exceeded_is_a_clear_error() {
    let rego = r#"
package agent_policy
default ExecProcessRequest := false
ExecProcessRequest if {
    n := count([x | some i in numbers.range(1, input.n); some j in numbers.range(1, input.n); x := i * j])
    n > 0
}
"#;
    let limits = Limits {
        eval_time_budget: Duration::from_millis(20),
        ..Limits::default()
    };
    let e = PolicyEngine::load(rego, &ENDPOINTS, limits).unwrap();
    let i = idx(&e, "ExecProcessRequest");
    assert_eq!(
        e.decide(i, || Ok::<_, String>(json!({"n": 3}))).outcome,
        Outcome::Allowed
    );
    let d = e.decide(i, || Ok::<_, String>(json!({"n": 4000})));
    assert_eq!((d.allowed, d.outcome), (false, Outcome::Error));
    assert!(d.reason.contains("time budget of 20 ms"), "{}", d.reason);
}

#[test]
fn oversized_policy_is_refused() {
    let rego = format!(
        "package agent_policy\n# {}\ndefault X := true\n",
        "a".repeat(4096)
    );
    let limits = Limits {
        max_policy_bytes: 1024,
        ..Limits::default()
    };
    match PolicyEngine::load(&rego, &ENDPOINTS, limits) {
        Err(LoadError::TooLarge { size, limit }) => {
            assert_eq!((size, limit), (rego.len(), 1024));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let err = PolicyEngine::load(&rego, &ENDPOINTS, limits)
        .unwrap_err()
        .to_string();
    assert!(err.contains("over the 1024-byte limit"), "{err}");
}

#[test]
fn compile_errors_and_bad_endpoint_lists_are_reported() {
    let err = PolicyEngine::load(
        "package agent_policy\nX if {",
        &ENDPOINTS,
        Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
    assert!(err.to_string().contains(":2:"), "line number in: {err}");
    assert!(matches!(
        PolicyEngine::load("package agent_policy", &["A", "A"], Limits::default()),
        Err(LoadError::DuplicateEndpoint(n)) if n == "A"
    ));
    assert!(matches!(
        PolicyEngine::load("package agent_policy", &["A; true"], Limits::default()),
        Err(LoadError::BadEndpointName(_))
    ));
}

#[test]
fn rego_v0_policies_still_load() {
    let e = load(
        r#"
package agent_policy
import future.keywords.in
default ExecProcessRequest := false
ExecProcessRequest {
    "/bin/ls" in input.process.Args
}
"#,
    );
    assert_eq!(
        decide(
            &e,
            "ExecProcessRequest",
            json!({"process": {"Args": ["/bin/ls"]}})
        )
        .outcome,
        Outcome::Allowed
    );
}

#[test]
fn constant_endpoints_never_build_the_input() {
    let e = load(BOOLEAN);
    let i = idx(&e, "CreateSandboxRequest");
    assert_eq!(e.class(i), DecisionClass::ConstAllow);
    let d = e.decide(i, || -> Result<Value, String> {
        panic!("input built for a constant")
    });
    assert_eq!(d.outcome, Outcome::Allowed);
    // An evaluated endpoint whose input cannot be built fails closed.
    let d = e.decide(idx(&e, "ExecProcessRequest"), || Err::<Value, _>("boom"));
    assert_eq!((d.allowed, d.outcome), (false, Outcome::Error));
    assert!(d.reason.contains("boom"));
}

#[test]
fn metadata_digest_and_version() {
    let mut e = load(BOOLEAN);
    assert_eq!(e.digest().len(), 64);
    assert_ne!(e.digest(), load(STATEFUL).digest());
    assert_eq!(e.digest(), load(BOOLEAN).digest());
    assert_eq!(e.version(), None);
    e.set_version(Some(7));
    assert_eq!(e.version(), Some(7));
    assert_eq!(e.endpoint_count(), ENDPOINTS.len());
    assert_eq!(e.table().len(), ENDPOINTS.len());
}

#[test]
fn prints_are_gathered_for_evaluated_requests() {
    let e = load(
        r#"
package agent_policy
ExecProcessRequest if {
    print("checking", input.id)
    input.id == 1
}
"#,
    );
    let d = decide(&e, "ExecProcessRequest", json!({"id": 1}));
    assert_eq!(d.outcome, Outcome::Allowed);
    assert!(
        d.prints.iter().any(|p| p.contains("checking 1")),
        "{:?}",
        d.prints
    );
}

#[test]
fn allow_requests_failing_policy_object_result_applies_its_ops_once() {
    let e = load(
        r#"
package agent_policy
AllowRequestsFailingPolicy := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/debug", "value": true}]}
ExecProcessRequest if data.pstate.debug
"#,
    );
    assert!(e.allow_failing());
    assert_eq!(e.state(), json!({"debug": true}));
    assert_eq!(e.reference_state(), e.state());
    assert_eq!(
        decide(&e, "ExecProcessRequest", json!({})).outcome,
        Outcome::Allowed
    );
}
