#!/usr/bin/env python3
"""Member processes for the benchmarks, one role per process, driven by JSON lines (harness.serve).

    python bench/member.py ROLE [options]     (started by harness.Member)

Roles:

``donor``     a shoal Node holding N entries, filled through the public API
              (``Cache.set_many`` in batches of 10,000, on a cache configured as a
              user would: ``--ttl`` and ``--bound``; no peer, so no replication
              traffic; then it waits until the fill is older than the catch-up margin,
              as in a running cluster). A 1 ms asyncio
              timer task runs on the node's loop and records the longest gap between
              its ticks. Prints ``{"address": ...}`` when filled and listening, then
              answers ``{"op": "stall_reset"}``, ``{"op": "stall"}``, ``{"op": "stats"}``
              (EOF on stdin stops it).
``receiver``  a fresh shoal Node seeded with the donor, its cache configured as the
              donor's. Records its RSS before the node exists, starts it, waits for
              ready and prints one JSON line: the wall time at node.start() and at
              ready, warm_boot stats, RSS before, VmHWM, RSS after.
              Then waits for EOF. ``--profile PATH`` runs cProfile on the
              node's loop thread for the boot; ``--profile-donor`` does it on the donor.
``memory``    the memory of N items in one container (``--kind``: a plain dict,
              cachetools.TTLCache, cachebox.VTTLCache, a local shoal.Cache with the
              TTL and bound): RSS after building the keys and values and filling
              it, minus RSS before (keys and values included, as in a member).
``syncobj``   one pysyncobj member with a ``ReplDict``; answers ``fill``, ``len``,
              ``wait_len`` (answers when the dict holds N entries) and ``compact``.
``fleet``     a member of bench/fleet.py's cluster, or a plain peer for the other
              benchmarks (cache ``--cache`` with ``--ttl`` and
              ``--bound``, seeded with ``--seed``): ``peers_up``, ``write`` (``set_many``
              of K keys at a given wall-clock moment), ``wait_held`` (the moment it
              held every key), ``missing``, and ``figures``: the replication figures of
              ``stats()``, members marked down (counted from the node's log) and the
              fewest peers it saw up.

Keys are ``user:%06d``; values (``--shape``) ``acct-%08d`` strings, or small dicts
of four fields as an identity lookup returns (``value(i, "dict")``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import resource
import sys
import threading
import time
from typing import Any

from harness import GcWatch, StepWatch, outbox_drained, reply, rss, serve


def key(i: int) -> str:
    return f"user:{i:06d}"


def value(i: int, shape: str = "str") -> Any:
    if shape == "dict":
        return {"id": i, "name": f"User {i}", "email": f"user{i}@example.com", "active": i % 7 != 0}
    return f"acct-{i:08d}"


def items(start: int, stop: int, shape: str) -> dict[str, Any]:
    return {key(i): value(i, shape) for i in range(start, stop)}


def cache_options(args: argparse.Namespace) -> dict[str, Any]:
    """The cache as a user configures it: ``--ttl 0`` means none, ``--bound 0`` unbounded."""
    return {"ttl": args.ttl or None, "max_entries": args.bound or None}


def node_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--anti-entropy S``: repair rounds every S seconds instead of the default."""
    return {"anti_entropy_interval": args.anti_entropy} if args.anti_entropy else {}


# -- shoal donor ----------------------------------------------------------------------


