//! Containers end to end: the real `vigil-agent` binary runs a busybox container, driven over
//! ttrpc with `vigilctl` calls in Kata's JSON shape. Needs root (namespaces, cgroups, mounts)
//! and `/bin/busybox` (Debian's `busybox-static`); skips with a printed reason when not root.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use vigil_tests::container::{busybox_rootfs, bytes, Cleanup};
use vigil_tests::{Agent, AgentSetup};
use vigilctl::ClientError;

const T: Duration = Duration::from_secs(30);
/// The test's `[sandbox] cgroup_parent`, so its cgroups are told apart from a real agent's.
const CGROUP_PARENT: &str = "vigil-e2e";
/// The busybox applets the containers' commands use.
const APPLETS: &[&str] = &["sh", "sleep", "echo", "hostname", "cat"];

async fn call(
    client: &ttrpc::r#async::Client,
    method: &str,
    req: Value,
) -> Result<Value, (ttrpc::Code, String)> {
    let rpc = vigilctl::find_rpc(method).unwrap();
    match vigilctl::call_json(client, rpc, &req, T).await {
        Ok(v) => Ok(v),
        Err(ClientError::Status(st)) => Err((st.code(), st.message().to_string())),
        Err(e) => panic!("{method}: {e}"),
    }
}

fn process(args: &[&str]) -> Value {
    json!({"Args": args, "Env": ["PATH=/bin"], "Cwd": "/", "User": {"UID": 0, "GID": 0}})
}

/// Starts the agent with every endpoint allowed and Kata's guest directories under
/// `kata_root` (not the machine's /run/kata-containers), in the test's cgroup parent.
fn start_agent(kata_root: &Path, extra_args: &[&str]) -> Agent {
    let config = format!(
        "[endpoints]\nallowed = [\"*\"]\n[sandbox]\nkata_root = \"{}\"\ncgroup_parent = \"{CGROUP_PARENT}\"\n",
        kata_root.display()
    );
    Agent::start(AgentSetup {
        config: Some(&config),
        extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        ..AgentSetup::default()
    })
    .unwrap_or_else(|f| panic!("agent did not start: {:?}\n{}", f.status, f.stderr))
}

/// CreateContainer of a busybox container running `args`, its rootfs a bind storage.
async fn create_busybox_container(
    c: &ttrpc::r#async::Client,
    cid: &str,
    rootfs: &Path,
    args: &[&str],
) {
    let spec = json!({
        "Version": "1.0.2",
        "Process": process(args),
        "Root": {"Path": "rootfs"},
        "Mounts": [{"destination": "/proc", "source": "proc", "type_": "proc"}],
        "Linux": {"Namespaces": [{"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"}]},
    });
    call(
        c,
        "CreateContainer",
        json!({
            "container_id": cid,
            "storages": [{"driver": "bind", "source": rootfs, "mount_point": format!("{cid}/rootfs")}],
            "OCI": spec,
        }),
    )
    .await
    .unwrap();
}

