//! The shared KBS session (`vigil_kbc::KbsSession`) against the test server: concurrent
//! users share one handshake, a refused (expired) session is replaced once for all of them,
//! and the re-attestation bound holds.

mod common;

use common::*;
use kbs_test_server::Fault;
use std::time::Duration;
use vigil_kbc::{Error, KbsSession};

/// Fetches `default/key/one` and `default/key/two` at the same time, through two clones.
async fn both_at_once(session: &KbsSession) -> (Vec<u8>, Vec<u8>) {
    let (a, b) = (session.clone(), session.clone());
    let (one, two) = tokio::join!(
        tokio::spawn(async move { a.get_resource("default/key/one").await }),
        tokio::spawn(async move { b.get_resource("default/key/two").await }),
    );
    (one.unwrap().unwrap(), two.unwrap().unwrap())
}

async fn world() -> (kbs_test_server::KbsTestServer, KbsSession) {
    let server = server().await;
    server.put_resource("default/key/one", b"secret-1".to_vec(), sample_rule());
    server.put_resource("default/key/two", b"secret-2".to_vec(), sample_rule());
    let session = KbsSession::new(good_client(&server.url()));
    (server, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_share_one_handshake() {
    let (server, session) = world().await;
    assert!(!session.is_attested());
    let (one, two) = both_at_once(&session).await;
    assert_eq!(
        (one.as_slice(), two.as_slice()),
        (&b"secret-1"[..], &b"secret-2"[..])
    );
    assert!(session.is_attested());
    assert!(session.token().is_some());
    let s = server.stats();
    assert_eq!(
        (s.auth, s.attest_ok, s.resources_served),
        (1, 1, 2),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_is_replaced_once_for_concurrent_users() {
    let (server, session) = world().await;
    session.get_resource("default/key/one").await.unwrap();
    let first_token = session.token();
    // The KBS forgets the session (expiry): every request with it now gets 401.
    server.advance_clock(Duration::from_secs(3600));
    let (one, two) = both_at_once(&session).await;
    assert_eq!(
        (one.as_slice(), two.as_slice()),
        (&b"secret-1"[..], &b"secret-2"[..])
    );
    let s = server.stats();
    // Both were refused; one new handshake served both.
    assert_eq!((s.auth, s.attest_ok), (2, 2), "{s:?}");
    assert_eq!(s.resources_refused, 2, "{s:?}");
    assert_ne!(session.token(), first_token, "the token was not replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_attestation_is_bounded() {
    let (server, session) = world().await;
    server.set_fault(Fault::ResourceAlways401);
    let e = session.get_resource("default/key/one").await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    // fast_config keeps the default max_auth_retries = 2: the first handshake plus two.
    assert_eq!(server.stats().auth, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_policy_and_fresh_evidence_through_the_session() {
    let (server, session) = world().await;
    let tenant = Tenant::new();
    server.put_resource(POLICY_PATH, tenant.envelope(4), sample_rule());
    let p = session
        .fetch_policy(POLICY_PATH, &tenant.key.verifying_key(), 4)
        .await
        .unwrap();
    assert_eq!((p.version, p.policy.as_str()), (4, POLICY_TEXT));
    let e = session
        .fetch_policy(POLICY_PATH, &tenant.key.verifying_key(), 5)
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("verify: "), "{e}");

    // Evidence for a caller's own runtime data, in the TEE's report-data form (the mock keeps
    // it unpadded).
    let json = session.evidence(&[7u8; 48]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    use base64::Engine as _;
    let rd = base64::engine::general_purpose::STANDARD
        .decode(v["report_data"].as_str().unwrap())
        .unwrap();
    assert_eq!(rd, [7u8; 48]);
    assert!(session.evidence(&[0u8; 65]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_token_is_a_new_handshake_that_leaves_the_session_alone() {
    use p256::pkcs8::DecodePrivateKey as _;
    let (server, session) = world().await;
    session.get_resource("default/key/one").await.unwrap();
    let session_token = session.token().unwrap();
    let (token, key_pem) = session.fresh_token().await.unwrap();
    assert_ne!(token, session_token);
    assert_eq!(
        session.token().unwrap(),
        session_token,
        "the session in force changed"
    );
    assert_eq!(server.stats().auth, 2);
    // The token and its key work on their own: a resource fetched with the token is
    // encrypted to that key.
    let key = p256::SecretKey::from_pkcs8_pem(&key_pem).unwrap();
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let body = reqwest::Client::new()
        .get(format!("{}/kbs/v0/resource/default/key/two", server.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(vigil_kbc::jwe::decrypt(&body, &key).unwrap(), b"secret-2");
    // ...and the session still fetches with its own.
    assert_eq!(
        session.get_resource("default/key/two").await.unwrap(),
        b"secret-2"
    );
}
