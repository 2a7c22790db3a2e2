"""What the fault tests share: members two threads may drive, a writer that records every
acknowledged key, counting lost keys, and the fault table.

A key is *acknowledged* when the ``set_range`` command that wrote it returned on a
member process that stays up through that step of the test. Replication is
asynchronous, so a write still in the outbox of a process killed with SIGKILL is
lost by design; before a test kills a member the writer used, it waits until the
last key acknowledged there has reached another member (``Writer.flushed_from``),
which makes every earlier one reach it too (one TCP stream per pair, in order).
Anti-entropy then owes the rest of the cluster every acknowledged key.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tests.support.cluster import Cluster, Member, wait_until
from tests.test_replication_cluster import meshed as _meshed

RESULTS_ENV = "SHOAL_FAULTS_RESULTS"
"""Where to append the fault table (e.g. bench/results/faults.txt when refreshing it on purpose);
unset, a test run writes no file: tests never change tracked files."""

# Short timers so a failure is noticed, and repaired, within seconds (as in the other cluster tests).
FAST: dict[str, Any] = {
    "anti_entropy_interval": 0.5,
    "failure_timeout": 1.0,
    "heartbeat_interval": 0.2,
    "handshake_timeout": 2.0,
    "boot_wait": 1.0,
}


class SharedMember(Member):
    """A member process whose commands may come from several threads (a writer and the test).

    Its log (stderr) is read all along, so a chatty member never blocks on a full pipe,
    and the test can look for tracebacks afterwards.
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._lock = threading.Lock()
        self.log: deque[str] = deque(maxlen=50_000)
        threading.Thread(target=self._read_log, daemon=True, name=f"log {self.address}").start()

    def cmd(self, op: str, **args: Any) -> Any:
        with self._lock:
            return super().cmd(op, **args)

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):  # the stream is closed at teardown
            for line in self.proc.stderr:
                self.log.append(line)

    def logged(self, text: str) -> int:
        return sum(text in line for line in list(self.log))

    def rss_kb(self) -> int:
        """VmRSS of the process, read from /proc (no command: it works on a frozen process too)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.proc.pid}")


def start(cluster: Cluster, **kw: Any) -> SharedMember:
    """A SharedMember registered with the cluster fixture (killed at teardown)."""
    member = SharedMember(**kw)
    cluster.members.append(member)
    return member


def meshed(members: Sequence[Member]) -> bool:
    """Every member sees every other one up and hosting the cache (tests/test_replication_cluster.py)."""
    return _meshed(list(members))


def start_cluster(cluster: Cluster, n: int, **options: Any) -> list[SharedMember]:
    first = start(cluster, **options)
    members = [first] + [start(cluster, seeds=[first.address], **options) for _ in range(n - 1)]
    for member in members:
        assert member.cmd("ready", timeout=30) is True
    wait_until(lambda: meshed(members), timeout=20, what=f"a full mesh of {n}")
    return members


class Writer:
    """Writes ``prefix0``, ``prefix1``, ... in batches, through one member at a time, on its own thread.

    ``acked`` is how many writes are acknowledged (always a prefix of the sequence: the
    writer never moves on after a failed batch). With a ``keyspace`` the writes cycle
    over that many keys, each pass with new values (write n goes to key n % keyspace),
    so a long run keeps the cache one size. A batch is paced by ``pause`` so the writer
    does not starve the members of the two cores.
    """

    def __init__(
        self,
        through: Member,
        prefix: str = "w",
        batch: int = 10,
        pause: float = 0.005,
        keyspace: int | None = None,
    ) -> None:
        if keyspace is not None and keyspace % batch:
            raise ValueError("the keyspace must be a multiple of the batch")
        self.prefix = prefix
        self.batch = batch
        self.pause = pause
        self.keyspace = keyspace
        self.acked = 0
        self.errors: list[BaseException] = []
        self._through = through
        self._ends: dict[int, int] = {}  # id(member) -> end of the last batch acknowledged through it
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"writer {prefix}")

    def _pass_value(self, generation: int) -> str:
        return f"{self.prefix}-{generation}-"

    def _slot(self, n: int) -> tuple[int, int]:
        """Write n goes to key ``prefix{i}`` in pass ``generation``: (i, generation)."""
        return (n, 0) if self.keyspace is None else (n % self.keyspace, n // self.keyspace)

    @property
    def keys(self) -> int:
        return self.acked if self.keyspace is None else min(self.acked, self.keyspace)

    def expected(self, i: int, acked: int | None = None) -> str:
        """The last value acknowledged for key ``prefix{i}`` (after ``acked`` writes; default: all so far)."""
        n = self.acked if acked is None else acked
        if self.keyspace is None:
            return f"{self._pass_value(0)}{i}"
        generation = n // self.keyspace if i < n % self.keyspace else n // self.keyspace - 1
        return f"{self._pass_value(generation)}{i}"

    def generation(self, value: Any) -> int:
        """Which pass wrote ``value`` (-1 for none): a member holding an older one is behind."""
        if not isinstance(value, str) or not value.startswith(f"{self.prefix}-"):
            return -1
        return int(value.split("-")[1])

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._halt.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the writer is stuck"
        assert not self.errors, self.errors
        return self.acked

    def _run(self) -> None:
        try:
            while not self._halt.is_set():
                with self._lock:
                    through, n = self._through, self.acked
                slot, generation = self._slot(n)
                value = self._pass_value(generation)
                through.cmd("set_range", prefix=self.prefix, start=slot, count=self.batch, value=value)
                with self._lock:
                    self.acked = n + self.batch
                    self._ends[id(through)] = self.acked
                self._halt.wait(self.pause)
        except BaseException as exc:  # reported by stop(), on the test's thread
            self.errors.append(exc)

    def through(self, member: Member) -> None:
        """Write through ``member`` from now on; returns once a batch was acknowledged there."""
        with self._lock:
            self._through = member
            before = self._ends.get(id(member), 0)
        wait_until(lambda: self._ends.get(id(member), 0) > before or self.errors, 10, what="a write on the new member")
        assert not self.errors, self.errors

    def wait_for(self, more: int, timeout: float = 15.0) -> None:
        """Returns once ``more`` writes beyond the present ones are acknowledged."""
        target = self.acked + more
        wait_until(lambda: self.acked >= target or self.errors, timeout, what=f"{more} more acknowledged writes")
        assert not self.errors, self.errors

    def flushed_from(self, member: Member, witness: Member) -> None:
        """Returns once the last write acknowledged through ``member`` is on ``witness``."""
        end = self._ends.get(id(member), 0)
        if end:
            slot, generation = self._slot(end - 1)
            key, value = f"{self.prefix}{slot}", f"{self._pass_value(generation)}{slot}"
            wait_until(lambda: witness.cmd("get", key=key) == value, 10, what=f"{key} to leave {member.address}")


class Written(Protocol):
    """What a writer acknowledged: keys ``prefix0`` .. ``prefix{keys - 1}``, each with its last value."""

    prefix: str

    @property
    def keys(self) -> int: ...

    def expected(self, i: int) -> str: ...


def lost(member: Member, writer: Written) -> int:
    """Acknowledged keys of ``writer`` the member does not hold with the last value written."""
    end = writer.keys
    missing = 0
    for start in range(0, end, 5000):
        count = min(5000, end - start)
        values = member.cmd("values", prefix=writer.prefix, start=start, count=count)
        missing += sum(v != writer.expected(start + i) for i, v in enumerate(values))
    return missing


def settle(members: Sequence[Member], writers: Sequence[Written], timeout: float = 30.0) -> dict[str, int]:
    """Waits until every member holds every acknowledged key (up to ``timeout``); keys lost per member."""

    def counts() -> dict[str, int]:
        return {m.address: sum(lost(m, w) for w in writers) for m in members}

    with contextlib.suppress(AssertionError):  # what is still missing then is reported, and fails the test
        wait_until(lambda: not any(counts().values()), timeout, interval=0.2, what="every acknowledged key")
    return counts()


# -- the fault table ------------------------------------------------------------------------

COLUMNS = ("fault", "tried", "survived", "writes acked", "keys lost", "notes")
ROWS: list[tuple[Any, ...]] = []


def _line(cells: tuple[Any, ...]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def record(fault: str, tried: int, survived: int, acked: int, lost_keys: int, notes: str = "") -> None:
    """One row of the fault table: printed now, kept for the run's summary, appended to $SHOAL_FAULTS_RESULTS."""
    row = (fault, tried, survived, acked, lost_keys, notes)
    ROWS.append(row)
    print()
    print(_line(COLUMNS))
    print(_line(row))
    target = os.environ.get(RESULTS_ENV)
    if not target:
        return
    results = Path(target)
    results.parent.mkdir(parents=True, exist_ok=True)
    new = not results.exists()
    with results.open("a") as out:
        if new:
            out.write("# shoal fault injection (tests/faults): one row per fault per run, appended\n\n")
            out.write(_line(("when", *COLUMNS)) + "\n")
            out.write(_line(("---",) * (len(COLUMNS) + 1)) + "\n")
        when = datetime.datetime.now().isoformat(timespec="seconds")
        out.write(_line((when, *row)) + "\n")


def table() -> list[str]:
    return [_line(COLUMNS), _line(("---",) * len(COLUMNS)), *(_line(row) for row in ROWS)]
