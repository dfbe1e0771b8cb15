//! Kata's conventions for a pod's processes: the init process addressed by the exec id its
//! CreateContainer carried (Kata's Go shim sends the container id there, kata_agent.go
//! createContainer) as well as by `""`, SignalProcess as Kata's agent reads it, and the pod's
//! IPC and UTS namespaces shared by its containers. Needs root.

mod common;

use std::time::Duration;

use common::*;
use vigil_protos::agent::*;
use vigil_runtime::RuntimeError;

/// CreateContainer with `exec_id` set, as Kata's Go shim sends it, then started.
async fn run_with_exec_id(f: &Fixture, cid: &str, args: &[&str], terminal: bool) {
    let mut req = f.request(cid, args, terminal);
    req.exec_id = cid.to_string();
    f.sandbox.create_container(req).await.unwrap();
    f.sandbox
        .start_container(StartContainerRequest {
            container_id: cid.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn signal(f: &Fixture, cid: &str, eid: &str, signal: i32) {
    f.sandbox
        .signal_process(SignalProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            signal: signal as u32,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// WaitProcess, failing the test (instead of hanging) if the process does not end.
async fn wait_briefly(f: &Fixture, cid: &str, eid: &str) -> i32 {
    tokio::time::timeout(Duration::from_secs(15), f.wait(cid, eid))
        .await
        .unwrap_or_else(|_| panic!("{cid}/{eid:?} still running"))
}

#[test]
fn the_init_process_answers_to_its_exec_id_and_to_empty() {
    run_in_runtime(async {
        if !privileged("the_init_process_answers_to_its_exec_id_and_to_empty") {
            return;
        }
        let f = Fixture::new("addr").await;
        let sb = &f.sandbox;
        let pid = std::process::id();

        // Pipes: stdin, stdout and stderr of the init process by its exec id (and by "").
        let io = format!("addr-io-{pid}");
        let script = "read l; echo out:$l; echo err:$l >&2; exit 7";
        run_with_exec_id(&f, &io, &["sh", "-c", script], false).await;
        let w = sb
            .write_stdin(WriteStreamRequest {
                container_id: io.clone(),
                exec_id: io.clone(),
                data: b"ping\n".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(w.len, 5);
        sb.close_stdin(CloseStdinRequest {
            container_id: io.clone(),
            exec_id: io.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(f.read_all(&io, &io, true).await, "out:ping\n");
        assert_eq!(f.read_all(&io, "", false).await, "err:ping\n");
        assert_eq!(wait_briefly(&f, &io, &io).await, 7);
        assert_eq!(wait_briefly(&f, &io, "").await, 7);
        // Still there after the wait and the reads (as long as the container is).
        assert_eq!(wait_briefly(&f, &io, &io).await, 7);

        // A terminal: TtyWinResize by the exec id.
        let tty = format!("addr-tty-{pid}");
        run_with_exec_id(&f, &tty, &["sh", "-c", "read x; stty size"], true).await;
        sb.tty_win_resize(TtyWinResizeRequest {
            container_id: tty.clone(),
            exec_id: tty.clone(),
            row: 31,
            column: 101,
            ..Default::default()
        })
        .await
        .unwrap();
        sb.write_stdin(WriteStreamRequest {
            container_id: tty.clone(),
            exec_id: tty.clone(),
            data: b"\n".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        f.read_until(&tty, &tty, "31 101").await;
        assert_eq!(wait_briefly(&f, &tty, &tty).await, 0);

        // An exec cannot take the init process's exec id; another id is its own process.
        let long = format!("addr-long-{pid}");
        run_with_exec_id(&f, &long, &["sleep", "1000"], false).await;
        let taken = f.exec(&long, &long, &["true"], false).await;
        assert!(
            matches!(&taken, Err(RuntimeError::AlreadyExists { id, .. }) if *id == long),
            "{taken:?}"
        );
        f.exec(&long, "e1", &["sh", "-c", "echo from-e1"], false)
            .await
            .unwrap();
        assert_eq!(f.read_all(&long, "e1", true).await, "from-e1\n");
        assert_eq!(wait_briefly(&f, &long, "e1").await, 0);
        let other = tokio::time::timeout(Duration::from_secs(5), async {
            sb.wait_process(WaitProcessRequest {
                container_id: long.clone(),
                exec_id: "nope".into(),
                ..Default::default()
            })
            .await
        })
        .await
        .expect("an unknown exec id answers at once");
        assert!(
            matches!(&other, Err(RuntimeError::NotFound { id, .. }) if id == "nope"),
            "{other:?}"
        );
        for c in [&io, &tty, &long] {
            f.remove(c).await;
        }
        f.destroy().await;
    });
}

#[test]
fn a_signal_goes_to_one_process_unless_it_is_sigkill_to_all() {
    run_in_runtime(async {
        if !privileged("a_signal_goes_to_one_process_unless_it_is_sigkill_to_all") {
            return;
        }
        let f = Fixture::new("sig").await;
        let pid = std::process::id();

        // An init process that catches SIGTERM gets SIGTERM, and only it does: "" is the init
        // process, not every process (the exec'd sleeper then dies with the PID namespace).
        let trap = format!("sig-trap-{pid}");
        let script = "trap 'echo term; exit 3' TERM; echo ready; sleep 1000 & wait";
        run_with_exec_id(&f, &trap, &["sh", "-c", script], false).await;
        f.read_until(&trap, &trap, "ready").await;
        f.exec(&trap, "sleeper", &["sleep", "1000"], false)
            .await
            .unwrap();
        signal(&f, &trap, "", libc::SIGTERM).await;
        assert_eq!(wait_briefly(&f, &trap, &trap).await, 3);
        assert_eq!(
            wait_briefly(&f, &trap, "sleeper").await,
            128 + libc::SIGKILL,
            "the exec'd process got a signal of its own"
        );

        // An init process without a SIGTERM handler would ignore SIGTERM (PID 1 of its
        // namespace): as in Kata's agent it gets SIGKILL instead.
        let plain = format!("sig-plain-{pid}");
        run_with_exec_id(&f, &plain, &["sleep", "1000"], false).await;
        signal(&f, &plain, &plain, libc::SIGTERM).await;
        assert_eq!(wait_briefly(&f, &plain, &plain).await, 128 + libc::SIGKILL);

        // Other signals are delivered as they are, to the process named.
        let usr = format!("sig-usr-{pid}");
        run_with_exec_id(&f, &usr, &["sleep", "1000"], false).await;
        let script = "trap 'echo usr1; exit 4' USR1; echo ready; sleep 1000 & wait";
        f.exec(&usr, "catcher", &["sh", "-c", script], false)
            .await
            .unwrap();
        f.read_until(&usr, "catcher", "ready").await;
        signal(&f, &usr, "catcher", libc::SIGUSR1).await;
        assert_eq!(wait_briefly(&f, &usr, "catcher").await, 4);
        // SIGKILL with "" is every process of the container.
        f.exec(&usr, "sleeper", &["sleep", "1000"], false)
            .await
            .unwrap();
        signal(&f, &usr, "", libc::SIGKILL).await;
        assert_eq!(wait_briefly(&f, &usr, &usr).await, 128 + libc::SIGKILL);
        assert_eq!(wait_briefly(&f, &usr, "sleeper").await, 128 + libc::SIGKILL);

        for c in [&trap, &plain, &usr] {
            f.remove(c).await;
        }
        f.destroy().await;
    });
}

/// The namespaces of a container's process, as `readlink /proc/self/ns/<kind>` prints them.
async fn namespaces_of(f: &Fixture, cid: &str, eid: &str) -> String {
    let script = "for n in ipc uts mnt pid; do readlink /proc/self/ns/$n; done; hostname";
    f.exec(cid, eid, &["sh", "-c", script], false)
        .await
        .unwrap();
    let out = f.read_all(cid, eid, true).await;
    assert_eq!(f.wait(cid, eid).await, 0);
    out
}

#[test]
fn the_containers_of_a_pod_share_its_ipc_and_uts_namespaces_only() {
    run_in_runtime(async {
        if !privileged("the_containers_of_a_pod_share_its_ipc_and_uts_namespaces_only") {
            return;
        }
        let f = Fixture::new("podns").await;
        let pid = std::process::id();
        let (a, b) = (format!("podns-a-{pid}"), format!("podns-b-{pid}"));
        f.run(&a, &["sleep", "1000"]).await;
        // The second one's spec names no IPC or UTS namespace at all: it joins the pod's too.
        let mut req = f.request(&b, &["sleep", "1000"], false);
        let linux = req.OCI.as_mut().unwrap().Linux.as_mut().unwrap();
        linux
            .Namespaces
            .retain(|n| n.Type != "ipc" && n.Type != "uts");
        f.sandbox.create_container(req).await.unwrap();
        f.sandbox
            .start_container(StartContainerRequest {
                container_id: b.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let in_a = namespaces_of(&f, &a, "ns").await;
        let in_b = namespaces_of(&f, &b, "ns").await;
        let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
        let (la, lb) = (lines(&in_a), lines(&in_b));
        assert_eq!(la.len(), 5, "{in_a}");
        let own = |kind: &str| {
            std::fs::read_link(format!("/proc/self/ns/{kind}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        // IPC and UTS: the same in both containers, not the agent's.
        assert_eq!(la[..2], lb[..2], "{in_a}{in_b}");
        assert_ne!(la[0], own("ipc"));
        assert_ne!(la[1], own("uts"));
        // Mount and PID: each container's own.
        assert_ne!(la[2], lb[2]);
        assert_ne!(la[3], lb[3]);
        // The pod's hostname, from CreateSandbox, in the pod's UTS namespace only.
        assert_eq!((la[4].as_str(), lb[4].as_str()), ("vigil-pod", "vigil-pod"));
        assert_ne!(
            nix::unistd::gethostname().unwrap().to_string_lossy(),
            "vigil-pod"
        );
        for c in [&a, &b] {
            f.remove(c).await;
        }
        f.destroy().await;
    });
}