class Stall:
    """The longest gap between ticks of a 1 ms timer on a loop."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self.reset_at = time.perf_counter()

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gap = now - last
            if gap > self.max_gap:
                self.max_gap = gap
            self.ticks += 1
            last = now

    def reset(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self.reset_at = time.perf_counter()


class ChunkWatch:
    """The longest single chunk of donor work (dump_columns + encode), by wrapping them."""

    def __init__(self) -> None:
        from shoal import warmboot

        self.max = 0.0
        self.chunks = 0
        self._t = 0.0
        columns, encode = warmboot.dump_columns, warmboot.encode

        def timed_columns(*a: Any) -> Any:
            self._t = time.perf_counter()
            return columns(*a)

        def timed_encode(*a: Any) -> Any:
            frame = encode(*a)
            if self._t:
                self.max = max(self.max, time.perf_counter() - self._t)
                self.chunks += 1
                self._t = 0.0
            return frame

        warmboot.dump_columns = timed_columns  # type: ignore[assignment]
        warmboot.encode = timed_encode  # type: ignore[assignment]

    def reset(self) -> None:
        self.max = 0.0
        self.chunks = 0


def on_loop(loop: asyncio.AbstractEventLoop, fn: Any) -> Any:
    done = threading.Event()
    box: list[Any] = []

    def call() -> None:
        box.append(fn())
        done.set()

    loop.call_soon_threadsafe(call)
    done.wait()
    return box[0]


def run_donor(args: argparse.Namespace) -> int:
    from shoal.node import Node

    node = Node(listen="127.0.0.1:0", secret=args.secret, **node_options(args))
    cache = node.cache("c", **cache_options(args))
    node.start()
    node.wait_ready(10)
    t_fill = time.perf_counter()
    step = 10_000
    for start in range(0, args.n, step):
        cache.set_many(items(start, min(args.n, start + step), args.shape))
    fill_s = time.perf_counter() - t_fill
    # A donor in a running cluster wrote its entries long ago: let the fill leave the
    # outbox, then let it age past the catch-up margin, or a receiver would replay the
    # whole fill from the recent-writes log on top of the dump (it would, for real,
    # if it joined right after such a burst).
    outbox_drained(node, "c", poll=0.01)
    try:  # how far back a catch-up reaches: max_clock_skew plus the settle window
        from shoal.replication import SETTLE
        from shoal.validation import DEFAULT_MAX_CLOCK_SKEW

        margin = DEFAULT_MAX_CLOCK_SKEW + SETTLE
    except ImportError:
        margin = 5.0  # older versions: a fixed 5 s
    settle = time.monotonic() + margin + 0.5
    while time.monotonic() < settle:
        time.sleep(0.05)
    loop = node._driver.loop
    stall = Stall()
    ticker = asyncio.run_coroutine_threadsafe(stall.run(), loop)
    gcw, chunks, steps = GcWatch(), ChunkWatch(), StepWatch(sample=args.sample_steps)
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()

    def idle_stall(seconds: float = 1.0) -> dict[str, Any]:
        """The same timer with no dump going on: the machine's own scheduling noise."""
        on_loop(loop, stall.reset)
        time.sleep(seconds)
        return {"max_gap_ms": stall.max_gap * 1000, "ticks": stall.ticks}

    def stall_reset() -> bool:
        on_loop(loop, stall.reset)
        gcw.reset()
        chunks.reset()
        on_loop(loop, steps.reset)
        if prof is not None:
            on_loop(loop, prof.enable)
        return True

    def stalled() -> dict[str, Any]:
        if prof is not None:
            on_loop(loop, prof.disable)
            prof.dump_stats(args.profile)
        served = node.stats()["caches"]["c"]["warm_boot"]
        return {
            "max_gap_ms": stall.max_gap * 1000,
            "ticks": stall.ticks,
            "served": served,
            "max_chunk_ms": chunks.max * 1000,
            "max_step_cpu_ms": steps.max * 1000,
            "max_step": steps.what,
            "max_step_sys_ms": steps.max_sys * 1000,
            "max_step_faults": steps.max_faults,
            "max_step_stacks": steps.max_stacks,
            "chunks": chunks.chunks,
            **gcw.as_dict(),
        }

    hello = {
        "address": node.address,
        "entries": cache.stats()["entries"],
        "fill_s": fill_s,
        "shoal": sys.modules["shoal"].__file__,
    }
    serve(hello, {"idle_stall": idle_stall, "stall_reset": stall_reset, "stall": stalled, "stats": node.stats})
    ticker.cancel()
    node.stop()
    return 0


# -- shoal receiver -------------------------------------------------------------------


def run_receiver(args: argparse.Namespace) -> int:
    from shoal.node import Node

    if args.gc == "off":  # diagnosis only: how much of the boot is the cyclic GC
        gc.disable()
    gcw = GcWatch()
    rss_before = rss()
    node = Node(listen="127.0.0.1:0", seeds=[args.seed], secret=args.secret, **node_options(args))
    node.cache("c", **cache_options(args))
    prof = None
    if args.profile:
        import cProfile

        prof = profiler = cProfile.Profile()
        # The boot runs on the node's loop thread; cProfile profiles the thread that
        # enables it, so enable it from the loop as its first callback.
        orig_open = node._driver.open

        async def profiled_open() -> None:
            profiler.enable()
            await orig_open()

        node._driver.open = profiled_open  # type: ignore[method-assign]
    t_start, cpu_start, times_start = time.time(), time.process_time(), os.times()
    faults_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    node.start()
    ok = node.wait_ready(args.timeout)
    t_ready, cpu_ready, times_ready = time.time(), time.process_time(), os.times()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_start
    hwm = rss(field="VmHWM")
    rss_after = rss()
    if prof is not None:
        on_loop(node._driver.loop, prof.disable)
        prof.dump_stats(args.profile)
    stats = node.stats()["caches"]["c"]
    serve(
        {
            "ready": ok,
            "t_node_start": t_start,
            "t_ready": t_ready,
            "cpu_s": cpu_ready - cpu_start,
            "user_s": times_ready.user - times_start.user,
            "sys_s": times_ready.system - times_start.system,
            "page_faults": faults,
            "warm_boot": stats["warm_boot"],
            "entries": stats["entries"],
            "rss_before": rss_before,
            "hwm": hwm,
            "rss_after": rss_after,
            **gcw.as_dict(),
        },
        {},
    )
    node.stop()
    return 0


