#!/usr/bin/env bash
# Builds the static vigil-agent for the guest initramfs (glibc, +crt-static: no loader, no
# libraries in the guest) and checks that it really is static. Prints the binary's path.
#
# Env: VIGIL_AGENT_PROFILE=release (default) | e2e (quick to build, CI) | dev;
#      CARGO_TARGET_DIR as usual.
set -euo pipefail
source "$(dirname "$0")/common.sh"

profile=${VIGIL_AGENT_PROFILE:-release}
case $profile in
    release | e2e) dir=$profile ;;
    dev) dir=debug ;;
    *) die "VIGIL_AGENT_PROFILE must be release, e2e or dev, not '$profile'" ;;
esac

cd "$REPO_ROOT"
# The container runtime links libseccomp: take the static archive (Debian's libseccomp-dev
# ships it), or the binary would need libseccomp.so and the loader in the guest.
export LIBSECCOMP_LINK_TYPE=static
export LIBSECCOMP_LIB_PATH=${LIBSECCOMP_LIB_PATH:-/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)}
[ -f "$LIBSECCOMP_LIB_PATH/libseccomp.a" ] ||
    die "no libseccomp.a in $LIBSECCOMP_LIB_PATH (apt-get install libseccomp-dev; hack/qemu/setup.sh)"
# --target keeps RUSTFLAGS away from build scripts and proc macros (they stay dynamic).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --locked --profile "$profile" --target "$AGENT_TARGET" -p vigil-agent >&2

bin=$TARGET_DIR/$AGENT_TARGET/$dir/vigil-agent
[ -x "$bin" ] || die "no binary at $bin"
desc=$(file -b "$bin")
case $desc in
    *"static-pie linked"* | *"statically linked"*) ;;
    *) die "$bin is not static: $desc" ;;
esac
# ldd says "not a dynamic executable" (static) or "statically linked" (static-pie).
deps=$(ldd "$bin" 2>&1 || true)
case $deps in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) die "$bin has dynamic dependencies: $(tr '\n' ' ' <<<"$deps")" ;;
esac
log "static agent: $bin ($(du -h "$bin" | cut -f1))"
echo "$bin"
