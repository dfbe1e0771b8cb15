//! GetMetrics: the gate's counters and the agent process's own figures, in the Prometheus
//! text exposition format.

use std::fmt::Write as _;
use std::time::Instant;

use crate::gate::Gate;

/// Renders every metric the agent exposes.
pub fn render(gate: &Gate, started: Instant, images: Option<&vigil_image::ImageService>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    gate.decision_log().render_prometheus(&mut out);
    if let Some(images) = images {
        images.render_prometheus(&mut out);
    }
    let policy = gate.policy();
    gauge(
        &mut out,
        "vigil_policy_loaded",
        "1 when an agent policy is in force.",
        u64::from(policy.is_some()) as f64,
    );
    if let Some(p) = &policy {
        let _ = writeln!(
            out,
            "# HELP vigil_policy_source Where the policy in force came from (kbs, initdata-fallback, initdata, file, set-policy).\n# TYPE vigil_policy_source gauge\nvigil_policy_source{{source=\"{}\"}} 1",
            p.source.origin.as_str()
        );
    }
    if let Some(v) = policy.as_ref().and_then(|p| p.engine.version()) {
        gauge(
            &mut out,
            "vigil_policy_version",
            "Version of the signed policy in force.",
            v as f64,
        );
    }
    gauge(
        &mut out,
        "vigil_uptime_seconds",
        "Seconds since the agent started.",
        started.elapsed().as_secs_f64(),
    );
    process_metrics(&mut out);
    out
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// Standard process metrics from /proc/self; a figure that cannot be read is left out
/// rather than reported as zero.
fn process_metrics(out: &mut String) {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let fields: Vec<f64> = statm
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if fields.len() >= 2 {
            gauge(
                out,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                fields[0] * page,
            );
            gauge(
                out,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                fields[1] * page,
            );
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(u), Some(s)) = (f.get(11), f.get(12)) {
                if let (Ok(u), Ok(s)) = (u.parse::<f64>(), s.parse::<f64>()) {
                    let _ = writeln!(
                        out,
                        "# HELP process_cpu_seconds_total Total user and system CPU time in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
                        (u + s) / ticks
                    );
                }
            }
            if let Some(threads) = f.get(17).and_then(|t| t.parse::<f64>().ok()) {
                gauge(out, "process_threads", "Number of OS threads.", threads);
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
}