# -- loaded-entries memory --------------------------------------------------------------


def run_memory(args: argparse.Namespace) -> int:
    rss_before = rss()
    n, shape, kind = args.n, args.shape, args.kind
    ttl = float(args.ttl or 3600)
    if kind == "dict":
        box: Any = {}
        for start in range(0, n, 10_000):
            box.update(items(start, min(n, start + 10_000), shape))
    elif kind == "cachetools":
        import cachetools

        box = cachetools.TTLCache(maxsize=args.bound or n, ttl=ttl)
        for start in range(0, n, 10_000):
            box.update(items(start, min(n, start + 10_000), shape))
    elif kind == "cachebox":
        import cachebox

        box = cachebox.VTTLCache(args.bound or n)
        for start in range(0, n, 10_000):
            for k, v in items(start, min(n, start + 10_000), shape).items():
                box.insert(k, v, ttl)
    else:
        from shoal import Cache

        box = Cache(**cache_options(args))
        for start in range(0, n, 10_000):
            box.set_many(items(start, min(n, start + 10_000), shape))
    rss_after = rss()
    reply({"rss_before": rss_before, "rss_after": rss_after, "entries": len(box)})
    return 0


# -- pysyncobj member -----------------------------------------------------------------


def run_syncobj(args: argparse.Namespace) -> int:
    from pysyncobj import SyncObj, SyncObjConf
    from pysyncobj.batteries import ReplDict

    rss_before = rss()
    t_start = time.time()
    d = ReplDict()
    conf = SyncObjConf(
        dynamicMembershipChange=False,
        # No compaction during the fill (it would pickle the whole dict again and
        # again); the bench forces one afterwards ("compact"), so a new member gets
        # a full dump (the analogue of a Redis full sync), not a log replay.
        logCompactionMinEntries=1 << 40,
        logCompactionMinTime=1 << 30,
        appendEntriesUseBatch=True,
        # The default 5 s between connection attempts would dominate the join: a
        # member only dials the peers it "should" (by address order), the others wait.
        connectionRetryTime=0.05,
    )
    obj = SyncObj(args.self_addr, [p for p in args.partners.split(",") if p], consumers=[d], conf=conf)

    def wait_leader(timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while obj._getLeader() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"leader": str(obj._getLeader())}

    def fill(n: int, batch: int = 5000) -> dict[str, Any]:
        """ReplDict.update in batches: one raft entry per batch keeps the fill quick."""
        t0 = time.perf_counter()
        pending: list[threading.Event] = []
        for start in range(0, n, batch):
            ev = threading.Event()
            pending.append(ev)
            part = {key(i): value(i) for i in range(start, min(n, start + batch))}
            d.update(part, callback=lambda res, err, ev=ev: ev.set())
            if len(pending) >= 16:
                pending.pop(0).wait(60)
        for ev in pending:
            ev.wait(60)
        deadline = time.monotonic() + 60
        while len(d) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"len": len(d), "seconds": time.perf_counter() - t0}

    def wait_len(n: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while len(d) < n and time.monotonic() < deadline:
            time.sleep(0.002)
        t_done = time.time()
        hwm, after = rss(field="VmHWM"), rss()
        return {
            "len": len(d),
            "t_start": t_start,
            "t_done": t_done,
            "rss_before": rss_before,
            "hwm": hwm,
            "rss_after": after,
        }

    def compact(timeout: float = 60) -> dict[str, Any]:
        before = obj.getStatus()["log_len"]
        obj.forceLogCompaction()
        deadline = time.monotonic() + timeout
        while obj.getStatus()["log_len"] >= before and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"log_len_before": before, "log_len": obj.getStatus()["log_len"]}

    handlers = {"wait_leader": wait_leader, "fill": fill, "wait_len": wait_len, "compact": compact, "len": d.__len__}
    serve({"started": True}, handlers)
    obj.destroy()
    os._exit(0)  # pysyncobj's threads can linger; the bench only needs the process gone


