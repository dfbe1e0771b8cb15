//! The pod network RPCs: `UpdateInterface`, `UpdateRoutes`, `ListInterfaces`, `ListRoutes`,
//! `AddARPNeighbors` over route netlink, and `GetIPTables` / `SetIPTables` through the guest's
//! `iptables-save` / `iptables-restore` (as Kata's agent does).
//!
//! Kata's runtime configures the pod network through these calls before it creates the sandbox,
//! so their request and answer shapes follow Kata's agent: interfaces are found by MAC address,
//! masks are prefix lengths in decimal text, routes name their device, `scope` is the kernel's
//! numeric scope. Every request is validated in full before the kernel is touched, and a bad
//! field is named by its path in the request (`routes[2].gateway`).
//!
//! All netlink traffic goes through one socket guarded by one lock, so concurrent network RPCs
//! never interleave their read-modify-write sequences. The socket opens on first use, from a
//! blocking-pool thread: it belongs to the agent process's network namespace.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    ErrorMessage, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use protobuf::well_known_types::empty::Empty;
use vigil_protos::agent::{
    AddARPNeighborsRequest, GetIPTablesRequest, GetIPTablesResponse, Interfaces, Routes,
    SetIPTablesRequest, SetIPTablesResponse, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use vigil_protos::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};

use crate::service::AgentError;

/// Why a network RPC failed; each kind becomes the [`AgentError`] of the same name.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl From<NetworkError> for AgentError {
    fn from(e: NetworkError) -> AgentError {
        match e {
            NetworkError::InvalidArgument(m) => AgentError::InvalidArgument(m),
            NetworkError::NotFound(m) => AgentError::NotFound(m),
            NetworkError::FailedPrecondition(m) => AgentError::FailedPrecondition(m),
            NetworkError::Internal(m) => AgentError::Internal(m),
        }
    }
}

type Result<T> = std::result::Result<T, NetworkError>;

fn invalid(field: &str, what: impl std::fmt::Display) -> NetworkError {
    NetworkError::InvalidArgument(format!("{field}: {what}"))
}

/// A kernel refusal, classed by errno so that a request the kernel finds invalid is the
/// caller's error and everything else is ours.
fn kernel(doing: impl std::fmt::Display, e: io::Error) -> NetworkError {
    let text = format!("{doing}: {e}");
    match errno(&e) {
        Some(libc::EINVAL | libc::ERANGE | libc::ENETUNREACH | libc::EADDRNOTAVAIL) => {
            NetworkError::InvalidArgument(text)
        }
        Some(libc::ENODEV | libc::ESRCH) => NetworkError::NotFound(text),
        _ => NetworkError::Internal(text),
    }
}

