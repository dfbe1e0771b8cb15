//! The sandbox manager: one sandbox, its containers and their processes, and the agent API
//! operations on them.
//!
//! Locking: the sandbox slot and each container map are `std` mutexes held only to look up or
//! insert. Lifecycle operations on one container (start, exec, pause, update, remove...) are
//! serialised by that container's own async lock, so a slow operation on one container never
//! blocks another. Stdio and waits take no container lock at all.

mod create;
mod process;

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::well_known_types::empty::Empty;
use tokio::sync::mpsc;
use vigil_guest::blockdev::DeviceTree;
use vigil_protos::agent::*;

use crate::error::{Result, RuntimeError};
use crate::hooks::AgentHooks;
use crate::layout::Layout;
use crate::mount::{self, Mounted};
use crate::pod_ns::PodNamespaces;
use crate::runtime::{ChildClaims, ClaimToken, ContainerRuntime, NoReaper, OomWake};
use crate::spec::{self, SpecLimits};
use crate::stdio;
use crate::storage::{Held, SandboxStorages, StorageDrivers};
use crate::youki::LibcontainerRuntime;
use process::{send_signal, Process};

/// Where and how the sandbox lives, and what containers may ask of the guest. The defaults
/// are the strict ones; the agent fills this from its measured configuration (`[sandbox]`).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where Kata's guest directories are (`shared/containers`, `sandbox`, `<container id>`;
    /// see `layout`): the paths Kata's runtimes send. Default `/run/kata-containers`.
    pub kata_root: PathBuf,
    /// For hosts that are not Kata's: the same directories under `<run_root>/<sandbox id>`
    /// instead of `kata_root`. Unset by default.
    pub run_root: Option<PathBuf>,
    /// Whether container specs may carry OCI hooks.
    pub allow_hooks: bool,
    /// Bytes of unread output kept per stream; older output is dropped past this.
    pub output_limit: usize,
    /// Cgroup under which each container gets `<cgroup_parent>/<container id>`.
    pub cgroup_parent: String,
    /// The capability bounding set (OCI names, `CAP_...`): a spec asking for a capability
    /// outside it is refused. Default: [`DEFAULT_CAPABILITIES`](crate::DEFAULT_CAPABILITIES).
    pub capabilities: Vec<String>,
    /// Whether privileged-style specs pass: device-cgroup wildcards, writable sysfs and
    /// cgroup mounts, no default masked and read-only paths, shared mount propagation.
    pub allow_privileged: bool,
    /// Guest device nodes (paths under /dev) containers may be given besides the standard
    /// set. Never the guest's memory or a TEE device (see [`check_device_path`](crate::check_device_path)).
    pub devices: Vec<PathBuf>,
    /// Whether CopyFile keeps setuid, setgid and sticky bits (else they are cleared).
    pub allow_setuid_copy: bool,
    /// The executable started as the fork helper (see `fork_helper`): the agent itself
    /// unless a test names another. Not configurable from the agent's config file.
    pub fork_helper: PathBuf,
    /// How the fork helper logs, handed to it in its environment as
    /// [`HELPER_LOG_ENV`](crate::fork_helper::HELPER_LOG_ENV): opaque to the runtime (the agent
    /// puts its level and format there). `None`: the helper and the container processes it
    /// forks log nothing.
    pub fork_helper_log: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> SandboxConfig {
        SandboxConfig {
            kata_root: PathBuf::from("/run/kata-containers"),
            run_root: None,
            allow_hooks: false,
            output_limit: 1 << 20,
            cgroup_parent: "vigil".into(),
            capabilities: spec::DEFAULT_CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
            allow_privileged: false,
            devices: Vec::new(),
            allow_setuid_copy: false,
            fork_helper: PathBuf::from("/proc/self/exe"),
            fork_helper_log: None,
        }
    }
}

impl SandboxConfig {
    /// The root of sandbox `id`'s layout, and whether it is the sandbox's alone.
    fn layout_root(&self, id: &str) -> (PathBuf, bool) {
        match &self.run_root {
            Some(r) => (r.join(id), true),
            None => (self.kata_root.clone(), false),
        }
    }

