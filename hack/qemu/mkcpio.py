#!/usr/bin/env python3
"""Writes a newc cpio archive (the initramfs format) from a manifest, without root.

Manifest lines (the layout of the kernel's gen_init_cpio, read from a file or stdin):
    dir   NAME MODE UID GID
    file  NAME SOURCE MODE UID GID
    nod   NAME MODE UID GID c|b MAJOR MINOR
    slink NAME TARGET MODE UID GID
MODE is octal. Blank lines and lines starting with # are skipped. Every mtime is 0, so the
same inputs give the same bytes. Usage: mkcpio.py [--gzip] MANIFEST OUTPUT
"""

import gzip
import stat
import sys


def header(ino, mode, uid, gid, nlink, size, rmaj, rmin, name):
    namesize = len(name) + 1
    fields = [ino, mode, uid, gid, nlink, 0, size, 0, 0, rmaj, rmin, namesize, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"


def pad4(n):
    return b"\0" * ((4 - n % 4) % 4)


def entries(manifest):
    for lineno, line in enumerate(manifest.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        kind, args = parts[0], parts[1:]
        need = {"dir": 4, "file": 5, "nod": 7, "slink": 5}.get(kind)
        if need is None or len(args) != need:
            sys.exit(f"manifest line {lineno}: expected {need or 'a known kind'} fields: {line!r}")
        yield lineno, kind, args


def build(manifest):
    out = bytearray()
    ino = 721
    for lineno, kind, args in entries(manifest):
        name = args[0].lstrip("/").encode()
        if not name:
            sys.exit(f"manifest line {lineno}: empty name")
        data, rmaj, rmin = b"", 0, 0
        if kind == "dir":
            mode = stat.S_IFDIR | int(args[1], 8)
            uid, gid = int(args[2]), int(args[3])
            nlink = 2
        elif kind == "file":
            try:
                with open(args[1], "rb") as f:
                    data = f.read()
            except OSError as e:
                sys.exit(f"manifest line {lineno}: {args[1]}: {e.strerror}")
            mode = stat.S_IFREG | int(args[2], 8)
            uid, gid = int(args[3]), int(args[4])
            nlink = 1
        elif kind == "nod":
            kind_bits = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}.get(args[4])
            if kind_bits is None:
                sys.exit(f"manifest line {lineno}: device type must be c or b")
            mode = kind_bits | int(args[1], 8)
            uid, gid = int(args[2]), int(args[3])
            rmaj, rmin = int(args[5]), int(args[6])
            nlink = 1
        else:  # slink
            data = args[1].encode()
            mode = stat.S_IFLNK | int(args[2], 8)
            uid, gid = int(args[3]), int(args[4])
            nlink = 1
        h = header(ino, mode, uid, gid, nlink, len(data), rmaj, rmin, name)
        out += h + pad4(len(h)) + data + pad4(len(data))
        ino += 1
    h = header(0, 0, 0, 0, 1, 0, 0, 0, b"TRAILER!!!")
    out += h + pad4(len(h))
    return bytes(out)


def main(argv):
    compress = "--gzip" in argv
    args = [a for a in argv if a != "--gzip"]
    if len(args) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    manifest = sys.stdin.read() if args[0] == "-" else open(args[0]).read()
    data = build(manifest)
    if compress:
        # Level 6: level 9 costs much more time for little gain on binaries.
        data = gzip.compress(data, compresslevel=6, mtime=0)
    with open(args[1], "wb") as f:
        f.write(data)


if __name__ == "__main__":
    main(sys.argv[1:])
