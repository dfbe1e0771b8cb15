//! The agent API handlers.
//!
//! Handlers stay one-liners: each returns `Result<_, AgentError>` and [`AgentError`] maps to a
//! ttrpc status in one place. Container RPCs go to the runtime (`vigil-runtime`), guest
//! operations to the guest crate (`vigil-guest`).

use std::sync::Arc;

use async_trait::async_trait;
use protobuf::well_known_types::empty::Empty;
use ttrpc::r#async::TtrpcContext;
use vigil_protos::{agent::*, csi, health, health_ttrpc, types};

use crate::gate::Gate;
use crate::policy::{PolicyAdmin, SetPolicyError};
use vigil_guest::{Guest, GuestConfig, GuestError};
use vigil_runtime::{RuntimeError, Sandbox, SandboxConfig};

/// Version of the agent API protocol reported by `Health.Version` (Kata's value).
pub const API_VERSION: &str = "0.0.1";
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Every error a handler can return, and the ttrpc status it becomes.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
}

impl From<RuntimeError> for AgentError {
    fn from(e: RuntimeError) -> AgentError {
        let text = e.to_string();
        match e {
            RuntimeError::NotFound { .. } => AgentError::NotFound(text),
            RuntimeError::AlreadyExists { .. } => AgentError::AlreadyExists(text),
            RuntimeError::InvalidArgument { .. } => AgentError::InvalidArgument(text),
            RuntimeError::FailedPrecondition(_) => AgentError::FailedPrecondition(text),
            RuntimeError::PermissionDenied(_) => AgentError::PermissionDenied(text),
            RuntimeError::Timeout(_) => AgentError::DeadlineExceeded(text),
            // Kata's agent ends a stream with an error reading "read meet eof"; shims expect it.
            RuntimeError::EndOfStream | RuntimeError::Internal(_) => AgentError::Internal(text),
        }
    }
}

impl From<GuestError> for AgentError {
    fn from(e: GuestError) -> AgentError {
        match e {
            GuestError::InvalidArgument(m) => AgentError::InvalidArgument(m),
            GuestError::NotFound(m) => AgentError::NotFound(m),
            GuestError::FailedPrecondition(m) => AgentError::FailedPrecondition(m),
            GuestError::DeadlineExceeded(m) => AgentError::DeadlineExceeded(m),
            GuestError::Internal(m) => AgentError::Internal(m),
        }
    }
}

impl From<crate::sealed_secrets::UnsealError> for AgentError {
    fn from(e: crate::sealed_secrets::UnsealError) -> AgentError {
        use crate::sealed_secrets::UnsealError;
        match e {
            UnsealError::Invalid { .. } => AgentError::InvalidArgument(e.to_string()),
            UnsealError::Kbs { .. } => AgentError::FailedPrecondition(e.to_string()),
            UnsealError::Io { .. } => AgentError::Internal(e.to_string()),
        }
    }
}

impl From<SetPolicyError> for AgentError {
    fn from(e: SetPolicyError) -> AgentError {
        match e {
            SetPolicyError::Unauthorized(_) => AgentError::PermissionDenied(e.to_string()),
            SetPolicyError::Invalid(_) => AgentError::InvalidArgument(e.to_string()),
        }
    }
}

