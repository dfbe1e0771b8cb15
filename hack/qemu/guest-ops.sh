#!/usr/bin/env bash
# The guest operations end to end (vigil-guest), in one QEMU/TCG boot of the static agent as
# init: every step changes the guest (never this machine) and is checked from the agent's
# answer, or from its log line on the guest console where the RPC answers Empty.
#
#   - a vCPU hot-plugged through QMP is onlined by OnlineCPUMem (which waits for it on uevents);
#     one more than exists is a DEADLINE_EXCEEDED naming how many are online
#   - a memory DIMM hot-plugged through QMP is onlined by OnlineCPUMem
#   - a virtio-blk disk hot-plugged through QMP on a PCIe root port is found by its PCI path,
#     formatted and swapped on by AddSwap; a second AddSwap on it is refused (in use)
#   - SetGuestDateTime moves the clock a day ahead; a later step back is refused with the
#     distance, which proves the clock moved
#   - ReseedRandomDev mixes bytes in; an empty one is refused
#   - a disk hot-plugged through QMP is a blk storage of CreateSandbox (by PCI path, awaited);
#     GetVolumeStats reads it, and after QMP block_resize, ResizeVolume grows its ext4
#   - a virtio-fs share (virtiofsd on a directory here, vhost-user-fs-pci) is the sandbox's
#     shared directory, mounted by tag as Kata's runtime asks (virtio-fs storage, kataShared);
#     a container whose rootfs (a static busybox) is on the block volume, with the volume's
#     data/ at /data and the share at /share, prints a file of this host from the share, writes
#     a file on the volume and one on the share, and prints the volume's back; its stdout is
#     read back with ReadStdout, and after power-off both files are checked here (the disk
#     with debugfs, the share directly)
#   - GetVolumeStats reads an ephemeral volume of the sandbox; UpdateEphemeralMounts grows it
#   - every RPC of grpc.AgentService, called with {}, has a handler (none "not implemented")
#
# The agent runs unattested with every endpoint allowed and [guest] allow_swap = true.
# Usage: guest-ops.sh --agent PATH --vigilctl PATH --kernel-dir DIR [--timeout SECS]
# Needs virtiofsd and busybox-static (hack/qemu/setup.sh). Called by e2e.sh; logs stay in
# hack/out/guest-ops/.
set -euo pipefail
source "$(dirname "$0")/common.sh"

agent="" vigilctl="" kernel_dir="" timeout=180
while [ $# -gt 0 ]; do
    case $1 in
        --agent) agent=$2; shift 2 ;;
        --vigilctl) vigilctl=$2; shift 2 ;;
        --kernel-dir) kernel_dir=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -n "$agent" ] && [ -n "$vigilctl" ] && [ -n "$kernel_dir" ] || die "--agent, --vigilctl and --kernel-dir are needed"

work=$OUT_DIR/guest-ops
rm -rf "$work"
mkdir -p "$work"
cat >"$work/agent.toml" <<EOF
[agent]
server_addr = "vsock://-1:$AGENT_VSOCK_PORT"

[endpoints]
allowed = ["*"]

[guest]
allow_swap = true
EOF
"$QEMU_HACK_DIR/make-initramfs.sh" --agent "$agent" --kernel-dir "$kernel_dir" \
    --config "$work/agent.toml" -o "$work/initramfs.cpio" >/dev/null
