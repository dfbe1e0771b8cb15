//! The mode follows the hardware, checked on the real, unmodified agent binary: each test
//! runs it in a private mount namespace (`unshare --mount`) where a temporary directory is
//! bind-mounted over `/dev` (with a fake `sev-guest` or `tdx_guest` node, or none), over
//! `/proc/cmdline` (the kernel parameters a host would set), over `/sys/class/misc` (TDX's
//! MRCONFIGID in sysfs, the launch field) and, where a test needs one, over `/etc` (the
//! image's `/etc/vigil/image.toml`). The binary has no seam: it reads the real paths, and
//! only the namespace changes what is behind them. Nothing outside the namespace changes.
//!
//! The PID 1 case runs the agent as init of a private PID, mount and network namespace
//! (`unshare --pid --fork --mount --net`), so its init duties run on the namespace's own
//! mounts and loopback; `/etc` and `/lib/modules` are empty there, so it loads no module.
//!
//! Needs root and util-linux `unshare` (as CI has); otherwise each test says why it skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kbs_test_server::{KbsTestServer, Rule, ServerConfig};
use serde_json::json;
use vigil_attester::initdata::InitData;
use vigil_kbc::envelope::{self, Algorithm, PolicyPayload, SigningKey};
use vigil_kbc::Tee;
use vigil_tests::{binary, call, Agent, StartFailure};

