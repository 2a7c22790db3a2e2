"""The operator's HTTP endpoints, asked over a real socket by the standard library's HTTP client."""

from __future__ import annotations

import asyncio
import select
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

import prometheus_client
import pytest

from shoal import httpd
from shoal.node import Node
from tests.support.cluster import wait_until
from tests.test_cli import SECRET, Serve, serve  # noqa: F401  (the fixture)


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET url; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def aget(address: str, path: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(get, f"http://{address}{path}")


def test_live_and_ready_answer_200_on_a_member_that_finished_its_warm_boot() -> None:
    async def main() -> tuple[tuple[int, str, str], ...]:
        async with Node() as node:
            node.cache("users")
            assert await node.ready(timeout=10)
            server = await httpd.serve(node, "127.0.0.1:0")
            address = httpd.bound_address(server)
            try:
                return await aget(address, "/live"), await aget(address, "/ready")
            finally:
                server.close()
                await server.wait_closed()

    live, ready = asyncio.run(main())
    assert live[0] == 200 and live[2] == "live\n"
    assert ready[0] == 200 and ready[2] == "ready\n"


def test_ready_answers_503_while_the_warm_boot_waits_for_its_seeds_and_live_still_200() -> None:
    async def main() -> tuple[tuple[int, str, str], ...]:
        # A seed nobody listens on: the boot waits boot_wait for it, so the member is not ready.
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            seed = f"127.0.0.1:{unused.getsockname()[1]}"
        async with Node(seeds=[seed], boot_wait=60) as node:
            node.cache("users")
            server = await httpd.serve(node, "127.0.0.1:0")
            address = httpd.bound_address(server)
            try:
                assert not node.wait_ready(0)
                return await aget(address, "/ready"), await aget(address, "/live")
            finally:
                server.close()
                await server.wait_closed()

    ready, live = asyncio.run(main())
    assert ready[0] == 503 and ready[2] == "warming\n"
    assert live[0] == 200


def test_metrics_are_prometheus_text_with_the_caches_figures() -> None:
    async def main() -> tuple[int, str, str]:
        async with Node() as node:
            users = node.cache("users")
            assert await node.ready(timeout=10)
            users.set("a", 1)
            users.get("a")
            users.get("missing")
            assert await users.afetch("loaded", lambda key: "value") == "value"  # a lease granted by itself
            server = await httpd.serve(node, "127.0.0.1:0")
            try:
                return await aget(httpd.bound_address(server), "/metrics")
            finally:
                server.close()
                await server.wait_closed()

    status, kind, body = asyncio.run(main())
    assert status == 200
    assert kind == prometheus_client.CONTENT_TYPE_LATEST
    assert 'shoal_cache_hits_total{cache="users"} 1.0' in body
    assert 'shoal_cache_misses_total{cache="users"} 2.0' in body  # "missing", then afetch's own miss
    assert 'shoal_cache_entries{cache="users"} 2.0' in body
    assert 'shoal_ready{cache="users"} 1.0' in body
    assert "shoal_leases_granted_total 1.0" in body


def test_without_prometheus_client_metrics_answer_501_and_the_probes_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if not installed

    async def main() -> tuple[tuple[int, str, str], ...]:
        async with Node() as node:
            server = await httpd.serve(node, "127.0.0.1:0")
            address = httpd.bound_address(server)
            try:
                return await aget(address, "/metrics"), await aget(address, "/ready")
            finally:
                server.close()
                await server.wait_closed()

    metrics, ready = asyncio.run(main())
    assert metrics[0] == 501 and "pip install 'shoal[prometheus]'" in metrics[2]
    assert ready[0] == 200


def test_the_status_page_at_root_is_html_that_may_load_nothing_and_names_the_members_caches() -> None:
    async def main() -> tuple[str, str, str, str]:
        async with Node() as node:
            node.cache("users").set("a", 1)
            assert await node.ready(timeout=10)
            server = await httpd.serve(node, "127.0.0.1:0")
            address = httpd.bound_address(server)
            try:
                response = await asyncio.to_thread(urllib.request.urlopen, f"http://{address}/", timeout=10)
                with response:
                    headers, body = response.headers, response.read().decode()
                return headers["Content-Type"], headers["Content-Security-Policy"], body, node.address
            finally:
                server.close()
                await server.wait_closed()

    kind, policy, body, node_address = asyncio.run(main())
    assert kind == "text/html; charset=utf-8"
    assert policy == "default-src 'none'; style-src 'unsafe-inline'"  # no script, nothing fetched
    assert body.startswith("<!DOCTYPE html>")
    assert "<b>users</b>" in body and node_address in body


def test_unknown_paths_other_methods_and_garbage_get_4xx_and_the_server_keeps_answering() -> None:
    async def main() -> tuple[int, int, bytes, bytes, tuple[int, str, str]]:
        async with Node() as node:
            server = await httpd.serve(node, "127.0.0.1:0")
            address = httpd.bound_address(server)
            host, port = address.rsplit(":", 1)
            try:
                missing = (await aget(address, "/nope"))[0]
                request = urllib.request.Request(f"http://{address}/live", method="POST", data=b"x")
                try:
                    await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
                    posted = 200
                except urllib.error.HTTPError as error:
                    posted = error.code
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"\x00\xff garbage\r\n\r\n")
                garbage = await reader.read()
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n")
                too_long = await reader.read()
                writer.close()
                return missing, posted, garbage, too_long, await aget(address, "/live")
            finally:
                server.close()
                await server.wait_closed()

    missing, posted, garbage, too_long, live = asyncio.run(main())
    assert missing == 404
    assert posted == 405
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert too_long.startswith(b"HTTP/1.1 400 ")
    assert live[0] == 200


