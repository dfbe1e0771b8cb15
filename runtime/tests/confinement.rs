//! Real containers against a host (and containers) trying to reach the guest: refused specs
//! leave nothing behind, symlinks planted by a running container are never followed, a path
//! swapped between check and use never leads outside, and the device cgroup is the agent's.
//! Root only, like lifecycle.rs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use vigil_protos::agent::*;
use vigil_protos::oci;
use vigil_runtime::{RuntimeError, Sandbox, SandboxConfig};

#[test]
fn refusals_leave_nothing_behind() {
    run_in_runtime(async {
        if !privileged("refusals_leave_nothing_behind") {
            return;
        }
        let f = Fixture::new("refuse").await;
        let cid = format!("refuse-{}", std::process::id());
        let field = |r: Result<protobuf::well_known_types::empty::Empty, RuntimeError>| match r {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        let shared = f.shared();
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
            // A bind storage of the guest's own files (its root, /dev, the agent's /run).
            (
                Box::new(|r| r.storages[0].source = "/".into()),
                "storages[0].source",
            ),
            (
                Box::new(|r| r.storages[0].source = "/run".into()),
                "storages[0].source",
            ),
            (
                Box::new(|r| {
                    r.storages.push(Storage {
                        driver: "ephemeral".into(),
                        source: "/dev/vda".into(),
                        fstype: "ext4".into(),
                        mount_point: "sandbox/disk".into(),
                        ..Default::default()
                    })
                }),
                "storages[1].fstype",
            ),
            (
                // A host PCI address is not a guest PCI path: no guest disk is looked up.
                Box::new(|r| {
                    r.storages.push(Storage {
                        driver: "blk".into(),
                        source: "0000:00:02.0".into(),
                        fstype: "ext4".into(),
                        mount_point: "sandbox/disk".into(),
                        ..Default::default()
                    })
                }),
                "storages[1].source",
            ),
            (
                Box::new(|r| {
                    r.OCI.as_mut().unwrap().Mounts.push(oci::Mount {
                        destination: "/cfg".into(),
                        source: "configfs".into(),
                        type_: "configfs".into(),
                        ..Default::default()
                    })
                }),
                "OCI.Mounts[3].type",
            ),
            (
                Box::new(|r| {
                    r.OCI
                        .as_mut()
                        .unwrap()
                        .Linux
                        .as_mut()
                        .unwrap()
                        .Devices
                        .push(oci::LinuxDevice {
                            Path: "/dev/sev-guest".into(),
                            Type: "c".into(),
                            Major: 10,
                            Minor: 124,
                            ..Default::default()
                        })
                }),
                "OCI.Linux.Devices[0]",
            ),
            (
                Box::new(|r| {
                    r.OCI
                        .as_mut()
                        .unwrap()
                        .Process
                        .as_mut()
                        .unwrap()
                        .Capabilities = Some(oci::LinuxCapabilities {
                        Bounding: vec!["CAP_SYS_ADMIN".into()],
                        ..Default::default()
                    })
                    .into()
                }),
                "OCI.Process.Capabilities.Bounding[0]",
            ),
            (
                Box::new(|r| {
                    r.OCI.as_mut().unwrap().Root = Some(oci::Root {
                        Path: ".".into(),
                        ..Default::default()
                    })
                    .into()
                }),
                "OCI.Root.Path",
            ),
            (
                Box::new(|r| {
                    r.OCI.as_mut().unwrap().Root = Some(oci::Root {
                        Path: "/".into(),
                        ..Default::default()
                    })
                    .into()
                }),
                "OCI.Root.Path",
            ),
            (
                Box::new(|r| r.container_id = "../up".into()),
                "container_id",
            ),
            // A name of the layout's own directories is no container id.
            (
                Box::new(|r| r.container_id = "sandbox".into()),
                "container_id",
            ),
            // Another container's directory, or the agent's, is no mount point.
            (
                Box::new(|r| r.storages[0].mount_point = "someone-else/rootfs".into()),
                "storages[0].mount_point",
            ),
            (
                Box::new(|r| r.storages[0].mount_point = ".vigil/pod/containers/x".into()),
                "storages[0].mount_point",
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
            kata_root: std::env::temp_dir().join("vigil-no-sandbox"),
            fork_helper: FORK_HELPER.into(),
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

/// A running container plants symlinks in a directory shared with it (`/vol`, the sandbox's
/// `shared/vol`): to the guest's root and to /etc. Nothing the host then asks for through
/// them is done: binds, storages, the rootfs and CopyFile are refused, and nothing appears
/// outside the sandbox.
#[test]
fn symlinks_a_container_plants_in_a_shared_directory_are_never_followed() {
    run_in_runtime(async {
        if !privileged("symlinks_a_container_plants_in_a_shared_directory_are_never_followed") {
            return;
        }
        let f = Fixture::new("plant").await;
        let pid = std::process::id();
        let a = format!("plant-a-{pid}");
        let vol = f.shared().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        let mut req = f.request(
            &a,
            &[
                "sh",
                "-c",
                "ln -s / /vol/escape && ln -s /etc /vol/etc-link && echo planted && sleep 1000",
            ],
            false,
        );
        req.OCI
            .as_mut()
            .unwrap()
            .Mounts
            .push(bind_mount("/vol", &vol));
        f.start(req).await;
        f.read_until(&a, "", "planted").await;
        assert_eq!(
            std::fs::read_link(vol.join("escape")).unwrap(),
            Path::new("/")
        );

        // Outside the sandbox, reachable through the planted link as escape/<its path>.
        let outside = f.tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let through = |p: &Path| PathBuf::from(format!("{}/escape{}", vol.display(), p.display()));
        let b = format!("plant-b-{pid}");
        let attempts: Vec<(CreateContainerRequest, &str)> = vec![
            {
                let mut r = f.request(&b, &["true"], false);
                r.OCI
                    .as_mut()
                    .unwrap()
                    .Mounts
                    .push(bind_mount("/x", &through(&outside)));
                (r, "OCI.Mounts[3].source")
            },
            {
                let mut r = f.request(&b, &["true"], false);
                r.storages.push(Storage {
                    driver: "ephemeral".into(),
                    mount_point: format!(
                        "shared/containers/vol/escape{}/made-by-vigil",
                        outside.display()
                    ),
                    ..Default::default()
                });
                (r, "storages[1].mount_point")
            },
            {
                let mut r = f.request(&b, &["true"], false);
                r.storages[0].source = through(&f.rootfs).to_string_lossy().into_owned();
                (r, "storages[0].source")
            },
            {
                let mut r = f.request(&b, &["true"], false);
                r.storages.clear();
                r.OCI.as_mut().unwrap().Root = Some(oci::Root {
                    Path: through(&outside).to_string_lossy().into_owned(),
                    ..Default::default()
                })
                .into();
                (r, "OCI.Root.Path")
            },
        ];
        for (r, expected) in attempts {
            assert_eq!(refused_field(f.sandbox.create_container(r).await), expected);
            assert_container_gone(&f.dir(), &b);
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let planted = format!("vigil-planted-{pid}");
        let r = f
            .sandbox
            .copy_file(CopyFileRequest {
                path: format!("{}/etc-link/{planted}", vol.display()),
                file_mode: libc::S_IFREG | 0o644,
                file_size: 1,
                data: b"x".to_vec(),
                ..Default::default()
            })
            .await;
        assert_eq!(refused_field(r), "path");
        assert!(!Path::new("/etc").join(&planted).exists());
        f.remove(&a).await;
        f.destroy().await;
    });
}

/// While a bind source is swapped again and again between a directory in the sandbox and a
/// symlink to one outside it, containers are created with it: each is refused or sees the
/// inside directory, never the outside one (the runtime library only ever gets a staged path).
#[test]
fn a_swap_between_check_and_use_never_mounts_what_is_outside() {
    run_in_runtime(async {
        if !privileged("a_swap_between_check_and_use_never_mounts_what_is_outside") {
            return;
        }
        let f = Fixture::new("swap").await;
        let swap = f.shared().join("swap");
        std::fs::create_dir_all(swap.join("d")).unwrap();
        std::fs::write(swap.join("d/marker"), "inside").unwrap();
        let outside = f.tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("marker"), "outside").unwrap();
        std::os::unix::fs::symlink(&outside, swap.join("link")).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, swap) = (stop.clone(), swap.clone());
            std::thread::spawn(move || {
                use std::os::unix::ffi::OsStrExt;
                let a = std::ffi::CString::new(swap.join("d").as_os_str().as_bytes()).unwrap();
                let b = std::ffi::CString::new(swap.join("link").as_os_str().as_bytes()).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // SAFETY: plain syscall on two paths of the test's own.
                    let rc = unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            a.as_ptr(),
                            libc::AT_FDCWD,
                            b.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
                }
            })
        };
        let (mut seen_inside, mut refused) = (0, 0);
        for i in 0..12 {
            let id = format!("swap-{i}-{}", std::process::id());
            let mut r = f.request(&id, &["cat", "/data/marker"], false);
            r.OCI
                .as_mut()
                .unwrap()
                .Mounts
                .push(bind_mount("/data", &swap.join("d")));
            match f.sandbox.create_container(r).await {
                Ok(_) => {
                    f.sandbox
                        .start_container(StartContainerRequest {
                            container_id: id.clone(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    assert_eq!(f.read_all(&id, "", true).await, "inside");
                    assert_eq!(f.wait(&id, "").await, 0);
                    f.remove(&id).await;
                    seen_inside += 1;
                }
                Err(RuntimeError::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "OCI.Mounts[3].source");
                    assert_container_gone(&f.dir(), &id);
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(seen_inside + refused, 12);
        f.destroy().await;
    });
}

/// The device cgroup holds the agent's rules, not the runtime library's: a container may make
/// a tun/tap node (libcgroups allows tun by default) but cannot open it, before and after an
/// UpdateContainer (which makes libcgroups write its defaults again); /dev/null works.
#[test]
fn device_rules_are_the_agents() {
    run_in_runtime(async {
        if !privileged("device_rules_are_the_agents") {
            return;
        }
        let f = Fixture::new("devcg").await;
        let id = format!("devcg-{}", std::process::id());
        f.run(&id, &["sleep", "1000"]).await;
        let probe = "mknod /dev/vigil-tun c 10 200 && echo made; \
                     cat /dev/vigil-tun 2>&1; rm -f /dev/vigil-tun; echo x >/dev/null && echo null-ok";
        let check = |out: String| {
            assert!(out.contains("made"), "{out}");
            assert!(out.contains("Operation not permitted"), "tun opened: {out}");
            assert!(out.contains("null-ok"), "{out}");
        };
        f.exec(&id, "before", &["sh", "-c", probe], false)
            .await
            .unwrap();
        check(f.read_all(&id, "before", true).await);
        f.sandbox
            .update_container(UpdateContainerRequest {
                container_id: id.clone(),
                resources: Some(oci::LinuxResources {
                    Devices: vec![oci::LinuxDeviceCgroup {
                        Allow: true,
                        Type: "a".into(),
                        Access: "rwm".into(),
                        ..Default::default()
                    }],
                    Pids: Some(oci::LinuxPids {
                        Limit: 50,
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
        f.exec(&id, "after", &["sh", "-c", probe], false)
            .await
            .unwrap();
        check(f.read_all(&id, "after", true).await);
        f.remove(&id).await;
        f.destroy().await;
    });
}

/// A rootfs named by path in the shared directory (Kata's shared-fs layout) is staged into the
/// bundle and runs; device nodes on it are unusable (nodev), while /dev (a fresh tmpfs) works.
#[test]
fn a_rootfs_from_the_shared_directory_is_staged_without_devices() {
    run_in_runtime(async {
        if !privileged("a_rootfs_from_the_shared_directory_is_staged_without_devices") {
            return;
        }
        let f = Fixture::new("staged").await;
        let id = format!("staged-{}", std::process::id());
        let mut r = f.request(
            &id,
            &[
                "sh",
                "-c",
                "mknod /tmp/null c 1 3; cat /tmp/null 2>&1; rm -f /tmp/null; echo x >/dev/null && echo dev-ok",
            ],
            false,
        );
        r.storages.clear();
        r.OCI.as_mut().unwrap().Root = Some(oci::Root {
            Path: f.rootfs.to_string_lossy().into_owned(),
            ..Default::default()
        })
        .into();
        f.start(r).await;
        let out = f.read_all(&id, "", true).await;
        assert!(out.contains("Permission denied"), "{out}");
        assert!(out.contains("dev-ok"), "{out}");
        assert_eq!(f.wait(&id, "").await, 0);
        f.remove(&id).await;
        f.destroy().await;
    });
}
