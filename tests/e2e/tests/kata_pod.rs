//! Kata's host side, replayed through the real binary: the requests Kata's runtime sends to
//! run a two-container Kubernetes pod (the pause container and one app container), each
//! written field by field as Kata's Go shim builds it (src/runtime/virtcontainers/
//! kata_agent.go, Kata 4.1.0 sources: the function is named at each request) on a spec as
//! containerd's CRI plugin makes it; where runtime-rs writes a field differently, that is
//! said too. Kata's paths throughout: `/run/kata-containers/...` (here under a temporary
//! `[sandbox] kata_root`).
//!
//! The same sequence runs twice:
//! - `kata_pod_replayed_against_the_agent` (root): on this machine (cgroup v1 here), the agent
//!   in a private network namespace whose veth link stands for the pod's interface. The
//!   rootfs appears in the shared directory as Kata's host puts it there over virtio-fs: the
//!   test writes it under `<kata_root>/shared/containers/<id>/rootfs` before CreateContainer.
//! - `kata_pod_in_the_guest` (ignored here): `hack/qemu/e2e.sh` runs it against the agent as
//!   PID 1 of the QEMU guest (cgroup v2, the real `/run/kata-containers`), with the agent's
//!   address in `VIGIL_KATA_POD_ADDR`. The guest has no file system shared with the host, so
//!   the rootfs arrives by CopyFile, as Kata's shim copies files when the hypervisor shares
//!   none (fs_share_linux.go `ShareFile`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use vigil_tests::container::{bytes, Cleanup};
use vigil_tests::{call_within, Agent, AgentSetup, Answer};

/// Bound on each call: the QEMU guest runs under TCG, where the app's CPU work is slow.
const T: Duration = Duration::from_secs(120);
const CGROUP_PARENT: &str = "vigil-e2e";
/// Kata's `DirMode` (virtcontainers/sandbox.go: 0750 | os.ModeDir, Go's directory bit 1<<31),
/// which its copyFile sends as `dir_mode`.
const KATA_DIR_MODE: u32 = 0o750 | 1 << 31;
/// Kata's grpcMaxDataSize: copyFile sends a file in chunks of this size.
const COPY_CHUNK: usize = 1 << 20;
/// The Go shim reads a stream in buffers of this size (containerd-shim-v2/stream.go bufSize).
const READ_LEN: u32 = 32 << 10;
const HOSTNAME: &str = "kata-pod";
const APPLETS: [&str; 10] = [
    "sh", "cat", "echo", "hostname", "head", "touch", "ls", "sleep", "readlink", "mkdir",
];
/// The pause program: as Kubernetes' pause, it waits and exits 0 on SIGTERM or SIGINT.
const PAUSE: &str = "#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait; done\n";
/// The app: CPU work (under a CPU quota), then what it sees of the pod, then its own CPU time
/// in clock ticks (/proc/self/stat), a line on stderr, and exit 0.
const APP: &str = "i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done; \
                   hostname; head -n 1 /etc/resolv.conf; echo cached > /cache/note; cat /cache/note; \
                   touch /scratch/x; ls /scratch; echo to-stderr >&2; cat /proc/$$/stat";
/// USER_HZ: the unit of /proc/<pid>/stat's CPU times on Linux (x86).
const NS_PER_TICK: u64 = 10_000_000;

/// One RPC in Kata's JSON shape, within [`T`].
async fn rpc(c: &ttrpc::r#async::Client, method: &str, request: Value) -> Answer {
    call_within(c, method, request, T).await
}

/// How the rootfs gets to `<root>/shared/containers/<id>/rootfs`.
enum Provision {
    /// Written there by the test (the directory is the agent's, on this machine).
    Direct(PathBuf),
    /// By CopyFile requests (a guest the test cannot write to).
    CopyFile,
}