const RESOURCE: &str = "default/vigil-policy/prod";
const T: Duration = Duration::from_secs(10);

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (private mount namespaces)".into());
    }
    let ok = Command::new("unshare")
        .args(["--mount", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    (!ok).then(|| "`unshare --mount` does not work here".into())
}

macro_rules! require_namespaces {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// The TEE hardware a fake machine pretends to have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hardware {
    None,
    /// `/dev/sev-guest` (its launch field cannot be faked: that takes the ioctl).
    Snp,
    /// `/dev/tdx_guest`, with this MRCONFIGID in sysfs.
    Tdx([u8; 48]),
}

/// A machine seen through a private mount namespace.
struct FakeMachine {
    dir: tempfile::TempDir,
    hardware: Hardware,
    cmdline: String,
    image_toml: Option<String>,
}

impl FakeMachine {
    fn new(hardware: Hardware) -> FakeMachine {
        FakeMachine {
            dir: tempfile::tempdir().unwrap(),
            hardware,
            cmdline: "console=ttyS0 quiet".into(),
            image_toml: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("agent.sock")
    }

    /// Writes initdata (config `vigil_toml`) and names it on the kernel command line.
    fn initdata(&mut self, vigil_toml: &str) -> InitData {
        let text = format!(
            "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"vigil.toml\" = '''\n{vigil_toml}'''\n\"policy.rego\" = '''\npackage agent_policy\ndefault GuestDetailsRequest := false\n'''\n"
        );
        let path = self.path("initdata.toml");
        std::fs::write(&path, &text).unwrap();
        self.cmdline
            .push_str(&format!(" agent.initdata={}", path.display()));
        InitData::parse(&text).unwrap()
    }

    /// Writes a plain config file and names it with `agent.config_file=`.
    fn config_file(&mut self, text: &str) {
        let path = self.path("vigil.toml");
        std::fs::write(&path, text).unwrap();
        self.cmdline
            .push_str(&format!(" agent.config_file={}", path.display()));
    }

    /// The shell run inside the namespace: bind the fake paths, then exec the agent.
    fn script(&self) -> String {
        let d = self.dir.path().display();
        let mut s = format!(
            "set -e\nmkdir -p {d}/dev\ntouch {d}/dev/null\nmount --bind /dev/null {d}/dev/null\n"
        );
        match self.hardware {
            Hardware::None => {}
            Hardware::Snp => s.push_str(&format!("touch {d}/dev/sev-guest\n")),
            Hardware::Tdx(mrconfigid) => {
                s.push_str(&format!("touch {d}/dev/tdx_guest\n"));
                let m = self.path("misc/tdx_guest/measurements");
                std::fs::create_dir_all(&m).unwrap();
                std::fs::write(m.join("mrconfigid"), hex::encode(mrconfigid)).unwrap();
                s.push_str(&format!("mount --bind {d}/misc /sys/class/misc\n"));
            }
        }
        s.push_str(&format!("mount --bind {d}/dev /dev\n"));
        std::fs::write(self.path("cmdline"), format!("{}\n", self.cmdline)).unwrap();
        s.push_str(&format!("mount --bind {d}/cmdline /proc/cmdline\n"));
        if let Some(image) = &self.image_toml {
            std::fs::create_dir_all(self.path("etc/vigil")).unwrap();
            std::fs::write(self.path("etc/vigil/image.toml"), image).unwrap();
            s.push_str(&format!("mount --bind {d}/etc /etc\n"));
        }
        s.push_str("exec \"$0\" \"$@\"\n");
        s
    }

    /// Runs the agent (with `args`) in a private mount namespace of this machine.
    fn run(self, args: &[&str]) -> Result<Agent, StartFailure> {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(self.script())
            .arg(binary("vigil-agent"))
            .args(args);
        let socket = self.socket();
        Agent::spawn(cmd, self.dir, socket)
    }
}

/// `[agent]` and `[policy]` settings every config here shares: the API and the audit log in
/// the test's directory, never under the machine's /run.
fn common_config(dir: &Path) -> String {
    format!(
        "[agent]\nserver_addr = \"unix://{d}/agent.sock\"\n\n[endpoints]\nallowed = [\"*\"]\n",
        d = dir.display()
    )
}

fn attested_config(dir: &Path, tee: &str, kbs_url: &str, signer_pem: &str) -> String {
    format!(
        "{common}\n[policy]\nsigner = \"\"\"\n{signer_pem}\"\"\"\naudit_log = \"{d}/audit.jsonl\"\n\n[attestation]\ntee = \"{tee}\"\npolicy_resource = \"{RESOURCE}\"\ndeadline_secs = 2\n\n[attestation.kbs]\nkbs_url = \"{kbs_url}\"\ntimeout_secs = 1\nconnect_timeout_secs = 1\nconnect_retries = 0\n",
        common = common_config(dir),
        d = dir.display(),
    )
}

fn unattested_config(dir: &Path) -> String {
    format!(
        "{}\n[policy]\naudit_log = \"{}/audit.jsonl\"\n",
        common_config(dir),
        dir.display()
    )
}

fn signer_pem() -> String {
    SigningKey::generate(Algorithm::Es256)
        .verifying_key()
        .to_public_key_pem()
        .unwrap()
}

/// A URL where nothing listens.
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

/// A failed start: non-zero exit, the API socket never existed, and the error line names
/// the step and the cause.
fn refused(result: Result<Agent, StartFailure>, step: &str, causes: &[&str]) -> String {
    let f = match result {
        Ok(mut agent) => {
            let (_, log) = agent.stop();
            panic!("agent opened its API but must not have:\n{log}");
        }
        Err(f) => f,
    };
    assert!(!f.status.success(), "exit {:?}: {}", f.status, f.stderr);
    assert!(!f.socket_existed, "the API socket appeared: {}", f.stderr);
    let line = f
        .stderr
        .lines()
        .find(|l| l.starts_with("vigil-agent: error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{}", f.stderr))
        .to_string();
    assert!(
        line.starts_with(&format!("vigil-agent: error: {step}: ")),
        "step {step:?} not named: {line}"
    );
    for cause in causes {
        assert!(line.contains(cause), "{cause:?} not in: {line}");
    }
    f.stderr
}

#[test]
fn tee_device_present_and_tee_none_is_refused() {
    require_namespaces!();
    let mut m = FakeMachine::new(Hardware::Snp);
    let cfg = unattested_config(m.dir.path());
    m.initdata(&cfg);
    refused(
        m.run(&[]),
        "mode",
        &["/dev/sev-guest", "tee = \"none\"", "allow_unattested"],
    );
}

#[test]
fn tee_device_present_and_no_initdata_is_refused() {
    require_namespaces!();
    // A config file named on the kernel command line (Kata's agent.config_file=) ...
    let mut m = FakeMachine::new(Hardware::Snp);
    let cfg = unattested_config(m.dir.path());
    m.config_file(&cfg);
    refused(
        m.run(&[]),
        "mode",
        &[
            "/dev/sev-guest",
            "agent.config_file=",
            "initdata is mandatory",
        ],
    );
    // ... or nothing at all (every endpoint would be allowed).
    let m = FakeMachine::new(Hardware::Tdx([0; 48]));
    refused(
        m.run(&[]),
        "mode",
        &["/dev/tdx_guest", "no initdata", "initdata is mandatory"],
    );
}

#[test]
fn tee_device_present_and_wrong_digest_is_refused() {
    require_namespaces!();
    let mut m = FakeMachine::new(Hardware::Tdx([0x5A; 48]));
    let cfg = attested_config(m.dir.path(), "auto", &closed_url(), &signer_pem());
    m.initdata(&cfg);
    refused(
        m.run(&[]),
        "launch binding",
        &["mismatch", &"5a".repeat(48)],
    );

    // The same machine with the right digest passes step 2 (so the refusal above is the
    // binding's), and only fails in step 3, where a TDX quote needs real hardware.
    let mut m = FakeMachine::new(Hardware::Tdx([0; 48]));
    let cfg = attested_config(m.dir.path(), "tdx", &closed_url(), &signer_pem());
    let digest: [u8; 48] = m.initdata(&cfg).digest.try_into().unwrap();
    m.hardware = Hardware::Tdx(digest);
    let log = refused(m.run(&[]), "KBS policy", &[]);
    assert!(log.contains("step 2/5: launch binding matches"), "{log}");
}

#[test]
fn mock_while_a_tee_device_is_present_is_refused() {
    require_namespaces!();
    let mut m = FakeMachine::new(Hardware::Snp);
    let cfg = attested_config(m.dir.path(), "mock", &closed_url(), &signer_pem());
    m.initdata(&cfg);
    m.cmdline
        .push_str(&format!(" agent.mock_launch_binding={}", "00".repeat(48)));
    refused(
        m.run(&[]),
        "mode",
        &["tee = \"mock\" is refused", "/dev/sev-guest"],
    );
}

#[test]
fn flags_are_refused_on_tee_hardware() {
    require_namespaces!();
    let mut m = FakeMachine::new(Hardware::Snp);
    let other = m.path("other.toml");
    std::fs::write(&other, "[endpoints]\nallowed = [\"*\"]\n").unwrap();
    let cfg = attested_config(m.dir.path(), "snp", &closed_url(), &signer_pem());
    m.initdata(&cfg);
    refused(
        m.run(&[
            "--log-level",
            "debug",
            "--config",
            other.to_str().unwrap(),
            "--server-addr",
            "unix:///tmp/x.sock",
        ]),
        "command line",
        &[
            "--config, --server-addr refused",
            "/dev/sev-guest",
            "--log-level",
        ],
    );
}

#[test]
fn no_tee_device_and_mock_named_by_initdata_runs() {
    require_namespaces!();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let kbs = rt
        .block_on(KbsTestServer::start(
            "127.0.0.1:0".parse().unwrap(),
            ServerConfig::default(),
        ))
        .unwrap();
    let key = SigningKey::generate(Algorithm::Es256);
    let pem = key.verifying_key().to_public_key_pem().unwrap();
    let mut m = FakeMachine::new(Hardware::None);
    let cfg = attested_config(m.dir.path(), "mock", &kbs.url(), &pem);
    let initdata = m.initdata(&cfg);
    let digest = hex::encode(&initdata.digest);
    m.cmdline
        .push_str(&format!(" agent.mock_launch_binding={digest}"));
    let issued_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let envelope = envelope::sign(
        &key,
        &PolicyPayload {
            version: 1,
            policy: "package agent_policy\ndefault GuestDetailsRequest := true\n".into(),
            issued_at,
            id: None,
        },
    )
    .unwrap();
    kbs.put_resource(
        RESOURCE,
        envelope.into_bytes(),
        Rule {
            tees: vec![Tee::Sample],
            init_data_digests: vec![digest],
        },
    );
    let mut agent = m.run(&[]).unwrap_or_else(|f| panic!("{}", f.stderr));
    rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        // The KBS policy allows it (initdata's would not).
        assert!(call(&c, "GetGuestDetails", json!({})).await.is_ok());
    });
    let (_, log) = agent.stop();
    assert!(log.contains("mode=Mock"), "{log}");
}

