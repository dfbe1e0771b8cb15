//! The tenant's image policy, in the containers-policy JSON format that CoCo's image-rs reads
//! (`containers-policy.json(5)`): a `default` list of requirements and per-scope lists under
//! `transports.docker`. Every requirement of the matching list must hold.
//!
//! Supported requirements: `reject`, `insecureAcceptAnything`, and `sigstoreSigned` with
//! public keys (`keyPath`/`keyPaths`, which must name keys the measured config lists, or
//! inline `keyData`/`keyDatas`). Anything else (GPG `signedBy`, keyless Fulcio/Rekor
//! verification, unknown fields) is refused when the policy is loaded, so a policy never
//! silently means less than it says.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::reference::Reference;

/// A parsed image policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePolicy {
    default: Vec<Requirement>,
    docker: HashMap<String, Vec<Requirement>>,
}

/// One requirement of a policy list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Reject,
    InsecureAcceptAnything,
    SigstoreSigned(SigstoreRule),
}

/// A `sigstoreSigned` requirement: a cosign signature by one of `keys` whose payload names
/// the image as `identity` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigstoreRule {
    pub keys: Vec<KeySource>,
    pub identity: SignedIdentity,
}

/// Where a trusted public key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `keyPath`: a key the configuration lists (e.g. `kbs:///default/cosign-key/prod`).
    Path(String),
    /// `keyData`: the key file's contents (PEM), inline in the policy.
    Data(Vec<u8>),
}

/// What the signed `docker-reference` must say. Cosign signs the repository name without a
/// tag, so only repository matches can hold for cosign signatures (as in image-rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedIdentity {
    /// The signed repository is the pulled image's repository (the default here: stricter
    /// than image-rs, which checks nothing when `signedIdentity` is absent).
    MatchRepository,
    /// The signed repository is this one (normalised).
    ExactRepository(String),
}

/// The list of requirements that applies to an image, and the scope that chose it.
#[derive(Debug, Clone, Copy)]
pub struct Applicable<'a> {
    /// `default`, or `transports.docker["<scope>"]`.
    pub scope: &'a str,
    pub requirements: &'a [Requirement],
}

impl Applicable<'_> {
    /// How the audit log names the rule: `transports.docker["scope"]` or `default`.
    pub fn rule_name(&self) -> String {
        if self.scope == "default" {
            "default".into()
        } else {
            format!("transports.docker[{:?}]", self.scope)
        }
    }
}

impl ImagePolicy {
    /// A policy that accepts every image (`[image] policy = "accept-anything"`).
    pub fn accept_anything() -> ImagePolicy {
        ImagePolicy {
            default: vec![Requirement::InsecureAcceptAnything],
            docker: HashMap::new(),
        }
    }

    /// Parses a containers-policy JSON document. Errors name the offending path.
    pub fn parse(json: &[u8]) -> Result<ImagePolicy, String> {
        let v: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let top = v.as_object().ok_or("the policy is not a JSON object")?;
        for k in top.keys() {
            if k != "default" && k != "transports" {
                return Err(format!("unknown top-level key {k:?} (default, transports)"));
            }
        }
        let default = requirements(top.get("default").ok_or("no \"default\" list")?, "default")?;
        let mut docker = HashMap::new();
        if let Some(t) = top.get("transports") {
            let t = t.as_object().ok_or("\"transports\" is not an object")?;
            for (name, scopes) in t {
                let scopes = scopes
                    .as_object()
                    .ok_or_else(|| format!("transports.{name} is not an object"))?;
                // Only registries are pulled from; other transports' scopes cannot apply but
                // are still checked, so that a typo is not silently ignored.
                for (scope, list) in scopes {
                    let at = format!("transports.{name}[{scope:?}]");
                    let reqs = requirements(list, &at)?;
                    if name == "docker" {
                        if !scope.is_empty() {
                            check_scope(scope).map_err(|e| format!("{at}: {e}"))?;
                        }
                        docker.insert(scope.clone(), reqs);
                    }
                }
            }
        }
        Ok(ImagePolicy { default, docker })
    }

