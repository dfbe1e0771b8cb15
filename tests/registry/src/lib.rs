//! Test support for guest image pull: a real OCI registry (Debian's `docker-registry`, the
//! CNCF Distribution server) on 127.0.0.1 with its own storage directory, layers built in
//! Rust (including the malformed ones a hostile registry could serve), images and indexes
//! pushed over the registry's own HTTP API, and cosign signatures made with a P-256 key.

mod http;
mod layer;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePublicKey as _;
use sha2::Digest as _;

pub use layer::{Compression, Layer, LayerBuilder};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Why the registry cannot run here (the package is missing), for tests to skip with.
pub fn unavailable() -> Option<String> {
    which("docker-registry").is_none().then(|| {
        "docker-registry is not installed (Debian package docker-registry; hack/deps.sh)".into()
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A running registry; stopped when dropped.
pub struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free 127.0.0.1 port (the registry cannot take port 0: a free
    /// port is picked and the start retried if another process takes it first).
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("registry temp dir");
        let (child, addr) = Self::spawn(dir.path(), &dir.path().join("data"), "");
        Registry { child, addr, dir }
    }

    /// A second registry process over the same storage, serving HTTPS with `cert_pem` and
    /// `key_pem` (pushes go to the plain one; pulls can then be tested over TLS).
    pub fn tls_frontend(&self, cert_pem: &str, key_pem: &str) -> Registry {
        let dir = tempfile::tempdir().expect("registry temp dir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        let extra = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        );
        let (child, addr) = Self::spawn(dir.path(), &self.dir.path().join("data"), &extra);
        Registry { child, addr, dir }
    }

    /// A second registry process over the same storage that asks for basic authentication
    /// (an htpasswd file with `user`'s bcrypt hash, made with Python's crypt module).
    pub fn basic_auth_frontend(&self, user: &str, password: &str) -> Registry {
        let dir = tempfile::tempdir().expect("registry temp dir");
        let out = Command::new("python3")
            .args(["-W", "ignore", "-c"])
            .arg("import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))")
            .arg(password)
            .output()
            .expect("python3 for a bcrypt hash");
        assert!(
            out.status.success(),
            "bcrypt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(
            &htpasswd,
            format!("{user}:{}", String::from_utf8_lossy(&out.stdout).trim()),
        )
        .unwrap();
        let extra = format!(
            "auth:\n  htpasswd:\n    realm: vigil-test\n    path: {}\n",
            htpasswd.display()
        );
        let (child, addr) = Self::spawn(dir.path(), &self.dir.path().join("data"), &extra);
        Registry { child, addr, dir }
    }

    /// `extra`: more YAML at the end of the config (indented under `http:` or top level).
    fn spawn(dir: &Path, data: &Path, extra: &str) -> (Child, String) {
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if let Some(r) = Self::start_on(dir, data, port, extra) {
                return r;
            }
        }
        panic!("docker-registry did not start on any of 10 ports");
    }

    fn start_on(dir: &Path, data: &Path, port: u16, extra: &str) -> Option<(Child, String)> {
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{extra}",
                data.display()
            ),
        )
        .expect("registry config");
        let mut cmd = Command::new("docker-registry");
        // The registry dies with whoever started it, even if that one is killed.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker-registry runs");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(true);
                } else if line.contains("level=fatal") || line.contains("address already in use") {
                    let _ = tx.send(false);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(true) => Some((child, addr)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The file of a stored blob, to tamper with as a compromised registry would.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Uploads a blob; returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = digest(data);
        let (status, headers, _) = http::request(
            &self.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            b"",
        );
        assert_eq!(status, 202, "starting an upload to {repo}");
        let location = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.clone())
            .expect("upload location");
        let path = location
            .strip_prefix(&format!("http://{}", self.addr))
            .unwrap_or(&location)
            .to_string();
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, _, body) = http::request(
            &self.addr,
            "PUT",
            &format!("{path}{sep}digest={d}"),
            &[("Content-Type", "application/octet-stream")],
            data,
        );
        assert_eq!(
            status,
            201,
            "finishing an upload: {}",
            String::from_utf8_lossy(&body)
        );
        d
    }

    /// Uploads a manifest under `tag` (or a digest); returns the manifest's digest.
    pub fn push_manifest(&self, repo: &str, tag: &str, media_type: &str, body: &[u8]) -> String {
        let (status, _, resp) = http::request(
            &self.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Content-Type", media_type)],
            body,
        );
        assert_eq!(
            status,
            201,
            "pushing manifest {repo}:{tag}: {}",
            String::from_utf8_lossy(&resp)
        );
        digest(body)
    }

    /// Pushes a single-platform image; returns its manifest digest.
    pub fn push_image(&self, repo: &str, tag: &str, image: &Image) -> String {
        let (manifest, _) = self.push_image_parts(repo, image);
        self.push_manifest(repo, tag, OCI_MANIFEST, &manifest)
    }

    /// Pushes the config and layers and returns the manifest (not yet pushed) and its digest.
    pub fn push_image_parts(&self, repo: &str, image: &Image) -> (Vec<u8>, String) {
        let config = image.config_json();
        let config_digest = self.push_blob(repo, &config);
        let layers: Vec<serde_json::Value> = image
            .layers
            .iter()
            .map(|l| {
                let d = self.push_blob(repo, &l.blob);
                serde_json::json!({"mediaType": l.media_type, "digest": d, "size": l.blob.len()})
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        let d = digest(&manifest);
        (manifest, d)
    }

    /// Pushes one image per (os, architecture) and an index of them under `tag`; returns the
    /// index digest and each platform manifest's digest.
    pub fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[(&str, &Image)],
    ) -> (String, Vec<String>) {
        let mut entries = Vec::new();
        let mut digests = Vec::new();
        for (arch, image) in images {
            let (manifest, d) = self.push_image_parts(repo, image);
            self.push_manifest(repo, &d, OCI_MANIFEST, &manifest);
            entries.push(serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": d, "size": manifest.len(),
                "platform": {"os": "linux", "architecture": arch},
            }));
            digests.push(d);
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
        }))
        .unwrap();
        (self.push_manifest(repo, tag, OCI_INDEX, &index), digests)
    }

    /// Signs `manifest_digest` as cosign does: the simple-signing payload as a layer of the
    /// signature image at tag `sha256-<hex>.sig`, its ECDSA P-256 signature (DER, base64) in
    /// the layer's `dev.cosignproject.cosign/signature` annotation. `docker_reference` is the
    /// repository the payload names (cosign writes it without a tag).
    pub fn cosign_sign(
        &self,
        repo: &str,
        manifest_digest: &str,
        docker_reference: &str,
        key: &SigningKey,
    ) {
        let payload = serde_json::to_vec(&serde_json::json!({
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": manifest_digest},
                "type": "cosign container image signature",
            },
            "optional": null,
        }))
        .unwrap();
        let sig: p256::ecdsa::Signature = key.0.sign(&payload);
        let sig_b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
        let payload_digest = self.push_blob(repo, &payload);
        let config = br#"{"architecture":"","config":{},"created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = self.push_blob(repo, config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "digest": payload_digest,
                "size": payload.len(),
                "annotations": {"dev.cosignproject.cosign/signature": sig_b64},
            }],
        }))
        .unwrap();
        let tag = format!(
            "sha256-{}.sig",
            manifest_digest.trim_start_matches("sha256:")
        );
        self.push_manifest(repo, &tag, OCI_MANIFEST, &manifest);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image to push: layers bottom first and the process defaults of its config.
