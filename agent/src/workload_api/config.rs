//! `[workload_api]`: whether the workload API is served, where, and what it may hand out.
//! Only measured (attested) configs can turn it on.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The API's endpoints that the config can switch on (`/info` is always served).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Feature {
    /// `GET /cdh/resource/{repo}/{type}/{tag}`
    Resource,
    /// `GET /aa/evidence`
    Evidence,
    /// `GET /aa/token` (hands out a KBS token and the private key it was issued for)
    Token,
}

/// `[workload_api]` as written.
///
/// ```toml
/// [workload_api]
/// listen = "127.0.0.1:8006"               # loopback only
/// allowed_resources = ["default/app/*"]   # exact repo/type/tag, or a prefix ending in *
/// endpoints = ["resource"]                # also "evidence", "token"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadApiSection {
    /// `IP:PORT` on a loopback address (the pod's containers share the guest's loopback).
    pub listen: String,
    /// Resources workloads may fetch: `repo/type/tag`, or a prefix ending in `*`.
    #[serde(default)]
    pub allowed_resources: Vec<String>,
    /// Endpoints served besides `/info`.
    #[serde(default = "default_endpoints")]
    pub endpoints: Vec<Feature>,
    /// Connections served at once; more are answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Bound on one request, KBS round trips included.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
}

fn default_endpoints() -> Vec<Feature> {
    vec![Feature::Resource]
}

fn default_max_connections() -> usize {
    32
}

fn default_request_timeout_secs() -> u64 {
    30
}

/// One `allowed_resources` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourcePattern {
    Exact(String),
    /// Everything that starts with this text (the entry without its trailing `*`).
    Prefix(String),
}

impl ResourcePattern {
    fn parse(entry: &str) -> Result<ResourcePattern, String> {
        let bad = |why: &str| {
            format!("[workload_api] allowed_resources: {entry:?} {why}; entries are repo/type/tag or a prefix ending in * (e.g. \"default/app/*\")")
        };
        if let Some(prefix) = entry.strip_suffix('*') {
            let chars_ok = prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
            let segments_ok = prefix.split('/').count() <= 3
                && prefix
                    .split('/')
                    .all(|s| s != "." && s != ".." && !s.starts_with("./"))
                && !prefix.contains("//")
                && !prefix.starts_with('/');
            if !chars_ok || !segments_ok {
                return Err(bad("is not a valid prefix"));
            }
            return Ok(ResourcePattern::Prefix(prefix.to_string()));
        }
        vigil_kbc::client::validate_resource_path(entry).map_err(|_| bad("is not valid"))?;
        Ok(ResourcePattern::Exact(entry.to_string()))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            ResourcePattern::Exact(p) => p == path,
            ResourcePattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct WorkloadApiConfig {
    pub listen: SocketAddr,
    pub allowed: Vec<ResourcePattern>,
    pub resource: bool,
    pub evidence: bool,
    pub token: bool,
    pub max_connections: usize,
    pub request_timeout: Duration,
}

impl WorkloadApiSection {
    /// Checks every key; errors name it.
    pub fn validate(&self) -> Result<WorkloadApiConfig, String> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            format!(
                "[workload_api] listen: {:?} is not IP:PORT (e.g. \"127.0.0.1:8006\")",
                self.listen
            )
        })?;
        // The host controls the guest's network: the API must never face it.
        if !listen.ip().is_loopback() {
            return Err(format!(
                "[workload_api] listen: {listen} is not a loopback address; the workload API serves only the pod's own containers (127.0.0.1 or ::1)"
            ));
        }
        let allowed = self
            .allowed_resources
            .iter()
            .map(|e| ResourcePattern::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        if !(1..=1024).contains(&self.max_connections) {
            return Err("[workload_api] max_connections must be 1..=1024".into());
        }
        if !(1..=600).contains(&self.request_timeout_secs) {
            return Err("[workload_api] request_timeout_secs must be 1..=600".into());
        }
        let mut seen = Vec::new();
        for f in &self.endpoints {
            if seen.contains(f) {
                return Err(format!("[workload_api] endpoints: {f:?} is listed twice"));
            }
            seen.push(*f);
        }
        Ok(WorkloadApiConfig {
            listen,
            allowed,
            resource: self.endpoints.contains(&Feature::Resource),
            evidence: self.endpoints.contains(&Feature::Evidence),
            token: self.endpoints.contains(&Feature::Token),
            max_connections: self.max_connections,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
        })
    }
}

impl WorkloadApiConfig {
    /// Whether `path` (a valid `repo/type/tag`) is on the allow-list.
    pub fn allows(&self, path: &str) -> bool {
        self.allowed.iter().any(|p| p.matches(path))
    }

    /// CoCo's `feature` value for `/info`.
    pub fn feature(&self) -> &'static str {
        match (self.resource, self.evidence || self.token) {
            (true, true) => "all",
            (false, true) => "attestation",
            _ => "resource",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Result<WorkloadApiConfig, String> {
        let s: WorkloadApiSection = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate()
    }

    #[test]
    fn defaults_patterns_and_matching() {
        let c = section("listen = \"127.0.0.1:8006\"\nallowed_resources = [\"default/app/*\", \"other/key/one\"]\n").unwrap();
        assert!(c.resource && !c.evidence && !c.token);
        assert_eq!(c.feature(), "resource");
        assert!(c.allows("default/app/db"));
        assert!(c.allows("other/key/one"));
        assert!(!c.allows("other/key/two"));
        assert!(
            !c.allows("default/apps/db"),
            "the prefix ends at the slash it names"
        );
        assert!(!c.allows("default/vigil-policy/prod"));
        let c =
            section("listen = \"[::1]:8006\"\nendpoints = [\"evidence\", \"token\"]\n").unwrap();
        assert!(!c.resource && c.evidence && c.token);
        assert_eq!(c.feature(), "attestation");
        assert!(!c.allows("a/b/c"), "no allow-list: nothing allowed");
        assert!(
            section("listen = \"127.0.0.1:1\"\nallowed_resources = [\"*\"]\n")
                .unwrap()
                .allows("x/y/z")
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("listen = \"0.0.0.0:8006\"", "loopback"),
            ("listen = \"10.0.2.15:8006\"", "loopback"),
            ("listen = \"localhost:8006\"", "listen"),
            (
                "listen = \"127.0.0.1:1\"\nallowed_resources = [\"a/../b\"]",
                "allowed_resources",
            ),
            (
                "listen = \"127.0.0.1:1\"\nallowed_resources = [\"a/b\"]",
                "allowed_resources",
            ),
            (
                "listen = \"127.0.0.1:1\"\nallowed_resources = [\"a/*/c\"]",
                "allowed_resources",
            ),
            (
                "listen = \"127.0.0.1:1\"\nallowed_resources = [\"../*\"]",
                "allowed_resources",
            ),
            ("listen = \"127.0.0.1:1\"\nendpoints = [\"shell\"]", "shell"),
            (
                "listen = \"127.0.0.1:1\"\nendpoints = [\"token\", \"token\"]",
                "twice",
            ),
            (
                "listen = \"127.0.0.1:1\"\nmax_connections = 0",
                "max_connections",
            ),
            ("listen = \"127.0.0.1:1\"\nlisten_addr = 1", "listen_addr"),
        ] {
            let e = section(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
