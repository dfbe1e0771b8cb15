#!/usr/bin/env bash
# vigil demo, on one machine without QEMU:
#   a tenant key and a signed policy, the KBS test server on 127.0.0.1, initdata that carries
#   the agent's config, and vigil-agent in mock-TEE mode on a unix socket. The agent checks
#   the launch binding, attests to the KBS, fetches and verifies the tenant's policy, and only
#   then opens its API. vigilctl then shows an allowed call, a call the allow-list blocks and a
#   call the tenant's policy blocks. Then a workload (this shell, standing in for a container on
#   the pod's loopback) fetches its secret through the agent's workload API, is refused one the
#   measured config does not allow, and gets evidence; the tenant seals a secret reference.
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
# The measured config also opens the workload API (CoCo's guest REST API) for the pod.
workload_api='[workload_api]
listen = "127.0.0.1:0"
allowed_resources = ["default/app/*"]
endpoints = ["resource", "evidence"]'
digest=$(make_tenant "$work" "http://$kbs_addr" "unix://$work/agent.sock" "" "$workload_api")
echo "   initdata sha384: $digest"
# The workload's secrets on the KBS, released to this initdata only.
printf 'correct-horse-battery-staple' >"$work/db-password"
printf 'not-for-this-workload' >"$work/other-key"
for r in default/app/db-password:db-password default/other/key:other-key; do
    "$bin/kbs-tenant" publish --resources "$work/resources" --path "${r%%:*}" --file "$work/${r#*:}" \
        --tee sample --init-data "$work/initdata.toml" >/dev/null
done
# The VMM programs the launch binding; for the mock TEE it is a kernel parameter.
echo "console=ttyS0 agent.mock_launch_binding=$digest" >"$work/cmdline"

echo "== 4. vigil-agent (mock TEE): attest, fetch the policy, then open the API"
mkfifo "$work/agent.ready"
"$bin/vigil-agent" --initdata "$work/initdata.toml" --kernel-cmdline "$work/cmdline" --audit-log "$work/audit.jsonl" \
    >"$work/agent.ready" 2>"$work/agent.log" &
pids+=($!)
# The agent prints the workload API's address, then its readiness line.
workload=""
while IFS= read -r line; do
    case "$line" in
        *"workload API on http://"*) workload=${line##*http://} ;;
        *"listening on"*) break ;;
    esac
done <"$work/agent.ready"
if [ -z "$workload" ]; then
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

echo; echo "== 6. a workload in the pod fetches its secret (the workload API on the guest's loopback: $workload)"
fetch() {
    echo; echo "\$ wget -q -O- http://$workload$1"
    busybox wget -q -O- "http://$workload$1" 2>&1 || true
    echo
}
echo "-- allowed by the measured config, released by the KBS to this attested agent:"
fetch /cdh/resource/default/app/db-password
echo "-- not in [workload_api] allowed_resources: 403, and the KBS is never asked:"
fetch /cdh/resource/default/other/key
echo "-- fresh evidence whose report data is the workload's own runtime data (up to 64 bytes):"
fetch "/aa/evidence?runtime_data=my-public-key-hash"
echo "-- what the agent serves:"
fetch /info
echo
echo "-- the tenant seals a secret reference for a pod spec (unsealed in the guest at CreateContainer"
echo "   when the measured config has [sealed_secrets]):"
echo "\$ vigilctl secret seal --resource default/app/db-password --key keys/tenant.key"
"$bin/vigilctl" secret seal --resource default/app/db-password --key "$work/keys/tenant.key" | cut -c1-100
echo "   ..."
echo
echo "== audit log (one line per policy in force and per decision, no request contents)"
sed 's/^/   /' "$work/audit.jsonl" 2>/dev/null || true
