//! From the agent API's protobuf OCI spec to the OCI runtime spec the runtime library runs,
//! refusing on the way every spec that would reach outside the sandbox.
//!
//! The conversion builds the OCI JSON document and lets `oci-spec` parse it, so the runtime
//! library sees exactly what a `config.json` written by hand would give it. Field names in
//! errors are the request's (`OCI.Mounts[1].source`), so the host can see what to fix.

mod linux;
mod mounts;
mod process;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Map, Value};
use vigil_protos::oci;

use crate::error::{Result, RuntimeError};

pub use linux::{check_device_path, DeviceNum, FORBIDDEN_DEVICES};
pub(crate) use linux::{configured_devices, is_forbidden};
pub use process::{capability_name, DEFAULT_CAPABILITIES};

/// What the agent's configuration allows containers, whatever a spec asks.
#[derive(Debug, Clone)]
pub struct SpecLimits {
    /// The capability bounding set: no process gets a capability outside it.
    pub capabilities: Vec<String>,
    /// Whether privileged-style specs pass: device-cgroup wildcards, writable sysfs and cgroup
    /// mounts, no default masked paths, shared mount propagation.
    pub allow_privileged: bool,
    /// Guest devices (present now) that the container may be given, besides the standard set:
    /// `[sandbox] devices`, and the devices the host hot-plugged for this container.
    pub devices: Vec<DeviceNum>,
}

/// Where the paths a spec names are found: the sandbox confines and stages them, and says
/// which path the runtime library is to use instead.
pub(crate) trait Placement {
    /// The source of bind mount `given` (request field `field`).
    fn bind_source(&mut self, given: &str, field: &str) -> Result<PathBuf>;
    /// The rootfs `given` (`Root.Path`; relative to the bundle, or absolute).
    fn rootfs(&mut self, given: &str, field: &str) -> Result<PathBuf>;
}

/// What the sandbox decides about a container, whatever its spec says.
#[derive(Debug, Clone)]
pub(crate) struct SpecContext<'a> {
    /// Whether OCI hooks may run (most run as root in the guest's namespaces).
    pub allow_hooks: bool,
    /// The cgroup path the agent chose for the container (the host's is not used).
    pub cgroups_path: String,
    /// The sandbox hostname, used when the spec has none.
    pub hostname: &'a str,
    /// The sandbox's own namespaces this container joins, by OCI type (the pod's `ipc` and
    /// `uts`; `pid` with `sandbox_pidns`). A spec may name only these by path.
    pub namespaces: BTreeMap<&'static str, PathBuf>,
    pub limits: &'a SpecLimits,
}

/// Checks `spec` and converts it. Every refusal is an `InvalidArgument` naming the field.
pub(crate) fn container_spec(
    spec: &oci::Spec,
    ctx: &SpecContext,
    place: &mut dyn Placement,
) -> Result<oci_spec::runtime::Spec> {
    let process = spec
        .Process
        .as_ref()
        .ok_or_else(|| RuntimeError::invalid("OCI.Process", "missing"))?;
    let mut doc = Map::new();
    doc.insert(
        "ociVersion".into(),
        json!(if spec.Version.is_empty() {
            "1.0.2"
        } else {
            spec.Version.as_str()
        }),
    );
    doc.insert(
        "process".into(),
        process::process_json(process, "OCI.Process", &ctx.limits.capabilities)?,
    );
    if let Some(hooks) = spec.Hooks.as_ref() {
        // All six OCI hook kinds count, so that a spec with only the later three is refused too.
        if crate::hooks::count(hooks) > 0 {
            if !ctx.allow_hooks {
                return Err(RuntimeError::invalid(
                    "OCI.Hooks",
                    "OCI hooks run as root in the guest and are not allowed by the agent configuration",
                ));
            }
            doc.insert("hooks".into(), crate::hooks::spec_json(hooks)?);
        }
    }
    let linux = linux::linux_json(&spec.Linux.as_ref().cloned().unwrap_or_default(), ctx)?;
    // A hostname needs the container's own UTS namespace (else it would rename the guest).
    let own_uts = linux["namespaces"].as_array().is_some_and(|ns| {
        ns.iter()
            .any(|n| n["type"] == "uts" && n.get("path").is_none())
    });
    let hostname = if spec.Hostname.is_empty() {
        ctx.hostname
    } else {
        &spec.Hostname
    };
    if !hostname.is_empty() && own_uts {
        doc.insert("hostname".into(), json!(hostname));
    }
    doc.insert(
        "mounts".into(),
        mounts::mounts_json(&spec.Mounts, ctx, place)?,
    );
    // The rootfs last: everything cheaper to refuse has been checked before it is staged.
    let root = spec.Root.as_ref().cloned().unwrap_or_default();
    let given = if root.Path.is_empty() {
        "rootfs"
    } else {
        root.Path.as_str()
    };
    let path = place.rootfs(given, "OCI.Root.Path")?;
    doc.insert(
        "root".into(),
        json!({"path": path, "readonly": root.Readonly}),
    );
    if !spec.Annotations.is_empty() {
        doc.insert("annotations".into(), json!(spec.Annotations));
    }
    doc.insert("linux".into(), linux);
    serde_json::from_value(Value::Object(doc))
        .map_err(|e| RuntimeError::invalid("OCI", format!("not a valid OCI runtime spec: {e}")))
}

