//! The route-netlink transport: one request at a time, answers matched by sequence number, kernel
//! refusals carried with their errno and extended-ack text; and the link announcements used to
//! wait for a hot-plugged NIC.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    ErrorMessage, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{GuestError, Result};

/// A kernel refusal, classed by errno so that a request the kernel finds invalid is the
/// caller's error and everything else is ours.
pub(super) fn kernel(doing: impl std::fmt::Display, e: io::Error) -> GuestError {
    let text = format!("{doing}: {e}");
    match errno(&e) {
        Some(libc::EINVAL | libc::ERANGE | libc::ENETUNREACH | libc::EADDRNOTAVAIL) => {
            GuestError::InvalidArgument(text)
        }
        Some(libc::ENODEV | libc::ESRCH) => GuestError::NotFound(text),
        _ => GuestError::Internal(text),
    }
}

/// A kernel refusal: its errno and, when the kernel gave one (extended ack), its explanation
/// ("Nexthop has invalid gateway"). Carried inside an `io::Error`; [`errno`] reads it back.
#[derive(Debug)]
pub(super) struct Refusal {
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
pub(super) fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
        .or_else(|| e.get_ref()?.downcast_ref::<Refusal>().map(|r| r.errno))
}

/// Turns a netlink error answer into an `io::Error` carrying a [`Refusal`].
pub(super) fn refusal(e: &ErrorMessage, answer_flags: u16) -> io::Error {
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
pub(super) fn ext_ack_message(payload: &[u8], capped: bool) -> Option<String> {
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

/// How long the kernel may take to answer one request before the RPC fails.
pub(super) const NETLINK_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds every receive on `socket` (a zero duration would mean "forever": at least 1 µs).
pub(super) fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
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

pub(super) struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    pub(super) fn open() -> io::Result<Netlink> {
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
    pub(super) fn exchange(
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
    pub(super) fn apply(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.exchange(message, NLM_F_ACK | flags).map(drop)
    }

    pub(super) fn dump(
        &mut self,
        message: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, NLM_F_DUMP)
            .map_err(|e| GuestError::Internal(format!("listing {what}: {e}")))
    }

    pub(super) fn links(&mut self) -> Result<Vec<LinkMessage>> {
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

    pub(super) fn addresses(&mut self) -> Result<Vec<AddressMessage>> {
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
    pub(super) fn routes(&mut self) -> Result<Vec<RouteMessage>> {
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
