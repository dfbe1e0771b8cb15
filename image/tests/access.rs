//! Reaching registries: HTTPS trusted only through the CA roots the configuration pins (no
//! system roots), and basic authentication with credentials from a KBS resource. Second
//! registry processes serve the same storage over TLS (a throwaway CA's certificate) and
//! behind an htpasswd file. Needs root and the docker-registry package.

mod support;

use serde_json::json;
use vigil_image::PolicySource;

#[tokio::test(flavor = "multi_thread")]
async fn https_registries_need_the_pinned_ca() {
    require_env!();
    let env = support::Env::new();
    let image = vigil_test_registry::busybox_image("tls\n", json!({"Cmd": ["/bin/sh"]}));
    let digest = env.registry.push_image("secure/app", "v1", &image);
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    let (ca, cert, key) = kbs_test_server::tls::make_ca_and_server_cert(localhost).unwrap();
    let (other_ca, _, _) = kbs_test_server::tls::make_ca_and_server_cert(localhost).unwrap();
    let tls = env.registry.tls_frontend(&cert, &key);
    let reference = format!("{}/secure/app:v1", tls.addr());
    let service = |roots: Option<&str>, store: &str| {
        let mut s =
            vigil_image::Settings::new(env.dir.path().join(store), PolicySource::AcceptAnything);
        s.registry.ca_roots_pem = roots.map(str::to_string);
        env.service(s, None)
    };
    let pulled = service(Some(&ca), "a").pull(&reference).await.unwrap();
    assert_eq!(pulled.digest.to_string(), digest);
    let e = service(Some(&other_ca), "b")
        .pull(&reference)
        .await
        .unwrap_err();
    assert!(matches!(e, vigil_image::Error::Registry { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    let e = service(None, "c").pull(&reference).await.unwrap_err();
    assert!(e.to_string().contains("pinned CA roots"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_credentials_from_the_kbs() {
    require_env!();
    let env = support::Env::new();
    let image = vigil_test_registry::busybox_image("auth\n", json!({"Cmd": ["/bin/sh"]}));
    env.registry.push_image("private/app", "v1", &image);
    let guarded = env.registry.basic_auth_frontend("puller", "s3cret");
    let reference = format!("{}/private/app:v1", guarded.addr());
    let policy = json!({"default": [{"type": "insecureAcceptAnything"}]}).to_string();
    let service = |creds: Option<&str>, store: &str| {
        let mut items: Vec<(&str, &[u8])> =
            vec![("default/security-policy/test", policy.as_bytes())];
        if let Some(c) = creds {
            items.push(("default/credential/test", c.as_bytes()));
        }
        let kbs = support::Resources::with(&items);
        let mut s = env.settings(PolicySource::Resource(
            "kbs:///default/security-policy/test".into(),
        ));
        s.registry.insecure_registries = vec![guarded.addr().to_string()];
        s.store_dir = env.dir.path().join(store);
        s.credentials = Some("kbs:///default/credential/test".into());
        env.service(s, Some(kbs))
    };
    let auth = |pass: &str| {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("puller:{pass}"));
        json!({"auths": {guarded.addr(): {"auth": token}}}).to_string()
    };
    let ok = service(Some(&auth("s3cret")), "a")
        .pull(&reference)
        .await
        .unwrap();
    assert_eq!(ok.layers.len(), 1);
    let e = service(Some(&auth("wrong")), "b")
        .pull(&reference)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    // The credentials resource is configured but missing from the KBS: fail closed.
    let e = service(None, "c").pull(&reference).await.unwrap_err();
    assert!(matches!(e, vigil_image::Error::Policy(_)), "{e}");
    assert!(e.to_string().contains("registry credentials"), "{e}");
}
