#!/usr/bin/env bash
# Boots the guest (kernel + initramfs, the agent as init) under QEMU/TCG.
#
# Host <-> agent: vsock through vhost-device-vsock (vhost-user). The host side is the hybrid
# vsock unix socket RUN_DIR/vsock.sock: `vigilctl --addr hvsock://RUN_DIR/vsock.sock:1024`.
# Guest -> host: only QEMU user networking (restrict=on: no other route out), where
# 10.0.2.100:8080 in the guest is forwarded to 127.0.0.1:KBS_PORT on the host; the guest's
# address comes from the kernel parameter agent.ip (set here).
# Control: QMP at RUN_DIR/qmp.sock (`hack/qemu/qmp.py RUN_DIR/qmp.sock ctrl-alt-delete`
# asks the agent to shut down; it then powers the VM off and QEMU exits).
#
# Usage: boot.sh [options]
#   --kernel FILE        [default: hack/out/kernel/current/vmlinux, else vmlinuz]
#   --initrd FILE        [default: hack/out/initramfs.cpio]
#   --run-dir DIR        sockets and pid files [default: hack/out/run]
#   --kbs-port PORT      forward guest 10.0.2.100:8080 to host 127.0.0.1:PORT (no network
#                        device without it)
#   --append PARAMS      more kernel parameters, e.g. "agent.config_file=/etc/vigil/agent.toml"
#   --console-log FILE   serial console to FILE instead of stdout
#   --memory MB          [default: 512]
#   --maxcpus N          vCPUs that may be hot-plugged up to (QMP device_add) [default: 1]
#   --maxmem MB          memory that may be hot-plugged up to (pc-dimm, 2 slots)
#   --machine TYPE       q35 or pc [default: q35]
#   --firmware NAME      qboot (boots faster) or seabios [default: qboot if QEMU ships it]
#   --initdata-disk IMG  read-only virtio-blk disk (/dev/vda in the guest), e.g. from
#                        make-initdata-disk.py (Kata's initdata layout)
#   --verbose            kernel messages on the console (default: quiet)
#   --qemu-arg ARG       one more QEMU argument (repeatable), e.g. --qemu-arg -fw_cfg
#                        --qemu-arg name=opt/vigil/x,string=y
# The exit status is QEMU's.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# The uncompressed PVH kernel boots seconds faster on TCG than the bzImage.
kernel=$OUT_DIR/kernel/current/vmlinux
[ -f "$kernel" ] || kernel=$OUT_DIR/kernel/current/vmlinuz
initrd=$OUT_DIR/initramfs.cpio
run_dir=$OUT_DIR/run
kbs_port="" append="" console_log="" memory=512 quiet=quiet machine=q35 initdata_disk="" firmware=""
maxcpus=1 maxmem=""
qemu_extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --kernel) kernel=$2; shift 2 ;;
        --initrd) initrd=$2; shift 2 ;;
        --run-dir) run_dir=$2; shift 2 ;;
        --kbs-port) kbs_port=$2; shift 2 ;;
        --append) append="$append $2"; shift 2 ;;
        --console-log) console_log=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        --maxcpus) maxcpus=$2; shift 2 ;;
        --maxmem) maxmem=$2; shift 2 ;;
        --machine) machine=$2; shift 2 ;;
        --firmware) firmware=$2; shift 2 ;;
        --initdata-disk) initdata_disk=$2; shift 2 ;;
        --verbose) quiet=""; shift ;;
        --qemu-arg) qemu_extra+=("$2"); shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
for f in "$kernel" "$initrd"; do [ -f "$f" ] || die "no such file: $f"; done
[[ -z $kbs_port || $kbs_port =~ ^[0-9]+$ ]] || die "--kbs-port wants a port number, not '$kbs_port'"
[[ $memory =~ ^[0-9]+$ ]] || die "--memory wants megabytes, not '$memory'"
[[ $maxcpus =~ ^[0-9]+$ ]] || die "--maxcpus wants a number, not '$maxcpus'"
[[ -z $maxmem || $maxmem =~ ^[0-9]+$ ]] || die "--maxmem wants megabytes, not '$maxmem'"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (hack/qemu/setup.sh)"
vhost=$(command -v vhost-device-vsock || echo "$HOME/.cargo/bin/vhost-device-vsock")
[ -x "$vhost" ] || die "vhost-device-vsock missing (hack/qemu/setup.sh)"

mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)
vhost_sock=$run_dir/vhost-vsock.sock # QEMU <-> vhost-device-vsock (vhost-user control)
host_vsock=$run_dir/vsock.sock       # host applications <-> guest vsock (hybrid vsock)
qmp_sock=$run_dir/qmp.sock
# Sockets of an earlier run would make the binds below fail.
rm -f "$vhost_sock" "$host_vsock" "$qmp_sock" "$run_dir/qemu.pid"

