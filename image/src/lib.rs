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

// Seams for the fuzz targets (`tests/fuzz-targets`): the parsers a registry's answers reach
// and the unpacker, on their own. Not an API.
#[doc(hidden)]
pub use manifest::{
    choose_platform, Descriptor, ImageIndex, ImageManifest, LayerCompression, Manifest,
};
#[doc(hidden)]
pub use signature::check_payload as check_simple_signing;

/// One layer unpacked by the real unpacker into `dest` (an empty directory) under fresh
/// limits; the error is the unpacker's, prefixed by its kind (`invalid`, `limit`, `io`).
/// For the `image_layer` fuzz target. Not an API.
#[doc(hidden)]
pub fn unpack_layer_into(
    blob: impl std::io::Read,
    compression: LayerCompression,
    diff_id: &Digest,
    dest: &std::path::Path,
    max_bytes: u64,
    max_entries: u64,
) -> std::result::Result<u64, String> {
    let budget = unpack::Budget::new(max_bytes, max_entries);
    unpack::unpack_layer(blob, compression, diff_id, dest, &budget).map_err(|e| match e {
        unpack::UnpackError::Invalid(m) => format!("invalid: {m}"),
        unpack::UnpackError::Limit(m) => format!("limit: {m}"),
        unpack::UnpackError::Io(m) => format!("io: {m}"),
    })
}
