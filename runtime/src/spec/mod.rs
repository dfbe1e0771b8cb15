//! From the agent API's protobuf OCI spec to the OCI runtime spec the runtime library runs,
//! refusing on the way every spec that would reach outside the sandbox.
//!
//! The conversion builds the OCI JSON document and lets `oci-spec` parse it, so the runtime
//! library sees exactly what a `config.json` written by hand would give it. Field names in
//! errors are the request's (`OCI.Mounts[1].source`), so the host can see what to fix.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Map, Value};
use vigil_protos::oci;

use crate::error::{Result, RuntimeError};

/// What the sandbox decides about a container, whatever its spec says.
#[derive(Debug, Clone)]
pub struct SpecContext<'a> {
    /// The container's bundle directory (a relative `Root.Path` is relative to it).
    pub bundle: &'a Path,
    /// The sandbox's run directory: the rootfs and every bind-mount source must be inside it.
    pub sandbox_dir: &'a Path,
    /// Whether OCI hooks may run (they run as root outside the container).
    pub allow_hooks: bool,
    /// The cgroup path the agent chose for the container (the host's is not used).
    pub cgroups_path: String,
    /// The sandbox hostname, used when the spec has none.
    pub hostname: &'a str,
    /// A PID namespace to join instead of creating one (the sandbox's shared one).
    pub pid_namespace: Option<PathBuf>,
}

/// Checks `spec` and converts it. Every refusal is an `InvalidArgument` naming the field.
pub fn container_spec(spec: &oci::Spec, ctx: &SpecContext) -> Result<oci_spec::runtime::Spec> {
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
    doc.insert("process".into(), process_json(process, "OCI.Process")?);
    doc.insert("root".into(), root_json(spec, ctx)?);
    let linux = spec.Linux.as_ref().cloned().unwrap_or_default();
    // A hostname needs the container's own UTS namespace (else it would rename the guest).
    let own_uts = linux.Namespaces.is_empty()
        || linux
            .Namespaces
            .iter()
            .any(|n| n.Type == "uts" && n.Path.is_empty());
    let hostname = if spec.Hostname.is_empty() {
        ctx.hostname
    } else {
        &spec.Hostname
    };
    if !hostname.is_empty() && own_uts {
        doc.insert("hostname".into(), json!(hostname));
    }
    doc.insert("mounts".into(), mounts_json(&spec.Mounts, ctx)?);
    if let Some(hooks) = spec.Hooks.as_ref() {
        // All six OCI hook kinds count, so that a spec with only the later three is refused too.
        let later =
            hooks.CreateRuntime.len() + hooks.CreateContainer.len() + hooks.StartContainer.len();
        let count = hooks.Prestart.len() + hooks.Poststart.len() + hooks.Poststop.len() + later;
        if count > 0 {
            if !ctx.allow_hooks {
                return Err(RuntimeError::invalid(
                    "OCI.Hooks",
                    "OCI hooks run as root outside the container and are not allowed by the agent configuration",
                ));
            }
            if later > 0 {
                return Err(RuntimeError::invalid(
                    "OCI.Hooks",
                    "createRuntime, createContainer and startContainer hooks are not supported yet",
                ));
            }
            doc.insert("hooks".into(), hooks_json(hooks));
        }
    }
    if !spec.Annotations.is_empty() {
        doc.insert("annotations".into(), json!(spec.Annotations));
    }
    doc.insert("linux".into(), linux_json(&linux, ctx)?);
    serde_json::from_value(Value::Object(doc))
        .map_err(|e| RuntimeError::invalid("OCI", format!("not a valid OCI runtime spec: {e}")))
}

/// Converts the process of an `ExecProcess` request.
pub fn exec_process(process: &oci::Process) -> Result<oci_spec::runtime::Process> {
    serde_json::from_value(process_json(process, "process")?)
        .map_err(|e| RuntimeError::invalid("process", format!("not a valid OCI process: {e}")))
}

