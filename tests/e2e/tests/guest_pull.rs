//! Guest image pull through the real `vigil-agent` binary, with the storages exactly as Kata's
//! runtime sends them for a confidential pod: the pause container from the pause bundle, then
//! a container whose image the agent pulls from a real registry (Debian's docker-registry on
//! 127.0.0.1) under a signed-image policy, runs, and is removed with its rootfs.
//! Needs root (mounts, namespaces, cgroups) and the docker-registry package; skips otherwise.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use vigil_test_registry::{Registry, SigningKey};
use vigil_tests::container::{bytes, Cleanup};
use vigil_tests::{call, Agent, AgentSetup};

const CGROUP_PARENT: &str = "vigil-e2e-pull";

/// The pause bundle a guest image carries (Kata's /pause_bundle layout): busybox stands in for
/// the pause program.
fn pause_bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("pause_bundle");
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
    let config = json!({"ociVersion": "1.0.2", "process": {
        "args": ["/bin/busybox", "sleep", "2147483647"], "env": ["PATH=/bin"], "cwd": "/",
        "user": {"uid": 65535, "gid": 65535}}, "root": {"path": "rootfs"}});
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    bundle
}

/// A storage as Kata's runtime builds it (handleImageGuestPullBlockVolume).
fn guest_pull_storage(source: &str, mount_point: &Path, annotations: &Value) -> Value {
    let options = json!({"metadata": annotations}).to_string();
    json!({
        "driver": "image_guest_pull",
        "source": source,
        "fstype": "overlay",
        "mount_point": mount_point,
        "driver_options": [format!("image_guest_pull={options}")],
    })
}

