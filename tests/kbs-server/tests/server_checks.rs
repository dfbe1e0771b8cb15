//! The test KBS's own checks, driven with hand-made requests (what a
//! misbehaving or replaying client would send), asserting Trustee's error
//! shape `{"type", "detail"}`.

mod common;

use base64::prelude::{Engine as _, BASE64_URL_SAFE_NO_PAD};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use vigil_kbc::tee_key::{report_data_for, runtime_data_digest, TeeKey};
use vigil_kbc::Tee;

struct Raw {
    http: reqwest::Client,
    base: String,
}

struct Reply {
    status: u16,
    cookie: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    /// The error kind from Trustee's ErrorInformation, checking its shape.
    fn error_kind(&self) -> String {
        let v = self.json();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 2, "{v}");
        assert!(obj["detail"].is_string());
        let t = obj["type"].as_str().unwrap();
        t.strip_prefix(kbs_test_server::ERROR_TYPE_PREFIX)
            .unwrap()
            .to_string()
    }
}

impl Raw {
    fn new(base: String) -> Self {
        rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
        Raw {
            http: reqwest::Client::new(),
            base,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|kv| kv.strip_prefix("kbs-session-id="))
            .map(str::to_string);
        Reply {
            status,
            cookie,
            body: r.bytes().await.unwrap().to_vec(),
        }
    }

    async fn auth(&self, version: &str) -> Reply {
        let body = json!({"version": version, "tee": "sample", "extra-params": {}});
        self.send(
            self.http
                .post(format!("{}/kbs/v0/auth", self.base))
                .json(&body),
        )
        .await
    }

    /// auth + a correct attest body for that challenge.
    async fn challenge(&self) -> (String, String, TeeKey) {
        let r = self.auth("0.4.0").await;
        assert_eq!(r.status, 200);
        let nonce = r.json()["nonce"].as_str().unwrap().to_string();
        (r.cookie.unwrap(), nonce, TeeKey::generate())
    }

    async fn attest(&self, cookie: Option<&str>, body: &Value) -> Reply {
        let mut req = self
            .http
            .post(format!("{}/kbs/v0/attest", self.base))
            .json(body);
        if let Some(c) = cookie {
            req = req.header("cookie", format!("kbs-session-id={c}"));
        }
        self.send(req).await
    }