/// A kernel refusal: its errno and, when the kernel gave one (extended ack), its explanation
/// ("Nexthop has invalid gateway"). Carried inside an `io::Error`; [`errno`] reads it back.
#[derive(Debug)]
struct Refusal {
    errno: i32,
    detail: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        match &self.detail {
            Some(d) => write!(f, " ({d})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Refusal {}

/// The errno of a failed netlink call, whether the socket or the kernel's answer said it.
fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
        .or_else(|| e.get_ref()?.downcast_ref::<Refusal>().map(|r| r.errno))
}

/// Turns a netlink error answer into an `io::Error` carrying a [`Refusal`].
fn refusal(e: &ErrorMessage, answer_flags: u16) -> io::Error {
    let errno = e.raw_code().abs();
    let detail = if answer_flags & NLM_F_ACK_TLVS != 0 {
        ext_ack_message(&e.header, answer_flags & NLM_F_CAPPED != 0)
    } else {
        None
    };
    io::Error::new(
        io::Error::from_raw_os_error(errno).kind(),
        Refusal { errno, detail },
    )
}

/// The NLMSGERR_ATTR_MSG text of an extended ack. `payload` is the error answer after its
/// code: the request's header (the whole request unless `capped`), then attributes.
fn ext_ack_message(payload: &[u8], capped: bool) -> Option<String> {
    const NLMSGERR_ATTR_MSG: u16 = 1;
    const NLA_TYPE_MASK: u16 = 0x3fff;
    let request_len = if capped {
        16
    } else {
        u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?) as usize
    };
    let mut at = (request_len + 3) & !3;
    while let Some(head) = payload.get(at..at + 4) {
        let len = u16::from_ne_bytes([head[0], head[1]]) as usize;
        let kind = u16::from_ne_bytes([head[2], head[3]]) & NLA_TYPE_MASK;
        if len < 4 {
            return None;
        }
        let value = payload.get(at + 4..at + len)?;
        if kind == NLMSGERR_ATTR_MSG {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        at += (len + 3) & !3;
    }
    None
}

/// The network RPC backend: one route-netlink socket, opened on first use.
#[derive(Default)]
pub struct Network {
    netlink: Arc<Mutex<Option<Netlink>>>,
}

impl Network {
    /// A backend whose socket opens on the first call, in the agent process's namespace.
    pub fn new() -> Network {
        Network::default()
    }

    /// Runs `op` on the socket in a blocking thread (netlink calls block on the kernel).
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Netlink) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let slot = self.netlink.clone();
        tokio::task::spawn_blocking(move || {
            // A panic mid-sequence leaves at worst unread answers on the socket, which the
            // sequence-number check skips: the socket stays usable.
            let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if guard.is_none() {
                let socket = Netlink::open().map_err(|e| {
                    NetworkError::Internal(format!("opening the route netlink socket: {e}"))
                })?;
                *guard = Some(socket);
            }
            op(guard.as_mut().expect("socket opened above"))
        })
        .await
        .map_err(|e| NetworkError::Internal(format!("network task failed: {e}")))?
    }

    /// `UpdateInterface`: configures the link with the request's MAC (or, without one, its
    /// name) and answers the interface as the kernel now reports it.
    pub async fn update_interface(&self, req: UpdateInterfaceRequest) -> Result<Interface> {
        let iface = req
            .interface
            .into_option()
            .ok_or_else(|| invalid("interface", "missing"))?;
        let wanted = WantedInterface::parse(&iface)?;
        self.run(move |nl| update_interface(nl, &wanted)).await
    }

    /// `UpdateRoutes`: replaces the routes of the devices the request names, then answers the
    /// whole main table.
    pub async fn update_routes(&self, req: UpdateRoutesRequest) -> Result<Routes> {
        let routes = req
            .routes
            .into_option()
            .ok_or_else(|| invalid("routes", "missing"))?
            .Routes;
        // Syntax first, without the kernel; device names need the link list.
        let parsed = routes
            .iter()
            .enumerate()
            .map(|(i, r)| ParsedRoute::parse(i, r))
            .collect::<Result<Vec<_>>>()?;
        let routes = self.run(move |nl| update_routes(nl, &parsed)).await?;
        Ok(Routes {
            Routes: routes,
            ..Default::default()
        })
    }

    /// `ListInterfaces`: every link with its addresses.
    pub async fn list_interfaces(&self) -> Result<Interfaces> {
        let interfaces = self.run(list_interfaces).await?;
        Ok(Interfaces {
            Interfaces: interfaces,
            ..Default::default()
        })
    }

    /// `ListRoutes`: the main routing table, IPv4 then IPv6.
    pub async fn list_routes(&self) -> Result<Routes> {
        let routes = self.run(list_routes).await?;
        Ok(Routes {
            Routes: routes,
            ..Default::default()
        })
    }

    /// `AddARPNeighbors`: adds (or replaces) neighbour entries, permanent unless a state is
    /// given.
    pub async fn add_arp_neighbors(&self, req: AddARPNeighborsRequest) -> Result<Empty> {
        let neighbors = req
            .neighbors
            .into_option()
            .ok_or_else(|| invalid("neighbors", "missing"))?
            .ARPNeighbors;
        let parsed = neighbors
            .iter()
            .enumerate()
            .map(|(i, n)| ParsedNeighbour::parse(i, n))
            .collect::<Result<Vec<_>>>()?;
        self.run(move |nl| add_neighbours(nl, &parsed)).await?;
        Ok(Empty::new())
    }