fn spec(rootfs: &Path, process: Value, annotations: &Value) -> Value {
    json!({
        "Version": "1.0.2",
        "Process": process,
        "Root": {"Path": rootfs, "Readonly": false},
        // What containerd's default spec (and so Kata's runtime) mounts first.
        "Mounts": [
            {"destination": "/proc", "source": "proc", "type_": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "source": "tmpfs", "type_": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "Annotations": annotations,
        "Linux": {"Namespaces": [{"Type": "pid"}, {"Type": "mnt"}, {"Type": "ipc"}, {"Type": "uts"}]},
    })
}

fn mounted_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

#[test]
fn pause_then_pulled_container_through_the_agent() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root (mounts, namespaces, cgroups)");
        return;
    }
    if let Some(why) = vigil_test_registry::unavailable() {
        eprintln!("skipping: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let key = SigningKey::from_seed(11);
    let image = vigil_test_registry::busybox_image(
        "hello from a guest-pulled image\n",
        json!({"Cmd": ["/bin/sh", "-c", "echo cwd=$PWD image=$FROM_IMAGE host=$HOST; cat /etc/message"],
               "Env": ["PATH=/bin", "FROM_IMAGE=1"], "WorkingDir": "/tmp"}),
    );
    let digest = registry.push_image("apps/hello", "v1", &image);
    let repo = format!("{}/apps/hello", registry.addr());
    registry.cosign_sign("apps/hello", &digest, &repo, &key);
    registry.push_image("apps/unsigned", "v1", &image);
    let key_file = tmp.path().join("cosign.pub");
    std::fs::write(&key_file, key.public_pem()).unwrap();
    let key_uri = format!("file://{}", key_file.display());
    let policy_file = tmp.path().join("image-policy.json");
    std::fs::write(
        &policy_file,
        json!({"default": [{"type": "reject"}], "transports": {"docker": {
            format!("{}/apps", registry.addr()): [{"type": "sigstoreSigned", "keyPath": key_uri}]}}})
        .to_string(),
    )
    .unwrap();
    let run_root = tmp.path().join("run");
    let store = tmp.path().join("store");
    let config = format!(
        "[endpoints]\nallowed = [\"*\"]\n[sandbox]\nrun_root = \"{}\"\ncgroup_parent = \"{CGROUP_PARENT}\"\n\
         [image]\npolicy = \"file://{}\"\nsignature_keys = [\"{key_uri}\"]\ninsecure_registries = [\"{}\"]\n\
         store_dir = \"{}\"\npause_bundle = \"{}\"\n",
        run_root.display(),
        policy_file.display(),
        registry.addr(),
        store.display(),
        pause_bundle(tmp.path()).display(),
    );
    let agent = Agent::start(AgentSetup {
        config: Some(&config),
        ..AgentSetup::default()
    })
    .unwrap_or_else(|f| panic!("agent did not start: {:?}\n{}", f.status, f.stderr));
    let pid = std::process::id();
    let (sid, pause_id, app_id) = (
        format!("pod-{pid}"),
        format!("pause-{pid}"),
        format!("app-{pid}"),
    );
    let sandbox_dir = run_root.join(&sid);
    let _cleanup = Cleanup {
        cgroup_parent: CGROUP_PARENT.into(),
        containers: vec![pause_id.clone(), app_id.clone()],
        sandbox_dir: tmp.path().to_path_buf(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, vigil_tests::CALL_TIMEOUT).await.unwrap();
        call(&c, "CreateSandbox", json!({"sandbox_id": sid, "hostname": "pod"})).await.unwrap();

        // The sandbox container: its image is the pause bundle, never pulled.
        let pause_rootfs = sandbox_dir.join(&pause_id).join("rootfs");
        let pause_ann = json!({"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": pause_id});
        call(&c, "CreateContainer", json!({
            "container_id": pause_id, "exec_id": pause_id,
            "storages": [guest_pull_storage("pause", &pause_rootfs, &pause_ann)],
            "OCI": spec(&pause_rootfs, json!({"Args": ["/pause"], "Cwd": "/"}), &pause_ann),
        }))
        .await?;
        call(&c, "StartContainer", json!({"container_id": pause_id})).await.unwrap();
        assert!(pause_rootfs.join("bin/busybox").is_file(), "the pause program comes from the bundle");

        // The workload: pulled, verified, mounted; the process defaults come from the image.
        let app_rootfs = sandbox_dir.join(&app_id).join("rootfs");
        let image_ref = format!("{repo}:v1");
        let ann = json!({"io.kubernetes.cri.container-type": "container",
                         "io.kubernetes.cri.image-name": image_ref, "io.kubernetes.cri.sandbox-id": pause_id});
        call(&c, "CreateContainer", json!({
            "container_id": app_id, "exec_id": app_id,
            "storages": [guest_pull_storage(&image_ref, &app_rootfs, &ann)],
            "OCI": spec(&app_rootfs, json!({"Args": [], "Env": ["HOST=1"], "User": {"UID": 0, "GID": 0}}), &ann),
        }))
        .await
        .unwrap();
        assert_eq!(mounted_under(&app_rootfs), [app_rootfs.to_string_lossy()], "overlay rootfs mounted");
        call(&c, "StartContainer", json!({"container_id": app_id})).await.unwrap();
        let mut out = Vec::new();
        loop {
            match call(&c, "ReadStdout", json!({"container_id": app_id, "exec_id": "", "len": 4096})).await {
                Ok(v) => out.extend(bytes(&v["data"])),
                Err((ttrpc::Code::INTERNAL, m)) if m.contains("eof") => break,
                Err(e) => panic!("ReadStdout: {e:?}"),
            }
        }
        assert_eq!(String::from_utf8_lossy(&out), "cwd=/tmp image=1 host=1\nhello from a guest-pulled image\n");
        let waited = call(&c, "WaitProcess", json!({"container_id": app_id, "exec_id": ""})).await.unwrap();
        assert_eq!(waited["status"], 0);

        let metrics = call(&c, "GetMetrics", json!({})).await.unwrap();
        let text = metrics["metrics"].as_str().unwrap();
        assert!(text.contains("vigil_image_pulls_total{outcome=\"allowed\"} 1"), "{text}");
        assert!(text.contains(&format!("vigil_image_last_pull_seconds{{image=\"{image_ref}\",digest=\"{digest}\"}}")), "{text}");

        // An image the policy refuses: PERMISSION_DENIED, nothing mounted or left behind.
        let bad_id = format!("bad-{pid}");
        let bad_rootfs = sandbox_dir.join(&bad_id).join("rootfs");
        let bad_ref = format!("{}/apps/unsigned:v1", registry.addr());
        let refused = call(&c, "CreateContainer", json!({
            "container_id": bad_id,
            "storages": [guest_pull_storage(&bad_ref, &bad_rootfs, &json!({"io.kubernetes.cri.container-type": "container"}))],
            "OCI": spec(&bad_rootfs, json!({"Args": []}), &json!({})),
        }))
        .await;
        assert!(matches!(&refused, Err((ttrpc::Code::PERMISSION_DENIED, m)) if m.contains("no cosign signature")), "{refused:?}");
        assert!(!bad_rootfs.exists());

        call(&c, "RemoveContainer", json!({"container_id": app_id, "timeout": 10})).await.unwrap();
        assert!(mounted_under(&app_rootfs).is_empty(), "rootfs unmounted with the container");
        assert!(!app_rootfs.exists(), "rootfs removed with the container");
        assert_eq!(std::fs::read_dir(store.join("rootfs")).unwrap().count(), 0, "writable layer deleted");
        assert_eq!(std::fs::read_dir(store.join("layers")).unwrap().count(), 1, "layers stay cached for the boot");
        call(&c, "RemoveContainer", json!({"container_id": pause_id, "timeout": 10})).await.unwrap();
        assert!(!pause_rootfs.exists());
        call(&c, "DestroySandbox", json!({})).await.unwrap();
        Ok::<(), (ttrpc::Code, String)>(())
    });
    let mut agent = agent;
    let (_, log) = agent.stop();
    if let Err(e) = outcome {
        panic!("{e:?}\nagent log:\n{log}");
    }
    assert!(!sandbox_dir.exists(), "sandbox left behind");
    let audit = std::fs::read_to_string(agent.dir.path().join("audit.jsonl")).unwrap();
    let pulls: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "image_pull")
        .collect();
    assert_eq!(
        pulls.len(),
        2,
        "one record per pull decision: {audit}\n{log}"
    );
    assert_eq!(pulls[0]["decision"], "allowed");
    assert_eq!(pulls[0]["digest"], digest.as_str());
    assert_eq!(
        pulls[0]["rule"],
        format!("transports.docker[\"{}/apps\"]", registry.addr())
    );
    assert_eq!(pulls[1]["decision"], "denied");
    assert_eq!(
        pulls[1]["image"],
        format!("{}/apps/unsigned:v1", registry.addr())
    );
}
