//! The spec conversion's refusals and choices, each by the field it names.
use super::*;
use std::path::Path;

/// Accepts paths lexically beneath its roots; the sandbox's real placement opens and
/// stages them (tested with it).
struct Lexical {
    bundle: PathBuf,
    roots: Vec<PathBuf>,
}

impl Placement for Lexical {
    fn bind_source(&mut self, given: &str, field: &str) -> Result<PathBuf> {
        let p = Path::new(given);
        if self.roots.iter().any(|r| p.starts_with(r)) {
            Ok(p.to_path_buf())
        } else {
            Err(RuntimeError::invalid(field, "outside"))
        }
    }
    fn rootfs(&mut self, given: &str, field: &str) -> Result<PathBuf> {
        let p = self.bundle.join(given);
        if p.starts_with(&self.bundle) && !given.contains("..") {
            Ok(p)
        } else {
            Err(RuntimeError::invalid(field, "outside"))
        }
    }
}

fn limits() -> SpecLimits {
    SpecLimits {
        capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
        allow_privileged: false,
        devices: vec![DeviceNum {
            kind: 'c',
            major: 10,
            minor: 229,
        }],
    }
}

fn convert(
    spec: &oci::Spec,
    limits: &SpecLimits,
    pidns: Option<&str>,
) -> Result<oci_spec::runtime::Spec> {
    convert_with(spec, limits, pidns, false)
}

fn convert_with(
    spec: &oci::Spec,
    limits: &SpecLimits,
    pidns: Option<&str>,
    allow_hooks: bool,
) -> Result<oci_spec::runtime::Spec> {
    let ctx = SpecContext {
        allow_hooks,
        cgroups_path: "/vigil/c".into(),
        hostname: "pod",
        namespaces: pidns
            .map(|p| ("pid", PathBuf::from(p)))
            .into_iter()
            .collect(),
        limits,
    };
    let mut place = Lexical {
        bundle: PathBuf::from("/run/s/containers/c"),
        roots: vec![PathBuf::from("/run/s/shared")],
    };
    container_spec(spec, &ctx, &mut place)
}

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

fn refused(spec: &oci::Spec) -> String {
    refused_with(spec, &limits())
}

