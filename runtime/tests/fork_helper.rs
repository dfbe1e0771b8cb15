//! The fork helper's mode is selected only by a parent holding the peer of fd 3: argv[0]
//! alone, or another kind of descriptor at fd 3, leaves the binary an ordinary program.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

const HELPER: &str = env!("CARGO_BIN_EXE_vigil-fork-helper");

/// A close-on-exec unix socket pair of `kind`: (ours, the one given to the helper as fd 3).
fn pair(kind: SockType) -> (OwnedFd, OwnedFd) {
    socketpair(AddressFamily::Unix, kind, None, SockFlag::SOCK_CLOEXEC).unwrap()
}

/// Starts the helper binary with argv[0] `arg0` and `fd3` (if any) as its fd 3.
fn spawn(arg0: &str, fd3: Option<&OwnedFd>, stderr: Stdio) -> std::process::Child {
    let mut cmd = Command::new(HELPER);
    cmd.arg0(arg0).stderr(stderr).stdin(Stdio::null());
    if let Some(fd) = fd3 {
        let raw = fd.as_raw_fd();
        // SAFETY: dup2 only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().unwrap()
}

/// Runs the helper to its end; returns its exit code and stderr.
fn run(arg0: &str, fd3: Option<&OwnedFd>) -> (Option<i32>, String) {
    let mut child = spawn(arg0, fd3, Stdio::piped());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), err)
}

#[test]
fn argv0_alone_does_not_select_the_mode() {
    let (code, err) = run(vigil_runtime::fork_helper::HELPER_ARG0, None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("started by vigil-runtime only"), "{err}");
}

#[test]
fn a_stream_socket_at_fd3_does_not_select_the_mode() {
    let (ours, theirs) = pair(SockType::Stream);
    let (code, err) = run(vigil_runtime::fork_helper::HELPER_ARG0, Some(&theirs));
    drop(ours);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn the_right_socket_without_the_name_does_not_select_the_mode() {
    let (ours, theirs) = pair(SockType::SeqPacket);
    let (code, err) = run("some-other-name", Some(&theirs));
    drop(ours);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn the_helper_serves_its_parent_and_exits_when_the_parent_closes() {
    let (ours, theirs) = pair(SockType::SeqPacket);
    let mut child = spawn(
        vigil_runtime::fork_helper::HELPER_ARG0,
        Some(&theirs),
        Stdio::inherit(),
    );
    drop(theirs);
    // A request the helper must answer (with an error: there is no such container).
    let dir = tempfile::tempdir().unwrap();
    let req = serde_json::json!({
        "op": "Start",
        "state_root": dir.path(),
        "id": "nope",
        "stdio": [false, false, false],
        "controlling_tty": false
    });
    let body = serde_json::to_vec(&req).unwrap();
    nix::sys::socket::send(ours.as_raw_fd(), &body, nix::sys::socket::MsgFlags::empty()).unwrap();
    let mut buf = [0u8; 4096];
    let n = nix::sys::socket::recv(
        ours.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
    let failed = answer["Failed"].as_str().unwrap_or_default();
    assert!(failed.contains("loading container nope"), "{answer}");
    // A request with descriptors missing is refused, not guessed at.
    let req = serde_json::json!({
        "op": "Start", "state_root": dir.path(), "id": "nope",
        "stdio": [true, false, false], "controlling_tty": false
    });
    nix::sys::socket::send(
        ours.as_raw_fd(),
        &serde_json::to_vec(&req).unwrap(),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let n = nix::sys::socket::recv(
        ours.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
    assert!(
        answer["Failed"]
            .as_str()
            .unwrap_or_default()
            .contains("descriptors"),
        "{answer}"
    );
    drop(ours);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
