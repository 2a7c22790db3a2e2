"""Admission and bad input: the secret, strangers' bytes, listening rules and TLS.

Every bad input below was sent to a running node. The node closes that one
connection, logs why, and keeps serving its peers; an unauthenticated sender also
gets a ``Refused`` frame naming the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest

from shoal.client import Client, query
from shoal.errors import HandshakeError, ShoalError, WeakSecret
from shoal.messages import DumpRequest, Hello, Message, Ops, Pull, Query, Refused
from shoal.node import Node
from shoal.transport import parse_address
from shoal.wire import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    PROTOCOL_MIN,
    PROTOCOL_VERSION,
    TAG_SIZE,
    FrameDecoder,
    encode,
)
from tests.support.cluster import Cluster, Member, cluster, wait_until
from tests.support.peer import RawPeer

__all__ = ["cluster"]  # the fixture, imported for the tests below

SECRET = "security-test-secret"
HANDSHAKE_TIMEOUT = 0.5
FAST = {"heartbeat_interval": 0.1, "failure_timeout": 1.0, "boot_wait": 0.3, "handshake_timeout": HANDSHAKE_TIMEOUT}


# -- helpers ----------------------------------------------------------------------------


@dataclass
class Poke:
    """What a node did with the bytes of one raw connection."""

    replies: list[Message]
    closed: bool
    seconds: float

    @property
    def refused(self) -> str | None:
        reasons = [m.reason for m in self.replies if isinstance(m, Refused)]
        return reasons[0] if reasons else None


def _drain(sock: socket.socket, decoder: FrameDecoder, timeout: float) -> tuple[list[Message], bool]:
    """Read until the node closes the connection (True) or ``timeout`` passes (False)."""
    sock.settimeout(timeout)
    data = b""
    closed = False
    try:
        while chunk := sock.recv(65536):
            data += chunk
        closed = True
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    return decoder.feed(data), closed


def poke(address: str, payload: bytes, timeout: float = 5.0) -> Poke:
    """Connect as a stranger, send ``payload``, and see what the node does."""
    host, port = parse_address(address)
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if payload:
            sock.sendall(payload)
        replies, closed = _drain(sock, FrameDecoder(1 << 20), timeout)
    return Poke(replies, closed, time.monotonic() - started)


def poke_authenticated(address: str, listen: str, payload: bytes, timeout: float = 5.0) -> Poke:
    """Prove the secret first (as an operator's client if ``listen`` is empty, else as a member)."""
    started = time.monotonic()
    with RawPeer(address, SECRET, 0x2A, listen, timeout) as peer:
        peer.send(payload)
        replies, closed = _drain(peer.sock, peer.decoder, timeout)
    return Poke(peer.early + replies, closed, time.monotonic() - started)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def up_addresses(node: Node) -> set[str]:
    return {m["address"] for m in node.members() if m["state"] == "up"}


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    """In-process nodes on background threads, stopped at teardown."""
    started: list[Node] = []

    def start(**kw: Any) -> Node:
        node = Node(**{"secret": SECRET, **FAST, **kw})
        node.cache("c", ttl=None)
        started.append(node.start())
        return node

    yield start
    for node in reversed(started):
        node.stop()


@pytest.fixture
def pair(nodes: Callable[..., Node]) -> tuple[Node, Node]:
    a = nodes()
    b = nodes(seeds=[a.address])
    assert a.wait_ready(10) and b.wait_ready(10)
    wait_until(lambda: up_addresses(a) == {b.address} and up_addresses(b) == {a.address}, 10, what="the pair")
    return a, b


_writes = iter(range(1_000_000))


def still_serves(a: Node, b: Node) -> None:
    """a is up, still connected to b, replicates to it, and still answers operators."""
    key = f"after-{next(_writes)}"
    a.cache("c").set(key, "still replicating")
    wait_until(lambda: b.cache("c").get(key) == "still replicating", 10, what="a write after the bad input")
    assert up_addresses(a) == {b.address} and up_addresses(b) == {a.address}
    assert any(m["address"] == b.address for m in query(a.address, SECRET, "members")["members"])


# -- the secret -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_member_with_a_wrong_secret_never_becomes_a_member_and_gets_no_data(cluster: Cluster) -> None:
    a = cluster.start(boot_wait=0.5)
    intruder = cluster.start(secret="not-the-cluster-secret", seeds=[a.address], boot_wait=0.5)
    # b dials both: a admits it, the intruder cannot prove the secret to it.
    b = cluster.start(seeds=[a.address, intruder.address], boot_wait=0.5)
    a.cmd("set", key="k", value="secret data")
    wait_until(lambda: b.cmd("get", key="k") == "secret data", 10, what="b to join and get data")
    assert intruder.cmd("ready", timeout=10) is True  # it gave up waiting for peers
    intruder.cmd("set", key="planted", value="by the intruder")
    a.cmd("set", key="k2", value="more secret data")
    wait_until(lambda: b.cmd("get", key="k2") == "more secret data", 10)

    for member in (a, b):
        assert intruder.address not in {m["address"] for m in member.cmd("members")}
        assert member.cmd("get", key="planted") is None
    assert [m["address"] for m in intruder.cmd("members")] == [intruder.address]
    assert intruder.cmd("get", key="k") is None and intruder.cmd("get", key="k2") is None
    assert intruder.cmd("len") == 1  # only what it wrote itself
    assert intruder.cmd("stats")["caches"]["c"]["ops_received"] == 0

    logs = {}
    for name, member in (("a", a), ("b", b), ("intruder", intruder)):
        member.stop()
        assert member.proc.stderr is not None
        logs[name] = member.proc.stderr.read()
    # The initiator proves first. b dialed the intruder, which refused b's proof (it
    # cannot check it) and said so; b logs the refusal and its reason.
    assert "failed to prove the cluster secret" in logs["intruder"]
    assert "peer refused the handshake" in logs["b"]
    # The intruder dialed a, which refused the intruder's proof.
    assert "failed to prove the cluster secret" in logs["a"]
    assert "peer refused the handshake" in logs["intruder"]


def test_an_operator_with_a_wrong_secret_is_refused_and_its_connection_closed(pair: tuple[Node, Node]) -> None:
    a, b = pair
    with pytest.raises(ShoalError, match="secret") as refused:
        query(a.address, "a wrong cluster secret", "members")
    assert a.address in str(refused.value)  # which member would not take the secret

    async def attempt() -> Client:
        client = Client(a.address, "a wrong cluster secret", timeout=5)
        with pytest.raises(HandshakeError):
            await client.__aenter__()
        return client

    client = asyncio.run(attempt())
    assert client._writer is not None and client._writer.is_closing()  # not left open for the GC
    still_serves(a, b)


# -- bad input ------------------------------------------------------------------------

TIMESTAMP = msgpack.packb(msgpack.Timestamp(0))


def _hello(nonce: bytes) -> Hello:
    """A stranger's Hello in the protocol this release speaks."""
    return Hello(PROTOCOL_MIN, PROTOCOL_VERSION, 7, nonce, "")


STRANGERS: dict[str, tuple[bytes, str]] = {
    # name: (bytes sent by an unauthenticated stranger, the reason the node gives)
    "garbage bytes": (b"\xde\xad\xbe\xef" * 16, "3735928559-byte frame, over the 4096-byte limit"),
    "an HTTP request": (b"GET / HTTP/1.1\r\n\r\n", "1195725856-byte frame, over the 4096-byte limit"),
    "a length prefix of 2**31": (struct.pack(">I", 2**31), "2147483648-byte frame, over the 4096-byte limit"),
    "a length prefix one over the handshake limit": (struct.pack(">I", 65537), "over the 4096-byte limit"),
    "a frame of text": (frame(b"garbage!"), "a message is a msgpack array of 1 to 15 items"),
    "a frame of a never-used msgpack byte": (frame(b"\xc1\xc1"), "a message is a msgpack array of 1 to 15 items"),
    "a frame of one byte": (frame(b"\x91"), "a frame is too short to hold a message"),
    "a frame of text after a message's first bytes": (frame(b"\x92\x0agarbage!"), "undecodable frame (ExtraData)"),
    "a frame nested 4000 deep": (frame(b"\x92\x0a" + b"\x91" * 4000 + b"\x90"), "undecodable frame (StackError)"),
    "a msgpack Timestamp": (frame(b"\x92\x0a\x91" + TIMESTAMP), "exceeds max_ext_len(0)"),
    "a msgpack ext type": (
        frame(b"\x92\x0a\x91" + msgpack.packb(msgpack.ExtType(5, b"code"))),
        "exceeds max_ext_len(0)",
    ),
    "a map instead of a message": (frame(msgpack.packb({"op": "set"})), "a msgpack array of 1 to 15 items"),
    "a code that is no int": (frame(msgpack.packb(["Hello", 1])), "a message code is an unsigned int"),
    "an unknown message code": (frame(msgpack.packb([9999, 1, 2])), "unknown message code 9999"),
    "a Hello with too few fields": (frame(msgpack.packb([1, 1])), "Hello has 5 fields, got 1"),
    "a Hello with a field of the wrong type": (
        frame(msgpack.packb([1, 1, 1, "id", b"n" * 32, ""])),
        "Hello.node_id must be int, got str",
    ),
    "a Hello with a short nonce": (encode(_hello(b"x")), "nonce is 1 bytes, not 32"),
    "a Hello from no common version": (encode(Hello(7, 9, 7, b"x" * 32, "")), "no common protocol version"),
    "cache ops before the handshake": (encode(Ops("c", [])), "unexpected Ops in handshake"),
    "a query before the handshake": (encode(Query("stats", [])), "unexpected Query in handshake"),
    "nothing at all": (b"", "handshake did not finish in time"),
    "half a frame": (struct.pack(">I", 100) + b"\x92\x0b" + b"\x00" * 8, "handshake did not finish in time"),
    "a Hello, then silence": (encode(_hello(b"x" * 32)), "handshake did not finish in time"),
}


@pytest.mark.parametrize("payload, reason", STRANGERS.values(), ids=STRANGERS.keys())
def test_a_strangers_bad_input_closes_only_that_connection_with_a_logged_reason(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture, payload: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="shoal")
    a, b = pair
    result = poke(a.address, payload)
    assert result.closed
    assert result.refused is not None and reason in result.refused
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("closing connection unauthenticated" in line and reason in line for line in logged), logged
    still_serves(a, b)


def test_a_hello_claiming_the_nodes_own_id_is_refused(pair: tuple[Node, Node]) -> None:
    a, b = pair
    result = poke(a.address, encode(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, a.node_id, b"x" * 32, "")))
    assert result.closed and result.refused is not None and "connected to itself" in result.refused
    still_serves(a, b)


