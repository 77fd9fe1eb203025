"""A one-client HTTP server of an MPEG-TS file, for the stream fault tests (run as a subprocess).

    python stream_server.py FILE end|stall

Prints its port on stdout, serves one GET (no Content-Length, like a live stream), and stops
listening as soon as the client is connected, so a reconnect is refused at once:

- ``end``: sends the whole file and closes the connection, as ``ffmpeg -re -i clip -f mpegts
  -listen 1 http://...`` does at the end of its input (checked by hand: OpenCV sees the same end);
- ``stall``: sends half of the file, then holds the connection open and silent until killed, as a
  camera or relay that hangs does.

Python's http.server rather than ffmpeg's, so the tests need no ffmpeg tool and behave the same
on every machine.
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

TS_PACKET = 188
CHUNK = TS_PACKET * 64


def main() -> None:
    data = Path(sys.argv[1]).read_bytes()
    mode = sys.argv[2]
    cut = len(data) if mode == "end" else (len(data) // 2) // TS_PACKET * TS_PACKET

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # no chunked encoding: the stream ends when the connection does

        def do_GET(self) -> None:
            self.server.socket.close()  # one client only: a reconnect is refused
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            for start in range(0, cut, CHUNK):
                self.wfile.write(data[start:min(start + CHUNK, cut)])
                self.wfile.flush()
            if mode == "stall":
                time.sleep(3600)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.handle_request()


if __name__ == "__main__":
    main()