fn process_json(p: &oci::Process, field: &str) -> Result<Value> {
    if p.Args.is_empty() || p.Args[0].is_empty() {
        return Err(RuntimeError::invalid(
            format!("{field}.Args"),
            "empty: nothing to run",
        ));
    }
    if !p.Cwd.is_empty() && !p.Cwd.starts_with('/') {
        return Err(RuntimeError::invalid(
            format!("{field}.Cwd"),
            format!("{:?} is not absolute", p.Cwd),
        ));
    }
    let mut m = Map::new();
    // The agent makes the terminal itself (see youki.rs), so the runtime library is told
    // there is none; `Terminal` and `ConsoleSize` are honoured by the sandbox.
    m.insert("terminal".into(), json!(false));
    let user = p.User.as_ref().cloned().unwrap_or_default();
    let mut u = json!({"uid": user.UID, "gid": user.GID});
    if !user.AdditionalGids.is_empty() {
        u["additionalGids"] = json!(user.AdditionalGids);
    }
    if !user.Username.is_empty() {
        u["username"] = json!(user.Username);
    }
    m.insert("user".into(), u);
    m.insert("args".into(), json!(p.Args));
    m.insert("env".into(), json!(p.Env));
    m.insert(
        "cwd".into(),
        json!(if p.Cwd.is_empty() { "/" } else { &p.Cwd }),
    );
    if let Some(caps) = p.Capabilities.as_ref() {
        m.insert(
            "capabilities".into(),
            json!({
                "bounding": caps.Bounding, "effective": caps.Effective,
                "inheritable": caps.Inheritable, "permitted": caps.Permitted,
                "ambient": caps.Ambient,
            }),
        );
    }
    if !p.Rlimits.is_empty() {
        let limits: Vec<Value> = p
            .Rlimits
            .iter()
            .map(|r| json!({"type": r.Type, "hard": r.Hard, "soft": r.Soft}))
            .collect();
        m.insert("rlimits".into(), Value::Array(limits));
    }
    m.insert("noNewPrivileges".into(), json!(p.NoNewPrivileges));
    if !p.ApparmorProfile.is_empty() {
        m.insert("apparmorProfile".into(), json!(p.ApparmorProfile));
    }
    if p.OOMScoreAdj != 0 {
        let adj = i32::try_from(p.OOMScoreAdj)
            .ok()
            .filter(|a| (-1000..=1000).contains(a))
            .ok_or_else(|| {
                RuntimeError::invalid(
                    format!("{field}.OOMScoreAdj"),
                    format!("{} is outside -1000..=1000", p.OOMScoreAdj),
                )
            })?;
        m.insert("oomScoreAdj".into(), json!(adj));
    }
    if !p.SelinuxLabel.is_empty() {
        m.insert("selinuxLabel".into(), json!(p.SelinuxLabel));
    }
    Ok(Value::Object(m))
}

/// The rootfs: relative to the bundle, or absolute inside the sandbox directory.
fn root_json(spec: &oci::Spec, ctx: &SpecContext) -> Result<Value> {
    let root = spec.Root.as_ref().cloned().unwrap_or_default();
    let given = if root.Path.is_empty() {
        "rootfs"
    } else {
        root.Path.as_str()
    };
    let path = confined_path(given, ctx.bundle, ctx.sandbox_dir, "OCI.Root.Path")?;
    Ok(json!({"path": path, "readonly": root.Readonly}))
}

/// Resolves `given` (relative to `base`, or absolute) and requires it to stay inside `jail`:
/// no `..` anywhere, and after resolving symlinks still under `jail`.
pub(crate) fn confined_path(given: &str, base: &Path, jail: &Path, field: &str) -> Result<PathBuf> {
    let p = Path::new(given);
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(RuntimeError::invalid(
            field,
            format!("{given:?} contains \"..\""),
        ));
    }
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    if !joined.starts_with(jail) {
        return Err(RuntimeError::invalid(
            field,
            format!(
                "{given:?} is outside the sandbox directory {}",
                jail.display()
            ),
        ));
    }
    // If it exists, where it really leads must also be inside (a symlink on the way could
    // point anywhere).
    if let Ok(real) = joined.canonicalize() {
        let real_jail = jail.canonicalize().unwrap_or_else(|_| jail.to_path_buf());
        if !real.starts_with(&real_jail) {
            return Err(RuntimeError::invalid(
                field,
                format!(
                    "{given:?} resolves to {} outside the sandbox",
                    real.display()
                ),
            ));
        }
    }
    Ok(joined)
}

