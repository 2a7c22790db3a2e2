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
import platform
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from report import format_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MEMBER = HERE / "boot_member.py"
RESULTS = HERE / "results"

TTL = 3600
REDIS_FLAGS = [
    "--save", "", "--appendonly", "no",
    "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", "--repl-diskless-load", "on-empty-db",
]  # fmt: skip

# Bars (issue 15), as ratios measured in one run.
BAR_VS_REDIS = 1.2  # warm boot of 1M with TTLs <= 1.2x the Redis full sync
BAR_MEMORY_VS_DICT = 1.6  # member memory <= 1.6x a plain dict of the same items
BAR_SCALE = 1.2  # time per entry at 5M <= 1.2x that at 1M
BAR_STALL_MS = 5.0  # donor loop stall while streaming 1M

MB = 1e6


def key(i: int) -> str:
    return f"user:{i:06d}"


def value(i: int, shape: str) -> Any:
    if shape == "dict":
        return {"id": i, "name": f"User {i}", "email": f"user{i}@example.com", "active": i % 7 != 0}
    return f"acct-{i:08d}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(field: str, pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def spread(xs: Sequence[float | None], spec: str = ".3f") -> str:
    """Median [min-max] of the values measured; a dash when none was."""
    got = [x for x in xs if x is not None]
    if not got:
        return "-"
    mid = format(statistics.median(got), spec)
    if len(got) == 1:
        return mid
    return f"{mid} [{format(min(got), spec)}-{format(max(got), spec)}]"


def median(xs: Sequence[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return statistics.median(got) if got else None


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


class Member:
    """A bench/boot_member.py process spoken to in JSON lines; its stderr is kept for the diagnosis."""

    def __init__(self, *argv: str) -> None:
        self.role = argv[0]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        self.err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.t_launch = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, str(MEMBER), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            env=env,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"{self.role} member exited ({code}): {self.stderr_tail()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stderr_tail(self, lines: int = 5) -> str:
        self.err.seek(0)
        return " | ".join(self.err.read().strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "stop"}\n')
                self.proc.stdin.close()
                self.proc.wait(20)
            except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def cache_args(ttl: bool, n: int) -> list[str]:
    return ["--ttl", str(TTL if ttl else 0), "--bound", str(n if ttl else 0)]


# -- shoal ------------------------------------------------------------------------------


def run_shoal(n: int, shape: str, rounds: int, ttl: bool, timeout: float) -> Row:
    system = "shoal" if ttl else "shoal, no TTL/bound"
    row = Row(n, shape, system)
    donor = Member("donor", "--n", str(n), "--shape", shape, *cache_args(ttl, n))
    try:
        hello = donor.read()
        address = hello["address"]
        row.extra["donor_fill_s"] = hello["fill_s"]
        row.extra["donor_idle_stall_ms"] = donor.ask(op="idle_stall", seconds=1.0)["max_gap_ms"]
        runs = []
        for _ in range(rounds):
            donor.ask(op="stall_reset")
            receiver = Member("receiver", "--seed", address, "--timeout", str(timeout), *cache_args(ttl, n))
            try:
                out = receiver.read()
            finally:
                receiver.stop()
            stall = donor.ask(op="stall")
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
                    "donor_max_chunk_ms": stall["max_chunk_ms"],
                    "donor_gc_max_ms": stall["gc_max_ms"],
                }
            )
        row.extra["runs"] = runs
        return row
    finally:
        donor.stop()


def run_memory(n: int, shape: str, kind: str) -> float:
    m = Member("memory", "--n", str(n), "--shape", shape, "--kind", kind, *cache_args(True, n))
    try:
        out = m.read()
    finally:
        m.stop()
    return float(out["rss_after"] - out["rss_before"]) / MB


# -- redis ------------------------------------------------------------------------------


class Redis:
    def __init__(self, binary: str) -> None:
        import redis

        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="shoal-bench-boot-")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir.name]
        argv += ["--daemonize", "no", "--loglevel", "warning", *REDIS_FLAGS]
        self.t_launch = time.time()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)

    def wait_up(self, timeout: float = 10) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()


def run_redis(binary: str, n: int, shape: str, rounds: int, timeout: float) -> Row:
    import msgpack
    import redis

    row = Row(n, shape, "redis")
    master = Redis(binary)
    try:
        master.wait_up()
        pipe = master.client.pipeline(transaction=False)
        for i in range(n):
            v = value(i, shape)
            pipe.set(key(i), msgpack.packb(v) if shape == "dict" else v, ex=TTL)
            if len(pipe) >= 10_000:
                pipe.execute()
        pipe.execute()
        assert master.client.dbsize() == n
        for _ in range(rounds):
            replica = Redis(binary)
            try:
                replica.wait_up()
                empty = proc_status("VmRSS", replica.proc.pid)
                t_sync = time.time()
                replica.client.replicaof("127.0.0.1", str(master.port))
                deadline = time.monotonic() + timeout
                done = None
                while time.monotonic() < deadline:
                    try:
                        info = replica.client.info("replication")
                        if info.get("master_link_status") == "up" and replica.client.dbsize() == n:
                            done = time.time()
                            break
                    except (redis.ConnectionError, redis.ResponseError):  # LOADING while it reads the RDB
                        pass
                    time.sleep(0.001)
                if done is None:
                    row.note = "timeout"
                row.sync_s.append(None if done is None else done - t_sync)
                row.launch_s.append(None if done is None else done - replica.t_launch)
                row.member_mb.append((proc_status("VmRSS", replica.proc.pid) - empty) / MB)
                row.peak_mb.append((proc_status("VmHWM", replica.proc.pid) - empty) / MB)
            finally:
                replica.stop()
        return row
    finally:
        master.stop()


