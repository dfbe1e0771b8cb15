//! `kbs-tenant`: tenant-side helper for tests and demos — make a signing key,
//! sign a policy into an envelope, lay out a test-KBS resource directory, and
//! make a throwaway TLS CA and server certificate.

use clap::{Parser, Subcommand};
use kbs_test_server::evidence::InitDataDigest;
use kbs_test_server::rules::{load_rules, ReleaseRule};
use kbs_types::Tee;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use vigil_kbc::envelope::{self, Algorithm, PolicyPayload, SigningKey};

/// Tenant helper for vigil's KBS test server (test and demo use).
#[derive(Parser, Debug)]
#[command(name = "kbs-tenant", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a tenant key pair: OUT/tenant.key (PKCS#8 PEM, mode 0600) and OUT/tenant.pub (SPKI PEM).
    Keygen {
        /// es256 or ed25519.
        #[arg(long, default_value = "es256")]
        alg: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a Rego policy file into a JWS policy envelope.
    Sign {
        /// PKCS#8 PEM private key.
        #[arg(long)]
        key: PathBuf,
        /// Rego policy text file.
        #[arg(long)]
        policy: PathBuf,
        /// Policy version (anti-rollback counter).
        #[arg(long)]
        version: u64,
        /// Optional identifier.
        #[arg(long)]
        id: Option<String>,
        /// Issue time, unix seconds (default: now).
        #[arg(long)]
        issued_at: Option<u64>,
        /// Output file for the envelope (compact JWS text).
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a file into a resource directory and record its release rule in rules.json.
    Publish {
        /// Resource directory.
        #[arg(long)]
        resources: PathBuf,
        /// Resource path repo/type/tag.
        #[arg(long)]
        path: String,
        /// File to publish.
        #[arg(long)]
        file: PathBuf,
        /// TEE type allowed to receive it; repeat for several.
        #[arg(long = "tee", required = true)]
        tees: Vec<String>,
        /// Initdata TOML files whose digests are allowed (none: not checked).
        #[arg(long = "init-data")]
        init_data: Vec<PathBuf>,
    },
    /// Print the hex digest of an initdata TOML file (per its `algorithm` key).
    InitDataDigest { file: PathBuf },
    /// Make a throwaway CA and a server certificate for an IP: OUT/ca.pem, OUT/server.pem, OUT/server.key.
    Tls {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "127.0.0.1")]
        ip: std::net::IpAddr,
    },
}

fn main() -> std::process::ExitCode {
    match run(Args::parse().cmd) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kbs-tenant: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn write(p: &Path, data: &[u8], private: bool) -> Result<(), String> {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    use std::io::Write as _;
    opts.open(p)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| format!("{}: {e}", p.display()))
}

fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Keygen { alg, out } => {
            let alg = Algorithm::from_str(&alg).map_err(|e| e.to_string())?;
            let key = SigningKey::generate(alg);
            let private = key.to_pkcs8_pem().map_err(|e| e.to_string())?;
            let public = key
                .verifying_key()
                .to_public_key_pem()
                .map_err(|e| e.to_string())?;
            write(&out.join("tenant.key"), private.as_bytes(), true)?;
            write(&out.join("tenant.pub"), public.as_bytes(), false)?;
            println!("{}", out.join("tenant.pub").display());
        }
        Cmd::Sign {
            key,
            policy,
            version,
            id,
            issued_at,
            out,
        } => {
            let key = SigningKey::from_pkcs8_pem(&read(&key)?).map_err(|e| e.to_string())?;
            let issued_at = issued_at.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            });
            let payload = PolicyPayload {
                version,
                policy: read(&policy)?,
                issued_at,
                id,
            };
            let jws = envelope::sign(&key, &payload).map_err(|e| e.to_string())?;
            // Check our own output with the public key before handing it out.
            envelope::verify(&jws, &key.verifying_key(), version).map_err(|e| e.to_string())?;
            write(&out, jws.as_bytes(), false)?;
        }
        Cmd::Publish {
            resources,
            path,
            file,
            tees,
            init_data,
        } => {
            vigil_kbc::client::validate_resource_path(&path).map_err(|e| e.to_string())?;
            let tees = tees
                .iter()
                .map(|t| Tee::from_str(t).map_err(|_| format!("--tee {t:?} is not a TEE type")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut digests = Vec::new();
            for f in &init_data {
                digests.push(hex::encode(InitDataDigest::of(&read(f)?)?.digest));
            }
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            write(&resources.join(&path), &bytes, false)?;
            let mut rules = load_rules(&resources)?;
            rules.insert(
                path,
                ReleaseRule {
                    tees,
                    init_data_digests: digests,
                },
            );
            let sorted: std::collections::BTreeMap<_, _> = rules.into_iter().collect();
            let text = serde_json::to_string_pretty(&sorted).map_err(|e| e.to_string())?;
            write(&resources.join("rules.json"), text.as_bytes(), false)?;
        }
        Cmd::InitDataDigest { file } => {
            println!("{}", hex::encode(InitDataDigest::of(&read(&file)?)?.digest));
        }
        Cmd::Tls { out, ip } => {
            let (ca, server, key) = kbs_test_server::tls::make_ca_and_server_cert(ip)?;
            write(&out.join("ca.pem"), ca.as_bytes(), false)?;
            write(&out.join("server.pem"), server.as_bytes(), false)?;
            write(&out.join("server.key"), key.as_bytes(), true)?;
        }
    }
    Ok(())
}