truncate -s 64M "$work/swap.img"
# The block volume: ext4 made on the host, grown later by QMP block_resize. It carries a
# container's rootfs (a static busybox) and an empty data/. (Not on the virtio-fs share: under
# TCG the first exec of a binary from it works and later ones segfault at random, while the
# file reads back intact. Most likely TCG runs stale translations of pages that virtiofsd, a
# process of its own, wrote: QEMU never sees a vhost-user backend's writes. virtio-blk's are
# QEMU's own.)
busybox=$(command -v busybox) || die "no busybox (apt-get install busybox-static)"
file -b "$busybox" | grep -q "statically linked" || die "$busybox is not static (busybox-static)"
mkdir -p "$work/volume/rootfs/"{bin,proc,dev,tmp,etc,data,share} "$work/volume/data"
cp "$busybox" "$work/volume/rootfs/bin/busybox"
truncate -s 32M "$work/vol.img"
mkfs.ext4 -q -F -b 4096 -d "$work/volume" "$work/vol.img" || die "mkfs.ext4 failed (e2fsprogs)"
# The virtio-fs share: a file of this host for the container to print.
virtiofsd=$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")
[ -x "$virtiofsd" ] || die "virtiofsd missing (hack/qemu/setup.sh)"
share=$work/share
mkdir -p "$share"
host_text="written on the host $(date +%s%N)"
vol_text="written by the container $$-$RANDOM"
printf '%s\n' "$host_text" >"$share/from-host"

kernel=$kernel_dir/vmlinux
[ -f "$kernel" ] || kernel=$kernel_dir/vmlinuz
console=$work/console.log
run_dir=$work/run
: >"$console"
fail() {
    log "FAIL: $*"
    log "guest console (last 30 lines of $console):"
    tail -n 30 "$console" | tr -d '\r' >&2
    exit 1
}
boot_pid="" virtiofsd_pid=""
t_start=$(now)
cleanup() {
    local pid
    for pid in "$boot_pid" "$virtiofsd_pid"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT

# virtiofsd serves the share to QEMU (vhost-user; the guest RAM is a shared memfd already).
# Without root it runs with no sandbox of its own (its namespace sandbox needs privileges);
# as root, chrooted into the share. It exits when QEMU closes the connection.
vfs_sock=$work/virtiofsd.sock
vfs_sandbox=none
[ "$(id -u)" = 0 ] && vfs_sandbox=chroot
"$virtiofsd" --shared-dir "$share" --socket-path "$vfs_sock" --sandbox "$vfs_sandbox" \
    --rlimit-nofile 0 >"$work/virtiofsd.log" 2>&1 &
virtiofsd_pid=$!
wait_for_line "$work/virtiofsd.log" 30 "Waiting for vhost-user socket connection" " ERROR " ||
    die "virtiofsd did not start: $(cat "$work/virtiofsd.log")"

# Hot-plug room: a second vCPU, two DIMM slots, and PCIe root ports at 00:10.0 and 00:11.0
# whose secondary buses take the disks (PCI paths 10/00 and 11/00). Hot-plugged memory stays
# offline until the agent onlines it. The share's tag is Kata's (kataShared).
"$QEMU_HACK_DIR/boot.sh" --kernel "$kernel" --initrd "$work/initramfs.cpio" \
    --run-dir "$run_dir" --console-log "$console" --maxcpus 2 --maxmem 1024 \
    --qemu-arg -device --qemu-arg pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x10 \
    --qemu-arg -device --qemu-arg pcie-root-port,id=rp2,bus=pcie.0,chassis=2,addr=0x11 \
    --qemu-arg -chardev --qemu-arg "socket,id=vfs,path=$vfs_sock" \
    --qemu-arg -device --qemu-arg vhost-user-fs-pci,chardev=vfs,tag=kataShared \
    --append "agent.config_file=/etc/vigil/agent.toml memhp_default_state=offline" \
    >"$work/boot.log" 2>&1 &
boot_pid=$!
rc=0
wait_for_line "$console" "$timeout" "vigil-agent: listening on " \
    "vigil-agent: (fatal|error)|Kernel panic|reboot: Power down" || rc=$?
case $rc in
    0) ;;
    2) fail "the guest stopped before the agent listened" ;;
    *) fail "no readiness line within ${timeout}s" ;;
esac

