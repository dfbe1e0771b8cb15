//! The fork helper: libcontainer's forking calls (create, start, exec) run in a
//! single-threaded process, never in the multi-threaded agent.
//!
//! Why: libcontainer forks with a raw `clone3` and runs Rust code in the child. Forked from a
//! multi-threaded process, that child can find a std-internal lock held by a thread that does
//! not exist in it (seen: the helper child's `std::process::exit` waiting forever on the
//! stack-overflow handler table's lock while other threads started and exited), and the
//! create or exec call then hangs. A fork from a single-threaded process cannot inherit a
//! held lock.
//!
//! How: the agent starts the helper once, on first use, by executing its own binary
//! (`/proc/self/exe`, or [`crate::SandboxConfig::fork_helper`]) with argv[0]
//! [`HELPER_ARG0`] and one end of a `SOCK_SEQPACKET` socketpair as fd 3. A fresh exec is
//! single-threaded. The helper serves one request at a time: for each it forks a *launcher*
//! (a fork of a single-threaded process: safe) that makes the libcontainer call, writes the
//! answer to a pipe and exits. libcontainer's container processes are children of the
//! caller; when the launcher exits they are re-parented to the nearest child subreaper, which
//! is the agent (it sets `PR_SET_CHILD_SUBREAPER` before starting the helper; as PID 1 it is
//! the reaper anyway). The helper answers only after the launcher has been reaped, so by then
//! the new process is the agent's child: the sandbox waits for it with a pidfd as before, and
//! OOM watching (cgroup files) never involved the fork at all. Process-wide side effects of
//! libcontainer (working directory changes, `oomScoreAdj` written to `/proc/self`, the
//! non-dumpable flag) land on the launcher, which is gone a moment later.
//!
//! stdio descriptors travel with the request (`SCM_RIGHTS`). Requests and answers are JSON.
//!
//! The mode cannot be selected by the host: besides argv[0], it needs fd 3 to be a
//! `SOCK_SEQPACKET` unix socket whose peer is the helper's parent process. The kernel starts
//! PID 1 with descriptors 0-2 only, so kernel command-line arguments (which reach init's argv
//! and environment) can never turn the agent into a helper.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::runtime::ProcessIo;

/// argv[0] of the helper process.
pub const HELPER_ARG0: &str = "vigil-fork-helper";

/// The one environment variable the helper is started with: how it logs (the agent's level
/// and format, in the agent's own words), so that what the container library logs while it
/// creates a container reaches the agent's log as it did before the helper existed.
pub const HELPER_LOG_ENV: &str = "VIGIL_FORK_HELPER_LOG";

/// The helper's end of the socketpair.
const HELPER_FD: RawFd = 3;

/// Largest request or answer (paths and ids only).
const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
enum Op {
    /// Create the container of `bundle` (its init waits for Start); `no_pivot`: enter the
    /// root by moving the mount and chroot (the guest runs from its initramfs).
    Create { bundle: PathBuf, no_pivot: bool },
    /// Let the init of a created container run its workload.
    Start,
    /// Run the process described by the JSON file `process` in the container.
    Exec { process: PathBuf },
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    op: Op,
    state_root: PathBuf,
    id: String,
    /// Which of stdin, stdout, stderr came with the request, in that order.
    stdio: [bool; 3],
    controlling_tty: bool,
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    /// The new process (Create, Exec), or 0 (Start).
    Pid(i32),
    Failed(String),
}

/// The agent's side: starts the helper on first use and sends it one request at a time.
pub struct ForkHelper {
    program: PathBuf,
    log: Option<String>,
    conn: Mutex<Option<Connection>>,
}

struct Connection {
    socket: OwnedFd,
    child: std::process::Child,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Shutting our end down ends the helper's loop (even if a copy of the descriptor
        // survives somewhere); then reap it.
        // SAFETY: shutdown of a socket we own.
        let _ = unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = self.child.wait();
    }
}

impl ForkHelper {
    /// A helper that will run `program` (normally `/proc/self/exe`: the agent itself), with
    /// `log` in its [`HELPER_LOG_ENV`] (none: it logs nothing).
    pub fn new(program: impl Into<PathBuf>, log: Option<String>) -> ForkHelper {
        ForkHelper {
            program: program.into(),
            log,
            conn: Mutex::new(None),
        }
    }

