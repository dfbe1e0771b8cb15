//! What the gate records about each decision: per-endpoint counters (always) and the audit
//! log (on by default; one JSON line per decision, never request contents, plus one line
//! each time a policy comes into force). The workload API records its calls here too
//! (`"api": "workload"` lines, [`WorkloadCounters`]).
//!
//! The audit line is written by a background thread, so the request path only pays for a
//! counter increment and a non-blocking channel send. If the writer falls behind by more
//! than the channel holds, records are dropped and counted (`vigil_audit_dropped_total`),
//! never waited for: a slow disk must not stall the API.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use vigil_policy::{Outcome, RotatingLog};
use vigil_protos::{Endpoint, ENDPOINTS};

use super::compiled::CompiledPolicy;
use super::verdict::{verdict_reason, DecidedBy, Rules, Verdict};

const AUDIT_QUEUE: usize = 16 * 1024;

enum AuditMessage {
    Record(AuditRecord),
    /// A line written as it is (policy changes).
    Line(String),
    /// A workload API call (see [`WorkloadCall`]).
    Workload(WorkloadCall),
    /// Answered once every earlier record is written.
    Flush(SyncSender<()>),
}

struct AuditRecord {
    endpoint: &'static Endpoint,
    /// A constant decision's reason is not copied here: the writer reads it from the policy.
    verdict: Verdict,
    /// The policy that decided (for its reason, version and digest).
    policy: Option<Arc<CompiledPolicy>>,
}

/// The workload API's endpoints, as audit records and metrics name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadEndpoint {
    /// `GET /cdh/resource/{repo}/{type}/{tag}`
    Resource,
    /// `GET /aa/evidence`
    Evidence,
    /// `GET /aa/token`
    Token,
    /// `GET /info`
    Info,
    /// Anything else (answered 404, or refused before routing).
    Other,
}

impl WorkloadEndpoint {
    const ALL: [WorkloadEndpoint; 5] = [
        WorkloadEndpoint::Resource,
        WorkloadEndpoint::Evidence,
        WorkloadEndpoint::Token,
        WorkloadEndpoint::Info,
        WorkloadEndpoint::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadEndpoint::Resource => "/cdh/resource",
            WorkloadEndpoint::Evidence => "/aa/evidence",
            WorkloadEndpoint::Token => "/aa/token",
            WorkloadEndpoint::Info => "/info",
            WorkloadEndpoint::Other => "other",
        }
    }
}

/// One workload API call, as audited: never the resource's contents, the evidence, the token
/// or the key; the resource path only (bounded, printable).
#[derive(Debug)]
pub struct WorkloadCall {
    pub endpoint: WorkloadEndpoint,
    pub resource: Option<String>,
    /// Allowed: answered 200; denied: refused by the measured config (allow-list, endpoint
    /// off, not from loopback); error: bad input or a failure behind the API.
    pub outcome: Outcome,
    pub status: u16,
    pub reason: String,
}

/// Counters of the workload API, shared with the API (which updates them) and rendered with
/// the gate's in GetMetrics.
#[derive(Default)]
pub struct WorkloadCounters {
    /// [endpoint][allowed, denied, error]
    calls: [[AtomicU64; 3]; 5],
    /// Resource fetches that went to the KBS (concurrent requests for one resource share one).
    pub kbs_fetches: AtomicU64,
    /// Requests waiting for a fetch another request started.
    pub fetch_waiters: AtomicU64,
}

impl WorkloadCounters {
    /// (allowed, denied, error) for an endpoint.
    pub fn counts(&self, endpoint: WorkloadEndpoint) -> (u64, u64, u64) {
        load3(&self.calls[endpoint as usize])
    }

