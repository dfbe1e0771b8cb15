//! `MemAgentMemcgSet` and `MemAgentCompactSet`: Kata's mem-agent settings.
//!
//! Kata's agent runs a mem-agent daemon (MGLRU aging and eviction per memory cgroup, and
//! PSI-driven compaction) and these RPCs tune its loops. vigil runs no such daemon: it applies
//! what the guest kernel itself provides and refuses, with FAILED_PRECONDITION naming the
//! field, every setting that only a user-space loop could honour. A request is checked in
//! full first, so nothing is half-applied.
//!
//! | setting | applied as |
//! |---|---|
//! | compact `disabled` | `vm.compaction_proactiveness` 0 (true) or the kernel default 20 (false): the kernel's own proactive compaction (5.9+) |
//! | memcg `swappiness_max` | `vm.swappiness` (0-200) |
//! | memcg `disabled = true` | nothing to do: no aging loop runs |
//! | everything else | refused |

use std::path::{Path, PathBuf};

use vigil_protos::agent::{MemAgentCompactConfig, MemAgentMemcgConfig};

use crate::error::{invalid, GuestError, Result};

/// The kernel's default `vm.compaction_proactiveness`.
const DEFAULT_PROACTIVENESS: u32 = 20;

/// Where the kernel's VM settings are (normally /proc/sys/vm).
#[derive(Debug, Clone)]
pub struct MemAgent {
    vm: PathBuf,
}

impl Default for MemAgent {
    fn default() -> Self {
        MemAgent::at(Path::new("/proc/sys/vm"))
    }
}

fn unsupported(rpc: &str, fields: &[&str]) -> Result<()> {
    if fields.is_empty() {
        return Ok(());
    }
    Err(GuestError::FailedPrecondition(format!(
        "{rpc}: {} cannot be applied: the guest kernel has no such setting and vigil runs no mem-agent loop",
        fields.join(", ")
    )))
}

impl MemAgent {
    pub fn at(vm: &Path) -> MemAgent {
        MemAgent {
            vm: vm.to_path_buf(),
        }
    }

    fn write(&self, name: &str, value: u32, field: &str) -> Result<()> {
        let path = self.vm.join(name);
        if !path.exists() {
            return Err(GuestError::FailedPrecondition(format!(
                "{field}: the guest kernel has no {}",
                path.display()
            )));
        }
        std::fs::write(&path, value.to_string()).map_err(|e| {
            GuestError::Internal(format!("writing {value} to {}: {e}", path.display()))
        })
    }

    /// `MemAgentMemcgSet`.
    pub fn memcg_set(&self, c: &MemAgentMemcgConfig) -> Result<()> {
        let mut refused = Vec::new();
        if c.disabled == Some(false) {
            refused.push("disabled = false (memcg aging)");
        }
        for (set, name) in [
            (c.swap.is_some(), "swap"),
            (c.period_secs.is_some(), "period_secs"),
            (
                c.period_psi_percent_limit.is_some(),
                "period_psi_percent_limit",
            ),
            (
                c.eviction_psi_percent_limit.is_some(),
                "eviction_psi_percent_limit",
            ),
            (
                c.eviction_run_aging_count_min.is_some(),
                "eviction_run_aging_count_min",
            ),
        ] {
            if set {
                refused.push(name);
            }
        }
        unsupported("MemAgentMemcgConfig", &refused)?;
        if let Some(s) = c.swappiness_max {
            if s > 200 {
                return Err(invalid("swappiness_max", format!("{s} is not in 0..=200")));
            }
            self.write("swappiness", s, "swappiness_max")?;
        }
        Ok(())
    }

    /// `MemAgentCompactSet`.
    pub fn compact_set(&self, c: &MemAgentCompactConfig) -> Result<()> {
        let mut refused = Vec::new();
        for (set, name) in [
            (c.period_secs.is_some(), "period_secs"),
            (
                c.period_psi_percent_limit.is_some(),
                "period_psi_percent_limit",
            ),
            (
                c.compact_psi_percent_limit.is_some(),
                "compact_psi_percent_limit",
            ),
            (c.compact_sec_max.is_some(), "compact_sec_max"),
            (c.compact_order.is_some(), "compact_order"),
            (c.compact_threshold.is_some(), "compact_threshold"),
            (c.compact_force_times.is_some(), "compact_force_times"),
        ] {
            if set {
                refused.push(name);
            }
        }
        unsupported("MemAgentCompactConfig", &refused)?;
        if let Some(disabled) = c.disabled {
            let value = if disabled { 0 } else { DEFAULT_PROACTIVENESS };
            self.write("compaction_proactiveness", value, "disabled")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_settings_are_applied_and_loop_settings_refused_by_name_before_anything_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("swappiness"), "60").unwrap();
        std::fs::write(dir.path().join("compaction_proactiveness"), "20").unwrap();
        let m = MemAgent::at(dir.path());
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();

        m.compact_set(&MemAgentCompactConfig {
            disabled: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(read("compaction_proactiveness"), "0");
        m.memcg_set(&MemAgentMemcgConfig {
            swappiness_max: Some(10),
            disabled: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(read("swappiness"), "10");

        let e = m
            .compact_set(&MemAgentCompactConfig {
                disabled: Some(false),
                compact_order: Some(9),
                period_secs: Some(60),
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            matches!(&e, GuestError::FailedPrecondition(m) if m.contains("period_secs, compact_order")),
            "{e}"
        );
        assert_eq!(read("compaction_proactiveness"), "0", "nothing applied");
        let e = m
            .memcg_set(&MemAgentMemcgConfig {
                swappiness_max: Some(1),
                swap: Some(true),
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            matches!(&e, GuestError::FailedPrecondition(m) if m.contains("swap")),
            "{e}"
        );
        assert_eq!(read("swappiness"), "10");
        let e = m
            .memcg_set(&MemAgentMemcgConfig {
                swappiness_max: Some(201),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().starts_with("swappiness_max"), "{e}");

        // A kernel without proactive compaction.
        std::fs::remove_file(dir.path().join("compaction_proactiveness")).unwrap();
        let e = m
            .compact_set(&MemAgentCompactConfig {
                disabled: Some(false),
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            matches!(&e, GuestError::FailedPrecondition(m) if m.contains("compaction_proactiveness")),
            "{e}"
        );
    }
}
