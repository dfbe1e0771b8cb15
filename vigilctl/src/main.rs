//! vigilctl: see `vigilctl --help`.

use std::time::Duration;

use clap::{Parser, Subcommand};
use vigil_protos::ENDPOINTS;

mod initdata_cmd;
mod policy_cmd;
mod secret_cmd;

/// Call the vigil agent API (or any Kata agent) by hand, like Kata's agent-ctl.
///
/// Requests and responses are JSON in the Kata shape: proto field names (OCI, hwAddr,
/// type_), enums as integers, bytes as arrays of numbers. Missing request fields take their
/// defaults, so `{}` is a valid request for every RPC.
///
/// Examples:
///   vigilctl --addr unix:///run/vigil/agent.sock call Check
///   vigilctl --addr vsock://3:1024 call GetGuestDetails '{"mem_block_size": true}'
///   vigilctl --addr hvsock:///run/vm/vsock.sock:1024 call CreateContainer @req.json
///   vigilctl policy check policy.rego
///   vigilctl policy sign --key tenant.key --version 4 policy.rego -o policy.jws
///   vigilctl initdata pack --config vigil.toml --policy policy.rego -o initdata.toml
///   vigilctl initdata pack --config vigil.toml --digest --tee snp
///   vigilctl secret seal --resource default/app/db-password --key tenant.key
#[derive(Parser, Debug)]
#[command(name = "vigilctl", version, verbatim_doc_comment)]
struct Cli {
    /// Agent address: unix:///PATH, vsock://CID:PORT, or hvsock://PATH:PORT (hybrid vsock:
    /// a VMM's unix socket that forwards to guest port PORT after "CONNECT PORT")
    #[arg(long, short = 'a', env = "VIGIL_AGENT_ADDR", global = true)]
    addr: Option<String>,
    /// Seconds to wait for the connection and for each answer
    #[arg(long, default_value_t = 10.0, global = true)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every RPC with its request and response types
    List,
    /// Check, evaluate, replay, sign and verify agent policies (no agent needed)
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Make initdata (the measured agent config and initial policy), print its digest or
    /// Kata's pod annotation, and check initdata against a launch value (no agent needed)
    #[command(subcommand)]
    Initdata(initdata_cmd::InitdataCommand),
    /// Seal a KBS resource as a CoCo sealed secret (sealed.<JWS>) for container env values
    /// and secret files, verify one, or print a key's JWK (no agent needed)
    #[command(subcommand)]
    Secret(secret_cmd::SecretCommand),
    /// Call one RPC and print its JSON response
    Call {
        /// Method name (CreateContainer, Check) or path (/grpc.AgentService/CreateContainer)
        rpc: String,
        /// Request as JSON, or @FILE to read it from a file, or @- for stdin [default: {}]
        request: Option<String>,
    },
}

fn main() {
    // Die quietly on a closed pipe (`vigilctl ... | head`), like other command-line tools.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("vigilctl: {msg}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Initdata(cmd) => initdata_cmd::run(cmd),
        Command::Secret(cmd) => secret_cmd::run(cmd),
        Command::List => {
            for e in ENDPOINTS.iter() {
                println!("{}\t{}\t{}", e.path(), e.request, e.response);
            }
            Ok(())
        }
        Command::Call { rpc, request } => {
            let addr = cli
                .addr
                .ok_or("--addr (or VIGIL_AGENT_ADDR) is required for call")?;
            let endpoint = vigilctl::find_rpc(&rpc).map_err(|e| e.to_string())?;
            let request = read_request(request.as_deref())?;
            if !cli.timeout.is_finite() || cli.timeout <= 0.0 {
                return Err("--timeout must be a positive number of seconds".into());
            }
            let timeout = Duration::from_secs_f64(cli.timeout);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let response = rt.block_on(async {
                let client = vigilctl::connect(&addr, timeout).await?;
                vigilctl::call_json(&client, endpoint, &request, timeout).await
            });
            match response {
                Ok(json) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json).unwrap_or_default()
                    );
                    Ok(())
                }
                Err(e) => Err(format!("{}: {e}", endpoint.method)),
            }
        }
    }
}

fn read_request(arg: Option<&str>) -> Result<serde_json::Value, String> {
    let text = match arg {
        None => return Ok(serde_json::json!({})),
        Some("@-") => std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("reading the request from stdin: {e}"))?,
        Some(a) if a.starts_with('@') => std::fs::read_to_string(&a[1..])
            .map_err(|e| format!("reading the request from {}: {e}", &a[1..]))?,
        Some(a) => a.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| format!("request is not valid JSON: {e}"))
}
