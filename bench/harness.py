"""What the benchmarks share, so each script is its scenario and little else.

- ``Member``: a child process spoken to in JSON lines (``{"op": ..., **args}`` in,
  ``{"ok": result}`` or ``{"error": text}`` out); its stderr goes to a file and
  is summarized at ``stop``, not pasted into the results. ``serve`` is the child's
  side: a command loop over a dict of handlers.
- ``RedisServer``: a throwaway ``redis-server`` (no persistence) on a free port,
  or in a network namespace; ``redis_binary`` says whether one is installed.
- ``Cleanup``: everything a run started, stopped in reverse order however it ends.
- ``wait_for``: poll a condition, with a deadline.
- ``GcWatch``: the cyclic collector's time, by generation; ``StepWatch``: the
  event loop's longest steps.
- Statistics (``median``, ``spread``, ``quantile``), ``rss`` from /proc, and tables
  (``format_table`` with ``ns``/``ratio``/``pct``).
- ``environment`` (one line: Python, CPUs, load) and ``save`` (a result file under
  bench/results/, headed by the date and the commit measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
T = TypeVar("T")
MB = 1e6


class GcWatch:
    """Time spent in the cyclic garbage collector (all threads; a collection holds the GIL, so
    they never overlap), in total and by generation, from the last ``reset``."""

    def __init__(self) -> None:
        self.reset()
        self._start = 0.0
        gc.callbacks.append(self._cb)

    def reset(self) -> None:
        self.total = 0.0
        self.max = 0.0
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]

    def close(self) -> None:
        gc.callbacks.remove(self._cb)

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            took = time.perf_counter() - self._start
            self.total += took
            self.max = max(self.max, took)
            self.count[info["generation"]] += 1
            self.seconds[info["generation"]] += took

    def as_dict(self) -> dict[str, Any]:
        return {"gc_total_ms": self.total * 1000, "gc_max_ms": self.max * 1000, "gc_collections": self.count}


# -- processes ----------------------------------------------------------------------------

STDERR_NOTES: list[str] = []  # one line per child whose stderr held tracebacks or warnings


class StepWatch:
    """The loop's longest single steps, in the loop thread's CPU time, and what ran in them.

    What a step would stall the loop for on an idle machine: a wall-clock gap also counts
    whatever else the shared cores ran meanwhile. ``long`` holds, per coroutine or callback,
    the CPU ms of each step of at least ``LONG_MS``. Installed once per process (it wraps
    ``asyncio.Handle._run``, which every callback and coroutine step goes through).
    """

    LONG_MS = 5.0
    max_stacks: list[tuple[str, int]]  # the longest step's sampled stacks and their counts
    SAMPLE_AFTER_MS = 20.0  # a step running this long has its stack sampled every SAMPLE_EVERY_MS
    SAMPLE_EVERY_MS = 2.0

    def __init__(self, sample: bool = False) -> None:
        """``sample``: also sample the stacks of long steps (a thread that wakes every
        ``SAMPLE_EVERY_MS`` and so takes the GIL from the loop that often: off for the figures)."""
        self.reset()
        run = asyncio.events.Handle._run
        self._step_from = 0.0  # perf_counter at the start of the running step, 0 between steps
        self._step_thread = 0
        self._step_samples: dict[str, int] = {}  # the running step's, filled by the sampler only
        if sample:
            threading.Thread(target=self._sampler, name="stepwatch-sampler", daemon=True).start()

        def timed(handle: asyncio.Handle) -> None:
            before = resource.getrusage(resource.RUSAGE_THREAD)
            t = time.thread_time()
            if sample:
                self._step_thread = threading.get_ident()
                self._step_from = time.perf_counter()
            run(handle)
            self._step_from = 0.0
            took = time.thread_time() - t
            if took * 1000 >= self.LONG_MS or took > self.max:
                callback = handle._callback  # type: ignore[attr-defined]
                owner = getattr(callback, "__self__", None)
                if isinstance(owner, asyncio.Task):  # a coroutine's step: name the coroutine
                    callback = owner.get_coro()
                name = getattr(callback, "__qualname__", "?")
                if took > self.max:
                    after = resource.getrusage(resource.RUSAGE_THREAD)
                    self.max, self.what = took, name
                    # The kernel's share of it (coarse: the scheduler's accounting) and its page faults.
                    self.max_sys = after.ru_stime - before.ru_stime
                    self.max_faults = after.ru_minflt - before.ru_minflt
                    self.max_stacks = sorted(self._step_samples.items(), key=lambda kv: -kv[1])[:3]
                if took * 1000 >= self.LONG_MS:
                    self.long.setdefault(name, []).append(round(took * 1000, 1))
            if self._step_samples:
                self._step_samples = {}

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]

    def _sampler(self) -> None:
        """Where a long step spends its time: the loop thread's innermost frames, sampled while
        a step has run past ``SAMPLE_AFTER_MS`` (the GIL's switch interval lets this thread in)."""
        while True:
            time.sleep(self.SAMPLE_EVERY_MS / 1000)
            since = self._step_from
            if not since or (time.perf_counter() - since) * 1000 < self.SAMPLE_AFTER_MS:
                continue
            frame = sys._current_frames().get(self._step_thread)
            if frame is None:
                continue
            where = " < ".join(
                f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)[::-1][:4]
            )
            self._step_samples[where] = self._step_samples.get(where, 0) + 1

    def reset(self) -> None:
        self.max = 0.0
        self.max_stacks = []
        self.what = ""
        self.max_sys = 0.0
        self.max_faults = 0
        self.long: dict[str, list[float]] = {}

    def summary(self) -> str:
        """``name xN (max M ms)`` for each kind of long step, the most frequent first."""
        kinds = sorted(self.long.items(), key=lambda kv: -len(kv[1]))
        return ", ".join(f"{name} x{len(ms)} (max {max(ms):.0f} ms)" for name, ms in kinds) or "none"


