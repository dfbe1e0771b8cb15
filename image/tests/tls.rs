//! HTTPS registries: trusted only through the CA roots the configuration pins (no system
//! roots). A second registry process serves the same storage over TLS with a certificate from
//! a throwaway CA. Needs root and the docker-registry package.

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
