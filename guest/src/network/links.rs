//! `UpdateInterface` and `ListInterfaces`: links found by MAC (or name), their addresses, MTU,
//! name and flags; a hot-plugged NIC is awaited on the kernel's link announcements.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use vigil_protos::types::{IPAddress, Interface};

use super::netlink::{errno, kernel, set_receive_timeout, Netlink};
use super::parse::{
    address_family, check_link_name, family_of, format_mac, parse_ip, parse_mac, parse_prefix, Cidr,
};
use crate::error::{invalid, GuestError, Result};

/// The checked contents of an `UpdateInterface` request.
#[derive(Debug)]
pub(super) struct WantedInterface {
    mac: Option<[u8; 6]>,
    /// The name to give the link; empty keeps the current one.
    name: String,
    /// `None` keeps the current MTU (Kata's runtime always sends one).
    mtu: Option<u32>,
    addresses: Vec<Cidr>,
    noarp: bool,
    /// Where a hot-plugged NIC sits (`interface.devicePath`): its link may not exist yet.
    device_path: Option<String>,
}

impl WantedInterface {
    pub(super) fn parse(iface: &Interface) -> Result<WantedInterface> {
        let mac = if iface.hwAddr.is_empty() {
            None
        } else {
            Some(parse_mac("interface.hwAddr", &iface.hwAddr)?)
        };
        if mac.is_none() && iface.name.is_empty() {
            return Err(invalid(
                "interface",
                "neither hwAddr nor name says which link to update",
            ));
        }
        if !iface.name.is_empty() {
            check_link_name("interface.name", &iface.name)?;
        }
        let mtu = match iface.mtu {
            0 => None,
            m => Some(
                u32::try_from(m)
                    .map_err(|_| invalid("interface.mtu", format!("{m} is too large")))?,
            ),
        };
        let mut addresses = Vec::new();
        for (i, a) in iface.IPAddresses.iter().enumerate() {
            let field = format!("interface.IPAddresses[{i}]");
            let ip = parse_ip(&format!("{field}.address"), &a.address)?;
            if ip.is_loopback() {
                return Err(invalid(
                    &format!("{field}.address"),
                    format!("{ip} is a loopback address, which belongs to the guest's lo"),
                ));
            }
            let prefix = parse_prefix(&format!("{field}.mask"), &a.mask, &ip)?;
            if a.family.value() != family_of(&ip) as i32 {
                return Err(invalid(
                    &format!("{field}.family"),
                    format!("{:?} does not match the address {ip}", a.family),
                ));
            }
            let cidr = Cidr { ip, prefix };
            if !addresses.contains(&cidr) {
                addresses.push(cidr);
            }
        }
        Ok(WantedInterface {
            mac,
            name: iface.name.clone(),
            mtu,
            addresses,
            noarp: iface.raw_flags & libc::IFF_NOARP as u32 != 0,
            device_path: Some(iface.devicePath.clone()).filter(|p| !p.is_empty()),
        })
    }
}

pub(super) fn link_name(link: &LinkMessage) -> &str {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.as_str()),
            _ => None,
        })
        .unwrap_or_default()
}

pub(super) fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    })
}

/// The index of the pod link named `name` (`field` is the request field that named it). The
/// loopback link is refused: see [`refuse_loopback`].
pub(super) fn pod_link_index(links: &[LinkMessage], name: &str, field: &str) -> Result<u32> {
    let link = links
        .iter()
        .find(|l| link_name(l) == name)
        .ok_or_else(|| GuestError::NotFound(format!("{field}: no link is named {name:?}")))?;
    refuse_loopback(link, field)?;
    Ok(link.header.index)
}

/// The loopback link is the guest's own: the agent's workload API and every local service
/// listen on it, so the host may not change its addresses, routes, neighbours, name or state.
pub(super) fn refuse_loopback(link: &LinkMessage, field: &str) -> Result<()> {
    if link.header.flags.contains(LinkFlags::Loopback) {
        return Err(invalid(
            field,
            format!(
                "{} is the loopback link, which the host may not change",
                link_name(link)
            ),
        ));
    }
    Ok(())
}

