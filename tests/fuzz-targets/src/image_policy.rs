//! Target `image_policy`: the tenant's containers-policy JSON (from initdata or the KBS) and a
//! registry's cosign simple-signing payload, through the image crate's real parsers.
//!
//! Input: `[u16 len][policy JSON][payload]`. The policy goes to `ImagePolicy::parse`; an
//! accepted one is asked which rule applies to a few fixed references. The payload goes to
//! the simple-signing check for a fixed image, two pulled digests and both identities.
//!
//! Invariants, beyond no panic:
//! - the rule chosen for a reference is the one a plain reading of the same JSON gives: the
//!   first of the reference's scopes (most specific first) that `transports.docker` names,
//!   else `transports.docker[""]`, else `default`; and its requirements are that list's, in
//!   order and kind;
//! - so a policy whose `default` says `reject` never admits a reference no docker scope names;
//! - an accepted payload is cosign's type, names one of the pulled digests and the repository
//!   the identity wants (read independently from the JSON).

use serde_json::Value;
use vigil_image::{
    check_simple_signing, Digest, ImagePolicy, Reference, Requirement, SignedIdentity,
};

use crate::Input;

const REFERENCES: &[&str] = &[
    "busybox",
    "quay.io/org/app:v1",
    "127.0.0.1:5000/apps/web@sha256:9b2a28eb47540823042a2ba401386845089bb7b62a9637d55816132c4c3c36eb",
    "registry.example.com:5000/ns/app:v1",
    "localhost/x",
];

pub fn image_policy(data: &[u8]) {
    let mut input = Input::new(data);
    let policy = input.chunk();
    let payload = input.bytes(usize::MAX);
    check_policy(policy);
    check_payload(payload);
}

fn check_policy(json: &[u8]) {
    let Ok(policy) = ImagePolicy::parse(json) else {
        return;
    };
    let doc: Value = serde_json::from_slice(json).expect("an accepted policy is JSON");
    let docker = doc
        .get("transports")
        .and_then(|t| t.get("docker"))
        .and_then(Value::as_object);
    for text in REFERENCES {
        let r = Reference::parse(text).unwrap();
        let applicable = policy.applicable(&r);
        let scoped = docker.and_then(|d| {
            r.policy_scopes()
                .into_iter()
                .find(|s| d.contains_key(s))
                .or_else(|| d.contains_key("").then(String::new))
        });
        let (scope, list) = match &scoped {
            Some(s) => (s.as_str(), &docker.unwrap()[s]),
            None => ("default", &doc["default"]),
        };
        assert_eq!(applicable.scope, scope, "rule for {r}");
        let kinds: Vec<&str> = list
            .as_array()
            .expect("an accepted list")
            .iter()
            .map(|v| v["type"].as_str().expect("an accepted type"))
            .collect();
        let got: Vec<&str> = applicable
            .requirements
            .iter()
            .map(|q| match q {
                Requirement::Reject => "reject",
                Requirement::InsecureAcceptAnything => "insecureAcceptAnything",
                Requirement::SigstoreSigned(s) => {
                    assert!(!s.keys.is_empty(), "sigstoreSigned without keys for {r}");
                    "sigstoreSigned"
                }
            })
            .collect();
        assert_eq!(got, kinds, "requirements for {r}");
        if scoped.is_none() && kinds.contains(&"reject") {
            assert!(applicable.requirements.contains(&Requirement::Reject));
        }
    }
    let paths = policy.key_paths();
    assert!(
        paths.windows(2).all(|w| w[0] < w[1]),
        "key paths sorted, once each"
    );
}

fn check_payload(payload: &[u8]) {
    let image = Reference::parse("127.0.0.1:5000/app:v1").unwrap();
    let pulled = [Digest::sha256_of(b"index"), Digest::sha256_of(b"manifest")];
    let signed: Vec<&Digest> = pulled.iter().collect();
    for identity in [
        SignedIdentity::MatchRepository,
        SignedIdentity::ExactRepository("docker.io/library/busybox".into()),
    ] {
        if check_simple_signing(payload, &image, &signed, &identity).is_err() {
            continue;
        }
        let v: Value = serde_json::from_slice(payload).expect("an accepted payload is JSON");
        let critical = &v["critical"];
        assert_eq!(critical["type"], "cosign container image signature");
        let digest = critical["image"]["docker-manifest-digest"]
            .as_str()
            .unwrap();
        assert!(
            pulled.iter().any(|d| d.to_string() == digest),
            "signs {digest}"
        );
        let named = critical["identity"]["docker-reference"].as_str().unwrap();
        let wanted = match &identity {
            SignedIdentity::MatchRepository => image.name(),
            SignedIdentity::ExactRepository(r) => r.clone(),
        };
        assert_eq!(Reference::parse(named).unwrap().name(), wanted);
    }
}
