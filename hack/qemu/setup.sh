#!/usr/bin/env bash
# Installs everything the hack/qemu scripts need on a Debian host (CI calls this). Idempotent:
# a machine that has it all is left alone (no apt-get update, no cargo build).
#
#   apt: qemu-system-x86 (from bookworm-backports on bookworm, matching the backports
#        qemu-utils these machines ship: the bookworm one would replace it), socat (the guest's
#        forward to the KBS), kmod (depmod), lz4 (the kernel payload), file, busybox-static
#        (debug shells and guest-ops' container rootfs), libseccomp-dev (libseccomp.a for the
#        static agent, and virtiofsd's seccomp filter), libcap-ng-dev (virtiofsd)
#   cargo: vhost-device-vsock (the host half of the guest's vsock), virtiofsd (the host half of
#        guest-ops' virtio-fs share: Debian bookworm has no virtiofsd, and neither has the
#        backports QEMU)
set -euo pipefail
source "$(dirname "$0")/common.sh"

VHOST_DEVICE_VSOCK_VERSION=0.3.0
VIRTIOFSD_VERSION=1.14.0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

apt_pkgs=(qemu-system-x86 socat kmod lz4 file busybox-static libseccomp-dev libcap-ng-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    apt_target=()
    if [ "$codename" = bookworm ]; then
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            log "adding bookworm-backports (QEMU 10, matching the preinstalled qemu-utils)"
            printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" \
                "Suites: bookworm-backports" "Components: main" \
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
                $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
        fi
        apt_target=(-t bookworm-backports)
    fi
    $SUDO apt-get update -qq
    # qemu-utils named too, so apt upgrades it with qemu-system-x86 instead of removing it.
    extra=()
    dpkg-query -W -f='${Status}' qemu-utils 2>/dev/null | grep -q "install ok installed" && extra=(qemu-utils)
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${apt_target[@]+"${apt_target[@]}"}" "${missing[@]}" "${extra[@]+"${extra[@]}"}" >&2
fi

vhost_ok=0
if command -v vhost-device-vsock >/dev/null || [ -x "$HOME/.cargo/bin/vhost-device-vsock" ]; then
    vhost_ok=1
fi
if [ $vhost_ok = 0 ]; then
    log "cargo install vhost-device-vsock $VHOST_DEVICE_VSOCK_VERSION (a few minutes)"
    cargo install --locked --version "$VHOST_DEVICE_VSOCK_VERSION" vhost-device-vsock >&2
fi
if ! command -v virtiofsd >/dev/null && [ ! -x "$HOME/.cargo/bin/virtiofsd" ]; then
    log "cargo install virtiofsd $VIRTIOFSD_VERSION (a few minutes)"
    # Its release profile asks for LTO (a serial link step) for a test daemon whose speed does
    # not matter here; without it the build took 75 s of CPU here instead of 88 s.
    CARGO_PROFILE_RELEASE_LTO=false \
        cargo install --locked --version "$VIRTIOFSD_VERSION" virtiofsd >&2
fi
log "ready: $(qemu-system-x86_64 --version | head -n1), vhost-device-vsock $VHOST_DEVICE_VSOCK_VERSION, virtiofsd $VIRTIOFSD_VERSION"
