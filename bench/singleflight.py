#!/usr/bin/env python3
"""What cluster single flight costs a miss: ``fetch`` latency with ``single_flight="cluster"`` and ``"local"``.

    PYTHONPATH=src python bench/singleflight.py [--keys 2000] [--quick]

Three members on loopback: this process (the measuring member, a Node on its
background thread) and two ``shoal serve`` processes. One caller fetches new keys
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
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from shoal import Cache, Node  # noqa: E402


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_peer(seed: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "serve", "--listen", "127.0.0.1:0", "--seeds", seed, "--caches", "sf"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        raise RuntimeError(f"shoal serve did not start: {line!r}")
    return proc, line.split()[2]


def waiter_delays(holder: Node, holder_cache: Cache, count: int) -> tuple[list[float], int]:
    """Microseconds from the holder's loader returning to a waiter on another member having the value."""
    waiter = Node(seeds=[holder.address], gc_freeze=False).start()
    try:
        cache = waiter.cache("sf", ttl=600)
        deadline = time.monotonic() + 30
        while not waiter.wait_ready(0.05) or sum(1 for m in waiter.members() if m["state"] == "up") < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the waiter did not join")
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
    load = os.getloadavg()[0]
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus, load average {load:.2f}")

    node = Node(gc_freeze=False).start()
    cluster = node.cache("sf", ttl=600)
    local = node.cache("sf_local", ttl=600, single_flight="local")
    peers = [start_peer(node.address) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while sum(1 for m in node.members() if m["state"] == "up" and "sf" in m["caches"]) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the peers did not join")
            time.sleep(0.01)
        node.wait_ready(30)

        def instant(key: str) -> str:
            return key

        def timed(cache_fetch: object, keys: list[str]) -> list[float]:
            samples = []
            for key in keys:
                started = time.perf_counter()
                cache_fetch(key, instant)  # type: ignore[operator]
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
    finally:
        node.stop()
        for proc, _ in peers:
            proc.terminate()
            proc.wait(10)

    print(f"\nsequential fetch of new keys, loader returns at once; 3 members on loopback; {count} keys per mode")
    print(f"{'mode':<28}{'misses':>8}{'p50 us':>10}{'p90 us':>10}{'p99 us':>10}{'mean us':>10}")
    for name, samples in rows:
        print(
            f"{name:<28}{len(samples):>8}{percentile(samples, 0.5):>10.0f}{percentile(samples, 0.9):>10.0f}"
            f"{percentile(samples, 0.99):>10.0f}{statistics.fmean(samples):>10.0f}"
        )
    base, away = rows[0][1], rows[2][1]
    print(
        f"\nadded by a cluster-wide miss (owned by a peer, minus local): "
        f"p50 {percentile(away, 0.5) - percentile(base, 0.5):.0f} us, "
        f"p99 {percentile(away, 0.99) - percentile(base, 0.99):.0f} us"
    )
    print(
        f"\na waiter on another member, after the holder's loader returned ({len(waits)} keys): "
        f"p50 {percentile(waits, 0.5):.0f} us, p99 {percentile(waits, 0.99):.0f} us; "
        f"the waiter loaded {waiter_loads} times itself"
    )
    print(f"lease figures of the measuring member: {leases}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
