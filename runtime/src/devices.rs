//! Puts the agent's device-cgroup rules in force for a container, replacing whatever the
//! runtime library set.
//!
//! libcgroups appends its own defaults to a spec's rules on cgroup v1 (among them tun/tap,
//! `c 10:200 rwm`), and without its `cgroupsv2_devices` feature (which builds libbpf) applies
//! no device rules at all on cgroup v2. So the agent writes the rules itself: on v1 it clears
//! the devices controller's list and writes each rule; on v2 it attaches a small eBPF device
//! program generated from the rules (`BPF_PROG_TYPE_CGROUP_DEVICE`). The rules come from the
//! spec conversion, which starts them by denying everything.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{Result, RuntimeError};

/// Replaces the device rules of the cgroup at `cgroup_path` (as libcgroups names it, e.g.
/// `/vigil/<id>`) with `rules`, in order (a later rule overrides an earlier one).
pub(crate) fn restrict(cgroup_path: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    let setup = libcgroups::common::get_cgroup_setup()
        .map_err(|e| RuntimeError::internal("cgroup setup", e))?;
    if let libcgroups::common::CgroupSetup::Unified = setup {
        let dir = Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT).join(rel);
        return attach_filter(&dir, rules);
    }
    let root =
        libcgroups::v1::util::get_subsystem_mount_point(&libcgroups::v1::ControllerType::Devices)
            .map_err(|e| RuntimeError::internal("the devices cgroup controller", e))?;
    write_v1(&root.join(rel), rules)
}

fn kind_char(t: Option<LinuxDeviceType>) -> char {
    match t.unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::C | LinuxDeviceType::U => 'c',
        LinuxDeviceType::B => 'b',
        LinuxDeviceType::A | LinuxDeviceType::P => 'a',
    }
}

/// `c 1:3 rwm`, with `*` for wildcards, as the v1 devices controller reads rules.
fn v1_line(r: &LinuxDeviceCgroup) -> String {
    let n = |v: Option<i64>| v.map_or("*".to_string(), |n| n.to_string());
    format!(
        "{} {}:{} {}",
        kind_char(r.typ()),
        n(r.major()),
        n(r.minor()),
        r.access().as_deref().unwrap_or("rwm")
    )
}

fn write_v1(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let write = |file: &str, line: &str| {
        std::fs::write(dir.join(file), line).map_err(|e| {
            RuntimeError::internal(format!("{} <- {line}", dir.join(file).display()), e)
        })
    };
    // Deny everything first: the list the library wrote is gone, and the default is deny.
    write("devices.deny", "a")?;
    for r in rules {
        write(
            if r.allow() {
                "devices.allow"
            } else {
                "devices.deny"
            },
            &v1_line(r),
        )?;
    }
    Ok(())
}

// eBPF, just what a device filter needs (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}
const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const MOV64_X: u8 = 0xbf; // dst = src
const MOV64_K: u8 = 0xb7; // dst = imm
const AND32_K: u8 = 0x54; // dst &= imm
const RSH32_K: u8 = 0x74; // dst >>= imm
const JNE_K: u8 = 0x55; // if dst != imm goto +off
const JEQ_K: u8 = 0x15; // if dst == imm goto +off
const JSET_K: u8 = 0x45; // if dst & imm goto +off
const EXIT: u8 = 0x95;

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |a, c| {
        a | match c {
            'm' => ACC_MKNOD,
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            _ => 0,
        }
    })
}

/// The filter: r2 = requested access, r3 = device type, r4 = major, r5 = minor; the rules
/// are tried last to first and the first that matches decides (so a later rule overrides an
/// earlier one); no match denies.
fn program(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(MOV64_X, 3, 2, 0, 0),
        insn(AND32_K, 3, 0, 0, 0xffff),
        insn(RSH32_K, 2, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    let mut decided = false;
    for r in rules.iter().rev() {
        // Each jump with off == -1 is "no match: skip to the next rule", fixed up below.
        let mut block = Vec::new();
        match kind_char(r.typ()) {
            'c' => block.push(insn(JNE_K, 3, 0, -1, DEV_CHAR)),
            'b' => block.push(insn(JNE_K, 3, 0, -1, DEV_BLOCK)),
            _ => {}
        }
        if let Some(m) = r.major() {
            block.push(insn(JNE_K, 4, 0, -1, m as i32));
        }
        if let Some(m) = r.minor() {
            block.push(insn(JNE_K, 5, 0, -1, m as i32));
        }
        let bits = access_bits(r.access().as_deref().unwrap_or("rwm"));
        if r.allow() {
            // Allows only if nothing outside the rule's access is requested.
            let outside = !bits & (ACC_MKNOD | ACC_READ | ACC_WRITE);
            if outside != 0 {
                block.push(insn(JSET_K, 2, 0, -1, outside));
            }
        } else if bits != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // Denies if any of the rule's access is requested.
            block.push(insn(MOV64_X, 6, 2, 0, 0));
            block.push(insn(AND32_K, 6, 0, 0, bits));
            block.push(insn(JEQ_K, 6, 0, -1, 0));
        }
        block.push(insn(MOV64_K, 0, 0, 0, i32::from(r.allow())));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        let conditional = block.iter().any(|i| i.off == -1);
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == -1 {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
        if !conditional {
            // It matches everything: earlier rules are never reached (and the verifier refuses
            // unreachable code).
            decided = true;
            break;
        }
    }
    if !decided {
        p.push(insn(MOV64_K, 0, 0, 0, 0));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p
}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    _rest: [u8; 88],
}

#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    _rest: [u8; 112],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
    // SAFETY: plain syscall with a pointer to a zero-padded attribute struct and its size.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    }
}