    fn spawn(&self) -> Result<Connection> {
        // Container processes must come back to us when the launcher that forked them exits.
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(RuntimeError::internal(
                "PR_SET_CHILD_SUBREAPER",
                std::io::Error::last_os_error(),
            ));
        }
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| RuntimeError::internal("fork helper socketpair", e))?;
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(&self.program);
        cmd.arg0(HELPER_ARG0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .env_clear();
        if let Some(log) = &self.log {
            cmd.env(HELPER_LOG_ENV, log);
        }
        // SAFETY: dup2 is async-signal-safe; nothing else runs between fork and exec. dup2
        // clears close-on-exec on the new descriptor.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(theirs_fd, HELPER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            RuntimeError::internal(
                format!("starting the fork helper {}", self.program.display()),
                e,
            )
        })?;
        drop(theirs);
        Ok(Connection {
            socket: ours,
            child,
        })
    }

    fn call(&self, req: &Request, io: ProcessIo) -> Result<i32> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_none() {
            *conn = Some(self.spawn()?);
        }
        let c = conn.as_mut().expect("just set");
        let fds: Vec<RawFd> = [&io.stdin, &io.stdout, &io.stderr]
            .iter()
            .filter_map(|f| f.as_ref().map(|f| f.as_raw_fd()))
            .collect();
        let body = serde_json::to_vec(req).expect("a request serialises");
        let answer = exchange(c.socket.as_raw_fd(), &body, &fds);
        drop(io); // our copies; the helper got its own
        match answer {
            Ok(Answer::Pid(pid)) => Ok(pid),
            Ok(Answer::Failed(message)) => Err(RuntimeError::Internal(message)),
            Err(e) => {
                // The helper is gone or out of step: start a new one next time.
                *conn = None;
                Err(RuntimeError::Internal(format!("fork helper: {e}")))
            }
        }
    }

    pub fn create(
        &self,
        state_root: &Path,
        id: &str,
        bundle: &Path,
        no_pivot: bool,
        io: ProcessIo,
    ) -> Result<i32> {
        let op = Op::Create {
            bundle: bundle.into(),
            no_pivot,
        };
        let req = request(op, state_root, id, &io);
        self.call(&req, io)
    }

    pub fn start(&self, state_root: &Path, id: &str) -> Result<()> {
        let io = ProcessIo::default();
        let req = request(Op::Start, state_root, id, &io);
        self.call(&req, io).map(|_| ())
    }

    pub fn exec(&self, state_root: &Path, id: &str, process: &Path, io: ProcessIo) -> Result<i32> {
        let req = request(
            Op::Exec {
                process: process.into(),
            },
            state_root,
            id,
            &io,
        );
        self.call(&req, io)
    }
}

fn request(op: Op, state_root: &Path, id: &str, io: &ProcessIo) -> Request {
    Request {
        op,
        state_root: state_root.into(),
        id: id.into(),
        stdio: [io.stdin.is_some(), io.stdout.is_some(), io.stderr.is_some()],
        controlling_tty: io.controlling_tty,
    }
}

/// Sends one request with its descriptors and reads the answer.
fn exchange(socket: RawFd, body: &[u8], fds: &[RawFd]) -> std::io::Result<Answer> {
    let iov = [IoSlice::new(body)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(socket, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = loop {
        match nix::sys::socket::recv(socket, &mut buf, MsgFlags::empty()) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r?,
        }
    };
    if n == 0 {
        return Err(std::io::Error::other("the helper exited"));
    }
    serde_json::from_slice(&buf[..n]).map_err(std::io::Error::other)
}

/// In `main`, before anything else: if this process was started as the fork helper, serve
/// and exit; otherwise return at once. Checks argv[0] and that fd 3 is a seqpacket socket
/// whose peer is our parent (see the module documentation: PID 1 can never pass).
///
/// `init_logging` runs before it serves, in the helper only, with its [`HELPER_LOG_ENV`] if it has one.
pub fn run_if_helper(init_logging: impl FnOnce(&str)) {
    let is_helper_name = std::env::args_os().next().is_some_and(|a| a == HELPER_ARG0);
    if !is_helper_name || !fd3_is_our_parents_socket() {
        return;
    }
    // Descriptors the agent's own parent left open without close-on-exec are not ours to pass
    // on to containers.
    // SAFETY: close_range with constant arguments; nothing in this process uses fds above 3.
    unsafe { libc::syscall(libc::SYS_close_range, HELPER_FD + 1, libc::c_uint::MAX, 0) };
    // After the close: the log's own descriptor (a duplicate of stderr) is made here.
    if let Ok(log) = std::env::var(HELPER_LOG_ENV) {
        init_logging(&log);
    }
    // SAFETY: fd 3 was checked to be an open socket, and nothing else in this process owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(HELPER_FD) };
    serve(&socket);
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(0) }
}

