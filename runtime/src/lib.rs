//! vigil's container backend: one sandbox, its containers, their processes and stdio, behind
//! the agent API's request and response types.
//!
//! - [`Sandbox`]: the manager the agent's handlers call, one async method per RPC.
//! - [`ContainerRuntime`]: the seam to an OCI runtime library; [`LibcontainerRuntime`] is the
//!   implementation on youki's `libcontainer` (see README.md for why).
//! - [`RuntimeError`]: every failure, one variant per ttrpc status the agent answers with.
//! - [`SandboxConfig`]: where sandboxes live and what containers may ask of the guest; the
//!   checks behind it ([`capability_name`], [`check_device_path`]) for config validation.

/// Race-free lookups beneath a directory (the guest crate's, shared with its guest operations).
use vigil_guest::beneath;
mod confine;
mod copy_file;
mod devices;
mod diagnostic;
mod error;
pub mod fork_helper;
mod guest_pull;
mod hooks;
mod hotplug;
mod layout;
mod mount;
mod pidfd;
mod pod_ns;
mod runtime;
mod sandbox;
mod spec;
mod staging;
mod stats;
mod stdio;
mod storage;
mod youki;

pub use error::RuntimeError;
pub use guest_pull::GuestPull;
pub use runtime::{ChildClaims, ClaimToken, ContainerRuntime, NoReaper, OomWake, ProcessIo};
pub use sandbox::{Sandbox, SandboxConfig};
pub use spec::{capability_name, check_device_path, DEFAULT_CAPABILITIES, FORBIDDEN_DEVICES};
pub use youki::LibcontainerRuntime;

/// CopyFile's writing on its own (no sandbox around it: `shared_dir` plays the sandbox's
/// `shared/`), for the fuzz target that checks it never writes outside the jail
/// (`tests/fuzz-targets`). Not an API.
#[doc(hidden)]
pub fn copy_file_into(
    shared_dir: &std::path::Path,
    req: &vigil_protos::agent::CopyFileRequest,
    keep_setuid: bool,
) -> Result<(), RuntimeError> {
    let shared = confine::Owned::open_dir(shared_dir.to_path_buf())?;
    copy_file::copy_file(&shared, req, keep_setuid)
}
