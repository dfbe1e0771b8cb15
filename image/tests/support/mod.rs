//! Shared set-up for the pull tests: a registry, a store, a policy, an audit recorder.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vigil_image::{ImageService, PolicySource, PullDecision, ResourceSource, RootfsMode, Settings};
use vigil_test_registry::Registry;

/// Why these tests cannot run here, if they cannot (printed, then the test passes vacuously
/// only because the machine lacks what it needs; CI has both).
pub fn skip_reason() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (ownership, whiteout devices, overlay mounts)".into());
    }
    vigil_test_registry::unavailable()
}

#[macro_export]
macro_rules! require_env {
    () => {
        if let Some(why) = support::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// A KBS stand-in for the [`ResourceSource`] seam: resources by path, or down.
#[derive(Default)]
pub struct Resources {
    pub items: Mutex<HashMap<String, Vec<u8>>>,
    pub down: Mutex<bool>,
    pub fetches: Mutex<u32>,
}

impl Resources {
    pub fn with(items: &[(&str, &[u8])]) -> Arc<Resources> {
        let r = Resources::default();
        for (k, v) in items {
            r.items.lock().unwrap().insert(k.to_string(), v.to_vec());
        }
        Arc::new(r)
    }
}

#[async_trait::async_trait]
impl ResourceSource for Resources {
    async fn get(&self, path: &str) -> Result<Vec<u8>, String> {
        *self.fetches.lock().unwrap() += 1;
        if *self.down.lock().unwrap() {
            return Err("KBS unreachable: connection refused".into());
        }
        self.items
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .ok_or_else(|| format!("resource {path} not found (404)"))
    }
}

pub struct Env {
    pub registry: Registry,
    pub dir: tempfile::TempDir,
    pub audit: Arc<Mutex<Vec<PullDecision>>>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            registry: Registry::start(),
            dir: tempfile::tempdir().unwrap(),
            audit: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Settings trusting the test registry over plain HTTP.
    pub fn settings(&self, policy: PolicySource) -> Settings {
        let mut s = Settings::new(self.store(), policy);
        s.registry.insecure_registries = vec![self.registry.addr().to_string()];
        s
    }

    /// A service under `policy_json` (served as kbs:///default/security-policy/test).
    pub fn service_with(
        &self,
        policy_json: &str,
        extra: &[(&str, &[u8])],
        keys: &[&str],
    ) -> ImageService {
        let mut items = vec![("default/security-policy/test", policy_json.as_bytes())];
        items.extend_from_slice(extra);
        let kbs = Resources::with(&items);
        let mut s = self.settings(PolicySource::Resource(
            "kbs:///default/security-policy/test".into(),
        ));
        s.signature_keys = keys.iter().map(|k| k.to_string()).collect();
        self.service(s, Some(kbs))
    }

    pub fn service(&self, s: Settings, kbs: Option<Arc<Resources>>) -> ImageService {
        let audit = self.audit.clone();
        ImageService::new(s, kbs.map(|k| k as Arc<dyn ResourceSource>))
            .unwrap()
            .with_audit(Arc::new(move |d: &PullDecision| {
                audit.lock().unwrap().push(d.clone())
            }))
    }

    pub fn accept_all(&self) -> ImageService {
        self.service(self.settings(PolicySource::AcceptAnything), None)
    }

    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.addr())
    }

    pub fn decisions(&self) -> Vec<PullDecision> {
        self.audit.lock().unwrap().clone()
    }

    /// Names in `store/<sub>` (to check nothing was left behind).
    pub fn store_entries(&self, sub: &str) -> Vec<String> {
        list(&self.store().join(sub))
    }

    pub fn rootfs_mode(&self, mode: RootfsMode) -> Settings {
        let mut s = self.settings(PolicySource::AcceptAnything);
        s.rootfs = mode;
        s
    }
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// True when `path` is a mount point (from the kernel's table).
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&p))
}

/// A fresh, empty mount point for a rootfs, opened as the container runtime hands it over.
pub fn mount_point(path: &Path) -> std::os::fd::OwnedFd {
    std::fs::create_dir_all(path).unwrap();
    std::fs::File::open(path).unwrap().into()
}

/// Whether `path` is a directory with nothing in it.
pub fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}
