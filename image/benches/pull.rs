//! Pull + unpack of one image from a registry on loopback: vigil's `ImageService` against
//! `skopeo copy` + `umoci unpack` (Debian's), in the same run, cold (empty store / empty OCI
//! layout) and warm (vigil: the layers in its store; skopeo/umoci: the blobs in the layout,
//! unpacked again, since umoci makes a new bundle each time).
//!
//! Run as root (overlay mounts): `cargo bench -p vigil-image --bench pull [-- RUNS]`
//! Needs the docker-registry, skopeo and umoci packages.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_image::{ImageService, PolicySource, Settings};
use vigil_test_registry::{Compression, Image, Layer, Registry};

/// Deterministic file contents that compress about 2:1 (half noise, half text).
fn contents(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (out.len() / 4096) % 2 == 0 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(b"the quick brown fox jumps over the lazy dog. ");
        }
    }
    out.truncate(len);
    out
}

/// A realistic small image: a base layer of many small files, a few layers of larger ones.
fn image() -> Image {
    let mut base = Layer::builder().dir("usr", 0o755).dir("usr/lib", 0o755);
    for i in 0..3000u64 {
        base = base.file(
            &format!("usr/lib/f{i:04}"),
            &contents(i, 2048 + (i as usize % 7) * 1024),
            0o644,
        );
    }
    let mut layers = vec![base.build(Compression::Gzip)];
    for l in 0..4u64 {
        let mut b = Layer::builder().dir(&format!("opt{l}"), 0o755);
        for j in 0..8u64 {
            b = b.file(
                &format!("opt{l}/blob{j}"),
                &contents(1000 + l * 10 + j, 1 << 20),
                0o644,
            );
        }
        layers.push(b.build(Compression::Gzip));
    }
    Image::new(layers, json!({"Cmd": ["/bin/sh"]}))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn skopeo_umoci(reference: &str, layout: &Path, bundle: &Path) -> Duration {
    let _ = std::fs::remove_dir_all(bundle);
    let t = Instant::now();
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:bench", layout.display())));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:bench", layout.display()))
        .arg(bundle));
    t.elapsed()
}

async fn vigil(svc: &ImageService, reference: &str, target: &Path) -> Duration {
    std::fs::create_dir_all(target).expect("mount point");
    let dir = std::fs::File::open(target).expect("mount point");
    let t = Instant::now();
    let pulled = svc.pull(reference).await.expect("pull");
    let rootfs = svc.mount(&pulled, dir.into(), target).await.expect("mount");
    let d = t.elapsed();
    rootfs.remove().expect("remove");
    d
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    for tool in ["docker-registry", "skopeo", "umoci"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!("pull bench: {tool} is not installed (apt-get install docker-registry skopeo umoci)");
            return;
        }
    }
    let registry = Registry::start();
    let img = image();
    let compressed: usize = img.layers.iter().map(|l| l.blob.len()).sum();
    registry.push_image("bench/app", "v1", &img);
    let reference = format!("{}/bench/app:v1", registry.addr());
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = |store: &Path| {
        let mut s = Settings::new(store, PolicySource::AcceptAnything);
        s.registry.insecure_registries = vec![registry.addr().to_string()];
        s
    };
    let (mut vc, mut vw, mut sc, mut sw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // Cold: nothing local.
        let store = dir.path().join(format!("store{i}"));
        let svc = ImageService::new(settings(&store), None).unwrap();
        let target = dir.path().join("rootfs");
        vc.push(rt.block_on(vigil(&svc, &reference, &target)));
        // Warm: the same store (a second container of the image).
        vw.push(rt.block_on(vigil(&svc, &reference, &target)));
        drop(svc);
        let _ = std::fs::remove_dir_all(&store);
        let layout = dir.path().join(format!("layout{i}"));
        let bundle = dir.path().join("bundle");
        sc.push(skopeo_umoci(&reference, &layout, &bundle));
        sw.push(skopeo_umoci(&reference, &layout, &bundle));
        let _ = std::fs::remove_dir_all(&layout);
        let _ = std::fs::remove_dir_all(&bundle);
    }
    let (vc, vw, sc, sw) = (median(vc), median(vw), median(sc), median(sw));
    println!(
        "image: {} layers, {:.1} MiB compressed, 3032 files; {runs} runs, medians",
        img.layers.len(),
        compressed as f64 / (1 << 20) as f64
    );
    println!(
        "cold: vigil {:.1} ms, skopeo copy + umoci unpack {:.1} ms, ratio {:.2}",
        ms(vc),
        ms(sc),
        ms(vc) / ms(sc)
    );
    println!(
        "warm: vigil {:.1} ms, skopeo copy + umoci unpack {:.1} ms, ratio {:.3}",
        ms(vw),
        ms(sw),
        ms(vw) / ms(sw)
    );
}
