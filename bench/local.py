#!/usr/bin/env python3
"""Local speed and eviction hit ratio: shoal.Cache side by side with its peers.

    PYTHONPATH=src python bench/local.py [--quick] [--json PATH] [--no-redis]

1. ns/op for get-hit (100k random keys, and 1k hot keys), set (a short string value,
   and a small dict of four fields as an identity lookup returns) and fetch-hit, for
   ``shoal.Cache`` (local, and hosted by a Node with one peer), a plain ``dict``,
   ``cachetools.TTLCache``, ``cachebox.VTTLCache`` and redis-py against a private
   ``redis-server`` on loopback (when installed). Every cache has a TTL of 3600 s
   and a bound (``max_entries``), as users configure them, and is filled through
   its public API; a ``shoal.Cache`` with neither is a second line, for comparison.
1b. A get's steps, timed one by one; 1c. a get's latency (a chain of dependent gets, as
   in a request) beside table 1's throughput.
2. The bars of issue 15 for ``get``/``set``, as ratios from this same run.
3. Hit ratios of S3-FIFO (shoal's policy) against LRU on a Zipf(0.9) trace, with
   and without a one-off scan, through the real ``shoal.Cache`` and through a
   small simulator over ``shoal.eviction`` policy objects.

Timing: every measurement is a plain ``for`` loop over a pre-generated random key
sequence, run several rounds (round-robin across implementations, so a noisy
moment on a shared machine hits them all); the table shows the median round and
the bars use medians, with the min-max range of the rounds beside. Nothing is
subtracted: the empty-loop cost is printed as a row instead. The cyclic GC stays
on, as in a service.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import cachebox
import cachetools
from harness import (
    Cleanup,
    GcWatch,
    Member,
    RedisServer,
    format_table,
    median,
    ns,
    outbox_drained,
    pct,
    ratio,
    redis_binary,
    redis_version,
    successors,
    t_chain,
)

import shoal
from shoal.eviction import LRU, S3FIFO, Policy

perf_counter_ns = time.perf_counter_ns

TTL = 3600
MAX_ENTRIES = 1_000_000
ZIPF_S = 0.9

# Bars of issue 15 for the local cache.
BAR_GET_VS_CACHEBOX = 2.0  # shoal get <= 2x cachebox.VTTLCache.get (aim: 1.5x)
BAR_GET_VS_CACHETOOLS = 4.0  # shoal get >= 4x faster than cachetools.TTLCache
BAR_SET_NS = 3000.0  # set on a clustered cache <= 3 us
BAR_SET_VS_CACHEBOX = 10.0  # ... and <= 10x cachebox.VTTLCache.insert


@dataclass(frozen=True)
class Sizes:
    keys: int  # entries held by each cache in the micro-benchmarks
    hot: int  # distinct keys in the hot-key sequence
    ops: int  # operations per round, in-process caches
    redis_ops: int  # operations per round, redis (each is a loopback round trip)
    rounds: int  # rounds of the set and redis cases (the slow ones)
    get_rounds: int  # rounds of the in-process get/fetch cases (cheap, memory-bound, noisiest)
    trace_keys: int  # distinct keys of the Zipf trace
    requests: int  # requests in the Zipf trace
    caps: tuple[int, ...]  # cache capacities to replay the traces at
    scan: int  # one-off scan keys inserted in the middle of the trace


FULL = Sizes(100_000, 1_000, 200_000, 5_000, 5, 9, 100_000, 1_000_000, (10_000, 1_000), 50_000)
QUICK = Sizes(10_000, 1_000, 20_000, 1_000, 2, 3, 10_000, 100_000, (1_000, 100), 5_000)


def key_of(i: int) -> str:
    return f"user:{i}"


def value_of(i: int) -> str:
    return f"acct-{i:08d}"


def record_of(i: int) -> dict[str, Any]:
    """A small dict, as an identity lookup returns."""
    return {"id": i, "name": f"User {i}", "email": f"user{i}@example.com", "active": i % 7 != 0}


def load(key: str) -> str:
    """The loader fetch-hit never calls (every key is present)."""
    return "acct-" + key[5:].rjust(8, "0")


# -- timed loops -----------------------------------------------------------------
# Each returns the elapsed ns of one pass. Methods are bound before the clock
# starts so the loop body is the call a caller would write, nothing more.


def t_empty(keys: list[str]) -> int:
    t0 = perf_counter_ns()
    for _k in keys:
        pass
    return perf_counter_ns() - t0


def t_empty_pairs(keys: list[str], values: list[str]) -> int:
    t0 = perf_counter_ns()
    for _k, _v in zip(keys, values, strict=True):
        pass
    return perf_counter_ns() - t0


def t_get(get: Callable[[str], Any], keys: list[str]) -> int:
    t0 = perf_counter_ns()
    for k in keys:
        get(k)
    return perf_counter_ns() - t0


def t_call_set(set_: Callable[[str, str], Any], keys: list[str], values: list[str]) -> int:
    t0 = perf_counter_ns()
    for k, v in zip(keys, values, strict=True):
        set_(k, v)
    return perf_counter_ns() - t0


def t_call_set_drained(
    set_: Callable[[str, str], Any], keys: list[str], values: list[str], drained: Callable[[], None]
) -> int:
    """A clustered set's full cost: the sets, then until the node's loop has taken every op
    off the outbox. Otherwise the flush of one round runs on into the cases after it (each
    paying for the GIL the loop takes) and this one is timed short."""
    t0 = perf_counter_ns()
    for k, v in zip(keys, values, strict=True):
        set_(k, v)
    drained()
    return perf_counter_ns() - t0


def t_item_set(cache: Any, keys: list[str], values: list[str]) -> int:
    t0 = perf_counter_ns()
    for k, v in zip(keys, values, strict=True):
        cache[k] = v
    return perf_counter_ns() - t0


def t_insert_ttl(insert: Callable[[str, str, float], Any], keys: list[str], values: list[str]) -> int:
    ttl = float(TTL)
    t0 = perf_counter_ns()
    for k, v in zip(keys, values, strict=True):
        insert(k, v, ttl)
    return perf_counter_ns() - t0


def t_redis_set(set_: Callable[..., Any], keys: list[str], values: list[str]) -> int:
    t0 = perf_counter_ns()
    for k, v in zip(keys, values, strict=True):
        set_(k, v, ex=TTL)
    return perf_counter_ns() - t0


def t_shoal_fetch(fetch: Callable[..., Any], keys: list[str]) -> int:
    loader = load
    t0 = perf_counter_ns()
    for k in keys:
        fetch(k, loader)
    return perf_counter_ns() - t0


def t_get_or_load_item(cache: Any, keys: list[str]) -> int:
    """cachetools ``cached``-style: look up, load and store on a miss."""
    get = cache.get
    loader = load
    t0 = perf_counter_ns()
    for k in keys:
        v = get(k)
        if v is None:
            v = loader(k)
            cache[k] = v
    return perf_counter_ns() - t0


def t_get_or_load_insert(cache: Any, keys: list[str]) -> int:
    get = cache.get
    insert = cache.insert
    loader = load
    ttl = float(TTL)
    t0 = perf_counter_ns()
    for k in keys:
        v = get(k)
        if v is None:
            v = loader(k)
            insert(k, v, ttl)
    return perf_counter_ns() - t0


def t_get_or_load_redis(client: Any, keys: list[str]) -> int:
    get = client.get
    set_ = client.set
    loader = load
    t0 = perf_counter_ns()
    for k in keys:
        v = get(k)
        if v is None:
            v = loader(k)
            set_(k, v, ex=TTL)
    return perf_counter_ns() - t0


# -- part 1: micro-benchmarks -----------------------------------------------------

COLUMNS = ["get-hit random", "get-hit hot", "set", "set dict", "fetch-hit"]

ROW_EMPTY = "empty loop (included in all rows)"
ROW_SHOAL = "shoal.Cache"
ROW_SHOAL_REPL = "shoal.Cache in a Node (+1 peer)"
ROW_SHOAL_PLAIN = "shoal.Cache, no TTL/bound"
ROW_DICT = "dict"
ROW_CACHETOOLS = "cachetools.TTLCache"
ROW_CACHEBOX = "cachebox.VTTLCache"
ROW_REDIS = "redis-py -> local redis-server"


@dataclass
class Case:
    row: str
    column: str
    run: Callable[[], int]
    ops: int
    samples: list[float] = field(default_factory=list)
    gc_samples: list[float] = field(default_factory=list)  # of each round's ns/op, the cyclic collector's

    @property
    def slow(self) -> bool:
        """Sets and redis round trips run sizes.rounds rounds, the rest sizes.get_rounds."""
        return self.column.startswith("set") or self.row == ROW_REDIS


Results = dict[str, dict[str, list[float]]]


def micro(sizes: Sizes, binary: str | None, info: dict[str, Any], settle: bool = True) -> tuple[Results, Results]:
    rng = random.Random(1234)
    n = sizes.keys
    stored_keys = [key_of(i) for i in range(n)]
    values = [value_of(i) for i in range(n)]
    records = [record_of(i) for i in range(n)]
    # Lookup keys are equal to the stored ones but distinct objects, as when a request
    # builds its key: the dict compares strings instead of taking the identity shortcut.
    lookup = [key_of(i) for i in range(n)]
    idx_random = [rng.randrange(n) for _ in range(sizes.ops)]
    hot_ids = rng.sample(range(n), sizes.hot)
    idx_hot = [hot_ids[rng.randrange(sizes.hot)] for _ in range(sizes.ops)]
    idx_set = [rng.randrange(n) for _ in range(sizes.ops)]
    seq_random = [lookup[i] for i in idx_random]
    seq_hot = [lookup[i] for i in idx_hot]
    seq_set = [lookup[i] for i in idx_set]
    seq_set_values = [values[i] for i in idx_set]
    seq_set_records = [records[i] for i in idx_set]
    seq_fetch = [lookup[i] for i in (rng.randrange(n) for _ in range(sizes.ops))]
    r_ops = sizes.redis_ops

    sc = shoal.Cache(ttl=TTL, max_entries=MAX_ENTRIES)
    plain = shoal.Cache()
    # The set bar is for a clustered cache: a real Node with one peer (a member process
    # on loopback), so set includes enqueueing the op and the node's loop thread
    # flushing it to the peer meanwhile.
    run = Cleanup()
    peer = run.add(Member("bench/member.py", "fleet", "--cache", "bench", "--ttl", str(TTL), "--secret", ""))
    node_a = shoal.Node(seeds=[peer.hello["address"]])
    sc_repl = node_a.cache("bench", ttl=TTL, max_entries=MAX_ENTRIES)
    node_a.start()
    run.callback(node_a.stop)
    node_a.wait_ready(10)
    info["clustered_cache"] = "Node with 1 peer (a bench/member.py process) on loopback"
    d: dict[str, Any] = {}
    tc: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize=MAX_ENTRIES, ttl=TTL)
    vc: cachebox.VTTLCache[str, Any] = cachebox.VTTLCache(MAX_ENTRIES)
    for k, v in zip(stored_keys, values, strict=True):
        sc.set(k, v)
        plain.set(k, v)
        sc_repl.set(k, v)
        d[k] = v
        tc[k] = v
        vc.insert(k, v, float(TTL))

    cases: list[Case] = [
        Case(ROW_EMPTY, COLUMNS[0], lambda: t_empty(seq_random), sizes.ops),
        Case(ROW_EMPTY, COLUMNS[1], lambda: t_empty(seq_hot), sizes.ops),
        Case(ROW_EMPTY, COLUMNS[2], lambda: t_empty_pairs(seq_set, seq_set_values), sizes.ops),
        Case(ROW_EMPTY, COLUMNS[3], lambda: t_empty_pairs(seq_set, seq_set_records), sizes.ops),
        Case(ROW_EMPTY, COLUMNS[4], lambda: t_empty(seq_fetch), sizes.ops),
    ]
    in_process: list[tuple[str, Any]] = [
        (ROW_SHOAL, sc),
        (ROW_SHOAL_REPL, sc_repl),
        (ROW_SHOAL_PLAIN, plain),
        (ROW_DICT, d),
        (ROW_CACHETOOLS, tc),
        (ROW_CACHEBOX, vc),
    ]
    for row, cache in in_process:
        cases.append(Case(row, COLUMNS[0], functools.partial(t_get, cache.get, seq_random), sizes.ops))
        cases.append(Case(row, COLUMNS[1], functools.partial(t_get, cache.get, seq_hot), sizes.ops))

    def drained() -> None:
        if not outbox_drained(node_a, "bench"):
            raise AssertionError("the node's outbox did not drain in 60 s")

    for row, cache in in_process[:3]:
        for column, seq_values in ((COLUMNS[2], seq_set_values), (COLUMNS[3], seq_set_records)):
            if row == ROW_SHOAL_REPL:
                timed = functools.partial(t_call_set_drained, cache.set, seq_set, seq_values, drained)
            else:
                timed = functools.partial(t_call_set, cache.set, seq_set, seq_values)
            cases.append(Case(row, column, timed, sizes.ops))
    cases += [
        Case(ROW_DICT, COLUMNS[2], lambda: t_item_set(d, seq_set, seq_set_values), sizes.ops),
        Case(ROW_DICT, COLUMNS[3], lambda: t_item_set(d, seq_set, seq_set_records), sizes.ops),
        Case(ROW_CACHETOOLS, COLUMNS[2], lambda: t_item_set(tc, seq_set, seq_set_values), sizes.ops),
        Case(ROW_CACHETOOLS, COLUMNS[3], lambda: t_item_set(tc, seq_set, seq_set_records), sizes.ops),
        Case(ROW_CACHEBOX, COLUMNS[2], lambda: t_insert_ttl(vc.insert, seq_set, seq_set_values), sizes.ops),
        Case(ROW_CACHEBOX, COLUMNS[3], lambda: t_insert_ttl(vc.insert, seq_set, seq_set_records), sizes.ops),
        Case(ROW_SHOAL, COLUMNS[4], lambda: t_shoal_fetch(sc.fetch, seq_fetch), sizes.ops),
        Case(ROW_DICT, COLUMNS[4], lambda: t_get_or_load_item(d, seq_fetch), sizes.ops),
        Case(ROW_CACHETOOLS, COLUMNS[4], lambda: t_get_or_load_item(tc, seq_fetch), sizes.ops),
        Case(ROW_CACHEBOX, COLUMNS[4], lambda: t_get_or_load_insert(vc, seq_fetch), sizes.ops),
    ]

    # Every get/fetch measured must be a hit.
    for row, cache in in_process:
        for seq in (seq_random, seq_hot, seq_fetch):
            missing = sum(cache.get(k) is None for k in seq)
            if missing:
                raise AssertionError(f"{row}: {missing} misses in a hit benchmark")
    hits_before = sc.stats()["hits"]

    with run:
        if binary:
            server = run.add(RedisServer(binary))
            info["redis_server"] = redis_version(binary)
            rc = server.client(decode_responses=True)
            pipe = rc.pipeline(transaction=False)
            for i, (k, v) in enumerate(zip(stored_keys, values, strict=True)):
                pipe.set(k, v, ex=TTL)
                if i % 5000 == 4999:
                    pipe.execute()
            pipe.execute()
            if any(rc.get(k) is None for k in seq_random[:r_ops]):
                raise AssertionError("redis: miss in a hit benchmark")
            cases += [
                Case(ROW_REDIS, COLUMNS[0], lambda: t_get(rc.get, seq_random[:r_ops]), r_ops),
                Case(ROW_REDIS, COLUMNS[1], lambda: t_get(rc.get, seq_hot[:r_ops]), r_ops),
                Case(
                    ROW_REDIS, COLUMNS[2], lambda: t_redis_set(rc.set, seq_set[:r_ops], seq_set_values[:r_ops]), r_ops
                ),
                Case(ROW_REDIS, COLUMNS[4], lambda: t_get_or_load_redis(rc, seq_fetch[:r_ops]), r_ops),
            ]

        collector = GcWatch()
        for round_no in range(max(sizes.rounds, sizes.get_rounds)):
            for case in cases:
                if round_no < (sizes.rounds if case.slow else sizes.get_rounds):
                    if settle:
                        gc.collect()  # untimed: what the cases before left is not this case's to walk
                        gc.freeze()
                    collector.reset()
                    case.samples.append(case.run() / case.ops)
                    case.gc_samples.append(collector.total * 1e9 / case.ops)
        collector.close()
        gc.unfreeze()  # what the settling froze goes back in the collector's sight

    info["get_path"] = get_path(sc, d, vc, seq_random, sizes.get_rounds)
    stats = sc.stats()
    if stats["misses"] or stats["loads"]:
        raise AssertionError(f"shoal missed during a hit benchmark: {stats}")
    info["shoal_hits_counted"] = stats["hits"] - hits_before

    results: Results = {}
    collected: Results = {}
    for case in cases:
        results.setdefault(case.row, {})[case.column] = case.samples
        collected.setdefault(case.row, {})[case.column] = case.gc_samples
    return results, collected


def get_path(sc: shoal.Cache, d: dict[str, Any], vc: Any, keys: list[str], rounds: int) -> dict[str, list[float]]:
    """Where a shoal get's time goes: its steps one by one on ``sc``'s own table, beside
    ``dict.get`` and ``cachebox`` on the same keys, in the same heap (ns/op per round)."""
    table = sc._data  # the store's table: key -> Entry, an entry being its own expiry
    lookup, wall, hit = table.get, time.time, itertools.count().__next__

    def call_only(key: str) -> Any:
        return key

    def entry_only(key: str) -> Any:
        return lookup(key)

    def entry_expiry(key: str) -> Any:
        entry = lookup(key)
        return entry is not None and entry > wall()

    def entry_expiry_value(key: str) -> Any:
        entry = lookup(key)
        if entry is not None and entry > wall():
            return entry.value
        return None

    def whole(key: str) -> Any:
        entry = lookup(key)
        if entry is not None and entry > wall():
            if entry.freq < 3:
                entry.freq += 1
            hit()
            return entry.value
        return None

    steps = {
        "a Python function call (returns its argument)": call_only,
        "+ the table's lookup (the entry, increfed)": entry_only,
        "+ the entry's expiry against time.time()": entry_expiry,
        "+ the value (increfed: its object is read)": entry_expiry_value,
        "+ the eviction count and the hit counter (shoal's get)": whole,
        "shoal.Cache.get": sc.get,
        "dict.get": d.get,
        "cachebox.VTTLCache.get": vc.get,
    }
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            samples[name].append(t_get(fn, keys) / len(keys))
    return samples


def print_get_path(samples: dict[str, list[float]], n_keys: int) -> None:
    rows = [[name, cell(xs)] for name, xs in samples.items()]
    print(
        format_table(
            ["step", "ns/op (min-max)"],
            rows,
            title=f"1b. Where a get's time goes: random hits over {n_keys // 1000}k keys, the steps of shoal's get\n"
            "    timed one by one on shoal.Cache's own table, in the heap of table 1 (the loop included)",
            notes=[
                "Each '+' line does everything the line above does, and one thing more. A dict.get makes two",
                "dependent reads past the table (the stored key, compared, and the value); shoal's get makes three",
                "(the stored key, the entry, then the value it points to).",
            ],
        )
    )


ROW_CALL = "a Python function call (returns its argument)"


def get_chain(n_keys: int, ops: int, rounds: int) -> dict[str, list[float]]:
    """A get's latency, where table 1 times a get's throughput.

    Table 1 loops over a list of 200,000 prebuilt key objects: each get also misses on
    its key object, and the CPU runs ahead into the next gets, overlapping their misses
    (the less code a get runs, the more it overlaps). A request's get is one chain of
    dependent reads with its key fresh in cache. Here each cache maps every key to another
    key (an equal, distinct str, as a request builds it), in one random cycle through all
    of them, and each get looks up the value the one before returned.
    """
    nxt = successors(n_keys, random.Random(99))
    keys = [key_of(i) for i in range(n_keys)]
    following = {keys[i]: key_of(nxt[i]) for i in range(n_keys)}
    sc = shoal.Cache(ttl=TTL, max_entries=MAX_ENTRIES)
    d: dict[str, str] = {}
    tc: cachetools.TTLCache[str, str] = cachetools.TTLCache(maxsize=MAX_ENTRIES, ttl=TTL)
    vc: cachebox.VTTLCache[str, str] = cachebox.VTTLCache(MAX_ENTRIES)
    for k in keys:
        v = following[k]
        sc.set(k, v)
        d[k] = v
        tc[k] = v
        vc.insert(k, v, float(TTL))
    gets: dict[str, Callable[[str], Any]] = {
        ROW_CALL: lambda key: key,
        ROW_SHOAL: sc.get,
        ROW_DICT: d.get,
        ROW_CACHETOOLS: tc.get,
        ROW_CACHEBOX: vc.get,
    }
    start = keys[0]
    for row, get in gets.items():  # every get a hit: the cycle comes back to its start
        if row != ROW_CALL and functools.reduce(lambda key, _: get(key), range(n_keys), start) != start:
            raise AssertionError(f"{row}: the chain of gets broke (a miss)")
    gc.collect()
    samples: dict[str, list[float]] = {row: [] for row in gets}
    for _ in range(rounds):
        for row, get in gets.items():
            took, _ = t_chain(get, start, ops)
            samples[row].append(took / ops)
    return samples


def print_get_chain(samples: dict[str, list[float]], n_keys: int) -> None:
    box = median(samples[ROW_CACHEBOX])
    assert box is not None
    rows = [[row, cell(xs), "" if row == ROW_CALL else ratio((median(xs) or 0) / box)] for row, xs in samples.items()]
    print(
        format_table(
            ["implementation", "ns/op (min-max)", "x cachebox"],
            rows,
            title=f"1c. A get's latency: each get's key is the value the last get returned (one random cycle through\n"
            f"    {n_keys // 1000}k keys), so no two gets overlap and the key is in cache, as in a request",
            notes=[
                "Table 1 times throughput: a loop over 200,000 prebuilt keys, where each get also misses on its key",
                "and the CPU overlaps the next gets' misses with it; this times one dependent chain at a time.",
            ],
        )
    )


def cell(samples: list[float] | None) -> str:
    if not samples:
        return "-"
    return f"{ns(median(samples))} ({ns(min(samples))}-{ns(max(samples))})"


def print_collector(results: Results, collected: Results, settle: bool) -> None:
    """Table 1d: of each set in table 1, the cyclic collector's time (in either thread)."""
    rows: list[Sequence[object] | None] = []
    for name in (ROW_SHOAL, ROW_SHOAL_REPL, ROW_SHOAL_PLAIN, ROW_DICT, ROW_CACHETOOLS, ROW_CACHEBOX):
        cells: list[object] = [name]
        for col in COLUMNS[2:4]:
            spent, took = collected.get(name, {}).get(col), median(results.get(name, {}).get(col))
            share = median([g / t for g, t in zip(spent or [], results[name][col], strict=True)]) if spent else None
            cells += [ns(took), cell(spent), pct(share)]
        rows.append(cells)
    if settle:
        notes = [
            "Before each case, untimed: gc.collect() and gc.freeze(), so a case's collections walk the objects it",
            "made, not those the cases before left (--no-settle to time without).",
        ]
    else:
        notes = [
            "--no-settle: each case in the heap the cases before left. An overwrite frees what it allocates, so",
            "a local set makes no collection; the objects it made wait in the young generations for the next",
            "case that does (the clustered set: its queued ops), which walks them.",
        ]
    print(
        format_table(
            ["implementation"] + ["ns/op", "of it GC ns/op (min-max)", "GC share"] * 2,
            rows,
            title="1d. The cyclic collector's part of a set (table 1's rounds; medians)",
            groups=[("", 1), ("set, str value", 3), ("set, dict value", 3)],
            notes=notes,
        )
    )


