//! `UpdateRoutes` and `ListRoutes` on the main table. An update replaces the routes of the
//! devices it names and is undone when the kernel refuses one of its routes.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use vigil_protos::types::{IPFamily, Route};

use super::links::{link_name, pod_link_index};
use super::netlink::{errno, kernel, Netlink};
use super::parse::{
    address_family, check_link_name, family_of, parse_ip, parse_network, parse_prefix, Cidr,
};
use crate::error::{invalid, GuestError, Result};

/// One checked route of an `UpdateRoutes` request (its device is resolved later).
#[derive(Debug, Clone)]
pub(super) struct ParsedRoute {
    index: usize,
    dest: Cidr,
    gateway: Option<IpAddr>,
    device: String,
    source: Option<Source>,
    scope: u8,
    onlink: bool,
    /// Path MTU of the route (RTAX_MTU); 0 leaves it to the device.
    mtu: u32,
}

/// The largest route MTU the kernel stores; it would silently cap a larger one.
pub(super) const MAX_ROUTE_MTU: u32 = 65535 - 15;

#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    /// `src` of `ip route`: the address preferred for packets sent along this route.
    Preferred(IpAddr),
    /// A source prefix the route applies to (IPv6 source routing).
    Prefix(Cidr),
}

impl ParsedRoute {
    pub(super) fn parse(index: usize, r: &Route) -> Result<ParsedRoute> {
        let field = |name: &str| format!("routes[{index}].{name}");
        let family = match r.family.enum_value() {
            Ok(f) => f,
            Err(v) => return Err(invalid(&field("family"), format!("unknown family {v}"))),
        };
        let check_family = |name: &str, ip: &IpAddr| {
            if family_of(ip) == family {
                Ok(())
            } else {
                Err(invalid(
                    &field(name),
                    format!("{ip} is not an {family:?} address, as family says"),
                ))
            }
        };
        let dest = if r.dest.is_empty() || r.dest == "default" {
            let any = match family {
                IPFamily::v4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IPFamily::v6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            Cidr { ip: any, prefix: 0 }
        } else {
            let dest = parse_network(&field("dest"), &r.dest)?;
            let loopback = match dest.ip {
                IpAddr::V4(v4) => v4.octets()[0] == 127 && dest.prefix >= 8,
                IpAddr::V6(v6) => v6.is_loopback(),
            };
            if loopback {
                return Err(invalid(
                    &field("dest"),
                    format!(
                        "{} is in the loopback range, which stays the guest's",
                        r.dest
                    ),
                ));
            }
            check_family("dest", &dest.ip)?;
            dest
        };
        let gateway = if r.gateway.is_empty() {
            None
        } else {
            let gw = parse_ip(&field("gateway"), &r.gateway)?;
            if gw.is_loopback() {
                return Err(invalid(
                    &field("gateway"),
                    format!("{gw} is a loopback address"),
                ));
            }
            check_family("gateway", &gw)?;
            Some(gw)
        };
        if r.device.is_empty() {
            return Err(invalid(&field("device"), "missing"));
        }
        check_link_name(&field("device"), &r.device)?;
        // Kata's runtime sends the preferred source as a bare address; a prefix of zero means
        // the same in Kata's agent.
        let source = if r.source.is_empty() {
            None
        } else {
            let (ip_text, prefix) = match r.source.split_once('/') {
                Some((ip, p)) => (ip, Some(p)),
                None => (r.source.as_str(), None),
            };
            let ip = parse_ip(&field("source"), ip_text)?;
            check_family("source", &ip)?;
            match prefix {
                None => Some(Source::Preferred(ip)),
                Some(p) => match parse_prefix(&field("source"), p, &ip)? {
                    0 => Some(Source::Preferred(ip)),
                    _ => Some(Source::Prefix(parse_network(&field("source"), &r.source)?)),
                },
            }
        };
        let scope = u8::try_from(r.scope).map_err(|_| {
            invalid(
                &field("scope"),
                format!("{} is not a scope (0-255)", r.scope),
            )
        })?;
        if r.mtu > MAX_ROUTE_MTU {
            return Err(invalid(
                &field("mtu"),
                format!(
                    "{} is above the kernel's route MTU limit {MAX_ROUTE_MTU}",
                    r.mtu
                ),
            ));
        }
        Ok(ParsedRoute {
            index,
            dest,
            gateway,
            device: r.device.clone(),
            source,
            scope,
            mtu: r.mtu,
            // Only RTNH_F_ONLINK changes how a route is added; the other bits are state the
            // kernel reports (dead, linkdown, ...), which a runtime may copy from the host.
            onlink: RouteFlags::from_bits_retain(r.flags).contains(RouteFlags::Onlink),
        })
    }

    pub(super) fn describe(&self) -> String {
        let mut s = if self.dest.prefix == 0 {
            "default".to_string()
        } else {
            self.dest.to_string()
        };
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        s.push_str(&format!(" dev {}", self.device));
        s
    }

    pub(super) fn message(&self, link_index: u32) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = address_family(&self.dest.ip);
        m.header.destination_prefix_length = self.dest.prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        // Kata's agent marks the routes it adds as installed at boot.
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::from(self.scope);
        m.header.kind = RouteType::Unicast;
        if self.onlink {
            m.header.flags = RouteFlags::Onlink;
        }
        if self.dest.prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(self.dest.ip.into()));
        }
        m.attributes.push(RouteAttribute::Oif(link_index));
        if let Some(gw) = self.gateway {
            m.attributes.push(RouteAttribute::Gateway(gw.into()));
        }
        match self.source {
            Some(Source::Preferred(ip)) => m.attributes.push(RouteAttribute::PrefSource(ip.into())),
            Some(Source::Prefix(c)) => {
                m.header.source_prefix_length = c.prefix;
                m.attributes.push(RouteAttribute::Source(c.ip.into()));
            }
            None => {}
        }
        if self.mtu != 0 {
            m.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(self.mtu)]));
        }
        m
    }
}

