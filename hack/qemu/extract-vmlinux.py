#!/usr/bin/env python3
"""Extracts the uncompressed kernel ELF from an x86 bzImage and checks that QEMU can boot it
directly (a PVH entry note). Usage: extract-vmlinux.py BZIMAGE OUTPUT. Exit 1 if not.

The bzImage carries its payload compressed with one of the kernel's methods; the payload is
found by its magic number. gzip and xz are decompressed here; lz4 and zstd need the `lz4` or
`zstd` command.
"""

import lzma
import shutil
import struct
import subprocess
import sys
import zlib

MAGICS = [
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd\x37\x7a\x58\x5a\x00", "xz"),
    (b"\x1f\x8b\x08", "gzip"),
]
XEN_ELFNOTE_PHYS32_ENTRY = 18


def decompress(kind, blob):
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)
    if kind == "xz":
        return lzma.LZMADecompressor().decompress(blob)
    tool = shutil.which(kind)
    if tool is None:
        raise RuntimeError(f"{kind}-compressed kernel: the '{kind}' command is missing")
    # Trailing bytes after the stream make these tools exit non-zero with complete output;
    # the ELF check below is what decides.
    return subprocess.run([tool, "-dc"], input=blob, capture_output=True).stdout


def is_pvh_elf(data):
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    pvh = False
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_offset + p_filesz > len(data):
            return False  # truncated
        if p_type != 4:  # PT_NOTE
            continue
        off, end = p_offset, p_offset + p_filesz
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, off)
            name = data[off + 12 : off + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                pvh = True
            off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return pvh


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    image = open(argv[0], "rb").read()
    for magic, kind in MAGICS:
        start = image.find(magic)
        while start != -1:
            try:
                data = decompress(kind, image[start:])
            except Exception:  # not a real stream at this offset: keep looking
                data = b""
            if is_pvh_elf(data):
                with open(argv[1], "wb") as f:
                    f.write(data)
                return
            start = image.find(magic, start + 1)
    sys.exit(f"{argv[0]}: no PVH-bootable ELF kernel found inside")


if __name__ == "__main__":
    main(sys.argv[1:])
