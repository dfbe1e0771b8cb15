use super::*;

const REPORT: &[u8] = include_bytes!("../../../../shared/vectors/snp/test-report.bin");
const VCEK: &[u8] = include_bytes!("../../../../shared/vectors/snp/test-vcek.der");
const EVIDENCE: &str = include_str!("../../../../shared/vectors/snp/evidence.json");

/// The VCEK GUID 63da758d-e664-4564-adc5-f4b93be8accd in table byte order.
pub(crate) const VCEK_GUID: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];

/// Builds a certificate table as a host would lay it out.
pub(crate) fn cert_table(certs: &[([u8; 16], &[u8])]) -> Vec<u8> {
    let header = (certs.len() + 1) * CERT_ENTRY_LEN;
    let mut table = Vec::new();
    let mut blobs = Vec::new();
    for (guid, data) in certs {
        table.extend_from_slice(guid);
        table.extend_from_slice(&((header + blobs.len()) as u32).to_le_bytes());
        table.extend_from_slice(&(data.len() as u32).to_le_bytes());
        blobs.extend_from_slice(data);
    }
    table.extend_from_slice(&[0; CERT_ENTRY_LEN]);
    table.extend_from_slice(&blobs);
    table
}

fn le_u32(at: usize) -> u32 {
    u32::from_le_bytes(REPORT[at..at + 4].try_into().unwrap())
}

#[test]
fn vector_fields_match_their_offsets() {
    let r = parse_report(REPORT).unwrap();
    assert_eq!(REPORT.len(), REPORT_LEN);
    assert_eq!(r.version, le_u32(0x00));
    assert_eq!(r.version, 2);
    assert_eq!(r.guest_svn, le_u32(0x04));
    assert_eq!(
        r.policy,
        u64::from_le_bytes(REPORT[0x08..0x10].try_into().unwrap())
    );
    assert_eq!(r.vmpl, le_u32(0x30));
    assert_eq!(r.sig_algo, SIG_ALGO_ECDSA_P384_SHA384);
    assert_eq!(r.report_data.as_slice(), &REPORT[0x50..0x90]);
    assert_eq!(r.measurement.as_slice(), &REPORT[0x90..0xC0]);
    assert_eq!(r.host_data.as_slice(), &REPORT[0xC0..0xE0]);
    assert_eq!(r.host_data.len(), 32);
    assert_eq!(r.report_data.len(), 64);
    assert_eq!(r.chip_id.as_slice(), &REPORT[0x1A0..0x1E0]);
    assert_eq!(
        r.reported_tcb,
        u64::from_le_bytes(REPORT[0x180..0x188].try_into().unwrap())
    );
    assert_eq!(r.signature_r.as_slice(), &REPORT[0x2A0..0x2E8]);
    assert_eq!(r.signature_s.as_slice(), &REPORT[0x2E8..0x330]);
    // Version 2 reports have no CPUID fields.
    assert_eq!(r.cpuid_fam_mod_step, None);
}

#[test]
fn parser_tracks_changed_bytes() {
    // Write distinct values into the fields and check the parser follows them, so a parser
    // reading the wrong offsets cannot pass on a report full of zeros.
    let mut bytes = REPORT.to_vec();
    bytes[0xC0..0xE0].copy_from_slice(&[0x11; 32]);
    bytes[0x90..0xC0].copy_from_slice(&[0x22; 48]);
    bytes[0x30..0x34].copy_from_slice(&3u32.to_le_bytes());
    bytes[0x00..0x04].copy_from_slice(&3u32.to_le_bytes());
    bytes[0x188..0x18B].copy_from_slice(&[0x19, 0x01, 0x01]);
    let r = parse_report(&bytes).unwrap();
    assert_eq!(r.host_data, [0x11; 32]);
    assert_eq!(r.measurement, [0x22; 48]);
    assert_eq!(r.vmpl, 3);
    assert_eq!(r.cpuid_fam_mod_step, Some((0x19, 0x01, 0x01)));
}

