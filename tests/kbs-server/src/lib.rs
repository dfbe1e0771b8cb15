//! A KBS protocol **test** server for vigil: speaks Trustee's KBS protocol
//! (RCAR, version 0.4.0) on a local address and really checks what Trustee's KBS
//! checks — protocol version, single-use per-session nonces, session cookie
//! and expiry, report_data binding, evidence format, the init-data digest
//! against SNP `HOST_DATA` / TDX `MRCONFIGID` (sample evidence has no such
//! field: as in Trustee, the digest of the init-data sent is a claim for the
//! release rules), and per-resource release rules — then serves resources
//! JWE-encrypted to the attested TEE key. Refusals carry Trustee's statuses and
//! `ErrorInformation` types (a policy denial and a missing resource are 401
//! `PolicyDeny` and `PluginInternalError`, as Trustee answers).
//!
//! It is **not** a production KBS: it has no attestation service, verifies no
//! hardware signatures, keeps sessions in memory and is meant for tests and
//! demos on loopback.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use kbs_test_server::{KbsTestServer, ServerConfig};
//! let server = KbsTestServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default()).await?;
//! println!("{}", server.url());
//! # Ok(()) }
//! ```

pub mod evidence;
pub mod rules;
pub mod tls;

use base64::prelude::{Engine as _, BASE64_STANDARD, BASE64_URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use kbs_types::HashAlgorithm;
use kbs_types::{Attestation, Challenge, ErrorInformation, Tee, TeePubKey};
use rand_core::RngCore as _;
use rules::{Lookup, ReleaseRule, Requester, ResourceStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use vigil_kbc::tee_key::{jwk_to_public_key, report_data_for, runtime_data_digest_with};

pub use rules::ReleaseRule as Rule;

/// Prefix of `ErrorInformation.type`, as Trustee's KBS uses.
pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";
const MAX_SESSIONS: usize = 10_000;

/// PEM certificate chain and PKCS#8 key for HTTPS.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Server certificate first, then intermediates.
    pub cert_chain_pem: String,
    /// Private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key_pem: String,
}

/// How the server behaves.
#[derive(Clone)]
pub struct ServerConfig {
    /// Resource directory (see [`rules`] for the layout), if any.
    pub resources_dir: Option<PathBuf>,
    /// TEE types accepted at `auth`.
    pub allowed_tees: Vec<Tee>,
    /// Session (cookie) and token lifetime.
    pub session_ttl: Duration,
    /// Protocol version required at `auth`.
    pub protocol_version: String,
    /// Serve HTTPS with this identity instead of plain HTTP.
    pub tls: Option<TlsIdentity>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Enables the admin call `POST /kbs/v0/resource/<repo>/<type>/<tag>`
    /// (body = resource bytes, written into `resources_dir`) for requests
    /// carrying `Authorization: Bearer <this secret>`.
    pub admin_token: Option<String>,
    /// Runtime-data hash selected in every challenge; a client that lists
    /// its supported hashes without this one is refused at auth.
    pub hash_algorithm: HashAlgorithm,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            resources_dir: None,
            allowed_tees: vec![Tee::Sample],
            session_ttl: Duration::from_secs(300),
            protocol_version: vigil_kbc::PROTOCOL_VERSION.to_string(),
            tls: None,
            max_body_bytes: 4 << 20,
            hash_algorithm: HashAlgorithm::Sha384,
            admin_token: None,
        }
    }
}

/// Deliberate misbehaviour, for testing clients (library use only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    /// Behave correctly.
    #[default]
    None,
    /// Answer every resource request with 401.
    ResourceAlways401,
    /// Flip a bit of the JWE ciphertext.
    TamperCiphertext,
    /// Flip a bit of the JWE tag.
    TamperTag,
    /// Re-encode the protected header with an extra member.
    TamperProtectedHeader,
    /// Encrypt to a fresh key instead of the attested TEE key.
    EncryptToOtherKey,
    /// Answer every request with 503, as a proxy in front of a KBS that is down does.
    Unavailable,
    /// Refuse every attestation (401 `AttestationFailed`), as a KBS whose verifier rejects
    /// the evidence does.
    RefuseEvidence,
}

