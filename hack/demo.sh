#!/usr/bin/env bash
# vigil demo: starts the agent on a unix socket with the confidential allow-list, then shows
# with vigilctl an allowed call, calls the allow-list blocks, and the agent's own version.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked --quiet
bin="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
cleanup() { [ -n "${agent_pid:-}" ] && kill "$agent_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

addr="unix://$work/agent.sock"
echo "== starting vigil-agent with hack/sample-configs/confidential.toml on $addr"
mkfifo "$work/ready"
"$bin/vigil-agent" --config hack/sample-configs/confidential.toml --server-addr "$addr" \
    >"$work/ready" 2>"$work/agent.log" &
agent_pid=$!
# Wait for the readiness line, not a timer.
if ! grep -m1 -q "listening on" <"$work/ready"; then
    echo "agent failed to start:"; cat "$work/agent.log"; exit 1
fi

call() {
    echo; echo "\$ vigilctl call $*"
    "$bin/vigilctl" --addr "$addr" call "$@" || true
}
call Version
call GetGuestDetails '{"mem_block_size": true}'
echo; echo "-- blocked by the allow-list (the host may not exec into a confidential container):"
call ExecProcess '{"container_id": "c1", "exec_id": "e1"}'
call ReadStdout '{"container_id": "c1", "exec_id": "e1"}'
call SetPolicy '{"policy": "package agent_policy\ndefault ExecProcessRequest := true"}'
echo
echo "== agent log"
cat "$work/agent.log"
