//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and incremental verification.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256, Sha512};

/// A content digest as OCI writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Algorithm {
    Sha256,
    Sha512,
}

impl Digest {
    /// Parses `algorithm:hex` (lowercase hex of the algorithm's exact length).
    pub fn parse(text: &str) -> Result<Digest, String> {
        let (algo, hex) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not algorithm:hex"))?;
        let (algorithm, len) = match algo {
            "sha256" => (Algorithm::Sha256, 64),
            "sha512" => (Algorithm::Sha512, 128),
            other => {
                return Err(format!(
                    "digest algorithm {other:?} is not sha256 or sha512"
                ))
            }
        };
        if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!("{text:?}: {algo} needs {len} lowercase hex digits"));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    pub fn algorithm(&self) -> &'static str {
        match self.algorithm {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// True when `data` hashes to this digest.
    pub fn matches(&self, data: &[u8]) -> bool {
        let mut h = Hasher::new(self);
        h.update(data);
        h.finish() == *self
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hash in the algorithm of an expected digest.
pub(crate) enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn new(like: &Digest) -> Hasher {
        match like.algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// A reader that hashes and counts what passes through it, and refuses to pass more than
/// `limit` bytes (a registry or a decompressor that sends more than announced is cut off).
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    count: u64,
    limit: u64,
    what: &'static str,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, like: &Digest, limit: u64, what: &'static str) -> Self {
        HashingReader {
            inner,
            hasher: Some(Hasher::new(like)),
            count: 0,
            limit,
            what,
        }
    }

    /// Reads whatever is left (so the digest covers every byte), then returns it and the count.
    pub(crate) fn drain(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let digest = self.hasher.take().map(Hasher::finish);
        Ok((digest.expect("hasher present until drained"), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {} bytes", self.what, self.limit),
            ));
        }
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_verifies() {
        let d = Digest::sha256_of(b"hello");
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert!(d.matches(b"hello"));
        assert!(!d.matches(b"hellO"));
        let e = Digest::parse("md5:abcd").unwrap_err();
        assert!(e.contains("md5"), "{e}");
        assert!(Digest::parse("sha256:ABCD").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        let long = format!("sha512:{}", "0".repeat(128));
        assert_eq!(Digest::parse(&long).unwrap().algorithm(), "sha512");
    }

    #[test]
    fn hashing_reader_counts_limits_and_drains() {
        let d = Digest::sha256_of(b"");
        let mut r = HashingReader::new(&b"0123456789"[..], &d, 10, "blob");
        let mut first = [0u8; 4];
        r.read_exact(&mut first).unwrap();
        let (digest, n) = r.drain().unwrap();
        assert_eq!((digest, n), (Digest::sha256_of(b"0123456789"), 10));
        let r = HashingReader::new(&b"0123456789"[..], &d, 9, "blob");
        let e = r.drain().unwrap_err();
        assert!(e.to_string().contains("larger than 9"), "{e}");
    }
}
