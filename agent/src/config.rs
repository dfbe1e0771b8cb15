//! The agent's configuration file (TOML) and where it comes from.
//!
//! One file, one meaning per key, unknown keys rejected. Kata-compatible where Kata has the
//! key: `[endpoints] allowed = [...]` follows Kata 2.3's allow-list semantics, and the file is
//! found through `--config` or the kernel parameter `agent.config_file=PATH`.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use vigil_protos::ENDPOINTS;

use crate::attestation::AttestationSection;
use crate::cmdline::KernelCmdline;
use crate::image::{ImageConfig, ImageSection};
use crate::policy::PolicySection;

/// Kernel parameter naming the config file, as Kata's agent reads it.
pub const CMDLINE_CONFIG_KEY: &str = "agent.config_file";
/// Default listen address: vsock, any CID, port 1024 (Kata's).
pub const DEFAULT_SERVER_ADDR: &str = "vsock://-1:1024";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: [endpoints] allowed: unknown endpoint {name:?}{hint}")]
    UnknownEndpoint {
        path: PathBuf,
        name: String,
        hint: String,
    },
    #[error("cannot read kernel command line {path}: {source}")]
    Cmdline {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// The file as written. Absent sections take defaults, except `[endpoints]` (see [`AllowList`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub agent: AgentSection,
    pub endpoints: Option<EndpointsSection>,
    pub policy: Option<PolicySection>,
    pub attestation: Option<AttestationSection>,
    #[serde(default)]
    pub sandbox: SandboxSection,
    #[serde(default)]
    pub guest: GuestSection,
    pub workload_api: Option<crate::workload_api::WorkloadApiSection>,
    pub sealed_secrets: Option<crate::sealed_secrets::SealedSecretsSection>,
    pub image: Option<ImageSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// `vsock://CID:PORT` or `unix:///path`.
    pub server_addr: Option<String>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsSection {
    #[serde(default)]
    pub allowed: Vec<String>,
}

/// `[sandbox]`: where the container runtime keeps sandboxes and what specs may ask of it.
/// Every key is optional; the defaults are the strict ones.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// Where Kata's guest directories are (`shared/containers/`, the only place CopyFile
    /// writes, `sandbox/`, one per container): the paths Kata's runtimes send. Absolute;
    /// default `/run/kata-containers`.
    pub kata_root: Option<PathBuf>,
    /// For hosts that are not Kata's: the same directories under `<run_root>/<sandbox id>`
    /// instead of `kata_root`. Absolute; unset by default; not together with `kata_root`.
    pub run_root: Option<PathBuf>,
    /// Whether OCI hooks (in container specs, or CreateSandbox's `guest_hook_path`) are
    /// accepted. Hooks run host-chosen programs in the guest, so they are refused by default.
    pub allow_hooks: Option<bool>,
    /// Bytes of unread stdout/stderr kept per process stream before the oldest is dropped.
    pub output_limit_bytes: Option<usize>,
    /// Cgroup path (relative) under which each container gets `<cgroup_parent>/<container id>`.
    pub cgroup_parent: Option<String>,
    /// The capability bounding set of every container process (`CAP_NET_ADMIN` or
    /// `NET_ADMIN`); a spec asking for more is refused. Default: containerd's default set.
    pub capabilities: Option<Vec<String>>,
    /// Whether privileged-style specs are accepted (device-cgroup wildcards, writable sysfs and
    /// cgroup mounts, no default masked paths, shared propagation). Default false.
    pub allow_privileged: Option<bool>,
    /// Guest device paths (under /dev) containers may be given besides the standard set.
    /// The guest's memory, its I/O ports and TEE devices are refused here.
    pub devices: Option<Vec<PathBuf>>,
    /// Whether CopyFile keeps setuid, setgid and sticky bits. Default false (cleared).
    pub allow_setuid_copy: Option<bool>,
}

/// `[guest]`: guest operations the host may ask for only with the measured config's consent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSection {
    /// AddSwap / AddSwapPath: swapped-out pages go to a host-readable disk, outside the TEE's
    /// protection, so swap is refused unless this is true.
    pub allow_swap: Option<bool>,
}

/// Bounds for `output_limit_bytes`: below 4 KiB a single read chunk overflows it; above
/// 256 MiB one chatty process could take the guest's memory.
const OUTPUT_LIMIT_RANGE: std::ops::RangeInclusive<usize> = 4096..=256 << 20;