AUTHENTICATED: dict[str, tuple[str, bytes, str]] = {
    # name: (listen address the sender claims, bytes after the handshake, reason logged)
    "an operator's client sending cache ops": ("", encode(Ops("c", [])), "a client may only send queries, not Ops"),
    "an operator's client announcing 2**31 bytes": (
        "",
        struct.pack(">I", 2**31),
        "2147483648-byte frame, over the 16777216-byte limit",
    ),
    "a member sending a malformed op": ("127.0.0.1:1", encode(Ops("c", [[1, 2, 3]])), "an op is a 6-item array"),
    "a member sending a delete that carries a value": (
        "127.0.0.1:1",
        encode(Ops("c", [[1, "k", b"\xc0", None, 1, 1]])),
        "a delete or a clear carries no value",
    ),
    "a member sending an op with a float key": (
        "127.0.0.1:1",
        encode(Ops("c", [[0, 1.5, b"\xc0", None, 1, 1]])),  # a write (a delete carrying a value is refused first)
        "a key must be str, bytes or int",
    ),
    "a member sending garbage": ("127.0.0.1:1", frame(b"\x92\x0b\xc1"), "undecodable frame (FormatError)"),
    "a member sending a query": ("127.0.0.1:1", encode(Query("stats", [])), "unexpected Query after the handshake"),
}


