//! A container's processes: the init process and the exec'd ones, how they are addressed,
//! their stdio, signals and exit.
//!
//! Addressing follows Kata's agent: the init process answers to `""` and to the exec id its
//! CreateContainer gave it (Kata's Go shim sends the container id there and then uses it in
//! WaitProcess, the stream RPCs, SignalProcess and TtyWinResize); every exec'd process answers
//! to its own exec id.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use protobuf::well_known_types::empty::Empty;
use tokio::sync::watch;
use vigil_protos::agent::*;
use vigil_protos::oci;

use super::{check_id, live, lock, not_running, Container};
use crate::error::{Result, RuntimeError};
use crate::runtime::{ClaimToken, ProcessIo};
use crate::spec;
use crate::stdio::{self, OutputBuffer, StdinWriter};
use crate::Sandbox;

/// Largest chunk one ReadStdout/ReadStderr returns (well under ttrpc's message limit).
const MAX_READ: usize = 1 << 20;

pub(super) struct Process {
    pub(super) pid: i32,
    pidfd: Arc<OwnedFd>,
    stdin: tokio::sync::Mutex<Option<StdinWriter>>,
    stdout: Option<Arc<OutputBuffer>>,
    stderr: Option<Arc<OutputBuffer>>,
    pty_master: Option<OwnedFd>,
    pub(super) exit: watch::Receiver<Option<i32>>,
    waited: AtomicBool,
}

impl Process {
    pub(super) fn exited(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    async fn wait(&self) -> i32 {
        let mut rx = self.exit.clone();
        let status = match rx.wait_for(|s| s.is_some()).await {
            Ok(s) => s.unwrap_or(255),
            Err(_) => self.exited().unwrap_or(255),
        };
        self.waited.store(true, Ordering::SeqCst);
        status
    }

    /// Nothing more can be asked of it: exited, waited for, all output read.
    fn finished(&self) -> bool {
        self.exited().is_some()
            && self.waited.load(Ordering::SeqCst)
            && self.stdout.as_ref().is_none_or(|b| b.is_finished())
            && self.stderr.as_ref().is_none_or(|b| b.is_finished())
    }
}

/// The agent-side ends of a new process's stdio.
pub(super) struct ParentIo {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    pty_master: Option<OwnedFd>,
}

pub(super) fn new_io(process: &oci::Process) -> Result<(ProcessIo, ParentIo)> {
    if process.Terminal {
        let size = process.ConsoleSize.as_ref();
        let rows = size
            .map(|s| s.Height)
            .unwrap_or(24)
            .clamp(1, u16::MAX as u32) as u16;
        let cols = size
            .map(|s| s.Width)
            .unwrap_or(80)
            .clamp(1, u16::MAX as u32) as u16;
        let (master, slave) = stdio::pty(rows, cols)?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| RuntimeError::internal("pty", e));
        Ok((
            ProcessIo {
                stdin: Some(dup(&slave)?),
                stdout: Some(dup(&slave)?),
                stderr: Some(slave),
                controlling_tty: true,
            },
            ParentIo {
                stdin: Some(dup(&master)?),
                stdout: Some(dup(&master)?),
                stderr: None,
                pty_master: Some(master),
            },
        ))
    } else {
        let (in_r, in_w) = stdio::pipe()?;
        let (out_r, out_w) = stdio::pipe()?;
        let (err_r, err_w) = stdio::pipe()?;
        Ok((
            ProcessIo {
                stdin: Some(in_r),
                stdout: Some(out_w),
                stderr: Some(err_w),
                controlling_tty: false,
            },
            ParentIo {
                stdin: Some(in_w),
                stdout: Some(out_r),
                stderr: Some(err_r),
                pty_master: None,
            },
        ))
    }
}

/// Reaps the process behind `pidfd` once it exits; Kata's convention for the status:
/// the exit code, or 128 + the signal that killed it.
fn reap(pidfd: &OwnedFd) -> std::io::Result<Option<i32>> {
    // SAFETY: a zeroed siginfo_t is valid; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid succeeded, so the child fields are set (si_pid 0: not exited yet).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => status,
        _ => 128 + status,
    }))
}

/// Drops a finished exec process so long-lived containers with many execs (probes) do not
/// accumulate them. The init process stays until the container is removed.
fn forget_if_finished(c: &Container, exec_id: &str) {
    if c.is_init(exec_id) {
        return;
    }
    let mut procs = lock(&c.processes);
    if procs.get(exec_id).is_some_and(|p| p.finished()) {
        procs.remove(exec_id);
    }
}

async fn close(p: &Process, stdin: &mut Option<StdinWriter>) -> Result<()> {
    if p.pty_master.is_some() {
        // Closing a terminal's master would hang it up; end-of-file on a terminal is ^D.
        if let Some(w) = stdin.as_ref() {
            w.write_all(&[0x04]).await?;
        }
    } else {
        stdin.take();
    }
    Ok(())
}

