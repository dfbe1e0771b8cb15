#!/usr/bin/env bash
# End-to-end in QEMU/TCG: the static agent boots as the guest's init (PID 1) in mock-TEE mode
# with initdata; the VMM sets the launch binding (kernel parameter); the agent attests to the
# KBS test server on the host (reached only through QEMU user networking, 10.0.2.100:8080 ->
# 127.0.0.1:PORT), fetches the tenant's signed policy, then opens its API. From the host, over
# vsock (vhost-device-vsock, hybrid vsock socket): Check, an allowed call, a call blocked by
# the allow-list and one blocked by the policy, each with its exact status; the request sequence
# of Kata's runtime for a two-container pod (tests/e2e/tests/kata_pod.rs); then Ctrl-Alt-Del
# through QMP (SIGINT to init): the agent shuts down and powers the VM off, and QEMU must exit.
# Before that, guest image pull: the guest pulls a cosign-signed busybox image from a registry
# on the host (docker-registry on 127.0.0.1, reached as 10.0.2.101:5000) under the tenant's
# image policy and key from the KBS, runs it as a pod (pause container from the guest image's
# pause bundle), and the image's output is read back over vsock.
# Prints boot -> first answered request.
#
# Then a second boot with initdata edited after launch (the binding still names the original)
# must print the binding error on the console and power off without ever listening.
#
# Then a third boot for the workload's secrets (hack/qemu/workload-e2e.sh): a busybox container
# gets its sealed secrets unsealed and fetches an allowed secret from the workload API on the
# guest's loopback, and is refused one the measured config does not allow.
#
# Usage: e2e.sh [--agent PATH] [--vigilctl PATH] [--timeout SECS]
#   --agent, --vigilctl  use these binaries instead of building them
#   --timeout            bound for each wait (boot to readiness, shutdown) [default: 180]
#   --kbs-port PORT      host 127.0.0.1 port the guest's 10.0.2.100:8080 forwards to
# Needs hack/qemu/setup.sh. Logs stay in hack/out/e2e/ (console.log is the guest's serial).
set -euo pipefail
source "$(dirname "$0")/common.sh"

agent="" vigilctl="" timeout=180 kbs_port=""
while [ $# -gt 0 ]; do
    case $1 in
        --agent) agent=$2; shift 2 ;;
        --vigilctl) vigilctl=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --kbs-port) kbs_port=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

work=$OUT_DIR/e2e
rm -rf "$work"
mkdir -p "$work"

[ -n "$agent" ] || agent=$("$QEMU_HACK_DIR/build-agent.sh")
if [ -z "$vigilctl" ]; then
    (cd "$REPO_ROOT" && cargo build --locked -p vigilctl >&2)
    vigilctl=$TARGET_DIR/debug/vigilctl
