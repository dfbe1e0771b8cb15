//! Which TEE guest interfaces this VM has: the hardware facts the agent's mode follows.
//!
//! The guest kernel creates these from the hardware itself (the SEV-SNP secrets page, the
//! TDX module), not from anything the host chooses at run time: `/dev/sev-guest`,
//! `/dev/tdx_guest`, and the configfs-tsm report interface with a registered provider. If
//! any exists, something in this VM can produce evidence that carries the launch binding, so
//! the agent must run the configuration that binding names.
//!
//! [`probe`] reads the real kernel paths (or those of a [`TeePaths`]); there is no other
//! way to describe the platform, so no setting can make real hardware look absent.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::tsm::{self, KernelTsm, TsmFs};
use crate::{DetectedTee, Error, TeePaths};

/// One TEE guest interface that exists in this VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeeInterface {
    /// The SEV-SNP guest device.
    SevGuestDevice(PathBuf),
    /// The TDX guest device.
    TdxGuestDevice(PathBuf),
    /// configfs-tsm's report interface, with the provider registered behind it.
    TsmReport { root: PathBuf, provider: String },
}

impl TeeInterface {
    /// The hardware TEE this interface belongs to; `None` for a configfs-tsm provider this
    /// crate does not know.
    pub fn tee(&self) -> Option<DetectedTee> {
        match self {
            TeeInterface::SevGuestDevice(_) => Some(DetectedTee::Snp),
            TeeInterface::TdxGuestDevice(_) => Some(DetectedTee::Tdx),
            TeeInterface::TsmReport { provider, .. } => match provider.as_str() {
                tsm::SNP_PROVIDER => Some(DetectedTee::Snp),
                tsm::TDX_PROVIDER => Some(DetectedTee::Tdx),
                _ => None,
            },
        }
    }
}

impl fmt::Display for TeeInterface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TeeInterface::SevGuestDevice(p) | TeeInterface::TdxGuestDevice(p) => {
                write!(f, "{}", p.display())
            }
            TeeInterface::TsmReport { root, provider } => {
                write!(f, "{} (provider {provider})", root.display())
            }
        }
    }
}

/// The TEE guest interfaces found in this VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Platform {
    interfaces: Vec<TeeInterface>,
}

impl Platform {
    /// A platform with exactly these interfaces (for decisions computed over descriptions;
    /// the agent itself only ever uses [`probe`]).
    pub fn with_interfaces(interfaces: Vec<TeeInterface>) -> Platform {
        Platform { interfaces }
    }

    pub fn interfaces(&self) -> &[TeeInterface] {
        &self.interfaces
    }

    /// Whether any TEE guest interface exists: then this VM runs on TEE hardware.
    pub fn has_tee(&self) -> bool {
        !self.interfaces.is_empty()
    }

    /// The interfaces, for messages: `/dev/sev-guest, /sys/kernel/config/tsm/report
    /// (provider sev_guest)`.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.interfaces.iter().map(|i| i.to_string()).collect();
        names.join(", ")
    }

    /// The hardware TEE: `None` without any interface. Interfaces of both kinds, or only a
    /// provider this crate does not know, are errors: the agent cannot attest correctly there.
    pub fn tee(&self) -> Result<Option<DetectedTee>, Error> {
        let find = |kind| self.interfaces.iter().find(|i| i.tee() == Some(kind));
        match (find(DetectedTee::Snp), find(DetectedTee::Tdx)) {
            (Some(snp), Some(tdx)) => Err(Error::AmbiguousTee {
                snp: snp.to_string(),
                tdx: tdx.to_string(),
            }),
            (Some(_), None) => Ok(Some(DetectedTee::Snp)),
            (None, Some(_)) => Ok(Some(DetectedTee::Tdx)),
            (None, None) => match self.interfaces.first() {
                Some(unknown) => Err(Error::UnsupportedTeeInterface(unknown.to_string())),
                None => Ok(None),
            },
        }
    }
}

/// Finds the TEE guest interfaces at `paths`. A path that cannot be inspected (anything
/// but "does not exist") is an error, never "absent".
pub fn probe(paths: &TeePaths) -> Result<Platform, Error> {
    probe_with(&KernelTsm, paths)
}

