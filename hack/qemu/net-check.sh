#!/usr/bin/env bash
# Checks the guest's only way out: QEMU user networking (restrict=on) forwarding guest
# 10.0.2.100:8080 to a host 127.0.0.1 port. Boots the same kernel and modules with a busybox
# shell as init that fetches a random token from an HTTP server on the host's loopback; the
# token must come back on the console. Also checks that the guest reaches nothing else
# (the host's 10.0.2.2 gateway address is refused by restrict=on).
#
# Usage: net-check.sh [--timeout SECS]
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

work=$OUT_DIR/net-check
rm -rf "$work"
mkdir -p "$work/www"
kernel_dir=$("$QEMU_HACK_DIR/get-kernel.sh")
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
echo "$token" >"$work/www/token"

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
echo "NET-CHECK DONE"
\$bb poweroff -f
SH
chmod +x "$work/init"
"$QEMU_HACK_DIR/make-initramfs.sh" --agent "$work/init" --busybox --kernel-dir "$kernel_dir" \
    -o "$work/initramfs.cpio.gz" >/dev/null

"$QEMU_HACK_DIR/boot.sh" --initrd "$work/initramfs.cpio.gz" --run-dir "$work/run" \
    --kbs-port "$port" --console-log "$work/console.log" >"$work/boot.log" 2>&1 &
boot_pid=$!
wait_for_line "$work/console.log" "$timeout" "NET-CHECK DONE" "Kernel panic" ||
    die "the guest did not finish (console: $work/console.log)"
wait "$boot_pid" || die "QEMU exited with an error"
boot_pid=""

grep -q "FETCHED: $token" "$work/console.log" ||
    die "the guest did not fetch the token through the forward: $(grep -a FETCHED "$work/console.log")"
if grep -q "ESCAPED" "$work/console.log"; then
    die "the guest reached the host gateway address: restrict=on is not in force"
fi
log "PASS: guest $GUEST_KBS_ADDR:$GUEST_KBS_PORT -> host 127.0.0.1:$port, nothing else reachable"