pub(super) fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

pub(super) fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

pub(super) fn route_has_gateway(r: &RouteMessage) -> bool {
    r.attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Gateway(_)))
}

pub(super) fn is_main_table(r: &RouteMessage) -> bool {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// A kernel route in the API's shape. Unlike Kata's agent, which reports every gateway route's
/// destination as `0.0.0.0` (and `::1` for IPv6), `dest` is the real prefix, and empty for a
/// default route — the same convention `UpdateRoutes` accepts.
pub(super) fn to_route(r: &RouteMessage, links: &[LinkMessage]) -> Route {
    let mut route = Route {
        scope: u32::from(u8::from(r.header.scope)),
        family: if r.header.address_family == AddressFamily::Inet6 {
            IPFamily::v6
        } else {
            IPFamily::v4
        }
        .into(),
        flags: r.header.flags.bits(),
        ..Default::default()
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                if let Some(ip) = route_ip(d) {
                    route.dest = format!("{ip}/{}", r.header.destination_prefix_length);
                }
            }
            RouteAttribute::Gateway(g) => {
                if let Some(ip) = route_ip(g) {
                    route.gateway = ip.to_string();
                }
            }
            RouteAttribute::PrefSource(s) => {
                if let Some(ip) = route_ip(s) {
                    route.source = ip.to_string();
                }
            }
            RouteAttribute::Source(s) => {
                if let Some(ip) = route_ip(s) {
                    route.source = format!("{ip}/{}", r.header.source_prefix_length);
                }
            }
            RouteAttribute::Oif(i) => {
                if let Some(l) = links.iter().find(|l| l.header.index == *i) {
                    route.device = link_name(l).to_string();
                }
            }
            RouteAttribute::Metrics(metrics) => {
                for metric in metrics {
                    if let RouteMetric::Mtu(mtu) = metric {
                        route.mtu = *mtu;
                    }
                }
            }
            _ => {}
        }
    }
    route
}

pub(super) fn list_routes(nl: &mut Netlink) -> Result<Vec<Route>> {
    let links = nl.links()?;
    Ok(nl
        .routes()?
        .iter()
        .filter(|r| is_main_table(r))
        .map(|r| to_route(r, &links))
        .collect())
}