    async fn resource(&self, cookie: Option<&str>, bearer: Option<&str>, path: &str) -> Reply {
        let mut req = self
            .http
            .get(format!("{}/kbs/v0/resource/{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("cookie", format!("kbs-session-id={c}"));
        }
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }
}

fn attest_body(nonce: &str, key: &TeeKey) -> Value {
    let jwk = key.public_jwk();
    let rd = report_data_for(Tee::Sample, &runtime_data_digest(nonce, &jwk).unwrap());
    let evidence: Value =
        serde_json::from_str(&sample_evidence(&rd, &binding_for(INIT_DATA))).unwrap();
    json!({
        "init-data": {"format": "toml", "body": INIT_DATA},
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_shape_and_protocol_version() {
    let server = server().await;
    let raw = Raw::new(server.url());
    let r = raw.auth("0.4.0").await;
    assert_eq!(r.status, 200);
    let nonce = BASE64_URL_SAFE_NO_PAD
        .decode(
            r.json()["nonce"]
                .as_str()
                .unwrap()
                .trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_"),
        )
        .unwrap();
    assert_eq!(nonce.len(), 32);
    assert!(r.cookie.is_some());
    for bad in ["0.3.0", "0.1.0", "1.0.0", ""] {
        let r = raw.auth(bad).await;
        assert_eq!(
            (r.status, r.error_kind().as_str()),
            (400, "ProtocolVersion"),
            "{bad}"
        );
    }
    let r = raw
        .send(raw.http.post(format!("{}/kbs/v0/auth", raw.base)).body("{"))
        .await;
    assert_eq!((r.status, r.error_kind().as_str()), (400, "InvalidRequest"));
    // Hash negotiation: the challenge names the hash; a client that cannot
    // use it is refused up front.
    let r = raw.auth("0.4.0").await;
    assert_eq!(
        r.json()["extra-params"]["selected-hash-algorithm"],
        "sha384"
    );
    let body = json!({"version": "0.4.0", "tee": "sample",
        "extra-params": {"supported-hash-algorithms": ["sha256", "sm3"]}});
    let r = raw
        .send(
            raw.http
                .post(format!("{}/kbs/v0/auth", raw.base))
                .json(&body),
        )
        .await;
    assert_eq!((r.status, r.error_kind().as_str()), (400, "InvalidRequest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_is_single_use() {
    let server = server().await;
    let raw = Raw::new(server.url());
    let (cookie, nonce, key) = raw.challenge().await;
    let body = attest_body(&nonce, &key);
    let r = raw.attest(Some(&cookie), &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["token"].is_string());
    let r = raw.attest(Some(&cookie), &body).await;
    assert_eq!((r.status, r.error_kind().as_str()), (401, "InvalidNonce"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_from_another_session_is_refused_and_burns_the_challenge() {
    let server = server().await;
    let raw = Raw::new(server.url());
    let (_cookie_a, nonce_a, key) = raw.challenge().await;
    let (cookie_b, nonce_b, _) = raw.challenge().await;
    let r = raw
        .attest(Some(&cookie_b), &attest_body(&nonce_a, &key))
        .await;
    assert_eq!((r.status, r.error_kind().as_str()), (401, "InvalidNonce"));
    // One attempt per challenge: the right nonce afterwards is refused too.
    let r = raw
        .attest(Some(&cookie_b), &attest_body(&nonce_b, &key))
        .await;
    assert_eq!((r.status, r.error_kind().as_str()), (401, "InvalidNonce"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_missing_unknown_or_expired() {
    let server = server().await;
    let raw = Raw::new(server.url());
    let (cookie, nonce, key) = raw.challenge().await;
    let body = attest_body(&nonce, &key);
    let r = raw.attest(None, &body).await;
    assert_eq!((r.status, r.error_kind().as_str()), (401, "MissingCookie"));
    let r = raw.attest(Some("0123"), &body).await;
    assert_eq!((r.status, r.error_kind().as_str()), (401, "InvalidCookie"));
    server.advance_clock(Duration::from_secs(301));
    let r = raw.attest(Some(&cookie), &body).await;
    assert_eq!((r.status, r.error_kind().as_str()), (401, "ExpiredCookie"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_report_data_and_tee_key_swap_are_refused() {
    let server = server().await;
    let raw = Raw::new(server.url());
    // Evidence bound to key A, but key B offered: the KBS would encrypt to B.
    let (cookie, nonce, key_a) = raw.challenge().await;
    let mut body = attest_body(&nonce, &key_a);
    body["runtime-data"]["tee-pubkey"] =
        serde_json::to_value(TeeKey::generate().public_jwk()).unwrap();
    let r = raw.attest(Some(&cookie), &body).await;
    assert_eq!(
        (r.status, r.error_kind().as_str()),
        (401, "AttestationFailed")
    );
    let (cookie, nonce, key) = raw.challenge().await;
    let mut body = attest_body(&nonce, &key);
    body["init-data"]["format"] = Value::String("json".into());
    let r = raw.attest(Some(&cookie), &body).await;
    assert_eq!((r.status, r.error_kind().as_str()), (400, "InvalidRequest"));
    assert_eq!(server.stats().attest_ok, 0);
    // Init-data swapped after the fact. Sample evidence binds no init-data (as Trustee's
    // sample verifier, the evidence's init_data member is ignored), so attestation passes;
    // the digest of what was sent is what the release rule then refuses, with Trustee's
    // 401 PolicyDeny.
    server.put_resource(POLICY_PATH, b"data".to_vec(), sample_rule());
    let (cookie, nonce, key) = raw.challenge().await;
    let mut body = attest_body(&nonce, &key);
    body["init-data"]["body"] = Value::String(INIT_DATA.replace("0.1.0", "0.1.1"));
    assert_eq!(raw.attest(Some(&cookie), &body).await.status, 200);
    let r = raw.resource(Some(&cookie), None, POLICY_PATH).await;
    assert_eq!((r.status, r.error_kind().as_str()), (401, "PolicyDeny"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_needs_attested_session_or_valid_token() {
    let server = server().await;
    server.put_resource(POLICY_PATH, b"data".to_vec(), sample_rule());
    let raw = Raw::new(server.url());
    let (cookie, nonce, key) = raw.challenge().await;
    // Authenticated but not attested.
    let r = raw.resource(Some(&cookie), None, POLICY_PATH).await;
    assert_eq!(r.status, 401);
    let r = raw.attest(Some(&cookie), &attest_body(&nonce, &key)).await;
    let token = r.json()["token"].as_str().unwrap().to_string();
    let r = raw.resource(Some(&cookie), None, POLICY_PATH).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        vigil_kbc::jwe::decrypt(&r.body, key.secret()).unwrap(),
        b"data"
    );
    // The token alone works, and is encrypted to the attested key.
    let r = raw.resource(None, Some(&token), POLICY_PATH).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        vigil_kbc::jwe::decrypt(&r.body, key.secret()).unwrap(),
        b"data"
    );
    // A token with altered claims is refused.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&BASE64_URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["tee-pubkey"] = serde_json::to_value(TeeKey::generate().public_jwk()).unwrap();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        BASE64_URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let r = raw.resource(None, Some(&forged), POLICY_PATH).await;
    assert_eq!((r.status, r.error_kind().as_str()), (401, "TokenInvalid"));
    // Path traversal is not a resource path.
    let r = raw.resource(Some(&cookie), None, "a/../../etc").await;
    assert!(r.status == 400 || r.status == 404, "{}", r.status);
    // Everything expires together.
    server.advance_clock(Duration::from_secs(301));
    assert_eq!(
        raw.resource(Some(&cookie), None, POLICY_PATH).await.status,
        401
    );
    assert_eq!(
        raw.resource(None, Some(&token), POLICY_PATH).await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snp_evidence_is_parsed_and_bound_to_the_runtime_data() {
    // Public SNP evidence (Trustee's e2e vector): its signature and VCEK chain
    // check out, but its report_data was made for someone else's nonce.
    let vector = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vectors/snp/evidence.json");
    let evidence: Value = serde_json::from_str(&std::fs::read_to_string(&vector).unwrap()).unwrap();
    let server = server_with(kbs_test_server::ServerConfig {
        allowed_tees: vec![Tee::Snp],
        ..Default::default()
    })
    .await;
    let raw = Raw::new(server.url());
    let body = json!({"version": "0.4.0", "tee": "snp", "extra-params": {}});
    let (raw, body) = (&raw, &body);
    let attest = |evidence: Value| async move {
        let r = raw
            .send(
                raw.http
                    .post(format!("{}/kbs/v0/auth", raw.base))
                    .json(body),
            )
            .await;
        assert_eq!(r.status, 200);
        let nonce = r.json()["nonce"].as_str().unwrap().to_string();
        let jwk = TeeKey::generate().public_jwk();
        let req = json!({
            "init-data": null,
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
        });
        raw.attest(r.cookie.as_deref(), &req).await
    };
    let r = attest(evidence.clone()).await;
    assert_eq!(
        (r.status, r.error_kind().as_str()),
        (401, "AttestationFailed")
    );
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("report_data"), "{detail}");
    // Altering a signed field breaks the signature before any binding check.
    let mut forged = evidence.clone();
    forged["attestation_report"]["host_data"][0] = json!(1);
    let r = attest(forged).await;
    assert_eq!(
        (r.status, r.error_kind().as_str()),
        (401, "AttestationFailed")
    );
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(!detail.contains("report_data"), "{detail}");
    // Without the VCEK the server cannot check the signature, so it refuses.
    let mut bare = evidence;
    bare["cert_chain"] = Value::Null;
    let r = attest(bare).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["detail"].as_str().unwrap().contains("VCEK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_call_stores_resources_in_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.json"),
        format!(r#"{{"{POLICY_PATH}": {{"tees": ["sample"]}}}}"#),
    )
    .unwrap();
    let secret = "0123456789abcdef-admin";
    let server = server_with(kbs_test_server::ServerConfig {
        resources_dir: Some(dir.path().into()),
        admin_token: Some(secret.into()),
        ..Default::default()
    })
    .await;
    let raw = Raw::new(server.url());
    let put = |token: Option<&'static str>, path: &'static str| {
        let mut req = raw
            .http
            .post(format!("{}/kbs/v0/resource/{path}", raw.base))
            .body("v2 envelope");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        raw.send(req)
    };
    let r = put(None, POLICY_PATH).await;
    assert_eq!(
        (r.status, r.error_kind().as_str()),
        (401, "AdminAuthFailed")
    );
    let r = put(Some("0123456789abcdef-admix"), POLICY_PATH).await;
    assert_eq!(r.status, 401);
    let r = put(Some("0123456789abcdef-admin"), "only/two").await;
    assert_eq!(r.status, 400);
    let r = put(Some("0123456789abcdef-admin"), POLICY_PATH).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        std::fs::read(dir.path().join(POLICY_PATH)).unwrap(),
        b"v2 envelope"
    );
    // Served to an attested client under the existing rule.
    let mut c = good_client(&server.url());
    assert_eq!(c.get_resource(POLICY_PATH).await.unwrap(), b"v2 envelope");
    // Without an admin token configured, the call is refused.
    let plain = common::server().await;
    let raw = Raw::new(plain.url());
    let r = raw
        .send(
            raw.http
                .post(format!("{}/kbs/v0/resource/{POLICY_PATH}", raw.base))
                .bearer_auth(secret)
                .body("x"),
        )
        .await;
    assert_eq!((r.status, r.error_kind().as_str()), (403, "AdminDisabled"));
}
