//! `vigil-test-registry`: a registry for scripts (the QEMU end-to-end run, benchmarks):
//! starts Debian's docker-registry on a free 127.0.0.1 port, pushes a busybox image (and, with
//! a key, its cosign signature), prints what it did, and serves until stdin closes or it is
//! killed.
//!
//! Usage: vigil-test-registry [--repo REPO] [--tag TAG] [--message TEXT] [--cmd SHELL-COMMAND]
//!                            [--sign-as NAME --key-out FILE] [--layers N]
//!   --sign-as NAME   cosign-sign the image, naming repository NAME in the payload (the name
//!                    the puller uses, e.g. 10.0.2.101:5000/apps/hello); the public key goes
//!                    to --key-out
//!   --layers N       add N-1 more layers of 1 MiB of random-looking data each (benchmarks)
//! Prints `listening on 127.0.0.1:PORT`, then `digest sha256:...`, then `ready`.

use std::io::Read;

use serde_json::json;
use vigil_test_registry::{busybox_image, Compression, Layer, Registry, SigningKey};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut repo, mut tag) = ("apps/hello".to_string(), "v1".to_string());
    let mut message = "hello from a guest-pulled image\n".to_string();
    let mut cmd = "cat /etc/message".to_string();
    let (mut sign_as, mut key_out, mut layers) = (None, None, 1usize);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--repo" => repo = value(),
            "--tag" => tag = value(),
            "--message" => message = value(),
            "--cmd" => cmd = value(),
            "--sign-as" => sign_as = Some(value()),
            "--key-out" => key_out = Some(value()),
            "--layers" => {
                layers = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--layers wants a number"))
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if let Some(why) = vigil_test_registry::unavailable() {
        eprintln!("vigil-test-registry: {why}");
        std::process::exit(1);
    }
    let registry = Registry::start();
    println!("listening on {}", registry.addr());
    let mut image = busybox_image(
        &message,
        json!({"Cmd": ["/bin/sh", "-c", cmd], "Env": ["PATH=/bin"]}),
    );
    for i in 1..layers {
        // Deterministic, poorly compressible data: a small xorshift stream.
        let mut x: u64 = 0x9e3779b97f4a7c15 ^ i as u64;
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        image.layers.push(
            Layer::builder()
                .dir("data", 0o755)
                .file(&format!("data/blob{i}"), &data, 0o644)
                .build(Compression::Gzip),
        );
    }
    let digest = registry.push_image(&repo, &tag, &image);
    println!("digest {digest}");
    if let Some(name) = sign_as {
        let key = SigningKey::from_seed(42);
        registry.cosign_sign(&repo, &digest, &name, &key);
        let out = key_out.unwrap_or_else(|| usage("--sign-as needs --key-out"));
        std::fs::write(&out, key.public_pem()).unwrap_or_else(|e| usage(&format!("{out}: {e}")));
    }
    println!("ready");
    // Serve until the caller closes stdin (or kills us): the registry stops with us.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(registry);
}

fn usage(why: &str) -> ! {
    if !why.is_empty() {
        eprintln!("vigil-test-registry: {why}");
    }
    eprintln!("usage: vigil-test-registry [--repo REPO] [--tag TAG] [--message TEXT] [--cmd CMD] [--sign-as NAME --key-out FILE] [--layers N]");
    std::process::exit(if why.is_empty() { 0 } else { 2 });
}