fn is_bind(m: &oci::Mount) -> bool {
    m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind")
}

fn mounts_json(mounts: &[oci::Mount], ctx: &SpecContext) -> Result<Value> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.iter().enumerate() {
        let dest_field = format!("OCI.Mounts[{i}].destination");
        let dest = Path::new(&m.destination);
        if !dest.is_absolute() {
            return Err(RuntimeError::invalid(
                dest_field,
                format!("{:?} is not absolute", m.destination),
            ));
        }
        if dest.components().any(|c| c == Component::ParentDir) {
            return Err(RuntimeError::invalid(
                dest_field,
                format!("{:?} contains \"..\"", m.destination),
            ));
        }
        // Compare normalised destinations: "/a/b/" and "/a//b" are the same place.
        let normal: PathBuf = dest.components().collect();
        if !seen.insert(normal) {
            return Err(RuntimeError::invalid(
                dest_field,
                format!("{:?} is mounted twice", m.destination),
            ));
        }
        let src_field = format!("OCI.Mounts[{i}].source");
        let source = if is_bind(m) {
            if !Path::new(&m.source).is_absolute() {
                return Err(RuntimeError::invalid(
                    src_field,
                    format!("bind source {:?} is not absolute", m.source),
                ));
            }
            confined_path(&m.source, ctx.sandbox_dir, ctx.sandbox_dir, &src_field)?
        } else {
            if Path::new(&m.source)
                .components()
                .any(|c| c == Component::ParentDir)
            {
                return Err(RuntimeError::invalid(
                    src_field,
                    format!("{:?} contains \"..\"", m.source),
                ));
            }
            PathBuf::from(&m.source)
        };
        let mut j = json!({"destination": m.destination, "options": m.options});
        if !m.type_.is_empty() {
            j["type"] = json!(m.type_);
        }
        if !m.source.is_empty() {
            j["source"] = json!(source);
        }
        out.push(j);
    }
    Ok(Value::Array(out))
}

fn hooks_json(h: &oci::Hooks) -> Value {
    let list = |hooks: &[oci::Hook]| -> Vec<Value> {
        hooks
            .iter()
            .map(|k| {
                let mut v = json!({"path": k.Path, "args": k.Args, "env": k.Env});
                if k.Timeout > 0 {
                    v["timeout"] = json!(k.Timeout);
                }
                v
            })
            .collect()
    };
    json!({"prestart": list(&h.Prestart), "poststart": list(&h.Poststart), "poststop": list(&h.Poststop)})
}

