//! Attested start-up through the real binary: the mock TEE, the KBS test server on
//! 127.0.0.1, and the fail-closed matrix. Every failing row asserts that the API socket never
//! appeared and that the exit line names the step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kbs_test_server::{Fault, KbsTestServer, Rule, ServerConfig};
use serde_json::json;
use vigil_attester::initdata::{pack_block, InitData};
use vigil_kbc::envelope::{self, Algorithm, PolicyPayload, SigningKey};
use vigil_kbc::Tee;
use vigil_tests::{call, Agent, AgentSetup};

const RESOURCE: &str = "default/vigil-policy/prod";
const T: Duration = Duration::from_secs(10);

const TENANT_POLICY: &str = "package agent_policy\n\ndefault GuestDetailsRequest := true\ndefault CreateContainerRequest := false\n";
const INITIAL_POLICY: &str = "package agent_policy\n\ndefault GuestDetailsRequest := false\ndefault CreateContainerRequest := true\n";

/// A tenant, a KBS holding its signed policy, and initdata for an agent in mock mode.
struct World {
    rt: tokio::runtime::Runtime,
    kbs: KbsTestServer,
    key: SigningKey,
    dir: tempfile::TempDir,
}

struct Knobs<'a> {
    kbs_url: String,
    signer_pem: String,
    min_version: u64,
    tee: &'a str,
    allowed: &'a str,
    extra_attestation: &'a str,
    policy_optional: bool,
    /// initdata's `policy.rego`.
    initial_policy: &'a str,
}

impl World {
    fn new() -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let kbs = rt
            .block_on(KbsTestServer::start(
                "127.0.0.1:0".parse().unwrap(),
                ServerConfig::default(),
            ))
            .unwrap();
        World {
            rt,
            kbs,
            key: SigningKey::generate(Algorithm::Es256),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn knobs(&self) -> Knobs<'static> {
        Knobs {
            kbs_url: self.kbs.url(),
            signer_pem: self.key.verifying_key().to_public_key_pem().unwrap(),
            min_version: 2,
            tee: "mock",
            allowed: r#"["GuestDetailsRequest", "CreateContainerRequest"]"#,
            extra_attestation: "deadline_secs = 10",
            policy_optional: false,
            initial_policy: INITIAL_POLICY,
        }
    }

    fn initdata(&self, k: &Knobs) -> String {
        format!(
            "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"vigil.toml\" = '''\n[endpoints]\nallowed = {allowed}\n\n[policy]\nsigner = \"\"\"\n{signer}\"\"\"\nmin_version = {min}\n\n[attestation]\ntee = \"{tee}\"\npolicy_resource = \"{RESOURCE}\"\npolicy_optional = {optional}\n{extra}\n\n[attestation.kbs]\nkbs_url = \"{url}\"\ntimeout_secs = 2\nconnect_timeout_secs = 1\nconnect_retries = 0\n'''\n\"policy.rego\" = '''\n{initial}'''\n",
            allowed = k.allowed,
            signer = k.signer_pem,
            min = k.min_version,
            tee = k.tee,
            optional = k.policy_optional,
            extra = k.extra_attestation,
            url = k.kbs_url,
            initial = k.initial_policy,
        )
    }

    fn envelope(&self, key: &SigningKey, version: u64) -> Vec<u8> {
        let issued_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        envelope::sign(
            key,
            &PolicyPayload {
                version,
                policy: TENANT_POLICY.into(),
                issued_at,
                id: None,
            },
        )
        .unwrap()
        .into_bytes()
    }

    /// Publishes the tenant policy for `initdata` and writes the initdata file; returns the
    /// file and the launch binding a VMM would have set for it.
    fn publish(&self, initdata: &str, version: u64) -> (std::path::PathBuf, String) {
        let digest = hex::encode(InitData::parse(initdata).unwrap().digest);
        self.kbs.put_resource(
            RESOURCE,
            self.envelope(&self.key, version),
            Rule {
                tees: vec![Tee::Sample],
                init_data_digests: vec![digest.clone()],
            },
        );
        let path = self.dir.path().join("initdata.toml");
        std::fs::write(&path, initdata).unwrap();
        (path, digest)
    }

