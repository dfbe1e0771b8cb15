//! The agent policy through the real binary: decisions, statuses, SetPolicy rules, metrics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use vigil_kbc::envelope::{self, Algorithm, PolicyPayload, SigningKey};
use vigil_tests::{call, Agent, AgentSetup, Answer};

const T: Duration = Duration::from_secs(10);

const POLICY_V1: &str = r#"
package agent_policy

default GuestDetailsRequest := true
default ExecProcessRequest := false
default SetPolicyRequest := true
default CreateContainerRequest := false
default StartContainerRequest := false

CreateContainerRequest if {
    input.OCI.Process.Args[0] == "/bin/allowed"
}

default CopyFileRequest := false
CopyFileRequest if {
    input.file_type == "Symlink"
    not startswith(input.symlink_target, "/")
    not contains(input.symlink_target, "..")
}
CopyFileRequest if {
    input.file_type == "Regular"
    startswith(input.path, "/run/kata-containers/shared/")
}
"#;

const POLICY_V2: &str = r#"
package agent_policy

default GuestDetailsRequest := false
default SetPolicyRequest := true
default CreateContainerRequest := true
"#;

fn policy_denied(name: &str) -> Answer {
    Err((
        ttrpc::Code::PERMISSION_DENIED,
        format!("{name} is blocked by policy"),
    ))
}

struct Setup {
    agent: Agent,
    key: SigningKey,
}

fn start(extra_policy_keys: &str, signed: bool) -> Setup {
    let key = SigningKey::generate(Algorithm::Es256);
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.rego");
    std::fs::write(&policy_file, POLICY_V1).unwrap();
    let signer = if signed {
        format!(
            "signer = \"\"\"\n{}\"\"\"\n",
            key.verifying_key().to_public_key_pem().unwrap()
        )
    } else {
        String::new()
    };
    let config = format!(
        "[endpoints]\nallowed = [\"*\"]\n[policy]\nfile = \"{}\"\n{signer}{extra_policy_keys}\n",
        policy_file.display()
    );
    let agent = Agent::start(AgentSetup {
        config: Some(&config),
        ..Default::default()
    })
    .unwrap_or_else(|f| panic!("agent did not start: {}", f.stderr));
    // The policy file may go away once loaded: the agent holds the compiled policy.
    drop(dir);
    Setup { agent, key }
}

fn envelope(key: &SigningKey, version: u64, policy: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    envelope::sign(
        key,
        &PolicyPayload {
            version,
            policy: policy.into(),
            issued_at: now,
            id: None,
        },
    )
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn policy_decides_with_kata_s_statuses() {
    let mut s = start("", false);
    rt().block_on(async {
        let c = vigilctl::connect(&s.agent.addr, T).await.unwrap();
        assert!(call(&c, "GetGuestDetails", json!({})).await.is_ok());
        assert_eq!(call(&c, "ExecProcess", json!({})).await, policy_denied("ExecProcessRequest"));
        // Evaluated on the request: allowed by the policy, then the handler answers.
        let ok = call(&c, "CreateContainer", json!({"OCI": {"Process": {"Args": ["/bin/allowed"]}}})).await;
        // (The container backend then refuses the empty container id.)
        assert!(
            matches!(&ok, Err((ttrpc::Code::INVALID_ARGUMENT, m)) if m.starts_with("invalid container_id")),
            "{ok:?}"
        );
        let no = call(&c, "CreateContainer", json!({"OCI": {"Process": {"Args": ["/bin/sh"]}}})).await;
        assert_eq!(no, policy_denied("CreateContainerRequest"));
        // Undefined rule: fail closed with INTERNAL.
        let undefined = call(&c, "ListRoutes", json!({})).await;
        assert_eq!(undefined, Err((ttrpc::Code::INTERNAL, "ListRoutesRequest is blocked by policy".into())));
        // CopyFile: the policy sees Kata's summary, with the symlink target decoded.
        let link = |target: &str| json!({"path": "/run/kata-containers/shared/l", "file_mode": 0o120777, "data": target.as_bytes()});
        assert_eq!(
            call(&c, "CopyFile", link("../../etc/shadow")).await,
            policy_denied("CopyFileRequest")
        );
        assert_eq!(
            call(&c, "CopyFile", link("data/file")).await,
            // Allowed by the policy; the backend then has no sandbox to copy into.
            Err((ttrpc::Code::NOT_FOUND, "sandbox \"(none: CreateSandbox first)\" not found".into()))
        );
        // Metrics count the decisions.
        let m = call(&c, "GetMetrics", json!({})).await;
        // GetMetrics is not named by the policy: undefined, so denied. Policy first, always.
        assert_eq!(m, Err((ttrpc::Code::INTERNAL, "GetMetricsRequest is blocked by policy".into())));
    });
    let (_, log) = s.agent.stop();
    assert!(log.contains("policy loaded"), "{log}");
}

#[test]
fn unsigned_set_policy_is_refused_unless_configured() {
    let s = start("", false);
    rt().block_on(async {
        let c = vigilctl::connect(&s.agent.addr, T).await.unwrap();
        let r = call(&c, "SetPolicy", json!({"policy": POLICY_V2})).await;
        let (code, msg) = r.unwrap_err();
        assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);
        assert!(msg.contains("allow_unsigned_set_policy"), "{msg}");
        // Old policy still in force.
        assert!(call(&c, "GetGuestDetails", json!({})).await.is_ok());
    });
}

