//! The SEV-SNP attester: `/dev/sev-guest` extended reports, or configfs-tsm without it.
//!
//! Why our own ioctl instead of `sev::firmware::guest::Firmware::get_ext_report` (sev 8):
//! that function walks the host-supplied certificate table through raw pointers, trusting
//! the host's offsets and lengths and reading until a zero GUID even past the buffer it
//! allocated. The host is exactly the party this agent does not trust, so we issue
//! `SNP_GET_EXT_REPORT` ourselves (a few `repr(C)` structs matching
//! `include/uapi/linux/sev-guest.h`) and parse the table with the bounds-checked
//! [`parse_cert_table`](super::parse_cert_table). `Firmware::open` also hard-codes the
//! device path, which would keep the device path from being configurable.

use std::path::Path;

use sev::firmware::host::CertTableEntry;

use super::{parse_cert_table, parse_report, SnpEvidence};
use crate::bytes::pad_report_data;
use crate::tsm::{self, KernelTsm, TsmFs, TsmRequest};
use crate::{Attester, Error, TeePaths};

/// The configfs-tsm provider name of the SEV-SNP guest driver.
pub(crate) const TSM_PROVIDER: &str = tsm::SNP_PROVIDER;

/// Reports are requested at VMPL 0: the agent runs in the most privileged guest level, and
/// a verifier checking `vmpl == 0` knows no lower-privileged component produced the report.
const VMPL: u32 = 0;

/// Produces SEV-SNP evidence.
#[derive(Debug, Clone)]
pub struct SnpAttester {
    paths: TeePaths,
}

impl SnpAttester {
    /// Uses `paths.sev_guest_device` when it exists, else configfs-tsm under
    /// `paths.tsm_report_root`.
    pub fn new(paths: TeePaths) -> Self {
        SnpAttester { paths }
    }

    /// A raw report and the host's certificates (if any) for a 64-byte report data block.
    fn raw_report(
        &self,
        block: &[u8; 64],
    ) -> Result<(Vec<u8>, Option<Vec<CertTableEntry>>), Error> {
        let device = &self.paths.sev_guest_device;
        match std::fs::metadata(device) {
            Ok(_) => ioctl::ext_report(device, block, VMPL),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report_via_tsm(&KernelTsm, &self.paths.tsm_report_root, block)
            }
            Err(e) => Err(Error::io("inspect", device, e)),
        }
    }

    /// Requests a report and checks it carries what was asked for.
    fn checked_report(&self, report_data: &[u8]) -> Result<CheckedReport, Error> {
        let block = pad_report_data(report_data)?;
        let (raw, certs) = self.raw_report(&block)?;
        let parsed = check_returned_report(&raw, &block)?;
        Ok(CheckedReport { raw, parsed, certs })
    }
}

/// A report that answers our request, with the host's certificates.
struct CheckedReport {
    raw: Vec<u8>,
    parsed: super::SnpReport,
    certs: Option<Vec<CertTableEntry>>,
}

/// Parses a returned report and refuses one that does not answer our request.
fn check_returned_report(raw: &[u8], block: &[u8; 64]) -> Result<super::SnpReport, Error> {
    let parsed = parse_report(raw)?;
    if parsed.report_data != *block {
        return Err(Error::ReportMismatch {
            what: "SEV-SNP report_data",
            expected: hex::encode(block),
            found: hex::encode(parsed.report_data),
        });
    }
    if parsed.vmpl != VMPL {
        return Err(Error::ReportMismatch {
            what: "SEV-SNP VMPL",
            expected: VMPL.to_string(),
            found: parsed.vmpl.to_string(),
        });
    }
    Ok(parsed)
}

/// An SNP report through configfs-tsm (provider `sev_guest`), with `auxblob` as the
/// certificate table.
pub(crate) fn report_via_tsm(
    fs: &dyn TsmFs,
    report_root: &Path,
    block: &[u8; 64],
) -> Result<(Vec<u8>, Option<Vec<CertTableEntry>>), Error> {
    let report = tsm::request(
        fs,
        report_root,
        &TsmRequest {
            provider: TSM_PROVIDER,
            inblob: block,
            privlevel: Some(VMPL),
            read_auxblob: true,
        },
    )?;
    let certs = match report.auxblob {
        Some(aux) if !aux.is_empty() => Some(parse_cert_table(&aux)?).filter(|c| !c.is_empty()),
        _ => None,
    };
    Ok((report.outblob, certs))
}

impl Attester for SnpAttester {
    fn tee(&self) -> kbs_types::Tee {
        kbs_types::Tee::Snp
    }

    fn evidence(&self, report_data: &[u8]) -> Result<String, Error> {
        let report = self.checked_report(report_data)?;
        let evidence = SnpEvidence::from_raw(&report.raw, report.certs)?;
        serde_json::to_string(&evidence).map_err(|e| Error::evidence("snp", e.to_string()))
    }