fn linux_json(l: &oci::Linux, ctx: &SpecContext) -> Result<Value> {
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
    if !l.Sysctl.is_empty() {
        m.insert("sysctl".into(), json!(l.Sysctl));
    }
    if let Some(r) = l.Resources.as_ref() {
        m.insert("resources".into(), resources_json(r));
    }
    m.insert("cgroupsPath".into(), json!(ctx.cgroups_path));
    m.insert("namespaces".into(), namespaces_json(&l.Namespaces, ctx)?);
    let mut devices = Vec::new();
    for (i, d) in l.Devices.iter().enumerate() {
        if !d.Path.starts_with("/dev/") || d.Path.contains("/../") {
            return Err(RuntimeError::invalid(
                format!("OCI.Linux.Devices[{i}].Path"),
                format!("{:?} is not a path under /dev", d.Path),
            ));
        }
        devices.push(json!({
            "path": d.Path, "type": d.Type, "major": d.Major, "minor": d.Minor,
            "fileMode": d.FileMode, "uid": d.UID, "gid": d.GID,
        }));
    }
    if !devices.is_empty() {
        m.insert("devices".into(), Value::Array(devices));
    }
    if let Some(s) = l.Seccomp.as_ref() {
        m.insert("seccomp".into(), seccomp_json(s));
    }
    if !l.RootfsPropagation.is_empty() {
        m.insert("rootfsPropagation".into(), json!(l.RootfsPropagation));
    }
    if !l.MaskedPaths.is_empty() {
        m.insert("maskedPaths".into(), json!(l.MaskedPaths));
    }
    if !l.ReadonlyPaths.is_empty() {
        m.insert("readonlyPaths".into(), json!(l.ReadonlyPaths));
    }
    if !l.MountLabel.is_empty() {
        m.insert("mountLabel".into(), json!(l.MountLabel));
    }
    Ok(Value::Object(m))
}

/// Namespaces: a path would join a namespace of the guest outside the sandbox, so paths are
/// refused, except the network one, which is dropped so the container uses the guest's network
/// (the pod network lives in the VM; Kata does the same). Without a spec list, a container gets
/// fresh pid, mount, ipc and uts namespaces.
fn namespaces_json(list: &[oci::LinuxNamespace], ctx: &SpecContext) -> Result<Value> {
    const KNOWN: [&str; 8] = [
        "pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time",
    ];
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let defaults = [("pid", ""), ("mount", ""), ("ipc", ""), ("uts", "")];
    let given: Vec<(&str, &str)> = if list.is_empty() {
        defaults.to_vec()
    } else {
        list.iter()
            .map(|n| (n.Type.as_str(), n.Path.as_str()))
            .collect()
    };
    for (i, (kind, path)) in given.into_iter().enumerate() {
        let field = format!("OCI.Linux.Namespaces[{i}]");
        if !KNOWN.contains(&kind) {
            return Err(RuntimeError::invalid(
                format!("{field}.Type"),
                format!("unknown namespace type {kind:?}"),
            ));
        }
        if !seen.insert(kind) {
            return Err(RuntimeError::invalid(
                format!("{field}.Type"),
                format!("{kind:?} listed twice"),
            ));
        }
        if kind == "network" && !path.is_empty() {
            continue;
        }
        if !path.is_empty() {
            return Err(RuntimeError::invalid(
                format!("{field}.Path"),
                format!("joining an existing {kind} namespace ({path:?}) is not allowed"),
            ));
        }
        match (kind, &ctx.pid_namespace) {
            ("pid", Some(shared)) => out.push(json!({"type": "pid", "path": shared})),
            _ => out.push(json!({"type": kind})),
        }
    }
    if !seen.contains("pid") {
        if let Some(shared) = &ctx.pid_namespace {
            out.push(json!({"type": "pid", "path": shared}));
        }
    }
    Ok(Value::Array(out))
}

