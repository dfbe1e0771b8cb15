//! OCI hooks, when `[sandbox] allow_hooks` lets them run: which kinds exist, where each runs,
//! and the two the agent runs itself.
//!
//! | kind | runs | path resolves in, runs in | by |
//! |---|---|---|---|
//! | `prestart` (deprecated), `createRuntime` | CreateContainer, once the container's namespaces exist, before pivot_root | the agent's (runtime) namespaces | libcontainer, in the agent |
//! | `createContainer` | CreateContainer, before pivot_root | the runtime's root; the container's namespaces | libcontainer, in the container's init |
//! | `startContainer` | StartContainer, before the user process | the container's root and namespaces | libcontainer, in the container's init |
//! | `poststart` | StartContainer, after the user process started | the agent's | the agent ([`run`]) |
//! | `poststop` | RemoveContainer (and DestroySandbox), once the container is deleted | the agent's | the agent ([`run`]) |
//!
//! Every hook gets the container's OCI state (`ociVersion`, `id`, `status`, `pid`, `bundle`,
//! `annotations`) on stdin. As the OCI runtime spec says, a failing hook of the first four
//! kinds fails the container (CreateContainer answers the error; a startContainer hook runs
//! after StartContainer has answered, as in runc, and ends the init process instead), while a
//! failing poststart or poststop hook is logged and the lifecycle goes on. A hook's `timeout`
//! bounds it (it is killed after that many seconds); without one, Kata's agent's 10 seconds.
//!
//! The agent runs poststart and poststop itself because libcontainer fails `start` and
//! `delete` when they fail, which would leave a running container looking unstarted and a
//! deleted one undeletable.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Hook;
use serde_json::{json, Value};
use vigil_protos::oci;

use crate::error::{Result, RuntimeError};
use crate::runtime::ChildClaims;

/// A hook's time limit when it sets none (Kata's agent's default).
pub(crate) const DEFAULT_TIMEOUT_SECS: i64 = 10;
/// How much of a failed hook's stderr is kept for the log line.
const STDERR_KEPT: usize = 4096;

/// The OCI names of the six kinds with their request field names.
const KINDS: [(&str, &str); 6] = [
    ("prestart", "Prestart"),
    ("createRuntime", "CreateRuntime"),
    ("createContainer", "CreateContainer"),
    ("startContainer", "StartContainer"),
    ("poststart", "Poststart"),
    ("poststop", "Poststop"),
];

fn lists(h: &oci::Hooks) -> [&[oci::Hook]; 6] {
    [
        &h.Prestart,
        &h.CreateRuntime,
        &h.CreateContainer,
        &h.StartContainer,
        &h.Poststart,
        &h.Poststop,
    ]
}

/// How many hooks of any kind `h` holds.
pub(crate) fn count(h: &oci::Hooks) -> usize {
    lists(h).iter().map(|l| l.len()).sum()
}

/// The spec's hooks in OCI JSON, every hook checked (an absolute path, `KEY=value`
/// environment entries, a timeout not below zero; zero means Kata's default). Refusals name
/// the field, e.g. `OCI.Hooks.Poststart[1].Path`.
pub(crate) fn spec_json(h: &oci::Hooks) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for ((name, field), list) in KINDS.iter().zip(lists(h)) {
        if list.is_empty() {
            continue;
        }
        let mut hooks = Vec::new();
        for (i, k) in list.iter().enumerate() {
            let field = format!("OCI.Hooks.{field}[{i}]");
            if !Path::new(&k.Path).is_absolute() || k.Path.contains('\0') {
                return Err(RuntimeError::invalid(
                    format!("{field}.Path"),
                    format!("{:?} is not an absolute path", k.Path),
                ));
            }
            if let Some(j) = k
                .Env
                .iter()
                .position(|e| !e.contains('=') || e.contains('\0'))
            {
                return Err(RuntimeError::invalid(
                    format!("{field}.Env[{j}]"),
                    format!("{:?} is not KEY=value", k.Env[j]),
                ));
            }
            if k.Timeout < 0 {
                return Err(RuntimeError::invalid(
                    format!("{field}.Timeout"),
                    format!("{} is below zero", k.Timeout),
                ));
            }
            let timeout = if k.Timeout == 0 {
                DEFAULT_TIMEOUT_SECS
            } else {
                k.Timeout
            };
            let mut v = json!({"path": k.Path, "env": k.Env, "timeout": timeout});
            if !k.Args.is_empty() {
                v["args"] = json!(k.Args);
            }
            hooks.push(v);
        }
        out.insert(name.to_string(), Value::Array(hooks));
    }
    Ok(Value::Object(out))
}

/// The hooks the agent runs itself, taken out of the spec the runtime library gets.
#[derive(Debug, Default, Clone)]
pub(crate) struct AgentHooks {
    pub(crate) poststart: Vec<Hook>,
    pub(crate) poststop: Vec<Hook>,
}

