//! The content store: unpacked layers by digest, image records by manifest digest, shared by
//! every container of the boot. A layer is fetched and unpacked once even when several pulls
//! want it at the same time, and only a complete, verified layer ever appears under its
//! digest: work happens in a staging directory that a failure deletes.
//!
//! Layout under the store root:
//! `layers/<algo>-<hex>/` unpacked layers (overlayfs format), `images/<algo>-<hex>.json`
//! image records, `tmp/` staging (emptied at open), `rootfs/<n>/` writable parts of mounted
//! root file systems.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, ImageConfig, LayerCompression};
use crate::reference::Reference;
use crate::registry::{Credentials, RegistryClient};
use crate::unpack::{self, Budget, UnpackError};

/// Chunks in flight between the download and the unpacker.
const PIPE_DEPTH: usize = 64;
/// Progress is logged every this many bytes of a layer.
const PROGRESS_EVERY: u64 = 64 << 20;

/// What the store keeps about a pulled image.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ImageRecord {
    pub manifest_digest: Digest,
    pub config: ImageConfig,
    /// Layer blob digests, bottom first.
    pub layers: Vec<Digest>,
}

/// One layer to bring into the store.
pub(crate) struct LayerJob<'a> {
    pub client: &'a RegistryClient,
    pub creds: Option<&'a Credentials>,
    pub image: &'a Reference,
    pub desc: &'a Descriptor,
    /// Its uncompressed digest, from the image config.
    pub diff_id: &'a Digest,
    /// What the image may still unpack (shared by its layers).
    pub budget: Arc<Budget>,
    pub max_layer_bytes: u64,
}

/// How one layer was obtained.
pub(crate) struct LayerFetch {
    pub cached: bool,
    pub bytes: u64,
}

pub(crate) struct Store {
    root: PathBuf,
    /// One async lock per layer digest being fetched: the second puller waits, then finds
    /// the layer in place.
    in_flight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    next_id: AtomicU64,
}

fn dir_name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm(), d.hex())
}

