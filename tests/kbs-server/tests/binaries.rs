//! The `kbs-tenant` and `kbs-test-server` binaries together, as the demo and
//! scripts use them: keys, envelope and resource layout on disk, the server
//! started as a process, readiness taken from its stdout line.

mod common;

use common::*;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use vigil_kbc::envelope::VerifyingKey;

fn tenant(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_kbs-tenant"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kbs-tenant {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the server binary and wait for its readiness line; returns the address.
fn start(args: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kbs-test-server"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Server(child), addr)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_layout_served_by_the_server_binary_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("policy.rego"), POLICY_TEXT).unwrap();
    std::fs::write(d.join("initdata.toml"), INIT_DATA).unwrap();
    tenant(&["keygen", "--alg", "ed25519", "--out", p(&d.join("keys"))]);
    tenant(&[
        "sign",
        "--key",
        p(&d.join("keys/tenant.key")),
        "--policy",
        p(&d.join("policy.rego")),
        "--version",
        "9",
        "--out",
        p(&d.join("policy.jws")),
    ]);
    tenant(&[
        "publish",
        "--resources",
        p(&d.join("res")),
        "--path",
        POLICY_PATH,
        "--file",
        p(&d.join("policy.jws")),
        "--tee",
        "sample",
        "--init-data",
        p(&d.join("initdata.toml")),
    ]);
    tenant(&["tls", "--out", p(&d.join("tls"))]);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(d.join("keys/tenant.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "private key must not be group/world readable"
    );

    let (_server, addr) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--resources",
        p(&d.join("res")),
        "--tls-cert",
        p(&d.join("tls/server.pem")),
        "--tls-key",
        p(&d.join("tls/server.key")),
    ]);
    let mut cfg = fast_config(&format!("https://{addr}"));
    cfg.kbs_cert = Some(std::fs::read_to_string(d.join("tls/ca.pem")).unwrap());
    let mut client = vigil_kbc::KbsClient::new(
        cfg,
        vigil_kbc::Tee::Sample,
        mock_evidence(binding_for(INIT_DATA)),
    )
    .unwrap()
    .with_init_data(INIT_DATA);
    let signer = VerifyingKey::from_public_key_pem(
        &std::fs::read_to_string(d.join("keys/tenant.pub")).unwrap(),
    )
    .unwrap();
    let policy = client.fetch_policy(POLICY_PATH, &signer, 9).await.unwrap();
    assert_eq!(policy.version, 9);
    assert_eq!(policy.policy, POLICY_TEXT);

    // Editing the rules on disk takes effect at once and fails closed.
    std::fs::write(d.join("res/rules.json"), "{not json").unwrap();
    let e = client.get_resource(POLICY_PATH).await.unwrap_err();
    assert!(e.to_string().contains("rules.json"), "{e}");
}

#[test]
fn server_binary_refuses_bad_arguments_and_says_it_is_a_test_server() {
    let help = Command::new(env!("CARGO_BIN_EXE_kbs-test-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("NOT a production KBS"), "{help}");
    for args in [
        &["--listen", "0.0.0.0:0"][..],
        &["--allow-tee", "nonsense"][..],
        &["--resources", "/nonexistent/dir"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kbs-test-server"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}
