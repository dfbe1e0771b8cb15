//! vigil-agent: an attestation-gated, Kata-compatible guest agent for confidential VMs.
//!
//! Start-up is [`startup::start`]; the gate every request passes is [`gate`].

pub mod attestation;
pub mod cmdline;
pub mod config;
pub mod gate;
pub mod log_sink;
pub mod metrics;
pub mod mode;
pub mod pid1;
pub mod policy;
pub mod resources;
pub mod sealed_secrets;
pub mod server;
pub mod service;
pub mod startup;
pub mod workload;
pub mod workload_api;