impl Store {
    /// Opens (creating) the store at `root`, deleting staging left by an earlier run.
    pub(crate) fn open(root: &Path) -> Result<Store> {
        for sub in ["layers", "images", "rootfs"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(p.display(), e))?;
        }
        let tmp = root.join("tmp");
        match std::fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(tmp.display(), e)),
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(tmp.display(), e))?;
        Ok(Store {
            root: root.to_path_buf(),
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn layer_dir(&self, d: &Digest) -> PathBuf {
        self.root.join("layers").join(dir_name(d))
    }

    /// A fresh, unique directory under `sub` (`tmp` or `rootfs`).
    pub(crate) fn fresh_dir(&self, sub: &str) -> Result<PathBuf> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let p = self
            .root
            .join(sub)
            .join(format!("{}-{n}", std::process::id()));
        std::fs::create_dir(&p).map_err(|e| Error::io(p.display(), e))?;
        Ok(p)
    }

    pub(crate) fn image(&self, manifest: &Digest) -> Option<ImageRecord> {
        let p = self
            .root
            .join("images")
            .join(format!("{}.json", dir_name(manifest)));
        let bytes = std::fs::read(p).ok()?;
        let rec: ImageRecord = serde_json::from_slice(&bytes).ok()?;
        // A record is only as good as its layers.
        rec.layers
            .iter()
            .all(|l| self.layer_dir(l).is_dir())
            .then_some(rec)
    }

    pub(crate) fn save_image(&self, rec: &ImageRecord) -> Result<()> {
        let dir = self.root.join("images");
        let p = dir.join(format!("{}.json", dir_name(&rec.manifest_digest)));
        let tmp = self.fresh_dir("tmp")?.join("record.json");
        let bytes = serde_json::to_vec(rec).map_err(|e| Error::io("image record", e))?;
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(tmp.display(), e))?;
        std::fs::rename(&tmp, &p).map_err(|e| Error::io(p.display(), e))?;
        let _ = std::fs::remove_dir(tmp.parent().unwrap_or(&tmp));
        Ok(())
    }

    /// Makes sure the job's layer is in the store, fetching and unpacking it if not.
    pub(crate) async fn ensure_layer(&self, job: LayerJob<'_>) -> Result<LayerFetch> {
        let digest = job.desc.digest.clone();
        let lock = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(digest.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let result = self.fetch_locked(job).await;
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&lock) <= 2 {
            map.remove(&digest);
        }
        result
    }

    async fn fetch_locked(&self, job: LayerJob<'_>) -> Result<LayerFetch> {
        let LayerJob {
            client,
            creds,
            image,
            desc,
            diff_id,
            budget,
            max_layer_bytes,
        } = job;
        let final_dir = self.layer_dir(&desc.digest);
        if final_dir.is_dir() {
            return Ok(LayerFetch {
                cached: true,
                bytes: 0,
            });
        }
        let what = format!("layer {}", desc.digest);
        if desc.size > max_layer_bytes {
            return Err(Error::Limit {
                image: image.to_string(),
                what,
                reason: format!("{} bytes, at most {max_layer_bytes}", desc.size),
            });
        }
        let compression = LayerCompression::of(&desc.media_type)
            .map_err(|e| Error::invalid(image, what.clone(), e))?;
        let started = Instant::now();
        let mut resp = client.blob(image, &desc.digest, "layer", creds).await?;
        if let Some(n) = resp.content_length() {
            if n != desc.size {
                return Err(Error::invalid(
                    image,
                    what,
                    format!(
                        "the registry announces {n} bytes, the manifest {}",
                        desc.size
                    ),
                ));
            }
        }
        let stage = self.fresh_dir("tmp")?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(PIPE_DEPTH);
        let unpack_dir = stage.clone();
        let (expected, size, diff) = (desc.digest.clone(), desc.size, diff_id.clone());
        let unpacker = tokio::task::spawn_blocking(move || {
            let mut blob = HashingReader::new(ChannelReader::new(rx), &expected, size, "the layer");
            let n = unpack::unpack_layer(&mut blob, compression, &diff, &unpack_dir, &budget)?;
            let (got, count) = blob
                .drain()
                .map_err(|e| UnpackError::Invalid(format!("reading the layer: {e}")))?;
            if got != expected || count != size {
                return Err(UnpackError::Invalid(format!(
                    "the registry sent {count} bytes hashing to {got}, the manifest says {size} bytes {expected}"
                )));
            }
            Ok(n)
        });
        // Download into the unpacker; a registry error is handed to it as a read error.
        let mut sent = 0u64;
        let mut next_report = PROGRESS_EVERY;
        let download_error = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    sent += chunk.len() as u64;
                    if sent >= next_report {
                        tracing::info!(image = %image, layer = %desc.digest, bytes = sent, total = desc.size, "pulling layer");
                        next_report += PROGRESS_EVERY;
                    }
                    if tx.send(Ok(chunk)).await.is_err() {
                        break None; // the unpacker stopped: its error says why
                    }
                }
                Ok(None) => break None,
                Err(e) => {
                    let reason = format!("reading layer {}: {e}", desc.digest);
                    let _ = tx.send(Err(io::Error::other(reason.clone()))).await;
                    break Some(reason);
                }
            }
        };
        drop(tx);
        let outcome = unpacker
            .await
            .map_err(|e| Error::io("unpack task", e))
            .and_then(|r| {
                r.map_err(|e| match (e, &download_error) {
                    (_, Some(reason)) => Error::Registry {
                        registry: image.registry().into(),
                        reason: reason.clone(),
                    },
                    (UnpackError::Invalid(r), None) => Error::invalid(image, what.clone(), r),
                    (UnpackError::Limit(r), None) => Error::Limit {
                        image: image.to_string(),
                        what: what.clone(),
                        reason: r,
                    },
                    (UnpackError::Io(r), None) => Error::io(format!("unpacking {what}"), r),
                })
            });
        match outcome {
            Ok(unpacked) => {
                if let Err(e) = std::fs::rename(&stage, &final_dir) {
                    let _ = remove_tree(&stage);
                    // Another pull finished the same layer first: theirs is as good.
                    if !final_dir.is_dir() {
                        return Err(Error::io(final_dir.display(), e));
                    }
                }
                tracing::info!(
                    image = %image,
                    layer = %desc.digest,
                    bytes = desc.size,
                    unpacked,
                    ms = started.elapsed().as_millis() as u64,
                    "layer pulled and unpacked"
                );
                Ok(LayerFetch {
                    cached: false,
                    bytes: desc.size,
                })
            }
            Err(e) => {
                if let Err(re) = remove_tree(&stage) {
                    tracing::error!(dir = %stage.display(), error = %re, "could not delete a failed layer's staging");
                }
                Err(e)
            }
        }
    }
}

/// Deletes a directory tree that may hold read-only directories and whiteout devices.
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The unpacker's view of the download: chunks from the async side as a `Read`.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
