//! OCI and Docker v2 manifests, indexes (manifest lists) and the image config, as far as a
//! pull needs them, with the checks that make a registry's answer safe to act on.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What a pull asks registries for, best first.
pub(crate) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Most layers an image may have (overlayfs stacks up to 500 lower layers; real images have
/// a few dozen at most).
pub(crate) const MAX_LAYERS: usize = 128;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub manifests: Vec<Descriptor>,
}

/// A manifest document: one image, or an index of per-platform images.
#[derive(Debug, Clone)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
}

impl Manifest {
    /// Parses a manifest body; `content_type` is the registry's header (used only when the
    /// document does not say its own media type).
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest, String> {
        let probe: Probe =
            serde_json::from_slice(body).map_err(|e| format!("not a JSON manifest: {e}"))?;
        if probe.schema_version != Some(2) {
            return Err(format!(
                "schemaVersion {:?} is not supported (only 2; Docker schema 1 images are deprecated)",
                probe.schema_version
            ));
        }
        let header = content_type.map(|c| c.split(';').next().unwrap_or("").trim());
        let kind = probe.media_type.as_deref().or(header).unwrap_or("");
        let is_index = match kind {
            OCI_INDEX | DOCKER_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            // OCI lets the media type be absent: tell the two apart by their fields.
            "" | "application/json" => probe.manifests.is_some(),
            other => {
                return Err(format!(
                    "media type {other:?} is not an image manifest or index"
                ))
            }
        };
        if is_index {
            let index: ImageIndex =
                serde_json::from_slice(body).map_err(|e| format!("malformed index: {e}"))?;
            Ok(Manifest::Index(index))
        } else {
            let m: ImageManifest =
                serde_json::from_slice(body).map_err(|e| format!("malformed manifest: {e}"))?;
            check_image_manifest(&m)?;
            Ok(Manifest::Image(m))
        }
    }
}

fn check_image_manifest(m: &ImageManifest) -> Result<(), String> {
    if !matches!(m.config.media_type.as_str(), OCI_CONFIG | DOCKER_CONFIG) {
        return Err(format!(
            "config media type {:?} is not an image config (an artifact, not a container image?)",
            m.config.media_type
        ));
    }
    if m.layers.is_empty() {
        return Err("the manifest lists no layers".into());
    }
    if m.layers.len() > MAX_LAYERS {
        return Err(format!("{} layers (at most {MAX_LAYERS})", m.layers.len()));
    }
    for (i, l) in m.layers.iter().enumerate() {
        LayerCompression::of(&l.media_type).map_err(|e| format!("layers[{i}]: {e}"))?;
        if !l.urls.is_empty() {
            return Err(format!(
                "layers[{i}] is a foreign layer with URLs: fetching from outside the registry is refused"
            ));
        }
    }
    Ok(())
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    pub fn of(media_type: &str) -> Result<LayerCompression, String> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar" => Ok(LayerCompression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(LayerCompression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd" => Ok(LayerCompression::Zstd),
            other if other.contains("encrypted") => Err(format!(
                "layer media type {other:?}: encrypted layers are not supported"
            )),
            other => Err(format!("layer media type {other:?} is not supported")),
        }
    }
}

/// The platform this guest runs, in OCI's (Go's) names.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "x86" => "386",
        other => other,
    };
    Platform {
        architecture: architecture.into(),
        os: "linux".into(),
        variant: None,
    }
}

/// The index entry for `platform`: an exact OS and architecture match (and the variant when
/// the entry names one that the platform also names). Entries that are not image manifests
/// (attestations, signatures) are skipped.
pub fn choose_platform<'a>(index: &'a ImageIndex, platform: &Platform) -> Option<&'a Descriptor> {
    index.manifests.iter().find(|d| {
        let is_image = matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | "");
        let Some(p) = &d.platform else {
            return false;
        };
        let variant_ok = match (&p.variant, &platform.variant) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        is_image && p.os == platform.os && p.architecture == platform.architecture && variant_ok
    })
}

