//! configfs-tsm report requests (`/sys/kernel/config/tsm/report`), our own small client.
//!
//! One request: create an entry directory, check its `provider`, note `generation`, write the
//! options and `inblob`, read `outblob` (and `auxblob` when wanted), then require
//! `generation` to have advanced by exactly our writes: anything else means another process
//! wrote to the same entry and the blob may answer its request, not ours. The entry is
//! removed on every path, success or failure.
//!
//! The filesystem is behind [`TsmFs`] so tests can stand in for the kernel, whose configfs
//! attributes (a counter that moves on writes, a blob computed on read) a plain directory
//! cannot emulate.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Error;

/// The configfs-tsm provider name of the SEV-SNP guest driver.
pub(crate) const SNP_PROVIDER: &str = "sev_guest";
/// The configfs-tsm provider name of the TDX guest driver.
pub(crate) const TDX_PROVIDER: &str = "tdx_guest";

/// Filesystem operations used on a configfs-tsm tree.
pub(crate) trait TsmFs {
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
}

/// The real kernel interface.
pub(crate) struct KernelTsm;

impl TsmFs for KernelTsm {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        // configfs entries are removed with rmdir even though they list attribute files.
        std::fs::remove_dir(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write as _;
        // Open without O_CREAT: a missing attribute means the wrong provider or kernel, and
        // must be an error rather than a new file.
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(data)
    }
}

/// What to ask for.
pub(crate) struct TsmRequest<'a> {
    /// Required `provider` value, e.g. `sev_guest` or `tdx_guest`.
    pub provider: &'static str,
    /// The 64-byte report data.
    pub inblob: &'a [u8; 64],
    /// Privilege level (SEV-SNP VMPL) to request, when the provider has one.
    pub privlevel: Option<u32>,
    /// Also read `auxblob` (SEV-SNP certificate table).
    pub read_auxblob: bool,
}

/// What came back.
#[derive(Debug)]
pub(crate) struct TsmReport {
    pub outblob: Vec<u8>,
    /// `None` when not requested; `Some(empty)` when the provider supplied none.
    pub auxblob: Option<Vec<u8>>,
}

/// Runs one report request under `report_root`.
pub(crate) fn request(
    fs: &dyn TsmFs,
    report_root: &Path,
    req: &TsmRequest<'_>,
) -> Result<TsmReport, Error> {
    let entry = create_entry(fs, report_root)?;
    let result = fill_and_read(fs, &entry, req);
    let removal = fs
        .remove_dir(&entry)
        .map_err(|e| Error::io("remove configfs-tsm report entry", &entry, e));
    // A failed request reports its own cause; a leftover entry after a good request is still
    // an error, so callers never run with leaked state unnoticed.
    let report = result?;
    removal?;
    Ok(report)
}

/// The provider behind the configfs-tsm report interface at `report_root`, read from a
/// short-lived entry: `None` when no provider is registered (the kernel answers `ENXIO`,
/// so nothing can produce a report through it). The entry is removed on every path.
pub(crate) fn provider(fs: &dyn TsmFs, report_root: &Path) -> Result<Option<String>, Error> {
    let entry = create_entry(fs, report_root)?;
    let result = match read_text(fs, &entry.join("provider")) {
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        other => other.map(Some),
    };
    let removal = fs
        .remove_dir(&entry)
        .map_err(|e| Error::io("remove configfs-tsm report entry", &entry, e));
    let provider = result?;
    removal?;
    Ok(provider)
}

/// Creates a fresh entry with a name unique to this process and moment.
fn create_entry(fs: &dyn TsmFs, report_root: &Path) -> Result<PathBuf, Error> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let base = format!("vigil-{}-{nanos}", std::process::id());
    let mut last_err = None;
    for attempt in 0..16 {
        let entry = report_root.join(format!("{base}-{attempt}"));
        match fs.create_dir(&entry) {
            Ok(()) => return Ok(entry),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some((entry, e)),
            Err(e) => return Err(Error::io("create configfs-tsm report entry", &entry, e)),
        }
    }
    let (entry, e) = last_err.expect("the loop ran at least once");
    Err(Error::io("create configfs-tsm report entry", &entry, e))
}

