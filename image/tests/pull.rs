//! Pulls from a real registry (Debian's docker-registry on 127.0.0.1): content, layers,
//! platforms, tampering, hostile tars, the store. Needs root and the docker-registry package.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use serde_json::json;
use vigil_image::{Error, RootfsMode};
use vigil_test_registry::{Compression, Image, Layer};

#[tokio::test(flavor = "multi_thread")]
async fn plain_pull_mount_and_run() {
    require_env!();
    let env = support::Env::new();
    let image = vigil_test_registry::busybox_image(
        "hello from the image\n",
        json!({"Cmd": ["/bin/sh", "-c", "cat /etc/message"]}),
    );
    let digest = env.registry.push_image("apps/hello", "v1", &image);
    let svc = env.accept_all();
    let pulled = svc.pull(&env.image("apps/hello:v1")).await.unwrap();
    assert_eq!(pulled.digest.to_string(), digest);
    assert_eq!(pulled.stats.layers_fetched, 1);
    assert_eq!(
        pulled.config.config.as_ref().unwrap().cmd.as_ref().unwrap()[2],
        "cat /etc/message"
    );
    let target = env.dir.path().join("c1/rootfs");
    let rootfs = svc
        .mount(&pulled, support::mount_point(&target), &target)
        .await
        .unwrap();
    assert!(rootfs.is_overlay());
    assert!(support::is_mounted(&target));
    // Run the image's own program inside it.
    let out = Command::new("chroot")
        .arg(&target)
        .args(["/bin/sh", "-c", "cat /etc/message"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello from the image\n");
    // Writes go to the container's upper layer, never into the store.
    std::fs::write(target.join("etc/message"), "changed").unwrap();
    let layer_dir = env
        .store()
        .join("layers")
        .join(format!("sha256-{}", pulled.layers[0].hex()));
    assert_eq!(
        std::fs::read(layer_dir.join("etc/message")).unwrap(),
        b"hello from the image\n"
    );
    rootfs.remove().unwrap();
    assert!(!support::is_mounted(&target));
    assert!(
        support::is_empty_dir(&target),
        "the mount point is left empty"
    );
    assert!(
        env.store_entries("rootfs").is_empty(),
        "the writable layer is deleted"
    );
    assert_eq!(
        env.store_entries("layers").len(),
        1,
        "the layer stays cached for the boot"
    );
    let d = env.decisions();
    assert_eq!(d.len(), 1);
    assert!(
        d[0].allowed && d[0].digest.as_deref() == Some(digest.as_str()),
        "{d:?}"
    );
}

fn whiteout_image() -> Image {
    let lower = Layer::builder()
        .dir("a", 0o755)
        .file("a/x", b"x", 0o644)
        .file("a/y", b"y", 0o644)
        .dir("b", 0o755)
        .file("b/z", b"z", 0o644)
        .file("c", b"c", 0o644)
        .file("link-me", b"shared", 0o644)
        .hardlink("linked", "link-me")
        .build(Compression::Gzip);
    let upper = Layer::builder()
        .whiteout("a/x")
        .opaque("b")
        .file("b/new", b"new", 0o644)
        .whiteout("c")
        .file_owned("suid", b"#!", 0o4755, 1000, 1001)
        .build(Compression::Zstd);
    let top = Layer::builder()
        .file("plain", b"uncompressed", 0o600)
        .build(Compression::None);
    Image::new(vec![lower, upper, top], json!({}))
}

async fn check_whiteouts(mode: RootfsMode) {
    let env = support::Env::new();
    env.registry
        .push_image("layers/wh", "v1", &whiteout_image());
    let svc = env.service(env.rootfs_mode(mode), None);
    let pulled = svc.pull(&env.image("layers/wh:v1")).await.unwrap();
    assert_eq!(pulled.layers.len(), 3);
    let target = env.dir.path().join("rootfs");
    let rootfs = svc
        .mount(&pulled, support::mount_point(&target), &target)
        .await
        .unwrap();
    assert_eq!(rootfs.is_overlay(), mode == RootfsMode::Overlay);
    let t = &target;
    assert!(
        t.join("a/y").exists() && !t.join("a/x").exists(),
        "whiteout of a/x"
    );
    assert!(
        !t.join("b/z").exists() && t.join("b/new").exists(),
        "opaque b"
    );
    assert!(!t.join("c").exists(), "whiteout of c");
    assert_eq!(std::fs::read(t.join("plain")).unwrap(), b"uncompressed");
    let suid = std::fs::metadata(t.join("suid")).unwrap();
    assert_eq!(
        (suid.uid(), suid.gid(), suid.permissions().mode() & 0o7777),
        (1000, 1001, 0o4755)
    );
    let (a, b) = (
        std::fs::metadata(t.join("link-me")).unwrap(),
        std::fs::metadata(t.join("linked")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hard links stay hard links");
    rootfs.remove().unwrap();
    assert!(
        support::is_empty_dir(&target),
        "the mount point is left empty"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_layer_whiteouts_overlay() {
    require_env!();
    check_whiteouts(RootfsMode::Overlay).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_layer_whiteouts_copy_fallback() {
    require_env!();
    check_whiteouts(RootfsMode::Copy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn index_picks_this_platform() {
    require_env!();
    let env = support::Env::new();
    let marker = |m: &str| {
        Layer::builder()
            .file("platform", m.as_bytes(), 0o644)
            .build(Compression::Gzip)
    };
    let mut arm = Image::new(vec![marker("arm64")], json!({}));
    arm.architecture = "arm64".into();
    let mut s390 = Image::new(vec![marker("s390x")], json!({}));
    s390.architecture = "s390x".into();
    let here = Image::new(vec![marker("host")], json!({}));
    let host_arch = here.architecture.clone();
    let (index, digests) = env.registry.push_index(
        "multi/app",
        "v1",
        &[
            ("arm64", &arm),
            (host_arch.as_str(), &here),
            ("s390x", &s390),
        ],
    );
    let svc = env.accept_all();
    let pulled = svc.pull(&env.image("multi/app:v1")).await.unwrap();
    assert_eq!(pulled.index_digest.as_ref().unwrap().to_string(), index);
    assert_eq!(pulled.digest.to_string(), digests[1]);
    let target = env.dir.path().join("rootfs");
    let rootfs = svc
        .mount(&pulled, support::mount_point(&target), &target)
        .await
        .unwrap();
    assert_eq!(std::fs::read(target.join("platform")).unwrap(), b"host");
    rootfs.remove().unwrap();
    // By digest, the index is fetched by digest and checked the same way.
    let by_digest = svc
        .pull(&env.image(&format!("multi/app@{index}")))
        .await
        .unwrap();
    assert_eq!(by_digest.digest.to_string(), digests[1]);
    // A platform the index does not offer: the error lists what it offers.
    let mut s = env.settings(vigil_image::PolicySource::AcceptAnything);
    s.platform.architecture = "riscv64".into();
    s.store_dir = env.dir.path().join("store2");
    let e = env
        .service(s, None)
        .pull(&env.image("multi/app:v1"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(
        e.to_string().contains("linux/riscv64") && e.to_string().contains("linux/arm64"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_layer_is_refused_and_nothing_is_left() {
    require_env!();
    let env = support::Env::new();
    let image = Image::new(
        vec![
            Layer::builder()
                .file("ok", b"fine", 0o644)
                .build(Compression::Gzip),
            Layer::builder()
                .file("big", &vec![7u8; 200_000], 0o644)
                .build(Compression::None),
        ],
        json!({}),
    );
    env.registry.push_image("t/app", "v1", &image);
    // A compromised registry serves other bytes (same length) for the second layer.
    let file = env.registry.blob_file(&image.layers[1].diff_id);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[150_000] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let svc = env.accept_all();
    let e = svc.pull(&env.image("t/app:v1")).await.unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(
        e.to_string().contains(&image.layers[1].diff_id),
        "names the layer: {e}"
    );
    assert!(e.to_string().contains("hash"), "{e}");
    let layers = env.store_entries("layers");
    assert!(
        !layers.contains(&format!(
            "sha256-{}",
            image.layers[1].diff_id.trim_start_matches("sha256:")
        )),
        "the tampered layer is not stored: {layers:?}"
    );
    assert!(env.store_entries("tmp").is_empty(), "no staging left");
    assert!(env.store_entries("images").is_empty(), "no image record");
}

/// Each hostile layer is refused with the entry named, and leaves no trace.
#[tokio::test(flavor = "multi_thread")]
async fn escaping_tars_are_refused() {
    require_env!();
    let env = support::Env::new();
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_s = outside.to_string_lossy().into_owned();
    let cases: Vec<(&str, Layer, &str)> = vec![
        (
            "dotdot",
            Layer::builder()
                .raw(b"../../../../pwned", tar::EntryType::Regular, b"x", None)
                .build(Compression::Gzip),
            "\"..\"",
        ),
        (
            "abs-symlink",
            Layer::builder()
                .symlink("esc", &outside_s)
                .file("esc/pwned", b"x", 0o644)
                .build(Compression::Gzip),
            "through the symlink",
        ),
        (
            "relative-symlink",
            Layer::builder()
                .symlink("up", "../../../../../../")
                .raw(b"up/pwned", tar::EntryType::Regular, b"x", None)
                .build(Compression::Gzip),
            "through the symlink",
        ),
        (
            "hardlink-out",
            Layer::builder()
                .raw(
                    b"passwd",
                    tar::EntryType::Link,
                    b"",
                    Some(b"../../../../etc/passwd"),
                )
                .build(Compression::Gzip),
            "hard link target",
        ),
        (
            "hardlink-abs",
            Layer::builder()
                .raw(b"shadow", tar::EntryType::Link, b"", Some(b"/etc/shadow"))
                .build(Compression::Gzip),
            "not in this layer",
        ),
        (
            "device",
            Layer::builder().device("dev/mem").build(Compression::Gzip),
            "device nodes are refused",
        ),
    ];
    let svc = env.accept_all();
    for (name, layer, why) in cases {
        env.registry.push_image(
            &format!("evil/{name}"),
            "v1",
            &Image::new(vec![layer], json!({})),
        );
        let e = svc
            .pull(&env.image(&format!("evil/{name}:v1")))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{name}: {e}");
        assert!(e.to_string().contains(why), "{name}: {e}");
        assert!(
            env.store_entries("layers").is_empty(),
            "{name}: nothing stored"
        );
        assert!(
            env.store_entries("tmp").is_empty(),
            "{name}: no staging left"
        );
    }
    assert!(
        support::list(&outside).is_empty(),
        "nothing was written outside"
    );
    assert!(!std::path::Path::new("/pwned").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn second_and_concurrent_pulls_use_the_store() {
    require_env!();
    let env = support::Env::new();
    let layers: Vec<Layer> = (0..4)
        .map(|i| {
            Layer::builder()
                .file(&format!("f{i}"), &vec![i as u8; 50_000], 0o644)
                .build(Compression::Gzip)
        })
        .collect();
    env.registry
        .push_image("s/app", "v1", &Image::new(layers, json!({})));
    let svc = std::sync::Arc::new(env.accept_all());
    let r = env.image("s/app:v1");
    let (a, b) = tokio::join!(svc.pull(&r), svc.pull(&r));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.stats.layers_fetched + b.stats.layers_fetched,
        4,
        "each layer fetched once across both pulls: {:?} {:?}",
        a.stats,
        b.stats
    );
    let again = svc.pull(&r).await.unwrap();
    assert_eq!(
        (again.stats.layers_fetched, again.stats.layers_cached),
        (0, 4)
    );
    assert_eq!(again.digest, a.digest);
    let mut metrics = String::new();
    svc.render_prometheus(&mut metrics);
    assert!(
        metrics.contains("vigil_image_pulls_total{outcome=\"allowed\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vigil_image_layers_fetched_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "vigil_image_last_pull_layers{{image=\"{r}\",source=\"store\"}} 4"
        )),
        "{metrics}"
    );
    // A fresh service on the same store (an agent restart) finds the layers too.
    drop(svc);
    let fresh = env.accept_all().pull(&r).await.unwrap();
    assert_eq!(fresh.stats.layers_cached, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_down_and_missing_images() {
    require_env!();
    let mut env = support::Env::new();
    let svc = env.accept_all();
    let e = svc.pull(&env.image("nope/app:v1")).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let addr = env.registry.addr().to_string();
    drop(std::mem::replace(
        &mut env.registry,
        vigil_test_registry::Registry::start(),
    ));
    let e = svc.pull(&format!("{addr}/nope/app:v1")).await.unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert!(
        e.to_string().contains(&addr) && e.to_string().contains("unreachable"),
        "{e}"
    );
    // HTTPS to a registry without pinned roots is refused before connecting.
    let e = svc.pull("quay.io/some/image:v1").await.unwrap_err();
    assert!(e.to_string().contains("pinned CA roots"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_and_inconsistent_images() {
    require_env!();
    let env = support::Env::new();
    let many = Layer::builder()
        .file("a", b"1", 0o644)
        .file("b", b"2", 0o644)
        .file("c", b"3", 0o644)
        .build(Compression::Gzip);
    env.registry
        .push_image("l/many", "v1", &Image::new(vec![many], json!({})));
    let mut s = env.settings(vigil_image::PolicySource::AcceptAnything);
    s.limits.max_entries = 2;
    let e = env
        .service(s, None)
        .pull(&env.image("l/many:v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Limit { .. }) && e.to_string().contains("2 entries"),
        "{e}"
    );
    assert!(env.store_entries("tmp").is_empty());
    // A config whose diff_id does not match the layer's uncompressed content.
    let mut lie = Image::new(
        vec![Layer::builder()
            .file("x", b"x", 0o644)
            .build(Compression::Gzip)],
        json!({}),
    );
    lie.diff_ids = Some(vec![vigil_test_registry::digest(b"something else")]);
    env.registry.push_image("l/lie", "v1", &lie);
    let e = env
        .accept_all()
        .pull(&env.image("l/lie:v1"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the image config says"), "{e}");
    assert!(env.store_entries("layers").is_empty());
}