impl SandboxSection {
    /// The runtime's settings, or a message naming the bad key.
    fn to_runtime_config(&self) -> Result<vigil_runtime::SandboxConfig, String> {
        let mut c = vigil_runtime::SandboxConfig::default();
        let plain_root = |key: &str, root: &Path| {
            let plain = root
                .components()
                .all(|p| matches!(p, Component::RootDir | Component::Normal(_)));
            if !root.is_absolute() || !plain || root.parent().is_none() {
                return Err(format!(
                    "[sandbox] {key}: {} must be an absolute path below / without \"..\" or \".\"",
                    root.display()
                ));
            }
            Ok(root.to_path_buf())
        };
        match (&self.kata_root, &self.run_root) {
            (Some(_), Some(_)) => {
                return Err("[sandbox] kata_root, run_root: set one of them, not both \
                            (run_root puts Kata's directories under <run_root>/<sandbox id>)"
                    .into())
            }
            (Some(k), None) => c.kata_root = plain_root("kata_root", k)?,
            (None, Some(r)) => c.run_root = Some(plain_root("run_root", r)?),
            (None, None) => {}
        }
        if let Some(allow) = self.allow_hooks {
            c.allow_hooks = allow;
        }
        if let Some(limit) = self.output_limit_bytes {
            if !OUTPUT_LIMIT_RANGE.contains(&limit) {
                return Err(format!(
                    "[sandbox] output_limit_bytes: {limit} is outside {}..={}",
                    OUTPUT_LIMIT_RANGE.start(),
                    OUTPUT_LIMIT_RANGE.end()
                ));
            }
            c.output_limit = limit;
        }
        if let Some(parent) = &self.cgroup_parent {
            let valid_segment = |s: &str| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            };
            if !parent.split('/').all(valid_segment) {
                return Err(format!(
                    "[sandbox] cgroup_parent: {parent:?} must be a relative cgroup path of \
                     names made of letters, digits, '-', '_' and '.'"
                ));
            }
            c.cgroup_parent = parent.clone();
        }
        if let Some(caps) = &self.capabilities {
            let mut set = Vec::with_capacity(caps.len());
            for name in caps {
                let cap = vigil_runtime::capability_name(name)
                    .map_err(|e| format!("[sandbox] capabilities: {e}"))?;
                if !set.contains(&cap) {
                    set.push(cap);
                }
            }
            c.capabilities = set;
        }
        if let Some(allow) = self.allow_privileged {
            c.allow_privileged = allow;
        }
        if let Some(devices) = &self.devices {
            for d in devices {
                vigil_runtime::check_device_path(d)
                    .map_err(|e| format!("[sandbox] devices: {e}"))?;
            }
            c.devices = devices.clone();
        }
        if let Some(allow) = self.allow_setuid_copy {
            c.allow_setuid_copy = allow;
        }
        Ok(c)
    }
}

pub use crate::gate::AllowList;

/// The effective configuration: the file (if any) after validation.
#[derive(Debug)]
pub struct Config {
    /// Where it came from; `None` when no config file was found.
    pub source: Option<PathBuf>,
    pub agent: AgentSection,
    pub allow_list: AllowList,
    /// `[policy]`; absent: no policy, the allow-list alone decides.
    pub policy: PolicySection,
    /// `[attestation]`; absent: unattested (`tee = "none"`).
    pub attestation: AttestationSection,
    /// `[policy] signer`, parsed when the config loads.
    pub signer: Option<vigil_kbc::envelope::VerifyingKey>,
    /// `[sandbox]`, validated into the container runtime's settings.
    pub sandbox: vigil_runtime::SandboxConfig,
    /// `[guest]`, with the pod's directories.
    pub guest: vigil_guest::GuestConfig,
    /// `[workload_api]`; absent: the workload API is off.
    pub workload_api: Option<crate::workload_api::WorkloadApiConfig>,
    /// `[sealed_secrets]`; absent: a sealed value in a container fails CreateContainer.
    pub sealed_secrets: Option<crate::sealed_secrets::SealedSecretsConfig>,
    /// `[image]`, validated: guest image pull (no policy: every pull refused).
    pub image: ImageConfig,
    /// No `[image]` section: guest pull is refused, naming the section.
    pub image_section_absent: bool,
}

