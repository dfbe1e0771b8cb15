//! TEE evidence for vigil: AMD SEV-SNP, Intel TDX, and an explicit mock TEE; TEE detection;
//! and the launch-data (initdata) binding check.
//!
//! - [`Attester`] is one TEE: evidence for a `report_data`, the launch-time binding field,
//!   and its `kbs_types::Tee` name.
//! - [`select`] / [`select_with`] turn a [`TeeSelection`] into an attester. `auto` picks SNP
//!   or TDX from the devices present and is an error when there is none: it never falls back
//!   to the mock.
//! - [`platform::probe`] finds the TEE guest interfaces (devices, configfs-tsm provider)
//!   that decide whether the VM runs on TEE hardware.
//! - [`binding::check`] compares an initdata digest with the launch-time field.
//! - [`snp`], [`tdx`] hold the binary parsers and evidence documents; [`verify`] reads
//!   evidence back as a KBS does.

// With a TEE feature turned off, some shared helpers have no user; that is expected.
#![cfg_attr(not(all(feature = "snp", feature = "tdx")), allow(dead_code))]

mod bytes;
mod error;
mod tsm;

pub mod binding;
pub mod initdata;
pub mod mock;
pub mod platform;
#[cfg(feature = "snp")]
pub mod snp;
#[cfg(feature = "tdx")]
pub mod tdx;
pub mod verify;

use std::path::PathBuf;
use std::str::FromStr;

pub use error::Error;
/// The `kbs-types` version this crate's API uses (for [`Attester::tee`] and [`verify`]).
pub use kbs_types;

/// One trusted execution environment, as the guest sees it.
pub trait Attester: Send + Sync {
    /// The KBS protocol name of this TEE: `Snp`, `Tdx`, or `Sample` for the mock.
    fn tee(&self) -> kbs_types::Tee;

    /// Evidence JSON text for `report_data` (at most 64 bytes; SNP and TDX zero-pad it to
    /// 64, the mock keeps it as given).
    fn evidence(&self, report_data: &[u8]) -> Result<String, Error>;

    /// The launch-time binding field: SNP `HOST_DATA` (32 bytes), TDX `MRCONFIGID`
    /// (48 bytes), or the mock's configured value.
    fn launch_binding(&self) -> Result<Vec<u8>, Error>;
}

/// Which TEE to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeeSelection {
    /// The mock TEE, with the launch binding it should report. Parsing `"mock"` gives an
    /// empty binding; set it from configuration before use.
    Mock {
        launch_binding: Vec<u8>,
    },
    Snp,
    Tdx,
    /// SNP or TDX, whichever device is present; an error if neither (or both) is.
    Auto,
}

impl FromStr for TeeSelection {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        match name {
            "mock" => Ok(TeeSelection::Mock {
                launch_binding: Vec::new(),
            }),
            "snp" => Ok(TeeSelection::Snp),
            "tdx" => Ok(TeeSelection::Tdx),
            "auto" => Ok(TeeSelection::Auto),
            "none" => Err(Error::NoneIsNotATee),
            other => Err(Error::UnknownTee(other.to_string())),
        }
    }
}

/// Where the TEE interfaces live. `Default` gives the real kernel paths; tests point them
/// into a temporary directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeePaths {
    /// SEV-SNP guest device (`/dev/sev-guest`).
    pub sev_guest_device: PathBuf,
    /// TDX guest device (`/dev/tdx_guest`), for the TDREPORT ioctl.
    pub tdx_guest_device: PathBuf,
    /// configfs-tsm report directory (`/sys/kernel/config/tsm/report`).
    pub tsm_report_root: PathBuf,
    /// TDX sysfs measurements (`/sys/class/misc/tdx_guest/measurements`, Linux 6.16+).
    pub tdx_measurements_dir: PathBuf,
    /// ACPI CCEL event log data (`/sys/firmware/acpi/tables/data/CCEL`).
    pub ccel_table: PathBuf,
}

impl Default for TeePaths {
    fn default() -> Self {
        TeePaths {
            sev_guest_device: "/dev/sev-guest".into(),
            tdx_guest_device: "/dev/tdx_guest".into(),
            tsm_report_root: "/sys/kernel/config/tsm/report".into(),
            tdx_measurements_dir: "/sys/class/misc/tdx_guest/measurements".into(),
            ccel_table: "/sys/firmware/acpi/tables/data/CCEL".into(),
        }
    }
}

/// A TEE found by [`detect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectedTee {
    Snp,
    Tdx,
}

/// Finds the hardware TEE from the guest interfaces present (see [`platform::probe`]).
/// Never returns the mock: no interface is [`Error::NoTeeDetected`], whose message says how
/// to select the mock explicitly.
pub fn detect(paths: &TeePaths) -> Result<DetectedTee, Error> {
    platform::probe(paths)?
        .tee()?
        .ok_or_else(|| Error::NoTeeDetected {
            checked: format!(
                "{}, {}, {}",
                paths.sev_guest_device.display(),
                paths.tdx_guest_device.display(),
                paths.tsm_report_root.display()
            ),
        })
}

/// The attester for `selection`, on the real kernel paths.
pub fn select(selection: TeeSelection) -> Result<Box<dyn Attester>, Error> {
    select_with(selection, &TeePaths::default())
}