addr="hvsock://$run_dir/vsock.sock:$AGENT_VSOCK_PORT"
qmp() { "$QEMU_HACK_DIR/qmp.py" "$run_dir/qmp.sock" "$@" >>"$work/qmp.log"; }
# expect_err RPC REQUEST CODE TEXT: fails with CODE, and the message contains TEXT (regex).
expect_err() {
    local out
    if out=$(call "$1" "$2" 2>&1); then fail "$1 should have failed with $3: $out"; fi
    grep -Eq -- "^vigilctl: $1: $3: .*$4" <<<"$out" || fail "$1: expected $3 with '$4', got: $out"
    log "ok: $1 -> $out"
}
# console_has REGEX: the agent logged it (its stderr is the console; colours stripped).
console_has() {
    local line
    line=$(sed 's/\x1b\[[0-9;]*m//g' "$console" | tr -d '\r' | grep -Ea -- "$1" | tail -n 1) ||
        fail "no console line matching '$1'"
    log "ok: console: $(cut -c1-120 <<<"$line")"
}

expect_ok GetGuestDetails '{"mem_block_size": true, "mem_hotplug_probe": true}' '"mem_block_size_bytes": [1-9]'

# CPU: hot-plugged, then onlined; the agent waits for the kernel to announce it.
# The free slot's topology (socket or core, by QEMU's version) from QEMU itself.
cpu_slot=$("$QEMU_HACK_DIR/qmp.py" "$run_dir/qmp.sock" query-hotpluggable-cpus | python3 -c '
import json, sys
free = [c for c in json.load(sys.stdin)["return"] if "qom-path" not in c]
args = {"driver": free[0]["type"], "id": "cpu1"}
args.update(free[0]["props"])
print(json.dumps(args))') || fail "no hot-pluggable vCPU slot"
qmp device_add "$cpu_slot" || fail "QMP could not hot-plug a vCPU ($cpu_slot)"
expect_ok OnlineCPUMem '{"nb_cpus": 2, "cpu_only": true}' '{}'
console_has 'CPUs online online=2 wanted=2'
expect_err OnlineCPUMem '{"nb_cpus": 3, "cpu_only": true}' DEADLINE_EXCEEDED '3 CPUs wanted online, 2 are'

# Memory: a 128 MiB DIMM; QEMU reports the guest's ACPI _OST once the kernel has added it.
# Shared memfd like the boot memory: the vhost-user vsock backend must map all guest RAM.
qmp object-add '{"qom-type": "memory-backend-memfd", "id": "mem1", "size": 134217728, "share": true}' ||
    fail "QMP object-add failed"
qmp device_add '{"driver": "pc-dimm", "id": "dimm1", "memdev": "mem1"}' --event ACPI_DEVICE_OST ||
    fail "the DIMM was not hot-plugged (or the guest never acknowledged it)"
expect_ok OnlineCPUMem '{"nb_cpus": 0, "cpu_only": false}' '{}'
console_has 'memory blocks onlined onlined=[1-9]'

# Swap on a hot-plugged disk, found by PCI path (root port slot 0x10, then slot 0).
qmp blockdev-add "{\"driver\": \"raw\", \"node-name\": \"swapdisk\", \"file\": {\"driver\": \"file\", \"filename\": \"$work/swap.img\"}}" ||
    fail "QMP blockdev-add failed"
qmp device_add '{"driver": "virtio-blk-pci", "id": "swap0", "drive": "swapdisk", "bus": "rp1", "addr": "0x0"}' ||
    fail "QMP could not hot-plug the disk"
expect_ok AddSwap '{"PCIPath": [16, 0]}' '{}'
console_has 'swap on path=/dev/vd'
expect_err AddSwap '{"PCIPath": [16, 0]}' FAILED_PRECONDITION 'in use'
# The guest wrote its own swap header (SWAPSPACE2 at the end of the first page).
[ "$(dd if="$work/swap.img" bs=1 skip=4086 count=10 status=none)" = SWAPSPACE2 ] ||
    fail "no swap signature on the disk"

# The clock: a day ahead, then an hour ahead is a step back of 23 hours.
now_s=$(date +%s)
expect_ok SetGuestDateTime "{\"Sec\": $((now_s + 86400)), \"Usec\": 0}" '{}'
expect_err SetGuestDateTime "{\"Sec\": $((now_s + 3600)), \"Usec\": 0}" INVALID_ARGUMENT \
    'Sec: [0-9]+ is 8[23][0-9]{3}s behind the guest'"'"'s clock'

# Entropy: mixed in (never credited); an empty seed is refused.
expect_ok ReseedRandomDev '{"data": [104, 111, 115, 116, 45, 99, 104, 111, 115, 101, 110]}' '{}'
expect_err ReseedRandomDev '{"data": []}' INVALID_ARGUMENT 'data: empty'

# Volumes: the sandbox gets an 8 MiB ephemeral volume and a block volume on a disk
# hot-plugged now (blk storage by PCI path: CreateSandbox waits for the disk to appear).
qmp blockdev-add "{\"driver\": \"raw\", \"node-name\": \"vol\", \"file\": {\"driver\": \"file\", \"filename\": \"$work/vol.img\"}}" ||
    fail "QMP blockdev-add failed"
qmp device_add '{"driver": "virtio-blk-pci", "id": "vol0", "drive": "vol", "bus": "rp2", "addr": "0x0"}' ||
    fail "QMP could not hot-plug the volume disk"
# Where Kata's runtime mounts them: its shared file system at shared/containers (kataShared),
# volumes at sandbox/ephemeral/<volume> and sandbox/storage/<volume>.
shared=/run/kata-containers/shared/containers
volume=/run/kata-containers/sandbox/ephemeral/vol
blkvol=/run/kata-containers/sandbox/storage/blkvol
expect_ok CreateSandbox "{\"sandbox_id\": \"s1\", \"storages\": [{\"driver\": \"virtio-fs\", \"source\": \"kataShared\", \"fstype\": \"virtiofs\", \"options\": [], \"mount_point\": \"$shared\"}, {\"driver\": \"ephemeral\", \"source\": \"tmpfs\", \"fstype\": \"tmpfs\", \"options\": [\"size=8m\"], \"mount_point\": \"$volume\"}, {\"driver\": \"blk\", \"source\": \"11/00\", \"fstype\": \"ext4\", \"options\": [\"noatime\"], \"mount_point\": \"$blkvol\"}]}" '{}'
before=$(call GetVolumeStats "{\"volume_guest_path\": \"$blkvol\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["usage"][0]["total"])') ||
    fail "GetVolumeStats of the block volume failed"
[ "$before" -gt $((24 << 20)) ] && [ "$before" -le $((32 << 20)) ] || fail "the 32 MiB block volume reports $before bytes"
log "ok: GetVolumeStats -> block volume of $before bytes"
# The host grows the disk; ResizeVolume grows the file system on it (online, ext4).
qmp block_resize '{"node-name": "vol", "size": 67108864}' || fail "QMP block_resize failed"
expect_ok ResizeVolume "{\"volume_guest_path\": \"$blkvol\", \"size\": 67108864}" '{}'
after=$(call GetVolumeStats "{\"volume_guest_path\": \"$blkvol\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["usage"][0]["total"])')
[ "$after" -gt $((before + (24 << 20))) ] || fail "ResizeVolume: $before -> $after bytes"
log "ok: ResizeVolume -> block volume of $after bytes"
expect_err ResizeVolume "{\"volume_guest_path\": \"$volume\", \"size\": 67108864}" FAILED_PRECONDITION 'tmpfs file system'
expect_ok GetVolumeStats "{\"volume_guest_path\": \"$volume\"}" '"total": 8388608'
expect_ok UpdateEphemeralMounts "{\"storages\": [{\"driver\": \"ephemeral\", \"source\": \"tmpfs\", \"fstype\": \"tmpfs\", \"options\": [\"remount\", \"size=16m\"], \"mount_point\": \"$volume\"}]}" '{}'
expect_ok GetVolumeStats "{\"volume_guest_path\": \"$volume\"}" '"total": 16777216'
expect_err GetVolumeStats '{"volume_guest_path": "/proc"}' INVALID_ARGUMENT "not under the pod's directories"

# A container on the block volume (rootfs and /data) with the share at /share: it prints the
# host's file from the share, writes one on the volume and one on the share, and prints the
# volume's back.
python3 - "$work/c1.json" "$blkvol" "$shared" "$vol_text" <<'PY'
import json, sys
out, blkvol, shared, text = sys.argv[1:]
script = ("busybox cat /share/from-host && "
          f"echo '{text}' >/data/from-container && echo '{text}' >/share/from-guest && "
          "busybox sync && busybox cat /data/from-container")
bind = lambda dest, src: {"destination": dest, "source": src, "type_": "bind", "options": ["rbind", "rw"]}
json.dump({"container_id": "c1", "OCI": {
    "Version": "1.0.2",
    "Process": {"Args": ["/bin/busybox", "sh", "-c", script], "Env": ["PATH=/bin"], "Cwd": "/",
                "User": {"UID": 0, "GID": 0}},
    "Root": {"Path": f"{blkvol}/rootfs"},
    "Mounts": [{"destination": "/proc", "source": "proc", "type_": "proc"},
               bind("/data", f"{blkvol}/data"), bind("/share", shared)],
    "Linux": {"Namespaces": [{"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"}]},
}}, open(out, "w"))
PY
ids='{"container_id": "c1", "exec_id": ""}'
out=$(call --timeout 120 CreateContainer "@$work/c1.json" 2>&1) || fail "CreateContainer: $out"
out=$(call --timeout 120 StartContainer '{"container_id": "c1"}' 2>&1) || fail "StartContainer: $out"
: >"$work/c1.stdout"
while out=$(call --timeout 120 ReadStdout '{"container_id": "c1", "exec_id": "", "len": 4096}' 2>&1); do
    python3 -c 'import json, sys; sys.stdout.buffer.write(bytes(json.load(sys.stdin)["data"]))' \
        <<<"$out" >>"$work/c1.stdout" || fail "ReadStdout answered: $out"
done
grep -q "INTERNAL: .*eof" <<<"$out" || fail "ReadStdout: $out"
status=$(call --timeout 120 WaitProcess "$ids" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("status", 0))') ||
    fail "WaitProcess failed"
[ "$status" = 0 ] || fail "the container exited with $status; stdout: $(cat "$work/c1.stdout")"
[ "$(cat "$work/c1.stdout")" = "$host_text"$'\n'"$vol_text" ] ||
    fail "the container's stdout is not the host's file and the volume's: $(cat "$work/c1.stdout")"
log "ok: a container on the block volume printed this host's file from the virtio-fs share and its own from the volume"
expect_ok RemoveContainer '{"container_id": "c1"}' '{}'

# Every RPC has a handler: none answers "not implemented" (nor ttrpc's "is not supported").
while read -r rpc _; do
    out=$(call "$rpc" '{}' 2>&1) || true
    if grep -Eq "not implemented|is not supported" <<<"$out"; then fail "$rpc: $out"; fi
done < <("$vigilctl" list | awk -F'\t' '$1 ~ /^\/grpc.AgentService\// {sub(/.*\//, "", $1); print $1}')
log "ok: every RPC of grpc.AgentService has a handler"

"$QEMU_HACK_DIR/qmp.py" "$run_dir/qmp.sock" ctrl-alt-delete >/dev/null || fail "QMP send-key failed"
rc=0
wait_for_line "$console" "$timeout" "reboot: Power down" "Kernel panic|vigil-agent: fatal" || rc=$?
[ $rc = 0 ] || fail "the guest did not power off cleanly"
qemu_rc=0
wait "$boot_pid" || qemu_rc=$?
boot_pid=""
[ $qemu_rc = 0 ] || fail "QEMU exited with status $qemu_rc"
# What the container wrote went through: onto the disk (read here by debugfs, e2fsprogs) and
# into this host's share directory.
disk_text=$(debugfs -R "cat /data/from-container" "$work/vol.img" 2>/dev/null) || fail "debugfs could not read the volume"
[ "$disk_text" = "$vol_text" ] || fail "the volume holds '$disk_text', not the container's file"
[ "$(cat "$share/from-guest" 2>/dev/null)" = "$vol_text" ] ||
    fail "the container's file did not reach the share directory"
log "ok: the container's files are on the disk image and in the share directory"
log "PASS ($(elapsed_ms "$t_start" "$(now)") ms from boot)"
