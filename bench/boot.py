#!/usr/bin/env python3
"""Warm boot and member memory: shoal side by side with a Redis replica's full sync.

    python3 run.py bench boot [--sizes 10000,100000,1000000] [--rounds 5] [--shapes str,dict]
                              [--no-redis] [--no-plain] [--syncobj] [--profile | --profile-only]

What a user runs: every cache has ``ttl=3600`` and ``max_entries=N``, the donor is
filled through the public API (``Cache.set_many``), values have a realistic shape
(``str``: ``acct-%08d``; ``dict``: four fields as an identity lookup returns),
keys ``user:%06d``; the cyclic GC is on everywhere. One system at a time, so they
never compete for the two cores; every figure is the median over ``--rounds``
receivers with its min-max range.

shoal       a donor member process filled with N entries, then ``--rounds`` fresh
            receiver processes seeded with it, one after the other.
redis       a master ``redis-server`` filled with pipelined ``SET key value EX 3600``
            (dict values msgpack-packed, as a client caching them would), then
            ``--rounds`` replicas: each is launched without a master, and once it
            answers, told ``REPLICAOF``. Both with ``--save "" --appendonly no
            --repl-diskless-sync yes --repl-diskless-sync-delay 0
            --repl-diskless-load on-empty-db`` (Redis's fastest full sync).

Two spans, the same for both systems:
  sync s    shoal: ``node.start()`` to ready; redis: ``REPLICAOF`` to
            ``master_link_status:up`` and ``DBSIZE == N`` (polled every ms).
  launch s  process launch to ready (shoal pays Python's start and imports here).
The headline ratio is sync s (shoal / redis); launch s is shown next to it.

Memory (RSS, keys and values included, at the largest size): ``member MB`` is a
receiver's RSS at ready minus its RSS before the node existed; a plain ``dict``,
``cachetools.TTLCache``, ``cachebox.VTTLCache`` and a local ``shoal.Cache`` are each
filled with the same items in a fresh process; redis is the replica's RSS after
the sync minus its RSS empty.

A second line per size, ``shoal, no TTL/bound``, is the easy case (no expiry
index, no eviction policy), kept for comparison and not the headline.
``--sample`` only samples a receiver's boot with py-spy (own time by line and function,
without cProfile's per-call overhead): where a boot's CPU goes, for the floor.
``--syncobj`` adds pysyncobj (3 members, the third joins and receives a dump).
``donor stall``: the longest gap between ticks of a 1 ms asyncio timer on the
donor's loop while it streams (ideal ~1.1 ms; "idle" is the same timer with no
dump, the machine's noise floor). Full run ~4-6 min on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import (
    MB,
    RESULTS,
    Cleanup,
    Member,
    RedisServer,
    environment,
    format_table,
    free_port,
    median,
    redis_binary,
    redis_version,
    rss,
    spread,
    wait_for,
)

MEMBER = "bench/member.py"
TTL = 3600
REDIS_FLAGS = [
    "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", "--repl-diskless-load", "on-empty-db",
]  # fmt: skip

# Bars (issue 15), as ratios measured in one run.
BAR_VS_REDIS = 1.2  # warm boot of 1M with TTLs <= 1.2x the Redis full sync
BAR_MEMORY_VS_DICT = 1.6  # member memory <= 1.6x a plain dict of the same items
BAR_SCALE = 1.2  # time per entry at 5M <= 1.2x that at 1M
BAR_STALL_MS = 5.0  # donor loop stall while streaming 1M


def key(i: int) -> str:
    return f"user:{i:06d}"


def value(i: int, shape: str) -> Any:
    if shape == "dict":
        return {"id": i, "name": f"User {i}", "email": f"user{i}@example.com", "active": i % 7 != 0}
    return f"acct-{i:08d}"


@dataclass
class Row:
    n: int
    shape: str
    system: str
    sync_s: list[float | None] = field(default_factory=list)
    launch_s: list[float | None] = field(default_factory=list)
    member_mb: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)
    stall_ms: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def us_per_entry(self) -> float | None:
        m = median(self.sync_s)
        return None if m is None else m / self.n * 1e6


def cache_args(ttl: bool, n: int) -> list[str]:
    return ["--ttl", str(TTL if ttl else 0), "--bound", str(n if ttl else 0)]


# -- shoal ------------------------------------------------------------------------------


PRETOUCH_MB = 0
DONOR_FLAGS: list[str] = []  # --sample-steps


def pretouch() -> None:
    """``--pretouch``: first touches of memory the VM's host has not backed cost several times a
    touch of recently used memory (bench/results/pagefaults.txt); this takes them out of a boot."""
    if PRETOUCH_MB:
        touch = [sys.executable, str(harness.HERE / "pagefaults.py"), "--child", "mmap", str(PRETOUCH_MB)]
        subprocess.run(touch, check=True, capture_output=True)


def run_shoal(n: int, shape: str, rounds: int, ttl: bool, timeout: float) -> Row:
    row = Row(n, shape, "shoal" if ttl else "shoal, no TTL/bound")
    with Cleanup() as run:
        donor_args = ["--n", str(n), "--shape", shape, *cache_args(ttl, n), *DONOR_FLAGS]
        donor = run.add(Member(MEMBER, "donor", *donor_args, timeout=600))
        row.extra["donor_fill_s"] = donor.hello["fill_s"]
        row.extra["donor_idle_stall_ms"] = donor.call("idle_stall", seconds=1.0)["max_gap_ms"]
        runs = []
        for _ in range(rounds):
            pretouch()
            donor.call("stall_reset")
            seed = ["--seed", donor.hello["address"], "--timeout", str(timeout)]
            receiver = Member(MEMBER, "receiver", *seed, *cache_args(ttl, n), timeout=timeout + 60)
            receiver.stop()
            out, stall = receiver.hello, donor.call("stall")
            wb = out["warm_boot"]
            ok = out["ready"] and out["entries"] == n and wb["state"] == "warm"
            if not ok:
                row.note = f"not warm: {wb['state']}, {out['entries']} entries"
            row.sync_s.append(out["t_ready"] - out["t_node_start"] if ok else None)
            row.launch_s.append(out["t_ready"] - receiver.t_launch if ok else None)
            row.member_mb.append((out["rss_after"] - out["rss_before"]) / MB)
            row.peak_mb.append((out["hwm"] - out["rss_before"]) / MB)
            row.stall_ms.append(stall["max_gap_ms"])
            runs.append(
                {
                    "warm_boot_s": wb["seconds"],
                    "receiver_gc_ms": out["gc_total_ms"],
                    "receiver_gc_collections": out["gc_collections"],
                    "receiver_cpu_s": out.get("cpu_s"),
                    "receiver_user_s": out.get("user_s"),
                    "receiver_sys_s": out.get("sys_s"),
                    "receiver_page_faults": out.get("page_faults"),
                    "donor_max_chunk_ms": stall["max_chunk_ms"],
                    "donor_gc_max_ms": stall["gc_max_ms"],
                    "donor_step_cpu_ms": stall.get("max_step_cpu_ms"),
                    "donor_step": stall.get("max_step"),
                    "donor_step_sys_ms": stall.get("max_step_sys_ms"),
                    "donor_step_faults": stall.get("max_step_faults"),
                    "donor_step_stacks": stall.get("max_step_stacks"),
                }
            )
        row.extra["runs"] = runs
    return row


def run_memory(n: int, shape: str, kind: str) -> float:
    m = Member(MEMBER, "memory", "--n", str(n), "--shape", shape, "--kind", kind, *cache_args(True, n), timeout=600)
    m.stop()
    return float(m.hello["rss_after"] - m.hello["rss_before"]) / MB


def run_redis(binary: str, n: int, shape: str, rounds: int, timeout: float) -> Row:
    import msgpack
    import redis

    row = Row(n, shape, "redis")
    with Cleanup() as run:
        master = run.add(RedisServer(binary, *REDIS_FLAGS))
        pipe = master.client().pipeline(transaction=False)
        for i in range(n):
            v = value(i, shape)
            pipe.set(key(i), msgpack.packb(v) if shape == "dict" else v, ex=TTL)
            if len(pipe) >= 10_000:
                pipe.execute()
        pipe.execute()
        for _ in range(rounds):
            pretouch()
            with Cleanup() as one:
                replica = one.add(RedisServer(binary, *REDIS_FLAGS))
                client = replica.client()
                empty = rss(replica.pid)
                t_sync = time.time()
                client.replicaof("127.0.0.1", str(master.port))

                def synced(client: Any = client) -> float | None:
                    try:
                        info = client.info("replication")
                        return time.time() if info.get("master_link_status") == "up" and client.dbsize() == n else None
                    except (redis.ConnectionError, redis.ResponseError):  # LOADING while it reads the RDB
                        return None

                try:
                    done: float | None = wait_for(synced, timeout, "the replica", 0.001)
                except TimeoutError:
                    done, row.note = None, "timeout"
                row.sync_s.append(None if done is None else done - t_sync)
                row.launch_s.append(None if done is None else done - replica.t_launch)
                row.member_mb.append((rss(replica.pid) - empty) / MB)
                row.peak_mb.append((rss(replica.pid, "VmHWM") - empty) / MB)
    return row


def run_syncobj(n: int, timeout: float) -> Row:
    """pysyncobj (opt-in): two members filled, a third joins and receives a dump."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    row = Row(n, "str", "pysyncobj")
    with Cleanup() as run:

        def start(i: int) -> Member:
            partners = ",".join(a for a in addrs if a != addrs[i])
            return run.add(Member(MEMBER, "syncobj", "--self-addr", addrs[i], "--partners", partners))

        members = [start(0), start(1)]
        members[0].call("wait_leader")
        fill = members[0].call("fill", n=n, wait=600)
        if fill["len"] != n:
            row.note = f"fill failed ({fill['len']} of {n})"
            return row
        for m in members:
            m.call("compact")
        new = start(2)
        out = new.call("wait_len", n=n, timeout=timeout, wait=timeout + 60)
        ok = out["len"] == n
        row.sync_s.append(out["t_done"] - out["t_start"] if ok else None)
        row.launch_s.append(out["t_done"] - new.t_launch if ok else None)
        row.member_mb.append((out["rss_after"] - out["rss_before"]) / MB)
        row.peak_mb.append((out["hwm"] - out["rss_before"]) / MB)
        row.note = "" if ok else f"timeout ({timeout:.0f} s, {out['len']} of {n})"
    return row