pub(crate) fn probe_with(fs: &dyn TsmFs, paths: &TeePaths) -> Result<Platform, Error> {
    let mut interfaces = Vec::new();
    if exists(&paths.sev_guest_device)? {
        interfaces.push(TeeInterface::SevGuestDevice(paths.sev_guest_device.clone()));
    }
    if exists(&paths.tdx_guest_device)? {
        interfaces.push(TeeInterface::TdxGuestDevice(paths.tdx_guest_device.clone()));
    }
    if exists(&paths.tsm_report_root)? {
        if let Some(provider) = tsm::provider(fs, &paths.tsm_report_root)? {
            interfaces.push(TeeInterface::TsmReport {
                root: paths.tsm_report_root.clone(),
                provider,
            });
        }
    }
    Ok(Platform { interfaces })
}

/// Whether `path` exists; an error other than "not found" is reported, not read as absent.
pub(crate) fn exists(path: &Path) -> Result<bool, Error> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("inspect", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsm::fake::{leftover_entries, FakeTsm};

    fn fake(provider: &str) -> FakeTsm {
        FakeTsm::new(provider, Box::new(|b| b.to_vec()))
    }

    #[test]
    fn nothing_present_is_no_tee() {
        let dir = tempfile::tempdir().unwrap();
        let p = probe_with(&fake("sev_guest"), &TeePaths::under(dir.path())).unwrap();
        assert!(!p.has_tee());
        assert_eq!(p.tee().unwrap(), None);
    }

    #[test]
    fn each_device_is_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TeePaths::under(dir.path());
        std::fs::write(&paths.sev_guest_device, b"").unwrap();
        let p = probe_with(&fake("sev_guest"), &paths).unwrap();
        assert_eq!(p.tee().unwrap(), Some(DetectedTee::Snp));
        assert!(p.describe().ends_with("sev-guest"), "{}", p.describe());

        std::fs::remove_file(&paths.sev_guest_device).unwrap();
        std::fs::write(&paths.tdx_guest_device, b"").unwrap();
        let p = probe_with(&fake("sev_guest"), &paths).unwrap();
        assert_eq!(p.tee().unwrap(), Some(DetectedTee::Tdx));

        std::fs::write(&paths.sev_guest_device, b"").unwrap();
        let p = probe_with(&fake("sev_guest"), &paths).unwrap();
        assert!(p.has_tee());
        assert!(matches!(p.tee(), Err(Error::AmbiguousTee { .. })));
    }

    #[test]
    fn configfs_tsm_provider_is_read_from_a_removed_entry() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TeePaths::under(dir.path());
        std::fs::create_dir(&paths.tsm_report_root).unwrap();
        for (provider, tee) in [
            ("tdx_guest", DetectedTee::Tdx),
            ("sev_guest", DetectedTee::Snp),
        ] {
            let p = probe_with(&fake(provider), &paths).unwrap();
            assert_eq!(p.tee().unwrap(), Some(tee), "{provider}");
            assert!(p.describe().contains(provider), "{}", p.describe());
            assert!(leftover_entries(&paths.tsm_report_root).is_empty());
        }
        // A provider this crate cannot attest with is still TEE hardware (so unattested
        // operation is refused there), but no TEE to pick.
        let p = probe_with(&fake("arm_cca_guest"), &paths).unwrap();
        assert!(p.has_tee());
        let err = p.tee().unwrap_err().to_string();
        assert!(err.contains("arm_cca_guest"), "{err}");
        // No provider registered (ENXIO): nothing can produce a report through it.
        let p = probe_with(&fake(""), &paths).unwrap();
        assert!(!p.has_tee());
        assert!(leftover_entries(&paths.tsm_report_root).is_empty());
    }

    #[test]
    fn unreadable_interfaces_are_errors_not_absent() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = TeePaths::under(dir.path());
        std::fs::write(dir.path().join("file"), b"").unwrap();
        // Through a regular file: ENOTDIR, not ENOENT.
        paths.sev_guest_device = dir.path().join("file/sev-guest");
        assert!(matches!(
            probe_with(&fake("sev_guest"), &paths),
            Err(Error::Io { .. })
        ));

        // A configfs-tsm root whose entry cannot be created (a regular file here).
        let mut paths = TeePaths::under(dir.path());
        paths.tsm_report_root = dir.path().join("file");
        assert!(probe_with(&fake("sev_guest"), &paths).is_err());

        // An entry that cannot be removed again is reported too.
        let paths = TeePaths::under(dir.path());
        std::fs::create_dir(&paths.tsm_report_root).unwrap();
        let mut stuck = fake("sev_guest");
        stuck.fail_remove = true;
        let err = probe_with(&stuck, &paths).unwrap_err().to_string();
        assert!(err.contains("remove"), "{err}");
    }
}