    fn launch_binding(&self) -> Result<Vec<u8>, Error> {
        // HOST_DATA is fixed at launch, so any report shows it; zero report data suffices.
        Ok(self.checked_report(&[])?.parsed.host_data.to_vec())
    }
}

#[cfg(target_os = "linux")]
mod ioctl {
    use std::os::fd::AsRawFd;
    use std::path::Path;

    use sev::firmware::host::CertTableEntry;

    use super::super::{parse_cert_table, REPORT_LEN};
    use crate::Error;

    /// `struct snp_report_req`.
    #[repr(C)]
    struct ReportReq {
        user_data: [u8; 64],
        vmpl: u32,
        rsvd: [u8; 28],
    }

    /// `struct snp_ext_report_req`.
    #[repr(C)]
    struct ExtReportReq {
        data: ReportReq,
        certs_address: u64,
        certs_len: u32,
    }

    /// `struct snp_report_resp`: a `MSG_REPORT_RSP` (status, size, reserved, report).
    #[repr(C)]
    struct ReportResp {
        data: [u8; 4000],
    }

    /// `struct snp_guest_request_ioctl`; `exitinfo2` holds fw_error (low) and vmm_error (high).
    #[repr(C)]
    struct GuestRequest {
        msg_version: u8,
        req_data: u64,
        resp_data: u64,
        exitinfo2: u64,
    }

    const _: () = assert!(std::mem::size_of::<ReportReq>() == 96);
    const _: () = assert!(std::mem::size_of::<ExtReportReq>() == 112);
    const _: () = assert!(std::mem::size_of::<GuestRequest>() == 32);

    /// `_IOWR('S', 0x2, struct snp_guest_request_ioctl)`.
    const SNP_GET_EXT_REPORT: libc::c_ulong =
        0xC000_0000 | (32 << 16) | ((b'S' as libc::c_ulong) << 8) | 0x2;
    /// The host said the certificate buffer is too small and wrote the size it needs.
    const VMM_ERR_INVALID_LEN: u32 = 1;
    /// Upper bound on a certificate buffer we allocate at the host's request.
    const MAX_CERTS_LEN: u32 = 1 << 20;
    /// Offset of the report inside `MSG_REPORT_RSP`.
    const RESP_REPORT_OFFSET: usize = 0x20;

    pub(super) fn ext_report(
        device: &Path,
        block: &[u8; 64],
        vmpl: u32,
    ) -> Result<(Vec<u8>, Option<Vec<CertTableEntry>>), Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .map_err(|e| Error::io("open", device, e))?;
        let fail = |reason: String| Error::Firmware {
            device: device.to_path_buf(),
            request: "SNP_GET_EXT_REPORT",
            reason,
        };

        let mut certs: Vec<u8> = Vec::new();
        // At most two rounds: ask without a buffer; if the host has certificates it says how
        // much room they need, and we ask once more with that.
        for round in 0..2 {
            let mut req = ExtReportReq {
                data: ReportReq {
                    user_data: *block,
                    vmpl,
                    rsvd: [0; 28],
                },
                certs_address: if certs.is_empty() {
                    0
                } else {
                    certs.as_mut_ptr() as u64
                },
                certs_len: certs.len() as u32,
            };
            let mut resp = ReportResp { data: [0; 4000] };
            let mut guest = GuestRequest {
                msg_version: 1,
                req_data: &mut req as *mut ExtReportReq as u64,
                resp_data: &mut resp as *mut ReportResp as u64,
                exitinfo2: 0,
            };
            // SAFETY: `guest` points at `req` and `resp`, which live until the call returns and
            // have the kernel's layouts (checked sizes above); `certs_address`, when set,
            // points at `certs.len()` writable bytes.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), SNP_GET_EXT_REPORT as _, &mut guest) };
            let fw_error = guest.exitinfo2 as u32;
            let vmm_error = (guest.exitinfo2 >> 32) as u32;
            if rc < 0 {
                let errno = std::io::Error::last_os_error();
                if round == 0 && vmm_error == VMM_ERR_INVALID_LEN && req.certs_len > 0 {
                    if req.certs_len > MAX_CERTS_LEN {
                        return Err(fail(format!(
                            "host asks for a {}-byte certificate buffer (limit {MAX_CERTS_LEN})",
                            req.certs_len
                        )));
                    }
                    certs = vec![0u8; req.certs_len as usize];
                    continue;
                }
                return Err(fail(format!(
                    "{errno} (firmware error {fw_error:#x}, VMM error {vmm_error:#x})"
                )));
            }
            let status = u32::from_le_bytes(resp.data[0..4].try_into().expect("4 bytes"));
            let size = u32::from_le_bytes(resp.data[4..8].try_into().expect("4 bytes")) as usize;
            if status != 0 {
                return Err(fail(format!("report status {status:#x}")));
            }
            if size != REPORT_LEN {
                return Err(fail(format!("report size {size}, expected {REPORT_LEN}")));
            }
            let report = resp.data[RESP_REPORT_OFFSET..RESP_REPORT_OFFSET + size].to_vec();
            let table = if certs.is_empty() {
                None
            } else {
                Some(parse_cert_table(&certs)?).filter(|t| !t.is_empty())
            };
            return Ok((report, table));
        }
        Err(fail(
            "host kept asking for a larger certificate buffer".to_string(),
        ))
    }
}