SRC = ROOT / "src"
"""Where children import shoal from: this checkout, or another's (a bench's ``--src``, for a before/after)."""


def source_of(rev: str, into: Path) -> Path:
    """shoal's src/ as of ``rev``, extracted under ``into``."""
    tar = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into / "src"


def revisions(before: str | None, into: Path) -> list[tuple[str, Path | None]]:
    """(label, src) to run a benchmark on: ``before``'s sources (extracted under ``into``) if
    given, then this checkout's (None: the children's default)."""
    variants: list[tuple[str, Path | None]] = []
    if before:
        sha = subprocess.run(["git", "rev-parse", "--short", before], cwd=ROOT, capture_output=True, text=True)
        variants.append((f"before ({sha.stdout.strip()})", source_of(before, into)))
    variants.append(("after (this checkout)", None))
    return variants


def child_env(src: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The environment of a child: shoal from this checkout (or from ``src``, ``$SHOAL_SRC`` or
    ``SRC``: a whole benchmark run against another revision's sources), then the tests' support code."""
    src = src or os.environ.get("SHOAL_SRC") or SRC
    paths = [str(src), str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


class Member:
    """A child process driven by JSON lines: ``Member("bench/member.py", "donor", "--n", "10")``.

    The first line it prints is ``hello`` (with ``hello=False``, read later by ``greeted``, so
    many children start at once). ``call`` sends a command and waits for its answer; ``send``
    and ``result`` split the two, so many children work at once.
    """

    def __init__(
        self,
        *argv: str,
        prefix: Sequence[str] = (),
        hello: bool = True,
        timeout: float = 120.0,
        src: str | os.PathLike[str] | None = None,
    ) -> None:
        self.label = " ".join(a for a in argv[:2] if not a.startswith("-"))
        self._err = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed in stop()
        self.t_launch = time.time()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=child_env(src),
            cwd=ROOT,
            bufsize=0,
        )
        self._buffer = b""
        self.hello: Any = self.greeted(timeout) if hello else None

    def greeted(self, timeout: float = 120.0) -> Any:
        self.hello = self._line(timeout)
        return self.hello

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self, timeout: float) -> Any:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"{self.label} did not answer within {timeout:.0f} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"{self.label} exited ({self.proc.wait()}): {self.stderr_tail()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())

    def result(self, wait: float = 120.0) -> Any:
        answer = self._line(wait)
        if "error" in answer:
            raise RuntimeError(f"{self.label}: {answer['error']}")
        return answer["ok"]

    def call(self, op: str, *, wait: float = 120.0, **args: Any) -> Any:
        self.send(op, **args)
        return self.result(wait)

    def stderr_tail(self, lines: int = 5) -> str:
        self._err.seek(0)
        return " | ".join(self._err.read().decode(errors="replace").strip().splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """Ask it to exit (EOF on its stdin), kill it if it does not; keep a summary of its stderr."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        end(self.proc, timeout)
        with contextlib.suppress(ValueError, OSError):
            self._err.seek(0)
            summarize_stderr(self.label, self._err.read().decode(errors="replace"))
            self._err.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def serve(hello: Any, handlers: dict[str, Callable[..., Any]]) -> None:
    """A child's command loop: one JSON command per line on stdin, one answer per line, until EOF."""
    reply(hello)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            reply({"ok": handlers[op](**cmd)})
        except Exception as exc:  # the driver raises it, with the child's word
            reply({"error": f"{op}: {type(exc).__name__}: {exc}"})


def child(script: str, target: Callable[..., None], prefix: Sequence[str] = (), **args: Any) -> Member:
    """Run ``target(**args)`` (a function of ``script``, which calls ``as_child`` first) as a Member."""
    return Member(script, "--member", target.__name__, json.dumps(args), prefix=prefix)


def as_child(namespace: dict[str, Any]) -> bool:
    """In a process started by ``child``: run the function named on the command line; True if this was one."""
    if sys.argv[1:2] != ["--member"]:
        return False
    namespace[sys.argv[2]](**json.loads(sys.argv[3]))
    return True


def reply(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


def end(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Terminate a process, and kill it if it does not exit within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def summarize_stderr(label: str, text: str) -> None:
    """Keep warnings, count tracebacks by their exception line."""
    lines = text.splitlines()
    kinds: dict[str, int] = {}
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            last = next((lines[j] for j in range(i + 1, len(lines)) if lines[j] and not lines[j][0].isspace()), "?")
            kinds[last.split(":")[0]] = kinds.get(last.split(":")[0], 0) + 1
    warnings = sorted({line.strip()[:120] for line in lines if "warn" in line.lower()})
    if kinds or warnings:
        STDERR_NOTES.append(
            f"{label}: stderr held {sum(kinds.values())} traceback(s)"
            + (f" ({', '.join(f'{n} x {k}' for k, n in sorted(kinds.items()))})" if kinds else "")
            + (f"; warnings: {'; '.join(warnings[:3])}" if warnings else "")
        )


class Cleanup(contextlib.ExitStack):
    """``with Cleanup() as run: member = run.add(Member(...))``: stopped in reverse order at the end."""

    def add(self, thing: T) -> T:
        self.callback(thing.stop)  # type: ignore[attr-defined]
        return thing


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a get's latency ------------------------------------------------------------------------


def successors(n: int, rng: random.Random) -> list[int]:
    """One random cycle through ``range(n)``: ``nxt[i]`` follows ``i``. A cache that maps key ``i``
    to key ``nxt[i]`` times a get's latency: each get's key is the value the last one returned."""
    order = list(range(n))
    rng.shuffle(order)
    nxt = [0] * n
    for i in range(n):
        nxt[order[i]] = order[(i + 1) % n]
    return nxt


def t_chain(get: Callable[[Any], Any], first: Any, ops: int) -> tuple[int, Any]:
    """``ops`` gets, each of the key the one before returned (no two overlap): the ns they took,
    and the last key, None if a get missed."""
    key = first
    t0 = time.perf_counter_ns()
    for _ in range(ops):
        key = get(key)
    return time.perf_counter_ns() - t0, key


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value


def outbox_drained(node: Any, cache: str, timeout: float = 60.0, poll: float = 0.001) -> bool:
    """Wait until ``node``'s outbox holds no op of ``cache`` (its ``queue_depth``, polled every
    ``poll`` seconds); False if it still holds some after ``timeout``."""
    deadline = time.monotonic() + timeout
    while node.stats()["caches"][cache].get("queue_depth", 0):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def rss(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A /proc/PID/status memory field (VmRSS, VmHWM: the peak) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


# -- redis --------------------------------------------------------------------------------


def redis_binary(skip: bool = False) -> str | None:
    return None if skip else shutil.which("redis-server")


class RedisServer:
    """A throwaway redis-server, no persistence: on a free loopback port, or ``port``/``bind`` in a namespace."""

    def __init__(
        self, binary: str, *extra: str, port: int = 0, bind: Sequence[str] = ("127.0.0.1",), prefix: Sequence[str] = ()
    ) -> None:
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="shoal-bench-redis-")
        argv = [*prefix, binary, "--port", str(self.port), "--bind", *bind, "--save", "", "--appendonly", "no"]
        argv += ["--dir", self._dir.name, "--daemonize", "no", "--loglevel", "warning", *extra]
        self.t_launch = time.time()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._clients: list[Any] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, wait: float = 10.0, **options: Any) -> Any:
        """A redis-py client, once the server answers (polled every millisecond)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2, **options)
        deadline = time.monotonic() + wait
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
        self._clients.append(client)
        return client

    def stop(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        end(self.proc)
        self._dir.cleanup()


def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.split("v=")[1].split()[0] if "v=" in out else out.strip()


# -- statistics ---------------------------------------------------------------------------


def median(xs: Sequence[float | None] | None) -> float | None:
    got = [x for x in xs or () if x is not None]
    return statistics.median(got) if got else None


def spread(xs: Sequence[float | None], spec: str = ".3f") -> str:
    """Median [min-max] of the values measured; a dash when none was."""
    got = [x for x in xs if x is not None]
    if not got:
        return "-"
    mid = format(statistics.median(got), spec)
    return mid if len(got) == 1 else f"{mid} [{format(min(got), spec)}-{format(max(got), spec)}]"


def quantile(xs: Sequence[float], q: float) -> float | None:
    """The value at ``q`` (0..1) of the sorted samples, or None when there are none."""
    if not xs:
        return None
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- tables -------------------------------------------------------------------------------


def ns(value: float | None) -> str:
    """Nanoseconds per operation, or a dash when not measured."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100_000 else f"{value:,.1f}"


def ratio(value: float | None) -> str:
    """A multiple, like ``2.35x``, or a dash."""
    return "-" if value is None else f"{value:.2f}x"


def pct(value: float | None) -> str:
    """A fraction shown as a percentage, like ``41.27%``, or a dash."""
    return "-" if value is None else f"{value * 100:.2f}%"


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object] | None],
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    groups: Sequence[tuple[str, int]] = (),
) -> str:
    """Rows under headers, the first column left-aligned and the others right; a ``None`` row is a rule.

    ``groups`` (label, number of columns), covering every column, adds a spanning header line.
    """
    text_rows = [None if row is None else [str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        if row is None:
            continue
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, headers have {len(headers)}: {row}")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    sep = "  "
    if groups:
        start = 0
        for label, span in groups:  # widen a group's last column to fit its label
            have = sum(widths[start : start + span]) + len(sep) * (span - 1)
            widths[start + span - 1] += max(0, len(label) - have)
            start += span
        if start != len(headers):
            raise ValueError("groups must cover every column")

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return sep.join(parts).rstrip()

    total = sum(widths) + len(sep) * (len(widths) - 1)
    out = [title] if title else []
    out.append("=" * total)
    if groups:
        parts, start = [], 0
        for label, span in groups:
            width = sum(widths[start : start + span]) + len(sep) * (span - 1)
            parts.append(label.center(width) if label else " " * width)
            start += span
        out.append(sep.join(parts).rstrip())
    out += [line(list(headers)), "-" * total]
    out += ["-" * total if row is None else line(row) for row in text_rows]
    out.append("=" * total)
    out.extend(notes)
    return "\n".join(out)


# -- the run ------------------------------------------------------------------------------


def environment() -> str:
    """Python, CPUs and load: the first line of every benchmark's output."""
    load = os.getloadavg()
    return (
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other work shares these cores)"
    )


def commit() -> str:
    """The commit measured, with ``+`` when src/ has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
        return sha.stdout.strip() + ("+" if dirty.stdout.strip() else "") or "unknown"
    except OSError:
        return "unknown"


def save(name: str, text: str, append: bool = False) -> Path:
    """Write (or append) ``text`` to bench/results/NAME.txt under a line naming the date and commit."""
    path = RESULTS / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = f"# {time.strftime('%Y-%m-%d %H:%M')}, shoal at commit {commit()}\n\n{text.rstrip()}\n"
    if append and path.exists():
        body = path.read_text().rstrip() + "\n\n\n" + body
    path.write_text(body)
    return path
