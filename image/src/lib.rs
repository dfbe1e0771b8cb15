//! vigil's guest image pull: the guest fetches container images itself and refuses any the
//! tenant has not approved, so the untrusted host never supplies a container's files.
//!
//! - [`ImageService`]: pull a reference under the tenant's image policy into a content store
//!   shared by the boot's containers, and build a container's root file system from it
//!   ([`Rootfs`], an overlay of the layers or a copy).
//! - [`ImagePolicy`]: the containers-policy JSON format CoCo uses (`reject`,
//!   `insecureAcceptAnything`, `sigstoreSigned` with cosign keys, `transports.docker` scopes).
//! - [`ResourceSource`]: where `kbs:///` resources (policy, keys, credentials) come from; the
//!   agent implements it on its attested KBS session.
//! - [`apply_image_defaults`]: the image config's process defaults into the OCI process.
//! - [`Reference`], [`Digest`]: image references and content digests.
//!
//! See README.md for the verification order, the unpack rules and the store layout.

mod digest;
mod error;
mod manifest;
mod policy;
mod process;
mod reference;
mod registry;
mod rootfs;
mod service;
mod signature;
mod store;
mod trust;
mod unpack;

pub use digest::Digest;
pub use error::{Error, Result};
pub use manifest::{host_platform, ContainerConfig, ImageConfig, Platform};
pub use policy::{ImagePolicy, KeySource, Requirement, SignedIdentity, SigstoreRule};
pub use process::apply_image_defaults;
pub use reference::Reference;
pub use registry::{Credentials, RegistryConfig};
pub use rootfs::{Rootfs, RootfsMode};
pub use service::{
    AuditSink, ImageService, Limits, PullDecision, PullStats, PulledImage, Settings,
};
pub use signature::{signature_tag, CosignKey};
pub use trust::{PolicySource, ResourceSource, ResourceUri};
