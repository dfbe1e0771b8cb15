//! The start-up sequence. Nothing listens before step 5, and no step's failure is read as
//! "absent" or "allowed": any error stops the agent with a line naming the step.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use vigil_attester::initdata::InitData;

use crate::attestation;
use crate::audit::DecisionLog;
use crate::cmdline::KernelCmdline;
use crate::config::{Config, LogFormat, LogLevel};
use crate::gate::{self, EndpointSet, Gate, Rules};
use crate::guest::GuestInfo;
use crate::policy::{CompiledPolicy, PolicyAdmin};
use crate::service::AgentApi;

/// Kernel parameter naming the initdata file or block device.
pub const CMDLINE_INITDATA: &str = "agent.initdata";
/// The initdata `[data]` entry that holds the agent's config.
pub const INITDATA_CONFIG_KEY: &str = "vigil.toml";

/// What the command line may set. In attested modes nothing here can change a
/// security-relevant setting: those come from measured initdata only.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Config file (TOML). Without it, the kernel parameter agent.config_file=PATH is used;
    /// without either, there is no config and every endpoint is allowed (as Kata).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Initdata (TOML, or Kata's block layout: "initdata" magic, u64 LE length, gzip'd TOML).
    /// Its [data] entry "vigil.toml" is the config and "policy.rego" the initial policy.
    /// Without it, the kernel parameter agent.initdata=PATH is used.
    #[arg(long, value_name = "FILE")]
    pub initdata: Option<PathBuf>,
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

/// The policy the gate starts with, and where it came from.
struct InitialPolicy {
    text: String,
    version: Option<u64>,
    source: String,
}