@pytest.mark.parametrize("listen, payload, reason", AUTHENTICATED.values(), ids=AUTHENTICATED.keys())
def test_bad_input_after_the_handshake_closes_only_that_connection_with_a_logged_reason(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture, listen: str, payload: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="shoal")
    a, b = pair
    result = poke_authenticated(a.address, listen, payload)
    assert result.closed
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("closing connection 000000000000002a" in line and reason in line for line in logged), logged
    assert len(a.cache("c")) == 0
    still_serves(a, b)


def test_an_operators_unknown_query_is_answered_not_fatal(pair: tuple[Node, Node]) -> None:
    a, b = pair
    with pytest.raises(ShoalError, match="unknown query 'nope'"):
        query(a.address, SECRET, "nope")
    with pytest.raises(ShoalError, match="stats"):
        query(a.address, SECRET, "stats", "an argument it does not take")
    still_serves(a, b)


def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shoal")
    a, b = pair
    result = poke(a.address, b"", timeout=HANDSHAKE_TIMEOUT * 10)
    assert result.closed and result.refused == "handshake did not finish in time"
    assert HANDSHAKE_TIMEOUT * 0.8 <= result.seconds < HANDSHAKE_TIMEOUT * 6
    assert any("handshake did not finish in time" in r.getMessage() for r in caplog.records)
    still_serves(a, b)


