//! A small OCI distribution client (pull side only) on the workspace's reqwest + rustls:
//! manifests and blobs, anonymous, basic and bearer-token auth, TLS with pinned roots only,
//! plain HTTP only to registries listed as insecure.
//!
//! Why not the `oci-client` crate: it brings a second generation of the RustCrypto hashes
//! (sha2 0.11 next to the workspace's 0.10) and cannot take a preconfigured rustls config,
//! so pinned roots would need a process-wide crypto provider; and a pull needs its own limits
//! and digest checks on every byte anyway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::ACCEPT as MANIFEST_ACCEPT;
use crate::reference::Reference;

/// The largest manifest, index, config or signature payload accepted.
pub(crate) const MAX_DOCUMENT: u64 = 4 << 20;
const MAX_TOKEN: u64 = 64 << 10;

/// How the registry client connects.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `host[:port]` of registries reached over plain HTTP (testing, loopback).
    pub insecure_registries: Vec<String>,
    /// PEM certificates the registries' TLS chains must lead to. Without any, HTTPS
    /// registries cannot be verified and are refused: no system roots are trusted.
    pub ca_roots_pem: Option<String>,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure_registries: Vec::new(),
            ca_roots_pem: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// Registry credentials by registry host, from a Docker `config.json`
/// (`{"auths": {"host": {"auth": base64("user:password")}}}`), as CoCo keeps them in the KBS.
#[derive(Clone, Default)]
pub struct Credentials {
    by_registry: HashMap<String, (String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&String> = self.by_registry.keys().collect();
        f.debug_struct("Credentials")
            .field("registries", &hosts)
            .finish()
    }
}

impl Credentials {
    pub fn parse_docker_config(json: &[u8]) -> std::result::Result<Credentials, String> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let auths = v
            .get("auths")
            .and_then(|a| a.as_object())
            .ok_or("no \"auths\" object")?;
        let mut by_registry = HashMap::new();
        for (host, entry) in auths {
            let (user, pass) = if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth)
                    .map_err(|e| format!("auths[{host:?}].auth is not base64: {e}"))?;
                let text = String::from_utf8(raw)
                    .map_err(|_| format!("auths[{host:?}].auth is not UTF-8"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| format!("auths[{host:?}].auth is not user:password"))?;
                (u.to_string(), p.to_string())
            } else {
                let field = |k: &str| entry.get(k).and_then(|x| x.as_str()).map(str::to_string);
                match (field("username"), field("password")) {
                    (Some(u), Some(p)) => (u, p),
                    _ => return Err(format!("auths[{host:?}] has no auth or username/password")),
                }
            };
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            by_registry.insert(host, (user, pass));
        }
        Ok(Credentials { by_registry })
    }

    fn for_registry(&self, registry: &str) -> Option<&(String, String)> {
        self.by_registry.get(registry).or_else(|| {
            (registry == "docker.io")
                .then(|| self.by_registry.get("index.docker.io/v1"))
                .flatten()
        })
    }
}

/// A fetched manifest document, its digest verified or computed.
pub(crate) struct Document {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub digest: Digest,
}

