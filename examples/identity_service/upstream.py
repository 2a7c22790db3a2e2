"""A deliberately slow identity upstream: maps an identity to an account after a delay, and counts calls.

    python upstream.py --port 8100 --delay 0.2

GET /map/{identity}  -> {"identity": ..., "account": ...} after ``delay`` seconds
GET /counts          -> {identity: number of /map calls so far}
POST /reset          -> forget the counts

Standard library only: a thread per request, so concurrent calls overlap as they
would against a real service.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Upstream(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], delay: float) -> None:
        super().__init__(address, Handler)
        self.delay = delay
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server: Upstream

    def do_GET(self) -> None:
        if self.path.startswith("/map/"):
            identity = self.path[len("/map/") :]
            with self.server.lock:
                self.server.counts[identity] += 1
            time.sleep(self.server.delay)  # the slow part shoal is there to spare
            account = "acct-" + hashlib.sha256(identity.encode()).hexdigest()[:8]
            self._json({"identity": identity, "account": account})
        elif self.path == "/counts":
            with self.server.lock:
                self._json(dict(self.server.counts))
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        if self.path == "/reset":
            with self.server.lock:
                self.server.counts.clear()
            self._json({"reset": True})
        else:
            self._json({"error": "not found"}, 404)

    def _json(self, body: object, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds per lookup (default 0.2)")
    args = parser.parse_args()
    server = Upstream((args.host, args.port), args.delay)
    print(f"upstream listening on http://{args.host}:{server.server_address[1]} ({args.delay}s per lookup)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