/// The attester for `selection`, with the TEE interfaces at `paths`.
pub fn select_with(selection: TeeSelection, paths: &TeePaths) -> Result<Box<dyn Attester>, Error> {
    match selection {
        TeeSelection::Mock { launch_binding } => {
            Ok(Box::new(mock::MockAttester::new(launch_binding)))
        }
        TeeSelection::Snp => snp_attester(paths),
        TeeSelection::Tdx => tdx_attester(paths),
        TeeSelection::Auto => match detect(paths)? {
            DetectedTee::Snp => snp_attester(paths),
            DetectedTee::Tdx => tdx_attester(paths),
        },
    }
}

#[cfg(feature = "snp")]
fn snp_attester(paths: &TeePaths) -> Result<Box<dyn Attester>, Error> {
    Ok(Box::new(snp::SnpAttester::new(paths.clone())))
}

#[cfg(not(feature = "snp"))]
fn snp_attester(_: &TeePaths) -> Result<Box<dyn Attester>, Error> {
    Err(Error::NotCompiled("SEV-SNP"))
}

#[cfg(feature = "tdx")]
fn tdx_attester(paths: &TeePaths) -> Result<Box<dyn Attester>, Error> {
    Ok(Box::new(tdx::TdxAttester::new(paths.clone())))
}

#[cfg(not(feature = "tdx"))]
fn tdx_attester(_: &TeePaths) -> Result<Box<dyn Attester>, Error> {
    Err(Error::NotCompiled("TDX"))
}

#[cfg(test)]
impl TeePaths {
    /// Every interface under `dir` (tests create there what they need).
    pub(crate) fn under(dir: &std::path::Path) -> TeePaths {
        TeePaths {
            sev_guest_device: dir.join("sev-guest"),
            tdx_guest_device: dir.join("tdx_guest"),
            tsm_report_root: dir.join("tsm"),
            tdx_measurements_dir: dir.join("measurements"),
            ccel_table: dir.join("CCEL"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!("snp".parse::<TeeSelection>().unwrap(), TeeSelection::Snp);
        assert_eq!("tdx".parse::<TeeSelection>().unwrap(), TeeSelection::Tdx);
        assert_eq!("auto".parse::<TeeSelection>().unwrap(), TeeSelection::Auto);
        assert_eq!(
            "mock".parse::<TeeSelection>().unwrap(),
            TeeSelection::Mock {
                launch_binding: vec![]
            }
        );
        assert!(matches!(
            "none".parse::<TeeSelection>(),
            Err(Error::NoneIsNotATee)
        ));
        let err = "sgx".parse::<TeeSelection>().unwrap_err();
        assert!(err.to_string().contains("\"sgx\""), "{err}");
        assert!("SNP".parse::<TeeSelection>().is_err());
    }

    #[test]
    fn auto_without_devices_is_an_error_that_explains_mock() {
        let dir = tempfile::tempdir().unwrap();
        let err = select_with(TeeSelection::Auto, &TeePaths::under(dir.path()))
            .err()
            .expect("must not fall back to mock");
        let msg = err.to_string();
        assert!(matches!(err, Error::NoTeeDetected { .. }), "{msg}");
        assert!(msg.contains("tee = \"mock\""), "{msg}");
        assert!(msg.contains("sev-guest"), "{msg}");
    }

    #[cfg(all(feature = "snp", feature = "tdx"))]
    #[test]
    fn auto_picks_the_present_device() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TeePaths::under(dir.path());
        std::fs::write(&paths.sev_guest_device, b"").unwrap();
        assert_eq!(detect(&paths).unwrap(), DetectedTee::Snp);
        assert_eq!(
            select_with(TeeSelection::Auto, &paths).unwrap().tee(),
            kbs_types::Tee::Snp
        );
        std::fs::remove_file(&paths.sev_guest_device).unwrap();
        std::fs::write(&paths.tdx_guest_device, b"").unwrap();
        assert_eq!(
            select_with(TeeSelection::Auto, &paths).unwrap().tee(),
            kbs_types::Tee::Tdx
        );
        std::fs::write(&paths.sev_guest_device, b"").unwrap();
        assert!(matches!(detect(&paths), Err(Error::AmbiguousTee { .. })));
    }

    #[cfg(not(feature = "snp"))]
    #[test]
    fn snp_without_the_feature_says_so() {
        let err = select_with(TeeSelection::Snp, &TeePaths::default())
            .err()
            .unwrap();
        assert!(matches!(err, Error::NotCompiled("SEV-SNP")), "{err}");
    }

    #[test]
    fn uninspectable_device_path_is_an_error_not_absent() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = TeePaths::under(dir.path());
        // A path through a regular file fails with ENOTDIR, not ENOENT.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        paths.sev_guest_device = dir.path().join("file/sev-guest");
        let err = detect(&paths).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[test]
    fn mock_only_by_name() {
        let attester = select_with(
            TeeSelection::Mock {
                launch_binding: vec![1, 2, 3],
            },
            &TeePaths::default(),
        )
        .unwrap();
        assert_eq!(attester.tee(), kbs_types::Tee::Sample);
        assert_eq!(attester.launch_binding().unwrap(), [1, 2, 3]);
    }
}