/// Request counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// `auth` requests that opened a session.
    pub auth: u64,
    /// Successful attestations.
    pub attest_ok: u64,
    /// Refused attestations.
    pub attest_failed: u64,
    /// Resources served.
    pub resources_served: u64,
    /// Resource requests refused (401, or 400 for a malformed path).
    pub resources_refused: u64,
}

#[derive(Default)]
struct Counters {
    auth: AtomicU64,
    attest_ok: AtomicU64,
    attest_failed: AtomicU64,
    served: AtomicU64,
    refused: AtomicU64,
}

struct Attested {
    tee_pubkey: p256::PublicKey,
    requester: Requester,
}

struct Session {
    tee: Tee,
    hash: HashAlgorithm,
    nonce: String,
    nonce_used: bool,
    expires: u64,
    attested: Option<Attested>,
}

/// While a hold is on, resource requests wait; `arrived` counts those that came.
struct Hold {
    release: tokio::sync::watch::Receiver<bool>,
    arrived: Arc<AtomicU64>,
}

/// Resource answers held back until [`ResourceHold::release`] (or drop), so that a test can
/// make requests overlap without timing.
pub struct ResourceHold {
    release: tokio::sync::watch::Sender<bool>,
    arrived: Arc<AtomicU64>,
}

impl ResourceHold {
    /// Resource requests that arrived since the hold began (each waits until release).
    pub fn arrived(&self) -> u64 {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Lets every held request (and later ones) through.
    pub fn release(self) {}
}

impl Drop for ResourceHold {
    fn drop(&mut self) {
        let _ = self.release.send(true);
    }
}

struct Inner {
    cfg: ServerConfig,
    hold: Mutex<Option<Hold>>,
    sessions: Mutex<HashMap<String, Session>>,
    store: Mutex<ResourceStore>,
    clock_offset: Mutex<Duration>,
    fault: Mutex<Fault>,
    counters: Counters,
    token_key: p256::ecdsa::SigningKey,
}

/// A running server; stops when dropped.
pub struct KbsTestServer {
    addr: SocketAddr,
    https: bool,
    inner: Arc<Inner>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Drop for KbsTestServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn tls_acceptor(id: &TlsIdentity) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let certs = CertificateDer::pem_slice_iter(id.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("TLS certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("TLS certificate file has no CERTIFICATE".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
        .map_err(|e| bad(format!("TLS key PEM: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(format!("TLS identity rejected: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

impl KbsTestServer {
    /// Bind `listen` (use port 0 for any) and serve in the background on the
    /// current tokio runtime. The address is bound when this returns.
    pub async fn start(listen: SocketAddr, cfg: ServerConfig) -> std::io::Result<Self> {
        let acceptor = cfg.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            hold: Mutex::new(None),
            store: Mutex::new(ResourceStore::new(cfg.resources_dir.clone())),
            cfg,
            sessions: Mutex::new(HashMap::new()),
            clock_offset: Mutex::new(Duration::ZERO),
            fault: Mutex::new(Fault::None),
            counters: Counters::default(),
            token_key: p256::ecdsa::SigningKey::random(&mut rand_core::OsRng),
        });
        let (shutdown, mut stop) = tokio::sync::watch::channel(false);
        let https = acceptor.is_some();
        let state = inner.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => { tracing::warn!("accept failed: {e}"); continue; }
                    },
                    _ = stop.changed() => break,
                };
                let state = state.clone();
                let acceptor = acceptor.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    let result = match acceptor {
                        Some(acc) => match acc.accept(stream).await {
                            Ok(tls) => {
                                let conn = builder
                                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                                tokio::select! { r = conn => r, _ = stop.changed() => Ok(()) }
                            }
                            Err(e) => {
                                tracing::info!(%peer, "TLS handshake failed: {e}");
                                return;
                            }
                        },
                        None => {
                            let conn =
                                builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                            tokio::select! { r = conn => r, _ = stop.changed() => Ok(()) }
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, "connection ended with error: {e}");
                    }
                });
            }
        });
        Ok(KbsTestServer {
            addr,
            https,
            inner,
            shutdown,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`, the value for the client's `kbs_url`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.addr
        )
    }

    /// Add or replace an in-memory resource (the "admin call").
    pub fn put_resource(&self, path: &str, bytes: Vec<u8>, rule: ReleaseRule) {
        self.inner.store.lock().unwrap().put(path, bytes, rule);
    }

    /// Holds resource answers until the returned hold is released (library use only).
    pub fn hold_resources(&self) -> ResourceHold {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let arrived = Arc::new(AtomicU64::new(0));
        *self.inner.hold.lock().unwrap() = Some(Hold {
            release: rx,
            arrived: arrived.clone(),
        });
        ResourceHold {
            release: tx,
            arrived,
        }
    }

    /// Move the server's clock forward (expires sessions and tokens without sleeping).
    pub fn advance_clock(&self, by: Duration) {
        *self.inner.clock_offset.lock().unwrap() += by;
    }

    /// Make the server misbehave from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.inner.fault.lock().unwrap() = fault;
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            auth: c.auth.load(Ordering::Relaxed),
            attest_ok: c.attest_ok.load(Ordering::Relaxed),
            attest_failed: c.attest_failed.load(Ordering::Relaxed),
            resources_served: c.served.load(Ordering::Relaxed),
            resources_refused: c.refused.load(Ordering::Relaxed),
        }
    }
}

type Resp = Response<Full<Bytes>>;

/// An error answer in Trustee's `ErrorInformation` shape.
struct Refusal {
    status: StatusCode,
    kind: &'static str,
    detail: String,
}

fn refuse(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        status,
        kind,
        detail: detail.into(),
    }
}

impl Refusal {
    fn into_response(self) -> Resp {
        let info = ErrorInformation {
            error_type: format!("{ERROR_TYPE_PREFIX}{}", self.kind),
            detail: self.detail,
        };
        json_response(self.status, &info)
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).expect("serialisable"),
    )));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl Inner {
    fn now(&self) -> u64 {
        let t = SystemTime::now() + *self.clock_offset.lock().unwrap();
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

async fn handle(state: &Inner, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if *state.fault.lock().unwrap() == Fault::Unavailable {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "fault injection: service unavailable",
        )
        .into_response();
    }
    let result = match (method.clone(), path.as_str()) {
        (Method::POST, "/kbs/v0/auth") => match read_body(state, req).await {
            Ok((_, body)) => auth(state, &body),
            Err(r) => Err(r),
        },
        (Method::POST, "/kbs/v0/attest") => match read_body(state, req).await {
            Ok((parts, body)) => attest(state, &parts, &body),
            Err(r) => Err(r),
        },
        (Method::GET, p) if p.starts_with("/kbs/v0/resource/") => {
            let (parts, _) = req.into_parts();
            let held = state.hold.lock().unwrap().as_ref().map(|h| {
                h.arrived.fetch_add(1, Ordering::SeqCst);
                h.release.clone()
            });
            if let Some(mut release) = held {
                let _ = release.wait_for(|r| *r).await;
            }
            resource(state, &parts, &p["/kbs/v0/resource/".len()..])
        }
        (Method::POST, p) if p.starts_with("/kbs/v0/resource/") => {
            let p = p["/kbs/v0/resource/".len()..].to_string();
            match read_body(state, req).await {
                Ok((parts, body)) => admin_put(state, &parts, &p, &body),
                Err(r) => Err(r),
            }
        }
        (_, "/kbs/v0/auth" | "/kbs/v0/attest") => Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "InvalidRequest",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(refuse(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no endpoint {method} {path}"),
        )),
    };
    match result {
        Ok(r) => r,
        Err(refusal) => {
            tracing::info!(%method, %path, status = refusal.status.as_u16(), kind = refusal.kind, detail = %refusal.detail, "refused");
            refusal.into_response()
        }
    }
}

async fn read_body(
    state: &Inner,
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Bytes), Refusal> {
    let (parts, body) = req.into_parts();
    let limit = state.cfg.max_body_bytes;
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "InvalidRequest",
                format!("request body unreadable or larger than {limit} bytes: {e}"),
            )
        })?
        .to_bytes();
    Ok((parts, body))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            format!("{what} body is malformed: {e}"),
        )
    })
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand_core::OsRng.fill_bytes(&mut b);
    b
}

fn auth(state: &Inner, body: &[u8]) -> Result<Resp, Refusal> {
    let req: kbs_types::Request = parse("auth", body)?;
    if req.version != state.cfg.protocol_version {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "ProtocolVersion",
            format!(
                "protocol version {:?} is not supported; this KBS speaks {}",
                req.version, state.cfg.protocol_version
            ),
        ));
    }
    if !state.cfg.allowed_tees.contains(&req.tee) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "UnsupportedTee",
            format!("TEE {} is not accepted by this KBS", req.tee),
        ));
    }
    let hash = state.cfg.hash_algorithm;
    if let Some(list) = req
        .extra_params
        .get(vigil_kbc::client::SUPPORTED_HASHES_KEY)
    {
        let supported: Vec<HashAlgorithm> = list
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        if !supported.contains(&hash) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                format!("client does not offer the hash algorithm this KBS uses ({hash})"),
            ));
        }
    }
    let nonce = BASE64_STANDARD.encode(random_bytes::<32>());
    let id = hex::encode(random_bytes::<16>());
    let now = state.now();
    let ttl = state.cfg.session_ttl.as_secs();
    {
        let mut sessions = state.sessions.lock().unwrap();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "TooManySessions",
                "session table is full",
            ));
        }
        sessions.insert(
            id.clone(),
            Session {
                tee: req.tee,
                hash,
                nonce: nonce.clone(),
                nonce_used: false,
                expires: now + ttl,
                attested: None,
            },
        );
    }
    state.counters.auth.fetch_add(1, Ordering::Relaxed);
    tracing::info!(tee = %req.tee, session = %&id[..8], "auth: issued challenge");
    let mut resp = json_response(
        StatusCode::OK,
        &Challenge {
            nonce,
            extra_params: serde_json::json!({ vigil_kbc::client::SELECTED_HASH_KEY: hash }),
        },
    );
    let cookie = format!(
        "{}={id}; Max-Age={ttl}; Path=/kbs/v0; HttpOnly",
        vigil_kbc::SESSION_COOKIE
    );
    resp.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("ascii cookie"),
    );
    Ok(resp)
}

fn session_id(parts: &hyper::http::request::Parts) -> Option<String> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == vigil_kbc::SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

fn attest(
    state: &Inner,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> Result<Resp, Refusal> {
    let result = attest_inner(state, parts, body);
    let counter = if result.is_ok() {
        &state.counters.attest_ok
    } else {
        &state.counters.attest_failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
    result
}

fn attest_inner(
    state: &Inner,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> Result<Resp, Refusal> {
    let unauthorized = |kind, detail: String| refuse(StatusCode::UNAUTHORIZED, kind, detail);
    let failed = |detail: String| refuse(StatusCode::UNAUTHORIZED, "AttestationFailed", detail);
    if *state.fault.lock().unwrap() == Fault::RefuseEvidence {
        return Err(failed("fault injection: evidence refused".into()));
    }
    let id = session_id(parts).ok_or_else(|| {
        unauthorized(
            "MissingCookie",
            "attest without a kbs-session-id cookie".into(),
        )
    })?;
    let now = state.now();
    let attestation: Attestation = parse("attest", body)?;
    // Consume the nonce before any other check: one attempt per challenge.
    let (tee, hash) = {
        let mut sessions = state.sessions.lock().unwrap();
        let Some(session) = sessions.get_mut(&id) else {
            return Err(unauthorized("InvalidCookie", "unknown session".into()));
        };
        if session.expires <= now {
            sessions.remove(&id);
            return Err(unauthorized(
                "ExpiredCookie",
                "session expired; start again with auth".into(),
            ));
        }
        if session.nonce_used {
            return Err(unauthorized(
                "InvalidNonce",
                "this session's challenge nonce was already used".into(),
            ));
        }
        session.nonce_used = true;
        if attestation.runtime_data.nonce != session.nonce {
            return Err(unauthorized(
                "InvalidNonce",
                "runtime-data nonce is not this session's challenge".into(),
            ));
        }
        (session.tee, session.hash)
    };
    tracing::info!(%tee, session = %&id[..8.min(id.len())], "attest: nonce accepted");

    let tee_pubkey = jwk_to_public_key(&attestation.runtime_data.tee_pubkey)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "InvalidRequest", e))?;
    let claims = evidence::claims(tee, &attestation.tee_evidence.primary_evidence)
        .map_err(|e| failed(format!("evidence: {e}")))?;
    let digest = runtime_data_digest_with(
        hash,
        &attestation.runtime_data.nonce,
        &attestation.runtime_data.tee_pubkey,
    )
    .map_err(|e| refuse(StatusCode::BAD_REQUEST, "InvalidRequest", e.to_string()))?;
    let expected = report_data_for(tee, &digest);
    if claims.report_data != expected {
        return Err(failed(format!(
            "evidence report_data ({} bytes) does not equal SHA-384 of the canonical runtime data ({} bytes expected)",
            claims.report_data.len(),
            expected.len()
        )));
    }
    tracing::info!(%tee, "attest: report_data binds nonce and TEE key");

    let init_data_digest = match &attestation.init_data {
        None => None,
        Some(init) => {
            if init.format != "toml" {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    format!("init-data format {:?} is not \"toml\"", init.format),
                ));
            }
            let d = evidence::InitDataDigest::of(&init.body)
                .map_err(|e| refuse(StatusCode::BAD_REQUEST, "InvalidRequest", e))?;
            // As Trustee's verifiers: SNP HOST_DATA and TDX MRCONFIGID must hold the digest of
            // the init-data sent (truncated or zero-padded to the field). Sample evidence has
            // no such field (Trustee's sample verifier reads only svn and report_data; any
            // init_data member is ignored): the digest of the sent TOML becomes a claim, and
            // the release rules (Trustee: its resource policy) decide on it.
            match evidence::launch_binding_len(tee) {
                Some(len) => {
                    if claims.launch_binding != d.binding(len) {
                        return Err(failed(format!(
                            "init-data {} digest does not match the evidence launch binding",
                            d.algorithm
                        )));
                    }
                    tracing::info!(%tee, algorithm = %d.algorithm, "attest: init-data matches launch binding");
                }
                None if tee == Tee::Sample => {
                    tracing::info!(%tee, algorithm = %d.algorithm, "attest: init-data digest recorded (sample evidence binds none)");
                }
                None => return Err(failed(format!("no launch binding field known for {tee}"))),
            }
            Some(hex::encode(&d.digest))
        }
    };

    let requester = Requester {
        tee,
        init_data_digest,
    };
    let expires = {
        let mut sessions = state.sessions.lock().unwrap();
        let Some(session) = sessions.get_mut(&id) else {
            return Err(unauthorized(
                "InvalidCookie",
                "session vanished during attestation".into(),
            ));
        };
        session.attested = Some(Attested {
            tee_pubkey,
            requester: requester.clone(),
        });
        session.expires
    };
    let token = make_token(
        state,
        &attestation.runtime_data.tee_pubkey,
        &requester,
        now,
        expires,
    );
    tracing::info!(%tee, "attest: success, token issued");
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "token": token }),
    ))
}

#[derive(Serialize, Deserialize)]
struct TokenClaims {
    iss: String,
    iat: u64,
    exp: u64,
    tee: Tee,
    #[serde(rename = "tee-pubkey")]
    tee_pubkey: TeePubKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    init_data_digest: Option<String>,
}

fn make_token(state: &Inner, jwk: &TeePubKey, who: &Requester, now: u64, exp: u64) -> String {
    use p256::ecdsa::signature::Signer as _;
    let header = BASE64_URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
    let claims = TokenClaims {
        iss: "kbs-test-server".into(),
        iat: now,
        exp,
        tee: who.tee,
        tee_pubkey: jwk.clone(),
        init_data_digest: who.init_data_digest.clone(),
    };
    let claims = BASE64_URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims"));
    let input = format!("{header}.{claims}");
    let sig: p256::ecdsa::Signature = state.token_key.sign(input.as_bytes());
    format!("{input}.{}", BASE64_URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn check_token(state: &Inner, token: &str) -> Result<(p256::PublicKey, Requester), String> {
    use p256::ecdsa::signature::Verifier as _;
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3
        || parts[0] != BASE64_URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#)
    {
        return Err("bearer token is not one of ours".into());
    }
    let sig = BASE64_URL_SAFE_NO_PAD
        .decode(parts[2])
        .ok()
        .and_then(|s| p256::ecdsa::Signature::from_slice(&s).ok())
        .ok_or("bearer token signature is malformed")?;
    let input = &token[..parts[0].len() + 1 + parts[1].len()];
    state
        .token_key
        .verifying_key()
        .verify(input.as_bytes(), &sig)
        .map_err(|_| "bearer token signature is invalid")?;
    let claims: TokenClaims = BASE64_URL_SAFE_NO_PAD
        .decode(parts[1])
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or("bearer token claims are malformed")?;
    if claims.exp <= state.now() {
        return Err("bearer token expired".into());
    }
    let key = jwk_to_public_key(&claims.tee_pubkey)?;
    Ok((
        key,
        Requester {
            tee: claims.tee,
            init_data_digest: claims.init_data_digest,
        },
    ))
}

fn resource(
    state: &Inner,
    parts: &hyper::http::request::Parts,
    path: &str,
) -> Result<Resp, Refusal> {
    let result = resource_inner(state, parts, path);
    if result.is_err() {
        state.counters.refused.fetch_add(1, Ordering::Relaxed);
    } else {
        state.counters.served.fetch_add(1, Ordering::Relaxed);
    }
    result
}

fn resource_inner(
    state: &Inner,
    parts: &hyper::http::request::Parts,
    path: &str,
) -> Result<Resp, Refusal> {
    vigil_kbc::client::validate_resource_path(path)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "InvalidRequest", e.to_string()))?;
    let now = state.now();
    let from_session = session_id(parts).and_then(|id| {
        let mut sessions = state.sessions.lock().unwrap();
        match sessions.get(&id) {
            Some(s) if s.expires <= now => {
                sessions.remove(&id);
                None
            }
            Some(Session {
                attested: Some(a), ..
            }) => Some((a.tee_pubkey, a.requester.clone())),
            _ => None,
        }
    });
    let (key, who) = match from_session {
        Some(x) => x,
        None => {
            let bearer = parts
                .headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match bearer {
                Some(t) => check_token(state, t)
                    .map_err(|e| refuse(StatusCode::UNAUTHORIZED, "TokenInvalid", e))?,
                None => {
                    return Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        "UnAuthenticatedCookie",
                        "no attested, unexpired session and no bearer token",
                    ))
                }
            }
        }
    };
    let fault = *state.fault.lock().unwrap();
    if fault == Fault::ResourceAlways401 {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "UnAuthenticatedCookie",
            "fault injection: always 401",
        ));
    }
    // Trustee answers 401 for these too: a policy denial is `PolicyDeny`, and a resource its
    // storage cannot produce (missing included) is `PluginInternalError`.
    let lookup = state.store.lock().unwrap().lookup(path).map_err(|e| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "PluginInternalError",
            format!("reading {path}: {e}"),
        )
    })?;
    let (bytes, rule) = match lookup {
        Lookup::Found(b, r) => (b, r),
        Lookup::NotFound => {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "PluginInternalError",
                format!("resource not found: {path}"),
            ))
        }
        Lookup::NoRule(why) => return Err(refuse(StatusCode::UNAUTHORIZED, "PolicyDeny", why)),
    };
    rule.check(&who).map_err(|why| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "PolicyDeny",
            format!("{path}: {why}"),
        )
    })?;
    let recipient = if fault == Fault::EncryptToOtherKey {
        p256::SecretKey::random(&mut rand_core::OsRng).public_key()
    } else {
        key
    };
    let jwe = vigil_kbc::jwe::encrypt(&bytes, &recipient).map_err(|e| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Encryption",
            e.to_string(),
        )
    })?;
    let jwe = apply_tamper(fault, jwe);
    tracing::info!(tee = %who.tee, %path, bytes = bytes.len(), "resource: released");
    let mut r = Response::new(Full::new(Bytes::from(jwe)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// The admin call: store resource bytes in the resource directory. Release
/// still follows `rules.json`.
fn admin_put(
    state: &Inner,
    parts: &hyper::http::request::Parts,
    path: &str,
    body: &[u8],
) -> Result<Resp, Refusal> {
    let Some(secret) = &state.cfg.admin_token else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "AdminDisabled",
            "the admin API is disabled (no admin token configured)",
        ));
    };
    let presented = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), secret.as_bytes()) {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "AdminAuthFailed",
            "missing or wrong admin bearer token",
        ));
    }
    vigil_kbc::client::validate_resource_path(path)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "InvalidRequest", e.to_string()))?;
    let Some(dir) = &state.cfg.resources_dir else {
        return Err(refuse(
            StatusCode::CONFLICT,
            "InvalidRequest",
            "no resource directory configured",
        ));
    };
    let io = |e: std::io::Error| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ResourceStore",
            format!("writing {path}: {e}"),
        )
    };
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().expect("three segments")).map_err(io)?;
    // Write then rename, so a concurrent fetch never sees half a resource.
    let tmp = file.with_extension(format!("tmp-{}", hex::encode(random_bytes::<8>())));
    std::fs::write(&tmp, body).map_err(io)?;
    std::fs::rename(&tmp, &file).map_err(io)?;
    tracing::info!(%path, bytes = body.len(), "admin: resource stored");
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::OK;
    Ok(r)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn apply_tamper(fault: Fault, jwe: String) -> String {
    let field = match fault {
        Fault::TamperCiphertext => "ciphertext",
        Fault::TamperTag => "tag",
        Fault::TamperProtectedHeader => "protected",
        _ => return jwe,
    };
    let mut v: serde_json::Value = serde_json::from_str(&jwe).expect("own JWE");
    let mut raw = BASE64_URL_SAFE_NO_PAD
        .decode(v[field].as_str().unwrap_or_default())
        .unwrap_or_default();
    if field == "protected" {
        let mut h: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
        h["kid"] = serde_json::Value::String("injected".into());
        raw = serde_json::to_vec(&h).unwrap_or_default();
    } else if let Some(b) = raw.first_mut() {
        *b ^= 0x01;
    }
    v[field] = serde_json::Value::String(BASE64_URL_SAFE_NO_PAD.encode(raw));
    v.to_string()
}