#[cfg(not(target_os = "linux"))]
mod ioctl {
    use super::*;
    pub(super) fn ext_report(
        device: &Path,
        _block: &[u8; 64],
        _vmpl: u32,
    ) -> Result<(Vec<u8>, Option<Vec<CertTableEntry>>), Error> {
        Err(Error::Firmware {
            device: device.to_path_buf(),
            request: "SNP_GET_EXT_REPORT",
            reason: "only available on Linux".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsm::fake::{leftover_entries, FakeTsm};

    const VECTOR: &[u8] = include_bytes!("../../../../shared/vectors/snp/test-report.bin");

    /// A report as the firmware would return it for `inblob`: the public vector with the
    /// requested report data written in at offset 0x50.
    fn fake_firmware(inblob: &[u8]) -> Vec<u8> {
        let mut report = VECTOR.to_vec();
        report[0x50..0x90].copy_from_slice(inblob);
        report
    }

    #[test]
    fn configfs_report_carries_request_and_host_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let vcek = include_bytes!("../../../../shared/vectors/snp/test-vcek.der").to_vec();
        let mut fake = FakeTsm::new(TSM_PROVIDER, Box::new(fake_firmware));
        fake.auxblob = super::super::tests::cert_table(&[(super::super::tests::VCEK_GUID, &vcek)]);
        let block = pad_report_data(b"nonce and key hash").unwrap();
        let (raw, certs) = report_via_tsm(&fake, dir.path(), &block).unwrap();
        let parsed = check_returned_report(&raw, &block).unwrap();
        assert_eq!(&parsed.report_data[..18], b"nonce and key hash");
        let certs = certs.unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].data(), vcek.as_slice());
        assert!(leftover_entries(dir.path()).is_empty());
    }

    #[test]
    fn configfs_without_certificates_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeTsm::new(TSM_PROVIDER, Box::new(fake_firmware));
        let (_, certs) = report_via_tsm(&fake, dir.path(), &[0; 64]).unwrap();
        assert!(certs.is_none());
    }

    #[test]
    fn short_outblob_is_rejected_and_entry_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeTsm::new(TSM_PROVIDER, Box::new(|_| vec![2, 0, 0, 0]));
        let (raw, _) = report_via_tsm(&fake, dir.path(), &[0; 64]).unwrap();
        let err = check_returned_report(&raw, &[0; 64]).unwrap_err();
        assert!(err.to_string().contains("4 bytes, expected 1184"), "{err}");
        assert!(leftover_entries(dir.path()).is_empty());
    }

    #[test]
    fn report_for_other_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A "firmware" that ignores the request and returns the vector unchanged.
        let fake = FakeTsm::new(TSM_PROVIDER, Box::new(|_| VECTOR.to_vec()));
        let block = [0xEE; 64];
        let (raw, _) = report_via_tsm(&fake, dir.path(), &block).unwrap();
        let err = check_returned_report(&raw, &block).unwrap_err();
        assert!(matches!(err, Error::ReportMismatch { .. }), "{err}");
    }

    #[test]
    fn tdx_provider_is_not_accepted_for_snp() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeTsm::new("tdx_guest", Box::new(fake_firmware));
        let err = report_via_tsm(&fake, dir.path(), &[0; 64]).unwrap_err();
        assert!(matches!(err, Error::TsmWrongProvider { .. }), "{err}");
    }

    #[test]
    fn attester_without_device_uses_configfs_root_and_reports_io_errors() {
        // No device and no configfs root: the error names the configfs path, it is not
        // mistaken for "no evidence".
        let dir = tempfile::tempdir().unwrap();
        let paths = TeePaths {
            sev_guest_device: dir.path().join("sev-guest"),
            tsm_report_root: dir.path().join("tsm/report"),
            ..TeePaths::default()
        };
        let err = SnpAttester::new(paths).evidence(b"x").unwrap_err();
        assert!(err.to_string().contains("tsm/report"), "{err}");
    }

    /// Needs an AMD SEV-SNP guest (Milan or later) with `/dev/sev-guest`.
    #[test]
    #[ignore = "needs an SEV-SNP guest with /dev/sev-guest"]
    fn hardware_snp_evidence() {
        let attester = SnpAttester::new(TeePaths::default());
        let json = attester.evidence(b"vigil hardware test").unwrap();
        let claims = crate::verify::claims(kbs_types::Tee::Snp, &json).unwrap();
        assert_eq!(&claims.report_data[..19], b"vigil hardware test");
        assert_eq!(claims.launch_binding, attester.launch_binding().unwrap());
    }
}
