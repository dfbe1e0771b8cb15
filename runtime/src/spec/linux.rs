//! The spec's `Linux` section: namespaces that keep the pod apart from the guest, device nodes
//! and device-cgroup rules only for devices this pod may use, the default masked and read-only
//! paths, and only namespaced sysctls.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Map, Value};
use vigil_protos::oci;

use super::{resources_json, SpecContext};
use crate::error::{Result, RuntimeError};

pub use vigil_guest::devices::DeviceNum;

const fn chr(major: i64, minor: i64) -> DeviceNum {
    DeviceNum {
        kind: 'c',
        major,
        minor,
    }
}

/// What every container gets (runc's and libcontainer's default devices, and /dev/console and
/// /dev/ptmx); a spec may name these in `Devices` and allow them in the device cgroup.
pub(crate) const STANDARD_DEVICES: [(&str, DeviceNum); 8] = [
    ("/dev/null", chr(1, 3)),
    ("/dev/zero", chr(1, 5)),
    ("/dev/full", chr(1, 7)),
    ("/dev/random", chr(1, 8)),
    ("/dev/urandom", chr(1, 9)),
    ("/dev/tty", chr(5, 0)),
    ("/dev/console", chr(5, 1)),
    ("/dev/ptmx", chr(5, 2)),
];
/// Pseudo-terminal slaves (/dev/pts/N): every minor.
const PTS_MAJOR: i64 = 136;

/// Guest devices no container gets, whatever the configuration says: the guest's memory and
/// I/O ports, and the TEE's own devices (attestation reports with any report data; a vTPM's
/// quotes). configfs (TDX's and SEV's report interface) is refused as a mount type.
pub const FORBIDDEN_DEVICES: [&str; 9] = [
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
    "/dev/sev-guest",
    "/dev/sev",
    "/dev/tdx_guest",
    "/dev/tdx-guest",
    "/dev/tpm0",
    "/dev/tpmrm0",
];
const MEMORY_DEVICES: [DeviceNum; 3] = [chr(1, 1), chr(1, 2), chr(1, 4)];

fn is_forbidden_name(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    FORBIDDEN_DEVICES.iter().any(|f| Path::new(f) == path)
        || name.starts_with("tpm")
        || name.starts_with("tdx")
        || name.starts_with("sev")
}

/// Whether `path` may be listed in `[sandbox] devices`: an absolute path under /dev, not one
/// of the [`FORBIDDEN_DEVICES`] (nor another TPM, TDX or SEV device).
pub fn check_device_path(path: &Path) -> std::result::Result<(), String> {
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !path.starts_with("/dev") || path == Path::new("/dev") || !plain {
        return Err(format!(
            "{} is not a device path under /dev",
            path.display()
        ));
    }
    if is_forbidden_name(path) {
        return Err(format!(
            "{} is the guest's memory, its I/O ports or a TEE device: never given to containers",
            path.display()
        ));
    }
    Ok(())
}

fn device_num(path: &Path) -> Option<DeviceNum> {
    vigil_guest::devices::device_number(path).ok().flatten()
}

/// The device numbers behind the forbidden names, as present in this guest now.
fn forbidden_nums() -> Vec<DeviceNum> {
    let mut v: Vec<DeviceNum> = MEMORY_DEVICES.to_vec();
    v.extend(
        FORBIDDEN_DEVICES
            .iter()
            .filter_map(|p| device_num(Path::new(p))),
    );
    v
}

/// Whether a device node is one no container may have: a forbidden name, or the number of
/// a forbidden device (whatever the node is called).
pub(crate) fn is_forbidden(node: &Path, num: DeviceNum) -> bool {
    is_forbidden_name(node) || forbidden_nums().contains(&num)
}

/// The devices `[sandbox] devices` names that exist now (hot-plugged ones appear later), minus
/// any that turn out to be a forbidden device under another name.
pub(crate) fn configured_devices(paths: &[PathBuf]) -> Vec<DeviceNum> {
    let forbidden = forbidden_nums();
    paths
        .iter()
        .filter_map(|p| device_num(p))
        .filter(|d| !forbidden.contains(d))
        .collect()
}