def print_micro(results: Results, sizes: Sizes, redis_note: str) -> None:
    shoal_ns = results[ROW_SHOAL]
    rows: list[Sequence[object] | None] = []
    order = [
        ROW_EMPTY,
        None,
        ROW_SHOAL,
        ROW_SHOAL_REPL,
        ROW_DICT,
        ROW_CACHETOOLS,
        ROW_CACHEBOX,
        ROW_REDIS,
        None,
        ROW_SHOAL_PLAIN,
    ]
    for name in order:
        if name is None:
            rows.append(None)
            continue
        if name not in results:
            continue
        cells: list[object] = [name]
        for col in COLUMNS:
            samples = results[name].get(col)
            base = median(shoal_ns.get(col))
            cells.append(cell(samples))
            value = median(samples)
            if name == ROW_EMPTY or value is None or base is None:
                cells.append("")
            else:
                cells.append(ratio(value / base))
        rows.append(cells)
    headers = ["implementation"] + ["ns/op (min-max)", "x shoal"] * len(COLUMNS)
    groups = [
        ("", 1),
        (f"get-hit, {sizes.keys // 1000}k random keys", 2),
        (f"get-hit, {sizes.hot // 1000}k hot keys", 2),
        (f"set, str value ({sizes.keys // 1000}k keys)", 2),
        ("set, dict value", 2),
        ("fetch-hit", 2),
    ]
    title = (
        f"1. Local operations: ns/op, median of {sizes.get_rounds} rounds (get, fetch) or {sizes.rounds} rounds "
        f"(set, redis)\n   of {sizes.ops:,} ops ({sizes.redis_ops:,} for redis), with the min-max of the rounds.\n"
        "   Numbers INCLUDE the Python for-loop overhead (row 'empty loop'); nothing is subtracted.\n"
        "   'x shoal' = median ns/op / shoal.Cache's median ns/op (above 1.00x: slower than shoal)."
    )
    notes = [
        f"shoal.Cache(ttl={TTL}, max_entries={MAX_ENTRIES:_}); cachetools.TTLCache(maxsize={MAX_ENTRIES:_}, "
        f"ttl={TTL}); cachebox.VTTLCache({MAX_ENTRIES:_}) with insert(k, v, {TTL}); the last line: shoal.Cache().",
        "Keys 'user:1234'; str values 'acct-00001234', dict values {id, name, email, active}; lookup keys are",
        "  equal but distinct str objects. Every cache filled through its public API (set / [] / insert).",
        "get: c.get(k) for all.  set: shoal c.set(k, v); dict/cachetools c[k] = v; cachebox c.insert(k, v, ttl);",
        f"  redis r.set(k, v, ex={TTL}).  'in a Node': node.cache(...) on a started Node whose one peer",
        "  is a member process (the replication queue and this node's loop thread are included); its set",
        "  is timed until the node's outbox is empty, so its flush does not run on into the next case.",
        "fetch-hit: shoal c.fetch(k, loader); others inline 'v = c.get(k); if v is None: v = loader(k); store'.",
        redis_note,
        "GC on while timing (table 1d: its part of a set); rounds run round-robin across implementations;",
        "  the machine is shared and noisy.",
    ]
    print(format_table(headers, rows, title=title, notes=notes, groups=groups))


