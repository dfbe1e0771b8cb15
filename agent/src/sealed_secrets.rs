//! Sealed secrets at CreateContainer, as Kata's agent unseals them through CoCo's
//! confidential data hub: an environment value `sealed.<header>.<payload>.<signature>`, and
//! a file starting with `sealed.` in a mounted secret directory (Kubernetes' `..data` symlink
//! layout), are replaced by the plaintext inside the guest before the container is created.
//!
//! The gate has already judged the request as the host sent it (sealed): unsealing happens in
//! the handler, after the policy, so no policy input or log ever holds a plaintext. Nothing
//! is changed unless every sealed value of the request unseals: a value that cannot (bad
//! signature, resource refused, KBS down) fails CreateContainer naming it, and the container
//! never starts with the sealed text.
//!
//! Files, as Kata does it: for a secret directory `D` with an entry `name` that leads to a
//! sealed file `T`, the plaintext is written to `T.unsealed` and `D/name` becomes a symlink to
//! it (relative, so it resolves inside the container too). A sealed file mounted on its own
//! is unsealed beside itself and the mount's source points at the `.unsealed` file.
//!
//! Over virtio-fs Kata's Go shim sends a secret volume as a `watchable-bind` storage
//! (container.go): the mount names the storage's mount point
//! (`shared/containers/watchable/<name>`), which the runtime fills only afterwards with a copy
//! of the storage's source. So such a mount is looked at through that source: the unsealed
//! files are written there, and the copy carries them into the container.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use vigil_kbc::sealed::{self, SealedSecret};
use vigil_protos::agent::{CreateContainerRequest, Storage};
use zeroize::Zeroizing;

use crate::resources::{ResourceErrorKind, ResourceSource};

/// Entries looked at per secret directory; more is refused rather than half-handled.
const MAX_ENTRIES: usize = 1024;

