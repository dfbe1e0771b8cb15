#!/usr/bin/env bash
# Measures QEMU/TCG boot -> first answered request: boots the guest with the agent as init
# RUNS times; each run times QEMU start -> the agent's readiness line -> the first Check answered
# over vsock, then shuts the guest down (Ctrl-Alt-Del) and waits for QEMU to exit.
# Prints every run and the median (ms).
#
# Usage: bench-boot.sh [--runs N] [--agent PATH] [--vigilctl PATH] [--append PARAMS]
#                      [--boot-arg ARG]... [--gzip]
#   --append     extra kernel parameters, to compare boot options
#   --boot-arg   one more boot.sh argument (repeatable), e.g. --boot-arg --machine --boot-arg pc
#   --gzip       gzip'd initramfs (plain is the default)
set -euo pipefail
source "$(dirname "$0")/common.sh"

runs=5 agent="" vigilctl="" append="" timeout=180 boot_args=() initramfs_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --agent) agent=$2; shift 2 ;;
        --vigilctl) vigilctl=$2; shift 2 ;;
        --append) append=$2; shift 2 ;;
        --boot-arg) boot_args+=("$2"); shift 2 ;;
        --gzip) initramfs_args+=(--gzip); shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number"

work=$OUT_DIR/bench-boot
rm -rf "$work"
mkdir -p "$work"
[ -n "$agent" ] || agent=$("$QEMU_HACK_DIR/build-agent.sh")
if [ -z "$vigilctl" ]; then
    (cd "$REPO_ROOT" && cargo build --locked -p vigilctl >&2)
    vigilctl=$TARGET_DIR/debug/vigilctl
fi
kernel_dir=$("$QEMU_HACK_DIR/get-kernel.sh")
kernel=$kernel_dir/vmlinux
[ -f "$kernel" ] || kernel=$kernel_dir/vmlinuz
printf '[agent]\nserver_addr = "vsock://-1:1024"\nlog_level = "warn"\n' >"$work/agent.toml"
"$QEMU_HACK_DIR/make-initramfs.sh" --agent "$agent" --kernel-dir "$kernel_dir" \
    --config "$work/agent.toml" -o "$work/initramfs.img" \
    "${initramfs_args[@]+"${initramfs_args[@]}"}" >/dev/null

boot_pid=""
trap '[ -z "$boot_pid" ] || { kill "$boot_pid" 2>/dev/null; wait "$boot_pid" 2>/dev/null; }' EXIT
results=() cpus=()
for i in $(seq 1 "$runs"); do
    console=$work/console-$i.log
    : >"$console"
    t0=$(now)
    "$QEMU_HACK_DIR/boot.sh" --kernel "$kernel" --initrd "$work/initramfs.img" \
        --run-dir "$work/run" --console-log "$console" --kbs-port 9 \
        --append "agent.config_file=/etc/vigil/agent.toml $append" \
        "${boot_args[@]+"${boot_args[@]}"}" >"$work/boot-$i.log" 2>&1 &
    boot_pid=$!
    wait_for_line "$console" "$timeout" "vigil-agent: listening on " \
        "vigil-agent: (fatal|error)|Kernel panic|reboot: Power down" ||
        die "run $i: the agent did not start (see $console)"
    t1=$(now)
    "$vigilctl" --addr "hvsock://$work/run/vsock.sock:$AGENT_VSOCK_PORT" call Check >/dev/null ||
        die "run $i: Check failed"
    t2=$(now)
    # QEMU's CPU time so far: what the boot costs on an idle machine (wall time on a busy
    # one also counts the time QEMU waited for a core).
    cpu_ms=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", ($14 + $15) * 1000 / hz }' \
        "/proc/$(cat "$work/run/qemu.pid")/stat")
    cpus+=("$cpu_ms")
    "$QEMU_HACK_DIR/qmp.py" "$work/run/qmp.sock" ctrl-alt-delete >/dev/null
    wait "$boot_pid" || die "run $i: QEMU exited with an error"
    boot_pid=""
    t3=$(now)
    ms=$(elapsed_ms "$t0" "$t2")
    results+=("$ms")
    printf 'run %d: listening %s ms, first answer %s ms (QEMU CPU %s ms), QEMU exit %s ms\n' \
        "$i" "$(elapsed_ms "$t0" "$t1")" "$ms" "$cpu_ms" "$(elapsed_ms "$t0" "$t3")"
done
median() {
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END {
        print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
sorted=$(printf '%s\n' "${results[@]}" | sort -n)
printf 'boot -> first answered request: median %s ms over %d runs (min %s, max %s); QEMU CPU time median %s ms; load average %s\n' \
    "$(median "${results[@]}")" "$runs" "$(head -n1 <<<"$sorted")" "$(tail -n1 <<<"$sorted")" \
    "$(median "${cpus[@]}")" "$(cut -d' ' -f1-3 /proc/loadavg)"