fi
kernel_dir=$("$QEMU_HACK_DIR/get-kernel.sh")
(cd "$REPO_ROOT" && cargo build --locked -p kbs-test-server -p vigil-test-registry --bins >&2)
bin=$TARGET_DIR/debug
boot_pid="" kbs_pid="" registry_pid=""
cleanup() {
    if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; fi
    if [ -n "$boot_pid" ] && kill -0 "$boot_pid" 2>/dev/null; then
        kill "$boot_pid" 2>/dev/null || true
        wait "$boot_pid" 2>/dev/null || true
    fi
    if [ -n "$kbs_pid" ]; then kill "$kbs_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

# The KBS test server on the host's loopback; the guest reaches it only through QEMU's
# user-mode forward (10.0.2.100:8080 -> 127.0.0.1:PORT).
mkdir -p "$work/resources"
if [ -z "$kbs_port" ]; then
    : >"$work/kbs.out"
    "$bin/kbs-test-server" --listen 127.0.0.1:0 --resources "$work/resources" \
        >"$work/kbs.out" 2>"$work/kbs.log" &
    kbs_pid=$!
    wait_for_line "$work/kbs.out" 30 "listening on" || die "the KBS test server did not start"
    kbs_port=$(grep -m1 "listening on" "$work/kbs.out" | sed 's/.*://')
fi
# A registry on the host's loopback with a busybox image signed for the name the guest uses;
# the guest reaches it only through QEMU's forward (10.0.2.101:5000 -> 127.0.0.1:PORT). It
# serves while its stdin (a FIFO held open here) stays open.
guest_registry=$GUEST_REGISTRY_ADDR:$GUEST_REGISTRY_PORT
image_ref=$guest_registry/apps/hello:v1
mkfifo "$work/registry.stdin"
"$bin/vigil-test-registry" --repo apps/hello --tag v1 --cmd "cat /etc/message" \
    --sign-as "$guest_registry/apps/hello" --key-out "$work/cosign.pub" \
    <"$work/registry.stdin" >"$work/registry.out" 2>"$work/registry.log" &
registry_pid=$!
exec {registry_hold}>"$work/registry.stdin"
wait_for_line "$work/registry.out" 60 "^ready" || die "the registry did not start: $(cat "$work/registry.log")"
registry_port=$(grep -m1 "listening on" "$work/registry.out" | sed 's/.*://')
image_digest=$(grep -m1 "^digest " "$work/registry.out" | cut -d' ' -f2)

# Kata's pod sequence (tests/e2e/tests/kata_pod.rs kata_pod_in_the_guest), built now and run
# once the guest listens: the RPCs it sends, and tenant rules that allow exactly its app
# container and CopyFile under Kata's shared directory. Built as hack/test.sh builds the
# workspace's tests (same features), so after it nothing is compiled again.
(cd "$REPO_ROOT" && cargo test --workspace --locked --test kata_pod --no-run >&2)
export TENANT_EXTRA_ENDPOINTS='"CopyFileRequest", "CloseStdinRequest", "ReadStreamRequest",
           "WaitProcessRequest", "StatsContainerRequest", "SignalProcessRequest", "RemoveContainerRequest",
           "GetMetricsRequest"'
export TENANT_EXTRA_REGO='default StartContainerRequest := true
default CloseStdinRequest := true
default ReadStreamRequest := true
default WaitProcessRequest := true
default StatsContainerRequest := true
default SignalProcessRequest := true
default RemoveContainerRequest := true
default GetMetricsRequest := true
default CopyFileRequest := false
CopyFileRequest if {
    startswith(input.path, "/run/kata-containers/shared/containers/")
}
CreateContainerRequest if {
    input.OCI.Annotations["io.kubernetes.cri.container-name"] == "app"
    input.OCI.Root.Path == concat("/", ["/run/kata-containers/shared/containers", input.container_id, "rootfs"])
}
CreateContainerRequest if {
    input.storages[_].driver == "image_guest_pull"
}'
# The tenant: keys, a signed policy released to this initdata only, and initdata carrying
# the agent's config. Plain HTTP to a non-loopback address needs insecure_http (logged).
# For guest pull: the [image] section (image policy and cosign key from the KBS), GetMetrics,
# and a tenant rule allowing guest-pulled containers (the image policy decides which images).
image_config="[image]
policy = \"kbs:///default/image-policy/prod\"
signature_keys = [\"kbs:///default/cosign-key/prod\"]
insecure_registries = [\"$guest_registry\"]"
source "$REPO_ROOT/hack/tenant.sh"
digest=$(make_tenant "$work" "http://$GUEST_KBS_ADDR:$GUEST_KBS_PORT" "vsock://-1:$AGENT_VSOCK_PORT" \
    "insecure_http = true" "$image_config")
unset TENANT_EXTRA_ENDPOINTS TENANT_EXTRA_REGO # the workload boot below makes its own tenant
cat >"$work/image-policy.json" <<JSON
{"default": [{"type": "reject"}],
 "transports": {"docker": {"$guest_registry/apps": [
   {"type": "sigstoreSigned", "keyPath": "kbs:///default/cosign-key/prod"}]}}}
JSON
for r in "image-policy/prod:$work/image-policy.json" "cosign-key/prod:$work/cosign.pub"; do
    "$bin/kbs-tenant" publish --resources "$work/resources" --path "default/${r%%:*}" \
        --file "${r#*:}" --tee sample --init-data "$work/initdata.toml" >/dev/null
done
"$QEMU_HACK_DIR/make-initramfs.sh" --agent "$agent" --kernel-dir "$kernel_dir" \
    --initdata "$work/initdata.toml" -o "$work/initramfs.cpio" >/dev/null
# The VMM binds the launch value; for the mock TEE through the kernel command line.
boot_params="agent.initdata=/etc/vigil/initdata.toml agent.mock_launch_binding=$digest"

console=$work/console.log
run_dir=$work/run
: >"$console"
fail() {
    log "FAIL: $*"
    log "guest console (last 30 lines of $console):"
    tail -n 30 "$console" | tr -d '\r' >&2
    exit 1
}

kernel=$kernel_dir/vmlinux
[ -f "$kernel" ] || kernel=$kernel_dir/vmlinuz
t_start=$(now)
"$QEMU_HACK_DIR/boot.sh" --kernel "$kernel" \
    --initrd "$work/initramfs.cpio" --run-dir "$run_dir" --console-log "$console" \
    --kbs-port "$kbs_port" --registry-port "$registry_port" \
    --append "$boot_params" >"$work/boot.log" 2>&1 &
boot_pid=$!

# Readiness is the agent's own line on the console; a fatal line, a panic or a power-off
# before it is a failure.
rc=0
wait_for_line "$console" "$timeout" "vigil-agent: listening on " \
    "vigil-agent: (fatal|error)|Kernel panic|reboot: Power down" || rc=$?
case $rc in
    0) ;;
    2) fail "the guest stopped before the agent listened" ;;
    *) fail "no readiness line within ${timeout}s" ;;