    /// The requirements for `image`: the most specific `transports.docker` scope (full
    /// reference, repository, namespaces, host, `*.domain`), then the transport's `""` scope,
    /// then `default`.
    pub fn applicable(&self, image: &Reference) -> Applicable<'_> {
        for scope in image.policy_scopes() {
            if let Some((k, reqs)) = self.docker.get_key_value(scope.as_str()) {
                return Applicable {
                    scope: k,
                    requirements: reqs,
                };
            }
        }
        if let Some((k, reqs)) = self.docker.get_key_value("") {
            return Applicable {
                scope: k,
                requirements: reqs,
            };
        }
        Applicable {
            scope: "default",
            requirements: &self.default,
        }
    }

    /// Every requirement of every list.
    pub(crate) fn all_requirements(&self) -> Vec<&Requirement> {
        self.docker
            .values()
            .chain(std::iter::once(&self.default))
            .flatten()
            .collect()
    }

    /// Every `keyPath` the policy names (to check them against the configured keys).
    pub fn key_paths(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = self
            .all_requirements()
            .into_iter()
            .filter_map(|r| match r {
                Requirement::SigstoreSigned(s) => Some(&s.keys),
                _ => None,
            })
            .flatten()
            .filter_map(|k| match k {
                KeySource::Path(p) => Some(p.as_str()),
                KeySource::Data(_) => None,
            })
            .collect();
        paths.sort_unstable();
        paths.dedup();
        paths
    }
}

fn check_scope(scope: &str) -> Result<(), String> {
    if let Some(domain) = scope.strip_prefix("*.") {
        if domain.is_empty() || domain.contains('/') {
            return Err("a wildcard scope is *.domain, with no path".into());
        }
        return Ok(());
    }
    // A scope is a reference or a prefix of one: it must at least parse as a name.
    Reference::parse(scope)
        .map(|_| ())
        .map_err(|e| format!("scope is not an image name: {e}"))
}

