//! What a pull trusts, loaded once per boot: the tenant's image policy, the cosign keys its
//! rules name, and registry credentials, from KBS resources (over the attested session) or,
//! in unattested mode, local files.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::policy::{ImagePolicy, KeySource, Requirement};
use crate::registry::Credentials;
use crate::signature::CosignKey;

/// Where KBS resources come from: the agent's attested KBS session. `path` is the resource
/// path `repo/type/tag`.
#[async_trait::async_trait]
pub trait ResourceSource: Send + Sync {
    async fn get(&self, path: &str) -> std::result::Result<Vec<u8>, String>;
}

/// Where the image policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PolicySource {
    /// Not configured: every pull is refused.
    #[default]
    Unset,
    /// `accept-anything`: every image is accepted (development only; explicit).
    AcceptAnything,
    /// A resource URI: `kbs:///repo/type/tag` or `file:///PATH`.
    Resource(String),
}

impl PolicySource {
    /// Parses the `[image] policy` setting.
    pub fn parse(text: &str) -> std::result::Result<PolicySource, String> {
        if text == "accept-anything" {
            return Ok(PolicySource::AcceptAnything);
        }
        ResourceUri::parse(text)?;
        Ok(PolicySource::Resource(text.to_string()))
    }
}

/// A resource URI as CoCo writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceUri {
    /// `kbs:///repo/type/tag`
    Kbs(String),
    /// `file:///PATH`
    File(std::path::PathBuf),
}

impl ResourceUri {
    pub fn parse(text: &str) -> std::result::Result<ResourceUri, String> {
        if let Some(path) = text.strip_prefix("kbs:///") {
            let parts: Vec<&str> = path.split('/').collect();
            let ok = parts.len() == 3
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && *p != "."
                        && *p != ".."
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                });
            if !ok {
                return Err(format!(
                    "{text:?}: a KBS resource is kbs:///repository/type/tag (three names of [A-Za-z0-9._-])"
                ));
            }
            return Ok(ResourceUri::Kbs(path.to_string()));
        }
        if let Some(path) = text.strip_prefix("file://") {
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(format!(
                    "{text:?}: a file resource is file:///ABSOLUTE/PATH"
                ));
            }
            return Ok(ResourceUri::File(path.into()));
        }
        Err(format!(
            "{text:?} is not a resource URI (kbs:///repository/type/tag or file:///PATH)"
        ))
    }

    /// Whether it needs the attested session.
    pub fn is_kbs(&self) -> bool {
        matches!(self, ResourceUri::Kbs(_))
    }
}

/// Fetches a resource; every failure is an error (never "absent").
pub(crate) async fn fetch(
    uri: &str,
    kbs: Option<&Arc<dyn ResourceSource>>,
    what: &str,
) -> Result<Vec<u8>> {
    match ResourceUri::parse(uri).map_err(|e| Error::Policy(format!("{what}: {e}")))? {
        ResourceUri::Kbs(path) => {
            let source = kbs.ok_or_else(|| {
                Error::Policy(format!(
                    "{what} {uri} is a KBS resource, and there is no attested KBS session (unattested mode)"
                ))
            })?;
            source
                .get(&path)
                .await
                .map_err(|e| Error::Policy(format!("{what} {uri} from the KBS: {e}")))
        }
        ResourceUri::File(path) => std::fs::read(&path)
            .map_err(|e| Error::Policy(format!("{what} {}: {e}", path.display()))),
    }
}

/// The verified policy, keys and credentials of this boot.
#[derive(Debug)]
pub(crate) struct Trust {
    pub policy: ImagePolicy,
    /// Keys by the `keyPath` the policy uses for them, and inline keys by their PEM.
    keys: HashMap<String, CosignKey>,
    inline: HashMap<Vec<u8>, CosignKey>,
    pub credentials: Option<Credentials>,
}

