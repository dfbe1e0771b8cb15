//! vigil key broker client.
//!
//! * [`KbsClient`]: the Trustee KBS attestation handshake (RCAR, protocol
//!   0.4.0) and JWE-encrypted resource fetch, with [`KbsClient::fetch_policy`]
//!   for signed policies.
//! * [`KbsSession`]: one client and its attested session, shared (cloneable, async-safe) by
//!   every user of the KBS after start-up; re-attests on 401 within the configured bound.
//! * [`envelope`]: the signed policy envelope (JWS compact, ES256/EdDSA),
//!   free of network dependencies so the agent's SetPolicy path can use it.
//! * [`sealed`]: CoCo sealed secrets (`sealed.<JWS>`, "vault" type naming a KBS resource).
//! * [`jwe`], [`jcs`], [`tee_key`]: the protocol building blocks, public so the
//!   test KBS and fuzz targets exercise the same code paths.

pub mod client;
pub mod config;
pub mod envelope;
pub mod error;
pub mod jcs;
pub mod jwe;
pub mod sealed;
pub mod session;
pub mod tee_key;

pub use client::{
    EvidenceError, EvidenceFn, HandshakeTimings, KbsClient, PROTOCOL_VERSION, SESSION_COOKIE,
};
pub use config::KbcConfig;
pub use envelope::{VerifiedPolicy, VerifyingKey};
pub use error::{Error, Result, Step, TransportKind};
pub use kbs_types::{HashAlgorithm, Tee};
pub use session::KbsSession;
