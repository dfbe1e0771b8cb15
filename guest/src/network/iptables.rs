//! `GetIPTables` / `SetIPTables` through the guest's own `iptables-save` / `iptables-restore`
//! (and the ip6 variants), as Kata's agent does.

use std::path::PathBuf;

use crate::error::{GuestError, Result};

/// Where a guest image keeps iptables' tools.
pub(super) const PROGRAM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

pub(super) fn find_program(name: &str, dirs: &[&str]) -> Result<PathBuf> {
    dirs.iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            GuestError::FailedPrecondition(format!(
                "{name} is not installed in the guest (looked in {})",
                dirs.join(", ")
            ))
        })
}

/// Runs the guest's `name` with `input` on its stdin; answers its stdout.
pub(super) async fn run_program(name: &'static str, input: Vec<u8>) -> Result<Vec<u8>> {
    run(find_program(name, &PROGRAM_DIRS)?, input).await
}

/// Runs `path` with `input` on its stdin; answers its stdout, or an error carrying its stderr.
pub(super) async fn run(path: PathBuf, input: Vec<u8>) -> Result<Vec<u8>> {
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
            .map_err(|e| GuestError::Internal(format!("starting {}: {e}", path.display())))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Written from its own thread: a program that prints before it has read all its input
        // would otherwise deadlock against us.
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child
            .wait_with_output()
            .map_err(|e| GuestError::Internal(format!("running {name}: {e}")))?;
        let written = writer.join();
        if !out.status.success() {
            return Err(GuestError::Internal(format!(
                "{name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        match written {
            Ok(Ok(())) => Ok(out.stdout),
            Ok(Err(e)) => Err(GuestError::Internal(format!(
                "{name} did not read all its input: {e}"
            ))),
            Err(_) => Err(GuestError::Internal(format!(
                "writing {name}'s input panicked"
            ))),
        }
    })
    .await
    .map_err(|e| GuestError::Internal(format!("{task_name} task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_a_failed_precondition_naming_it() {
        let e = find_program("vigil-no-such-tool", &PROGRAM_DIRS).unwrap_err();
        assert!(
            matches!(&e, GuestError::FailedPrecondition(m) if m.contains("vigil-no-such-tool")),
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
            matches!(&e, GuestError::Internal(m) if m.contains("fake-save") && m.contains("line 3: bad rule")),
            "{e}"
        );
    }
}
