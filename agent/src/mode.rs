//! How the agent runs: decided from the hardware first, the measured image second, and the
//! (not yet verified) configuration last.
//!
//! The rule (README "Attestation", SECURITY.md "Start-up"):
//!
//! - **TEE hardware present** (`/dev/sev-guest`, `/dev/tdx_guest`, or configfs-tsm with a
//!   registered provider): the configuration must come from initdata, whose digest the
//!   launch field must hold, and `tee` must be `snp`/`tdx` matching the hardware, or `auto`.
//!   `tee = "none"`, `tee = "mock"`, a missing initdata and a config file (`--config`,
//!   `agent.config_file=`) are start-up errors, with one exception: when the image's
//!   [`IMAGE_SETTINGS`] sets `allow_unattested = true` **and** the launch field is all zeros
//!   (the host launched the VM without initdata, which any verifier sees), the agent runs
//!   unattested as Kata would.
//! - **No TEE hardware**: `none` (Kata-compatible) as before; `mock` only when initdata's
//!   config names it; `snp`/`tdx`/`auto` are errors (auto never falls back to the mock).
//! - **Flags**: as PID 1 (its arguments come from the kernel command line, which the host
//!   writes) and whenever TEE hardware is present, only `--log-level` and `--log-format`
//!   are accepted; every other flag is a start-up error naming it.
//!
//! Everything here is a pure function of its inputs; the inputs come from
//! [`vigil_attester::platform::probe`] on the real kernel paths and from the fixed path
//! [`IMAGE_SETTINGS`], never from a flag, environment variable or kernel parameter.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vigil_attester::platform::Platform;
use vigil_attester::DetectedTee;

/// Kernel parameter naming the initdata file or block device.
pub const CMDLINE_INITDATA: &str = "agent.initdata";

/// `[attestation] tee` in the config file: what the configuration asks for, which the rule
/// below holds against the hardware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeMode {
    /// Unattested, Kata-compatible: local config and policy only.
    #[default]
    None,
    /// The mock TEE (development and CI only); accepted only when named.
    Mock,
    Snp,
    Tdx,
    /// SNP or TDX, whichever the devices show; never the mock.
    Auto,
}

impl TeeMode {
    pub fn is_attested(self) -> bool {
        self != TeeMode::None
    }
}

/// The guest image's own settings. Part of the image, so trusted exactly as much as the
/// agent binary beside it: both are covered by the launch measurement only when the image
/// is (SEV-SNP measured direct boot with the kernel, initrd and command line hashed; TDX
/// with the initrd measured; or a dm-verity root whose hash the measured command line pins).
pub const IMAGE_SETTINGS: &str = "/etc/vigil/image.toml";

/// `/etc/vigil/image.toml`. A missing file means the strict defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSettings {
    /// On TEE hardware, run unattested (Kata-compatible config and policy) when the launch
    /// field is all zeros. Off: TEE hardware always means attested operation.
    #[serde(default)]
    pub allow_unattested: bool,
}

impl ImageSettings {
    /// Reads `path`; absent is the defaults, any other read or parse error is an error.
    pub fn load(path: &Path) -> Result<ImageSettings, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ImageSettings::default())
            }
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        toml::from_str(&text).map_err(|e| {
            format!(
                "{}: {}",
                path.display(),
                e.to_string().trim_end().replace('\n', " | ")
            )
        })
    }
}

/// Where the configuration comes from, found before it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Initdata, from `via` (`--initdata` or the kernel parameter `agent.initdata=`).
    Initdata { path: PathBuf, via: &'static str },
    /// A plain config file, from `via` (`--config` or `agent.config_file=`).
    File { path: PathBuf, via: &'static str },
    /// No configuration: every endpoint allowed, as Kata.
    None,
}

impl ConfigSource {
    fn describe(&self) -> String {
        match self {
            ConfigSource::Initdata { path, via } => format!("initdata {} ({via})", path.display()),
            ConfigSource::File { path, via } => format!("config file {} ({via})", path.display()),
            ConfigSource::None => "no initdata and no config file".into(),
        }
    }
}

/// How the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TEE hardware: the launch field must hold the initdata digest; then the KBS.
    Hardware(DetectedTee),
    /// The mock TEE (no TEE hardware present; named by initdata's config).
    Mock,
    /// Unattested, on a machine without TEE hardware (Kata-compatible).
    Unattested,
    /// Unattested on TEE hardware, which the image allows only while the launch field is
    /// all zeros: step 2 reads the field and refuses anything else.
    UnattestedOnTee(DetectedTee),
}

