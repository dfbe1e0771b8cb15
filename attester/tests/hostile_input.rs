//! Deterministic stand-in for the fuzz targets, run by `cargo test` on stable: every parser
//! of host- or network-supplied bytes meets every truncation of the public vectors and many
//! seeded mutations of them, and must answer with a value or an error, never a panic.
//! (The cargo-fuzz targets in `fuzz/` explore further with coverage guidance.)
#![cfg(all(feature = "snp", feature = "tdx"))]

use vigil_attester::kbs_types::Tee;
use vigil_attester::{snp, tdx, verify};

const SNP_REPORT: &[u8] = include_bytes!("../../../shared/vectors/snp/test-report.bin");
const SNP_VCEK: &[u8] = include_bytes!("../../../shared/vectors/snp/test-vcek.der");
const TDX_QUOTE: &[u8] = include_bytes!("../../../shared/vectors/tdx/tdx_quote_4.dat");
const TDREPORT: &[u8] = include_bytes!("../../../shared/vectors/tdx/tdreport_1.bin");

/// xorshift64*: a fixed sequence, so any failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Mutations that matter for length-prefixed formats: random bytes, and length-like u32
/// values (0, small, huge, around the input length) written at random offsets.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len());
        if rng.below(2) == 0 {
            out[at] = rng.next() as u8;
        } else if at + 4 <= out.len() {
            let value: u32 = match rng.below(4) {
                0 => 0,
                1 => u32::MAX,
                2 => input.len() as u32 + rng.below(8) as u32 - 4,
                _ => rng.below(4096) as u32,
            };
            out[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
    }
    if rng.below(4) == 0 {
        out.truncate(rng.below(out.len() + 1));
    }
    out
}

#[test]
fn snp_report_parser_is_total() {
    for len in 0..=SNP_REPORT.len() {
        let _ = snp::parse_report(&SNP_REPORT[..len]);
    }
    let mut rng = Rng(0x5EED_0001);
    // Signature checks are slow in debug builds; a few dozen cover the decoding paths.
    let mut signature_checks = 0;
    for _ in 0..3000 {
        let input = mutate(&mut rng, SNP_REPORT);
        if snp::parse_report(&input).is_ok() && signature_checks < 30 {
            signature_checks += 1;
            // Bytes past the signature (0x330..) are reserved and unsigned; anything before
            // them changed must fail verification.
            if snp::verify_signature(&input, SNP_VCEK).is_ok() {
                assert_eq!(input[..0x330], SNP_REPORT[..0x330]);
            }
        }
    }
}

#[test]
fn snp_cert_table_parser_is_total() {
    // A table with two entries, built by hand: GUID, offset, length, then the terminator.
    let mut table = Vec::new();
    for (guid_byte, offset, len) in [(0x63u8, 72u32, 8u32), (0xc0, 80, 8)] {
        table.extend_from_slice(&[guid_byte; 16]);
        table.extend_from_slice(&offset.to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
    }
    table.extend_from_slice(&[0; 24]);
    table.extend_from_slice(b"cert-onecert-two");
    assert_eq!(snp::parse_cert_table(&table).unwrap().len(), 2);
    let mut rng = Rng(0x5EED_0002);
    for _ in 0..5000 {
        let _ = snp::parse_cert_table(&mutate(&mut rng, &table));
    }
}

#[test]
fn tdx_parsers_are_total() {
    for len in 0..=TDX_QUOTE.len() {
        let _ = tdx::parse_quote(&TDX_QUOTE[..len]);
    }
    for len in 0..=TDREPORT.len() {
        let _ = tdx::parse_tdreport(&TDREPORT[..len]);
    }
    let mut rng = Rng(0x5EED_0003);
    for _ in 0..3000 {
        let _ = tdx::parse_quote(&mutate(&mut rng, TDX_QUOTE));
        let _ = tdx::parse_tdreport(&mutate(&mut rng, TDREPORT));
    }
}

#[test]
fn evidence_claims_are_total() {
    // Without the certificate chain, so each round is parsing, not debug-build RSA.
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../shared/vectors/snp/evidence.json")).unwrap();
    doc["cert_chain"] = serde_json::Value::Null;
    let snp_json = doc.to_string();
    let mut rng = Rng(0x5EED_0004);
    for _ in 0..300 {
        let mutated = mutate(&mut rng, snp_json.as_bytes());
        if let Ok(text) = std::str::from_utf8(&mutated) {
            for tee in [Tee::Snp, Tee::Tdx, Tee::Sample] {
                let _ = verify::claims(tee, text);
            }
        }
    }
    for text in [
        "",
        "null",
        "[]",
        r#"{"svn":1}"#,
        r#"{"quote":null}"#,
        r#"{"attestation_report":{},"cert_chain":null}"#,
    ] {
        for tee in [Tee::Snp, Tee::Tdx, Tee::Sample] {
            assert!(verify::claims(tee, text).is_err(), "{tee:?} {text}");
        }
    }
}
