#!/usr/bin/env python3
"""What an entry could cost: bytes per item of 1M short strings in candidate layouts, vs a plain dict.

    python3 run.py bench entry_memory [--n 1000000] [--rounds 3]

Each layout is built in a fresh process (RSS after minus RSS before, keys and values
included, as ``bench/boot.py`` measures members): the same 1M keys ``user:%06d`` and
values ``acct-%08d``, an expiry one hour ahead and a 128-bit version per item
(``hlc << 64 | node``, one writer). Besides the table itself every layout pays what
shoal keeps per entry today: one wheel reference (a list slot) and one queue slot of the
eviction policy (a deque slot). Median [min-max] over ``--rounds`` processes.

Layouts:
  dict              key -> value, nothing else (the bar's denominator)
  shoal.Cache       a local shoal.Cache(ttl=3600, max_entries=N) filled with set_many (today)
  float5            today's Entry: a float subclass (the expiry) with 5 slots (key, value,
                    version, freq, queue) and the 128-bit version as its own int
  float3            a float subclass with 3 slots (value, version, freq and queue packed
                    in one small int); the key only in the dict
  float3-hlc        float3 with the version's hlc only (a 64-bit int) and the node as an
                    index into a per-store table (in the packed small int)
  struct6           msgspec Struct(gc=False): key, value, expires (a float), version, freq, queue
  struct6-ms        struct6 with expiries to the millisecond, one float object per millisecond
                    (shared by the entries written in it: 10 here, as at 10k writes/s)
  struct3-packed    msgspec Struct(gc=False): value, expiry ms and hlc packed in one int, meta
  columns           no object per entry: the dict maps key -> slot number, and the slot
                    indexes columns beside it: values and keys (lists), expiry (array 'd'),
                    hlc and node id (array 'Q'), eviction state (array 'B')
  complex2          a complex subclass: the expiry its real part, its slot in columns beside the
                    table its imaginary part; two slots (value, freq), the key only in the dict;
                    the columns hold the hlc (array 'Q'), the writer's index in a per-store table
                    of node ids (array 'H') and the eviction queue (array 'B')
  complex3          complex2 with the key kept in the entry (a third slot)
  split             the values in a dict of their own (key -> value, as the bar's dict) and
                    the entry in a second dict beside it (key -> a float subclass: version,
                    freq, queue); its get reads the value alone, trusting one horizon
                    before which nothing held expires, and queues its eviction count

Each child then times a hit ``get`` on its own structure (200,000 random keys, equal but
distinct str objects, the entry's expiry checked and its eviction count bumped as shoal's
``get`` does; median of 5 passes): what the layout costs the read path, in the same heap.
And a get's latency: the layout built again with every value another key (one random
cycle), each get's key the value the last one returned (``bench/local.py``'s 1c).
``cachebox`` (a VTTLCache with the same TTL) is the get bar's reference. And what it costs
to fill (per item, with the cyclic collector's share: an untracked entry is never walked)
and to overwrite 200,000 random keys as ``Store.write`` does, a new entry for the old.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import deque
from typing import Any

from harness import GcWatch, Member, environment, format_table, rss, save, successors, t_chain

LAYOUTS = [
    "dict",
    "cachebox",
    "shoal.Cache",
    "float5",
    "float3",
    "float3-hlc",
    "struct6",
    "struct6-ms",
    "struct3-packed",
    "columns",
    "split",
    "complex2",
    "complex3",
]


def build(layout: str, n: int, values: list[str] | None = None) -> Any:
    import time

    keys = [f"user:{i:06d}" for i in range(n)]
    if values is None:
        values = [f"acct-{i:08d}" for i in range(n)]
    now = time.time()
    hlc0 = int(now * 1000) << 16
    node = 0x1234_5678_9ABC_DEF0
    if layout == "dict":
        return dict(zip(keys, values, strict=True))
    if layout == "cachebox":
        import cachebox

        box: Any = cachebox.VTTLCache(n)
        for k, v in zip(keys, values, strict=True):
            box.insert(k, v, 3600.0)
        return box
    if layout == "shoal.Cache":
        from shoal import Cache

        cache = Cache(ttl=3600, max_entries=n)
        for start in range(0, n, 10_000):
            cache.set_many(dict(zip(keys[start : start + 10_000], values[start : start + 10_000], strict=True)))
        return cache
    wheel: list[str] = []
    queue: deque[str] = deque()
    table: dict[str, Any] = {}
    if layout == "float5":

        class E5(float):
            __slots__ = ("key", "value", "version", "freq", "queue")

        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            e = float.__new__(E5, now + 3600)
            e.key, e.value, e.version, e.freq, e.queue = k, v, ((hlc0 + i) << 64) | node, 0, 0
            table[k] = e
    elif layout in ("float3", "float3-hlc"):

        class E3(float):
            __slots__ = ("value", "version", "meta")

        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            e = float.__new__(E3, now + 3600)
            e.value, e.meta = v, 0
            e.version = (hlc0 + i) if layout == "float3-hlc" else ((hlc0 + i) << 64) | node
            table[k] = e
    elif layout in ("struct6", "struct6-ms"):
        import msgspec

        class S6(msgspec.Struct, gc=False):
            key: str
            value: Any
            expires: float
            version: int
            freq: int
            queue: int

        shared: dict[float, float] = {}
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            exp = now + 3600 + i * 1e-6
            if layout == "struct6-ms":
                exp = shared.setdefault(round(now + 3600 + i * 1e-4, 3), round(now + 3600 + i * 1e-4, 3))
            table[k] = S6(k, v, exp, ((hlc0 + i) << 64) | node, 0, 0)
    elif layout == "struct3-packed":
        import msgspec

        class S3(msgspec.Struct, gc=False):
            value: Any
            stamp: int
            meta: int

        exp_ms = int((now + 3600) * 1000)
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            table[k] = S3(v, (exp_ms << 64) | (hlc0 + i), 0)
    elif layout == "columns":
        from array import array

        for i, k in enumerate(keys):
            table[k] = i
        columns = {
            "keys": list(keys),
            "values": list(values),
            "expires": array("d", [now + 3600]) * n,
            "hlcs": array("Q", range(hlc0, hlc0 + n)),
            "nodes": array("Q", [node]) * n,
            "meta": array("B", bytes(n)),
        }
        wheel.extend(keys)
        queue.extend(keys)
        return table, wheel, queue, columns
    elif layout in ("complex2", "complex3"):
        from array import array

        class C2(complex):
            __slots__ = ("value", "freq")

        class C3(complex):
            __slots__ = ("key", "value", "freq")

        expires = now + 3600
        if layout == "complex2":
            for i, (k, v) in enumerate(zip(keys, values, strict=True)):
                e = complex.__new__(C2, expires, i)
                e.value, e.freq = v, 0
                table[k] = e
        else:
            for i, (k, v) in enumerate(zip(keys, values, strict=True)):
                e = complex.__new__(C3, expires, i)
                e.key, e.value, e.freq = k, v, 0
                table[k] = e
        columns = {
            "hlcs": array("Q", range(hlc0, hlc0 + n)),
            "nodes": array("H", bytes(2 * n)),
            "queues": array("B", bytes(n)),
        }
        wheel.extend(keys)
        queue.extend(keys)
        return table, wheel, queue, columns
    elif layout == "split":

        class E3s(float):
            __slots__ = ("version", "freq", "queue")

        for i, k in enumerate(keys):
            e = float.__new__(E3s, now + 3600)
            e.version, e.freq, e.queue = ((hlc0 + i) << 64) | node, 0, 0
            table[k] = e
        wheel.extend(keys)
        queue.extend(keys)
        return table, wheel, queue, dict(zip(keys, values, strict=True))
    else:
        raise ValueError(layout)
    wheel.extend(keys)
    queue.extend(keys)
    return table, wheel, queue


def getter(layout: str, held: Any) -> Any:
    """A hit ``get`` for the layout: the value if the entry is live, its eviction count bumped."""
    import time

    wall = time.time
    if layout in ("dict", "cachebox", "shoal.Cache"):
        return held.get
    table = held[0]
    lookup = table.get
    if layout == "columns":
        columns = held[3]
        expires, values, meta = columns["expires"], columns["values"], columns["meta"]

        def get_columns(key: str, default: Any = None) -> Any:
            slot = lookup(key)
            if slot is not None and expires[slot] > wall():
                if meta[slot] < 3:
                    meta[slot] += 1
                return values[slot]
            return default

        return get_columns
    if layout == "split":
        # The values in a dict of their own and the entry beside them: a get reads the value only,
        # trusting one horizon (the sweep removes what expires before it, a tick early), and
        # leaves its eviction count to a lossy buffer the tick drains.
        read = held[3].get
        horizon = [wall() + 60.0]
        record = deque(maxlen=4096).append

        def get_split(key: str, default: Any = None) -> Any:
            value = read(key)
            if value is not None and wall() < horizon[0]:
                record(key)
                return value
            return default

        return get_split
    if layout in ("struct6", "struct6-ms"):

        def get_struct6(key: str, default: Any = None) -> Any:
            entry = lookup(key)
            if entry is not None and entry.expires > wall():
                if entry.freq < 3:
                    entry.freq += 1
                return entry.value
            return default

        return get_struct6
    if layout == "struct3-packed":

        def get_struct3(key: str, default: Any = None) -> Any:
            entry = lookup(key)
            if entry is not None and entry.stamp >> 64 > wall() * 1000.0:
                if entry.meta < 3:
                    entry.meta += 1
                return entry.value
            return default

        return get_struct3
    if layout in ("complex2", "complex3"):

        def get_complex(key: str, default: Any = None) -> Any:
            entry = lookup(key)
            if entry is not None and entry.real > wall():
                if entry.freq < 3:
                    entry.freq += 1
                return entry.value
            return default

        return get_complex
    if layout == "float5":

        def get_float5(key: str, default: Any = None) -> Any:
            entry = lookup(key)
            if entry is not None and entry > wall():
                if entry.freq < 3:
                    entry.freq += 1
                return entry.value
            return default

        return get_float5

    def get_float3(key: str, default: Any = None) -> Any:
        entry = lookup(key)
        if entry is not None and entry > wall():
            if entry.meta < 3:
                entry.meta += 1
            return entry.value
        return default

    return get_float3


def writer(layout: str, held: Any) -> Any:
    """A write as ``Store.write`` makes one: a new entry in place of the key's old one, which is freed
    (its eviction state passed on); ``shoal.Cache.set`` itself for shoal. None for the other layouts."""
    import time

    if layout == "shoal.Cache":
        return lambda key, i: held.set(key, "acct-new")
    if layout not in ("float5", "struct6", "struct6-ms"):
        return None
    table = held[0]
    cls = type(next(iter(table.values())))
    hlc0, node, wall = (int(time.time() * 1000) + 10_000) << 16, 0x1234_5678_9ABC_DEF0, time.time
    if layout == "float5":

        def write_float(key: str, i: int) -> None:
            old = table[key]
            entry = float.__new__(cls, wall() + 3600)
            entry.key, entry.value, entry.version = key, "acct-new", ((hlc0 + i) << 64) | node
            entry.freq, entry.queue = old.freq, old.queue
            table[key] = entry

        return write_float
    last = [0.0]  # the millisecond's expiry object, shared by the writes made in it

    def write_struct(key: str, i: int) -> None:
        old = table[key]
        expires = wall() + 3600
        if layout == "struct6-ms":
            expires = round(expires, 3)
            if expires == last[0]:
                expires = last[0]
            else:
                last[0] = expires
        table[key] = cls(key, "acct-new", expires, ((hlc0 + i) << 64) | node, old.freq, old.queue)

    return write_struct


def child(layout: str, n: int) -> None:
    import json
    import random
    import time

    collector = GcWatch()  # the cyclic collector's time while filling
    before = rss()
    t0 = time.perf_counter_ns()
    held = build(layout, n)
    fill_ns = (time.perf_counter_ns() - t0) / n
    collector.close()
    per_item = (rss() - before) / n
    get = getter(layout, held)
    rng = random.Random(7)
    probes = [f"user:{rng.randrange(n):06d}" for _ in range(200_000)]
    assert all(get(k) is not None for k in probes[:1000])
    passes = []
    for _ in range(5):
        t0 = time.perf_counter()
        for k in probes:
            get(k)
        passes.append((time.perf_counter() - t0) / len(probes) * 1e9)
    write = writer(layout, held)
    writes = []
    if write is not None:
        for r in range(3):
            t0 = time.perf_counter_ns()
            for i, k in enumerate(probes):
                write(k, r * len(probes) + i)
            writes.append((time.perf_counter_ns() - t0) / len(probes))
    del held, get, write

    # The latency: the same layout, built again with each key's value another key (one random
    # cycle through all), and each get's key the value the last one returned.
    held = build(layout, n, [f"user:{j:06d}" for j in successors(n, rng)])
    get = getter(layout, held)
    chain = []
    key = "user:000000"
    for _ in range(5):
        took, key = t_chain(get, key, len(probes))
        chain.append(took / len(probes))
        if key is None:
            raise AssertionError(f"{layout}: a get in the chain missed")
    result = {
        "bytes": per_item,
        "get_ns": statistics.median(passes),
        "chain_ns": statistics.median(chain),
        "write_ns": statistics.median(writes) if writes else None,
        "fill_ns": fill_ns,
        "fill_gc_ns": collector.total * 1e9 / n,
    }
    print(json.dumps(result), flush=True)
    del held


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.0f} [{min(xs):.0f}-{max(xs):.0f}]" if xs else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", default="")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="a subset, comma-separated")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n)
        return 0
    layouts = ["dict", "cachebox"] + [x for x in args.layouts.split(",") if x not in ("dict", "cachebox")]
    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        parser.error(f"unknown layouts: {', '.join(sorted(unknown))}")
    per_item: dict[str, list[float]] = {layout: [] for layout in layouts}
    get_ns: dict[str, list[float]] = {layout: [] for layout in layouts}
    chain_ns: dict[str, list[float]] = {layout: [] for layout in layouts}
    write_ns: dict[str, list[float]] = {layout: [] for layout in layouts}
    fill_ns: dict[str, list[float]] = {layout: [] for layout in layouts}
    fill_gc_ns: dict[str, list[float]] = {layout: [] for layout in layouts}
    for _ in range(args.rounds):
        for layout in layouts:
            m = Member("bench/entry_memory.py", "--child", layout, "--n", str(args.n), hello=True, timeout=600)
            per_item[layout].append(float(m.hello["bytes"]))
            get_ns[layout].append(float(m.hello["get_ns"]))
            chain_ns[layout].append(float(m.hello["chain_ns"]))
            if m.hello.get("write_ns") is not None:
                write_ns[layout].append(float(m.hello["write_ns"]))
            fill_ns[layout].append(float(m.hello["fill_ns"]))
            fill_gc_ns[layout].append(float(m.hello["fill_gc_ns"]))
            m.stop()
    base = statistics.median(per_item["dict"])
    box_chain = statistics.median(chain_ns["cachebox"])
    rows = []
    for layout in layouts:
        xs, gs, cs = per_item[layout], get_ns[layout], chain_ns[layout]
        mid = statistics.median(xs)
        rows.append(
            [
                layout,
                f"{mid:.0f} [{min(xs):.0f}-{max(xs):.0f}]",
                f"{mid - base:.0f}",
                f"{mid / base:.2f}x",
                f"{statistics.median(gs):.0f} [{min(gs):.0f}-{max(gs):.0f}]",
                f"{statistics.median(cs):.0f} [{min(cs):.0f}-{max(cs):.0f}]",
                f"{statistics.median(cs) / box_chain:.2f}x",
                _spread(fill_ns[layout]),
                _spread(fill_gc_ns[layout]),
                _spread(write_ns[layout]),
            ]
        )
    table = format_table(
        [
            "layout",
            "bytes/item, median [min-max]",
            "over dict",
            "x dict",
            "get ns (throughput)",
            "get ns (latency)",
            "latency x cachebox",
            "fill ns",
            "of it GC ns",
            "overwrite ns",
        ],
        rows,
        title=f"Memory of {args.n:,} short strings per entry layout (RSS growth, keys and values included)",
        notes=[
            "Every layout but dict, cachebox and shoal.Cache also holds one wheel reference and one queue slot",
            "per item.",
            "get ns (throughput): 200,000 random keys in a loop, so the CPU overlaps one get's misses with the next.",
            "get ns (latency): the layout built again with each value another key, in one random cycle; each get's",
            "key the value the last one returned, one dependent chain at a time (bench/local.py's section 1c).",
            "fill ns: building the layout, per item (keys and values made first); of it GC ns: the cyclic",
            "collector's time meanwhile (an untracked entry is never walked). overwrite ns: 200,000 overwrites",
            "of random keys, each a new entry in place of the old, freed, as Store.write makes them (shoal.Cache:",
            "its set); median of 3 passes, only for the layouts with a writer here.",
            "Bars (issue 22): memory <= 1.6x a plain dict (goal 1.5x); get <= 2x cachebox.",
        ],
    )
    text = f"{environment()}\n\n{table}"
    print(text)
    save("entry_memory", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