/// When the agent is PID 1, its orphan reaper must leave container processes (and the runtime
/// library's helper children) to the sandbox, which waits for them itself: the sandbox spawns
/// them through this claim (`Sandbox::with_child_claims`).
impl vigil_runtime::ChildClaims for crate::pid1::Reaper {
    fn claimed(&self, spawn: &mut dyn FnMut() -> Option<i32>) -> Option<vigil_runtime::ClaimToken> {
        self.spawn_claimed(
            || spawn().ok_or_else(|| std::io::Error::other("spawn failed")),
            |pid| u32::try_from(*pid).ok(),
        )
        .ok()
        .map(|(_, claim)| Box::new(claim) as vigil_runtime::ClaimToken)
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> ttrpc::Error {
        let code = match e {
            AgentError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            AgentError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            AgentError::PermissionDenied(_) => ttrpc::Code::PERMISSION_DENIED,
            AgentError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            AgentError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            AgentError::DeadlineExceeded(_) => ttrpc::Code::DEADLINE_EXCEEDED,
            AgentError::Internal(_) => ttrpc::Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

type RpcResult<T> = ttrpc::Result<T>;

/// Optional capabilities this build of the agent has, reported in `AgentDetails`.
pub const FEATURES: &[&str] = &["endpoint-allow-list", "agent-policy"];

/// The state the handlers share.
pub struct AgentApi {
    guest: Guest,
    gate: Arc<Gate>,
    policy: PolicyAdmin,
    started: std::time::Instant,
    sandbox: Sandbox,
    sealed: crate::sealed_secrets::SealedSecrets,
    images: Option<Arc<vigil_image::ImageService>>,
}

impl AgentApi {
    pub fn new(guest: Guest, gate: Arc<Gate>, policy: PolicyAdmin) -> AgentApi {
        AgentApi {
            guest,
            gate,
            policy,
            started: std::time::Instant::now(),
            sandbox: Sandbox::new(SandboxConfig::default()),
            sealed: crate::sealed_secrets::SealedSecrets::new(None, None),
            images: None,
        }
    }

    /// Unseals sealed values in CreateContainer requests with `sealed` (default: none
    /// configured, so a sealed value fails the request).
    pub fn with_sealed_secrets(mut self, sealed: crate::sealed_secrets::SealedSecrets) -> AgentApi {
        self.sealed = sealed;
        self
    }

    /// The image service whose pull metrics GetMetrics reports.
    pub fn with_images(mut self, images: Option<Arc<vigil_image::ImageService>>) -> AgentApi {
        self.images = images;
        self
    }

    /// Serves the container RPCs from `sandbox` (default: [`SandboxConfig::default`]).
    pub fn with_sandbox(mut self, sandbox: Sandbox) -> AgentApi {
        self.sandbox = sandbox;
        self
    }

    /// An API with default guest facts and no SetPolicy rights, serving behind `gate`.
    pub fn with_gate(gate: Arc<Gate>) -> AgentApi {
        let admin = PolicyAdmin::new(Default::default(), None, gate.clone());
        AgentApi::new(Guest::new(&GuestConfig::default()), gate, admin)
    }

    /// GetGuestDetails: the guest's memory hot-plug facts and what this agent supports.
    fn guest_details(&self, req: &GuestDetailsRequest) -> Result<GuestDetailsResponse, AgentError> {
        let memory = self
            .guest
            .hotplug
            .memory_facts(req.mem_block_size, req.mem_hotplug_probe)?;
        Ok(GuestDetailsResponse {
            mem_block_size_bytes: memory.block_size,
            support_mem_hotplug_probe: memory.probe,
            agent_details: Some(AgentDetails {
                version: AGENT_VERSION.into(),
                init_daemon: std::process::id() == 1,
                storage_handlers: self.sandbox.storage_drivers(),
                device_handlers: vigil_guest::devices::TYPES
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
                // The runtime applies the spec's seccomp filter (libcontainer with libseccomp).
                supports_seccomp: true,
                extra_features: FEATURES.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    /// The generated service maps for `grpc.AgentService` and `grpc.Health`, not yet gated.
    pub fn service_map(
        self: Arc<Self>,
    ) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        let mut map = vigil_protos::agent_ttrpc::create_agent_service(self.clone());
        map.extend(health_ttrpc::create_health(self));
        map
    }
}

/// Implements the agent service: the handlers given in full, the container, process and stdio
/// RPCs as calls to the [`Sandbox`] method of the same name. A macro around the whole impl,
/// because `#[async_trait]` must see every method. (The generated trait has a default body
/// for every RPC, so a forgotten handler would still compile: `tests/service_map.rs` calls
/// every RPC to prove each has one of ours.)
macro_rules! agent_service {
    (
        impl for $ty:ty { $($implemented:item)* }
        sandbox { $($sb_name:ident($sb_req:ty) -> $sb_resp:ty;)* }
    ) => {
        #[async_trait]
        impl vigil_protos::agent_ttrpc::AgentService for $ty {
            $($implemented)*
            $(
                async fn $sb_name(&self, _ctx: &TtrpcContext, req: $sb_req) -> RpcResult<$sb_resp> {
                    Ok(self.sandbox.$sb_name(req).await.map_err(AgentError::from)?)
                }
            )*
        }
    };
}

agent_service! {
    impl for AgentApi {
    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> RpcResult<GuestDetailsResponse> {
        Ok(self.guest_details(&req)?)
    }

    async fn set_policy(&self, _ctx: &TtrpcContext, req: SetPolicyRequest) -> RpcResult<Empty> {
        Ok(self.policy.set_policy(&req.policy).map(|()| Empty::new()).map_err(AgentError::from)?)
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        mut req: CreateContainerRequest,
    ) -> RpcResult<Empty> {
        // After the gate (which judged the request as sent, sealed) and before the runtime.
        let root = self.sandbox.shared_dir().await.ok();
        self.sealed.unseal(&mut req, root.as_deref()).await.map_err(AgentError::from)?;
        Ok(self.sandbox.create_container(req).await.map_err(AgentError::from)?)
    }

    async fn get_metrics(&self, _ctx: &TtrpcContext, _req: GetMetricsRequest) -> RpcResult<Metrics> {
        Ok(Metrics {
            metrics: crate::metrics::render(&self.gate, self.started, self.images.as_deref()),
            ..Default::default()
        })
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> RpcResult<types::Interface> {
        Ok(self.guest.network.update_interface(req).await.map_err(AgentError::from)?)
    }

    async fn update_routes(&self, _ctx: &TtrpcContext, req: UpdateRoutesRequest) -> RpcResult<Routes> {
        Ok(self.guest.network.update_routes(req).await.map_err(AgentError::from)?)
    }

    async fn list_interfaces(
        &self,
        _ctx: &TtrpcContext,
        _req: ListInterfacesRequest,
    ) -> RpcResult<Interfaces> {
        Ok(self.guest.network.list_interfaces().await.map_err(AgentError::from)?)
    }

    async fn list_routes(&self, _ctx: &TtrpcContext, _req: ListRoutesRequest) -> RpcResult<Routes> {
        Ok(self.guest.network.list_routes().await.map_err(AgentError::from)?)
    }

    async fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        req: AddARPNeighborsRequest,
    ) -> RpcResult<Empty> {
        Ok(self.guest.network.add_arp_neighbors(req).await.map_err(AgentError::from)?)
    }

    async fn get_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        req: GetIPTablesRequest,
    ) -> RpcResult<GetIPTablesResponse> {
        Ok(self.guest.network.get_ip_tables(req).await.map_err(AgentError::from)?)
    }

    async fn set_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        req: SetIPTablesRequest,
    ) -> RpcResult<SetIPTablesResponse> {
        Ok(self.guest.network.set_ip_tables(req).await.map_err(AgentError::from)?)
    }

    async fn online_cpu_mem(&self, _ctx: &TtrpcContext, req: OnlineCPUMemRequest) -> RpcResult<Empty> {
        Ok(self.guest.hotplug.online_cpu_mem(req).await.map(|()| Empty::new()).map_err(AgentError::from)?)
    }

    async fn mem_hotplug_by_probe(&self, _ctx: &TtrpcContext, req: MemHotplugByProbeRequest) -> RpcResult<Empty> {
        Ok(self.guest.hotplug.probe_memory(&req).map(|()| Empty::new()).map_err(AgentError::from)?)
    }

    async fn set_guest_date_time(&self, _ctx: &TtrpcContext, req: SetGuestDateTimeRequest) -> RpcResult<Empty> {
        Ok(vigil_guest::clock::set_guest_date_time(&req).map(|()| Empty::new()).map_err(AgentError::from)?)
    }

    async fn reseed_random_dev(&self, _ctx: &TtrpcContext, req: ReseedRandomDevRequest) -> RpcResult<Empty> {
        Ok(vigil_guest::entropy::reseed(&self.guest.random, &req).map(|()| Empty::new()).map_err(AgentError::from)?)
    }

    async fn add_swap(&self, _ctx: &TtrpcContext, req: AddSwapRequest) -> RpcResult<Empty> {
        Ok(self.guest.swap.add_swap(req).await.map(|()| Empty::new()).map_err(AgentError::from)?)
    }

    async fn add_swap_path(&self, _ctx: &TtrpcContext, req: AddSwapPathRequest) -> RpcResult<Empty> {
        Ok(self.guest.swap.add_swap_path(req).await.map(|()| Empty::new()).map_err(AgentError::from)?)
    }

    async fn get_volume_stats(&self, _ctx: &TtrpcContext, req: VolumeStatsRequest) -> RpcResult<csi::VolumeStatsResponse> {
        Ok(self.guest.volumes.stats(&req).map_err(AgentError::from)?)
    }

    async fn resize_volume(&self, _ctx: &TtrpcContext, req: ResizeVolumeRequest) -> RpcResult<Empty> {
        Ok(self.guest.volumes.resize(req).await.map(|()| Empty::new()).map_err(AgentError::from)?)
    }

    async fn update_ephemeral_mounts(&self, _ctx: &TtrpcContext, req: UpdateEphemeralMountsRequest) -> RpcResult<Empty> {
        Ok(self.guest.ephemeral.update(&req).map(|()| Empty::new()).map_err(AgentError::from)?)
    }

    async fn remove_stale_virtiofs_share_mounts(&self, _ctx: &TtrpcContext, _req: RemoveStaleVirtiofsShareMountsRequest) -> RpcResult<Empty> {
        // The sandbox's shared directory (Kata's virtio-fs share); without a sandbox, NOT_FOUND.
        let shared = self.sandbox.shared_dir().await.map_err(AgentError::from)?;
        Ok(vigil_guest::ephemeral::refresh_shared_mounts(&shared).map(|_| Empty::new()).map_err(AgentError::from)?)
    }

    async fn mem_agent_memcg_set(&self, _ctx: &TtrpcContext, req: MemAgentMemcgConfig) -> RpcResult<Empty> {
        Ok(self.guest.memagent.memcg_set(&req).map(|()| Empty::new()).map_err(AgentError::from)?)
    }

    async fn mem_agent_compact_set(&self, _ctx: &TtrpcContext, req: MemAgentCompactConfig) -> RpcResult<Empty> {
        Ok(self.guest.memagent.compact_set(&req).map(|()| Empty::new()).map_err(AgentError::from)?)
    }
    }

    sandbox {
        start_container(StartContainerRequest) -> Empty;
        remove_container(RemoveContainerRequest) -> Empty;
        exec_process(ExecProcessRequest) -> Empty;
        signal_process(SignalProcessRequest) -> Empty;
        wait_process(WaitProcessRequest) -> WaitProcessResponse;
        update_container(UpdateContainerRequest) -> Empty;
        stats_container(StatsContainerRequest) -> StatsContainerResponse;
        pause_container(PauseContainerRequest) -> Empty;
        resume_container(ResumeContainerRequest) -> Empty;
        write_stdin(WriteStreamRequest) -> WriteStreamResponse;
        read_stdout(ReadStreamRequest) -> ReadStreamResponse;
        read_stderr(ReadStreamRequest) -> ReadStreamResponse;
        close_stdin(CloseStdinRequest) -> Empty;
        tty_win_resize(TtyWinResizeRequest) -> Empty;
        create_sandbox(CreateSandboxRequest) -> Empty;
        destroy_sandbox(DestroySandboxRequest) -> Empty;
        copy_file(CopyFileRequest) -> Empty;
        get_oom_event(GetOOMEventRequest) -> OOMEvent;
        get_diagnostic_data(GetDiagnosticDataRequest) -> GetDiagnosticDataResponse;
    }

}

#[async_trait]
impl health_ttrpc::Health for AgentApi {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> RpcResult<health::HealthCheckResponse> {
        let mut resp = health::HealthCheckResponse::new();
        resp.set_status(health::health_check_response::ServingStatus::SERVING);
        Ok(resp)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> RpcResult<health::VersionCheckResponse> {
        Ok(health::VersionCheckResponse {
            grpc_version: API_VERSION.into(),
            agent_version: AGENT_VERSION.into(),
            ..Default::default()
        })
    }
}
