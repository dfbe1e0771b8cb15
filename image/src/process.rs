//! The image config's process defaults merged into the container's OCI process, following the
//! OCI image-spec conversion that image-rs implements (Entrypoint + Cmd are the arguments,
//! WorkingDir the working directory, Env added without overriding) with one rule for what the
//! host already decided: a process that names arguments keeps its arguments, working
//! directory and user (the runtime computed them from the image, as containerd does), and only
//! gains the image's environment variables it lacks. A process without arguments asks for
//! the image's defaults, user included (resolved in the image's own /etc/passwd and
//! /etc/group, never through a symlink).

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use vigil_guest::beneath;

use vigil_protos::oci;

use crate::manifest::ImageConfig;

/// Fills `process` from the image config; `rootfs` is the mounted image's root directory (for
/// user names).
pub fn apply_image_defaults(
    process: &mut oci::Process,
    image: &ImageConfig,
    rootfs: BorrowedFd,
) -> Result<(), String> {
    let Some(c) = &image.config else {
        if process.Args.is_empty() {
            return Err(
                "the process has no arguments and the image config no Entrypoint or Cmd".into(),
            );
        }
        return Ok(());
    };
    for var in c.env.iter().flatten() {
        let name = var.split_once('=').map_or(var.as_str(), |(n, _)| n);
        let present = process
            .Env
            .iter()
            .any(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == name);
        if !present {
            process.Env.push(var.clone());
        }
    }
    if !process.Args.is_empty() {
        return Ok(());
    }
    process.Args = c
        .entrypoint
        .iter()
        .flatten()
        .chain(c.cmd.iter().flatten())
        .cloned()
        .collect();
    if process.Args.is_empty() {
        return Err(
            "the process has no arguments and the image config no Entrypoint or Cmd".into(),
        );
    }
    if let Some(dir) = c.working_dir.as_deref().filter(|d| !d.is_empty()) {
        process.Cwd = dir.to_string();
    }
    if process.Cwd.is_empty() {
        process.Cwd = "/".into();
    }
    if let Some(user) = c.user.as_deref().filter(|u| !u.is_empty()) {
        let (uid, gid, extra) = resolve_user(user, rootfs)?;
        let u = process.User.mut_or_insert_default();
        u.UID = uid;
        u.GID = gid;
        u.AdditionalGids = extra;
    }
    Ok(())
}

/// `user[:group]`, each a number or a name from the image's files.
fn resolve_user(spec: &str, rootfs: BorrowedFd) -> Result<(u32, u32, Vec<u32>), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_in_rootfs(rootfs, "etc/passwd");
    let groups = read_in_rootfs(rootfs, "etc/group");
    let (uid, name, primary) = match user.parse::<u32>() {
        Ok(uid) => {
            let entry = passwd.as_deref().and_then(|p| {
                p.lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 4 && f[2].parse() == Ok(uid))
                    .map(|f| (f[0].to_string(), f[3].parse::<u32>().ok()))
            });
            (
                uid,
                entry.as_ref().map(|e| e.0.clone()),
                entry.and_then(|e| e.1),
            )
        }
        Err(_) => {
            let p = passwd.as_deref().ok_or_else(|| {
                format!("image user {user:?}: the image has no /etc/passwd to look it up in")
            })?;
            let f = p
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 4 && f[0] == user)
                .ok_or_else(|| format!("image user {user:?} is not in the image's /etc/passwd"))?;
            let uid = f[2]
                .parse()
                .map_err(|_| format!("image user {user:?}: bad uid in /etc/passwd"))?;
            (uid, Some(user.to_string()), f[3].parse().ok())
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .as_deref()
                .and_then(|t| {
                    t.lines()
                        .map(|l| l.split(':').collect::<Vec<_>>())
                        .find(|f| f.len() >= 3 && f[0] == g)
                        .and_then(|f| f[2].parse().ok())
                })
                .ok_or_else(|| format!("image group {g:?} is not in the image's /etc/group"))?,
        },
        None => primary.unwrap_or(0),
    };
    // Supplementary groups: those listing the user as a member (as containerd does).
    let extra = match (&name, group, groups.as_deref()) {
        (Some(n), None, Some(t)) => t
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == n))
            .filter_map(|f| f[2].parse::<u32>().ok())
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    Ok((uid, gid, extra))
}

