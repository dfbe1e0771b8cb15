//! The KBS client: RCAR handshake (auth → attest) and encrypted resource fetch.

use crate::config::{host_is_loopback, KbcConfig};
use crate::envelope::{self, VerifiedPolicy, VerifyingKey};
use crate::error::{Error, Result, Step, TransportKind};
use crate::jwe;
use crate::tee_key::{report_data_for, runtime_data_digest_with, TeeKey};
use kbs_types::{
    Attestation, Challenge, CompositeEvidence, HashAlgorithm, InitData, Request, RuntimeData, Tee,
};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// KBS protocol version sent in `auth`.
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// Name of the KBS session cookie.
pub const SESSION_COOKIE: &str = "kbs-session-id";

/// Request `extra-params` key listing the hashes the client can use.
pub const SUPPORTED_HASHES_KEY: &str = "supported-hash-algorithms";
/// Challenge `extra-params` key naming the hash the KBS chose.
pub const SELECTED_HASH_KEY: &str = "selected-hash-algorithm";

/// Error type an evidence provider may return.
pub type EvidenceError = Box<dyn std::error::Error + Send + Sync>;

/// Turns report_data bytes into the TEE's evidence JSON text. report_data is
/// already in its final form for the TEE (48 bytes for sample, 64 for SNP/TDX).
/// The call may block (device ioctl); it runs on a blocking thread.
pub type EvidenceFn =
    Arc<dyn Fn(&[u8]) -> std::result::Result<String, EvidenceError> + Send + Sync>;

/// Wall time of each handshake step, for benchmarks and logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct HandshakeTimings {
    /// `POST /auth` round trip.
    pub auth: Duration,
    /// TEE key generation, report_data hashing and the evidence provider.
    pub evidence: Duration,
    /// `POST /attest` round trip.
    pub attest: Duration,
}

/// One attested KBS session: the cookie, the attestation token and the TEE key that
/// resources are encrypted to.
struct Session {
    cookie: String,
    token: Option<String>,
    key: TeeKey,
}

/// The session in force, shared by every request made through one client. Resource requests
/// read it without waiting; handshakes are serialised, so that several requests refused with
/// 401 at once re-attest once, not once each.
#[derive(Default)]
struct SessionSlot {
    current: std::sync::Mutex<Option<Arc<Session>>>,
    attesting: tokio::sync::Mutex<()>,
}

impl SessionSlot {
    fn get(&self) -> Option<Arc<Session>> {
        // A panic while holding the lock cannot leave an Option half-written.
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, session: Option<Arc<Session>>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = session;
    }
}

/// A client bound to one KBS, one TEE type and one evidence provider.
///
/// Its methods take `&mut self` for single-owner use; [`crate::KbsSession`] shares one client
/// (and its attested session) between tasks.
pub struct KbsClient {
    http: reqwest::Client,
    base: url::Url,
    cfg: KbcConfig,
    tee: Tee,
    evidence: EvidenceFn,
    init_data: Option<String>,
    session: SessionSlot,
}

impl std::fmt::Debug for KbsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsClient")
            .field("base", &self.base.as_str())
            .field("tee", &self.tee)
            .field("attested", &self.session.get().is_some())
            .finish_non_exhaustive()
    }
}

fn build_tls(pem: &str) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| Error::Config(format!("kbs_cert is not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("kbs_cert certificate rejected: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(Error::Config(
            "kbs_cert contains no CERTIFICATE block".into(),
        ));
    }
    tls_config(roots)
}

fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}

