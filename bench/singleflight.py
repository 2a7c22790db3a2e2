#!/usr/bin/env python3
"""What cluster single flight costs a miss: ``fetch`` latency with ``single_flight="cluster"`` and ``"local"``.

    python3 run.py bench singleflight [--keys 2000] [--quick]

Three members on loopback: this process (the measuring member, a Node on its
background thread) and two member processes (bench/member.py). One caller fetches new keys
one after the other with a loader that returns at once, so what is timed is the
cache's own path on a miss, not an upstream:

- ``local``: per-member single flight (no network on a miss);
- ``cluster, owned here``: the key's lease owner is this member (a third of the keys):
  the lease is taken without the network;
- ``cluster, owned by a peer``: a ``LeaseRequest``/``LeaseGrant`` round trip to
  the owner before the loader runs, and a ``LeaseDone`` after (not waited for).

The difference between the last row and ``local`` is the latency a cluster-wide
miss adds. Hits never ask anyone: they are the same dict lookup in both modes.

Then the other side of a miss, a waiter: a second Node in this process misses
the same key while the first one's loader (20 ms) runs; the figure is how long
after that loader returned the waiter has the value (the holder's ``set``
replicating, or the owner's word), and how many times the waiter loaded itself
(it should never).
(Upstream calls saved during a burst are shown by examples/identity_service/burst.py.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable

from harness import Cleanup, Member, environment, format_table, quantile, wait_for

from shoal import Cache, Node


def p(samples: list[float], q: float) -> float:
    value = quantile(samples, q)
    assert value is not None
    return value


def waiter_delays(holder: Node, holder_cache: Cache, count: int) -> tuple[list[float], int]:
    """Microseconds from the holder's loader returning to a waiter on another member having the value."""
    waiter = Node(seeds=[holder.address], gc_freeze=False).start()
    try:
        cache = waiter.cache("sf", ttl=600)
        wait_for(lambda: waiter.wait_ready(0.05) and sum(m["state"] == "up" for m in waiter.members()) >= 2, 30, "join")
        delays: list[float] = []
        own_loads = 0
        for i in range(count):
            key = f"wait-{i}"
            loading, returned = threading.Event(), [0.0]

            def load(key: str, loading: threading.Event = loading, returned: list[float] = returned) -> str:
                loading.set()
                time.sleep(0.02)
                returned[0] = time.perf_counter()
                return key

            def own(key: str) -> str:
                nonlocal own_loads
                own_loads += 1
                return key

            holding = threading.Thread(target=holder_cache.fetch, args=(key, load))
            holding.start()
            loading.wait(10)
            cache.fetch(key, own)
            got = time.perf_counter()
            holding.join()
            delays.append(max(0.0, got - returned[0]) * 1e6)
        return delays, own_loads
    finally:
        waiter.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2000, help="misses timed per mode (default 2000)")
    parser.add_argument("--quick", action="store_true", help="200 keys: a smoke run")
    args = parser.parse_args()
    count = 200 if args.quick else args.keys
    print(environment())

    with Cleanup() as run:
        node = Node(gc_freeze=False).start()
        run.callback(node.stop)
        cluster = node.cache("sf", ttl=600)
        local = node.cache("sf_local", ttl=600, single_flight="local")
        peer = ["bench/member.py", "fleet", "--cache", "sf", "--ttl", "0", "--secret", "", "--seed", node.address]
        for _ in range(2):
            run.add(Member(*peer))
        up = lambda: sum(m["state"] == "up" and "sf" in m["caches"] for m in node.members()) >= 2  # noqa: E731
        wait_for(up, 30, "the peers to join", 0.01)
        node.wait_ready(30)

        def instant(key: str) -> str:
            return key

        def timed(cache_fetch: Callable[..., object], keys: list[str]) -> list[float]:
            samples = []
            for key in keys:
                started = time.perf_counter()
                cache_fetch(key, instant)
                samples.append((time.perf_counter() - started) * 1e6)
            return samples

        warmup = [f"warm-{i}" for i in range(100)]
        timed(cluster.fetch, warmup)
        timed(local.fetch, warmup)
        keys = [f"key-{i}" for i in range(count)]
        rows: list[tuple[str, list[float]]] = []
        rows.append(("local (per member)", timed(local.fetch, keys)))
        owned_here = [k for k in keys if node._driver.core.leases.owner("sf", k) == node.node_id]
        owned_away = [k for k in keys if node._driver.core.leases.owner("sf", k) != node.node_id]
        rows.append(("cluster, owned here", timed(cluster.fetch, owned_here)))
        rows.append(("cluster, owned by a peer", timed(cluster.fetch, owned_away)))
        rows.append(("hit (either mode)", timed(cluster.fetch, owned_away[:200])))
        waits, waiter_loads = waiter_delays(node, cluster, count // 4)
        leases = node.stats()["leases"]

    print()
    print(
        format_table(
            ["mode", "misses", "p50 us", "p90 us", "p99 us", "mean us"],
            [
                [name, len(xs), *(f"{p(xs, q):.0f}" for q in (0.5, 0.9, 0.99)), f"{statistics.fmean(xs):.0f}"]
                for name, xs in rows
            ],
            title=f"sequential fetch of new keys, loader returns at once; 3 members on loopback; {count} keys per mode",
        )
    )
    base, away = rows[0][1], rows[2][1]
    print(
        f"\nadded by a cluster-wide miss (owned by a peer, minus local): "
        f"p50 {p(away, 0.5) - p(base, 0.5):.0f} us, p99 {p(away, 0.99) - p(base, 0.99):.0f} us"
    )
    print(
        f"\na waiter on another member, after the holder's loader returned ({len(waits)} keys): "
        f"p50 {p(waits, 0.5):.0f} us, p99 {p(waits, 0.99):.0f} us; the waiter loaded {waiter_loads} times itself"
    )
    print(f"lease figures of the measuring member: {leases}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
