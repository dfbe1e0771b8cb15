//! The policy tools on the host (`vigilctl policy ...`) against the live agent: an input log
//! recorded by the agent replays to the same decisions; sign/verify round trip.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use vigil_tests::{vigilctl, Agent, AgentSetup};
use vigilctl::ClientError;

const T: Duration = Duration::from_secs(10);

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policy/testdata/genpolicy-like")
}

#[test]
fn input_log_replays_to_the_live_decisions() {
    let policy = testdata().join("policy.rego");
    let dir = tempfile::tempdir().unwrap();
    let input_log = dir.path().join("input.jsonl");
    let config = format!(
        "[endpoints]\nallowed = [\"*\"]\n[policy]\nfile = \"{}\"\ninput_log = \"{}\"\n",
        policy.display(),
        input_log.display()
    );
    let mut agent = Agent::start(AgentSetup {
        config: Some(&config),
        ..Default::default()
    })
    .unwrap_or_else(|f| panic!("{}", f.stderr));

    // A realistic sequence: the pause container fixes the sandbox in the policy state, so a
    // container of another sandbox is refused afterwards.
    let sequence = [
        ("CreateContainer", "create_container_pause.json"),
        ("CreateContainer", "create_container_web.json"),
        ("CreateContainer", "create_container_other_sandbox.json"),
        ("StartContainer", "start_container.json"),
        ("ExecProcess", "exec_process_allowed.json"),
        ("ExecProcess", "exec_process_denied.json"),
        ("CopyFile", "copy_file_regular.json"),
        ("CopyFile", "copy_file_symlink_escape.json"),
        ("CreateContainer", "create_container_worker.json"),
    ];
    let live: Vec<bool> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        let mut live = Vec::new();
        for (method, file) in sequence {
            let req: Value = serde_json::from_str(
                &std::fs::read_to_string(testdata().join("requests").join(file)).unwrap(),
            )
            .unwrap();
            let rpc = vigilctl::find_rpc(method).unwrap();
            // Whatever the handler answers, it ran only if the policy allowed the request.
            let allowed = match vigilctl::call_json(&c, rpc, &req, T).await {
                Ok(_) => true,
                Err(ClientError::Status(st)) => !st.message().contains("is blocked by policy"),
                Err(e) => panic!("{method} {file}: {e}"),
            };
            live.push(allowed);
        }
        live
    });
    agent.stop();
    assert!(
        live.contains(&true) && live.contains(&false),
        "the sequence must exercise both: {live:?}"
    );
    assert!(
        !live[2],
        "a container of another sandbox must be refused once the state is set"
    );

    let (ok, out, err) = vigilctl(&[
        "policy",
        "replay",
        policy.to_str().unwrap(),
        input_log.to_str().unwrap(),
    ]);
    assert!(ok, "{err}\n{out}");
    let replayed: Vec<bool> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["allowed"]
                .as_bool()
                .unwrap()
        })
        .collect();
    assert_eq!(replayed, live, "replay:\n{out}");

    // A line that cannot be parsed makes the replay fail, naming the line.
    std::fs::write(
        &input_log,
        "{\"kind\":\"ExecProcessRequest\",\"request\":{}}\nnot json\n",
    )
    .unwrap();
    let (ok, out, err) = vigilctl(&[
        "policy",
        "replay",
        policy.to_str().unwrap(),
        input_log.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(out.contains("\"line\":2"), "{out}");
    assert!(err.contains("could not be replayed"), "{err}");
}

#[test]
fn check_eval_sign_verify() {
    let policy = testdata().join("policy.rego");
    let (ok, out, err) = vigilctl(&["policy", "check", policy.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("GuestDetailsRequest") && l.contains("constant-allow")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ExecProcessRequest") && l.contains("evaluated")),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rego");
    std::fs::write(&bad, "package agent_policy\n\ndefault X := true\nY if {\n").unwrap();
    let (ok, _, err) = vigilctl(&["policy", "check", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bad.rego"), "{err}");

    let (ok, out, err) = vigilctl(&[
        "policy",
        "eval",
        policy.to_str().unwrap(),
        "--kind",
        "ExecProcessRequest",
        "--input",
        testdata()
            .join("requests/exec_process_denied.json")
            .to_str()
            .unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"allowed\":false"), "{out}");

    // Keys from the test-server's tenant tool, then sign and verify.
    let key = vigil_kbc::envelope::SigningKey::generate(vigil_kbc::envelope::Algorithm::Es256);
    let key_path = dir.path().join("tenant.key");
    let pub_path = dir.path().join("tenant.pub");
    std::fs::write(&key_path, key.to_pkcs8_pem().unwrap()).unwrap();
    std::fs::write(&pub_path, key.verifying_key().to_public_key_pem().unwrap()).unwrap();
    let jws = dir.path().join("policy.jws");
    let (ok, _, err) = vigilctl(&[
        "policy",
        "sign",
        "--key",
        key_path.to_str().unwrap(),
        "--version",
        "7",
        policy.to_str().unwrap(),
        "-o",
        jws.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let extracted = dir.path().join("out.rego");
    let (ok, out, err) = vigilctl(&[
        "policy",
        "verify",
        "--signer",
        pub_path.to_str().unwrap(),
        "--min-version",
        "7",
        jws.to_str().unwrap(),
        "--extract",
        extracted.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"version\":7"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&extracted).unwrap(),
        std::fs::read_to_string(&policy).unwrap()
    );
    let (ok, _, err) = vigilctl(&[
        "policy",
        "verify",
        "--signer",
        pub_path.to_str().unwrap(),
        "--min-version",
        "8",
        jws.to_str().unwrap(),
    ]);
    assert!(!ok, "version below the floor must fail");
    assert!(!err.is_empty());
}
