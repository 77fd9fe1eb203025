"""A minimal RTSP server that takes one publish (OPTIONS, ANNOUNCE, SETUP, RECORD) and reads and discards
what follows, with a small TCP receive window, for benchmarks/live_outputs.py.

    python benchmarks/rtsp_sink.py PORT

Why not a real server: one frozen with SIGSTOP must stop the sender soon, and a real one's receive
buffer (autotuned, megabytes on loopback) would hold many seconds of video first. 16 KiB is set on the
listening socket, so the accepted one has it from the handshake on.
"""

from __future__ import annotations

import re
import socket
import sys

RECEIVE_BUFFER = 16 * 1024


def reply(connection: socket.socket, request: bytes) -> None:
    head = request.decode("latin-1")
    method = head.split(" ", 1)[0]
    cseq = re.search(r"CSeq:\s*(\d+)", head, re.IGNORECASE).group(1)
    lines = ["RTSP/1.0 200 OK", f"CSeq: {cseq}"]
    if method == "OPTIONS":
        lines.append("Public: OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN")
    if method == "SETUP":
        lines += ["Session: 12345678", "Transport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record"]
    if method in ("RECORD", "ANNOUNCE"):
        lines.append("Session: 12345678")
    connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())


def main() -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    server.bind(("127.0.0.1", int(sys.argv[1])))
    server.listen(1)
    connection, _ = server.accept()
    data = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:  # the publisher closed without a goodbye
            return
        if not chunk:
            return
        data += chunk
        while True:
            if data.startswith(b"$"):  # an interleaved RTP/RTCP packet: $, channel, 2-byte length
                if len(data) < 4 or len(data) < 4 + int.from_bytes(data[2:4], "big"):
                    break
                data = data[4 + int.from_bytes(data[2:4], "big"):]
                continue
            end = data.find(b"\r\n\r\n")
            if end < 0:
                break
            head, data = data[:end + 4], data[end + 4:]
            length = re.search(rb"Content-Length:\s*(\d+)", head, re.IGNORECASE)
            body = int(length.group(1)) if length else 0
            while len(data) < body:
                data += connection.recv(65536)
            data = data[body:]
            reply(connection, head)


if __name__ == "__main__":
    main()