#[test]
fn unattested_on_tee_hardware_only_with_the_image_setting_and_a_zero_field() {
    require_namespaces!();
    let image = Some("allow_unattested = true\n".to_string());

    // Allowed by the image, field all zeros: runs unattested, Kata-compatible.
    let mut m = FakeMachine::new(Hardware::Tdx([0; 48]));
    m.image_toml = image.clone();
    let cfg = unattested_config(m.dir.path());
    m.config_file(&cfg);
    let mut agent = m.run(&[]).unwrap_or_else(|f| panic!("{}", f.stderr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        assert!(call(&c, "GetGuestDetails", json!({})).await.is_ok());
    });
    let (_, log) = agent.stop();
    assert!(log.contains("unattested mode on TEE hardware"), "{log}");

    // Allowed by the image, but a digest is bound: refused.
    let mut m = FakeMachine::new(Hardware::Tdx([0x11; 48]));
    m.image_toml = image;
    let cfg = unattested_config(m.dir.path());
    m.config_file(&cfg);
    refused(
        m.run(&[]),
        "launch binding",
        &["launch field holds", &"11".repeat(48)],
    );

    // Field all zeros, but the image does not allow it (file present, setting off).
    let mut m = FakeMachine::new(Hardware::Tdx([0; 48]));
    m.image_toml = Some("allow_unattested = false\n".into());
    let cfg = unattested_config(m.dir.path());
    m.config_file(&cfg);
    refused(m.run(&[]), "mode", &["initdata is mandatory"]);
}

#[test]
fn pid1_with_config_on_the_command_line_is_refused() {
    require_namespaces!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cfg = dir.path().join("vigil.toml");
    // Were the flag accepted, this config would open the API on the test's socket.
    std::fs::write(&cfg, unattested_config(dir.path())).unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    // As init the agent mounts /proc, /sys, /dev, /run, ... (the namespace's own), brings up
    // the namespace's loopback, and loads the modules /etc/vigil/modules or
    // /lib/modules/vigil name: both are hidden behind empty directories here.
    let script = format!(
        "set -e\nmount --bind {d}/empty /etc\n[ ! -d /lib/modules ] || mount --bind {d}/empty /lib/modules\nexec \"$0\" \"$@\"\n"
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount",
        "--net",
        "--propagation",
        "private",
        "sh",
        "-c",
    ])
    .arg(script)
    .arg(binary("vigil-agent"))
    .arg("--config")
    .arg(&cfg);
    let socket = dir.path().join("agent.sock");
    let stderr = refused(
        Agent::spawn(cmd, dir, socket),
        "command line",
        &["--config refused", "PID 1", "--log-level"],
    );
    assert!(
        !stderr.contains("step 1/5"),
        "start-up went on after the refusal:\n{stderr}"
    );
}