    /// The directories of a pod's volumes, the only ones guest operations on volumes
    /// (GetVolumeStats, ResizeVolume, UpdateEphemeralMounts) may answer for: the layout's
    /// `shared/` and `sandbox/` under `kata_root`; with `run_root`, that whole directory (the
    /// sandbox id, which names the pod's directory under it, is not known before CreateSandbox).
    pub fn pod_dirs(&self) -> Vec<PathBuf> {
        match &self.run_root {
            Some(r) => vec![r.clone()],
            None => Layout::volume_dirs(&self.kata_root),
        }
    }

    /// Where the runtime library keeps its state (agent-private).
    fn state_root(&self) -> PathBuf {
        match &self.run_root {
            Some(r) => r.join(".runtime"),
            None => self.kata_root.join(".vigil/runtime"),
        }
    }
}

/// How long DestroySandbox waits for each container's processes to die.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(10);

/// The sandbox manager the agent's handlers call.
pub struct Sandbox {
    config: SandboxConfig,
    runtime: Arc<dyn ContainerRuntime>,
    drivers: Arc<StorageDrivers>,
    /// Where devices the host hot-plugged are found (storages' disks, containers' devices).
    devices: DeviceTree,
    claims: Arc<dyn ChildClaims>,
    current: tokio::sync::Mutex<Option<Arc<SandboxState>>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

struct SandboxState {
    id: String,
    hostname: String,
    layout: Layout,
    shared_pidns: bool,
    /// Hooks from CreateSandbox's `guest_hook_path`, added to every container's spec.
    guest_hooks: vigil_protos::oci::Hooks,
    /// The IPC and UTS namespaces every container of the pod joins.
    pod_namespaces: PodNamespaces,
    /// The storages of the sandbox and its containers, by mount point (see `storage`); an
    /// async lock, because setting one up may wait for a hot-plugged device.
    storages: tokio::sync::Mutex<SandboxStorages>,
    containers: Mutex<Containers>,
    destroyed: AtomicBool,
}

#[derive(Default)]
struct Containers {
    live: HashMap<String, Arc<Container>>,
    creating: HashSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Paused,
}

struct Container {
    id: String,
    bundle: PathBuf,
    ops: tokio::sync::Mutex<ContainerOps>,
    /// The exec'd processes, by exec id.
    processes: Mutex<HashMap<String, Arc<Process>>>,
    init: Arc<Process>,
    /// The exec id CreateContainer gave the init process (may be empty); `""` also names it.
    init_exec_id: String,
    oom_kills_seen: AtomicU64,
    /// The runtime notifies OOMs in this container (else process deaths are checked).
    oom_watched: bool,
    /// The agent's device-cgroup rules, put back after every resource update.
    device_rules: Vec<oci_spec::runtime::LinuxDeviceCgroup>,
    /// The spec's poststart and poststop hooks, which the agent runs (see `hooks`).
    hooks: AgentHooks,
    /// The spec's annotations, for the OCI state hooks read.
    annotations: HashMap<String, String>,
}

impl Container {
    /// Whether `exec_id` names the init process: `""`, or the exec id it was created with.
    fn is_init(&self, exec_id: &str) -> bool {
        exec_id.is_empty() || exec_id == self.init_exec_id
    }
}

struct ContainerOps {
    status: Status,
    /// The bundle's staged mounts (rootfs, bind sources).
    mounts: Vec<Mounted>,
    /// The sandbox storages the container holds.
    storages: Held,
    removed: bool,
}

impl Sandbox {
    /// A sandbox manager on youki's libcontainer, keeping its state under `config.run_root`.
    pub fn new(config: SandboxConfig) -> Sandbox {
        let runtime = Arc::new(LibcontainerRuntime::with_fork_helper(
            config.state_root(),
            config.fork_helper.clone(),
            config.fork_helper_log.clone(),
        ));
        Sandbox::with_runtime(config, runtime)
    }

    /// A sandbox manager on another [`ContainerRuntime`].
    pub fn with_runtime(config: SandboxConfig, runtime: Arc<dyn ContainerRuntime>) -> Sandbox {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Sandbox {
            config,
            runtime,
            drivers: Arc::new(StorageDrivers::builtin(DeviceTree::default())),
            devices: DeviceTree::default(),
            claims: Arc::new(NoReaper),
            current: tokio::sync::Mutex::new(None),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        }
    }

