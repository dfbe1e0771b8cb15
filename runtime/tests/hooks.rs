//! OCI hooks with `allow_hooks`: each of the six kinds runs at its lifecycle point, in its
//! namespace, with the container's state on stdin; failures and timeouts as the OCI runtime
//! spec says; Kata's guest hooks (`guest_hook_path`). Busybox scripts write marker files.
//! Needs root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use vigil_protos::agent::*;
use vigil_protos::oci;
use vigil_runtime::{RuntimeError, SandboxConfig};

/// A hook for the runtime's namespaces: appends its kind to `<dir>/order` and writes its
/// stdin and its namespaces to `<dir>/<kind>.*`; exits 1 if `<dir>/<kind>.fail` exists, and
/// sleeps for good if `<dir>/<kind>.hang` does.
const RUNTIME_HOOK: &str = r#"#!/bin/busybox sh
kind=$1 dir=$2
/bin/busybox cat > "$dir/$kind.state"
/bin/busybox readlink /proc/self/ns/mnt > "$dir/$kind.mnt"
/bin/busybox readlink /proc/self/ns/pid > "$dir/$kind.pid"
echo "$kind" >> "$dir/order"
[ -e "$dir/$kind.hang" ] && exec /bin/busybox sleep 1000
[ -e "$dir/$kind.fail" ] && { echo "$kind failed on purpose" >&2; exit 1; }
exit 0
"#;

/// The startContainer hook, inside the container's rootfs: its path resolves there.
const START_HOOK: &str = r#"#!/bin/sh
cat > /tmp/startContainer.state
readlink /proc/self/ns/mnt > /tmp/startContainer.mnt
"#;