    /// `GetIPTables`: the output of `iptables-save` (or `ip6tables-save`).
    pub async fn get_ip_tables(&self, req: GetIPTablesRequest) -> Result<GetIPTablesResponse> {
        let program = if req.is_ipv6 {
            "ip6tables-save"
        } else {
            "iptables-save"
        };
        let data = run_program(program, Vec::new()).await?;
        Ok(GetIPTablesResponse {
            data,
            ..Default::default()
        })
    }

    /// `SetIPTables`: feeds the request's rules to `iptables-restore` (or `ip6tables-restore`)
    /// and answers what it printed.
    pub async fn set_ip_tables(&self, req: SetIPTablesRequest) -> Result<SetIPTablesResponse> {
        let program = if req.is_ipv6 {
            "ip6tables-restore"
        } else {
            "iptables-restore"
        };
        let data = run_program(program, req.data).await?;
        Ok(SetIPTablesResponse {
            data,
            ..Default::default()
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Request parsing: everything is checked before the kernel sees any of it.

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    ip: IpAddr,
    prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

fn max_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr> {
    text.parse()
        .map_err(|_| invalid(field, format!("{text:?} is not an IP address")))
}

fn parse_prefix(field: &str, text: &str, ip: &IpAddr) -> Result<u8> {
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
fn parse_network(field: &str, text: &str) -> Result<Cidr> {
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

fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
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
fn parse_mac(field: &str, text: &str) -> Result<[u8; 6]> {
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

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Linux interface names: 1-15 bytes, no `/`, no whitespace, not `.` or `..`.
fn check_link_name(field: &str, name: &str) -> Result<()> {
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

fn family_of(ip: &IpAddr) -> IPFamily {
    if ip.is_ipv4() {
        IPFamily::v4
    } else {
        IPFamily::v6
    }
}

/// The checked contents of an `UpdateInterface` request.
#[derive(Debug)]
struct WantedInterface {
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
    fn parse(iface: &Interface) -> Result<WantedInterface> {
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

/// One checked route of an `UpdateRoutes` request (its device is resolved later).
#[derive(Debug, Clone)]
struct ParsedRoute {
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
const MAX_ROUTE_MTU: u32 = 65535 - 15;

#[derive(Debug, Clone, Copy)]
enum Source {
    /// `src` of `ip route`: the address preferred for packets sent along this route.
    Preferred(IpAddr),
    /// A source prefix the route applies to (IPv6 source routing).
    Prefix(Cidr),
}

impl ParsedRoute {
    fn parse(index: usize, r: &Route) -> Result<ParsedRoute> {
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
            check_family("dest", &dest.ip)?;
            dest
        };
        let gateway = if r.gateway.is_empty() {
            None
        } else {
            let gw = parse_ip(&field("gateway"), &r.gateway)?;
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

    fn describe(&self) -> String {
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

    fn message(&self, link_index: u32) -> RouteMessage {
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

fn address_family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// One checked entry of an `AddARPNeighbors` request.
#[derive(Debug, Clone)]
struct ParsedNeighbour {
    index: usize,
    ip: IpAddr,
    device: String,
    lladdr: Option<[u8; 6]>,
    state: u16,
    flags: u8,
}

impl ParsedNeighbour {
    fn parse(index: usize, n: &ARPNeighbor) -> Result<ParsedNeighbour> {
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

// ---------------------------------------------------------------------------------------------
// The operations, on a locked socket.

fn link_name(link: &LinkMessage) -> &str {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.as_str()),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    })
}

fn link_index_by_name(links: &[LinkMessage], name: &str) -> Option<u32> {
    links
        .iter()
        .find(|l| link_name(l) == name)
        .map(|l| l.header.index)
}

fn address_ip(a: &AddressMessage) -> Option<IpAddr> {
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

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn to_interface(link: &LinkMessage, addresses: &[AddressMessage]) -> Interface {
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

fn list_interfaces(nl: &mut Netlink) -> Result<Vec<Interface>> {
    let links = nl.links()?;
    let addresses = nl.addresses()?;
    Ok(links.iter().map(|l| to_interface(l, &addresses)).collect())
}

/// Sets a link's name (which the kernel allows only while it is down) and flags.
fn set_link(
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
const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(3);

fn has_mac(links: &[LinkMessage], mac: &[u8; 6]) -> bool {
    links.iter().any(|l| link_mac(l) == Some(&mac[..]))
}

/// Waits for a link with `mac`, up to [`HOTPLUG_TIMEOUT`]; false if none appeared.
fn wait_for_link(nl: &mut Netlink, mac: &[u8; 6]) -> Result<bool> {
    let deadline = Instant::now() + HOTPLUG_TIMEOUT;
    // Subscribe first, then look: a link added before is in the list, one added after is
    // announced.
    let watcher = LinkWatcher::open()
        .map_err(|e| NetworkError::Internal(format!("watching for new links: {e}")))?;
    if has_mac(&nl.links()?, mac) {
        return Ok(true);
    }
    watcher
        .wait_for(mac, deadline)
        .map_err(|e| NetworkError::Internal(format!("watching for new links: {e}")))
}

fn update_interface(nl: &mut Netlink, wanted: &WantedInterface) -> Result<Interface> {
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
                    NetworkError::NotFound(format!(
                        "no link has the hardware address {} (interface.hwAddr){waited}",
                        format_mac(&mac)
                    ))
                })?
        }
        None => links
            .iter()
            .find(|l| link_name(l) == wanted.name)
            .ok_or_else(|| {
                NetworkError::NotFound(format!(
                    "no link is named {:?} (interface.name; no hwAddr given)",
                    wanted.name
                ))
            })?,
    };
    let index = link.header.index;
    let old_name = link_name(link).to_string();
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
        .ok_or_else(|| {
            NetworkError::Internal(format!("{shown} vanished while being configured"))
        })?;
    Ok(to_interface(link, &addresses))
}

fn address_message(index: u32, cidr: &Cidr) -> AddressMessage {
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

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_has_gateway(r: &RouteMessage) -> bool {
    r.attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Gateway(_)))
}

fn is_main_table(r: &RouteMessage) -> bool {
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
fn to_route(r: &RouteMessage, links: &[LinkMessage]) -> Route {
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

fn list_routes(nl: &mut Netlink) -> Result<Vec<Route>> {
    let links = nl.links()?;
    Ok(nl
        .routes()?
        .iter()
        .filter(|r| is_main_table(r))
        .map(|r| to_route(r, &links))
        .collect())
}

fn update_routes(nl: &mut Netlink, routes: &[ParsedRoute]) -> Result<Vec<Route>> {
    let links = nl.links()?;
    let mut planned = Vec::with_capacity(routes.len());
    for r in routes {
        let index = link_index_by_name(&links, &r.device).ok_or_else(|| {
            NetworkError::NotFound(format!(
                "routes[{}].device: no link is named {:?}",
                r.index, r.device
            ))
        })?;
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
fn restore(nl: &mut Netlink, added: &[RouteMessage], removed: &[RouteMessage]) -> Vec<String> {
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

fn with_undo(err: NetworkError, undo_failures: Vec<String>) -> NetworkError {
    let note = if undo_failures.is_empty() {
        "; nothing was changed (the previous routes of the named devices were restored)".to_string()
    } else {
        format!(
            "; the table is partly updated, undo failed: {}",
            undo_failures.join("; ")
        )
    };
    match err {
        NetworkError::InvalidArgument(m) => NetworkError::InvalidArgument(m + &note),
        NetworkError::NotFound(m) => NetworkError::NotFound(m + &note),
        NetworkError::FailedPrecondition(m) => NetworkError::FailedPrecondition(m + &note),
        NetworkError::Internal(m) => NetworkError::Internal(m + &note),
    }
}

fn add_neighbours(nl: &mut Netlink, neighbours: &[ParsedNeighbour]) -> Result<()> {
    let links = nl.links()?;
    let mut resolved = Vec::with_capacity(neighbours.len());
    for n in neighbours {
        let index = link_index_by_name(&links, &n.device).ok_or_else(|| {
            NetworkError::NotFound(format!(
                "neighbors[{}].device: no link is named {:?}",
                n.index, n.device
            ))
        })?;
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

// ---------------------------------------------------------------------------------------------
// iptables: the guest's own tools, as Kata's agent uses them.

/// Where a guest image keeps iptables' tools.
const PROGRAM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

fn find_program(name: &str, dirs: &[&str]) -> Result<PathBuf> {
    dirs.iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            NetworkError::FailedPrecondition(format!(
                "{name} is not installed in the guest (looked in {})",
                dirs.join(", ")
            ))
        })
}

/// Runs the guest's `name` with `input` on its stdin; answers its stdout.
async fn run_program(name: &'static str, input: Vec<u8>) -> Result<Vec<u8>> {
    run(find_program(name, &PROGRAM_DIRS)?, input).await
}

/// Runs `path` with `input` on its stdin; answers its stdout, or an error carrying its stderr.
async fn run(path: PathBuf, input: Vec<u8>) -> Result<Vec<u8>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let task_name = name.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NetworkError::Internal(format!("starting {}: {e}", path.display())))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Written from its own thread: a program that prints before it has read all its input
        // would otherwise deadlock against us.
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child
            .wait_with_output()
            .map_err(|e| NetworkError::Internal(format!("running {name}: {e}")))?;
        let written = writer.join();
        if !out.status.success() {
            return Err(NetworkError::Internal(format!(
                "{name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        match written {
            Ok(Ok(())) => Ok(out.stdout),
            Ok(Err(e)) => Err(NetworkError::Internal(format!(
                "{name} did not read all its input: {e}"
            ))),
            Err(_) => Err(NetworkError::Internal(format!(
                "writing {name}'s input panicked"
            ))),
        }
    })
    .await
    .map_err(|e| NetworkError::Internal(format!("{task_name} task failed: {e}")))?
}

// ---------------------------------------------------------------------------------------------
// The netlink transport: one request at a time, answers matched by sequence number.

/// How long the kernel may take to answer one request before the RPC fails.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds every receive on `socket` (a zero duration would mean "forever": at least 1 µs).
fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let timeout = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros().max(1)),
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized timeval.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Link announcements from the kernel (multicast group RTNLGRP_LINK), to wait for a
/// hot-plugged NIC without polling.
struct LinkWatcher {
    socket: Socket,
}

impl LinkWatcher {
    fn open() -> io::Result<LinkWatcher> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(libc::RTNLGRP_LINK)?;
        Ok(LinkWatcher { socket })
    }

    /// Waits until a link with `mac` is announced; false once `deadline` passes first.
    fn wait_for(&self, mac: &[u8; 6], deadline: Instant) -> io::Result<bool> {
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

struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Ask the kernel to explain its refusals (extended ack) and to leave our request out of
        // them. Older kernels lack these options; their errors are then just the errno.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        set_receive_timeout(&socket, NETLINK_TIMEOUT)?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    /// Sends one request and collects the messages of its answer, up to the final
    /// `NLMSG_DONE` (dumps) or acknowledgement (everything else). A kernel refusal is the
    /// `io::Error` of its errno.
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut answer = Vec::new();
        // A message we cannot decode fails the request, but only once its answer is fully
        // read, so the next request does not start with this one's leftovers.
        let mut undecodable: Option<io::Error> = None;
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the kernel did not answer within {}s",
                            NETLINK_TIMEOUT.as_secs()
                        ),
                    )
                } else {
                    e
                }
            })?;
            let mut offset = 0;
            while offset < datagram.len() {
                let bytes = &datagram[offset..];
                let length = NetlinkBuffer::new_checked(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
                    .length() as usize;
                if length == 0 {
                    break;
                }
                // Messages are 4-byte aligned within a datagram.
                offset += (length + 3) & !3;
                let reply = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                    Ok(reply) => reply,
                    Err(e) => {
                        undecodable.get_or_insert_with(|| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("undecodable netlink answer: {e}"),
                            )
                        });
                        continue;
                    }
                };
                if reply.header.sequence_number != sequence {
                    continue; // left over from an earlier, abandoned request
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return undecodable.map_or(Ok(answer), Err),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(_) => Err(refusal(&e, reply.header.flags)),
                            None => undecodable.map_or(Ok(answer), Err),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => answer.push(m),
                    _ => {}
                }
            }
        }
    }

    /// A change, acknowledged by the kernel.
    fn apply(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.exchange(message, NLM_F_ACK | flags).map(drop)
    }

    fn dump(
        &mut self,
        message: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, NLM_F_DUMP)
            .map_err(|e| NetworkError::Internal(format!("listing {what}: {e}")))
    }

    fn links(&mut self) -> Result<Vec<LinkMessage>> {
        let answer = self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "links",
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    fn addresses(&mut self) -> Result<Vec<AddressMessage>> {
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        Ok(self
            .dump(request, "addresses")?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .collect())
    }

    /// Every route of every table, IPv4 then IPv6.
    fn routes(&mut self) -> Result<Vec<RouteMessage>> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            let answer = self.dump(RouteNetlinkMessage::GetRoute(request), "routes")?;
            routes.extend(answer.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            }));
        }
        Ok(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                matches!(&e, NetworkError::InvalidArgument(m) if m.starts_with("routes[0].dest")),
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
                matches!(&e, NetworkError::InvalidArgument(m) if m.starts_with(field)),
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
        let mut long_name = iface("02:00:00:00:00:01", &[]);
        long_name.name = "a-very-long-interface-name".into();
        bad(long_name, "interface.name");
        let mut anonymous = iface("", &[]);
        anonymous.name.clear();
        bad(anonymous, "interface");
    }

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
                matches!(&e, NetworkError::InvalidArgument(m) if m.starts_with(field)),
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

    #[test]
    fn a_missing_program_is_a_failed_precondition_naming_it() {
        let e = find_program("vigil-no-such-tool", &PROGRAM_DIRS).unwrap_err();
        assert!(
            matches!(&e, NetworkError::FailedPrecondition(m) if m.contains("vigil-no-such-tool")),
            "{e}"
        );
    }

    fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn a_program_gets_the_input_and_answers_its_output() {
        let dir = tempfile::tempdir().unwrap();
        // Prints more than a pipe holds before it reads its input: feeding the input and
        // collecting the output one after the other would deadlock.
        let p = script(
            dir.path(),
            "fake-restore",
            "head -c 200000 /dev/zero; wc -c",
        );
        let out = run(p, vec![b'x'; 1 << 20]).await.unwrap();
        assert_eq!(out.len(), 200_000 + "1048576\n".len());
        assert_eq!(String::from_utf8_lossy(&out[200_000..]).trim(), "1048576");
        let found = find_program("fake-restore", &[dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(found, dir.path().join("fake-restore"));
    }

    #[tokio::test]
    async fn a_failing_program_is_an_error_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "fake-save",
            "echo 'line 3: bad rule' >&2; exit 2",
        );
        let e = run(p, Vec::new()).await.unwrap_err();
        assert!(
            matches!(&e, NetworkError::Internal(m) if m.contains("fake-save") && m.contains("line 3: bad rule")),
            "{e}"
        );
    }

    #[test]
    fn extended_ack_text_is_read_after_the_request_header() {
        let mut payload = vec![0u8; 16]; // the request's header, capped
        let text = b"Nexthop has invalid gateway\0";
        // An attribute before the message, which must be skipped.
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&3u16.to_ne_bytes());
        payload.extend_from_slice(&[0, 0, 0, 0]);
        payload.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&1u16.to_ne_bytes());
        payload.extend_from_slice(text);
        assert_eq!(
            ext_ack_message(&payload, true).as_deref(),
            Some("Nexthop has invalid gateway")
        );
        assert_eq!(ext_ack_message(&payload[..20], true), None);
        let e = refusal(
            &{
                let mut m = ErrorMessage::default();
                m.code = std::num::NonZeroI32::new(-libc::ENETUNREACH);
                m.header = payload;
                m
            },
            NLM_F_ACK_TLVS | NLM_F_CAPPED,
        );
        assert_eq!(errno(&e), Some(libc::ENETUNREACH));
        assert!(
            e.to_string().ends_with("(Nexthop has invalid gateway)"),
            "{e}"
        );
    }
}