    /// Finds hot-plugged devices in `devices` (sysfs and /dev roots) instead of the guest's
    /// own `/sys` and `/dev`: for tests that stand a fake sysfs tree in for a hypervisor.
    pub fn with_device_tree(mut self, devices: DeviceTree) -> Sandbox {
        Arc::make_mut(&mut self.drivers).set_device_tree(devices.clone());
        self.devices = devices;
        self
    }

    /// Serves `image_guest_pull` storages (CoCo's guest pull) with `gp`; without it they are
    /// refused.
    pub fn with_guest_pull(self, gp: crate::GuestPull) -> Sandbox {
        self.with_storage_driver(Arc::new(crate::guest_pull::GuestPullDriver(gp)))
    }

    /// Serves storages of the driver's types with `driver` (a driver built from what the
    /// agent configures; a later one for a type replaces the earlier).
    pub(crate) fn with_storage_driver(
        mut self,
        driver: Arc<dyn crate::storage::StorageDriver>,
    ) -> Sandbox {
        Arc::make_mut(&mut self.drivers).register(driver);
        self
    }

    /// The storage drivers served, by Kata's `driver` names (GetGuestDetails'
    /// `storage_handlers`).
    pub fn storage_drivers(&self) -> Vec<String> {
        self.drivers.names().iter().map(|n| n.to_string()).collect()
    }

    /// Makes container processes (and the runtime's helper children) off-limits to the
    /// embedding process's own child reaper.
    pub fn with_child_claims(mut self, claims: Arc<dyn ChildClaims>) -> Sandbox {
        self.claims = claims;
        self
    }

    /// Runs a runtime call that forks (create, exec) under a claim; returns the new pid and
    /// the claim, to be released once the process has been reaped.
    async fn spawn_claimed(
        &self,
        spawn: impl FnOnce() -> Result<i32> + Send + 'static,
    ) -> Result<(i32, ClaimToken)> {
        let claims = self.claims.clone();
        tokio::task::spawn_blocking(move || {
            let mut spawn = Some(spawn);
            let mut outcome = None;
            let token = claims.claimed(&mut || {
                let r = spawn.take().map(|f| f());
                let pid = r.as_ref().and_then(|r| r.as_ref().ok().copied());
                outcome = r;
                pid
            });
            match (outcome, token) {
                (Some(Ok(pid)), Some(token)) => Ok((pid, token)),
                (Some(Err(e)), _) => Err(e),
                _ => Err(RuntimeError::Internal(
                    "the process could not be claimed from the agent's reaper".into(),
                )),
            }
        })
        .await
        .map_err(|e| RuntimeError::internal("spawn task", e))?
    }