    fn render(&self, out: &mut String) {
        out.push_str("# HELP vigil_workload_api_requests_total Workload API calls per endpoint and outcome.\n");
        out.push_str("# TYPE vigil_workload_api_requests_total counter\n");
        for e in WorkloadEndpoint::ALL {
            let (a, d, x) = self.counts(e);
            for (outcome, n) in [("allowed", a), ("denied", d), ("error", x)] {
                let _ = writeln!(
                    out,
                    "vigil_workload_api_requests_total{{endpoint=\"{}\",outcome=\"{outcome}\"}} {n}",
                    e.as_str()
                );
            }
        }
        for (name, kind, help, value) in [
            (
                "vigil_workload_api_kbs_fetches_total",
                "counter",
                "Resource fetches the workload API and sealed secrets sent to the KBS.",
                &self.kbs_fetches,
            ),
            (
                "vigil_workload_api_fetch_waiters",
                "gauge",
                "Requests waiting on a resource fetch another request started.",
                &self.fetch_waiters,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

/// Counters and the audit log writer.
pub struct DecisionLog {
    /// [endpoint id][allowed, denied, error]
    counts: Vec<[AtomicU64; 3]>,
    audit: Option<SyncSender<AuditMessage>>,
    dropped: AtomicU64,
    write_errors: Arc<AtomicU64>,
    /// Kata's input log: the policy input of every request the policy sees. Written
    /// synchronously: it is a debugging aid, off by default, and may hold secrets.
    input: Option<RotatingLog>,
    workload: Arc<WorkloadCounters>,
}

impl DecisionLog {
    pub fn counters_only() -> DecisionLog {
        DecisionLog {
            counts: ENDPOINTS.iter().map(|_| Default::default()).collect(),
            audit: None,
            dropped: AtomicU64::new(0),
            write_errors: Arc::new(AtomicU64::new(0)),
            input: None,
            workload: Arc::default(),
        }
    }

    /// The workload API's counters (the API updates them; GetMetrics renders them).
    pub fn workload_counters(&self) -> Arc<WorkloadCounters> {
        self.workload.clone()
    }

    /// Counts and audits one workload API call. Like gate decisions, the record is queued,
    /// never waited for.
    pub fn record_workload(&self, call: WorkloadCall) {
        self.workload.calls[call.endpoint as usize][slot(call.outcome)]
            .fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = &self.audit {
            if tx.try_send(AuditMessage::Workload(call)).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds Kata's input log at `path`.
    pub fn with_input_log(
        mut self,
        path: &Path,
        max_bytes: u64,
        keep: usize,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        tracing::warn!(path = %path.display(), "policy input log is on: it records request contents");
        self.input = Some(RotatingLog::open(path, max_bytes, keep)?);
        Ok(self)
    }

    pub(crate) fn logs_input(&self) -> bool {
        self.input.is_some()
    }

    /// Writes `{"kind": <request name>, "request": <policy input>}` as Kata does.
    pub(crate) fn log_input(&self, endpoint: &Endpoint, input: &serde_json::Value) {
        if let Some(log) = &self.input {
            let line =
                serde_json::json!({ "kind": endpoint.request, "request": input }).to_string();
            if log.write_line(&line).is_err() {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counters plus an audit log at `path` (rotated at `max_bytes`, `keep` old files).
    pub fn with_audit_log(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let log = RotatingLog::open(path, max_bytes, keep)?;
        let (tx, rx) = sync_channel::<AuditMessage>(AUDIT_QUEUE);
        let mut me = DecisionLog::counters_only();
        let errors = me.write_errors.clone();
        std::thread::Builder::new()
            .name("vigil-audit".into())
            .spawn(move || {
                for msg in rx {
                    match msg {
                        AuditMessage::Record(rec) => {
                            if log.write_line(&audit_line(&rec)).is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        AuditMessage::Line(line) => {
                            if log.write_line(&line).is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        AuditMessage::Workload(call) => {
                            if log.write_line(&workload_line(&call)).is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        AuditMessage::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        me.audit = Some(tx);
        Ok(me)
    }

    pub(crate) fn record(&self, endpoint: &'static Endpoint, verdict: &Verdict, rules: &Rules) {
        if let Some(c) = self.counts.get(endpoint.id.0 as usize) {
            c[slot(verdict.outcome)].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tx) = &self.audit {
            let policy_decided = !matches!(verdict.by, DecidedBy::AllowList | DecidedBy::NoPolicy);
            let rec = AuditRecord {
                endpoint,
                verdict: Verdict {
                    outcome: verdict.outcome,
                    by: verdict.by,
                    reason: verdict.reason.clone(),
                },
                policy: if policy_decided {
                    rules.policy.clone()
                } else {
                    None
                },
            };
            match tx.try_send(AuditMessage::Record(rec)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Records that `policy` came into force (start-up, SetPolicy): one line
    /// `{"time", "event": "policy", "policy_source", "policy_version", "policy_digest",
    /// "detail"}`, so the log says which policy decided the lines after it (and, for a
    /// policy_optional fallback, why the KBS policy is not the one in force).
    pub fn policy_event(&self, policy: &CompiledPolicy, detail: &str) {
        let Some(tx) = &self.audit else {
            return;
        };
        let line = serde_json::json!({
            "time": vigil_policy::rfc3339_now(),
            "event": "policy",
            "policy_source": policy.source.origin.as_str(),
            "policy_version": policy.engine.version(),
            "policy_digest": policy.engine.digest(),
            "detail": detail,
        })
        .to_string();
        if tx.try_send(AuditMessage::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (up to `timeout`) until every record sent so far is written; used at shutdown.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let Some(tx) = &self.audit else {
            return true;
        };
        let (done_tx, done_rx) = sync_channel(1);
        if tx.send(AuditMessage::Flush(done_tx)).is_err() {
            return false;
        }
        done_rx.recv_timeout(timeout).is_ok()
    }

    /// (allowed, denied, error) for an endpoint.
    pub fn counts(&self, endpoint: &Endpoint) -> (u64, u64, u64) {
        load3(&self.counts[endpoint.id.0 as usize])
    }

    /// The counters in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        out.push_str("# HELP vigil_gate_decisions_total Gate decisions per RPC and outcome.\n");
        out.push_str("# TYPE vigil_gate_decisions_total counter\n");
        for e in ENDPOINTS.iter() {
            let (a, d, x) = self.counts(e);
            for (outcome, n) in [("allowed", a), ("denied", d), ("error", x)] {
                let _ = writeln!(
                    out,
                    "vigil_gate_decisions_total{{rpc=\"{}\",request=\"{}\",outcome=\"{outcome}\"}} {n}",
                    e.method, e.request
                );
            }
        }
        out.push_str("# HELP vigil_audit_dropped_total Audit records dropped because the writer fell behind.\n");
        out.push_str("# TYPE vigil_audit_dropped_total counter\n");
        let _ = writeln!(
            out,
            "vigil_audit_dropped_total {}",
            self.dropped.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP vigil_audit_write_errors_total Audit lines that could not be written.\n",
        );
        out.push_str("# TYPE vigil_audit_write_errors_total counter\n");
        let _ = writeln!(
            out,
            "vigil_audit_write_errors_total {}",
            self.write_errors.load(Ordering::Relaxed)
        );
        self.workload.render(out);
    }
}

/// The counter of a triple for `outcome`.
fn slot(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Allowed => 0,
        Outcome::Denied => 1,
        Outcome::Error => 2,
    }
}

/// (allowed, denied, error) from a counter triple.
fn load3(c: &[AtomicU64; 3]) -> (u64, u64, u64) {
    (
        c[0].load(Ordering::Relaxed),
        c[1].load(Ordering::Relaxed),
        c[2].load(Ordering::Relaxed),
    )
}

fn workload_line(call: &WorkloadCall) -> String {
    serde_json::json!({
        "time": vigil_policy::rfc3339_now(),
        "api": "workload",
        "endpoint": call.endpoint.as_str(),
        "resource": call.resource,
        "decision": call.outcome.as_str(),
        "status": call.status,
        "reason": call.reason,
    })
    .to_string()
}

fn audit_line(rec: &AuditRecord) -> String {
    serde_json::json!({
        // Stamped by the writer: formatting a time is kept off the request path.
        "time": vigil_policy::rfc3339_now(),
        "endpoint": rec.endpoint.request,
        "decision": rec.verdict.outcome.as_str(),
        "by": rec.verdict.by.as_str(),
        "reason": verdict_reason(rec.policy.as_deref(), rec.endpoint, &rec.verdict),
        "policy_source": rec.policy.as_ref().map(|p| p.source.origin.as_str()),
        "policy_version": rec.policy.as_ref().and_then(|p| p.engine.version()),
        "policy_digest": rec.policy.as_ref().map(|p| p.engine.digest()),
    })
    .to_string()
}