#[test]
fn container_lifecycle_through_the_agent() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping container_lifecycle_through_the_agent: needs root (namespaces, cgroups, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sandbox_dir = tmp.path().join("kata");
    let agent = start_agent(&sandbox_dir, &[]);
    let sid = format!("e2e-{}", std::process::id());
    let cid = format!("e2e-c-{}", std::process::id());
    let _cleanup = Cleanup {
        cgroup_parent: CGROUP_PARENT.into(),
        containers: vec![cid.clone()],
        sandbox_dir: sandbox_dir.clone(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        let ids = json!({"container_id": cid});

        // Hooks are refused unless `[sandbox] allow_hooks = true`.
        let hooks = call(
            &c,
            "CreateSandbox",
            json!({"sandbox_id": sid, "guest_hook_path": "/usr/share/oci/hooks"}),
        )
        .await;
        assert!(matches!(&hooks, Err((ttrpc::Code::INVALID_ARGUMENT, _))), "{hooks:?}");
        call(&c, "CreateSandbox", json!({"sandbox_id": sid, "hostname": "e2e-pod"}))
            .await
            .unwrap();
        let shared = sandbox_dir.join("shared/containers");
        assert!(shared.is_dir(), "sandbox not under [sandbox] kata_root");
        // The image arrives in the sandbox's shared directory (Kata's shared file system).
        let rootfs = busybox_rootfs(&shared, APPLETS);
        create_busybox_container(&c, &cid, &rootfs, &["sleep", "1000"]).await;
        call(&c, "StartContainer", ids.clone()).await.unwrap();

        // Exec with a stdin/stdout round trip.
        call(
            &c,
            "ExecProcess",
            json!({"container_id": cid, "exec_id": "e1", "process": process(&["sh", "-c", "read x; echo got:$x; hostname"])}),
        )
        .await
        .unwrap();
        let w = call(&c, "WriteStdin", json!({"container_id": cid, "exec_id": "e1", "data": b"ping\n"}))
            .await
            .unwrap();
        assert_eq!(w["len"], 5);
        call(&c, "CloseStdin", json!({"container_id": cid, "exec_id": "e1"})).await.unwrap();
        let mut out = Vec::new();
        loop {
            match call(&c, "ReadStdout", json!({"container_id": cid, "exec_id": "e1", "len": 1024})).await {
                Ok(v) => out.extend(bytes(&v["data"])),
                Err((ttrpc::Code::INTERNAL, m)) if m.contains("eof") => break,
                Err(e) => panic!("ReadStdout: {e:?}"),
            }
        }
        assert_eq!(String::from_utf8_lossy(&out), "got:ping\ne2e-pod\n");
        let waited = call(&c, "WaitProcess", json!({"container_id": cid, "exec_id": "e1"})).await.unwrap();
        assert_eq!(waited["status"], 0);

        let stats = call(&c, "StatsContainer", ids.clone()).await.unwrap();
        assert_eq!(stats["cgroup_stats"]["pids_stats"]["current"], 1, "{stats}");
        call(&c, "PauseContainer", ids.clone()).await.unwrap();
        call(&c, "ResumeContainer", ids.clone()).await.unwrap();
        call(&c, "UpdateContainer", json!({"container_id": cid, "resources": {"Memory": {"Limit": 100 << 20}}}))
            .await
            .unwrap();
        let stats = call(&c, "StatsContainer", ids.clone()).await.unwrap();
        assert_eq!(stats["cgroup_stats"]["memory_stats"]["usage"]["limit"], 100u64 << 20);

        // Unknown ids: NOT_FOUND naming the id.
        let ghost = call(&c, "SignalProcess", json!({"container_id": cid, "exec_id": "ghost", "signal": 9})).await;
        assert!(matches!(&ghost, Err((ttrpc::Code::NOT_FOUND, m)) if m.contains("ghost")), "{ghost:?}");
        // Refused specs: INVALID_ARGUMENT naming the field.
        let bad = call(
            &c,
            "CreateContainer",
            json!({"container_id": "bad", "OCI": {"Process": process(&["true"]),
                   "Mounts": [{"destination": "/x", "source": "/etc", "type_": "bind", "options": ["rbind"]}]}}),
        )
        .await;
        assert!(matches!(&bad, Err((ttrpc::Code::INVALID_ARGUMENT, m)) if m.contains("OCI.Mounts[0].source")), "{bad:?}");
        // What would reach the guest itself, refused whatever the policy says, by field.
        let spec_with = |extra: Value| {
            let mut spec = json!({"Process": process(&["true"]), "Root": {"Path": "rootfs"}});
            spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            spec
        };
        let escapes = [
            (json!({"storages": [{"driver": "bind", "source": "/", "mount_point": "escape/rootfs"}]}), "storages[0].source"),
            // A host PCI address is not a guest PCI path: no guest disk is looked up.
            (json!({"storages": [{"driver": "blk", "source": "0000:00:02.0", "fstype": "ext4", "mount_point": "sandbox/disk"}]}), "storages[0].source"),
            (json!({"storages": [{"driver": "erofs.multi-layer", "source": "x", "mount_point": "sandbox/disk"}]}), "storages[0].driver"),
            (json!({"OCI": spec_with(json!({"Mounts": [{"destination": "/cfg", "source": "configfs", "type_": "configfs"}]}))}), "OCI.Mounts[0].type"),
            (json!({"OCI": spec_with(json!({"Linux": {"Devices": [{"Path": "/dev/sev-guest", "Type": "c", "Major": 10, "Minor": 124}]}}))}), "OCI.Linux.Devices[0]"),
            (json!({"OCI": spec_with(json!({"Linux": {"Resources": {"Devices": [{"Allow": true, "Type": "a", "Access": "rwm"}]}}}))}), "OCI.Linux.Resources.Devices[0]"),
            (json!({"OCI": spec_with(json!({"Process": {"Args": ["true"], "Capabilities": {"Bounding": ["CAP_SYS_ADMIN"]}}}))}), "OCI.Process.Capabilities.Bounding[0]"),
            (json!({"OCI": spec_with(json!({"Linux": {"Namespaces": [{"Type": "pid", "Path": "/proc/1/ns/pid"}]}}))}), "OCI.Linux.Namespaces[0].Path"),
            (json!({"OCI": spec_with(json!({"Linux": {"Sysctl": {"kernel.core_pattern": "|/x"}}}))}), "OCI.Linux.Sysctl[kernel.core_pattern]"),
        ];
        for (extra, field) in escapes {
            let mut req = json!({"container_id": "escape", "OCI": spec_with(json!({}))});
            req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let r = call(&c, "CreateContainer", req).await;
            assert!(
                matches!(&r, Err((ttrpc::Code::INVALID_ARGUMENT, m)) if m.starts_with(&format!("invalid {field}:"))),
                "{field}: {r:?}"
            );
        }
        assert!(!sandbox_dir.join("escape").exists());

        // CopyFile lands in the sandbox's shared directory, and nowhere else.
        let target = shared.join("dir/hello");
        call(
            &c,
            "CopyFile",
            json!({"path": target, "file_mode": 0o100644, "dir_mode": 0o755, "file_size": 2, "data": b"hi"}),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hi");
        let outside = call(
            &c,
            "CopyFile",
            json!({"path": tmp.path().join("escaped"), "file_mode": 0o100644, "file_size": 1, "data": b"x"}),
        )
        .await;
        assert!(matches!(&outside, Err((ttrpc::Code::INVALID_ARGUMENT, _))), "{outside:?}");
        assert!(!tmp.path().join("escaped").exists());
        // No file type bits: refused, not written as a regular file.
        let untyped = call(
            &c,
            "CopyFile",
            json!({"path": shared.join("untyped"), "file_mode": 0o644, "file_size": 1, "data": b"x"}),
        )
        .await;
        assert!(matches!(&untyped, Err((ttrpc::Code::INVALID_ARGUMENT, m)) if m.starts_with("invalid file_mode")), "{untyped:?}");
        assert!(!shared.join("untyped").exists());
        // setuid is cleared ([sandbox] allow_setuid_copy is false).
        let suid = shared.join("suid");
        call(&c, "CopyFile", json!({"path": suid, "file_mode": 0o104755, "file_size": 2, "data": b"#!"}))
            .await
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&suid).unwrap().permissions().mode() & 0o7777, 0o755);

        // A signal to the whole container ends its init (PID 1 of its namespace: only SIGKILL).
        call(&c, "SignalProcess", json!({"container_id": cid, "signal": 9})).await.unwrap();
        let waited = call(&c, "WaitProcess", ids.clone()).await.unwrap();
        assert_eq!(waited["status"], 128 + 9);

        call(&c, "RemoveContainer", json!({"container_id": cid, "timeout": 10})).await.unwrap();
        let gone = call(&c, "StatsContainer", ids.clone()).await;
        assert!(matches!(&gone, Err((ttrpc::Code::NOT_FOUND, m)) if m.contains(&cid)), "{gone:?}");
        call(&c, "DestroySandbox", json!({})).await.unwrap();
    });
    for owned in ["shared", "sandbox", ".vigil/pod"] {
        assert!(!sandbox_dir.join(owned).exists(), "{owned} left behind");
    }
    for controller in ["pids", "memory", "freezer", "cpu"] {
        let dir = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(CGROUP_PARENT)
            .join(&cid);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&sid), "mounts left behind");
}