esac
t_listening=$(now)

addr="hvsock://$run_dir/vsock.sock:$AGENT_VSOCK_PORT"
# expect_status RPC REQUEST CODE MESSAGE: the call fails with exactly this status.
expect_status() {
    local out
    if out=$(call "$1" "$2" 2>&1); then fail "$1 should have failed with $3: $out"; fi
    [ "$out" = "vigilctl: $1: $3: $4" ] || fail "$1: expected status $3 \"$4\", got: $out"
    log "ok: $1 -> $3 \"$4\""
}

expect_ok Check '{}' '"status": 1'
t_first_answer=$(now)
# Every mount init makes (devpts, /dev/shm, cgroup2, configfs for configfs-tsm) succeeded: a
# failed optional one is a warning on the console.
if grep -a "vigil-agent: warning: mounting" "$console"; then fail "init could not mount all it mounts"; fi
# init_daemon is true only when the agent runs as PID 1: proof that it booted as init.
expect_ok GetGuestDetails '{"mem_block_size": true}' '"init_daemon": true'
# The pod network RPCs work from the static agent as init (route netlink in the guest):
# the loopback interface that init brought up is listed.
expect_ok ListInterfaces '{}' '"name": "lo"'
expect_status ExecProcess '{"container_id": "c1", "exec_id": "e1"}' UNIMPLEMENTED \
    "ExecProcessRequest is blocked"
# The tenant's policy from the KBS (the initial one in initdata would have allowed this).
expect_status CreateContainer '{"container_id": "c1", "OCI": {"Process": {"Args": ["/bin/sh"]}}}' \
    PERMISSION_DENIED "CreateContainerRequest is blocked by policy"
