"""A real member process for the multi-process tests, driven over stdin/stdout.

Run as ``python -m tests.support.member --listen 127.0.0.1:0 --seeds A,B --secret S``.
It prints one JSON line ``{"address": ..., "id": ...}`` once it listens, then
answers one JSON command per line with one JSON line, until ``stop`` or EOF.
Commands: set, set_range, delete, get, get_range, len, items, keys_digest,
stats, members, ready, stop. Keys and values are strings (JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from typing import Any

from shoal.node import Node


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--seeds", default="")
    parser.add_argument("--secret", default="test-secret")
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
        elif op == "stop":
            node.stop()
            print(json.dumps({"ok": True}), flush=True)
            return 0
        print(json.dumps({"ok": True, "result": result}), flush=True)
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
