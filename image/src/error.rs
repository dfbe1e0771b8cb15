//! One error type, with a variant per kind of cause so that callers map it to a status
//! without reading messages. Every message names the image and what was wrong with it.

/// Every failure of a pull, a policy load or a rootfs set-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image reference itself is malformed.
    #[error("image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    /// The tenant's image policy refuses the image (a `reject` rule, a missing or bad
    /// signature, a signature by another key...).
    #[error("image {image} refused by the image policy: {reason}")]
    Denied { image: String, reason: String },
    /// There is no usable image policy (not configured, the KBS cannot be reached, the
    /// document is malformed): nothing can be pulled.
    #[error("image policy: {0}")]
    Policy(String),
    /// The registry could not be reached or answered with an error.
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },
    /// The registry does not have the image (or the blob).
    #[error("image {image}: {what} not found in the registry")]
    NotFound { image: String, what: String },
    /// The registry sent something wrong: a digest mismatch, a malformed manifest or config,
    /// a layer that would write outside its root.
    #[error("image {image}: {what}: {reason}")]
    Invalid {
        image: String,
        what: String,
        reason: String,
    },
    /// A configured limit (size, entries) was exceeded.
    #[error("image {image}: {what} exceeds the limit: {reason}")]
    Limit {
        image: String,
        what: String,
        reason: String,
    },
    /// The guest's own file system or mounts failed.
    #[error("{context}: {reason}")]
    Io { context: String, reason: String },
}

impl Error {
    pub(crate) fn io(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
        Error::Io {
            context: context.to_string(),
            reason: e.to_string(),
        }
    }

    pub(crate) fn invalid(
        image: impl std::fmt::Display,
        what: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::Invalid {
            image: image.to_string(),
            what: what.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