impl Trust {
    /// Loads everything the policy needs; fails if any of it cannot be had or verified.
    pub(crate) async fn load(
        source: &PolicySource,
        signature_keys: &[String],
        credentials: Option<&str>,
        kbs: Option<&Arc<dyn ResourceSource>>,
    ) -> Result<Trust> {
        let policy = match source {
            PolicySource::Unset => {
                return Err(Error::Policy(
                    "no image policy is configured, so every pull is refused: set [image] policy to \"kbs:///repository/type/tag\" (or \"file:///PATH\" unattested, or \"accept-anything\" for development)".into(),
                ))
            }
            PolicySource::AcceptAnything => ImagePolicy::accept_anything(),
            PolicySource::Resource(uri) => {
                let bytes = fetch(uri, kbs, "image policy").await?;
                ImagePolicy::parse(&bytes)
                    .map_err(|e| Error::Policy(format!("image policy {uri}: {e}")))?
            }
        };
        let mut keys = HashMap::new();
        for path in policy.key_paths() {
            if !signature_keys.iter().any(|k| k == path) {
                return Err(Error::Policy(format!(
                    "the image policy names keyPath {path:?}, which is not among [image] signature_keys"
                )));
            }
            let pem = fetch(path, kbs, "signature key").await?;
            let key = CosignKey::from_pem(&pem, path).map_err(Error::Policy)?;
            keys.insert(path.to_string(), key);
        }
        let mut inline = HashMap::new();
        for req in policy.all_requirements() {
            if let Requirement::SigstoreSigned(rule) = req {
                for k in &rule.keys {
                    if let KeySource::Data(pem) = k {
                        let key = CosignKey::from_pem(pem, "keyData")
                            .map_err(|e| Error::Policy(format!("image policy: {e}")))?;
                        inline.insert(pem.clone(), key);
                    }
                }
            }
        }
        let credentials = match credentials {
            Some(uri) => {
                let bytes = fetch(uri, kbs, "registry credentials").await?;
                Some(
                    Credentials::parse_docker_config(&bytes)
                        .map_err(|e| Error::Policy(format!("registry credentials {uri}: {e}")))?,
                )
            }
            None => None,
        };
        Ok(Trust {
            policy,
            keys,
            inline,
            credentials,
        })
    }

    /// The keys a rule trusts (all loaded at start: a missing one is a load error).
    pub(crate) fn keys_for(&self, sources: &[KeySource]) -> Vec<CosignKey> {
        sources
            .iter()
            .filter_map(|s| match s {
                KeySource::Path(p) => self.keys.get(p).cloned(),
                KeySource::Data(pem) => self.inline.get(pem).cloned(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris() {
        assert_eq!(
            ResourceUri::parse("kbs:///default/security-policy/test").unwrap(),
            ResourceUri::Kbs("default/security-policy/test".into())
        );
        assert!(ResourceUri::parse("file:///etc/policy.json").is_ok());
        for bad in [
            "kbs:///a/b",
            "kbs:///a/../c",
            "kbs://host/a/b/c",
            "file://rel",
            "/etc/x",
            "file:///a/../b",
        ] {
            assert!(ResourceUri::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            PolicySource::parse("accept-anything").unwrap(),
            PolicySource::AcceptAnything
        );
    }

    struct Down;
    #[async_trait::async_trait]
    impl ResourceSource for Down {
        async fn get(&self, path: &str) -> std::result::Result<Vec<u8>, String> {
            Err(format!("{path}: connection refused"))
        }
    }

    #[tokio::test]
    async fn nothing_loads_without_its_sources() {
        let e = Trust::load(&PolicySource::Unset, &[], None, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("[image] policy"), "{e}");
        let kbs = PolicySource::Resource("kbs:///default/security-policy/test".into());
        let e = Trust::load(&kbs, &[], None, None).await.unwrap_err();
        assert!(e.to_string().contains("no attested KBS session"), "{e}");
        let down: Arc<dyn ResourceSource> = Arc::new(Down);
        let e = Trust::load(&kbs, &[], None, Some(&down)).await.unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.json");
        std::fs::write(
            &p,
            r#"{"default":[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/1"}]}"#,
        )
        .unwrap();
        let file = PolicySource::Resource(format!("file://{}", p.display()));
        let e = Trust::load(&file, &[], None, None).await.unwrap_err();
        assert!(
            e.to_string().contains("not among [image] signature_keys"),
            "{e}"
        );
        let keys = ["kbs:///default/cosign-key/1".to_string()];
        let e = Trust::load(&file, &keys, None, Some(&down))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("signature key"), "{e}");
    }
}