def arrived(member: Member, key: str, value: str) -> bool:
    return bool(member.cmd("get", key=key) == value)


@pytest.mark.slow
def test_a_member_process_survives_bad_input_keeps_serving_and_logs_each_reason(cluster: Cluster) -> None:
    a = cluster.start(handshake_timeout=HANDSHAKE_TIMEOUT)
    b = cluster.start(seeds=[a.address], handshake_timeout=HANDSHAKE_TIMEOUT)
    wait_until(lambda: b.address in a.peers_up() and a.address in b.peers_up(), 10, what="the pair")
    tried = [
        "garbage bytes",
        "an HTTP request",
        "a length prefix of 2**31",
        "a frame nested 4000 deep",
        "cache ops before the handshake",
        "nothing at all",
    ]
    for i, name in enumerate(tried):
        payload, reason = STRANGERS[name]
        result = poke(a.address, payload)
        assert result.closed and result.refused is not None and reason in result.refused, name
        assert a.alive
        a.cmd("set", key=f"k{i}", value=name)
        wait_until(partial(arrived, b, f"k{i}", name), 10, what=f"replication after {name}")
        assert a.cmd("members")[1]["address"] == b.address
    a.stop()
    assert a.proc.returncode == 0
    assert a.proc.stderr is not None
    log = a.proc.stderr.read()
    for name in tried:
        assert STRANGERS[name][1] in log, name
    assert "Traceback" not in log


# -- listening ------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", ":0", "10.1.2.3:7600", "pod.example.com:7600"])
def test_a_node_refuses_to_listen_on_a_non_loopback_address_without_a_secret(listen: str) -> None:
    with pytest.raises(ShoalError, match="without a cluster secret"):
        Node(listen=listen)
    Node(listen=listen, secret="a strong enough secret")  # with a secret it may


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:0", "[::1]:0", "127.0.0.2:0"])
def test_a_node_may_listen_on_loopback_without_a_secret(listen: str) -> None:
    node = Node(listen=listen).start()
    try:
        host, _, port = node.address.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass  # accepted: it listens where it was told, with no secret
    finally:
        node.stop()


# -- TLS ------------------------------------------------------------------------------


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d: Path = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
         "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "c.pem", d / "k.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(d / "c.pem")
    return Tls(server, client)


def test_members_replicate_over_tls(nodes: Callable[..., Node], tls: Tls) -> None:
    a = nodes(ssl=tls.server, client_ssl=tls.client)
    b = nodes(seeds=[a.address], ssl=tls.server, client_ssl=tls.client)
    wait_until(lambda: up_addresses(a) == {b.address} and up_addresses(b) == {a.address}, 10, what="a TLS pair")
    a.cache("c").set("k", "over tls")
    b.cache("c").set("k2", "back over tls")
    wait_until(lambda: b.cache("c").get("k") == "over tls" and a.cache("c").get("k2") == "back over tls", 10)
    for node, peer in ((a, b), (b, a)):
        conn = node._driver.peers.get(peer.node_id)  # white-box: the socket under the member
        assert conn is not None and conn.transport is not None
        assert conn.transport.get_extra_info("ssl_object") is not None
    assert query(a.address, SECRET, "members", ssl=tls.client)["members"][0]["address"] == a.address


