//! Image references in the Docker grammar (`[host[:port]/]path[:tag][@digest]`), normalised
//! the way containerd and CoCo's image-rs normalise them (`busybox` is
//! `docker.io/library/busybox:latest`), and the policy scopes a reference falls under.

use std::fmt;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry a reference without a host names.
pub const DEFAULT_REGISTRY: &str = "docker.io";
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses `text`; a reference with neither tag nor digest gets the tag `latest`.
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |why: &str| Error::Reference {
            reference: text.to_string(),
            reason: why.to_string(),
        };
        if text.is_empty() {
            return Err(bad("empty"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains white space or control characters"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => (
                r,
                Some(Digest::parse(d).map_err(|e| bad(&format!("digest: {e}")))?),
            ),
            None => (text, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(t).map_err(|e| bad(&e))?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                check_host(first).map_err(|e| bad(&e))?;
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        check_path(&repository).map_err(|e| bad(&e))?;
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(bad(&format!("name longer than {MAX_NAME} characters")));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port) as written, e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`: the name a cosign signature's `docker-reference` carries.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What the registry is asked for: the digest when there is one, else the tag.
    pub(crate) fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The policy scopes this reference matches in a containers-policy `transports.docker`
    /// map, most specific first: the full reference, the repository, each parent namespace,
    /// then `*.domain` wildcards of the host (as containers/image and image-rs look them up).
    pub fn policy_scopes(&self) -> Vec<String> {
        let mut scopes = vec![self.to_string()];
        let mut name = self.name();
        loop {
            scopes.push(name.clone());
            match name.rsplit_once('/') {
                Some((parent, _)) => name = parent.to_string(),
                None => break,
            }
        }
        let host = self.registry.split(':').next().unwrap_or("");
        let mut domain = host;
        while let Some((_, rest)) = domain.split_once('.') {
            scopes.push(format!("*.{rest}"));
            domain = rest;
        }
        scopes
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok
        || tag.len() > MAX_TAG
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "tag {tag:?} must be 1-{MAX_TAG} of [A-Za-z0-9_.-], not starting with '.' or '-'"
        ));
    }
    Ok(())
}

fn check_host(host: &str) -> std::result::Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("registry port {p:?} is not a port number"));
        }
    }
    let ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("registry host {name:?} is not a valid host name"))
    }
}

/// Path components are lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn check_path(path: &str) -> std::result::Result<(), String> {
    for component in path.split('/') {
        let bytes = component.as_bytes();
        let mut ok = !bytes.is_empty();
        let mut i = 0;
        while ok && i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                i += 1;
                continue;
            }
            // A separator: never first or last, never two different kinds in a row.
            let sep_len = match c {
                b'.' => 1,
                b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
                b'_' => 1,
                b'-' => bytes[i..].iter().take_while(|b| **b == b'-').count(),
                _ => {
                    ok = false;
                    break;
                }
            };
            let after = bytes.get(i + sep_len);
            ok = i > 0 && after.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            i += sep_len;
        }
        if !ok {
            return Err(format!(
                "repository component {component:?} must be lowercase letters and digits joined by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:9b2a28eb47540823042a2ba401386845089bb7b62a9637d55816132c4c3c36eb";

    #[test]
    fn normalises_like_containerd() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = Reference::parse("quay.io/org/app:1.2").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("quay.io", "org/app", Some("1.2"))
        );
        let r = Reference::parse("127.0.0.1:5000/a/b").unwrap();
        assert_eq!((r.registry(), r.tag()), ("127.0.0.1:5000", Some("latest")));
        let r = Reference::parse(&format!("localhost/x@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_ref(), D);
        let r = Reference::parse(&format!("user/app:v1@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/user/app:v1@{D}"));
        assert_eq!(r.manifest_ref(), D, "the digest wins over the tag");
    }

    #[test]
    fn refuses_bad_references_naming_the_part() {
        for (text, part) in [
            ("", "empty"),
            ("Upper/case", "repository component"),
            ("a//b", "repository component"),
            ("a/b:", "tag"),
            ("a/b:-x", "tag"),
            ("host:99999/a", "port"),
            ("a/b@sha256:abc", "digest"),
            ("a b", "white space"),
            ("a/-b", "repository component"),
            ("a/b.", "repository component"),
            ("a/b_-c", "repository component"),
        ] {
            let e = Reference::parse(text).unwrap_err().to_string();
            assert!(e.contains(part), "{text:?}: {e}");
        }
        assert!(Reference::parse("a/b__c/d---e/f.g_h").is_ok());
    }

    #[test]
    fn scopes_most_specific_first() {
        let r = Reference::parse("registry.example.com:5000/ns/app:v1").unwrap();
        assert_eq!(
            r.policy_scopes(),
            [
                "registry.example.com:5000/ns/app:v1",
                "registry.example.com:5000/ns/app",
                "registry.example.com:5000/ns",
                "registry.example.com:5000",
                "*.example.com",
                "*.com",
            ]
        );
    }
}
