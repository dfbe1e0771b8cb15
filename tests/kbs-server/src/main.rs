//! `kbs-test-server`: run the KBS protocol test server from the command line.

use clap::Parser;
use kbs_test_server::{KbsTestServer, ServerConfig, TlsIdentity};
use kbs_types::Tee;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

/// KBS protocol TEST server for vigil — NOT a production KBS.
///
/// Speaks Trustee's KBS protocol 0.4.0 (auth / attest / resource) and checks
/// protocol version, single-use session nonces, session cookie expiry, the
/// report_data binding, the evidence format, the init-data digest against SNP
/// HOST_DATA / TDX MRCONFIGID (sample evidence has none: as in Trustee, the
/// digest of the init-data sent is checked by the release rules only), and
/// per-resource release rules, answering refusals as Trustee does (401
/// PolicyDeny, 401 PluginInternalError for a missing resource). It has no
/// attestation service and no reference values: SNP report signatures are
/// checked only against the VCEK carried in the evidence, TDX quote signatures
/// are not checked, sample evidence is unsigned by design. State is in memory.
/// It must never guard real secrets: use Trustee's KBS for that.
///
/// Resources: DIR/<repo>/<type>/<tag>; release rules: DIR/rules.json mapping
/// "repo/type/tag" to {"tees": ["sample"], "init_data_digests": ["<hex>"]}.
/// A resource without a rule is never released. Both are re-read per request.
///
/// Prints "listening on ADDR" on stdout once the socket is bound; logs go to stderr.
#[derive(Parser, Debug)]
#[command(name = "kbs-test-server", version, verbatim_doc_comment)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Resource directory (see above).
    #[arg(long)]
    resources: Option<PathBuf>,
    /// PEM certificate chain for HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TEE type accepted at auth; repeat for several (sample, snp, tdx). Default: sample.
    #[arg(long = "allow-tee")]
    allow_tee: Vec<String>,
    /// Session cookie and token lifetime, seconds.
    #[arg(long, default_value_t = 300)]
    session_ttl_secs: u64,
    /// Protocol version required at auth.
    #[arg(long, default_value = vigil_kbc::PROTOCOL_VERSION)]
    protocol_version: String,
    /// Runtime-data hash the KBS selects in its challenge (sha256, sha384, sha512).
    #[arg(long, default_value = "sha384")]
    hash_algorithm: String,
    /// File holding a secret that enables the admin call
    /// `POST /kbs/v0/resource/<repo>/<type>/<tag>` (Authorization: Bearer <secret>),
    /// which writes the body into --resources. Release still follows rules.json.
    #[arg(long, requires = "resources")]
    admin_token_file: Option<PathBuf>,
    /// Permit listening on a non-loopback address (it is still only a test server).
    #[arg(long)]
    allow_non_loopback: bool,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kbs-test-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if !args.listen.ip().is_loopback() && !args.allow_non_loopback {
        return Err(format!(
            "refusing to listen on non-loopback {} without --allow-non-loopback",
            args.listen
        ));
    }
    let mut tees = Vec::new();
    for t in &args.allow_tee {
        tees.push(Tee::from_str(t).map_err(|_| format!("--allow-tee {t:?} is not a TEE type"))?);
    }
    if tees.is_empty() {
        tees.push(Tee::Sample);
    }
    if let Some(dir) = &args.resources {
        if !dir.is_dir() {
            return Err(format!("--resources {} is not a directory", dir.display()));
        }
        kbs_test_server::rules::load_rules(dir)?;
    }
    let hash_algorithm: kbs_types::HashAlgorithm = args.hash_algorithm.parse().map_err(|_| {
        format!(
            "--hash-algorithm {:?} is not sha256/sha384/sha512",
            args.hash_algorithm
        )
    })?;
    let admin_token = match &args.admin_token_file {
        None => None,
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .map_err(|e| format!("--admin-token-file {}: {e}", f.display()))?
                .trim()
                .to_string();
            if t.len() < 16 {
                return Err(
                    "--admin-token-file must hold a secret of at least 16 characters".into(),
                );
            }
            Some(t)
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(TlsIdentity {
            cert_chain_pem: std::fs::read_to_string(c)
                .map_err(|e| format!("--tls-cert {}: {e}", c.display()))?,
            key_pem: std::fs::read_to_string(k)
                .map_err(|e| format!("--tls-key {}: {e}", k.display()))?,
        }),
        _ => None,
    };
    let cfg = ServerConfig {
        resources_dir: args.resources.clone(),
        allowed_tees: tees,
        session_ttl: Duration::from_secs(args.session_ttl_secs),
        protocol_version: args.protocol_version.clone(),
        hash_algorithm,
        admin_token,
        tls,
        ..ServerConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        let server = KbsTestServer::start(args.listen, cfg)
            .await
            .map_err(|e| format!("cannot start on {}: {e}", args.listen))?;
        tracing::warn!(
            "this is a TEST KBS without an attestation service; never use it for real secrets"
        );
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.addr()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        drop(out);
        wait_for_signal().await;
        drop(server);
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