#[test]
fn short_long_and_old_reports_are_errors() {
    for len in [0, 1, 0x2A0, REPORT_LEN - 1, REPORT_LEN + 1] {
        let bytes = vec![2u8; len];
        let err = parse_report(&bytes).unwrap_err();
        assert!(err.to_string().contains(&format!("{len} bytes")), "{err}");
    }
    let mut old = REPORT.to_vec();
    old[0..4].copy_from_slice(&1u32.to_le_bytes());
    assert!(parse_report(&old)
        .unwrap_err()
        .to_string()
        .contains("version 1"));
}

#[test]
fn vector_signature_verifies_with_its_vcek() {
    verify_signature(REPORT, VCEK).unwrap();
}

#[test]
fn tampered_report_fails_signature() {
    let mut bytes = REPORT.to_vec();
    bytes[0xC0] ^= 1; // host_data
    let err = verify_signature(&bytes, VCEK).unwrap_err();
    assert!(matches!(err, Error::Verification { .. }), "{err}");
    // Bytes after the signed range are not covered, but a changed signature is.
    let mut bytes = REPORT.to_vec();
    bytes[0x2A0] ^= 1;
    assert!(verify_signature(&bytes, VCEK).is_err());
}

#[test]
fn garbage_certificate_is_a_verification_error() {
    let err = verify_signature(REPORT, b"not a certificate").unwrap_err();
    assert!(err.to_string().contains("VCEK certificate"), "{err}");
}

#[test]
fn vector_vcek_chains_to_amd_milan_roots() {
    assert_eq!(verify_vek_chain(VCEK).unwrap(), ProductLine::Milan);
}

#[test]
fn evidence_vector_round_trips_through_sev_serde() {
    // The document the CoCo attester emits must decode and re-encode to the same JSON, so what
    // we emit is what Trustee's SNP verifier reads.
    let evidence: SnpEvidence = serde_json::from_str(EVIDENCE).unwrap();
    let mut again: serde_json::Value = serde_json::to_value(&evidence).unwrap();
    let original: serde_json::Value = serde_json::from_str(EVIDENCE).unwrap();
    // sev 8 adds the report v5 mitigation-vector fields (null for this v3 report); older
    // readers ignore unknown fields (sev does not deny them). Everything else is identical.
    let report = again["attestation_report"].as_object_mut().unwrap();
    for added in ["launch_mit_vector", "current_mit_vector"] {
        assert_eq!(
            report.remove(added),
            Some(serde_json::Value::Null),
            "{added}"
        );
    }
    assert_eq!(again, original);
    let vcek = evidence
        .endorsement_key_cert()
        .expect("vector carries a VCEK");
    let raw = evidence.raw_report().unwrap();
    verify_signature(&raw, vcek).unwrap();
}

#[test]
fn evidence_from_raw_report_keeps_fields() {
    let evidence = SnpEvidence::from_raw(REPORT, None).unwrap();
    assert_eq!(evidence.raw_report().unwrap(), REPORT);
    let json = serde_json::to_value(&evidence).unwrap();
    assert!(json["cert_chain"].is_null());
    assert_eq!(json["attestation_report"]["vmpl"], 0);
}

#[test]
fn cert_table_round_trip() {
    let ark_guid = *uuid::Uuid::parse_str("c0b406a4-a803-4952-9743-3fb6014cd0ae")
        .unwrap()
        .as_bytes();
    let table = cert_table(&[(VCEK_GUID, VCEK), (ark_guid, b"ark bytes")]);
    let entries = parse_cert_table(&table).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].cert_type, CertType::VCEK);
    assert_eq!(entries[0].data(), VCEK);
    assert_eq!(entries[1].cert_type, CertType::ARK);
    assert_eq!(entries[1].data(), b"ark bytes");
    // An all-zero page (host had nothing) is an empty table.
    assert!(parse_cert_table(&[0; 4096]).unwrap().is_empty());
    assert!(parse_cert_table(&[]).unwrap().is_empty());
}