def profile_shoal(n: int, shape: str, timeout: float, top: int) -> None:
    """cProfile the loop threads of a receiver and its donor (TTL and bound, as measured)."""
    import pstats

    tmp = Path(tempfile.mkdtemp(prefix="shoal-boot-prof-"))
    rprof, dprof = tmp / "receiver.prof", tmp / "donor.prof"
    with Cleanup() as run:
        options = ["--shape", shape, *cache_args(True, n)]
        donor = run.add(Member(MEMBER, "donor", "--n", str(n), "--profile", str(dprof), *options, timeout=600))
        donor.call("stall_reset")
        seed = ["--seed", donor.hello["address"], "--timeout", str(timeout), "--profile", str(rprof)]
        receiver = Member(MEMBER, "receiver", *seed, *cache_args(True, n), timeout=timeout + 60)
        receiver.stop()
        donor.call("stall")
    print(f"\ncProfile of a {n:,}-entry boot ({shape} values; profiled: {receiver.hello['warm_boot']['seconds']} s)")
    for label, path in (("receiver (node loop thread)", rprof), ("donor (node loop thread, during the dump)", dprof)):
        print(f"\n--- {label}: top {top} by own time")
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.strip_dirs()  # no paths of this machine in the output
        stats.sort_stats("tottime").print_stats(top)
        print("\n".join(line for line in out.getvalue().splitlines() if str(tmp) not in line).strip("\n"))
    shutil.rmtree(tmp, ignore_errors=True)


