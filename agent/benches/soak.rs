//! Soak and load against the release agent binary, with the audit log on (a bench binary, not a
//! timed test): `cargo bench -p vigil-agent --bench soak` (16 clients x 100,000 calls, 1,000 idle
//! connections, one client stalled after half a frame). `cargo test --benches` runs a short
//! smoke pass of the same.
//!
//! The agent runs unattested with the 2,516-line genpolicy-like policy and an allow-list. The
//! call mix: allowed (constant), allow-list-blocked, policy-evaluated allowed, policy-denied,
//! and container lifecycle calls at a lower rate. Checked and reported: every answer is the
//! one expected for its kind (0 unexpected); the audit log's records (rotated files included)
//! equal the gate's decisions, none dropped; RSS sampled over the run and its slope; the
//! agent's fds and threads back at their start values once the clients are gone; the stalled
//! client never held up the others.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The kinds of call in the mix, their share (per 1,000 calls) and the answer each must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// GetGuestDetails: constant-allow, answered by its handler.
    Allowed,
    /// SetPolicy: not on the allow-list.
    Blocked,
    /// ExecProcess that the policy allows (evaluated); no such container, so NOT_FOUND.
    Evaluated,
    /// ExecProcess that the policy denies (evaluated).
    Denied,
    /// Stats/Signal/Wait/Remove on a container that does not exist.
    Lifecycle,
    /// CreateContainer (the policy's heaviest rule), before any sandbox exists.
    Create,
}

fn kind(i: usize) -> Kind {
    match i % 1000 {
        0..=449 => Kind::Allowed,
        450..=649 => Kind::Blocked,
        650..=799 => Kind::Evaluated,
        800..=949 => Kind::Denied,
        950..=997 => Kind::Lifecycle,
        _ => Kind::Create,
    }
}

