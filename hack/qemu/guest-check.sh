#!/usr/bin/env bash
# Checks the guest plumbing that the agent relies on, with the same kernel and modules but a
# busybox shell as init (so it runs without the agent):
# - the guest's only way out: QEMU user networking (restrict=on) forwarding guest
#   10.0.2.100:8080 to a host 127.0.0.1 port: a random token served on the host's loopback
#   must come back on the console, and the host's 10.0.2.2 gateway address must be refused;
# - a value the VMM passes with -fw_cfg (how a launch value reaches a mock-TEE guest) is
#   readable under /sys/firmware/qemu_fw_cfg;
# - an initdata disk (make-initdata-disk.py) shows up as /dev/vda with Kata's magic.
#
# Usage: guest-check.sh [--timeout SECS]
set -euo pipefail
source "$(dirname "$0")/common.sh"

timeout=120
while [ $# -gt 0 ]; do
    case $1 in
        --timeout) timeout=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

work=$OUT_DIR/guest-check
rm -rf "$work"
mkdir -p "$work/www"
kernel_dir=$("$QEMU_HACK_DIR/get-kernel.sh")
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
echo "$token" >"$work/www/token"
fw_token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
printf 'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n' >"$work/initdata.toml"
python3 "$QEMU_HACK_DIR/make-initdata-disk.py" "$work/initdata.toml" "$work/initdata.img"

http_pid="" boot_pid=""
cleanup() {
    for p in $boot_pid $http_pid; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

# Port 0: the kernel picks a free port; the server's first line says which.
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$work/www" >"$work/http.log" 2>&1 &
http_pid=$!
wait_for_line "$work/http.log" 20 "^Serving HTTP on 127.0.0.1 port [0-9]+" ||
    die "the host HTTP server did not start: $(cat "$work/http.log")"
port=$(sed -n 's/^Serving HTTP on 127.0.0.1 port \([0-9]*\).*/\1/p' "$work/http.log" | head -n1)

cat >"$work/init" <<SH
#!/bin/sh
bb=/bin/busybox
\$bb mount -t proc proc /proc
\$bb mount -t sysfs sysfs /sys
\$bb mount -t devtmpfs devtmpfs /dev
for m in \$(\$bb cat /etc/vigil/modules); do \$bb insmod /lib/modules/vigil/\$m; done
\$bb ip link set lo up
\$bb ip addr add $GUEST_IP dev eth0
\$bb ip link set eth0 up
echo "FETCHED: \$(\$bb wget -q -O - http://$GUEST_KBS_ADDR:$GUEST_KBS_PORT/token)"
if \$bb wget -q -O /dev/null http://10.0.2.2:$port/token; then echo "ESCAPED: gateway"; fi
echo "FW_CFG: \$(\$bb cat /sys/firmware/qemu_fw_cfg/by_name/opt/vigil/check/raw)"
echo "DISK: \$(\$bb head -c 8 /dev/vda)"
echo "GUEST-CHECK DONE"
\$bb poweroff -f
SH
chmod +x "$work/init"
"$QEMU_HACK_DIR/make-initramfs.sh" --agent "$work/init" --busybox --kernel-dir "$kernel_dir" \
    -o "$work/initramfs.cpio" >/dev/null

"$QEMU_HACK_DIR/boot.sh" --initrd "$work/initramfs.cpio" --run-dir "$work/run" \
    --kbs-port "$port" --console-log "$work/console.log" --initdata-disk "$work/initdata.img" \
    --qemu-arg -fw_cfg --qemu-arg "name=opt/vigil/check,string=$fw_token" \
    >"$work/boot.log" 2>&1 &
boot_pid=$!
wait_for_line "$work/console.log" "$timeout" "GUEST-CHECK DONE" "Kernel panic" ||
    die "the guest did not finish (console: $work/console.log)"
wait "$boot_pid" || die "QEMU exited with an error"
boot_pid=""

grep -q "FETCHED: $token" "$work/console.log" ||
    die "the guest did not fetch the token through the forward: $(grep -a FETCHED "$work/console.log")"
if grep -q "ESCAPED" "$work/console.log"; then
    die "the guest reached the host gateway address: restrict=on is not in force"
fi
grep -q "FW_CFG: $fw_token" "$work/console.log" ||
    die "the guest did not read the -fw_cfg value: $(grep -a FW_CFG "$work/console.log")"
grep -q "DISK: initdata" "$work/console.log" ||
    die "the guest did not see the initdata disk: $(grep -a DISK: "$work/console.log")"
log "ok: -fw_cfg value and initdata disk (/dev/vda) visible in the guest"
log "PASS: guest $GUEST_KBS_ADDR:$GUEST_KBS_PORT -> host 127.0.0.1:$port, nothing else reachable"
echo "guest-check: 1 passed, 0 failed"
