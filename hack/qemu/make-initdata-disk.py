#!/usr/bin/env python3
"""Writes an initdata disk image in Kata's layout: the 8 ASCII bytes "initdata", the length
of the compressed data as a little-endian u64, then the gzip'd initdata TOML, zero-padded
to a whole 512-byte sector. The TOML's bytes are kept exactly (the digest is over them).

Usage: make-initdata-disk.py INITDATA.toml OUTPUT.img
Boot with: boot.sh --initdata-disk OUTPUT.img (the guest sees a virtio-blk disk, /dev/vda).
"""

import gzip
import struct
import sys


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-2])
    with open(argv[0], "rb") as f:
        toml = f.read()
    packed = gzip.compress(toml, mtime=0)
    image = b"initdata" + struct.pack("<Q", len(packed)) + packed
    image += b"\0" * (-len(image) % 512)
    with open(argv[1], "wb") as f:
        f.write(image)


if __name__ == "__main__":
    main(sys.argv[1:])