/// The flags that may be given when the command line is restricted.
pub const ALWAYS_ACCEPTED_FLAGS: &str = "--log-level and --log-format";

/// The command line is restricted as PID 1 and on TEE hardware: `given` (the security-
/// relevant flags present, by name) must then be empty.
pub fn check_flags(pid1: bool, platform: &Platform, given: &[&str]) -> Result<(), String> {
    if given.is_empty() {
        return Ok(());
    }
    let why = if pid1 {
        "the agent is PID 1, so its arguments come from the kernel command line, which the host sets".to_string()
    } else if platform.has_tee() {
        format!(
            "TEE hardware is present ({}), where settings and inputs come only from measured initdata",
            platform.describe()
        )
    } else {
        return Ok(());
    };
    Err(format!(
        "{} refused: {why}; only {ALWAYS_ACCEPTED_FLAGS} are accepted",
        given.join(", ")
    ))
}

/// Before the configuration is read: on TEE hardware only initdata may supply it, unless
/// the image allows unattested operation (then step 2 still requires an all-zero field).
pub fn admit_source(
    platform: &Platform,
    image: &ImageSettings,
    source: &ConfigSource,
) -> Result<(), String> {
    if !platform.has_tee() || image.allow_unattested {
        return Ok(());
    }
    match source {
        ConfigSource::Initdata { .. } => Ok(()),
        other => Err(format!(
            "TEE hardware is present ({}) but the configuration would come from {}: on TEE \
             hardware initdata is mandatory (kernel parameter {}=PATH), so that its digest in \
             the launch field covers it",
            platform.describe(),
            other.describe(),
            CMDLINE_INITDATA
        )),
    }
}

/// After the configuration is read: the mode for its `tee`.
pub fn decide(
    platform: &Platform,
    image: &ImageSettings,
    source: &ConfigSource,
    tee: TeeMode,
) -> Result<Mode, String> {
    if !platform.has_tee() {
        return match tee {
            TeeMode::None => Ok(Mode::Unattested),
            // load() already refuses an attested config that is not initdata's.
            TeeMode::Mock => Ok(Mode::Mock),
            TeeMode::Snp | TeeMode::Tdx | TeeMode::Auto => Err(format!(
                "[attestation] tee = {tee:?} but this VM has no TEE guest interface \
                 (/dev/sev-guest, /dev/tdx_guest, configfs-tsm); auto never falls back to the \
                 mock: for development or CI without a TEE, select tee = \"mock\" explicitly"
            )),
        };
    }
    let found = platform.describe();
    if tee == TeeMode::Mock {
        return Err(format!(
            "[attestation] tee = \"mock\" is refused: TEE hardware is present ({found}); the \
             mock TEE is only for machines without one"
        ));
    }
    let hardware = platform.tee().map_err(|e| e.to_string())?;
    match (tee, hardware) {
        (TeeMode::None, Some(kind)) if image.allow_unattested => Ok(Mode::UnattestedOnTee(kind)),
        (TeeMode::None, _) => Err(format!(
            "TEE hardware is present ({found}) but {} selects unattested mode (tee = \"none\"): \
             on TEE hardware the agent runs attested, unless the image's {IMAGE_SETTINGS} sets \
             allow_unattested = true (it does not) and the launch field is all zeros",
            source.describe()
        )),
        (TeeMode::Auto, Some(kind)) => Ok(Mode::Hardware(kind)),
        (TeeMode::Snp, Some(DetectedTee::Snp)) => Ok(Mode::Hardware(DetectedTee::Snp)),
        (TeeMode::Tdx, Some(DetectedTee::Tdx)) => Ok(Mode::Hardware(DetectedTee::Tdx)),
        (wanted, _) => Err(format!(
            "[attestation] tee = {wanted:?} does not match the TEE hardware present ({found})"
        )),
    }
}

