"""A real member process for the multi-process tests, driven over stdin/stdout.

Run as ``python -m tests.support.member --listen 127.0.0.1:0 --seeds A,B --secret S``.
It prints one JSON line ``{"address": ..., "id": ...}`` once it listens, then
answers one JSON command per line with one JSON line, until ``stop`` or EOF.
Commands: set, set_range, delete, get, get_range, len, items, keys_digest,
stats, members, ready, stop. Keys and values are strings (JSON).
For the fault tests and bench/soak.py: values (the values of a numbered key
range, None where absent), stamp (set a key to this process's time.time()),
wait_key (wait on this process until a key holds a value, or the given value; its
time.time() then, and the value), rss (this process's VmRSS in kB).
For the hostile-peer tests: tables (the sizes of the membership tables a peer can grow,
and how many dials membership has asked for since the start, in all and to distinct addresses).
SHOAL_TEST_CLOCK_OFFSET=SECONDS in the environment shifts this member's wall clock.
Test hooks for warm boot: hold_dumps (the dumps this member serves stop after
``after`` chunks in all, until release_dumps), dumps_held (streams waiting now);
hold_chunks (dump chunks and ends this member receives are kept, as if still in
flight, until release_chunks), chunks_held (how many are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

_CLOCK_OFFSET = float(os.environ.get("SHOAL_TEST_CLOCK_OFFSET") or 0)
if _CLOCK_OFFSET:  # a member whose wall clock is off (max_clock_skew tests), set before shoal binds time.time
    _real_time = time.time
    time.time = lambda: _real_time() + _CLOCK_OFFSET

from shoal.actions import Dial  # noqa: E402
from shoal.messages import DumpChunk, DumpEnd  # noqa: E402
from shoal.node import Node  # noqa: E402
from shoal.transport import Connection  # noqa: E402


class DumpGate:
    """Holds the dump streams a donor serves after ``after`` chunks, so a test can act mid-stream.

    It wraps ``Connection.drained``, which the donor awaits after writing each chunk; a
    held stream waits on the loop (heartbeats go on), it does not block it.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.after: int | None = None
        self.chunks = 0
        self.held = 0
        self._released: asyncio.Event | None = None
        original = Connection.drained
        gate = self

        async def drained(conn: Connection) -> None:
            await original(conn)
            gate.chunks += 1
            if gate.after is not None and gate.chunks >= gate.after:
                if gate._released is None:
                    gate._released = asyncio.Event()
                released = gate._released
                gate.held += 1
                try:
                    await released.wait()
                finally:
                    gate.held -= 1

        Connection.drained = drained  # type: ignore[method-assign]

    def hold(self, after: int) -> None:
        self.after, self.chunks = after, 0

    def release(self) -> None:
        def wake() -> None:
            self.after = None
            if self._released is not None:
                self._released.set()
                self._released = None

        self.node._driver.loop.call_soon_threadsafe(wake)


class ChunkGate:
    """Keeps the dump chunks (and stream ends) a booting member receives, then delivers them late.

    As if they were still in the network: a test can make live writes arrive
    before older dump data that was already sent.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.holding = False
        self.kept: list[tuple[int, Any]] = []
        core = node._driver.core
        assert core is not None
        self._message = core.message

        def message(peer: int, msg: Any, now: float, wall: float) -> list[Any]:
            if self.holding and isinstance(msg, (DumpChunk, DumpEnd)):
                self.kept.append((peer, msg))
                return []
            return self._message(peer, msg, now, wall)

        core.message = message  # type: ignore[method-assign]

    def release(self) -> None:
        def deliver() -> None:
            self.holding = False
            kept, self.kept = self.kept, []
            for peer, msg in kept:
                self.node._driver.run(self._message(peer, msg, time.monotonic(), time.time()))

        self.node._driver.loop.call_soon_threadsafe(deliver)


class DialCount:
    """Counts the dials membership asks for, so a test can tell how far a peer's addresses get dialed."""

    def __init__(self, node: Node) -> None:
        membership = node._driver.core.membership
        self.membership = membership
        self.dials = 0
        self.addresses: set[str] = set()
        tick = membership.tick

        def counted(now: float) -> list[Any]:
            actions = tick(now)
            for action in actions:
                if isinstance(action, Dial):
                    self.dials += 1
                    self.addresses.add(action.address)
            return actions

        membership.tick = counted  # type: ignore[method-assign]

    def tables(self) -> dict[str, int]:
        membership = self.membership
        return {
            "members": len(membership.members),
            "up": sum(1 for m in list(membership.members.values()) if m.state == "up"),
            "targets": len(membership._targets),
            "rumors": len(membership._rumors),
            "dials": self.dials,
            "addresses_dialed": len(self.addresses),
        }