    fn start(
        &self,
        initdata_file: &std::path::Path,
        binding_hex: &str,
        extra: &[&str],
    ) -> Result<Agent, vigil_tests::StartFailure> {
        let mut args = vec![
            "--initdata".to_string(),
            initdata_file.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let cmdline = format!("console=ttyS0 agent.mock_launch_binding={binding_hex}");
        Agent::start(AgentSetup {
            cmdline: &cmdline,
            extra_args: args,
            ..Default::default()
        })
    }
}

/// A loopback URL where nothing listens (the port was free a moment ago).
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

/// Asserts a failed start: non-zero exit, no socket ever, one line naming the step and cause.
fn refused(result: Result<Agent, vigil_tests::StartFailure>, step: &str, cause: &str) {
    let f = match result {
        Ok(mut agent) => {
            let (_, log) = agent.stop();
            panic!("agent opened its API but must not have:\n{log}");
        }
        Err(f) => f,
    };
    assert!(!f.status.success(), "exit {:?}", f.status);
    assert!(
        !f.socket_existed,
        "the API socket appeared on a failed path"
    );
    let line = f
        .stderr
        .lines()
        .find(|l| l.starts_with("vigil-agent: error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{}", f.stderr));
    assert!(
        line.contains(&format!("error: {step}: ")),
        "step {step:?} not named: {line}"
    );
    assert!(
        line.to_lowercase().contains(&cause.to_lowercase()),
        "cause {cause:?} not in: {line}"
    );
}

#[test]
fn happy_path_api_follows_the_kbs_policy_not_the_initial_one() {
    let w = World::new();
    let initdata = w.initdata(&w.knobs());
    let (file, binding) = w.publish(&initdata, 3);
    let mut agent = w
        .start(&file, &binding, &[])
        .unwrap_or_else(|f| panic!("{}", f.stderr));
    // The API opened only after the KBS released the policy to this attested agent.
    let stats = w.kbs.stats();
    assert!(stats.auth >= 1, "{stats:?}");
    w.rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        // The KBS policy allows GetGuestDetails; the initial one would have denied it.
        assert!(call(&c, "GetGuestDetails", json!({})).await.is_ok());
        let denied = call(&c, "CreateContainer", json!({})).await.unwrap_err();
        assert_eq!(
            denied,
            (
                ttrpc::Code::PERMISSION_DENIED,
                "CreateContainerRequest is blocked by policy".into()
            )
        );
        // Not on the allow-list of the measured config.
        let blocked = call(&c, "ExecProcess", json!({})).await.unwrap_err();
        assert_eq!(blocked.0, ttrpc::Code::UNIMPLEMENTED);
    });
    let (_, log) = agent.stop();
    for step in 1..=5 {
        assert!(
            log.contains(&format!("step {step}/5")),
            "step {step} not logged:\n{log}"
        );
    }
}

#[test]
fn initdata_in_kata_block_layout_works() {
    let w = World::new();
    let initdata = w.initdata(&w.knobs());
    let (_, binding) = w.publish(&initdata, 3);
    let block = w.dir.path().join("initdata.img");
    let mut bytes = pack_block(&initdata);
    bytes.resize(64 * 1024, 0); // a device is larger than its content
    std::fs::write(&block, bytes).unwrap();
    let mut agent = w
        .start(&block, &binding, &[])
        .unwrap_or_else(|f| panic!("{}", f.stderr));
    agent.stop();
}

#[test]
fn kbs_down_past_the_deadline() {
    let w = World::new();
    let mut k = w.knobs();
    k.kbs_url = closed_url();
    k.extra_attestation = "deadline_secs = 2";
    let (file, binding) = w.publish(&w.initdata(&k), 3);
    refused(w.start(&file, &binding, &[]), "KBS policy", "deadline");
}

#[test]
fn kbs_answering_500() {
    let w = World::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let mut k = w.knobs();
    k.kbs_url = format!("http://127.0.0.1:{port}");
    k.extra_attestation = "deadline_secs = 2";
    let (file, binding) = w.publish(&w.initdata(&k), 3);
    refused(w.start(&file, &binding, &[]), "KBS policy", "500");
}

