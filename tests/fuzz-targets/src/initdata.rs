//! Target `initdata`: both layouts of CoCo initdata (TOML text, and Kata's block device:
//! magic, u64 length, gzip'd TOML).
//!
//! Invariants: no panic; the two layouts of the same text parse to the same document and
//! digest; the digest covers exactly the delivered TOML bytes.

use vigil_attester::initdata::{pack_block, unpack_block, InitData};

pub fn initdata(data: &[u8]) {
    // As delivered: either layout, chosen by the magic.
    if let Ok(parsed) = InitData::from_bytes(data) {
        assert_eq!(
            parsed.digest,
            parsed.algorithm.digest(parsed.toml.as_bytes())
        );
    }
    let _ = unpack_block(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let direct = InitData::parse(text);
    let block = InitData::from_bytes(&pack_block(text));
    match (direct, block) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.toml, b.toml);
            assert_eq!(a.data, b.data);
            assert_eq!(a.digest, b.digest);
            assert_eq!(a.toml, text);
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "layouts disagree: text {:?}, block {:?}",
            a.is_ok(),
            b.is_ok()
        ),
    }
}
