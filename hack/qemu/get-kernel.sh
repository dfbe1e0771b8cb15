#!/usr/bin/env bash
# Fetches Debian's cloud kernel (not installed: unpacked under hack/out/kernel) and picks the
# kernel image and the modules the guest needs, with their dependencies in load order.
#
# The ABI (e.g. 6.1.0-56) is resolved at run time from the linux-image-cloud-amd64 metapackage
# (override: KERNEL_PKG=linux-image-6.1.0-56-cloud-amd64). Extra modules: EXTRA_MODULES="a b".
#
# Result (hack/out/kernel/current -> <version>/):
#   vmlinuz, vmlinux (uncompressed, PVH-bootable; if extraction worked),
#   modules/*.ko, modules/list (load order, one file name a line), version
# Prints the result directory.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# virtio_pci: the transport every device below sits on (a module in Debian's kernels);
# vmw_vsock_virtio_transport: AF_VSOCK for the agent API; virtio_net: the path to the KBS;
# virtio_console: virtio-serial ports; virtio_blk: Kata's initdata block device;
# virtio_rng: entropy early in boot; qemu_fw_cfg: values a VMM passes with -fw_cfg;
# configfs: where configfs-tsm (TDX quotes) lives; init mounts it; overlay: guest-pulled
# images' root file systems; virtiofs: Kata's shared file system (virtio-fs storages by tag;
# guest-ops.sh mounts one).
WANTED_MODULES="virtio_pci vmw_vsock_virtio_transport virtio_net virtio_console virtio_blk \
virtio_rng qemu_fw_cfg configfs overlay virtiofs ${EXTRA_MODULES:-}"

command -v apt-get >/dev/null || die "apt-get is required (Debian/Ubuntu host)"
command -v depmod >/dev/null || die "depmod is required: apt-get install kmod (hack/qemu/setup.sh)"

pkg=${KERNEL_PKG:-}
if [ -z "$pkg" ]; then
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ { print $2; exit }')
    [ -n "$pkg" ] || die "cannot resolve the cloud kernel ABI from linux-image-cloud-amd64 (run apt-get update?)"
fi
kver=${pkg#linux-image-}
dest=$OUT_DIR/kernel/$kver
# Bump the first word when the layout of the result changes.
stamp="layout2 $pkg $WANTED_MODULES"

if [ -f "$dest/.done" ] && [ "$(cat "$dest/.done")" = "$stamp" ]; then
    log "cached: $dest"
else
    rm -rf "$dest"
    mkdir -p "$dest/deb" "$dest/modules"
    log "downloading $pkg"
    # apt-get download writes to the current directory; _apt may not be able to, which only
    # costs apt's download sandbox (a warning), not correctness.
    (cd "$dest/deb" && apt-get download -q "$pkg" 2>&1 | grep -v "unsandboxed" >&2 || true)
    deb=$(ls "$dest"/deb/*.deb 2>/dev/null | head -n1)
    [ -n "$deb" ] || die "apt-get download $pkg produced no .deb"
    dpkg-deb -x "$deb" "$dest/root"
    rm -rf "$dest/deb"
    moddir=$dest/root/lib/modules/$kver
    [ -d "$moddir" ] || die "$pkg has no lib/modules/$kver"
    cp "$dest/root/boot/vmlinuz-$kver" "$dest/vmlinuz"
    # Debian generates modules.dep at install time; do the same into the unpacked tree.
    depmod -b "$dest/root" "$kver"

    # Resolve dependencies: modules.dep lists, for each module, its full dependency closure;
    # a depth-first walk emits every module after what it needs.
    python3 - "$moddir" "$dest/modules" $WANTED_MODULES <<'PY'
import lzma, os, shutil, sys

moddir, outdir, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]

def name_of(path):
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return base.replace("-", "_")

deps, files = {}, {}
with open(os.path.join(moddir, "modules.dep")) as f:
    for line in f:
        path, _, rest = line.partition(":")
        n = name_of(path)
        files[n] = path
        deps[n] = [name_of(d) for d in rest.split()]
builtin = set()
with open(os.path.join(moddir, "modules.builtin")) as f:
    builtin = {name_of(l.strip()) for l in f if l.strip()}

order, seen = [], set()
def visit(n, chain):
    if n in seen:
        return
    if n not in files:
        if n in builtin:
            return  # built into this kernel: nothing to load
        sys.exit(f"module {n} (needed by {' -> '.join(chain) or 'the guest'}) is neither a module nor built in")
    seen.add(n)
    for d in deps[n]:
        visit(d, chain + [n])
    order.append(n)

for w in wanted:
    visit(w.replace("-", "_"), [])

with open(os.path.join(outdir, "list"), "w") as listf:
    for n in order:
        src = os.path.join(moddir, files[n])
        dst = os.path.join(outdir, n + ".ko")
        if src.endswith(".xz"):
            with lzma.open(src) as i, open(dst, "wb") as o:
                shutil.copyfileobj(i, o)
        elif src.endswith((".zst", ".gz")):
            sys.exit(f"{src}: compressed modules other than .xz are not handled")
        else:
            shutil.copyfile(src, dst)
        listf.write(n + ".ko\n")
PY
    rm -rf "$dest/root"
    # QEMU boots an uncompressed ELF kernel with a PVH entry point directly, skipping the
    # bzImage's real-mode setup and decompression: seconds saved on every TCG boot.
    if python3 "$QEMU_HACK_DIR/extract-vmlinux.py" "$dest/vmlinuz" "$dest/vmlinux.tmp"; then
        mv "$dest/vmlinux.tmp" "$dest/vmlinux"
    else
        rm -f "$dest/vmlinux.tmp"
        log "warning: no PVH vmlinux extracted; boot.sh will use the slower bzImage"
    fi
    echo "$kver" >"$dest/version"
    echo "$stamp" >"$dest/.done"
    log "kernel $kver, modules: $(tr '\n' ' ' <"$dest/modules/list")"
fi
ln -sfn "$kver" "$OUT_DIR/kernel/current"
echo "$dest"
