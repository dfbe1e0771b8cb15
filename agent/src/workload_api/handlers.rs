//! What each route does, and the one place every answer is counted and audited.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use tokio::sync::{Mutex, Semaphore};
use vigil_kbc::KbsSession;
use vigil_policy::Outcome;
use zeroize::Zeroizing;

use super::config::WorkloadApiConfig;
use super::route::{self, body, Refusal, RequestLine, Route};
use crate::gate::Gate;
use crate::gate::{WorkloadCall, WorkloadEndpoint};
use crate::resources::ResourceSource;

/// Evidence calls served at once (each may be a device ioctl on a blocking thread).
const EVIDENCE_AT_ONCE: usize = 2;

/// What the handlers share.
pub struct Ctx {
    pub config: WorkloadApiConfig,
    /// The boot's KBS session's resources, behind single-flight.
    pub resources: Arc<dyn ResourceSource>,
    /// The boot's KBS session: evidence, tokens (each a fresh handshake with its own TEE
    /// key), the TEE's name.
    pub session: KbsSession,
    /// Where calls are counted and audited.
    pub gate: Arc<Gate>,
    evidence_permits: Semaphore,
    token_lock: Mutex<()>,
}

impl Ctx {
    pub fn new(
        config: WorkloadApiConfig,
        resources: Arc<dyn ResourceSource>,
        session: KbsSession,
        gate: Arc<Gate>,
    ) -> Ctx {
        Ctx {
            config,
            resources,
            session,
            gate,
            evidence_permits: Semaphore::new(EVIDENCE_AT_ONCE),
            token_lock: Mutex::new(()),
        }
    }

    pub fn audit(&self, call: WorkloadCall) {
        if call.outcome != Outcome::Allowed {
            tracing::info!(endpoint = call.endpoint.as_str(), resource = call.resource.as_deref().unwrap_or(""), status = call.status, reason = %call.reason, "workload API: refused");
        }
        self.gate.decision_log().record_workload(call);
    }
}

/// An answer: status, body, content type, and why (for refusals).
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: Option<&'static str>,
    pub reason: String,
}

impl Reply {
    fn ok(body: Vec<u8>, content_type: &'static str) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Bytes::from(body),
            content_type: Some(content_type),
            reason: String::new(),
        }
    }

    fn refused(r: Refusal) -> Reply {
        Reply {
            status: r.status,
            body: Bytes::from_static(r.body.as_bytes()),
            content_type: None,
            reason: r.reason,
        }
    }

    /// A failure behind the API: CoCo answers 500 with the error's text.
    fn failed(reason: String) -> Reply {
        Reply {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: Bytes::from(reason.clone()),
            content_type: None,
            reason,
        }
    }
}

/// Answers one request, and audits it.
pub async fn handle(
    ctx: &Ctx,
    peer: SocketAddr,
    method: &Method,
    uri: &Uri,
    has_body: bool,
) -> Reply {
    let endpoint = route::endpoint_of(uri.path());
    // The resource path as audited: bounded, and only when it is plain text.
    let resource = (endpoint == WorkloadEndpoint::Resource).then(|| {
        let p = &uri.path()["/cdh/resource/".len()..];
        p.chars()
            .take(128)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect::<String>()
    });
    let (reply, outcome) = if !peer.ip().is_loopback() {
        // As CoCo: only the pod's own containers (the guest's loopback) may call.
        let r = Refusal {
            status: StatusCode::FORBIDDEN,
            body: body::FORBIDDEN,
            outcome: Outcome::Denied,
            reason: format!("caller {} is not on the loopback", peer.ip()),
        };
        (Reply::refused(r), Outcome::Denied)
    } else {
        let line = RequestLine {
            method,
            path: uri.path(),
            query: uri.query(),
            has_body,
        };
        match route::route(&line, &ctx.config) {
            Err(r) => {
                let outcome = r.outcome;
                (Reply::refused(r), outcome)
            }
            Ok(route) => {
                let work = serve(ctx, route);
                match tokio::time::timeout(ctx.config.request_timeout, work).await {
                    Ok(Ok(reply)) => (reply, Outcome::Allowed),
                    Ok(Err(reason)) => (Reply::failed(reason), Outcome::Error),
                    Err(_) => (
                        Reply::failed(format!(
                            "no answer within [workload_api] request_timeout_secs = {}",
                            ctx.config.request_timeout.as_secs()
                        )),
                        Outcome::Error,
                    ),
                }
            }
        }
    };
    ctx.audit(WorkloadCall {
        endpoint,
        resource,
        outcome,
        status: reply.status.as_u16(),
        reason: reply.reason.clone(),
    });
    reply
}

async fn serve(ctx: &Ctx, route: Route) -> Result<Reply, String> {
    match route {
        Route::Info => {
            #[derive(serde::Serialize)]
            struct Info {
                version: String,
                tee: String,
                additional_tees: Vec<String>,
                feature: &'static str,
            }
            let info = Info {
                version: format!("vigil-agent {}", crate::service::AGENT_VERSION),
                tee: ctx.session.tee().to_string(),
                additional_tees: Vec::new(),
                feature: ctx.config.feature(),
            };
            let json = serde_json::to_vec(&info).map_err(|e| e.to_string())?;
            Ok(Reply::ok(json, "application/json"))
        }
        Route::Resource(path) => {
            let bytes = ctx
                .resources
                .get_resource(&path)
                .await
                .map_err(|e| format!("resource {path}: {e}"))?;
            Ok(Reply::ok(bytes.to_vec(), "application/octet-stream"))
        }
        Route::Evidence(report_data) => {
            let _permit = ctx
                .evidence_permits
                .acquire()
                .await
                .map_err(|e| e.to_string())?;
            // As CoCo's attestation agent: the runtime data is the report data (zero-padded to
            // 64 bytes for SNP and TDX).
            let evidence = ctx
                .session
                .evidence(&report_data)
                .await
                .map_err(|e| format!("evidence: {e}"))?;
            Ok(Reply::ok(evidence.into_bytes(), "application/octet-stream"))
        }
        Route::Token => {
            // One handshake at a time: each is a full attestation at the KBS.
            let _one = ctx.token_lock.lock().await;
            let (token, key) = ctx
                .session
                .fresh_token()
                .await
                .map_err(|e| format!("token: KBS: {e}"))?;
            let json = Zeroizing::new(
                serde_json::json!({"token": token, "tee_keypair": key.as_str()}).to_string(),
            );
            Ok(Reply::ok(
                json.as_bytes().to_vec(),
                "application/octet-stream",
            ))
        }
    }
}
