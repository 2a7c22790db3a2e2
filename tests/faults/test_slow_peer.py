"""A peer that stops reading (SIGSTOP) while another member floods the cluster with large values.

The failure timeout is set longer than the flood, so the frozen peer stays "up" and
its connection open: the writer must stop queueing for it once its backlog passes
``max_peer_backlog``, count the ops it dropped, keep its own memory flat, and leave
the rest to anti-entropy once the peer reads again.
"""

from __future__ import annotations

import signal

import pytest

from shoal.replication import Replicator
from tests.faults.harness import FAST, record, settle, start_cluster
from tests.support.cluster import Cluster, wait_until
from tests.test_cluster import sees_up

pytestmark = pytest.mark.slow

LIMIT = 1 << 20  # max_peer_backlog
KEYS = 256
VALUE = 4096  # bytes per value: a pass over the keys is 1 MiB
SETTLE = 32  # passes after which the writer's heap has reached its working size (frames, buffers)
PASSES = 128  # then 128 MiB more offered to the frozen peer, 128 times its limit
# An Ops frame holds at most a batch of ops; the backlog is checked before each frame.
FRAME = Replicator.__init__.__kwdefaults__["batch"] * (VALUE + 64)  # type: ignore[index]
LOG = 4 << 20  # the recent-writes log for catch-ups is memory too: bounded, and small here
SLOW: dict[str, object] = {**FAST, "failure_timeout": 60.0, "max_peer_backlog": LIMIT, "catchup_log_bytes": LOG}


class Flood:
    """Overwrites the same KEYS keys pass after pass, each pass with new values (the cache stays one size)."""

    prefix = "big"
    keys = KEYS

    def __init__(self) -> None:
        self.passes = 0
        self.acked = 0

    def value(self, n: int) -> str:
        return f"{n:06d}" + "x" * (VALUE - 6)

    def expected(self, i: int) -> str:
        return f"{self.value(self.passes - 1)}{i}"


def test_a_peer_that_stops_reading_costs_the_writer_a_bounded_backlog_and_is_repaired_after_it_resumes(
    cluster: Cluster,
) -> None:
    writer, other, frozen = members = start_cluster(cluster, 3, **SLOW)
    flood = Flood()

    def one_pass() -> None:
        writer.cmd("set_range", prefix=flood.prefix, start=0, count=KEYS, value=flood.value(flood.passes))
        flood.passes += 1
        flood.acked += KEYS

    for _ in range(4):
        one_pass()
    wait_until(lambda: frozen.cmd("get", key=f"big{KEYS - 1}") == flood.expected(KEYS - 1), 10, what="warm-up")
    rss_start = writer.rss_kb()
    backlog_seen: list[int] = []
    frozen.kill(signal.SIGSTOP)
    try:
        for _ in range(SETTLE):
            one_pass()
        rss_before = writer.rss_kb()
        for _ in range(PASSES):
            one_pass()
            backlog_seen.append(writer.cmd("stats")["peer_backlog_bytes"].get(frozen.id, 0))
        wait_until(lambda: writer.cmd("stats")["caches"]["c"]["queue_depth"] == 0, 10, what="the outbox drained")
        figures = writer.cmd("stats")
        backlog_seen.append(figures["peer_backlog_bytes"].get(frozen.id, 0))
        rss_after = writer.rss_kb()
        # The member still reading got everything, live.
        wait_until(lambda: other.cmd("get", key=f"big{KEYS - 1}") == flood.expected(KEYS - 1), 10, what="other")
        assert frozen.alive and sees_up(writer, frozen)  # still "up": only its backlog is in the way
    finally:
        frozen.kill(signal.SIGCONT)

    lost = settle(members, [flood], timeout=30)
    dropped = figures["caches"]["c"]["ops_deferred"]  # not queued for the frozen peer: its feed sends them later
    offered_mib = PASSES * KEYS * VALUE >> 20
    growth_mib = (rss_after - rss_before) / 1024
    print(f"\nslow peer: {offered_mib} MiB offered while frozen, {dropped} ops deferred")
    print(f"  backlog to the frozen peer: max {max(backlog_seen)} bytes (limit {LIMIT} + a frame of up to {FRAME})")
    print(f"  writer RSS {rss_start} kB before the freeze, {rss_before} kB after {SETTLE} MiB offered,")
    print(f"  {rss_after} kB after {offered_mib} MiB more ({growth_mib:+.1f} MiB); keys lost per member {lost}")
    record(
        "peer stops reading (SIGSTOP) under a flood of 4 KiB values, max_peer_backlog 1 MiB",
        tried=1,
        survived=1,
        acked=flood.acked,
        lost_keys=max(lost.values()),
        notes=(
            f"{offered_mib} MiB offered, {dropped} ops deferred, max backlog {max(backlog_seen) >> 10} KiB, "
            f"writer RSS {growth_mib:+.1f} MiB over the last {offered_mib} MiB"
        ),
    )
    assert dropped > 0
    assert max(backlog_seen) <= LIMIT + FRAME
    assert growth_mib < offered_mib / 3  # had it queued everything, it would have grown by all of it
    assert lost == {m.address: 0 for m in members}