pub(crate) struct RegistryClient {
    http: reqwest::Client,
    config: RegistryConfig,
    /// Bearer tokens by (registry, repository), reused for the pull's later requests.
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl RegistryClient {
    pub(crate) fn new(config: RegistryConfig) -> Result<RegistryClient> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = &config.ca_roots_pem {
            use rustls::pki_types::{pem::PemObject as _, CertificateDer};
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert
                    .map_err(|e| Error::Policy(format!("registry CA roots: not valid PEM: {e}")))?;
                roots.add(cert).map_err(|e| {
                    Error::Policy(format!("registry CA roots: certificate refused: {e}"))
                })?;
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::io("TLS set-up", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("vigil-image/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::io("HTTP client set-up", e))?;
        Ok(RegistryClient {
            http,
            config,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn base(&self, registry: &str) -> Result<String> {
        if self
            .config
            .insecure_registries
            .iter()
            .any(|r| r == registry)
        {
            return Ok(format!("http://{registry}"));
        }
        if self.config.ca_roots_pem.is_none() {
            return Err(Error::Registry {
                registry: registry.into(),
                reason: "HTTPS registries need pinned CA roots ([image] registry_ca_roots); none are configured (or list the registry in insecure_registries for plain HTTP)".into(),
            });
        }
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        Ok(format!("https://{host}"))
    }

    /// Fetches a manifest by tag or digest. With a digest, the body must hash to it; with a
    /// tag, the digest is computed (and must agree with `Docker-Content-Digest` if sent).
    pub(crate) async fn manifest(
        &self,
        image: &Reference,
        reference: &str,
        creds: Option<&Credentials>,
    ) -> Result<Document> {
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            self.base(image.registry())?,
            image.repository()
        );
        let resp = self.get(image, &url, Some(MANIFEST_ACCEPT), creds).await?;
        let resp = match resp.status() {
            StatusCode::OK => resp,
            StatusCode::NOT_FOUND => {
                return Err(Error::NotFound {
                    image: image.to_string(),
                    what: format!("manifest {reference}"),
                })
            }
            s => return Err(status_error(image, &format!("manifest {reference}"), s)),
        };
        let content_type = header(resp.headers(), CONTENT_TYPE);
        let announced = header(resp.headers(), "docker-content-digest".parse().unwrap());
        let body =
            read_limited(image, resp, MAX_DOCUMENT, &format!("manifest {reference}")).await?;
        let digest = match Digest::parse(reference) {
            Ok(expected) => {
                if !expected.matches(&body) {
                    return Err(Error::invalid(
                        image,
                        format!("manifest {reference}"),
                        "the registry sent a manifest whose digest differs from the one asked for",
                    ));
                }
                expected
            }
            Err(_) => Digest::sha256_of(&body),
        };
        if let Some(a) = announced {
            if a != digest.to_string() {
                return Err(Error::invalid(
                    image,
                    format!("manifest {reference}"),
                    format!("Docker-Content-Digest {a} differs from the body's digest {digest}"),
                ));
            }
        }
        Ok(Document {
            body,
            content_type,
            digest,
        })
    }

    /// A small blob (config, signature payload) read whole and verified.
    pub(crate) async fn small_blob(
        &self,
        image: &Reference,
        digest: &Digest,
        size: u64,
        what: &str,
        creds: Option<&Credentials>,
    ) -> Result<Vec<u8>> {
        if size > MAX_DOCUMENT {
            return Err(Error::Limit {
                image: image.to_string(),
                what: what.into(),
                reason: format!("{size} bytes announced, at most {MAX_DOCUMENT}"),
            });
        }
        let resp = self.blob(image, digest, what, creds).await?;
        let body = read_limited(image, resp, size, what).await?;
        if body.len() as u64 != size || !digest.matches(&body) {
            return Err(Error::invalid(
                image,
                what,
                format!("the registry sent content that does not match {digest} ({size} bytes)"),
            ));
        }
        Ok(body)
    }

    /// Opens a blob for streaming; the caller verifies size and digest as it reads.
    pub(crate) async fn blob(
        &self,
        image: &Reference,
        digest: &Digest,
        what: &str,
        creds: Option<&Credentials>,
    ) -> Result<Response> {
        let url = format!(
            "{}/v2/{}/blobs/{digest}",
            self.base(image.registry())?,
            image.repository()
        );
        let resp = self.get(image, &url, None, creds).await?;
        match resp.status() {
            StatusCode::OK => Ok(resp),
            StatusCode::NOT_FOUND => Err(Error::NotFound {
                image: image.to_string(),
                what: format!("{what} {digest}"),
            }),
            s => Err(status_error(image, what, s)),
        }
    }

    /// GET with the registry's auth dance: anonymous first, then what `WWW-Authenticate`
    /// asks for (a bearer token from the realm, or basic credentials).
    async fn get(
        &self,
        image: &Reference,
        url: &str,
        accept: Option<&str>,
        creds: Option<&Credentials>,
    ) -> Result<Response> {
        let key = (image.registry().to_string(), image.repository().to_string());
        let cached = lock(&self.tokens).get(&key).cloned();
        let resp = self.send(image, url, accept, cached.as_deref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = header(resp.headers(), WWW_AUTHENTICATE).unwrap_or_default();
        let user = creds.and_then(|c| c.for_registry(image.registry()));
        let authorization = if let Some(params) = challenge.strip_prefix("Bearer ") {
            let token = self.token(image, params, user).await?;
            lock(&self.tokens).insert(key, token.clone());
            format!("Bearer {token}")
        } else if challenge.starts_with("Basic") {
            let (u, p) = user.ok_or_else(|| Error::Registry {
                registry: image.registry().into(),
                reason: "asks for basic authentication and no credentials are configured for it"
                    .into(),
            })?;
            basic(u, p)
        } else {
            return Err(Error::Registry {
                registry: image.registry().into(),
                reason: format!("401 with an unsupported challenge {challenge:?}"),
            });
        };
        let resp = self.send(image, url, accept, Some(&authorization)).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Error::Registry {
                registry: image.registry().into(),
                reason: format!(
                    "refused the {} for {}",
                    if user.is_some() {
                        "credentials"
                    } else {
                        "anonymous token"
                    },
                    image.repository()
                ),
            });
        }
        Ok(resp)
    }

    async fn send(
        &self,
        image: &Reference,
        url: &str,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Response> {
        // A GET is idempotent: one retry covers a pooled connection that the registry closed
        // since its last answer (a restart), which would otherwise fail a pull at once.
        let mut retried = false;
        loop {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(a) = authorization {
                let value = if a.starts_with("Bearer ") || a.starts_with("Basic ") {
                    a.to_string()
                } else {
                    format!("Bearer {a}")
                };
                req = req.header(AUTHORIZATION, value);
            }
            match req.send().await {
                Ok(resp) => return Ok(resp),
                Err(e) if !retried && !e.is_timeout() && (e.is_request() || e.is_connect()) => {
                    retried = true;
                }
                Err(e) => {
                    return Err(Error::Registry {
                        registry: image.registry().into(),
                        reason: transport_reason(&e),
                    })
                }
            }
        }
    }

    /// A bearer token from the challenge's realm (Docker token protocol).
    async fn token(
        &self,
        image: &Reference,
        params: &str,
        user: Option<&(String, String)>,
    ) -> Result<String> {
        let params = parse_challenge(params);
        let realm = params.get("realm").ok_or_else(|| Error::Registry {
            registry: image.registry().into(),
            reason: "bearer challenge without a realm".into(),
        })?;
        let realm_url = url::Url::parse(realm).map_err(|e| Error::Registry {
            registry: image.registry().into(),
            reason: format!("token realm {realm:?}: {e}"),
        })?;
        let realm_host = match (realm_url.host_str(), realm_url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        };
        // Credentials and tokens travel only over TLS, or to a registry listed as insecure.
        if realm_url.scheme() != "https" && !self.config.insecure_registries.contains(&realm_host) {
            return Err(Error::Registry {
                registry: image.registry().into(),
                reason: format!("token realm {realm} is not HTTPS and not an insecure registry"),
            });
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", image.repository()));
        let mut realm_url = realm_url;
        {
            let mut q = realm_url.query_pairs_mut();
            q.append_pair("scope", &scope);
            if let Some(service) = params.get("service") {
                q.append_pair("service", service);
            }
        }
        let mut req = self.http.get(realm_url);
        if let Some((u, p)) = user {
            req = req.header(AUTHORIZATION, basic(u, p));
        }
        let resp = req.send().await.map_err(|e| Error::Registry {
            registry: image.registry().into(),
            reason: format!("token realm: {}", transport_reason(&e)),
        })?;
        if !resp.status().is_success() {
            return Err(Error::Registry {
                registry: image.registry().into(),
                reason: format!("token realm answered {}", resp.status()),
            });
        }
        let body = read_limited(image, resp, MAX_TOKEN, "token").await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Error::Registry {
            registry: image.registry().into(),
            reason: format!("token response is not JSON: {e}"),
        })?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| Error::Registry {
                registry: image.registry().into(),
                reason: "token response has no token".into(),
            })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn basic(user: &str, pass: &str) -> String {
    let raw = format!("{user}:{pass}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn header(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `realm="https://auth",service="registry",scope="repository:x:pull"` → map.
fn parse_challenge(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(k.trim().to_string(), value.to_string());
        rest = next.trim_start_matches(',').trim();
    }
    out
}

fn status_error(image: &Reference, what: &str, s: StatusCode) -> Error {
    Error::Registry {
        registry: image.registry().into(),
        reason: format!("{what} of {}: HTTP {s}", image.repository()),
    }
}

fn transport_reason(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_connect() {
        format!("unreachable: {text}")
    } else if e.is_timeout() {
        format!("timed out: {text}")
    } else {
        text
    }
}

/// Reads a response body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(
    image: &Reference,
    mut resp: Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(Error::Limit {
            image: image.to_string(),
            what: what.into(),
            reason: format!(
                "{} bytes announced, at most {limit}",
                resp.content_length().unwrap_or(0)
            ),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| Error::Registry {
        registry: image.registry().into(),
        reason: format!("reading {what}: {}", transport_reason(&e)),
    })? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::Limit {
                image: image.to_string(),
                what: what.into(),
                reason: format!("more than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parameters() {
        let p = parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
    }

    #[test]
    fn docker_config_credentials() {
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        let json = format!(
            r#"{{"auths":{{"https://quay.io/":{{"auth":"{auth}"}},"r.example:5000":{{"username":"a","password":"b"}}}}}}"#
        );
        let c = Credentials::parse_docker_config(json.as_bytes()).unwrap();
        assert_eq!(
            c.for_registry("quay.io").unwrap(),
            &("u".into(), "p:w".into())
        );
        assert_eq!(c.for_registry("r.example:5000").unwrap().0, "a");
        assert!(c.for_registry("docker.io").is_none());
        assert!(
            !format!("{c:?}").contains("p:w"),
            "Debug must not show secrets"
        );
        let e = Credentials::parse_docker_config(br#"{"auths":{"x":{"auth":"!!"}}}"#).unwrap_err();
        assert!(e.contains("auths[\"x\"].auth"), "{e}");
    }
}
