#!/usr/bin/env bash
# Start-up benchmark: process start -> API listening, in mock-TEE mode against the KBS test
# server on loopback, with the 2,500-line genpolicy-like policy delivered (signed) by the KBS.
# Prints the median and p90 of the whole start and of each step over N runs (default 30), and
# the agent's resident memory once it listens (idle: no request has come in yet).
#
#   hack/bench-startup.sh [N]
#   VIGIL_AGENT_BIN=path/to/vigil-agent hack/bench-startup.sh   # another build, e.g. the static one
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-30}"
cargo build --release --locked --quiet -p vigil-agent -p kbs-test-server --bins
bin="${CARGO_TARGET_DIR:-target}/release"
agent="${VIGIL_AGENT_BIN:-$bin/vigil-agent}"
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

policy=policy/testdata/genpolicy-like/policy.rego
"$bin/kbs-tenant" keygen --alg es256 --out "$work/keys" >/dev/null
"$bin/kbs-tenant" sign --key "$work/keys/tenant.key" --policy "$policy" --version 1 --out "$work/policy.jws"
mkdir -p "$work/resources"
mkfifo "$work/kbs.ready"
"$bin/kbs-test-server" --listen 127.0.0.1:0 --resources "$work/resources" >"$work/kbs.ready" 2>/dev/null &
pids+=($!)
kbs_addr=$(while IFS= read -r l; do case "$l" in *"listening on"*) echo "${l##* }"; break ;; esac; done <"$work/kbs.ready")
signer=$(cat "$work/keys/tenant.pub")
cat >"$work/initdata.toml" <<TOML
version = "0.1.0"
algorithm = "sha384"
[data]
"vigil.toml" = '''
[agent]
server_addr = "unix://$work/agent.sock"
log_level = "info"
log_format = "json"
[endpoints]
allowed = ["*"]
[policy]
signer = """
$signer"""
audit_log = ""
[attestation]
tee = "mock"
policy_resource = "default/vigil-policy/prod"
[attestation.kbs]
kbs_url = "http://$kbs_addr"
'''
TOML
"$bin/kbs-tenant" publish --resources "$work/resources" --path default/vigil-policy/prod \
    --file "$work/policy.jws" --tee sample --init-data "$work/initdata.toml" >/dev/null
echo "agent.mock_launch_binding=$("$bin/kbs-tenant" init-data-digest "$work/initdata.toml")" >"$work/cmdline"

: >"$work/results"
mkfifo "$work/agent.ready"
for _ in $(seq "$runs"); do
    rm -f "$work/agent.sock"
    start=$(date +%s%N)
    "$agent" --initdata "$work/initdata.toml" --kernel-cmdline "$work/cmdline" \
        >"$work/agent.ready" 2>"$work/agent.log" &
    agent_pid=$!
    # The readiness line, not a timer, marks the end of start-up.
    grep -m1 -q "listening on" <"$work/agent.ready"
    echo $(( ($(date +%s%N) - start) / 1000 )) >"$work/total"
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$agent_pid/status")
    kill -TERM "$agent_pid"
    wait "$agent_pid" || true
    python3 - "$work/agent.log" "$(cat "$work/total")" "$rss" >>"$work/results" <<'PY'
import json, sys
steps = {}
for line in open(sys.argv[1]):
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    msg = rec.get("fields", {}).get("message", "")
    if msg.startswith("step ") and "ms" in rec.get("fields", {}):
        steps[msg.split(":")[0]] = rec["fields"]["ms"]
print(json.dumps({"total_us": int(sys.argv[2]), "rss_kib": int(sys.argv[3]), **steps}))
PY
done
python3 - "$work/results" "$runs" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
def stat(key, scale=1.0):
    v = sorted(r[key] * scale for r in rows if key in r)
    if not v:
        return "n/a"
    p90 = v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
    return f"median {statistics.median(v):8.2f} ms   p90 {p90:8.2f} ms"
print(f"vigil-agent start-up, {sys.argv[2]} runs, mock TEE + KBS test server on loopback, 2,516-line policy")
print(f"  process start -> listening     {stat('total_us', 1e-3)}")
print(f"  RSS once listening (MiB)       {stat('rss_kib', 1 / 1024).replace(' ms', '')}")
for k in sorted({k for r in rows for k in r if k.startswith('step')}):
    print(f"  {k:<30} {stat(k)}")
PY