    async fn sandbox(&self) -> Result<Arc<SandboxState>> {
        self.current
            .lock()
            .await
            .clone()
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "sandbox",
                id: "(none: CreateSandbox first)".into(),
            })
    }

    async fn container(&self, id: &str) -> Result<Arc<Container>> {
        if id.is_empty() {
            return Err(RuntimeError::invalid("container_id", "empty"));
        }
        let sandbox = self.sandbox().await?;
        let found = lock(&sandbox.containers).live.get(id).cloned();
        found.ok_or_else(|| RuntimeError::not_found("container", id))
    }

    /// The sandbox's shared directory (CopyFile's jail), if a sandbox exists.
    pub async fn shared_dir(&self) -> Result<PathBuf> {
        Ok(self.sandbox().await?.layout.shared_path())
    }

    /// The run directory of the sandbox, if one exists.
    pub async fn sandbox_dir(&self) -> Result<PathBuf> {
        Ok(self.sandbox().await?.layout.dir().to_path_buf())
    }

    /// What the configuration lets containers have, with `[sandbox] devices` resolved to the
    /// device numbers present now.
    fn limits(&self) -> SpecLimits {
        SpecLimits {
            capabilities: self.config.capabilities.clone(),
            allow_privileged: self.config.allow_privileged,
            devices: spec::configured_devices(&self.config.devices),
        }
    }

    pub async fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<Empty> {
        check_id(&req.sandbox_id, "sandbox_id")?;
        if !req.guest_hook_path.is_empty() && !self.config.allow_hooks {
            return Err(RuntimeError::invalid(
                "guest_hook_path",
                "OCI hooks are not allowed by the agent configuration",
            ));
        }
        let guest_hooks = if req.guest_hook_path.is_empty() {
            vigil_protos::oci::Hooks::default()
        } else {
            crate::hooks::guest_hooks(&req.guest_hook_path)?
        };
        if !req.kernel_modules.is_empty() {
            return Err(RuntimeError::invalid(
                "kernel_modules",
                "loading kernel modules is not supported",
            ));
        }
        if req.hostname.len() > 64 || req.hostname.contains('\0') {
            return Err(RuntimeError::invalid(
                "hostname",
                "longer than 64 bytes, or contains a NUL byte",
            ));
        }
        for (i, d) in req.dns.iter().enumerate() {
            if d.contains('\n') || d.contains('\0') {
                return Err(RuntimeError::invalid(
                    format!("dns[{i}]"),
                    "contains a line break",
                ));
            }
        }
        let mut slot = self.current.lock().await;
        if let Some(s) = slot.as_ref() {
            return Err(RuntimeError::AlreadyExists {
                kind: "sandbox",
                id: s.id.clone(),
            });
        }
        let pod_namespaces = PodNamespaces::create(&req.hostname)?;
        // What an agent that died left there is removed first: nothing is inherited.
        let (root, per_sandbox) = self.config.layout_root(&req.sandbox_id);
        let layout = Layout::create(&root, per_sandbox)?;
        if !req.dns.is_empty() {
            let p = layout.resolv_conf_path();
            let mut text = req.dns.join("\n");
            text.push('\n');
            std::fs::write(&p, text).map_err(|e| RuntimeError::internal(p.display(), e))?;
        }
        // On a blocking thread: finding a hot-plugged disk may wait for it.
        let (drivers, storages) = (self.drivers.clone(), req.storages.clone());
        let set_up = tokio::task::spawn_blocking(move || {
            let mut table = SandboxStorages::default();
            let added = layout.shared().and_then(|shared| {
                drivers.add_all(&mut table, &storages, &layout, None, &[&shared], "storages")
            });
            (layout, added.map(|_| table))
        })
        .await;
        let (layout, storages) = match set_up {
            Ok((layout, Ok(table))) => (layout, table),
            Ok((layout, Err(e))) => {
                layout.remove();
                return Err(e);
            }
            // The task panicked with the layout: the next CreateSandbox cleans it up.
            Err(e) => return Err(RuntimeError::internal("storage task", e)),
        };
        *slot = Some(Arc::new(SandboxState {
            id: req.sandbox_id.clone(),
            hostname: req.hostname.clone(),
            layout,
            shared_pidns: req.sandbox_pidns,
            guest_hooks,
            pod_namespaces,
            storages: tokio::sync::Mutex::new(storages),
            containers: Mutex::new(Containers::default()),
            destroyed: AtomicBool::new(false),
        }));
        Ok(Empty::new())
    }

    pub async fn destroy_sandbox(&self, _req: DestroySandboxRequest) -> Result<Empty> {
        let state = self
            .current
            .lock()
            .await
            .take()
            .ok_or_else(|| RuntimeError::not_found("sandbox", "(none)"))?;
        state.destroyed.store(true, Ordering::SeqCst);
        let containers: Vec<Arc<Container>> =
            lock(&state.containers).live.values().cloned().collect();
        let mut errors = Vec::new();
        for c in containers {
            if let Err(e) = self.remove(&state, &c, Some(DESTROY_TIMEOUT)).await {
                errors.push(format!("container {}: {e}", c.id));
            }
        }
        errors.extend(state.storages.lock().await.unmount_all());
        errors.extend(state.layout.remove());
        if errors.is_empty() {
            Ok(Empty::new())
        } else {
            Err(RuntimeError::Internal(format!(
                "destroying sandbox {}: {}",
                state.id,
                errors.join("; ")
            )))
        }
    }

    /// Reports OOM kills in the container as the kernel signals them (any process, not only
    /// those the sandbox started). Ends when the cgroup goes away (the counter cannot be read).
    async fn watch_oom(&self, id: &str) -> bool {
        let (watch, wake) = match self.blocking(id, |rt, id| rt.oom_watch(id)).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(container = id, error = %e, "no OOM notifications; relying on process deaths");
                return false;
            }
        };
        let afd = match stdio::async_fd(watch, "OOM notifications") {
            Ok(a) => a,
            Err(_) => return false,
        };
        let (runtime, oom_tx, cid) = (self.runtime.clone(), self.oom_tx.clone(), id.to_string());
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let mut last = 0;
            loop {
                let Ok(mut guard) = afd.readable().await else {
                    return;
                };
                // Drain the notification (an eventfd counter or inotify events).
                // SAFETY: reading into a buffer we own, with its length.
                while unsafe {
                    libc::read(
                        afd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                } > 0
                {}
                guard.clear_ready();
                let id = cid.clone();
                let rt = runtime.clone();
                let kills = match tokio::task::spawn_blocking(move || rt.oom_kills(&id)).await {
                    Ok(Ok(n)) => n,
                    _ => return, // the cgroup is gone: the container was removed
                };
                let oom = match wake {
                    OomWake::IsOom => true,
                    OomWake::CheckCounter => kills > last,
                };
                last = last.max(kills);
                if oom {
                    // Count 0: already decided, no de-duplication against process deaths.
                    let _ = oom_tx.send(format!("{cid}\00"));
                }
            }
        });
        true
    }

    pub async fn start_container(&self, req: StartContainerRequest) -> Result<Empty> {
        let c = self.container(&req.container_id).await?;
        let mut ops = c.ops.lock().await;
        live(&ops, &c)?;
        if ops.status != Status::Created {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is already started",
                c.id
            )));
        }
        self.blocking(&c.id, |rt, id| rt.start(id)).await?;
        ops.status = Status::Running;
        self.run_agent_hooks(&c, "poststart", "running").await;
        Ok(Empty::new())
    }

    /// Runs the container's poststart or poststop hooks; a failure is logged, never returned
    /// (the OCI runtime spec: the lifecycle goes on).
    async fn run_agent_hooks(&self, c: &Container, kind: &'static str, status: &str) {
        let hooks = match kind {
            "poststart" => c.hooks.poststart.clone(),
            _ => c.hooks.poststop.clone(),
        };
        if hooks.is_empty() {
            return;
        }
        let pid = (status == "running").then_some(c.init.pid);
        let state = crate::hooks::state(&c.id, status, pid, &c.bundle, &c.annotations);
        let claims = self.claims.clone();
        let failed = tokio::task::spawn_blocking(move || {
            crate::hooks::run(kind, &hooks, &state, claims.as_ref())
        })
        .await
        .unwrap_or_else(|e| vec![format!("{kind} hooks: {e}")]);
        for f in failed {
            tracing::warn!(container = %c.id, "{f}");
        }
    }

    pub async fn remove_container(&self, req: RemoveContainerRequest) -> Result<Empty> {
        let sandbox = self.sandbox().await?;
        let c = self.container(&req.container_id).await?;
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout.into()));
        self.remove(&sandbox, &c, timeout).await?;
        Ok(Empty::new())
    }

    /// Kills the container's processes, waits for them (within `timeout`), deletes it from the
    /// runtime (cgroup, state), unmounts its storages and removes its bundle. Every step runs
    /// even if an earlier one failed; the container stays listed (so removal can be retried)
    /// only if the runtime could not delete it.
    async fn remove(
        &self,
        sandbox: &SandboxState,
        c: &Arc<Container>,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let mut ops = c.ops.lock().await;
        if ops.removed {
            return Ok(());
        }
        let mut errors = Vec::new();
        if c.init.exited().is_none() {
            if let Err(e) = self
                .blocking(&c.id, |rt, id| rt.signal_all(id, libc::SIGKILL))
                .await
            {
                // The runtime may refuse a container whose init just died; the pidfd can't lie.
                if let Err(e2) = send_signal(&c.init, libc::SIGKILL) {
                    errors.push(format!("{e}; {e2}"));
                }
            }
            if ops.status == Status::Paused {
                let _ = self.blocking(&c.id, |rt, id| rt.resume(id)).await;
            }
        }
        let processes: Vec<Arc<Process>> = std::iter::once(c.init.clone())
            .chain(lock(&c.processes).values().cloned())
            .collect();
        let all_exited = async {
            for p in &processes {
                p.exit.clone().wait_for(|s| s.is_some()).await.ok();
            }
        };
        match timeout {
            Some(t) => {
                if tokio::time::timeout(t, all_exited).await.is_err() {
                    return Err(RuntimeError::Timeout(format!(
                        "container {}: processes still running after {}s",
                        c.id,
                        t.as_secs()
                    )));
                }
            }
            None => all_exited.await,
        }
        let deleted = self.blocking(&c.id, |rt, id| rt.delete(id)).await;
        match &deleted {
            Ok(()) => self.run_agent_hooks(c, "poststop", "stopped").await,
            Err(e) => errors.push(e.to_string()),
        }
        errors.extend(mount::unmount_all(&mut ops.mounts));
        errors.extend(
            sandbox
                .storages
                .lock()
                .await
                .release(std::mem::take(&mut ops.storages)),
        );
        if let Err(e) = sandbox.layout.remove_container(&c.id) {
            errors.push(e.to_string());
        }
        if deleted.is_ok() {
            ops.removed = true;
            lock(&sandbox.containers).live.remove(&c.id);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Internal(format!(
                "removing container {}: {}",
                c.id,
                errors.join("; ")
            )))
        }
    }

    pub async fn update_container(&self, req: UpdateContainerRequest) -> Result<Empty> {
        let resources = req
            .resources
            .as_ref()
            .ok_or_else(|| RuntimeError::invalid("resources", "missing"))?;
        let resources = spec::resources(resources)?;
        let c = self.container(&req.container_id).await?;
        let ops = c.ops.lock().await;
        live(&ops, &c)?;
        let rules = c.device_rules.clone();
        self.blocking(&c.id, move |rt, id| {
            rt.update(id, &resources)?;
            rt.restrict_devices(id, &rules)
        })
        .await?;
        Ok(Empty::new())
    }

    pub async fn stats_container(
        &self,
        req: StatsContainerRequest,
    ) -> Result<StatsContainerResponse> {
        let c = self.container(&req.container_id).await?;
        let stats = self.blocking(&c.id, |rt, id| rt.stats(id)).await?;
        // The pod's interfaces: it shares the agent's (the guest's) network namespace.
        let net = std::fs::read_to_string("/proc/net/dev")
            .map_err(|e| RuntimeError::internal("/proc/net/dev", e))?;
        Ok(StatsContainerResponse {
            cgroup_stats: Some(stats).into(),
            network_stats: crate::stats::network(&net),
            ..Default::default()
        })
    }

    pub async fn pause_container(&self, req: PauseContainerRequest) -> Result<Empty> {
        let c = self.container(&req.container_id).await?;
        let mut ops = c.ops.lock().await;
        live(&ops, &c)?;
        not_running(&ops, &c)?;
        self.blocking(&c.id, |rt, id| rt.pause(id)).await?;
        ops.status = Status::Paused;
        Ok(Empty::new())
    }

    pub async fn resume_container(&self, req: ResumeContainerRequest) -> Result<Empty> {
        let c = self.container(&req.container_id).await?;
        let mut ops = c.ops.lock().await;
        live(&ops, &c)?;
        if ops.status != Status::Paused {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is not paused",
                c.id
            )));
        }
        self.blocking(&c.id, |rt, id| rt.resume(id)).await?;
        ops.status = Status::Running;
        Ok(Empty::new())
    }

    /// Waits for the next out-of-memory kill in any container and names the container.
    /// Without a sandbox there is nothing to wait for: `NOT_FOUND` at once.
    pub async fn get_oom_event(&self, _req: GetOOMEventRequest) -> Result<OOMEvent> {
        self.sandbox().await?;
        let mut rx = self.oom_rx.lock().await;
        loop {
            let event = rx
                .recv()
                .await
                .ok_or_else(|| RuntimeError::Internal("OOM event source closed".into()))?;
            let (cid, count) = event.split_once('\0').unwrap_or((&event, "0"));
            let count: u64 = count.parse().unwrap_or(0);
            // Several processes killed by one OOM episode report the same counter: one event.
            if count > 0 {
                if let Ok(c) = self.container(cid).await {
                    if c.oom_kills_seen.fetch_max(count, Ordering::SeqCst) >= count {
                        continue;
                    }
                }
            }
            return Ok(OOMEvent {
                container_id: cid.to_string(),
                ..Default::default()
            });
        }
    }

    pub async fn copy_file(&self, req: CopyFileRequest) -> Result<Empty> {
        let shared = self.sandbox().await?.layout.shared()?;
        let keep_setuid = self.config.allow_setuid_copy;
        tokio::task::spawn_blocking(move || {
            crate::copy_file::copy_file(&shared, &req, keep_setuid)
        })
        .await
        .map_err(|e| RuntimeError::internal("copy task", e))??;
        Ok(Empty::new())
    }

    /// GetDiagnosticData. Kata's one `log_type`, `termination_log`: the container's
    /// termination message.
    pub async fn get_diagnostic_data(
        &self,
        req: GetDiagnosticDataRequest,
    ) -> Result<GetDiagnosticDataResponse> {
        if req.log_type != "termination_log" {
            return Err(RuntimeError::invalid(
                "log_type",
                format!(
                    "{:?} is not a diagnostic this agent collects (termination_log)",
                    req.log_type
                ),
            ));
        }
        let c = self.container(&req.container_id).await?;
        let shared = self.sandbox().await?.layout.shared()?;
        let bundle = c.bundle.clone();
        let data = tokio::task::spawn_blocking(move || {
            crate::diagnostic::termination_log(&bundle, &shared)
        })
        .await
        .map_err(|e| RuntimeError::internal("diagnostic task", e))??;
        Ok(GetDiagnosticDataResponse {
            data,
            ..Default::default()
        })
    }

    /// Runs a blocking runtime call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        id: &str,
        f: impl FnOnce(&dyn ContainerRuntime, &str) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let rt = self.runtime.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || f(rt.as_ref(), &id))
            .await
            .map_err(|e| RuntimeError::internal("runtime task", e))?
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Refuses operations that need a running container, saying what state it is in instead.
fn not_running(ops: &ContainerOps, c: &Container) -> Result<()> {
    let why = match (c.init.exited(), ops.status) {
        (Some(status), _) => format!("its init process exited with status {status}"),
        (None, Status::Created) => "it is not started".to_string(),
        (None, Status::Paused) => "it is paused".to_string(),
        (None, Status::Running) => return Ok(()),
    };
    Err(RuntimeError::FailedPrecondition(format!(
        "container {} is not running: {why}",
        c.id
    )))
}

