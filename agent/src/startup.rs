//! The start-up sequence. Nothing listens before step 5, and no step's failure is read as
//! "absent" or "allowed": any error stops the agent with a line naming the step.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::audit::DecisionLog;
use crate::config::{Config, LogFormat, LogLevel};
use crate::gate::{self, EndpointSet, Gate, Rules};
use crate::guest::GuestInfo;
use crate::policy::{CompiledPolicy, PolicyAdmin};
use crate::service::AgentApi;

/// What the command line may set.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Config file (TOML). Without it, the kernel parameter agent.config_file=PATH is used;
    /// without either, there is no config and every endpoint is allowed (as Kata).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, overriding [agent] server_addr: vsock://CID:PORT or unix:///PATH
    /// [default: vsock://-1:1024]
    #[arg(long, value_name = "ADDR")]
    pub server_addr: Option<String>,
    /// Log level, overriding [agent] log_level [default: info]
    #[arg(long, value_enum)]
    pub log_level: Option<LogLevel>,
    /// Log format, overriding [agent] log_format [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Audit log path, overriding [policy] audit_log (for tests and development)
    #[arg(long, value_name = "FILE", hide = true)]
    pub audit_log: Option<PathBuf>,
    /// Kernel command line to read agent.* parameters from (for tests).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/proc/cmdline",
        hide = true
    )]
    pub kernel_cmdline: PathBuf,
}

/// A start-up failure: which step, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {cause}")]
pub struct StartupError {
    pub step: &'static str,
    pub cause: String,
}

fn fail(step: &'static str) -> impl FnOnce(String) -> StartupError {
    move |cause| StartupError { step, cause }
}

/// A running agent: the API is open.
pub struct Running {
    server: ttrpc::r#async::Server,
    pub addr: String,
    pub gate: Arc<Gate>,
}

impl Running {
    pub async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown().await {
            tracing::warn!(error = %e, "shutting the listener down");
        }
        if !self
            .gate
            .decision_log()
            .flush(std::time::Duration::from_secs(5))
        {
            tracing::warn!("audit log: not every record could be written before exit");
        }
    }
}

/// Runs the start-up sequence up to an open API.
pub async fn start(opts: &Options) -> Result<Running, StartupError> {
    // 1. Configuration (and, in attested modes, initdata) and its digest.
    let t = Instant::now();
    let config = Config::locate(opts.config.as_deref(), &opts.kernel_cmdline)
        .map_err(|e| fail("load config")(e.to_string()))?;
    init_logging(opts, &config);
    match &config.source {
        Some(path) => tracing::info!(file = %path.display(), ms = ms(t), "step 1/5: config loaded"),
        None => tracing::info!(
            ms = ms(t),
            "step 1/5: no config file: every endpoint is allowed"
        ),
    }

    // 2. Launch binding of the hardware evidence, and 3. the tenant's policy from the KBS.
    tracing::warn!("steps 2-3/5: unattested mode: no launch binding check, no KBS policy");

    // 4. The gate, compiled before anything can reach it.
    let t = Instant::now();
    let gate = Arc::new(compile_gate(&config, opts)?);
    let signer = config
        .policy
        .validate()
        .map_err(|e| fail("compile gate")(e))?;
    let admin = PolicyAdmin::new(config.policy.clone(), signer, gate.clone());
    let api = Arc::new(AgentApi::new(GuestInfo::default(), gate.clone(), admin));
    let services = gate::protect(api.service_map(), gate.clone())
        .map_err(|e| fail("compile gate")(e.to_string()))?;
    tracing::info!(ms = ms(t), "step 4/5: gate compiled");

    // 5. Only now does anything listen.
    let t = Instant::now();
    let addr = opts
        .server_addr
        .clone()
        .unwrap_or_else(|| config.server_addr().to_string());
    let server = crate::server::listen(&addr, services)
        .await
        .map_err(|e| fail("open API")(e.to_string()))?;
    tracing::info!(addr = %addr, ms = ms(t), "step 5/5: API open");
    Ok(Running { server, addr, gate })
}

/// The allow-list bitmap, the policy (from its file) with its precompiled decisions, and the
/// decision log.
fn compile_gate(config: &Config, opts: &Options) -> Result<Gate, StartupError> {
    let step = "compile gate";
    let policy = match config.policy.policy_path() {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| fail(step)(format!("reading policy {}: {e}", path.display())))?;
            let compiled = CompiledPolicy::compile(
                &text,
                None,
                config.policy.limits(),
                path.display().to_string(),
            )
            .map_err(|e| fail(step)(format!("policy {}: {e}", path.display())))?;
            log_policy_table(&compiled);
            Some(Arc::new(compiled))
        }
        None => {
            tracing::info!("no policy configured: the allow-list alone decides");
            None
        }
    };
    let audit_path = opts
        .audit_log
        .as_deref()
        .or_else(|| config.policy.audit_log_path());
    let log = match audit_path {
        Some(path) => {
            DecisionLog::with_audit_log(path, config.policy.log_max_bytes, config.policy.log_keep)
                .map_err(|e| fail(step)(format!("opening audit log {}: {e}", path.display())))?
        }
        None => DecisionLog::counters_only(),
    };
    let log = match &config.policy.input_log {
        Some(path) => log
            .with_input_log(path, config.policy.log_max_bytes, config.policy.log_keep)
            .map_err(|e| fail(step)(format!("opening input log {}: {e}", path.display())))?,
        None => log,
    };
    let rules = Rules {
        allowed: EndpointSet::from_allow_list(&config.allow_list),
        policy,
        host_error_details: config.policy.host_error_details,
    };
    Ok(Gate::with_log(rules, log))
}

fn log_policy_table(policy: &CompiledPolicy) {
    let table = policy.engine.table();
    let count = |c| table.iter().filter(|r| r.class == c).count();
    tracing::info!(
        source = %policy.source,
        digest = policy.engine.digest(),
        constant_allow = count(vigil_policy::DecisionClass::ConstAllow),
        constant_deny = count(vigil_policy::DecisionClass::ConstDeny),
        evaluated = count(vigil_policy::DecisionClass::Evaluate),
        "policy loaded"
    );
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn init_logging(opts: &Options, config: &Config) {
    let level = opts
        .log_level
        .or(config.agent.log_level)
        .unwrap_or_default();
    let format = opts
        .log_format
        .or(config.agent.log_format)
        .unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(match level {
            LogLevel::Trace => tracing::Level::TRACE,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        });
    // A second init (tests start several agents in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
