use super::*;

const QUOTE: &[u8] = include_bytes!("../../../../shared/vectors/tdx/tdx_quote_4.dat");
const TDREPORT: &[u8] = include_bytes!("../../../../shared/vectors/tdx/tdreport_1.bin");

fn at<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    bytes[offset..offset + N].try_into().unwrap()
}

#[test]
fn quote_v4_vector_fields_match_their_offsets() {
    let q = parse_quote(QUOTE).unwrap();
    assert_eq!(q.version, u16::from_le_bytes(at(QUOTE, 0)));
    assert_eq!(q.version, 4);
    assert_eq!(q.tee_type, TEE_TYPE_TDX);
    assert_eq!(q.attestation_key_type, u16::from_le_bytes(at(QUOTE, 2)));
    let body = QUOTE_HEADER_LEN;
    assert_eq!(q.td.mr_td, at::<48>(QUOTE, body + 136));
    assert_eq!(q.td.mr_config_id, at::<48>(QUOTE, body + 184));
    assert_eq!(q.td.report_data, at::<64>(QUOTE, body + 520));
    for i in 0..4 {
        assert_eq!(q.td.rtmrs[i], at::<48>(QUOTE, body + 328 + 48 * i));
    }
    assert_eq!(q.td.mr_config_id.len(), 48);
    assert_eq!(q.td.report_data.len(), 64);
    let sig_len = u32::from_le_bytes(at(QUOTE, body + TD_REPORT10_LEN)) as usize;
    assert_eq!(q.signature_data.len(), sig_len);
    assert_eq!(q.tee_tcb_svn2, None);
}

#[test]
fn quote_parser_tracks_changed_bytes() {
    let mut bytes = QUOTE.to_vec();
    let body = QUOTE_HEADER_LEN;
    bytes[body + 184..body + 232].copy_from_slice(&[0x33; 48]);
    bytes[body + 472..body + 520].copy_from_slice(&[0x44; 48]);
    let q = parse_quote(&bytes).unwrap();
    assert_eq!(q.td.mr_config_id, [0x33; 48]);
    assert_eq!(q.td.rtmrs[3], [0x44; 48]);
}

/// Rewrites the v4 vector as a v5 quote with the given body type.
fn as_v5(body_type: u16) -> Vec<u8> {
    let body_len = if body_type == 3 {
        TD_REPORT15_LEN
    } else {
        TD_REPORT10_LEN
    };
    let mut out = QUOTE[..QUOTE_HEADER_LEN].to_vec();
    out[0..2].copy_from_slice(&5u16.to_le_bytes());
    out.extend_from_slice(&body_type.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&QUOTE[QUOTE_HEADER_LEN..QUOTE_HEADER_LEN + TD_REPORT10_LEN]);
    if body_type == 3 {
        out.extend_from_slice(&[0x55; 16]); // tee_tcb_svn2
        out.extend_from_slice(&[0x66; 48]); // mr_service_td
    }
    out.extend_from_slice(&QUOTE[QUOTE_HEADER_LEN + TD_REPORT10_LEN..]);
    out
}

#[test]
fn quote_v5_both_body_types() {
    let v4 = parse_quote(QUOTE).unwrap();
    for body_type in [2u16, 3] {
        let q = parse_quote(&as_v5(body_type)).unwrap();
        assert_eq!(q.version, 5);
        assert_eq!(q.body_type, body_type);
        assert_eq!(q.td, v4.td);
        assert_eq!(q.signature_data, v4.signature_data);
        if body_type == 3 {
            assert_eq!(q.tee_tcb_svn2, Some([0x55; 16]));
            assert_eq!(q.mr_service_td, Some([0x66; 48]));
        }
    }
    let mut bad = as_v5(3);
    bad[48..50].copy_from_slice(&9u16.to_le_bytes());
    assert!(parse_quote(&bad)
        .unwrap_err()
        .to_string()
        .contains("body type 9"));
    let mut bad_size = as_v5(2);
    bad_size[50..54].copy_from_slice(&100u32.to_le_bytes());
    assert!(parse_quote(&bad_size).is_err());
}

#[test]
fn truncated_or_foreign_quotes_are_errors() {
    for len in [0, 4, 47, 48, 300, 632, 635, QUOTE.len() - 1] {
        assert!(parse_quote(&QUOTE[..len]).is_err(), "length {len}");
    }
    let mut sgx = QUOTE.to_vec();
    sgx[4..8].copy_from_slice(&0u32.to_le_bytes());
    assert!(parse_quote(&sgx)
        .unwrap_err()
        .to_string()
        .contains("tee_type"));
    let mut v3 = QUOTE.to_vec();
    v3[0..2].copy_from_slice(&3u16.to_le_bytes());
    assert!(parse_quote(&v3)
        .unwrap_err()
        .to_string()
        .contains("version 3"));
    let mut huge_sig = QUOTE.to_vec();
    let at = QUOTE_HEADER_LEN + TD_REPORT10_LEN;
    huge_sig[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(parse_quote(&huge_sig)
        .unwrap_err()
        .to_string()
        .contains("does not fit"));
}

#[test]
fn tdreport_vector_fields_match_their_offsets() {
    let r = parse_tdreport(TDREPORT).unwrap();
    assert_eq!(r.report_type[0], 0x81);
    assert_eq!(r.td.report_data, at::<64>(TDREPORT, 128));
    assert_eq!(r.td.mr_td, at::<48>(TDREPORT, 528));
    assert_eq!(r.td.mr_config_id, at::<48>(TDREPORT, 576));
    assert_eq!(r.td.rtmrs[0], at::<48>(TDREPORT, 720));
    assert_eq!(r.td.rtmrs[3], at::<48>(TDREPORT, 864));
    assert_eq!(r.mac, at::<32>(TDREPORT, 224));
    // The vector's MRTD is a real, non-zero measurement.
    assert_ne!(r.td.mr_td, [0; 48]);
}

#[test]
fn tdreport_parser_tracks_changed_bytes_and_rejects_bad_input() {
    let mut bytes = TDREPORT.to_vec();
    bytes[576..624].copy_from_slice(&[0x77; 48]);
    assert_eq!(parse_tdreport(&bytes).unwrap().td.mr_config_id, [0x77; 48]);
    for len in [0, 128, 1023, 1025] {
        let input = vec![0x81; len];
        assert!(parse_tdreport(&input).is_err(), "length {len}");
    }
    bytes[0] = 0x00; // SGX report type
    assert!(parse_tdreport(&bytes)
        .unwrap_err()
        .to_string()
        .contains("report type"));
}
