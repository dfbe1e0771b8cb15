//! CoCo initdata: the TOML document a tenant gives the VM at launch, whose digest the host
//! binds into the hardware evidence (SNP `HOST_DATA`, TDX `MRCONFIGID`).
//!
//! ```toml
//! version = "0.1.0"
//! algorithm = "sha384"          # sha256 | sha384 | sha512
//! [data]
//! "vigil.toml" = '''...'''      # any string entries
//! "policy.rego" = '''...'''
//! ```
//!
//! The digest is the hash of the raw bytes as delivered: no canonicalisation, so the guest
//! must hash exactly what it received. Kata delivers initdata on a block device: the magic
//! `initdata`, a little-endian u64 length, then that many bytes of gzip'd TOML; the tenant hands
//! it to Kata's runtime as the pod annotation [`ANNOTATION`], standard base64 of the gzip'd TOML.

use std::collections::BTreeMap;
use std::io::Read;

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The only initdata format version defined so far.
pub const VERSION: &str = "0.1.0";
/// Magic at the start of Kata's initdata block device.
pub const BLOCK_MAGIC: &[u8; 8] = b"initdata";
/// Largest initdata accepted (compressed or not); far above any real one.
pub const MAX_BYTES: usize = 8 << 20;
/// The pod annotation through which Kata's runtime takes initdata (base64 of gzip'd TOML).
pub const ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitDataError {
    #[error("initdata block: {0}")]
    Block(String),
    #[error("initdata is not UTF-8 text")]
    NotUtf8,
    #[error("initdata is not valid TOML: {0}")]
    Toml(String),
    #[error("initdata version {0:?} is not supported (expected {VERSION:?})")]
    Version(String),
    #[error("initdata algorithm {0:?} is not one of sha256, sha384, sha512")]
    Algorithm(String),
    #[error("initdata is {0} bytes, over the {MAX_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("initdata annotation: {0}")]
    Annotation(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlgorithm {
    pub fn parse(name: &str) -> Result<Self, InitDataError> {
        match name {
            "sha256" => Ok(HashAlgorithm::Sha256),
            "sha384" => Ok(HashAlgorithm::Sha384),
            "sha512" => Ok(HashAlgorithm::Sha512),
            other => Err(InitDataError::Algorithm(other.into())),
        }
    }

    /// The name initdata's `algorithm` key uses.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha384 => "sha384",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    pub fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            HashAlgorithm::Sha256 => Sha256::digest(bytes).to_vec(),
            HashAlgorithm::Sha384 => Sha384::digest(bytes).to_vec(),
            HashAlgorithm::Sha512 => Sha512::digest(bytes).to_vec(),
        }
    }
}