fn allowed(ctx: &SpecContext, d: DeviceNum) -> bool {
    STANDARD_DEVICES.iter().any(|(_, s)| *s == d) || ctx.limits.devices.contains(&d)
}

fn device_kind(t: &str) -> Option<char> {
    match t {
        "c" | "u" => Some('c'),
        "b" => Some('b'),
        "p" => Some('p'),
        _ => None,
    }
}

/// `Linux.Devices`: nodes made in the container's /dev. Each one is a standard device or one
/// the configuration allows; the accepted ones are also allowed in the device cgroup.
fn devices_json(list: &[oci::LinuxDevice], ctx: &SpecContext) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut nodes = Vec::new();
    let mut allows = Vec::new();
    for (i, d) in list.iter().enumerate() {
        let field = format!("OCI.Linux.Devices[{i}]");
        let path = Path::new(&d.Path);
        if !path.starts_with("/dev")
            || path == Path::new("/dev")
            || path.components().any(|c| c == Component::ParentDir)
        {
            return Err(RuntimeError::invalid(
                format!("{field}.Path"),
                format!("{:?} is not a path under /dev", d.Path),
            ));
        }
        let kind = device_kind(&d.Type).ok_or_else(|| {
            RuntimeError::invalid(
                format!("{field}.Type"),
                format!("{:?} is not c, b, u or p", d.Type),
            )
        })?;
        if kind != 'p' {
            let num = DeviceNum {
                kind,
                major: d.Major,
                minor: d.Minor,
            };
            if !allowed(ctx, num) || forbidden_nums().contains(&num) {
                return Err(RuntimeError::invalid(
                    field,
                    format!(
                        "{kind} {}:{} ({}) is not a device this pod may use: only the standard \
                         devices (null, zero, full, random, urandom, tty, console, ptmx), \
                         those in [sandbox] devices and those the request's devices hot-plug",
                        d.Major, d.Minor, d.Path
                    ),
                ));
            }
            allows.push(json!({"allow": true, "type": kind.to_string(), "major": d.Major, "minor": d.Minor, "access": "rwm"}));
        }
        nodes.push(json!({
            "path": d.Path, "type": d.Type, "major": d.Major, "minor": d.Minor,
            "fileMode": d.FileMode, "uid": d.UID, "gid": d.GID,
        }));
    }
    Ok((nodes, allows))
}

/// One device-cgroup rule as the runtime applies it: `None` is a wildcard. A major of 0 or
/// less is a wildcard (no device has major 0; Kata sends -1, Go's zero value is 0), and so is
/// a minor below 0, or 0 with a wildcard major.
pub(crate) fn cgroup_rule(d: &oci::LinuxDeviceCgroup) -> (Option<char>, Option<i64>, Option<i64>) {
    let kind = match d.Type.as_str() {
        "" | "a" => None,
        t => device_kind(t),
    };
    let major = (d.Major > 0).then_some(d.Major);
    let minor = (d.Minor > 0 || (d.Minor == 0 && major.is_some())).then_some(d.Minor);
    (kind, major, minor)
}

