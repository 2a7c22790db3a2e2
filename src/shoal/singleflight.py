"""One load per key at a time, however many callers miss on it together.

Threads and asyncio tasks share one table of flights, so a burst that mixes
sync views and async handlers in one process still calls the loader once. The
first caller to miss becomes the leader and runs the loader; everyone else who
arrives while it runs waits on the leader's future and gets the same value, or
the same exception. The flight ends when the leader finishes, after it has
stored the value, so a caller arriving later finds it in the cache.

On a cache hosted by a Node, the leader first asks the cluster (``ClusterFlights``,
over the lease protocol of ``leases.py``) so that one member loads for all of them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

from .actions import Deliver, Fail, Load
from .errors import LoaderError
from .leases import Leases
from .store import Key


class Flights:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, Future[Any]] = {}

    def join(self, key: Hashable) -> tuple[Future[Any], bool]:
        """The flight for key and whether the caller leads it (must ``land`` it)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Future()
            return flight, True

    def land(self, key: Hashable, flight: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
        """End the leader's flight: every waiter gets value, or error raised."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        if error is not None:
            flight.set_exception(error)
        else:
            flight.set_result(value)

    def __len__(self) -> int:
        return len(self._flights)


LOAD = "load"
"""A cluster flight's answer: no member is loading the key (or none can be asked); load it here."""
VALUE = "value"
"""A cluster flight's answer: the value is in the local cache now (another member loaded it)."""


class ClusterFlights:
    """The one-leader-per-process flights of a Node's caches, made one per cluster.

    The leader of a local flight (``Flights``) asks here before calling its loader:
    ``begin`` returns a future that says ``LOAD`` (this member holds the key's lease,
    or nobody can be asked), ``VALUE`` (another member loaded it and the value has
    arrived), or raises ``LoaderError`` (the loader raised on the member that held
    the lease). A leader told ``LOAD`` reports with ``finish`` once its loader is
    done, or ``give_back`` if it was cancelled before.

    This is the thread-safe edge of ``leases.Leases``, which lives on the node's
    loop: application threads only hand it closures through the loop's
    ``call_soon_threadsafe``; what the lease machine returns goes to ``perform``
    (the node's ``_run``), which hands the ``Load``, ``Deliver`` and ``Fail``
    actions back to ``settle``. Until ``bind`` gives it a running loop (and after
    the node stops) every caller is told ``LOAD``: a member alone loads for itself.
    """

    def __init__(
        self,
        leases: Leases,
        perform: Callable[[list[Any]], None],
        now: Callable[[], float] = time.monotonic,
        flush: Callable[[], None] = lambda: None,
    ) -> None:
        """``flush`` sends the queued writes now: a holder's value goes out before its report."""
        self.leases = leases
        self._perform = perform
        self._flush = flush
        self._now = now
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[tuple[str, Key], Future[str]] = {}

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The node's loop runs (``None``: it stopped, and whoever still waits loads for itself)."""
        self._loop = loop
        if loop is None:
            for cache, key in list(self._waiting):
                self._answer(cache, key, LOAD)

    @property
    def limit(self) -> float:
        """How long a caller waits at most before loading anyway (a stuck loop must not hang callers)."""
        leases = self.leases
        return leases.ttl + leases.ask_timeout * (leases.max_asks + 1) + 5.0

    def on_loop(self) -> bool:
        """True when called on the node's loop, which must not block waiting for its own answer."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def begin(self, cache: str, key: Key) -> Future[str]:
        """Ask the cluster about a local miss (called by the local flight's leader, any thread)."""
        flight: Future[str] = Future()
        self._waiting[cache, key] = flight
        if not self._call(lambda: self._perform(self.leases.miss(cache, key, self._now()))):
            self._answer(cache, key, LOAD)
        return flight

    def finish(self, cache: str, key: Key, error: BaseException | None = None) -> None:
        """The local loader ran after ``LOAD``: tell the cluster how it went (any thread)."""
        if error is None:

            def loaded() -> None:
                # The value is queued for the usual flush delay: send it now, ahead of our
                # report, so the waiters have it as soon as they hear the load is over.
                self._flush()
                self._perform(self.leases.loaded(cache, key, self._now()))

            self._call(loaded)
        else:
            kind, text = type(error).__name__, str(error)
            self._call(lambda: self._perform(self.leases.failed(cache, key, kind, text, self._now())))

    def give_back(self, cache: str, key: Key) -> None:
        """The local callers went away (cancelled) before loading: pass the key's lease on (any thread)."""
        self._waiting.pop((cache, key), None)
        self._call(lambda: self._perform(self.leases.abandoned(cache, key, self._now())))

    def settle(self, action: Load | Deliver | Fail) -> None:
        """On the loop: answer the flight the lease machine settled."""
        if isinstance(action, Load):
            self._answer(action.cache, action.key, LOAD)
        elif isinstance(action, Deliver):
            self._answer(action.cache, action.key, VALUE)
        else:
            self._answer(action.cache, action.key, LoaderError(action.error_type, action.error_text))

    def _answer(self, cache: str, key: Key, answer: str | BaseException) -> None:
        flight = self._waiting.pop((cache, key), None)
        if flight is None or flight.done():
            return
        if isinstance(answer, BaseException):
            flight.set_exception(answer)
        else:
            flight.set_result(answer)

    def _call(self, fn: Callable[[], None]) -> bool:
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop is closed: the node is gone
            return False
        return True

    def __len__(self) -> int:
        return len(self._waiting)
