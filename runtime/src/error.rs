//! The one error type of the runtime, shaped so that the agent maps each variant to one ttrpc
//! code without reading messages.

/// Every failure a [`crate::Sandbox`] method can return.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The sandbox, container or process does not exist (`NOT_FOUND`).
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// The sandbox or container already exists (`ALREADY_EXISTS`).
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// A request field is malformed or refused (`INVALID_ARGUMENT`); `field` names it the way
    /// the request spells it (e.g. `OCI.Mounts[2].source`).
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The request is valid but the object is in the wrong state for it (`FAILED_PRECONDITION`),
    /// e.g. starting a container twice or resizing a process that has no terminal.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation did not finish in the time the request allowed (`DEADLINE_EXCEEDED`).
    #[error("{0}")]
    Timeout(String),
    /// The output stream is closed and everything in it has been read. Kata's agent answers
    /// this with an error whose text contains "eof"; the Kata shim treats it as end of stream.
    #[error("read meet eof")]
    EndOfStream,
    /// Anything else: the OCI runtime, the kernel, the file system (`INTERNAL`).
    #[error("{0}")]
    Internal(String),
}

impl RuntimeError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn internal(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        RuntimeError::Internal(format!("{context}: {e}"))
    }

    /// A guest operation's error (`vigil_guest`) with the same status; an invalid argument
    /// keeps the field its message starts with (`storages[0].source: ...`), else `field`.
    pub(crate) fn from_guest(e: vigil_guest::GuestError, field: &str) -> RuntimeError {
        use vigil_guest::GuestError as G;
        match e {
            G::InvalidArgument(m) => match m.split_once(": ") {
                Some((f, reason)) if !f.contains(' ') => RuntimeError::invalid(f, reason),
                _ => RuntimeError::invalid(field, m),
            },
            // What the host named is not there: the request cannot be served as it stands.
            G::NotFound(m) | G::FailedPrecondition(m) => RuntimeError::FailedPrecondition(m),
            G::DeadlineExceeded(m) => RuntimeError::Timeout(m),
            G::Internal(m) => RuntimeError::Internal(m),
        }
    }

    pub(crate) fn not_found(kind: &'static str, id: &str) -> RuntimeError {
        RuntimeError::NotFound {
            kind,
            id: id.to_string(),
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
