//! Real containers (namespaces, cgroups, mounts) from a busybox rootfs. They need root; as
//! another user each test prints why it skips. After each test, cleanup is checked in the
//! kernel's own records: cgroup directories, /proc/self/mountinfo, and the processes' pids.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vigil_protos::agent::*;
use vigil_protos::oci;
use vigil_runtime::{RuntimeError, Sandbox, SandboxConfig};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "stty", "dd", "hostname", "head", "wc", "true", "ls", "id",
];

/// Every test's guard: root, and busybox present (CI installs Debian's `busybox-static`).
fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {test}: needs root (namespaces, cgroups and mounts)");
        return false;
    }
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install the busybox-static package"
    );
    true
}

struct Fixture {
    destroyed: bool,
    _tmp: tempfile::TempDir,
    run_root: PathBuf,
    rootfs: PathBuf,
    sandbox: Arc<Sandbox>,
    sandbox_id: String,
}

impl Fixture {
    async fn new(name: &str) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("busybox-rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        std::fs::write(rootfs.join("etc/resolv.conf"), "").unwrap();
        let run_root = tmp.path().join("run");
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            run_root: run_root.clone(),
            output_limit: 64 * 1024,
            ..Default::default()
        }));
        let sandbox_id = format!("{name}-{}", std::process::id());
        sandbox
            .create_sandbox(CreateSandboxRequest {
                sandbox_id: sandbox_id.clone(),
                hostname: "vigil-pod".into(),
                dns: vec!["nameserver 192.0.2.53".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        Fixture {
            destroyed: false,
            _tmp: tmp,
            run_root,
            rootfs,
            sandbox,
            sandbox_id,
        }
    }

    fn dir(&self) -> PathBuf {
        self.run_root.join(&self.sandbox_id)
    }

    /// A CreateContainer request: the busybox rootfs bind-mounted as a storage into the
    /// container's bundle, and a runc-like minimal spec.
    fn request(&self, id: &str, args: &[&str], terminal: bool) -> CreateContainerRequest {
        CreateContainerRequest {
            container_id: id.into(),
            storages: vec![Storage {
                driver: "bind".into(),
                source: self.rootfs.to_string_lossy().into_owned(),
                mount_point: format!("containers/{id}/rootfs"),
                ..Default::default()
            }],
            OCI: Some(spec(args, terminal)).into(),
            ..Default::default()
        }
    }

    async fn run(&self, id: &str, args: &[&str]) {
        self.sandbox
            .create_container(self.request(id, args, false))
            .await
            .unwrap();
        self.sandbox
            .start_container(StartContainerRequest {
                container_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn exec(
        &self,
        cid: &str,
        eid: &str,
        args: &[&str],
        terminal: bool,
    ) -> Result<(), RuntimeError> {
        self.sandbox
            .exec_process(ExecProcessRequest {
                container_id: cid.into(),
                exec_id: eid.into(),
                process: Some(process(args, terminal)).into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    async fn wait(&self, cid: &str, eid: &str) -> i32 {
        let w = self.sandbox.wait_process(WaitProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            ..Default::default()
        });
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("process did not exit")
            .unwrap()
            .status
    }

    /// Everything a stream gives until end of stream.
    async fn read_all(&self, cid: &str, eid: &str, stdout: bool) -> String {
        let mut out = Vec::new();
        loop {
            let req = ReadStreamRequest {
                container_id: cid.into(),
                exec_id: eid.into(),
                len: 4096,
                ..Default::default()
            };
            let r = if stdout {
                self.sandbox.read_stdout(req).await
            } else {
                self.sandbox.read_stderr(req).await
            };
            match r {
                Ok(d) => out.extend(d.data),
                Err(RuntimeError::EndOfStream) => break,
                Err(e) => panic!("reading {cid}/{eid}: {e}"),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn read_until(&self, cid: &str, eid: &str, needle: &str) -> String {
        let mut out = String::new();
        while !out.contains(needle) {
            let d = self
                .sandbox
                .read_stdout(ReadStreamRequest {
                    container_id: cid.into(),
                    exec_id: eid.into(),
                    len: 4096,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("waiting for {needle:?} after {out:?}: {e}"));
            out.push_str(&String::from_utf8_lossy(&d.data));
        }
        out
    }

    async fn remove(&self, id: &str) {
        self.sandbox
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
                timeout: 20,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_container_gone(&self.dir(), id);
    }

    async fn destroy(self) {
        self.sandbox
            .destroy_sandbox(DestroySandboxRequest::new())
            .await
            .unwrap();
        assert!(!self.dir().exists(), "sandbox directory left behind");
        assert!(
            mounts_under(&self.run_root).is_empty(),
            "mounts left: {:?}",
            mounts_under(&self.run_root)
        );
    }
}

/// A failed test must not leave containers running on the machine: kill what is in the
/// sandbox's cgroups and detach its mounts (the assertions already reported the failure).
impl Drop for Fixture {
    fn drop(&mut self) {
        if self.destroyed {
            return;
        }
        let prefix = self
            .sandbox_id
            .split('-')
            .next()
            .unwrap_or_default()
            .to_string();
        for root in ["/sys/fs/cgroup/pids/vigil", "/sys/fs/cgroup/vigil"] {
            let Ok(dirs) = std::fs::read_dir(root) else {
                continue;
            };
            for d in dirs.flatten() {
                if !d.file_name().to_string_lossy().starts_with(&prefix) {
                    continue;
                }
                let procs =
                    std::fs::read_to_string(d.path().join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    // SAFETY: plain kill of a process in our test's cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for m in mounts_under(&self.run_root).iter().rev() {
            let c = std::ffi::CString::new(m.as_str()).unwrap();
            // SAFETY: plain syscall.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The tests run one at a time, each on a runtime created after it has its turn: thread
/// start-up and exit elsewhere in the process are what makes libcontainer's forked helpers
/// hang (see `Watchdog` in src/youki.rs), so the tests do not create threads while another
/// test forks. Concurrency inside one test (concurrent execs, waiters) is still exercised.
fn run_serially(test: impl std::future::Future<Output = ()>) {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .max_blocking_threads(16)
        .thread_keep_alive(Duration::from_secs(600))
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

fn process(args: &[&str], terminal: bool) -> oci::Process {
    oci::Process {
        Terminal: terminal,
        ConsoleSize: terminal
            .then(|| oci::Box {
                Height: 10,
                Width: 40,
                ..Default::default()
            })
            .into(),
        User: Some(oci::User::default()).into(),
        Args: args.iter().map(|s| s.to_string()).collect(),
        Env: vec!["PATH=/bin".into(), "TERM=dumb".into()],
        Cwd: "/".into(),
        ..Default::default()
    }
}

fn spec(args: &[&str], terminal: bool) -> oci::Spec {
    let mount = |dest: &str, kind: &str, opts: &[&str]| oci::Mount {
        destination: dest.into(),
        source: kind.into(),
        type_: kind.into(),
        options: opts.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    oci::Spec {
        Version: "1.0.2".into(),
        Process: Some(process(args, terminal)).into(),
        Root: Some(oci::Root {
            Path: "rootfs".into(),
            ..Default::default()
        })
        .into(),
        Mounts: vec![
            mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            oci::Mount {
                destination: "/dev/pts".into(),
                source: "devpts".into(),
                type_: "devpts".into(),
                options: vec![
                    "nosuid".into(),
                    "noexec".into(),
                    "newinstance".into(),
                    "ptmxmode=0666".into(),
                ],
                ..Default::default()
            },
        ],
        Linux: Some(oci::Linux {
            Resources: Some(oci::LinuxResources {
                Memory: Some(oci::LinuxMemory {
                    Limit: 64 << 20,
                    ..Default::default()
                })
                .into(),
                Pids: Some(oci::LinuxPids {
                    Limit: 100,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            Namespaces: ["pid", "mount", "ipc", "uts"]
                .iter()
                .map(|t| oci::LinuxNamespace {
                    Type: t.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect()
}

fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let v1 = [
        "memory", "pids", "cpu", "freezer", "devices", "blkio", "cpuset",
    ]
    .iter()
    .map(|c| PathBuf::from(format!("/sys/fs/cgroup/{c}/vigil/{id}")));
    let v2 = std::iter::once(PathBuf::from(format!("/sys/fs/cgroup/vigil/{id}")));
    v1.chain(v2).filter(|p| p.exists()).collect()
}

fn assert_container_gone(sandbox_dir: &Path, id: &str) {
    assert!(
        cgroup_dirs(id).is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs(id)
    );
    let bundle = sandbox_dir.join("containers").join(id);
    assert!(
        mounts_under(&bundle).is_empty(),
        "mounts left: {:?}",
        mounts_under(&bundle)
    );
    assert!(!bundle.exists(), "bundle left: {}", bundle.display());
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn cgroup_pids(id: &str) -> Vec<i32> {
    let f = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|r| PathBuf::from(format!("{r}/vigil/{id}/cgroup.procs")))
        .find(|p| p.exists())
        .expect("container cgroup");
    std::fs::read_to_string(f)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn freezer_state(id: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/vigil/{id}/freezer.state"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[test]
fn full_lifecycle() {
    run_serially(async {
        if !privileged("full_lifecycle") {
            return;
        }
        let f = Fixture::new("life").await;
        let cid = format!("life-{}", std::process::id());
        let sb = &f.sandbox;

        // Init process: cat, so stdin comes back on stdout.
        sb.create_container(f.request(&cid, &["cat"], false))
            .await
            .unwrap();
        let dup = sb.create_container(f.request(&cid, &["cat"], false)).await;
        assert!(
            matches!(dup, Err(RuntimeError::AlreadyExists { .. })),
            "{dup:?}"
        );
        // Not started yet: exec is refused.
        assert!(matches!(
            f.exec(&cid, "early", &["true"], false).await,
            Err(RuntimeError::FailedPrecondition(_))
        ));
        sb.start_container(StartContainerRequest {
            container_id: cid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let w = sb
            .write_stdin(WriteStreamRequest {
                container_id: cid.clone(),
                data: b"hello through the pipe\n".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(w.len, 23);
        f.read_until(&cid, "", "hello through the pipe\n").await;
        let pids_before: Vec<i32> = cgroup_pids(&cid);
        assert_eq!(pids_before.len(), 1, "{pids_before:?}");

        // A process's OOM score is its own; the agent's stays what it was.
        let own_adj = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        sb.exec_process(ExecProcessRequest {
            container_id: cid.clone(),
            exec_id: "adj".into(),
            process: Some(oci::Process {
                OOMScoreAdj: 987,
                ..process(&["cat", "/proc/self/oom_score_adj"], false)
            })
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(f.read_all(&cid, "adj", true).await, "987\n");
        assert_eq!(f.wait(&cid, "adj").await, 0);
        assert_eq!(
            std::fs::read_to_string("/proc/self/oom_score_adj").unwrap(),
            own_adj
        );

        // Exec with pipes: exit code, stdout and stderr apart; hostname and DNS from the sandbox.
        f.exec(
            &cid,
            "pipes",
            &[
                "sh",
                "-c",
                "hostname; cat /etc/resolv.conf; echo oops >&2; exit 3",
            ],
            false,
        )
        .await
        .unwrap();
        assert_eq!(f.wait(&cid, "pipes").await, 3);
        let out = f.read_all(&cid, "pipes", true).await;
        assert_eq!(out, "vigil-pod\nnameserver 192.0.2.53\n");
        assert_eq!(f.read_all(&cid, "pipes", false).await, "oops\n");
        // Exited, waited for and drained: the exec process is gone.
        assert!(matches!(
            f.sandbox
                .wait_process(WaitProcessRequest {
                    container_id: cid.clone(),
                    exec_id: "pipes".into(),
                    ..Default::default()
                })
                .await,
            Err(RuntimeError::NotFound { .. })
        ));

        // Exec with a terminal: resize, then ask the shell for its size.
        f.exec(&cid, "tty", &["sh"], true).await.unwrap();
        sb.tty_win_resize(TtyWinResizeRequest {
            container_id: cid.clone(),
            exec_id: "tty".into(),
            row: 50,
            column: 132,
            ..Default::default()
        })
        .await
        .unwrap();
        sb.write_stdin(WriteStreamRequest {
            container_id: cid.clone(),
            exec_id: "tty".into(),
            data: b"stty size; read -r a b c d e f g r < /proc/self/stat; echo ctty=$g; exit 7\n"
                .to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        let out = f.read_until(&cid, "tty", "50 132").await;
        assert!(out.contains("50 132"), "{out:?}");
        assert_eq!(f.wait(&cid, "tty").await, 7);
        // The terminal is the shell's controlling terminal (tty_nr in /proc/self/stat is not 0).
        let all = out + &f.read_all(&cid, "tty", true).await;
        let ctty = all
            .split("ctty=")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse::<i64>().ok());
        assert!(matches!(ctty, Some(n) if n != 0), "{all:?}");
        // A pipe process has no terminal to resize.
        f.exec(&cid, "sleeper", &["sleep", "1000"], false)
            .await
            .unwrap();
        assert!(matches!(
            sb.tty_win_resize(TtyWinResizeRequest {
                container_id: cid.clone(),
                exec_id: "sleeper".into(),
                row: 1,
                column: 1,
                ..Default::default()
            })
            .await,
            Err(RuntimeError::FailedPrecondition(_))
        ));

        // Stats: the cgroup sees both processes and the memory limit.
        let stats = sb
            .stats_container(StatsContainerRequest {
                container_id: cid.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let cg = stats.cgroup_stats.unwrap();
        assert_eq!(cg.pids_stats.current, 2);
        assert_eq!(cg.pids_stats.limit, 100);
        assert_eq!(cg.memory_stats.usage.limit, 64 << 20);
        assert!(cg.memory_stats.usage.usage > 0);

        // Update: a new memory limit reaches the cgroup.
        sb.update_container(UpdateContainerRequest {
            container_id: cid.clone(),
            resources: Some(oci::LinuxResources {
                Memory: Some(oci::LinuxMemory {
                    Limit: 96 << 20,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let stats = sb
            .stats_container(StatsContainerRequest {
                container_id: cid.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(stats.cgroup_stats.memory_stats.usage.limit, 96 << 20);

        // Pause / resume: the freezer says so, and exec waits for resume.
        sb.pause_container(PauseContainerRequest {
            container_id: cid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        if let Some(state) = freezer_state(&cid) {
            assert_eq!(state, "FROZEN");
        }
        assert!(matches!(
            f.exec(&cid, "frozen", &["true"], false).await,
            Err(RuntimeError::FailedPrecondition(_))
        ));
        sb.resume_container(ResumeContainerRequest {
            container_id: cid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        if let Some(state) = freezer_state(&cid) {
            assert_eq!(state, "THAWED");
        }

        // Signal one process: only it dies, with 128 + SIGTERM.
        sb.signal_process(SignalProcessRequest {
            container_id: cid.clone(),
            exec_id: "sleeper".into(),
            signal: libc::SIGTERM as u32,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(f.wait(&cid, "sleeper").await, 128 + libc::SIGTERM);
        assert_eq!(cgroup_pids(&cid), pids_before);

        // Concurrent waiters on the init process all see its end; closing stdin ends cat.
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let sb = sb.clone();
                let cid = cid.clone();
                tokio::spawn(async move {
                    sb.wait_process(WaitProcessRequest {
                        container_id: cid,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .status
                })
            })
            .collect();
        sb.close_stdin(CloseStdinRequest {
            container_id: cid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        for w in waiters {
            assert_eq!(
                tokio::time::timeout(Duration::from_secs(30), w)
                    .await
                    .unwrap()
                    .unwrap(),
                0
            );
        }
        assert!(!pids_before.iter().any(|p| alive(*p)));

        f.remove(&cid).await;
        let gone = sb
            .stats_container(StatsContainerRequest {
                container_id: cid.clone(),
                ..Default::default()
            })
            .await;
        match gone {
            Err(RuntimeError::NotFound { kind, id }) => {
                assert_eq!((kind, id), ("container", cid.clone()))
            }
            other => panic!("{other:?}"),
        }
        f.destroy().await;
    });
}

#[test]
fn remove_kills_running_processes_and_destroy_cleans_everything() {
    run_serially(async {
        if !privileged("remove_kills_running_processes_and_destroy_cleans_everything") {
            return;
        }
        let f = Fixture::new("kill").await;
        let a = format!("kill-a-{}", std::process::id());
        let b = format!("kill-b-{}", std::process::id());
        let never_started = format!("kill-n-{}", std::process::id());
        f.run(&a, &["sleep", "1000"]).await;
        f.run(&b, &["sleep", "1000"]).await;
        f.sandbox
            .create_container(f.request(&never_started, &["sleep", "1000"], false))
            .await
            .unwrap();
        let pids_n = cgroup_pids(&never_started);
        assert_eq!(pids_n.len(), 1);
        f.exec(&a, "x", &["sleep", "1000"], false).await.unwrap();
        // Paused containers are removed too.
        f.sandbox
            .pause_container(PauseContainerRequest {
                container_id: a.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let pids_a = cgroup_pids(&a);
        let pids_b = cgroup_pids(&b);
        assert_eq!(pids_a.len(), 2);
        f.remove(&a).await;
        assert!(
            !pids_a.iter().any(|p| alive(*p)),
            "processes of {a} survive"
        );
        // DestroySandbox removes what is left: container b, its mounts, its cgroup.
        let dir = f.dir();
        f.destroy().await;
        assert!(
            !pids_b.iter().any(|p| alive(*p)),
            "processes of {b} survive"
        );
        assert_container_gone(&dir, &b);
        assert!(
            !pids_n.iter().any(|p| alive(*p)),
            "the created, never started init survives"
        );
        assert_container_gone(&dir, &never_started);
    });
}

#[test]
fn a_process_writing_100_mb_with_no_reader_finishes() {
    run_serially(async {
        if !privileged("a_process_writing_100_mb_with_no_reader_finishes") {
            return;
        }
        let f = Fixture::new("flood").await;
        let cid = format!("flood-{}", std::process::id());
        f.run(&cid, &["dd", "if=/dev/zero", "bs=1048576", "count=100"])
            .await;
        // Nobody reads; the process still ends (the drain keeps its pipe empty).
        assert_eq!(f.wait(&cid, "").await, 0);
        // What is kept is bounded: the 64 KiB buffer plus what was still in flight in the pipe
        // when the process ended, far below the 100 MB written.
        let kept = f.read_all(&cid, "", true).await;
        assert!(
            (64 * 1024..=1 << 20).contains(&kept.len()),
            "{}",
            kept.len()
        );
        assert!(kept.bytes().all(|b| b == 0));
        f.remove(&cid).await;
        f.destroy().await;
    });
}

#[test]
fn concurrent_execs_in_two_containers() {
    run_serially(async {
        if !privileged("concurrent_execs_in_two_containers") {
            return;
        }
        let f = Arc::new(Fixture::new("conc").await);
        let ids: Vec<String> = (0..2)
            .map(|i| format!("conc{i}-{}", std::process::id()))
            .collect();
        for id in &ids {
            f.run(id, &["sleep", "1000"]).await;
        }
        let mut tasks = Vec::new();
        for id in ids.clone() {
            for n in 0..3 {
                let f = f.clone();
                let id = id.clone();
                tasks.push(tokio::spawn(async move {
                    let eid = format!("e{n}");
                    f.exec(&id, &eid, &["sh", "-c", &format!("echo {id} {n}")], false)
                        .await
                        .unwrap();
                    let out = f.read_all(&id, &eid, true).await;
                    assert_eq!(f.wait(&id, &eid).await, 0);
                    assert_eq!(out, format!("{id} {n}\n"));
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        for id in &ids {
            f.remove(id).await;
        }
        Arc::try_unwrap(f).ok().unwrap().destroy().await;
    });
}

#[test]
fn oom_kill_is_reported() {
    run_serially(async {
        if !privileged("oom_kill_is_reported") {
            return;
        }
        let f = Fixture::new("oom").await;
        let cid = format!("oom-{}", std::process::id());
        let mut req = f.request(
            &cid,
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
            false,
        );
        let linux = req.OCI.as_mut().unwrap().Linux.as_mut().unwrap();
        linux
            .Resources
            .as_mut()
            .unwrap()
            .Memory
            .as_mut()
            .unwrap()
            .Limit = 64 << 20;
        f.sandbox.create_container(req).await.unwrap();
        f.sandbox
            .start_container(StartContainerRequest {
                container_id: cid.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(f.wait(&cid, "").await, 128 + libc::SIGKILL);
        let event = tokio::time::timeout(
            Duration::from_secs(30),
            f.sandbox.get_oom_event(GetOOMEventRequest::new()),
        )
        .await
        .expect("no OOM event")
        .unwrap();
        assert_eq!(event.container_id, cid);
        f.remove(&cid).await;
        f.destroy().await;
    });
}

#[test]
fn refusals_leave_nothing_behind() {
    run_serially(async {
        if !privileged("refusals_leave_nothing_behind") {
            return;
        }
        let f = Fixture::new("refuse").await;
        let cid = format!("refuse-{}", std::process::id());
        let field = |r: Result<protobuf::well_known_types::empty::Empty, RuntimeError>| match r {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        let shared = f.dir().join("shared");
        let bind = |src: &str| oci::Mount {
            destination: "/data".into(),
            source: src.into(),
            type_: "bind".into(),
            options: vec!["rbind".into()],
            ..Default::default()
        };
        type Mutation<'a> = Box<dyn Fn(&mut CreateContainerRequest) + 'a>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|r| r.OCI.as_mut().unwrap().Mounts.push(bind("data"))),
                "OCI.Mounts[3].source",
            ),
            (
                Box::new(move |r| {
                    r.OCI
                        .as_mut()
                        .unwrap()
                        .Mounts
                        .push(bind(&format!("{}/../../../etc", shared.display())))
                }),
                "OCI.Mounts[3].source",
            ),
            (
                Box::new(|r| r.OCI.as_mut().unwrap().Mounts.push(bind("/etc"))),
                "OCI.Mounts[3].source",
            ),
            (
                Box::new(|r| {
                    let m = r.OCI.as_ref().unwrap().Mounts[0].clone();
                    r.OCI.as_mut().unwrap().Mounts.push(m)
                }),
                "OCI.Mounts[3].destination",
            ),
            (
                Box::new(|r| {
                    r.OCI.as_mut().unwrap().Hooks = Some(oci::Hooks {
                        Poststart: vec![oci::Hook {
                            Path: "/bin/true".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .into()
                }),
                "OCI.Hooks",
            ),
            (
                Box::new(|r| r.storages[0].mount_point = "/tmp/elsewhere".into()),
                "storages[0].mount_point",
            ),
            (
                Box::new(|r| r.storages[0].mount_point = "../x".into()),
                "storages[0].mount_point",
            ),
            (
                Box::new(|r| r.storages[0].driver = "virtio-blk".into()),
                "storages[0].driver",
            ),
            (
                Box::new(|r| r.storages[0].source = "relative".into()),
                "storages[0].source",
            ),
            (
                Box::new(|r| r.container_id = "../up".into()),
                "container_id",
            ),
            (
                Box::new(|r| {
                    r.OCI.as_mut().unwrap().Linux.as_mut().unwrap().Namespaces[0].Path =
                        "/proc/1/ns/pid".into()
                }),
                "OCI.Linux.Namespaces[0].Path",
            ),
        ];
        for (mutate, expected) in cases {
            let mut req = f.request(&cid, &["true"], false);
            mutate(&mut req);
            assert_eq!(field(f.sandbox.create_container(req).await), expected);
            // Refused before or after mounting the rootfs storage: nothing stays.
            assert_container_gone(&f.dir(), &cid);
            assert!(
                mounts_under(&f.dir()).is_empty(),
                "{:?}",
                mounts_under(&f.dir())
            );
        }
        // Unknown ids are NOT_FOUND naming the id.
        let r = f
            .sandbox
            .start_container(StartContainerRequest {
                container_id: "nope".into(),
                ..Default::default()
            })
            .await;
        assert!(
            matches!(r, Err(RuntimeError::NotFound { ref id, .. }) if id == "nope"),
            "{r:?}"
        );
        f.run(&cid, &["sleep", "1000"]).await;
        let r = f
            .sandbox
            .signal_process(SignalProcessRequest {
                container_id: cid.clone(),
                exec_id: "ghost".into(),
                signal: 9,
                ..Default::default()
            })
            .await;
        assert!(
            matches!(r, Err(RuntimeError::NotFound { ref id, .. }) if id == "ghost"),
            "{r:?}"
        );
        // CopyFile outside the shared directory is refused.
        let r = f
            .sandbox
            .copy_file(CopyFileRequest {
                path: "/etc/vigil-should-not-exist".into(),
                file_mode: libc::S_IFREG | 0o644,
                file_size: 1,
                data: b"x".to_vec(),
                ..Default::default()
            })
            .await;
        assert_eq!(field(r), "path");
        assert!(!Path::new("/etc/vigil-should-not-exist").exists());
        f.remove(&cid).await;
        f.destroy().await;
        // Without a sandbox, container requests are NOT_FOUND.
        let none = Sandbox::new(SandboxConfig {
            run_root: std::env::temp_dir().join("vigil-no-sandbox"),
            ..Default::default()
        });
        assert!(matches!(
            none.start_container(StartContainerRequest {
                container_id: "c".into(),
                ..Default::default()
            })
            .await,
            Err(RuntimeError::NotFound {
                kind: "sandbox",
                ..
            })
        ));
    });
}

#[test]
fn shared_pid_namespace_and_sandbox_storages() {
    run_serially(async {
        if !privileged("shared_pid_namespace_and_sandbox_storages") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let run_root = tmp.path().join("run");
        // Borrow the fixture's rootfs builder through a throwaway sandbox-less fixture layout.
        let f = Fixture::new("pidns-rootfs").await;
        f.sandbox
            .destroy_sandbox(DestroySandboxRequest::new())
            .await
            .unwrap();
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            run_root: run_root.clone(),
            ..Default::default()
        }));
        let sid = format!("pidns-{}", std::process::id());
        sandbox
            .create_sandbox(CreateSandboxRequest {
                sandbox_id: sid.clone(),
                sandbox_pidns: true,
                storages: vec![
                    Storage {
                        driver: "ephemeral".into(),
                        mount_point: "scratch".into(),
                        options: vec!["size=1m".into()],
                        ..Default::default()
                    },
                    Storage {
                        driver: "local".into(),
                        mount_point: "local-dir".into(),
                        options: vec!["mode=0750".into()],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        let dir = run_root.join(&sid);
        let fstype = |p: &Path| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .find(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
                .and_then(|l| {
                    l.split(" - ")
                        .nth(1)
                        .map(|r| r.split(' ').next().unwrap().to_string())
                })
        };
        assert_eq!(fstype(&dir.join("scratch")).as_deref(), Some("tmpfs"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.join("local-dir"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o750
        );

        // The first container's PID namespace is the sandbox's; a later one joins it.
        let ids: Vec<String> = ["first", "second"]
            .iter()
            .map(|n| format!("pidns-{n}-{}", std::process::id()))
            .collect();
        for id in &ids {
            let mut req = f.request(id, &["sleep", "1000"], false);
            req.sandbox_pidns = true;
            sandbox.create_container(req).await.unwrap();
            sandbox
                .start_container(StartContainerRequest {
                    container_id: id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        sandbox
            .exec_process(ExecProcessRequest {
                container_id: ids[1].clone(),
                exec_id: "look".into(),
                process: Some(process(&["cat", "/proc/1/cmdline"], false)).into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        loop {
            match sandbox
                .read_stdout(ReadStreamRequest {
                    container_id: ids[1].clone(),
                    exec_id: "look".into(),
                    len: 4096,
                    ..Default::default()
                })
                .await
            {
                Ok(d) => out.extend(d.data),
                Err(RuntimeError::EndOfStream) => break,
                Err(e) => panic!("{e}"),
            }
        }
        // PID 1 seen from the second container is the first container's `sleep 1000`.
        assert_eq!(out, b"sleep\x001000\x00");
        // Without a shared namespace in the sandbox, asking for it is refused.
        sandbox
            .destroy_sandbox(DestroySandboxRequest::new())
            .await
            .unwrap();
        assert!(fstype(&dir.join("scratch")).is_none());
        assert!(!dir.exists());
        for id in &ids {
            assert_container_gone(&dir, id);
        }
        sandbox
            .create_sandbox(CreateSandboxRequest {
                sandbox_id: sid.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut req = f.request(&ids[0], &["true"], false);
        req.sandbox_pidns = true;
        match sandbox.create_container(req).await {
            Err(RuntimeError::InvalidArgument { field, .. }) => assert_eq!(field, "sandbox_pidns"),
            other => panic!("{other:?}"),
        }
        assert_container_gone(&dir, &ids[0]);
        sandbox
            .destroy_sandbox(DestroySandboxRequest::new())
            .await
            .unwrap();
        let mut f = f;
        f.destroyed = true;
    });
}

#[test]
fn oom_kill_of_a_process_the_agent_did_not_start_is_reported() {
    run_serially(async {
        if !privileged("oom_kill_of_a_process_the_agent_did_not_start_is_reported") {
            return;
        }
        let f = Fixture::new("oomchild").await;
        let cid = format!("oomchild-{}", std::process::id());
        // The shell survives; only its child dd is killed, so no process of ours dies of it.
        let mut req = f.request(
            &cid,
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/dev/null bs=256M count=1; sleep 1000",
            ],
            false,
        );
        let linux = req.OCI.as_mut().unwrap().Linux.as_mut().unwrap();
        linux
            .Resources
            .as_mut()
            .unwrap()
            .Memory
            .as_mut()
            .unwrap()
            .Limit = 64 << 20;
        f.sandbox.create_container(req).await.unwrap();
        f.sandbox
            .start_container(StartContainerRequest {
                container_id: cid.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let event = tokio::time::timeout(
            Duration::from_secs(30),
            f.sandbox.get_oom_event(GetOOMEventRequest::new()),
        )
        .await
        .expect("no OOM event")
        .unwrap();
        assert_eq!(event.container_id, cid);
        f.remove(&cid).await;
        f.destroy().await;
    });
}
