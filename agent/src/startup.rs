//! The start-up sequence. Nothing listens before step 5, and no step's failure is read as
//! "absent" or "allowed": any error stops the agent with a line naming the step.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use vigil_attester::initdata::InitData;
use vigil_attester::TeePaths;
use vigil_kbc::KbsSession;

use crate::attestation::{self, PolicyFetchError};
use crate::cmdline::KernelCmdline;
use crate::config::{Config, LogFormat, LogLevel, CMDLINE_CONFIG_KEY};
use crate::gate::{self, DecisionLog, EndpointSet, Gate, Rules};
use crate::mode::{self, ConfigSource, ImageSettings, Mode, IMAGE_SETTINGS};
use crate::pid1;
use crate::policy::{CompiledPolicy, PolicyAdmin, PolicyOrigin, PolicySource};
use crate::service::AgentApi;
use crate::workload;

/// Kernel parameter naming the initdata file or block device.
pub use crate::mode::CMDLINE_INITDATA;
/// The initdata `[data]` entry that holds the agent's config.
pub const INITDATA_CONFIG_KEY: &str = "vigil.toml";

/// What the command line may set. As PID 1 (the kernel passes it the arguments after `--`,
/// which the host writes) and on TEE hardware, only `--log-level` and `--log-format` are
/// accepted: every other flag changes a security setting or an input, and is refused.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Config file (TOML). Without it, the kernel parameter agent.config_file=PATH is used;
    /// without either, there is no config and every endpoint is allowed (as Kata).
    /// Refused as PID 1 and on TEE hardware.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Initdata (TOML, or Kata's block layout: "initdata" magic, u64 LE length, gzip'd TOML).
    /// Its [data] entry "vigil.toml" is the config and "policy.rego" the initial policy.
    /// Without it, the kernel parameter agent.initdata=PATH is used (the only way as PID 1
    /// and on TEE hardware, where this flag is refused).
    #[arg(long, value_name = "FILE")]
    pub initdata: Option<PathBuf>,
    /// Listen address, overriding [agent] server_addr: vsock://CID:PORT or unix:///PATH
    /// [default: vsock://-1:1024]. Refused as PID 1 and on TEE hardware.
    #[arg(long, value_name = "ADDR")]
    pub server_addr: Option<String>,
    /// Log level, overriding [agent] log_level [default: info]. Always accepted.
    #[arg(long, value_enum)]
    pub log_level: Option<LogLevel>,
    /// Log format, overriding [agent] log_format [default: text]. Always accepted.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Audit log path, overriding [policy] audit_log (for tests and development)
    #[arg(long, value_name = "FILE", hide = true)]
    pub audit_log: Option<PathBuf>,
    /// Kernel command line to read agent.* parameters from, instead of /proc/cmdline (for
    /// tests and development).
    #[arg(long, value_name = "FILE", hide = true)]
    pub kernel_cmdline: Option<PathBuf>,
}

impl Options {
    /// The flags given that change a security setting or an input (all but the log flags).
    pub fn security_flags(&self) -> Vec<&'static str> {
        let given = [
            ("--config", self.config.is_some()),
            ("--initdata", self.initdata.is_some()),
            ("--server-addr", self.server_addr.is_some()),
            ("--audit-log", self.audit_log.is_some()),
            ("--kernel-cmdline", self.kernel_cmdline.is_some()),
        ];
        given
            .iter()
            .filter(|(_, on)| *on)
            .map(|(f, _)| *f)
            .collect()
    }

    fn kernel_cmdline_path(&self) -> &Path {
        self.kernel_cmdline
            .as_deref()
            .unwrap_or(Path::new("/proc/cmdline"))
    }
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
    /// The boot's attested KBS session, for every later user of the KBS; `None` in
    /// unattested modes.
    pub kbs: Option<KbsSession>,
    /// The workload API, when the measured config turns it on.
    pub workload_api: Option<crate::workload_api::WorkloadApi>,
}

