#!/usr/bin/env python3
"""A minimal QMP client for hearth's manual VM checks: runs one command, prints its return.

usage: qmp.py SOCKET COMMAND [ARGUMENTS_JSON]

It connects to QEMU's `-qmp unix:SOCKET,server=on,wait=off` (retrying for a few seconds, since
the socket appears shortly after launch), negotiates capabilities, runs COMMAND with the
arguments, skips asynchronous events, and prints the `return` value as JSON. An `error` answer
is printed to stderr with exit code 1. Standard library only, so no package is needed.
"""

import json
import socket
import sys
import time

CONNECT_DEADLINE_S = 5.0
ANSWER_TIMEOUT_S = 10.0


def connect(path):
    deadline = time.monotonic() + CONNECT_DEADLINE_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            sock.settimeout(ANSWER_TIMEOUT_S)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def messages(sock):
    """Yields each JSON message QEMU sends (one per line)."""
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        if line.strip():
            yield json.loads(line)


def execute(sock, incoming, command, arguments=None):
    request = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    sock.sendall(json.dumps(request).encode() + b"\n")
    for message in incoming:
        if "return" in message:
            return message["return"]
        if "error" in message:
            raise RuntimeError(f"{command}: {message['error'].get('desc', message['error'])}")
        # Anything else is an event (e.g. POWERDOWN); a one-shot client has no use for it.
    raise ConnectionError(f"{command}: QEMU closed the connection before answering")


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    path, command = argv[1], argv[2]
    arguments = json.loads(argv[3]) if len(argv) == 4 else None
    try:
        with connect(path) as sock:
            incoming = messages(sock)
            greeting = next(incoming, None)
            if not greeting or "QMP" not in greeting:
                print(f"{path}: no QMP greeting ({greeting})", file=sys.stderr)
                return 1
            execute(sock, incoming, "qmp_capabilities")
            print(json.dumps(execute(sock, incoming, command, arguments)))
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    except OSError as error:
        # QEMU is gone or never listened: say so in one line, the caller shows QEMU's log.
        print(f"{path}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
