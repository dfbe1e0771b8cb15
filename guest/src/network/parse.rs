//! Request parsing shared by the network RPCs: addresses, prefixes, MACs, link names. Everything
//! is checked before the kernel sees any of it, and a bad field is named by its request path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::AddressFamily;
use vigil_protos::types::IPFamily;

use crate::error::{invalid, Result};

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub(crate) ip: IpAddr,
    pub(crate) prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

pub(super) fn max_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

pub(super) fn parse_ip(field: &str, text: &str) -> Result<IpAddr> {
    text.parse()
        .map_err(|_| invalid(field, format!("{text:?} is not an IP address")))
}

pub(super) fn parse_prefix(field: &str, text: &str, ip: &IpAddr) -> Result<u8> {
    let max = max_prefix(ip);
    match text.parse::<u8>() {
        Ok(p) if p <= max => Ok(p),
        _ => Err(invalid(
            field,
            format!("{text:?} is not a prefix length (0-{max} for {ip})"),
        )),
    }
}

/// `a.b.c.d/len` or `x::y/len`; a bare address is a host route. Host bits must be zero, since
/// the kernel refuses such a destination anyway and the caller should learn which one it was.
pub(super) fn parse_network(field: &str, text: &str) -> Result<Cidr> {
    let (ip_text, prefix_text) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text, None),
    };
    let ip = parse_ip(field, ip_text)?;
    let prefix = match prefix_text {
        Some(p) => parse_prefix(field, p, &ip)?,
        None => max_prefix(&ip),
    };
    if masked(ip, prefix) != ip {
        return Err(invalid(
            field,
            format!(
                "{text:?} has host bits set (the network is {}/{prefix})",
                masked(ip, prefix)
            ),
        ));
    }
    Ok(Cidr { ip, prefix })
}

pub(super) fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// Six hexadecimal octets separated by `:` (or `-`), in either case.
pub(super) fn parse_mac(field: &str, text: &str) -> Result<[u8; 6]> {
    let bad = || {
        invalid(
            field,
            format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
        )
    };
    let mut mac = [0u8; 6];
    let mut octets = text.split([':', '-']);
    for byte in mac.iter_mut() {
        let octet = octets.next().ok_or_else(bad)?;
        if octet.is_empty() || octet.len() > 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(octet, 16).map_err(|_| bad())?;
    }
    if octets.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

pub(super) fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Linux interface names: 1-15 bytes, no `/`, no whitespace, not `.` or `..`.
pub(super) fn check_link_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} is not a valid interface name"),
        ))
    }
}

pub(super) fn family_of(ip: &IpAddr) -> IPFamily {
    if ip.is_ipv4() {
        IPFamily::v4
    } else {
        IPFamily::v6
    }
}

pub(super) fn address_family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GuestError;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_with_their_prefix_and_refuse_host_bits() {
        assert_eq!(
            parse_network("f", "10.1.0.0/16").unwrap(),
            Cidr {
                ip: ip("10.1.0.0"),
                prefix: 16
            }
        );
        assert_eq!(
            parse_network("f", "fd00::/8").unwrap(),
            Cidr {
                ip: ip("fd00::"),
                prefix: 8
            }
        );
        // A bare address is a host route.
        assert_eq!(parse_network("f", "10.1.2.3").unwrap().prefix, 32);
        assert_eq!(parse_network("f", "::1").unwrap().prefix, 128);
        let e = parse_network("routes[1].dest", "10.1.2.3/16")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("routes[1].dest:") && e.contains("10.1.0.0/16"),
            "{e}"
        );
        for bad in [
            "10.1.0.0/33",
            "10.1.0/16",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            let e = parse_network("routes[0].dest", bad).unwrap_err();
            assert!(
                matches!(&e, GuestError::InvalidArgument(m) if m.starts_with("routes[0].dest")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn macs_parse_in_either_case_and_refuse_anything_else() {
        assert_eq!(
            parse_mac("f", "02:AB:cd:00:0e:F1").unwrap(),
            [2, 0xab, 0xcd, 0, 0xe, 0xf1]
        );
        assert_eq!(
            parse_mac("f", "02-ab-cd-00-0e-f1").unwrap(),
            [2, 0xab, 0xcd, 0, 0xe, 0xf1]
        );
        for bad in [
            "",
            "02:ab:cd:00:0e",
            "02:ab:cd:00:0e:f1:00",
            "02:ab:cd:00:0e:g1",
            "002:ab:cd:00:0e:f1",
            "02::cd:00:0e:f1",
        ] {
            assert!(parse_mac("f", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            format_mac(&[2, 0xab, 0xcd, 0, 0xe, 0xf1]),
            "02:ab:cd:00:0e:f1"
        );
    }

    #[test]
    fn masking_keeps_the_network_part() {
        assert_eq!(masked(ip("10.1.2.3"), 24), ip("10.1.2.0"));
        assert_eq!(masked(ip("10.1.2.3"), 0), ip("0.0.0.0"));
        assert_eq!(masked(ip("10.1.2.3"), 32), ip("10.1.2.3"));
        assert_eq!(masked(ip("fd00::1:2"), 112), ip("fd00::1:0"));
        assert_eq!(masked(ip("fd00::1"), 0), ip("::"));
    }
}