pub(super) fn update_routes(nl: &mut Netlink, routes: &[ParsedRoute]) -> Result<Vec<Route>> {
    let links = nl.links()?;
    let mut planned = Vec::with_capacity(routes.len());
    for r in routes {
        let index = pod_link_index(&links, &r.device, &format!("routes[{}].device", r.index))?;
        planned.push((r, r.message(index)));
    }
    // Link routes first, so that the gateways of the others are reachable when they are added.
    planned.sort_by_key(|(r, _)| r.gateway.is_some());
    let devices: BTreeSet<u32> = planned.iter().filter_map(|(_, m)| route_oif(m)).collect();
    // The routes being replaced: the main table's on those devices, except the kernel's own
    // (connected subnets, IPv6 link-local), which follow the addresses. Gateway routes go
    // first, so each deletion leaves a consistent table.
    let mut old: Vec<RouteMessage> = nl
        .routes()?
        .into_iter()
        .filter(|r| {
            is_main_table(r)
                && r.header.protocol != RouteProtocol::Kernel
                && route_oif(r).is_some_and(|i| devices.contains(&i))
        })
        .collect();
    old.sort_by_key(|r| !route_has_gateway(r));

    let mut removed: Vec<RouteMessage> = Vec::new();
    for r in &old {
        if let Err(e) = nl.apply(RouteNetlinkMessage::DelRoute(r.clone()), 0) {
            let undo = restore(nl, &[], &removed);
            return Err(with_undo(
                kernel(
                    format_args!("removing the old route {}", to_route(r, &links).dest),
                    e,
                ),
                undo,
            ));
        }
        removed.push(r.clone());
    }
    let mut added: Vec<RouteMessage> = Vec::new();
    for (r, m) in &planned {
        match nl.apply(
            RouteNetlinkMessage::NewRoute(m.clone()),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => added.push(m.clone()),
            // Already there: a kernel route for a connected subnet, or a duplicate in the
            // request. Kata's agent accepts these too. An MTU the request sets must still
            // take effect, so then the existing route is replaced (and put back on undo).
            Err(e) if errno(&e) == Some(libc::EEXIST) && r.mtu == 0 => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                // A duplicate of a route added above is replaced in place; any other is
                // remembered, so that an undo puts it back as it was.
                let ours = added.iter().any(|a| same_destination(a, m));
                let existing = match nl.routes() {
                    Ok(_) if ours => None,
                    Ok(all) => {
                        let same = |o: &&RouteMessage| same_destination(o, m);
                        let on_device = |o: &&RouteMessage| route_oif(o) == route_oif(m);
                        let found = all.iter().filter(same).find(on_device);
                        found.or_else(|| all.iter().find(same)).cloned()
                    }
                    Err(e) => return Err(with_undo(e, restore(nl, &added, &removed))),
                };
                if let Err(e) = nl.apply(RouteNetlinkMessage::NewRoute(m.clone()), NLM_F_REPLACE) {
                    let undo = restore(nl, &added, &removed);
                    return Err(with_undo(
                        kernel(format_args!("routes[{}] ({})", r.index, r.describe()), e),
                        undo,
                    ));
                }
                if !ours {
                    added.push(m.clone());
                    removed.extend(existing);
                }
            }
            Err(e) => {
                let undo = restore(nl, &added, &removed);
                return Err(with_undo(
                    kernel(format_args!("routes[{}] ({})", r.index, r.describe()), e),
                    undo,
                ));
            }
        }
    }
    list_routes(nl)
}

/// Whether the main-table route `old` has the destination of `new`: a route a replace of
/// `new` may take the place of (IPv4 keys routes by destination, whatever their device).
fn same_destination(old: &RouteMessage, new: &RouteMessage) -> bool {
    let dest = |r: &RouteMessage| {
        r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(d) => route_ip(d),
            _ => None,
        })
    };
    is_main_table(old)
        && old.header.address_family == new.header.address_family
        && old.header.destination_prefix_length == new.header.destination_prefix_length
        && dest(old) == dest(new)
}

/// Best-effort undo of a failed `UpdateRoutes`: removes what was added, puts back what was
/// removed (link routes first). Answers what could not be undone.
pub(super) fn restore(
    nl: &mut Netlink,
    added: &[RouteMessage],
    removed: &[RouteMessage],
) -> Vec<String> {
    let mut failures = Vec::new();
    for m in added.iter().rev() {
        if let Err(e) = nl.apply(RouteNetlinkMessage::DelRoute(m.clone()), 0) {
            failures.push(format!("removing a new route: {e}"));
        }
    }
    for m in removed.iter().rev() {
        let mut m = m.clone();
        // Dumped routes carry read-only attributes (cache info) the kernel ignores on add.
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::CacheInfo(_)));
        if let Err(e) = nl.apply(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL) {
            if errno(&e) != Some(libc::EEXIST) {
                failures.push(format!("restoring an old route: {e}"));
            }
        }
    }
    failures
}

