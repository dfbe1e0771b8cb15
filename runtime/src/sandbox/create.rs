//! CreateContainer: from the request to a created (not yet started) container. Storages are
//! set up, the spec is checked and converted with its rootfs and bind sources staged in the
//! bundle (see `staging`), the runtime library creates the container, and the agent's device
//! rules replace the library's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use protobuf::well_known_types::empty::Empty;
use vigil_protos::agent::*;
use vigil_protos::oci;

use super::{
    check_id, lock, process::new_io, Container, ContainerOps, SandboxState, Status, DESTROY_TIMEOUT,
};
use crate::confine::Owned;
use crate::error::{Result, RuntimeError};
use crate::hooks::AgentHooks;
use crate::layout::Layout;
use crate::mount::{unmount_all, Mounted};
use crate::spec::{self, DeviceNum, SpecContext};
use crate::staging::Staging;
use crate::storage::{Held, ProcessDefaults};
use crate::Sandbox;

/// The container being created: the request, its spec as the guest sees it (hot-plugged
/// devices renamed), and the guest numbers of those devices.
pub(super) struct NewContainer<'a> {
    req: &'a CreateContainerRequest,
    spec: &'a oci::Spec,
    hotplugged: &'a [DeviceNum],
}

/// What CreateContainer took of the sandbox's storages.
struct ContainerStorages {
    held: Held,
    /// The roots of the request's storages, in order.
    roots: Vec<Owned>,
    /// What the request's storages say of the process (a guest-pulled image's defaults).
    process: Vec<ProcessDefaults>,
    /// The roots of the sandbox's own storages.
    sandbox_roots: Vec<Owned>,
}

/// What a container being created has set up so far, undone if it fails.
struct Acquired {
    mounts: Vec<Mounted>,
    storages: Held,
}

impl Sandbox {
    pub async fn create_container(&self, req: CreateContainerRequest) -> Result<Empty> {
        check_id(&req.container_id, "container_id")?;
        Layout::check_container_id(&req.container_id)?;
        if !req.exec_id.is_empty() {
            check_id(&req.exec_id, "exec_id")?;
        }
        let oci_spec = req
            .OCI
            .as_ref()
            .ok_or_else(|| RuntimeError::invalid("OCI", "missing"))?;
        if !req.shared_mounts.is_empty() {
            return Err(RuntimeError::invalid(
                "shared_mounts",
                "shared mounts are not supported",
            ));
        }
        if req.stdin_port != 0 || req.stdout_port != 0 || req.stderr_port != 0 {
            return Err(RuntimeError::invalid(
                "stdin_port",
                "passfd I/O is not supported",
            ));
        }
        let sandbox = self.sandbox().await?;
        {
            let mut map = lock(&sandbox.containers);
            if map.live.contains_key(&req.container_id)
                || !map.creating.insert(req.container_id.clone())
            {
                return Err(RuntimeError::AlreadyExists {
                    kind: "container",
                    id: req.container_id.clone(),
                });
            }
        }
        // The devices the host hot-plugged, as the guest sees them, in the spec; they join
        // what this container's spec may name.
        let mut guest_spec;
        let (oci_spec, hotplugged) = if req.devices.is_empty() {
            (oci_spec, Vec::new())
        } else {
            match crate::hotplug::resolve(&self.devices, &req.devices).await {
                Ok(found) => {
                    guest_spec = oci_spec.clone();
                    crate::hotplug::apply(&mut guest_spec, &found);
                    (&guest_spec, crate::hotplug::numbers(&found))
                }
                Err(e) => {
                    lock(&sandbox.containers).creating.remove(&req.container_id);
                    return Err(e);
                }
            }
        };
        let new = NewContainer {
            req: &req,
            spec: oci_spec,
            hotplugged: &hotplugged,
        };
        let result = self.build_container(&sandbox, &new).await;
        let container = {
            let mut map = lock(&sandbox.containers);
            map.creating.remove(&req.container_id);
            let container = result?;
            if !sandbox.destroyed.load(Ordering::SeqCst) {
                map.live.insert(req.container_id.clone(), container);
                return Ok(Empty::new());
            }
            container
        };
        let _ = self
            .remove(&sandbox, &container, Some(DESTROY_TIMEOUT))
            .await;
        Err(RuntimeError::FailedPrecondition(
            "the sandbox was destroyed while the container was being created".into(),
        ))
    }