/// Runs the start-up sequence up to an open API: five steps, each logged with its duration.
/// `child_claims`: when the agent is init, its reaper, so that container processes are
/// reaped by the runtime that waits for them and not by the orphan reaper.
pub async fn start(
    opts: &Options,
    child_claims: Option<Arc<dyn vigil_runtime::ChildClaims>>,
) -> Result<Running, StartupError> {
    // 1. Configuration and policy: from measured initdata in attested modes, with its digest.
    let t = Instant::now();
    let loaded = load(opts).map_err(fail("load config"))?;
    let config = &loaded.config;
    init_logging(opts, config);
    let mode = config.attestation.tee;
    tracing::info!(
        source = %loaded.describe(),
        tee = ?mode,
        ms = ms(t),
        "step 1/5: configuration loaded"
    );

    // 2. The hardware's launch binding must equal the initdata digest.
    let t = Instant::now();
    let attester = match (&loaded.initdata, mode.is_attested()) {
        (Some(initdata), true) => {
            let cmdline = KernelCmdline::read(&opts.kernel_cmdline).map_err(|e| {
                fail("launch binding")(format!("reading {}: {e}", opts.kernel_cmdline.display()))
            })?;
            let attester = attestation::check_launch_binding(
                mode,
                cmdline.value(attestation::CMDLINE_MOCK_BINDING),
                &initdata.digest,
            )
            .map_err(fail("launch binding"))?;
            tracing::info!(
                tee = ?attester.tee(),
                digest = %hex::encode(&initdata.digest),
                ms = ms(t),
                "step 2/5: launch binding matches the initdata"
            );
            Some(attester)
        }
        _ => {
            tracing::warn!("step 2/5: unattested mode (tee = \"none\"): no launch binding check");
            None
        }
    };

    // 3. The tenant's signed policy from the KBS.
    let t = Instant::now();
    let initial = match (&attester, &loaded.initdata) {
        (Some(attester), Some(initdata)) => {
            let signer = config
                .signer
                .as_ref()
                .ok_or_else(|| fail("KBS policy")("no [policy] signer".into()))?;
            let fetched = attestation::fetch_tenant_policy(
                &config.attestation,
                attester.clone(),
                &initdata.toml,
                signer,
                config.policy.min_version,
            )
            .await;
            match fetched {
                Ok(p) => {
                    tracing::info!(version = p.version, digest = %p.digest, ms = ms(t), "step 3/5: tenant policy verified");
                    Some(InitialPolicy {
                        text: p.policy,
                        version: Some(p.version),
                        source: format!(
                            "KBS {}",
                            config.attestation.policy_resource.as_deref().unwrap_or("")
                        ),
                    })
                }
                Err(e) if config.attestation.policy_optional => {
                    let text = initdata.entry("policy.rego").ok_or_else(|| {
                        fail("KBS policy")(format!(
                            "{e}; and initdata has no \"policy.rego\" to fall back to"
                        ))
                    })?;
                    tracing::warn!(error = %e, "step 3/5: KBS policy unavailable; policy_optional: using initdata's policy.rego");
                    Some(InitialPolicy {
                        text: text.to_string(),
                        version: None,
                        source: "initdata policy.rego".into(),
                    })
                }
                Err(e) => return Err(fail("KBS policy")(e)),
            }
        }
        _ => {
            tracing::warn!("step 3/5: unattested mode: no KBS policy");
            local_policy(&loaded).map_err(fail("load config"))?
        }
    };

    // 4. The gate, compiled before anything can reach it.
    let t = Instant::now();
    let gate = Arc::new(compile_gate(config, opts, initial)?);
    let admin = PolicyAdmin::new(config.policy.clone(), config.signer.clone(), gate.clone());
    let mut sandbox = vigil_runtime::Sandbox::new(config.sandbox.clone());
    if let Some(claims) = child_claims {
        sandbox = sandbox.with_child_claims(claims);
    }
    let api = AgentApi::new(GuestInfo::default(), gate.clone(), admin).with_sandbox(sandbox);
    let services = gate::protect(Arc::new(api).service_map(), gate.clone())
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

/// The allow-list bitmap, the policy with its precompiled decisions, and the decision log.
fn compile_gate(
    config: &Config,
    opts: &Options,
    initial: Option<InitialPolicy>,
) -> Result<Gate, StartupError> {
    let step = "compile gate";
    let policy = match initial {
        Some(p) => {
            let compiled = CompiledPolicy::compile(
                &p.text,
                p.version,
                config.policy.limits(),
                p.source.clone(),
            )
            .map_err(|e| fail(step)(format!("policy from {}: {e}", p.source)))?;
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

/// The configuration and where it came from.
struct Loaded {
    config: Config,
    initdata: Option<InitData>,
    initdata_path: Option<PathBuf>,
}

impl Loaded {
    fn describe(&self) -> String {
        match (&self.initdata_path, &self.config.source) {
            (Some(p), _) => format!("initdata {}", p.display()),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => "no config file: every endpoint is allowed".into(),
        }
    }
}

/// The config, from initdata (`--initdata`, else `agent.initdata=` on the kernel command line)
/// or from a config file. With initdata the config is its `vigil.toml` entry, and no flag
/// may point elsewhere.
fn load(opts: &Options) -> Result<Loaded, String> {
    let cmdline = KernelCmdline::read(&opts.kernel_cmdline)
        .map_err(|e| format!("reading {}: {e}", opts.kernel_cmdline.display()))?;
    let initdata_path = opts
        .initdata
        .clone()
        .or_else(|| cmdline.value(CMDLINE_INITDATA).map(PathBuf::from));
    let Some(path) = initdata_path else {
        let config = Config::locate(opts.config.as_deref(), &opts.kernel_cmdline)
            .map_err(|e| e.to_string())?;
        if config.attestation.tee.is_attested() {
            return Err(format!(
                "[attestation] tee = {:?} needs initdata (--initdata or {CMDLINE_INITDATA}=PATH): an attested config must be measured",
                config.attestation.tee
            ));
        }
        return Ok(Loaded {
            config,
            initdata: None,
            initdata_path: None,
        });
    };
    if let Some(flag) = &opts.config {
        return Err(format!(
            "--config {} conflicts with initdata {}: the configuration comes from initdata's \"vigil.toml\"",
            flag.display(),
            path.display()
        ));
    }
    let bytes =
        std::fs::read(&path).map_err(|e| format!("reading initdata {}: {e}", path.display()))?;
    let initdata = InitData::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = initdata.entry(INITDATA_CONFIG_KEY).ok_or_else(|| {
        format!(
            "initdata {} has no [data] entry \"{INITDATA_CONFIG_KEY}\"",
            path.display()
        )
    })?;
    let source = PathBuf::from(format!("{}#{INITDATA_CONFIG_KEY}", path.display()));
    let config = Config::parse(text, &source).map_err(|e| e.to_string())?;
    if config.attestation.tee.is_attested() {
        if config.policy.file.is_some() || config.policy.kata_default_fallback {
            return Err(format!(
                "{}: [policy] file / kata_default_fallback are not allowed in attested modes: the policy comes from the KBS (or initdata's policy.rego)",
                source.display()
            ));
        }
        if config.policy.signer.is_none() {
            return Err(format!(
                "{}: [policy] signer is required in attested modes",
                source.display()
            ));
        }
    }
    Ok(Loaded {
        config,
        initdata: Some(initdata),
        initdata_path: Some(path),
    })
}

/// Unattested mode: the policy from `[policy] file` (or Kata's default location), else from
/// initdata's `policy.rego`, else none.
fn local_policy(loaded: &Loaded) -> Result<Option<InitialPolicy>, String> {
    if let Some(path) = loaded.config.policy.policy_path() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading policy {}: {e}", path.display()))?;
        return Ok(Some(InitialPolicy {
            text,
            version: None,
            source: path.display().to_string(),
        }));
    }
    Ok(loaded
        .initdata
        .as_ref()
        .and_then(|d| d.entry("policy.rego"))
        .map(|text| InitialPolicy {
            text: text.to_string(),
            version: None,
            source: "initdata policy.rego".into(),
        }))
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
        // Not fd 2 itself: processes forked for containers have the workload's stderr there.
        .with_writer(crate::log_sink::LogSink::from_stderr())
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