fn fill_and_read(fs: &dyn TsmFs, entry: &Path, req: &TsmRequest<'_>) -> Result<TsmReport, Error> {
    let provider_path = entry.join("provider");
    let provider = read_text(fs, &provider_path)?;
    if provider != req.provider {
        return Err(Error::TsmWrongProvider {
            path: provider_path,
            expected: req.provider,
            found: provider,
        });
    }

    let generation_path = entry.join("generation");
    let start = read_generation(fs, &generation_path)?;
    let mut writes = 0u64;

    if let Some(level) = req.privlevel {
        let path = entry.join("privlevel");
        fs.write(&path, level.to_string().as_bytes())
            .map_err(|e| Error::io("write", &path, e))?;
        writes += 1;
    }
    let inblob_path = entry.join("inblob");
    fs.write(&inblob_path, req.inblob)
        .map_err(|e| Error::io("write", &inblob_path, e))?;
    writes += 1;

    let outblob_path = entry.join("outblob");
    let outblob = fs
        .read(&outblob_path)
        .map_err(|e| Error::io("read", &outblob_path, e))?;
    let auxblob = if req.read_auxblob {
        let path = entry.join("auxblob");
        Some(fs.read(&path).map_err(|e| Error::io("read", &path, e))?)
    } else {
        None
    };

    let end = read_generation(fs, &generation_path)?;
    let expected = start
        .checked_add(writes)
        .ok_or_else(|| Error::malformed("configfs-tsm generation", format!("{start} overflows")))?;
    if end != expected {
        return Err(Error::TsmGenerationChanged {
            path: generation_path,
            expected,
            found: end,
        });
    }

    if outblob.is_empty() {
        return Err(Error::malformed(
            "configfs-tsm outblob",
            format!("{} is empty", outblob_path.display()),
        ));
    }
    Ok(TsmReport { outblob, auxblob })
}

fn read_text(fs: &dyn TsmFs, path: &Path) -> Result<String, Error> {
    let bytes = fs.read(path).map_err(|e| Error::io("read", path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::malformed(
            "configfs-tsm attribute",
            format!("{} is not UTF-8", path.display()),
        )
    })?;
    Ok(text.trim_end_matches(['\n', '\0']).to_string())
}

fn read_generation(fs: &dyn TsmFs, path: &Path) -> Result<u64, Error> {
    let text = read_text(fs, path)?;
    text.trim().parse().map_err(|_| {
        Error::malformed(
            "configfs-tsm generation",
            format!("{} holds {text:?}, not a number", path.display()),
        )
    })
}

