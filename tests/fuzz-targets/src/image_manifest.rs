//! Target `image_manifest`: what a registry answers to a manifest or config request, and the
//! image reference a host or a tenant names, through the image crate's real parsers.
//!
//! Input: `[content-type selector][layer count][body]`. The body goes to `Manifest::parse`
//! (with the selected `Content-Type` header), to `ImageConfig::parse` (for the selected layer
//! count and this guest's platform) and, as text, to `Reference::parse`.
//!
//! Invariants, beyond no panic:
//! - an accepted image manifest has a config of an image-config media type, 1..=128 layers,
//!   each of a supported layer media type and without foreign URLs, and every digest in it is
//!   well-formed (`sha256:<64 hex>` or `sha512:<128 hex>`, lowercase);
//! - every digest of an accepted index is well-formed; a platform chosen from it is an entry
//!   the index lists, an image manifest, with the asked OS and architecture, and the first
//!   such entry;
//! - re-rendering an accepted manifest, index or config as JSON parses to the same value;
//! - an accepted reference's text form parses to the same reference (a fixed point), its
//!   first policy scope is that text and its name is `registry/repository`.

use vigil_image::{
    choose_platform, host_platform, Descriptor, Digest, ImageConfig, LayerCompression, Manifest,
    Platform, Reference,
};

use crate::Input;

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8"),
    Some("application/json"),
    Some("text/html"),
    Some(""),
];

const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

pub fn image_manifest(data: &[u8]) {
    let mut input = Input::new(data);
    let content_type = CONTENT_TYPES[input.u8() as usize % CONTENT_TYPES.len()];
    let layers = input.u8() as usize;
    let body = input.bytes(usize::MAX);

    match Manifest::parse(body, content_type) {
        Ok(Manifest::Image(m)) => {
            assert!(
                IMAGE_CONFIGS.contains(&m.config.media_type.as_str()),
                "accepted config media type {:?}",
                m.config.media_type
            );
            assert!(
                (1..=128).contains(&m.layers.len()),
                "{} layers",
                m.layers.len()
            );
            check_digest(&m.config.digest);
            for l in &m.layers {
                check_digest(&l.digest);
                assert!(LayerCompression::of(&l.media_type).is_ok(), "{l:?}");
                assert!(l.urls.is_empty(), "foreign layer accepted: {l:?}");
            }
            let again = serde_json::json!({
                "schemaVersion": 2,
                "config": descriptor_json(&m.config),
                "layers": m.layers.iter().map(descriptor_json).collect::<Vec<_>>(),
            });
            let Ok(Manifest::Image(m2)) = Manifest::parse(again.to_string().as_bytes(), None)
            else {
                panic!("re-rendered manifest not accepted as a manifest: {again}");
            };
            assert_eq!(format!("{m:?}"), format!("{m2:?}"));
        }
        Ok(Manifest::Index(index)) => {
            for d in &index.manifests {
                check_digest(&d.digest);
            }
            let platforms = [
                host_platform(),
                platform("arm64", "linux", Some("v8")),
                platform("amd64", "windows", None),
            ];
            for p in &platforms {
                let Some(chosen) = choose_platform(&index, p) else {
                    continue;
                };
                let at = index
                    .manifests
                    .iter()
                    .position(|d| std::ptr::eq(d, chosen))
                    .expect("the chosen manifest is one the index lists");
                assert!(fits(chosen, p), "chose {chosen:?} for {p:?}");
                assert!(
                    !index.manifests[..at].iter().any(|d| fits(d, p)),
                    "an earlier entry fits {p:?} better than {chosen:?}"
                );
            }
            let again = serde_json::json!({
                "schemaVersion": 2,
                "manifests": index.manifests.iter().map(descriptor_json).collect::<Vec<_>>(),
            });
            let Ok(Manifest::Index(i2)) = Manifest::parse(again.to_string().as_bytes(), None)
            else {
                panic!("re-rendered index not accepted as an index: {again}");
            };
            assert_eq!(format!("{index:?}"), format!("{i2:?}"));
        }
        Err(e) => assert!(!e.is_empty()),
    }

    let guest = host_platform();
    if let Ok(config) = ImageConfig::parse(body, layers, &guest) {
        assert_eq!(config.rootfs.kind, "layers");
        assert_eq!(config.rootfs.diff_ids.len(), layers);
        config.rootfs.diff_ids.iter().for_each(check_digest);
        assert!(config.os.is_empty() || config.os == guest.os);
        assert!(config.architecture.is_empty() || config.architecture == guest.architecture);
        let again = serde_json::to_vec(&config).unwrap();
        let parsed = ImageConfig::parse(&again, layers, &guest)
            .expect("a re-serialised accepted config is accepted");
        assert_eq!(parsed, config);
    }

    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(r) = Reference::parse(text) {
            let shown = r.to_string();
            let again = Reference::parse(&shown).expect("a reference's text form parses");
            assert_eq!(again, r, "{text:?} -> {shown:?}");
            assert_eq!(again.to_string(), shown);
            assert!(r.tag().is_some() || r.digest().is_some());
            if let Some(d) = r.digest() {
                check_digest(d);
            }
            assert_eq!(r.name(), format!("{}/{}", r.registry(), r.repository()));
            let scopes = r.policy_scopes();
            assert_eq!(scopes[0], shown);
            assert_eq!(scopes[1], r.name());
        }
    }
}

fn platform(architecture: &str, os: &str, variant: Option<&str>) -> Platform {
    Platform {
        architecture: architecture.into(),
        os: os.into(),
        variant: variant.map(Into::into),
    }
}

/// The rule a chosen index entry must satisfy, written out independently of the crate.
fn fits(d: &Descriptor, p: &Platform) -> bool {
    let image = matches!(
        d.media_type.as_str(),
        "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v2+json"
            | ""
    );
    d.platform.as_ref().is_some_and(|q| {
        image
            && q.os == p.os
            && q.architecture == p.architecture
            && (q.variant.is_none() || p.variant.is_none() || q.variant == p.variant)
    })
}

/// `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`, and a fixed point of parsing.
fn check_digest(d: &Digest) {
    let text = d.to_string();
    let (algorithm, hex) = text.split_once(':').expect("algorithm:hex");
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        other => panic!("digest algorithm {other:?} accepted"),
    };
    assert_eq!(hex.len(), len, "{text}");
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{text}"
    );
    assert_eq!(&Digest::parse(&text).unwrap(), d);
}

fn descriptor_json(d: &Descriptor) -> serde_json::Value {
    let mut v = serde_json::json!({
        "mediaType": d.media_type,
        "digest": d.digest.to_string(),
        "size": d.size,
        "urls": d.urls,
    });
    if let Some(p) = &d.platform {
        v["platform"] = serde_json::json!({
            "architecture": p.architecture,
            "os": p.os,
            "variant": p.variant,
        });
    }
    v
}
