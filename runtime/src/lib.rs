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
pub use runtime::{ChildClaims, ClaimToken, ContainerRuntime, NoReaper, OomWake, ProcessIo};
pub use sandbox::{Sandbox, SandboxConfig};
pub use spec::{capability_name, check_device_path, DEFAULT_CAPABILITIES, FORBIDDEN_DEVICES};
pub use youki::LibcontainerRuntime;