impl Config {
    /// The configuration used when there is no file: everything allowed, as Kata.
    pub fn without_file() -> Config {
        Config {
            source: None,
            agent: AgentSection::default(),
            allow_list: AllowList::All,
            policy: PolicySection::default(),
            attestation: AttestationSection::default(),
            signer: None,
            guest: guest_config(
                &GuestSection::default(),
                &vigil_runtime::SandboxConfig::default(),
            ),
            sandbox: vigil_runtime::SandboxConfig::default(),
            workload_api: None,
            sealed_secrets: None,
            image: ImageSection::default()
                .validate(false, &[&vigil_runtime::SandboxConfig::default().kata_root])
                .expect("the default [image] section is valid"),
            image_section_absent: true,
        }
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        let allow_list = match file.endpoints {
            None => AllowList::Only(Vec::new()),
            Some(section) if section.allowed.iter().any(|n| n == "*") => {
                if section.allowed.len() > 1 {
                    return Err(ConfigError::Parse {
                        path: path.to_owned(),
                        message: "[endpoints] allowed: \"*\" must be the only entry".into(),
                    });
                }
                AllowList::All
            }
            Some(section) => {
                for name in &section.allowed {
                    check_endpoint_name(name, path)?;
                }
                AllowList::Only(section.allowed)
            }
        };
        let policy = file.policy.unwrap_or_default();
        let signer = policy.validate().map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let attestation = file.attestation.unwrap_or_default();
        attestation
            .validate()
            .map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?;
        let sandbox = file
            .sandbox
            .to_runtime_config()
            .map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?;
        // Both hand out secrets from the attested session, and only a measured config may
        // decide what workloads get.
        let attested = attestation.tee.is_attested();
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let workload_api = attested_only(
            file.workload_api.as_ref(),
            "workload_api",
            attested,
            crate::workload_api::WorkloadApiSection::validate,
        )
        .map_err(parse_err)?;
        let sealed_secrets = attested_only(
            file.sealed_secrets.as_ref(),
            "sealed_secrets",
            attested,
            crate::sealed_secrets::SealedSecretsSection::validate,
        )
        .map_err(parse_err)?;
        let image_section_absent = file.image.is_none();
        let pod_dirs: Vec<&Path> = std::iter::once(sandbox.kata_root.as_path())
            .chain(sandbox.run_root.as_deref())
            .collect();
        let image = file
            .image
            .unwrap_or_default()
            .validate(attestation.tee.is_attested(), &pod_dirs)
            .map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?;
        Ok(Config {
            source: Some(path.to_owned()),
            agent: file.agent,
            allow_list,
            policy,
            attestation,
            signer,
            guest: guest_config(&file.guest, &sandbox),
            sandbox,
            workload_api,
            sealed_secrets,
            image,
            image_section_absent,
        })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Finds and loads the config: `--config`, else `agent.config_file=` on the kernel command
    /// line, else none (all endpoints allowed). A named file that cannot be read is an error,
    /// never "no config": that would silently allow everything.
    pub fn locate(flag: Option<&Path>, cmdline_path: &Path) -> Result<Config, ConfigError> {
        if let Some(path) = flag {
            return Config::load(path);
        }
        let cmdline = KernelCmdline::read(cmdline_path).map_err(|source| ConfigError::Cmdline {
            path: cmdline_path.to_owned(),
            source,
        })?;
        match cmdline.value(CMDLINE_CONFIG_KEY) {
            Some(path) => Config::load(Path::new(path)),
            None => Ok(Config::without_file()),
        }
    }

    pub fn server_addr(&self) -> &str {
        self.agent
            .server_addr
            .as_deref()
            .unwrap_or(DEFAULT_SERVER_ADDR)
    }
}

fn guest_config(
    g: &GuestSection,
    sandbox: &vigil_runtime::SandboxConfig,
) -> vigil_guest::GuestConfig {
    vigil_guest::GuestConfig {
        allow_swap: g.allow_swap.unwrap_or(false),
        pod_dirs: sandbox.pod_dirs(),
    }
}

/// A section only attested modes may have, validated; in an unattested config, an error.
fn attested_only<T, V>(
    section: Option<&T>,
    name: &str,
    attested: bool,
    validate: impl Fn(&T) -> Result<V, String>,
) -> Result<Option<V>, String> {
    match section {
        None => Ok(None),
        Some(_) if !attested => Err(format!(
            "[{name}] needs an attested mode ([attestation] tee): it hands out secrets from the attested KBS session"
        )),
        Some(s) => validate(s).map(Some),
    }
}

/// Kata silently ignored misspelt names, which left an endpoint blocked (or, worse, made the
/// operator believe one was blocked). We refuse them and suggest the nearest valid name.
fn check_endpoint_name(name: &str, path: &Path) -> Result<(), ConfigError> {
    if ENDPOINTS.iter().any(|e| e.request == name) {
        return Ok(());
    }
    let nearest = ENDPOINTS
        .iter()
        .map(|e| (strsim::levenshtein(name, e.request), e.request))
        .min()
        .filter(|(distance, _)| *distance <= name.len().max(4) / 2);
    let hint = match nearest {
        Some((_, valid)) => format!(" (did you mean {valid:?}?)"),
        None => " (names are request message names such as \"CreateContainerRequest\")".into(),
    };
    Err(ConfigError::UnknownEndpoint {
        path: path.to_owned(),
        name: name.to_owned(),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn file_without_endpoints_section_allows_nothing() {
        let c = parse("[agent]\nlog_level = \"debug\"\n").unwrap();
        assert_eq!(c.allow_list, AllowList::Only(vec![]));
        assert_eq!(c.agent.log_level, Some(LogLevel::Debug));
    }

    #[test]
    fn star_allows_all_and_must_stand_alone() {
        assert_eq!(
            parse("[endpoints]\nallowed = [\"*\"]").unwrap().allow_list,
            AllowList::All
        );
        let err = parse("[endpoints]\nallowed = [\"*\", \"CreateContainerRequest\"]").unwrap_err();
        assert!(err.to_string().contains("must be the only entry"), "{err}");
    }

    #[test]
    fn unknown_endpoint_is_named_with_a_suggestion() {
        let err = parse("[endpoints]\nallowed = [\"CreateContainerRequst\"]").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"CreateContainerRequst\""), "{msg}");
        assert!(
            msg.contains("did you mean \"CreateContainerRequest\""),
            "{msg}"
        );
        // The method name is not the request name: say what names look like.
        let msg = parse("[endpoints]\nallowed = [\"xyz\"]")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("request message names"), "{msg}");
    }

