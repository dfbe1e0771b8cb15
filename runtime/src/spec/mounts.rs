//! The spec's mounts: only the types a container needs, with the flags that keep them from
//! reaching the guest forced, and bind sources only from what the sandbox owns.
//!
//! | type | forced options | notes |
//! |---|---|---|
//! | `proc` | nosuid, nodev, noexec | the container's own PID namespace (always private) |
//! | `sysfs` | nosuid, nodev, noexec, ro | ro lifted only by `allow_privileged` |
//! | `tmpfs` | nosuid, nodev | nodev not on `/dev`, which holds the container's device nodes |
//! | `devpts` | nosuid, noexec | |
//! | `mqueue` | nosuid, nodev, noexec | |
//! | `cgroup`, `cgroup2` | nosuid, nodev, noexec, ro | ro lifted only by `allow_privileged` |
//! | `bind` | nosuid, nodev | source beneath the sandbox's own directories (see `Placement`) |
//!
//! Anything else (configfs, devtmpfs, debugfs, securityfs, a disk's ext4, ...) is refused
//! naming the mount, as are shared mount propagation (`shared`, `rshared`: mounts made in the
//! container would reach the agent) unless `allow_privileged`. A spec without a `/dev` mount
//! gets a tmpfs there, as runc's default spec has, so device nodes live in a fresh file system.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};
use vigil_protos::oci;

use super::{Placement, SpecContext};
use crate::error::{Result, RuntimeError};

const ALLOWED_TYPES: [&str; 7] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

fn is_bind(m: &oci::Mount) -> bool {
    m.type_ == "bind"
        || (matches!(m.type_.as_str(), "" | "none")
            && m.options.iter().any(|o| o == "bind" || o == "rbind"))
}

/// The options that must be set on a mount of `kind` at `dest`, and whether `ro` is.
fn forced(kind: &str, dest: &Path, privileged: bool) -> (&'static [&'static str], bool) {
    match kind {
        "proc" | "mqueue" => (&["nosuid", "nodev", "noexec"], false),
        "sysfs" | "cgroup" | "cgroup2" => (&["nosuid", "nodev", "noexec"], !privileged),
        "tmpfs" if dest == Path::new("/dev") => (&["nosuid"], false),
        "tmpfs" | "bind" => (&["nosuid", "nodev"], false),
        "devpts" => (&["nosuid", "noexec"], false),
        _ => (&[], false),
    }
}

/// The options with the forced ones applied: their opposites dropped, the flags appended.
fn apply_forced(options: &[String], force: &[&str], read_only: bool) -> Vec<String> {
    let opposite = |o: &str| match o {
        "suid" => force.contains(&"nosuid"),
        "dev" => force.contains(&"nodev"),
        "exec" => force.contains(&"noexec"),
        "rw" => read_only,
        _ => false,
    };
    let mut out: Vec<String> = options.iter().filter(|o| !opposite(o)).cloned().collect();
    for f in force.iter().copied().chain(read_only.then_some("ro")) {
        if !out.iter().any(|o| o == f) {
            out.push(f.to_string());
        }
    }
    out
}

pub(crate) fn mounts_json(
    mounts: &[oci::Mount],
    ctx: &SpecContext,
    place: &mut dyn Placement,
) -> Result<Value> {
    let privileged = ctx.limits.allow_privileged;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(mounts.len() + 1);
    for (i, m) in mounts.iter().enumerate() {
        let field = |f: &str| format!("OCI.Mounts[{i}].{f}");
        let dest = Path::new(&m.destination);
        if !dest.is_absolute() {
            return Err(RuntimeError::invalid(
                field("destination"),
                format!("{:?} is not absolute", m.destination),
            ));
        }
        if dest.components().any(|c| c == Component::ParentDir) {
            return Err(RuntimeError::invalid(
                field("destination"),
                format!("{:?} contains \"..\"", m.destination),
            ));
        }
        // Compare normalised destinations: "/a/b/" and "/a//b" are the same place.
        let normal: PathBuf = dest.components().collect();
        if !seen.insert(normal.clone()) {
            return Err(RuntimeError::invalid(
                field("destination"),
                format!("{:?} is mounted twice", m.destination),
            ));
        }
        let bind = is_bind(m);
        let kind = if bind { "bind" } else { m.type_.as_str() };
        if !bind && !ALLOWED_TYPES.contains(&kind) {
            return Err(RuntimeError::invalid(
                field("type"),
                format!(
                    "{kind:?} is not a mount type containers may use ({}, bind)",
                    ALLOWED_TYPES.join(", ")
                ),
            ));
        }
        for (j, o) in m.options.iter().enumerate() {
            if matches!(o.as_str(), "shared" | "rshared") && !privileged {
                return Err(RuntimeError::invalid(
                    format!("OCI.Mounts[{i}].options[{j}]"),
                    format!(
                        "{o:?} propagation would let mounts made in the container reach the \
                         guest; allowed only with [sandbox] allow_privileged"
                    ),
                ));
            }
        }
        let source = if bind {
            place.bind_source(&m.source, &field("source"))?
        } else {
            if Path::new(&m.source)
                .components()
                .any(|c| c == Component::ParentDir)
            {
                return Err(RuntimeError::invalid(
                    field("source"),
                    format!("{:?} contains \"..\"", m.source),
                ));
            }
            PathBuf::from(if m.source.is_empty() { kind } else { &m.source })
        };
        let (force, read_only) = forced(kind, &normal, privileged);
        let mut j = json!({
            "destination": m.destination,
            "options": apply_forced(&m.options, force, read_only),
            "source": source,
        });
        j["type"] = json!(if bind { "bind" } else { kind });
        out.push(j);
    }
    if !seen.contains(Path::new("/dev")) {
        out.insert(
            0,
            json!({
                "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            }),
        );
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_options_replace_their_opposites() {
        let opts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (f, ro) = forced("sysfs", Path::new("/sys"), false);
        assert_eq!(
            apply_forced(&opts(&["rw", "dev", "relatime"]), f, ro),
            ["relatime", "nosuid", "nodev", "noexec", "ro"]
        );
        let (f, ro) = forced("sysfs", Path::new("/sys"), true);
        assert_eq!(
            apply_forced(&opts(&["rw"]), f, ro),
            ["rw", "nosuid", "nodev", "noexec"]
        );
        let (f, ro) = forced("tmpfs", Path::new("/dev"), false);
        assert_eq!(
            apply_forced(&opts(&["mode=755", "suid"]), f, ro),
            ["mode=755", "nosuid"]
        );
        let (f, ro) = forced("bind", Path::new("/data"), false);
        assert_eq!(
            apply_forced(&opts(&["rbind", "ro", "nosuid"]), f, ro),
            ["rbind", "ro", "nosuid", "nodev"]
        );
    }
}