#[derive(Clone)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub architecture: String,
    /// The config's `config` object (Cmd, Env, ...).
    pub config: serde_json::Value,
    /// Replaces the computed `rootfs.diff_ids` (to build inconsistent images).
    pub diff_ids: Option<Vec<String>>,
}

impl Image {
    pub fn new(layers: Vec<Layer>, config: serde_json::Value) -> Image {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Image {
            layers,
            architecture: architecture.into(),
            config,
            diff_ids: None,
        }
    }

    pub fn config_json(&self) -> Vec<u8> {
        let diff_ids = self
            .diff_ids
            .clone()
            .unwrap_or_else(|| self.layers.iter().map(|l| l.diff_id.clone()).collect());
        serde_json::to_vec(&serde_json::json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }
}

/// A busybox image (Debian's static `/bin/busybox`, with `sh`, `cat`, `echo`, `sleep`
/// applets) whose `/etc/message` holds `message`, gzip-compressed, with config `config`.
pub fn busybox_image(message: &str, config: serde_json::Value) -> Image {
    let busybox =
        std::fs::read("/bin/busybox").expect("/bin/busybox (Debian package busybox-static)");
    let mut b = Layer::builder()
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755);
    for applet in ["sh", "cat", "echo", "sleep"] {
        b = b.symlink(&format!("bin/{applet}"), "busybox");
    }
    let layer = b
        .dir("etc", 0o755)
        .file("etc/message", message.as_bytes(), 0o644)
        .dir("proc", 0o555)
        .dir("dev", 0o755)
        .dir("tmp", 0o1777)
        .build(Compression::Gzip);
    Image::new(vec![layer], config)
}

/// A cosign key pair (ECDSA P-256).
pub struct SigningKey(p256::ecdsa::SigningKey);

impl SigningKey {
    /// A key from a fixed seed (tests want different keys, not secret ones).
    pub fn from_seed(seed: u8) -> SigningKey {
        SigningKey(p256::ecdsa::SigningKey::from_slice(&[seed.max(1); 32]).expect("a valid scalar"))
    }

    /// The public key as cosign.pub holds it (PEM).
    pub fn public_pem(&self) -> String {
        self.0
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("PEM")
    }
}
