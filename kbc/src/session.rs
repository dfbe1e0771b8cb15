//! The boot's one KBS session, shared by everything in the guest that needs the KBS.
//!
//! Start-up attests once (step 3, fetching the tenant's policy); later users of the KBS
//! (image pull, the workload's secrets) reuse that attested session instead of each
//! attesting on their own. A [`KbsSession`] is a cheap, cloneable handle to one
//! [`KbsClient`]: requests run concurrently on the session in force, and when the KBS
//! refuses it (401: expired or forgotten) the request re-attests, at most
//! `max_auth_retries` times, with concurrent refusals sharing one new handshake.

use std::sync::Arc;

use kbs_types::Tee;

use crate::client::KbsClient;
use crate::envelope::{VerifiedPolicy, VerifyingKey};
use crate::error::Result;
use crate::tee_key::report_data_for;

/// A shared, attested (or attesting on first use) KBS session.
#[derive(Clone)]
pub struct KbsSession {
    client: Arc<KbsClient>,
}

impl std::fmt::Debug for KbsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KbsSession").field(&self.client).finish()
    }
}

impl KbsSession {
    /// Shares `client`, keeping the session it may already have attested.
    pub fn new(client: KbsClient) -> KbsSession {
        KbsSession {
            client: Arc::new(client),
        }
    }

    /// The TEE the session attests as (`Sample` for the mock TEE).
    pub fn tee(&self) -> Tee {
        self.client.tee()
    }

    /// Whether an attested session is in force (the KBS may still have expired it).
    pub fn is_attested(&self) -> bool {
        self.client.is_attested()
    }

    /// The plaintext of the KBS resource `repo/type/tag`, decrypted with the session's TEE
    /// key. Attests first when no session is in force; re-attests on 401 within the
    /// configured bound.
    pub async fn get_resource(&self, path: &str) -> Result<Vec<u8>> {
        self.client.get_resource_shared(path).await
    }

    /// The signed policy envelope at `path`, verified against `signer` and `min_version`.
    pub async fn fetch_policy(
        &self,
        path: &str,
        signer: &VerifyingKey,
        min_version: u64,
    ) -> Result<VerifiedPolicy> {
        self.client
            .fetch_policy_shared(path, signer, min_version)
            .await
    }

    /// The KBS attestation token of the session in force, if the KBS issued one.
    pub fn token(&self) -> Option<String> {
        self.client.token()
    }

    /// A KBS attestation token from a new handshake, and the private TEE key (PKCS#8 PEM) it
    /// was issued for: what CoCo's attestation agent hands a workload as
    /// `{"token", "tee_keypair"}`. The session in force is left alone, so the key handed out
    /// never decrypts what this session fetches.
    pub async fn fresh_token(&self) -> Result<(String, zeroize::Zeroizing<String>)> {
        self.client.detached_token().await
    }

    /// Fresh TEE evidence (JSON text) over `runtime_digest`, which is brought to the TEE's
    /// report-data form first (zero-padded to 64 bytes for SNP and TDX, kept as it is for the
    /// mock). At most 64 bytes.
    pub async fn evidence(&self, runtime_digest: &[u8]) -> Result<String> {
        if runtime_digest.len() > 64 {
            return Err(crate::Error::Evidence(format!(
                "report data of {} bytes exceeds 64",
                runtime_digest.len()
            )));
        }
        let report_data = report_data_for(self.tee(), runtime_digest);
        self.client.evidence_for(report_data).await
    }
}