/// A small file of the image, read without following any symlink on the way.
fn read_in_rootfs(rootfs: BorrowedFd, rel: &str) -> Option<String> {
    // Beneath the image's root, no symlink followed: the image's files are the registry's.
    let fd = beneath::open(rootfs, Path::new(rel)).ok()?;
    let st = beneath::fstat(fd.as_fd()).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size > 4 << 20 {
        return None;
    }
    std::fs::read_to_string(beneath::proc_path(fd.as_fd())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ContainerConfig;

    /// An empty image root.
    fn empty_root() -> (tempfile::TempDir, std::fs::File) {
        let t = tempfile::tempdir().unwrap();
        let f = std::fs::File::open(t.path()).unwrap();
        (t, f)
    }

    fn image(c: ContainerConfig) -> ImageConfig {
        ImageConfig {
            config: Some(c),
            ..Default::default()
        }
    }

    #[test]
    fn empty_process_takes_the_image_defaults() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "app:x:1001:\nvideo:x:44:app,other\n",
        )
        .unwrap();
        let img = image(ContainerConfig {
            entrypoint: Some(vec!["/bin/app".into()]),
            cmd: Some(vec!["--serve".into()]),
            env: Some(vec!["PATH=/usr/bin".into(), "MODE=image".into()]),
            working_dir: Some("/srv".into()),
            user: Some("app".into()),
            ..Default::default()
        });
        let mut p = oci::Process {
            Env: vec!["MODE=host".into()],
            ..Default::default()
        };
        let dir = std::fs::File::open(root.path()).unwrap();
        apply_image_defaults(&mut p, &img, dir.as_fd()).unwrap();
        assert_eq!(p.Args, ["/bin/app", "--serve"]);
        assert_eq!(
            p.Env,
            ["MODE=host", "PATH=/usr/bin"],
            "the host's variables win"
        );
        assert_eq!(p.Cwd, "/srv");
        let u = p.User.as_ref().unwrap();
        assert_eq!(
            (u.UID, u.GID, u.AdditionalGids.clone()),
            (1000, 1001, vec![44])
        );
    }

    #[test]
    fn a_host_process_keeps_what_it_says() {
        let img = image(ContainerConfig {
            cmd: Some(vec!["/bin/app".into()]),
            env: Some(vec!["A=1".into()]),
            user: Some("1000:1000".into()),
            working_dir: Some("/srv".into()),
            ..Default::default()
        });
        let mut p = oci::Process {
            Args: vec!["/bin/sh".into()],
            Cwd: "/".into(),
            ..Default::default()
        };
        let (_t, root) = empty_root();
        apply_image_defaults(&mut p, &img, root.as_fd()).unwrap();
        assert_eq!(
            (p.Args.as_slice(), p.Cwd.as_str()),
            (&["/bin/sh".to_string()][..], "/")
        );
        assert_eq!(p.Env, ["A=1"]);
        assert!(p.User.is_none());
    }

    #[test]
    fn numeric_users_and_missing_commands() {
        let img = image(ContainerConfig {
            cmd: Some(vec!["x".into()]),
            user: Some("5:6".into()),
            ..Default::default()
        });
        let mut p = oci::Process::default();
        let (_t, root) = empty_root();
        apply_image_defaults(&mut p, &img, root.as_fd()).unwrap();
        let u = p.User.as_ref().unwrap();
        assert_eq!((u.UID, u.GID), (5, 6));
        assert_eq!(p.Cwd, "/");
        let e = apply_image_defaults(
            &mut oci::Process::default(),
            &image(ContainerConfig::default()),
            root.as_fd(),
        )
        .unwrap_err();
        assert!(e.contains("Entrypoint"), "{e}");
        let named = image(ContainerConfig {
            cmd: Some(vec!["x".into()]),
            user: Some("nobody".into()),
            ..Default::default()
        });
        let e =
            apply_image_defaults(&mut oci::Process::default(), &named, root.as_fd()).unwrap_err();
        assert!(e.contains("nobody"), "{e}");
    }
}