grep -aq "step 3/5: tenant policy verified" "$console" || fail "no verified KBS policy on the console"
# Kata's runtime's requests for a two-container pod, replayed in the guest (cgroup v2).
t_pod=$(now)
out=$(cd "$REPO_ROOT" && VIGIL_KATA_POD_ADDR=$addr cargo test --workspace --locked -q \
    --test kata_pod -- --ignored --exact kata_pod_in_the_guest --nocapture 2>&1) ||
    fail "Kata pod replay: $out"
grep -q "test result: ok. 1 passed" <<<"$out" || fail "the Kata pod replay did not run: $out"
grep -q "stats read on cgroup v2" <<<"$out" || fail "the guest's stats were not cgroup v2: $out"
log "ok: Kata pod replay (pause + app container, Kata's paths, stats in ns on cgroup v2) in $(elapsed_ms "$t_pod" "$(now)") ms"

# Guest image pull, with the requests Kata's runtime sends for a pod (as JSON in Kata's shape).
# kata_container CID KIND IMAGE: a CreateContainer request whose rootfs is an image_guest_pull
# storage (KIND "sandbox": the pause container, from the pause bundle).
sandbox_dir=/run/kata-containers # Kata's guest layout: a guest-pulled rootfs at <cid>/rootfs
kata_container() {
    python3 - "$1" "$2" "$3" "$sandbox_dir/$1/rootfs" <<'PY'
import json, sys
cid, kind, image, rootfs = sys.argv[1:]
meta = {"io.kubernetes.cri.container-type": kind, "io.kubernetes.cri.sandbox-id": "e2e-pause"}
if kind == "container":
    meta["io.kubernetes.cri.image-name"] = image
storage = {"driver": "image_guest_pull", "source": image, "fstype": "overlay", "mount_point": rootfs,
           "driver_options": ["image_guest_pull=" + json.dumps({"metadata": meta})]}
process = {"Args": ["/pause"] if kind == "sandbox" else [], "Cwd": "/"}
mounts = [{"destination": "/proc", "source": "proc", "type_": "proc"},
          {"destination": "/dev", "source": "tmpfs", "type_": "tmpfs", "options": ["nosuid", "mode=755"]}]
print(json.dumps({"container_id": cid, "exec_id": cid, "storages": [storage], "OCI": {
    "Version": "1.0.2", "Process": process, "Root": {"Path": rootfs}, "Mounts": mounts,
    "Annotations": meta, "Linux": {"Namespaces": [{"Type": "pid"}, {"Type": "mnt"},
                                                  {"Type": "ipc"}, {"Type": "uts"}]}}}))
PY
}
long() { "$vigilctl" --addr "$addr" --timeout 300 call "$@"; }
t_pull=$(now)
expect_ok CreateSandbox '{"sandbox_id": "e2e-pod", "hostname": "e2e-pod"}' '{}'
out=$(long CreateContainer "$(kata_container e2e-pause sandbox pause)" 2>&1) || fail "pause container: $out"
expect_ok StartContainer '{"container_id": "e2e-pause"}' '{}'
out=$(long CreateContainer "$(kata_container e2e-app container "$image_ref")" 2>&1) ||
    fail "guest pull of $image_ref: $out"
t_pulled=$(now)
log "ok: CreateContainer pulled $image_ref ($image_digest) in $(elapsed_ms "$t_pull" "$t_pulled") ms"
expect_ok StartContainer '{"container_id": "e2e-app"}' '{}'
stdout=""
while chunk=$(call ReadStdout '{"container_id": "e2e-app", "len": 4096}' 2>&1); do
    stdout+=$(python3 -c 'import json,sys; sys.stdout.write(bytes(json.load(sys.stdin)["data"]).decode())' <<<"$chunk")
