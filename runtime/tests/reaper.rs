//! With a PID 1 style orphan reaper running in the same process (as the agent has when it is
//! the VM's init), container processes must still report their own exit codes: the sandbox
//! spawns them under the reaper's claim. A separate test binary, because the reaper waits
//! for every unclaimed child of the process.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vigil_protos::agent::*;
use vigil_protos::oci;
use vigil_runtime::{ChildClaims, ClaimToken, Sandbox, SandboxConfig};

/// The agent's reaper in miniature: waits for every exited child not claimed.
#[derive(Clone, Default)]
struct Reaper {
    claimed: Arc<Mutex<HashSet<i32>>>,
    reaped: Arc<Mutex<Vec<i32>>>,
}

struct Claim(i32, Arc<Mutex<HashSet<i32>>>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.1.lock().unwrap().remove(&self.0);
    }
}

impl ChildClaims for Reaper {
    fn claimed(&self, spawn: &mut dyn FnMut() -> Option<i32>) -> Option<ClaimToken> {
        let mut set = self.claimed.lock().unwrap();
        let pid = spawn()?;
        set.insert(pid);
        Some(Box::new(Claim(pid, self.claimed.clone())))
    }
}

impl Reaper {
    fn sweep(&self) {
        let set = self.claimed.lock().unwrap();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                if set.contains(&pid) {
                    continue;
                }
                let mut status = 0;
                // SAFETY: waitpid on one pid with a valid status pointer.
                if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                    self.reaped.lock().unwrap().push(pid);
                }
            }
        }
    }
}

fn oci_process(args: &[&str]) -> oci::Process {
    oci::Process {
        Args: args.iter().map(|s| s.to_string()).collect(),
        Env: vec!["PATH=/bin".into()],
        Cwd: "/".into(),
        User: Some(oci::User::default()).into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exit_codes_survive_a_pid1_reaper() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipping exit_codes_survive_a_pid1_reaper: needs root (namespaces, cgroups, mounts)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();

    let reaper = Reaper::default();
    let sweeper = {
        let reaper = reaper.clone();
        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).unwrap();
        tokio::spawn(async move {
            loop {
                reaper.sweep();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        })
    };
    let sandbox = Sandbox::new(SandboxConfig {
        kata_root: tmp.path().join("kata"),
        fork_helper: env!("CARGO_BIN_EXE_vigil-fork-helper").into(),
        ..Default::default()
    })
    .with_child_claims(Arc::new(reaper.clone()));
    let sid = format!("reap-{}", std::process::id());
    sandbox
        .create_sandbox(CreateSandboxRequest {
            sandbox_id: sid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The image, where the host's shared file system would put it.
    let rootfs = tmp.path().join("kata/shared/containers/rootfs");
    for d in ["bin", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("install busybox-static");
    for a in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    let cid = format!("reap-c-{}", std::process::id());
    sandbox
        .create_container(CreateContainerRequest {
            container_id: cid.clone(),
            storages: vec![Storage {
                driver: "bind".into(),
                source: rootfs.to_string_lossy().into_owned(),
                mount_point: format!("{cid}/rootfs"),
                ..Default::default()
            }],
            OCI: Some(oci::Spec {
                Process: Some(oci_process(&["sleep", "1000"])).into(),
                Mounts: vec![oci::Mount {
                    destination: "/proc".into(),
                    source: "proc".into(),
                    type_: "proc".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    sandbox
        .start_container(StartContainerRequest {
            container_id: cid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Several short-lived execs: each exit makes the reaper sweep while others are spawning.
    for code in 1..=6 {
        let eid = format!("e{code}");
        sandbox
            .exec_process(ExecProcessRequest {
                container_id: cid.clone(),
                exec_id: eid.clone(),
                process: Some(oci_process(&["sh", "-c", &format!("exit {code}")])).into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let wait = sandbox.wait_process(WaitProcessRequest {
            container_id: cid.clone(),
            exec_id: eid,
            ..Default::default()
        });
        let status = tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap()
            .unwrap()
            .status;
        assert_eq!(status, code);
    }
    sandbox
        .remove_container(RemoveContainerRequest {
            container_id: cid.clone(),
            timeout: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    sandbox
        .destroy_sandbox(DestroySandboxRequest::new())
        .await
        .unwrap();
    sweeper.abort();
    assert!(!Path::new("/sys/fs/cgroup/pids/vigil").join(&cid).exists());
}