impl KbsClient {
    /// A client for `cfg`, attesting as `tee` with `evidence`.
    pub fn new(cfg: KbcConfig, tee: Tee, evidence: EvidenceFn) -> Result<Self> {
        let mut base = cfg.validate().map_err(Error::Config)?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        if base.scheme() == "http" {
            if host_is_loopback(&base) {
                tracing::warn!(url = %base, "KBS over plain HTTP (loopback address)");
            } else {
                tracing::warn!(url = %base, "KBS over plain HTTP to a non-loopback host (insecure_http = true): traffic can be observed and altered; resources stay JWE-encrypted");
            }
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only();
        // Always hand reqwest our own rustls config (ring provider, pinned
        // roots): it must never fall back to a process-wide default provider
        // or the system trust store. Plain-HTTP clients get an empty root
        // store, so nothing TLS can succeed through them.
        let tls = if base.scheme() == "https" {
            build_tls(cfg.kbs_cert.as_deref().unwrap_or_default())?
        } else {
            tls_config(rustls::RootCertStore::empty())?
        };
        builder = builder
            .tls_backend_preconfigured(tls)
            .https_only(base.scheme() == "https");
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("HTTP client setup failed: {e}")))?;
        Ok(KbsClient {
            http,
            base,
            cfg,
            tee,
            evidence,
            init_data: None,
            session: SessionSlot::default(),
        })
    }

    /// Send this initdata TOML text as `init-data` in the attest request.
    pub fn with_init_data(mut self, toml: impl Into<String>) -> Self {
        self.init_data = Some(toml.into());
        self
    }

    /// The attestation token from the last successful attest, if any.
    pub fn token(&self) -> Option<String> {
        self.session.get().and_then(|s| s.token.clone())
    }

    /// Whether a session is in force (it may still have expired on the KBS side).
    pub fn is_attested(&self) -> bool {
        self.session.get().is_some()
    }

    /// The TEE type this client attests as.
    pub fn tee(&self) -> Tee {
        self.tee
    }

    /// Forget the session so the next fetch attests again.
    pub fn reset_session(&mut self) {
        self.session.set(None);
    }

    fn endpoint(&self, path: &str) -> Result<url::Url> {
        self.base
            .join(path)
            .map_err(|e| Error::Config(format!("cannot build URL for {path}: {e}")))
    }

    /// Run auth and attest, replacing any existing session.
    pub async fn handshake(&mut self) -> Result<HandshakeTimings> {
        self.session.set(None);
        let (session, timings) = self.attest().await?;
        self.session.set(Some(Arc::new(session)));
        Ok(timings)
    }

    /// Auth and attest: a new session, not yet in force.
    async fn attest(&self) -> Result<(Session, HandshakeTimings)> {
        let mut t = HandshakeTimings::default();

        let start = Instant::now();
        let req = Request {
            version: PROTOCOL_VERSION.to_string(),
            tee: self.tee,
            // Offer every hash kbs-types implements; the KBS names its choice
            // in the challenge (absent: SHA-384).
            extra_params: serde_json::json!({ SUPPORTED_HASHES_KEY: HashAlgorithm::list_all() }),
        };
        let body = serde_json::to_vec(&req).expect("Request serialises");
        let url = self.endpoint("kbs/v0/auth")?;
        let resp = self
            .exchange(Step::Auth, Method::POST, &url, Some(body), None)
            .await?;
        let resp = expect_ok(Step::Auth, resp)?;
        let cookie = session_cookie(&resp.headers).ok_or_else(|| Error::BadResponse {
            step: Step::Auth,
            detail: format!("no {SESSION_COOKIE} cookie in the auth response"),
        })?;
        let challenge: Challenge = parse_json(Step::Auth, &resp.body)?;
        if challenge.nonce.is_empty() || challenge.nonce.len() > 1024 {
            return Err(Error::BadResponse {
                step: Step::Auth,
                detail: format!("nonce length {} is out of range", challenge.nonce.len()),
            });
        }
        let hash = selected_hash(&challenge.extra_params)?;
        t.auth = start.elapsed();
        tracing::debug!(tee = %self.tee, %hash, "KBS auth done");

        let start = Instant::now();
        let key = TeeKey::generate();
        let tee_pubkey = key.public_jwk();
        let digest = runtime_data_digest_with(hash, &challenge.nonce, &tee_pubkey)
            .map_err(|e| Error::Evidence(e.to_string()))?;
        let report_data = report_data_for(self.tee, &digest);
        let evidence_text = self.evidence_for(report_data).await?;
        let primary_evidence: serde_json::Value = serde_json::from_str(&evidence_text)
            .map_err(|e| Error::Evidence(format!("evidence is not JSON: {e}")))?;
        t.evidence = start.elapsed();

        let start = Instant::now();
        let attestation = Attestation {
            init_data: self.init_data.as_ref().map(|body| InitData {
                format: "toml".to_string(),
                body: body.clone(),
            }),
            runtime_data: RuntimeData {
                nonce: challenge.nonce,
                tee_pubkey,
            },
            tee_evidence: CompositeEvidence {
                primary_evidence,
                additional_evidence: String::new(),
            },
        };
        let body = serde_json::to_vec(&attestation).expect("Attestation serialises");
        let url = self.endpoint("kbs/v0/attest")?;
        let resp = self
            .exchange(
                Step::Attest,
                Method::POST,
                &url,
                Some(body),
                Some((&cookie, None)),
            )
            .await?;
        let resp = expect_ok(Step::Attest, resp)?;
        let token = if resp.body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            #[derive(serde::Deserialize)]
            struct TokenBody {
                token: String,
            }
            Some(parse_json::<TokenBody>(Step::Attest, &resp.body)?.token)
        };
        // The KBS may rotate the session id on attest.
        let cookie = session_cookie(&resp.headers).unwrap_or(cookie);
        t.attest = start.elapsed();
        tracing::info!(tee = %self.tee, "KBS attestation succeeded");
        Ok((Session { cookie, token, key }, t))
    }

    /// A token from a new handshake that leaves the session in force alone, with the PKCS#8
    /// PEM of that handshake's own TEE key.
    pub(crate) async fn detached_token(&self) -> Result<(String, zeroize::Zeroizing<String>)> {
        let (session, _) = self.attest().await?;
        let token = session.token.ok_or_else(|| Error::BadResponse {
            step: Step::Attest,
            detail: "the attestation answer carried no token".into(),
        })?;
        Ok((token, session.key.to_pkcs8_pem()))
    }

    /// Evidence from the TEE for `report_data` (already in the TEE's final form), produced
    /// on a blocking thread: the provider may issue a device ioctl.
    pub(crate) async fn evidence_for(&self, report_data: Vec<u8>) -> Result<String> {
        let provider = self.evidence.clone();
        tokio::task::spawn_blocking(move || provider(&report_data))
            .await
            .map_err(|e| Error::Evidence(format!("evidence provider panicked: {e}")))?
            .map_err(|e| Error::Evidence(format!("evidence provider failed: {e}")))
    }

    /// The session to use: the one in force unless it is `stale` (the KBS refused it), else
    /// a new one. Handshakes are serialised; a task that waited for another's handshake uses
    /// the session that one made.
    async fn session_replacing(&self, stale: Option<&Arc<Session>>) -> Result<Arc<Session>> {
        let usable = |current: Option<Arc<Session>>| {
            current.filter(|c| stale.is_none_or(|s| !Arc::ptr_eq(s, c)))
        };
        if let Some(s) = usable(self.session.get()) {
            return Ok(s);
        }
        let _attesting = self.session.attesting.lock().await;
        if let Some(s) = usable(self.session.get()) {
            return Ok(s);
        }
        let (session, _) = self.attest().await?;
        let session = Arc::new(session);
        self.session.set(Some(session.clone()));
        Ok(session)
    }

    /// Fetch and decrypt the resource `repo/type/tag`, attesting first if
    /// needed and again (at most `max_auth_retries` times) on a 401.
    pub async fn get_resource(&mut self, path: &str) -> Result<Vec<u8>> {
        self.get_resource_shared(path).await
    }

    /// [`KbsClient::get_resource`] through a shared reference (see [`crate::KbsSession`]).
    pub(crate) async fn get_resource_shared(&self, path: &str) -> Result<Vec<u8>> {
        validate_resource_path(path)?;
        let url = self.endpoint(&format!("kbs/v0/resource/{path}"))?;
        let mut session = self.session_replacing(None).await?;
        let mut refused = 0u32;
        loop {
            let resp = self
                .exchange(
                    Step::Resource,
                    Method::GET,
                    &url,
                    None,
                    Some((&session.cookie, session.token.as_deref())),
                )
                .await?;
            if resp.status == StatusCode::UNAUTHORIZED {
                let (error_type, detail) = error_information(&resp.body);
                // Trustee answers 401 for a policy denial and a missing resource too; a new
                // handshake cannot change those answers, so they end the request here.
                if error_type
                    .as_deref()
                    .is_some_and(crate::error::reattest_cannot_help)
                {
                    return Err(Error::Rejected {
                        step: Step::Resource,
                        status: resp.status.as_u16(),
                        error_type,
                        detail,
                    });
                }
                refused += 1;
                if refused > self.cfg.max_auth_retries {
                    return Err(Error::Unauthorized {
                        handshakes: refused,
                        error_type,
                        detail,
                    });
                }
                tracing::warn!(path, error_type = error_type.as_deref().unwrap_or(""), %detail, "KBS answered 401 for a resource; attesting again");
                session = self.session_replacing(Some(&session)).await?;
                continue;
            }
            let resp = expect_ok(Step::Resource, resp)?;
            return Ok(jwe::decrypt(&resp.body, session.key.secret())?);
        }
    }

    /// Fetch the signed policy envelope at `resource_path` and verify it
    /// against the pinned `signer` and the version floor.
    pub async fn fetch_policy(
        &mut self,
        resource_path: &str,
        signer: &VerifyingKey,
        min_version: u64,
    ) -> Result<VerifiedPolicy> {
        self.fetch_policy_shared(resource_path, signer, min_version)
            .await
    }

    /// [`KbsClient::fetch_policy`] through a shared reference.
    pub(crate) async fn fetch_policy_shared(
        &self,
        resource_path: &str,
        signer: &VerifyingKey,
        min_version: u64,
    ) -> Result<VerifiedPolicy> {
        let bytes = self.get_resource_shared(resource_path).await?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::Verify(envelope::EnvelopeError::Malformed(
                "policy envelope is not UTF-8".into(),
            ))
        })?;
        let verified = envelope::verify(text.trim(), signer, min_version)?;
        tracing::info!(version = verified.version, digest = %verified.digest, "verified signed policy");
        Ok(verified)
    }

    /// One HTTP exchange with bounded retries on connection failures and a
    /// cap on the body size.
    async fn exchange(
        &self,
        step: Step,
        method: Method,
        url: &url::Url,
        body: Option<Vec<u8>>,
        // The session cookie, and the bearer token once attested.
        auth: Option<(&str, Option<&str>)>,
    ) -> Result<RawResponse> {
        let mut attempt = 0u32;
        loop {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(b) = &body {
                req = req.header(CONTENT_TYPE, "application/json").body(b.clone());
            }
            if let Some((cookie, token)) = auth {
                req = req.header(COOKIE, format!("{SESSION_COOKIE}={cookie}"));
                if let Some(token) = token {
                    req = req.header(AUTHORIZATION, format!("Bearer {token}"));
                }
            }
            match self.send_capped(step, req).await {
                Err(Error::Transport {
                    kind: TransportKind::Connect,
                    ..
                }) if attempt < self.cfg.connect_retries => {
                    let backoff = self
                        .cfg
                        .retry_initial_backoff_ms
                        .saturating_mul(1u64 << attempt.min(20))
                        .min(self.cfg.retry_max_backoff_ms);
                    attempt += 1;
                    tracing::warn!(%step, attempt, backoff_ms = backoff, "KBS connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                other => return other,
            }
        }
    }

    async fn send_capped(&self, step: Step, req: reqwest::RequestBuilder) -> Result<RawResponse> {
        let transport = |e: reqwest::Error| transport_error(step, e);
        let mut resp = req.send().await.map_err(transport)?;
        let cap = self.cfg.max_response_bytes;
        let too_large = |n: String| Error::BadResponse {
            step,
            detail: format!("response body of {n} bytes exceeds max_response_bytes = {cap}"),
        };
        if let Some(len) = resp.content_length() {
            if len > cap as u64 {
                return Err(too_large(len.to_string()));
            }
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > cap {
                return Err(too_large(format!("more than {cap}")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }
}

struct RawResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn transport_error(step: Step, e: reqwest::Error) -> Error {
    let url = e.url().map(|u| u.to_string()).unwrap_or_default();
    let kind = if is_tls_error(&e) {
        TransportKind::Tls
    } else if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Other
    };
    // reqwest's Display is terse; the source chain carries the real cause.
    let mut cause = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        cause.push_str(": ");
        cause.push_str(&s.to_string());
        src = s.source();
    }
    Error::Transport {
        step,
        kind,
        url,
        cause,
    }
}

fn is_tls_error(e: &reqwest::Error) -> bool {
    contains_rustls_error(e)
}

fn contains_rustls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    // io::Error hides its payload from source() (it returns the payload's
    // source), and hyper wraps io errors in io errors: descend explicitly.
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            return contains_rustls_error(inner);
        }
    }
    e.source().is_some_and(contains_rustls_error)
}

