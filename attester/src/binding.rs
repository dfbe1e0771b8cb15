//! Launch-data (initdata) binding: does the launch-time field hold the initdata digest?
//!
//! CoCo binds initdata by placing its digest into a field the host sets at launch and the
//! hardware then reports: SNP `HOST_DATA` (32 bytes), TDX `MRCONFIGID` (48 bytes). A digest
//! longer than the field is truncated to the field size (sha384/sha512 into `HOST_DATA`); a
//! shorter one is zero-padded (sha256 into `MRCONFIGID`).

use crate::Error;

/// The value the launch-time field must hold for an initdata `digest`, for a field of
/// `field_len` bytes: the digest truncated or zero-padded to that size.
pub fn expected_field(digest: &[u8], field_len: usize) -> Vec<u8> {
    let mut field = vec![0u8; field_len];
    let n = digest.len().min(field_len);
    field[..n].copy_from_slice(&digest[..n]);
    field
}

/// Checks that the launch-time `field` holds `digest` (after truncation or padding).
///
/// A mismatch is an error showing both values in hex. An empty field or digest is an error
/// too: it would otherwise compare equal to nothing in a way that is easy to misread.
pub fn check(digest: &[u8], field: &[u8]) -> Result<(), Error> {
    if field.is_empty() {
        return Err(Error::BindingUnusable("the launch binding field is empty"));
    }
    if digest.is_empty() {
        return Err(Error::BindingUnusable("the initdata digest is empty"));
    }
    let expected = expected_field(digest, field.len());
    if expected != field {
        return Err(Error::BindingMismatch {
            field_len: field.len(),
            expected: hex::encode(&expected),
            found: hex::encode(field),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256, Sha384, Sha512};

    const INITDATA: &[u8] = b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = \"package agent_policy\"\n";

    /// A launch field as a host would set it, built independently of `expected_field`.
    fn host_field(digest: &[u8], len: usize) -> Vec<u8> {
        digest
            .iter()
            .copied()
            .chain(std::iter::repeat(0))
            .take(len)
            .collect()
    }

    #[test]
    fn every_digest_size_against_both_field_sizes() {
        let digests: [(&str, Vec<u8>); 3] = [
            ("sha256", Sha256::digest(INITDATA).to_vec()),
            ("sha384", Sha384::digest(INITDATA).to_vec()),
            ("sha512", Sha512::digest(INITDATA).to_vec()),
        ];
        for (name, digest) in &digests {
            for field_len in [32usize, 48] {
                let field = host_field(digest, field_len);
                check(digest, &field).unwrap_or_else(|e| panic!("{name}/{field_len}: {e}"));
                assert_eq!(
                    expected_field(digest, field_len),
                    field,
                    "{name}/{field_len}"
                );
            }
        }
    }

    #[test]
    fn padding_and_truncation_rules() {
        let sha256 = Sha256::digest(INITDATA);
        let padded = expected_field(&sha256, 48);
        assert_eq!(padded[..32], sha256[..]);
        assert!(padded[32..].iter().all(|&b| b == 0));

        let sha512 = Sha512::digest(INITDATA);
        assert_eq!(expected_field(&sha512, 32), sha512[..32].to_vec());
        assert_eq!(expected_field(&sha512, 48), sha512[..48].to_vec());

        // Non-zero bytes where padding belongs do not match.
        let mut dirty = padded.clone();
        dirty[47] = 1;
        assert!(check(&sha256, &dirty).is_err());
    }

    #[test]
    fn mismatch_error_shows_both_values_in_hex() {
        let digest = Sha384::digest(INITDATA);
        let other = Sha384::digest(b"some other initdata");
        let field = host_field(&other, 48);
        let err = check(&digest, &field).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&hex::encode(digest)), "{msg}");
        assert!(msg.contains(&hex::encode(&field)), "{msg}");
        assert!(msg.contains("48-byte"), "{msg}");
    }

    #[test]
    fn empty_inputs_are_errors() {
        assert!(matches!(
            check(&[1; 32], &[]),
            Err(Error::BindingUnusable(_))
        ));
        assert!(matches!(
            check(&[], &[0; 32]),
            Err(Error::BindingUnusable(_))
        ));
    }
}
