//! Devices the host hot-plugs for a container (CreateContainer's `devices`), with a loop
//! device standing in for the hot-plugged disk and a fake sysfs tree for the hypervisor's
//! PCI slot: the disk passed becomes the container's at the path the request names (with the
//! guest's numbers, whatever the host's spec said), one not passed stays denied, and a device
//! that is the guest's memory under another name is refused.

mod common;

use common::*;
use vigil_protos::agent::*;
use vigil_protos::oci;
use vigil_runtime::{RuntimeError, SandboxConfig};

/// The spec Kata's runtime sends for a raw block volume: the node with the host's numbers
/// (here 8:0, which means nothing in the guest) and a device-cgroup rule for them.
fn with_host_device(mut r: CreateContainerRequest) -> CreateContainerRequest {
    let linux = r.OCI.as_mut().unwrap().Linux.as_mut().unwrap();
    linux.Devices.push(oci::LinuxDevice {
        Path: "/dev/xvda".into(),
        Type: "b".into(),
        Major: 8,
        Minor: 0,
        FileMode: 0o660,
        ..Default::default()
    });
    linux
        .Resources
        .as_mut()
        .unwrap()
        .Devices
        .push(oci::LinuxDeviceCgroup {
            Allow: true,
            Type: "b".into(),
            Major: 8,
            Minor: 0,
            Access: "rw".into(),
            ..Default::default()
        });
    r
}

#[test]
fn a_hot_plugged_disk_is_usable_and_nothing_else_is() {
    run_in_runtime(async {
        if !privileged("a_hot_plugged_disk_is_usable_and_nothing_else_is") {
            return;
        }
        let (Some(disk), Some(other)) = (
            LoopDisk::new(1 << 20, b"hot-plugged disk"),
            LoopDisk::new(1 << 20, b"not for this container"),
        ) else {
            eprintln!("skipping a_hot_plugged_disk_is_usable_and_nothing_else_is: no loop devices");
            return;
        };
        let f_tmp = tempfile::tempdir().unwrap();
        let devices = FakeDevices::new();
        devices.pci(5, &disk.dev);
        // The guest's memory device (c 1:1) under a name of its own: only its number tells.
        let mem = f_tmp.path().join("memory");
        nix_mknod(&mem, 1, 1);
        devices.pmem("pmem0", &mem);
        let tree = devices.tree.clone();
        let f = Fixture::with_setup("hotplug", SandboxConfig::default(), |s| {
            s.with_device_tree(tree)
        })
        .await;
        let id = format!("hotplug-{}", std::process::id());
        let script = format!(
            "head -c 16 /dev/xvda; echo; stat -c '%t:%T' /dev/xvda; \
             mknod /dev/other b 7 {} && head -c 1 /dev/other 2>&1; echo; \
             echo x >/dev/null && echo null-ok",
            other.minor()
        );
        let mut r = with_host_device(f.request(&id, &["sh", "-c", &script], false));

        // Without the device passed, the host's numbers are not a device this pod may use.
        let field = refused_field(f.sandbox.create_container(r.clone()).await);
        assert_eq!(field, "OCI.Linux.Devices[0]");
        assert_container_gone(&f.dir(), &id);

        r.devices = vec![Device {
            id: "05".into(),
            type_: "blk".into(),
            container_path: "/dev/xvda".into(),
            ..Default::default()
        }];
        f.start(r.clone()).await;
        let out = f.read_all(&id, "", true).await;
        assert_eq!(f.wait(&id, "").await, 0, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "hot-plugged disk", "{out}");
        // The guest's numbers (loop devices are major 7), in hex as stat prints them.
        assert_eq!(lines[1], format!("7:{:x}", disk.minor()), "{out}");
        assert!(lines[2].contains("Operation not permitted"), "{out}");
        assert!(out.contains("null-ok"), "{out}");
        f.remove(&id).await;

        // A "disk" the host hot-plugged that is the guest's memory: refused by its number.
        r.devices = vec![Device {
            type_: "nvdimm".into(),
            vm_path: "/dev/pmem0".into(),
            container_path: "/dev/xvda".into(),
            ..Default::default()
        }];
        match f.sandbox.create_container(r.clone()).await {
            Err(RuntimeError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "devices[0]");
                assert!(reason.contains("c 1:1"), "{reason}");
            }
            other => panic!("/dev/mem as a hot-plugged disk: {other:?}"),
        }
        // A device may only appear under /dev in the container.
        r.devices[0].container_path = "/etc/disk".into();
        let field = refused_field(f.sandbox.create_container(r).await);
        assert_eq!(field, "devices[0].container_path");
        assert_container_gone(&f.dir(), &id);
        f.destroy().await;
    });
}

fn nix_mknod(path: &std::path::Path, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: plain syscall with a NUL-terminated path.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}