/// One file of the busybox rootfs.
enum Entry {
    Dir(&'static str),
    File(String, Vec<u8>, u32),
    Symlink(String, &'static str),
}

fn rootfs_entries() -> Vec<Entry> {
    let mut e: Vec<Entry> = ["", "bin", "proc", "dev", "sys", "tmp", "etc"]
        .into_iter()
        .map(Entry::Dir)
        .collect();
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox: install busybox-static");
    e.push(Entry::File("bin/busybox".into(), busybox, 0o755));
    e.extend(
        APPLETS
            .iter()
            .map(|a| Entry::Symlink(format!("bin/{a}"), "busybox")),
    );
    e.push(Entry::File("pause".into(), PAUSE.into(), 0o755));
    e
}

/// A CopyFile request as Kata's copyFile (kata_agent.go) fills it, for one chunk.
fn copy_file(path: &str, mode: u32, size: usize, offset: usize, data: &[u8]) -> Value {
    json!({"path": path, "file_size": size, "file_mode": mode, "dir_mode": KATA_DIR_MODE,
           "uid": 0, "gid": 0, "offset": offset, "data": data})
}

async fn copy_files(c: &ttrpc::r#async::Client, dir: &str, files: Vec<Entry>) {
    for e in files {
        let reqs = match e {
            Entry::Dir(d) => vec![copy_file(&join(dir, d), 0o40755, 0, 0, &[])],
            Entry::Symlink(p, target) => {
                vec![copy_file(&join(dir, &p), 0o120777, 0, 0, target.as_bytes())]
            }
            Entry::File(p, data, mode) if data.is_empty() => {
                vec![copy_file(&join(dir, &p), 0o100000 | mode, 0, 0, &[])]
            }
            Entry::File(p, data, mode) => data
                .chunks(COPY_CHUNK)
                .enumerate()
                .map(|(i, chunk)| {
                    let at = i * COPY_CHUNK;
                    copy_file(&join(dir, &p), 0o100000 | mode, data.len(), at, chunk)
                })
                .collect(),
        };
        for r in reqs {
            let path = r["path"].clone();
            rpc(c, "CopyFile", r)
                .await
                .unwrap_or_else(|e| panic!("CopyFile {path}: {e:?}"));
        }
    }
}

fn write_files(dir: &Path, files: Vec<Entry>) {
    use std::os::unix::fs::PermissionsExt;
    for e in files {
        match e {
            Entry::Dir(d) => std::fs::create_dir_all(dir.join(d)).unwrap(),
            Entry::Symlink(p, target) => std::os::unix::fs::symlink(target, dir.join(p)).unwrap(),
            Entry::File(p, data, mode) => {
                std::fs::write(dir.join(&p), data).unwrap();
                std::fs::set_permissions(dir.join(&p), std::fs::Permissions::from_mode(mode))
                    .unwrap();
            }
        }
    }
}

fn join(dir: &str, rel: &str) -> String {
    if rel.is_empty() {
        dir.to_string()
    } else {
        format!("{dir}/{rel}")
    }
}

/// The pod as the host sees it.
struct Pod {
    /// What Kata calls /run/kata-containers.
    root: String,
    /// The sandbox id, which is also the pause container's id (Kubernetes).
    sid: String,
    app: String,
    provision: Provision,
    /// The pod's network interface, which must show in the stats with traffic counted.
    interface: &'static str,
    /// The kubelet's -998 for the pause container, where the agent may lower OOM scores.
    pause_oom_score_adj: i64,
}

/// The kubelet gives the pause container an OOM score of -998; lowering a score needs
/// CAP_SYS_RESOURCE, which some machines running these tests withhold even from root.
fn pause_oom_score_adj() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u32 = 24;
    if eff & (1 << CAP_SYS_RESOURCE) != 0 {
        -998
    } else {
        eprintln!("no CAP_SYS_RESOURCE here: the pause container gets OOM score 0, not -998");
        0
    }
}

impl Pod {
    fn shared(&self) -> String {
        format!("{}/shared/containers", self.root)
    }

    fn rootfs(&self, cid: &str) -> String {
        // ShareRootFilesystem (fs_share_linux.go): kataGuestSharedDir()/<cid>/<rootfsSuffix>.
        format!("{}/{cid}/rootfs", self.shared())
    }