fn requirements(v: &Value, at: &str) -> Result<Vec<Requirement>, String> {
    let list = v.as_array().ok_or_else(|| format!("{at} is not a list"))?;
    if list.is_empty() {
        // containers/image refuses an empty list too: "no requirements" must not mean "allowed".
        return Err(format!(
            "{at} is an empty list (say \"reject\" or \"insecureAcceptAnything\")"
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| requirement(r).map_err(|e| format!("{at}[{i}]: {e}")))
        .collect()
}

fn requirement(v: &Value) -> Result<Requirement, String> {
    let obj = v.as_object().ok_or("not an object")?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or("no \"type\" string")?;
    let only = |allowed: &[&str]| -> Result<(), String> {
        match obj
            .keys()
            .find(|k| *k != "type" && !allowed.contains(&k.as_str()))
        {
            Some(k) => Err(format!("{kind}: unknown or unsupported field {k:?}")),
            None => Ok(()),
        }
    };
    match kind {
        "reject" => {
            only(&[])?;
            Ok(Requirement::Reject)
        }
        "insecureAcceptAnything" => {
            only(&[])?;
            Ok(Requirement::InsecureAcceptAnything)
        }
        "sigstoreSigned" => {
            if obj.contains_key("fulcio") || obj.contains_key("rekorPublicKeyPath") {
                return Err(
                    "sigstoreSigned: keyless (Fulcio/Rekor) verification is not supported; name public keys".into(),
                );
            }
            only(&["keyPath", "keyPaths", "keyData", "keyDatas", "signedIdentity"])?;
            Ok(Requirement::SigstoreSigned(sigstore_rule(obj)?))
        }
        "signedBy" => Err("signedBy (GPG simple signing) is not supported; use sigstoreSigned".into()),
        other => Err(format!(
            "requirement type {other:?} is not supported (reject, insecureAcceptAnything, sigstoreSigned)"
        )),
    }
}

fn sigstore_rule(obj: &Map<String, Value>) -> Result<SigstoreRule, String> {
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match obj.get(key) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) if key.ends_with('s') => a
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("{key} holds a non-string"))
                })
                .collect(),
            Some(_) => Err(format!("{key} has the wrong type")),
        }
    };
    let mut keys: Vec<KeySource> = strings("keyPath")?
        .into_iter()
        .chain(strings("keyPaths")?)
        .map(KeySource::Path)
        .collect();
    for data in strings("keyData")?.into_iter().chain(strings("keyDatas")?) {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| format!("keyData is not base64: {e}"))?;
        keys.push(KeySource::Data(pem));
    }
    if keys.is_empty() {
        return Err("sigstoreSigned needs keyPath, keyPaths, keyData or keyDatas".into());
    }
    let identity = match obj.get("signedIdentity") {
        None => SignedIdentity::MatchRepository,
        Some(v) => {
            let id = v.as_object().ok_or("signedIdentity is not an object")?;
            match id.get("type").and_then(Value::as_str) {
                Some("matchRepository") => SignedIdentity::MatchRepository,
                Some("exactRepository") => {
                    let repo = id
                        .get("dockerRepository")
                        .and_then(Value::as_str)
                        .ok_or("exactRepository needs a dockerRepository string")?;
                    let name = Reference::parse(repo)
                        .map_err(|e| format!("exactRepository: {e}"))?
                        .name();
                    SignedIdentity::ExactRepository(name)
                }
                Some(other) => {
                    return Err(format!(
                        "signedIdentity {other:?} cannot hold for cosign signatures, which sign the repository without a tag (matchRepository, exactRepository)"
                    ))
                }
                None => return Err("signedIdentity has no \"type\"".into()),
            }
        }
    };
    Ok(SigstoreRule { keys, identity })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ImagePolicy, String> {
        ImagePolicy::parse(s.as_bytes())
    }

    #[test]
    fn most_specific_scope_wins() {
        let p = parse(
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{
                "127.0.0.1:5000/apps":[{"type":"insecureAcceptAnything"}],
                "127.0.0.1:5000/apps/pinned:v1":[{"type":"reject"}],
                "*.example.com":[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/1"}]
            },"oci":{"":[{"type":"insecureAcceptAnything"}]}}}"#,
        )
        .unwrap();
        let scope = |r: &str| p.applicable(&Reference::parse(r).unwrap()).rule_name();
        assert_eq!(
            scope("127.0.0.1:5000/apps/web"),
            r#"transports.docker["127.0.0.1:5000/apps"]"#
        );
        assert_eq!(
            scope("127.0.0.1:5000/apps/pinned:v1"),
            r#"transports.docker["127.0.0.1:5000/apps/pinned:v1"]"#
        );
        assert_eq!(scope("127.0.0.1:5000/other"), "default");
        assert_eq!(
            scope("reg.example.com/x"),
            r#"transports.docker["*.example.com"]"#
        );
        assert_eq!(p.key_paths(), ["kbs:///default/cosign-key/1"]);
        let app = p.applicable(&Reference::parse("127.0.0.1:5000/apps/web").unwrap());
        assert_eq!(app.requirements, [Requirement::InsecureAcceptAnything]);
    }

    #[test]
    fn transport_default_before_global_default() {
        let p = parse(
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{"":[{"type":"insecureAcceptAnything"}]}}}"#,
        )
        .unwrap();
        let a = p.applicable(&Reference::parse("quay.io/x/y").unwrap());
        assert_eq!(a.requirements, [Requirement::InsecureAcceptAnything]);
    }

    #[test]
    fn sigstore_keys_and_identity() {
        let pem = base64::engine::general_purpose::STANDARD.encode("PEM");
        let p = parse(&format!(
            r#"{{"default":[{{"type":"sigstoreSigned","keyData":"{pem}","keyPaths":["a","b"],
                "signedIdentity":{{"type":"exactRepository","dockerRepository":"busybox"}}}}]}}"#
        ))
        .unwrap();
        let a = p.applicable(&Reference::parse("x/y").unwrap());
        assert_eq!(
            a.requirements,
            [Requirement::SigstoreSigned(SigstoreRule {
                keys: vec![
                    KeySource::Path("a".into()),
                    KeySource::Path("b".into()),
                    KeySource::Data(b"PEM".to_vec())
                ],
                identity: SignedIdentity::ExactRepository("docker.io/library/busybox".into()),
            })]
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour_naming_the_place() {
        for (doc, part) in [
            ("[]", "not a JSON object"),
            (r#"{"transports":{}}"#, "no \"default\""),
            (r#"{"default":[]}"#, "empty list"),
            (
                r#"{"default":[{"type":"signedBy","keyType":"GPGKeys"}]}"#,
                "default[0]: signedBy",
            ),
            (
                r#"{"default":[{"type":"reject","extra":1}]}"#,
                "unknown or unsupported field \"extra\"",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned"}]}"#,
                "needs keyPath",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyPath":"k","fulcio":{}}]}"#,
                "keyless",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyPath":"k","signedIdentity":{"type":"matchExact"}}]}"#,
                "matchExact",
            ),
            (
                r#"{"default":[{"type":"frobnicate"}]}"#,
                "\"frobnicate\" is not supported",
            ),
            (
                r#"{"default":[{"type":"reject"}],"transports":{"docker":{"UPPER/x":[{"type":"reject"}]}}}"#,
                "transports.docker[\"UPPER/x\"]",
            ),
            (
                r#"{"default":[{"type":"reject"}],"other":1}"#,
                "unknown top-level key",
            ),
        ] {
            let e = parse(doc).unwrap_err();
            assert!(e.contains(part), "{doc}: {e}");
        }
    }
}