fn live(ops: &ContainerOps, c: &Container) -> Result<()> {
    if ops.removed {
        return Err(RuntimeError::not_found("container", &c.id));
    }
    Ok(())
}

/// Ids become directory and cgroup names: keep them to a safe alphabet.
fn check_id(id: &str, field: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::invalid(
            field,
            format!("{id:?} must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Added, MountPoint, StorageContext, StorageDriver};

    /// A driver of its own type, counting its uses.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl StorageDriver for Counting {
        fn driver_types(&self) -> &'static [&'static str] {
            &["counting"]
        }
        fn add(&self, _: &Storage, at: &MountPoint, _: &StorageContext) -> Result<Added> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let fd = at.plain_dir()?;
            Ok(Added::plain(crate::confine::Owned::new(
                at.shown.clone(),
                fd,
            )))
        }
    }

    #[tokio::test]
    async fn a_registered_driver_serves_its_type_and_is_listed() {
        let t = tempfile::tempdir().unwrap();
        let driver = Arc::new(Counting(Default::default()));
        let sandbox = Sandbox::new(SandboxConfig {
            kata_root: t.path().to_path_buf(),
            ..Default::default()
        })
        .with_storage_driver(driver.clone())
        .with_device_tree(DeviceTree::default());
        assert!(sandbox.storage_drivers().contains(&"counting".to_string()));
        assert!(sandbox.storage_drivers().contains(&"blk".to_string()));
        sandbox
            .create_sandbox(CreateSandboxRequest {
                sandbox_id: "sb".into(),
                storages: vec![Storage {
                    driver: "counting".into(),
                    mount_point: "sandbox/counted".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(driver.0.load(Ordering::SeqCst), 1);
        assert!(t.path().join("sandbox/counted").is_dir());
        sandbox
            .destroy_sandbox(DestroySandboxRequest::new())
            .await
            .unwrap();
    }
}
