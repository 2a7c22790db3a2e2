"""``shoal demo``: a local cluster through a rolling deploy, under read load.

It starts real member processes on loopback (``shoal serve`` plus two demo
queries: ``python -m shoal.demo member``), fills the cache, then
restarts every member in turn while a reader keeps looking keys up on the
members that are ready (as a Kubernetes service routes only to ready pods). A
miss is "loaded" from the slow upstream and written back, as ``fetch`` would.
The same deploy then runs with local-only caches (members that do not know each
other), which start cold after every restart. Per step it prints the member,
its warm-boot seconds, entries loaded, donor and the hit rates; then the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .client import Client

if TYPE_CHECKING:
    from .node import Node

CACHE = "demo"


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it if the demo dies, so no member outlives it."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", type=int, default=3, help="members in the cluster (default 3)")
    parser.add_argument("--entries", type=int, default=100_000, help="entries to fill (default 100000)")
    parser.add_argument("--kill", action="store_true", help="kill -9 each member instead of a graceful stop")
    parser.add_argument("--dwell", type=float, default=1.5, help="seconds of reads after each member is ready")
    parser.add_argument("--batch", type=int, default=100, help="keys per lookup batch")
    parser.add_argument("--no-local", action="store_true", help="skip the local-only comparison run")


@dataclass
class Proc:
    index: int
    address: str
    proc: asyncio.subprocess.Process
    node_id: str = ""
    started: float = 0.0


@dataclass
class Counter:
    hits: int = 0
    lookups: int = 0

    @property
    def rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 1.0


@dataclass
class Step:
    member: str
    boot_seconds: float
    entries: int
    donor: str
    state: str
    during: Counter = field(default_factory=Counter)
    restarted: Counter = field(default_factory=Counter)


class Deploy:
    """One run of the demo: a set of members, a reader, a rolling restart."""

    def __init__(self, args: argparse.Namespace, clustered: bool, secret: str) -> None:
        self.args = args
        self.clustered = clustered
        self.secret = secret
        self.members: list[Proc | None] = [None] * args.members
        self.ready: dict[int, str] = {}  # index -> address, members that take lookups
        self.keys = [f"user:{i}" for i in range(args.entries)]
        self.counter = Counter()
        self.per_member: dict[int, Counter] = {}
        self.rng = random.Random(7)
        self._clients: dict[str, Client] = {}
        self.reading = True

    # -- processes ---------------------------------------------------------------------

    async def spawn(self, index: int, listen: str = "127.0.0.1:0") -> Proc:
        seeds = [p.address for p in self.members if p is not None and p.index != index] if self.clustered else []
        cmd = [
            sys.executable,
            "-m",
            "shoal.demo",
            "member",
            "--listen",
            listen,
            "--seeds",
            ",".join(seeds),
            "--ready-timeout",
            "60",
        ]
        env = dict(os.environ, SHOAL_SECRET=self.secret)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"member {index} did not start: {line!r}")
        parts = line.split()
        member = Proc(index, parts[2], proc, parts[3].removeprefix("id="), started)
        self.members[index] = member
        return member

    async def wait_ready(self, member: Proc) -> None:
        assert member.proc.stdout is not None
        line = (await asyncio.wait_for(member.proc.stdout.readline(), 60)).decode().strip()
        if line != "ready=True":
            raise RuntimeError(f"member {member.address} reported {line!r}")

    async def stop(self, member: Proc) -> None:
        self.ready.pop(member.index, None)
        client = self._clients.pop(member.address, None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
        if member.proc.returncode is None:
            member.proc.send_signal(signal.SIGKILL if self.args.kill else signal.SIGTERM)
            try:
                await asyncio.wait_for(member.proc.wait(), 15)
            except asyncio.TimeoutError:
                member.proc.kill()
                await member.proc.wait()

    async def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
        self._clients.clear()
        for member in self.members:
            if member is not None and member.proc.returncode is None:
                member.proc.kill()
                await member.proc.wait()

    async def client(self, address: str) -> Client:
        client = self._clients.get(address)
        if client is None:
            client = await Client(address, self.secret).__aenter__()
            self._clients[address] = client
        return client

    # -- load ------------------------------------------------------------------------------

    async def fill(self) -> None:
        targets = [m for m in self.members if m is not None]
        if self.clustered:
            targets = targets[:1]  # replication carries it to the others
        for member in targets:
            client = await self.client(member.address)
            for i in range(0, len(self.keys), 5000):
                chunk = {k: f"acct-{k[5:]}" for k in self.keys[i : i + 5000]}
                await client.query("set_many", CACHE, chunk)
        for m in self.members:
            assert m is not None
            client = await self.client(m.address)
            deadline = time.monotonic() + 60
            while (await client.query("probe", CACHE, []))["entries"] < len(self.keys):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"member {m.address} did not fill")
                await asyncio.sleep(0.05)

    async def reader(self) -> None:
        """Look keys up on ready members; load misses back, as ``fetch`` would."""
        while self.reading:
            if not self.ready:
                await asyncio.sleep(0.01)
                continue
            index, address = self.rng.choice(list(self.ready.items()))
            batch = self.rng.sample(self.keys, self.args.batch)
            try:
                client = await self.client(address)
                answer = await client.query("probe", CACHE, batch)
            except Exception:
                self._clients.pop(address, None)
                await asyncio.sleep(0.01)
                continue
            hits = answer["hits"]
            for counter in (self.counter, self.per_member.setdefault(index, Counter())):
                counter.hits += hits
                counter.lookups += len(batch)
            if hits < len(batch):
                await client.query("set_many", CACHE, {k: f"acct-{k[5:]}" for k in batch})

    # -- the deploy ---------------------------------------------------------------------------

    async def run(self, say: Any) -> list[Step]:
        for i in range(self.args.members):
            member = await self.spawn(i)
            await self.wait_ready(member)
        say(f"  {self.args.members} members up: {', '.join(m.address for m in self.members if m)}")
        t = time.monotonic()
        await self.fill()
        say(f"  filled {len(self.keys):,} entries in {time.monotonic() - t:.1f}s")
        for m in self.members:
            assert m is not None
            self.ready[m.index] = m.address
        reader = asyncio.ensure_future(self.reader())
        steps: list[Step] = []
        try:
            for i in range(self.args.members):
                old = self.members[i]
                assert old is not None
                before = Counter(self.counter.hits, self.counter.lookups)
                await self.stop(old)
                member = await self.spawn(i, listen=old.address)
                await self.wait_ready(member)
                stats = await (await self.client(member.address)).query("stats")
                boot = stats["caches"][CACHE]["warm_boot"]
                self.per_member[i] = Counter()
                self.ready[i] = member.address
                await asyncio.sleep(self.args.dwell)
                during = Counter(self.counter.hits - before.hits, self.counter.lookups - before.lookups)
                donor = self._address_of(boot["donor"])
                step = Step(
                    member.address, boot["seconds"], boot["entries"], donor, boot["state"], during, self.per_member[i]
                )
                steps.append(step)
                say(_row(len(steps), step, self.clustered))
        finally:
            # A flag, not only cancel(): before 3.12, wait_for can swallow a cancellation.
            self.reading = False
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        return steps

    def _address_of(self, node_id: str | None) -> str:
        for m in self.members:
            if m is not None and m.node_id == node_id:
                return m.address
        return node_id or "-"


HEADER = (
    f"{'step':<5} {'member':<16} {'mode':<10} {'boot s':>7} {'entries':>8}  {'donor':<16} "
    f"{'hit rate':>9} {'restarted':>9}"
)


def _row(n: int, step: Step, clustered: bool) -> str:
    mode = "shoal" if clustered else "local"
    return (
        f"{n:<5} {step.member:<16} {mode:<10} {step.boot_seconds:>7.2f} {step.entries:>8,}  {step.donor:<16} "
        f"{step.during.rate:>8.2%} {step.restarted.rate:>9.2%}"
    )


async def _main(args: argparse.Namespace) -> int:
    secret = secrets.token_hex(16)

    def say(text: str) -> None:
        print(text, flush=True)

    how = "kill -9" if args.kill else "graceful stop"
    say(f"shoal demo: {args.members} members on loopback, {args.entries:,} entries, rolling restart by {how}")
    results: dict[bool, list[Step]] = {}
    for clustered in (True, False) if not args.no_local else (True,):
        say("")
        say(
            "replicated shoal cluster (warm boot from the largest peer):"
            if clustered
            else "local-only caches (each member alone; a restarted member starts cold):"
        )
        say(HEADER)
        deploy = Deploy(args, clustered, secret)
        try:
            results[clustered] = await deploy.run(say)
            counter = deploy.counter
            say(f"  total: {counter.hits:,} hits of {counter.lookups:,} lookups = {counter.rate:.2%}")
        finally:
            await deploy.close()
    say("")
    say("totals during the rolling deploy:")
    for clustered, steps in results.items():
        hits = sum(s.during.hits for s in steps)
        lookups = sum(s.during.lookups for s in steps)
        name = "shoal (replicated)" if clustered else "local-only cache"
        boot = sum(s.boot_seconds for s in steps) / max(1, len(steps))
        say(f"  {name:<20} hit rate {hits / max(1, lookups):7.2%}   mean warm boot {boot:.2f}s   lookups {lookups:,}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        print("interrupted; members stopped", file=sys.stderr)
        return 130


# -- a member of the demo ------------------------------------------------------------------


def add_demo_queries(node: Node) -> None:
    """The reader's and the filler's questions, answered by the member itself: one round trip
    looks up or writes a whole batch (``probe``, ``set_many``)."""
    cache = node.cache(CACHE)

    def probe(name: str, keys: list[Any]) -> dict[str, Any]:
        if name != CACHE:
            raise ValueError(f"no cache {name!r} here")
        hits = sum(1 for key in keys if type(key) in (str, bytes, int) and key in cache)
        return {"hits": hits, "entries": len(cache), "ready": node.wait_ready(0)}

    def set_many(name: str, mapping: dict[Any, Any]) -> dict[str, Any]:
        if name != CACHE:
            raise ValueError(f"no cache {name!r} here")
        cache.set_many(mapping)
        return {"set": len(mapping)}

    node.answer("probe", probe)
    node.answer("set_many", set_many)


def member_main(argv: list[str]) -> int:
    """``python -m shoal.demo member``: a member hosting the demo cache that the demo can probe and fill."""
    from .node import Node

    parser = argparse.ArgumentParser(prog="python -m shoal.demo member")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--seeds", default="")
    parser.add_argument("--ttl", type=float, default=3600.0)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        node = Node(args.listen, [s for s in args.seeds.split(",") if s], os.environ.get("SHOAL_SECRET"))
        node.cache(CACHE, ttl=args.ttl)
        add_demo_queries(node)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        async with node:
            print(f"listening on {node.address} id={node.node_id:016x}", flush=True)
            print(f"ready={await node.ready(timeout=args.ready_timeout)}", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["member"]:
        sys.exit("usage: python -m shoal.demo member [shoal serve flags]  (the demo itself: shoal demo)")
    sys.exit(member_main(sys.argv[2:]))
