//! Resources and their release rules.
//!
//! Layout of the resource directory:
//!
//! ```text
//! DIR/rules.json                 release rules, one per resource path
//! DIR/<repo>/<type>/<tag>        resource bytes (served JWE-encrypted)
//! ```
//!
//! `rules.json` maps `repo/type/tag` to a rule:
//!
//! ```json
//! { "default/vigil-policy/prod": { "tees": ["sample"], "init_data_digests": ["<hex>"] } }
//! ```
//!
//! * `tees`: TEE types (`sample`, `snp`, `tdx`, ...) that may receive it; required, non-empty.
//! * `init_data_digests`: lower-case hex of the full initdata digest (sha256/384/512 of
//!   the TOML body as sent); when present and non-empty, the attestation must have
//!   carried init-data with one of these digests (for SNP/TDX the evidence's launch field
//!   must also have held it; for sample evidence this rule is the only init-data check, as in
//!   Trustee, whose policy decides on the digest of the init-data sent). Absent or empty:
//!   not checked.
//!
//! A resource without a rule is never released. Both files are read on
//! every request, so edits take effect without a restart; a rules file that
//! cannot be read or parsed denies everything (fails closed).

use kbs_types::Tee;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Who may receive one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRule {
    /// TEE types allowed.
    pub tees: Vec<Tee>,
    /// Allowed initdata digests (hex); empty means not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_data_digests: Vec<String>,
}

/// What an attested requester presents.
#[derive(Debug, Clone)]
pub struct Requester {
    /// TEE type it attested as.
    pub tee: Tee,
    /// Hex digest of the init-data it attested with, if any.
    pub init_data_digest: Option<String>,
}

impl ReleaseRule {
    /// `Ok` when `who` may receive the resource; otherwise the reason.
    pub fn check(&self, who: &Requester) -> Result<(), String> {
        if !self.tees.contains(&who.tee) {
            return Err(format!("TEE {} is not in the release rule", who.tee));
        }
        if !self.init_data_digests.is_empty() {
            let Some(d) = &who.init_data_digest else {
                return Err("release rule requires init-data but none was attested".into());
            };
            if !self
                .init_data_digests
                .iter()
                .any(|a| a.eq_ignore_ascii_case(d))
            {
                return Err(format!(
                    "init-data digest {d} is not allowed by the release rule"
                ));
            }
        }
        Ok(())
    }
}

/// Resource bytes and rules from a directory plus in-memory additions.
#[derive(Debug, Default)]
pub struct ResourceStore {
    dir: Option<PathBuf>,
    memory: HashMap<String, (Vec<u8>, ReleaseRule)>,
}

/// Outcome of a lookup.
pub enum Lookup {
    /// Bytes and the rule that governs them.
    Found(Vec<u8>, ReleaseRule),
    /// No such resource.
    NotFound,
    /// The resource exists but has no rule, or the rules file is broken.
    NoRule(String),
}

impl ResourceStore {
    /// A store backed by `dir` (may be `None` for memory only).
    pub fn new(dir: Option<PathBuf>) -> Self {
        ResourceStore {
            dir,
            memory: HashMap::new(),
        }
    }

    /// Add or replace an in-memory resource and its rule.
    pub fn put(&mut self, path: &str, bytes: Vec<u8>, rule: ReleaseRule) {
        self.memory.insert(path.to_string(), (bytes, rule));
    }

    /// Find `path` (already validated as `repo/type/tag`).
    pub fn lookup(&self, path: &str) -> std::io::Result<Lookup> {
        if let Some((b, r)) = self.memory.get(path) {
            return Ok(Lookup::Found(b.clone(), r.clone()));
        }
        let Some(dir) = &self.dir else {
            return Ok(Lookup::NotFound);
        };
        let file = dir.join(path);
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::NotFound),
            Err(e) => return Err(e),
        };
        match load_rules(dir) {
            Ok(rules) => match rules.get(path) {
                Some(rule) => Ok(Lookup::Found(bytes, rule.clone())),
                None => Ok(Lookup::NoRule(format!("no release rule for {path}"))),
            },
            Err(e) => Ok(Lookup::NoRule(e)),
        }
    }
}

/// Read `DIR/rules.json`; a missing file is an empty rule set.
pub fn load_rules(dir: &Path) -> Result<HashMap<String, ReleaseRule>, String> {
    let file = dir.join("rules.json");
    match std::fs::read(&file) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| format!("{} is invalid: {e}", file.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_checks() {
        let r = ReleaseRule {
            tees: vec![Tee::Sample],
            init_data_digests: vec!["ABCD".into()],
        };
        let ok = Requester {
            tee: Tee::Sample,
            init_data_digest: Some("abcd".into()),
        };
        assert!(r.check(&ok).is_ok());
        let e = r
            .check(&Requester {
                tee: Tee::Snp,
                ..ok.clone()
            })
            .unwrap_err();
        assert!(e.contains("snp"));
        assert!(r
            .check(&Requester {
                init_data_digest: None,
                ..ok.clone()
            })
            .is_err());
        assert!(r
            .check(&Requester {
                init_data_digest: Some("ef".into()),
                ..ok
            })
            .is_err());
    }

    #[test]
    fn directory_lookup_and_broken_rules_fail_closed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("r/t")).unwrap();
        std::fs::write(d.path().join("r/t/x"), b"hello").unwrap();
        let s = ResourceStore::new(Some(d.path().into()));
        assert!(matches!(s.lookup("r/t/x").unwrap(), Lookup::NoRule(_)));
        assert!(matches!(s.lookup("r/t/y").unwrap(), Lookup::NotFound));
        std::fs::write(
            d.path().join("rules.json"),
            r#"{"r/t/x":{"tees":["sample"]}}"#,
        )
        .unwrap();
        assert!(matches!(s.lookup("r/t/x").unwrap(), Lookup::Found(b, _) if b == b"hello"));
        std::fs::write(
            d.path().join("rules.json"),
            r#"{"r/t/x":{"tees":["sample"],"typo":1}}"#,
        )
        .unwrap();
        assert!(matches!(s.lookup("r/t/x").unwrap(), Lookup::NoRule(m) if m.contains("typo")));
    }
}