/// Loads the filter for `rules` and attaches it to the cgroup v2 directory `dir`, replacing a
/// filter attached there before.
pub(crate) fn attach_filter(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let prog = program(rules);
    let mut log = vec![0u8; 1 << 16];
    let license = c"Apache-2.0";
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        _rest: [0; 88],
    };
    let fd = bpf(BPF_PROG_LOAD, &mut load);
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let text = String::from_utf8_lossy(&log);
        return Err(RuntimeError::Internal(format!(
            "loading the device filter for {}: {e}: {}",
            dir.display(),
            text.trim_end_matches('\0').trim()
        )));
    }
    // SAFETY: a fresh descriptor from the kernel.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cgroup = std::fs::File::open(dir).map_err(|e| RuntimeError::internal(dir.display(), e))?;
    let mut attach = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
        _rest: [0; 112],
    };
    if bpf(BPF_PROG_ATTACH, &mut attach) != 0 {
        return Err(RuntimeError::internal(
            format!("attaching the device filter to {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The cgroup v2 mount point, if there is one (hybrid machines have it beside v1).
#[cfg(test)]
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4).map(std::path::PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        t: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(t)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    #[test]
    fn v1_lines_use_stars_for_wildcards() {
        assert_eq!(
            v1_line(&rule(true, LinuxDeviceType::C, Some(1), Some(3), "rwm")),
            "c 1:3 rwm"
        );
        assert_eq!(
            v1_line(&rule(true, LinuxDeviceType::C, Some(136), None, "rw")),
            "c 136:* rw"
        );
        assert_eq!(
            v1_line(&rule(false, LinuxDeviceType::A, None, None, "rwm")),
            "a *:* rwm"
        );
    }

    /// The filter, attached to a real cgroup v2 directory with a process in it: what the rules
    /// allow opens, the rest is refused by the kernel.
    #[test]
    fn the_device_filter_allows_exactly_its_rules() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping the_device_filter_allows_exactly_its_rules: needs root");
            return;
        }
        let Some(root) = cgroup2_mount() else {
            eprintln!("skipping the_device_filter_allows_exactly_its_rules: no cgroup2 mount");
            return;
        };
        let dir = root.join(format!("vigil-devfilter-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let rules = [
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(1), None, "r"), // all of major 1, for reading
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "rwm"), // null, also for writing
            rule(false, LinuxDeviceType::C, Some(1), Some(7), "rw"), // full: not at all
        ];
        let attached = attach_filter(&dir, &rules);
        let out = attached.as_ref().ok().map(|_| {
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .unwrap();
            let procs_fd = procs.as_raw_fd();
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(
                "for d in null zero full urandom tty; do \
                   (exec 3</dev/$d) 2>/dev/null && echo $d:r || echo $d:-; \
                   (exec 3>/dev/$d) 2>/dev/null && echo $d:w || echo $d:-; \
                 done",
            );
            // SAFETY: only write(2) between fork and exec: "0" moves the writer itself.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let out = cmd.output().unwrap();
            drop(procs);
            out
        });
        let _ = std::fs::remove_dir(&dir);
        attached.unwrap();
        let out = out.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let got: Vec<&str> = text.lines().collect();
        // A later rule overrides an earlier one; tty (5:0) matches no allow rule.
        assert_eq!(
            got,
            [
                "null:r",
                "null:w",
                "zero:r",
                "zero:-",
                "full:-",
                "full:-",
                "urandom:r",
                "urandom:-",
                "tty:-",
                "tty:-"
            ],
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