pub(super) fn address_ip(a: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point
    // links and the same as IFA_LOCAL elsewhere (IPv6 sends only IFA_ADDRESS).
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

pub(super) fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

pub(super) fn to_interface(link: &LinkMessage, addresses: &[AddressMessage]) -> Interface {
    let ips = addresses
        .iter()
        .filter(|a| a.header.index == link.header.index)
        .filter_map(|a| {
            let ip = address_ip(a)?;
            Some(IPAddress {
                family: family_of(&ip).into(),
                address: ip.to_string(),
                mask: a.header.prefix_len.to_string(),
                ..Default::default()
            })
        })
        .collect();
    let mut iface = Interface {
        name: link_name(link).to_string(),
        hwAddr: link_mac(link).map(format_mac).unwrap_or_default(),
        IPAddresses: ips,
        raw_flags: link.header.flags.bits(),
        ..Default::default()
    };
    for a in &link.attributes {
        match a {
            LinkAttribute::Mtu(mtu) => iface.mtu = u64::from(*mtu),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        iface.type_ = match kind {
                            InfoKind::Other(name) => name.clone(),
                            k => k.to_string(),
                        };
                    }
                }
            }
            _ => {}
        }
    }
    iface
}

pub(super) fn list_interfaces(nl: &mut Netlink) -> Result<Vec<Interface>> {
    let links = nl.links()?;
    let addresses = nl.addresses()?;
    Ok(links.iter().map(|l| to_interface(l, &addresses)).collect())
}

/// Sets a link's name (which the kernel allows only while it is down) and flags.
pub(super) fn set_link(
    nl: &mut Netlink,
    index: u32,
    name: Option<&str>,
    mtu: Option<u32>,
    flags: LinkFlags,
    change: LinkFlags,
) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = flags;
    m.header.change_mask = change;
    if let Some(name) = name {
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
    }
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    nl.apply(RouteNetlinkMessage::SetLink(m), 0)
}

/// How long `UpdateInterface` waits for a hot-plugged NIC (a request with `devicePath`) to
/// appear; Kata's agent likewise waits for the device before configuring it.
pub(super) const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) fn has_mac(links: &[LinkMessage], mac: &[u8; 6]) -> bool {
    links.iter().any(|l| link_mac(l) == Some(&mac[..]))
}

/// Waits for a link with `mac`, up to [`HOTPLUG_TIMEOUT`]; false if none appeared.
pub(super) fn wait_for_link(nl: &mut Netlink, mac: &[u8; 6]) -> Result<bool> {
    let deadline = Instant::now() + HOTPLUG_TIMEOUT;
    // Subscribe first, then look: a link added before is in the list, one added after is
    // announced.
    let watcher = LinkWatcher::open()
        .map_err(|e| GuestError::Internal(format!("watching for new links: {e}")))?;
    if has_mac(&nl.links()?, mac) {
        return Ok(true);
    }
    watcher
        .wait_for(mac, deadline)
        .map_err(|e| GuestError::Internal(format!("watching for new links: {e}")))
}

