//! A container's or an exec's process, with its capabilities capped by the agent's bounding
//! set: a capability outside it is refused, naming the set and the entry; a process without
//! capabilities gets the default set (within the bounding set), never the full set a root
//! process would otherwise keep.

use serde_json::{json, Map, Value};
use vigil_protos::oci;

use crate::error::{Result, RuntimeError};

/// What containerd (and Docker) give a container by default; the agent's default bounding set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The OCI name of a capability (`CAP_NET_ADMIN`; `NET_ADMIN` and lower case are accepted
/// too), or why not.
pub fn capability_name(name: &str) -> std::result::Result<String, String> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    serde_json::from_value::<oci_spec::runtime::Capability>(json!(full))
        .map(|_| full)
        .map_err(|_| format!("{name:?} is not a Linux capability"))
}

pub(crate) fn process_json(p: &oci::Process, field: &str, bounding: &[String]) -> Result<Value> {
    if p.Args.is_empty() || p.Args[0].is_empty() {
        return Err(RuntimeError::invalid(
            format!("{field}.Args"),
            "empty: nothing to run",
        ));
    }
    if !p.Cwd.is_empty() && !p.Cwd.starts_with('/') {
        return Err(RuntimeError::invalid(
            format!("{field}.Cwd"),
            format!("{:?} is not absolute", p.Cwd),
        ));
    }
    let mut m = Map::new();
    // The agent makes the terminal itself (see youki.rs), so the runtime library is told
    // there is none; `Terminal` and `ConsoleSize` are honoured by the sandbox.
    m.insert("terminal".into(), json!(false));
    let user = p.User.as_ref().cloned().unwrap_or_default();
    let mut u = json!({"uid": user.UID, "gid": user.GID});
    if !user.AdditionalGids.is_empty() {
        u["additionalGids"] = json!(user.AdditionalGids);
    }
    if !user.Username.is_empty() {
        u["username"] = json!(user.Username);
    }
    m.insert("user".into(), u);
    m.insert("args".into(), json!(p.Args));
    m.insert("env".into(), json!(p.Env));
    m.insert(
        "cwd".into(),
        json!(if p.Cwd.is_empty() { "/" } else { &p.Cwd }),
    );
    m.insert(
        "capabilities".into(),
        capabilities_json(p.Capabilities.as_ref(), field, bounding)?,
    );
    if !p.Rlimits.is_empty() {
        let limits: Vec<Value> = p
            .Rlimits
            .iter()
            .map(|r| json!({"type": r.Type, "hard": r.Hard, "soft": r.Soft}))
            .collect();
        m.insert("rlimits".into(), Value::Array(limits));
    }
    m.insert("noNewPrivileges".into(), json!(p.NoNewPrivileges));
    if !p.ApparmorProfile.is_empty() {
        m.insert("apparmorProfile".into(), json!(p.ApparmorProfile));
    }
    if p.OOMScoreAdj != 0 {
        let adj = i32::try_from(p.OOMScoreAdj)
            .ok()
            .filter(|a| (-1000..=1000).contains(a))
            .ok_or_else(|| {
                RuntimeError::invalid(
                    format!("{field}.OOMScoreAdj"),
                    format!("{} is outside -1000..=1000", p.OOMScoreAdj),
                )
            })?;
        m.insert("oomScoreAdj".into(), json!(adj));
    }
    if !p.SelinuxLabel.is_empty() {
        m.insert("selinuxLabel".into(), json!(p.SelinuxLabel));
    }
    Ok(Value::Object(m))
}

