//! [`ImageService`]: a pull from reference to stored layers, under the tenant's policy.
//!
//! Order of a pull: parse the reference; load the trust (policy, keys, credentials; once per
//! boot, retried while it fails); find the policy rule (a `reject` stops here, before any
//! network access); resolve the manifest (index → this platform's manifest, every document
//! digest-checked); verify signatures when the rule asks for them; only then fetch the config
//! and the layers (in parallel, each verified and unpacked as it streams, each once per
//! store). Every decision is handed to the audit callback.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{self, ImageConfig, ImageManifest, Manifest, Platform};
use crate::policy::Requirement;
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryConfig};
use crate::rootfs::{self, Rootfs, RootfsMode};
use crate::signature;
use crate::store::{ImageRecord, LayerJob, Store};
use crate::trust::{PolicySource, ResourceSource, Trust};
use crate::unpack::Budget;

/// Limits on what one image may cost.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest compressed layer.
    pub max_layer_bytes: u64,
    /// Most bytes of files an image may unpack to, all layers together.
    pub max_image_bytes: u64,
    /// Most tar entries, all layers together.
    pub max_entries: u64,
    /// Layers fetched at the same time.
    pub parallel_layers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_bytes: 2 << 30,
            max_image_bytes: 8 << 30,
            max_entries: 1_000_000,
            parallel_layers: 3,
        }
    }
}

/// Everything an [`ImageService`] is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The content store's directory.
    pub store_dir: PathBuf,
    pub policy: PolicySource,
    /// Keys (`kbs:///...` or `file:///...`) that `sigstoreSigned` rules may name as `keyPath`.
    pub signature_keys: Vec<String>,
    /// A Docker `config.json` with registry credentials (`kbs:///...` or `file:///...`).
    pub credentials: Option<String>,
    pub registry: RegistryConfig,
    pub limits: Limits,
    pub rootfs: RootfsMode,
    /// The platform chosen from multi-platform indexes (this guest's by default).
    pub platform: Platform,
}

impl Settings {
    pub fn new(store_dir: impl Into<PathBuf>, policy: PolicySource) -> Settings {
        Settings {
            store_dir: store_dir.into(),
            policy,
            signature_keys: Vec::new(),
            credentials: None,
            registry: RegistryConfig::default(),
            limits: Limits::default(),
            rootfs: RootfsMode::Auto,
            platform: manifest::host_platform(),
        }
    }
}

/// One pull decision, for the audit log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PullDecision {
    pub image: String,
    /// The manifest digest (platform manifest), once resolved.
    pub digest: Option<String>,
    /// The policy rule that decided: `default`, `transports.docker["scope"]`, or `none`.
    pub rule: String,
    pub allowed: bool,
    pub reason: String,
}

/// Receives every pull decision.
pub type AuditSink = Arc<dyn Fn(&PullDecision) + Send + Sync>;

/// What one pull did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PullStats {
    pub seconds: f64,
    pub layers_fetched: usize,
    pub layers_cached: usize,
    /// Compressed bytes downloaded.
    pub bytes_fetched: u64,
}

/// A pulled image: its layers are in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub reference: Reference,
    /// The platform manifest's digest.
    pub digest: Digest,
    /// The index's digest when the reference named an index.
    pub index_digest: Option<Digest>,
    pub config: ImageConfig,
    /// Layer digests, bottom first.
    pub layers: Vec<Digest>,
    pub stats: PullStats,
}

#[derive(Default)]
struct Metrics {
    allowed: u64,
    denied: u64,
    failed: u64,
    bytes: u64,
    layers_fetched: u64,
    layers_cached: u64,
    /// The last pull of each image (bounded).
    last: BTreeMap<String, (String, PullStats)>,
}

const MAX_METRIC_IMAGES: usize = 64;

/// Pulls images into a content store and builds root file systems from them.
pub struct ImageService {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    store: Store,
    client: RegistryClient,
    kbs: Option<Arc<dyn ResourceSource>>,
    trust: tokio::sync::OnceCell<Arc<Trust>>,
    audit: Option<AuditSink>,
    metrics: Mutex<Metrics>,
}

