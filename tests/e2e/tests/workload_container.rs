//! A workload's view of its secrets, end to end: an attested agent (mock TEE, KBS test
//! server) runs a busybox container whose environment and secret volume hold sealed secrets
//! (the volume as Kata's Go shim sends it over virtio-fs: a shared file behind a
//! `watchable-bind` storage), unsealed in the guest before it starts; inside, `wget` from 127.0.0.1 gets a secret the
//! measured config allows and is refused one it does not. The policy (through Kata's input
//! log) saw the sealed values only.
//!
//! Needs root (namespaces, cgroups, mounts) and /bin/busybox; skips with a printed reason
//! otherwise. The test thread leaves the host's network namespace first (a new one with only
//! lo up): the KBS test server, the agent and the container all live in it, so the container
//! reaches the agent's workload API on 127.0.0.1 as a pod's containers do in Kata.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use vigil_kbc::envelope::{Algorithm, SigningKey};
use vigil_kbc::sealed;
use vigil_tests::attested::Tenant;
use vigil_tests::call;
use vigil_tests::container::{busybox_rootfs, bytes, Cleanup};

const T: Duration = Duration::from_secs(30);
const CGROUP_PARENT: &str = "vigil-e2e";
const POLICY_RESOURCE: &str = "default/vigil-policy/prod";
const DB_PASSWORD: &str = "hunter2-from-the-kbs";
const FILE_SECRET: &str = "tls-key-from-the-kbs";
const API_SECRET: &str = "api-token-from-the-kbs";

/// Every RPC the test uses is allowed; the interest here is what reaches the container.
const TENANT_POLICY: &str = "package agent_policy\n\
default CreateSandboxRequest := true\ndefault DestroySandboxRequest := true\n\
default CreateContainerRequest := true\ndefault StartContainerRequest := true\n\
default RemoveContainerRequest := true\ndefault WaitProcessRequest := true\n\
default ReadStreamRequest := true\ndefault CopyFileRequest := true\n\
default SignalProcessRequest := true\ndefault StatsContainerRequest := true\n";

/// CopyFile requests that lay out a Kubernetes secret volume as the kubelet does
/// (`..<timestamp>/` with the files, `..data` pointing at it, and one symlink per key).
fn copy_secret_volume(dir: &Path, files: &[(&str, &str)]) -> Vec<Value> {
    let stamp = "..2025_01_01_00_00_00.123456789";
    let mut reqs = vec![
        json!({"path": dir, "file_mode": libc::S_IFDIR | 0o755, "dir_mode": 0o755}),
        json!({"path": dir.join(stamp), "file_mode": libc::S_IFDIR | 0o755, "dir_mode": 0o755}),
    ];
    for (name, content) in files {
        reqs.push(json!({"path": dir.join(stamp).join(name), "file_mode": libc::S_IFREG | 0o644,
                         "dir_mode": 0o755, "file_size": content.len(), "data": content.as_bytes()}));
    }
    reqs.push(json!({"path": dir.join("..data"), "file_mode": libc::S_IFLNK | 0o777, "data": stamp.as_bytes()}));
    for (name, _) in files {
        reqs.push(
            json!({"path": dir.join(name), "file_mode": libc::S_IFLNK | 0o777,
                         "data": format!("..data/{name}").as_bytes()}),
        );
    }
    reqs
}