def check_bars(results: Results, chain: dict[str, list[float]]) -> list[dict[str, Any]]:
    def m(row: str, col: str) -> float:
        value = median(results[row].get(col))
        assert value is not None
        return value

    get_col, set_col = COLUMNS[0], COLUMNS[2]
    shoal_get, member_get = m(ROW_SHOAL, get_col), m(ROW_SHOAL_REPL, get_col)
    cachebox_get = m(ROW_CACHEBOX, get_col)
    cachetools_get = m(ROW_CACHETOOLS, get_col)
    local_set, repl_set = m(ROW_SHOAL, set_col), m(ROW_SHOAL_REPL, set_col)
    cachebox_set = m(ROW_CACHEBOX, set_col)
    repl_set_dict, cachebox_set_dict = m(ROW_SHOAL_REPL, COLUMNS[3]), m(ROW_CACHEBOX, COLUMNS[3])
    chain_shoal, chain_box = median(chain[ROW_SHOAL]), median(chain[ROW_CACHEBOX])
    assert chain_shoal is not None and chain_box is not None
    bars = [
        {
            "bar": f"get-hit (random keys, local) <= {BAR_GET_VS_CACHEBOX:g}x cachebox get",
            "measured": f"{shoal_get:.1f} / {cachebox_get:.1f} ns = {shoal_get / cachebox_get:.2f}x",
            "target": f"<= {BAR_GET_VS_CACHEBOX:.2f}x",
            "met": shoal_get <= BAR_GET_VS_CACHEBOX * cachebox_get,
        },
        {
            "bar": f"get-hit (random keys, member of a Node) <= {BAR_GET_VS_CACHEBOX:g}x cachebox get",
            "measured": f"{member_get:.1f} / {cachebox_get:.1f} ns = {member_get / cachebox_get:.2f}x",
            "target": f"<= {BAR_GET_VS_CACHEBOX:.2f}x",
            "met": member_get <= BAR_GET_VS_CACHEBOX * cachebox_get,
        },
        {
            "bar": f"get-hit latency (1c, dependent gets) <= {BAR_GET_VS_CACHEBOX:g}x cachebox get",
            "measured": f"{chain_shoal:.1f} / {chain_box:.1f} ns = {chain_shoal / chain_box:.2f}x",
            "target": f"<= {BAR_GET_VS_CACHEBOX:.2f}x",
            "met": chain_shoal <= BAR_GET_VS_CACHEBOX * chain_box,
        },
        {
            "bar": "get-hit (random keys) >= 4x faster than cachetools.TTLCache",
            "measured": f"{cachetools_get:.1f} / {shoal_get:.1f} ns = {cachetools_get / shoal_get:.2f}x faster",
            "target": f">= {BAR_GET_VS_CACHETOOLS:.2f}x",
            "met": cachetools_get >= BAR_GET_VS_CACHETOOLS * shoal_get,
        },
        {
            "bar": "set (str) on a clustered cache <= 3 us (a Node with one peer)",
            "measured": f"{repl_set:,.0f} ns (local-only cache: {local_set:,.0f} ns)",
            "target": f"<= {BAR_SET_NS:,.0f} ns",
            "met": repl_set <= BAR_SET_NS,
        },
        {
            "bar": f"set (str) on a clustered cache <= {BAR_SET_VS_CACHEBOX:g}x cachebox insert",
            "measured": f"{repl_set:,.0f} / {cachebox_set:,.0f} ns = {repl_set / cachebox_set:.1f}x",
            "target": f"<= {BAR_SET_VS_CACHEBOX:.1f}x",
            "met": repl_set <= BAR_SET_VS_CACHEBOX * cachebox_set,
        },
        {
            "bar": "set (dict value) on a clustered cache <= 3 us, <= 10x cachebox",
            "measured": f"{repl_set_dict:,.0f} ns = {repl_set_dict / cachebox_set_dict:.1f}x cachebox",
            "target": f"<= {BAR_SET_NS:,.0f} ns",
            "met": repl_set_dict <= BAR_SET_NS and repl_set_dict <= BAR_SET_VS_CACHEBOX * cachebox_set_dict,
        },
    ]
    rows = [[b["bar"], b["measured"], b["target"], "MET" if b["met"] else "MISSED"] for b in bars]
    print()
    print(
        format_table(
            ["bar (issue 15)", "measured (medians, this run)", "target", "status"],
            rows,
            title="2. Bars (median ns/op from tables 1 and 1c, loop overhead included in both sides)",
            notes=[
                "The set bar is for a set on a clustered cache including enqueueing replication: measured",
                "on a started Node with one peer, whose loop thread flushes to the peer during the run.",
            ],
        )
    )
    return bars