    /// The container's storages, set up (or, where the sandbox has them already, used again)
    /// on a blocking thread: finding a hot-plugged disk may wait for it.
    async fn add_storages(
        &self,
        sandbox: &Arc<SandboxState>,
        req: &CreateContainerRequest,
    ) -> Result<ContainerStorages> {
        let (drivers, state) = (self.drivers.clone(), sandbox.clone());
        let (storages, id) = (req.storages.clone(), req.container_id.clone());
        tokio::task::spawn_blocking(move || {
            let shared = state.layout.shared()?;
            let mut table = state.storages.blocking_lock();
            let sandbox_roots = table.sandbox_roots()?;
            let sources: Vec<&Owned> = std::iter::once(&shared)
                .chain(sandbox_roots.iter())
                .collect();
            let added = drivers.add_all(
                &mut table,
                &storages,
                &state.layout,
                Some(&id),
                &sources,
                "storages",
            )?;
            Ok(ContainerStorages {
                held: added.held,
                roots: added.roots,
                process: added.process,
                sandbox_roots,
            })
        })
        .await
        .map_err(|e| RuntimeError::internal("storage task", e))?
    }

    /// Everything else on the host's side of the spec, checked and in place: the rootfs and
    /// bind sources staged (beneath the shared directory and the storages), the converted spec.
    fn prepare(
        &self,
        sandbox: &SandboxState,
        new: &NewContainer,
        bundle: &Owned,
        storages: &ContainerStorages,
        mounts: &mut Vec<Mounted>,
    ) -> Result<oci_spec::runtime::Spec> {
        let (req, spec_in) = (new.req, new.spec);
        let id = req.container_id.as_str();
        let shared = sandbox.layout.shared()?;
        // Every container joins the pod's IPC and UTS namespaces (as in Kata and Kubernetes).
        let mut namespaces: std::collections::BTreeMap<&'static str, PathBuf> =
            sandbox.pod_namespaces.paths().into_iter().collect();
        match (req.sandbox_pidns, sandbox.shared_pidns) {
            (false, _) => {}
            (true, false) => {
                return Err(RuntimeError::invalid(
                    "sandbox_pidns",
                    "the sandbox was created without a shared PID namespace",
                ))
            }
            // The first container's PID namespace is the sandbox's (as the pause container's is
            // in a Kubernetes pod); later ones join it while its init lives.
            (true, true) => {
                if let Some(pid) = lock(&sandbox.containers)
                    .live
                    .values()
                    .filter(|c| c.init.exited().is_none())
                    .map(|c| c.init.pid)
                    .min()
                {
                    namespaces.insert("pid", PathBuf::from(format!("/proc/{pid}/ns/pid")));
                }
            }
        }
        let resolv = sandbox.layout.resolv_conf()?;
        let mut spec_in = spec_in.clone();
        // A guest-pulled image's config fills in what the host left to it, before the checks.
        for defaults in &storages.process {
            defaults.apply(spec_in.Process.mut_or_insert_default())?;
        }
        crate::hooks::append(&mut spec_in, &sandbox.guest_hooks);
        if let Some(resolv) = &resolv {
            if !spec_in
                .Mounts
                .iter()
                .any(|m| m.destination == "/etc/resolv.conf")
            {
                spec_in.Mounts.push(oci::Mount {
                    destination: "/etc/resolv.conf".into(),
                    source: resolv.path().to_string_lossy().into_owned(),
                    type_: "bind".into(),
                    options: vec!["rbind".into(), "ro".into(), "nosuid".into(), "nodev".into()],
                    ..Default::default()
                });
            }
        }
        let mut limits = self.limits();
        limits.devices.extend_from_slice(new.hotplugged);
        let ctx = SpecContext {
            allow_hooks: self.config.allow_hooks,
            cgroups_path: format!("/{}/{}", self.config.cgroup_parent, id),
            hostname: &sandbox.hostname,
            namespaces,
            limits: &limits,
        };
        let storages: Vec<&Owned> = storages
            .sandbox_roots
            .iter()
            .chain(storages.roots.iter())
            .collect();
        let agent_files: Vec<&Owned> = resolv.iter().collect();
        let container_dir = sandbox.layout.container_dir(id);
        let mut staging = Staging::new(bundle, &container_dir, &shared, &storages, &agent_files);
        let spec = spec::container_spec(&spec_in, &ctx, &mut staging);
        mounts.append(&mut staging.mounts);
        spec
    }

