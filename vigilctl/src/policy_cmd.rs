//! `vigilctl policy ...`: work with agent policies on the host, with the same engine and
//! the same endpoint list the agent uses.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{json, Value};
use vigil_kbc::envelope::{self, PolicyPayload, SigningKey, VerifyingKey};
use vigil_policy::{Limits, PolicyEngine};
use vigil_protos::ENDPOINTS;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Compile a policy, report errors with line numbers, print each endpoint's decision class
    /// (constant-allow / constant-deny / evaluated)
    Check {
        /// Rego policy (package agent_policy)
        file: PathBuf,
    },
    /// Decide one request as the agent would
    Eval {
        file: PathBuf,
        /// Request message name, e.g. CreateContainerRequest
        #[arg(long)]
        kind: String,
        /// Request JSON in the Kata shape (missing fields take defaults)
        #[arg(long)]
        input: PathBuf,
    },
    /// Evaluate an input log (Kata's {"kind","request"} lines) in order, state carried from
    /// line to line; one JSON decision per line; non-zero exit if a line cannot be used
    Replay { file: PathBuf, log: PathBuf },
    /// Sign a policy into an envelope (compact JWS) for SetPolicy or the KBS
    Sign {
        /// Tenant private key (PKCS#8 PEM; P-256 -> ES256, Ed25519 -> EdDSA)
        #[arg(long)]
        key: PathBuf,
        /// Policy version (must exceed the one in force, and the agent's floor)
        #[arg(long)]
        version: u64,
        /// Optional identifier carried in the envelope
        #[arg(long)]
        id: Option<String>,
        /// Rego policy
        policy: PathBuf,
        /// Write the envelope here instead of stdout
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Verify an envelope against the tenant public key and print what it carries
    Verify {
        /// Tenant public key (SPKI PEM)
        #[arg(long)]
        signer: PathBuf,
        /// Lowest acceptable version
        #[arg(long, default_value_t = 0)]
        min_version: u64,
        envelope: PathBuf,
        /// Also write the verified policy text here
        #[arg(long)]
        extract: Option<PathBuf>,
    },
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn load(path: &Path) -> Result<PolicyEngine, String> {
    let text = read(path)?;
    PolicyEngine::load(
        &text,
        &vigil_protos::agent_request_names(),
        Limits::default(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// Fills a (possibly partial) logged request with defaults, through the request type, as the
/// agent would have serialised it. CopyFile inputs are Kata's summary and pass unchanged.
fn complete(kind: &str, request: Value) -> Result<Value, String> {
    if kind == "CopyFileRequest" {
        if request.get("file_type").is_some() {
            return Ok(request);
        }
        return vigil_policy::copy_file_input(&request).map_err(|e| e.to_string());
    }
    let endpoint = ENDPOINTS
        .iter()
        .find(|e| e.request == kind)
        .ok_or_else(|| format!("unknown request kind {kind:?}"))?;
    let bytes = endpoint
        .request_bytes_from_json(&request)
        .map_err(|e| e.to_string())?;
    endpoint
        .request_json_from_bytes(&bytes)
        .map_err(|e| e.to_string())
}

pub fn run(cmd: PolicyCommand) -> Result<(), String> {
    match cmd {
        PolicyCommand::Check { file } => {
            let engine = load(&file)?;
            println!("{}: compiles; sha256 {}", file.display(), engine.digest());
            if engine.allow_failing() {
                println!("WARNING: AllowRequestsFailingPolicy is true: denials would be allowed");
            }
            let table = engine.table();
            let width = table.iter().map(|r| r.name.len()).max().unwrap_or(0);
            for row in &table {
                println!(
                    "{:<width$}  {:<14} {}{}",
                    row.name,
                    row.class.as_str(),
                    if row.stateful { "stateful " } else { "" },
                    row.reason
                );
            }
            Ok(())
        }
        PolicyCommand::Eval { file, kind, input } => {
            let engine = load(&file)?;
            let index = engine
                .index_of(&kind)
                .ok_or_else(|| format!("unknown request kind {kind:?}"))?;
            let request: Value = serde_json::from_str(&read(&input)?)
                .map_err(|e| format!("{}: not JSON: {e}", input.display()))?;
            let full = complete(&kind, request)?;
            let d = engine.decide(index, || Ok::<Value, String>(full));
            for line in &d.prints {
                eprintln!("print: {line}");
            }
            println!(
                "{}",
                json!({"kind": kind, "allowed": d.allowed, "decision": d.outcome.as_str(),
                       "class": d.class.as_str(), "reason": d.reason})
            );
            Ok(())
        }
        PolicyCommand::Replay { file, log } => {
            let engine = load(&file)?;
            let f = std::fs::File::open(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let mut failed = 0;
            for entry in vigil_policy::replay(&engine, BufReader::new(f), complete) {
                match entry {
                    Ok(decision) => println!("{decision}"),
                    Err(e) => {
                        failed += 1;
                        println!("{}", json!({"line": e.line, "error": e.message}));
                    }
                }
            }
            if failed > 0 {
                return Err(format!(
                    "{failed} line(s) of {} could not be replayed",
                    log.display()
                ));
            }
            Ok(())
        }
        PolicyCommand::Sign {
            key,
            version,
            id,
            policy,
            output,
        } => {
            let key = SigningKey::from_pkcs8_pem(&read(&key)?)
                .map_err(|e| format!("{}: {e}", key.display()))?;
            let text = read(&policy)?;
            // Refuse to sign what the agent would refuse to load.
            PolicyEngine::load(
                &text,
                &vigil_protos::agent_request_names(),
                Limits::default(),
            )
            .map_err(|e| format!("{}: {e}", policy.display()))?;
            let issued_at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs();
            let jws = envelope::sign(
                &key,
                &PolicyPayload {
                    version,
                    policy: text,
                    issued_at,
                    id,
                },
            )
            .map_err(|e| e.to_string())?;
            match output {
                Some(path) => std::fs::write(&path, format!("{jws}\n"))
                    .map_err(|e| format!("writing {}: {e}", path.display())),
                None => {
                    println!("{jws}");
                    Ok(())
                }
            }
        }
        PolicyCommand::Verify {
            signer,
            min_version,
            envelope: env,
            extract,
        } => {
            let key = VerifyingKey::from_public_key_pem(&read(&signer)?)
                .map_err(|e| format!("{}: {e}", signer.display()))?;
            let v = envelope::verify(read(&env)?.trim(), &key, min_version)
                .map_err(|e| format!("{}: {e}", env.display()))?;
            println!(
                "{}",
                json!({"version": v.version, "id": v.id, "issued_at": v.issued_at, "digest": v.digest})
            );
            if let Some(path) = extract {
                std::fs::write(&path, &v.policy)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
            Ok(())
        }
    }
}
