//! vigil's guest operations: what the agent API asks of the guest itself rather than of a
//! container. Each module is a small public API that one agent handler calls in one line.
//!
//! - [`network`]: links, routes, neighbours (route netlink) and iptables.
//!
//! Every failure is a [`GuestError`], one variant per ttrpc status.

pub mod error;
pub mod network;

pub use error::{GuestError, Result};