    #[test]
    fn unknown_key_and_bad_toml_name_key_and_line() {
        let msg = parse("[agent]\nserver_adr = \"unix:///x\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("server_adr"), "{msg}");
        let msg = parse("[agent]\n\nlog_level = \n").unwrap_err().to_string();
        assert!(msg.contains("line 3"), "{msg}");
        let msg = parse("[endpoint]\nallowed = []\n").unwrap_err().to_string();
        assert!(msg.contains("endpoint"), "{msg}");
    }

    #[test]
    fn kernel_cmdline_names_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("my config.toml");
        std::fs::write(&cfg, "[endpoints]\nallowed = [\"GuestDetailsRequest\"]\n").unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(
            &cmdline,
            format!(
                "console=ttyS0 quiet agent.config_file=\"{}\" agent.log=debug\n",
                cfg.display()
            ),
        )
        .unwrap();
        let c = Config::locate(None, &cmdline).unwrap();
        assert_eq!(c.source.as_deref(), Some(cfg.as_path()));
        assert_eq!(
            c.allow_list,
            AllowList::Only(vec!["GuestDetailsRequest".into()])
        );

        // No parameter: no config, all allowed.
        std::fs::write(&cmdline, "console=ttyS0 quiet\n").unwrap();
        assert_eq!(
            Config::locate(None, &cmdline).unwrap().allow_list,
            AllowList::All
        );

        // A named file that is missing is an error, not "no config".
        std::fs::write(&cmdline, "agent.config_file=/nonexistent/vigil.toml").unwrap();
        let msg = Config::locate(None, &cmdline).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/vigil.toml"), "{msg}");

        // An unreadable command line is an error too.
        assert!(Config::locate(None, &dir.path().join("missing")).is_err());
    }