# -- part 3: eviction hit ratios ---------------------------------------------------


class SimEntry:
    """What a policy needs of an entry."""

    __slots__ = ("key", "freq", "queue")

    def __init__(self, key: str) -> None:
        self.key = key
        self.freq = 0
        self.queue = 0


def zipf_trace(n_keys: int, requests: int, s: float, seed: int) -> list[str]:
    """Requests whose key ranks follow Zipf(s); rank order is shuffled over the key names."""
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (rank + 1) ** s for rank in range(n_keys)))
    names = [key_of(i) for i in range(n_keys)]
    rng.shuffle(names)  # popularity does not follow key order
    return [names[r] for r in rng.choices(range(n_keys), cum_weights=cum, k=requests)]


def segments(trace: list[str], scan: int, window: int, with_scan: bool) -> list[list[str]]:
    """The trace cut at its middle: [first half, (scan,) next ``window`` requests, rest]."""
    mid = len(trace) // 2
    parts = [trace[:mid], trace[mid : mid + window], trace[mid + window :]]
    if with_scan:
        parts.insert(1, [f"scan:{i}" for i in range(scan)])
    return parts


# A replay runs the segments in order through one cache and returns the hits per segment.


def replay_shoal(parts: list[list[str]], cap: int) -> list[int]:
    """Through the real shoal.Cache: a hit is get() returning a value, a miss sets it."""
    cache = shoal.Cache(max_entries=cap)
    get, set_ = cache.get, cache.set
    out = []
    for part in parts:
        hits = 0
        for k in part:
            if get(k) is not None:
                hits += 1
            else:
                set_(k, k)
        out.append(hits)
    stats = cache.stats()
    assert stats["entries"] <= cap, stats
    return out