pub(crate) fn rule_json(
    allow: bool,
    kind: Option<char>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Value {
    let mut v = json!({"allow": allow, "access": access, "type": kind.map_or("a".to_string(), |k| k.to_string())});
    if let Some(m) = major {
        v["major"] = json!(m);
    }
    if let Some(m) = minor {
        v["minor"] = json!(m);
    }
    v
}

/// `Linux.Resources.Devices`: deny rules pass; an allow rule must be for a standard or
/// configured device, or only allow creating nodes (`m`), unless `allow_privileged`. The
/// result starts by denying everything and ends by denying the forbidden devices (also for
/// privileged pods), with the standard devices allowed in between.
fn cgroup_rules(
    list: &[oci::LinuxDeviceCgroup],
    node_allows: Vec<Value>,
    ctx: &SpecContext,
) -> Result<Vec<Value>> {
    let mut rules = vec![rule_json(false, None, None, None, "rwm")];
    for (i, d) in list.iter().enumerate() {
        let field = format!("OCI.Linux.Resources.Devices[{i}]");
        let access = if d.Access.is_empty() {
            "rwm"
        } else {
            d.Access.as_str()
        };
        if !access.chars().all(|c| "rwm".contains(c)) {
            return Err(RuntimeError::invalid(
                format!("{field}.Access"),
                format!("{access:?} is not made of r, w and m"),
            ));
        }
        let (kind, major, minor) = cgroup_rule(d);
        if !d.Type.is_empty() && d.Type != "a" && !matches!(kind, Some('c' | 'b')) {
            return Err(RuntimeError::invalid(
                format!("{field}.Type"),
                format!("{:?} is not a, c, b or u", d.Type),
            ));
        }
        if d.Allow && !ctx.limits.allow_privileged {
            let ok = match (kind, major, minor) {
                _ if access == "m" => true,
                (Some('c'), Some(PTS_MAJOR), None) => true,
                (Some(k), Some(ma), Some(mi)) => allowed(
                    ctx,
                    DeviceNum {
                        kind: k,
                        major: ma,
                        minor: mi,
                    },
                ),
                _ => false,
            };
            if !ok {
                let show = |v: Option<i64>| v.map_or("*".to_string(), |n| n.to_string());
                return Err(RuntimeError::invalid(
                    field,
                    format!(
                        "allowing {} {}:{} {access} opens devices this pod may not use: only the \
                         standard devices, those in [sandbox] devices and the request's \
                         hot-plugged devices (everything only with \
                         [sandbox] allow_privileged)",
                        kind.map_or("a".to_string(), |k| k.to_string()),
                        show(major),
                        show(minor)
                    ),
                ));
            }
        }
        rules.push(rule_json(d.Allow, kind, major, minor, access));
    }
    rules.extend(node_allows);
    for (_, d) in STANDARD_DEVICES {
        rules.push(rule_json(
            true,
            Some(d.kind),
            Some(d.major),
            Some(d.minor),
            "rwm",
        ));
    }
    rules.push(rule_json(true, Some('c'), Some(PTS_MAJOR), None, "rwm"));
    rules.push(rule_json(true, Some('c'), None, None, "m"));
    rules.push(rule_json(true, Some('b'), None, None, "m"));
    for d in forbidden_nums() {
        rules.push(rule_json(
            false,
            Some(d.kind),
            Some(d.major),
            Some(d.minor),
            "rwm",
        ));
    }
    Ok(rules)
}

/// What containerd masks and makes read-only in every non-privileged container.
const DEFAULT_MASKED: [&str; 13] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
    "/sys/kernel/security",
];
const DEFAULT_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn with_defaults(given: &[String], defaults: &[&str], privileged: bool) -> Vec<String> {
    let mut out = given.to_vec();
    if !privileged {
        for d in defaults {
            if !out.iter().any(|g| g == d) {
                out.push(d.to_string());
            }
        }
    }
    out
}