pub(super) fn send_signal(p: &Process, signal: i32) -> Result<()> {
    // pidfd_send_signal cannot hit a recycled pid, unlike kill(2); an exited process is fine.
    crate::pidfd::send_signal(p.pidfd.as_fd(), signal)
        .map(|_| ())
        .map_err(|e| RuntimeError::internal(format!("signal {signal} to pid {}", p.pid), e))
}

/// Whether process `pid` (a child of the agent, so its pid cannot be reused before it is
/// reaped) has a handler for `signal`: the `SigCgt` mask of its status. Unreadable (it is
/// gone) counts as no handler.
fn catches_signal(pid: i32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (signal - 1)) != 0)
}

async fn watch_exit(pidfd: OwnedFd) -> i32 {
    let afd = match stdio::async_fd(pidfd, "pidfd") {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch a process for exit");
            return 255;
        }
    };
    loop {
        match reap(afd.get_ref()) {
            Ok(Some(status)) => return status,
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "reaping a container process");
                return 255;
            }
        }
        match afd.readable().await {
            Ok(mut g) => g.clear_ready(),
            Err(_) => return 255,
        }
    }
}

impl Sandbox {
    async fn process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<(Arc<Container>, Arc<Process>)> {
        let c = self.container(container_id).await?;
        let p = if c.is_init(exec_id) {
            c.init.clone()
        } else {
            lock(&c.processes)
                .get(exec_id)
                .cloned()
                .ok_or_else(|| RuntimeError::not_found("process", exec_id))?
        };
        Ok((c, p))
    }

