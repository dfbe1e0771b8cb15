//! AMD SEV-SNP: report parsing, the CoCo evidence document, certificate tables, signature
//! checks, and the guest-side attester.
//!
//! Offsets follow AMD's SEV-SNP firmware ABI specification, table "ATTESTATION_REPORT
//! Structure". The parser reads raw bytes itself (bounds-checked) rather than through
//! `sev::AttestationReport`, whose decoder rejects reports it cannot map to a known CPU
//! generation; `sev` types are used where wire compatibility with Trustee depends on them
//! (the evidence JSON) and for certificate handling.

mod guest;

pub use guest::SnpAttester;

use serde::{Deserialize, Serialize};
use sev::certs::snp::{Certificate, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;

use crate::bytes::Fields;
use crate::Error;

/// Size of an attestation report as the firmware returns it.
pub const REPORT_LEN: usize = 0x4A0;
/// The signature covers bytes `0..SIGNED_LEN` of the report.
pub const SIGNED_LEN: usize = 0x2A0;
/// `SIGNATURE_ALGO` value for ECDSA P-384 with SHA-384, the only one defined.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// The fields of an SEV-SNP attestation report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpReport {
    pub version: u32,
    pub guest_svn: u32,
    /// Guest policy (ABI version, SMT, debug, migration agent, ...).
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    /// The VMPL the report was requested at.
    pub vmpl: u32,
    pub sig_algo: u32,
    /// Raw TCB_VERSION values (their byte layout depends on the CPU generation).
    pub current_tcb: u64,
    pub platform_info: u64,
    /// Guest-supplied data: what binds the report to a nonce and key.
    pub report_data: [u8; 64],
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// Host-supplied at launch: carries the initdata digest.
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    pub report_id_ma: [u8; 32],
    /// The TCB the VCEK that signed this report was derived from.
    pub reported_tcb: u64,
    /// CPUID family, model, stepping (report version 3 and later).
    pub cpuid_fam_mod_step: Option<(u8, u8, u8)>,
    /// Chip identifier (zero when the host masks it).
    pub chip_id: [u8; 64],
    pub committed_tcb: u64,
    pub launch_tcb: u64,
    /// ECDSA signature components, little-endian, zero-extended to 72 bytes.
    pub signature_r: [u8; 72],
    pub signature_s: [u8; 72],
}

/// Parses a raw attestation report (exactly [`REPORT_LEN`] bytes, version 2 or later).
pub fn parse_report(bytes: &[u8]) -> Result<SnpReport, Error> {
    const WHAT: &str = "SEV-SNP report";
    if bytes.len() != REPORT_LEN {
        return Err(Error::malformed(
            WHAT,
            format!("{} bytes, expected {REPORT_LEN}", bytes.len()),
        ));
    }
    let f = Fields::new(bytes, WHAT);
    let version = f.u32(0x00)?;
    if version < 2 {
        return Err(Error::malformed(
            WHAT,
            format!("version {version}, expected 2 or later"),
        ));
    }
    let cpuid_fam_mod_step = if version >= 3 {
        Some((
            f.array::<1>(0x188)?[0],
            f.array::<1>(0x189)?[0],
            f.array::<1>(0x18A)?[0],
        ))
    } else {
        None
    };
    Ok(SnpReport {
        version,
        guest_svn: f.u32(0x04)?,
        policy: f.u64(0x08)?,
        family_id: f.array(0x10)?,
        image_id: f.array(0x20)?,
        vmpl: f.u32(0x30)?,
        sig_algo: f.u32(0x34)?,
        current_tcb: f.u64(0x38)?,
        platform_info: f.u64(0x40)?,
        report_data: f.array(0x50)?,
        measurement: f.array(0x90)?,
        host_data: f.array(0xC0)?,
        id_key_digest: f.array(0xE0)?,
        author_key_digest: f.array(0x110)?,
        report_id: f.array(0x140)?,
        report_id_ma: f.array(0x160)?,
        reported_tcb: f.u64(0x180)?,
        cpuid_fam_mod_step,
        chip_id: f.array(0x1A0)?,
        committed_tcb: f.u64(0x1E0)?,
        launch_tcb: f.u64(0x1F0)?,
        signature_r: f.array(0x2A0)?,
        signature_s: f.array(0x2E8)?,
    })
}