/// Converts the process of an `ExecProcess` request, its capabilities capped as a container's.
pub(crate) fn exec_process(
    process: &oci::Process,
    limits: &SpecLimits,
) -> Result<oci_spec::runtime::Process> {
    serde_json::from_value(process::process_json(
        process,
        "process",
        &limits.capabilities,
    )?)
    .map_err(|e| RuntimeError::invalid("process", format!("not a valid OCI process: {e}")))
}

/// Resources in OCI JSON, without device rules: those are the agent's, fixed when the
/// container is created (see `linux`); an `UpdateContainer` cannot change them. Zero means
/// "not set" in protobuf, so zero values are left out rather than written as limits of zero.
fn resources_json(r: &oci::LinuxResources) -> Value {
    let mut m = Map::new();
    if let Some(mem) = r.Memory.as_ref() {
        let mut v = Map::new();
        for (k, val) in [
            ("limit", mem.Limit),
            ("reservation", mem.Reservation),
            ("swap", mem.Swap),
            ("kernel", mem.Kernel),
            ("kernelTCP", mem.KernelTCP),
        ] {
            if val != 0 {
                v.insert(k.into(), json!(val));
            }
        }
        if mem.Swappiness != 0 {
            v.insert("swappiness".into(), json!(mem.Swappiness));
        }
        if mem.DisableOOMKiller {
            v.insert("disableOOMKiller".into(), json!(true));
        }
        m.insert("memory".into(), Value::Object(v));
    }
    if let Some(cpu) = r.CPU.as_ref() {
        let mut v = Map::new();
        if cpu.Shares != 0 {
            v.insert("shares".into(), json!(cpu.Shares));
        }
        if cpu.Quota != 0 {
            v.insert("quota".into(), json!(cpu.Quota));
        }
        if cpu.Period != 0 {
            v.insert("period".into(), json!(cpu.Period));
        }
        if cpu.RealtimeRuntime != 0 {
            v.insert("realtimeRuntime".into(), json!(cpu.RealtimeRuntime));
        }
        if cpu.RealtimePeriod != 0 {
            v.insert("realtimePeriod".into(), json!(cpu.RealtimePeriod));
        }
        if !cpu.Cpus.is_empty() {
            v.insert("cpus".into(), json!(cpu.Cpus));
        }
        if !cpu.Mems.is_empty() {
            v.insert("mems".into(), json!(cpu.Mems));
        }
        m.insert("cpu".into(), Value::Object(v));
    }
    if let Some(p) = r.Pids.as_ref() {
        m.insert("pids".into(), json!({"limit": p.Limit}));
    }
    if !r.HugepageLimits.is_empty() {
        let h: Vec<Value> = r
            .HugepageLimits
            .iter()
            .map(|h| json!({"pageSize": h.Pagesize, "limit": h.Limit}))
            .collect();
        m.insert("hugepageLimits".into(), Value::Array(h));
    }
    if let Some(b) = r.BlockIO.as_ref() {
        let mut v = Map::new();
        if b.Weight != 0 {
            v.insert("weight".into(), json!(b.Weight));
        }
        if b.LeafWeight != 0 {
            v.insert("leafWeight".into(), json!(b.LeafWeight));
        }
        m.insert("blockIO".into(), Value::Object(v));
    }
    Value::Object(m)
}

/// An `UpdateContainer`'s resources. Its device rules are ignored (Kata's runtime sends the
/// container's original ones back on every resize): the agent's stay in force.
pub(crate) fn resources(r: &oci::LinuxResources) -> Result<oci_spec::runtime::LinuxResources> {
    serde_json::from_value(resources_json(r))
        .map_err(|e| RuntimeError::invalid("resources", format!("not valid OCI resources: {e}")))
}

pub(crate) fn seccomp_json(s: &oci::LinuxSeccomp) -> Value {
    let syscalls: Vec<Value> = s
        .Syscalls
        .iter()
        .map(|c| {
            let mut v = json!({"names": c.Names, "action": c.Action});
            if let Some(vigil_protos::oci::linux_syscall::ErrnoRet::Errnoret(e)) = c.ErrnoRet {
                v["errnoRet"] = json!(e);
            }
            if !c.Args.is_empty() {
                v["args"] = Value::Array(
                    c.Args
                        .iter()
                        .map(|a| json!({"index": a.Index, "value": a.Value, "valueTwo": a.ValueTwo, "op": a.Op}))
                        .collect(),
                );
            }
            v
        })
        .collect();
    let mut v = json!({"defaultAction": s.DefaultAction, "syscalls": syscalls});
    if !s.Architectures.is_empty() {
        v["architectures"] = json!(s.Architectures);
    }
    if !s.Flags.is_empty() {
        v["flags"] = json!(s.Flags);
    }
    v
}

#[cfg(test)]
mod tests;
