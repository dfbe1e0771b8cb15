//! `[image]`: guest image pull (CoCo's `image_guest_pull`), its configuration, and the KBS
//! resources (image policy, cosign keys, registry credentials) it reads over the attested
//! session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use vigil_image::{
    ImageService, Limits, PolicySource, ResourceSource, ResourceUri, RootfsMode, Settings,
};
use vigil_kbc::KbsSession;

/// The content store: the agent's own, out of the pods' directories (Kata keeps its image
/// work directory under /run/kata-containers, where a host-chosen container id or storage
/// mount point could reach it; verified layers must not be).
pub const DEFAULT_STORE_DIR: &str = "/run/vigil/image";
/// Where Kata's guest images carry the pause bundle.
pub const DEFAULT_PAUSE_BUNDLE: &str = "/pause_bundle";

/// `[image]` as written. Every key is optional; without `policy` every pull is refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// The tenant's image policy (containers-policy JSON): `kbs:///repo/type/tag` (attested
    /// modes), `file:///PATH` (unattested mode only), or `accept-anything`.
    pub policy: Option<String>,
    /// Cosign public keys that `sigstoreSigned` rules may name as `keyPath`.
    #[serde(default)]
    pub signature_keys: Vec<String>,
    /// Registry credentials, a Docker `config.json` (`kbs:///...`, or `file:///...` unattested).
    pub credentials: Option<String>,
    /// `host[:port]` of registries reached over plain HTTP (testing, loopback).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// PEM certificates that HTTPS registries' chains must lead to (no system roots).
    pub registry_ca_roots: Option<String>,
    /// The content store (layers shared by the boot's containers).
    pub store_dir: Option<PathBuf>,
    /// The pause bundle in the guest image (`config.json`, `rootfs/`).
    pub pause_bundle: Option<PathBuf>,
    /// `auto` (overlay, else copy), `overlay`, or `copy`.
    pub rootfs: Option<String>,
    pub max_layer_bytes: Option<u64>,
    pub max_image_bytes: Option<u64>,
    pub max_entries: Option<u64>,
    pub parallel_layers: Option<usize>,
    pub connect_timeout_secs: Option<u64>,
    pub read_timeout_secs: Option<u64>,
}

/// The validated `[image]` section.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub settings: Settings,
    pub pause_bundle: PathBuf,
    /// Whether any setting needs the KBS.
    pub uses_kbs: bool,
}

impl ImageSection {
    /// Checks every key against the mode; errors name the key. `pod_dirs`: where the host
    /// names containers and mount points (`[sandbox] kata_root`, `run_root`), which the store
    /// must stay out of.
    pub fn validate(&self, attested: bool, pod_dirs: &[&Path]) -> Result<ImageConfig, String> {
        let resource = |key: &str, uri: &str| -> Result<bool, String> {
            let parsed = ResourceUri::parse(uri).map_err(|e| format!("[image] {key}: {e}"))?;
            match (parsed.is_kbs(), attested) {
                (true, false) => Err(format!(
                    "[image] {key}: {uri} is a KBS resource, which needs an attested mode ([attestation] tee)"
                )),
                (false, true) => Err(format!(
                    "[image] {key}: {uri}: local files are for unattested mode only; in attested modes name a kbs:/// resource"
                )),
                (is_kbs, _) => Ok(is_kbs),
            }
        };
        let mut uses_kbs = false;
        let policy = match self.policy.as_deref() {
            None => PolicySource::Unset,
            Some("accept-anything") => PolicySource::AcceptAnything,
            Some(uri) => {
                uses_kbs |= resource("policy", uri)?;
                PolicySource::parse(uri).map_err(|e| format!("[image] policy: {e}"))?
            }
        };
        for k in &self.signature_keys {
            uses_kbs |= resource("signature_keys", k)?;
        }
        if let Some(c) = &self.credentials {
            uses_kbs |= resource("credentials", c)?;
        }
        for r in &self.insecure_registries {
            let ok = !r.is_empty()
                && !r.contains('/')
                && vigil_image::Reference::parse(&format!("{r}/x"))
                    .is_ok_and(|p| p.registry() == r);
            if !ok {
                return Err(format!(
                    "[image] insecure_registries: {r:?} is not host[:port] (no scheme, no path)"
                ));
            }
        }
        if let Some(pem) = &self.registry_ca_roots {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err("[image] registry_ca_roots: no PEM CERTIFICATE block".into());
            }
        }
        let store_dir = self
            .store_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_STORE_DIR.into());
        let pause_bundle = self
            .pause_bundle
            .clone()
            .unwrap_or_else(|| DEFAULT_PAUSE_BUNDLE.into());
        for (key, p) in [("store_dir", &store_dir), ("pause_bundle", &pause_bundle)] {
            if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(format!(
                    "[image] {key}: {} must be an absolute path without \"..\"",
                    p.display()
                ));
            }
        }
        if let Some(pods) = pod_dirs
            .iter()
            .find(|d| store_dir.starts_with(d) || d.starts_with(&store_dir))
        {
            return Err(format!(
                "[image] store_dir: {} overlaps the pods' directory {} ([sandbox]), where the \
                 host names containers and mount points; put the store elsewhere (default {})",
                store_dir.display(),
                pods.display(),
                DEFAULT_STORE_DIR
            ));
        }
        let rootfs = match self.rootfs.as_deref() {
            None | Some("auto") => RootfsMode::Auto,
            Some("overlay") => RootfsMode::Overlay,
            Some("copy") => RootfsMode::Copy,
            Some(other) => {
                return Err(format!(
                    "[image] rootfs: {other:?} is not auto, overlay or copy"
                ))
            }
        };
        let d = Limits::default();
        let limits = Limits {
            max_layer_bytes: self.max_layer_bytes.unwrap_or(d.max_layer_bytes),
            max_image_bytes: self.max_image_bytes.unwrap_or(d.max_image_bytes),
            max_entries: self.max_entries.unwrap_or(d.max_entries),
            parallel_layers: self.parallel_layers.unwrap_or(d.parallel_layers),
        };
        if limits.parallel_layers == 0 || limits.parallel_layers > 16 {
            return Err("[image] parallel_layers must be 1..=16".into());
        }
        let mut settings = Settings::new(store_dir, policy);
        settings.signature_keys = self.signature_keys.clone();
        settings.credentials = self.credentials.clone();
        settings.registry.insecure_registries = self.insecure_registries.clone();
        settings.registry.ca_roots_pem = self.registry_ca_roots.clone();
        if let Some(s) = self.connect_timeout_secs {
            settings.registry.connect_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(s) = self.read_timeout_secs {
            settings.registry.read_timeout = Duration::from_secs(s.max(1));
        }
        settings.limits = limits;
        settings.rootfs = rootfs;
        Ok(ImageConfig {
            settings,
            pause_bundle,
            uses_kbs,
        })
    }
}