/// The SNP evidence document as the CoCo attester emits it and Trustee's SNP verifier reads
/// it: the report in the `sev` crate's serde form, plus the host's certificate table if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnpEvidence {
    pub attestation_report: AttestationReport,
    pub cert_chain: Option<Vec<CertTableEntry>>,
}

impl SnpEvidence {
    /// Builds the document from raw report bytes (as the firmware returned them).
    pub fn from_raw(report: &[u8], cert_chain: Option<Vec<CertTableEntry>>) -> Result<Self, Error> {
        let attestation_report = AttestationReport::from_bytes(report)
            .map_err(|e| Error::malformed("SEV-SNP report", format!("sev decoder: {e}")))?;
        Ok(SnpEvidence {
            attestation_report,
            cert_chain,
        })
    }

    /// The report as raw bytes again (reserved fields zero, as the firmware writes them).
    pub fn raw_report(&self) -> Result<Vec<u8>, Error> {
        let raw = self.attestation_report.to_bytes().map_err(|e| {
            Error::evidence("snp", format!("cannot encode attestation_report: {e}"))
        })?;
        Ok(raw.to_vec())
    }

    /// The VCEK (or VLEK) from the certificate table, if the host supplied one.
    pub fn endorsement_key_cert(&self) -> Option<&[u8]> {
        self.cert_chain.as_ref()?.iter().find_map(|entry| {
            matches!(entry.cert_type, CertType::VCEK | CertType::VLEK).then_some(entry.data())
        })
    }
}

/// Size of one certificate table entry: GUID, offset, length.
const CERT_ENTRY_LEN: usize = 24;
/// Real tables hold a handful of entries (ARK, ASK, VCEK or VLEK, CRL). The cap keeps a
/// hostile table of many entries all pointing at the same large blob from multiplying
/// memory use.
const MAX_CERT_ENTRIES: usize = 32;