/// A parsed initdata document and its digest.
#[derive(Debug, Clone)]
pub struct InitData {
    /// The TOML text exactly as delivered (what the digest covers, and what the KBS gets).
    pub toml: String,
    pub algorithm: HashAlgorithm,
    pub data: BTreeMap<String, String>,
    /// Hash of `toml`'s bytes with `algorithm`.
    pub digest: Vec<u8>,
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

impl InitData {
    /// Parses initdata as delivered: Kata's block layout (detected by its magic) or plain
    /// TOML text.
    pub fn from_bytes(bytes: &[u8]) -> Result<InitData, InitDataError> {
        if bytes.starts_with(BLOCK_MAGIC) {
            let toml = unpack_block(bytes)?;
            return InitData::parse(&toml);
        }
        if bytes.len() > MAX_BYTES {
            return Err(InitDataError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| InitDataError::NotUtf8)?;
        InitData::parse(text)
    }

    /// Parses initdata TOML text.
    pub fn parse(toml_text: &str) -> Result<InitData, InitDataError> {
        let doc: Document = toml::from_str(toml_text)
            .map_err(|e| InitDataError::Toml(e.to_string().trim_end().replace('\n', " | ")))?;
        if doc.version != VERSION {
            return Err(InitDataError::Version(doc.version));
        }
        let algorithm = HashAlgorithm::parse(&doc.algorithm)?;
        Ok(InitData {
            digest: algorithm.digest(toml_text.as_bytes()),
            toml: toml_text.to_string(),
            algorithm,
            data: doc.data,
        })
    }

    pub fn entry(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    /// Writes an initdata document with these `[data]` entries, as a tenant tool does. The
    /// text is checked to parse back to exactly these entries, so what is measured is what
    /// the guest will read.
    pub fn render(
        algorithm: HashAlgorithm,
        data: &BTreeMap<String, String>,
    ) -> Result<InitData, InitDataError> {
        let doc = Document {
            version: VERSION.to_string(),
            algorithm: algorithm.name().to_string(),
            data: data.clone(),
        };
        let text = toml::to_string(&doc).map_err(|e| InitDataError::Toml(e.to_string()))?;
        if text.len() > MAX_BYTES {
            return Err(InitDataError::TooLarge(text.len()));
        }
        let parsed = InitData::parse(&text)?;
        if parsed.data != *data {
            return Err(InitDataError::Toml(
                "the rendered document does not read back to the same entries".into(),
            ));
        }
        Ok(parsed)
    }
}

/// Kata's pod annotation value for `toml` ([`ANNOTATION`]): standard base64 of the gzip'd text.
pub fn to_annotation(toml: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(gzip(toml))
}

/// The TOML text inside an annotation value made by [`to_annotation`] (or by hand with
/// `gzip | base64 -w0`, as Kata's documentation shows).
pub fn from_annotation(value: &str) -> Result<String, InitDataError> {
    use base64::Engine as _;
    let value = value.trim();
    if value.len() > MAX_BYTES * 2 {
        return Err(InitDataError::TooLarge(value.len()));
    }
    let gz = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| InitDataError::Annotation(format!("not standard base64: {e}")))?;
    gunzip(&gz).map_err(|e| match e {
        InitDataError::Block(m) => InitDataError::Annotation(m),
        other => other,
    })
}

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// At most [`MAX_BYTES`] of gunzip'd UTF-8 text.
fn gunzip(body: &[u8]) -> Result<String, InitDataError> {
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| InitDataError::Block(format!("gzip: {e}")))?;
    if text.len() > MAX_BYTES {
        return Err(InitDataError::TooLarge(text.len()));
    }
    String::from_utf8(text).map_err(|_| InitDataError::NotUtf8)
}

/// The TOML text inside Kata's block layout. A device is larger than its content, so bytes
/// after the declared length are ignored; fewer bytes than declared is an error.
pub fn unpack_block(bytes: &[u8]) -> Result<String, InitDataError> {
    let header = BLOCK_MAGIC.len() + 8;
    if bytes.len() < header {
        return Err(InitDataError::Block(format!(
            "{} bytes is shorter than the {header}-byte header",
            bytes.len()
        )));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_BYTES)
        .ok_or_else(|| InitDataError::Block(format!("declared length {len} is too large")))?;
    let body = bytes.get(header..header + len).ok_or_else(|| {
        InitDataError::Block(format!(
            "declared length {len} but only {} bytes follow the header (truncated)",
            bytes.len() - header
        ))
    })?;
    gunzip(body)
}

/// Kata's block layout for `toml` (for tests and tools that make initdata devices).
pub fn pack_block(toml: &str) -> Vec<u8> {
    let body = gzip(toml);
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(BLOCK_MAGIC);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"vigil.toml\" = \"[agent]\\n\"\n\"policy.rego\" = \"package agent_policy\\n\"\n";

    #[test]
    fn parses_and_hashes_the_raw_bytes() {
        let d = InitData::parse(DOC).unwrap();
        assert_eq!(d.algorithm, HashAlgorithm::Sha384);
        assert_eq!(d.digest, Sha384::digest(DOC.as_bytes()).to_vec());
        assert_eq!(d.entry("vigil.toml"), Some("[agent]\n"));
        assert_eq!(d.entry("policy.rego"), Some("package agent_policy\n"));
        // Same content, different bytes: a different digest (no canonicalisation).
        let spaced = DOC.replace("algorithm = ", "algorithm =  ");
        assert_ne!(InitData::parse(&spaced).unwrap().digest, d.digest);
        for (alg, len) in [("sha256", 32), ("sha512", 64)] {
            let doc = DOC.replace("sha384", alg);
            assert_eq!(InitData::parse(&doc).unwrap().digest.len(), len);
        }
    }

    #[test]
    fn block_layout_round_trips_and_ignores_device_padding() {
        let mut block = pack_block(DOC);
        block.extend_from_slice(&[0u8; 4096]);
        let d = InitData::from_bytes(&block).unwrap();
        assert_eq!(d.toml, DOC);
        assert_eq!(d.digest, InitData::parse(DOC).unwrap().digest);
    }

    #[test]
    fn render_reads_back_and_annotation_round_trips() {
        let mut data = BTreeMap::new();
        // Content that would break naive quoting: quotes, triple quotes, backslashes.
        data.insert(
            "vigil.toml".to_string(),
            "[agent]\nserver_addr = \"unix:///x\"\n# ''' and \"\"\" and \\n\n".to_string(),
        );
        data.insert(
            "policy.rego".to_string(),
            "package agent_policy\n".to_string(),
        );
        for alg in [
            HashAlgorithm::Sha256,
            HashAlgorithm::Sha384,
            HashAlgorithm::Sha512,
        ] {
            let d = InitData::render(alg, &data).unwrap();
            assert_eq!(d.algorithm, alg);
            assert_eq!(d.data, data);
            assert_eq!(d.digest, alg.digest(d.toml.as_bytes()));
            assert_eq!(InitData::parse(&d.toml).unwrap().data, data);
        }
        let text = InitData::render(HashAlgorithm::Sha384, &data).unwrap().toml;
        let annotation = to_annotation(&text);
        // Kata's runtime reads standard base64 of a gzip stream.
        assert!(annotation.starts_with("H4sI"), "{annotation}");
        assert_eq!(from_annotation(&annotation).unwrap(), text);
        assert_eq!(from_annotation(&format!(" {annotation}\n")).unwrap(), text);
        assert!(matches!(
            from_annotation("not base64!"),
            Err(InitDataError::Annotation(m)) if m.contains("base64")
        ));
        assert!(matches!(
            from_annotation("aGVsbG8="),
            Err(InitDataError::Annotation(m)) if m.contains("gzip")
        ));
    }

    #[test]
    fn bad_input_is_named() {
        let block = pack_block(DOC);
        let err = InitData::from_bytes(&block[..block.len() - 5]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut bad_gzip = block.clone();
        bad_gzip[20] ^= 0xff;
        bad_gzip[30] ^= 0xff;
        assert!(
            matches!(InitData::from_bytes(&bad_gzip), Err(InitDataError::Block(m)) if m.contains("gzip"))
        );
        assert!(matches!(
            InitData::from_bytes(b"initdata\x01"),
            Err(InitDataError::Block(_))
        ));
        assert!(matches!(
            InitData::parse("version = "),
            Err(InitDataError::Toml(_))
        ));
        assert_eq!(
            InitData::parse(&DOC.replace("sha384", "md5")).unwrap_err(),
            InitDataError::Algorithm("md5".into())
        );
        assert!(matches!(
            InitData::parse(&DOC.replace("0.1.0", "9.9")),
            Err(InitDataError::Version(_))
        ));
        assert_eq!(
            InitData::from_bytes(&[0xff, 0xfe]).unwrap_err(),
            InitDataError::NotUtf8
        );
        assert!(
            matches!(InitData::parse(&format!("{DOC}extra = 1\n")), Err(InitDataError::Toml(m)) if m.contains("extra"))
        );
    }
}