/// The five capability sets, each entry a known capability inside `bounding`.
fn capabilities_json(
    caps: Option<&oci::LinuxCapabilities>,
    field: &str,
    bounding: &[String],
) -> Result<Value> {
    let Some(caps) = caps else {
        // No capabilities in the spec: the runtime library would leave the process every
        // capability root has. Give it the default set instead.
        let defaults: Vec<&str> = DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| bounding.iter().any(|b| b == c))
            .collect();
        return Ok(json!({
            "bounding": defaults, "effective": defaults, "permitted": defaults,
            "inheritable": [], "ambient": [],
        }));
    };
    let mut out = Map::new();
    for (name, json_name, set) in [
        ("Bounding", "bounding", &caps.Bounding),
        ("Effective", "effective", &caps.Effective),
        ("Inheritable", "inheritable", &caps.Inheritable),
        ("Permitted", "permitted", &caps.Permitted),
        ("Ambient", "ambient", &caps.Ambient),
    ] {
        for (i, c) in set.iter().enumerate() {
            let entry = format!("{field}.Capabilities.{name}[{i}]");
            if capability_name(c).as_deref() != Ok(c.as_str()) {
                return Err(RuntimeError::invalid(
                    entry,
                    format!("{c:?} is not a Linux capability"),
                ));
            }
            if !bounding.iter().any(|b| b == c) {
                return Err(RuntimeError::invalid(
                    entry,
                    format!(
                        "{c} is outside the agent's capability bounding set ([sandbox] capabilities: {})",
                        bounding.join(", ")
                    ),
                ));
            }
        }
        out.insert(json_name.into(), json!(set));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_are_checked_and_normalised() {
        assert_eq!(capability_name("NET_ADMIN").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(capability_name("CAP_SYS_ADMIN").unwrap(), "CAP_SYS_ADMIN");
        assert_eq!(capability_name("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert!(capability_name("CAP_FLY").is_err());
        assert!(capability_name("").is_err());
    }

    #[test]
    fn capabilities_outside_the_bounding_set_are_refused_by_entry() {
        let p = |caps: oci::LinuxCapabilities| oci::Process {
            Args: vec!["sh".into()],
            Capabilities: Some(caps).into(),
            ..Default::default()
        };
        let ok = p(oci::LinuxCapabilities {
            Bounding: vec!["CAP_CHOWN".into(), "CAP_KILL".into()],
            Effective: vec!["CAP_KILL".into()],
            ..Default::default()
        });
        let v = process_json(&ok, "OCI.Process", &defaults()).unwrap();
        assert_eq!(v["capabilities"]["effective"], json!(["CAP_KILL"]));
        for (caps, field) in [
            (
                oci::LinuxCapabilities {
                    Bounding: vec!["CAP_CHOWN".into(), "CAP_SYS_ADMIN".into()],
                    ..Default::default()
                },
                "OCI.Process.Capabilities.Bounding[1]",
            ),
            (
                oci::LinuxCapabilities {
                    Ambient: vec!["CAP_SYS_PTRACE".into()],
                    ..Default::default()
                },
                "OCI.Process.Capabilities.Ambient[0]",
            ),
            (
                oci::LinuxCapabilities {
                    Permitted: vec!["CAP_WARP".into()],
                    ..Default::default()
                },
                "OCI.Process.Capabilities.Permitted[0]",
            ),
        ] {
            match process_json(&p(caps), "OCI.Process", &defaults()) {
                Err(RuntimeError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        // A wider configured set lets the same request through.
        let mut wide = defaults();
        wide.push("CAP_SYS_ADMIN".into());
        let sys_admin = p(oci::LinuxCapabilities {
            Bounding: vec!["CAP_SYS_ADMIN".into()],
            ..Default::default()
        });
        assert!(process_json(&sys_admin, "OCI.Process", &wide).is_ok());
    }

    #[test]
    fn no_capabilities_means_the_defaults_within_the_bounding_set() {
        let p = oci::Process {
            Args: vec!["sh".into()],
            ..Default::default()
        };
        let v = process_json(&p, "process", &["CAP_KILL".into(), "CAP_SYS_ADMIN".into()]).unwrap();
        assert_eq!(v["capabilities"]["bounding"], json!(["CAP_KILL"]));
        assert_eq!(v["capabilities"]["ambient"], json!([]));
        let v = process_json(&p, "process", &defaults()).unwrap();
        assert_eq!(
            v["capabilities"]["permitted"].as_array().unwrap().len(),
            DEFAULT_CAPABILITIES.len()
        );
    }
}