    /// A file the Go shim shares with a container: ShareFile names it
    /// `<cid>-<16 random hex digits>-<base name of the destination>`.
    fn shared_file(&self, cid: &str, name: &str) -> String {
        format!("{}/{cid}-8d3f0a1b2c4e5f60-{name}", self.shared())
    }

    /// Puts container `cid`'s rootfs and its shared copy of the sandbox's resolv.conf (a file
    /// of its spec: ShareFile copies it, or shares it over virtio-fs) where Kata puts them.
    async fn provision(&self, c: &ttrpc::r#async::Client, cid: &str, resolv: &str) {
        let shared_resolv = self.shared_file(cid, "resolv.conf");
        match &self.provision {
            Provision::Direct(kata_root) => {
                let local = |p: &str| kata_root.join(&p[self.root.len() + 1..]);
                write_files(&local(&self.rootfs(cid)), rootfs_entries());
                std::fs::write(local(&shared_resolv), resolv).unwrap();
            }
            Provision::CopyFile => {
                copy_files(c, &self.rootfs(cid), rootfs_entries()).await;
                let f = Entry::File(String::new(), resolv.as_bytes().to_vec(), 0o644);
                copy_files(c, &shared_resolv, vec![f]).await;
            }
        }
    }
}

/// containerd's default capability set, which CRI gives every container: the host's data,
/// written out here rather than taken from the agent's own default.
fn default_capabilities() -> Value {
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    json!({"Bounding": caps, "Effective": caps, "Inheritable": [], "Permitted": caps, "Ambient": []})
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "source": source, "type_": kind, "options": options})
}

/// The mounts containerd's CRI gives every container, with /dev/shm as Kata's handleShm
/// rewrites it (a bind of the sandbox's shm storage) and resolv.conf a shared file.
fn cri_mounts(pod: &Pod, resolv: &str) -> Vec<Value> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/dev/shm",
            "bind",
            &format!("{}/sandbox/shm", pod.root),
            &["rbind"],
        ),
        mount(
            "/etc/resolv.conf",
            "bind",
            resolv,
            &["rbind", "rprivate", "ro"],
        ),
    ]
}

const MASKED: [&str; 9] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
];
const READONLY: [&str; 6] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/scsi",
];