done
grep -q "eof" <<<"$chunk" || fail "ReadStdout: $chunk"
[ "$stdout" = "hello from a guest-pulled image" ] || fail "the image's output read back was '$stdout'"
log "ok: ReadStdout -> '$stdout' (the image's own program)"
expect_ok WaitProcess '{"container_id": "e2e-app"}' '"status": 0'
expect_ok GetMetrics '{}' 'vigil_image_pulls_total{outcome=\\"allowed\\"} 1'
expect_ok RemoveContainer '{"container_id": "e2e-app", "timeout": 10}' '{}'
expect_ok RemoveContainer '{"container_id": "e2e-pause", "timeout": 10}' '{}'
expect_ok DestroySandbox '{}' '{}'
log "ok: guest pull pod (pause, pull, run, read back, remove) in $(elapsed_ms "$t_pull" "$(now)") ms"

# Clean shutdown: Ctrl-Alt-Del -> SIGINT to init -> the agent closes the API and powers off.
"$QEMU_HACK_DIR/qmp.py" "$run_dir/qmp.sock" ctrl-alt-delete >/dev/null ||
    fail "QMP send-key failed"
rc=0
wait_for_line "$console" "$timeout" "reboot: Power down" "Kernel panic|vigil-agent: fatal" || rc=$?
[ $rc = 0 ] || fail "the guest did not power off cleanly after Ctrl-Alt-Del"
qemu_rc=0
wait "$boot_pid" || qemu_rc=$?
boot_pid=""
[ $qemu_rc = 0 ] || fail "QEMU exited with status $qemu_rc"
t_end=$(now)


# A failed start-up as init: initdata edited after launch. The binding still names the
# original digest, so step 2 fails: the reason on the console, then power-off; nothing listens.
sed 's/^allowed = \[/allowed = ["ExecProcessRequest", /' "$work/initdata.toml" >"$work/initdata-edited.toml"
cmp -s "$work/initdata.toml" "$work/initdata-edited.toml" && die "the edit did not change the initdata"
"$QEMU_HACK_DIR/make-initramfs.sh" --agent "$agent" --kernel-dir "$kernel_dir" \
    --initdata "$work/initdata-edited.toml" -o "$work/initramfs-bad.cpio" >/dev/null
bad_console=$work/console-bad.log
: >"$bad_console"
"$QEMU_HACK_DIR/boot.sh" --kernel "$kernel" --initrd "$work/initramfs-bad.cpio" \
    --run-dir "$work/run-bad" --console-log "$bad_console" \
    --kbs-port "$kbs_port" --append "$boot_params" >"$work/boot-bad.log" 2>&1 &
boot_pid=$!
console=$bad_console
rc=0
wait_for_line "$bad_console" "$timeout" "reboot: Power down" "vigil-agent: listening on|Kernel panic" || rc=$?
[ $rc = 0 ] || fail "a guest with a bad config must power off without listening"
grep -aq "vigil-agent: error: launch binding: " "$bad_console" ||
    fail "no console line naming the launch binding failure"
qemu_rc=0
wait "$boot_pid" || qemu_rc=$?
boot_pid=""
[ $qemu_rc = 0 ] || fail "QEMU exited with status $qemu_rc after the fatal start-up"
log "ok: edited initdata -> $(grep -a "vigil-agent: error" "$bad_console" | tr -d '\r' | cut -c1-120), powered off"

# --- Guest operations (vigil-guest): one more boot with hot-plug room; see guest-ops.sh. ---
"$QEMU_HACK_DIR/guest-ops.sh" --agent "$agent" --vigilctl "$vigilctl" \
    --kernel-dir "$kernel_dir" --timeout "$timeout" || die "guest operations failed (hack/out/guest-ops/)"
# --- end of guest operations ---

# Workload secrets: the workload API and sealed secrets, from a container in the guest.
source "$QEMU_HACK_DIR/workload-e2e.sh"
workload_e2e

log "PASS"
printf 'timing: boot -> agent listening %s ms; boot -> first answered request %s ms; boot -> QEMU exit after shutdown %s ms\n' \
    "$(elapsed_ms "$t_start" "$t_listening")" "$(elapsed_ms "$t_start" "$t_first_answer")" \
    "$(elapsed_ms "$t_start" "$t_end")"
echo "e2e: 1 passed, 0 failed"