#[test]
fn unsigned_set_policy_when_allowed_replaces_policy() {
    let s = start("allow_unsigned_set_policy = true\n", false);
    rt().block_on(async {
        let c = vigilctl::connect(&s.agent.addr, T).await.unwrap();
        // Malformed Rego: refused, old policy intact.
        let r = call(
            &c,
            "SetPolicy",
            json!({"policy": "package agent_policy\nthis is not rego"}),
        )
        .await;
        assert_eq!(
            r.as_ref().unwrap_err().0,
            ttrpc::Code::INVALID_ARGUMENT,
            "{r:?}"
        );
        assert!(call(&c, "GetGuestDetails", json!({})).await.is_ok());

        call(&c, "SetPolicy", json!({"policy": POLICY_V2}))
            .await
            .unwrap();
        assert_eq!(
            call(&c, "GetGuestDetails", json!({})).await,
            policy_denied("GuestDetailsRequest")
        );
    });
}

#[test]
fn signed_set_policy_checks_signature_signer_and_version() {
    let s = start("min_version = 3\n", true);
    let other = SigningKey::generate(Algorithm::Es256);
    rt().block_on(async {
        let c = vigilctl::connect(&s.agent.addr, T).await.unwrap();
        let set = |text: String| {
            let c = &c;
            async move { call(c, "SetPolicy", json!({ "policy": text })).await }
        };
        let refused = |r: Answer, needle: &str| {
            let (code, msg) = r.unwrap_err();
            assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
            assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
        };
        // Raw Rego is not an envelope.
        refused(set(POLICY_V2.into()).await, "SetPolicyRequest refused");
        // Wrong signer.
        refused(
            set(envelope(&other, 5, POLICY_V2)).await,
            "SetPolicyRequest refused",
        );
        // Bad signature: flip a character of the signature.
        let mut bad = envelope(&s.key, 5, POLICY_V2);
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        refused(set(bad).await, "SetPolicyRequest refused");
        // Below the floor.
        refused(
            set(envelope(&s.key, 2, POLICY_V2)).await,
            "SetPolicyRequest refused",
        );
        // Still the old policy.
        assert!(call(&c, "GetGuestDetails", json!({})).await.is_ok());

        // A good one: version 5.
        set(envelope(&s.key, 5, POLICY_V2)).await.unwrap();
        assert_eq!(
            call(&c, "GetGuestDetails", json!({})).await,
            policy_denied("GuestDetailsRequest")
        );
        // Replayed (same version) and lower versions are refused.
        refused(
            set(envelope(&s.key, 5, POLICY_V1)).await,
            "SetPolicyRequest refused",
        );
        refused(
            set(envelope(&s.key, 4, POLICY_V1)).await,
            "SetPolicyRequest refused",
        );
        assert_eq!(
            call(&c, "GetGuestDetails", json!({})).await,
            policy_denied("GuestDetailsRequest")
        );
        // Higher version: accepted.
        set(envelope(&s.key, 6, POLICY_V1)).await.unwrap();
        assert!(call(&c, "GetGuestDetails", json!({})).await.is_ok());
    });
}

