"""The operator's HTTP endpoints: a status page, ``/metrics``, and ``/ready`` and ``/live`` for Kubernetes probes.

    server = await httpd.serve(node, "0.0.0.0:9100")   # on the node's own loop
    ...
    server.close(); await server.wait_closed()

The server runs on the node's event loop on purpose: an answer to ``/live`` is
the proof that the loop still turns (a loop stuck in a handler or a GC storm
answers nothing, and the kubelet restarts the pod), and every figure is read
where it is kept, without locks.

- ``/``: the status page (``status.py``): members, and per cache its figures, in plain
  HTML that reloads itself every few seconds.
- ``/live``: 200 whenever the loop answers.
- ``/ready``: 200 once every hosted cache finished its warm boot
  (``Node.wait_ready``), 503 until then, for an ``httpGet`` readiness probe.
- ``/metrics``: Prometheus text, built by ``prometheus_client.generate_latest``
  over a private registry holding the collector of ``contrib.prometheus``. It is
  the optional ``prometheus`` extra: without it the probes still work (they are
  what a pod cannot run without) and ``/metrics`` answers 501 saying what to
  install, rather than a hand-written copy of the exposition format.

Only GET and HEAD of those four paths; the request line and headers are bounded
in size and must arrive within ``REQUEST_TIMEOUT``, headers are read and ignored,
one request per connection. At most ``MAX_CONNECTIONS`` are open at once; a new
one past that closes the oldest that has not sent its request yet, so connections
that send a byte and stall (64 of them answered 0 of 40 probes in 20 s) cannot
keep a prober out: a probe sends its request at once and is answered. The address
is not meant for the internet: put it on the pod network only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .node import Node

__all__ = ["serve"]

log = logging.getLogger("shoal")

MAX_REQUEST_LINE = 2048
MAX_HEADERS = 64
REQUEST_TIMEOUT = 2.0  # to send the request line and headers (a kubelet sends them at once)
READ_TIMEOUT = 5.0  # to take the answer
MAX_CONNECTIONS = 64  # open at once; past it the oldest still sending its request is closed (else the oldest)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    501: "Not Implemented",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"
# The status page needs nothing but itself and its inline style: a name that got past the
# escaping still could not run a script or load anything.
_HTML_HEADERS = "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n"

Page = tuple[int, str, bytes]


def _metrics_page(node: Node) -> Callable[[], Page]:
    """The ``/metrics`` handler, decided once: prometheus_client's output, or a 501 that says why not."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from prometheus_client.registry import CollectorRegistry

        from .contrib.prometheus import ShoalCollector
    except ImportError:
        log.warning("/metrics needs prometheus_client (pip install 'shoal[prometheus]'); probes still work")
        body = b"/metrics needs the prometheus_client package: pip install 'shoal[prometheus]'\n"
        return lambda: (501, _TEXT, body)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShoalCollector(node))
    return lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry))


def _pages(node: Node) -> dict[str, Callable[[], Page]]:
    def ready() -> Page:
        if node.wait_ready(0):
            return 200, _TEXT, b"ready\n"
        return 503, _TEXT, b"warming\n"

    def status_page() -> Page:
        from . import status

        return 200, _HTML, status.render(node.stats(), node.members(), wall=time.time(), rss=status.rss_bytes())

    return {
        "/": status_page,
        "/live": lambda: (200, _TEXT, b"live\n"),
        "/ready": ready,
        "/metrics": _metrics_page(node),
    }


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """(method, path) of one request, or None if it is not an HTTP request we read."""
    line = await reader.readline()
    if not line.endswith(b"\n") or len(line) > MAX_REQUEST_LINE:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    for _ in range(MAX_HEADERS):  # headers carry nothing we use; read them so the client is not reset
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
    method, target = parts[0], parts[1]
    return method, target.split("?", 1)[0]


def _handler(node: Node) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    pages = _pages(node)
    # Open connections, oldest first; the value says whether its request is still being read.
    waiting: dict[asyncio.StreamWriter, bool] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(waiting) >= MAX_CONNECTIONS:
            # The oldest still sending its request; if none is, the oldest not taking its answer.
            idle = next((w for w, reading in waiting.items() if reading), next(iter(waiting)))
            del waiting[idle]
            idle.transport.abort()  # its handler sees the connection lost and ends
        waiting[writer] = True
        try:
            await answer(reader, writer)
        finally:
            waiting.pop(writer, None)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT)
            except (asyncio.TimeoutError, ValueError, ConnectionError):  # ValueError: line over the limit
                request = None
            if writer not in waiting:
                return  # evicted meanwhile
            waiting[writer] = False  # answering now: evicted only after every idle one
            if request is None:
                status, kind, body = 400, _TEXT, b"bad request\n"
                method = "GET"
            else:
                method, path = request
                page = pages.get(path)
                if page is None:
                    status, kind, body = 404, _TEXT, b"not found: try /, /metrics, /ready or /live\n"
                elif method not in ("GET", "HEAD"):
                    status, kind, body = 405, _TEXT, b"GET or HEAD only\n"
                else:
                    status, kind, body = page()
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n{_HTML_HEADERS if kind == _HTML else ''}\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (ConnectionError, asyncio.TimeoutError):  # gone, or not reading the answer
            pass
        except Exception:  # a scrape must never take the node down
            log.exception("error answering an HTTP request")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), READ_TIMEOUT)

    return handle


async def serve(node: Node, address: str) -> asyncio.Server:
    """Listen on ``address`` (host:port, port 0 picks one) on the running loop; returns the server."""
    from .transport import parse_address

    host, port = parse_address(address)
    # backlog is also how many connections asyncio accepts per turn of the loop: a probe accepted
    # with a burst of others must have its request read before MAX_CONNECTIONS newer ones evict it.
    server = await asyncio.start_server(
        _handler(node), host, port, limit=MAX_REQUEST_LINE, reuse_address=True, backlog=max(4, MAX_CONNECTIONS // 4)
    )
    bound = server.sockets[0].getsockname()
    log.info("HTTP endpoints on %s:%d", bound[0], bound[1])
    return server


def bound_address(server: asyncio.Server) -> str:
    """``host:port`` a server listens on (the port chosen when asked for 0)."""
    host, port = server.sockets[0].getsockname()[:2]
    return f"{host}:{port}"
