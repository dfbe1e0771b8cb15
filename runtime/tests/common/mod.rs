//! What the container tests share: a sandbox with a busybox rootfs in its shared directory,
//! runc-like specs, and checks of the kernel's own records (cgroups, mountinfo, pids).
#![allow(dead_code)] // each test binary uses its own part of it

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vigil_protos::agent::*;
use vigil_protos::oci;
use vigil_runtime::{RuntimeError, Sandbox, SandboxConfig};

pub const BUSYBOX: &str = "/bin/busybox";
pub const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "stty", "dd", "hostname", "head", "wc", "true", "ls", "id", "ln",
    "mkdir", "mknod", "stat", "rm", "readlink",
];

/// Every test's guard: root, and busybox present (CI installs Debian's `busybox-static`).
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {test}: needs root (namespaces, cgroups and mounts)");
        return false;
    }
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install the busybox-static package"
    );
    true
}

pub struct Fixture {
    destroyed: bool,
    pub tmp: tempfile::TempDir,
    /// The sandbox's Kata layout root (`[sandbox] kata_root`, in the test's temp dir).
    pub kata_root: PathBuf,
    pub rootfs: PathBuf,
    pub sandbox: Arc<Sandbox>,
    pub sandbox_id: String,
}

/// A busybox rootfs at `rootfs`: in the tests, in the sandbox's shared directory
/// (`shared/containers`), where the host's shared file system puts container images in Kata.
pub fn busybox_rootfs(rootfs: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    std::fs::write(rootfs.join("etc/resolv.conf"), "").unwrap();
}

/// A CreateContainer request: `rootfs` bind-mounted as a storage at the container's own
/// `<id>/rootfs` (where the relative Root.Path "rootfs" points), and a runc-like minimal spec.
pub fn request_with(
    rootfs: &Path,
    id: &str,
    args: &[&str],
    terminal: bool,
) -> CreateContainerRequest {
    CreateContainerRequest {
        container_id: id.into(),
        storages: vec![Storage {
            driver: "bind".into(),
            source: rootfs.to_string_lossy().into_owned(),
            mount_point: format!("{id}/rootfs"),
            ..Default::default()
        }],
        OCI: Some(spec(args, terminal)).into(),
        ..Default::default()
    }
}

impl Fixture {
    pub async fn new(name: &str) -> Fixture {
        Fixture::with_config(name, SandboxConfig::default()).await
    }

    pub async fn with_config(name: &str, config: SandboxConfig) -> Fixture {
        Fixture::build(name, config, |s| s, |_| {}).await
    }

    /// As [`Fixture::with_config`], with `setup` applied to the sandbox manager first.
    pub async fn with_setup(
        name: &str,
        config: SandboxConfig,
        setup: impl FnOnce(Sandbox) -> Sandbox,
    ) -> Fixture {
        Fixture::build(name, config, setup, |_| {}).await
    }

    /// A sandbox from the fixture's CreateSandbox request as `tweak` changes it.
    pub async fn with_request(
        name: &str,
        config: SandboxConfig,
        tweak: impl FnOnce(&mut CreateSandboxRequest),
    ) -> Fixture {
        Fixture::build(name, config, |s| s, tweak).await
    }