def test_a_plain_tcp_member_cannot_join_a_tls_one(
    nodes: Callable[..., Node], tls: Tls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shoal")
    secure = nodes(ssl=tls.server, client_ssl=tls.client)
    secure_peer = nodes(seeds=[secure.address], ssl=tls.server, client_ssl=tls.client)
    plain = nodes(seeds=[secure.address])  # speaks plain TCP to a TLS listener
    dialing_plain = nodes(seeds=[plain.address], ssl=tls.server, client_ssl=tls.client)  # TLS to a plain one
    assert plain.wait_ready(10) and dialing_plain.wait_ready(10)  # both gave up waiting for peers
    secure.cache("c").set("k", "for TLS members only")
    plain.cache("c").set("p", "plain")
    wait_until(lambda: secure_peer.cache("c").get("k") is not None, 10, what="the TLS peer to get the write")
    assert up_addresses(plain) == set() and up_addresses(dialing_plain) == set()
    assert plain.cache("c").get("k") is None and dialing_plain.cache("c").get("p") is None
    assert plain.address not in up_addresses(secure) | up_addresses(secure_peer)
    # The plain member read the TLS dialer's ClientHello as a frame length, and said so.
    refusals = [r.getMessage() for r in caplog.records if "closing connection unauthenticated" in r.getMessage()]
    assert any("over the 4096-byte limit" in line for line in refusals), refusals


# -- what a peer, a relay or a crowd of strangers cannot do ---------------------------------------


class Relay:
    """A man in the middle without the secret: passes a handshake through, then adds frames of its own."""

    def __init__(self, target: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.target = target
        self.upstream: socket.socket | None = None
        self.seen: list[bytes] = []  # what the downstream peer sent, as it passed
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        down, _ = self.listener.accept()
        self.upstream = socket.create_connection(parse_address(self.target))
        for src, dst, log_to in ((down, self.upstream, self.seen), (self.upstream, down, None)):
            t = threading.Thread(target=self._pump, args=(src, dst, log_to), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, log_to: list[bytes] | None) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if log_to is not None:
                    log_to.append(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def inject(self, data: bytes) -> None:
        assert self.upstream is not None
        self.upstream.sendall(data)

    def close(self) -> None:
        self.listener.close()
        if self.upstream is not None:
            self.upstream.close()


FORGED_OP = [0, "injected", msgpack.packb("by the relay"), None, 1, 0x2A]


@pytest.mark.parametrize("how", ["a plain Ops frame", "an Ops frame with a made-up tag", "a replayed frame"])
def test_a_relay_that_passed_the_handshake_through_cannot_inject_a_frame(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Finding: a relay with no secret passed a valid handshake through, then injected Ops both members applied."""
    caplog.set_level(logging.INFO, logger="shoal")
    a, b = pair
    relay = Relay(a.address)
    try:
        with RawPeer(relay.address, SECRET, 0x2A, "") as peer:  # an operator's client, honest
            body = encode(Ops("c", [FORGED_OP]))
            if how == "a plain Ops frame":
                relay.inject(body)
            elif how == "an Ops frame with a made-up tag":
                relay.inject(struct.pack(">I", len(body) - 4 + TAG_SIZE) + body[4:] + b"\x00" * TAG_SIZE)
            else:
                peer.send(encode(Query("members", [])))
                wait_until(lambda: sum(map(len, relay.seen)) > 0, 5)
                last = relay.seen[-1]
                relay.inject(last)  # the client's own sealed query, once more
            wait_until(
                lambda: any("failed authentication" in r.getMessage() for r in caplog.records), 5, what="the refusal"
            )
    finally:
        relay.close()
    assert a.cache("c").get("injected") is None and b.cache("c").get("injected") is None
    still_serves(a, b)


def test_pending_connections_beyond_max_pending_close_the_oldest_and_operators_still_get_answers(
    nodes: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    """Finding: 3,000 sockets holding partial frames took a member from 29 to 236 MB and starved operators."""
    caplog.set_level(logging.INFO, logger="shoal")
    a = nodes(max_pending=8, handshake_timeout=30.0)
    b = nodes(seeds=[a.address])
    wait_until(lambda: up_addresses(a) == {b.address}, 10, what="the pair")
    socks = []
    try:
        closed = 0
        for _ in range(60):
            sock = socket.create_connection(parse_address(a.address), timeout=5)
            socks.append(sock)
            try:
                sock.sendall(struct.pack(">I", HANDSHAKE_MAX_FRAME) + b"\x96\x01" + b"\x00" * 998)  # a partial Hello
            except ConnectionError:
                closed += 1
        wait_until(lambda: len(a._driver.pending) >= 8, 5, what="eight pending strangers")
        for sock in socks:
            sock.settimeout(0.2)
            try:
                closed += sock.recv(1) == b""
            except ConnectionError:
                closed += 1
            except TimeoutError:
                pass
        assert len(a._driver.pending) <= 8
        assert closed >= 50  # the oldest were closed as new ones came (a few may still be in the accept queue)
        assert query(a.address, SECRET, "members")["members"][0]["address"] == a.address
        still_serves(a, b)
    finally:
        for sock in socks:
            sock.close()
    lines = [r.getMessage() for r in caplog.records if "max_pending" in r.getMessage()]
    assert 1 <= len(lines) <= 10  # rate-limited: the strangers do not decide how much we log


def test_a_flood_of_strangers_writes_a_bounded_number_of_log_lines(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    """Finding: one log line per timed-out stranger, 11,170 lines in 25 s."""
    caplog.set_level(logging.INFO, logger="shoal")
    a, b = pair
    for _ in range(100):
        assert poke(a.address, b"GET / HTTP/1.1\r\n\r\n").closed
    lines = [r.getMessage() for r in caplog.records if "unauthenticated" in r.getMessage()]
    assert 1 <= len(lines) <= 10
    still_serves(a, b)


def test_a_stranger_that_stalls_tls_is_closed_by_the_handshake_deadline(nodes: Callable[..., Node], tls: Tls) -> None:
    """Finding: with TLS an idle stranger lived 60 s (asyncio's TLS timeout) instead of the handshake's 5."""
    a = nodes(ssl=tls.server, client_ssl=tls.client, handshake_timeout=HANDSHAKE_TIMEOUT)
    started = time.monotonic()
    result = poke(a.address, b"", timeout=30)  # connects over TCP, never starts TLS
    assert result.closed
    assert time.monotonic() - started < HANDSHAKE_TIMEOUT * 10  # the deadline, not asyncio's 60 s


def poisoned_entry(node: Node) -> None:
    """An entry no entry point lets in any more (expiry 1e306), put straight into the store."""
    cache = node.cache("c")
    version = cache._clock.stamp()
    cache._store.write("poison", "x", 1e306, version, time.time())


def test_heartbeats_and_replication_survive_a_poisoned_entry_whose_repair_round_fails(
    nodes: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    """Finding: ttl=1e306 made digests() compute int(inf); the timer task died: no heartbeats, no repair."""
    caplog.set_level(logging.INFO, logger="shoal")
    a = nodes(anti_entropy_interval=0.1)
    b = nodes(seeds=[a.address], anti_entropy_interval=0.1)
    wait_until(lambda: up_addresses(a) == {b.address} and up_addresses(b) == {a.address}, 10, what="the pair")
    poisoned_entry(a)
    wait_until(
        lambda: sum("repair scan of c failed" in r.getMessage() for r in caplog.records) >= 2,
        15,
        what="a repair round to fail on the poisoned entry",
    )
    deadline = time.monotonic() + 3 * FAST["failure_timeout"]  # type: ignore[operator]
    while time.monotonic() < deadline:  # three failure timeouts of failing rounds: nobody is marked down
        assert up_addresses(a) == {b.address} and up_addresses(b) == {a.address}
        time.sleep(0.05)
    still_serves(a, b)
    still_serves(b, a)


def test_a_peer_asking_for_dumps_it_never_reads_is_cut_off_before_it_costs_more_than_a_few(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    """Finding: 100 dump requests never read took a member from 104 to 315 MB."""
    caplog.set_level(logging.INFO, logger="shoal")
    a, b = pair
    a.cache("c").set_many({f"k{i}": "v" * 100 for i in range(20_000)})
    with RawPeer(a.address, SECRET, 0x2B, "127.0.0.1:1") as peer:
        peer.send(b"".join(encode(DumpRequest("c", i)) for i in range(100)))
        wait_until(
            lambda: any("more than 64 dumps requested at once" in r.getMessage() for r in caplog.records),
            10,
            what="the greedy peer to be refused",
        )
    core = a._driver.core
    wait_until(lambda: 0x2B not in core._dumps_waiting, 10, what="its queued dumps to be dropped")
    still_serves(a, b)


@pytest.mark.slow
def test_a_new_member_gets_every_entry_when_values_average_8_kb(cluster: Cluster) -> None:
    """Finding: 8 KB values made dump chunks over the frame limit; the new member reported ready with 0 entries."""
    a = cluster.start(boot_wait=0.5)
    for start in range(0, 4000, 500):
        a.cmd("set_range", prefix="k", start=start, count=500, value="x" * 8 * 1024)
    assert a.cmd("len") == 4000
    b = cluster.start(seeds=[a.address], boot_wait=2.0)
    assert b.cmd("ready", timeout=60) is True
    assert b.cmd("len") == 4000
    assert b.cmd("stats")["caches"]["c"]["warm_boot"]["state"] == "warm"


@pytest.mark.slow
@pytest.mark.parametrize("offset", [-600, 365 * 86400], ids=["10 minutes behind", "a year ahead"])
def test_a_member_whose_clock_is_off_is_refused_with_a_clear_reason_and_cannot_rewrite_entries(
    cluster: Cluster, offset: int
) -> None:
    """Finding: 10 minutes behind, its ttl-60 writes deleted the key on the others; a year ahead, they lived a year."""
    a = cluster.start(boot_wait=0.3)
    a.cmd("set", key="k", value="old")
    skewed = cluster.start(
        seeds=[a.address], ttl=60, boot_wait=0.5, prefix=["env", f"SHOAL_TEST_CLOCK_OFFSET={offset}"]
    )
    assert skewed.cmd("ready", timeout=10) is True
    skewed.cmd("set", key="k", value="from the skewed member, ttl 60")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # a window in which a joined member's write would arrive
        assert a.cmd("get", key="k") == "old"
        time.sleep(0.05)
    assert skewed.address not in {m["address"] for m in a.cmd("members") if m["state"] == "up"}
    logs = {}
    for name, member in (("a", a), ("skewed", skewed)):
        member.stop()
        assert member.proc.stderr is not None
        logs[name] = member.proc.stderr.read()
    # The skewed member dialed a; a refused its proven Proof, and both say why.
    assert "more than max_clock_skew" in logs["a"]
    assert "peer refused the handshake" in logs["skewed"] and "max_clock_skew" in logs["skewed"]


@pytest.mark.parametrize(
    "secret", ["", "\n", "short", b"fifteen bytes!!"], ids=["empty", "a newline", "short", "15 bytes"]
)
def test_a_node_or_an_operator_given_an_empty_or_short_secret_refuses_it(secret: str | bytes) -> None:
    """Finding: empty and short secrets were accepted; a secret file holding only a newline gave an empty one."""
    with pytest.raises(WeakSecret, match="shoal secret"):
        Node(secret=secret)
    with pytest.raises(WeakSecret):
        Client("127.0.0.1:1", secret)


def test_max_value_size_is_bounded_by_the_frame_limit() -> None:
    node = Node(secret=SECRET)
    with pytest.raises(ValueError, match="max_frame_size"):
        node.cache("big", max_value_size=DEFAULT_MAX_FRAME)
    cache = node.cache("ok", max_value_size=1000)
    with pytest.raises(ValueError, match="max_value_size"):
        cache.set("k", b"x" * 1000)


def test_a_peer_that_pulls_without_reading_cannot_pile_answers_up_past_the_backlog_limit(
    nodes: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    """An authenticated peer amplifying with Pulls it never reads (amplification by a peer)."""
    caplog.set_level(logging.INFO, logger="shoal")
    a = nodes(max_peer_backlog=1 << 20)
    a.cache("c").set_many({f"k{i}": "x" * 60_000 for i in range(200)})  # 12 MB a Pull away
    peer_id = f"{0x2C:016x}"
    with RawPeer(a.address, SECRET, 0x2C, "127.0.0.1:1") as peer:
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        wait_until(lambda: any(m["id"] == peer_id for m in a.members()), 10, what="the peer to be up")
        peer.send(b"".join(encode(Pull("c", [f"k{i}" for i in range(200)])) for _ in range(30)))  # 360 MB asked
        wait_until(
            lambda: a.stats()["peer_backlog_bytes"].get(peer_id, 0) >= 1 << 20,
            20,
            what="answers to fill the peer's backlog up to its limit",
        )
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # the rest of the 30 Pulls wait for room, produced as it drains
            backlog = a.stats()["peer_backlog_bytes"].get(peer_id, 0)
            assert backlog <= (1 << 20) + 8 * 1024 * 1024 + 4 * 1024 * 1024  # limit, one slice, one frame
            time.sleep(0.01)