#[test]
fn kbs_401_loop_is_bounded() {
    let w = World::new();
    w.kbs.set_fault(Fault::ResourceAlways401);
    let (file, binding) = w.publish(&w.initdata(&w.knobs()), 3);
    refused(w.start(&file, &binding, &[]), "KBS policy", "401");
}

#[test]
fn policy_not_released_to_this_initdata() {
    let w = World::new();
    let (file, binding) = w.publish(&w.initdata(&w.knobs()), 3);
    w.kbs.put_resource(
        RESOURCE,
        w.envelope(&w.key, 3),
        Rule {
            tees: vec![Tee::Sample],
            init_data_digests: vec!["00".repeat(48)],
        },
    );
    refused(w.start(&file, &binding, &[]), "KBS policy", "resource");
}

#[test]
fn tampered_jwe() {
    let w = World::new();
    w.kbs.set_fault(Fault::TamperCiphertext);
    let (file, binding) = w.publish(&w.initdata(&w.knobs()), 3);
    refused(w.start(&file, &binding, &[]), "KBS policy", "decrypt");
}

#[test]
fn wrong_signer() {
    let w = World::new();
    let mut k = w.knobs();
    k.signer_pem = SigningKey::generate(Algorithm::Es256)
        .verifying_key()
        .to_public_key_pem()
        .unwrap();
    let (file, binding) = w.publish(&w.initdata(&k), 3);
    refused(w.start(&file, &binding, &[]), "KBS policy", "verify");
}

#[test]
fn version_below_the_floor() {
    let w = World::new();
    let mut k = w.knobs();
    k.min_version = 5;
    let (file, binding) = w.publish(&w.initdata(&k), 3);
    refused(w.start(&file, &binding, &[]), "KBS policy", "version");
}

#[test]
fn snp_without_tee_hardware() {
    let w = World::new();
    let mut k = w.knobs();
    k.tee = "snp";
    let (file, binding) = w.publish(&w.initdata(&k), 3);
    refused(
        w.start(&file, &binding, &[]),
        "mode",
        "no TEE guest interface",
    );
}

#[test]
fn auto_with_no_tee_never_falls_back_to_mock() {
    let w = World::new();
    let mut k = w.knobs();
    k.tee = "auto";
    let (file, binding) = w.publish(&w.initdata(&k), 3);
    refused(w.start(&file, &binding, &[]), "mode", "mock");
}

#[test]
fn launch_binding_mismatch_initdata_edited_after_launch() {
    let w = World::new();
    let initdata = w.initdata(&w.knobs());
    let (file, binding) = w.publish(&initdata, 3);
    // The host edits initdata after the VM was launched with the original's digest.
    let edited = initdata.replace(
        "\"GuestDetailsRequest\", ",
        "\"GuestDetailsRequest\", \"ExecProcessRequest\", ",
    );
    assert_ne!(edited, initdata);
    std::fs::write(&file, edited).unwrap();
    refused(w.start(&file, &binding, &[]), "launch binding", "");
    assert_eq!(
        w.kbs.stats().auth,
        0,
        "no KBS contact before the binding holds"
    );
}

#[test]
fn initdata_unreadable_truncated_bad_gzip_bad_toml_unknown_algorithm() {
    let w = World::new();
    let initdata = w.initdata(&w.knobs());
    let (_, binding) = w.publish(&initdata, 3);
    refused(
        w.start(&w.dir.path().join("missing.toml"), &binding, &[]),
        "load config",
        "missing.toml",
    );

    let block = pack_block(&initdata);
    let truncated = w.dir.path().join("truncated.img");
    std::fs::write(&truncated, &block[..block.len() / 2]).unwrap();
    refused(
        w.start(&truncated, &binding, &[]),
        "load config",
        "truncated",
    );

    let mut corrupt = block.clone();
    let n = corrupt.len();
    for b in &mut corrupt[24..n - 8] {
        *b ^= 0x5a;
    }
    let bad_gzip = w.dir.path().join("badgzip.img");
    std::fs::write(&bad_gzip, corrupt).unwrap();
    refused(w.start(&bad_gzip, &binding, &[]), "load config", "gzip");

    let bad_toml = w.dir.path().join("bad.toml");
    std::fs::write(
        &bad_toml,
        "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data\n",
    )
    .unwrap();
    refused(
        w.start(&bad_toml, &binding, &[]),
        "load config",
        "not valid toml",
    );

    let md5 = w.dir.path().join("md5.toml");
    std::fs::write(&md5, initdata.replace("sha384", "md5")).unwrap();
    refused(w.start(&md5, &binding, &[]), "load config", "algorithm");
}