fn script(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn hook(path: &Path, args: &[&str]) -> oci::Hook {
    oci::Hook {
        Path: path.to_string_lossy().into_owned(),
        Args: args.iter().map(|a| a.to_string()).collect(),
        Env: vec!["PATH=/bin".into()],
        ..Default::default()
    }
}

fn runtime_hook(script: &Path, kind: &str, markers: &Path) -> oci::Hook {
    hook(script, &["hook", kind, &markers.to_string_lossy()])
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn state(markers: &Path, kind: &str) -> Value {
    serde_json::from_str(&read(markers.join(format!("{kind}.state"))))
        .unwrap_or_else(|e| panic!("{kind} state: {e}"))
}

fn own_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn allowed() -> SandboxConfig {
    SandboxConfig {
        allow_hooks: true,
        ..SandboxConfig::default()
    }
}

/// A sandbox that allows hooks, with a markers directory and [`RUNTIME_HOOK`] as a script
/// in the test's temporary directory.
async fn hook_sandbox(name: &str) -> (Fixture, PathBuf, PathBuf) {
    let f = Fixture::with_config(name, allowed()).await;
    let markers = f.tmp.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let hook = f.tmp.path().join("hook.sh");
    script(&hook, RUNTIME_HOOK);
    (f, markers, hook)
}

#[test]
fn each_hook_kind_runs_at_its_point_in_its_namespace() {
    run_in_runtime(async {
        if !privileged("each_hook_kind_runs_at_its_point_in_its_namespace") {
            return;
        }
        let (f, markers, rh) = hook_sandbox("hooks").await;
        let cid = format!("hooks-{}", std::process::id());
        script(&f.rootfs.join("hooks/start.sh"), START_HOOK);
        let hooks = oci::Hooks {
            Prestart: vec![runtime_hook(&rh, "prestart", &markers)],
            CreateRuntime: vec![runtime_hook(&rh, "createRuntime", &markers)],
            CreateContainer: vec![runtime_hook(&rh, "createContainer", &markers)],
            StartContainer: vec![hook(Path::new("/hooks/start.sh"), &[])],
            Poststart: vec![runtime_hook(&rh, "poststart", &markers)],
            Poststop: vec![runtime_hook(&rh, "poststop", &markers)],
            ..Default::default()
        };
        let script = "cat /tmp/startContainer.state; echo; echo user-process";
        let mut req = f.request(&cid, &["sh", "-c", script], false);
        req.OCI.as_mut().unwrap().Hooks = Some(hooks).into();
        req.OCI.as_mut().unwrap().Annotations.insert(
            "io.kubernetes.cri.container-type".into(),
            "container".into(),
        );
        f.sandbox.create_container(req).await.unwrap();

        // CreateContainer ran prestart, createRuntime and createContainer, in that order.
        assert_eq!(
            read(markers.join("order")),
            "prestart\ncreateRuntime\ncreateContainer"
        );
        let init_pid = cgroup_pids(&cid);
        assert_eq!(init_pid.len(), 1, "{init_pid:?}");
        for kind in ["prestart", "createRuntime"] {
            let st = state(&markers, kind);
            assert_eq!(st["id"], cid.as_str(), "{kind}: {st}");
            assert_eq!(st["pid"], init_pid[0], "{kind}: {st}");
            assert_eq!(
                st["annotations"]["io.kubernetes.cri.container-type"], "container",
                "{kind}: {st}"
            );
            // The runtime's namespaces: the agent's own.
            assert_eq!(
                read(markers.join(format!("{kind}.mnt"))),
                own_ns("mnt"),
                "{kind}"
            );
            assert_eq!(
                read(markers.join(format!("{kind}.pid"))),
                own_ns("pid"),
                "{kind}"
            );
        }
        // createContainer: the container's namespaces (its path resolved before pivot_root).
        assert_eq!(state(&markers, "createContainer")["id"], cid.as_str());
        assert_ne!(read(markers.join("createContainer.mnt")), own_ns("mnt"));
        assert_ne!(read(markers.join("createContainer.pid")), own_ns("pid"));
        assert!(!f.rootfs.join("tmp/startContainer.state").exists());

        f.sandbox
            .start_container(StartContainerRequest {
                container_id: cid.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        // startContainer ran in the container, from its rootfs, before the user process.
        let out = f.read_all(&cid, "", true).await;
        let (st, rest) = out.split_once('\n').unwrap();
        assert_eq!(rest, "user-process\n", "{out}");
        let st: Value = serde_json::from_str(st).unwrap();
        assert_eq!(st["id"], cid.as_str());
        assert_ne!(read(f.rootfs.join("tmp/startContainer.mnt")), own_ns("mnt"));
        // poststart: after the user process started, in the runtime's namespaces.
        let st = state(&markers, "poststart");
        assert_eq!(
            (&st["status"], &st["pid"]),
            (&"running".into(), &init_pid[0].into())
        );
        assert_eq!(read(markers.join("poststart.mnt")), own_ns("mnt"));
        assert_eq!(f.wait(&cid, "").await, 0);
        assert!(!markers.join("poststop.state").exists());

        // poststop: once the container is deleted.
        f.remove(&cid).await;
        let st = state(&markers, "poststop");
        assert_eq!(st["status"], "stopped", "{st}");
        assert!(st.get("pid").is_none(), "{st}");
        assert_eq!(
            read(markers.join("order")),
            "prestart\ncreateRuntime\ncreateContainer\npoststart\npoststop"
        );
        f.destroy().await;
    });
}

#[test]
fn failing_and_hanging_hooks_follow_the_oci_runtime_spec() {
    run_in_runtime(async {
        if !privileged("failing_and_hanging_hooks_follow_the_oci_runtime_spec") {
            return;
        }
        let (f, markers, rh) = hook_sandbox("hookfail").await;
        let pid = std::process::id();
        let with_hooks = |cid: &str, hooks: oci::Hooks| {
            let mut req = f.request(cid, &["sleep", "1000"], false);
            req.OCI.as_mut().unwrap().Hooks = Some(hooks).into();
            req
        };

        // A failing createRuntime hook fails CreateContainer, naming the hook; nothing is left.
        std::fs::write(markers.join("createRuntime.fail"), "").unwrap();
        let cid = format!("hookfail-cr-{pid}");
        let r = f
            .sandbox
            .create_container(with_hooks(
                &cid,
                oci::Hooks {
                    CreateRuntime: vec![runtime_hook(&rh, "createRuntime", &markers)],
                    ..Default::default()
                },
            ))
            .await;
        assert!(
            matches!(&r, Err(RuntimeError::Internal(m)) if m.contains("hook")),
            "{r:?}"
        );
        assert_container_gone(&f.dir(), &cid);

        // A prestart hook past its timeout is killed and CreateContainer fails (the call
        // would otherwise wait for the hook's 1000 s sleep).
        std::fs::write(markers.join("prestart.hang"), "").unwrap();
        let cid = format!("hookfail-hang-{pid}");
        let hanging = oci::Hook {
            Timeout: 1,
            ..runtime_hook(&rh, "prestart", &markers)
        };
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            f.sandbox.create_container(with_hooks(
                &cid,
                oci::Hooks {
                    Prestart: vec![hanging],
                    ..Default::default()
                },
            )),
        )
        .await
        .expect("the hook's timeout did not end it");
        assert!(r.is_err(), "{r:?}");
        assert_container_gone(&f.dir(), &cid);

        // Failing poststart and poststop hooks are logged; the lifecycle goes on, and the
        // next hook of the same kind still runs.
        for kind in ["poststart", "poststop"] {
            std::fs::write(markers.join(format!("{kind}.fail")), "").unwrap();
        }
        let second = f.tmp.path().join("second.sh");
        script(
            &second,
            "#!/bin/busybox sh\n/bin/busybox cat > \"$2/$1.second\"\n",
        );
        let cid = format!("hookfail-post-{pid}");
        let hooks = oci::Hooks {
            Poststart: vec![
                runtime_hook(&rh, "poststart", &markers),
                runtime_hook(&second, "poststart", &markers),
            ],
            Poststop: vec![
                runtime_hook(&rh, "poststop", &markers),
                runtime_hook(&second, "poststop", &markers),
            ],
            ..Default::default()
        };
        f.sandbox
            .create_container(with_hooks(&cid, hooks))
            .await
            .unwrap();
        f.sandbox
            .start_container(StartContainerRequest {
                container_id: cid.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(markers.join("poststart.second").exists());
        f.exec(&cid, "alive", &["true"], false).await.unwrap();
        assert_eq!(f.wait(&cid, "alive").await, 0);
        f.remove(&cid).await;
        assert!(markers.join("poststop.second").exists());
        f.destroy().await;
    });
}

#[test]
fn guest_hooks_from_guest_hook_path_run_for_every_container() {
    run_in_runtime(async {
        if !privileged("guest_hooks_from_guest_hook_path_run_for_every_container") {
            return;
        }
        // Kata's layout: <guest_hook_path>/<kind>/<executable>, run with argv [name, kind].
        let guest = tempfile::tempdir().unwrap();
        let markers = guest.path().join("markers");
        std::fs::create_dir(&markers).unwrap();
        let body = format!(
            "#!/bin/busybox sh\n/bin/busybox cat > {}/\"$1\"\n",
            markers.display()
        );
        script(&guest.path().join("prestart/10-mark"), &body);
        script(&guest.path().join("poststop/10-mark"), &body);
        let path = guest.path().to_string_lossy().into_owned();
        let f = Fixture::with_request("ghooks", allowed(), |r| r.guest_hook_path = path).await;
        let cid = format!("ghooks-{}", std::process::id());
        f.run(&cid, &["true"]).await;
        let st: Value = serde_json::from_str(&read(markers.join("prestart"))).unwrap();
        assert_eq!(st["id"], cid.as_str());
        assert_eq!(f.wait(&cid, "").await, 0);
        f.remove(&cid).await;
        assert!(markers.join("poststop").exists());
        f.destroy().await;
    });
}