vhost_pid=""
cleanup() {
    if [ -n "$vhost_pid" ]; then
        kill "$vhost_pid" 2>/dev/null || true
        wait "$vhost_pid" 2>/dev/null || true
    fi
    rm -f "$vhost_sock" "$host_vsock"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$vhost" --guest-cid 3 --socket "$vhost_sock" --uds-path "$host_vsock" \
    >"$run_dir/vhost-device-vsock.log" 2>&1 &
vhost_pid=$!
# The backend's readiness signal is its listening socket; bounded wait for it to appear.
for _ in $(seq 1 500); do
    [ -S "$vhost_sock" ] && break
    kill -0 "$vhost_pid" 2>/dev/null || die "vhost-device-vsock exited: $(cat "$run_dir/vhost-device-vsock.log")"
    sleep 0.01
done
[ -S "$vhost_sock" ] || die "vhost-device-vsock did not create $vhost_sock within 5 s"

# Boot-time savings for this emulated test VM (measured in QEMU CPU time on TCG): no crypto
# self-tests, no TSC calibration/watchdog checks, one UART, no Spectre-class mitigations
# (meaningless under TCG), no zeroing of every allocation, no audit. nolapic_timer: TCG has
# no TSC-deadline timer, so the kernel would spend 100 ms of busy-waiting calibrating the
# local APIC timer against the PM timer; with one vCPU the HPET serves as the tick device
# instead. ipv6.disable=1: the guest's only network (user networking, ipv6=off below) is
# IPv4, and the IPv6 stack's set-up costs tens of milliseconds.
fast="cryptomgr.notests no_timer_check tsc=reliable 8250.nr_uarts=1 mitigations=off init_on_alloc=0 audit=0 nolapic_timer ipv6.disable=1"
cmdline="console=ttyS0 panic=-1 $quiet $fast"
net=()
if [ -n "$kbs_port" ]; then
    cmdline="$cmdline agent.ip=eth0:$GUEST_IP"
    # restrict=on: the guest reaches nothing but the forwards listed here. guestfwd's cmd runs
    # once per guest connection, with the connection on its stdin/stdout.
    net=(-netdev "user,id=net0,restrict=on,ipv6=off,guestfwd=tcp:$GUEST_KBS_ADDR:$GUEST_KBS_PORT-cmd:socat STDIO TCP:127.0.0.1:$kbs_port"
        -device virtio-net-pci,netdev=net0,romfile=)
    command -v socat >/dev/null || die "socat missing (hack/qemu/setup.sh)"
fi
cmdline="$cmdline$append"

if [ -n "$console_log" ]; then
    serial=(-chardev "file,id=console,path=$console_log" -serial chardev:console)
else
    serial=(-serial stdio)
fi

disk=()
if [ -n "$initdata_disk" ]; then
    [ -f "$initdata_disk" ] || die "no such file: $initdata_disk"
    disk=(-drive "file=$initdata_disk,format=raw,if=none,id=initdata,readonly=on"
        -device virtio-blk-pci,drive=initdata)
fi

# Firmware: with the kernel given directly, all the firmware has to do is load it and jump
# to it. qboot (QEMU's minimal firmware) does that in a fraction of SeaBIOS's time under TCG.
# (Debian's qemu-system-data ships it; `qemu-system-x86_64 -L help` lists where QEMU looks.)
if [ -z "$firmware" ]; then
    firmware=seabios
    [ -f /usr/share/qemu/qboot.rom ] && firmware=qboot
fi
case $firmware in
    qboot) bios=(-bios qboot.rom) ;;
    seabios) bios=() ;;
    *) die "--firmware wants qboot or seabios, not '$firmware'" ;;
esac
# No AHCI controller and no SMBus on q35: nothing in the guest uses them, and every PCI
# function costs the kernel enumeration time.
machine_opts=""
case $machine in q35 | pc-q35-*) machine_opts=",sata=off,smbus=off" ;; esac

# CPU: everything TCG emulates except ERMS/FSRM. With them, the kernel and glibc copy and clear
# memory with `rep movsb`/`rep stosb`, which TCG executes one byte per iteration; without
# them they use 8-byte or vector loops (unpacking the initramfs alone gets ~30% faster).
cpu=max,erms=off,fsrm=off

mem="${memory}M"
mem_opts=$mem
[ -z "$maxmem" ] || mem_opts="$mem,slots=2,maxmem=${maxmem}M"
set +e
qemu-system-x86_64 \
    -machine "$machine,accel=tcg,memory-backend=mem$machine_opts" \
    "${bios[@]+"${bios[@]}"}" \
    -object "memory-backend-memfd,id=mem,size=$mem,share=on" \
    -cpu "$cpu" -smp "1,maxcpus=$maxcpus" -m "$mem_opts" \
    -nodefaults -no-user-config -display none -no-reboot \
    "${serial[@]}" \
    -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
    -chardev "socket,id=vsock,path=$vhost_sock" -device vhost-user-vsock-pci,chardev=vsock \
    -device virtio-rng-pci \
    "${net[@]+"${net[@]}"}" \
    "${disk[@]+"${disk[@]}"}" \
    -qmp "unix:$qmp_sock,server=on,wait=off" \
    -pidfile "$run_dir/qemu.pid" \
    "${qemu_extra[@]+"${qemu_extra[@]}"}"
rc=$?
set -e
exit "$rc"