/// Reads a process's stream until `want` bytes came or the stream ended (`eof` error).
async fn read_until(
    c: &ttrpc::r#async::Client,
    method: &str,
    cid: &str,
    eid: &str,
    want: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < want {
        match call(
            c,
            method,
            json!({"container_id": cid, "exec_id": eid, "len": 4096}),
        )
        .await
        {
            Ok(v) => out.extend(bytes(&v["data"])),
            Err((ttrpc::Code::INTERNAL, m)) if m.contains("eof") => break,
            Err(e) => panic!("{method} {eid:?}: {e:?}"),
        }
    }
    out
}

/// At trace level the agent logs a lot, its container library included, also from the
/// processes it forks for a container before they exec; none of it may reach a workload's
/// stdout or stderr (the host reads those streams), in pipe or tty mode, for the init
/// process or an exec'd one. The agent's own stderr must have the lines.
#[test]
fn agent_logs_never_reach_container_stdio() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping agent_logs_never_reach_container_stdio: needs root (namespaces, cgroups, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let kata_root = tmp.path().join("kata");
    let mut agent = start_agent(&kata_root, &["--log-level", "trace"]);
    let sid = format!("logs-{}", std::process::id());
    let cid = format!("logs-c-{}", std::process::id());
    let _cleanup = Cleanup {
        cgroup_parent: CGROUP_PARENT.into(),
        containers: vec![cid.clone()],
        sandbox_dir: kata_root.clone(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        call(&c, "CreateSandbox", json!({"sandbox_id": sid}))
            .await
            .unwrap();
        let rootfs = busybox_rootfs(&kata_root.join("shared/containers"), APPLETS);
        let init = [
            "sh",
            "-c",
            "echo init-out; echo init-err >&2; exec sleep 1000",
        ];
        create_busybox_container(&c, &cid, &rootfs, &init).await;
        call(&c, "StartContainer", json!({"container_id": cid}))
            .await
            .unwrap();
        // The init process: each stream holds exactly what it wrote (a log line would come
        // first, before the process ran).
        let out = read_until(&c, "ReadStdout", &cid, "", b"init-out\n".len()).await;
        assert_eq!(String::from_utf8_lossy(&out), "init-out\n");
        let err = read_until(&c, "ReadStderr", &cid, "", b"init-err\n".len()).await;
        assert_eq!(String::from_utf8_lossy(&err), "init-err\n");

        // An exec'd process with pipes, read to the end.
        call(
            &c,
            "ExecProcess",
            json!({"container_id": cid, "exec_id": "pipes",
                   "process": process(&["sh", "-c", "echo exec-out; echo exec-err >&2"])}),
        )
        .await
        .unwrap();
        let out = read_until(&c, "ReadStdout", &cid, "pipes", usize::MAX).await;
        let err = read_until(&c, "ReadStderr", &cid, "pipes", usize::MAX).await;
        assert_eq!(String::from_utf8_lossy(&out), "exec-out\n");
        assert_eq!(String::from_utf8_lossy(&err), "exec-err\n");
        let waited = call(
            &c,
            "WaitProcess",
            json!({"container_id": cid, "exec_id": "pipes"}),
        )
        .await
        .unwrap();
        assert_eq!(waited["status"], 0);

        // An exec'd process on a terminal: stdout and stderr are the one tty stream.
        let mut tty = process(&["sh", "-c", "echo tty-out; echo tty-err >&2"]);
        tty["Terminal"] = json!(true);
        call(
            &c,
            "ExecProcess",
            json!({"container_id": cid, "exec_id": "tty", "process": tty}),
        )
        .await
        .unwrap();
        let out = read_until(&c, "ReadStdout", &cid, "tty", usize::MAX).await;
        assert_eq!(
            String::from_utf8_lossy(&out).replace("\r\n", "\n"),
            "tty-out\ntty-err\n"
        );
        call(
            &c,
            "WaitProcess",
            json!({"container_id": cid, "exec_id": "tty"}),
        )
        .await
        .unwrap();

        call(
            &c,
            "SignalProcess",
            json!({"container_id": cid, "signal": 9}),
        )
        .await
        .unwrap();
        call(&c, "WaitProcess", json!({"container_id": cid}))
            .await
            .unwrap();
        call(
            &c,
            "RemoveContainer",
            json!({"container_id": cid, "timeout": 10}),
        )
        .await
        .unwrap();
        call(&c, "DestroySandbox", json!({})).await.unwrap();
    });
    // The lines went to the agent's log instead: trace level really was on, and the lines
    // the container library logs in a container's process just before the exec (its
    // `workload` module runs nowhere else) are there, not lost.
    let (_, log) = agent.stop();
    assert!(
        log.contains(" TRACE "),
        "no trace line in the agent's log:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(" DEBUG libcontainer::workload")),
        "no line of a container's process in the agent's log:\n{log}"
    );
}

