//! Real containers (namespaces, cgroups, mounts) from a busybox rootfs. They need root; as
//! another user each test prints why it skips. After each test, cleanup is checked in the
//! kernel's own records: cgroup directories, /proc/self/mountinfo, and the processes' pids.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vigil_protos::agent::*;
use vigil_protos::oci;
use vigil_runtime::{RuntimeError, Sandbox, SandboxConfig};

#[test]
fn full_lifecycle() {
    run_in_runtime(async {
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
    run_in_runtime(async {
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
    run_in_runtime(async {
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
    run_in_runtime(async {
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
    run_in_runtime(async {
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
fn shared_pid_namespace_and_sandbox_storages() {
    run_in_runtime(async {
        if !privileged("shared_pid_namespace_and_sandbox_storages") {
            return;
        }
        // The layout under `[sandbox] run_root` (per sandbox id), for hosts that are not Kata's.
        let tmp = tempfile::tempdir().unwrap();
        let run_root = tmp.path().join("run");
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            run_root: Some(run_root.clone()),
            fork_helper: FORK_HELPER.into(),
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
                        mount_point: "sandbox/ephemeral/scratch".into(),
                        options: vec!["size=1m".into()],
                        ..Default::default()
                    },
                    Storage {
                        driver: "local".into(),
                        mount_point: format!("shared/containers/{sid}/rootfs/local/dir"),
                        options: vec!["mode=0750".into()],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        let dir = run_root.join(&sid);
        let rootfs = dir.join("shared/containers/busybox");
        busybox_rootfs(&rootfs);
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
        let scratch = dir.join("sandbox/ephemeral/scratch");
        assert_eq!(fstype(&scratch).as_deref(), Some("tmpfs"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.join(format!("shared/containers/{sid}/rootfs/local/dir")))
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
            let mut req = request_with(&rootfs, id, &["sleep", "1000"], false);
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
        assert!(fstype(&scratch).is_none());
        assert!(!dir.exists(), "a run_root sandbox's directory goes with it");
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
        busybox_rootfs(&rootfs);
        let mut req = request_with(&rootfs, &ids[0], &["true"], false);
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
    });
}

#[test]
fn oom_kill_of_a_process_the_agent_did_not_start_is_reported() {
    run_in_runtime(async {
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

/// The fork helper under stress (run by hand, figures in docs/BENCHMARKS.md):
/// `cargo test --release -p vigil-runtime --test lifecycle -- --ignored --nocapture fork_stress`
/// (`FORK_STRESS_ROUNDS`, default 50, per worker). Four workers each create, start, exec into
/// twice and remove containers in a loop while four other threads start and end threads and
/// tokio runtimes without pause: the thread churn that hung libcontainer's forked children
/// when they were forked from this process. Every call must finish (bounded at 30 s each).
#[test]
#[ignore]
fn fork_stress() {
    run_in_runtime(async {
        if !privileged("fork_stress") {
            return;
        }
        let rounds: usize = std::env::var("FORK_STRESS_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::spawn(|| std::hint::black_box(1))
                            .join()
                            .unwrap();
                        if n.is_multiple_of(16) {
                            drop(
                                tokio::runtime::Builder::new_multi_thread()
                                    .worker_threads(2)
                                    .build(),
                            );
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let f = Arc::new(Fixture::new("stress").await);
        let started = std::time::Instant::now();
        let mut workers = Vec::new();
        for w in 0..4 {
            let f = f.clone();
            workers.push(tokio::spawn(async move {
                let mut times = Vec::new();
                for r in 0..rounds {
                    let id = format!("s{w}-{r}-{}", std::process::id());
                    let t = std::time::Instant::now();
                    tokio::time::timeout(Duration::from_secs(30), f.run(&id, &["sleep", "1000"]))
                        .await
                        .expect("create + start finished");
                    times.push(t.elapsed());
                    for e in 0..2 {
                        let eid = format!("e{e}");
                        let t = std::time::Instant::now();
                        tokio::time::timeout(
                            Duration::from_secs(30),
                            f.exec(&id, &eid, &["true"], false),
                        )
                        .await
                        .expect("exec finished")
                        .unwrap();
                        times.push(t.elapsed());
                        assert_eq!(f.wait(&id, &eid).await, 0);
                    }
                    f.remove(&id).await;
                }
                times
            }));
        }
        let mut times = Vec::new();
        for w in workers {
            times.extend(w.await.unwrap());
        }
        let total = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let threads: u64 = churn.into_iter().map(|c| c.join().unwrap()).sum();
        times.sort();
        let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
        println!(
            "fork_stress: {} creates+starts and {} execs in {:.1} s while {threads} threads came and went; \
             per call p50 {:?}, p99 {:?}, max {:?}",
            4 * rounds,
            8 * rounds,
            total.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            times.last().unwrap()
        );
        Arc::try_unwrap(f).ok().unwrap().destroy().await;
    });
}