impl AgentHooks {
    /// Takes poststart and poststop out of `spec` (libcontainer runs the others).
    pub(crate) fn take(spec: &mut oci_spec::runtime::Spec) -> AgentHooks {
        let Some(h) = spec.hooks().clone() else {
            return AgentHooks::default();
        };
        let mut rest = h.clone();
        rest.set_poststart(None).set_poststop(None);
        spec.set_hooks(Some(rest));
        AgentHooks {
            poststart: h.poststart().clone().unwrap_or_default(),
            poststop: h.poststop().clone().unwrap_or_default(),
        }
    }
}

/// The OCI state a hook reads on stdin.
pub(crate) fn state(
    id: &str,
    status: &str,
    pid: Option<i32>,
    bundle: &Path,
    annotations: &std::collections::HashMap<String, String>,
) -> Value {
    let mut v = json!({"ociVersion": "1.0.2", "id": id, "status": status, "bundle": bundle});
    if let Some(pid) = pid {
        v["pid"] = json!(pid);
    }
    if !annotations.is_empty() {
        v["annotations"] = json!(annotations);
    }
    v
}

/// Runs `hooks` of kind `kind` in order, each with `state` on stdin; returns one message per
/// hook that failed (the others still run, as poststart and poststop hooks must).
pub(crate) fn run(
    kind: &str,
    hooks: &[Hook],
    state: &Value,
    claims: &dyn ChildClaims,
) -> Vec<String> {
    let state = state.to_string();
    hooks
        .iter()
        .filter_map(|h| {
            run_one(h, state.as_bytes(), claims)
                .err()
                .map(|e| format!("{kind} hook {}: {e}", h.path().display()))
        })
        .collect()
}

fn run_one(hook: &Hook, state: &[u8], claims: &dyn ChildClaims) -> std::result::Result<(), String> {
    let mut cmd = std::process::Command::new(hook.path());
    if let Some((arg0, rest)) = hook.args().as_deref().and_then(|a| a.split_first()) {
        std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
        cmd.args(rest);
    }
    cmd.env_clear();
    for e in hook.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // As PID 1 the agent reaps orphans: this child is claimed until it has been waited for.
    let mut spawned = None;
    let mut spawn_error = None;
    let claim = claims.claimed(&mut || match cmd.spawn() {
        Ok(c) => {
            let pid = c.id() as i32;
            spawned = Some(c);
            Some(pid)
        }
        Err(e) => {
            spawn_error = Some(e);
            None
        }
    });
    let mut child = match (spawned, spawn_error) {
        (Some(c), _) => c,
        (None, Some(e)) => return Err(format!("cannot run it: {e}")),
        (None, None) => return Err("cannot run it".into()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A hook may exit without reading its state: a broken pipe is its business.
        let _ = stdin.write_all(state);
    }
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            kept
        })
    });
    let secs = hook
        .timeout()
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    let timeout = Duration::from_secs(secs as u64);
    let exited = crate::pidfd::open(child.id() as i32)
        .map_err(|e| e.to_string())
        .and_then(|fd| {
            let done = crate::pidfd::wait_exit(fd.as_fd(), timeout).map_err(|e| e.to_string())?;
            if !done {
                let _ = crate::pidfd::send_signal(fd.as_fd(), libc::SIGKILL);
            }
            Ok(done)
        });
    let status = child.wait();
    drop(claim);
    let stderr = stderr
        .and_then(|t| t.join().ok())
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let with_stderr = |msg: String| {
        if stderr.is_empty() {
            msg
        } else {
            format!("{msg} (stderr: {stderr})")
        }
    };
    match (exited?, status) {
        (false, _) => Err(format!("killed after its timeout of {secs}s")),
        (true, Ok(s)) if s.success() => Ok(()),
        (true, Ok(s)) => Err(with_stderr(format!("ended with {s}"))),
        (true, Err(e)) => Err(format!("waiting for it: {e}")),
    }
}

/// Kata's guest hooks (CreateSandbox's `guest_hook_path`): the executable regular files in
/// `<dir>/prestart`, `<dir>/poststart` and `<dir>/poststop` of the guest image, each run with
/// arguments `[file name, kind]`, added to every container's spec. A missing kind directory
/// means no hooks of that kind; symlinks and non-executables are skipped, as Kata's agent does.
pub(crate) fn guest_hooks(dir: &str) -> Result<oci::Hooks> {
    let field = "guest_hook_path";
    let root = crate::confine::check_lexically(dir, field)?;
    if !root.is_absolute() {
        return Err(RuntimeError::invalid(
            field,
            format!("{dir:?} is not absolute"),
        ));
    }
    std::fs::read_dir(root).map_err(|e| RuntimeError::invalid(field, format!("{dir:?}: {e}")))?;
    let find = |kind: &str| -> Result<Vec<oci::Hook>> {
        let sub: PathBuf = root.join(kind);
        let entries = match std::fs::read_dir(&sub) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(RuntimeError::invalid(
                    field,
                    format!("{}: {e}", sub.display()),
                ))
            }
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| RuntimeError::internal(sub.display(), e))?;
            let meta = entry
                .path()
                .symlink_metadata()
                .map_err(|e| RuntimeError::internal(entry.path().display(), e))?;
            use std::os::unix::fs::PermissionsExt;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            found.push(oci::Hook {
                Path: entry.path().to_string_lossy().into_owned(),
                Args: vec![name, kind.to_string()],
                ..Default::default()
            });
        }
        found.sort_by(|a, b| a.Path.cmp(&b.Path));
        Ok(found)
    };
    Ok(oci::Hooks {
        Prestart: find("prestart")?,
        Poststart: find("poststart")?,
        Poststop: find("poststop")?,
        ..Default::default()
    })
}

