# Sourced by hack/qemu/e2e.sh: the workload-secrets boot (issue 15). A guest whose measured
# config turns on the workload API ([workload_api] on 127.0.0.1:8006) and sealed secrets runs a
# busybox container (its image copied into the sandbox's shared directory with CopyFile, in
# chunks, as Kata's runtime copies files into a confidential guest). Inside it, the container checks, by SHA-256, that
# its sealed environment value and its sealed secret-volume file were unsealed, that `wget` from
# the workload API gets the secret the measured config allows, and that it is refused (403) one
# it does not; its exit status tells the host which check failed, and nothing else leaves the
# guest. A container whose sealed value is signed by another key must fail CreateContainer.
#
# Uses e2e.sh's variables and helpers: $work $bin $vigilctl $agent $kernel $kernel_dir
# $kbs_port $timeout, log, fail, wait_for_line, $QEMU_HACK_DIR, $GUEST_KBS_ADDR ...
# shellcheck shell=bash

workload_e2e() {
    local w=$work/workload
    rm -rf "$w"
    mkdir -p "$w"
    # The container's view: a static busybox as the whole rootfs.
    local bb
    bb=$(command -v busybox) || fail "workload e2e: no busybox (apt-get install busybox-static)"
    file -b "$bb" | grep -q "statically linked" || fail "workload e2e: $bb is not static"

    "$bin/kbs-tenant" keygen --alg es256 --out "$w/sealing" >/dev/null
    cat >"$w/vigil.toml" <<TOML
[agent]
server_addr = "vsock://-1:$AGENT_VSOCK_PORT"

[endpoints]
allowed = ["CreateSandboxRequest", "DestroySandboxRequest", "CopyFileRequest",
           "CreateContainerRequest", "StartContainerRequest", "WaitProcessRequest",
           "RemoveContainerRequest", "GetMetricsRequest"]

[policy]
signer = """
$(cat "$work/keys/tenant.pub")"""
min_version = 2

[attestation]
tee = "mock"
policy_resource = "default/vigil-policy/workload"
deadline_secs = 60

[attestation.kbs]
kbs_url = "http://$GUEST_KBS_ADDR:$GUEST_KBS_PORT"
insecure_http = true

[workload_api]
listen = "127.0.0.1:8006"
allowed_resources = ["default/app/*"]

[sealed_secrets]
signers = ["""
$(cat "$w/sealing/tenant.pub")"""]
TOML
    cat >"$w/policy.rego" <<'REGO'
package agent_policy

default CreateSandboxRequest := true
default DestroySandboxRequest := true
default CopyFileRequest := true
default StartContainerRequest := true
default WaitProcessRequest := true
default RemoveContainerRequest := true
default GetMetricsRequest := true
# Only the busybox workload runs.
default CreateContainerRequest := false
CreateContainerRequest if {
    input.OCI.Process.Args[0] == "/bin/busybox"
}
REGO
    "$bin/kbs-tenant" sign --key "$work/keys/tenant.key" --policy "$w/policy.rego" \
        --version 3 --out "$w/policy.jws"
    # The measured config, packed by the tenant tool; its digest is the launch binding.
    local digest
    digest=$("$vigilctl" initdata pack --config "$w/vigil.toml" -o "$w/initdata.toml" --digest) ||
        fail "vigilctl initdata pack"
    "$vigilctl" initdata verify "$w/initdata.toml" --digest "$digest" >/dev/null ||
        fail "vigilctl initdata verify"
    printf 'db-password-from-the-kbs' >"$w/db"
    printf 'tls-key-from-the-kbs' >"$w/tls"
    printf 'api-token-from-the-kbs' >"$w/api"
    printf 'never-for-the-workload' >"$w/other"
    local r
    for r in default/vigil-policy/workload:policy.jws default/secrets/db:db default/secrets/tls:tls \
        default/app/api:api default/other/key:other; do
        "$bin/kbs-tenant" publish --resources "$work/resources" --path "${r%%:*}" \
            --file "$w/${r#*:}" --tee sample --init-data "$w/initdata.toml" >/dev/null
    done
    local sealed_env sealed_file forged
    sealed_env=$("$vigilctl" secret seal --resource default/secrets/db --key "$w/sealing/tenant.key")
    sealed_file=$("$vigilctl" secret seal --resource default/secrets/tls --key "$w/sealing/tenant.key")
    forged=$("$vigilctl" secret seal --resource default/secrets/db --key "$work/keys/tenant.key")

    "$QEMU_HACK_DIR/make-initramfs.sh" --agent "$agent" --kernel-dir "$kernel_dir" \
        --initdata "$w/initdata.toml" -o "$w/initramfs.cpio" >/dev/null

    # The requests, as Kata's runtime would send them (Kata JSON shape).
    python3 - "$w" "$bb" "$sealed_env" "$sealed_file" "$forged" <<'PY'
import hashlib, json, os, stat, sys
w, busybox, sealed_env, sealed_file, forged = sys.argv[1:]
sid, cid, bad = "wl", "wl-c1", "wl-bad"
# Kata's guest layout: the image where the Go shim shares a container's rootfs, the secret
# volume as a file it shares (<cid>-<random>-<name>, fs_share_linux.go).
shared = "/run/kata-containers/shared/containers"
rootfs = f"{shared}/{cid}/rootfs"
vol = f"{shared}/{cid}-5f1c2a9e0b7d4386-creds"
stamp = "..2025_01_01_00_00_00.1"
h = lambda name: hashlib.sha256(open(os.path.join(w, name), "rb").read()).hexdigest()
def dump(name, obj):
    with open(os.path.join(w, name), "w") as f:
        json.dump(obj, f)
dump("sandbox.json", {"sandbox_id": sid})
copies = [
    {"path": vol, "file_mode": stat.S_IFDIR | 0o755, "dir_mode": 0o755},
    {"path": f"{vol}/{stamp}", "file_mode": stat.S_IFDIR | 0o755, "dir_mode": 0o755},
    {"path": f"{vol}/{stamp}/tls.key", "file_mode": stat.S_IFREG | 0o644, "dir_mode": 0o755,
     "file_size": len(sealed_file), "data": list(sealed_file.encode())},
    {"path": f"{vol}/..data", "file_mode": stat.S_IFLNK | 0o777, "data": list(stamp.encode())},
    {"path": f"{vol}/tls.key", "file_mode": stat.S_IFLNK | 0o777, "data": list(b"..data/tls.key")},
]
# The image: a static busybox, in chunks that fit a ttrpc frame.
copies += [{"path": f"{rootfs}{d}", "file_mode": stat.S_IFDIR | 0o755, "dir_mode": 0o755}
           for d in ["", "/bin", "/proc", "/dev", "/tmp", "/etc", "/sys"]]
image = open(busybox, "rb").read()
chunk = 512 * 1024
for off in range(0, len(image), chunk):
    copies.append({"path": f"{rootfs}/bin/busybox", "file_mode": stat.S_IFREG | 0o755,
                   "dir_mode": 0o755, "file_size": len(image), "offset": off,
                   "data": list(image[off:off + chunk])})
for i, c in enumerate(copies):
    dump(f"copy{i}.json", c)
with open(os.path.join(w, "copies"), "w") as f:
    f.write(str(len(copies)))
# Each failed check exits with its own status: the host learns which, and nothing more.
script = f"""
h() {{ busybox printf %s "$1" | busybox sha256sum | busybox cut -d' ' -f1; }}
[ "$(h "$DB_PASSWORD")" = {h("db")} ] || exit 10
[ "$(h "$(busybox cat /etc/creds/tls.key)")" = {h("tls")} ] || exit 11
[ "$(h "$(busybox wget -q -O- http://127.0.0.1:8006/cdh/resource/default/app/api)")" = {h("api")} ] || exit 12
busybox wget -q -O- http://127.0.0.1:8006/cdh/resource/default/other/key >/dev/null 2>&1 && exit 13
exit 0
"""
def container(id, env):
    return {
        "container_id": id,
        "storages": [],
        "OCI": {
            "Version": "1.0.2",
            "Process": {"Args": ["/bin/busybox", "sh", "-c", script], "Env": ["PATH=/bin", env],
                        "Cwd": "/", "User": {"UID": 0, "GID": 0}},
            "Root": {"Path": rootfs},
            "Mounts": [{"destination": "/proc", "source": "proc", "type_": "proc"},
                       {"destination": "/etc/creds", "source": vol, "type_": "bind", "options": ["rbind", "ro"]}],
            "Linux": {"Namespaces": [{"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"}]},
        },
    }
dump("create.json", container(cid, f"DB_PASSWORD={sealed_env}"))
dump("create-forged.json", container(bad, f"DB_PASSWORD={forged}"))
dump("ids.json", {"container_id": cid})
PY

    local console=$w/console.log run_dir=$w/run
    : >"$console"
    "$QEMU_HACK_DIR/boot.sh" --kernel "$kernel" --initrd "$w/initramfs.cpio" \
        --run-dir "$run_dir" --console-log "$console" --kbs-port "$kbs_port" \
        --append "agent.initdata=/etc/vigil/initdata.toml agent.mock_launch_binding=$digest" \
        >"$w/boot.log" 2>&1 &
    boot_pid=$!
    local rc=0
    wait_for_line "$console" "$timeout" "vigil-agent: listening on " \
        "vigil-agent: (fatal|error)|Kernel panic|reboot: Power down" || rc=$?
    [ $rc = 0 ] || { tail -n 30 "$console" | tr -d '\r' >&2; fail "workload boot: the agent did not start"; }
    grep -aq "workload API on http://127.0.0.1:8006" "$console" || fail "no workload API line on the console"

    local addr="hvsock://$run_dir/vsock.sock:$AGENT_VSOCK_PORT" out i
    wcall() { "$vigilctl" --timeout 120 --addr "$addr" call "$@"; }
    wcall CreateSandbox "@$w/sandbox.json" >/dev/null || fail "CreateSandbox failed"
    for i in $(seq 0 $(($(cat "$w/copies") - 1))); do
        out=$(wcall CopyFile "@$w/copy$i.json" 2>&1) || fail "CopyFile $i: $(head -c 300 <<<"$out")"
    done
    # Signed by a key the measured config does not pin: refused before anything runs.
    if out=$(wcall CreateContainer "@$w/create-forged.json" 2>&1); then
        fail "a forged sealed secret was accepted: $out"
    fi
    grep -q "INVALID_ARGUMENT: OCI.Process.Env\[1\] (DB_PASSWORD): cannot unseal" <<<"$out" ||
        fail "forged sealed secret: unexpected answer: $out"
    log "ok: workload: a sealed value signed by another key fails CreateContainer"
    out=$(wcall CreateContainer "@$w/create.json" 2>&1) || fail "CreateContainer: $out"
    out=$(wcall StartContainer "@$w/ids.json" 2>&1) || fail "StartContainer: $out"
    out=$(wcall WaitProcess "@$w/ids.json" 2>&1) || fail "WaitProcess: $out"
    local status
    status=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' <<<"$out")
    case $status in
        0) log "ok: workload: the container got its sealed env value and secret file unsealed, fetched an allowed secret, was refused another" ;;
        10) fail "workload: the sealed environment value was not unsealed" ;;
        11) fail "workload: the sealed secret file was not unsealed" ;;
        12) fail "workload: wget of an allowed resource did not return it" ;;
        13) fail "workload: a resource not in allowed_resources was served" ;;
        *) fail "workload: the container exited with status $status" ;;
    esac
    out=$(wcall GetMetrics '{}' 2>&1) || fail "GetMetrics: $out"
    grep -q 'vigil_workload_api_requests_total{endpoint=\\"/cdh/resource\\",outcome=\\"allowed\\"} 1' <<<"$out" ||
        fail "workload API metrics lack the allowed fetch"
    grep -q 'vigil_workload_api_requests_total{endpoint=\\"/cdh/resource\\",outcome=\\"denied\\"} 1' <<<"$out" ||
        fail "workload API metrics lack the refused fetch"
    log "ok: workload: GetMetrics counts one allowed and one refused resource fetch"

    "$QEMU_HACK_DIR/qmp.py" "$run_dir/qmp.sock" ctrl-alt-delete >/dev/null || fail "QMP send-key failed"
    rc=0
    wait_for_line "$console" "$timeout" "reboot: Power down" "Kernel panic|vigil-agent: fatal" || rc=$?
    [ $rc = 0 ] || fail "the workload guest did not power off cleanly"
    local qemu_rc=0
    wait "$boot_pid" || qemu_rc=$?
    boot_pid=""
    [ $qemu_rc = 0 ] || fail "QEMU exited with status $qemu_rc after the workload boot"
}