/// `[sealed_secrets]` as written.
///
/// ```toml
/// [sealed_secrets]
/// signers = ["""-----BEGIN PUBLIC KEY----- ..."""]    # pinned P-256 keys (SPKI PEM or JWK)
/// signer_resources = ["default/sealing-key/pub"]      # or the JWK on the KBS, for kid kbs:///<this>
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedSecretsSection {
    /// Verification keys pinned in the measured config.
    #[serde(default)]
    pub signers: Vec<String>,
    /// KBS resources holding a verification key as a JWK; a sealed secret whose kid is
    /// `kbs:///<resource>` (CoCo's `secret seal --signing-kid`) is checked with it.
    #[serde(default)]
    pub signer_resources: Vec<String>,
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct SealedSecretsConfig {
    signers: Vec<p256::ecdsa::VerifyingKey>,
    signer_resources: Vec<String>,
}

impl SealedSecretsSection {
    pub fn validate(&self) -> Result<SealedSecretsConfig, String> {
        let signers = self
            .signers
            .iter()
            .enumerate()
            .map(|(i, text)| {
                sealed::verifying_key_from_text(text)
                    .map_err(|e| format!("[sealed_secrets] signers[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for r in &self.signer_resources {
            vigil_kbc::client::validate_resource_path(r)
                .map_err(|e| format!("[sealed_secrets] signer_resources: {e}"))?;
        }
        if signers.is_empty() && self.signer_resources.is_empty() {
            return Err(
                "[sealed_secrets] needs signers or signer_resources: a sealed secret is accepted only with the tenant's signature".into(),
            );
        }
        Ok(SealedSecretsConfig {
            signers,
            signer_resources: self.signer_resources.clone(),
        })
    }
}

/// Why a request's sealed secrets could not be unsealed. `field` names where the sealed value
/// was (`OCI.Process.Env[2] (DB_PASSWORD)`); no variant carries a plaintext.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    /// The value itself is unusable: malformed, unsigned by a tenant key, not a vault secret.
    #[error("{field}: cannot unseal: {cause}")]
    Invalid { field: String, cause: String },
    /// The KBS did not hand the secret (or its verification key) over.
    #[error("{field}: cannot unseal: {cause}")]
    Kbs { field: String, cause: String },
    /// A secret file or directory could not be read or written.
    #[error("{field}: {cause}")]
    Io { field: String, cause: String },
}

/// Unseals the sealed values of CreateContainer requests.
pub struct SealedSecrets {
    config: Option<SealedSecretsConfig>,
    resources: Option<Arc<dyn ResourceSource>>,
}

/// A sealed file found in a secret directory, and what replaces it.
struct FilePlan {
    field: String,
    /// The sealed file (real path) and the directory entry that led to it.
    target: PathBuf,
    entry: PathBuf,
    /// The secret directory (real path), for the relative symlink.
    dir: Option<PathBuf>,
    /// Index of the mount, when the sealed file is the mount's source itself.
    mount: Option<usize>,
    plaintext: Zeroizing<Vec<u8>>,
}

impl SealedSecrets {
    /// `config` from `[sealed_secrets]` (none: sealed values are refused); `resources`, the
    /// boot's attested KBS session (none in unattested mode).
    pub fn new(
        config: Option<SealedSecretsConfig>,
        resources: Option<Arc<dyn ResourceSource>>,
    ) -> SealedSecrets {
        SealedSecrets { config, resources }
    }

    /// Replaces every sealed value of `req` by its plaintext, or changes nothing and fails.
    /// `secret_root`: the directory bind-mount sources must be under for their files to be
    /// looked at (the sandbox's shared directory, where CopyFile puts Kubernetes secrets).
    pub async fn unseal(
        &self,
        req: &mut CreateContainerRequest,
        secret_root: Option<&Path>,
    ) -> Result<(), UnsealError> {
        let watched = watchable_sources(&req.storages);
        let Some(spec) = req.OCI.as_mut() else {
            return Ok(());
        };
        // 1. Find and unseal everything, in memory.
        let mut env_plans = Vec::new();
        if let Some(process) = spec.Process.as_ref() {
            for (i, var) in process.Env.iter().enumerate() {
                let Some((name, value)) = var.split_once('=') else {
                    continue;
                };
                if !sealed::is_sealed(value) {
                    continue;
                }
                let field = format!("OCI.Process.Env[{i}] ({name})");
                let plain = self.open(&field, value).await?;
                let text = std::str::from_utf8(&plain)
                    .ok()
                    .filter(|t| !t.contains('\0'))
                    .ok_or_else(|| UnsealError::Invalid {
                        field: field.clone(),
                        cause: "the secret is not UTF-8 text without NUL bytes, so it cannot be an environment value".into(),
                    })?;
                env_plans.push((i, Zeroizing::new(format!("{name}={text}"))));
            }
        }
        let mut file_plans = Vec::new();
        if let Some(root) = secret_root {
            for (i, m) in spec.Mounts.iter().enumerate() {
                let source = through_watchable(&m.source, &watched);
                if let Some(dir) = secret_source(&source, root) {
                    let field = format!("OCI.Mounts[{i}] ({})", m.destination);
                    for mut plan in self.scan(&field, &dir, root).await? {
                        if plan.dir.is_none() {
                            plan.mount = Some(i);
                        }
                        file_plans.push(plan);
                    }
                }
            }
        }
        // 2. Apply: files first (they can fail), then the spec.
        for plan in &file_plans {
            write_unsealed(plan)?;
        }
        if let Some(process) = spec.Process.as_mut() {
            for (i, var) in env_plans {
                process.Env[i] = var.to_string();
            }
        }
        for plan in &file_plans {
            if let Some(i) = plan.mount {
                spec.Mounts[i].source = unsealed_path(&plan.target).display().to_string();
            }
        }
        if !file_plans.is_empty() {
            tracing::info!(
                container = %req.container_id,
                files = file_plans.len(),
                "sealed secret files unsealed"
            );
        }
        Ok(())
    }

    /// The plaintext of one sealed value: signature checked with a tenant key, then the
    /// resource it names fetched over the attested session.
    async fn open(&self, field: &str, value: &str) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
        let invalid = |cause: String| UnsealError::Invalid {
            field: field.to_string(),
            cause,
        };
        let Some(config) = &self.config else {
            return Err(invalid(
                "it holds a sealed secret, and the measured config has no [sealed_secrets]".into(),
            ));
        };
        let Some(resources) = &self.resources else {
            return Err(invalid(
                "sealed secrets need an attested KBS session".into(),
            ));
        };
        let secret = SealedSecret::parse(value.trim_end()).map_err(|e| invalid(e.to_string()))?;
        let vault = match secret.kid_resource() {
            Some(key_resource) => {
                if !config.signer_resources.contains(&key_resource) {
                    return Err(invalid(format!(
                        "its kid names the KBS resource {key_resource}, which [sealed_secrets] signer_resources does not list"
                    )));
                }
                let jwk = resources
                    .get_resource(&key_resource)
                    .await
                    .map_err(|e| kbs(field, e))?;
                let key = sealed::verifying_key_from_jwk(&jwk)
                    .map_err(|e| invalid(format!("verification key {key_resource}: {e}")))?;
                secret.verify(&key).map_err(|e| invalid(e.to_string()))?
            }
            None => {
                let mut last = None;
                let mut found = None;
                for key in &config.signers {
                    match secret.verify(key) {
                        Ok(v) => {
                            found = Some(v);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                found.ok_or_else(|| {
                    invalid(match last {
                        Some(sealed::SealedError::Signature(_)) | None => format!(
                            "the signature (kid {:?}) verifies with no [sealed_secrets] signer",
                            secret.kid()
                        ),
                        Some(other) => other.to_string(),
                    })
                })?
            }
        };
        resources
            .get_resource(&vault.resource)
            .await
            .map_err(|e| kbs(field, e))
    }

    /// The sealed files a mount source leads to: the source itself when it is a file,
    /// otherwise the entries of the directory.
    async fn scan(
        &self,
        field: &str,
        source: &Path,
        root: &Path,
    ) -> Result<Vec<FilePlan>, UnsealError> {
        let io = |cause: String| UnsealError::Io {
            field: field.to_string(),
            cause,
        };
        let real_root = root
            .canonicalize()
            .map_err(|e| io(format!("{}: {e}", root.display())))?;
        let meta = match std::fs::metadata(source) {
            Ok(m) => m,
            // Missing sources are the runtime's to report.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("{}: {e}", source.display()))),
        };
        let mut found = Vec::new();
        if meta.is_file() {
            if let Some(target) = sealed_file(source, &real_root).map_err(io)? {
                found.push((source.to_path_buf(), target, None));
            }
        } else if meta.is_dir() {
            let dir = source
                .canonicalize()
                .map_err(|e| io(format!("{}: {e}", source.display())))?;
            let entries =
                std::fs::read_dir(&dir).map_err(|e| io(format!("{}: {e}", dir.display())))?;
            for (n, entry) in entries.enumerate() {
                if n >= MAX_ENTRIES {
                    return Err(io(format!(
                        "{} has more than {MAX_ENTRIES} entries",
                        dir.display()
                    )));
                }
                let entry = entry.map_err(|e| io(format!("{}: {e}", dir.display())))?;
                let kind = entry
                    .file_type()
                    .map_err(|e| io(format!("{}: {e}", entry.path().display())))?;
                // The layout's own names (..data, ..<timestamp>) are not secrets.
                if entry.file_name().to_string_lossy().starts_with("..")
                    || !(kind.is_file() || kind.is_symlink())
                {
                    continue;
                }
                if let Some(target) = sealed_file(&entry.path(), &real_root).map_err(io)? {
                    found.push((entry.path(), target, Some(dir.clone())));
                }
            }
        }
        let mut plans = Vec::new();
        for (entry, target, dir) in found {
            let name = entry
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let field = format!("{field} file {name:?}");
            let mut text = String::new();
            std::fs::File::open(&target)
                .and_then(|f| f.take(sealed::MAX_LEN as u64 + 1).read_to_string(&mut text))
                .map_err(|e| UnsealError::Io {
                    field: field.clone(),
                    cause: format!("{}: {e}", target.display()),
                })?;
            let plaintext = self.open(&field, &text).await?;
            plans.push(FilePlan {
                field,
                target,
                entry,
                dir,
                mount: None,
                plaintext,
            });
        }
        Ok(plans)
    }
}

fn kbs(field: &str, e: crate::resources::ResourceError) -> UnsealError {
    let cause = match e.kind {
        ResourceErrorKind::Unreachable => format!("the KBS is unreachable: {e}"),
        _ => e.to_string(),
    };
    UnsealError::Kbs {
        field: field.to_string(),
        cause,
    }
}

/// The request's `watchable-bind` storages: (mount point, source).
fn watchable_sources(storages: &[Storage]) -> Vec<(PathBuf, PathBuf)> {
    storages
        .iter()
        .filter(|s| s.driver == "watchable-bind")
        .map(|s| (PathBuf::from(&s.mount_point), PathBuf::from(&s.source)))
        .collect()
}

/// A mount source at or beneath a `watchable-bind` storage's mount point, as the same path in
/// that storage's source (what the copy will be made from); any other source as it is.
fn through_watchable(source: &str, watched: &[(PathBuf, PathBuf)]) -> String {
    let p = Path::new(source);
    watched
        .iter()
        .find_map(|(at, from)| {
            let rest = p.strip_prefix(at).ok()?;
            Some(if rest.as_os_str().is_empty() {
                from.clone()
            } else {
                from.join(rest)
            })
        })
        .map_or_else(|| source.to_string(), |p| p.display().to_string())
}

/// The guest path of a bind-mount source that may hold secrets: an absolute path under the
/// secret root (as Kata only looks under its shared containers directory).
fn secret_source(source: &str, root: &Path) -> Option<PathBuf> {
    let p = Path::new(source);
    let plain = p.components().all(|c| {
        matches!(
            c,
            std::path::Component::RootDir | std::path::Component::Normal(_)
        )
    });
    (p.is_absolute() && plain && p.starts_with(root) && p != root).then(|| p.to_path_buf())
}

/// Where `path` really leads, if that is a regular file inside `real_root` whose content
/// starts with `sealed.`. A link out of the root is an error, not something to skip.
fn sealed_file(path: &Path, real_root: &Path) -> Result<Option<PathBuf>, String> {
    let target = match path.canonicalize() {
        Ok(t) => t,
        // A dangling link is no secret.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !target.starts_with(real_root) {
        return Err(format!(
            "{} leads to {}, outside {}",
            path.display(),
            target.display(),
            real_root.display()
        ));
    }
    if !target.is_file() {
        return Ok(None);
    }
    let mut head = [0u8; sealed::PREFIX.len()];
    let n = std::fs::File::open(&target)
        .and_then(|mut f| {
            let mut read = 0;
            while read < head.len() {
                match f.read(&mut head[read..])? {
                    0 => break,
                    k => read += k,
                }
            }
            Ok(read)
        })
        .map_err(|e| format!("{}: {e}", target.display()))?;
    Ok((n == head.len() && head == *sealed::PREFIX.as_bytes()).then_some(target))
}

fn unsealed_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".unsealed");
    PathBuf::from(name)
}

/// Writes the plaintext beside the sealed file and, in a directory, points the entry at it.
/// Both steps go through a new name and a rename, so a reader sees the old or the new file,
/// and nothing follows a symlink someone left at the destination.
fn write_unsealed(plan: &FilePlan) -> Result<(), UnsealError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |cause: String| UnsealError::Io {
        field: plan.field.clone(),
        cause,
    };
    let unsealed = unsealed_path(&plan.target);
    let tmp = unsealed.with_extension(format!("unsealed.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| io(format!("{}: {e}", tmp.display())))?;
    f.write_all(&plan.plaintext)
        .and_then(|()| f.sync_all())
        .map_err(|e| io(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &unsealed).map_err(|e| io(format!("{}: {e}", unsealed.display())))?;
    let Some(dir) = &plan.dir else {
        return Ok(());
    };
    let relative = unsealed.strip_prefix(dir).map_err(|_| {
        io(format!(
            "{} is not inside {}",
            unsealed.display(),
            dir.display()
        ))
    })?;
    let link_tmp = plan
        .entry
        .with_file_name(format!(".vigil-unsealed-{}", std::process::id()));
    let _ = std::fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(relative, &link_tmp)
        .and_then(|()| std::fs::rename(&link_tmp, &plan.entry))
        .map_err(|e| io(format!("{}: {e}", plan.entry.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ResourceError, Secret};
    use async_trait::async_trait;
    use p256::ecdsa::SigningKey;
    use std::collections::HashMap;
    use vigil_protos::oci;

    struct Kbs(HashMap<String, Vec<u8>>);

    #[async_trait]
    impl ResourceSource for Kbs {
        async fn get_resource(&self, path: &str) -> Result<Secret, ResourceError> {
            self.0
                .get(path)
                .map(|b| Zeroizing::new(b.clone()))
                .ok_or_else(|| ResourceError {
                    kind: ResourceErrorKind::Refused,
                    message: format!("KBS: refused {path}"),
                })
        }
    }

    fn setup(key: &SigningKey, resources: &[(&str, &[u8])]) -> SealedSecrets {
        use p256::pkcs8::EncodePublicKey as _;
        let pem = key
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let config = SealedSecretsSection {
            signers: vec![pem],
            signer_resources: vec!["default/keys/sealing".into()],
        }
        .validate()
        .unwrap();
        let kbs = Kbs(resources
            .iter()
            .map(|(p, b)| (p.to_string(), b.to_vec()))
            .collect());
        SealedSecrets::new(Some(config), Some(Arc::new(kbs)))
    }

    fn request(env: &[&str], mounts: &[(&str, &str)]) -> CreateContainerRequest {
        let mut spec = oci::Spec::new();
        let mut process = oci::Process::new();
        process.Env = env.iter().map(|s| s.to_string()).collect();
        spec.Process = Some(process).into();
        spec.Mounts = mounts
            .iter()
            .map(|(dest, src)| oci::Mount {
                destination: dest.to_string(),
                source: src.to_string(),
                type_: "bind".into(),
                ..Default::default()
            })
            .collect();
        CreateContainerRequest {
            container_id: "c1".into(),
            OCI: Some(spec).into(),
            ..Default::default()
        }
    }

    fn env(req: &CreateContainerRequest) -> Vec<String> {
        req.OCI.Process.Env.clone()
    }

    #[tokio::test]
    async fn env_values_unseal_and_plain_ones_stay() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let s = setup(&key, &[("default/app/db", b"hunter2")]);
        let sealed = sealed::seal("default/app/db", &key, "t").unwrap();
        let mut req = request(&["PATH=/bin", &format!("DB={sealed}"), "EMPTY="], &[]);
        s.unseal(&mut req, None).await.unwrap();
        assert_eq!(env(&req), ["PATH=/bin", "DB=hunter2", "EMPTY="]);
    }

    #[tokio::test]
    async fn anything_wrong_fails_and_changes_nothing() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let stranger = SigningKey::random(&mut rand_core::OsRng);
        let s = setup(
            &key,
            &[
                ("default/app/db", b"hunter2"),
                ("default/app/bin", b"\xff\x00"),
            ],
        );
        let good = sealed::seal("default/app/db", &key, "t").unwrap();
        for (value, want) in [
            (
                sealed::seal("default/app/db", &stranger, "t").unwrap(),
                "verifies with no",
            ),
            (
                sealed::seal("default/app/other", &key, "t").unwrap(),
                "refused default/app/other",
            ),
            (
                sealed::seal("default/app/bin", &key, "t").unwrap(),
                "not UTF-8",
            ),
            (
                sealed::seal("default/app/db", &key, "kbs:///default/keys/other").unwrap(),
                "signer_resources does not list",
            ),
            ("sealed.garbage".to_string(), "malformed"),
        ] {
            let mut req = request(&[&format!("OK={good}"), &format!("BAD={value}")], &[]);
            let before = env(&req);
            let e = s.unseal(&mut req, None).await.unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with("OCI.Process.Env[1] (BAD): cannot unseal"),
                "{text}"
            );
            assert!(text.contains(want), "{text}");
            assert!(!text.contains("hunter2"));
            assert_eq!(env(&req), before, "nothing may be half-applied");
        }
        // Without [sealed_secrets], a sealed value is refused, not passed on.
        let off = SealedSecrets::new(None, None);
        let mut req = request(&[&format!("DB={good}")], &[]);
        let e = off.unseal(&mut req, None).await.unwrap_err();
        assert!(e.to_string().contains("no [sealed_secrets]"), "{e}");
    }

    #[tokio::test]
    async fn kid_naming_a_kbs_resource_fetches_the_jwk() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let jwk =
            sealed::public_jwk(key.verifying_key(), "kbs:///default/keys/sealing").to_string();
        let other = SigningKey::random(&mut rand_core::OsRng);
        // The pinned signer is another key: only the KBS's JWK can verify this one.
        let s = setup(
            &other,
            &[
                ("default/keys/sealing", jwk.as_bytes()),
                ("default/app/db", b"pw"),
            ],
        );
        let sealed = sealed::seal("default/app/db", &key, "kbs:///default/keys/sealing").unwrap();
        let mut req = request(&[&format!("DB={sealed}")], &[]);
        s.unseal(&mut req, None).await.unwrap();
        assert_eq!(env(&req), ["DB=pw"]);
    }

    /// The layout the kubelet (and Kata's CopyFile of it) makes for a secret volume.
    fn secret_volume(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = root.join(name);
        let data = dir.join("..2024_09_30_02_55_58.2237819815");
        std::fs::create_dir_all(&data).unwrap();
        for (f, content) in files {
            std::fs::write(data.join(f), content).unwrap();
        }
        std::os::unix::fs::symlink("..2024_09_30_02_55_58.2237819815", dir.join("..data")).unwrap();
        for (f, _) in files {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
        dir
    }

    #[tokio::test]
    async fn secret_files_in_the_data_layout_unseal_as_kata_does() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let s = setup(&key, &[("default/app/db", b"hunter2")]);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("shared");
        let sealed_text = sealed::seal("default/app/db", &key, "t").unwrap();
        let dir = secret_volume(
            &root,
            "c1-abc-creds",
            &[("password", &sealed_text), ("user", "admin")],
        );
        let single = root.join("c1-def-token");
        std::fs::write(&single, format!("{sealed_text}\n")).unwrap();
        let outside = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("x"), &sealed_text).unwrap();
        let mut req = request(
            &[],
            &[
                ("/etc/creds", dir.to_str().unwrap()),
                ("/etc/token", single.to_str().unwrap()),
                // Not under the secret root: not looked at.
                ("/etc/other", outside.to_str().unwrap()),
            ],
        );
        s.unseal(&mut req, Some(&root)).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("password")).unwrap(),
            "hunter2"
        );
        assert_eq!(
            std::fs::read_link(dir.join("password")).unwrap(),
            Path::new("..2024_09_30_02_55_58.2237819815/password.unsealed")
        );
        assert_eq!(std::fs::read_to_string(dir.join("user")).unwrap(), "admin");
        assert_eq!(
            std::fs::read_link(dir.join("user")).unwrap(),
            Path::new("..data/user")
        );
        assert_eq!(
            req.OCI.Mounts[1].source,
            format!("{}.unsealed", single.display())
        );
        assert_eq!(
            std::fs::read_to_string(format!("{}.unsealed", single.display())).unwrap(),
            "hunter2"
        );
        assert_eq!(req.OCI.Mounts[2].source, outside.to_str().unwrap());
        assert_eq!(
            std::fs::read_to_string(outside.join("x")).unwrap(),
            sealed_text
        );
    }

    /// Kata over virtio-fs: the mount names a watchable-bind storage's mount point, which does
    /// not exist yet; the secret is found and unsealed in the storage's source, the copy's
    /// origin, and the mount keeps naming the copy.
    #[tokio::test]
    async fn a_watchable_secret_volume_unseals_in_its_source() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let s = setup(&key, &[("default/app/db", b"hunter2")]);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("shared/containers");
        let sealed_text = sealed::seal("default/app/db", &key, "t").unwrap();
        let dir = secret_volume(&root, "c1-abc-creds", &[("password", &sealed_text)]);
        let watched = root.join("watchable/c1-abc-creds");
        let mut req = request(&[], &[("/etc/creds", watched.to_str().unwrap())]);
        req.storages = vec![Storage {
            driver: "watchable-bind".into(),
            source: dir.display().to_string(),
            fstype: "bind".into(),
            mount_point: watched.display().to_string(),
            ..Default::default()
        }];
        s.unseal(&mut req, Some(&root)).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("password")).unwrap(),
            "hunter2"
        );
        assert_eq!(req.OCI.Mounts[0].source, watched.to_str().unwrap());
        assert!(!watched.exists(), "the copy is the runtime's to make");
        assert_eq!(
            through_watchable(
                &format!("{}/password", watched.display()),
                &watchable_sources(&req.storages)
            ),
            format!("{}/password", dir.display())
        );
    }

    #[tokio::test]
    async fn a_bad_secret_file_or_a_link_out_fails_before_anything_is_written() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let stranger = SigningKey::random(&mut rand_core::OsRng);
        let s = setup(&key, &[("default/app/db", b"hunter2")]);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("shared");
        let good = sealed::seal("default/app/db", &key, "t").unwrap();
        let bad = sealed::seal("default/app/db", &stranger, "t").unwrap();
        let dir = secret_volume(&root, "c1-abc-creds", &[("a", &good), ("b", &bad)]);
        let mut req = request(
            &[&format!("E={good}")],
            &[("/etc/creds", dir.to_str().unwrap())],
        );
        let e = s.unseal(&mut req, Some(&root)).await.unwrap_err();
        assert!(e.to_string().contains("file \"b\""), "{e}");
        assert!(!dir
            .join("..2024_09_30_02_55_58.2237819815/a.unsealed")
            .exists());
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        assert!(env(&req)[0].starts_with("E=sealed."));

        let escape = root.join("c1-esc");
        std::fs::create_dir_all(&escape).unwrap();
        std::fs::write(tmp.path().join("host-file"), &good).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("host-file"), escape.join("link")).unwrap();
        let mut req = request(&[], &[("/etc/esc", escape.to_str().unwrap())]);
        let e = s.unseal(&mut req, Some(&root)).await.unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
    }

    #[test]
    fn config_needs_a_signer_and_names_bad_keys() {
        let e = SealedSecretsSection::default().validate().unwrap_err();
        assert!(e.contains("signers"), "{e}");
        let e = SealedSecretsSection {
            signers: vec!["nope".into()],
            signer_resources: vec![],
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("signers[0]"), "{e}");
        let e = SealedSecretsSection {
            signers: vec![],
            signer_resources: vec!["a/../b".into()],
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("signer_resources"), "{e}");
    }
}