fn refused_with(spec: &oci::Spec, limits: &SpecLimits) -> String {
    match convert(spec, limits, None) {
        Err(RuntimeError::InvalidArgument { field, .. }) => field,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn mount(dest: &str, src: &str, kind: &str, opts: &[&str]) -> oci::Mount {
    oci::Mount {
        destination: dest.into(),
        source: src.into(),
        type_: kind.into(),
        options: opts.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn with_linux(f: impl FnOnce(&mut oci::Linux)) -> oci::Spec {
    let mut s = base();
    let mut l = oci::Linux::default();
    f(&mut l);
    s.Linux = Some(l).into();
    s
}

fn ns(list: &[(&str, &str)]) -> Vec<oci::LinuxNamespace> {
    list.iter()
        .map(|(t, p)| oci::LinuxNamespace {
            Type: t.to_string(),
            Path: p.to_string(),
            ..Default::default()
        })
        .collect()
}

fn types(spec: &oci_spec::runtime::Spec) -> Vec<(String, Option<PathBuf>)> {
    let mut v: Vec<_> = spec
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| (format!("{:?}", n.typ()), n.path().clone()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_plain_spec_gets_the_agents_choices() {
    let mut s = base();
    s.Mounts.push(mount("/proc", "proc", "proc", &[]));
    s.Mounts.push(mount(
        "/data",
        "/run/s/shared/data",
        "bind",
        &["rbind", "dev"],
    ));
    let out = convert(&s, &limits(), None).unwrap();
    assert_eq!(out.hostname().as_deref(), Some("pod"));
    assert_eq!(
        out.root().as_ref().unwrap().path(),
        Path::new("/run/s/containers/c/rootfs")
    );
    let linux = out.linux().as_ref().unwrap();
    assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/vigil/c")));
    assert_eq!(
        types(&out),
        [("Ipc", None), ("Mount", None), ("Pid", None), ("Uts", None)]
            .map(|(t, p)| (t.to_string(), p))
    );
    // A /dev tmpfs comes first; the bind loses "dev" and gains nosuid,nodev.
    let mounts = out.mounts().as_ref().unwrap();
    assert_eq!(mounts[0].destination(), Path::new("/dev"));
    let data = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/data"))
        .unwrap();
    assert_eq!(
        data.options().as_ref().unwrap(),
        &["rbind", "nosuid", "nodev"]
    );
    let proc_ = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/proc"))
        .unwrap();
    assert_eq!(
        proc_.options().as_ref().unwrap(),
        &["nosuid", "nodev", "noexec"]
    );
    // Default masked paths, default capabilities, and a device cgroup that starts by
    // denying everything and ends by denying the guest's memory.
    assert!(linux
        .masked_paths()
        .as_ref()
        .unwrap()
        .iter()
        .any(|p| p == "/proc/kcore"));
    assert!(linux
        .readonly_paths()
        .as_ref()
        .unwrap()
        .iter()
        .any(|p| p == "/proc/sys"));
    let caps = out
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .as_ref()
        .unwrap();
    assert_eq!(
        caps.bounding().as_ref().unwrap().len(),
        DEFAULT_CAPABILITIES.len()
    );
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap();
    assert!(
        !rules[0].allow()
            && rules[0].major().is_none()
            && rules[0].access().as_deref() == Some("rwm")
    );
    let last = rules
        .iter()
        .rev()
        .find(|r| r.major() == Some(1) && r.minor() == Some(1))
        .unwrap();
    assert!(!last.allow());
}

#[test]
fn kata_namespaces_get_pid_and_mount_back_and_long_names() {
    // What Kata's runtime sends: no pid (it says sandbox_pidns instead), short names,
    // paths emptied; a network namespace path is dropped.
    let s = with_linux(|l| {
        l.Namespaces = ns(&[
            ("ipc", ""),
            ("uts", ""),
            ("mnt", ""),
            ("net", "/var/run/netns/x"),
        ])
    });
    let out = convert(&s, &limits(), None).unwrap();
    assert_eq!(
        types(&out),
        [("Ipc", None), ("Mount", None), ("Pid", None), ("Uts", None)]
            .map(|(t, p)| (t.to_string(), p))
    );
    // With the sandbox's PID namespace, the container joins it (named by path or not).
    let out = convert(&s, &limits(), Some("/proc/77/ns/pid")).unwrap();
    assert!(types(&out).contains(&("Pid".into(), Some(PathBuf::from("/proc/77/ns/pid")))));
    let named = with_linux(|l| l.Namespaces = ns(&[("pid", "/proc/77/ns/pid")]));
    assert!(convert(&named, &limits(), Some("/proc/77/ns/pid")).is_ok());
}

#[test]
fn namespace_paths_other_than_the_sandboxs_are_refused() {
    for (kind, path) in [
        ("pid", "/proc/1/ns/pid"),
        ("ipc", "/proc/1/ns/ipc"),
        ("mnt", "/proc/self/ns/mnt"),
        ("uts", "/proc/1/ns/uts"),
    ] {
        let s = with_linux(|l| l.Namespaces = ns(&[(kind, path)]));
        assert_eq!(refused(&s), "OCI.Linux.Namespaces[0].Path", "{kind}");
    }
    let s = with_linux(|l| l.Namespaces = ns(&[("pid", "/proc/1/ns/pid")]));
    match convert(&s, &limits(), Some("/proc/77/ns/pid")) {
        Err(RuntimeError::InvalidArgument { field, .. }) => {
            assert_eq!(field, "OCI.Linux.Namespaces[0].Path")
        }
        other => panic!("{other:?}"),
    }
    let s = with_linux(|l| l.Namespaces = ns(&[("pid", ""), ("pid", "")]));
    assert_eq!(refused(&s), "OCI.Linux.Namespaces[1].Type");
    let s = with_linux(|l| l.Namespaces = ns(&[("nets", "")]));
    assert_eq!(refused(&s), "OCI.Linux.Namespaces[0].Type");
}

#[test]
fn mount_types_outside_the_allow_list_are_refused() {
    for kind in [
        "configfs",
        "devtmpfs",
        "debugfs",
        "securityfs",
        "ext4",
        "overlay",
        "nfs",
        "",
    ] {
        let mut s = base();
        s.Mounts.push(mount("/proc", "proc", "proc", &[]));
        s.Mounts.push(mount("/x", "/dev/vda", kind, &[]));
        assert_eq!(refused(&s), "OCI.Mounts[1].type", "{kind:?}");
    }
    for kind in [
        "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
    ] {
        let mut s = base();
        s.Mounts.push(mount("/x", kind, kind, &[]));
        assert!(convert(&s, &limits(), None).is_ok(), "{kind}");
    }
}

#[test]
fn sysfs_and_cgroup_are_read_only_and_propagation_stays_private_unless_privileged() {
    let mut s = base();
    s.Mounts.push(mount("/sys", "sysfs", "sysfs", &["rw"]));
    let opts = |out: &oci_spec::runtime::Spec| {
        out.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap()
            .options()
            .clone()
            .unwrap()
    };
    assert!(opts(&convert(&s, &limits(), None).unwrap()).contains(&"ro".to_string()));
    let privileged = SpecLimits {
        allow_privileged: true,
        ..limits()
    };
    assert!(!opts(&convert(&s, &privileged, None).unwrap()).contains(&"ro".to_string()));

    let mut s = base();
    s.Mounts.push(mount(
        "/data",
        "/run/s/shared/d",
        "bind",
        &["rbind", "rshared"],
    ));
    assert_eq!(refused(&s), "OCI.Mounts[0].options[1]");
    assert!(convert(&s, &privileged, None).is_ok());
    let s = with_linux(|l| l.RootfsPropagation = "shared".into());
    assert_eq!(refused(&s), "OCI.Linux.RootfsPropagation");
}

#[test]
fn device_nodes_only_for_standard_and_configured_devices() {
    let dev = |path: &str, t: &str, major, minor| oci::LinuxDevice {
        Path: path.into(),
        Type: t.into(),
        Major: major,
        Minor: minor,
        FileMode: 0o666,
        ..Default::default()
    };
    // Standard and configured ones pass; the configured one is allowed in the cgroup.
    let s = with_linux(|l| {
        l.Devices = vec![dev("/dev/null", "c", 1, 3), dev("/dev/fuse", "c", 10, 229)]
    });
    let out = convert(&s, &limits(), None).unwrap();
    let rules = out
        .linux()
        .as_ref()
        .unwrap()
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert!(rules
        .iter()
        .any(|r| r.allow() && r.major() == Some(10) && r.minor() == Some(229)));
    for d in [
        dev("/dev/mem", "c", 1, 1),
        dev("/dev/null", "c", 1, 1), // a harmless name for the guest's memory
        dev("/dev/sev-guest", "c", 10, 124),
        dev("/dev/vda", "b", 254, 0),
        dev("/etc/x", "c", 1, 3),
        dev("/dev/x", "z", 1, 3),
    ] {
        let name = format!("{} {}:{}", d.Path, d.Major, d.Minor);
        let s = with_linux(|l| l.Devices = vec![dev("/dev/zero", "c", 1, 5), d]);
        assert!(refused(&s).starts_with("OCI.Linux.Devices[1]"), "{name}");
    }
}

#[test]
fn device_cgroup_allows_only_for_devices_the_pod_may_use() {
    let rule = |allow, t: &str, major, minor, access: &str| oci::LinuxDeviceCgroup {
        Allow: allow,
        Type: t.into(),
        Major: major,
        Minor: minor,
        Access: access.into(),
        ..Default::default()
    };
    let with_rules = |rules: Vec<oci::LinuxDeviceCgroup>| {
        with_linux(|l| {
            l.Resources = Some(oci::LinuxResources {
                Devices: rules,
                ..Default::default()
            })
            .into()
        })
    };
    // containerd's deny-all, the standard set, pts, mknod-only wildcards, configured: fine.
    let ok = with_rules(vec![
        rule(false, "", 0, 0, "rwm"),
        rule(true, "c", 1, 3, "rwm"),
        rule(true, "c", 136, -1, "rwm"),
        rule(true, "c", -1, -1, "m"),
        rule(true, "c", 10, 229, "rw"),
        rule(false, "b", 8, 0, "rwm"),
    ]);
    assert!(convert(&ok, &limits(), None).is_ok());
    for bad in [
        rule(true, "a", 0, 0, "rwm"),
        rule(true, "", 0, 0, "rwm"),
        rule(true, "c", -1, -1, "rwm"),
        rule(true, "b", 8, -1, "r"),
        rule(true, "c", 1, 1, "r"),
        rule(true, "c", 10, 124, "rw"),
        rule(true, "c", 1, 3, "rwx"),
    ] {
        let s = with_rules(vec![rule(false, "", 0, 0, "rwm"), bad.clone()]);
        assert!(
            refused(&s).starts_with("OCI.Linux.Resources.Devices[1]"),
            "{bad:?}"
        );
    }
    // Privileged: allow-all passes, but the guest's memory is denied after it anyway.
    let privileged = SpecLimits {
        allow_privileged: true,
        ..limits()
    };
    let s = with_rules(vec![rule(true, "a", 0, 0, "rwm")]);
    let out = convert(&s, &privileged, None).unwrap();
    let rules = out
        .linux()
        .as_ref()
        .unwrap()
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    let all = rules
        .iter()
        .position(|r| r.allow() && r.major().is_none() && r.access().as_deref() == Some("rwm"))
        .unwrap();
    let mem = rules
        .iter()
        .position(|r| !r.allow() && r.major() == Some(1) && r.minor() == Some(1))
        .unwrap();
    assert!(mem > all);
}

#[test]
fn capabilities_are_capped_in_containers_and_execs() {
    let mut s = base();
    s.Process.as_mut().unwrap().Capabilities = Some(oci::LinuxCapabilities {
        Bounding: vec!["CAP_KILL".into(), "CAP_SYS_PTRACE".into()],
        ..Default::default()
    })
    .into();
    assert_eq!(refused(&s), "OCI.Process.Capabilities.Bounding[1]");
    let p = s.Process.as_ref().unwrap();
    match exec_process(p, &limits()) {
        Err(RuntimeError::InvalidArgument { field, .. }) => {
            assert_eq!(field, "process.Capabilities.Bounding[1]")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_namespaced_sysctls() {
    let with = |k: &str| {
        with_linux(|l| {
            l.Sysctl.insert(k.into(), "1".into());
        })
    };
    assert!(convert(&with("kernel.shmmax"), &limits(), None).is_ok());
    assert!(convert(&with("fs.mqueue.msg_max"), &limits(), None).is_ok());
    for k in [
        "kernel.core_pattern",
        "vm.overcommit_memory",
        "net.ipv4.ip_forward",
        "kernel.hostname",
    ] {
        assert_eq!(refused(&with(k)), format!("OCI.Linux.Sysctl[{k}]"));
    }
    // net.* with a network namespace of its own is the container's business.
    let own_net = with_linux(|l| {
        l.Sysctl.insert("net.ipv4.ip_forward".into(), "1".into());
        l.Namespaces = ns(&[("network", "")]);
    });
    assert!(convert(&own_net, &limits(), None).is_ok());
}

#[test]
fn masked_and_readonly_defaults_are_added_unless_privileged() {
    let s = with_linux(|l| l.MaskedPaths = vec!["/proc/custom".into()]);
    let out = convert(&s, &limits(), None).unwrap();
    let masked = out
        .linux()
        .as_ref()
        .unwrap()
        .masked_paths()
        .clone()
        .unwrap();
    assert!(
        masked.contains(&"/proc/custom".to_string())
            && masked.contains(&"/sys/firmware".to_string())
    );
    let privileged = SpecLimits {
        allow_privileged: true,
        ..limits()
    };
    let out = convert(&s, &privileged, None).unwrap();
    assert_eq!(
        out.linux()
            .as_ref()
            .unwrap()
            .masked_paths()
            .clone()
            .unwrap(),
        ["/proc/custom"]
    );
}

#[test]
fn other_refusals_name_the_field() {
    let mut s = base();
    s.Mounts.push(mount("/a", "/etc", "bind", &["rbind"]));
    assert_eq!(refused(&s), "OCI.Mounts[0].source");
    let mut s = base();
    s.Mounts.push(mount("/a", "/run/s/shared", "", &["rbind"]));
    s.Mounts
        .push(mount("/a/", "/run/s/shared", "none", &["bind"]));
    assert_eq!(refused(&s), "OCI.Mounts[1].destination");
    let mut s = base();
    s.Mounts.push(mount("relative", "tmpfs", "tmpfs", &[]));
    assert_eq!(refused(&s), "OCI.Mounts[0].destination");
    let mut s = base();
    s.Hooks = Some(oci::Hooks {
        Prestart: vec![oci::Hook {
            Path: "/bin/true".into(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .into();
    assert_eq!(refused(&s), "OCI.Hooks");
    let mut s = base();
    s.Root = Some(oci::Root {
        Path: "../../x".into(),
        ..Default::default()
    })
    .into();
    assert_eq!(refused(&s), "OCI.Root.Path");
    let mut s = base();
    s.Process.as_mut().unwrap().Args.clear();
    assert_eq!(refused(&s), "OCI.Process.Args");
    let mut s = base();
    s.Process = protobuf::MessageField::none();
    assert_eq!(refused(&s), "OCI.Process");
}

/// Each of the six hook kinds alone is refused without `allow_hooks`; with it, each reaches
/// the runtime spec under its OCI name.
#[test]
fn every_hook_kind_is_refused_unless_hooks_are_allowed() {
    let hook = || {
        vec![oci::Hook {
            Path: "/bin/true".into(),
            ..Default::default()
        }]
    };
    type Set = fn(&mut oci::Hooks, Vec<oci::Hook>);
    type Has = fn(&oci_spec::runtime::Hooks) -> bool;
    let kinds: [(Set, Has); 6] = [
        (|h, v| h.Prestart = v, |h| h.prestart().is_some()),
        (|h, v| h.Poststart = v, |h| h.poststart().is_some()),
        (|h, v| h.Poststop = v, |h| h.poststop().is_some()),
        (|h, v| h.CreateRuntime = v, |h| h.create_runtime().is_some()),
        (
            |h, v| h.CreateContainer = v,
            |h| h.create_container().is_some(),
        ),
        (
            |h, v| h.StartContainer = v,
            |h| h.start_container().is_some(),
        ),
    ];
    for (i, (set, has)) in kinds.into_iter().enumerate() {
        let mut s = base();
        let mut hooks = oci::Hooks::new();
        set(&mut hooks, hook());
        s.Hooks = Some(hooks).into();
        assert_eq!(refused(&s), "OCI.Hooks", "kind {i}");
        let out = convert_with(&s, &limits(), None, true).unwrap();
        assert!(out.hooks().as_ref().is_some_and(has), "kind {i}");
    }
}