impl ImageService {
    /// A service with its store at `settings.store_dir`; `kbs` serves `kbs:///` resources.
    pub fn new(settings: Settings, kbs: Option<Arc<dyn ResourceSource>>) -> Result<ImageService> {
        let store = Store::open(&settings.store_dir)?;
        let client = RegistryClient::new(settings.registry.clone())?;
        Ok(ImageService {
            inner: Arc::new(Inner {
                settings,
                store,
                client,
                kbs,
                trust: tokio::sync::OnceCell::new(),
                audit: None,
                metrics: Mutex::new(Metrics::default()),
            }),
        })
    }

    /// Sends every pull decision to `sink` (the agent's audit log).
    pub fn with_audit(mut self, sink: AuditSink) -> ImageService {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.audit = Some(sink);
        }
        self
    }

    /// Loads the policy, keys and credentials now (start-up); otherwise the first pull does.
    /// Once loaded they are kept for the boot; a failure is not kept, so a later pull retries.
    pub async fn load_trust(&self) -> Result<()> {
        self.inner.trust().await.map(|_| ())
    }

    /// Pulls `reference` under the policy; the layers end up in the store.
    pub async fn pull(&self, reference: &str) -> Result<PulledImage> {
        let started = Instant::now();
        let result = self.inner.clone().pull(reference, started).await;
        let mut m = lock(&self.inner.metrics);
        match &result {
            Ok(p) => {
                m.allowed += 1;
                m.bytes += p.stats.bytes_fetched;
                m.layers_fetched += p.stats.layers_fetched as u64;
                m.layers_cached += p.stats.layers_cached as u64;
                if m.last.len() >= MAX_METRIC_IMAGES && !m.last.contains_key(reference) {
                    m.last.pop_first();
                }
                m.last.insert(
                    reference.to_string(),
                    (p.digest.to_string(), p.stats.clone()),
                );
            }
            Err(Error::Denied { .. }) => m.denied += 1,
            Err(_) => m.failed += 1,
        }
        result
    }

    /// Builds the root file system of `image` at `target`: an empty directory the caller
    /// opened (resolved without following symlinks), `shown` its path for messages.
    pub async fn mount(
        &self,
        image: &PulledImage,
        target: OwnedFd,
        shown: &Path,
    ) -> Result<Rootfs> {
        let inner = self.inner.clone();
        let (layers, shown) = (image.layers.clone(), shown.to_path_buf());
        tokio::task::spawn_blocking(move || {
            rootfs::make(&inner.store, &layers, target, &shown, inner.settings.rootfs)
        })
        .await
        .map_err(|e| Error::io("rootfs task", e))?
    }

    /// The pull metrics in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let m = lock(&self.inner.metrics);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP vigil_image_pulls_total Image pulls by outcome.\n# TYPE vigil_image_pulls_total counter"
        );
        for (outcome, n) in [
            ("allowed", m.allowed),
            ("denied", m.denied),
            ("failed", m.failed),
        ] {
            let _ = writeln!(out, "vigil_image_pulls_total{{outcome=\"{outcome}\"}} {n}");
        }
        counter(
            out,
            "vigil_image_pull_bytes_total",
            "Compressed layer bytes downloaded.",
            m.bytes,
        );
        counter(
            out,
            "vigil_image_layers_fetched_total",
            "Layers downloaded and unpacked.",
            m.layers_fetched,
        );
        counter(
            out,
            "vigil_image_layers_cached_total",
            "Layers found in the store.",
            m.layers_cached,
        );
        // Per image (its last pull): one gauge family each, one line per image and label.
        let last = || {
            m.last
                .iter()
                .map(|(image, (digest, s))| (escape(image), digest, s))
        };
        gauge(
            out,
            "vigil_image_last_pull_seconds",
            "Duration of each image's last pull.",
            last().map(|(image, digest, s)| {
                (
                    format!("image=\"{image}\",digest=\"{digest}\""),
                    s.seconds.to_string(),
                )
            }),
        );
        gauge(
            out,
            "vigil_image_last_pull_bytes",
            "Compressed bytes the last pull of each image downloaded.",
            last().map(|(image, _, s)| (format!("image=\"{image}\""), s.bytes_fetched.to_string())),
        );
        gauge(
            out,
            "vigil_image_last_pull_layers",
            "Layers of each image's last pull, by source.",
            last().flat_map(|(image, _, s)| {
                [("registry", s.layers_fetched), ("store", s.layers_cached)].map(|(source, n)| {
                    (
                        format!("image=\"{image}\",source=\"{source}\""),
                        n.to_string(),
                    )
                })
            }),
        );
    }
}

