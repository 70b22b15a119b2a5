"""A fallback sink that stamps arrivals like bench/sink.py's nginx log: for when nginx is not there.

It reads every request body in full and drops it, answers 202 {"id":"job-bench"}, and appends one
line per request: ``end request_time connection requests_on_connection status length "key"``.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

_BODY = b'{"id":"job-bench"}'
_connections = itertools.count(1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the reply is two writes (headers, body): no 40 ms delayed-ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.conn_id = next(_connections)
        self.served = 0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        return None

    def do_POST(self) -> None:
        start = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                self.close_connection = True
                return
            left -= len(chunk)
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(_BODY)))
        self.end_headers()
        self.wfile.write(_BODY)
        self.served += 1
        end = time.time()
        key = self.headers.get("Idempotency-Key", "-")
        line = f'{end:.3f} {end - start:.3f} {self.conn_id} {self.served} 202 {length} "{key}"\n'
        with self.server.lock:
            self.server.log.write(line.encode())
            self.server.log.flush()

    do_GET = do_POST  # noqa: N815 - the stdlib's name


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, port: int, log: BinaryIO) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.log = log
        self.lock = threading.Lock()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    with open(args.log, "ab") as log:
        _Server(args.port, log).serve_forever()


if __name__ == "__main__":
    main()
