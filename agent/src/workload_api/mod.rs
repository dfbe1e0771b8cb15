//! The workload API: CoCo's `api-server-rest` REST API, served by the agent on the guest's
//! loopback so that the pod's containers can get attested secrets without CoCo's extra guest
//! processes (attestation agent, confidential data hub, api-server-rest).
//!
//! | request | answer |
//! |---|---|
//! | `GET /cdh/resource/{repo}/{type}/{tag}` | the resource's bytes, fetched through the boot's attested KBS session; only resources `[workload_api] allowed_resources` lists (others 403, never sent to the KBS) |
//! | `GET /aa/evidence?runtime_data=..[&encoding=base64]` | fresh evidence whose report data is the runtime data (at most 64 bytes), as CoCo's attestation agent makes it |
//! | `GET /aa/token?token_type=kbs` | `{"token", "tee_keypair"}`: a fresh KBS attestation token and the PKCS#8 PEM private key it was issued for |
//! | `GET /info` | `{"version", "tee", "additional_tees", "feature"}` |
//!
//! Off unless the measured config has `[workload_api]`; `evidence` and `token` only when its
//! `endpoints` name them. Errors carry CoCo's statuses and bodies (400 `BAD REQUEST`, 403
//! `Forbidden`, 404 `URL NOT FOUND`, 405, 500 with the cause), plus an `x-vigil-reason`
//! header; every call is an audit record and a GetMetrics counter.

pub mod config;
mod handlers;
mod route;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use vigil_kbc::KbsSession;

pub use config::{WorkloadApiConfig, WorkloadApiSection};

use crate::gate::Gate;
use crate::resources::ResourceSource;

/// A running workload API.
pub struct WorkloadApi {
    listener: server::Listener,
}

impl WorkloadApi {
    /// Binds `config.listen` and serves on the API's own thread. `session` is the boot's KBS
    /// session, `resources` the same behind single-flight; calls are audited through `gate`'s
    /// log.
    pub fn start(
        config: WorkloadApiConfig,
        resources: Arc<dyn ResourceSource>,
        session: KbsSession,
        gate: Arc<Gate>,
    ) -> Result<WorkloadApi, String> {
        let listen = config.listen;
        let ctx = handlers::Ctx::new(config, resources, session, gate);
        Ok(WorkloadApi {
            listener: server::Listener::start(listen, ctx)?,
        })
    }

    /// The bound address (the configured one, with the port the kernel chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    pub fn shutdown(self) {
        self.listener.shutdown();
    }
}