def replay_policy(make: Callable[[dict[str, SimEntry]], Policy], parts: list[list[str]], cap: int) -> list[int]:
    """Through a policy object, as shoal's Store drives it: hit / insert, then victim when over."""
    table: dict[str, SimEntry] = {}
    policy = make(table)
    hit, insert, victim = policy.hit, policy.insert, policy.victim
    out = []
    for part in parts:
        hits = 0
        for k in part:
            entry = table.get(k)
            if entry is not None:
                hits += 1
                hit(entry)
            else:
                entry = SimEntry(k)
                table[k] = entry
                insert(entry)
                if len(table) > cap:
                    del table[victim().key]
        out.append(hits)
    return out


def replay_cachetools_lru(parts: list[list[str]], cap: int) -> list[int]:
    cache: cachetools.LRUCache[str, str] = cachetools.LRUCache(maxsize=cap)
    get = cache.get
    out = []
    for part in parts:
        hits = 0
        for k in part:
            if get(k) is not None:
                hits += 1
            else:
                cache[k] = k
        out.append(hits)
    return out


ROW_S3_SIM = "sim: shoal.eviction.S3FIFO"
ROW_LRU_SIM = "sim: shoal.eviction.LRU"


def eviction(sizes: Sizes) -> dict[str, dict[str, float]]:
    t0 = time.perf_counter()
    base = zipf_trace(sizes.trace_keys, sizes.requests, ZIPF_S, seed=42)
    window = sizes.scan
    traces = {
        "zipf": segments(base, sizes.scan, window, with_scan=False),
        "zipf+scan": segments(base, sizes.scan, window, with_scan=True),
    }
    gen_s = time.perf_counter() - t0
    replayers: list[tuple[str, Callable[[list[list[str]], int], list[int]]]] = [
        ("shoal.Cache (S3-FIFO, real cache)", replay_shoal),
        (ROW_S3_SIM, lambda t, c: replay_policy(lambda table: S3FIFO(c, table.get), t, c)),
        (ROW_LRU_SIM, lambda t, c: replay_policy(lambda table: LRU(c, table.get), t, c)),
        ("cachetools.LRUCache", replay_cachetools_lru),
    ]
    columns = [(name, cap) for name in traces for cap in sizes.caps]
    results: dict[str, dict[str, float]] = {}
    t1 = time.perf_counter()
    for row, replay in replayers:
        for name, cap in columns:
            parts = traces[name]
            hits = replay(parts, cap)
            results.setdefault(row, {})[f"{name}@{cap}"] = sum(hits) / sum(len(p) for p in parts)
            # Hit ratio of the `window` Zipf requests right after the middle (after the scan, if any).
            results[row][f"{name}@{cap}:after-middle"] = hits[-2] / len(parts[-2])
    replay_s = time.perf_counter() - t1

    rows: list[Sequence[object] | None] = []
    for row, _ in replayers:
        rows.append([row] + [pct(results[row][f"{name}@{cap}"]) for name, cap in columns])
    s3, lru = results[ROW_S3_SIM], results[ROW_LRU_SIM]
    rows.append(None)
    rows.append(
        ["S3-FIFO minus LRU (points)"] + [f"{(s3[f'{n}@{k}'] - lru[f'{n}@{k}']) * 100:+.2f}" for n, k in columns]
    )
    headers = ["hit ratio, all requests"] + [f"cap {cap:,}" for _, cap in columns]
    groups = [("", 1)] + [(name, len(sizes.caps)) for name in traces]
    title = (
        f"3. Eviction hit ratio: Zipf({ZIPF_S}) over {sizes.trace_keys:,} keys, {sizes.requests:,} requests;\n"
        f"   'zipf+scan' = same trace with a one-off scan of {sizes.scan:,} never-again keys in the middle."
    )
    notes = [
        f"Over all requests; the {sizes.scan:,} scan requests are misses for every policy, so even a scan-proof",
        f"policy scores only 'zipf' x {sizes.requests / (sizes.requests + sizes.scan):.4f} on 'zipf+scan'.",
        "Real cache: get(k) is not None counts a hit, else set(k, v). Simulator: dict of entries,",
        "policy.hit(e) on a hit, policy.insert(e) on a miss, policy.victim() when over capacity.",
    ]
    print()
    print(format_table(headers, rows, title=title, notes=notes, groups=groups))

    # The scan's damage: the same `window` Zipf requests after the middle, without and with the scan.
    rows = []
    for row, _ in replayers:
        cells: list[object] = [row]
        for cap in sizes.caps:
            before = results[row][f"zipf@{cap}:after-middle"]
            after = results[row][f"zipf+scan@{cap}:after-middle"]
            cells += [pct(before), pct(after), f"{(after - before) * 100:+.2f}"]
        rows.append(cells)
    headers = ["hit ratio, next requests"] + ["no scan", "after scan", "points"] * len(sizes.caps)
    groups = [("", 1)] + [(f"cap {cap:,}", 3) for cap in sizes.caps]
    print()
    print(
        format_table(
            headers,
            rows,
            title=f"   The scan's damage: hit ratio of the {window:,} Zipf requests after the middle of the trace",
            notes=[f"(trace generation {gen_s:.1f} s, replays {replay_s:.1f} s)"],
            groups=groups,
        )
    )
    return results


