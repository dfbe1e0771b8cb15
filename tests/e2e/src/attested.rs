//! Attested agents for tests: a tenant key, the KBS test server on 127.0.0.1 holding the
//! tenant's signed policy, and initdata whose digest the mock TEE reports as its launch binding.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use kbs_test_server::{KbsTestServer, Rule, ServerConfig};
use vigil_attester::initdata::InitData;
use vigil_kbc::envelope::{self, Algorithm, PolicyPayload, SigningKey};
use vigil_kbc::Tee;

use crate::{Agent, AgentSetup, StartFailure};

/// The tenant's side: its policy-signing key and its KBS (served by `rt`).
pub struct Tenant {
    pub rt: tokio::runtime::Runtime,
    pub kbs: KbsTestServer,
    pub key: SigningKey,
}

impl Default for Tenant {
    fn default() -> Self {
        Self::new()
    }
}

impl Tenant {
    /// A new key and a KBS test server on 127.0.0.1 (in the calling thread's network
    /// namespace: the runtime's threads are made here).
    pub fn new() -> Tenant {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let kbs = rt
            .block_on(KbsTestServer::start(
                "127.0.0.1:0".parse().expect("address"),
                ServerConfig::default(),
            ))
            .expect("KBS test server");
        Tenant {
            rt,
            kbs,
            key: SigningKey::generate(Algorithm::Es256),
        }
    }

    /// The signer to pin in `[policy] signer`.
    pub fn signer_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem()
            .expect("SPKI PEM")
    }

    /// Initdata (sha384) with `config` as its `vigil.toml`, and its digest in hex.
    pub fn initdata(config: &str) -> (String, String) {
        let text = format!(
            "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"vigil.toml\" = '''\n{config}'''\n"
        );
        let digest = hex::encode(InitData::parse(&text).expect("initdata").digest);
        (text, digest)
    }

    /// A release rule for sample evidence attested with the initdata of `digest`.
    pub fn rule(digest: &str) -> Rule {
        Rule {
            tees: vec![Tee::Sample],
            init_data_digests: vec![digest.to_string()],
        }
    }

    /// Signs `policy` (version 1) and publishes it at `resource` for the initdata `digest`.
    pub fn publish_policy(&self, resource: &str, policy: &str, digest: &str) {
        let issued_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let jws = envelope::sign(
            &self.key,
            &PolicyPayload {
                version: 1,
                policy: policy.into(),
                issued_at,
                id: None,
            },
        )
        .expect("sign");
        self.kbs
            .put_resource(resource, jws.into_bytes(), Tenant::rule(digest));
    }

    /// Starts the agent from the initdata file, as a VMM that launched it with `digest`.
    pub fn start_agent(&self, initdata: &Path, digest: &str) -> Result<Agent, StartFailure> {
        let cmdline = format!("agent.mock_launch_binding={digest}");
        Agent::start(AgentSetup {
            cmdline: &cmdline,
            extra_args: vec!["--initdata".into(), initdata.display().to_string()],
            ..Default::default()
        })
    }
}