pub(crate) fn linux_json(l: &oci::Linux, ctx: &SpecContext) -> Result<Value> {
    let mut m = Map::new();
    let ids = |v: &[oci::LinuxIDMapping]| -> Vec<Value> {
        v.iter()
            .map(|i| json!({"hostID": i.HostID, "containerID": i.ContainerID, "size": i.Size}))
            .collect()
    };
    if !l.UIDMappings.is_empty() {
        m.insert("uidMappings".into(), Value::Array(ids(&l.UIDMappings)));
    }
    if !l.GIDMappings.is_empty() {
        m.insert("gidMappings".into(), Value::Array(ids(&l.GIDMappings)));
    }
    let namespaces = namespaces_json(&l.Namespaces, ctx)?;
    let own_net = namespaces
        .iter()
        .any(|n| n["type"] == "network" && n.get("path").is_none());
    let user_ns = namespaces.iter().any(|n| n["type"] == "user");
    if !l.Sysctl.is_empty() {
        check_sysctls(&l.Sysctl, own_net, user_ns)?;
        m.insert("sysctl".into(), json!(l.Sysctl));
    }
    let (nodes, node_allows) = devices_json(&l.Devices, ctx)?;
    let spec_rules = l
        .Resources
        .as_ref()
        .map(|r| r.Devices.as_slice())
        .unwrap_or(&[]);
    let rules = cgroup_rules(spec_rules, node_allows, ctx)?;
    let mut resources = l
        .Resources
        .as_ref()
        .map(resources_json)
        .unwrap_or_else(|| json!({}));
    resources["devices"] = Value::Array(rules);
    m.insert("resources".into(), resources);
    m.insert("cgroupsPath".into(), json!(ctx.cgroups_path));
    m.insert("namespaces".into(), Value::Array(namespaces));
    if !nodes.is_empty() {
        m.insert("devices".into(), Value::Array(nodes));
    }
    if let Some(s) = l.Seccomp.as_ref() {
        m.insert("seccomp".into(), super::seccomp_json(s));
    }
    if !l.RootfsPropagation.is_empty() {
        if l.RootfsPropagation.contains("shared") && !ctx.limits.allow_privileged {
            return Err(RuntimeError::invalid(
                "OCI.Linux.RootfsPropagation",
                format!(
                    "{:?} would let mounts made in the container reach the guest; allowed only \
                     with [sandbox] allow_privileged",
                    l.RootfsPropagation
                ),
            ));
        }
        m.insert("rootfsPropagation".into(), json!(l.RootfsPropagation));
    }
    let privileged = ctx.limits.allow_privileged;
    m.insert(
        "maskedPaths".into(),
        json!(with_defaults(&l.MaskedPaths, &DEFAULT_MASKED, privileged)),
    );
    m.insert(
        "readonlyPaths".into(),
        json!(with_defaults(
            &l.ReadonlyPaths,
            &DEFAULT_READONLY,
            privileged
        )),
    );
    if !l.MountLabel.is_empty() {
        m.insert("mountLabel".into(), json!(l.MountLabel));
    }
    Ok(Value::Object(m))
}