pub(super) fn update_interface(nl: &mut Netlink, wanted: &WantedInterface) -> Result<Interface> {
    let mut links = nl.links()?;
    if let (Some(mac), Some(_)) = (&wanted.mac, &wanted.device_path) {
        if !has_mac(&links, mac) && wait_for_link(nl, mac)? {
            links = nl.links()?;
        }
    }
    let link = match wanted.mac {
        Some(mac) => {
            let mut matching = links.iter().filter(|l| link_mac(l) == Some(&mac[..]));
            // Several links may share a MAC (a VLAN and its parent): the named one wins.
            let first = matching.next();
            first
                .into_iter()
                .chain(matching)
                .find(|l| link_name(l) == wanted.name)
                .or(first)
                .ok_or_else(|| {
                    let waited = match &wanted.device_path {
                        Some(path) => format!(
                            ", and none appeared within {}s for the device at {path}",
                            HOTPLUG_TIMEOUT.as_secs()
                        ),
                        None => String::new(),
                    };
                    GuestError::NotFound(format!(
                        "no link has the hardware address {} (interface.hwAddr){waited}",
                        format_mac(&mac)
                    ))
                })?
        }
        None => links
            .iter()
            .find(|l| link_name(l) == wanted.name)
            .ok_or_else(|| {
                GuestError::NotFound(format!(
                    "no link is named {:?} (interface.name; no hwAddr given)",
                    wanted.name
                ))
            })?,
    };
    refuse_loopback(link, "interface")?;
    let index = link.header.index;
    let old_name = link_name(link).to_string();
    // Taking the loopback's name would rename it (the names are swapped below).
    if !wanted.name.is_empty() && wanted.name != old_name {
        if let Some(holder) = links
            .iter()
            .find(|l| l.header.index != index && link_name(l) == wanted.name)
        {
            refuse_loopback(holder, "interface.name")?;
        }
    }
    let shown = if wanted.name.is_empty() {
        old_name.clone()
    } else {
        wanted.name.clone()
    };

    // Addresses: drop those not asked for, add the missing ones. The kernel's own IPv6
    // link-local address stays: neighbour discovery needs it, and Kata's agent gets it back
    // only because it cycles the link down and up.
    let existing: Vec<AddressMessage> = nl
        .addresses()?
        .into_iter()
        .filter(|a| a.header.index == index)
        .collect();
    for a in &existing {
        let Some(ip) = address_ip(a) else { continue };
        let cidr = Cidr {
            ip,
            prefix: a.header.prefix_len,
        };
        if wanted.addresses.contains(&cidr) || is_ipv6_link_local(&ip) {
            continue;
        }
        match nl.apply(RouteNetlinkMessage::DelAddress(a.clone()), 0) {
            // Already gone: removing an IPv4 primary address takes its secondaries with it.
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
            result => {
                result.map_err(|e| kernel(format_args!("removing {cidr} from {old_name}"), e))?
            }
        }
    }
    // Read again: a wanted secondary may have gone with its primary.
    let existing: Vec<AddressMessage> = nl
        .addresses()?
        .into_iter()
        .filter(|a| a.header.index == index)
        .collect();
    for cidr in &wanted.addresses {
        let present = existing
            .iter()
            .any(|a| address_ip(a) == Some(cidr.ip) && a.header.prefix_len == cidr.prefix);
        if present {
            continue;
        }
        nl.apply(
            RouteNetlinkMessage::NewAddress(address_message(index, cidr)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(|e| kernel(format_args!("adding {cidr} to {old_name}"), e))?;
    }

    // Renaming: the kernel renames only links that are down. If another link already has the
    // wanted name, the two swap names (as Kata's agent does).
    let rename = !wanted.name.is_empty() && wanted.name != old_name;
    if rename {
        if link.header.flags.contains(LinkFlags::Up) {
            set_link(nl, index, None, None, LinkFlags::empty(), LinkFlags::Up)
                .map_err(|e| kernel(format_args!("bringing {old_name} down to rename it"), e))?;
        }
        let holder = links
            .iter()
            .find(|l| l.header.index != index && link_name(l) == wanted.name);
        if let Some(holder) = holder {
            let temp = format!("vgtmp{}", holder.header.index);
            let was_up = holder.header.flags.contains(LinkFlags::Up);
            set_link(
                nl,
                holder.header.index,
                Some(&temp),
                None,
                LinkFlags::empty(),
                LinkFlags::Up,
            )
            .map_err(|e| {
                kernel(
                    format_args!("moving {} aside to free its name", wanted.name),
                    e,
                )
            })?;
            set_link(
                nl,
                index,
                Some(&wanted.name),
                None,
                LinkFlags::empty(),
                LinkFlags::empty(),
            )
            .map_err(|e| kernel(format_args!("renaming {old_name} to {}", wanted.name), e))?;
            let up = if was_up {
                LinkFlags::Up
            } else {
                LinkFlags::empty()
            };
            set_link(
                nl,
                holder.header.index,
                Some(&old_name),
                None,
                up,
                LinkFlags::Up,
            )
            .map_err(|e| {
                kernel(
                    format_args!("renaming the former {} to {old_name}", wanted.name),
                    e,
                )
            })?;
        }
    }

    let mut flags = LinkFlags::Up;
    if wanted.noarp {
        flags |= LinkFlags::Noarp;
    }
    set_link(
        nl,
        index,
        rename.then_some(wanted.name.as_str()),
        wanted.mtu,
        flags,
        LinkFlags::Up | LinkFlags::Noarp,
    )
    .map_err(|e| {
        kernel(
            match wanted.mtu {
                Some(mtu) => {
                    format!("setting mtu {mtu} on {shown} (interface.mtu) and bringing it up")
                }
                None => format!("bringing {shown} up"),
            },
            e,
        )
    })?;

    let links = nl.links()?;
    let addresses = nl.addresses()?;
    let link = links
        .iter()
        .find(|l| l.header.index == index)
        .ok_or_else(|| GuestError::Internal(format!("{shown} vanished while being configured")))?;
    Ok(to_interface(link, &addresses))
}

pub(super) fn address_message(index: u32, cidr: &Cidr) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = address_family(&cidr.ip);
    m.header.prefix_len = cidr.prefix;
    m.header.index = index;
    match cidr.ip {
        IpAddr::V4(v4) => {
            m.attributes.push(AddressAttribute::Local(cidr.ip));
            m.attributes.push(AddressAttribute::Address(cidr.ip));
            // The subnet's broadcast address, as `ip addr add ... brd +` would set it.
            if cidr.prefix < 31 {
                let host_bits = u32::MAX >> cidr.prefix;
                let brd = Ipv4Addr::from(u32::from(v4) | host_bits);
                m.attributes.push(AddressAttribute::Broadcast(brd));
            }
        }
        IpAddr::V6(_) => m.attributes.push(AddressAttribute::Address(cidr.ip)),
    }
    m
}

/// Link announcements from the kernel (multicast group RTNLGRP_LINK), to wait for a
/// hot-plugged NIC without polling.
pub(super) struct LinkWatcher {
    socket: Socket,
}

impl LinkWatcher {
    pub(super) fn open() -> io::Result<LinkWatcher> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(libc::RTNLGRP_LINK)?;
        Ok(LinkWatcher { socket })
    }

    /// Waits until a link with `mac` is announced; false once `deadline` passes first.
    pub(super) fn wait_for(&self, mac: &[u8; 6], deadline: Instant) -> io::Result<bool> {
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(false);
            };
            set_receive_timeout(&self.socket, left)?;
            let datagram = match self.socket.recv_from_full() {
                Ok((d, _)) => d,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            let mut offset = 0;
            while offset < datagram.len() {
                let bytes = &datagram[offset..];
                let Ok(buffer) = NetlinkBuffer::new_checked(bytes) else {
                    break;
                };
                let length = buffer.length() as usize;
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
                if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                    if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) =
                        message.payload
                    {
                        if link_mac(&link) == Some(&mac[..]) {
                            return Ok(true);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_protos::types::IPFamily;

    fn iface(mac: &str, addrs: &[(&str, &str)]) -> Interface {
        Interface {
            hwAddr: mac.into(),
            name: "eth0".into(),
            mtu: 1400,
            IPAddresses: addrs
                .iter()
                .map(|(a, m)| IPAddress {
                    family: a.parse().map_or(IPFamily::v4, |ip| family_of(&ip)).into(),
                    address: a.to_string(),
                    mask: m.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn interface_requests_are_checked_field_by_field() {
        let ok = WantedInterface::parse(&iface(
            "02:00:00:00:00:01",
            &[("10.0.0.2", "24"), ("fd00::2", "64")],
        ))
        .unwrap();
        assert_eq!(ok.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(ok.mtu, Some(1400));
        assert_eq!(ok.addresses.len(), 2);
        assert!(!ok.noarp);

        let bad = |i: Interface, field: &str| {
            let e = WantedInterface::parse(&i).unwrap_err();
            assert!(
                matches!(&e, GuestError::InvalidArgument(m) if m.starts_with(field)),
                "{field}: {e}"
            );
        };
        bad(iface("02:00:00:00:00", &[]), "interface.hwAddr");
        bad(
            iface("02:00:00:00:00:01", &[("10.0.0.300", "24")]),
            "interface.IPAddresses[0].address",
        );
        bad(
            iface(
                "02:00:00:00:00:01",
                &[("10.0.0.2", "24"), ("10.0.0.3", "33")],
            ),
            "interface.IPAddresses[1].mask",
        );
        bad(
            iface("02:00:00:00:00:01", &[("10.0.0.2", "255.255.255.0")]),
            "interface.IPAddresses[0].mask",
        );
        let mut wrong_family = iface("02:00:00:00:00:01", &[("10.0.0.2", "24")]);
        wrong_family.IPAddresses[0].family = IPFamily::v6.into();
        bad(wrong_family, "interface.IPAddresses[0].family");
        bad(
            iface("02:00:00:00:00:01", &[("127.0.0.2", "8")]),
            "interface.IPAddresses[0].address",
        );
        bad(
            iface("02:00:00:00:00:01", &[("::1", "128")]),
            "interface.IPAddresses[0].address",
        );
        let mut long_name = iface("02:00:00:00:00:01", &[]);
        long_name.name = "a-very-long-interface-name".into();
        bad(long_name, "interface.name");
        let mut anonymous = iface("", &[]);
        anonymous.name.clear();
        bad(anonymous, "interface");
    }
}
