"""A member process set up the way a Kubernetes pod runs ``shoal serve``, for the deployment tests.

Run as ``python -m tests.support.pod`` inside a network namespace, configured by
the same environment variables as ``shoal serve`` (``SHOAL_LISTEN``,
``SHOAL_ADVERTISE``, ``SHOAL_DISCOVERY``, ``SHOAL_SECRET``, ``SHOAL_CACHES``...,
read through the CLI's own parser), plus ``POD_NODE_OPTIONS`` (JSON of extra
``Node`` arguments: the short timers of the tests). Like ``shoal serve`` it stops
gracefully on SIGTERM, which is how Kubernetes ends a pod. Unlike it, it answers
JSON commands on stdin so a test can write and read keys: it prints
``{"id": ..., "address": ...}`` once it listens, then one JSON line per command
(set_range, values, members, ready, stats) until EOF or SIGTERM.

``Pod`` drives one such process from the test; ``pods`` is a fixture that kills
whatever a test left running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import ROOT, _env
from tests.support.netns import Host

CACHE = "c"
PORT = 7600


class _Terminated(Exception):
    pass


def main() -> int:
    from shoal.cli import build_parser, parse_cache_spec, read_secret
    from shoal.node import Node

    args = build_parser().parse_args(["serve"])  # every setting from SHOAL_* as in a pod spec
    options: dict[str, Any] = json.loads(os.environ.get("POD_NODE_OPTIONS", "{}"))
    node = Node(
        listen=args.listen,
        advertise=args.advertise,
        seeds=[s for s in (args.seeds or "").split(",") if s],
        secret=read_secret(args.secret, args.secret_file),
        discovery=args.discovery,
        **options,
    )
    caches = {}
    for spec in [s for s in (args.caches or "").split(",") if s]:
        name, ttl, max_entries = parse_cache_spec(spec)
        caches[name] = node.cache(name, ttl=ttl, max_entries=max_entries)
    cache = caches[CACHE]

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, terminate)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    node.start()
    print(json.dumps({"id": f"{node.node_id:016x}", "address": node.address}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd.pop("op")
            result: Any = None
            if op == "set_range":
                for i in range(cmd["start"], cmd["start"] + cmd["count"]):
                    cache.set(f"{cmd['prefix']}{i}", f"{cmd.get('value', 'v')}{i}")
            elif op == "values":
                result = [cache.get(f"{cmd['prefix']}{i}") for i in range(cmd["start"], cmd["start"] + cmd["count"])]
            elif op == "members":
                result = [m for m in node.members() if m["state"] in ("self", "up")]
            elif op == "ready":
                result = node.wait_ready(cmd.get("timeout", 30))
            elif op == "stats":
                result = node.stats()
            else:
                raise ValueError(f"unknown command {op!r}")
            print(json.dumps({"ok": True, "result": result}), flush=True)
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        node.stop()
    return 0


class Pod:
    """One pod: a ``tests.support.pod`` process in ``host``'s namespace, listening on 0.0.0.0:7600."""

    def __init__(self, host: Host, env: dict[str, str], node_options: dict[str, Any]) -> None:
        self.host = host
        full = _env()
        full.update(env)
        full["POD_NODE_OPTIONS"] = json.dumps(node_options)
        self.proc = subprocess.Popen(
            [*host.prefix, sys.executable, "-m", "tests.support.pod"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=full,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"pod {host.ip} failed to start: {err[-2000:]}")
        self.id: str = json.loads(first)["id"]
        self._log: deque[str] = deque(maxlen=20_000)
        threading.Thread(target=self._read_log, daemon=True, name=f"log {host.ip}").start()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):  # the stream is closed at teardown
            for line in self.proc.stderr:
                self._log.append(line)

    @property
    def ip(self) -> str:
        return self.host.ip

    @property
    def address(self) -> str:
        """Where the other pods must reach this one: its pod IP, never 0.0.0.0."""
        return self.host.address(PORT)

    def cmd(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"pod {self.ip} exited (rc={self.proc.poll()})")
        return json.loads(line)["result"]

    def peers(self) -> dict[str, str]:
        """The members this pod sees up and hosting the cache: id -> the address it has for it."""
        return {m["id"]: m["address"] for m in self.cmd("members") if m["state"] == "up" and CACHE in m["caches"]}

    def advertised(self) -> str:
        """The address this pod gives for itself."""
        return next(m["address"] for m in self.cmd("members") if m["state"] == "self")

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, as Kubernetes stops a pod; the exit code once it has gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def logged(self, text: str) -> int:
        """Lines of its log (stderr) so far that contain ``text``."""
        return sum(text in line for line in list(self._log))

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Pods:
    def __init__(self) -> None:
        self.started: list[Pod] = []

    def start(self, host: Host, env: dict[str, str], node_options: dict[str, Any]) -> Pod:
        pod = Pod(host, env, node_options)
        self.started.append(pod)
        return pod

    def close(self) -> None:
        for pod in self.started:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                pod.close()


@pytest.fixture
def pods() -> Iterator[Pods]:
    """Pod processes started by a test; all killed at teardown."""
    started = Pods()
    try:
        yield started
    finally:
        started.close()


if __name__ == "__main__":
    sys.exit(main())
