//! The one error type of the guest operations. Each variant is one ttrpc status, so the agent
//! maps errors without reading messages; messages name the request field or the guest object.

/// Why a guest operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A request field is malformed or refused; the message starts with the field's path.
    #[error("{0}")]
    InvalidArgument(String),
    /// What the request names (a link, a device, a volume) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The guest lacks what the request needs (a tool, a kernel feature), or the measured
    /// config does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// What the request waits for (a hot-plugged device, a CPU) did not come in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Anything else: the kernel, the file system.
    #[error("{0}")]
    Internal(String),
}

impl GuestError {
    /// The same kind of error with `note` appended to its message.
    #[must_use]
    pub fn with_note(self, note: &str) -> GuestError {
        match self {
            GuestError::InvalidArgument(m) => GuestError::InvalidArgument(m + note),
            GuestError::NotFound(m) => GuestError::NotFound(m + note),
            GuestError::FailedPrecondition(m) => GuestError::FailedPrecondition(m + note),
            GuestError::DeadlineExceeded(m) => GuestError::DeadlineExceeded(m + note),
            GuestError::Internal(m) => GuestError::Internal(m + note),
        }
    }
}

impl GuestError {
    pub(crate) fn internal(doing: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        GuestError::Internal(format!("{doing}: {e}"))
    }
}

pub type Result<T, E = GuestError> = std::result::Result<T, E>;

/// A refused request field: `field: what`.
pub(crate) fn invalid(field: &str, what: impl std::fmt::Display) -> GuestError {
    GuestError::InvalidArgument(format!("{field}: {what}"))
}
