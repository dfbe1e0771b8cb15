#!/usr/bin/env python3
"""Sends one QMP command to a running QEMU and prints the reply.

Usage: qmp.py SOCKET COMMAND [ARGUMENTS-JSON] [--event NAME]
  qmp.py run/qmp.sock send-key '{"keys":[{"type":"qcode","data":"ctrl"},...]}'
  qmp.py run/qmp.sock ctrl-alt-delete      (shorthand: the guest's init gets SIGINT)
  qmp.py run/qmp.sock device_add '{"driver":"pc-dimm",...}' --event ACPI_DEVICE_OST
      (then waits, up to 120 s, for that event: e.g. the guest's ACPI _OST once it has
      handled a hot-plug; the event is printed too)
Exits 1 if QEMU answers with an error, 2 if the event does not come.
"""

import json
import socket
import sys


def main(argv):
    event = None
    if len(argv) >= 2 and argv[-2] == "--event":
        event, argv = argv[-1], argv[:-2]
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

    seen = []

    def reply():
        # Asynchronous events until the command's answer are kept (one may be awaited).
        while True:
            line = reader.readline()
            if not line:
                sys.exit("qmp: QEMU closed the connection")
            msg = json.loads(line)
            if "return" in msg or "error" in msg:
                return msg
            seen.append(msg)

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
    if "error" in answer:
        sys.exit(1)
    if event is not None:
        early = [m for m in seen if m.get("event") == event]
        if early:
            print(json.dumps(early[0]))
            sys.exit(0)
        sock.settimeout(120)
        try:
            while True:
                line = reader.readline()
                if not line:
                    sys.exit("qmp: QEMU closed the connection before " + event)
                msg = json.loads(line)
                if msg.get("event") == event:
                    print(json.dumps(msg))
                    break
        except socket.timeout:
            print("qmp: no " + event + " event within 120 s", file=sys.stderr)
            sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
