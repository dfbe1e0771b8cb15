//! Intel TDX: quote (v4, v5) and TDREPORT parsing, the CoCo evidence document, and the
//! guest-side attester.
//!
//! Layouts follow Intel's TDX DCAP quote format (header 48 bytes, TD report body 584 bytes
//! for TDX 1.0 / 648 for 1.5) and the TDX module ABI for TDREPORT_STRUCT (1024 bytes:
//! REPORTMACSTRUCT, TEE_TCB_INFO, TDINFO).

mod guest;

pub use guest::TdxAttester;

use serde::{Deserialize, Serialize};

use crate::bytes::Fields;
use crate::Error;

/// `tee_type` of a TDX quote.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Quote header size.
pub const QUOTE_HEADER_LEN: usize = 48;
/// TD report body size for TDX 1.0 (quote v4, and v5 body type 2).
pub const TD_REPORT10_LEN: usize = 584;
/// TD report body size for TDX 1.5 (quote v5 body type 3).
pub const TD_REPORT15_LEN: usize = 648;
/// TDREPORT_STRUCT size.
pub const TDREPORT_LEN: usize = 1024;

/// Fields of the TD report body shared by quotes and TDREPORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdMeasurements {
    /// Build-time measurement of the TD.
    pub mr_td: [u8; 48],
    /// Host-set at launch: carries the initdata digest.
    pub mr_config_id: [u8; 48],
    pub mr_owner: [u8; 48],
    pub mr_owner_config: [u8; 48],
    /// Runtime measurement registers 0..3.
    pub rtmrs: [[u8; 48]; 4],
    /// Guest-supplied data: what binds the report to a nonce and key.
    pub report_data: [u8; 64],
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
}

/// A parsed TDX quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxQuote {
    /// 4 or 5.
    pub version: u16,
    pub attestation_key_type: u16,
    pub tee_type: u32,
    pub qe_vendor_id: [u8; 16],
    /// v5 body type (2: TDX 1.0, 3: TDX 1.5); 2 for v4 quotes.
    pub body_type: u16,
    pub tee_tcb_svn: [u8; 16],
    pub mr_seam: [u8; 48],
    pub mr_signer_seam: [u8; 48],
    pub seam_attributes: [u8; 8],
    pub td: TdMeasurements,
    /// TDX 1.5 only.
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// TDX 1.5 only.
    pub mr_service_td: Option<[u8; 48]>,
    /// The quote signature data (ECDSA signature, attestation key, QE report and
    /// certification data); not verified here.
    pub signature_data: Vec<u8>,
}