pub(super) fn with_undo(err: GuestError, undo_failures: Vec<String>) -> GuestError {
    let note = if undo_failures.is_empty() {
        "; nothing was changed (the previous routes of the named devices were restored)".to_string()
    } else {
        format!(
            "; the table is partly updated, undo failed: {}",
            undo_failures.join("; ")
        )
    };
    err.with_note(&note)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dest: &str, gateway: &str, device: &str, family: IPFamily) -> Route {
        Route {
            dest: dest.into(),
            gateway: gateway.into(),
            device: device.into(),
            family: family.into(),
            ..Default::default()
        }
    }

    #[test]
    fn routes_are_checked_and_named_by_index() {
        let r = ParsedRoute::parse(0, &route("", "10.0.0.1", "eth0", IPFamily::v4)).unwrap();
        assert_eq!(r.dest.prefix, 0);
        assert_eq!(r.describe(), "default via 10.0.0.1 dev eth0");
        let m = r.message(7);
        assert!(m.attributes.contains(&RouteAttribute::Oif(7)));
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));

        let r = ParsedRoute::parse(
            1,
            &Route {
                source: "10.0.0.2".into(),
                flags: 4,
                ..route("10.0.0.0/24", "", "eth0", IPFamily::v4)
            },
        )
        .unwrap();
        assert!(matches!(r.source, Some(Source::Preferred(_))));
        assert!(r.onlink);

        let bad = |i: usize, r: Route, field: &str| {
            let e = ParsedRoute::parse(i, &r).unwrap_err();
            assert!(
                matches!(&e, GuestError::InvalidArgument(m) if m.starts_with(field)),
                "{field}: {e}"
            );
        };
        bad(
            2,
            route("10.0.0.0/40", "", "eth0", IPFamily::v4),
            "routes[2].dest",
        );
        bad(
            3,
            route("10.0.0.0/24", "10.0.0.x", "eth0", IPFamily::v4),
            "routes[3].gateway",
        );
        bad(
            4,
            route("10.0.0.0/24", "", "", IPFamily::v4),
            "routes[4].device",
        );
        bad(
            5,
            route("fd00::/64", "", "eth0", IPFamily::v4),
            "routes[5].dest",
        );
        bad(
            6,
            route("", "fd00::1", "eth0", IPFamily::v4),
            "routes[6].gateway",
        );
        bad(
            8,
            route("127.0.0.0/8", "", "eth0", IPFamily::v4),
            "routes[8].dest",
        );
        bad(
            9,
            route("127.1.0.0/16", "", "eth0", IPFamily::v4),
            "routes[9].dest",
        );
        bad(
            10,
            route("10.0.0.0/8", "127.0.0.1", "eth0", IPFamily::v4),
            "routes[10].gateway",
        );
        bad(
            7,
            Route {
                scope: 256,
                ..route("10.0.0.0/24", "", "eth0", IPFamily::v4)
            },
            "routes[7].scope",
        );

        // The MTU travels as the RTAX_MTU metric and is read back from it.
        let r = ParsedRoute::parse(
            8,
            &Route {
                mtu: 1400,
                ..route("10.0.0.0/24", "", "eth0", IPFamily::v4)
            },
        )
        .unwrap();
        let m = r.message(7);
        assert!(m
            .attributes
            .contains(&RouteAttribute::Metrics(vec![RouteMetric::Mtu(1400)])));
        assert_eq!(to_route(&m, &[]).mtu, 1400);
        let plain = ParsedRoute::parse(9, &route("10.0.0.0/24", "", "eth0", IPFamily::v4));
        let plain = plain.unwrap().message(7);
        assert!(!plain
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Metrics(_))));
        assert_eq!(to_route(&plain, &[]).mtu, 0);
        // Above what the kernel keeps (it would cap it silently): refused.
        bad(
            10,
            Route {
                mtu: MAX_ROUTE_MTU + 1,
                ..route("10.0.0.0/24", "", "eth0", IPFamily::v4)
            },
            "routes[10].mtu",
        );
    }
}