    /// Starts draining the process's output and watching for its exit.
    pub(super) fn track(
        &self,
        container_id: &str,
        pid: i32,
        claim: ClaimToken,
        io: ParentIo,
        oom_on_kill: bool,
    ) -> Result<Arc<Process>> {
        let pidfd = Arc::new(crate::pidfd::open(pid)?);
        let limit = self.config.output_limit;
        let stdout = match io.stdout {
            Some(fd) => {
                let b = OutputBuffer::new(limit);
                stdio::spawn_drain(fd, b.clone())?;
                Some(b)
            }
            None => None,
        };
        let stderr = match io.stderr {
            Some(fd) => {
                let b = OutputBuffer::new(limit);
                stdio::spawn_drain(fd, b.clone())?;
                Some(b)
            }
            None => None,
        };
        let stdin = io.stdin.map(StdinWriter::new).transpose()?;
        let (tx, rx) = watch::channel(None);
        let watched = pidfd
            .try_clone()
            .map_err(|e| RuntimeError::internal("pidfd", e))?;
        let runtime = self.runtime.clone();
        let oom_tx = self.oom_tx.clone();
        let cid = container_id.to_string();
        tokio::spawn(async move {
            let status = watch_exit(watched).await;
            drop(claim); // reaped: the agent's reaper may have the pid back
            let _ = tx.send(Some(status));
            // A SIGKILL may be the OOM killer's: report it if the cgroup's counter moved.
            if oom_on_kill && status == 128 + libc::SIGKILL {
                let id = cid.clone();
                if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || runtime.oom_kills(&id)).await
                {
                    if n > 0 {
                        let _ = oom_tx.send(format!("{cid}\0{n}"));
                    }
                }
            }
        });
        Ok(Arc::new(Process {
            pid,
            pidfd,
            stdin: tokio::sync::Mutex::new(stdin),
            stdout,
            stderr,
            pty_master: io.pty_master,
            exit: rx,
            waited: AtomicBool::new(false),
        }))
    }

    pub async fn exec_process(&self, req: ExecProcessRequest) -> Result<Empty> {
        check_id(&req.exec_id, "exec_id")?;
        let process = req
            .process
            .as_ref()
            .ok_or_else(|| RuntimeError::invalid("process", "missing"))?;
        if req.stdin_port != 0 || req.stdout_port != 0 || req.stderr_port != 0 {
            return Err(RuntimeError::invalid(
                "stdin_port",
                "passfd I/O is not supported",
            ));
        }
        let oci_process = spec::exec_process(process, &self.limits())?;
        let c = self.container(&req.container_id).await?;
        let ops = c.ops.lock().await;
        live(&ops, &c)?;
        not_running(&ops, &c)?;
        if c.is_init(&req.exec_id) || lock(&c.processes).contains_key(&req.exec_id) {
            return Err(RuntimeError::AlreadyExists {
                kind: "process",
                id: req.exec_id.clone(),
            });
        }
        let (child_io, parent_io) = new_io(process)?;
        let (runtime, id) = (self.runtime.clone(), c.id.clone());
        let (pid, claim) = self
            .spawn_claimed(move || runtime.exec(&id, &oci_process, child_io))
            .await?;
        let p = self.track(&c.id, pid, claim, parent_io, !c.oom_watched)?;
        lock(&c.processes).insert(req.exec_id.clone(), p);
        Ok(Empty::new())
    }

    pub async fn signal_process(&self, req: SignalProcessRequest) -> Result<Empty> {
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (0..=64).contains(s))
            .ok_or_else(|| {
                RuntimeError::invalid("signal", format!("{} is not a signal", req.signal))
            })?;
        // Kata's convention: an empty exec id with SIGKILL means every process of the container
        // (its runtimes encode `all` so); any other signal goes to one process, the init
        // process for "" or its own exec id.
        if req.exec_id.is_empty() && signal == libc::SIGKILL {
            let c = self.container(&req.container_id).await?;
            let ops = c.ops.lock().await;
            live(&ops, &c)?;
            if c.init.exited().is_some() {
                return Ok(Empty::new()); // nothing left to signal (Kata ignores ESRCH too)
            }
            self.blocking(&c.id, move |rt, id| rt.signal_all(id, signal))
                .await?;
        } else {
            let (c, p) = self.process(&req.container_id, &req.exec_id).await?;
            // The init process is PID 1 of its PID namespace, and the kernel drops a signal it
            // has no handler for: SIGTERM would never stop a shell or a plain binary there. As
            // Kata's agent does, SIGTERM to an init process that does not catch it is SIGKILL.
            let signal = if Arc::ptr_eq(&p, &c.init)
                && signal == libc::SIGTERM
                && !catches_signal(p.pid, signal)
            {
                libc::SIGKILL
            } else {
                signal
            };
            send_signal(&p, signal)?;
        }
        Ok(Empty::new())
    }

    pub async fn wait_process(&self, req: WaitProcessRequest) -> Result<WaitProcessResponse> {
        let (c, p) = self.process(&req.container_id, &req.exec_id).await?;
        let status = p.wait().await;
        forget_if_finished(&c, &req.exec_id);
        Ok(WaitProcessResponse {
            status,
            ..Default::default()
        })
    }

    pub async fn write_stdin(&self, req: WriteStreamRequest) -> Result<WriteStreamResponse> {
        let (_, p) = self.process(&req.container_id, &req.exec_id).await?;
        let mut stdin = p.stdin.lock().await;
        if req.data.is_empty() {
            // Kata's convention: an empty write closes stdin.
            close(&p, &mut stdin).await?;
        } else {
            stdin
                .as_ref()
                .ok_or_else(|| RuntimeError::FailedPrecondition("stdin is closed".into()))?
                .write_all(&req.data)
                .await?;
        }
        Ok(WriteStreamResponse {
            len: req.data.len() as u32,
            ..Default::default()
        })
    }

    pub async fn read_stdout(&self, req: ReadStreamRequest) -> Result<ReadStreamResponse> {
        self.read(req, true).await
    }

    pub async fn read_stderr(&self, req: ReadStreamRequest) -> Result<ReadStreamResponse> {
        self.read(req, false).await
    }

    async fn read(&self, req: ReadStreamRequest, stdout: bool) -> Result<ReadStreamResponse> {
        let (c, p) = self.process(&req.container_id, &req.exec_id).await?;
        let buf = if stdout { &p.stdout } else { &p.stderr };
        // A terminal has one output stream, read as stdout.
        let buf = buf.as_ref().ok_or(RuntimeError::EndOfStream)?;
        let len = if req.len == 0 {
            MAX_READ
        } else {
            (req.len as usize).min(MAX_READ)
        };
        let data = buf.read(len).await;
        if matches!(data, Err(RuntimeError::EndOfStream)) {
            forget_if_finished(&c, &req.exec_id);
        }
        Ok(ReadStreamResponse {
            data: data?,
            ..Default::default()
        })
    }

    pub async fn close_stdin(&self, req: CloseStdinRequest) -> Result<Empty> {
        let (_, p) = self.process(&req.container_id, &req.exec_id).await?;
        let mut stdin = p.stdin.lock().await;
        close(&p, &mut stdin).await?;
        Ok(Empty::new())
    }

    pub async fn tty_win_resize(&self, req: TtyWinResizeRequest) -> Result<Empty> {
        let (_, p) = self.process(&req.container_id, &req.exec_id).await?;
        let master = p.pty_master.as_ref().ok_or_else(|| {
            RuntimeError::FailedPrecondition("the process has no terminal".into())
        })?;
        let rows = u16::try_from(req.row)
            .map_err(|_| RuntimeError::invalid("row", format!("{} is too large", req.row)))?;
        let cols = u16::try_from(req.column)
            .map_err(|_| RuntimeError::invalid("column", format!("{} is too large", req.column)))?;
        stdio::resize(master, rows, cols)?;
        Ok(Empty::new())
    }
}