/// Resources in OCI JSON (also used by `UpdateContainer`). Zero means "not set" in protobuf,
/// so zero values are left out rather than written as limits of zero.
pub fn resources_json(r: &oci::LinuxResources) -> Value {
    let mut m = Map::new();
    if !r.Devices.is_empty() {
        let devs: Vec<Value> = r
            .Devices
            .iter()
            .map(|d| {
                let mut v = json!({"allow": d.Allow, "access": d.Access});
                if !d.Type.is_empty() {
                    v["type"] = json!(d.Type);
                }
                // -1 is the proto's wildcard; OCI says "absent".
                if d.Major >= 0 && !(d.Major == 0 && d.Minor == 0 && d.Type.is_empty()) {
                    v["major"] = json!(d.Major);
                }
                if d.Minor >= 0 && !(d.Major == 0 && d.Minor == 0 && d.Type.is_empty()) {
                    v["minor"] = json!(d.Minor);
                }
                v
            })
            .collect();
        m.insert("devices".into(), Value::Array(devs));
    }
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

pub(crate) fn resources(r: &oci::LinuxResources) -> Result<oci_spec::runtime::LinuxResources> {
    serde_json::from_value(resources_json(r))
        .map_err(|e| RuntimeError::invalid("resources", format!("not valid OCI resources: {e}")))
}

fn seccomp_json(s: &oci::LinuxSeccomp) -> Value {
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
mod tests {
    use super::*;

    fn base() -> oci::Spec {
        oci::Spec {
            Process: Some(oci::Process {
                Args: vec!["/bin/sh".into()],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    fn field_of(spec: &oci::Spec, dir: &Path) -> String {
        let bundle = dir.join("containers/c");
        let ctx = SpecContext {
            bundle: &bundle,
            sandbox_dir: dir,
            allow_hooks: false,
            cgroups_path: "/vigil/c".into(),
            hostname: "h",
            pid_namespace: None,
        };
        match container_spec(spec, &ctx) {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn mount(dest: &str, src: &str, kind: &str) -> oci::Mount {
        oci::Mount {
            destination: dest.into(),
            source: src.into(),
            type_: kind.into(),
            options: vec!["rbind".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_spec_converts_with_the_agents_choices() {
        let dir = Path::new("/run/vigil/sandbox/s");
        let bundle = dir.join("containers/c");
        let mut s = base();
        s.Mounts.push(oci::Mount {
            destination: "/proc".into(),
            source: "proc".into(),
            type_: "proc".into(),
            ..Default::default()
        });
        s.Mounts
            .push(mount("/data", "/run/vigil/sandbox/s/shared/data", "bind"));
        let ctx = SpecContext {
            bundle: &bundle,
            sandbox_dir: dir,
            allow_hooks: false,
            cgroups_path: "/vigil/c".into(),
            hostname: "pod",
            pid_namespace: None,
        };
        let out = container_spec(&s, &ctx).unwrap();
        assert_eq!(out.hostname().as_deref(), Some("pod"));
        assert_eq!(out.root().as_ref().unwrap().path(), &bundle.join("rootfs"));
        let linux = out.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/vigil/c")));
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 4);
        assert_eq!(out.mounts().as_ref().unwrap().len(), 2);
    }

    #[test]
    fn no_hostname_without_an_own_uts_namespace() {
        let dir = Path::new("/run/vigil/sandbox/s");
        let bundle = dir.join("containers/c");
        let ctx = SpecContext {
            bundle: &bundle,
            sandbox_dir: dir,
            allow_hooks: false,
            cgroups_path: "/vigil/c".into(),
            hostname: "pod",
            pid_namespace: None,
        };
        let mut s = base();
        s.Linux = Some(oci::Linux {
            Namespaces: vec![oci::LinuxNamespace {
                Type: "mount".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .into();
        assert_eq!(container_spec(&s, &ctx).unwrap().hostname(), &None);
        s.Linux
            .as_mut()
            .unwrap()
            .Namespaces
            .push(oci::LinuxNamespace {
                Type: "uts".into(),
                ..Default::default()
            });
        assert_eq!(
            container_spec(&s, &ctx).unwrap().hostname().as_deref(),
            Some("pod")
        );
    }

    #[test]
    fn specs_that_escape_the_sandbox_are_refused_naming_the_field() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let mut s = base();
        s.Mounts.push(mount("/a", "relative/dir", "bind"));
        assert_eq!(field_of(&s, dir), "OCI.Mounts[0].source");

        let mut s = base();
        s.Mounts.push(mount(
            "/a",
            &format!("{}/shared/../../etc", dir.display()),
            "bind",
        ));
        assert_eq!(field_of(&s, dir), "OCI.Mounts[0].source");

        let mut s = base();
        s.Mounts.push(mount("/a", "/etc", "bind"));
        assert_eq!(field_of(&s, dir), "OCI.Mounts[0].source");

        let inside = dir.join("shared");
        std::fs::create_dir_all(&inside).unwrap();
        std::os::unix::fs::symlink("/etc", inside.join("link")).unwrap();
        let mut s = base();
        s.Mounts
            .push(mount("/a", &format!("{}/link", inside.display()), "bind"));
        assert_eq!(field_of(&s, dir), "OCI.Mounts[0].source");

        let mut s = base();
        s.Mounts
            .push(mount("/a", &format!("{}", inside.display()), "bind"));
        s.Mounts
            .push(mount("/a/", &format!("{}", inside.display()), "bind"));
        assert_eq!(field_of(&s, dir), "OCI.Mounts[1].destination");

        let mut s = base();
        s.Mounts.push(mount("relative", "tmpfs", "tmpfs"));
        assert_eq!(field_of(&s, dir), "OCI.Mounts[0].destination");

        let mut s = base();
        s.Hooks = Some(oci::Hooks {
            Prestart: vec![oci::Hook {
                Path: "/bin/true".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .into();
        assert_eq!(field_of(&s, dir), "OCI.Hooks");

        let mut s = base();
        s.Root = Some(oci::Root {
            Path: "/".into(),
            ..Default::default()
        })
        .into();
        assert_eq!(field_of(&s, dir), "OCI.Root.Path");

        let mut s = base();
        s.Root = Some(oci::Root {
            Path: "../../x".into(),
            ..Default::default()
        })
        .into();
        assert_eq!(field_of(&s, dir), "OCI.Root.Path");

        let mut s = base();
        s.Linux = Some(oci::Linux {
            Namespaces: vec![oci::LinuxNamespace {
                Type: "pid".into(),
                Path: "/proc/1/ns/pid".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .into();
        assert_eq!(field_of(&s, dir), "OCI.Linux.Namespaces[0].Path");

        let mut s = base();
        s.Process.as_mut().unwrap().Args.clear();
        assert_eq!(field_of(&s, dir), "OCI.Process.Args");

        let mut s = base();
        s.Process = protobuf::MessageField::none();
        assert_eq!(field_of(&s, dir), "OCI.Process");
    }

    /// Each of the six hook kinds alone is refused without `allow_hooks`; with it, the three
    /// not run yet (createRuntime, createContainer, startContainer) are refused, not dropped.
    #[test]
    fn every_hook_kind_is_refused_unless_it_can_run() {
        let dir = Path::new("/run/vigil/sandbox/s");
        let bundle = dir.join("containers/c");
        let hook = || {
            vec![oci::Hook {
                Path: "/bin/true".into(),
                ..Default::default()
            }]
        };
        type Set = fn(&mut oci::Hooks, Vec<oci::Hook>);
        let kinds: [(Set, bool); 6] = [
            (|h, v| h.Prestart = v, true),
            (|h, v| h.Poststart = v, true),
            (|h, v| h.Poststop = v, true),
            (|h, v| h.CreateRuntime = v, false),
            (|h, v| h.CreateContainer = v, false),
            (|h, v| h.StartContainer = v, false),
        ];
        for (i, (set, runs)) in kinds.into_iter().enumerate() {
            let mut s = base();
            let mut hooks = oci::Hooks::new();
            set(&mut hooks, hook());
            s.Hooks = Some(hooks).into();
            assert_eq!(field_of(&s, dir), "OCI.Hooks", "kind {i}");
            let ctx = SpecContext {
                bundle: &bundle,
                sandbox_dir: dir,
                allow_hooks: true,
                cgroups_path: "/vigil/c".into(),
                hostname: "h",
                pid_namespace: None,
            };
            match container_spec(&s, &ctx) {
                Ok(out) => assert!(runs && out.hooks().is_some(), "kind {i} accepted"),
                Err(RuntimeError::InvalidArgument { field, reason }) => {
                    assert!(!runs, "kind {i} refused: {reason}");
                    assert_eq!(field, "OCI.Hooks");
                    assert!(reason.contains("not supported yet"), "{reason}");
                }
                Err(e) => panic!("kind {i}: {e}"),
            }
        }
    }
}