# -- main --------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    for pkg in ("shoal", "cachetools", "cachebox", "redis", "msgpack"):
        try:
            info[pkg] = pkg_version(pkg)
        except Exception:
            info[pkg] = getattr(sys.modules.get(pkg), "__version__", "?")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also save the results as JSON")
    parser.add_argument("--no-redis", action="store_true", help="skip redis even if redis-server is installed")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="time each case in the heap the cases before left (no untimed collect and freeze before it)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()

    info = environment()
    binary = redis_binary(args.no_redis)
    if binary:
        redis_note = "redis: private redis-server on a free 127.0.0.1 port, --save '' --appendonly no."
    else:
        redis_note = "redis: skipped (" + ("--no-redis" if args.no_redis else "no redis-server binary") + ")."
    load_avg = info["loadavg"]
    print(
        f"shoal bench/local.py{' --quick' if args.quick else ''}: Python {info['python']}, "
        f"{info['cpus']} CPUs, load {' '.join(f'{x:.2f}' for x in load_avg) if load_avg else '?'}; "
        f"cachetools {info['cachetools']}, cachebox {info['cachebox']}, redis-py {info['redis']}"
    )
    if load_avg and info["cpus"] and load_avg[0] > 0.5 * info["cpus"]:
        print(
            f"WARNING: the machine is busy (1-min load {load_avg[0]:.2f} on {info['cpus']} CPUs): "
            "expect noisy, pessimistic timings."
        )
    print()

    micro_results, collected = micro(sizes, binary, info, settle=not args.no_settle)
    micro_s = time.perf_counter() - started
    if "redis_server" in info:
        redis_note = redis_note[:-1] + f" (redis-server {info['redis_server']})."
    print_micro(micro_results, sizes, redis_note)
    print()
    print_collector(micro_results, collected, not args.no_settle)
    get_path_samples = info.pop("get_path")
    print()
    print_get_path(get_path_samples, sizes.keys)
    chain_samples = get_chain(sizes.keys, sizes.ops, sizes.get_rounds)
    print()
    print_get_chain(chain_samples, sizes.keys)
    bars = check_bars(micro_results, chain_samples)
    hit_ratios = eviction(sizes)

    elapsed = time.perf_counter() - started
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info["loadavg_end"] = end_load
    print(f"\ntotal {elapsed:.1f} s (local operations {micro_s:.1f} s); 1-min load at the end {end_load:.2f}")
    if args.json:
        payload = {
            "quick": args.quick,
            "sizes": asdict(sizes),
            "environment": info,
            "ns_per_op_rounds": micro_results,
            "get_path_ns_per_op_rounds": get_path_samples,
            "get_chain_ns_per_op_rounds": chain_samples,
            "bars": bars,
            "hit_ratio": hit_ratios,
            "seconds": elapsed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
