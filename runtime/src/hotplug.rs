//! CreateContainer's `devices`: each is resolved in the guest (`vigil_guest::devices`: where the
//! host hot-plugged it, the guest node's kind and major/minor), then the container's spec is
//! made to name the guest's device, as Kata's agent does: the `linux.devices` entry at the
//! device's `container_path` gets the guest's type and numbers (added if the spec lacks it),
//! and device-cgroup rules that named the spec's (host) numbers name the guest's instead; a
//! device no rule allowed gets an `rwm` allow rule of its own.

use vigil_guest::blockdev::DeviceTree;
use vigil_guest::devices::GuestDevice;
use vigil_protos::agent::Device;
use vigil_protos::oci;

use crate::error::{Result, RuntimeError};

/// Resolves every device of the request (waiting for hot-plugged ones) off the async threads.
pub(crate) async fn resolve(tree: &DeviceTree, devices: &[Device]) -> Result<Vec<GuestDevice>> {
    let devices = devices.to_vec();
    let tree = tree.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            let found = vigil_guest::devices::resolve(
                &tree,
                d,
                &format!("devices[{i}]"),
                vigil_guest::blockdev::DEVICE_TIMEOUT,
            )
            .map_err(|e| RuntimeError::from_guest(e, "devices"))?;
            out.extend(found);
        }
        Ok(out)
    })
    .await
    .map_err(|e| RuntimeError::internal("device task", e))?
}

/// Makes `spec` name the guest's devices (see the module comment).
pub(crate) fn apply(spec: &mut oci::Spec, devices: &[GuestDevice]) {
    if devices.is_empty() {
        return;
    }
    let linux = spec.Linux.mut_or_insert_default();
    for g in devices {
        let kind = g.kind.to_string();
        let (major, minor) = (g.major as i64, g.minor as i64);
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
        let rules = &mut linux.Resources.mut_or_insert_default().Devices;
        let mut rewritten = false;
        if let Some((htype, hmajor, hminor)) = host {
            for r in rules.iter_mut() {
                if r.Type == htype && r.Major == hmajor && r.Minor == hminor {
                    r.Type = kind.clone();
                    r.Major = major;
                    r.Minor = minor;
                    rewritten |= r.Allow;
                }
            }
        }
        if !rewritten {
            rules.push(oci::LinuxDeviceCgroup {
                Allow: true,
                Type: kind,
                Major: major,
                Minor: minor,
                Access: "rwm".into(),
                ..Default::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(path: &str, major: u64, minor: u64) -> GuestDevice {
        GuestDevice {
            container_path: path.into(),
            node: "/dev/vdb".into(),
            kind: 'b',
            major,
            minor,
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
        let rules = &linux.Resources.Devices;
        // The host's rule now names the guest's device, with its access kept; the deny-all
        // stays first; the added device got an allow rule of its own.
        assert_eq!(
            (rules[1].Major, rules[1].Minor, rules[1].Access.as_str()),
            (254, 16, "rw")
        );
        assert!(!rules[0].Allow && rules[0].Major == -1);
        assert_eq!(
            (
                rules[2].Allow,
                rules[2].Major,
                rules[2].Minor,
                rules[2].Access.as_str()
            ),
            (true, 254, 32, "rwm")
        );
        assert_eq!(rules.len(), 3);
    }
}
