//! Process descriptors (`pidfd_open`): a handle on a child that cannot name another process
//! once the child is reaped and its pid reused, unlike a pid.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::error::{Result, RuntimeError};

/// A descriptor for process `pid`.
pub(crate) fn open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscall; the result is a fresh descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(RuntimeError::internal(
            format!("pidfd_open({pid})"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process has exited (its descriptor is readable) or `timeout` has passed;
/// true if it exited.
pub(crate) fn wait_exit(fd: BorrowedFd, timeout: Duration) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one pollfd we own, with its count.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            n if n > 0 => return Ok(true),
            0 => return Ok(false),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Sends `signal` to the process; false if it has already exited.
pub(crate) fn send_signal(fd: BorrowedFd, signal: i32) -> std::io::Result<bool> {
    // SAFETY: plain syscall on a descriptor the caller holds.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        return Ok(false);
    }
    Err(e)
}
