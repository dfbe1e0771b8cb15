//! Where the agent's log lines go: a private duplicate of the stderr it started with.
//!
//! The container library forks a process for each container process and logs from it after
//! it has put the workload's stdio on descriptors 0-2 and before it execs the workload. A log
//! writer on descriptor 2 would send those lines into the workload's stderr (or its terminal),
//! a stream the untrusted host reads. Writing to a duplicate instead makes the target a
//! property of the open file, not of a descriptor number: every forked process still writes
//! its lines to the agent's log whatever its descriptor 2 has become, and the duplicate is
//! close-on-exec, so no workload ever holds it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, RawFd};

use tracing_subscriber::fmt::MakeWriter;

/// The log target: the duplicate of the original stderr, or nothing when stderr was closed
/// at start-up (then the lines are dropped rather than written to whatever descriptor 2
/// becomes later).
pub struct LogSink(Option<File>);

impl LogSink {
    /// Duplicates descriptor 2 (close-on-exec, above the standard descriptors).
    pub fn from_stderr() -> LogSink {
        LogSink::duplicate(libc::STDERR_FILENO)
    }

    fn duplicate(fd: RawFd) -> LogSink {
        // SAFETY: F_DUPFD_CLOEXEC only creates a new descriptor; a failure (fd not open) is
        // reported as -1 and leaves nothing to clean up.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if copy < 0 {
            return LogSink(None);
        }
        // SAFETY: `copy` is a descriptor this process just created and nothing else owns.
        LogSink(Some(unsafe { File::from_raw_fd(copy) }))
    }
}

/// One event's writer: the sink's file, borrowed.
pub struct LogWriter<'a>(Option<&'a File>);

impl Write for LogWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0 {
            Some(mut f) => f.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LogWriter<'a>;

    fn make_writer(&'a self) -> LogWriter<'a> {
        LogWriter(self.0.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills `fds` with two new descriptors on success.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn writes_reach_the_original_file_through_a_close_on_exec_copy() {
        let (mut read, write) = pipe();
        let sink = LogSink::duplicate(write.as_raw_fd());
        drop(write);
        let copy = sink.0.as_ref().expect("duplicated").as_raw_fd();
        assert!(copy >= 3);
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(copy, libc::F_GETFD) };
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "the copy must not survive exec"
        );
        sink.make_writer().write_all(b"line\n").unwrap();
        drop(sink);
        let mut got = String::new();
        read.read_to_string(&mut got).unwrap();
        assert_eq!(got, "line\n");
    }

    #[test]
    fn a_closed_stderr_drops_lines() {
        // Not a descriptor (a closed number could be reused by another test meanwhile).
        let sink = LogSink::duplicate(-1);
        assert!(sink.0.is_none());
        assert_eq!(sink.make_writer().write(b"gone\n").unwrap(), 5);
    }
}