# -- a fleet member ---------------------------------------------------------------------


class Downs(logging.Handler):
    """Counts the node's "member ... down" log lines: every time this member marked a peer down."""

    PATTERN = re.compile(r"^member [0-9a-f]+ down")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.PATTERN.match(record.getMessage()):
            self.count += 1


def run_fleet(args: argparse.Namespace) -> int:
    from shoal import Node

    downs = Downs()
    shoal_log = logging.getLogger("shoal")
    shoal_log.setLevel(logging.INFO)
    shoal_log.addHandler(downs)
    shoal_log.propagate = False  # counted, not printed: forty members' logs would drown the output
    node = Node(listen="127.0.0.1:0", seeds=[args.seed] if args.seed else [], secret=args.secret or None)
    cache = node.cache(args.cache, **cache_options(args))
    node.start()
    watch: dict[str, Any] = {"min_up": None, "watching": False}

    def peers_up() -> int:
        return sum(1 for m in node.members() if m["state"] == "up" and args.cache in m["caches"])

    def watch_peers() -> None:
        """The fewest peers this member saw up while the writes spread (sampled every 0.1 s)."""
        while watch["watching"]:
            up = peers_up()
            watch["min_up"] = up if watch["min_up"] is None else min(watch["min_up"], up)
            time.sleep(0.1)

    def write(at: float, prefix: str, k: int) -> list[float]:
        """``set_many`` of K keys at the wall-clock moment ``at``: [when it began, when it returned]."""
        batch: dict[str | bytes | int, Any] = {f"{prefix}:{i}": value(i) for i in range(k)}
        watch["watching"] = True
        threading.Thread(target=watch_peers, daemon=True).start()
        time.sleep(max(0.0, at - time.time()))
        began = time.time()
        cache.set_many(batch)
        return [began, time.time()]

    def wait_held(total: int, deadline: float) -> float | None:
        """The wall-clock moment this member held ``total`` entries (polled every 10 ms); None at the deadline."""
        while len(cache) < total:
            if time.time() > deadline:
                return None
            time.sleep(0.01)
        return time.time()

    def missing(prefixes: list[str], k: int) -> int:
        return sum(1 for p in prefixes for i in range(k) if f"{p}:{i}" not in cache)

    def figures() -> dict[str, Any]:
        watch["watching"] = False
        stats = node.stats()
        figures = {k: v for k, v in stats["caches"][args.cache].items() if isinstance(v, (int, float)) or v is None}
        return {**figures, "downs": downs.count, "min_up": watch["min_up"], "members_up": stats["members_up"]}

    handlers: dict[str, Any] = {
        "peers_up": peers_up,
        "write": write,
        "wait_held": wait_held,
        "missing": missing,
        "figures": figures,
    }
    serve({"address": node.address}, handlers)
    node.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["donor", "receiver", "memory", "syncobj", "fleet"])
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--seed", default="")
    parser.add_argument("--shape", choices=["str", "dict"], default="str")
    parser.add_argument("--ttl", type=float, default=3600.0, help="cache ttl in seconds; 0: none")
    parser.add_argument("--bound", type=int, default=0, help="cache max_entries; 0: unbounded")
    parser.add_argument("--kind", choices=["dict", "cachetools", "cachebox", "shoal"], default="dict")
    parser.add_argument("--secret", default="bench-cluster-secret", help="fleet: '' for none (loopback)")
    parser.add_argument("--cache", default="c", help="fleet: the cache's name")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--profile", default="")
    parser.add_argument("--sample-steps", action="store_true", help="donor: sample the stacks of long loop steps")
    parser.add_argument("--gc", choices=["on", "off"], default="on", help="receiver: off disables the cyclic GC")
    parser.add_argument("--anti-entropy", type=float, default=0.0, help="donor/receiver: repair interval (s)")
    parser.add_argument("--self-addr", default="")
    parser.add_argument("--partners", default="")
    args = parser.parse_args()
    roles = {"donor": run_donor, "receiver": run_receiver, "memory": run_memory, "syncobj": run_syncobj}
    return {**roles, "fleet": run_fleet}[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