/// A gauge family: its help and type, then `name{labels} value` for each line.
fn gauge(out: &mut String, name: &str, help: &str, lines: impl Iterator<Item = (String, String)>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, v) in lines {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    async fn trust(&self) -> Result<&Arc<Trust>> {
        self.trust
            .get_or_try_init(|| async {
                let s = &self.settings;
                let t = Trust::load(
                    &s.policy,
                    &s.signature_keys,
                    s.credentials.as_deref(),
                    self.kbs.as_ref(),
                )
                .await?;
                tracing::info!(policy = ?s.policy, "image policy loaded");
                Ok(Arc::new(t))
            })
            .await
    }

    fn audit(&self, d: PullDecision) {
        if d.allowed {
            tracing::info!(image = %d.image, digest = ?d.digest, rule = %d.rule, "image pull allowed");
        } else {
            tracing::warn!(image = %d.image, digest = ?d.digest, rule = %d.rule, reason = %d.reason, "image pull denied");
        }
        if let Some(sink) = &self.audit {
            sink(&d);
        }
    }

    async fn pull(self: Arc<Self>, text: &str, started: Instant) -> Result<PulledImage> {
        let reference = Reference::parse(text)?;
        let deny = |rule: &str, digest: Option<&Digest>, e: &Error| {
            self.audit(PullDecision {
                image: reference.to_string(),
                digest: digest.map(|d| d.to_string()),
                rule: rule.to_string(),
                allowed: false,
                reason: e.to_string(),
            })
        };
        let trust = match self.trust().await {
            Ok(t) => t.clone(),
            Err(e) => {
                deny("none", None, &e);
                return Err(e);
            }
        };
        let applicable = trust.policy.applicable(&reference);
        let rule = applicable.rule_name();
        if applicable.requirements.contains(&Requirement::Reject) {
            let e = Error::Denied {
                image: reference.to_string(),
                reason: format!("{rule} says reject"),
            };
            deny(&rule, None, &e);
            return Err(e);
        }
        let creds = trust.credentials.as_ref();
        let (manifest, digest, index_digest) = self.resolve(&reference, creds).await?;
        let mut signed_by = Vec::new();
        for req in applicable.requirements {
            if let Requirement::SigstoreSigned(r) = req {
                let keys = trust.keys_for(&r.keys);
                let mut signed: Vec<&Digest> = index_digest.iter().collect();
                signed.push(&digest);
                match signature::verify(
                    &self.client,
                    creds,
                    &reference,
                    &signed,
                    &keys,
                    &r.identity,
                )
                .await
                {
                    Ok(key) => signed_by.push(key),
                    Err(e) => {
                        deny(&rule, Some(&digest), &e);
                        return Err(e);
                    }
                }
            }
        }
        self.audit(PullDecision {
            image: reference.to_string(),
            digest: Some(digest.to_string()),
            rule: rule.clone(),
            allowed: true,
            reason: if signed_by.is_empty() {
                "insecureAcceptAnything".into()
            } else {
                format!("sigstoreSigned by {}", signed_by.join(", "))
            },
        });
        if let Some(rec) = self.store.image(&digest) {
            let stats = PullStats {
                seconds: started.elapsed().as_secs_f64(),
                layers_cached: rec.layers.len(),
                ..Default::default()
            };
            tracing::info!(image = %reference, digest = %digest, layers = rec.layers.len(), ms = stats.seconds * 1000.0, "image served from the store");
            return Ok(PulledImage {
                reference,
                digest,
                index_digest,
                config: rec.config,
                layers: rec.layers,
                stats,
            });
        }
        let config_body = self
            .client
            .small_blob(
                &reference,
                &manifest.config.digest,
                manifest.config.size,
                "image config",
                creds,
            )
            .await?;
        let config =
            ImageConfig::parse(&config_body, manifest.layers.len(), &self.settings.platform)
                .map_err(|e| {
                    Error::invalid(&reference, format!("config {}", manifest.config.digest), e)
                })?;
        let stats = self
            .clone()
            .fetch_layers(&reference, &manifest, &config)
            .await?;
        let layers: Vec<Digest> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
        self.store.save_image(&ImageRecord {
            manifest_digest: digest.clone(),
            config: config.clone(),
            layers: layers.clone(),
        })?;
        let stats = PullStats {
            seconds: started.elapsed().as_secs_f64(),
            ..stats
        };
        tracing::info!(
            image = %reference,
            digest = %digest,
            layers_fetched = stats.layers_fetched,
            layers_cached = stats.layers_cached,
            bytes = stats.bytes_fetched,
            ms = stats.seconds * 1000.0,
            "image pulled"
        );
        Ok(PulledImage {
            reference,
            digest,
            index_digest,
            config,
            layers,
            stats,
        })
    }

    /// The image manifest for this platform, its digest, and the index digest if any.
    async fn resolve(
        &self,
        reference: &Reference,
        creds: Option<&crate::registry::Credentials>,
    ) -> Result<(ImageManifest, Digest, Option<Digest>)> {
        let top = self
            .client
            .manifest(reference, &reference.manifest_ref(), creds)
            .await?;
        let parsed = Manifest::parse(&top.body, top.content_type.as_deref())
            .map_err(|e| Error::invalid(reference, format!("manifest {}", top.digest), e))?;
        match parsed {
            Manifest::Image(m) => Ok((m, top.digest, None)),
            Manifest::Index(index) => {
                let p = &self.settings.platform;
                let entry = manifest::choose_platform(&index, p).ok_or_else(|| {
                    let offered: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect();
                    Error::NotFound {
                        image: reference.to_string(),
                        what: format!(
                            "a manifest for {}/{} (the index offers {})",
                            p.os,
                            p.architecture,
                            if offered.is_empty() {
                                "none".into()
                            } else {
                                offered.join(", ")
                            }
                        ),
                    }
                })?;
                let doc = self
                    .client
                    .manifest(reference, &entry.digest.to_string(), creds)
                    .await?;
                if doc.body.len() as u64 != entry.size {
                    return Err(Error::invalid(
                        reference,
                        format!("manifest {}", entry.digest),
                        format!("{} bytes, the index says {}", doc.body.len(), entry.size),
                    ));
                }
                match Manifest::parse(&doc.body, doc.content_type.as_deref()) {
                    Ok(Manifest::Image(m)) => Ok((m, doc.digest, Some(top.digest))),
                    Ok(Manifest::Index(_)) => Err(Error::invalid(
                        reference,
                        format!("manifest {}", entry.digest),
                        "an index inside an index is not supported",
                    )),
                    Err(e) => Err(Error::invalid(
                        reference,
                        format!("manifest {}", entry.digest),
                        e,
                    )),
                }
            }
        }
    }

    /// Every layer into the store, `parallel_layers` at a time. On a failure the other
    /// layers still finish (or fail) cleanly before the first error is returned, so no
    /// staging is abandoned half-written.
    async fn fetch_layers(
        self: Arc<Self>,
        reference: &Reference,
        manifest: &ImageManifest,
        config: &ImageConfig,
    ) -> Result<PullStats> {
        let limits = &self.settings.limits;
        let budget = Arc::new(Budget::new(limits.max_image_bytes, limits.max_entries));
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.parallel_layers.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for (desc, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let (me, desc, diff_id) = (self.clone(), desc.clone(), diff_id.clone());
            let (reference, budget, permits) = (reference.clone(), budget.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let trust = me.trust.get().cloned();
                let creds = trust.as_ref().and_then(|t| t.credentials.as_ref());
                me.store
                    .ensure_layer(LayerJob {
                        client: &me.client,
                        creds,
                        image: &reference,
                        desc: &desc,
                        diff_id: &diff_id,
                        budget,
                        max_layer_bytes: me.settings.limits.max_layer_bytes,
                    })
                    .await
            });
        }
        let mut stats = PullStats::default();
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined.map_err(|e| Error::io("layer task", e)) {
                Ok(Ok(f)) => {
                    if f.cached {
                        stats.layers_cached += 1;
                    } else {
                        stats.layers_fetched += 1;
                        stats.bytes_fetched += f.bytes;
                    }
                }
                Ok(Err(e)) | Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}
