//! The tenant's image policy against a real registry: reject, scopes, cosign signatures,
//! and the policy's own source (the KBS) failing. Needs root and the docker-registry package.

mod support;

use serde_json::json;
use vigil_image::Error;
use vigil_test_registry::{Compression, Image, Layer, SigningKey};

const KEY_PATH: &str = "kbs:///default/cosign-key/prod";

fn small_image(tag: &str) -> Image {
    Image::new(
        vec![Layer::builder()
            .file("id", tag.as_bytes(), 0o644)
            .build(Compression::Gzip)],
        json!({"Cmd": ["/id"]}),
    )
}

fn sigstore_policy(env: &support::Env, repo: &str) -> String {
    json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {
            env.image(repo): [{"type": "sigstoreSigned", "keyPath": KEY_PATH}],
        }},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_default_with_an_allowed_repository() {
    require_env!();
    let env = support::Env::new();
    env.registry
        .push_image("allowed/app", "v1", &small_image("a"));
    env.registry
        .push_image("other/app", "v1", &small_image("b"));
    let policy = json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {env.image("allowed"): [{"type": "insecureAcceptAnything"}]}},
    })
    .to_string();
    let svc = env.service_with(&policy, &[], &[]);
    svc.pull(&env.image("allowed/app:v1")).await.unwrap();
    let e = svc.pull(&env.image("other/app:v1")).await.unwrap_err();
    assert!(matches!(e, Error::Denied { .. }), "{e}");
    assert!(e.to_string().contains("default says reject"), "{e}");
    let d = env.decisions();
    assert_eq!(d.len(), 2);
    assert!(d[0].allowed);
    assert_eq!(
        d[0].rule,
        format!("transports.docker[\"{}\"]", env.image("allowed"))
    );
    assert!(!d[1].allowed && d[1].rule == "default", "{d:?}");
    assert!(
        d[1].digest.is_none(),
        "a reject decides before anything is fetched"
    );
    assert_eq!(
        env.store_entries("layers").len(),
        1,
        "only the allowed image's layer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_unsigned_and_wrongly_signed_images() {
    require_env!();
    let env = support::Env::new();
    let key = SigningKey::from_seed(1);
    let other_key = SigningKey::from_seed(2);
    let signed = env
        .registry
        .push_image("sig/app", "signed", &small_image("signed"));
    env.registry
        .push_image("sig/app", "unsigned", &small_image("unsigned"));
    let wrong = env
        .registry
        .push_image("sig/app", "wrong-key", &small_image("wrong"));
    let name = env.image("sig/app");
    env.registry.cosign_sign("sig/app", &signed, &name, &key);
    env.registry
        .cosign_sign("sig/app", &wrong, &name, &other_key);
    let pem = key.public_pem();
    let svc = env.service_with(
        &sigstore_policy(&env, "sig/app"),
        &[("default/cosign-key/prod", pem.as_bytes())],
        &[KEY_PATH],
    );
    let ok = svc.pull(&env.image("sig/app:signed")).await.unwrap();
    assert_eq!(ok.digest.to_string(), signed);
    let e = svc.pull(&env.image("sig/app:unsigned")).await.unwrap_err();
    assert!(matches!(e, Error::Denied { .. }), "{e}");
    assert!(e.to_string().contains("no cosign signature"), "{e}");
    let e = svc.pull(&env.image("sig/app:wrong-key")).await.unwrap_err();
    assert!(e.to_string().contains("not made by a trusted key"), "{e}");
    let d = env.decisions();
    assert!(d[0].allowed && d[0].reason.contains(KEY_PATH), "{d:?}");
    assert!(!d[1].allowed && !d[2].allowed);
    assert_eq!(
        d[2].digest.as_deref(),
        Some(wrong.as_str()),
        "the denied digest is recorded"
    );
    assert_eq!(
        env.store_entries("layers").len(),
        1,
        "refused images' layers are never fetched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_must_name_this_image() {
    require_env!();
    let env = support::Env::new();
    let key = SigningKey::from_seed(3);
    let b = env.registry.push_image("sig/b", "v1", &small_image("b"));
    // A signature by the trusted key over b's digest, but for another repository.
    env.registry
        .cosign_sign("sig/b", &b, &env.image("sig/a"), &key);
    let pem = key.public_pem();
    let svc = env.service_with(
        &sigstore_policy(&env, "sig/b"),
        &[("default/cosign-key/prod", pem.as_bytes())],
        &[KEY_PATH],
    );
    let e = svc.pull(&env.image("sig/b:v1")).await.unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("names repository {}", env.image("sig/a"))),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_index_by_its_index_digest() {
    require_env!();
    let env = support::Env::new();
    let key = SigningKey::from_seed(4);
    let here = small_image("host");
    let arch = here.architecture.clone();
    let (index, _) = env
        .registry
        .push_index("sig/multi", "v1", &[(arch.as_str(), &here)]);
    env.registry
        .cosign_sign("sig/multi", &index, &env.image("sig/multi"), &key);
    let pem = key.public_pem();
    let svc = env.service_with(
        &sigstore_policy(&env, "sig/multi"),
        &[("default/cosign-key/prod", pem.as_bytes())],
        &[KEY_PATH],
    );
    let p = svc.pull(&env.image("sig/multi:v1")).await.unwrap();
    assert_eq!(p.index_digest.unwrap().to_string(), index);
}

#[tokio::test(flavor = "multi_thread")]
async fn kbs_down_at_first_pull_fails_closed_then_recovers() {
    require_env!();
    let env = support::Env::new();
    env.registry.push_image("k/app", "v1", &small_image("k"));
    let policy = json!({"default": [{"type": "insecureAcceptAnything"}]}).to_string();
    let kbs = support::Resources::with(&[("default/security-policy/test", policy.as_bytes())]);
    *kbs.down.lock().unwrap() = true;
    let s = env.settings(vigil_image::PolicySource::Resource(
        "kbs:///default/security-policy/test".into(),
    ));
    let svc = env.service(s, Some(kbs.clone()));
    let e = svc.pull(&env.image("k/app:v1")).await.unwrap_err();
    assert!(matches!(e, Error::Policy(_)), "{e}");
    assert!(
        e.to_string()
            .contains("kbs:///default/security-policy/test")
            && e.to_string().contains("KBS unreachable"),
        "{e}"
    );
    assert!(
        env.store_entries("layers").is_empty(),
        "nothing pulled without a policy"
    );
    let d = env.decisions();
    assert!(!d[0].allowed && d[0].rule == "none", "{d:?}");
    // The failure is not kept: once the KBS answers, the next pull loads the policy.
    *kbs.down.lock().unwrap() = false;
    svc.pull(&env.image("k/app:v1")).await.unwrap();
    svc.pull(&env.image("k/app:v1")).await.unwrap();
    assert_eq!(
        *kbs.fetches.lock().unwrap(),
        2,
        "loaded once after the failure, then kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_policy_refuses_everything() {
    require_env!();
    let env = support::Env::new();
    env.registry.push_image("n/app", "v1", &small_image("n"));
    let svc = env.service(env.settings(vigil_image::PolicySource::Unset), None);
    let e = svc.pull(&env.image("n/app:v1")).await.unwrap_err();
    assert!(e.to_string().contains("set [image] policy"), "{e}");
    // A malformed policy document is refused the same way, naming the problem.
    let svc = env.service_with(r#"{"default":[{"type":"signedBy"}]}"#, &[], &[]);
    let e = svc.pull(&env.image("n/app:v1")).await.unwrap_err();
    assert!(e.to_string().contains("signedBy"), "{e}");
    assert!(env.store_entries("layers").is_empty());
}
