//! Throwaway TLS material for tests and demos (rcgen, ring backend).

/// A fresh CA and a server certificate for `ip` signed by it:
/// `(ca_pem, server_cert_pem, server_key_pem)`.
pub fn make_ca_and_server_cert(ip: std::net::IpAddr) -> Result<(String, String, String), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let e = |e: rcgen::Error| format!("certificate generation failed: {e}");
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "vigil test KBS CA");
    let ca = ca_params.self_signed(&ca_key).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    params.subject_alt_names = vec![SanType::IpAddress(ip)];
    params
        .distinguished_name
        .push(DnType::CommonName, "vigil test KBS");
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(e)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}
