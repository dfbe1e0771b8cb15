#!/usr/bin/env bash
# Writes the guest initramfs: the static agent as /init, the kernel modules from
# get-kernel.sh (loaded by the agent in the order of /etc/vigil/modules), the pause bundle
# (/pause_bundle: config.json and rootfs/pause, built from pause.c: the sandbox container of
# guest-pull pods, never pulled), and optionally the agent config and an initdata file.
#
# Usage: make-initramfs.sh [options]
#   --agent PATH        static agent binary, installed as /init [default: the release
#                       build of build-agent.sh]
#   --kernel-dir DIR    output of get-kernel.sh [default: hack/out/kernel/current]
#   --config FILE       agent config, installed as /etc/vigil/agent.toml
#                       (boot with agent.config_file=/etc/vigil/agent.toml)
#   --initdata FILE     initdata TOML, installed as /etc/vigil/initdata.toml
#                       (boot with agent.initdata=/etc/vigil/initdata.toml)
#   --add SRC:DEST      any other file (executables keep mode 0755, others get 0644)
#   --busybox           add a static busybox as /bin/busybox and /bin/sh (debugging only:
#                       boot with rdinit=/bin/sh)
#   --gzip              gzip the archive (smaller file, but inflating it costs the TCG guest
#                       more time than copying the plain archive: plain is the default)
#   --no-compress       plain cpio (the default)
#   -o, --output FILE   [default: hack/out/initramfs.cpio, or .cpio.gz with --gzip]
set -euo pipefail
source "$(dirname "$0")/common.sh"

agent=$TARGET_DIR/$AGENT_TARGET/release/vigil-agent
kernel_dir=$OUT_DIR/kernel/current
config="" initdata="" busybox=0 compress=0 output=""
extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --agent) agent=$2; shift 2 ;;
        --kernel-dir) kernel_dir=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --initdata) initdata=$2; shift 2 ;;
        --add) extra+=("$2"); shift 2 ;;
        --busybox) busybox=1; shift ;;
        --no-compress) compress=0; shift ;;
        --gzip) compress=1; shift ;;
        -o | --output) output=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -n "$output" ] || output=$OUT_DIR/initramfs.cpio$([ $compress = 1 ] && echo .gz)
[ -x "$agent" ] || die "no agent binary at $agent (run hack/qemu/build-agent.sh or pass --agent)"
[ -f "$kernel_dir/modules/list" ] || die "no modules in $kernel_dir (run hack/qemu/get-kernel.sh)"
for f in "$config" "$initdata"; do
    [ -z "$f" ] || [ -f "$f" ] || die "no such file: $f"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$output")"

# The pause bundle, as Kata's guest images carry it.
command -v cc >/dev/null || die "cc is needed to build the pause program (apt-get install gcc)"
cc -static -Os -s -o "$work/pause" "$QEMU_HACK_DIR/pause.c" || die "building pause.c failed"
cat >"$work/pause-config.json" <<'JSON'
{"ociVersion": "1.0.2", "process": {"args": ["/pause"], "env": ["PATH=/"], "cwd": "/",
 "user": {"uid": 65535, "gid": 65535}, "noNewPrivileges": true}, "root": {"path": "rootfs"}}
JSON

# Symbols are of no use in the guest and cost boot time (the kernel copies every byte).
# (--agent may also be a script, e.g. a busybox shell init for network checks.)
if file -b "$agent" | grep -q '^ELF'; then
    strip -o "$work/init" "$agent"
else
    cp "$agent" "$work/init"
fi

{
    # Mount points and /dev/console: the kernel opens it as init's stdio before init runs.
    for d in /dev /proc /sys /run /tmp /etc /etc/vigil /lib /lib/modules /lib/modules/vigil; do
        echo "dir $d 0755 0 0"
    done
    echo "nod /dev/console 0600 0 0 c 5 1"
    echo "file /init $work/init 0755 0 0"
    for d in /pause_bundle /pause_bundle/rootfs; do echo "dir $d 0755 0 0"; done
    echo "file /pause_bundle/config.json $work/pause-config.json 0644 0 0"
    echo "file /pause_bundle/rootfs/pause $work/pause 0755 0 0"
    while read -r ko; do
        [ -n "$ko" ] || continue
        echo "file /lib/modules/vigil/$ko $kernel_dir/modules/$ko 0644 0 0"
    done <"$kernel_dir/modules/list"
    echo "file /etc/vigil/modules $kernel_dir/modules/list 0644 0 0"
    [ -z "$config" ] || echo "file /etc/vigil/agent.toml $config 0644 0 0"
    [ -z "$initdata" ] || echo "file /etc/vigil/initdata.toml $initdata 0644 0 0"
    for spec in "${extra[@]+"${extra[@]}"}"; do
        src=${spec%%:*} dst=${spec#*:}
        [ -f "$src" ] && [ "$src" != "$spec" ] || die "--add wants SRC:DEST with an existing SRC: '$spec'"
        mode=0644
        [ -x "$src" ] && mode=0755
        echo "file $dst $src $mode 0 0"
    done
    if [ $busybox = 1 ]; then
        bb=$(command -v busybox) || die "--busybox: no busybox (apt-get install busybox-static)"
        file -b "$bb" | grep -q "statically linked" || die "--busybox: $bb is not static"
        echo "dir /bin 0755 0 0"
        echo "file /bin/busybox $bb 0755 0 0"
        echo "slink /bin/sh busybox 0777 0 0"
    fi
} >"$work/manifest"

python3 "$QEMU_HACK_DIR/mkcpio.py" $([ $compress = 1 ] && echo --gzip) "$work/manifest" "$output"
log "initramfs: $output ($(du -h "$output" | cut -f1))"
echo "$output"