def _wait_key(cache: Any, key: str, wanted: Any, timeout: float) -> list[Any] | None:
    """[time.time() when ``key`` first held ``wanted`` (any value if None), the value]; None after ``timeout``.

    It polls on this process, so what is measured is when the write landed, not a round trip.
    """
    deadline = time.monotonic() + timeout
    while (value := cache.get(key)) is None or (wanted is not None and value != wanted):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.0002)
    return [time.time(), value]


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--seeds", default="")
    parser.add_argument("--secret", default="shoal-test-secret")
    parser.add_argument("--cache", default="c")
    parser.add_argument("--ttl", type=float, default=None)
    parser.add_argument("--max-entries", type=int, default=None)
    parser.add_argument("--node-options", default="{}", help="JSON of extra Node keyword arguments")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    options: dict[str, Any] = json.loads(args.node_options)
    node = Node(listen=args.listen, seeds=[s for s in args.seeds.split(",") if s], secret=args.secret, **options)
    cache = node.cache(args.cache, ttl=args.ttl, max_entries=args.max_entries)
    node.start()
    gate = DumpGate(node)
    chunks = ChunkGate(node)
    dials = DialCount(node)
    print(json.dumps({"address": node.address, "id": f"{node.node_id:016x}"}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        result: Any = None
        if op == "set":
            cache.set(cmd["key"], cmd["value"])
        elif op == "set_range":
            for i in range(cmd["start"], cmd["start"] + cmd["count"]):
                cache.set(f"{cmd['prefix']}{i}", f"{cmd.get('value', 'v')}{i}")
        elif op == "delete":
            result = cache.delete(cmd["key"])
        elif op == "get":
            result = cache.get(cmd["key"])
        elif op == "get_range":
            keys = [f"{cmd['prefix']}{i}" for i in range(cmd["start"], cmd["start"] + cmd["count"])]
            result = sum(1 for k in keys if k in cache)
        elif op == "len":
            result = len(cache)
        elif op == "items":
            result = sorted(cache.items())
        elif op == "keys_digest":
            items = sorted(cache.items())
            result = [len(items), hashlib.sha256(json.dumps(items).encode()).hexdigest()]
        elif op == "stats":
            result = node.stats()
        elif op == "members":
            result = [m for m in node.members() if m["state"] in ("self", "up")]
        elif op == "ready":
            result = node.wait_ready(cmd.get("timeout", 30))
        elif op == "hold_dumps":
            gate.hold(cmd["after"])
        elif op == "release_dumps":
            gate.release()
        elif op == "dumps_held":
            result = gate.held
        elif op == "hold_chunks":
            chunks.holding = True
        elif op == "release_chunks":
            chunks.release()
        elif op == "chunks_held":
            result = len(chunks.kept)
        elif op == "values":
            result = [cache.get(f"{cmd['prefix']}{i}") for i in range(cmd["start"], cmd["start"] + cmd["count"])]
        elif op == "stamp":
            result = time.time()
            cache.set(cmd["key"], result)
        elif op == "wait_key":
            result = _wait_key(cache, cmd["key"], cmd.get("value"), cmd.get("timeout", 10.0))
        elif op == "tables":
            result = dials.tables()
        elif op == "rss":
            result = _rss_kb()
        elif op == "stop":
            node.stop()
            print(json.dumps({"ok": True}), flush=True)
            return 0
        print(json.dumps({"ok": True, "result": result}), flush=True)
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