/// ReadStdout or ReadStderr until the agent says end of stream (Kata's "eof"), as the shim's
/// ioCopy does.
async fn read_to_end(c: &ttrpc::r#async::Client, stream: &str, cid: &str) -> String {
    let mut out = Vec::new();
    loop {
        let req = json!({"container_id": cid, "exec_id": cid, "len": READ_LEN});
        match rpc(c, stream, req).await {
            Ok(v) => out.extend(bytes(&v["data"])),
            Err((ttrpc::Code::INTERNAL, m)) if m.contains("eof") => break,
            Err(e) => panic!("{stream}: {e:?}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn field(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{} missing in {v}", path.join(".")))
}

/// What differs between the hierarchies in a container's `cgroup_stats`, as Kata's agent fills
/// it: per-CPU usage only on v1 (summing to the total), user + kernel time equal to the total
/// on v2 (one counter, split by the kernel), the block I/O ops each hierarchy names, and no
/// huge pages used by a workload that asked for none.
fn hierarchy_figures(cg: &Value) {
    let v2 = cg["memory_stats"]["stats"].get("anon").is_some();
    let cpu = &cg["cpu_stats"]["cpu_usage"];
    let total = field(cpu, &["total_usage"]);
    let split = field(cpu, &["usage_in_usermode"]) + field(cpu, &["usage_in_kernelmode"]);
    let percpu: Vec<u64> = cpu["percpu_usage"]
        .as_array()
        .unwrap_or_else(|| panic!("percpu_usage missing in {cpu}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    if v2 {
        assert!(percpu.is_empty(), "v2 has no per-CPU usage: {cpu}");
        // cpu.stat's user_usec and system_usec add up to usage_usec (to the microsecond each).
        assert!(total.abs_diff(split) <= total / 100 + 2_000, "{cpu}");
    } else {
        assert_eq!(percpu.iter().sum::<u64>(), total, "{cpu}");
    }
    let ops: &[&str] = if v2 {
        &["read", "write", "rios", "wios", "dbytes", "dios"]
    } else {
        &["read", "write", "sync", "async", "total"]
    };
    for e in cg["blkio_stats"]["io_service_bytes_recursive"]
        .as_array()
        .unwrap_or_else(|| panic!("io_service_bytes_recursive missing in {cg}"))
    {
        let op = e["op"].as_str().unwrap_or_default();
        assert!(
            ops.contains(&op),
            "op {op:?} is not v{}'s: {e}",
            1 + v2 as u8
        );
    }
    let hugetlb = cg["hugetlb_stats"].as_object().unwrap();
    for (size, h) in hugetlb {
        assert!(
            size.ends_with("B") && size[..size.len() - 2].parse::<u32>().is_ok(),
            "hugetlb size {size:?}"
        );
        assert_eq!(field(h, &["usage"]), 0, "{size}: {h}");
    }
}

/// The whole sequence, checking each answer.
async fn replay(c: &ttrpc::r#async::Client, pod: &Pod) {
    let (sid, app) = (pod.sid.as_str(), pod.app.as_str());

    // startSandbox: Check, then (setupNetworks, not replayed: tests/e2e/tests/network.rs
    // covers the network RPCs) CreateSandbox.
    let health = rpc(c, "Check", json!({"service": ""})).await.unwrap();
    assert_eq!(health["status"], 1, "{health}");
    // getDNS splits the sandbox's resolv.conf on "\n", trailing empty line included.
    let resolv = "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n";
    let dns: Vec<&str> = resolv.split('\n').collect();
    // setupStorages: the shared file system (virtio-fs "kataShared" at kataGuestSharedDir())
    // only when the hypervisor shares one; the sandbox's shm as an ephemeral storage.
    rpc(
        c,
        "CreateSandbox",
        json!({
            "hostname": HOSTNAME,
            "dns": dns,
            "storages": [{
                "driver": "ephemeral", "driver_options": [], "source": "shm", "fstype": "tmpfs",
                "options": ["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"],
                "mount_point": format!("{}/sandbox/shm", pod.root), "fs_group": null, "shared": false,
            }],
            "sandbox_pidns": false,
            "sandbox_id": sid,
            "guest_hook_path": "",
            "kernel_modules": [],
        }),
    )
    .await
    .unwrap();
    // getAndStoreGuestDetails (sandbox.go).
    let details = rpc(
        c,
        "GetGuestDetails",
        json!({"mem_block_size": true, "mem_hotplug_probe": true}),
    )
    .await
    .unwrap();
    assert!(details["agent_details"].is_object(), "{details}");

    // The pause container (createContainer): rootfs on the shared file system, exec_id = the
    // container id, namespaces as containerd names them with net, cgroup and pid taken out
    // (constrainGRPCSpec, handlePidNamespace), hooks dropped, devices and pids limits
    // emptied.
    pod.provision(c, sid, resolv).await;
    let pause_spec = json!({
        "Version": "1.1.0",
        "Process": {
            "Terminal": false,
            "User": {"UID": 65535, "GID": 65535, "AdditionalGids": [65535], "Username": ""},
            "Args": ["/pause"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cwd": "/",
            "Capabilities": default_capabilities(),
            "NoNewPrivileges": true,
            "OOMScoreAdj": pod.pause_oom_score_adj,
        },
        "Root": {"Path": pod.rootfs(sid), "Readonly": true},
        "Hostname": HOSTNAME,
        "Mounts": cri_mounts(pod, &pod.shared_file(sid, "resolv.conf")),
        "Hooks": null,
        "Annotations": {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": sid,
            "io.kubernetes.cri.sandbox-name": HOSTNAME,
            "io.kubernetes.cri.sandbox-namespace": "default",
        },
        "Linux": {
            "Resources": {"Devices": [], "CPU": {"Shares": 2, "Cpus": "", "Mems": ""}},
            "CgroupsPath": format!("/kubepods/besteffort/pod-{sid}/{sid}"),
            "Namespaces": [{"Type": "ipc", "Path": ""}, {"Type": "uts", "Path": ""}, {"Type": "mount", "Path": ""}],
            "MaskedPaths": MASKED,
            "ReadonlyPaths": READONLY,
        },
    });
    rpc(
        c,
        "CreateContainer",
        json!({"container_id": sid, "exec_id": sid, "storages": [], "devices": [],
               "OCI": pause_spec, "sandbox_pidns": false}),
    )
    .await
    .unwrap();
    rpc(c, "StartContainer", json!({"container_id": sid}))
        .await
        .unwrap();
    // The shim waits for every container's init process from the start (waitProcess).
    let pause_exit = {
        let c = c.clone();
        let sid = sid.to_string();
        tokio::spawn(async move {
            let req = json!({"container_id": sid, "exec_id": sid});
            call_within(&c, "WaitProcess", req, Duration::from_secs(900)).await
        })
    };

    // The app container: an emptyDir of medium Memory (handleEphemeralStorage: an ephemeral
    // storage at kataGuestSandboxDir()/ephemeral/<volume>), a local volume
    // (handleLocalStorage: under the pause container's rootfs, .../<sid>/rootfs/local/<volume>,
    // with localDirOptions), CPU and memory limits, and its namespaces by the short OCI names
    // runtime-rs sends (libs/protocols/src/trans.rs: oci-spec's "mnt").
    pod.provision(c, app, resolv).await;
    let cache = format!("{}/sandbox/ephemeral/cache", pod.root);
    let scratch = format!("{}/{sid}/rootfs/local/scratch", pod.shared());
    let mut mounts = cri_mounts(pod, &pod.shared_file(app, "resolv.conf"));
    mounts.push(mount("/cache", "bind", &cache, &["rbind"]));
    mounts.push(mount("/scratch", "bind", &scratch, &["rbind"]));
    let app_spec = json!({
        "Version": "1.1.0",
        "Process": {
            "Terminal": false,
            "User": {"UID": 0, "GID": 0, "AdditionalGids": [0], "Username": ""},
            "Args": ["sh", "-c", APP],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=kata-pod"],
            "Cwd": "/",
            "Capabilities": default_capabilities(),
            "NoNewPrivileges": false,
            "OOMScoreAdj": 1000,
        },
        "Root": {"Path": pod.rootfs(app), "Readonly": false},
        "Hostname": HOSTNAME,
        "Mounts": mounts,
        "Annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.sandbox-id": sid,
        },
        "Linux": {
            "Resources": {
                "Devices": [],
                "Memory": {"Limit": 134217728},
                "CPU": {"Shares": 512, "Quota": 50000, "Period": 100000, "Cpus": "", "Mems": ""},
            },
            "CgroupsPath": format!("/kubepods/besteffort/pod-{sid}/{app}"),
            "Namespaces": [{"Type": "ipc", "Path": ""}, {"Type": "uts", "Path": ""}, {"Type": "mnt", "Path": ""}],
            "MaskedPaths": MASKED,
            "ReadonlyPaths": READONLY,
        },
    });
    let storages = json!([
        {"driver": "ephemeral", "driver_options": [], "source": "tmpfs", "fstype": "tmpfs",
         "options": [], "mount_point": cache, "fs_group": null, "shared": false},
        {"driver": "local", "driver_options": [], "source": "local", "fstype": "local",
         "options": ["mode=0777"], "mount_point": scratch, "fs_group": null, "shared": false},
    ]);
    rpc(
        c,
        "CreateContainer",
        json!({"container_id": app, "exec_id": app, "storages": storages, "devices": [],
               "OCI": app_spec, "sandbox_pidns": false}),
    )
    .await
    .unwrap();
    rpc(c, "StartContainer", json!({"container_id": app}))
        .await
        .unwrap();
    // No stdin from the pod: the shim's stdin stream is closed (iostream.go -> closeProcessStdin).
    rpc(
        c,
        "CloseStdin",
        json!({"container_id": app, "exec_id": app}),
    )
    .await
    .unwrap();
    let out = read_to_end(c, "ReadStdout", app).await;
    let err = read_to_end(c, "ReadStderr", app).await;
    let waited = rpc(
        c,
        "WaitProcess",
        json!({"container_id": app, "exec_id": app}),
    )
    .await
    .unwrap();
    assert_eq!(waited["status"], 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(
        lines[..4],
        [HOSTNAME, "nameserver 10.96.0.10", "cached", "x"],
        "{out}"
    );
    assert_eq!(err, "to-stderr\n");
    // The app's own CPU time, clock ticks (utime and stime, fields 14 and 15).
    let stat = lines[4].rsplit_once(')').unwrap().1;
    let ticks: Vec<u64> = stat
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();

    // statsContainer of the exited app: CPU in nanoseconds, its limits, throttled by its quota.
    let stats = rpc(c, "StatsContainer", json!({"container_id": app}))
        .await
        .unwrap();
    let cg = &stats["cgroup_stats"];
    let user = field(cg, &["cpu_stats", "cpu_usage", "usage_in_usermode"]);
    let total = field(cg, &["cpu_stats", "cpu_usage", "total_usage"]);
    let own = (ticks[0] + ticks[1]) * NS_PER_TICK;
    assert!(
        own > 0 && total / 4 <= own && own / 4 <= total && user <= total * 2,
        "CPU not in nanoseconds: total {total}, user {user}, the app's own {own} ns: {stats}"
    );
    assert!(
        field(cg, &["cpu_stats", "throttling_data", "periods"]) > 0,
        "{stats}"
    );
    assert_eq!(field(cg, &["memory_stats", "usage", "limit"]), 134217728);
    assert_eq!(field(cg, &["pids_stats", "current"]), 0);
    // The spec has no pids limit (constrainGRPCSpec empties it): Kata's 0 for "max".
    assert_eq!(field(cg, &["pids_stats", "limit"]), 0, "{stats}");
    hierarchy_figures(cg);
    let net = stats["network_stats"].as_array().unwrap();
    let iface = net
        .iter()
        .find(|n| n["name"] == pod.interface)
        .unwrap_or_else(|| panic!("no {} in {net:?}", pod.interface));
    assert!(
        field(iface, &["rx_bytes"]) + field(iface, &["tx_bytes"]) > 0,
        "{iface}"
    );
    assert!(!net.iter().any(|n| n["name"] == "lo"), "{net:?}");
    // The running pause container: its two processes (the shell and its sleep), memory in use.
    let stats = rpc(c, "StatsContainer", json!({"container_id": sid}))
        .await
        .unwrap();
    assert_eq!(
        field(&stats["cgroup_stats"], &["pids_stats", "current"]),
        2,
        "{stats}"
    );
    let m = &stats["cgroup_stats"]["memory_stats"];
    let (usage, peak) = (
        field(m, &["usage", "usage"]),
        field(m, &["usage", "max_usage"]),
    );
    assert!(usage > 0 && peak >= usage, "{m}");
    // Each hierarchy's own figures, as Kata's shims map them (metrics.go setMemoryStatsV1/V2).
    let v2 = m["stats"].get("anon").is_some();
    let (cache_key, hierarchy) = if v2 { ("file", false) } else { ("cache", true) };
    eprintln!("stats read on cgroup v{}", if v2 { 2 } else { 1 });
    assert_eq!(field(m, &["cache"]), field(m, &["stats", cache_key]), "{m}");
    assert_eq!(m["use_hierarchy"], hierarchy, "{m}");
    if v2 {
        assert_eq!(
            m["kernel_usage"]["usage"], 0,
            "v2 has no separate kernel counter: {m}"
        );
    }

    // Stopping the pod: SIGTERM to the pause container's init process by its exec id
    // (signalProcess with all = false), which it handles; then RemoveContainer for each
    // (stopContainer) and DestroySandbox (stopSandbox).
    rpc(
        c,
        "SignalProcess",
        json!({"container_id": sid, "exec_id": sid, "signal": 15}),
    )
    .await
    .unwrap();
    let pause_exit = pause_exit
        .await
        .unwrap()
        .expect("WaitProcess of the pause container");
    assert_eq!(pause_exit["status"], 0, "{pause_exit}");
    for cid in [app, sid] {
        rpc(
            c,
            "RemoveContainer",
            json!({"container_id": cid, "timeout": 0}),
        )
        .await
        .unwrap();
    }
    rpc(c, "DestroySandbox", json!({})).await.unwrap();
    let gone = rpc(c, "StatsContainer", json!({"container_id": app})).await;
    assert!(matches!(gone, Err((ttrpc::Code::NOT_FOUND, _))), "{gone:?}");
}

#[test]
fn kata_pod_replayed_against_the_agent() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping kata_pod_replayed_against_the_agent: needs root (namespaces, cgroups, mounts)");
        return;
    }
    // The pod's network: a private namespace with a veth link as the pod's interface.
    // SAFETY: unshare(2) of this thread's network namespace only; the agent started from this
    // thread inherits it.
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare(CLONE_NEWNET)"
    );
    for args in [
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ][..],
        &["addr", "add", "192.0.2.15/24", "dev", "eth0"],
        &["link", "set", "eth0p", "up"],
        &["link", "set", "eth0", "up"],
    ] {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip (iproute2)");
        assert!(ok.success(), "ip {args:?}");
    }
    // Traffic on it: a datagram to the link's subnet (its ARP request at least) is sent.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .send_to(b"kata", "192.0.2.99:9")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let kata_root = tmp.path().join("run/kata-containers");
    let config = format!(
        "[endpoints]\nallowed = [\"*\"]\n[sandbox]\nkata_root = \"{}\"\ncgroup_parent = \"{CGROUP_PARENT}\"\n",
        kata_root.display()
    );
    let mut agent = Agent::start(AgentSetup {
        config: Some(&config),
        extra_args: vec!["--log-level".into(), "debug".into()],
        ..AgentSetup::default()
    })
    .unwrap_or_else(|f| panic!("agent did not start: {:?}\n{}", f.status, f.stderr));
    let pid = std::process::id();
    let pod = Pod {
        root: kata_root.to_string_lossy().into_owned(),
        sid: format!("kata-sandbox-{pid}"),
        app: format!("kata-app-{pid}"),
        provision: Provision::Direct(kata_root.clone()),
        interface: "eth0",
        pause_oom_score_adj: pause_oom_score_adj(),
    };
    let _cleanup = Cleanup {
        cgroup_parent: CGROUP_PARENT.into(),
        containers: vec![pod.sid.clone(), pod.app.clone()],
        sandbox_dir: kata_root.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let replayed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let c = vigilctl::connect(&agent.addr, T).await.unwrap();
            replay(&c, &pod).await;
        })
    }));
    if let Err(panic) = replayed {
        let (_, log) = agent.stop();
        eprintln!("agent log:\n{log}");
        std::panic::resume_unwind(panic);
    }
    for owned in ["shared", "sandbox", ".vigil/pod"] {
        assert!(!kata_root.join(owned).exists(), "{owned} left behind");
    }
}

#[test]
#[ignore = "run by hack/qemu/e2e.sh against the agent in the QEMU guest (VIGIL_KATA_POD_ADDR)"]
fn kata_pod_in_the_guest() {
    let addr = std::env::var("VIGIL_KATA_POD_ADDR")
        .expect("VIGIL_KATA_POD_ADDR: the guest agent's address (hack/qemu/e2e.sh sets it)");
    let pod = Pod {
        root: "/run/kata-containers".into(),
        sid: "kata-sandbox".into(),
        app: "kata-app".into(),
        provision: Provision::CopyFile,
        interface: "eth0",
        pause_oom_score_adj: -998,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = vigilctl::connect(&addr, T).await.unwrap();
        replay(&c, &pod).await;
    });
}
