"""An admitted peer's oversized frames cost a member nothing: refused by kind before decoding (issue 20, row 4)."""

from __future__ import annotations

import contextlib
import struct
import threading
import time

from shoal.client import query
from shoal.wire import DEFAULT_MAX_FRAME
from tests.support.cluster import Cluster, cluster, wait_until
from tests.support.peer import RawPeer

__all__ = ["cluster"]  # the fixture

SECRET = "shoal-test-secret"  # tests/support/member.py's default


def empty_arrays_gossip(size: int) -> bytes:
    """One frame of ``size`` body bytes: a Gossip whose view is empty arrays, one per byte."""
    count = size - 7
    body = b"\x92\x0a\xdd" + count.to_bytes(4, "big") + b"\x90" * count
    return struct.pack(">I", len(body)) + body


def test_a_16_mib_gossip_of_empty_arrays_is_refused_unread_and_the_member_stays_responsive_and_small(
    cluster: Cluster,
) -> None:
    """Before: the loop stalled 12.2 s and RSS peaked at 1.2 GB. Now: the connection closes at its first bytes."""
    member = cluster.start(failure_timeout=2.0, heartbeat_interval=0.2)
    assert member.cmd("ready", timeout=10) is True
    rss_before = member.cmd("rss")
    frame = empty_arrays_gossip(DEFAULT_MAX_FRAME)
    with RawPeer(member.address, SECRET, 0x7777, "127.0.0.1:9") as peer:
        sender = threading.Thread(target=lambda: _send_quietly(peer, frame), daemon=True)
        sender.start()
        started = time.monotonic()
        answer = query(member.address, SECRET, "stats", timeout=10)
        answered_in = time.monotonic() - started
        closed = wait_until(lambda: _closed(peer), timeout=10, what="the member to close the connection")
        sender.join(10)
    assert answer["id"] and closed
    assert answered_in < 1.0, f"the member's loop answered after {answered_in:.1f} s"
    grown_mb = (member.cmd("rss") - rss_before) / 1024
    assert grown_mb < 40, f"RSS grew {grown_mb:.0f} MB"
    assert "Gossip frame, over the 1048576-byte limit" in _stderr_so_far(member)


def _send_quietly(peer: RawPeer, frame: bytes) -> None:
    with contextlib.suppress(OSError):  # the member closes the connection mid-send
        peer.send(frame)


def _closed(peer: RawPeer) -> bool:
    peer.sock.settimeout(0.2)
    try:
        while data := peer.sock.recv(65536):
            del data
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def _stderr_so_far(member: object) -> str:
    member.kill()  # type: ignore[attr-defined]
    return member.proc.stderr.read()  # type: ignore[attr-defined,no-any-return]
