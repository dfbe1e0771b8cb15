#!/usr/bin/env bash
# Installs the Debian packages vigil's build and tests need, when missing (no-op otherwise):
#   libseccomp-dev, pkg-config  youki's libcontainer (seccomp) links libseccomp
#   busybox-static              the container tests' root filesystem
#   iproute2                    the network tests build links in a private namespace with `ip`
#   docker-registry             the image pull tests' OCI registry (Distribution), on 127.0.0.1
# Called by hack/demo.sh and hack/test.sh, so the README's two commands work on a fresh machine.
set -euo pipefail
pkgs=(libseccomp-dev pkg-config busybox-static iproute2 docker-registry)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
# The package's own service (all interfaces, port 5000) is not wanted: tests start their own.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