/// Adds the sandbox's guest hooks after the spec's own, kind by kind.
pub(crate) fn append(spec: &mut oci::Spec, guest: &oci::Hooks) {
    if count(guest) == 0 {
        return;
    }
    let mut h = spec.Hooks.as_ref().cloned().unwrap_or_default();
    h.Prestart.extend(guest.Prestart.iter().cloned());
    h.Poststart.extend(guest.Poststart.iter().cloned());
    h.Poststop.extend(guest.Poststop.iter().cloned());
    spec.Hooks = Some(h).into();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(path: &str) -> oci::Hook {
        oci::Hook {
            Path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_kind_is_converted_with_a_timeout_and_bad_hooks_are_named() {
        let h = oci::Hooks {
            Prestart: vec![hook("/a")],
            CreateRuntime: vec![hook("/b")],
            CreateContainer: vec![hook("/c")],
            StartContainer: vec![hook("/d")],
            Poststart: vec![oci::Hook {
                Timeout: 3,
                Args: vec!["e".into(), "x".into()],
                ..hook("/e")
            }],
            Poststop: vec![hook("/f")],
            ..Default::default()
        };
        let v = spec_json(&h).unwrap();
        for (kind, path) in [
            ("prestart", "/a"),
            ("createRuntime", "/b"),
            ("createContainer", "/c"),
            ("startContainer", "/d"),
            ("poststart", "/e"),
            ("poststop", "/f"),
        ] {
            assert_eq!(v[kind][0]["path"], path, "{kind}");
        }
        assert_eq!(v["prestart"][0]["timeout"], DEFAULT_TIMEOUT_SECS);
        assert_eq!(v["poststart"][0]["timeout"], 3);
        assert_eq!(v["poststart"][0]["args"], json!(["e", "x"]));
        let spec: oci_spec::runtime::Hooks = serde_json::from_value(v).unwrap();
        assert_eq!(spec.create_container().as_ref().unwrap().len(), 1);

        let refused = |h: oci::Hooks| match spec_json(&h) {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut bad = oci::Hooks {
            Poststop: vec![hook("/ok"), hook("relative")],
            ..Default::default()
        };
        assert_eq!(refused(bad.clone()), "OCI.Hooks.Poststop[1].Path");
        bad.Poststop[1] = oci::Hook {
            Env: vec!["A=1".into(), "B".into()],
            ..hook("/x")
        };
        assert_eq!(refused(bad.clone()), "OCI.Hooks.Poststop[1].Env[1]");
        bad.Poststop[1] = oci::Hook {
            Timeout: -1,
            ..hook("/x")
        };
        assert_eq!(refused(bad), "OCI.Hooks.Poststop[1].Timeout");
    }

    #[test]
    fn poststart_and_poststop_are_taken_out_for_the_agent() {
        let h = oci::Hooks {
            Prestart: vec![hook("/a")],
            Poststart: vec![hook("/e")],
            Poststop: vec![hook("/f")],
            ..Default::default()
        };
        let mut spec: oci_spec::runtime::Spec =
            serde_json::from_value(json!({"ociVersion": "1.0.2", "hooks": spec_json(&h).unwrap()}))
                .unwrap();
        let taken = AgentHooks::take(&mut spec);
        assert_eq!(taken.poststart[0].path(), Path::new("/e"));
        assert_eq!(taken.poststop[0].path(), Path::new("/f"));
        let left = spec.hooks().as_ref().unwrap();
        assert!(left.poststart().is_none() && left.poststop().is_none());
        assert_eq!(left.prestart().as_ref().unwrap().len(), 1);
    }

    #[test]
    fn guest_hook_directories_give_executable_files_only() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let pre = t.path().join("prestart");
        std::fs::create_dir(&pre).unwrap();
        for (name, mode) in [("run-me", 0o755), ("not-me", 0o644)] {
            std::fs::write(pre.join(name), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(pre.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        std::os::unix::fs::symlink(pre.join("run-me"), pre.join("link")).unwrap();
        let h = guest_hooks(t.path().to_str().unwrap()).unwrap();
        assert_eq!(h.Prestart.len(), 1, "{:?}", h.Prestart);
        assert_eq!(h.Prestart[0].Args, ["run-me", "prestart"]);
        assert!(h.Poststart.is_empty() && h.Poststop.is_empty());
        for bad in ["relative", "/nonexistent/vigil-hooks"] {
            assert!(
                matches!(guest_hooks(bad), Err(RuntimeError::InvalidArgument { ref field, .. }) if field == "guest_hook_path"),
                "{bad}"
            );
        }
    }
}
