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
  struct3-packed    msgspec Struct(gc=False): value, expiry ms and hlc packed in one int, meta
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import deque
from typing import Any

from harness import Member, environment, format_table, rss, save

LAYOUTS = ["dict", "shoal.Cache", "float5", "float3", "float3-hlc", "struct6", "struct3-packed"]


def build(layout: str, n: int) -> Any:
    import time

    keys = [f"user:{i:06d}" for i in range(n)]
    values = [f"acct-{i:08d}" for i in range(n)]
    now = time.time()
    hlc0 = int(now * 1000) << 16
    node = 0x1234_5678_9ABC_DEF0
    if layout == "dict":
        return dict(zip(keys, values, strict=True))
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
    elif layout == "struct6":
        import msgspec

        class S6(msgspec.Struct, gc=False):
            key: str
            value: Any
            expires: float
            version: int
            freq: int
            queue: int

        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            table[k] = S6(k, v, now + 3600 + i * 1e-6, ((hlc0 + i) << 64) | node, 0, 0)
    elif layout == "struct3-packed":
        import msgspec

        class S3(msgspec.Struct, gc=False):
            value: Any
            stamp: int
            meta: int

        exp_ms = int((now + 3600) * 1000)
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            table[k] = S3(v, (exp_ms << 64) | (hlc0 + i), 0)
    else:
        raise ValueError(layout)
    wheel.extend(keys)
    queue.extend(keys)
    return table, wheel, queue


def child(layout: str, n: int) -> None:
    before = rss()
    held = build(layout, n)
    print(f"{(rss() - before) / n:.1f}", flush=True)
    del held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", default="")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n)
        return 0
    per_item: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for _ in range(args.rounds):
        for layout in LAYOUTS:
            m = Member("bench/entry_memory.py", "--child", layout, "--n", str(args.n), hello=True, timeout=600)
            per_item[layout].append(float(m.hello))
            m.stop()
    base = statistics.median(per_item["dict"])
    rows = []
    for layout in LAYOUTS:
        xs = per_item[layout]
        mid = statistics.median(xs)
        rows.append([layout, f"{mid:.0f} [{min(xs):.0f}-{max(xs):.0f}]", f"{mid - base:.0f}", f"{mid / base:.2f}x"])
    table = format_table(
        ["layout", "bytes/item, median [min-max]", "over dict", "x dict"],
        rows,
        title=f"Memory of {args.n:,} short strings per entry layout (RSS growth, keys and values included)",
        notes=[
            "Every layout but dict and shoal.Cache also holds one wheel reference and one queue slot per item.",
            "Bars (issue 22): <= 1.6x a plain dict (goal 1.5x).",
        ],
    )
    text = f"{environment()}\n\n{table}"
    print(text)
    save("entry_memory", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
