//! Process stdio on the agent side: bounded output buffers drained continuously, stdin
//! writers, and ptys.
//!
//! A process must never block on a full pipe because the host does not read (or is not allowed
//! to read) its output, so a task drains every output stream as soon as data arrives. What the
//! host has not read yet is kept up to a bound; past it, the oldest bytes are dropped (and
//! counted), so a chatty process costs bounded memory and never stalls.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::error::{Result, RuntimeError};

/// Output of one stream not yet read by the host.
pub(crate) struct OutputBuffer {
    state: Mutex<OutputState>,
    changed: Notify,
    limit: usize,
}

#[derive(Default)]
struct OutputState {
    data: VecDeque<u8>,
    closed: bool,
    dropped: u64,
    /// A reader has been told "end of stream".
    eof_delivered: bool,
}

impl OutputBuffer {
    pub(crate) fn new(limit: usize) -> Arc<OutputBuffer> {
        Arc::new(OutputBuffer {
            state: Mutex::new(OutputState::default()),
            changed: Notify::new(),
            limit: limit.max(1),
        })
    }

    fn push(&self, bytes: &[u8]) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.data.extend(bytes);
        if s.data.len() > self.limit {
            let excess = s.data.len() - self.limit;
            s.data.drain(..excess);
            s.dropped += excess as u64;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.changed.notify_waiters();
    }

    /// Bytes dropped because the host did not read in time.
    pub(crate) fn dropped(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }

    /// Fully read: a reader has been told the stream ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .eof_delivered
    }

    /// Waits for output and takes up to `max` bytes; [`RuntimeError::EndOfStream`] once the
    /// stream is closed and empty.
    pub(crate) async fn read(&self, max: usize) -> Result<Vec<u8>> {
        let max = max.max(1);
        loop {
            // Registered before the check, so a push between the check and the await is seen.
            let changed = self.changed.notified();
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if !s.data.is_empty() {
                    let n = max.min(s.data.len());
                    return Ok(s.data.drain(..n).collect());
                }
                if s.closed {
                    s.eof_delivered = true;
                    return Err(RuntimeError::EndOfStream);
                }
            }
            changed.await;
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Registers `fd` with the reactor.
pub(crate) fn async_fd(fd: OwnedFd, what: &str) -> Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open, owned by the AsyncFd from here on, and always reports the
    // same descriptor.
    unsafe { AsyncFd::register(fd) }.map_err(|e| RuntimeError::internal(what, e))
}

/// Starts the task that moves everything readable from `fd` into `buf` until end of file
/// (for a pty master: until every slave is closed, which reads as EIO).
pub(crate) fn spawn_drain(fd: OwnedFd, buf: Arc<OutputBuffer>) -> Result<()> {
    set_nonblocking(&fd).map_err(|e| RuntimeError::internal("output stream", e))?;
    let afd = async_fd(fd, "output stream")?;
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let mut guard = match afd.readable().await {
                Ok(g) => g,
                Err(_) => break,
            };
            // SAFETY: reading into a buffer we own, with its length.
            let r = guard.try_io(|fd| {
                let n =
                    unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => buf.push(&chunk[..n]),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(_)) => break, // EIO from a pty master whose slaves are all closed.
                Err(_would_block) => continue,
            }
        }
        buf.close();
        let dropped = buf.dropped();
        if dropped > 0 {
            tracing::debug!(dropped, "output the host never read was dropped");
        }
    });
    Ok(())
}

/// The writing end of a process's stdin (a pipe, or a pty master).
pub(crate) struct StdinWriter {
    fd: AsyncFd<OwnedFd>,
}

impl StdinWriter {
    pub(crate) fn new(fd: OwnedFd) -> Result<StdinWriter> {
        set_nonblocking(&fd).map_err(|e| RuntimeError::internal("stdin", e))?;
        Ok(StdinWriter {
            fd: async_fd(fd, "stdin")?,
        })
    }

    pub(crate) async fn write_all(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|e| RuntimeError::internal("stdin", e))?;
            // SAFETY: writing from a slice we borrow, with its length.
            match guard.try_io(|fd| {
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(RuntimeError::internal("writing stdin", e)),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RuntimeError::internal("pipe", e))
}

/// A new pty: (master, slave), both close-on-exec, with the given window size.
pub(crate) fn pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd)> {
    let size = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let p =
        nix::pty::openpty(Some(&size), None).map_err(|e| RuntimeError::internal("openpty", e))?;
    for fd in [&p.master, &p.slave] {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| RuntimeError::internal("pty", e))?;
    }
    Ok((p.master, p.slave))
}

pub(crate) fn resize(master: &OwnedFd, rows: u16, cols: u16) -> Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(RuntimeError::internal(
            "resizing the terminal",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buffer_keeps_the_newest_bytes_within_its_bound() {
        let b = OutputBuffer::new(4);
        b.push(b"abcdef");
        assert_eq!(b.dropped(), 2);
        assert_eq!(b.read(100).await.unwrap(), b"cdef");
        b.push(b"xy");
        b.close();
        assert_eq!(b.read(1).await.unwrap(), b"x");
        assert!(!b.is_finished());
        assert_eq!(b.read(10).await.unwrap(), b"y");
        assert!(matches!(b.read(10).await, Err(RuntimeError::EndOfStream)));
        assert!(b.is_finished());
    }

    #[tokio::test]
    async fn a_reader_waits_for_output() {
        let b = OutputBuffer::new(16);
        let reader = {
            let b = b.clone();
            tokio::spawn(async move { b.read(16).await })
        };
        tokio::task::yield_now().await;
        b.push(b"hi");
        assert_eq!(reader.await.unwrap().unwrap(), b"hi");
    }

    #[tokio::test]
    async fn drain_empties_a_pipe_nobody_reads() {
        let (r, w) = pipe().unwrap();
        let b = OutputBuffer::new(1024);
        spawn_drain(r, b.clone()).unwrap();
        // 1 MiB through a 64 KiB pipe only completes if the drain keeps up.
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..16 {
                std::io::Write::write_all(&mut f, &chunk).unwrap();
            }
        });
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        // The pipe may still hold the last chunk: read only once the drain is at end of file,
        // so what is read is exactly the newest `limit` bytes.
        loop {
            let changed = b.changed.notified();
            if b.state.lock().unwrap().closed {
                break;
            }
            changed.await;
        }
        let mut got = Vec::new();
        loop {
            match b.read(4096).await {
                Ok(d) => got.extend(d),
                Err(RuntimeError::EndOfStream) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), 1024);
        assert_eq!(b.dropped(), 16 * 64 * 1024 - 1024);
    }
}
