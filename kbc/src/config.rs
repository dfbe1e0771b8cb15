//! Client configuration. The agent embeds this under `[attestation]`.

use serde::Deserialize;
use std::net::IpAddr;

/// How to reach and trust the KBS, and how hard to try.
///
/// ```toml
/// kbs_url = "https://kbs.example:8080"
/// kbs_cert = """-----BEGIN CERTIFICATE----- ..."""  # pinned CA (required for https)
/// insecure_http = false        # allow http:// to a non-loopback host (logged as a warning)
/// timeout_secs = 10            # whole-request timeout (connect + send + read)
/// connect_timeout_secs = 5
/// max_auth_retries = 2         # re-handshakes after a 401 before giving up
/// max_response_bytes = 4194304 # larger bodies are refused
/// connect_retries = 3          # extra attempts when the connection cannot be made
/// retry_initial_backoff_ms = 200
/// retry_max_backoff_ms = 5000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KbcConfig {
    /// Base URL of the KBS, `http://` or `https://`, without the `/kbs/v0` suffix.
    pub kbs_url: String,
    /// PEM CA certificate(s) the KBS TLS certificate must chain to. Only these
    /// are trusted (no system roots). Required for `https://`.
    #[serde(default)]
    pub kbs_cert: Option<String>,
    /// Permit plain `http://` to a host that is not a loopback IP literal.
    #[serde(default)]
    pub insecure_http: bool,
    /// Timeout for each HTTP request, seconds.
    #[serde(default = "defaults::timeout_secs")]
    pub timeout_secs: u64,
    /// Timeout for establishing a connection, seconds.
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// How many times a 401 on a resource request may trigger a new handshake.
    #[serde(default = "defaults::max_auth_retries")]
    pub max_auth_retries: u32,
    /// Largest response body accepted, bytes.
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: usize,
    /// Extra attempts for a request whose connection could not be made.
    #[serde(default = "defaults::connect_retries")]
    pub connect_retries: u32,
    /// First backoff between connection attempts, milliseconds (doubles each time).
    #[serde(default = "defaults::retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    /// Cap on the backoff, milliseconds.
    #[serde(default = "defaults::retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
}

mod defaults {
    pub fn timeout_secs() -> u64 {
        10
    }
    pub fn connect_timeout_secs() -> u64 {
        5
    }
    pub fn max_auth_retries() -> u32 {
        2
    }
    pub fn max_response_bytes() -> usize {
        4 << 20
    }
    pub fn connect_retries() -> u32 {
        3
    }
    pub fn retry_initial_backoff_ms() -> u64 {
        200
    }
    pub fn retry_max_backoff_ms() -> u64 {
        5000
    }
}

impl KbcConfig {
    /// Defaults for everything but the URL.
    pub fn new(kbs_url: impl Into<String>) -> Self {
        KbcConfig {
            kbs_url: kbs_url.into(),
            kbs_cert: None,
            insecure_http: false,
            timeout_secs: defaults::timeout_secs(),
            connect_timeout_secs: defaults::connect_timeout_secs(),
            max_auth_retries: defaults::max_auth_retries(),
            max_response_bytes: defaults::max_response_bytes(),
            connect_retries: defaults::connect_retries(),
            retry_initial_backoff_ms: defaults::retry_initial_backoff_ms(),
            retry_max_backoff_ms: defaults::retry_max_backoff_ms(),
        }
    }

    /// Check the values and the URL against the transport rules; returns the
    /// parsed base URL. Errors name the offending key.
    pub fn validate(&self) -> Result<url::Url, String> {
        let url = url::Url::parse(&self.kbs_url)
            .map_err(|e| format!("kbs_url {:?} is not a URL: {e}", self.kbs_url))?;
        match url.scheme() {
            "https" => {
                if self.kbs_cert.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    return Err(
                        "kbs_cert (pinned CA, PEM) is required for an https:// kbs_url".into(),
                    );
                }
            }
            "http" => {
                if !host_is_loopback(&url) && !self.insecure_http {
                    return Err(format!(
                        "kbs_url {} uses plain http to a non-loopback host; use https or set insecure_http = true",
                        self.kbs_url
                    ));
                }
            }
            other => return Err(format!("kbs_url scheme {other:?} is not http or https")),
        }
        if url.host().is_none() {
            return Err(format!("kbs_url {:?} has no host", self.kbs_url));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("kbs_url must not have a query or fragment".into());
        }
        if self.timeout_secs == 0 || self.connect_timeout_secs == 0 {
            return Err("timeout_secs and connect_timeout_secs must be at least 1".into());
        }
        if self.max_response_bytes < 1024 {
            return Err("max_response_bytes must be at least 1024".into());
        }
        Ok(url)
    }
}

/// True when the URL host is an IP literal in 127.0.0.0/8 or ::1. Names such
/// as `localhost` are not trusted: resolution is outside our control.
pub(crate) fn host_is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: KbcConfig = serde_json::from_str(r#"{"kbs_url":"http://127.0.0.1:8080"}"#).unwrap();
        assert_eq!(c, KbcConfig::new("http://127.0.0.1:8080"));
        let e = serde_json::from_str::<KbcConfig>(r#"{"kbs_url":"x","kbs_urll":"y"}"#).unwrap_err();
        assert!(e.to_string().contains("kbs_urll"));
        let e = serde_json::from_str::<KbcConfig>(r#"{}"#).unwrap_err();
        assert!(e.to_string().contains("kbs_url"));
    }

    #[test]
    fn transport_rules() {
        assert!(KbcConfig::new("http://127.0.0.1:1").validate().is_ok());
        assert!(KbcConfig::new("http://127.9.9.9:1").validate().is_ok());
        assert!(KbcConfig::new("http://[::1]:1").validate().is_ok());
        let e = KbcConfig::new("http://10.0.0.1:1").validate().unwrap_err();
        assert!(e.contains("insecure_http"), "{e}");
        assert!(KbcConfig::new("http://localhost:1").validate().is_err());
        let mut c = KbcConfig::new("http://kbs.example:1");
        c.insecure_http = true;
        assert!(c.validate().is_ok());
        let e = KbcConfig::new("https://kbs.example")
            .validate()
            .unwrap_err();
        assert!(e.contains("kbs_cert"), "{e}");
        assert!(KbcConfig::new("ftp://x").validate().is_err());
    }
}