/// Parses a host-supplied certificate table (the extended-report buffer or configfs
/// `auxblob`): entries `{guid[16], offset u32, length u32}` ending with an all-zero entry,
/// offsets relative to the table start, certificates after the entries. The host is
/// untrusted, so every entry is bounds-checked. An empty or all-zero buffer gives an empty
/// list.
pub fn parse_cert_table(bytes: &[u8]) -> Result<Vec<CertTableEntry>, Error> {
    const WHAT: &str = "SEV-SNP certificate table";
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let f = Fields::new(bytes, WHAT);

    // First pass: find the terminator, so the certificate area is known.
    let mut count = 0usize;
    loop {
        let guid: [u8; 16] = f.array(count * CERT_ENTRY_LEN).map_err(|_| {
            Error::malformed(
                WHAT,
                format!("no terminating all-zero entry in {} bytes", bytes.len()),
            )
        })?;
        if guid == [0; 16] {
            break;
        }
        count += 1;
        if count > MAX_CERT_ENTRIES {
            return Err(Error::malformed(
                WHAT,
                format!("more than {MAX_CERT_ENTRIES} entries"),
            ));
        }
    }
    let data_start = (count + 1) * CERT_ENTRY_LEN;

    let mut entries = Vec::with_capacity(count);
    for index in 0..count {
        let at = index * CERT_ENTRY_LEN;
        let guid: [u8; 16] = f.array(at)?;
        let offset = f.u32(at + 16)? as usize;
        let length = f.u32(at + 20)? as usize;
        let data = f
            .slice(offset, length)
            .ok()
            .filter(|_| offset >= data_start)
            .ok_or_else(|| {
                Error::malformed(
                    WHAT,
                    format!(
                        "entry {index} points at {length} bytes from offset {offset:#x}, \
                         outside the certificate area {data_start:#x}..{:#x}",
                        bytes.len()
                    ),
                )
            })?;
        let uuid = uuid::Uuid::from_bytes(guid);
        let entry = CertTableEntry::from_guid(&uuid, data.to_vec())
            .map_err(|e| Error::malformed(WHAT, format!("GUID {uuid}: {e}")))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Checks the report's ECDSA P-384 signature with the VCEK (or VLEK) certificate in DER.
///
/// This proves the key in `vek_der` signed the report; that the certificate itself chains to
/// AMD is checked by [`verify_vek_chain`].
pub fn verify_signature(report: &[u8], vek_der: &[u8]) -> Result<(), Error> {
    const WHAT: &str = "SEV-SNP report signature";
    use p384::ecdsa::signature::Verifier as _;

    let parsed = parse_report(report)?;
    if parsed.sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(Error::Verification {
            what: WHAT,
            reason: format!("signature algorithm {} is not ECDSA P-384", parsed.sig_algo),
        });
    }
    let cert = Certificate::from_der(vek_der).map_err(|e| Error::Verification {
        what: WHAT,
        reason: format!("VCEK certificate: {e}"),
    })?;
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(cert.public_key_sec1()).map_err(|e| {
        Error::Verification {
            what: WHAT,
            reason: format!("VCEK public key is not a P-384 point: {e}"),
        }
    })?;
    let signature = signature_from_le(&parsed.signature_r, &parsed.signature_s)?;
    key.verify(&report[..SIGNED_LEN], &signature)
        .map_err(|_| Error::Verification {
            what: WHAT,
            reason: "the VCEK did not sign this report".to_string(),
        })
}

/// Converts the report's little-endian, 72-byte r and s into a P-384 signature.
fn signature_from_le(r: &[u8; 72], s: &[u8; 72]) -> Result<p384::ecdsa::Signature, Error> {
    let to_be = |le: &[u8; 72], name: &str| -> Result<[u8; 48], Error> {
        if le[48..].iter().any(|&b| b != 0) {
            return Err(Error::Verification {
                what: "SEV-SNP report signature",
                reason: format!("{name} exceeds 48 bytes"),
            });
        }
        let mut be = [0u8; 48];
        for (dst, src) in be.iter_mut().zip(le[..48].iter().rev()) {
            *dst = *src;
        }
        Ok(be)
    };
    let (r, s) = (to_be(r, "r")?, to_be(s, "s")?);
    p384::ecdsa::Signature::from_scalars(r, s).map_err(|e| Error::Verification {
        what: "SEV-SNP report signature",
        reason: format!("r or s out of range: {e}"),
    })
}

/// AMD product lines whose root keys (ARK, ASK) are built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductLine {
    Milan,
    Genoa,
    Turin,
}

/// Checks that a VCEK certificate chains to AMD's built-in ARK via the ASK of some product
/// line, and says which. Revocation (CRL) and TCB freshness are not checked.
pub fn verify_vek_chain(vek_der: &[u8]) -> Result<ProductLine, Error> {
    use sev::certs::snp::builtin;
    const WHAT: &str = "VCEK certificate chain";
    let vek = Certificate::from_der(vek_der).map_err(|e| Error::Verification {
        what: WHAT,
        reason: format!("VCEK certificate: {e}"),
    })?;
    type Roots = fn() -> std::io::Result<(Certificate, Certificate)>;
    let lines: [(ProductLine, Roots); 3] = [
        (ProductLine::Milan, || {
            Ok((builtin::milan::ark()?, builtin::milan::ask()?))
        }),
        (ProductLine::Genoa, || {
            Ok((builtin::genoa::ark()?, builtin::genoa::ask()?))
        }),
        (ProductLine::Turin, || {
            Ok((builtin::turin::ark()?, builtin::turin::ask()?))
        }),
    ];
    for (line, roots) in lines {
        let (ark, ask) = roots().map_err(|e| Error::Verification {
            what: WHAT,
            reason: format!("built-in {line:?} roots: {e}"),
        })?;
        if (&ark, &ark).verify().is_ok()
            && (&ark, &ask).verify().is_ok()
            && (&ask, &vek).verify().is_ok()
        {
            return Ok(line);
        }
    }
    Err(Error::Verification {
        what: WHAT,
        reason: "not signed by the ASK of Milan, Genoa or Turin".to_string(),
    })
}