def sample_shoal(n: int, shape: str, timeout: float, top: int, rate: int = 250) -> None:
    """Sample a receiver's boot with py-spy (no tracing overhead, unlike cProfile's per-call cost,
    which doubles a million-call function): own time per source line, then per function.
    Needs py-spy (the bench extra); the process is sampled from its launch to ready."""
    import collections
    import signal
    import subprocess

    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy_bin).exists():
        print("py-spy not installed (pip install py-spy): no sampled profile")
        return
    tmp = Path(tempfile.mkdtemp(prefix="shoal-boot-spy-"))
    raw = tmp / "receiver.txt"
    with Cleanup() as run:
        options = ["--shape", shape, *cache_args(True, n)]
        donor = run.add(Member(MEMBER, "donor", "--n", str(n), *options, timeout=600))
        seed = ["--seed", donor.hello["address"], "--timeout", str(timeout)]
        receiver = Member(MEMBER, "receiver", *seed, *cache_args(True, n), hello=False, timeout=timeout + 60)
        argv = [
            spy_bin,
            "record",
            "--nonblocking",
            "-r",
            str(rate),
            "-f",
            "raw",
            "-o",
            str(raw),
            "--pid",
            str(receiver.proc.pid),
        ]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hello = receiver.greeted(timeout + 60)
        spy.send_signal(signal.SIGINT)  # py-spy writes its samples when interrupted
        spy.wait(timeout=30)
        receiver.stop()
    lines: collections.Counter[str] = collections.Counter()
    funcs: collections.Counter[str] = collections.Counter()
    total = 0
    for row in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = row.rpartition(" ")
        leaf = stack.split(";")[-1]
        total += int(count)
        lines[leaf] += int(count)
        funcs[leaf.split(":")[0] + ")" if ":" in leaf else leaf] += int(count)
    shutil.rmtree(tmp, ignore_errors=True)
    if not total:
        print("py-spy recorded nothing (is ptrace allowed here?)")
        return
    boot = hello["warm_boot"]
    print(f"\npy-spy samples of a receiver booting {n:,} entries ({shape} values; {rate} Hz, {total} samples,")
    print(f"launch to ready; its warm boot took {boot['seconds']} s): share of all samples, own time")
    for title, counter in (("by line", lines), ("by function", funcs)):
        print(f"--- {title}")
        for where, count in counter.most_common(top):
            print(f"{count / total * 100:6.1f}%  {where}")


