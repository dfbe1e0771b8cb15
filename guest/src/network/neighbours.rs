//! `AddARPNeighbors`: neighbour entries added or replaced, permanent unless a state is given.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::RouteNetlinkMessage;
use vigil_protos::types::ARPNeighbor;

use super::links::pod_link_index;
use super::netlink::{kernel, Netlink};
use super::parse::{address_family, check_link_name, parse_ip, parse_mac};
use crate::error::{invalid, Result};

/// One checked entry of an `AddARPNeighbors` request.
#[derive(Debug, Clone)]
pub(super) struct ParsedNeighbour {
    index: usize,
    ip: IpAddr,
    device: String,
    lladdr: Option<[u8; 6]>,
    state: u16,
    flags: u8,
}

impl ParsedNeighbour {
    pub(super) fn parse(index: usize, n: &ARPNeighbor) -> Result<ParsedNeighbour> {
        let field = |name: &str| format!("neighbors[{index}].{name}");
        let address = n
            .toIPAddress
            .as_ref()
            .map(|a| a.address.as_str())
            .unwrap_or_default();
        if address.is_empty() {
            return Err(invalid(&field("toIPAddress.address"), "missing"));
        }
        let ip = parse_ip(&field("toIPAddress.address"), address)?;
        if n.device.is_empty() {
            return Err(invalid(&field("device"), "missing"));
        }
        check_link_name(&field("device"), &n.device)?;
        let lladdr = if n.lladdr.is_empty() {
            None
        } else {
            Some(parse_mac(&field("lladdr"), &n.lladdr)?)
        };
        let state = match n.state {
            // Kata's default: an entry that never expires.
            0 => libc::NUD_PERMANENT,
            s => u16::try_from(s)
                .map_err(|_| invalid(&field("state"), format!("{s} is not a neighbour state")))?,
        };
        let flags = u8::try_from(n.flags).map_err(|_| {
            invalid(
                &field("flags"),
                format!("{} is not a neighbour flag set", n.flags),
            )
        })?;
        Ok(ParsedNeighbour {
            index,
            ip,
            device: n.device.clone(),
            lladdr,
            state,
            flags,
        })
    }
}

pub(super) fn add_neighbours(nl: &mut Netlink, neighbours: &[ParsedNeighbour]) -> Result<()> {
    let links = nl.links()?;
    let mut resolved = Vec::with_capacity(neighbours.len());
    for n in neighbours {
        let index = pod_link_index(&links, &n.device, &format!("neighbors[{}].device", n.index))?;
        resolved.push((n, index));
    }
    for (n, index) in resolved {
        let mut m = NeighbourMessage::default();
        m.header.family = address_family(&n.ip);
        m.header.ifindex = index;
        m.header.state = NeighbourState::from(n.state);
        m.header.flags = NeighbourFlags::from_bits_retain(n.flags);
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                n.ip,
            )));
        if let Some(mac) = n.lladdr {
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        nl.apply(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(|e| {
            let done = if n.index == 0 {
                String::new()
            } else {
                format!(" (neighbors[0..{}] were added)", n.index)
            };
            kernel(
                format_args!("neighbors[{}] ({} dev {}){done}", n.index, n.ip, n.device),
                e,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_protos::types::IPAddress;

    #[test]
    fn neighbours_default_to_permanent_and_are_checked() {
        let n = ARPNeighbor {
            toIPAddress: protobuf::MessageField::some(IPAddress {
                address: "10.0.0.9".into(),
                ..Default::default()
            }),
            device: "eth0".into(),
            lladdr: "02:00:00:00:00:09".into(),
            ..Default::default()
        };
        let p = ParsedNeighbour::parse(0, &n).unwrap();
        assert_eq!(p.state, libc::NUD_PERMANENT);
        assert_eq!(p.lladdr, Some([2, 0, 0, 0, 0, 9]));
        let e = ParsedNeighbour::parse(
            3,
            &ARPNeighbor {
                lladdr: "zz".into(),
                ..n.clone()
            },
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("neighbors[3].lladdr"), "{e}");
        let e = ParsedNeighbour::parse(
            1,
            &ARPNeighbor {
                toIPAddress: Default::default(),
                ..n
            },
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("neighbors[1].toIPAddress.address"),
            "{e}"
        );
    }
}