    #[test]
    fn sample_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/sample-configs");
        let conf = Config::load(&dir.join("confidential.toml")).unwrap();
        let AllowList::Only(names) = &conf.allow_list else {
            panic!("confidential sample must list endpoints");
        };
        for forbidden in [
            "ExecProcessRequest",
            "ReadStreamRequest",
            "CopyFileRequest",
            "SetPolicyRequest",
        ] {
            assert!(!names.iter().any(|n| n == forbidden), "{forbidden} allowed");
        }
        assert!(names.iter().any(|n| n == "CreateContainerRequest"));
        let all = Config::load(&dir.join("all-endpoints.toml")).unwrap();
        assert_eq!(all.allow_list, AllowList::All);
    }

    #[test]
    fn workload_sections_only_in_attested_configs() {
        for section in [
            "[workload_api]\nlisten = \"127.0.0.1:8006\"\n",
            "[sealed_secrets]\nsigner_resources = [\"a/b/c\"]\n",
        ] {
            let msg = parse(section).unwrap_err().to_string();
            assert!(msg.contains("needs an attested mode"), "{msg}");
        }
    }

    #[test]
    fn sandbox_section_sets_the_runtime_and_names_bad_keys() {
        let c = parse("").unwrap();
        let d = vigil_runtime::SandboxConfig::default();
        assert_eq!(c.sandbox.run_root, d.run_root);
        assert_eq!(c.sandbox.kata_root, Path::new("/run/kata-containers"));
        assert!(c.sandbox.run_root.is_none());
        assert!(!c.sandbox.allow_hooks, "hooks must be refused by default");

        assert_eq!(
            c.sandbox.capabilities.len(),
            vigil_runtime::DEFAULT_CAPABILITIES.len()
        );
        assert!(!c.sandbox.allow_privileged && !c.sandbox.allow_setuid_copy);
        assert!(c.sandbox.devices.is_empty());

        let c = parse(
            "[sandbox]\nrun_root = \"/run/pods\"\nallow_hooks = true\n\
             output_limit_bytes = 65536\ncgroup_parent = \"kubepods/vigil\"\n\
             capabilities = [\"CAP_KILL\", \"NET_ADMIN\", \"CAP_KILL\"]\n\
             allow_privileged = true\ndevices = [\"/dev/fuse\"]\nallow_setuid_copy = true\n",
        )
        .unwrap();
        assert_eq!(c.sandbox.capabilities, ["CAP_KILL", "CAP_NET_ADMIN"]);
        assert!(c.sandbox.allow_privileged && c.sandbox.allow_setuid_copy);
        assert_eq!(c.sandbox.devices, [PathBuf::from("/dev/fuse")]);
        assert_eq!(c.sandbox.run_root.as_deref(), Some(Path::new("/run/pods")));
        let k = parse("[sandbox]\nkata_root = \"/tmp/kata\"\n").unwrap();
        assert_eq!(k.sandbox.kata_root, Path::new("/tmp/kata"));
        assert!(c.sandbox.allow_hooks);
        assert_eq!(c.sandbox.output_limit, 65536);
        assert_eq!(c.sandbox.cgroup_parent, "kubepods/vigil");

        for (text, key) in [
            ("run_root = \"run/pods\"", "run_root"),
            ("run_root = \"/run/../etc\"", "run_root"),
            ("run_root = \"/\"", "run_root"),
            ("kata_root = \"kata\"", "kata_root"),
            (
                "kata_root = \"/k\"\nrun_root = \"/r\"",
                "kata_root, run_root",
            ),
            ("output_limit_bytes = 10", "output_limit_bytes"),
            ("output_limit_bytes = 1099511627776", "output_limit_bytes"),
            ("cgroup_parent = \"/vigil\"", "cgroup_parent"),
            ("cgroup_parent = \"a/../b\"", "cgroup_parent"),
            ("cgroup_parent = \"\"", "cgroup_parent"),
            ("allow_hook = true", "allow_hook"),
            (
                "capabilities = [\"CAP_FLY\"]",
                "[sandbox] capabilities: \"CAP_FLY\"",
            ),
            ("capabilities = \"CAP_KILL\"", "capabilities"),
            (
                "devices = [\"/dev/sev-guest\"]",
                "[sandbox] devices: /dev/sev-guest",
            ),
            ("devices = [\"/dev/mem\"]", "[sandbox] devices: /dev/mem"),
            (
                "devices = [\"/dev/tdx_guest\"]",
                "[sandbox] devices: /dev/tdx_guest",
            ),
            (
                "devices = [\"/etc/shadow\"]",
                "[sandbox] devices: /etc/shadow",
            ),
            ("allow_privileged = \"yes\"", "allow_privileged"),
        ] {
            let msg = parse(&format!("[sandbox]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }
}