fn fd3_is_our_parents_socket() -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a local int of the given size; fails harmlessly if fd 3 is not
    // an open socket.
    let rc = unsafe {
        libc::getsockopt(
            HELPER_FD,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || kind != libc::SOCK_SEQPACKET {
        return false;
    }
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a local ucred of the given size.
    let rc = unsafe {
        libc::getsockopt(
            HELPER_FD,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: getppid cannot fail.
    rc == 0 && cred.pid == unsafe { libc::getppid() }
}

/// The helper's loop: one request at a time until the agent closes its end.
fn serve(socket: &OwnedFd) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 3]);
        let (n, fds) = match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(list) = c {
                            // SAFETY: descriptors just received are ours alone.
                            fds.extend(
                                list.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                            );
                        }
                    }
                }
                (msg.bytes, fds)
            }
        };
        if n == 0 {
            return; // the agent closed its end
        }
        let answer = match serde_json::from_slice::<Request>(&buf[..n]) {
            Ok(req) => handle(req, fds),
            Err(e) => Answer::Failed(format!("fork helper: bad request: {e}")),
        };
        let body = serde_json::to_vec(&answer).expect("an answer serialises");
        if nix::sys::socket::send(socket.as_raw_fd(), &body, MsgFlags::MSG_NOSIGNAL).is_err() {
            return;
        }
    }
}

/// Forks a launcher for one request and collects its answer once it has exited (so that the
/// processes it created have been re-parented to the agent).
fn handle(req: Request, fds: Vec<OwnedFd>) -> Answer {
    let expected = req.stdio.iter().filter(|p| **p).count();
    if fds.len() != expected {
        return Answer::Failed(format!(
            "fork helper: {} descriptors came with a request for {expected}",
            fds.len()
        ));
    }
    let mut pipe = [0; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Answer::Failed(format!(
            "fork helper: pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: this process is single-threaded (a fresh exec that starts no thread), so the
    // child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Answer::Failed(format!(
            "fork helper: fork: {}",
            std::io::Error::last_os_error()
        ));
    }
    if pid == 0 {
        // The processes the launcher makes must not hold the helper's socket (until they
        // exec): the agent would then never see the end of a helper that died.
        // SAFETY: closing the helper's socket in this child only; it is not used here.
        unsafe { libc::close(HELPER_FD) };
        drop(read_end);
        let answer = launch(req, fds);
        let body = serde_json::to_vec(&answer).unwrap_or_default();
        let mut out = std::fs::File::from(write_end);
        let _ = out.write_all(&body);
        drop(out);
        // SAFETY: end the launcher without running exit handlers it does not own.
        unsafe { libc::_exit(0) }
    }
    drop(write_end);
    drop(fds);
    // Wait for the launcher first: the processes it made inherit the pipe's write end until
    // they exec, so end-of-file would not come. Its answer is far smaller than a pipe's
    // buffer, so it never waited to write it.
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(read_end.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut body = Vec::new();
    let _ = std::fs::File::from(read_end).read_to_end(&mut body);
    match serde_json::from_slice::<Answer>(&body) {
        Ok(answer) => answer,
        Err(_) => Answer::Failed(format!(
            "fork helper: the launcher ended without an answer (wait status {status:#x})"
        )),
    }
}

/// In the launcher: the libcontainer call itself.
fn launch(req: Request, fds: Vec<OwnedFd>) -> Answer {
    let mut fds = fds.into_iter();
    let mut io = ProcessIo {
        controlling_tty: req.controlling_tty,
        ..Default::default()
    };
    if req.stdio[0] {
        io.stdin = fds.next();
    }
    if req.stdio[1] {
        io.stdout = fds.next();
    }
    if req.stdio[2] {
        io.stderr = fds.next();
    }
    let id = req.id.clone();
    let result = match req.op {
        Op::Create { bundle, no_pivot } => builder(&req.state_root, &id, io).and_then(|b| {
            let container = b
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(no_pivot)
                .build()
                .map_err(|e| format!("creating container {id}: {e}"))?;
            container
                .pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| format!("container {id} has no init pid"))
        }),
        Op::Start => Container::load(req.state_root.join(&id))
            .map_err(|e| format!("loading container {id}: {e}"))
            .and_then(|mut c| {
                c.start()
                    .map_err(|e| format!("starting container {id}: {e}"))
            })
            .map(|()| 0),
        Op::Exec { process } => builder(&req.state_root, &id, io).and_then(|b| {
            b.as_tenant()
                .with_process(Some(&process))
                .with_detach(true)
                .build()
                .map(|p| p.as_raw())
                .map_err(|e| format!("exec in container {id}: {e}"))
        }),
    };
    match result {
        Ok(pid) => Answer::Pid(pid),
        Err(e) => Answer::Failed(e),
    }
}

fn builder(
    state_root: &Path,
    id: &str,
    io: ProcessIo,
) -> std::result::Result<ContainerBuilder, String> {
    let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(|e| format!("runtime state directory: {e}"))?;
    if io.controlling_tty {
        b = b.with_executor(crate::youki::ControllingTtyExecutor);
    }
    if let Some(fd) = io.stdin {
        b = b.with_stdin(fd);
    }
    if let Some(fd) = io.stdout {
        b = b.with_stdout(fd);
    }
    if let Some(fd) = io.stderr {
        b = b.with_stderr(fd);
    }
    Ok(b)
}