async def live_once_slots_free(address: str, timeout: float = 10.0) -> int:
    """/live's status, asked until the server has seen the closed connections go (it is refused until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return (await aget(address, "/live"))[0]
        except (ConnectionError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


def test_a_probe_over_the_cap_closes_the_oldest_idle_connection_and_is_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httpd, "MAX_CONNECTIONS", 3)

    async def main() -> tuple[bytes, list[bytes]]:
        async with Node() as node:
            server = await httpd.serve(node, "127.0.0.1:0")
            host, port = httpd.bound_address(server).rsplit(":", 1)
            try:
                idle = []
                for _ in range(3):  # accepted in order: the first is the oldest
                    idle.append(await asyncio.open_connection(host, int(port)))
                    idle[-1][1].write(b"G")
                    await idle[-1][1].drain()
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /live HTTP/1.1\r\n\r\n")
                answer = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                left = []
                for idle_reader, idle_writer in idle:  # the oldest was closed, the others still wait
                    try:
                        left.append(await asyncio.wait_for(idle_reader.read(), 0.2))
                    except asyncio.TimeoutError:
                        left.append(b"open")
                    idle_writer.close()
                return answer, left
            finally:
                server.close()
                await server.wait_closed()

    answer, left = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"live\n")
    assert left == [b"", b"open", b"open"]


class Stallers:
    """Connections that each send one byte and then nothing, reopened as soon as the server closes one."""

    def __init__(self, address: str, count: int) -> None:
        host, port = address.rsplit(":", 1)
        self.target = (host, int(port))
        self.stop = threading.Event()
        self.opened = 0
        self.socks: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, args=(count,), daemon=True)
        self.thread.start()

    def _open(self) -> socket.socket:
        sock = socket.create_connection(self.target, timeout=5)
        sock.sendall(b"G")
        sock.setblocking(False)
        self.opened += 1
        return sock

    def _run(self, count: int) -> None:
        self.socks = [self._open() for _ in range(count)]
        while not self.stop.is_set():
            readable, _, _ = select.select(self.socks, [], [], 0.05)
            for sock in readable:
                try:
                    closed = sock.recv(4096) == b""
                except OSError:
                    closed = True
                if closed:
                    sock.close()
                    if self.stop.is_set():  # closing: the server may be gone before a reopen gets through
                        return
                    self.socks[self.socks.index(sock)] = self._open()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()


@pytest.mark.slow
@pytest.mark.parametrize("stallers", [64, 200])
def test_shoal_serve_http_answers_every_probe_while_connections_that_sent_one_byte_stall(
    serve: Serve,  # noqa: F811
    stallers: int,
) -> None:
    """Row 7 of issue 20: 64 such connections left 0 of 40 /live probes answered in 20 s."""
    member = serve("--listen", "127.0.0.1:0", "--caches", "acc:60", "--http", "127.0.0.1:0")
    assert member.line().startswith("listening on ")
    address = member.line().removeprefix("http on ")
    assert member.line() == "ready=True"
    attack = Stallers(address, stallers)
    try:
        wait_until(lambda: attack.opened >= stallers, what="every stalling connection opened")
        answered = 0
        started = time.monotonic()
        for _ in range(40):
            try:
                with urllib.request.urlopen(f"http://{address}/live", timeout=2) as response:
                    answered += response.status == 200
            except (OSError, urllib.error.URLError):
                pass
        elapsed = time.monotonic() - started
    finally:
        attack.close()
    assert answered == 40, f"{answered} of 40 probes answered in {elapsed:.1f} s"
    assert elapsed < 20


@pytest.mark.slow
def test_shoal_serve_http_serves_probes_and_metrics_of_the_running_member(serve: Serve) -> None:  # noqa: F811
    member = serve("--listen", "127.0.0.1:0", "--secret", SECRET, "--caches", "acc:60", "--http", "127.0.0.1:0")
    first = member.line()
    assert first.startswith("listening on "), first
    http_line = member.line()
    assert http_line.startswith("http on 127.0.0.1:"), http_line
    address = http_line.removeprefix("http on ")
    assert member.line() == "ready=True"
    assert get(f"http://{address}/live")[0] == 200
    assert get(f"http://{address}/ready")[0] == 200
    status, _, body = get(f"http://{address}/metrics")
    assert status == 200 and 'shoal_cache_entries{cache="acc"} 0.0' in body
    member.proc.send_signal(signal.SIGTERM)
    assert member.proc.wait(15) == 0


def test_shoal_http_environment_variable_sets_the_address(serve: Serve) -> None:  # noqa: F811
    member = serve("--listen", "127.0.0.1:0", "--secret", SECRET, env={"SHOAL_HTTP": "127.0.0.1:0"})
    assert member.line().startswith("listening on ")
    address = member.line().removeprefix("http on ")
    assert get(f"http://{address}/live")[0] == 200