/// Only sysctls that stay inside the pod's namespaces: IPC ones (the IPC namespace is the
/// pod's), kernel.domainname (UTS), user.* with a user namespace, net.* with a
/// private network namespace. Others (kernel.core_pattern, vm.*, net.* in the guest's network
/// namespace, ...) would change the guest itself.
fn check_sysctls(
    sysctls: &std::collections::HashMap<String, String>,
    own_net: bool,
    user_ns: bool,
) -> Result<()> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let sorted: BTreeMap<&String, &String> = sysctls.iter().collect();
    for key in sorted.keys() {
        let k = key.replace('/', ".");
        let ok = IPC.contains(&k.as_str())
            || k.starts_with("fs.mqueue.")
            || k == "kernel.domainname"
            || (k.starts_with("user.") && user_ns)
            || (k.starts_with("net.") && own_net);
        if !ok {
            return Err(RuntimeError::invalid(
                format!("OCI.Linux.Sysctl[{key}]"),
                format!(
                    "{key} is not confined to the container's own namespaces{}",
                    if k.starts_with("net.") {
                        " (the pod shares the guest's network namespace)"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// The OCI name of a namespace type: Kata's runtimes send `net` and `mnt`, OCI says
/// `network` and `mount`; both are accepted.
fn namespace_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "pid" => "pid",
        "net" | "network" => "network",
        "mnt" | "mount" => "mount",
        "ipc" => "ipc",
        "uts" => "uts",
        "user" => "user",
        "cgroup" => "cgroup",
        "time" => "time",
        _ => return None,
    })
}

/// Namespaces. The pid, mount, ipc and uts namespaces are always there (added when the spec
/// leaves them out, as Kata's runtime leaves out pid): the container's own, or the sandbox's
/// where it has one (the pod's IPC and UTS namespaces always; its PID namespace with
/// `sandbox_pidns`). A path may name only such a sandbox namespace, never the guest's
/// (`/proc/1/ns/...`). A network namespace path is dropped: the pod uses the guest's network
/// namespace, as in Kata.
fn namespaces_json(list: &[oci::LinuxNamespace], ctx: &SpecContext) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, n) in list.iter().enumerate() {
        let field = format!("OCI.Linux.Namespaces[{i}]");
        let kind = namespace_type(&n.Type).ok_or_else(|| {
            RuntimeError::invalid(
                format!("{field}.Type"),
                format!("unknown namespace type {:?}", n.Type),
            )
        })?;
        if !seen.insert(kind) {
            return Err(RuntimeError::invalid(
                format!("{field}.Type"),
                format!("{:?} listed twice", n.Type),
            ));
        }
        if kind == "network" && !n.Path.is_empty() {
            continue;
        }
        let shared = ctx.namespaces.get(kind);
        if !n.Path.is_empty() {
            let names_it =
                shared.is_some_and(|s| Path::new(&n.Path).components().eq(s.components()));
            if !names_it {
                return Err(RuntimeError::invalid(
                    format!("{field}.Path"),
                    format!(
                        "joining the {kind} namespace {:?} is not allowed: only the sandbox's own \
                         namespaces may be joined",
                        n.Path
                    ),
                ));
            }
        }
        out.push(match shared {
            Some(p) => json!({"type": kind, "path": p}),
            None => json!({"type": kind}),
        });
    }
    for kind in ["pid", "mount", "ipc", "uts"] {
        if !seen.contains(kind) {
            out.push(match ctx.namespaces.get(kind) {
                Some(p) => json!({"type": kind, "path": p}),
                None => json!({"type": kind}),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_device_paths_never_name_the_tee_or_memory() {
        assert!(check_device_path(Path::new("/dev/fuse")).is_ok());
        assert!(check_device_path(Path::new("/dev/net/tun")).is_ok());
        for bad in [
            "/dev/mem",
            "/dev/kmem",
            "/dev/port",
            "/dev/sev-guest",
            "/dev/tdx_guest",
            "/dev/tpm0",
            "/dev/tpmrm1",
            "/etc/passwd",
            "/dev",
            "/dev/../etc",
            "dev/fuse",
        ] {
            assert!(check_device_path(Path::new(bad)).is_err(), "{bad}");
        }
        // Present devices resolve to numbers; missing ones are skipped.
        let found = configured_devices(&[
            PathBuf::from("/dev/null"),
            PathBuf::from("/dev/vigil-missing"),
        ]);
        assert_eq!(found, [chr(1, 3)]);
        // A configured name that is really /dev/mem is dropped by number.
        let t = tempfile::tempdir().unwrap();
        let alias = t.path().join("mem-alias");
        if nix::sys::stat::mknod(
            &alias,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            libc::makedev(1, 1),
        )
        .is_ok()
        {
            assert!(configured_devices(&[alias]).is_empty());
        }
    }

    #[test]
    fn wildcards_are_read_as_the_runtime_applies_them() {
        let r = |t: &str, major, minor| oci::LinuxDeviceCgroup {
            Type: t.into(),
            Major: major,
            Minor: minor,
            ..Default::default()
        };
        assert_eq!(cgroup_rule(&r("", 0, 0)), (None, None, None));
        assert_eq!(cgroup_rule(&r("c", -1, -1)), (Some('c'), None, None));
        assert_eq!(cgroup_rule(&r("c", 5, 0)), (Some('c'), Some(5), Some(0)));
        assert_eq!(cgroup_rule(&r("c", 136, -1)), (Some('c'), Some(136), None));
        assert_eq!(cgroup_rule(&r("b", 0, 3)), (Some('b'), None, Some(3)));
    }
}
