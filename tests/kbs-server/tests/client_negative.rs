//! The vigil KBS client against the test server (and misbehaving servers)
//! over real HTTP/HTTPS on 127.0.0.1: the happy path and every negative,
//! each failing closed with an error that names the step.

mod common;

use common::*;
use kbs_test_server::{Fault, Rule, ServerConfig, TlsIdentity};
use std::sync::Arc;
use std::time::Duration;
use vigil_kbc::{Error, KbcConfig, KbsClient, Step, Tee, TransportKind, VerifyingKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_signed_policy_fetch() {
    let server = server().await;
    let tenant = Tenant::new();
    server.put_resource(POLICY_PATH, tenant.envelope(7), sample_rule());
    server.put_resource("default/key/one", b"secret-1".to_vec(), sample_rule());
    let mut client = good_client(&server.url());
    let signer = tenant.key.verifying_key();
    let p = client.fetch_policy(POLICY_PATH, &signer, 7).await.unwrap();
    assert_eq!(p.version, 7);
    assert_eq!(p.policy, POLICY_TEXT);
    assert_eq!(p.id.as_deref(), Some("test"));
    use sha2::Digest as _;
    assert_eq!(p.digest, hex::encode(sha2::Sha256::digest(POLICY_TEXT)));
    assert!(client.token().is_some());
    // The session is reused for a second resource: one handshake in total.
    assert_eq!(
        client.get_resource("default/key/one").await.unwrap(),
        b"secret-1"
    );
    let s = server.stats();
    assert_eq!((s.auth, s.attest_ok, s.resources_served), (1, 1, 2));
}

fn rejected(e: &Error) -> (Step, u16, String) {
    match e {
        Error::Rejected {
            step,
            status,
            error_type,
            ..
        } => (*step, *status, error_type.clone().unwrap_or_default()),
        other => panic!("expected Rejected, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_version_fails_at_auth() {
    let server = server_with(ServerConfig {
        protocol_version: "0.5.0".into(),
        ..ServerConfig::default()
    })
    .await;
    server.put_resource(POLICY_PATH, b"x".to_vec(), sample_rule());
    let e = good_client(&server.url())
        .get_resource(POLICY_PATH)
        .await
        .unwrap_err();
    let (step, status, kind) = rejected(&e);
    assert_eq!((step, status), (Step::Auth, 400));
    assert!(kind.ends_with("/ProtocolVersion"), "{kind}");
    assert!(e.to_string().starts_with("auth: "), "{e}");
    assert!(e.to_string().contains("0.4.0"), "{e}");
    assert!(!e.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tee_not_accepted_fails_at_auth() {
    let server = server().await;
    let mut c =
        KbsClient::new(fast_config(&server.url()), Tee::Tdx, mock_evidence(vec![])).unwrap();
    let (step, status, kind) = rejected(&c.handshake().await.unwrap_err());
    assert_eq!((step, status), (Step::Auth, 400));
    assert!(kind.ends_with("/UnsupportedTee"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_report_data_fails_at_attest() {
    let server = server().await;
    let binding = binding_for(INIT_DATA);
    let evidence: vigil_kbc::EvidenceFn = Arc::new(move |rd: &[u8]| {
        let mut rd = rd.to_vec();
        rd[0] ^= 0x80;
        Ok(sample_evidence(&rd, &binding))
    });
    let mut c = KbsClient::new(fast_config(&server.url()), Tee::Sample, evidence)
        .unwrap()
        .with_init_data(INIT_DATA);
    let e = c.handshake().await.unwrap_err();
    let (step, status, kind) = rejected(&e);
    assert_eq!((step, status), (Step::Attest, 401));
    assert!(kind.ends_with("/AttestationFailed"));
    assert!(e.to_string().contains("report_data"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padded_report_data_is_refused_for_sample() {
    // Sample evidence carries the 48-byte hash unpadded; 64 bytes is a binding error.
    let server = server().await;
    let evidence: vigil_kbc::EvidenceFn = Arc::new(|rd: &[u8]| {
        let mut rd = rd.to_vec();
        rd.resize(64, 0);
        Ok(sample_evidence(&rd, &[]))
    });
    let mut c = KbsClient::new(fast_config(&server.url()), Tee::Sample, evidence).unwrap();
    let (step, status, _) = rejected(&c.handshake().await.unwrap_err());
    assert_eq!((step, status), (Step::Attest, 401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_evidence_from_an_earlier_handshake_is_refused() {
    let server = server().await;
    let recorded: Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let rec = recorded.clone();
    let binding = binding_for(INIT_DATA);
    let evidence: vigil_kbc::EvidenceFn = Arc::new(move |rd: &[u8]| {
        let mut slot = rec.lock().unwrap();
        Ok(slot
            .get_or_insert_with(|| sample_evidence(rd, &binding))
            .clone())
    });
    let mut c = KbsClient::new(fast_config(&server.url()), Tee::Sample, evidence)
        .unwrap()
        .with_init_data(INIT_DATA);
    c.handshake().await.unwrap();
    // Second handshake: new nonce and key, but the old evidence is replayed.
    let (step, status, _) = rejected(&c.handshake().await.unwrap_err());
    assert_eq!((step, status), (Step::Attest, 401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_in_wrong_format_is_refused() {
    let server = server().await;
    let evidence: vigil_kbc::EvidenceFn =
        Arc::new(|_: &[u8]| Ok(r#"{"report_data":"AAAA"}"#.to_string()));
    let mut c = KbsClient::new(fast_config(&server.url()), Tee::Sample, evidence).unwrap();
    let e = c.handshake().await.unwrap_err();
    assert_eq!(rejected(&e).1, 401);
    assert!(e.to_string().contains("svn"), "{e}");
    // An evidence provider failure is reported as such, before any attest request.
    let evidence: vigil_kbc::EvidenceFn = Arc::new(|_: &[u8]| Err("device busy".into()));
    let mut c = KbsClient::new(fast_config(&server.url()), Tee::Sample, evidence).unwrap();
    let e = c.handshake().await.unwrap_err();
    assert!(matches!(e, Error::Evidence(_)));
    assert!(e.to_string().starts_with("attest: evidence"), "{e}");
    assert!(e.to_string().contains("device busy"));
    assert_eq!(server.stats().attest_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_evidence_init_data_is_not_checked_the_release_rule_decides() {
    // As Trustee's sample verifier: sample evidence binds no initdata (its init_data member is
    // ignored), so attestation succeeds whatever it says; the release rule then decides on
    // the digest of the init-data the client sent.
    let server = server().await;
    server.put_resource(POLICY_PATH, b"p".to_vec(), sample_rule());
    let other = INIT_DATA.replace("agent_policy", "something_else");
    let mut c = KbsClient::new(
        fast_config(&server.url()),
        Tee::Sample,
        mock_evidence(binding_for(&other)),
    )
    .unwrap()
    .with_init_data(INIT_DATA);
    assert_eq!(c.get_resource(POLICY_PATH).await.unwrap(), b"p");
    let mut c = KbsClient::new(
        fast_config(&server.url()),
        Tee::Sample,
        mock_evidence(binding_for(INIT_DATA)),
    )
    .unwrap()
    .with_init_data(other);
    c.handshake().await.unwrap();
    let e = c.get_resource(POLICY_PATH).await.unwrap_err();
    let (step, status, kind) = rejected(&e);
    assert_eq!((step, status), (Step::Resource, 401));
    assert!(kind.ends_with("/PolicyDeny"), "{kind}");
    assert!(e.to_string().contains("init-data digest"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_not_released_by_rule() {
    let server = server().await;
    server.put_resource(
        "r/t/snp-only",
        b"x".to_vec(),
        Rule {
            tees: vec![Tee::Snp],
            init_data_digests: vec![],
        },
    );
    server.put_resource(
        "r/t/other-initdata",
        b"x".to_vec(),
        Rule {
            tees: vec![Tee::Sample],
            init_data_digests: vec![hex::encode([0u8; 48])],
        },
    );
    let mut c = good_client(&server.url());
    for path in ["r/t/snp-only", "r/t/other-initdata"] {
        let e = c.get_resource(path).await.unwrap_err();
        // Trustee's answer to a policy denial: 401 PolicyDeny. A new handshake cannot change
        // it, so the client gives up at once, with the KBS's explanation.
        let (step, status, kind) = rejected(&e);
        assert_eq!((step, status), (Step::Resource, 401), "{path}");
        assert!(kind.ends_with("/PolicyDeny"));
        assert!(e.to_string().contains("release rule"), "{e}");
        assert!(!e.is_retryable());
    }
    let e = c.get_resource("r/t/missing").await.unwrap_err();
    let (step, status, kind) = rejected(&e);
    assert_eq!((step, status), (Step::Resource, 401));
    assert!(kind.ends_with("/PluginInternalError"), "{kind}");
    assert!(e.to_string().contains("not found"), "{e}");
    // One handshake for all three refusals: none of them re-attested.
    assert_eq!(server.stats().auth, 1);
    // Without init-data, a rule that lists digests does not release.
    let mut c = KbsClient::new(
        fast_config(&server.url()),
        Tee::Sample,
        mock_evidence(vec![]),
    )
    .unwrap();
    server.put_resource(POLICY_PATH, b"x".to_vec(), sample_rule());
    assert_eq!(
        rejected(&c.get_resource(POLICY_PATH).await.unwrap_err()).1,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_misaddressed_jwe_fails_to_decrypt() {
    let server = server().await;
    server.put_resource(POLICY_PATH, b"payload".to_vec(), sample_rule());
    let mut c = good_client(&server.url());
    assert_eq!(c.get_resource(POLICY_PATH).await.unwrap(), b"payload");
    for fault in [
        Fault::TamperCiphertext,
        Fault::TamperTag,
        Fault::TamperProtectedHeader,
        Fault::EncryptToOtherKey,
    ] {
        server.set_fault(fault);
        let e = c.get_resource(POLICY_PATH).await.unwrap_err();
        assert!(matches!(e, Error::Decrypt(_)), "{fault:?}: {e}");
        assert!(e.to_string().starts_with("decrypt: "), "{e}");
        assert!(!e.is_retryable());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_signer_and_rollback_fail_verification() {
    let server = server().await;
    let tenant = Tenant::new();
    server.put_resource(POLICY_PATH, tenant.envelope(3), sample_rule());
    let mut c = good_client(&server.url());
    let stranger = Tenant::new().key.verifying_key();
    let e = c.fetch_policy(POLICY_PATH, &stranger, 0).await.unwrap_err();
    assert!(e.to_string().starts_with("verify: "), "{e}");
    assert!(e.to_string().contains("signature"), "{e}");
    let e = c
        .fetch_policy(POLICY_PATH, &tenant.key.verifying_key(), 4)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("below the minimum 4"), "{e}");
    // A PEM-pinned key of the other algorithm is refused on alg mismatch.
    let ed = vigil_kbc::envelope::SigningKey::generate(vigil_kbc::envelope::Algorithm::EdDsa);
    let pinned =
        VerifyingKey::from_public_key_pem(&ed.verifying_key().to_public_key_pem().unwrap())
            .unwrap();
    let e = c.fetch_policy(POLICY_PATH, &pinned, 0).await.unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    assert!(!e.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_cookie_triggers_one_new_handshake() {
    let server = server().await;
    server.put_resource(POLICY_PATH, b"v".to_vec(), sample_rule());
    let mut c = good_client(&server.url());
    c.get_resource(POLICY_PATH).await.unwrap();
    server.advance_clock(Duration::from_secs(301));
    assert_eq!(c.get_resource(POLICY_PATH).await.unwrap(), b"v");
    let s = server.stats();
    assert_eq!((s.auth, s.attest_ok, s.resources_refused), (2, 2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_401_is_bounded() {
    let server = server().await;
    server.put_resource(POLICY_PATH, b"v".to_vec(), sample_rule());
    server.set_fault(Fault::ResourceAlways401);
    let mut cfg = fast_config(&server.url());
    cfg.max_auth_retries = 2;
    let mut c = KbsClient::new(cfg, Tee::Sample, mock_evidence(binding_for(INIT_DATA)))
        .unwrap()
        .with_init_data(INIT_DATA);
    let e = c.get_resource(POLICY_PATH).await.unwrap_err();
    assert!(
        matches!(&e, Error::Unauthorized { handshakes: 3, error_type: Some(t), .. }
            if t.ends_with("/UnAuthenticatedCookie")),
        "{e}"
    );
    // The last 401's explanation is kept, not dropped.
    assert!(e.to_string().starts_with("resource: "));
    assert!(e.to_string().contains("fault injection: always 401"), "{e}");
    assert_eq!(server.stats().auth, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kbs_down_is_a_retryable_transport_error_after_bounded_retries() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = fast_config(&format!("http://{addr}"));
    cfg.connect_retries = 2;
    let mut c = KbsClient::new(cfg, Tee::Sample, mock_evidence(vec![])).unwrap();
    let e = c.get_resource(POLICY_PATH).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Transport {
                step: Step::Auth,
                kind: TransportKind::Connect,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().starts_with("transport (auth)"), "{e}");
    assert!(e.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_kbs_times_out() {
    let addr = silent().await;
    let mut cfg = fast_config(&format!("http://{addr}"));
    cfg.timeout_secs = 1;
    let mut c = KbsClient::new(cfg, Tee::Sample, mock_evidence(vec![])).unwrap();
    let e = c.handshake().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_retryable());
}

async fn client_for_canned(response: Vec<u8>) -> KbsClient {
    let addr = canned(response).await;
    let mut cfg = fast_config(&format!("http://{addr}"));
    cfg.max_response_bytes = 4096;
    KbsClient::new(cfg, Tee::Sample, mock_evidence(vec![])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_non_json_responses_are_refused() {
    // Declared too large.
    let mut c = client_for_canned(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\nset-cookie: kbs-session-id=a\r\n\r\n"
            .to_vec(),
    )
    .await;
    let e = c.handshake().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadResponse {
                step: Step::Auth,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("max_response_bytes"), "{e}");
    // Too large without a declared length (chunked).
    let mut body =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nset-cookie: kbs-session-id=a\r\n\r\n"
            .to_vec();
    for _ in 0..10 {
        body.extend_from_slice(b"400\r\n");
        body.extend_from_slice(&[b'a'; 0x400]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let e = client_for_canned(body).await.handshake().await.unwrap_err();
    assert!(e.to_string().contains("max_response_bytes"), "{e}");
    // Not JSON.
    let mut c = client_for_canned(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nset-cookie: kbs-session-id=a\r\n\r\nhello"
            .to_vec(),
    )
    .await;
    let e = c.handshake().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadResponse {
                step: Step::Auth,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("hello"), "{e}");
    // No session cookie.
    let mut c = client_for_canned(
        b"HTTP/1.1 200 OK\r\ncontent-length: 34\r\n\r\n{\"nonce\":\"abc\",\"extra-params\":\"\"}\n"
            .to_vec(),
    )
    .await;
    let e = c.handshake().await.unwrap_err();
    assert!(e.to_string().contains("kbs-session-id"), "{e}");
    // A 5xx error page that is not ErrorInformation: retryable, detail kept.
    let mut c =
        client_for_canned(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 7\r\n\r\nupstrm!".to_vec())
            .await;
    let e = c.handshake().await.unwrap_err();
    assert_eq!(rejected(&e).1, 502);
    assert!(e.is_retryable());
    assert!(e.to_string().contains("upstrm!"));
}

#[test]
fn plain_http_to_non_loopback_is_refused_without_the_flag() {
    let e = KbsClient::new(
        KbcConfig::new("http://192.0.2.10:8080"),
        Tee::Sample,
        mock_evidence(vec![]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Config(_)));
    assert!(e.to_string().contains("insecure_http"), "{e}");
    let mut cfg = KbcConfig::new("http://192.0.2.10:8080");
    cfg.insecure_http = true;
    assert!(KbsClient::new(cfg, Tee::Sample, mock_evidence(vec![])).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_pinned_ca_and_with_wrong_ca() {
    let ip = "127.0.0.1".parse().unwrap();
    let (ca, cert, key) = kbs_test_server::tls::make_ca_and_server_cert(ip).unwrap();
    let (wrong_ca, _, _) = kbs_test_server::tls::make_ca_and_server_cert(ip).unwrap();
    let server = server_with(ServerConfig {
        tls: Some(TlsIdentity {
            cert_chain_pem: cert,
            key_pem: key,
        }),
        ..ServerConfig::default()
    })
    .await;
    assert!(server.url().starts_with("https://"));
    let tenant = Tenant::new();
    server.put_resource(POLICY_PATH, tenant.envelope(1), sample_rule());
    let mut cfg = fast_config(&server.url());
    cfg.kbs_cert = Some(ca);
    let mut c = KbsClient::new(cfg, Tee::Sample, mock_evidence(binding_for(INIT_DATA)))
        .unwrap()
        .with_init_data(INIT_DATA);
    let p = c
        .fetch_policy(POLICY_PATH, &tenant.key.verifying_key(), 1)
        .await
        .unwrap();
    assert_eq!(p.version, 1);

    let mut cfg = fast_config(&server.url());
    cfg.kbs_cert = Some(wrong_ca);
    let mut c = KbsClient::new(cfg, Tee::Sample, mock_evidence(vec![])).unwrap();
    let e = c.handshake().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Transport {
                kind: TransportKind::Tls,
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.is_retryable());
    // Plain HTTP to the HTTPS port does not silently work either.
    let mut c = KbsClient::new(
        fast_config(&format!("http://{}", server.addr())),
        Tee::Sample,
        mock_evidence(vec![]),
    )
    .unwrap();
    assert!(c.handshake().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_data_hash_follows_the_kbs_selection() {
    for hash in [
        vigil_kbc::HashAlgorithm::Sha256,
        vigil_kbc::HashAlgorithm::Sha512,
    ] {
        let server = server_with(ServerConfig {
            hash_algorithm: hash,
            ..ServerConfig::default()
        })
        .await;
        server.put_resource(POLICY_PATH, b"h".to_vec(), sample_rule());
        let seen: Arc<std::sync::Mutex<usize>> = Default::default();
        let seen2 = seen.clone();
        let binding = binding_for(INIT_DATA);
        let evidence: vigil_kbc::EvidenceFn = Arc::new(move |rd: &[u8]| {
            *seen2.lock().unwrap() = rd.len();
            Ok(sample_evidence(rd, &binding))
        });
        let mut c = KbsClient::new(fast_config(&server.url()), Tee::Sample, evidence)
            .unwrap()
            .with_init_data(INIT_DATA);
        assert_eq!(c.get_resource(POLICY_PATH).await.unwrap(), b"h", "{hash}");
        assert_eq!(*seen.lock().unwrap(), hash.digest_len());
    }
}
