"""The ``shoal`` command: ``demo`` (the main job), ``serve``, ``members``, ``stats``, ``secret``.

Every flag of ``serve`` also reads an environment variable (``SHOAL_LISTEN``,
``SHOAL_ADVERTISE``, ``SHOAL_SEEDS``, ``SHOAL_DISCOVERY``, ``SHOAL_SECRET`` or ``SHOAL_SECRET_FILE``,
``SHOAL_CACHES``, ``SHOAL_HTTP``, ``SHOAL_PROTOCOL_MAX``), the way a Kubernetes pod spec sets them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ShoalError

log = logging.getLogger("shoal")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def read_secret(secret: str | None, secret_file: str | None) -> bytes | None:
    """The cluster secret from a flag, a file (a mounted Kubernetes Secret) or neither.

    A secret given but empty or short is an error (WeakSecret), never a silent
    "no secret": a file holding only a newline is a mistake to report, not to run with.
    """
    from .handshake import check_secret

    if secret_file:
        return check_secret(Path(secret_file).read_bytes())
    if secret is not None:
        return check_secret(secret)
    return None


def new_secret() -> str:
    """32 random bytes as URL-safe base64: fits an env var, a flag or a Kubernetes Secret."""
    return secrets.token_urlsafe(32)


def parse_cache_spec(spec: str) -> tuple[str, float | None, int | None]:
    """``NAME[:TTL[:MAX_ENTRIES]]``; an empty or ``none`` TTL means no expiry."""
    name, _, rest = spec.partition(":")
    ttl_text, _, max_text = rest.partition(":")
    if not name:
        raise ValueError(f"cache spec {spec!r} has no name")
    ttl = None if ttl_text.lower() in ("", "none") else float(ttl_text)
    max_entries = int(max_text) if max_text else None
    return name, ttl, max_entries


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- serve --------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    from .node import Node

    seeds = [s for s in (args.seeds or "").split(",") if s]
    node = Node(
        listen=args.listen,
        advertise=args.advertise,
        seeds=seeds,
        secret=read_secret(args.secret, args.secret_file),
        discovery=args.discovery,
        failure_timeout=args.failure_timeout,
        snapshot_path=args.snapshot_path,
        **({} if args.protocol_max is None else {"protocol_max": args.protocol_max}),
    )
    for spec in [s for s in (args.caches or "").split(",") if s]:
        name, ttl, max_entries = parse_cache_spec(spec)
        node.cache(name, ttl=ttl, max_entries=max_entries)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with node:
        print(f"listening on {node.address} id={node.node_id:016x}", flush=True)
        http = None
        if args.http:
            from . import httpd

            http = await httpd.serve(node, args.http)
            print(f"http on {httpd.bound_address(http)}", flush=True)
        ready = await node.ready(timeout=args.ready_timeout)
        print(f"ready={ready}", flush=True)
        await stop.wait()
        log.info("stopping on signal")
        if http is not None:
            http.close()
            await http.wait_closed()
    return 0


# -- members / stats ------------------------------------------------------------------


def _members(args: argparse.Namespace) -> int:
    from .client import query

    data = query(args.address, read_secret(args.secret, args.secret_file), "members")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    # A member of 0.1 lists neither version nor protocol.
    rows = [
        (m["id"], m["address"], m["state"], m.get("version", "?"), m.get("protocol", "?"), m["last_heard"], caches)
        for m in data["members"]
        for caches in [",".join(m["caches"])]
    ]
    print(_table(rows, ("id", "address", "state", "version", "protocol", "last heard (s)", "caches")))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from .client import query

    data = query(args.address, read_secret(args.secret, args.secret_file), "stats")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"member {data['id']} at {data['address']}  ready={data['ready']}  peers up={data['members_up']}")
    fields = (
        "entries",
        "hits",
        "misses",
        "sets",
        "ops_sent",
        "ops_applied",
        "ops_dropped",
        "repair_rounds",
        "keys_repaired",
        "last_lag_ms",
    )
    rows = [(name, *(c.get(f) for f in fields)) for name, c in data["caches"].items()]
    print(_table(rows, ("cache", *fields)))
    for name, c in data["caches"].items():
        boot = c["warm_boot"]
        print(
            f"warm boot {name}: {boot['state']}, {boot['entries']} entries from {boot['donor']} in {boot['seconds']}s"
        )
    return 0


def _ready(args: argparse.Namespace) -> int:
    """Exit 0 if the member is ready to serve the cluster: a Kubernetes exec readiness probe."""
    from .client import query

    data = query(args.address, read_secret(args.secret, args.secret_file), "stats")
    print("ready" if data["ready"] else "warming")
    return 0 if data["ready"] else 1


# -- argument parsing -------------------------------------------------------------------


SECRET_ON_COMMAND_LINE = (
    "warning: --secret puts the cluster secret in the process list, where every user of this "
    "machine can read it; put it in a file and pass --secret-file or SHOAL_SECRET_FILE instead"
)


class _OnCommandLine(argparse.Action):
    """Stores the value and notes that it came from the command line (main warns), not the environment."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.secret_on_command_line = True