/// `kbs:///` resources through the boot's attested KBS session.
pub struct KbsResources(pub KbsSession);

#[async_trait::async_trait]
impl ResourceSource for KbsResources {
    async fn get(&self, path: &str) -> Result<Vec<u8>, String> {
        self.0.get_resource(path).await.map_err(|e| e.to_string())
    }
}

/// The image service for `config`, auditing into `log`.
pub fn service(
    config: &ImageConfig,
    kbs: Option<Arc<dyn ResourceSource>>,
    log: Arc<crate::gate::Gate>,
) -> Result<ImageService, String> {
    let svc = ImageService::new(config.settings.clone(), kbs).map_err(|e| e.to_string())?;
    Ok(svc.with_audit(Arc::new(move |d| log.decision_log().record_image_pull(d))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> ImageSection {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn sources_must_fit_the_mode() {
        let s = section("policy = \"kbs:///default/security-policy/prod\"\nsignature_keys = [\"kbs:///default/cosign-key/prod\"]");
        let c = s
            .validate(true, &[Path::new("/run/kata-containers")])
            .unwrap();
        assert!(c.uses_kbs);
        let e = s
            .validate(false, &[Path::new("/run/kata-containers")])
            .unwrap_err();
        assert!(
            e.contains("[image] policy") && e.contains("attested mode"),
            "{e}"
        );
        let f = section("policy = \"file:///etc/vigil/image-policy.json\"");
        assert!(
            !f.validate(false, &[Path::new("/run/kata-containers")])
                .unwrap()
                .uses_kbs
        );
        let e = f
            .validate(true, &[Path::new("/run/kata-containers")])
            .unwrap_err();
        assert!(e.contains("unattested mode only"), "{e}");
        let none = section("")
            .validate(true, &[Path::new("/run/kata-containers")])
            .unwrap();
        assert_eq!(none.settings.policy, PolicySource::Unset);
        let any = section("policy = \"accept-anything\"")
            .validate(true, &[Path::new("/run/kata-containers")])
            .unwrap();
        assert_eq!(any.settings.policy, PolicySource::AcceptAnything);
    }

    #[test]
    fn the_store_stays_out_of_the_pods_directories() {
        for text in [
            "store_dir = \"/run/kata-containers/image\"",
            "store_dir = \"/run\"",
        ] {
            let e = section(text)
                .validate(false, &[Path::new("/run/kata-containers")])
                .unwrap_err();
            assert!(
                e.contains("store_dir") && e.contains("/run/kata-containers"),
                "{e}"
            );
        }
        let c = section("")
            .validate(false, &[Path::new("/run/kata-containers")])
            .unwrap();
        assert_eq!(c.settings.store_dir, Path::new(DEFAULT_STORE_DIR));
    }

    #[test]
    fn bad_keys_are_named() {
        for (text, key) in [
            ("policy = \"http://x\"", "[image] policy"),
            (
                "insecure_registries = [\"http://127.0.0.1:5000\"]",
                "insecure_registries",
            ),
            (
                "insecure_registries = [\"127.0.0.1:5000/x\"]",
                "insecure_registries",
            ),
            ("registry_ca_roots = \"nope\"", "registry_ca_roots"),
            ("store_dir = \"run/x\"", "store_dir"),
            ("rootfs = \"btrfs\"", "rootfs"),
            ("parallel_layers = 0", "parallel_layers"),
            ("credentials = \"kbs:///a/b\"", "credentials"),
        ] {
            let e = section(text)
                .validate(false, &[Path::new("/run/kata-containers")])
                .unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        let ok =
            section("insecure_registries = [\"127.0.0.1:5000\", \"localhost\"]\nrootfs = \"copy\"")
                .validate(false, &[Path::new("/run/kata-containers")])
                .unwrap();
        assert_eq!(ok.settings.rootfs, RootfsMode::Copy);
        let e = toml::from_str::<ImageSection>("polcy = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("polcy"), "{e}");
    }
}