/// A stand-in for the kernel's configfs-tsm, over a real temporary directory.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::Mutex;

    type BlobFn = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

    /// Emulates the kernel: new entries get `provider` and `generation`; writes to options
    /// bump `generation`; reading `outblob` computes it from `inblob`.
    pub(crate) struct FakeTsm {
        pub provider: String,
        pub make_outblob: BlobFn,
        pub auxblob: Vec<u8>,
        /// Emulate a racing writer: bump `generation` while `outblob` is read.
        pub race_on_read: bool,
        /// Make `rmdir` fail (to check that this is reported).
        pub fail_remove: bool,
        /// Every path passed to `write`, in order.
        pub writes: Mutex<Vec<PathBuf>>,
    }

    impl FakeTsm {
        pub(crate) fn new(provider: &str, make_outblob: BlobFn) -> Self {
            FakeTsm {
                provider: provider.to_string(),
                make_outblob,
                auxblob: Vec::new(),
                race_on_read: false,
                fail_remove: false,
                writes: Mutex::new(Vec::new()),
            }
        }

        fn bump(&self, entry: &Path) -> io::Result<()> {
            let path = entry.join("generation");
            let n: u64 = std::fs::read_to_string(&path)?.trim().parse().unwrap();
            std::fs::write(path, format!("{}\n", n + 1))
        }
    }

    impl TsmFs for FakeTsm {
        fn create_dir(&self, path: &Path) -> io::Result<()> {
            std::fs::create_dir(path)?;
            std::fs::write(path.join("provider"), format!("{}\n", self.provider))?;
            // A non-zero start, so a check that assumes 0 would fail.
            std::fs::write(path.join("generation"), "5\n")?;
            Ok(())
        }
        fn remove_dir(&self, path: &Path) -> io::Result<()> {
            if self.fail_remove {
                return Err(io::Error::from(io::ErrorKind::PermissionDenied));
            }
            std::fs::remove_dir_all(path)
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            let entry = path.parent().unwrap();
            match path.file_name().and_then(|n| n.to_str()) {
                Some("outblob") => {
                    let inblob = std::fs::read(entry.join("inblob"))?;
                    if self.race_on_read {
                        self.bump(entry)?;
                    }
                    Ok((self.make_outblob)(&inblob))
                }
                Some("auxblob") => Ok(self.auxblob.clone()),
                // The kernel's answer when no TSM provider is registered.
                Some("provider") if self.provider.is_empty() => {
                    Err(io::Error::from_raw_os_error(libc::ENXIO))
                }
                _ => std::fs::read(path),
            }
        }
        fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            self.writes.lock().unwrap().push(path.to_path_buf());
            std::fs::write(path, data)?;
            self.bump(path.parent().unwrap())
        }
    }

    /// Entries left under `root` (there must be none after any request).
    pub(crate) fn leftover_entries(root: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    fn echo_fake(provider: &str) -> FakeTsm {
        FakeTsm::new(
            provider,
            Box::new(|inblob| [b"REPORT:".as_slice(), inblob].concat()),
        )
    }

    fn req(inblob: &[u8; 64]) -> TsmRequest<'_> {
        TsmRequest {
            provider: "tdx_guest",
            inblob,
            privlevel: None,
            read_auxblob: false,
        }
    }

    #[test]
    fn happy_path_returns_outblob_for_our_inblob_and_removes_entry() {
        let dir = tempfile::tempdir().unwrap();
        let fake = echo_fake("tdx_guest");
        let inblob = [0x5A; 64];
        let report = request(&fake, dir.path(), &req(&inblob)).unwrap();
        assert_eq!(report.outblob, [b"REPORT:".as_slice(), &inblob].concat());
        assert!(report.auxblob.is_none());
        assert!(leftover_entries(dir.path()).is_empty());
    }

    #[test]
    fn privlevel_and_auxblob_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let mut fake = echo_fake("sev_guest");
        fake.auxblob = vec![1, 2, 3];
        let inblob = [1; 64];
        let report = request(
            &fake,
            dir.path(),
            &TsmRequest {
                provider: "sev_guest",
                inblob: &inblob,
                privlevel: Some(0),
                read_auxblob: true,
            },
        )
        .unwrap();
        assert_eq!(report.auxblob.as_deref(), Some([1u8, 2, 3].as_slice()));
        let written: Vec<String> = fake
            .writes
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(written, ["privlevel", "inblob"]);
        assert!(leftover_entries(dir.path()).is_empty());
    }

    #[test]
    fn wrong_provider_is_rejected_before_writing_and_entry_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fake = echo_fake("sev_guest");
        let err = request(&fake, dir.path(), &req(&[0; 64])).unwrap_err();
        match &err {
            Error::TsmWrongProvider {
                expected, found, ..
            } => {
                assert_eq!(*expected, "tdx_guest");
                assert_eq!(found, "sev_guest");
            }
            other => panic!("unexpected {other}"),
        }
        assert!(fake.writes.lock().unwrap().is_empty());
        assert!(leftover_entries(dir.path()).is_empty());
    }

    #[test]
    fn racing_writer_is_detected_and_entry_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut fake = echo_fake("tdx_guest");
        fake.race_on_read = true;
        let err = request(&fake, dir.path(), &req(&[0; 64])).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TsmGenerationChanged {
                    expected: 6,
                    found: 7,
                    ..
                }
            ),
            "{err}"
        );
        assert!(leftover_entries(dir.path()).is_empty());
    }

    #[test]
    fn empty_outblob_is_an_error_and_entry_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeTsm::new("tdx_guest", Box::new(|_| Vec::new()));
        let err = request(&fake, dir.path(), &req(&[0; 64])).unwrap_err();
        assert!(err.to_string().contains("outblob"), "{err}");
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(leftover_entries(dir.path()).is_empty());
    }

    #[test]
    fn missing_root_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("no-such-tsm");
        let err = request(&echo_fake("tdx_guest"), &root, &req(&[0; 64])).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("no-such-tsm"), "{err}");
    }

    #[test]
    fn failed_removal_after_success_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut fake = echo_fake("tdx_guest");
        fake.fail_remove = true;
        let err = request(&fake, dir.path(), &req(&[0; 64])).unwrap_err();
        assert!(err.to_string().contains("remove configfs-tsm"), "{err}");
    }

    #[test]
    fn kernel_fs_writes_only_existing_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("entry");
        KernelTsm.create_dir(&entry).unwrap();
        std::fs::write(entry.join("inblob"), b"").unwrap();
        KernelTsm.write(&entry.join("inblob"), &[7; 64]).unwrap();
        assert_eq!(KernelTsm.read(&entry.join("inblob")).unwrap(), [7; 64]);
        let missing = KernelTsm.write(&entry.join("privlevel"), b"0").unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        std::fs::remove_file(entry.join("inblob")).unwrap();
        KernelTsm.remove_dir(&entry).unwrap();
        assert!(leftover_entries(dir.path()).is_empty());
    }

    #[test]
    fn unparsable_generation_is_an_error() {
        struct BadGeneration(FakeTsm);
        impl TsmFs for BadGeneration {
            fn create_dir(&self, path: &Path) -> io::Result<()> {
                self.0.create_dir(path)?;
                std::fs::write(path.join("generation"), "lots\n")
            }
            fn remove_dir(&self, path: &Path) -> io::Result<()> {
                self.0.remove_dir(path)
            }
            fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
                self.0.read(path)
            }
            fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
                self.0.write(path, data)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let err = request(
            &BadGeneration(echo_fake("tdx_guest")),
            dir.path(),
            &req(&[0; 64]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"lots\""), "{err}");
        assert!(leftover_entries(dir.path()).is_empty());
    }
}
