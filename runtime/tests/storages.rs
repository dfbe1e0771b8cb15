//! Storages the pod's containers share, as Kata's runtime sends them: each container's
//! CreateContainer names the same storage at the same mount point, which is set up once and
//! used by all; `shared` (Kata's block emptyDirs) keeps it, and its data, until the sandbox goes.
//! A loop device at a fake PCI slot stands in for the hot-plugged emptyDir disk.

mod common;

use common::*;
use vigil_protos::agent::*;
use vigil_runtime::SandboxConfig;

/// A container whose volume `/data` is the storage `s` (mounted at `mount_point` in the
/// sandbox directory), running `script`.
fn with_volume(f: &Fixture, id: &str, s: &Storage, script: &str) -> CreateContainerRequest {
    let mut r = f.request(id, &["sh", "-c", script], false);
    r.storages.push(s.clone());
    let source = f.dir().join(&s.mount_point);
    r.OCI
        .as_mut()
        .unwrap()
        .Mounts
        .push(bind_mount("/data", &source));
    r
}

async fn run_to_end(f: &Fixture, r: CreateContainerRequest) -> String {
    let id = r.container_id.clone();
    f.start(r).await;
    let out = f.read_all(&id, "", true).await;
    f.wait(&id, "").await;
    f.remove(&id).await;
    out
}

fn mounted(f: &Fixture, mount_point: &str) -> bool {
    mounts_under(&f.dir())
        .iter()
        .any(|m| std::path::Path::new(m) == f.dir().join(mount_point))
}

/// A blk storage with create_filesystem (a block emptyDir): with `shared` the second
/// container finds what the first wrote, after the first is gone; without it the storage goes
/// with its last container, and the next one gets a fresh file system.
#[test]
fn a_shared_block_emptydir_outlives_its_containers() {
    run_in_runtime(async {
        if !privileged("a_shared_block_emptydir_outlives_its_containers") {
            return;
        }
        let (Some(kept), Some(lost)) = (LoopDisk::new(8 << 20, b""), LoopDisk::new(8 << 20, b""))
        else {
            eprintln!("skipping a_shared_block_emptydir_outlives_its_containers: no loop devices");
            return;
        };
        let devices = FakeDevices::new();
        devices.pci(6, &kept.dev);
        devices.pci(7, &lost.dev);
        let tree = devices.tree.clone();
        let f = Fixture::with_setup("blkdir", SandboxConfig::default(), |s| {
            s.with_device_tree(tree)
        })
        .await;
        let pid = std::process::id();
        for (slot, shared, survives) in [("06", true, true), ("07", false, false)] {
            let s = Storage {
                driver: "blk".into(),
                source: slot.into(),
                fstype: "ext4".into(),
                driver_options: vec!["create_filesystem".into()],
                mount_point: format!("emptydir/{slot}"),
                shared,
                ..Default::default()
            };
            let first = with_volume(
                &f,
                &format!("blkdir-a{slot}-{pid}"),
                &s,
                "echo written-by-a >/data/f && cat /data/f",
            );
            assert_eq!(run_to_end(&f, first).await, "written-by-a\n");
            assert_eq!(mounted(&f, &s.mount_point), survives, "shared: {shared}");
            let second = with_volume(
                &f,
                &format!("blkdir-b{slot}-{pid}"),
                &s,
                "cat /data/f 2>&1; ls /data",
            );
            let out = run_to_end(&f, second).await;
            if survives {
                assert_eq!(out, "written-by-a\nf\nlost+found\n", "shared: {shared}");
            } else {
                assert!(out.contains("No such file"), "shared: {shared}: {out}");
                assert!(out.contains("lost+found"), "a fresh ext4: {out}");
            }
        }
        // The shared one is still there until the sandbox goes (destroy checks nothing is left).
        assert!(mounted(&f, "emptydir/06"));
        assert!(!mounted(&f, "emptydir/07"));
        f.destroy().await;
    });
}

/// Two running containers naming the same ephemeral storage (a memory emptyDir) share one
/// tmpfs, not one each; a different storage at that mount point is refused; the tmpfs goes
/// with the last of them.
#[test]
fn containers_naming_one_storage_share_it() {
    run_in_runtime(async {
        if !privileged("containers_naming_one_storage_share_it") {
            return;
        }
        let f = Fixture::new("emptydir").await;
        let pid = std::process::id();
        let s = Storage {
            driver: "ephemeral".into(),
            source: "tmpfs".into(),
            fstype: "tmpfs".into(),
            options: vec!["size=1m".into()],
            mount_point: "ephemeral/cache".into(),
            ..Default::default()
        };
        let a = format!("emptydir-a-{pid}");
        let r = with_volume(&f, &a, &s, "echo from-a >/data/f && echo ready; sleep 1000");
        f.start(r).await;
        let b = format!("emptydir-b-{pid}");
        f.read_until(&a, "", "ready").await;
        let other = Storage {
            options: vec!["size=2m".into()],
            ..s.clone()
        };
        let mut refused = with_volume(&f, &b, &s, "true");
        refused.storages[1] = other;
        assert_eq!(
            refused_field(f.sandbox.create_container(refused).await),
            "storages[1].mount_point"
        );
        let out = run_to_end(&f, with_volume(&f, &b, &s, "cat /data/f")).await;
        assert_eq!(out, "from-a\n");
        assert!(mounted(&f, "ephemeral/cache"), "a still holds it");
        f.remove(&a).await;
        assert!(
            !mounted(&f, "ephemeral/cache"),
            "gone with its last container"
        );
        f.destroy().await;
    });
}
