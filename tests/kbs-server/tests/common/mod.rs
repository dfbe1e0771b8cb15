//! Shared helpers for the integration tests.
#![allow(dead_code)]

use base64::prelude::{Engine as _, BASE64_STANDARD};
use kbs_test_server::{KbsTestServer, Rule, ServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use vigil_kbc::envelope::{self, Algorithm, PolicyPayload, SigningKey};
use vigil_kbc::{EvidenceFn, KbcConfig, KbsClient, Tee};

pub const INIT_DATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = \"package agent_policy\"\n";
pub const POLICY_PATH: &str = "default/vigil-policy/prod";
pub const POLICY_TEXT: &str = "package agent_policy\n\ndefault CreateContainerRequest := true\n";

/// Sample (mock) evidence in the format the test server checks.
pub fn sample_evidence(report_data: &[u8], binding: &[u8]) -> String {
    serde_json::json!({
        "svn": "1",
        "report_data": BASE64_STANDARD.encode(report_data),
        "init_data": BASE64_STANDARD.encode(binding),
    })
    .to_string()
}

/// The launch binding a host that launched with `init_data` would report (the mock carries
/// the whole digest in its `init_data` member, which no sample verifier checks).
pub fn binding_for(init_data: &str) -> Vec<u8> {
    kbs_test_server::evidence::InitDataDigest::of(init_data)
        .unwrap()
        .digest
}

pub fn init_data_digest_hex(init_data: &str) -> String {
    hex::encode(
        kbs_test_server::evidence::InitDataDigest::of(init_data)
            .unwrap()
            .digest,
    )
}

/// Evidence from the attester crate's mock TEE reporting `binding` as its launch binding.
pub fn mock_evidence(binding: Vec<u8>) -> EvidenceFn {
    use vigil_attester::Attester as _;
    let mock = vigil_attester::mock::MockAttester::new(binding);
    Arc::new(move |rd: &[u8]| mock.evidence(rd).map_err(Into::into))
}

pub struct Tenant {
    pub key: SigningKey,
}

impl Default for Tenant {
    fn default() -> Self {
        Self::new()
    }
}

impl Tenant {
    pub fn new() -> Self {
        Tenant {
            key: SigningKey::generate(Algorithm::Es256),
        }
    }
    pub fn envelope(&self, version: u64) -> Vec<u8> {
        envelope::sign(
            &self.key,
            &PolicyPayload {
                version,
                policy: POLICY_TEXT.into(),
                issued_at: 1_700_000_000,
                id: Some("test".into()),
            },
        )
        .unwrap()
        .into_bytes()
    }
}

pub fn sample_rule() -> Rule {
    Rule {
        tees: vec![Tee::Sample],
        init_data_digests: vec![init_data_digest_hex(INIT_DATA)],
    }
}

pub async fn server_with(cfg: ServerConfig) -> KbsTestServer {
    KbsTestServer::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

pub async fn server() -> KbsTestServer {
    server_with(ServerConfig::default()).await
}

pub fn fast_config(url: &str) -> KbcConfig {
    let mut c = KbcConfig::new(url);
    c.retry_initial_backoff_ms = 1;
    c.retry_max_backoff_ms = 2;
    c.timeout_secs = 5;
    c
}

/// A client that attests honestly with the initdata the "host" launched with.
pub fn good_client(url: &str) -> KbsClient {
    KbsClient::new(
        fast_config(url),
        Tee::Sample,
        mock_evidence(binding_for(INIT_DATA)),
    )
    .unwrap()
    .with_init_data(INIT_DATA)
}

/// A TCP server that answers every request with `response` (raw HTTP bytes)
/// once the request headers have arrived.
pub async fn canned(response: Vec<u8>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(&response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP server that accepts connections and never answers.
pub async fn silent() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}