/// The policy sees CopyFile's path as the agent writes it: `//` and `.` do not get a path
/// past a rule that names it, and the file lands at the normalised path.
#[test]
fn copy_file_policy_sees_the_normalised_path() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping copy_file_policy_sees_the_normalised_path: needs root (file owners)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let kata_root = tmp.path().join("kata");
    let sid = format!("e2e-cf-{}", std::process::id());
    let shared = kata_root.join("shared/containers");
    let policy = tmp.path().join("policy.rego");
    std::fs::write(
        &policy,
        format!(
            "package agent_policy\n\
             default CreateSandboxRequest := true\n\
             default DestroySandboxRequest := true\n\
             default CopyFileRequest := false\n\
             CopyFileRequest if {{ input.path != \"{}/secret\" }}\n",
            shared.display()
        ),
    )
    .unwrap();
    let config = format!(
        "[endpoints]\nallowed = [\"*\"]\n[policy]\nfile = \"{}\"\n[sandbox]\nkata_root = \"{}\"\ncgroup_parent = \"{CGROUP_PARENT}\"\n",
        policy.display(),
        kata_root.display()
    );
    let agent = Agent::start(AgentSetup {
        config: Some(&config),
        ..AgentSetup::default()
    })
    .unwrap_or_else(|f| panic!("agent did not start: {:?}\n{}", f.status, f.stderr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        call(&c, "CreateSandbox", json!({"sandbox_id": sid})).await.unwrap();
        let copy = |path: String| {
            json!({"path": path, "file_mode": 0o100644, "file_size": 1, "data": b"x"})
        };
        let s = shared.display();
        for spelled in [format!("{s}/secret"), format!("{s}//secret"), format!("{s}/./secret"), format!("{s}/secret/")] {
            let r = call(&c, "CopyFile", copy(spelled.clone())).await;
            assert_eq!(
                r,
                Err((ttrpc::Code::PERMISSION_DENIED, "CopyFileRequest is blocked by policy".into())),
                "{spelled}"
            );
        }
        assert!(!shared.join("secret").exists());
        call(&c, "CopyFile", copy(format!("{s}//public/./file"))).await.unwrap();
        assert_eq!(std::fs::read(shared.join("public/file")).unwrap(), b"x");
        call(&c, "DestroySandbox", json!({})).await.unwrap();
    });
}
