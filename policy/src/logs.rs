//! Decision records: the audit log (on by default; never holds request contents), the
//! input log (off by default, Kata's `{"kind","request"}` format, may hold secrets), and
//! per-endpoint counters rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::engine::{Decision, Outcome, PolicyEngine};

/// Endpoints Kata leaves out of its input log: frequent and uninteresting (stats, stream
/// reads) or large and available elsewhere (the SetPolicy text).
pub const INPUT_LOG_SKIPPED: &[&str] = &[
    "StatsContainerRequest",
    "ReadStreamRequest",
    "SetPolicyRequest",
];

/// An append-only line log bounded in size: when a line would take the current file past
/// `max_bytes`, the file is rotated to `<path>.1` (older ones shift up to `<path>.<keep>`,
/// the oldest is dropped).
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    inner: Mutex<Option<(File, u64)>>,
}

impl RotatingLog {
    /// Open (append) `path`. `keep` is the number of rotated files retained besides the
    /// current one; `max_bytes` must leave room for at least one line.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, keep: usize) -> io::Result<Self> {
        let path = path.into();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            max_bytes: max_bytes.max(1),
            keep,
            inner: Mutex::new(Some((file, len))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&self) -> io::Result<File> {
        if self.keep == 0 {
            return OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path);
        }
        match fs::remove_file(self.rotated(self.keep)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for n in (1..self.keep).rev() {
            match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fs::rename(&self.path, self.rotated(1))?;
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
    }

    /// Append one line (a newline is added).
    pub fn write_line(&self, line: &str) -> io::Result<()> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let len = line.len() as u64 + 1;
        let (mut file, mut written) = match guard.take() {
            Some(f) => f,
            None => (
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
                fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0),
            ),
        };
        if written > 0 && written + len > self.max_bytes {
            drop(file);
            file = self.rotate()?;
            written = 0;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let res = file.write_all(&buf);
        if res.is_ok() {
            written += len;
        }
        *guard = Some((file, written));
        res
    }
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-24T05:03:30.123Z`.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// The audit record of one decision: what was decided and why, under which policy; never
/// the request.
pub fn audit_record(engine: &PolicyEngine, endpoint: &str, decision: &Decision) -> Value {
    json!({
        "time": rfc3339_now(),
        "endpoint": endpoint,
        "decision": decision.outcome.as_str(),
        "reason": decision.reason,
        "class": if decision.class.is_constant() { "constant" } else { "evaluated" },
        "policy_version": engine.version(),
        "policy_digest": engine.digest(),
    })
}

/// Per-endpoint allowed/denied/error counts.
#[derive(Debug)]
pub struct Counters {
    names: Vec<String>,
    counts: Vec<[AtomicU64; 3]>,
}

impl Counters {
    pub fn new(endpoints: &[&str]) -> Self {
        Counters {
            names: endpoints.iter().map(|s| s.to_string()).collect(),
            counts: endpoints
                .iter()
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
        }
    }

    pub fn record(&self, index: usize, outcome: Outcome) {
        if let Some(c) = self.counts.get(index) {
            let slot = match outcome {
                Outcome::Allowed => 0,
                Outcome::Denied => 1,
                Outcome::Error => 2,
            };
            c[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (allowed, denied, error) for one endpoint.
    pub fn get(&self, index: usize) -> Option<(u64, u64, u64)> {
        self.counts.get(index).map(|c| {
            (
                c[0].load(Ordering::Relaxed),
                c[1].load(Ordering::Relaxed),
                c[2].load(Ordering::Relaxed),
            )
        })
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP vigil_policy_decisions_total Agent API requests decided by the policy gate.\n",
        );
        out.push_str("# TYPE vigil_policy_decisions_total counter\n");
        for (name, c) in self.names.iter().zip(&self.counts) {
            for (i, label) in ["allow", "deny", "error"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "vigil_policy_decisions_total{{endpoint=\"{name}\",decision=\"{label}\"}} {}",
                    c[i].load(Ordering::Relaxed)
                );
            }
        }
        out
    }
}

/// Everything recorded per decision. Logging failures never change a decision; they are
/// counted so the agent can report them.
#[derive(Debug)]
pub struct Recorder {
    pub counters: Counters,
    audit: Option<RotatingLog>,
    input: Option<RotatingLog>,
    log_errors: AtomicU64,
}

impl Recorder {
    pub fn new(endpoints: &[&str], audit: Option<RotatingLog>, input: Option<RotatingLog>) -> Self {
        Recorder {
            counters: Counters::new(endpoints),
            audit,
            input,
            log_errors: AtomicU64::new(0),
        }
    }

    /// Number of log lines that could not be written.
    pub fn log_errors(&self) -> u64 {
        self.log_errors.load(Ordering::Relaxed)
    }

    fn write(&self, log: &Option<RotatingLog>, line: &str) {
        if let Some(log) = log {
            if log.write_line(line).is_err() {
                self.log_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// [`PolicyEngine::decide`] plus the input log, the audit log and the counters.
    /// Counters are indexed like the engine's endpoint list.
    pub fn decide<E: std::fmt::Display>(
        &self,
        engine: &PolicyEngine,
        index: usize,
        input: impl FnOnce() -> Result<Value, E>,
    ) -> Decision {
        let name = engine.endpoint_name(index).unwrap_or("<unknown>");
        // With the input log on, every request is logged as Kata does (constant endpoints
        // included, so a replay sees the whole sequence); the log is a debugging aid, off
        // by default, and only then is the input built for constant endpoints.
        let decision = if self.input.is_some() && !INPUT_LOG_SKIPPED.contains(&name) {
            match input() {
                Ok(v) => {
                    let line = json!({ "kind": name, "request": &v }).to_string();
                    self.write(&self.input, &line);
                    engine.decide(index, || Ok::<Value, E>(v))
                }
                Err(e) => engine.decide(index, || Err(e)),
            }
        } else {
            engine.decide(index, input)
        };
        self.counters.record(index, decision.outcome);
        if self.audit.is_some() {
            let line = audit_record(engine, name, &decision).to_string();
            self.write(&self.audit, &line);
        }
        decision
    }
}