/// Step 2 of [`Mode::UnattestedOnTee`]: the launch field must be all zeros, i.e. the host
/// launched the VM without initdata. Anything else means a digest is bound, and evidence
/// from this VM would vouch for a configuration the agent would not be running.
pub fn check_unbound_field(field: &[u8]) -> Result<(), String> {
    if field.is_empty() {
        return Err("the launch field is empty".into());
    }
    if field.iter().all(|&b| b == 0) {
        return Ok(());
    }
    Err(format!(
        "the launch field holds {}: the host launched this VM with initdata bound, so it must \
         run attested with that initdata; unattested mode is refused",
        hex::encode(field)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_attester::platform::TeeInterface;

    fn platforms() -> Vec<(&'static str, Platform)> {
        let sev = TeeInterface::SevGuestDevice("/dev/sev-guest".into());
        let tdx = TeeInterface::TdxGuestDevice("/dev/tdx_guest".into());
        let tsm = |p: &str| TeeInterface::TsmReport {
            root: "/sys/kernel/config/tsm/report".into(),
            provider: p.into(),
        };
        vec![
            ("none", Platform::default()),
            ("sev device", Platform::with_interfaces(vec![sev.clone()])),
            ("tdx device", Platform::with_interfaces(vec![tdx.clone()])),
            (
                "tsm sev_guest",
                Platform::with_interfaces(vec![tsm("sev_guest")]),
            ),
            (
                "tsm tdx_guest",
                Platform::with_interfaces(vec![tsm("tdx_guest")]),
            ),
            (
                "sev device + tsm",
                Platform::with_interfaces(vec![sev.clone(), tsm("sev_guest")]),
            ),
            ("tsm unknown", Platform::with_interfaces(vec![tsm("other")])),
            ("sev + tdx", Platform::with_interfaces(vec![sev, tdx])),
        ]
    }

    fn sources() -> Vec<ConfigSource> {
        vec![
            ConfigSource::Initdata {
                path: "/run/initdata".into(),
                via: "agent.initdata=",
            },
            ConfigSource::File {
                path: "/etc/vigil/agent.toml".into(),
                via: "agent.config_file=",
            },
            ConfigSource::None,
        ]
    }

    const TEES: [TeeMode; 5] = [
        TeeMode::None,
        TeeMode::Mock,
        TeeMode::Snp,
        TeeMode::Tdx,
        TeeMode::Auto,
    ];

    /// What step 2 does for a mode, given the launch field and the initdata digest.
    fn step2(mode: Mode, field: &[u8], digest: &[u8]) -> Result<(), String> {
        match mode {
            Mode::Hardware(_) => {
                vigil_attester::binding::check(digest, field).map_err(|e| e.to_string())
            }
            Mode::UnattestedOnTee(_) => check_unbound_field(field),
            Mode::Mock | Mode::Unattested => Ok(()),
        }
    }

    /// Every combination of hardware, image setting, config source, `tee` and launch field:
    /// the outcome must obey the documented rule.
    #[test]
    fn every_combination_follows_the_rule() {
        let digest = [0xAB; 32];
        let fields: [(&str, Vec<u8>); 3] = [
            ("zeros", vec![0; 32]),
            ("digest", digest.to_vec()),
            ("other", vec![0xCD; 32]),
        ];
        let mut ran_on_tee = 0;
        for (pname, platform) in platforms() {
            for allow in [false, true] {
                let image = ImageSettings {
                    allow_unattested: allow,
                };
                for source in sources() {
                    // load() refuses attested configs without initdata before decide().
                    for tee in TEES {
                        if tee.is_attested() && !matches!(source, ConfigSource::Initdata { .. }) {
                            continue;
                        }
                        for (fname, field) in &fields {
                            let case = format!(
                                "{pname}, allow={allow}, {source:?}, {tee:?}, field {fname}"
                            );
                            let outcome = admit_source(&platform, &image, &source)
                                .and_then(|()| decide(&platform, &image, &source, tee))
                                .and_then(|m| step2(m, field, &digest).map(|()| m));
                            if !platform.has_tee() {
                                let expect = match tee {
                                    TeeMode::None => Some(Mode::Unattested),
                                    TeeMode::Mock => Some(Mode::Mock),
                                    _ => None,
                                };
                                assert_eq!(outcome.ok(), expect, "{case}");
                                continue;
                            }
                            let kind = platform.tee().ok().flatten();
                            // On TEE hardware the agent runs only (a) attested, on the
                            // hardware's own TEE, from initdata whose digest the field
                            // holds, or (b) unattested with an all-zero field where the
                            // image allows it. Never mock, never plain unattested.
                            let attested_ok = kind.is_some()
                                && matches!(source, ConfigSource::Initdata { .. })
                                && *fname == "digest"
                                && match tee {
                                    TeeMode::Auto => true,
                                    TeeMode::Snp => kind == Some(DetectedTee::Snp),
                                    TeeMode::Tdx => kind == Some(DetectedTee::Tdx),
                                    _ => false,
                                };
                            let unattested_ok = kind.is_some()
                                && allow
                                && tee == TeeMode::None
                                && *fname == "zeros";
                            match outcome {
                                Ok(Mode::Hardware(k)) => {
                                    assert!(attested_ok, "{case}");
                                    assert_eq!(Some(k), kind, "{case}");
                                    ran_on_tee += 1;
                                }
                                Ok(Mode::UnattestedOnTee(k)) => {
                                    assert!(unattested_ok, "{case}");
                                    assert_eq!(Some(k), kind, "{case}");
                                    ran_on_tee += 1;
                                }
                                Ok(other) => panic!("{case}: ran as {other:?} on TEE hardware"),
                                Err(e) => {
                                    assert!(!attested_ok && !unattested_ok, "{case}: {e}");
                                    if tee == TeeMode::Mock {
                                        assert!(e.contains("mock"), "{case}: {e}");
                                        assert!(
                                            e.contains(&platform.describe()),
                                            "{case}: the device found is not named: {e}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(ran_on_tee > 0, "no case ran on TEE hardware at all");
    }

    #[test]
    fn tee_hardware_requires_initdata_unless_the_image_allows_unattested() {
        let p =
            Platform::with_interfaces(vec![TeeInterface::SevGuestDevice("/dev/sev-guest".into())]);
        let strict = ImageSettings::default();
        let err = admit_source(&p, &strict, &ConfigSource::None).unwrap_err();
        assert!(
            err.contains("/dev/sev-guest") && err.contains("agent.initdata"),
            "{err}"
        );
        let file = ConfigSource::File {
            path: "/x.toml".into(),
            via: "agent.config_file=",
        };
        let err = admit_source(&p, &strict, &file).unwrap_err();
        assert!(
            err.contains("agent.config_file=") && err.contains("/x.toml"),
            "{err}"
        );
        let lenient = ImageSettings {
            allow_unattested: true,
        };
        admit_source(&p, &lenient, &file).unwrap();
        assert_eq!(
            decide(&p, &lenient, &file, TeeMode::None).unwrap(),
            Mode::UnattestedOnTee(DetectedTee::Snp)
        );
        let err = decide(&p, &strict, &file, TeeMode::None).unwrap_err();
        assert!(err.contains("allow_unattested"), "{err}");
    }

    #[test]
    fn tee_must_match_the_hardware() {
        let p =
            Platform::with_interfaces(vec![TeeInterface::TdxGuestDevice("/dev/tdx_guest".into())]);
        let src = ConfigSource::Initdata {
            path: "/i".into(),
            via: "agent.initdata=",
        };
        let img = ImageSettings::default();
        assert_eq!(
            decide(&p, &img, &src, TeeMode::Auto).unwrap(),
            Mode::Hardware(DetectedTee::Tdx)
        );
        let err = decide(&p, &img, &src, TeeMode::Snp).unwrap_err();
        assert!(
            err.contains("Snp") && err.contains("/dev/tdx_guest"),
            "{err}"
        );
        let err = decide(&Platform::default(), &img, &src, TeeMode::Auto).unwrap_err();
        assert!(err.contains("mock"), "{err}");
    }

    #[test]
    fn unbound_field_must_be_all_zeros() {
        check_unbound_field(&[0; 48]).unwrap();
        let mut one = [0u8; 48];
        one[47] = 1;
        let err = check_unbound_field(&one).unwrap_err();
        assert!(err.contains(&hex::encode(one)), "{err}");
        assert!(check_unbound_field(&[]).is_err());
    }

    #[test]
    fn flags_are_restricted_as_pid1_and_on_tee_hardware() {
        let none = Platform::default();
        let tee =
            Platform::with_interfaces(vec![TeeInterface::SevGuestDevice("/dev/sev-guest".into())]);
        check_flags(false, &none, &["--config", "--server-addr"]).unwrap();
        check_flags(true, &tee, &[]).unwrap();
        let err = check_flags(true, &none, &["--config"]).unwrap_err();
        assert!(
            err.starts_with("--config refused: the agent is PID 1"),
            "{err}"
        );
        assert!(err.contains("--log-level"), "{err}");
        let err = check_flags(false, &tee, &["--initdata", "--audit-log"]).unwrap_err();
        assert!(err.starts_with("--initdata, --audit-log refused"), "{err}");
        assert!(err.contains("/dev/sev-guest"), "{err}");
    }

    #[test]
    fn image_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.toml");
        assert_eq!(
            ImageSettings::load(&path).unwrap(),
            ImageSettings::default()
        );
        std::fs::write(&path, "allow_unattested = true\n").unwrap();
        assert!(ImageSettings::load(&path).unwrap().allow_unattested);
        std::fs::write(&path, "allow_unatested = true\n").unwrap();
        let err = ImageSettings::load(&path).unwrap_err();
        assert!(err.contains("allow_unatested"), "{err}");
        // Unreadable (a directory): an error, never the defaults read as "absent".
        assert!(ImageSettings::load(dir.path()).is_err());
    }
}
