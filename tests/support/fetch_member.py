"""A member process whose callers burst on ``fetch``/``afetch``/``memoize``, for the single-flight tests.

Run as ``python -m tests.support.fetch_member --calls FILE --seeds A,B``. It prints
one JSON line ``{"address": ..., "id": ...}`` once it listens, then answers one
JSON command per line with one JSON line:

- ``burst`` {id, keys, callers}: start ``callers`` concurrent callers per key, a
  third each through ``fetch`` (threads), ``afetch`` (tasks on an asyncio loop of
  their own) and a ``memoize``d function; returns at once.
- ``results`` {id}: wait for that burst to end; ``{key: {outcome: count}}``, the
  outcome being ``value:V`` or ``error:TYPE`` (for a ``LoaderError``, the type the
  loader raised on the member that ran it).
- ``fail`` {keys}: the loader raises ``LookupError`` for these keys from now on.
- ``owner`` {key}: the id of the member that owns the key's lease.
- ``members``, ``stats``, ``stop``.

The loader appends one line ``PID KEY`` to the ``--calls`` file per call (O_APPEND:
lines from several processes never interleave), then sleeps ``--load-ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shoal.errors import LoaderError
from shoal.node import Node


def outcome_of(error: BaseException) -> str:
    return f"error:{error.type_name if isinstance(error, LoaderError) else type(error).__name__}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--seeds", default="")
    parser.add_argument("--secret", default="the single-flight tests' cluster secret")
    parser.add_argument("--calls", required=True)
    parser.add_argument("--load-ms", type=float, default=200.0)
    parser.add_argument("--single-flight", default="cluster")
    parser.add_argument("--failure-timeout", type=float, default=2.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    node = Node(
        listen=args.listen,
        seeds=[s for s in args.seeds.split(",") if s],
        secret=args.secret,
        failure_timeout=args.failure_timeout,
        heartbeat_interval=args.failure_timeout / 8,
    )
    cache = node.cache("u", ttl=300, single_flight=args.single_flight)
    node.start()
    failing: set[str] = set()
    calls_fd = os.open(args.calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def upstream(key: str) -> str:
        os.write(calls_fd, f"{os.getpid()} {key}\n".encode())
        time.sleep(args.load_ms / 1000)
        if key in failing:
            raise LookupError(f"no user {key}")
        return f"value of {key}"

    @cache.memoize(key=lambda key: key)
    def lookup(key: str) -> str:
        return upstream(key)

    async def aload(key: str) -> str:
        return await asyncio.to_thread(upstream, key)

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    pool = ThreadPoolExecutor(max_workers=200)
    bursts: dict[str, threading.Thread] = {}
    results: dict[str, dict[str, Counter[str]]] = {}

    def run_burst(burst_id: str, keys: list[str], callers: int) -> None:
        tally: dict[str, Counter[str]] = {key: Counter() for key in keys}
        lock = threading.Lock()

        def note(key: str, outcome: str) -> None:
            with lock:
                tally[key][outcome] += 1

        def sync_call(key: str, memoized: bool) -> None:
            try:
                note(key, f"value:{lookup(key) if memoized else cache.fetch(key, upstream)}")
            except Exception as exc:
                note(key, outcome_of(exc))

        async def async_calls() -> None:
            async def one(key: str) -> None:
                try:
                    note(key, f"value:{await cache.afetch(key, aload)}")
                except Exception as exc:
                    note(key, outcome_of(exc))

            await asyncio.gather(*(one(key) for key in keys for i in range(callers) if i % 3 == 1))

        tasks = asyncio.run_coroutine_threadsafe(async_calls(), loop)
        futures = [pool.submit(sync_call, key, i % 3 == 2) for i in range(callers) for key in keys if i % 3 != 1]
        for future in futures:
            future.result()
        tasks.result()
        results[burst_id] = tally

    print(json.dumps({"address": node.address, "id": f"{node.node_id:016x}"}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        result: Any = None
        if op == "burst":
            thread = threading.Thread(target=run_burst, args=(cmd["id"], cmd["keys"], cmd["callers"]), daemon=True)
            bursts[cmd["id"]] = thread
            thread.start()
        elif op == "results":
            bursts[cmd["id"]].join(cmd.get("timeout", 60))
            result = {key: dict(counts) for key, counts in results.get(cmd["id"], {}).items()} or None
        elif op == "fail":
            failing.clear()
            failing.update(cmd["keys"])
        elif op == "owner":
            result = f"{node._driver.core.leases.owner('u', cmd['key']):016x}"
        elif op == "members":
            result = [m for m in node.members() if m["state"] in ("self", "up")]
        elif op == "stats":
            result = node.stats()
        elif op == "stop":
            node.stop()
            print(json.dumps({"ok": True}), flush=True)
            return 0
        print(json.dumps({"ok": True, "result": result}), flush=True)
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
