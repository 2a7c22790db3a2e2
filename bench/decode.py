#!/usr/bin/env python3
"""A warm boot's receiving side, per entry: decoding a dump chunk and building its entries.

    python3 run.py bench decode [--rounds 9] [--chunks 50]

One dump chunk as a donor sends it (2,000 entries, keys ``user:%06d``, str values, ttl
3600; ``warmboot.dump_columns`` and ``wire.encode``), then each step of the receiver's
work on it, timed alone over ``--chunks`` chunks per round: ns per entry, median
[min-max] over the rounds, all in one process and one run.

- decode: today's ``wire._decode`` (msgpack with the per-kind bounds) beside msgspec's
  msgpack ``Decoder`` typed as the chunk's array (the same bytes: msgspec reads what
  msgpack-python wrote), and untyped.
- entries: ``Store.load``'s construction of the entries, entry by entry (``_new_entry``
  mapped over the columns: today's) and, as a candidate, a column at a time (``map``
  over the slots' setters, no Python frame per entry: measured slower, not adopted).
- load: ``Store.load`` of the chunk into an empty bounded store, whole.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import Any

import msgspec
from harness import environment, format_table, save

from shoal.messages import DumpChunk
from shoal.store import Entry, Store, _new_entry
from shoal.warmboot import columns_from_wire, dump_columns
from shoal.wire import _decode, encode

N = 2000
_SETTERS = [Entry.__dict__[name].__set__ for name in ("key", "value", "version", "freq", "queue")]


def new_entries(keys: list[Any], values: list[Any], expires: list[float], versions: list[int]) -> list[Entry]:
    """The candidate: entries built a column at a time, ``map`` over the slots' setters (no Python frame)."""
    entries = list(map(float.__new__, repeat(Entry, len(expires)), expires))
    fill = deque(maxlen=0).extend
    zero = repeat(0)
    for setter, column in zip(_SETTERS, (keys, values, versions, zero, zero), strict=True):
        fill(map(setter, entries, column))
    return entries


def chunk_body(now: float) -> bytearray:
    entries = [
        Entry(f"user:{i:06d}", f"acct-{i:08d}", now + 3600, (((int(now * 1000) << 16) + i) << 64) | 0x1234)
        for i in range(N)
    ]
    frame = encode(DumpChunk("c", 1, *dump_columns(entries, None, now), True), 16 << 20)
    return bytearray(frame[4:])


def timed(fn: Callable[[], Any], chunks: int, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(chunks):
            fn()
        out.append((time.perf_counter() - t0) / chunks / N * 1e9)
    return out


def cell(xs: list[float]) -> str:
    return f"{statistics.median(xs):.0f} [{min(xs):.0f}-{max(xs):.0f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--chunks", type=int, default=50)
    args = parser.parse_args()
    now = time.time()
    body = chunk_body(now)
    typed = msgspec.msgpack.Decoder(tuple[int, str, int, list[str], list[str], list[float], list[int], list[int], bool])
    untyped = msgspec.msgpack.Decoder()
    msg = _decode(body)
    assert isinstance(msg, DumpChunk)
    assert list(typed.decode(body)[3:8]) == [msg.keys, msg.values, msg.expires, msg.hlcs, msg.nodes]
    keys, values, expires, versions = columns_from_wire(msg)

    def load() -> None:
        Store(N).load(keys, values, expires, versions, now)

    cases = [
        ("decode", "wire._decode (msgpack, bounded): today", lambda: _decode(body)),
        ("decode", "msgspec Decoder, typed chunk array", lambda: typed.decode(body)),
        ("decode", "msgspec Decoder, untyped", lambda: untyped.decode(body)),
        ("check", "warmboot.columns_from_wire", lambda: columns_from_wire(msg)),
        ("entries", "map(_new_entry, ...): today", lambda: list(map(_new_entry, keys, values, expires, versions))),
        (
            "entries",
            "a column at a time (slot setters): candidate",
            lambda: new_entries(keys, values, expires, versions),
        ),
        ("load", "Store.load of the chunk (bounded store)", load),
    ]
    samples: dict[str, list[float]] = {label: [] for _, label, _ in cases}
    for _ in range(args.rounds):  # round-robin: a noisy moment hits every case
        for _, label, fn in cases:
            samples[label] += timed(fn, args.chunks, 1)
    rows: list[list[object] | None] = []
    last = ""
    for step, label, _ in cases:
        if last and step != last:
            rows.append(None)
        rows.append([step, label, cell(samples[label])])
        last = step
    table = format_table(
        ["step", "how", "ns/entry, median [min-max]"],
        rows,
        title=f"Receiving a dump chunk of {N:,} entries (str values, ttl 3600): "
        f"{args.rounds} rounds of {args.chunks} chunks",
        notes=["All in one process, one run; the machine is shared (compare rows, not runs)."],
    )
    text = f"{environment()}\n\n{table}"
    print(text)
    save("boot_decode", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