    async fn build(
        name: &str,
        config: SandboxConfig,
        setup: impl FnOnce(Sandbox) -> Sandbox,
        tweak: impl FnOnce(&mut CreateSandboxRequest),
    ) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let kata_root = tmp.path().join("kata");
        let sandbox = Arc::new(setup(Sandbox::new(SandboxConfig {
            kata_root: kata_root.clone(),
            output_limit: 64 * 1024,
            fork_helper: FORK_HELPER.into(),
            ..config
        })));
        let sandbox_id = format!("{name}-{}", std::process::id());
        let mut req = CreateSandboxRequest {
            sandbox_id: sandbox_id.clone(),
            hostname: "vigil-pod".into(),
            dns: vec!["nameserver 192.0.2.53".into()],
            ..Default::default()
        };
        tweak(&mut req);
        sandbox.create_sandbox(req).await.unwrap();
        let rootfs = kata_root.join("shared/containers/busybox-rootfs");
        busybox_rootfs(&rootfs);
        Fixture {
            destroyed: false,
            tmp,
            kata_root,
            rootfs,
            sandbox,
            sandbox_id,
        }
    }

    /// The root of the sandbox's layout.
    pub fn dir(&self) -> PathBuf {
        self.kata_root.clone()
    }

    pub fn request(&self, id: &str, args: &[&str], terminal: bool) -> CreateContainerRequest {
        request_with(&self.rootfs, id, args, terminal)
    }

    pub fn shared(&self) -> PathBuf {
        self.dir().join("shared/containers")
    }

    pub async fn run(&self, id: &str, args: &[&str]) {
        self.start(self.request(id, args, false)).await;
    }

    /// Creates and starts the container of `req`.
    pub async fn start(&self, req: CreateContainerRequest) {
        let id = req.container_id.clone();
        self.sandbox.create_container(req).await.unwrap();
        self.sandbox
            .start_container(StartContainerRequest {
                container_id: id,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    pub async fn exec(
        &self,
        cid: &str,
        eid: &str,
        args: &[&str],
        terminal: bool,
    ) -> Result<(), RuntimeError> {
        self.sandbox
            .exec_process(ExecProcessRequest {
                container_id: cid.into(),
                exec_id: eid.into(),
                process: Some(process(args, terminal)).into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    pub async fn wait(&self, cid: &str, eid: &str) -> i32 {
        let w = self.sandbox.wait_process(WaitProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            ..Default::default()
        });
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("process did not exit")
            .unwrap()
            .status
    }

    /// Everything a stream gives until end of stream.
    pub async fn read_all(&self, cid: &str, eid: &str, stdout: bool) -> String {
        let mut out = Vec::new();
        loop {
            let req = ReadStreamRequest {
                container_id: cid.into(),
                exec_id: eid.into(),
                len: 4096,
                ..Default::default()
            };
            let r = if stdout {
                self.sandbox.read_stdout(req).await
            } else {
                self.sandbox.read_stderr(req).await
            };
            match r {
                Ok(d) => out.extend(d.data),
                Err(RuntimeError::EndOfStream) => break,
                Err(e) => panic!("reading {cid}/{eid}: {e}"),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub async fn read_until(&self, cid: &str, eid: &str, needle: &str) -> String {
        let mut out = String::new();
        while !out.contains(needle) {
            let d = self
                .sandbox
                .read_stdout(ReadStreamRequest {
                    container_id: cid.into(),
                    exec_id: eid.into(),
                    len: 4096,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("waiting for {needle:?} after {out:?}: {e}"));
            out.push_str(&String::from_utf8_lossy(&d.data));
        }
        out
    }

    pub async fn remove(&self, id: &str) {
        self.sandbox
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
                timeout: 20,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_container_gone(&self.dir(), id);
    }

    pub async fn destroy(mut self) {
        self.destroyed = true;
        self.sandbox
            .destroy_sandbox(DestroySandboxRequest::new())
            .await
            .unwrap();
        assert_sandbox_gone(&self.dir());
    }
}

/// A failed test must not leave containers running on the machine: kill what is in the
/// sandbox's cgroups and detach its mounts (the assertions already reported the failure).
impl Drop for Fixture {
    fn drop(&mut self) {
        if self.destroyed {
            return;
        }
        let prefix = self
            .sandbox_id
            .split('-')
            .next()
            .unwrap_or_default()
            .to_string();
        for root in ["/sys/fs/cgroup/pids/vigil", "/sys/fs/cgroup/vigil"] {
            let Ok(dirs) = std::fs::read_dir(root) else {
                continue;
            };
            for d in dirs.flatten() {
                if !d.file_name().to_string_lossy().starts_with(&prefix) {
                    continue;
                }
                let procs =
                    std::fs::read_to_string(d.path().join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    // SAFETY: plain kill of a process in our test's cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for m in mounts_under(&self.kata_root).iter().rev() {
            let c = std::ffi::CString::new(m.as_str()).unwrap();
            // SAFETY: plain syscall.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// This crate's fork helper binary (the agent binary is its own).
pub const FORK_HELPER: &str = env!("CARGO_BIN_EXE_vigil-fork-helper");

/// Each test on its own multi-threaded runtime, in parallel with the others: forking happens
/// in the sandbox's single-threaded fork helper (src/fork_helper.rs), so thread start-up and
/// exit anywhere in this process cannot make it hang.
pub fn run_in_runtime(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .max_blocking_threads(16)
        .thread_keep_alive(Duration::from_secs(600))
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

pub fn process(args: &[&str], terminal: bool) -> oci::Process {
    oci::Process {
        Terminal: terminal,
        ConsoleSize: terminal
            .then(|| oci::Box {
                Height: 10,
                Width: 40,
                ..Default::default()
            })
            .into(),
        User: Some(oci::User::default()).into(),
        Args: args.iter().map(|s| s.to_string()).collect(),
        Env: vec!["PATH=/bin".into(), "TERM=dumb".into()],
        Cwd: "/".into(),
        ..Default::default()
    }
}

pub fn spec(args: &[&str], terminal: bool) -> oci::Spec {
    let mount = |dest: &str, kind: &str, opts: &[&str]| oci::Mount {
        destination: dest.into(),
        source: kind.into(),
        type_: kind.into(),
        options: opts.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    oci::Spec {
        Version: "1.0.2".into(),
        Process: Some(process(args, terminal)).into(),
        Root: Some(oci::Root {
            Path: "rootfs".into(),
            ..Default::default()
        })
        .into(),
        Mounts: vec![
            mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            oci::Mount {
                destination: "/dev/pts".into(),
                source: "devpts".into(),
                type_: "devpts".into(),
                options: vec![
                    "nosuid".into(),
                    "noexec".into(),
                    "newinstance".into(),
                    "ptmxmode=0666".into(),
                ],
                ..Default::default()
            },
        ],
        Linux: Some(oci::Linux {
            Resources: Some(oci::LinuxResources {
                Memory: Some(oci::LinuxMemory {
                    Limit: 64 << 20,
                    ..Default::default()
                })
                .into(),
                Pids: Some(oci::LinuxPids {
                    Limit: 100,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            Namespaces: ["pid", "mount", "ipc", "uts"]
                .iter()
                .map(|t| oci::LinuxNamespace {
                    Type: t.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect()
}

pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let v1 = [
        "memory", "pids", "cpu", "freezer", "devices", "blkio", "cpuset",
    ]
    .iter()
    .map(|c| PathBuf::from(format!("/sys/fs/cgroup/{c}/vigil/{id}")));
    let v2 = std::iter::once(PathBuf::from(format!("/sys/fs/cgroup/vigil/{id}")));
    v1.chain(v2).filter(|p| p.exists()).collect()
}

pub fn assert_container_gone(sandbox_dir: &Path, id: &str) {
    assert!(
        cgroup_dirs(id).is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs(id)
    );
    for dir in [
        sandbox_dir.join(".vigil/pod/containers").join(id),
        sandbox_dir.join(id),
    ] {
        assert!(
            mounts_under(&dir).is_empty(),
            "mounts left: {:?}",
            mounts_under(&dir)
        );
        assert!(!dir.exists(), "left behind: {}", dir.display());
    }
}

/// Nothing of the sandbox is left in its layout root: none of the directories it owns, no
/// mount.
pub fn assert_sandbox_gone(root: &Path) {
    for owned in ["shared", "sandbox", ".vigil/pod"] {
        assert!(!root.join(owned).exists(), "{owned} left behind");
    }
    assert!(
        mounts_under(root).is_empty(),
        "mounts left: {:?}",
        mounts_under(root)
    );
}

pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

pub fn cgroup_pids(id: &str) -> Vec<i32> {
    let f = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|r| PathBuf::from(format!("{r}/vigil/{id}/cgroup.procs")))
        .find(|p| p.exists())
        .expect("container cgroup");
    std::fs::read_to_string(f)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

pub fn freezer_state(id: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/vigil/{id}/freezer.state"))
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn bind_mount(dest: &str, source: &Path) -> oci::Mount {
    oci::Mount {
        destination: dest.into(),
        source: source.to_string_lossy().into_owned(),
        type_: "bind".into(),
        options: vec!["rbind".into()],
        ..Default::default()
    }
}

pub fn refused_field<T: std::fmt::Debug>(r: Result<T, RuntimeError>) -> String {
    match r {
        Err(RuntimeError::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// A loop device over a file of `size` bytes starting with `content`, detached when dropped.
pub struct LoopDisk {
    pub dev: PathBuf,
    _file: tempfile::NamedTempFile,
}

impl LoopDisk {
    /// None (with the reason printed) where loop devices cannot be had.
    pub fn new(size: u64, content: &[u8]) -> Option<LoopDisk> {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        file.as_file().set_len(size).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(LoopDisk {
                dev: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
                _file: file,
            }),
            other => {
                eprintln!("no loop device: {other:?}");
                None
            }
        }
    }

    /// The device's name under /dev (`loop3`).
    pub fn name(&self) -> String {
        self.dev.file_name().unwrap().to_string_lossy().into_owned()
    }

    pub fn minor(&self) -> u32 {
        use std::os::unix::fs::MetadataExt;
        libc::minor(std::fs::metadata(&self.dev).unwrap().rdev())
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .status();
    }
}

/// A sysfs tree (and a /dev of symlinks to real nodes) standing in for a hypervisor's
/// hot-plug: `pci(slot, node)` puts the virtio-blk disk `node` (a real device under /dev) at
/// PCI path `slot`; `pmem(name, node)` an NVDIMM named `name` whose guest node is `node`.
pub struct FakeDevices {
    _dir: tempfile::TempDir,
    pub tree: vigil_guest::blockdev::DeviceTree,
}

impl FakeDevices {
    pub fn new() -> FakeDevices {
        let dir = tempfile::tempdir().unwrap();
        let tree = vigil_guest::blockdev::DeviceTree {
            sys: dir.path().join("sys"),
            dev: dir.path().join("dev"),
        };
        std::fs::create_dir_all(tree.sys.join("block")).unwrap();
        std::fs::create_dir_all(&tree.dev).unwrap();
        FakeDevices { _dir: dir, tree }
    }

    pub fn pci(&self, slot: u8, node: &Path) {
        let name = node.file_name().unwrap();
        let at = format!("devices/pci0000:00/0000:00:{slot:02x}.0/virtio{slot}/block");
        std::fs::create_dir_all(self.tree.sys.join(at).join(name)).unwrap();
        std::os::unix::fs::symlink(node, self.tree.dev.join(name)).unwrap();
    }

    pub fn pmem(&self, name: &str, node: &Path) {
        std::fs::create_dir_all(self.tree.sys.join("block").join(name)).unwrap();
        std::os::unix::fs::symlink(node, self.tree.dev.join(name)).unwrap();
    }
}