/// AMD's OID arc for VCEK certificate extensions (1.3.6.1.4.1.3704.1).
const AMD_VCEK_ARC: &str = "1.3.6.1.4.1.3704.1";

/// Checks that the VCEK was issued for the platform state the report claims: its hardware
/// ID extension equals the report's `CHIP_ID` (unless the host masks the chip ID) and its
/// TCB extensions equal `REPORTED_TCB`, decoded with `line`'s TCB layout. Without this a
/// VCEK of an older, weaker TCB could vouch for a report claiming a newer one.
pub fn check_vek_matches_report(
    vek_der: &[u8],
    report: &SnpReport,
    line: ProductLine,
) -> Result<(), Error> {
    use x509_cert::der::Decode as _;
    const WHAT: &str = "VCEK extensions";
    let fail = |reason: String| Error::Verification { what: WHAT, reason };

    let cert = x509_cert::Certificate::from_der(vek_der)
        .map_err(|e| fail(format!("VCEK certificate: {e}")))?;
    let extensions = cert.tbs_certificate.extensions.unwrap_or_default();
    let find = |suffix: &str| {
        let oid = format!("{AMD_VCEK_ARC}.{suffix}");
        extensions
            .iter()
            .find(|ext| ext.extn_id.to_string() == oid)
            .map(|ext| ext.extn_value.as_bytes())
    };

    // hwID (.4): the raw 64-byte chip ID. VLEKs have none; masked chip IDs read as zero.
    if let Some(hw_id) = find("4") {
        if report.chip_id != [0; 64] && hw_id != report.chip_id.as_slice() {
            return Err(fail(format!(
                "hwID {} differs from the report's CHIP_ID {}",
                hex::encode(hw_id),
                hex::encode(report.chip_id)
            )));
        }
    }

    let tcb = report.reported_tcb.to_le_bytes();
    // TCB_VERSION byte positions: Milan/Genoa [bootloader, tee, _, _, _, _, snp, microcode],
    // Turin [fmc, bootloader, tee, snp, _, _, _, microcode].
    let mut expected = match line {
        ProductLine::Milan | ProductLine::Genoa => {
            vec![
                ("blSPL", "3.1", tcb[0]),
                ("teeSPL", "3.2", tcb[1]),
                ("snpSPL", "3.3", tcb[6]),
            ]
        }
        ProductLine::Turin => vec![
            ("fmcSPL", "3.9", tcb[0]),
            ("blSPL", "3.1", tcb[1]),
            ("teeSPL", "3.2", tcb[2]),
            ("snpSPL", "3.3", tcb[3]),
        ],
    };
    expected.push(("ucodeSPL", "3.8", tcb[7]));
    for (name, suffix, want) in expected {
        let value = find(suffix).ok_or_else(|| fail(format!("{name} extension missing")))?;
        let got = der_small_uint(value).ok_or_else(|| {
            fail(format!(
                "{name} is not a small DER INTEGER: {}",
                hex::encode(value)
            ))
        })?;
        if got != want {
            return Err(fail(format!(
                "{name} is {got} in the VCEK but {want} in the report's REPORTED_TCB"
            )));
        }
    }
    Ok(())
}

/// Decodes a DER INTEGER holding a value 0..=255.
fn der_small_uint(der: &[u8]) -> Option<u8> {
    let (&tag, rest) = der.split_first()?;
    let (&len, body) = rest.split_first()?;
    if tag != 0x02 || usize::from(len) != body.len() || body.is_empty() || body[0] & 0x80 != 0 {
        return None;
    }
    let significant: Vec<u8> = body.iter().copied().skip_while(|&b| b == 0).collect();
    match significant.as_slice() {
        [] => Some(0),
        [b] => Some(*b),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
