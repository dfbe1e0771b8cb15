#!/usr/bin/env python3
"""Sends one QMP command to a running QEMU and prints the reply.

Usage: qmp.py SOCKET COMMAND [ARGUMENTS-JSON]
  qmp.py run/qmp.sock send-key '{"keys":[{"type":"qcode","data":"ctrl"},...]}'
  qmp.py run/qmp.sock ctrl-alt-delete      (shorthand: the guest's init gets SIGINT)
Exits 1 if QEMU answers with an error.
"""

import json
import socket
import sys


def main(argv):
    if len(argv) not in (2, 3):
        sys.exit(__doc__.strip())
    path, command = argv[0], argv[1]
    args = json.loads(argv[2]) if len(argv) == 3 else None
    if command == "ctrl-alt-delete":
        keys = [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]
        command, args = "send-key", {"keys": keys}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    reader = sock.makefile("r")

    def reply():
        # Skip asynchronous events until the command's answer.
        while True:
            line = reader.readline()
            if not line:
                sys.exit("qmp: QEMU closed the connection")
            msg = json.loads(line)
            if "return" in msg or "error" in msg:
                return msg

    if "QMP" not in json.loads(reader.readline()):
        sys.exit("qmp: no QMP greeting")
    sock.sendall(b'{"execute": "qmp_capabilities"}\n')
    reply()
    msg = {"execute": command}
    if args is not None:
        msg["arguments"] = args
    sock.sendall(json.dumps(msg).encode() + b"\n")
    answer = reply()
    print(json.dumps(answer))
    sys.exit(1 if "error" in answer else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
