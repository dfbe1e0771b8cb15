//! The kernel's device announcements (uevents), to wait for hot-plugged devices, CPUs and memory
//! without polling.
//!
//! Subscribe first, then look: a waiter opens a [`UeventListener`] before it checks whether
//! what it wants is already there, so an announcement made in between is not lost. Only
//! messages the kernel itself sent (netlink port 0) are read: a process of the guest that can
//! open such a socket cannot forge a device's arrival.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// One announcement: `ACTION@DEVPATH` and its `KEY=value` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `online`, `offline`, `bind`, ...
    pub action: String,
    /// The device's path under /sys, e.g. `/devices/pci0000:00/0000:00:05.0/virtio2/block/vda`.
    pub devpath: String,
    pub subsystem: String,
    /// The node under /dev, when the device has one (`vda`, `sda1`).
    pub devname: Option<String>,
    pub vars: BTreeMap<String, String>,
}

impl Uevent {
    /// Parses a kernel uevent datagram: `ACTION@DEVPATH\0KEY=VALUE\0...`. Messages in udev's
    /// own format (which start with "libudev") are not the kernel's and give `None`.
    pub fn parse(datagram: &[u8]) -> Option<Uevent> {
        let mut fields = datagram.split(|b| *b == 0).filter(|f| !f.is_empty());
        let head = std::str::from_utf8(fields.next()?).ok()?;
        let (action, devpath) = head.split_once('@')?;
        let mut vars = BTreeMap::new();
        for f in fields {
            let Ok(text) = std::str::from_utf8(f) else {
                continue;
            };
            if let Some((k, v)) = text.split_once('=') {
                vars.insert(k.to_string(), v.to_string());
            }
        }
        if vars.get("ACTION").is_some_and(|a| a != action) {
            return None;
        }
        Some(Uevent {
            action: action.to_string(),
            devpath: vars
                .get("DEVPATH")
                .cloned()
                .unwrap_or_else(|| devpath.into()),
            subsystem: vars.get("SUBSYSTEM").cloned().unwrap_or_default(),
            devname: vars.get("DEVNAME").cloned(),
            vars,
        })
    }
}

/// A subscription to the kernel's uevents (netlink `NETLINK_KOBJECT_UEVENT`, group 1).
pub struct UeventListener {
    fd: OwnedFd,
}

impl UeventListener {
    pub fn open() -> io::Result<UeventListener> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A burst of hot-plug events must not overflow the queue before we read it.
        let size: libc::c_int = 1 << 20;
        // SAFETY: setsockopt with a correctly sized int on our socket; failure is harmless.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: a zeroed sockaddr_nl is valid; we set family and group.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = 1;
        // SAFETY: bind with a valid sockaddr_nl of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UeventListener { fd })
    }

    /// The next kernel announcement, or `None` once `deadline` has passed.
    pub fn next(&self, deadline: Instant) -> io::Result<Option<Uevent>> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(None);
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                continue; // the deadline check above ends the loop
            }
            // SAFETY: a zeroed sockaddr_nl is valid to receive into.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: the buffer and address are valid for the sizes given.
            let got = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => continue,
                    // The queue overflowed: events were lost. The caller re-checks the
                    // state it waits for after every return, so report "something changed".
                    Some(libc::ENOBUFS) => {
                        return Ok(Some(Uevent {
                            action: "overflow".into(),
                            devpath: String::new(),
                            subsystem: String::new(),
                            devname: None,
                            vars: BTreeMap::new(),
                        }))
                    }
                    _ => return Err(e),
                }
            }
            if from.nl_pid != 0 {
                continue; // not the kernel's
            }
            if let Some(ev) = Uevent::parse(&buf[..got as usize]) {
                return Ok(Some(ev));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_messages_parse_and_udev_s_do_not() {
        let msg = b"add@/devices/pci0000:00/0000:00:05.0/virtio2/block/vdb\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:05.0/virtio2/block/vdb\0SUBSYSTEM=block\0MAJOR=254\0MINOR=16\0DEVNAME=vdb\0DEVTYPE=disk\0SEQNUM=1234\0";
        let ev = Uevent::parse(msg).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.subsystem, "block");
        assert_eq!(ev.devname.as_deref(), Some("vdb"));
        assert_eq!(
            ev.devpath,
            "/devices/pci0000:00/0000:00:05.0/virtio2/block/vdb"
        );
        assert_eq!(ev.vars["MAJOR"], "254");
        assert!(Uevent::parse(b"libudev\0\xfe\xed\xca\xfe").is_none());
        assert!(Uevent::parse(b"").is_none());
        // Header and ACTION disagreeing: not a well-formed kernel message.
        assert!(Uevent::parse(b"add@/x\0ACTION=remove\0").is_none());
    }

    /// A loop device set up here makes the kernel announce a change of `block/loopN`; the
    /// listener sees it. Needs root (and loop devices); skips otherwise.
    #[test]
    fn a_loop_device_s_change_is_announced() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let listener = UeventListener::open().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output();
        let Some(out) = out.ok().filter(|o| o.status.success()) else {
            eprintln!("skipped: losetup cannot set up a loop device here");
            return;
        };
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let name = dev.trim_start_matches("/dev/").to_string();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = false;
        while let Some(ev) = listener.next(deadline).unwrap() {
            if ev.subsystem == "block" && ev.devname.as_deref() == Some(name.as_str()) {
                seen = true;
                break;
            }
        }
        let _ = std::process::Command::new("losetup")
            .args(["-d", &dev])
            .status();
        assert!(seen, "no uevent for {dev}");
    }
}