#[test]
fn config_entry_missing_malformed_or_with_unknown_endpoint() {
    let w = World::new();
    let no_entry = w.dir.path().join("noentry.toml");
    std::fs::write(&no_entry, "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = \"package agent_policy\"\n").unwrap();
    refused(w.start(&no_entry, "00", &[]), "load config", "vigil.toml");

    let k = w.knobs();
    let malformed = w.initdata(&k).replace("[endpoints]", "[endpoints");
    let (file, binding) = w.publish(&malformed, 3);
    refused(w.start(&file, &binding, &[]), "load config", "vigil.toml");

    let mut k = w.knobs();
    k.allowed = r#"["GuestDetailsRequest", "ExecProcesRequest"]"#;
    let (file, binding) = w.publish(&w.initdata(&k), 3);
    refused(
        w.start(&file, &binding, &[]),
        "load config",
        "ExecProcesRequest",
    );
}

#[test]
fn security_relevant_flag_in_attested_mode() {
    let w = World::new();
    let (file, binding) = w.publish(&w.initdata(&w.knobs()), 3);
    let other = w.dir.path().join("other.toml");
    std::fs::write(&other, "[endpoints]\nallowed = [\"*\"]\n").unwrap();
    refused(
        w.start(&file, &binding, &["--config", other.to_str().unwrap()]),
        "load config",
        "--config",
    );
}

#[test]
fn attested_config_without_initdata_is_refused() {
    let cfg = "[policy]\nsigner = \"x\"\n[attestation]\ntee = \"mock\"\n";
    let r = Agent::start(AgentSetup {
        config: Some(cfg),
        ..Default::default()
    });
    refused(r, "load config", "");
}

/// initdata's policy for the fallback tests: SetPolicy and GetMetrics allowed, GetGuestDetails
/// denied (the tenant's KBS policy allows it, so the two are told apart).
const FALLBACK_POLICY: &str = "package agent_policy\n\ndefault GuestDetailsRequest := false\ndefault GetMetricsRequest := true\ndefault SetPolicyRequest := true\n";

fn optional_knobs(w: &World) -> Knobs<'static> {
    Knobs {
        policy_optional: true,
        min_version: 3,
        allowed: r#"["GuestDetailsRequest", "GetMetricsRequest", "SetPolicyRequest"]"#,
        initial_policy: FALLBACK_POLICY,
        extra_attestation: "deadline_secs = 2",
        ..w.knobs()
    }
}