    pub(super) async fn build_container(
        &self,
        sandbox: &Arc<SandboxState>,
        new: &NewContainer<'_>,
    ) -> Result<Arc<Container>> {
        let (req, spec_in) = (new.req, new.spec);
        let id = req.container_id.clone();
        let bundle_path = sandbox.layout.bundle_path(&id);
        // Whatever an agent that died left for this id goes first.
        sandbox.layout.remove_container(&id)?;
        let bundle = sandbox.layout.create_bundle(&id)?;
        let mut mounts = Vec::new();
        let storages = match self.add_storages(sandbox, req).await {
            Ok(s) => s,
            Err(e) => {
                let _ = sandbox.layout.remove_container(&id);
                return Err(e);
            }
        };
        let prepared = self.prepare(sandbox, new, &bundle, &storages, &mut mounts);
        let mut acquired = Acquired {
            mounts,
            storages: storages.held,
        };
        let mut spec = match prepared {
            Ok(s) => s,
            Err(e) => return Err(self.undo(sandbox, &mut acquired, &id, e).await),
        };
        let hooks = AgentHooks::take(&mut spec);
        let annotations = spec.annotations().clone().unwrap_or_default();
        let config_json = bundle_path.join("config.json");
        if let Err(e) = spec
            .save(&config_json)
            .map_err(|e| RuntimeError::internal(config_json.display(), e))
        {
            return Err(self.undo(sandbox, &mut acquired, &id, e).await);
        }
        let device_rules = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().clone())
            .unwrap_or_default();
        let process = spec_in.Process.as_ref().cloned().unwrap_or_default();
        let (child_io, parent_io) = match new_io(&process) {
            Ok(io) => io,
            Err(e) => return Err(self.undo(sandbox, &mut acquired, &id, e).await),
        };
        let runtime = self.runtime.clone();
        let (cid, b) = (id.clone(), bundle_path.clone());
        let created = self
            .spawn_claimed(move || runtime.create(&cid, &b, child_io))
            .await;
        let (pid, claim) = match created {
            Ok(p) => p,
            Err(e) => {
                self.delete_quietly(&id).await;
                return Err(self.undo(sandbox, &mut acquired, &id, e).await);
            }
        };
        // The library adds device rules of its own (tun/tap among them): put the agent's in
        // force before the workload can run (it waits for StartContainer).
        let rules = device_rules.clone();
        if let Err(e) = self
            .blocking(&id, move |rt, id| rt.restrict_devices(id, &rules))
            .await
        {
            self.delete_quietly(&id).await;
            drop(claim);
            return Err(self.undo(sandbox, &mut acquired, &id, e).await);
        }
        let oom_watched = self.watch_oom(&id).await;
        let init = match self.track(&id, pid, claim, parent_io, !oom_watched) {
            Ok(p) => p,
            Err(e) => {
                self.delete_quietly(&id).await;
                return Err(self.undo(sandbox, &mut acquired, &id, e).await);
            }
        };
        Ok(Arc::new(Container {
            id,
            bundle: bundle_path,
            ops: tokio::sync::Mutex::new(ContainerOps {
                status: Status::Created,
                mounts: std::mem::take(&mut acquired.mounts),
                storages: std::mem::take(&mut acquired.storages),
                removed: false,
            }),
            processes: Mutex::new(HashMap::new()),
            init,
            init_exec_id: req.exec_id.clone(),
            oom_kills_seen: AtomicU64::new(0),
            oom_watched,
            device_rules,
            hooks,
            annotations,
        }))
    }

    /// Undoes what a failed create had set up, and passes its error on.
    async fn undo(
        &self,
        sandbox: &SandboxState,
        acquired: &mut Acquired,
        id: &str,
        e: RuntimeError,
    ) -> RuntimeError {
        unmount_all(&mut acquired.mounts);
        let problems = sandbox
            .storages
            .lock()
            .await
            .release(std::mem::take(&mut acquired.storages));
        for problem in problems {
            tracing::warn!(%problem, "undoing a failed CreateContainer");
        }
        let _ = sandbox.layout.remove_container(id);
        e
    }

    async fn delete_quietly(&self, id: &str) {
        let runtime = self.runtime.clone();
        let cid = id.to_string();
        let _ = tokio::task::spawn_blocking(move || runtime.delete(&cid)).await;
    }
}
