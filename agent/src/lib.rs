//! vigil-agent: an attestation-gated, Kata-compatible guest agent for confidential VMs.
//!
//! Start-up is [`startup::run`]; the gate every request passes is [`gate`].

pub mod cmdline;
pub mod config;
pub mod gate;
pub mod guest;
pub mod pid1;
pub mod server;
pub mod service;
pub mod startup;
