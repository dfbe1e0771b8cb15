//! Shared test support: the gated endpoint list (the agent passes its generated copy).

#![allow(dead_code)]

/// The gated request names, from the agent API's generated endpoint table.
pub static ENDPOINTS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(vigil_protos::agent_request_names);
