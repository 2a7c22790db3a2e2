"""Real member processes on loopback for the cluster tests, and waiting on conditions.

Every process a test starts is registered with the ``Cluster`` and killed at
teardown, whatever the test did. Tests wait for conditions with ``wait_until``,
never for fixed times.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def free_port() -> int:
    """A port nothing listens on now, for a member that must be told its address before it starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(root: Path = ROOT) -> dict[str, str]:
    """The environment of a process running shoal (and its tests/support) from the tree at ``root``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "src"), str(root), env.get("PYTHONPATH")) if p)
    return env


class Member:
    """One member process, driven by JSON commands (tests/support/member.py).

    ``root`` is the source tree it runs, this one by default: the compatibility test runs a
    previous release's tree (its own shoal and its own tests/support/member.py) beside it.
    """

    def __init__(
        self,
        seeds: list[str] = (),
        secret: str = "shoal-test-secret",
        listen: str = "127.0.0.1:0",  # type: ignore[assignment]
        cache: str = "c",
        ttl: float | None = None,
        max_entries: int | None = None,
        prefix: list[str] = (),
        root: Path = ROOT,
        log_to: Path | None = None,
        **node_options: Any,
    ) -> None:  # type: ignore[assignment]
        """``log_to``: a file for the member's log instead of a pipe (a member that logs more than a
        pipe holds before the test reads it would block on its next line)."""
        argv = [
            *prefix,
            sys.executable,
            "-m",
            "tests.support.member",
            "--listen",
            listen,
            "--seeds",
            ",".join(seeds),
            "--secret",
            secret,
            "--cache",
            cache,
            "--node-options",
            json.dumps(node_options),
        ]
        if ttl is not None:
            argv += ["--ttl", str(ttl)]
        if max_entries is not None:
            argv += ["--max-entries", str(max_entries)]
        self.log_to = log_to
        stderr = subprocess.PIPE if log_to is None else log_to.open("w")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=root, env=_env(root)
        )
        if log_to is not None:
            stderr.close()  # the member holds it
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"member failed to start: {err[-2000:]}")
        hello = json.loads(first)
        self.address: str = hello["address"]
        self.id: str = hello["id"]

    def cmd(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"member {self.address} exited (rc={self.proc.poll()})")
        return json.loads(line).get("result")

    def peers_up(self) -> set[str]:
        return {m["address"] for m in self.cmd("members") if m["state"] == "up"}

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(10)

    def stop(self) -> None:
        """Graceful stop through the node's own stop()."""
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError, OSError):
                self.cmd("stop")
            self.proc.wait(10)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class Cluster:
    def __init__(self) -> None:
        self.members: list[Member] = []

    def start(self, **kw: Any) -> Member:
        member = Member(**kw)
        self.members.append(member)
        return member

    def close(self) -> None:
        for member in self.members:
            if member.alive:
                member.proc.kill()
                member.proc.wait(10)
            for stream in (member.proc.stdin, member.proc.stdout, member.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """Member processes started by a test; all killed at teardown."""
    c = Cluster()
    try:
        yield c
    finally:
        c.close()