#[test]
fn hostile_cert_tables_are_errors() {
    // Entry pointing past the end.
    let mut table = cert_table(&[(VCEK_GUID, b"abc")]);
    table[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(parse_cert_table(&table)
        .unwrap_err()
        .to_string()
        .contains("outside the certificate area"));
    // Entry pointing into the entry headers themselves.
    let mut into_header = cert_table(&[(VCEK_GUID, b"abc")]);
    into_header[16..20].copy_from_slice(&0u32.to_le_bytes());
    assert!(parse_cert_table(&into_header).is_err());
    // Too many entries.
    let many: Vec<([u8; 16], &[u8])> = (0..=MAX_CERT_ENTRIES)
        .map(|_| (VCEK_GUID, &b"x"[..]))
        .collect();
    assert!(parse_cert_table(&cert_table(&many))
        .unwrap_err()
        .to_string()
        .contains("more than"));
    let most: Vec<([u8; 16], &[u8])> = (0..MAX_CERT_ENTRIES)
        .map(|_| (VCEK_GUID, &b"x"[..]))
        .collect();
    assert_eq!(
        parse_cert_table(&cert_table(&most)).unwrap().len(),
        MAX_CERT_ENTRIES
    );
    // No terminator.
    let mut unterminated = Vec::new();
    unterminated.extend_from_slice(&VCEK_GUID);
    unterminated.extend_from_slice(&0u32.to_le_bytes());
    unterminated.extend_from_slice(&0u32.to_le_bytes());
    assert!(parse_cert_table(&unterminated)
        .unwrap_err()
        .to_string()
        .contains("terminating"));
    // Truncated entry.
    assert!(parse_cert_table(&VCEK_GUID[..10]).is_err());
}

#[test]
fn vector_vcek_matches_its_report() {
    let report = parse_report(REPORT).unwrap();
    check_vek_matches_report(VCEK, &report, ProductLine::Milan).unwrap();
}

#[test]
fn vcek_for_other_tcb_or_chip_is_rejected() {
    let report = parse_report(REPORT).unwrap();
    // A report claiming a newer microcode SPL than the VCEK was issued for.
    let mut newer = report.clone();
    newer.reported_tcb = u64::from_le_bytes({
        let mut tcb = report.reported_tcb.to_le_bytes();
        tcb[7] = tcb[7].wrapping_add(1);
        tcb
    });
    let err = check_vek_matches_report(VCEK, &newer, ProductLine::Milan).unwrap_err();
    assert!(err.to_string().contains("ucodeSPL"), "{err}");
    let mut other_chip = report.clone();
    other_chip.chip_id[0] ^= 1;
    let err = check_vek_matches_report(VCEK, &other_chip, ProductLine::Milan).unwrap_err();
    assert!(err.to_string().contains("hwID"), "{err}");
    // A masked chip ID does not match against hwID.
    let mut masked = report.clone();
    masked.chip_id = [0; 64];
    check_vek_matches_report(VCEK, &masked, ProductLine::Milan).unwrap();
}

#[test]
fn der_small_uint_decoding() {
    assert_eq!(der_small_uint(&[2, 1, 10]), Some(10));
    assert_eq!(der_small_uint(&[2, 2, 0, 200]), Some(200));
    assert_eq!(der_small_uint(&[2, 1, 0]), Some(0));
    assert_eq!(der_small_uint(&[2, 2, 1, 0]), None);
    assert_eq!(der_small_uint(&[2, 1, 0x80]), None);
    assert_eq!(der_small_uint(&[4, 1, 10]), None);
    assert_eq!(der_small_uint(&[2, 3, 10]), None);
    assert_eq!(der_small_uint(&[]), None);
}
