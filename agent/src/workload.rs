//! Start-up's hand-over to the workload features (the workload API, sealed secrets): the
//! boot's attested KBS access, made once and shared by both.

use std::sync::Arc;

use vigil_attester::initdata::InitData;
use vigil_attester::Attester;

use crate::config::Config;
use crate::gate::Gate;
use crate::resources::{ClientSession, KbsAccess, ResourceSource, SingleFlight};
use crate::workload_api::WorkloadApi;

/// What the workload features use of the attested boot.
#[derive(Clone)]
pub struct WorkloadAccess {
    pub kbs: KbsAccess,
    /// The KBS session, behind single-flight.
    pub resources: Arc<dyn ResourceSource>,
    pub attester: Arc<dyn Attester>,
}

/// The workload features' KBS access, in attested modes when a feature needs it.
pub fn access(
    config: &Config,
    attester: Arc<dyn Attester>,
    initdata: &InitData,
    gate: &Gate,
) -> Result<Option<WorkloadAccess>, String> {
    if config.workload_api.is_none() && config.sealed_secrets.is_none() {
        return Ok(None);
    }
    let kbs_config = config
        .attestation
        .kbs
        .clone()
        .ok_or("[attestation.kbs] is missing")?;
    let kbs = KbsAccess::new(kbs_config, attester.clone(), initdata.toml.clone());
    let session = ClientSession::new(kbs.client().map_err(|e| e.to_string())?);
    let resources = Arc::new(SingleFlight::new(
        Arc::new(session),
        gate.decision_log().workload_counters(),
    ));
    Ok(Some(WorkloadAccess {
        kbs,
        resources,
        attester,
    }))
}

/// Opens the workload API when the measured config turns it on.
pub fn open(
    config: &Config,
    access: Option<&WorkloadAccess>,
    gate: Arc<Gate>,
) -> Result<Option<WorkloadApi>, String> {
    let (Some(api_config), Some(access)) = (&config.workload_api, access) else {
        return Ok(None);
    };
    let api = WorkloadApi::start(
        api_config.clone(),
        access.resources.clone(),
        access.attester.clone(),
        access.kbs.clone(),
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