fn expect_ok(step: Step, resp: RawResponse) -> Result<RawResponse> {
    if resp.status.is_success() {
        return Ok(resp);
    }
    let (error_type, detail) = error_information(&resp.body);
    Err(Error::Rejected {
        step,
        status: resp.status.as_u16(),
        error_type,
        detail,
    })
}

/// `type` and `detail` of Trustee's `ErrorInformation` error body; without one, the start of
/// the body as the detail. Both are bounded and printable (the KBS is not trusted).
fn error_information(body: &[u8]) -> (Option<String>, String) {
    match serde_json::from_slice::<kbs_types::ErrorInformation>(body) {
        Ok(info) => (
            Some(printable_prefix(info.error_type.as_bytes())),
            printable_prefix(info.detail.as_bytes()),
        ),
        Err(_) => (None, printable_prefix(body)),
    }
}

/// At most 256 characters of a body, control characters replaced, for
/// error messages (the KBS is not trusted to send clean text).
fn printable_prefix(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(256)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn parse_json<T: serde::de::DeserializeOwned>(step: Step, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::BadResponse {
        step,
        detail: format!(
            "body is not the expected JSON ({e}): {}",
            printable_prefix(body)
        ),
    })
}

/// The runtime-data hash the KBS selected; SHA-384 when it names none
/// (older KBS versions send `""` or `{}`).
fn selected_hash(extra_params: &serde_json::Value) -> Result<HashAlgorithm> {
    let bad = |detail: String| Error::BadResponse {
        step: Step::Auth,
        detail,
    };
    match extra_params.get(SELECTED_HASH_KEY) {
        None => Ok(HashAlgorithm::Sha384),
        Some(serde_json::Value::String(name)) => name
            .parse::<HashAlgorithm>()
            .map_err(|_| bad(format!("KBS selected unknown hash algorithm {name:?}"))),
        Some(other) => Err(bad(format!("{SELECTED_HASH_KEY} is not a string: {other}"))),
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_string())
}

