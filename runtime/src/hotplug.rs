//! CreateContainer's `devices`, the devices the host hot-plugged for this container: each is
//! resolved in the guest (`vigil_guest::devices`: where the host hot-plugged it, the guest
//! node's kind and major/minor), checked against what no container may have, and then the
//! container's spec is made to name the guest's device, as Kata's agent does: the
//! `linux.devices` entry at the device's `container_path` gets the guest's type and numbers
//! (added if the spec lacks it), and device-cgroup rules that named the spec's (host) numbers
//! name the guest's instead.
//!
//! The guest numbers found here are what the spec conversion then accepts besides the
//! standard and configured devices (`SpecLimits::devices` for this container), so the node is
//! made and allowed in the device cgroup that `devices` enforces; a device the request did not
//! pass stays denied.

use std::path::Path;

use vigil_guest::blockdev::DeviceTree;
use vigil_guest::devices::{DeviceNum, GuestDevice};
use vigil_protos::agent::Device;
use vigil_protos::oci;

use crate::error::{Result, RuntimeError};

/// Resolves every device of the request (waiting for hot-plugged ones) off the async threads,
/// refusing the guest's memory and TEE devices by their numbers in this guest, whatever the
/// host called them.
pub(crate) async fn resolve(tree: &DeviceTree, devices: &[Device]) -> Result<Vec<GuestDevice>> {
    let devices = devices.to_vec();
    let tree = tree.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            let field = format!("devices[{i}]");
            if !Path::new(&d.container_path).starts_with("/dev") {
                return Err(RuntimeError::invalid(
                    format!("{field}.container_path"),
                    format!("{:?} is not a path under /dev", d.container_path),
                ));
            }
            let found = vigil_guest::devices::resolve(
                &tree,
                d,
                &field,
                vigil_guest::blockdev::DEVICE_TIMEOUT,
            )
            .map_err(|e| RuntimeError::from_guest(e, "devices"))?;
            for g in &found {
                if crate::spec::is_forbidden(&g.node, g.num) {
                    return Err(RuntimeError::invalid(
                        field,
                        format!(
                            "the device the host names is {} ({} {}:{}), the guest's memory, its \
                             I/O ports or a TEE device: never given to containers",
                            g.node.display(),
                            g.num.kind,
                            g.num.major,
                            g.num.minor
                        ),
                    ));
                }
            }
            out.extend(found);
        }
        Ok(out)
    })
    .await
    .map_err(|e| RuntimeError::internal("device task", e))?
}

/// The guest numbers of `devices`: what this container may have besides the standard set.
pub(crate) fn numbers(devices: &[GuestDevice]) -> Vec<DeviceNum> {
    devices.iter().map(|g| g.num).collect()
}

/// Makes `spec` name the guest's devices (see the module comment). The device-cgroup allow
/// rule for each node is the spec conversion's, as for every accepted node.
pub(crate) fn apply(spec: &mut oci::Spec, devices: &[GuestDevice]) {
    if devices.is_empty() {
        return;
    }
    let linux = spec.Linux.mut_or_insert_default();
    for g in devices {
        let kind = g.num.kind.to_string();
        let (major, minor) = (g.num.major, g.num.minor);
        let host = match linux
            .Devices
            .iter_mut()
            .find(|d| d.Path == g.container_path)
        {
            Some(d) => {
                let host = (d.Type.clone(), d.Major, d.Minor);
                d.Type = kind.clone();
                d.Major = major;
                d.Minor = minor;
                Some(host)
            }
            None => {
                linux.Devices.push(oci::LinuxDevice {
                    Path: g.container_path.clone(),
                    Type: kind.clone(),
                    Major: major,
                    Minor: minor,
                    FileMode: 0o660,
                    ..Default::default()
                });
                None
            }
        };
        // The host's rules for its own numbers of the device now name the guest's.
        if let (Some((htype, hmajor, hminor)), Some(resources)) = (host, linux.Resources.as_mut()) {
            for r in resources.Devices.iter_mut() {
                if r.Type == htype && r.Major == hmajor && r.Minor == hminor {
                    r.Type = kind.clone();
                    r.Major = major;
                    r.Minor = minor;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(path: &str, major: i64, minor: i64) -> GuestDevice {
        GuestDevice {
            container_path: path.into(),
            node: "/dev/vdb".into(),
            num: DeviceNum {
                kind: 'b',
                major,
                minor,
            },
        }
    }

    #[test]
    fn the_spec_names_the_guest_s_numbers() {
        let mut spec = oci::Spec::default();
        let linux = spec.Linux.mut_or_insert_default();
        linux.Devices.push(oci::LinuxDevice {
            Path: "/dev/xvda".into(),
            Type: "b".into(),
            Major: 8,
            Minor: 0,
            FileMode: 0o600,
            ..Default::default()
        });
        let rules = &mut linux.Resources.mut_or_insert_default().Devices;
        rules.push(oci::LinuxDeviceCgroup {
            Allow: false,
            Access: "rwm".into(),
            Major: -1,
            Minor: -1,
            ..Default::default()
        });
        rules.push(oci::LinuxDeviceCgroup {
            Allow: true,
            Type: "b".into(),
            Major: 8,
            Minor: 0,
            Access: "rw".into(),
            ..Default::default()
        });
        apply(
            &mut spec,
            &[guest("/dev/xvda", 254, 16), guest("/dev/extra", 254, 32)],
        );
        let linux = spec.Linux.as_ref().unwrap();
        let xvda = &linux.Devices[0];
        assert_eq!(
            (xvda.Type.as_str(), xvda.Major, xvda.Minor, xvda.FileMode),
            ("b", 254, 16, 0o600)
        );
        let extra = &linux.Devices[1];
        assert_eq!(
            (extra.Path.as_str(), extra.Major, extra.Minor),
            ("/dev/extra", 254, 32)
        );
        // The host's rule now names the guest's device, with its access kept; the deny-all
        // is untouched; no rule of its own is added here (the conversion allows each node).
        let rules = &linux.Resources.Devices;
        assert_eq!(
            (rules[1].Major, rules[1].Minor, rules[1].Access.as_str()),
            (254, 16, "rw")
        );
        assert!(!rules[0].Allow && rules[0].Major == -1);
        assert_eq!(rules.len(), 2);
    }
}
