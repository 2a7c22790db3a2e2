"""Admission and bad input: the secret, strangers' bytes, listening rules and TLS.

Every bad input below was sent to a running node. The node closes that one
connection, logs why, and keeps serving its peers; an unauthenticated sender also
gets a ``Refused`` frame naming the reason.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest

from shoal.client import Client, query
from shoal.errors import HandshakeError, ShoalError
from shoal.handshake import Handshake
from shoal.messages import Hello, Message, Ops, Query, Refused
from shoal.node import Node, parse_address
from shoal.wire import FrameDecoder, encode
from tests.support.cluster import Cluster, Member, cluster, wait_until

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
    host, port = parse_address(address)
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        decoder = FrameDecoder(1 << 20)
        hs = Handshake.initiator(SECRET.encode(), 0x2A, listen)
        for msg in hs.start():
            sock.sendall(encode(msg))
        early: list[Message] = []  # what the node sends right after Welcome (its Gossip)
        while not hs.done:
            for msg in decoder.feed(sock.recv(65536)):
                if hs.done:
                    early.append(msg)
                    continue
                for reply in hs.receive(msg):
                    sock.sendall(encode(reply))
        sock.sendall(payload)
        replies, closed = _drain(sock, decoder, timeout)
    return Poke(early + replies, closed, time.monotonic() - started)


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
    intruder = cluster.start(secret="not-the-secret", seeds=[a.address], boot_wait=0.5)
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
    # b dialed the intruder, which could not prove the secret: b says so.
    assert "failed to prove the cluster secret" in logs["b"]
    # The intruder dialed a and refused a's proof; a logs the refusal and its reason.
    assert "failed to prove the cluster secret" in logs["intruder"]
    assert "peer refused the handshake" in logs["a"]


def test_an_operator_with_a_wrong_secret_is_refused_and_its_connection_closed(pair: tuple[Node, Node]) -> None:
    a, b = pair
    with pytest.raises(ShoalError, match="secret") as refused:
        query(a.address, "wrong", "members")
    assert a.address in str(refused.value)  # which member would not take the secret

    async def attempt() -> Client:
        client = Client(a.address, "wrong", timeout=5)
        with pytest.raises(HandshakeError):
            await client.__aenter__()
        return client

    client = asyncio.run(attempt())
    assert client._writer is not None and client._writer.is_closing()  # not left open for the GC
    still_serves(a, b)


# -- bad input ------------------------------------------------------------------------

TIMESTAMP = msgpack.packb(msgpack.Timestamp(0))
STRANGERS: dict[str, tuple[bytes, str]] = {
    # name: (bytes sent by an unauthenticated stranger, the reason the node gives)
    "garbage bytes": (b"\xde\xad\xbe\xef" * 16, "3735928559-byte frame, over the 65536-byte limit"),
    "an HTTP request": (b"GET / HTTP/1.1\r\n\r\n", "1195725856-byte frame, over the 65536-byte limit"),
    "a length prefix of 2**31": (struct.pack(">I", 2**31), "2147483648-byte frame, over the 65536-byte limit"),
    "a length prefix one over the handshake limit": (struct.pack(">I", 65537), "over the 65536-byte limit"),
    "a frame of text": (frame(b"garbage!"), "undecodable frame (ExtraData)"),
    "a frame of a never-used msgpack byte": (frame(b"\xc1"), "undecodable frame (FormatError)"),
    "a frame nested 60000 deep": (frame(b"\x91" * 60000 + b"\x90"), "undecodable frame (StackError)"),
    "a msgpack Timestamp": (frame(TIMESTAMP), "exceeds max_ext_len(0)"),
    "a msgpack ext type": (frame(msgpack.packb(msgpack.ExtType(5, b"code"))), "exceeds max_ext_len(0)"),
    "a map instead of a message": (frame(msgpack.packb({"op": "set"})), "a message is a non-empty array, got dict"),
    "an unknown message code": (frame(msgpack.packb([9999, 1, 2])), "unknown message code 9999"),
    "a Hello with too few fields": (frame(msgpack.packb([1, 1])), "Hello has 5 fields, got 1"),
    "a Hello with a field of the wrong type": (
        frame(msgpack.packb([1, 1, 1, "id", b"n" * 32, ""])),
        "Hello.node_id must be int, got str",
    ),
    "a Hello with a short nonce": (encode(Hello(1, 1, 7, b"x", "")), "nonce is 1 bytes, not 32"),
    "a Hello from no common version": (encode(Hello(7, 9, 7, b"x" * 32, "")), "no common protocol version"),
    "cache ops before the handshake": (encode(Ops("c", [])), "unexpected Ops in handshake"),
    "a query before the handshake": (encode(Query("stats", [])), "unexpected Query in handshake"),
    "nothing at all": (b"", "handshake did not finish in time"),
    "half a frame": (struct.pack(">I", 100) + b"\x00" * 10, "handshake did not finish in time"),
    "a Hello, then silence": (encode(Hello(1, 1, 7, b"x" * 32, "")), "handshake did not finish in time"),
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
    result = poke(a.address, encode(Hello(1, 1, a.node_id, b"x" * 32, "")))
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
    "a member sending an op with a float key": (
        "127.0.0.1:1",
        encode(Ops("c", [[1, 1.5, b"\xc0", None, 1, 1]])),
        "op key must be str, bytes or int",
    ),
    "a member sending garbage": ("127.0.0.1:1", frame(b"\xc1"), "undecodable frame (FormatError)"),
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
        "a frame nested 60000 deep",
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
    Node(listen=listen, secret="s")  # with a secret it may


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:0", "[::1]:0", "127.0.0.2:0"])
def test_a_node_may_listen_on_loopback_without_a_secret(listen: str) -> None:
    Node(listen=listen)


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
        conn = node._peers.get(peer.node_id)  # white-box: the socket under the member
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
    assert any("over the 65536-byte limit" in line for line in refusals), refusals