#[test]
fn set_policy_is_checked_against_the_current_policy() {
    let s = start("allow_unsigned_set_policy = true\n", false);
    rt().block_on(async {
        let c = vigilctl::connect(&s.agent.addr, T).await.unwrap();
        let locked = "package agent_policy\ndefault GuestDetailsRequest := true\ndefault SetPolicyRequest := false\n";
        call(&c, "SetPolicy", json!({"policy": locked})).await.unwrap();
        assert_eq!(
            call(&c, "SetPolicy", json!({"policy": POLICY_V2})).await,
            policy_denied("SetPolicyRequest")
        );
        assert!(call(&c, "GetGuestDetails", json!({})).await.is_ok());
    });
}

#[test]
fn metrics_and_audit_log_record_decisions() {
    let mut s = start("", false);
    let audit = s.agent.dir.path().join("audit.jsonl");
    rt().block_on(async {
        let c = vigilctl::connect(&s.agent.addr, T).await.unwrap();
        for _ in 0..3 {
            let _ = call(&c, "ExecProcess", json!({})).await;
        }
        // An evaluated decision whose request carries a secret.
        let secret =
            json!({"OCI": {"Process": {"Args": ["/bin/other"], "Env": ["TOKEN=hunter2-SECRET"]}}});
        let _ = call(&c, "CreateContainer", secret).await;
    });
    let (_, _log) = s.agent.stop();
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exec: Vec<&Value> = lines
        .iter()
        .filter(|l| l["endpoint"] == "ExecProcessRequest")
        .collect();
    assert_eq!(exec.len(), 3, "{text}");
    assert_eq!(exec[0]["decision"], "deny");
    assert_eq!(exec[0]["by"], "constant");
    // The constant decision's reason, looked up by the writer in the policy that decided.
    assert_eq!(exec[0]["reason"], "rule is false");
    assert_eq!(exec[0]["policy_digest"].as_str().unwrap().len(), 64);
    let create: Vec<&Value> = lines
        .iter()
        .filter(|l| l["endpoint"] == "CreateContainerRequest")
        .collect();
    assert_eq!(create.len(), 1, "{text}");
    assert_eq!(create[0]["decision"], "deny");
    assert_eq!(create[0]["by"], "evaluated");
    // Never request contents.
    assert!(!text.contains("\"request\""), "{text}");
    assert!(
        !text.contains("hunter2"),
        "request contents leaked into the audit log: {text}"
    );
}

#[test]
fn get_metrics_reports_gate_counters_and_process_figures() {
    let agent = Agent::start(AgentSetup {
        config: Some("[endpoints]\nallowed = [\"GetMetricsRequest\", \"GuestDetailsRequest\"]\n"),
        ..Default::default()
    })
    .unwrap_or_else(|f| panic!("{}", f.stderr));
    rt().block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        for _ in 0..4 {
            let _ = call(&c, "CreateContainer", json!({})).await;
        }
        call(&c, "GetGuestDetails", json!({})).await.unwrap();
        let m = call(&c, "GetMetrics", json!({})).await.unwrap();
        let text = m["metrics"].as_str().unwrap();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
                .to_string()
        };
        assert!(line("vigil_gate_decisions_total{rpc=\"CreateContainer\",request=\"CreateContainerRequest\",outcome=\"denied\"}").ends_with(" 4"));
        assert!(line("vigil_gate_decisions_total{rpc=\"GetGuestDetails\",request=\"GuestDetailsRequest\",outcome=\"allowed\"}").ends_with(" 1"));
        assert!(line("vigil_policy_loaded").ends_with(" 0"));
        let rss: f64 = line("process_resident_memory_bytes").rsplit(' ').next().unwrap().parse().unwrap();
        assert!(rss > 1e6, "rss {rss}");
    });
}
