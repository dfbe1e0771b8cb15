//! The TDX attester: quotes through configfs-tsm, MRCONFIGID from sysfs measurements or the
//! TDREPORT ioctl.
//!
//! Our own small configfs and ioctl code: Intel's `tdx-attest-rs` is not on crates.io and
//! the `configfs-tsm` crate is AGPL.

use std::path::Path;

use base64::Engine as _;

use super::{parse_quote, parse_tdreport, TdxEvidence, TdxQuote};
use crate::bytes::pad_report_data;
use crate::tsm::{self, KernelTsm, TsmFs, TsmRequest};
use crate::{Attester, Error, TeePaths};

/// The configfs-tsm provider name of the TDX guest driver.
pub(crate) const TSM_PROVIDER: &str = tsm::TDX_PROVIDER;

/// Produces TDX evidence.
#[derive(Debug, Clone)]
pub struct TdxAttester {
    paths: TeePaths,
}

impl TdxAttester {
    /// Quotes come from `paths.tsm_report_root`; MRCONFIGID from
    /// `paths.tdx_measurements_dir` when the kernel offers it, else `paths.tdx_guest_device`.
    pub fn new(paths: TeePaths) -> Self {
        TdxAttester { paths }
    }
}

/// A quote through configfs-tsm, checked to carry `block` as its report data.
pub(crate) fn quote_via_tsm(
    fs: &dyn TsmFs,
    report_root: &Path,
    block: &[u8; 64],
) -> Result<(Vec<u8>, TdxQuote), Error> {
    let report = tsm::request(
        fs,
        report_root,
        &TsmRequest {
            provider: TSM_PROVIDER,
            inblob: block,
            privlevel: None,
            read_auxblob: false,
        },
    )?;
    let quote = parse_quote(&report.outblob)?;
    if quote.td.report_data != *block {
        return Err(Error::ReportMismatch {
            what: "TDX quote report_data",
            expected: hex::encode(block),
            found: hex::encode(quote.td.report_data),
        });
    }
    Ok((report.outblob, quote))
}

/// Reads a file that may legitimately be absent: `Ok(None)` only for "not found"; any other
/// failure is an error.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// MRCONFIGID from the kernel's sysfs measurement file (48 raw bytes; hex text accepted).
fn mrconfigid_from_sysfs(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    if bytes.len() == 48 {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).map(str::trim).unwrap_or("");
    match hex::decode(text) {
        Ok(decoded) if decoded.len() == 48 => Ok(decoded),
        _ => Err(Error::malformed(
            "TDX MRCONFIGID",
            format!(
                "{} holds {} bytes, expected 48 raw bytes or 96 hex digits",
                path.display(),
                bytes.len()
            ),
        )),
    }
}

impl Attester for TdxAttester {
    fn tee(&self) -> kbs_types::Tee {
        kbs_types::Tee::Tdx
    }

    fn evidence(&self, report_data: &[u8]) -> Result<String, Error> {
        let block = pad_report_data(report_data)?;
        let (quote, _) = quote_via_tsm(&KernelTsm, &self.paths.tsm_report_root, &block)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let cc_eventlog = read_optional(&self.paths.ccel_table)?.map(|log| b64.encode(log));
        let evidence = TdxEvidence {
            cc_eventlog,
            quote: b64.encode(quote),
        };
        serde_json::to_string(&evidence).map_err(|e| Error::evidence("tdx", e.to_string()))
    }

    fn launch_binding(&self) -> Result<Vec<u8>, Error> {
        let sysfs = self.paths.tdx_measurements_dir.join("mrconfigid");
        if let Some(bytes) = read_optional(&sysfs)? {
            return mrconfigid_from_sysfs(&sysfs, &bytes);
        }
        let tdreport = ioctl::tdreport(&self.paths.tdx_guest_device, &[0; 64])?;
        Ok(parse_tdreport(&tdreport)?.td.mr_config_id.to_vec())
    }
}

#[cfg(target_os = "linux")]
mod ioctl {
    use std::os::fd::AsRawFd;
    use std::path::Path;

    use super::super::TDREPORT_LEN;
    use crate::Error;

    /// `struct tdx_report_req` from `include/uapi/linux/tdx-guest.h`.
    #[repr(C)]
    struct ReportReq {
        reportdata: [u8; 64],
        tdreport: [u8; TDREPORT_LEN],
    }
    const _: () = assert!(std::mem::size_of::<ReportReq>() == 1088);

    /// `_IOWR('T', 1, struct tdx_report_req)`.
    const TDX_CMD_GET_REPORT0: libc::c_ulong =
        0xC000_0000 | (1088 << 16) | ((b'T' as libc::c_ulong) << 8) | 1;