/// The parts of an image config (`application/vnd.oci.image.config.v1+json`) a pull uses.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

/// The image's defaults for the container process (OCI image-spec `config`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// Parses and checks an image config against its manifest and the guest's platform.
    pub fn parse(body: &[u8], layers: usize, platform: &Platform) -> Result<ImageConfig, String> {
        let c: ImageConfig =
            serde_json::from_slice(body).map_err(|e| format!("malformed image config: {e}"))?;
        if c.rootfs.kind != "layers" {
            return Err(format!("rootfs.type {:?} is not \"layers\"", c.rootfs.kind));
        }
        if c.rootfs.diff_ids.len() != layers {
            return Err(format!(
                "rootfs.diff_ids lists {} layers but the manifest {layers}",
                c.rootfs.diff_ids.len()
            ));
        }
        if !c.os.is_empty() && c.os != platform.os {
            return Err(format!(
                "the image is for os {:?}, not {:?}",
                c.os, platform.os
            ));
        }
        if !c.architecture.is_empty() && c.architecture != platform.architecture {
            return Err(format!(
                "the image is for architecture {:?}, this guest is {:?}",
                c.architecture, platform.architecture
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn tells_manifests_from_indexes() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":2}},
               "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{}","size":3}}]}}"#,
            d(1),
            d(2)
        );
        assert!(matches!(
            Manifest::parse(m.as_bytes(), None),
            Ok(Manifest::Image(_))
        ));
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9,
                "platform":{{"architecture":"arm64","os":"linux"}}}},
               {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            d(3),
            d(4)
        );
        let Ok(Manifest::Index(index)) = Manifest::parse(i.as_bytes(), Some(OCI_INDEX)) else {
            panic!("index expected");
        };
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(
            choose_platform(&index, &amd64).unwrap().digest.to_string(),
            d(4)
        );
        let s390 = Platform {
            architecture: "s390x".into(),
            ..amd64
        };
        assert!(choose_platform(&index, &s390).is_none());
    }

    #[test]
    fn refuses_what_a_pull_cannot_use() {
        let cases = [
            (
                r#"{"schemaVersion":1,"fsLayers":[]}"#.to_string(),
                "schemaVersion",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"text/html"}"#.to_string(),
                "text/html",
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"config":{{"mediaType":"application/x-artifact","digest":"{}","size":1}},"layers":[]}}"#,
                    d(1)
                ),
                "artifact",
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":1}},"layers":[
                    {{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip+encrypted","digest":"{}","size":1}}]}}"#,
                    d(1),
                    d(2)
                ),
                "encrypted",
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":1}},"layers":[
                    {{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":1,"urls":["http://x"]}}]}}"#,
                    d(1),
                    d(2)
                ),
                "foreign",
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:zz","size":1}},"layers":[]}}"#
                ),
                "hex",
            ),
        ];
        for (body, part) in cases {
            let e = Manifest::parse(body.as_bytes(), None).unwrap_err();
            assert!(e.contains(part), "{body}: {e}");
        }
    }

    #[test]
    fn config_must_fit_manifest_and_platform() {
        let p = host_platform();
        let body = format!(
            r#"{{"architecture":"{}","os":"linux","config":{{"Cmd":["/bin/sh"],"Env":["A=1"]}},
               "rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            p.architecture,
            d(7)
        );
        let c = ImageConfig::parse(body.as_bytes(), 1, &p).unwrap();
        assert_eq!(c.config.unwrap().cmd.unwrap(), ["/bin/sh"]);
        let e = ImageConfig::parse(body.as_bytes(), 2, &p).unwrap_err();
        assert!(e.contains("diff_ids"), "{e}");
        let other = body.replace(&format!("\"{}\"", p.architecture), "\"riscv64\"");
        let e = ImageConfig::parse(other.as_bytes(), 1, &p).unwrap_err();
        assert!(e.contains("riscv64"), "{e}");
    }
}
