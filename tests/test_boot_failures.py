"""Warm boot when donors fail, in the simulated network: next donor, and never ready on a failed boot."""

from __future__ import annotations

from typing import Any

from sim.network import Sim
from sim.nodes import SimMember, fill
from sim.nodes import member_of as node

from shoal.actions import Ready
from shoal.warmboot import CHUNK

# Failure detection slower than warm_timeout: a frozen donor stays "up" while the booter waits on it.
SLOW_DETECTOR: dict[str, Any] = {
    "failure_timeout": 60.0,
    "heartbeat_interval": 0.2,
    "boot_wait": 1.0,
    "warm_timeout": 2.0,
}


def member(sim: Sim, **config: Any) -> int:
    return sim.add(SimMember.factory(sim, seeds=["sim:1"], interval=1.0, **{**SLOW_DETECTOR, **config}))


def ready(sim: Sim, node_id: int) -> bool:
    readiness = [a.ready for _, who, a in sim.effects if who == node_id and isinstance(a, Ready)]
    return bool(readiness) and readiness[-1]


def streaming(sim: Sim, booter: int) -> bool:
    return node(sim, booter).core.boot_stats("c").entries > 0


def test_a_donor_that_stops_mid_stream_times_out_and_the_boot_goes_on_from_the_next() -> None:
    """Finding: a donor timeout ended the boot (ready, not warmed) instead of trying the next donor."""
    sim = Sim(seed=11)
    a = member(sim)
    c = member(sim)
    assert sim.run_until(lambda: ready(sim, a) and ready(sim, c), 10)
    fill(sim, a, 10 * CHUNK)
    assert sim.run_until(lambda: len(node(sim, c).cache) == 10 * CHUNK, 10)
    b = member(sim)
    assert sim.run_until(lambda: streaming(sim, b), 30), "the stream never began"
    donor = int(node(sim, b).core.boot_stats("c").donor or "0", 16)
    sim.freeze(donor)  # SIGSTOP: connected, up for the failure detector, silent
    assert sim.run_until(lambda: ready(sim, b), 30)
    stats = node(sim, b).core.boot_stats("c")
    other = c if donor == a else a
    assert stats.state == "warm" and stats.donors_tried == 2 and stats.donor == f"{other:016x}"
    assert len(node(sim, b).cache) == 10 * CHUNK


def test_a_member_whose_every_donor_failed_is_never_ready_and_asks_again_until_one_delivers() -> None:
    """Finding: a boot that failed reported ready with what it had (0 entries after a dead dump)."""
    sim = Sim(seed=12)
    a = member(sim)
    assert sim.run_until(lambda: ready(sim, a), 10)
    fill(sim, a, 10 * CHUNK)
    sim.run_for(1.0)
    b = member(sim)
    assert sim.run_until(lambda: streaming(sim, b), 30), "the stream never began"
    sim.freeze(a)
    sim.run_for(15.0)  # warm_timeout is 2 s: the boot failed long ago
    assert not ready(sim, b)
    stats = node(sim, b).core.boot_stats("c")
    assert stats.state.startswith("retrying") and stats.entries < 10 * CHUNK
    sim.thaw(a)
    assert sim.run_until(lambda: ready(sim, b), 60)
    stats = node(sim, b).core.boot_stats("c")
    assert stats.state == "warm" and stats.donor == f"{a:016x}" and stats.donors_tried >= 2
    assert dict(node(sim, b).cache.items()) == dict(node(sim, a).cache.items())


def test_a_failed_boot_does_not_wait_for_a_donor_that_is_gone() -> None:
    """Readiness stays bounded: once the only donor is down, the booter is ready (no peers), not retrying."""
    sim = Sim(seed=13)
    a = member(sim, failure_timeout=3.0)
    assert sim.run_until(lambda: ready(sim, a), 10)
    fill(sim, a, 10 * CHUNK)
    sim.run_for(1.0)
    b = member(sim, failure_timeout=3.0)
    assert sim.run_until(lambda: streaming(sim, b), 30), "the stream never began"
    sim.crash(a)
    assert sim.run_until(lambda: ready(sim, b), 60)
    assert node(sim, b).core.boot_stats("c").state == "no peers"


def test_a_dump_that_streams_healthy_chunks_for_longer_than_warm_timeout_completes() -> None:
    """warm_timeout bounds a stall, not a stream: a large cache or a slow link may take minutes."""
    sim = Sim(seed=14)
    a = member(sim, warm_timeout=30.0)
    assert sim.run_until(lambda: ready(sim, a), 10)
    fill(sim, a, 20 * CHUNK)
    node(sim, a).dump_pace = 2.0  # 20 chunks, one every 2 s: a 40 s dump
    b = member(sim, warm_timeout=30.0)
    assert sim.run_until(lambda: ready(sim, b), 90)
    stats = node(sim, b).core.boot_stats("c")
    assert stats.state == "warm" and stats.donors_tried == 1 and stats.seconds >= 40
    assert len(node(sim, b).cache) == 20 * CHUNK


def test_a_donor_is_replaced_warm_timeout_after_its_last_chunk_not_after_its_first() -> None:
    sim = Sim(seed=15)
    a = member(sim)
    c = member(sim)
    assert sim.run_until(lambda: ready(sim, a) and ready(sim, c), 10)
    fill(sim, a, 10 * CHUNK)
    assert sim.run_until(lambda: len(node(sim, c).cache) == 10 * CHUNK, 10)
    for donor in (a, c):
        node(sim, donor).dump_pace = 1.0  # 10 chunks in 10 s, five times warm_timeout (2 s)
    b = member(sim)
    assert sim.run_until(lambda: node(sim, b).core.boot_stats("c").entries >= 5 * CHUNK, 30)
    stalled = sim.now  # the fifth chunk just arrived, 4 s or more into the stream
    donor = int(node(sim, b).core.boot_stats("c").donor or "0", 16)
    sim.freeze(donor)
    assert sim.run_until(lambda: node(sim, b).core.boot_stats("c").donors_tried == 2, 10)
    assert 2.0 <= sim.now - stalled <= 2.5  # warm_timeout after the last chunk, at the booter's next tick
    assert sim.run_until(lambda: ready(sim, b), 30)
    stats = node(sim, b).core.boot_stats("c")
    other = c if donor == a else a
    assert stats.state == "warm" and stats.donors_tried == 2 and stats.donor == f"{other:016x}"
    assert len(node(sim, b).cache) == 10 * CHUNK