    pub(super) fn tdreport(device: &Path, block: &[u8; 64]) -> Result<Vec<u8>, Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .map_err(|e| Error::io("open", device, e))?;
        let mut req = ReportReq {
            reportdata: *block,
            tdreport: [0; TDREPORT_LEN],
        };
        // SAFETY: `req` has the kernel's layout (size checked above) and outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TDX_CMD_GET_REPORT0 as _, &mut req) };
        if rc < 0 {
            return Err(Error::Firmware {
                device: device.to_path_buf(),
                request: "TDX_CMD_GET_REPORT0",
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(req.tdreport.to_vec())
    }
}

#[cfg(not(target_os = "linux"))]
mod ioctl {
    use super::*;
    pub(super) fn tdreport(device: &Path, _block: &[u8; 64]) -> Result<Vec<u8>, Error> {
        Err(Error::Firmware {
            device: device.to_path_buf(),
            request: "TDX_CMD_GET_REPORT0",
            reason: "only available on Linux".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsm::fake::{leftover_entries, FakeTsm};

    const QUOTE: &[u8] = include_bytes!("../../../../shared/vectors/tdx/tdx_quote_4.dat");
    /// Offset of report_data in a v4 quote: header 48 + 520.
    const RD: usize = 48 + 520;

    /// A quote as the TDX stack would return it for `inblob`.
    fn fake_qgs(inblob: &[u8]) -> Vec<u8> {
        let mut quote = QUOTE.to_vec();
        quote[RD..RD + 64].copy_from_slice(inblob);
        quote
    }

    #[test]
    fn configfs_quote_carries_our_report_data() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeTsm::new(TSM_PROVIDER, Box::new(fake_qgs));
        let block = pad_report_data(&[0x42; 48]).unwrap();
        let (raw, quote) = quote_via_tsm(&fake, dir.path(), &block).unwrap();
        assert_eq!(quote.td.report_data, block);
        assert_eq!(raw.len(), QUOTE.len());
        assert!(leftover_entries(dir.path()).is_empty());
    }

    #[test]
    fn short_outblob_is_an_error_and_entry_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeTsm::new(TSM_PROVIDER, Box::new(|_| QUOTE[..100].to_vec()));
        let err = quote_via_tsm(&fake, dir.path(), &[0; 64]).unwrap_err();
        assert!(err.to_string().contains("TDX quote"), "{err}");
        assert!(leftover_entries(dir.path()).is_empty());
    }

    #[test]
    fn quote_for_other_report_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeTsm::new(TSM_PROVIDER, Box::new(|_| QUOTE.to_vec()));
        let err = quote_via_tsm(&fake, dir.path(), &[0xEE; 64]).unwrap_err();
        assert!(matches!(err, Error::ReportMismatch { .. }), "{err}");
    }

    #[test]
    fn wrong_provider_and_race_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeTsm::new("sev_guest", Box::new(fake_qgs));
        assert!(matches!(
            quote_via_tsm(&fake, dir.path(), &[0; 64]),
            Err(Error::TsmWrongProvider { .. })
        ));
        let mut racing = FakeTsm::new(TSM_PROVIDER, Box::new(fake_qgs));
        racing.race_on_read = true;
        assert!(matches!(
            quote_via_tsm(&racing, dir.path(), &[0; 64]),
            Err(Error::TsmGenerationChanged { .. })
        ));
        assert!(leftover_entries(dir.path()).is_empty());
    }

    fn paths_in(dir: &Path) -> TeePaths {
        TeePaths {
            sev_guest_device: dir.join("dev/sev-guest"),
            tdx_guest_device: dir.join("dev/tdx_guest"),
            tsm_report_root: dir.join("tsm/report"),
            tdx_measurements_dir: dir.join("measurements"),
            ccel_table: dir.join("CCEL"),
        }
    }

    #[test]
    fn mrconfigid_comes_from_sysfs_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths_in(dir.path());
        std::fs::create_dir_all(&paths.tdx_measurements_dir).unwrap();
        let value: Vec<u8> = (0..48u8).collect();
        std::fs::write(paths.tdx_measurements_dir.join("mrconfigid"), &value).unwrap();
        assert_eq!(
            TdxAttester::new(paths.clone()).launch_binding().unwrap(),
            value
        );

        std::fs::write(
            paths.tdx_measurements_dir.join("mrconfigid"),
            format!("{}\n", hex::encode(&value)),
        )
        .unwrap();
        assert_eq!(
            TdxAttester::new(paths.clone()).launch_binding().unwrap(),
            value
        );

        std::fs::write(paths.tdx_measurements_dir.join("mrconfigid"), [1, 2, 3]).unwrap();
        let err = TdxAttester::new(paths).launch_binding().unwrap_err();
        assert!(err.to_string().contains("3 bytes"), "{err}");
    }

    #[test]
    fn without_sysfs_the_device_is_used_and_its_absence_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = TdxAttester::new(paths_in(dir.path()))
            .launch_binding()
            .unwrap_err();
        assert!(err.to_string().contains("dev/tdx_guest"), "{err}");
    }

    #[test]
    fn unreadable_sysfs_is_an_error_not_a_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths_in(dir.path());
        // A directory where the file should be: reading fails with something other than
        // "not found", which must not silently fall back to another source.
        std::fs::create_dir_all(paths.tdx_measurements_dir.join("mrconfigid")).unwrap();
        let err = TdxAttester::new(paths).launch_binding().unwrap_err();
        assert!(err.to_string().contains("measurements/mrconfigid"), "{err}");
    }

    /// Needs an Intel TDX guest with configfs-tsm and a quote generation service.
    #[test]
    #[ignore = "needs a TDX guest with configfs-tsm and a QGS"]
    fn hardware_tdx_evidence() {
        let attester = TdxAttester::new(TeePaths::default());
        let json = attester.evidence(b"vigil hardware test").unwrap();
        let claims = crate::verify::claims(kbs_types::Tee::Tdx, &json).unwrap();
        assert_eq!(&claims.report_data[..19], b"vigil hardware test");
        assert_eq!(claims.launch_binding, attester.launch_binding().unwrap());
    }
}
