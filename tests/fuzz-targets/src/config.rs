//! Target `config_toml`: the agent's config file parser and validation.
//!
//! Invariants: no panic; an error names the file; an accepted allow-list names no entry that
//! matches no endpoint (Kata silently ignored such names, which left endpoints blocked or
//! allowed by accident); an accepted config's sections convert as the agent uses them.

use std::path::Path;

use vigil_agent::config::{AllowList, Config};
use vigil_agent::gate::EndpointSet;

const PATH: &str = "/fuzz/vigil.toml";

pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new(PATH)) {
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(PATH),
                "error does not name the file: {message}"
            );
        }
        Ok(config) => {
            if let AllowList::Only(names) = &config.allow_list {
                for name in names {
                    assert_ne!(
                        EndpointSet::by_request_names(&[name]),
                        EndpointSet::NONE,
                        "allow-list entry {name:?} accepted but names no endpoint"
                    );
                }
            }
            let _ = config.server_addr();
            let _ = config.policy.limits();
            let _ = config.policy.audit_log_path();
        }
    }
}