#[test]
fn a_container_gets_its_sealed_and_fetched_secrets_and_no_others() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipping a_container_gets_its_sealed_and_fetched_secrets_and_no_others: needs root"
        );
        return;
    }
    // SAFETY: unshare(2) of this thread's network namespace only; the runtime, the KBS, the
    // agent and its container are all created from this thread afterwards.
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare(CLONE_NEWNET)"
    );
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("`ip` (iproute2)");
    assert!(up.success());

    let tmp = tempfile::tempdir().unwrap();
    let kata_root = tmp.path().join("kata");
    let input_log = tmp.path().join("input.jsonl");
    let tenant = Tenant::new();
    let SigningKey::Es256(sealing) = SigningKey::generate(Algorithm::Es256) else {
        unreachable!()
    };
    let sealing_pub = {
        use p256::pkcs8::EncodePublicKey as _;
        sealing
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
    };
    let config = format!(
        "[endpoints]\nallowed = [\"*\"]\n\n[policy]\nsigner = \"\"\"\n{signer}\"\"\"\ninput_log = \"{log}\"\n\n\
         [attestation]\ntee = \"mock\"\npolicy_resource = \"{POLICY_RESOURCE}\"\ndeadline_secs = 10\n\n\
         [attestation.kbs]\nkbs_url = \"{url}\"\nconnect_retries = 0\n\n\
         [sandbox]\nkata_root = \"{kata}\"\ncgroup_parent = \"{CGROUP_PARENT}\"\n\n\
         [workload_api]\nlisten = \"127.0.0.1:0\"\nallowed_resources = [\"default/app/*\"]\n\n\
         [sealed_secrets]\nsigners = [\"\"\"\n{sealing_pub}\"\"\"]\n",
        signer = tenant.signer_pem(),
        log = input_log.display(),
        url = tenant.kbs.url(),
        kata = kata_root.display(),
    );
    let (initdata, digest) = Tenant::initdata(&config);
    tenant.publish_policy(POLICY_RESOURCE, TENANT_POLICY, &digest);
    for (path, secret) in [
        ("default/secrets/db", DB_PASSWORD),
        ("default/secrets/tls", FILE_SECRET),
        ("default/app/api", API_SECRET),
        ("default/other/key", "never-for-the-workload"),
    ] {
        tenant
            .kbs
            .put_resource(path, secret.as_bytes().to_vec(), Tenant::rule(&digest));
    }
    let initdata_file = tmp.path().join("initdata.toml");
    std::fs::write(&initdata_file, &initdata).unwrap();
    let agent = tenant
        .start_agent(&initdata_file, &digest)
        .unwrap_or_else(|f| panic!("agent did not start: {}", f.stderr));
    let api = agent.workload_addr().expect("workload API address");

    let pid = std::process::id();
    let sid = format!("wl-{pid}");
    let cid = format!("wl-c-{pid}");
    let bad = format!("wl-bad-{pid}");
    let _cleanup = Cleanup {
        cgroup_parent: CGROUP_PARENT.into(),
        containers: vec![cid.clone(), bad.clone()],
        sandbox_dir: kata_root.clone(),
    };
    let sealed_env = sealed::seal("default/secrets/db", &sealing, "tenant").unwrap();
    let sealed_file = sealed::seal("default/secrets/tls", &sealing, "tenant").unwrap();
    let script = format!(
        "echo \"env:$DB_PASSWORD\"; echo \"file:$(cat /etc/creds/tls.key)\"; echo \"user:$(cat /etc/creds/user)\"; \
         echo \"allowed:$(wget -q -O- http://{api}/cdh/resource/default/app/api)\"; \
         wget -q -O- http://{api}/cdh/resource/default/other/key 2>&1 || echo refused"
    );
    let out = tenant.rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        call(&c, "CreateSandbox", json!({"sandbox_id": sid})).await.unwrap();
        // Kata's layout: the image where the Go shim shares a container's rootfs
        // (<shared>/<cid>/rootfs), the secret volume as a file it shares (<cid>-<random>-<name>).
        let shared = kata_root.join("shared/containers");
        let rootfs = busybox_rootfs(&shared.join(&cid), &["sh", "cat", "echo", "wget"]);
        let secrets = shared.join(format!("{cid}-4be1d07a93c6f258-creds"));
        // Over virtio-fs the Go shim hands a secret volume over as a watchable-bind storage
        // (container.go): the mount names the copy the agent keeps at watchable/<name>.
        let watched = shared.join(format!("watchable/{cid}-4be1d07a93c6f258-creds"));
        let watchable = json!([{"driver": "watchable-bind", "source": secrets, "fstype": "bind",
                                "options": ["ro"], "mount_point": watched}]);
        for req in copy_secret_volume(&secrets, &[("tls.key", &sealed_file), ("user", "admin")]) {
            call(&c, "CopyFile", req).await.unwrap();
        }
        let spec = |args: Vec<&str>, env: Vec<String>| {
            json!({
                "Version": "1.0.2",
                "Process": {"Args": args, "Env": env, "Cwd": "/", "User": {"UID": 0, "GID": 0}},
                "Root": {"Path": rootfs},
                "Mounts": [
                    {"destination": "/proc", "source": "proc", "type_": "proc"},
                    {"destination": "/etc/creds", "source": watched, "type_": "bind", "options": ["rbind", "ro"]},
                ],
                // No network namespace: the container shares the pod's (here the test's).
                "Linux": {"Namespaces": [{"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"}]},
            })
        };

        // A sealed value signed by someone else: CreateContainer fails, naming it, and no
        // container exists afterwards.
        let SigningKey::Es256(stranger) = SigningKey::generate(Algorithm::Es256) else { unreachable!() };
        let forged = sealed::seal("default/secrets/db", &stranger, "tenant").unwrap();
        let refused = call(&c, "CreateContainer", json!({"container_id": bad, "storages": watchable,
            "OCI": spec(vec!["sh", "-c", "echo $X"], vec![format!("X={forged}")])})).await;
        match &refused {
            Err((ttrpc::Code::INVALID_ARGUMENT, m)) => {
                assert!(m.contains("OCI.Process.Env[0] (X)") && m.contains("signature"), "{m}")
            }
            other => panic!("a forged sealed secret must fail CreateContainer: {other:?}"),
        }
        let gone = call(&c, "StatsContainer", json!({"container_id": bad})).await;
        assert!(matches!(gone, Err((ttrpc::Code::NOT_FOUND, _))), "{gone:?}");

        call(&c, "CreateContainer", json!({"container_id": cid, "exec_id": cid, "storages": watchable,
            "OCI": spec(vec!["sh", "-c", &script], vec!["PATH=/bin".into(), format!("DB_PASSWORD={sealed_env}")])}))
            .await
            .unwrap();
        call(&c, "StartContainer", json!({"container_id": cid})).await.unwrap();
        let mut out = Vec::new();
        loop {
            match call(&c, "ReadStdout", json!({"container_id": cid, "len": 4096})).await {
                Ok(v) => out.extend(bytes(&v["data"])),
                Err((ttrpc::Code::INTERNAL, m)) if m.contains("eof") => break,
                Err(e) => panic!("ReadStdout: {e:?}"),
            }
        }
        let waited = call(&c, "WaitProcess", json!({"container_id": cid})).await.unwrap();
        assert_eq!(waited["status"], 0, "{}", String::from_utf8_lossy(&out));
        call(&c, "RemoveContainer", json!({"container_id": cid, "timeout": 10})).await.unwrap();
        call(&c, "DestroySandbox", json!({})).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    });
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("env:{DB_PASSWORD}"), "{out}");
    assert_eq!(lines[1], format!("file:{FILE_SECRET}"), "{out}");
    assert_eq!(lines[2], "user:admin", "{out}");
    assert_eq!(lines[3], format!("allowed:{API_SECRET}"), "{out}");
    assert!(
        out.contains("403") && lines.last() == Some(&"refused"),
        "{out}"
    );
    assert!(!out.contains("never-for-the-workload"), "{out}");

    // The policy judged the request as the host sent it: sealed values, no plaintext.
    let log = std::fs::read_to_string(&input_log).unwrap();
    assert!(
        log.contains(&sealed_env),
        "the policy input must hold the sealed value"
    );
    for plain in [DB_PASSWORD, FILE_SECRET, API_SECRET] {
        assert!(
            !log.contains(plain),
            "a plaintext reached the policy input log"
        );
    }
}