/// Parses a TDX quote, version 4 or 5. Trailing bytes after the signature data are
/// tolerated (some providers pad their buffers); anything short is an error.
pub fn parse_quote(bytes: &[u8]) -> Result<TdxQuote, Error> {
    const WHAT: &str = "TDX quote";
    let f = Fields::new(bytes, WHAT);
    let version = f.u16(0)?;
    let tee_type = f.u32(4)?;
    if tee_type != TEE_TYPE_TDX {
        return Err(Error::malformed(
            WHAT,
            format!("tee_type {tee_type:#x}, expected {TEE_TYPE_TDX:#x} (TDX)"),
        ));
    }
    let (body_type, body_offset, body_len) = match version {
        4 => (2u16, QUOTE_HEADER_LEN, TD_REPORT10_LEN),
        5 => {
            let body_type = f.u16(QUOTE_HEADER_LEN)?;
            let size = f.u32(QUOTE_HEADER_LEN + 2)? as usize;
            let expected = match body_type {
                2 => TD_REPORT10_LEN,
                3 => TD_REPORT15_LEN,
                other => {
                    return Err(Error::malformed(
                        WHAT,
                        format!("v5 body type {other}, expected 2 (TDX 1.0) or 3 (TDX 1.5)"),
                    ))
                }
            };
            if size != expected {
                return Err(Error::malformed(
                    WHAT,
                    format!("v5 body type {body_type} has size {size}, expected {expected}"),
                ));
            }
            (body_type, QUOTE_HEADER_LEN + 6, expected)
        }
        other => {
            return Err(Error::malformed(
                WHAT,
                format!("version {other}, expected 4 or 5"),
            ))
        }
    };
    // Check the whole body is present before reading into it.
    f.slice(body_offset, body_len)?;
    let b = |off: usize| body_offset + off;
    let td = TdMeasurements {
        td_attributes: f.array(b(120))?,
        xfam: f.array(b(128))?,
        mr_td: f.array(b(136))?,
        mr_config_id: f.array(b(184))?,
        mr_owner: f.array(b(232))?,
        mr_owner_config: f.array(b(280))?,
        rtmrs: [
            f.array(b(328))?,
            f.array(b(376))?,
            f.array(b(424))?,
            f.array(b(472))?,
        ],
        report_data: f.array(b(520))?,
    };
    let (tee_tcb_svn2, mr_service_td) = if body_type == 3 {
        (Some(f.array(b(584))?), Some(f.array(b(600))?))
    } else {
        (None, None)
    };
    let sig_len_at = body_offset + body_len;
    let sig_len = f.u32(sig_len_at)? as usize;
    let signature_data = f
        .slice(sig_len_at + 4, sig_len)
        .map_err(|_| {
            Error::malformed(
                WHAT,
                format!(
                    "signature data of {sig_len} bytes does not fit in the {}-byte quote",
                    bytes.len()
                ),
            )
        })?
        .to_vec();
    Ok(TdxQuote {
        version,
        attestation_key_type: f.u16(2)?,
        tee_type,
        qe_vendor_id: f.array(12)?,
        body_type,
        tee_tcb_svn: f.array(b(0))?,
        mr_seam: f.array(b(16))?,
        mr_signer_seam: f.array(b(64))?,
        seam_attributes: f.array(b(112))?,
        td,
        tee_tcb_svn2,
        mr_service_td,
        signature_data,
    })
}

/// A parsed TDREPORT_STRUCT (what the `/dev/tdx_guest` report ioctl returns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport {
    /// REPORTTYPE: type (0x81 for TDX), subtype, version, reserved.
    pub report_type: [u8; 4],
    pub cpu_svn: [u8; 16],
    pub tee_tcb_info_hash: [u8; 48],
    pub tee_info_hash: [u8; 48],
    pub mac: [u8; 32],
    pub td: TdMeasurements,
}

/// Parses a TDREPORT_STRUCT (exactly [`TDREPORT_LEN`] bytes, report type TDX).
pub fn parse_tdreport(bytes: &[u8]) -> Result<TdReport, Error> {
    const WHAT: &str = "TDREPORT";
    if bytes.len() != TDREPORT_LEN {
        return Err(Error::malformed(
            WHAT,
            format!("{} bytes, expected {TDREPORT_LEN}", bytes.len()),
        ));
    }
    let f = Fields::new(bytes, WHAT);
    let report_type: [u8; 4] = f.array(0)?;
    if u32::from(report_type[0]) != TEE_TYPE_TDX {
        return Err(Error::malformed(
            WHAT,
            format!(
                "report type {:#x}, expected {TEE_TYPE_TDX:#x} (TDX)",
                report_type[0]
            ),
        ));
    }
    // TDINFO starts at 512.
    let td = TdMeasurements {
        report_data: f.array(128)?,
        td_attributes: f.array(512)?,
        xfam: f.array(520)?,
        mr_td: f.array(528)?,
        mr_config_id: f.array(576)?,
        mr_owner: f.array(624)?,
        mr_owner_config: f.array(672)?,
        rtmrs: [f.array(720)?, f.array(768)?, f.array(816)?, f.array(864)?],
    };
    Ok(TdReport {
        report_type,
        cpu_svn: f.array(16)?,
        tee_tcb_info_hash: f.array(32)?,
        tee_info_hash: f.array(80)?,
        mac: f.array(224)?,
        td,
    })
}

/// The TDX evidence document as the CoCo attester emits it: standard base64 of the quote,
/// and of the CCEL event log when the firmware provides one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxEvidence {
    pub cc_eventlog: Option<String>,
    pub quote: String,
}

#[cfg(test)]
mod tests;