/// `repo/type/tag`: three non-empty segments of `[A-Za-z0-9._-]`, none `.` or `..`.
pub fn validate_resource_path(path: &str) -> Result<()> {
    let segments: Vec<&str> = path.split('/').collect();
    let ok = segments.len() == 3
        && segments.iter().all(|s| {
            !s.is_empty()
                && *s != "."
                && *s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "resource path {path:?} is not repo/type/tag (segments of A-Z a-z 0-9 . _ -)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths() {
        assert!(validate_resource_path("default/vigil-policy/prod").is_ok());
        for bad in ["a/b", "a/b/c/d", "a//c", "../b/c", "a/b/c?x", "a/b/%2e"] {
            assert!(validate_resource_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_and_its_futures_are_send() {
        // The agent drives the client from spawned tasks.
        fn assert_send<T: Send>(_: &T) {}
        let ev: EvidenceFn = Arc::new(|_| Ok("{}".into()));
        let mut c = KbsClient::new(KbcConfig::new("http://127.0.0.1:1"), Tee::Sample, ev).unwrap();
        assert_send(&c);
        let vk = crate::envelope::SigningKey::generate(crate::envelope::Algorithm::EdDsa)
            .verifying_key();
        assert_send(&c.get_resource("a/b/c"));
        assert_send(&c.fetch_policy("a/b/c", &vk, 0));
        assert_send(&c.handshake());
    }

    #[test]
    fn hash_selection() {
        use serde_json::json;
        assert_eq!(selected_hash(&json!("")).unwrap(), HashAlgorithm::Sha384);
        assert_eq!(selected_hash(&json!({})).unwrap(), HashAlgorithm::Sha384);
        assert_eq!(
            selected_hash(&json!({"selected-hash-algorithm": "SHA512"})).unwrap(),
            HashAlgorithm::Sha512
        );
        assert!(selected_hash(&json!({"selected-hash-algorithm": "md5"}))
            .unwrap_err()
            .to_string()
            .starts_with("auth: "));
        assert!(selected_hash(&json!({"selected-hash-algorithm": 1})).is_err());
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, "other=1; Path=/".parse().unwrap());
        h.append(
            SET_COOKIE,
            "kbs-session-id=abc123; Expires=Wed, 21 Oct 2099 07:28:00 GMT"
                .parse()
                .unwrap(),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc123"));
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, "kbs-session-id=; Path=/".parse().unwrap());
        assert_eq!(session_cookie(&h), None);
    }

    #[test]
    fn https_without_cert_and_bad_pem_are_config_errors() {
        let ev: EvidenceFn = Arc::new(|_| Ok("{}".into()));
        let e = KbsClient::new(
            KbcConfig::new("https://127.0.0.1:1"),
            Tee::Sample,
            ev.clone(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("config: kbs_cert"), "{e}");
        let mut c = KbcConfig::new("https://127.0.0.1:1");
        c.kbs_cert = Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into());
        let e = KbsClient::new(c, Tee::Sample, ev).unwrap_err();
        assert!(e.to_string().starts_with("config: kbs_cert"), "{e}");
    }
}
