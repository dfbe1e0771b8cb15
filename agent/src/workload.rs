//! Start-up's hand-over to the workload features (the workload API, sealed secrets): the
//! boot's one attested KBS session, behind single-flight, shared by both.

use std::sync::Arc;

use vigil_kbc::KbsSession;

use crate::config::Config;
use crate::gate::Gate;
use crate::resources::{ResourceSource, SingleFlight};
use crate::workload_api::WorkloadApi;

/// What the workload features use of the attested boot.
#[derive(Clone)]
pub struct WorkloadAccess {
    /// The boot's session (evidence, tokens, the TEE's name).
    pub session: KbsSession,
    /// The same session's resources, concurrent requests for one sharing a fetch.
    pub resources: Arc<dyn ResourceSource>,
}

/// The workload features' access to the boot's session (`None` in unattested modes).
pub fn access(session: Option<&KbsSession>, gate: &Gate) -> Option<WorkloadAccess> {
    let session = session?.clone();
    let resources = Arc::new(SingleFlight::new(
        Arc::new(session.clone()),
        gate.decision_log().workload_counters(),
    ));
    Some(WorkloadAccess { session, resources })
}

/// Opens the workload API when the measured config turns it on.
pub fn open(
    config: &Config,
    access: Option<&WorkloadAccess>,
    gate: Arc<Gate>,
) -> Result<Option<WorkloadApi>, String> {
    let Some(api_config) = &config.workload_api else {
        return Ok(None);
    };
    let access = access.ok_or("[workload_api] needs the attested KBS session")?;
    let api = WorkloadApi::start(
        api_config.clone(),
        access.resources.clone(),
        access.session.clone(),
        gate,
    )?;
    tracing::info!(
        addr = %api.addr(),
        resource = api_config.resource,
        evidence = api_config.evidence,
        token = api_config.token,
        allowed_resources = api_config.allowed.len(),
        "workload API open"
    );
    Ok(Some(api))
}

/// The unsealer for CreateContainer: the measured `[sealed_secrets]` and the boot's session.
/// Without either, a sealed value fails CreateContainer (it is never passed on sealed).
pub fn sealed_secrets(
    config: &Config,
    access: Option<&WorkloadAccess>,
) -> crate::sealed_secrets::SealedSecrets {
    crate::sealed_secrets::SealedSecrets::new(
        config.sealed_secrets.clone(),
        access.map(|a| a.resources.clone()),
    )
}