struct Requests {
    exec_allowed: Vec<u8>,
    exec_denied: Vec<u8>,
    create: Vec<u8>,
    lifecycle: Vec<(&'static vigil_protos::Endpoint, Vec<u8>)>,
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/testdata/genpolicy-like")
}

fn encode(method: &str, json: &Value) -> Vec<u8> {
    vigilctl::find_rpc(method)
        .unwrap()
        .request_bytes_from_json(json)
        .unwrap()
}

fn request_file(name: &str) -> Value {
    let text = std::fs::read_to_string(testdata().join("requests").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

impl Requests {
    fn new() -> Requests {
        let missing = json!({"container_id": "no-such-container", "exec_id": "no-such-container"});
        Requests {
            exec_allowed: encode("ExecProcess", &request_file("exec_process_allowed.json")),
            exec_denied: encode("ExecProcess", &request_file("exec_process_denied.json")),
            create: encode(
                "CreateContainer",
                &request_file("create_container_pause.json"),
            ),
            lifecycle: [
                "StatsContainer",
                "SignalProcess",
                "WaitProcess",
                "RemoveContainer",
            ]
            .into_iter()
            .map(|m| (vigilctl::find_rpc(m).unwrap(), encode(m, &missing)))
            .collect(),
        }
    }
}

/// Whether an answer is the one a call of this kind must get.
fn expected(kind: Kind, answer: &Result<Vec<u8>, vigilctl::ClientError>) -> bool {
    use ttrpc::Code;
    let status = match answer {
        Ok(_) => return kind == Kind::Allowed,
        Err(vigilctl::ClientError::Status(st)) => st,
        Err(_) => return false,
    };
    let (code, message) = (status.code(), status.message());
    match kind {
        Kind::Allowed => false,
        Kind::Blocked => code == Code::UNIMPLEMENTED && message == "SetPolicyRequest is blocked",
        // The policy let it through; the runtime has no such container.
        Kind::Evaluated | Kind::Lifecycle => code == Code::NOT_FOUND,
        Kind::Denied => {
            code == Code::PERMISSION_DENIED && message == "ExecProcessRequest is blocked by policy"
        }
        // No CreateSandbox came first: the runtime refuses it (the policy allowed it).
        Kind::Create => code == Code::FAILED_PRECONDITION || code == Code::NOT_FOUND,
    }
}

#[derive(Default)]
struct Tally {
    calls: BTreeMap<Kind, u64>,
    unexpected: u64,
    first_unexpected: Vec<String>,
}

async fn client(addr: String, calls: usize, seed: usize, reqs: Arc<Requests>) -> Tally {
    let c = vigilctl::connect(&addr, TIMEOUT).await.expect("connect");
    let rpc = |m| vigilctl::find_rpc(m).unwrap();
    let (details, set_policy, exec, create) = (
        rpc("GetGuestDetails"),
        rpc("SetPolicy"),
        rpc("ExecProcess"),
        rpc("CreateContainer"),
    );
    let mut tally = Tally::default();
    for n in 0..calls {
        // Clients walk the mix from different places, so kinds interleave across clients.
        let i = n * 7 + seed * 131;
        let k = kind(i);
        let (endpoint, payload) = match k {
            Kind::Allowed => (details, Vec::new()),
            Kind::Blocked => (set_policy, Vec::new()),
            Kind::Evaluated => (exec, reqs.exec_allowed.clone()),
            Kind::Denied => (exec, reqs.exec_denied.clone()),
            Kind::Lifecycle => {
                let (e, p) = &reqs.lifecycle[(i / 1000) % reqs.lifecycle.len()];
                (*e, p.clone())
            }
            Kind::Create => (create, reqs.create.clone()),
        };
        let answer = vigilctl::call_raw(&c, endpoint, payload, TIMEOUT).await;
        *tally.calls.entry(k).or_default() += 1;
        if !expected(k, &answer) {
            tally.unexpected += 1;
            if tally.first_unexpected.len() < 3 {
                tally.first_unexpected.push(format!(
                    "{k:?} {}: {:?}",
                    endpoint.method,
                    answer.err()
                ));
            }
        }
    }
    tally
}

struct Sample {
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Sample {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
    }
}

/// Least-squares slope of (seconds, KiB) points, in KiB per minute.
fn slope_kib_per_min(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den * 60.0
    }
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn start_agent(dir: &Path, allowed: &[&str]) -> (Child, String) {
    let sock = dir.join("agent.sock");
    let addr = format!("unix://{}", sock.display());
    let policy = testdata().join("policy.rego");
    let list: Vec<String> = allowed.iter().map(|n| format!("{n:?}")).collect();
    let config = format!(
        "[agent]\nserver_addr = {addr:?}\nlog_level = \"error\"\n\n\
         [endpoints]\nallowed = [{}]\n\n\
         [policy]\nfile = {:?}\naudit_log = {:?}\nlog_max_bytes = 33554432\nlog_keep = 64\n\n\
         [sandbox]\nrun_root = {:?}\n",
        list.join(", "),
        policy.display().to_string(),
        dir.join("audit.jsonl").display().to_string(),
        dir.join("sandbox").display().to_string(),
    );
    let path = dir.join("vigil.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil-agent"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vigil-agent");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("listening on"),
        "agent did not start: {line:?}"
    );
    (child, addr)
}

/// The audit log's decision records, its other records (policy events: the policy loaded at
/// start-up) and its file count, rotated files included.
fn audit_records(dir: &Path) -> (u64, u64, usize) {
    let mut records = 0;
    let mut events = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("audit.jsonl") {
            files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                match serde_json::from_str::<Value>(line) {
                    Ok(v) if v.get("event").is_some() => events += 1,
                    // A line that is not JSON is counted as a record: the counts then differ.
                    _ => records += 1,
                }
            }
        }
    }
    (records, events, files)
}

/// Decisions the gate counted, from GetMetrics (`vigil_gate_decisions_total`), and the
/// audit drops.
fn metrics_totals(text: &str) -> (u64, u64) {
    let mut decisions = 0;
    let mut dropped = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if line.starts_with("vigil_gate_decisions_total") {
            decisions += value;
        } else if line.starts_with("vigil_audit_dropped_total") {
            dropped += value;
        }
    }
    (decisions, dropped)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (clients, calls, idle) = if full {
        (16, 100_000, 1_000)
    } else {
        (4, 600, 50)
    };
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, addr) = start_agent(
        dir.path(),
        &[
            "GuestDetailsRequest",
            "ExecProcessRequest",
            "CreateContainerRequest",
            "StatsContainerRequest",
            "SignalProcessRequest",
            "WaitProcessRequest",
            "RemoveContainerRequest",
            "GetMetricsRequest",
        ],
    );
    let pid = agent.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let reqs = Arc::new(Requests::new());

    // One warm-up round (lazy initialisation in the agent is not a leak), then the baseline.
    rt.block_on(client(addr.clone(), 1000, 99, reqs.clone()));
    let start = sample(pid);

    let sock = addr.trim_start_matches("unix://").to_string();
    let idle_conns: Vec<UnixStream> = (0..idle)
        .map(|_| UnixStream::connect(&sock).expect("idle connection"))
        .collect();
    // Half a frame header, then nothing.
    let mut stalled = UnixStream::connect(&sock).unwrap();
    stalled.write_all(&[0, 0, 0, 40, 0]).unwrap();

    // The agent accepts them on its own time: wait (bounded) until it holds them all.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut with_idle = sample(pid);
    while with_idle.fds < start.fds + idle + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        with_idle = sample(pid);
    }
    let running = Arc::new(AtomicBool::new(true));
    let t0 = Instant::now();
    let sampler = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut points = Vec::new();
            let mut peak = 0;
            while running.load(Ordering::Relaxed) {
                let s = sample(pid);
                peak = peak.max(s.rss_kib);
                points.push((t0.elapsed().as_secs_f64(), s.rss_kib as f64));
                std::thread::sleep(Duration::from_millis(250));
            }
            (points, peak)
        })
    };
    let done = Arc::new(AtomicU64::new(0));
    let tallies = rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|seed| {
                let (addr, reqs, done) = (addr.clone(), reqs.clone(), done.clone());
                tokio::spawn(async move {
                    let t = client(addr, calls, seed, reqs).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    t
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let elapsed = t0.elapsed();
    running.store(false, Ordering::Relaxed);
    let (points, peak) = sampler.join().unwrap();

    // The stalled client is still connected and the agent still answers.
    let metrics = rt.block_on(async {
        let c = vigilctl::connect(&addr, TIMEOUT).await.unwrap();
        let rpc = vigilctl::find_rpc("GetMetrics").unwrap();
        vigilctl::call_json(&c, rpc, &json!({}), TIMEOUT)
            .await
            .unwrap()
    });
    let (decisions, dropped) = metrics_totals(metrics["metrics"].as_str().unwrap_or(""));

    drop(idle_conns);
    drop(stalled);
    // The agent notices closed connections on its own time: poll /proc (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut end = sample(pid);
    // The baseline may still hold the warm-up connection's descriptor (closed, not yet seen
    // by the agent): fewer at the end is no leak, more is.
    while (end.fds > start.fds || end.threads > start.threads) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        end = sample(pid);
    }

    // SIGTERM: the agent flushes the audit log before it exits.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let (records, events, files) = audit_records(dir.path());

    let mut by_kind: BTreeMap<Kind, u64> = BTreeMap::new();
    let mut unexpected = 0;
    let mut examples = Vec::new();
    for t in &tallies {
        for (k, n) in &t.calls {
            *by_kind.entry(*k).or_default() += n;
        }
        unexpected += t.unexpected;
        examples.extend(t.first_unexpected.iter().cloned());
    }
    let total: u64 = by_kind.values().sum();
    // Skip the first 10% of samples (the agent's allocator settling under the new load).
    let steady: Vec<_> = points.iter().copied().skip(points.len() / 10).collect();
    let slope = slope_kib_per_min(&steady);

    println!(
        "soak: {clients} clients x {calls} calls, {idle} idle connections, 1 stalled half frame"
    );
    println!("calls by kind: {by_kind:?}");
    println!(
        "total {total} calls in {:.1} s ({:.0} calls/s); unexpected answers: {unexpected} {examples:?}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "gate decisions (GetMetrics) {decisions}; audit records {records} (+ {events} policy events) in {files} files; dropped {dropped}"
    );
    println!(
        "RSS KiB: start {} / with idle connections {} / peak {peak} / end {}; slope {slope:+.1} KiB/min over {} samples",
        start.rss_kib,
        with_idle.rss_kib,
        end.rss_kib,
        steady.len()
    );
    println!(
        "fds: start {} / with idle {} / end {}; threads: start {} / with idle {} / end {}",
        start.fds, with_idle.fds, end.fds, start.threads, with_idle.threads, end.threads
    );
    println!("agent exit: {status}");

    let mut failures = Vec::new();
    if unexpected != 0 {
        failures.push(format!("{unexpected} unexpected answers"));
    }
    // Every decision is audited: the warm-up, the load, and the GetMetrics call itself (its
    // decision is counted before its handler renders the metrics).
    if records != decisions || dropped != 0 {
        failures.push(format!(
            "audit log has {records} records for {decisions} decisions ({dropped} dropped)"
        ));
    }
    if decisions != total + 1000 + 1 {
        failures.push(format!(
            "{decisions} decisions counted for {} calls made",
            total + 1001
        ));
    }
    if end.fds > start.fds || end.threads > start.threads {
        failures.push("fds or threads did not return to their start values".into());
    }
    if !status.success() {
        failures.push(format!("agent exited with {status}"));
    }
    if !failures.is_empty() {
        eprintln!("soak FAILED: {failures:?}");
        std::process::exit(1);
    }
    println!("soak: passed");
}
