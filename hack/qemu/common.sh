# Shared by the hack/qemu scripts: paths and small helpers. Source it, do not run it.
# shellcheck shell=bash

QEMU_HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$QEMU_HACK_DIR/../.." && pwd)
# Downloads and build products (gitignored).
OUT_DIR=${VIGIL_QEMU_OUT:-$REPO_ROOT/hack/out}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
AGENT_TARGET=x86_64-unknown-linux-gnu

# Where the guest reaches the KBS (QEMU user networking forwards it to a host 127.0.0.1 port).
GUEST_KBS_ADDR=10.0.2.100
GUEST_KBS_PORT=8080
GUEST_IP=10.0.2.15/24
# The agent's vsock port inside the guest (Kata's default).
AGENT_VSOCK_PORT=1024

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Seconds since the epoch with microseconds (bash 5).
now() { printf '%s' "$EPOCHREALTIME"; }
# Milliseconds between two now() values.
elapsed_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

# wait_for_line FILE TIMEOUT_SECS OK_PATTERN [FAIL_PATTERN]
# Follows FILE (from its start) until a line matches the extended regex OK_PATTERN (status 0)
# or FAIL_PATTERN (status 2, the line printed to stderr), or TIMEOUT_SECS pass (status 1).
# Blocks on reads from `tail -F`: no polling sleeps.
wait_for_line() {
    local file=$1 timeout=$2 ok=$3 fail=${4:-}
    local deadline=$((SECONDS + timeout)) left line fd rc=1
    exec {fd}< <(exec tail -n +1 -F "$file" 2>/dev/null)
    local tail_pid=$!
    while left=$((deadline - SECONDS)); ((left > 0)); do
        IFS= read -r -t "$left" -u "$fd" line || break
        line=${line%$'\r'}
        if [[ $line =~ $ok ]]; then rc=0; break; fi
        if [[ -n $fail && $line =~ $fail ]]; then
            printf '%s\n' "$line" >&2
            rc=2
            break
        fi
    done
    kill "$tail_pid" 2>/dev/null || true
    exec {fd}<&-
    return "$rc"
}

# The agent calls of the QEMU scripts. Each needs $vigilctl, $addr (the agent's address) and
# a `fail MESSAGE` of the calling script.
call() { "$vigilctl" --addr "$addr" call "$@"; }
# expect_ok RPC REQUEST SUBSTRING: the call succeeds and its JSON contains the text.
expect_ok() {
    local out
    out=$(call "$1" "$2" 2>&1) || fail "$1 failed: $out"
    grep -q -- "$3" <<<"$out" || fail "$1 answered without '$3': $out"
    log "ok: $1 -> $(tr -d '\n ' <<<"$out" | cut -c1-100)"
}
