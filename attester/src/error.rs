//! The one error type of this crate.
//!
//! Every variant names what was being read (file, device, field) and why it failed, so a
//! start-up failure in the guest can be diagnosed from the message alone.

use std::path::{Path, PathBuf};

/// Errors from evidence collection, parsing, binding checks and verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file, directory or device operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A firmware or driver request (ioctl) was rejected.
    #[error("{device}: {request} failed: {reason}")]
    Firmware {
        device: PathBuf,
        request: &'static str,
        reason: String,
    },

    /// The caller passed more than 64 bytes of report data.
    #[error("report_data is {len} bytes; at most 64 bytes fit in a TEE report")]
    ReportDataTooLong { len: usize },

    /// A binary structure (report, quote, TDREPORT, certificate table) is malformed.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },

    /// Evidence JSON of the given TEE is malformed.
    #[error("malformed {tee} evidence: {reason}")]
    Evidence { tee: &'static str, reason: String },

    /// A configfs-tsm report entry belongs to a different provider than required.
    #[error("{}: provider is {found:?}, expected {expected:?}", path.display())]
    TsmWrongProvider {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },

    /// Someone else wrote to the configfs-tsm entry while we used it: the report may not be ours.
    #[error(
        "{}: generation is {found} after reading outblob, expected {expected} \
         (another writer raced on this report entry)",
        path.display()
    )]
    TsmGenerationChanged {
        path: PathBuf,
        expected: u64,
        found: u64,
    },

    /// The report returned by the firmware does not carry what we asked for.
    #[error("{what} in the returned report is {found}, requested {expected}")]
    ReportMismatch {
        what: &'static str,
        expected: String,
        found: String,
    },

    /// `auto` found no TEE device.
    #[error(
        "no TEE detected (checked {checked}); to run without a TEE for development or CI, \
         select the mock TEE explicitly (tee = \"mock\")"
    )]
    NoTeeDetected { checked: String },

    /// `auto` found more than one TEE device.
    #[error("both SEV-SNP ({snp}) and TDX ({tdx}) devices are present; select the TEE explicitly")]
    AmbiguousTee { snp: String, tdx: String },

    /// A TEE guest interface exists, but of a kind this crate cannot attest with.
    #[error("{0}: a TEE interface this agent cannot attest with")]
    UnsupportedTeeInterface(String),

    /// The TEE name is not one this crate knows.
    #[error("unknown TEE {0:?}: expected one of \"mock\", \"snp\", \"tdx\", \"auto\"")]
    UnknownTee(String),

    /// `none` selects no TEE at all, so it cannot give an attester.
    #[error("TEE \"none\" selects unattested mode, which has no attester; use \"mock\", \"snp\", \"tdx\" or \"auto\"")]
    NoneIsNotATee,

    /// This build was compiled without support for the requested TEE.
    #[error("{0} support is not compiled into this build (cargo feature disabled)")]
    NotCompiled(&'static str),

    /// The TEE is not one whose evidence this crate verifies.
    #[error("evidence of TEE {0} is not supported by this verifier")]
    UnsupportedTee(String),

    /// The launch-time binding field does not hold the expected initdata digest.
    #[error(
        "launch binding mismatch: the {field_len}-byte field holds {found}, \
         the initdata digest gives {expected}"
    )]
    BindingMismatch {
        field_len: usize,
        expected: String,
        found: String,
    },

    /// The launch binding field or the digest is empty, so nothing could be compared.
    #[error("launch binding check impossible: {0}")]
    BindingUnusable(&'static str),

    /// A signature or certificate chain did not verify.
    #[error("{what} verification failed: {reason}")]
    Verification { what: &'static str, reason: String },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Malformed {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn evidence(tee: &'static str, reason: impl Into<String>) -> Self {
        Error::Evidence {
            tee,
            reason: reason.into(),
        }
    }
}
