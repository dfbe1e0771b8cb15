//! Support code for vigil's integration tests: start the real binaries, wait on their
//! readiness signals (never on timers), and serve a hybrid vsock front for the CLI.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `hack/test.sh` does it).

pub mod attested;
pub mod container;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Bound on every call the tests make.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What an RPC answered: its JSON response, or the status code and message.
pub type Answer = Result<serde_json::Value, (ttrpc::Code, String)>;

/// Calls `method` (name or path) with `request`. A transport failure fails the test: only
/// answers from the agent are compared.
pub async fn call(
    client: &ttrpc::r#async::Client,
    method: &str,
    request: serde_json::Value,
) -> Answer {
    call_within(client, method, request, CALL_TIMEOUT).await
}

/// [`call`] with its own bound (slow guests, long waits).
pub async fn call_within(
    client: &ttrpc::r#async::Client,
    method: &str,
    request: serde_json::Value,
    timeout: Duration,
) -> Answer {
    let rpc = vigilctl::find_rpc(method).unwrap_or_else(|e| panic!("{e}"));
    match vigilctl::call_json(client, rpc, &request, timeout).await {
        Ok(v) => Ok(v),
        Err(vigilctl::ClientError::Status(st)) => Err((st.code(), st.message().to_string())),
        Err(e) => panic!("{method}: transport failure: {e}"),
    }
}

/// Runs the `vigilctl` binary: (success, stdout, stderr).
pub fn vigilctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("vigilctl"))
        .args(args)
        .output()
        .expect("run vigilctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Path of a workspace binary next to the running test executable (target/<profile>/).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins, or hack/test.sh)",
        path.display()
    );
    path
}

/// A running `vigil-agent` serving on a unix socket in its own temporary directory.
pub struct Agent {
    child: Child,
    pub addr: String,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    /// What the agent printed on stdout before its readiness line (e.g. the workload API's
    /// address).
    pub stdout_lines: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// The agent exited before it was ready.
#[derive(Debug)]
pub struct StartFailure {
    pub status: ExitStatus,
    pub stderr: String,
    /// Whether the API socket existed when the agent exited (it never may on a failed start).
    pub socket_existed: bool,
}

/// How to start the agent for a test.
#[derive(Default)]
pub struct AgentSetup<'a> {
    /// Config file text, written to `vigil.toml` and passed with `--config` (unless
    /// `config_via_cmdline`).
    pub config: Option<&'a str>,
    /// Pass the config through the fake kernel command line instead of `--config`.
    pub config_via_cmdline: bool,
    /// Extra kernel command line text.
    pub cmdline: &'a str,
    pub extra_args: Vec<String>,
}

impl Agent {
    pub fn start(setup: AgentSetup) -> Result<Agent, StartFailure> {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let addr = format!("unix://{}", socket.display());
        let mut cmdline = setup.cmdline.to_string();
        let mut cmd = Command::new(binary("vigil-agent"));
        if let Some(text) = setup.config {
            let cfg = dir.path().join("vigil.toml");
            std::fs::write(&cfg, text).expect("write config");
            if setup.config_via_cmdline {
                cmdline.push_str(&format!(" agent.config_file={}", cfg.display()));
            } else {
                cmd.arg("--config").arg(&cfg);
            }
        }
        let cmdline_file = dir.path().join("cmdline");
        std::fs::write(&cmdline_file, cmdline).expect("write cmdline");
        cmd.arg("--kernel-cmdline")
            .arg(&cmdline_file)
            .arg("--server-addr")
            .arg(&addr)
            .arg("--audit-log")
            .arg(dir.path().join("audit.jsonl"))
            .args(&setup.extra_args);
        Agent::spawn(cmd, dir, socket)
    }

    /// Runs `cmd` (the agent, possibly behind a wrapper such as `unshare`, serving on the unix
    /// socket `socket` inside `dir`) and waits for its readiness line or its exit.
    pub fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        socket: PathBuf,
    ) -> Result<Agent, StartFailure> {
        let addr = format!("unix://{}", socket.display());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn vigil-agent");
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        // Readiness: the agent prints "listening on ADDR" once the API is open; EOF means it
        // exited instead.
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut stdout_lines = Vec::new();
        let ready = loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on") => break true,
                Some(Ok(l)) => stdout_lines.push(l),
                _ => break false,
            }
        };
        if !ready {
            let status = child.wait().expect("wait");
            let stderr = stderr_reader.join().unwrap_or_default();
            return Err(StartFailure {
                status,
                stderr,
                socket_existed: socket.exists(),
            });
        }
        Ok(Agent {
            child,
            addr,
            socket,
            dir,
            stdout_lines,
            stderr: Some(stderr_reader),
        })
    }

    /// `IP:PORT` of the workload API, from the line the agent prints when it opens it.
    pub fn workload_addr(&self) -> Option<String> {
        self.stdout_lines.iter().find_map(|l| {
            l.strip_prefix("vigil-agent: workload API on http://")
                .map(str::to_string)
        })
    }

    /// Sends SIGTERM and returns the exit status and everything the agent logged. The
    /// temporary directory stays until the `Agent` is dropped.
    pub fn stop(&mut self) -> (ExitStatus, String) {
        self.terminate()
    }

    fn terminate(&mut self) -> (ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let status = self.child.wait().expect("wait for agent");
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.stderr.is_some() {
            let _ = self.terminate();
        }
    }
}

/// A hybrid vsock front (as Firecracker and Cloud Hypervisor expose a guest's vsock): a unix
/// socket that answers `CONNECT <port>\n` with `OK <n>\n` and then relays to the agent.
pub struct HybridVsock {
    pub path: PathBuf,
    _task: tokio::task::JoinHandle<()>,
}

impl HybridVsock {
    /// Serves on `path`, relaying connections for `port` to the unix socket `target`.
    pub fn start(path: PathBuf, port: u32, target: PathBuf) -> HybridVsock {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::UnixListener::bind(&path).expect("bind hybrid vsock");
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    let mut line = Vec::new();
                    while let Ok(b) = conn.read_u8().await {
                        if b == b'\n' || line.len() > 64 {
                            break;
                        }
                        line.push(b);
                    }
                    if String::from_utf8_lossy(&line) != format!("CONNECT {port}") {
                        return; // refused: close
                    }
                    let Ok(mut agent) = tokio::net::UnixStream::connect(&target).await else {
                        return;
                    };
                    if conn.write_all(b"OK 1073741824\n").await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut agent).await;
                });
            }
        });
        HybridVsock { path, _task: task }
    }
}