/// A policy_optional agent that fell back: initdata's policy is in force and says so (log,
/// GetMetrics, audit log), and a signed SetPolicy keeps the measured floor.
fn assert_fell_back(w: &World, mut agent: Agent) {
    w.rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        let denied = call(&c, "GetGuestDetails", json!({})).await.unwrap_err();
        assert_eq!(denied.0, ttrpc::Code::PERMISSION_DENIED);
        let m = call(&c, "GetMetrics", json!({})).await.unwrap();
        let text = m["metrics"].as_str().unwrap();
        assert!(
            text.contains("vigil_policy_source{source=\"initdata-fallback\"} 1"),
            "{text}"
        );
        assert!(!text.contains("vigil_policy_version"), "{text}");

        // The floor is min_version (3): a fallback does not reopen older versions.
        let set = |v| json!({ "policy": String::from_utf8(w.envelope(&w.key, v)).unwrap() });
        let (code, msg) = call(&c, "SetPolicy", set(2)).await.unwrap_err();
        assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
        assert!(msg.contains("version"), "{msg}");
        call(&c, "SetPolicy", set(3)).await.unwrap();
        // The tenant's policy is in force now.
        assert!(call(&c, "GetGuestDetails", json!({})).await.is_ok());
    });
    let (_, log) = agent.stop();
    assert!(log.contains("policy_optional"), "{log}");
    let audit = std::fs::read_to_string(agent.dir.path().join("audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = &lines[0];
    assert_eq!(first["event"], "policy", "{audit}");
    assert_eq!(first["policy_source"], "initdata-fallback", "{audit}");
    assert!(
        first["detail"]
            .as_str()
            .unwrap()
            .contains("KBS unreachable"),
        "{audit}"
    );
    let denial = lines
        .iter()
        .find(|l| l["endpoint"] == "GuestDetailsRequest")
        .unwrap();
    assert_eq!(denial["policy_source"], "initdata-fallback", "{audit}");
    let replaced = lines
        .iter()
        .filter(|l| l["event"] == "policy")
        .nth(1)
        .unwrap_or_else(|| panic!("no SetPolicy event: {audit}"));
    assert_eq!(replaced["policy_source"], "set-policy");
    assert_eq!(replaced["policy_version"], 3);
}

/// Starts a policy_optional agent with `k` and checks that it fell back.
fn starts_with_the_fallback(w: &World, k: &Knobs) {
    let (file, binding) = w.publish(&w.initdata(k), 3);
    let agent = w
        .start(&file, &binding, &[])
        .unwrap_or_else(|f| panic!("{}", f.stderr));
    assert_fell_back(w, agent);
}

#[test]
fn policy_optional_falls_back_when_the_kbs_answers_503() {
    let w = World::new();
    w.kbs.set_fault(Fault::Unavailable);
    starts_with_the_fallback(&w, &optional_knobs(&w));
}

#[test]
fn policy_optional_falls_back_when_the_kbs_is_down() {
    let w = World::new();
    let k = Knobs {
        kbs_url: closed_url(),
        ..optional_knobs(&w)
    };
    starts_with_the_fallback(&w, &k);
}

#[test]
fn policy_optional_falls_back_when_the_deadline_passes() {
    let w = World::new();
    // Accepts connections (the kernel's backlog) and never answers: only the deadline ends
    // step 3 (the client's own timeout is longer).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let k = Knobs {
        kbs_url: format!("http://127.0.0.1:{port}"),
        extra_attestation: "deadline_secs = 1",
        ..optional_knobs(&w)
    };
    starts_with_the_fallback(&w, &k);
    drop(silent);
}

/// What the KBS answered is never a reason to fall back: each of these refuses to start
/// even with policy_optional = true.
#[test]
fn policy_optional_never_falls_back_on_verification_failures_or_refusals() {
    let w = World::new();
    let stranger = SigningKey::generate(Algorithm::Es256)
        .verifying_key()
        .to_public_key_pem()
        .unwrap();
    let cases: [(&str, Fault, Option<String>, u64, &str); 7] = [
        ("bad signature", Fault::None, Some(stranger), 3, "verify"),
        ("rollback", Fault::None, None, 5, "version"),
        ("JWE tampered", Fault::TamperCiphertext, None, 3, "decrypt"),
        (
            "JWE to another key",
            Fault::EncryptToOtherKey,
            None,
            3,
            "decrypt",
        ),
        (
            "401 after re-attesting",
            Fault::ResourceAlways401,
            None,
            3,
            "401",
        ),
        ("evidence refused", Fault::RefuseEvidence, None, 3, "attest"),
        // Trustee's answer when its policy does not release a resource: 401 PolicyDeny.
        ("not released", Fault::None, None, 3, "PolicyDeny"),
    ];
    for (name, fault, signer, min_version, cause) in cases {
        w.kbs.set_fault(fault);
        let k = Knobs {
            signer_pem: signer.unwrap_or_else(|| w.knobs().signer_pem),
            min_version,
            ..optional_knobs(&w)
        };
        let (file, binding) = w.publish(&w.initdata(&k), 3);
        if name == "not released" {
            w.kbs.put_resource(
                RESOURCE,
                w.envelope(&w.key, 3),
                Rule {
                    tees: vec![Tee::Sample],
                    init_data_digests: vec!["00".repeat(48)],
                },
            );
        }
        let result = w.start(&file, &binding, &[]);
        if let Err(f) = &result {
            assert!(
                !f.stderr.contains("using initdata's policy.rego"),
                "{name}: fell back:\n{}",
                f.stderr
            );
        }
        refused(result, "KBS policy", cause);
    }
}
