#!/usr/bin/env bash
# vigil demo, on one machine without QEMU:
#   a tenant key and a signed policy, the KBS test server on 127.0.0.1, initdata that carries
#   the agent's config, and vigil-agent in mock-TEE mode on a unix socket. The agent checks
#   the launch binding, attests to the KBS, fetches and verifies the tenant's policy, and only
#   then opens its API. vigilctl then shows an allowed call, a call the allow-list blocks and a
#   call the tenant's policy blocks.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
cargo build --workspace --bins --locked --quiet
bin="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Waits for a process's readiness line on a FIFO (no timers) and prints the address in it.
wait_ready() { # fifo pattern
    local line
    while IFS= read -r line; do
        case "$line" in *"$2"*) echo "${line##* }"; return 0 ;; esac
    done <"$1"
    return 1
}

echo "== 1. KBS test server on 127.0.0.1"
mkdir -p "$work/resources"
mkfifo "$work/kbs.ready"
"$bin/kbs-test-server" --listen 127.0.0.1:0 --resources "$work/resources" \
    >"$work/kbs.ready" 2>"$work/kbs.log" &
pids+=($!)
kbs_addr=$(wait_ready "$work/kbs.ready" "listening on") || { cat "$work/kbs.log"; exit 1; }
echo "   listening on $kbs_addr"

echo "== 2. tenant: key pair, a signed policy (version 3), published for this initdata"
echo "== 3. initdata: the agent's config (measured), bound into the launch evidence"
source hack/tenant.sh
digest=$(make_tenant "$work" "http://$kbs_addr" "unix://$work/agent.sock" "")
echo "   initdata sha384: $digest"
# The VMM programs the launch binding; for the mock TEE it is a kernel parameter.
echo "console=ttyS0 agent.mock_launch_binding=$digest" >"$work/cmdline"

echo "== 4. vigil-agent (mock TEE): attest, fetch the policy, then open the API"
mkfifo "$work/agent.ready"
"$bin/vigil-agent" --initdata "$work/initdata.toml" --kernel-cmdline "$work/cmdline" --audit-log "$work/audit.jsonl" \
    >"$work/agent.ready" 2>"$work/agent.log" &
pids+=($!)
if ! wait_ready "$work/agent.ready" "listening on" >/dev/null; then
    echo "agent failed to start:"; cat "$work/agent.log"; exit 1
fi
grep -E "step [0-9]/5" "$work/agent.log" | sed 's/^/   /'

call() {
    echo; echo "\$ vigilctl call $*"
    "$bin/vigilctl" --addr "unix://$work/agent.sock" call "$@" || true
}
echo; echo "== 5. calls from the (untrusted) host"
call Version
echo; echo "-- allowed by the allow-list and the tenant's policy:"
call GetGuestDetails '{"mem_block_size": true}'
echo; echo "-- blocked by the allow-list (the host may not exec into a confidential container):"
call ExecProcess '{"container_id": "c1", "exec_id": "e1"}'
echo; echo "-- blocked by the tenant's policy from the KBS (the initdata policy would have allowed it):"
call CreateContainer '{"container_id": "c1", "OCI": {"Process": {"Args": ["/bin/sh", "-c", "cat /secrets"]}}}'
echo; echo "-- SetPolicy from the host: refused by the tenant's policy"
call SetPolicy '{"policy": "package agent_policy\ndefault ExecProcessRequest := true"}'
echo
echo "== audit log (one line per policy in force and per decision, no request contents)"
sed 's/^/   /' "$work/audit.jsonl" 2>/dev/null || true
