//! The client's error: which step failed, why, and whether trying again can help.

use crate::envelope::EnvelopeError;
use crate::jwe::JweError;
use std::fmt;

/// Protocol step of an HTTP exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `POST /kbs/v0/auth`
    Auth,
    /// `POST /kbs/v0/attest` (and producing the evidence for it)
    Attest,
    /// `GET /kbs/v0/resource/...`
    Resource,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Auth => "auth",
            Step::Attest => "attest",
            Step::Resource => "resource",
        })
    }
}

/// What went wrong below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The connection could not be made (refused, unreachable, DNS).
    Connect,
    /// No complete answer within the timeout.
    Timeout,
    /// TLS failed: certificate not issued by the pinned CA, name mismatch, ...
    Tls,
    /// The connection broke mid-exchange.
    Other,
}

/// Every way a KBS operation can fail. `Display` starts with the step
/// (`config`, `transport`, `auth`, `attest`, `resource`, `decrypt`, `verify`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(String),
    /// The HTTP exchange itself failed.
    #[error("transport ({step}): {kind:?} error talking to {url}: {cause}")]
    Transport {
        step: Step,
        kind: TransportKind,
        url: String,
        cause: String,
    },
    /// The KBS answered with an error status.
    #[error("{step}: KBS refused (HTTP {status}{}): {detail}", error_type.as_deref().map(|t| format!(", {t}")).unwrap_or_default())]
    Rejected {
        step: Step,
        status: u16,
        /// `type` of Trustee's `ErrorInformation`, when the body had one.
        error_type: Option<String>,
        detail: String,
    },
    /// The KBS answered 2xx but the body is unusable (not JSON, too large, missing cookie).
    #[error("{step}: bad KBS response: {detail}")]
    BadResponse { step: Step, detail: String },
    /// The evidence provider failed or returned something unusable.
    #[error("attest: evidence: {0}")]
    Evidence(String),
    /// Resource requests kept getting 401 after re-attesting; the last 401's error body.
    #[error("resource: still unauthorized (HTTP 401) after {handshakes} handshake(s); giving up; last answer: {}{detail}", error_type.as_deref().map(|t| format!("{t}: ")).unwrap_or_default())]
    Unauthorized {
        handshakes: u32,
        /// `type` of the last 401's `ErrorInformation`, when it had one.
        error_type: Option<String>,
        detail: String,
    },
    /// The JWE response could not be decrypted.
    #[error("decrypt: {0}")]
    Decrypt(#[from] JweError),
    /// The signed policy envelope was refused.
    #[error("verify: {0}")]
    Verify(#[from] EnvelopeError),
}

impl Error {
    /// Whether the same operation may succeed later without any change:
    /// connection failures, timeouts, 5xx/408/429. Not for refusals (403,
    /// bad evidence), crypto or signature failures, or configuration errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { kind, .. } => !matches!(kind, TransportKind::Tls),
            Error::Rejected { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    /// The step name that starts the `Display` text.
    pub fn step_name(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Transport { .. } => "transport",
            Error::Rejected { step, .. } | Error::BadResponse { step, .. } => match step {
                Step::Auth => "auth",
                Step::Attest => "attest",
                Step::Resource => "resource",
            },
            Error::Evidence(_) => "attest",
            Error::Unauthorized { .. } => "resource",
            Error::Decrypt(_) => "decrypt",
            Error::Verify(_) => "verify",
        }
    }
}

/// Whether a 401 of this `ErrorInformation.type` is final: Trustee answers 401 (not 403 or
/// 404) when its resource policy denies the request (`PolicyDeny`) and when the resource is
/// missing or its storage fails (`PluginInternalError`). A new handshake presents the same
/// evidence and cannot change either answer; any other 401 (no or expired token, unknown
/// session) is worth one more handshake, within `max_auth_retries`.
pub fn reattest_cannot_help(error_type: &str) -> bool {
    let name = error_type.rsplit('/').next().unwrap_or(error_type);
    matches!(name, "PolicyDeny" | "PluginInternalError")
}

/// Result alias for client operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_starts_with_step_and_retry_classification() {
        let e = Error::Rejected {
            step: Step::Attest,
            status: 401,
            error_type: Some("https://x/errors/InvalidNonce".into()),
            detail: "nonce already used".into(),
        };
        assert!(e.to_string().starts_with("attest: "));
        assert!(e.to_string().contains("nonce already used"));
        assert!(!e.is_retryable());
        let e = Error::Rejected {
            step: Step::Auth,
            status: 503,
            error_type: None,
            detail: String::new(),
        };
        assert!(e.is_retryable());
        let e = Error::Transport {
            step: Step::Auth,
            kind: TransportKind::Connect,
            url: "u".into(),
            cause: "refused".into(),
        };
        assert!(e.to_string().starts_with("transport (auth)"));
        assert!(e.is_retryable());
        let e = Error::Transport {
            step: Step::Auth,
            kind: TransportKind::Tls,
            url: "u".into(),
            cause: "bad cert".into(),
        };
        assert!(!e.is_retryable());
        assert_eq!(e.step_name(), "transport");
    }

    #[test]
    fn final_401_types_and_unauthorized_keeps_the_last_answer() {
        let prefix = "https://github.com/confidential-containers/kbs/errors/";
        assert!(reattest_cannot_help(&format!("{prefix}PolicyDeny")));
        assert!(reattest_cannot_help(&format!(
            "{prefix}PluginInternalError"
        )));
        assert!(reattest_cannot_help("PolicyDeny"));
        for again in [
            "TokenNotFound",
            "TokenVerifierError",
            "UnAuthenticatedCookie",
            "",
        ] {
            assert!(
                !reattest_cannot_help(&format!("{prefix}{again}")),
                "{again}"
            );
        }
        let e = Error::Unauthorized {
            handshakes: 3,
            error_type: Some(format!("{prefix}TokenVerifierError")),
            detail: "Token Verifier error".into(),
        };
        let text = e.to_string();
        assert!(text.starts_with("resource: "), "{text}");
        assert!(
            text.contains("TokenVerifierError: Token Verifier error"),
            "{text}"
        );
        assert!(!e.is_retryable());
    }
}