# -- output -------------------------------------------------------------------------------


def boot_table(rows: list[Row], rounds: int) -> str:
    body: list[list[str] | None] = []
    last = None
    for r in rows:
        if last is not None and (r.n, r.shape) != last:
            body.append(None)
        last = (r.n, r.shape)
        body.append(
            [
                f"{r.n:,}",
                r.shape,
                r.system,
                spread(r.sync_s) if any(x is not None for x in r.sync_s) else (r.note or "-"),
                spread(r.launch_s),
                "-" if r.us_per_entry() is None else f"{r.us_per_entry():.2f}",
                spread(r.member_mb, ".0f"),
                spread(r.peak_mb, ".0f"),
                spread(r.stall_ms, ".1f") if r.stall_ms else "-",
            ]
        )
    return format_table(
        ["entries", "values", "system", "sync s", "launch s", "us/entry", "member +MB", "peak +MB", "donor stall ms"],
        body,
        title=f"Warm boot: a new member catching up with N entries; median [min-max] of {rounds} receivers",
    )


def ratio_of(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def detail(title: str, runs: list[dict[str, Any]], cell: Callable[[dict[str, Any]], str]) -> None:
    """One indented line of the diagnosis under a row: ``title``, then a cell per receiver run."""
    if runs:
        print(f"      {title}: " + ", ".join(map(cell, runs)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated entry counts")
    parser.add_argument("--shapes", default="str,dict", help="value shapes: str, dict")
    parser.add_argument("--rounds", type=int, default=5, help="receivers per size and system (median reported)")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--no-plain", action="store_true", help="skip the no-TTL/bound shoal line")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory comparison")
    parser.add_argument("--syncobj", action="store_true", help="add pysyncobj (str values only)")
    parser.add_argument("--profile", action="store_true", help="then cProfile a shoal boot of the largest size")
    parser.add_argument("--profile-only", action="store_true", help="only the --profile part")
    parser.add_argument("--sample", action="store_true", help="only py-spy samples of a receiver's boot (largest size)")
    parser.add_argument(
        "--pretouch",
        type=int,
        default=0,
        metavar="MB",
        help="a diagnosis: before each receiver starts, touch MB of fresh memory in a throwaway process "
        "(bench/pagefaults.py), so its heap lands on pages this VM's host has backed recently",
    )
    parser.add_argument(
        "--sample-steps", action="store_true", help="a diagnosis: sample the stacks of the donor's long loop steps"
    )
    parser.add_argument("--json", default=str(RESULTS / "boot.json"))
    parser.add_argument("--src", help="run shoal from this src directory (another checkout's, for a before/after)")
    args = parser.parse_args()
    global PRETOUCH_MB
    PRETOUCH_MB = args.pretouch
    if args.sample_steps:
        DONOR_FLAGS.append("--sample-steps")
    if args.src:
        harness.SRC = Path(args.src).resolve()

    sizes = [int(x) for x in args.sizes.split(",")]
    shapes = args.shapes.split(",")
    timeout = max(60.0, max(sizes) / 1e6 * 40)
    if args.profile_only:
        profile_shoal(sizes[-1], shapes[0], timeout=timeout, top=25)
        return 0
    if args.sample:
        sample_shoal(sizes[-1], shapes[0], timeout=timeout, top=20)
        return 0
    binary = redis_binary(args.no_redis)
    rows: list[Row] = []
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()

    def progress(what: str) -> None:
        print(f"  {what} done ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

    for n in sizes:
        for shape in shapes:
            rows.append(run_shoal(n, shape, args.rounds, ttl=True, timeout=timeout))
            progress(f"{n:,} {shape} shoal")
            if binary:
                rows.append(run_redis(binary, n, shape, args.rounds, timeout=timeout))
                progress(f"{n:,} {shape} redis")
            if shape == "str" and not args.no_plain:
                rows.append(run_shoal(n, shape, args.rounds, ttl=False, timeout=timeout))
                progress(f"{n:,} {shape} shoal without TTL")
        if args.syncobj:
            rows.append(run_syncobj(n, timeout=timeout))
            progress(f"{n:,} pysyncobj")

    memory: dict[tuple[str, str], float | None] = {}
    n_mem = max(sizes) if max(sizes) <= 1_000_000 else 1_000_000
    n_mem = max(x for x in sizes if x <= n_mem) if any(x <= n_mem for x in sizes) else min(sizes)
    if not args.no_memory:
        for shape in shapes:
            for kind in ("dict", "cachetools", "cachebox", "shoal"):
                memory[(shape, kind)] = run_memory(n_mem, shape, kind)
            progress(f"memory {n_mem:,} {shape}")

    print(boot_table(rows, args.rounds))
    print("sync s: shoal node.start() -> ready; redis REPLICAOF -> link up and DBSIZE == N (the same span).")
    print("launch s: process launch -> ready, both (shoal includes starting Python and importing).")
    print(f"caches: ttl={TTL}, max_entries=N (the no-TTL/bound line: neither); GC on; donor filled with set_many.")
    print("member +MB: RSS at ready minus RSS before the node existed (redis: replica RSS minus its RSS empty).")
    print()
    print(
        "shoal diagnosis, per receiver: warm_boot seconds (stats), receiver CPU s (all threads,"
        " start -> ready) and GC ms, longest donor chunk / GC pause:"
    )
    for r in rows:
        if not r.system.startswith("shoal") or "runs" not in r.extra:
            continue
        runs = r.extra["runs"]
        print(
            f"  {r.n:>9,} {r.shape:4} {r.system:20} boot s "
            + ", ".join(f"{x['warm_boot_s']:.3f}" for x in runs)
            + "; CPU s "
            + ", ".join(f"{x['receiver_cpu_s']:.3f}" for x in runs)
            + "; GC ms "
            + ", ".join(f"{x['receiver_gc_ms']:.0f}" for x in runs)
            + f"; chunk {max(x['donor_max_chunk_ms'] for x in runs):.1f} ms, donor GC "
            f"{max(x['donor_gc_max_ms'] for x in runs):.1f} ms; idle stall {r.extra['donor_idle_stall_ms']:.1f} ms;"
            f" donor fill {r.extra['donor_fill_s']:.1f} s"
        )
        detail(
            "receiver CPU as user / system s, and page faults (start -> ready)",
            [x for x in runs if x.get("receiver_sys_s") is not None],
            lambda x: f"{x['receiver_user_s']:.2f} / {x['receiver_sys_s']:.2f} ({x['receiver_page_faults']:,})",
        )
        detail(
            "longest donor loop step, CPU ms (of it system ms, page faults)",
            [x for x in runs if x.get("donor_step_cpu_ms") is not None],
            lambda x: (
                f"{x['donor_step_cpu_ms']:.1f} ({x['donor_step']}; {x.get('donor_step_sys_ms') or 0:.0f}, "
                f"{x.get('donor_step_faults') or 0:,})"
            ),
        )
        for x in runs:  # where the longest steps past StepWatch.SAMPLE_AFTER_MS ran, innermost frame first
            for where, count in x.get("donor_step_stacks") or []:
                print(f"        sampled {count}x in a {x['donor_step_cpu_ms']:.0f} ms step: {where}")

    by = {(r.n, r.shape, r.system): r for r in rows}
    if memory:
        print()
        body = []
        for shape in shapes:
            base = memory[(shape, "dict")]
            member = by.get((n_mem, shape, "shoal"))
            redis_row = by.get((n_mem, shape, "redis"))
            cells: list[tuple[str, float | None]] = [
                ("dict", base),
                ("cachetools.TTLCache", memory[(shape, "cachetools")]),
                ("cachebox.VTTLCache", memory[(shape, "cachebox")]),
                ("shoal.Cache (local)", memory[(shape, "shoal")]),
                ("shoal member (receiver at ready)", median(member.member_mb) if member else None),
                ("redis replica", median(redis_row.member_mb) if redis_row else None),
            ]
            for label, mb in cells:
                body.append(
                    [
                        shape,
                        label,
                        "-" if mb is None else f"{mb:.0f}",
                        "-" if mb is None else f"{mb * MB / n_mem:.0f}",
                        "-" if mb is None or not base else f"{mb / base:.2f}x",
                    ]
                )
            body.append(None)
        print(
            format_table(
                ["values", "holder", "MB", "bytes/item", "x dict"],
                body[:-1],
                title=f"Memory of {n_mem:,} items (RSS growth, keys and values included; caches ttl={TTL}, bound N)",
            )
        )

    print()
    bars: list[list[str]] = []
    big = max(sizes)
    one_m = 1_000_000 if 1_000_000 in sizes else big
    for shape in shapes:
        s, r = by.get((one_m, shape, "shoal")), by.get((one_m, shape, "redis"))
        if s and r:
            sync = ratio_of(median(s.sync_s), median(r.sync_s))
            launch = ratio_of(median(s.launch_s), median(r.launch_s))
            bars.append(
                [
                    f"warm boot {one_m:,} ({shape}) <= {BAR_VS_REDIS}x redis full sync",
                    "-" if sync is None else f"{sync:.2f}x (launch->ready {launch:.2f}x)" if launch else f"{sync:.2f}x",
                    mark(None if sync is None else sync <= BAR_VS_REDIS),
                ]
            )
        member = by.get((n_mem, shape, "shoal"))
        base = memory.get((shape, "dict"))
        if member and base:
            m = median(member.member_mb)
            mr = ratio_of(m, base)
            bars.append(
                [
                    f"member memory ({shape}, {n_mem:,}) <= {BAR_MEMORY_VS_DICT}x a plain dict",
                    "-" if mr is None else f"{mr:.2f}x ({m:.0f} vs {base:.0f} MB)",
                    mark(None if mr is None else mr <= BAR_MEMORY_VS_DICT),
                ]
            )
        stall_row = by.get((one_m, shape, "shoal"))
        if stall_row and stall_row.stall_ms:
            worst = max(stall_row.stall_ms)
            bars.append(
                [
                    f"donor loop stall streaming {one_m:,} ({shape}) <= {BAR_STALL_MS:g} ms",
                    f"median {median(stall_row.stall_ms):.1f} ms, worst {worst:.1f} ms",
                    mark(median(stall_row.stall_ms) <= BAR_STALL_MS),  # type: ignore[operator]
                ]
            )
        if big > one_m:
            a, b = by.get((one_m, shape, "shoal")), by.get((big, shape, "shoal"))
            if a and b and a.us_per_entry() and b.us_per_entry():
                sc = b.us_per_entry() / a.us_per_entry()  # type: ignore[operator]
                bars.append(
                    [
                        f"time per entry at {big:,} <= {BAR_SCALE}x at {one_m:,} ({shape})",
                        f"{sc:.2f}x ({b.us_per_entry():.2f} vs {a.us_per_entry():.2f} us/entry)",
                        mark(sc <= BAR_SCALE),
                    ]
                )
                ma, mb_ = median(a.member_mb), median(b.member_mb)
                if ma and mb_:
                    bars.append(
                        [
                            f"member bytes per entry at {big:,} vs {one_m:,} ({shape})",
                            f"{mb_ * MB / big:.0f} vs {ma * MB / one_m:.0f} B/entry ({mb_ / big / (ma / one_m):.2f}x)",
                            "",
                        ]
                    )
    if bars:
        print(format_table(["bar (issue 15)", "measured, same run", "status"], bars, title="Bars"))

    print(
        f"\n{environment()}; load {load_before:.2f} before; redis-server {redis_version(binary) if binary else '-'}; "
        f"compare ratios from the same run; total {time.monotonic() - t0:.0f} s"
    )
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "rows": [asdict(r) for r in rows],
            "memory": {f"{s}/{k}": v for (s, k), v in memory.items()},
            "memory_items": n_mem,
        }
        path.write_text(json.dumps(payload, indent=1))
    if args.profile:
        profile_shoal(big, shapes[0], timeout=timeout, top=25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