impl Running {
    pub async fn shutdown(mut self) {
        if let Some(api) = self.workload_api.take() {
            api.shutdown();
        }
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
    source: PolicySource,
}

/// Runs the start-up sequence up to an open API: five steps, each logged with its duration.
/// `child_claims`: when the agent is init, its reaper, so that container processes are
/// reaped by the runtime that waits for them and not by the orphan reaper.
pub async fn start(
    opts: &Options,
    child_claims: Option<Arc<dyn vigil_runtime::ChildClaims>>,
) -> Result<Running, StartupError> {
    // 1. The hardware decides what may configure the agent: then the configuration and
    //    policy (from measured initdata in attested modes, with its digest), and the mode.
    let t = Instant::now();
    let (loaded, mode) = configure(opts)?;
    let config = &loaded.config;
    let log = init_logging(opts, config);
    tracing::info!(
        source = %loaded.describe(),
        mode = ?mode,
        ms = ms(t),
        "step 1/5: configuration loaded"
    );

    // 2. The hardware's launch binding must equal the initdata digest.
    let t = Instant::now();
    let attested = match mode {
        Mode::Hardware(_) | Mode::Mock => {
            // load() gives attested configs only from initdata; never read its absence as
            // "unattested".
            let initdata = loaded.initdata.as_ref().ok_or_else(|| {
                fail("launch binding")("an attested mode without initdata".into())
            })?;
            let attester = attestation::check_launch_binding(
                mode,
                loaded.cmdline.value(attestation::CMDLINE_MOCK_BINDING),
                &initdata.digest,
            )
            .map_err(fail("launch binding"))?;
            tracing::info!(
                tee = ?attester.tee(),
                digest = %hex::encode(&initdata.digest),
                ms = ms(t),
                "step 2/5: launch binding matches the initdata"
            );
            Some((attester, initdata))
        }
        Mode::UnattestedOnTee(tee) => {
            attestation::check_no_launch_binding(tee).map_err(fail("launch binding"))?;
            tracing::warn!(tee = ?tee, "step 2/5: unattested mode on TEE hardware: the launch field is all zeros and the image allows it");
            None
        }
        Mode::Unattested => {
            tracing::warn!("step 2/5: unattested mode (tee = \"none\"): no launch binding check");
            None
        }
    };

    // 3. The tenant's signed policy from the KBS, through the boot's one KBS session.
    let t = Instant::now();
    let (initial, kbs) = match &attested {
        Some((attester, initdata)) => {
            let (initial, session) = tenant_policy(config, attester, initdata, t).await?;
            (Some(initial), Some(session))
        }
        None => {
            tracing::warn!("step 3/5: unattested mode: no KBS policy");
            (local_policy(&loaded).map_err(fail("load config"))?, None)
        }
    };

    // 4. The gate, compiled before anything can reach it.
    let t = Instant::now();
    let gate = Arc::new(compile_gate(config, opts, initial)?);
    let workload_access = workload::access(kbs.as_ref(), &gate);
    let admin = PolicyAdmin::new(config.policy.clone(), config.signer.clone(), gate.clone());
    let mut sandbox = vigil_runtime::Sandbox::new(vigil_runtime::SandboxConfig {
        fork_helper_log: Some(log),
        ..config.sandbox.clone()
    });
    if let Some(claims) = child_claims {
        sandbox = sandbox.with_child_claims(claims);
    }
    let images = image_service(&loaded, kbs.as_ref(), &gate)?;
    if let Some(images) = &images {
        sandbox = sandbox.with_guest_pull(vigil_runtime::GuestPull {
            images: images.clone(),
            pause_bundle: config.image.pause_bundle.clone(),
        });
    }
    let guest = vigil_guest::Guest::new(&config.guest);
    let api = AgentApi::new(guest, gate.clone(), admin)
        .with_sandbox(sandbox)
        .with_sealed_secrets(workload::sealed_secrets(config, workload_access.as_ref()))
        .with_images(images);
    let services = gate::protect(Arc::new(api).service_map(), gate.clone())
        .map_err(|e| fail("compile gate")(e.to_string()))?;
    tracing::info!(ms = ms(t), "step 4/5: gate compiled");

    // 5. Only now does anything listen.
    let t = Instant::now();
    let addr = opts
        .server_addr
        .clone()
        .unwrap_or_else(|| config.server_addr().to_string());
    let mut server = crate::server::listen(&addr, services)
        .await
        .map_err(|e| fail("open API")(e.to_string()))?;
    let workload_api = match workload::open(config, workload_access.as_ref(), gate.clone()) {
        Ok(api) => api,
        Err(e) => {
            let _ = server.shutdown().await;
            return Err(fail("open API")(e));
        }
    };
    tracing::info!(addr = %addr, ms = ms(t), "step 5/5: API open");
    Ok(Running {
        server,
        addr,
        gate,
        kbs,
        workload_api,
    })
}

/// Step 3 in attested modes: the boot's KBS session, and through it the tenant's signed
/// policy; initdata's `policy.rego` instead only if the KBS cannot be reached and the measured
/// config sets `policy_optional` (never after a refusal or a failed verification).
async fn tenant_policy(
    config: &Config,
    attester: &Arc<dyn vigil_attester::Attester>,
    initdata: &InitData,
    t: Instant,
) -> Result<(InitialPolicy, KbsSession), StartupError> {
    let signer = config
        .signer
        .as_ref()
        .ok_or_else(|| fail("KBS policy")("no [policy] signer".into()))?;
    let session = attestation::kbs_session(&config.attestation, attester.clone(), &initdata.toml)
        .map_err(fail("KBS policy"))?;
    let section = &config.attestation;
    let fetched =
        attestation::fetch_tenant_policy(section, &session, signer, config.policy.min_version)
            .await;
    let initial = match fetched {
        Ok(p) => {
            tracing::info!(version = p.version, digest = %p.digest, ms = ms(t), "step 3/5: tenant policy verified");
            let resource = section.policy_resource.as_deref().unwrap_or("");
            InitialPolicy {
                text: p.policy,
                version: Some(p.version),
                source: PolicySource::new(PolicyOrigin::Kbs, format!("KBS {resource}")),
            }
        }
        Err(PolicyFetchError::Unreachable(e)) if section.policy_optional => {
            let text = initdata.entry("policy.rego").ok_or_else(|| {
                fail("KBS policy")(format!(
                    "KBS unreachable: {e}; and initdata has no \"policy.rego\" to fall back to"
                ))
            })?;
            tracing::warn!(error = %e, ms = ms(t), "step 3/5: KBS unreachable; policy_optional: using initdata's policy.rego");
            InitialPolicy {
                text: text.to_string(),
                version: None,
                source: PolicySource::new(
                    PolicyOrigin::InitdataFallback,
                    format!("initdata policy.rego (KBS unreachable: {e})"),
                ),
            }
        }
        Err(e) => return Err(fail("KBS policy")(e.to_string())),
    };
    Ok((initial, session))
}

/// Step 1: the hardware and the image first, then the flags and the configuration source
/// they allow, the configuration itself, and the mode (see [`crate::mode`]).
fn configure(opts: &Options) -> Result<(Loaded, Mode), StartupError> {
    let platform = vigil_attester::platform::probe(&TeePaths::default())
        .map_err(|e| fail("platform")(format!("probing the TEE guest interfaces: {e}")))?;
    mode::check_flags(pid1::is_init(), &platform, &opts.security_flags())
        .map_err(fail("command line"))?;
    let image = ImageSettings::load(Path::new(IMAGE_SETTINGS)).map_err(fail("image"))?;
    let cmdline_path = opts.kernel_cmdline_path();
    let cmdline = KernelCmdline::read(cmdline_path)
        .map_err(|e| fail("load config")(format!("reading {}: {e}", cmdline_path.display())))?;
    let source = config_source(opts, &cmdline);
    mode::admit_source(&platform, &image, &source).map_err(fail("mode"))?;
    let loaded = load(source, cmdline, opts.config.as_deref()).map_err(fail("load config"))?;
    let mode = mode::decide(
        &platform,
        &image,
        &loaded.source,
        loaded.config.attestation.tee,
    )
    .map_err(fail("mode"))?;
    Ok((loaded, mode))
}

/// Guest image pull, when `[image]` is configured: the service, its `kbs:///` resources through
/// the boot's KBS session, and (attested) the image policy loaded in the background now, so
/// the first pull need not wait for it; a pull retries a failed load.
fn image_service(
    loaded: &Loaded,
    kbs: Option<&KbsSession>,
    gate: &Arc<Gate>,
) -> Result<Option<Arc<vigil_image::ImageService>>, StartupError> {
    let config = &loaded.config;
    if config.image_section_absent {
        return Ok(None);
    }
    let image = &config.image;
    let resources: Option<Arc<dyn vigil_image::ResourceSource>> = kbs
        .filter(|_| image.uses_kbs)
        .map(|s| Arc::new(crate::image::KbsResources(s.clone())) as _);
    let images = crate::image::service(image, resources.clone(), gate.clone())
        .map_err(|e| fail("image service")(format!("[image]: {e}")))?;
    let images = Arc::new(images);
    if matches!(image.settings.policy, vigil_image::PolicySource::Unset) {
        tracing::warn!("[image] has no policy: every image pull is refused");
    } else if resources.is_some() {
        let early = images.clone();
        tokio::spawn(async move {
            match early.load_trust().await {
                Ok(()) => tracing::info!("image policy fetched from the KBS and verified"),
                Err(e) => {
                    tracing::warn!(error = %e, "image policy not loaded yet (the first pull retries)")
                }
            }
        });
    }
    Ok(Some(images))
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
            .map_err(|e| fail(step)(format!("policy from {}: {e}", p.source.detail)))?;
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
    let gate = Gate::with_log(rules, log);
    if let Some(policy) = gate.policy() {
        gate.decision_log()
            .policy_event(&policy, &policy.source.detail);
    }
    Ok(gate)
}

fn log_policy_table(policy: &CompiledPolicy) {
    let table = policy.engine.table();
    let count = |c| table.iter().filter(|r| r.class == c).count();
    tracing::info!(
        source = %policy.source.detail,
        origin = policy.source.origin.as_str(),
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
    source: ConfigSource,
    /// The kernel command line the agent.* parameters were read from.
    cmdline: KernelCmdline,
}

impl Loaded {
    fn describe(&self) -> String {
        match &self.source {
            ConfigSource::Initdata { path, .. } => format!("initdata {}", path.display()),
            ConfigSource::File { path, .. } => path.display().to_string(),
            ConfigSource::None => "no config file: every endpoint is allowed".into(),
        }
    }
}

/// Where the configuration comes from: initdata (`--initdata`, else `agent.initdata=` on the
/// kernel command line), else a config file (`--config`, else `agent.config_file=`), else
/// none.
fn config_source(opts: &Options, cmdline: &KernelCmdline) -> ConfigSource {
    if let Some(path) = &opts.initdata {
        return ConfigSource::Initdata {
            path: path.clone(),
            via: "--initdata",
        };
    }
    if let Some(path) = cmdline.value(CMDLINE_INITDATA) {
        return ConfigSource::Initdata {
            path: path.into(),
            via: "agent.initdata=",
        };
    }
    if let Some(path) = &opts.config {
        return ConfigSource::File {
            path: path.clone(),
            via: "--config",
        };
    }
    match cmdline.value(CMDLINE_CONFIG_KEY) {
        Some(path) => ConfigSource::File {
            path: path.into(),
            via: "agent.config_file=",
        },
        None => ConfigSource::None,
    }
}

/// The config from `source`. With initdata the config is its `vigil.toml` entry, and no
/// flag may point elsewhere; a config file cannot select an attested mode.
fn load(
    source: ConfigSource,
    cmdline: KernelCmdline,
    config_flag: Option<&Path>,
) -> Result<Loaded, String> {
    let path = match &source {
        ConfigSource::Initdata { path, .. } => path.clone(),
        ConfigSource::File { path, .. } => {
            let config = Config::load(path).map_err(|e| e.to_string())?;
            return plain_config(config, source, cmdline);
        }
        ConfigSource::None => return plain_config(Config::without_file(), source, cmdline),
    };
    if let Some(flag) = config_flag {
        return Err(format!(
            "--config {} conflicts with initdata {}: the configuration comes from initdata's \"{INITDATA_CONFIG_KEY}\"",
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
    let config_name = PathBuf::from(format!("{}#{INITDATA_CONFIG_KEY}", path.display()));
    let config = Config::parse(text, &config_name).map_err(|e| e.to_string())?;
    if config.attestation.tee.is_attested() {
        if config.policy.file.is_some() || config.policy.kata_default_fallback {
            return Err(format!(
                "{}: [policy] file / kata_default_fallback are not allowed in attested modes: the policy comes from the KBS (or initdata's policy.rego)",
                config_name.display()
            ));
        }
        if config.policy.signer.is_none() {
            return Err(format!(
                "{}: [policy] signer is required in attested modes",
                config_name.display()
            ));
        }
    }
    Ok(Loaded {
        config,
        initdata: Some(initdata),
        source,
        cmdline,
    })
}

/// A config from a file (or none): never an attested one, which must be measured.
fn plain_config(
    config: Config,
    source: ConfigSource,
    cmdline: KernelCmdline,
) -> Result<Loaded, String> {
    if config.attestation.tee.is_attested() {
        return Err(format!(
            "[attestation] tee = {:?} needs initdata (--initdata or {CMDLINE_INITDATA}=PATH): an attested config must be measured",
            config.attestation.tee
        ));
    }
    Ok(Loaded {
        config,
        initdata: None,
        source,
        cmdline,
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
            source: PolicySource::new(PolicyOrigin::File, path.display().to_string()),
        }));
    }
    Ok(loaded
        .initdata
        .as_ref()
        .and_then(|d| d.entry("policy.rego"))
        .map(|text| InitialPolicy {
            text: text.to_string(),
            version: None,
            source: PolicySource::new(PolicyOrigin::Initdata, "initdata policy.rego"),
        }))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Installs the agent's log; returns how the fork helper is to log the same way (see
/// [`init_fork_helper_logging`]).
fn init_logging(opts: &Options, config: &Config) -> String {
    let level = opts
        .log_level
        .or(config.agent.log_level)
        .unwrap_or_default();
    let format = opts
        .log_format
        .or(config.agent.log_format)
        .unwrap_or_default();
    install_logging(level, format);
    let format = match format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    format!("{},{format}", level.as_str())
}

/// The fork helper's log (`vigil_runtime::fork_helper::run_if_helper`): `spec` is what
/// [`init_logging`] returned in the agent. The container library logs from the processes the
/// helper forks; with this, those lines reach the agent's log (never a workload's stdio, see
/// `log_sink`). A spec it cannot read leaves the helper silent rather than guessing a level.
pub fn init_fork_helper_logging(spec: &str) {
    use clap::ValueEnum;
    let Some((level, format)) = spec.split_once(',') else {
        return;
    };
    if let (Ok(level), Ok(format)) = (
        LogLevel::from_str(level, false),
        LogFormat::from_str(format, false),
    ) {
        install_logging(level, format);
    }
}

fn install_logging(level: LogLevel, format: LogFormat) {
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