# -- pysyncobj (opt-in) -----------------------------------------------------------------


def run_syncobj(n: int, timeout: float) -> Row:
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    row = Row(n, "str", "pysyncobj")

    def start(i: int) -> Member:
        partners = ",".join(a for a in addrs if a != addrs[i])
        m = Member("syncobj", "--self-addr", addrs[i], "--partners", partners)
        m.read()
        return m

    members = [start(0), start(1)]
    try:
        members[0].ask(op="wait_leader")
        fill = members[0].ask(op="fill", n=n)
        if fill["len"] != n:
            row.note = f"fill failed ({fill['len']} of {n})"
            return row
        for m in members:
            m.ask(op="compact")
        new = start(2)
        members.append(new)
        out = new.ask(op="wait_len", n=n, timeout=timeout)
        ok = out["len"] == n
        row.sync_s.append(out["t_done"] - out["t_start"] if ok else None)
        row.launch_s.append(out["t_done"] - new.t_launch if ok else None)
        row.member_mb.append((out["rss_after"] - out["rss_before"]) / MB)
        row.peak_mb.append((out["hwm"] - out["rss_before"]) / MB)
        row.note = "" if ok else f"timeout ({timeout:.0f} s, {out['len']} of {n})"
        return row
    finally:
        for m in members:
            m.stop()


# -- profile ------------------------------------------------------------------------------


def profile_shoal(n: int, shape: str, timeout: float, top: int) -> None:
    """cProfile the loop threads of a receiver and its donor (TTL and bound, as measured)."""
    tmp = Path(tempfile.mkdtemp(prefix="shoal-boot-prof-"))
    rprof, dprof = tmp / "receiver.prof", tmp / "donor.prof"
    donor = Member("donor", "--n", str(n), "--shape", shape, "--profile", str(dprof), *cache_args(True, n))
    try:
        address = donor.read()["address"]
        donor.ask(op="stall_reset")
        receiver = Member(
            "receiver", "--seed", address, "--timeout", str(timeout), "--profile", str(rprof), *cache_args(True, n)
        )
        try:
            out = receiver.read()
        finally:
            receiver.stop()
        donor.ask(op="stall")
    finally:
        donor.stop()
    print(f"\ncProfile of a {n:,}-entry boot ({shape} values; profiled: {out['warm_boot']['seconds']} s)")
    for label, path in (("receiver (node loop thread)", rprof), ("donor (node loop thread, during the dump)", dprof)):
        print(f"\n--- {label}: top {top} by own time")
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.strip_dirs()  # no paths of this machine in the output
        stats.sort_stats("tottime").print_stats(top)
        print("\n".join(line for line in out.getvalue().splitlines() if str(tmp) not in line).strip("\n"))
    shutil.rmtree(tmp, ignore_errors=True)


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
    parser.add_argument("--json", default=str(RESULTS / "boot.json"))
    args = parser.parse_args()

    sizes = [int(x) for x in args.sizes.split(",")]
    shapes = args.shapes.split(",")
    timeout = max(60.0, max(sizes) / 1e6 * 40)
    if args.profile_only:
        profile_shoal(sizes[-1], shapes[0], timeout=timeout, top=25)
        return 0
    redis_binary = None if args.no_redis else shutil.which("redis-server")
    rows: list[Row] = []
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()

    def progress(what: str) -> None:
        print(f"  {what} done ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

    for n in sizes:
        for shape in shapes:
            rows.append(run_shoal(n, shape, args.rounds, ttl=True, timeout=timeout))
            progress(f"{n:,} {shape} shoal")
            if redis_binary:
                rows.append(run_redis(redis_binary, n, shape, args.rounds, timeout=timeout))
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
    print("shoal diagnosis, per receiver: warm_boot seconds (stats), receiver GC ms, longest donor chunk / GC pause:")
    for r in rows:
        if not r.system.startswith("shoal") or "runs" not in r.extra:
            continue
        runs = r.extra["runs"]
        print(
            f"  {r.n:>9,} {r.shape:4} {r.system:20} boot s "
            + ", ".join(f"{x['warm_boot_s']:.3f}" for x in runs)
            + "; GC ms "
            + ", ".join(f"{x['receiver_gc_ms']:.0f}" for x in runs)
            + f"; chunk {max(x['donor_max_chunk_ms'] for x in runs):.1f} ms, donor GC "
            f"{max(x['donor_gc_max_ms'] for x in runs):.1f} ms; idle stall {r.extra['donor_idle_stall_ms']:.1f} ms;"
            f" donor fill {r.extra['donor_fill_s']:.1f} s"
        )

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

    redis_version = ""
    if redis_binary:
        out = subprocess.run([redis_binary, "--version"], capture_output=True, text=True).stdout
        redis_version = out.split("v=")[1].split()[0] if "v=" in out else out.strip()
    print(
        f"\npython {platform.python_version()}, redis-server {redis_version or '-'}, "
        f"{os.cpu_count()} CPUs shared with other work (noisy: compare ratios from the same run), "
        f"load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after, total {time.monotonic() - t0:.0f} s"
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
