//! Handshake + one resource fetch against the test KBS on loopback, split by
//! step. A bench binary (no criterion): prints median and p90 per step.
//!
//! `cargo bench -p kbs-test-server --bench handshake [-- ITERATIONS]`

use base64::prelude::{Engine as _, BASE64_STANDARD};
use kbs_test_server::{KbsTestServer, Rule, ServerConfig, TlsIdentity};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vigil_kbc::envelope::{self, Algorithm, PolicyPayload, SigningKey};
use vigil_kbc::{EvidenceFn, KbcConfig, KbsClient, Tee};

const PATH: &str = "default/vigil-policy/prod";
const INIT_DATA: &str =
    "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"vigil.toml\" = \"\"\n";

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "  {name:<26} median {:>9.1} µs   p90 {:>9.1} µs",
        at(0.5).as_secs_f64() * 1e6,
        at(0.9).as_secs_f64() * 1e6
    );
}

async fn run(label: &str, tls: bool, iterations: usize) {
    let (ca, cert, key) =
        kbs_test_server::tls::make_ca_and_server_cert("127.0.0.1".parse().unwrap()).unwrap();
    let server = KbsTestServer::start(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig {
            tls: tls.then_some(TlsIdentity {
                cert_chain_pem: cert,
                key_pem: key,
            }),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let tenant = SigningKey::generate(Algorithm::Es256);
    let policy = "package agent_policy\n".repeat(100);
    let jws = envelope::sign(
        &tenant,
        &PolicyPayload {
            version: 1,
            policy,
            issued_at: 0,
            id: None,
        },
    )
    .unwrap();
    let digest = kbs_test_server::evidence::InitDataDigest::of(INIT_DATA).unwrap();
    server.put_resource(
        PATH,
        jws.into_bytes(),
        Rule {
            tees: vec![Tee::Sample],
            init_data_digests: vec![hex::encode(&digest.digest)],
        },
    );
    let binding = digest.binding(32);
    let evidence: EvidenceFn = Arc::new(move |rd: &[u8]| {
        Ok(serde_json::json!({
            "svn": "1",
            "report_data": BASE64_STANDARD.encode(rd),
            "init_data": BASE64_STANDARD.encode(&binding),
        })
        .to_string())
    });
    let signer = tenant.verifying_key();
    let (mut setup, mut auth, mut ev, mut attest, mut fetch, mut total) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..iterations + 10 {
        let mut cfg = KbcConfig::new(server.url());
        if tls {
            cfg.kbs_cert = Some(ca.clone());
        }
        let start = Instant::now();
        // A new client per iteration: includes TCP (and TLS) connection setup.
        let mut client = KbsClient::new(cfg, Tee::Sample, evidence.clone())
            .unwrap()
            .with_init_data(INIT_DATA);
        let built = start.elapsed();
        let t = client.handshake().await.unwrap();
        let f = Instant::now();
        let p = client.fetch_policy(PATH, &signer, 1).await.unwrap();
        let fetched = f.elapsed();
        assert_eq!(p.version, 1);
        if i >= 10 {
            setup.push(built);
            auth.push(t.auth);
            ev.push(t.evidence);
            attest.push(t.attest);
            fetch.push(fetched);
            total.push(start.elapsed());
        }
    }
    println!("{label} ({iterations} iterations, new client each):");
    stats("client setup (config, TLS)", setup);
    stats("auth (POST /auth)", auth);
    stats("evidence (key+hash+mock)", ev);
    stats("attest (POST /attest)", attest);
    stats("fetch+decrypt+verify", fetch);
    stats("total", total);
}

fn main() {
    let iterations = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        run("HTTP loopback", false, iterations).await;
        run("HTTPS loopback (pinned CA)", true, iterations).await;
    });
    // Pure crypto cost of the response path, for comparison.
    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    let body = vigil_kbc::jwe::encrypt(&[7u8; 2048], &key.public_key()).unwrap();
    let mut v = vec![];
    for _ in 0..iterations {
        let s = Instant::now();
        vigil_kbc::jwe::decrypt(body.as_bytes(), &key).unwrap();
        v.push(s.elapsed());
    }
    println!("JWE only:");
    stats("decrypt 2 KiB", v);
}
