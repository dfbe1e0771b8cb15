//! Storages the pod's containers share, as Kata's runtime sends them: each container's
//! CreateContainer names the same storage at the same mount point, which is set up once and
//! used by all; `shared` (Kata's block emptyDirs) keeps it, and its data, until the sandbox goes.
//! A loop device at a fake PCI slot stands in for the hot-plugged emptyDir disk. And the
//! rootfs storages Kata's runtime sends, at the paths it sends them to.

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
                mount_point: format!("sandbox/storage/{slot}"),
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
        assert!(mounted(&f, "sandbox/storage/06"));
        assert!(!mounted(&f, "sandbox/storage/07"));
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
            mount_point: "sandbox/ephemeral/cache".into(),
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
        assert!(mounted(&f, "sandbox/ephemeral/cache"), "a still holds it");
        f.remove(&a).await;
        assert!(
            !mounted(&f, "sandbox/ephemeral/cache"),
            "gone with its last container"
        );
        f.destroy().await;
    });
}

/// A container's rootfs as Kata's Go shim sends it, on Kata's paths (absolute, as sent):
/// - a block device (`blk` by PCI path) mounted at `shared/containers/<cid>`, the rootfs its
///   `rootfs/` directory (fs_share_linux.go, the block-device rootfs case);
/// - an `overlayfs` at the container's own `<cid>/rootfs`, upper and work directories made by
///   `create_directory` at `<cid>/fs` and `<cid>/work` (the layered case), the layer from the
///   shared directory.
///
/// Each works, writes land where they should, and everything goes with the container.
#[test]
fn rootfs_storages_on_kata_s_paths() {
    run_in_runtime(async {
        if !privileged("rootfs_storages_on_kata_s_paths") {
            return;
        }
        // The disk: an ext4 holding rootfs/ (a busybox) and a marker.
        let image = tempfile::tempdir().unwrap();
        busybox_rootfs(&image.path().join("rootfs"));
        std::fs::write(image.path().join("rootfs/marker"), "on-the-disk\n").unwrap();
        let Some(disk) = LoopDisk::new(32 << 20, b"") else {
            eprintln!("skipping rootfs_storages_on_kata_s_paths: no loop devices");
            return;
        };
        let mkfs = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(image.path())
            .arg(&disk.dev)
            .status()
            .expect("mkfs.ext4 (e2fsprogs)");
        assert!(mkfs.success());
        let devices = FakeDevices::new();
        devices.pci(8, &disk.dev);
        let tree = devices.tree.clone();
        let f = Fixture::with_setup("kpaths", SandboxConfig::default(), |s| {
            s.with_device_tree(tree)
        })
        .await;
        let root = f.dir().display().to_string();
        let pid = std::process::id();
        let with_rootfs = |id: &str, storage: Storage, rootfs: String, script: &str| {
            let mut r = f.request(id, &["sh", "-c", script], false);
            r.storages = vec![storage];
            r.OCI.as_mut().unwrap().Root.as_mut().unwrap().Path = rootfs;
            r
        };

        let blk = format!("kpaths-blk-{pid}");
        let bundle = format!("{root}/shared/containers/{blk}");
        let storage = Storage {
            driver: "blk".into(),
            source: "08".into(),
            fstype: "ext4".into(),
            mount_point: bundle.clone(),
            ..Default::default()
        };
        let r = with_rootfs(&blk, storage, format!("{bundle}/rootfs"), "cat /marker");
        assert_eq!(run_to_end(&f, r).await, "on-the-disk\n");
        assert!(!mounted(&f, &format!("shared/containers/{blk}")));

        let layered = format!("kpaths-ovl-{pid}");
        let own = format!("{root}/{layered}");
        let storage = Storage {
            driver: "overlayfs".into(),
            source: "overlay".into(),
            fstype: "overlay".into(),
            driver_options: ["fs", "work"]
                .iter()
                .map(|d| format!("io.katacontainers.volume.overlayfs.create_directory={own}/{d}"))
                .collect(),
            options: vec![
                format!("lowerdir={}", f.rootfs.display()),
                format!("upperdir={own}/fs"),
                format!("workdir={own}/work"),
            ],
            mount_point: format!("{own}/rootfs"),
            ..Default::default()
        };
        let r = with_rootfs(
            &layered,
            storage,
            format!("{own}/rootfs"),
            "echo written >/new && cat /new",
        );
        let id = r.container_id.clone();
        f.start(r).await;
        assert_eq!(f.read_all(&id, "", true).await, "written\n");
        assert_eq!(f.wait(&id, "").await, 0);
        let upper = std::path::Path::new(&own).join("fs/new");
        assert_eq!(std::fs::read_to_string(&upper).unwrap(), "written\n");
        assert!(!f.rootfs.join("new").exists(), "the layer was written");
        f.remove(&id).await;
        assert!(!std::path::Path::new(&own).exists(), "{own} left behind");
        f.destroy().await;
    });
}