def _add_secret(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--secret",
        default=_env("SHOAL_SECRET"),
        action=_OnCommandLine,
        help="cluster secret [SHOAL_SECRET]; prefer --secret-file",
    )
    p.add_argument(
        "--secret-file", default=_env("SHOAL_SECRET_FILE"), help="file holding the cluster secret [SHOAL_SECRET_FILE]"
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="shoal", description="A replicated in-memory cache for Python services.")
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    parser.add_argument("--log-level", default=_env("SHOAL_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a local cluster through a rolling deploy under read load")
    from .demo import add_arguments

    add_arguments(demo)

    serve = sub.add_parser("serve", help="run one member until SIGTERM")
    serve.add_argument(
        "--listen",
        default=_env("SHOAL_LISTEN", "127.0.0.1:7600"),
        help="host:port to listen on; port 0 picks one [SHOAL_LISTEN]",
    )
    serve.add_argument(
        "--advertise",
        default=_env("SHOAL_ADVERTISE"),
        help="host:port the other members dial to reach this one, e.g. the pod IP (default: the listen "
        "address, or on 0.0.0.0 one learned from its connections) [SHOAL_ADVERTISE]",
    )
    serve.add_argument("--seeds", default=_env("SHOAL_SEEDS"), help="comma-separated host:port [SHOAL_SEEDS]")
    serve.add_argument("--discovery", default=_env("SHOAL_DISCOVERY"), help="dns:NAME:PORT [SHOAL_DISCOVERY]")
    serve.add_argument(
        "--caches",
        default=_env("SHOAL_CACHES", "default"),
        help="comma-separated NAME[:TTL[:MAX_ENTRIES]] [SHOAL_CACHES]",
    )
    serve.add_argument(
        "--snapshot-path",
        default=_env("SHOAL_SNAPSHOT_PATH"),
        help="file to keep a snapshot in, for a full-cluster restart [SHOAL_SNAPSHOT_PATH]",
    )
    serve.add_argument(
        "--http",
        default=_env("SHOAL_HTTP"),
        help="host:port for the status page at /, /metrics, and /ready and /live (Kubernetes httpGet probes) "
        "[SHOAL_HTTP]",
    )
    serve.add_argument("--failure-timeout", type=float, default=float(_env("SHOAL_FAILURE_TIMEOUT", "5") or 5))
    serve.add_argument("--ready-timeout", type=float, default=60.0)
    serve.add_argument(
        "--protocol-max",
        type=int,
        default=int(_env("SHOAL_PROTOCOL_MAX", "0") or 0) or None,
        help="newest protocol to offer peers (a rollout knob; default: this release's newest) [SHOAL_PROTOCOL_MAX]",
    )
    _add_secret(serve)

    sub.add_parser("secret", help="print a fresh, strong cluster secret")

    for name, help_text in (
        ("members", "list the members a running node knows"),
        ("stats", "show a running node's cache and replication figures"),
        ("ready", "exit 0 once a running node is ready: booted, meshed, caught up (a readiness probe)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("address", nargs="?", default=_env("SHOAL_ADDRESS", "127.0.0.1:7600"))
        p.add_argument("--json", action="store_true")
        _add_secret(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "secret_on_command_line", False):
        print(SECRET_ON_COMMAND_LINE, file=sys.stderr)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return asyncio.run(_serve(args))
        if args.command == "members":
            return _members(args)
        if args.command == "stats":
            return _stats(args)
        if args.command == "ready":
            return _ready(args)
        if args.command == "secret":
            print(new_secret())
            return 0
        from .demo import run

        return run(args)
    except (ShoalError, OSError, ValueError) as exc:
        print(f"shoal {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
